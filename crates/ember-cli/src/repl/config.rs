//! Where the REPL keeps its files, and the named models of `!models` / `!switch`.
//!
//! The models file (`$EMBER_CONFIG`, else `$XDG_CONFIG_HOME/ember/models.toml`, else
//! `~/.config/ember/models.toml`) is TOML with one table per model:
//!
//! ```toml
//! [models.sd15]
//! path = "/models/v1-5-pruned-emaonly.safetensors"   # anything --model takes: file, folder or repo id
//! dtype = "f16"                                      # optional: auto (default), f32, f16, bf16
//! device = "cuda"                                    # optional: the REPL's --device otherwise
//! description = "Stable Diffusion 1.5"               # optional: shown by !models
//! ```

use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One named model of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub path: String,
    pub dtype: Option<String>,
    pub device: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
}

/// The models file's path (it need not exist).
pub fn models_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EMBER_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("ember").join("models.toml"))
}

/// The history file's path: `$EMBER_HISTORY`, else `$XDG_DATA_HOME/ember/history`, else
/// `~/.local/share/ember/history`.
pub fn history_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EMBER_HISTORY") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local").join("share")))?;
    Some(base.join("ember").join("history"))
}

/// The named models, sorted by name; an empty list when the file does not exist.
pub fn load_models(path: &Path) -> anyhow::Result<BTreeMap<String, ModelEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read the models file {}", path.display())),
    };
    parse_models(&text).with_context(|| format!("the models file {} is not valid", path.display()))
}

fn parse_models(text: &str) -> anyhow::Result<BTreeMap<String, ModelEntry>> {
    let file: ConfigFile = toml::from_str(text)?;
    Ok(file.models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_file_format() {
        let models = parse_models(
            r#"
            [models.sd15]
            path = "/m/sd15.safetensors"
            dtype = "f16"
            description = "SD 1.5"
            [models.tiny]
            path = "tests/fixtures/tiny-sd"
            "#,
        )
        .expect("valid");
        assert_eq!(models.len(), 2);
        assert_eq!(models["sd15"].dtype.as_deref(), Some("f16"));
        assert_eq!(models["tiny"].path, "tests/fixtures/tiny-sd");
        assert!(parse_models("[models.x]\npth = \"typo\"").is_err());
    }
}
