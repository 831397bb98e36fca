//! The config file: a default model, default switches and the named models, and how `--model` is resolved.
//!
//! The file is `$EMBER_CONFIG`, else `$XDG_CONFIG_HOME/ember/config.toml`, else `~/.config/ember/config.toml`:
//!
//! ```toml
//! model = "sd15"                 # the default model: a [models] name, a file, a diffusers folder or a repo id
//!
//! [defaults]                     # switches every `ember generate`, `ember` / `ember repl` run starts from
//! steps = 30                     # -s      (also: cfg_scale, sampler, width, height, strength, outdir,
//! sampler = "k_euler_a"          # -A       karras_max, negative, prediction_type, timestep_spacing,
//! device = "cuda"                # --device lora_dir, embedding_dir, dtype)
//!
//! [models.sd15]                  # named models (see `repl::config` for an entry's keys)
//! path = "/models/v1-5-pruned-emaonly.safetensors"
//! ```
//!
//! Without `$EMBER_CONFIG`, the older `models.toml` in the same folder is still read for its `[models.NAME]`
//! tables; an entry of `config.toml` with the same name wins. Unknown keys are errors naming the key and the file.
//!
//! Precedence, highest first: the command line; `EMBER_MODEL` (for the model only); a named model's own settings
//! (its dtype, device and defaults); the config file's `model` and `[defaults]`; the model's own defaults (its
//! family's); InvokeAI's built-in ones. `ember study` takes only the model, device and dtype from here.

use crate::args::{ModelArgs, Switches, DEFAULT_MODEL};
use crate::repl::config::ModelEntry;
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `[defaults]` table: the per-image switches people set once, and the device and precision.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub sampler: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub strength: Option<f64>,
    pub outdir: Option<PathBuf>,
    pub karras_max: Option<usize>,
    pub negative: Option<String>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub lora_dir: Option<PathBuf>,
    pub embedding_dir: Option<PathBuf>,
    pub device: Option<String>,
    pub dtype: Option<String>,
}

impl Defaults {
    /// The table as switches (unset ones stay `None`).
    pub fn switches(&self) -> Switches {
        Switches {
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            width: self.width,
            height: self.height,
            strength: self.strength,
            outdir: self.outdir.clone(),
            karras_max: self.karras_max,
            negative: self.negative.clone(),
            prediction_type: self.prediction_type.clone(),
            timestep_spacing: self.timestep_spacing.clone(),
            lora_dir: self.lora_dir.iter().cloned().collect(),
            embedding_dir: self.embedding_dir.iter().cloned().collect(),
            ..Switches::default()
        }
    }

    /// The checks a models-file entry gets, plus strength's range.
    fn check(&self) -> anyhow::Result<()> {
        let as_entry = ember_server::NamedModel {
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            width: self.width,
            height: self.height,
            prediction_type: self.prediction_type.clone(),
            timestep_spacing: self.timestep_spacing.clone(),
            lora_dir: self.lora_dir.clone(),
            embedding_dir: self.embedding_dir.clone(),
            ..Default::default()
        };
        as_entry.check().map_err(|e| anyhow::anyhow!("[defaults] {e}"))?;
        if let Some(strength) = self.strength {
            ember::request::check_strength(strength).map_err(|e| anyhow::anyhow!("[defaults] {e}"))?;
        }
        Ok(())
    }
}

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    model: Option<String>,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
}

/// What the config file(s) say.
#[derive(Debug, Default)]
pub struct Settings {
    /// The default model (`model = …`).
    pub model: Option<String>,
    pub defaults: Defaults,
    /// The named models, sorted by name.
    pub models: BTreeMap<String, ModelEntry>,
    /// The files that exist and were read (the old models.toml first).
    pub files: Vec<PathBuf>,
    /// Where the config file is or would be (for messages).
    pub path: Option<PathBuf>,
}

/// The config file's path (it need not exist): `$EMBER_CONFIG`, else `$XDG_CONFIG_HOME/ember/config.toml`, else
/// `~/.config/ember/config.toml`.
pub fn config_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EMBER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    config_dir().map(|dir| dir.join("config.toml"))
}

fn config_dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .map(|base| base.join("ember"))
}

impl Settings {
    /// Reads the config file (and, without `$EMBER_CONFIG`, the older models.toml beside it); files that do not
    /// exist are empty.
    pub fn load() -> anyhow::Result<Settings> {
        let path = config_file();
        let mut settings = Settings {
            path: path.clone(),
            ..Settings::default()
        };
        if std::env::var_os("EMBER_CONFIG").filter(|p| !p.is_empty()).is_none() {
            if let Some(legacy) = config_dir().map(|dir| dir.join("models.toml")) {
                if let Some(file) = read_file(&legacy)? {
                    settings.models = file.models;
                    settings.files.push(legacy);
                    // An old models.toml only ever held [models]; `model` and [defaults] belong in config.toml.
                    if file.model.is_some() || file.defaults != Defaults::default() {
                        crate::term::warning(format!(
                            "{} sets `model` or [defaults]; those are read from config.toml only",
                            settings.files[0].display()
                        ));
                    }
                }
            }
        }
        if let Some(path) = &path {
            if let Some(file) = read_file(path)? {
                settings.model = file.model;
                settings.defaults = file.defaults;
                settings.models.extend(file.models);
                settings.files.push(path.clone());
            }
        }
        Ok(settings)
    }

    /// `config.toml` (or what `$EMBER_CONFIG` names), for messages.
    pub fn describe_path(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "no config file (set EMBER_CONFIG, or HOME)".to_string(),
        }
    }
}

/// One file parsed and checked; `None` when it does not exist.
fn read_file(path: &Path) -> anyhow::Result<Option<ConfigFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read the config file {}", path.display())),
    };
    parse(&text)
        .map(Some)
        .with_context(|| format!("the config file {} is not valid", path.display()))
}

fn parse(text: &str) -> anyhow::Result<ConfigFile> {
    let file: ConfigFile = toml::from_str(text)?;
    if file.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
        anyhow::bail!("model: is empty; name a model, or leave the key out");
    }
    file.defaults.check()?;
    for (name, entry) in &file.models {
        entry.check(name)?;
    }
    Ok(file)
}

/// The `[models.NAME]` tables of one file's text: the file may be a whole config file; its `model` and `[defaults]`
/// are checked and left out.
pub fn parse_models(text: &str) -> anyhow::Result<BTreeMap<String, ModelEntry>> {
    Ok(parse(text)?.models)
}

/// The named models of one file (`ember serve --models FILE`), sorted by name; none when the file does not exist.
pub fn load_models(path: &Path) -> anyhow::Result<BTreeMap<String, ModelEntry>> {
    Ok(read_file(path)?.map(|file| file.models).unwrap_or_default())
}

/// The model a run loads, with the settings that came with it.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// Path or repo id, device and dtype all filled in.
    pub model: ModelArgs,
    /// The defaults under the command line's switches: a named model's own, over the config file's [defaults].
    pub defaults: Switches,
    /// The `[models.NAME]` entry used, if any.
    pub entry: Option<String>,
    /// The command line's model settings over the config file's [defaults], without the named entry's: what
    /// `!switch` starts every entry from, so that one entry's `dtype` never carries over to the next.
    pub launch: ModelArgs,
}

/// Resolves `--model` (or `EMBER_MODEL`, which clap reads into the same field), the config file's `model`, or the
/// built-in default; a name of the config file's models is used when no such file or folder exists (said on
/// stderr). `--device`/`--dtype` left empty take the entry's, then [defaults]'s, then `auto`.
pub fn resolve_model(args: &ModelArgs) -> anyhow::Result<ResolvedModel> {
    let settings = Settings::load()?;
    resolve_with(args, &settings)
}

fn resolve_with(args: &ModelArgs, settings: &Settings) -> anyhow::Result<ResolvedModel> {
    let wanted = Some(args.model.trim())
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .or_else(|| settings.model.clone())
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let entry = match settings.models.get(&wanted) {
        Some(entry) if !Path::new(&wanted).exists() => {
            eprintln!(
                "model {wanted}: {} (from {})",
                entry.path,
                settings
                    .files
                    .last()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            Some(entry)
        }
        _ => None,
    };
    let pick = |given: &str, from_entry: Option<&String>, from_defaults: &Option<String>| {
        Some(given.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .or_else(|| from_entry.cloned())
            .or_else(|| from_defaults.clone())
            .unwrap_or_else(|| "auto".to_string())
    };
    let config_defaults = settings.defaults.switches();
    let launch = ModelArgs {
        model: wanted.clone(),
        device: pick(&args.device, None, &settings.defaults.device),
        dtype: pick(&args.dtype, None, &settings.defaults.dtype),
        vae_approx: args.vae_approx.clone(),
        vae_approx_encode: args.vae_approx_encode,
    };
    let model = ModelArgs {
        model: entry.map_or_else(|| wanted.clone(), |e| e.path.clone()),
        device: pick(
            &args.device,
            entry.and_then(|e| e.device.as_ref()),
            &settings.defaults.device,
        ),
        dtype: pick(
            &args.dtype,
            entry.and_then(|e| e.dtype.as_ref()),
            &settings.defaults.dtype,
        ),
        // The entry's tiny autoencoder unless the command line gives one (as `!switch` does with the launch flag).
        vae_approx: match entry {
            Some(e) if args.vae_approx.is_empty() && !e.vae_approx.is_empty() => e.vae_approx.clone(),
            _ => args.vae_approx.clone(),
        },
        vae_approx_encode: args.vae_approx_encode,
    };
    Ok(ResolvedModel {
        model,
        defaults: match entry {
            Some(e) => e.switches().over(&config_defaults),
            None => config_defaults,
        },
        entry: entry.map(|_| wanted),
        launch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(model: &str) -> ModelArgs {
        ModelArgs {
            model: model.into(),
            device: String::new(),
            dtype: String::new(),
            vae_approx: Vec::new(),
            vae_approx_encode: false,
        }
    }

    fn settings(text: &str) -> Settings {
        let file = parse(text).expect("valid");
        Settings {
            model: file.model,
            defaults: file.defaults,
            models: file.models,
            ..Settings::default()
        }
    }

    #[test]
    fn precedence_command_line_entry_defaults_builtin() {
        let s = settings(
            r#"
            model = "turbo"
            [defaults]
            steps = 30
            sampler = "k_euler_a"
            device = "cpu"
            [models.turbo]
            path = "/m/no-such-turbo"
            steps = 1
            dtype = "f16"
            "#,
        );
        // Nothing given: the config's model, by name, with its settings over [defaults].
        let r = resolve_with(&args(""), &s).expect("resolves");
        assert_eq!(r.model.model, "/m/no-such-turbo");
        assert_eq!((r.model.device.as_str(), r.model.dtype.as_str()), ("cpu", "f16"));
        assert_eq!(r.defaults.steps, Some(1));
        assert_eq!(r.defaults.sampler.as_deref(), Some("k_euler_a"));
        assert_eq!(r.entry.as_deref(), Some("turbo"));
        // The command line wins.
        let mut given = args("other/repo");
        given.dtype = "f32".into();
        let r = resolve_with(&given, &s).expect("resolves");
        assert_eq!((r.model.model.as_str(), r.model.dtype.as_str()), ("other/repo", "f32"));
        assert_eq!(r.defaults.steps, Some(30));
        assert_eq!(r.entry, None);
        // Empty config: the built-in model, auto device and dtype.
        let r = resolve_with(&args(""), &Settings::default()).expect("resolves");
        assert_eq!(r.model.model, DEFAULT_MODEL);
        assert_eq!((r.model.device.as_str(), r.model.dtype.as_str()), ("auto", "auto"));
    }

    #[test]
    fn an_existing_path_wins_over_a_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = dir.path().join("m").display().to_string();
        std::fs::write(&name, b"x").expect("write");
        let s = settings(&format!("[models.{:?}]\npath = \"/elsewhere\"\n", name));
        assert_eq!(resolve_with(&args(&name), &s).expect("resolves").model.model, name);
    }

    /// `ember serve --models` may be given the whole config file.
    #[test]
    fn a_whole_config_file_gives_its_models() {
        let models = parse_models("model = \"a\"\n[defaults]\nsteps = 2\n[models.a]\npath = \"p\"\n").expect("valid");
        assert_eq!(models.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        for (text, needle) in [
            ("stepz = 3", "stepz"),
            ("[defaults]\nstpes = 3", "stpes"),
            ("[defaults]\nsampler = \"k_nope\"", "sampler"),
            ("[defaults]\nstrength = 2", "strength"),
            ("[models.m]\npath = \"p\"\nsize = 3", "size"),
            ("model = \"\"", "model"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
    }
}
