//! Where the REPL keeps its files, and one named model of the config file's `[models.NAME]` tables (used by
//! `--model NAME`, `!models` / `!switch` and `ember serve --models`). The config file itself (where it is, `model`,
//! `[defaults]`, precedence) is [`crate::settings`]. An entry:
//!
//! ```toml
//! [models.sd15]
//! path = "/models/v1-5-pruned-emaonly.safetensors"   # anything --model takes: file, folder or repo id
//! dtype = "f16"                                      # optional: auto, f32, f16, bf16 (the REPL's --dtype otherwise)
//! device = "cuda"                                    # optional: the REPL's --device otherwise
//! description = "Stable Diffusion 1.5"               # optional: shown by !models
//!
//! [models.sdxl-turbo]
//! path = "/models/sdxl-turbo"
//! description = "SDXL-Turbo: one step, no guidance"
//! # Optional generation defaults of this model, for every line that does not set the switch itself (on the line or
//! # among the REPL's launch flags); they win over the model's own defaults (those `model:` prints after loading).
//! steps = 1                                          # -s
//! cfg_scale = 0                                      # -C (≤ 1: no classifier-free guidance)
//! sampler = "k_euler"                                # -A
//! width = 512                                        # -W
//! height = 512                                       # -H
//! timestep_spacing = "trailing"                      # --timestep-spacing: linspace, leading, trailing, karras-kdiffusion
//! prediction_type = "epsilon"                        # --prediction-type: epsilon, v_prediction
//! lora_dir = "/models/loras/sdxl"                    # --lora-dir: this model's LoRAs, besides the launch flags' folders
//! embedding_dir = "/models/embeddings/sdxl"          # --embedding-dir: its textual-inversion embeddings
//! vae_approx = "/models/taesdxl_decoder.pth"         # --vae-approx: its tiny autoencoder (or a list: encoder, decoder)
//! ```
//!
//! `!switch` starts every model from the REPL's launch flags: an entry's `dtype`, `device` and defaults apply to
//! that entry only, never to the next one switched to.

use crate::args::Switches;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One named model of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub path: String,
    pub dtype: Option<String>,
    pub device: Option<String>,
    pub description: Option<String>,
    /// Generation defaults of this model (see the module documentation).
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub sampler: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    /// A folder of LoRAs (and one of embeddings) for this model only, added to the `--lora-dir` /
    /// `--embedding-dir` folders of the REPL or `ember serve`.
    pub lora_dir: Option<PathBuf>,
    pub embedding_dir: Option<PathBuf>,
    /// This model's tiny autoencoder (`--vae-approx`): a file, or a list (its encoder and decoder); it replaces the
    /// launch flag's while this model is loaded (a TAESD is made for one family's latents).
    #[serde(default, deserialize_with = "one_or_more_paths")]
    pub vae_approx: Vec<PathBuf>,
}

/// A TOML string or array of strings as paths.
fn one_or_more_paths<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(PathBuf),
        More(Vec<PathBuf>),
    }
    Ok(match OneOrMore::deserialize(deserializer)? {
        OneOrMore::One(path) => vec![path],
        OneOrMore::More(paths) => paths,
    })
}

impl ModelEntry {
    /// The entry's generation defaults as switches (unset ones stay `None`), for [`crate::runner::Runner`] to put
    /// under every line while this model is loaded.
    pub fn switches(&self) -> Switches {
        Switches {
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            width: self.width,
            height: self.height,
            prediction_type: self.prediction_type.clone(),
            timestep_spacing: self.timestep_spacing.clone(),
            lora_dir: self.lora_dir.iter().cloned().collect(),
            embedding_dir: self.embedding_dir.iter().cloned().collect(),
            ..Switches::default()
        }
    }

    /// The defaults as the switches they stand for (`-s 1 -C 0 --timestep-spacing trailing`); empty when none.
    pub fn defaults_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.steps {
            parts.push(format!("-s {v}"));
        }
        if let Some(v) = self.cfg_scale {
            parts.push(format!("-C {v}"));
        }
        if let Some(v) = &self.sampler {
            parts.push(format!("-A {v}"));
        }
        if let Some(v) = self.width {
            parts.push(format!("-W {v}"));
        }
        if let Some(v) = self.height {
            parts.push(format!("-H {v}"));
        }
        if let Some(v) = &self.prediction_type {
            parts.push(format!("--prediction-type {v}"));
        }
        if let Some(v) = &self.timestep_spacing {
            parts.push(format!("--timestep-spacing {v}"));
        }
        if let Some(v) = &self.lora_dir {
            parts.push(format!("--lora-dir {}", v.display()));
        }
        if let Some(v) = &self.embedding_dir {
            parts.push(format!("--embedding-dir {}", v.display()));
        }
        parts.join(" ")
    }

    /// This entry as `ember serve` takes it.
    pub fn named(&self, name: &str) -> ember_server::NamedModel {
        ember_server::NamedModel {
            name: name.to_string(),
            path: self.path.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            description: self.description.clone(),
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            width: self.width,
            height: self.height,
            prediction_type: self.prediction_type.clone(),
            timestep_spacing: self.timestep_spacing.clone(),
            lora_dir: self.lora_dir.clone(),
            embedding_dir: self.embedding_dir.clone(),
            vae_approx: self.vae_approx.clone(),
        }
    }

    /// Rejects values no line could run with (the server's check of the same entries), so a typo is reported when
    /// the file is read, naming the entry.
    pub(crate) fn check(&self, name: &str) -> anyhow::Result<()> {
        self.named(name)
            .check()
            .map_err(|e| anyhow::anyhow!("[models.{name}] {e}"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse_models;

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
        assert_eq!(models["tiny"].switches(), Switches::default());
        assert_eq!(models["tiny"].defaults_text(), "");
    }

    #[test]
    fn per_model_defaults() {
        let models = parse_models(
            r#"
            [models.turbo]
            path = "/m/sdxl-turbo"
            steps = 1
            cfg_scale = 0
            sampler = "k_euler_a"
            width = 512
            height = 768
            prediction_type = "epsilon"
            timestep_spacing = "trailing"
            "#,
        )
        .expect("valid");
        let sw = models["turbo"].switches();
        assert_eq!(
            (sw.steps, sw.cfg_scale, sw.width, sw.height),
            (Some(1), Some(0.0), Some(512), Some(768))
        );
        assert_eq!(sw.sampler.as_deref(), Some("k_euler_a"));
        assert_eq!(
            (sw.prediction_type.as_deref(), sw.timestep_spacing.as_deref()),
            (Some("epsilon"), Some("trailing"))
        );
        assert_eq!(sw.seed, None);
        assert_eq!(
            models["turbo"].defaults_text(),
            "-s 1 -C 0 -A k_euler_a -W 512 -H 768 --prediction-type epsilon --timestep-spacing trailing"
        );
        for (bad, needle) in [
            ("sampler = \"k_nope\"", "sampler"),
            ("timestep_spacing = \"sideways\"", "timestep_spacing"),
            ("prediction_type = \"x0\"", "prediction_type"),
            ("steps = 0", "steps"),
            ("cfg_scale = -1", "cfg_scale"),
            ("width = 100", "width"),
            ("lora_dir = \"\"", "lora_dir"),
            ("embedding_dir = \"\"", "embedding_dir"),
        ] {
            let err = parse_models(&format!("[models.m]\npath = \"p\"\n{bad}\n")).expect_err(bad);
            let text = format!("{err:#}");
            assert!(text.contains("[models.m]") && text.contains(needle), "{bad}: {text}");
        }
    }

    #[test]
    fn per_model_addon_folders() {
        let models = parse_models(
            r#"
            [models.xl]
            path = "/m/sdxl"
            lora_dir = "/loras/xl"
            embedding_dir = "/embeddings/xl"
            "#,
        )
        .expect("valid");
        let entry = &models["xl"];
        let sw = entry.switches();
        assert_eq!(sw.lora_dir, [PathBuf::from("/loras/xl")]);
        assert_eq!(sw.embedding_dir, [PathBuf::from("/embeddings/xl")]);
        assert_eq!(
            entry.defaults_text(),
            "--lora-dir /loras/xl --embedding-dir /embeddings/xl"
        );
        let named = entry.named("xl");
        assert_eq!(
            (named.lora_dir.as_deref(), named.embedding_dir.as_deref()),
            (Some(Path::new("/loras/xl")), Some(Path::new("/embeddings/xl")))
        );
        assert!(named.vae_approx.is_empty());
    }

    #[test]
    fn a_models_tiny_autoencoder_is_a_file_or_a_list() {
        let models = parse_models(
            r#"
            [models.one]
            path = "/m/sd15"
            vae_approx = "/taesd/taesd_decoder.pth"
            [models.two]
            path = "/m/sd15"
            vae_approx = ["/taesd/taesd_encoder.pth", "/taesd/taesd_decoder.pth"]
            "#,
        )
        .expect("valid");
        assert_eq!(models["one"].vae_approx, [PathBuf::from("/taesd/taesd_decoder.pth")]);
        assert_eq!(models["two"].named("two").vae_approx.len(), 2);
        assert!(parse_models("[models.x]\npath = \"/m\"\nvae_approx = 3\n").is_err());
    }
}
