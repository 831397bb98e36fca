//! The models a server runs: `--model`, and the named models of `--models FILE`. Every one is described at startup
//! (family, schedule, defaults, the engine's request checks) without building its networks, so a job for any of them
//! is checked and given its defaults at submit time; the worker keeps ONE of them in memory and switches when a job
//! names another.
//!
//! Each model has its add-on library: the LoRAs and embeddings of its own `lora_dir` / `embedding_dir` and of the
//! server's `--lora-dir` / `--embedding-dir` folders, listed at startup. Jobs' LoRA names are checked against it at
//! submit time, and the worker hands it to the pipeline whenever it loads the model.

use crate::config::{Config, NamedModel};
use crate::error::{clip, ApiError, ApiResult};
use crate::types::{ModelInfo, Params, ParamsInput};
use anyhow::Context;
use ember::addons::{AddonKind, AddonLibrary};
use ember::device::{parse_device, resolve_dtype};
use ember::model::family::ModelSpec;
use ember::pipeline::{Pipeline, RequestCheck, WorkLimits};
use ember::sample::denoiser::PredictionType;
use ember::sample::schedule::TimestepSpacing;
use ember::sample::SamplerKind;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One model a job may name.
pub struct Served {
    /// As `GET /api/models` reports it (`loaded` is kept by [`Models`]); its `defaults` are the models file's where it
    /// sets them, else the model's own.
    pub info: ModelInfo,
    /// Anything `--model` takes.
    path: String,
    device: String,
    dtype: String,
    /// The models file's schedule settings (engine names), for jobs that leave them out.
    prediction_type: Option<String>,
    timestep_spacing: Option<String>,
    /// The engine's admission checks of this model, with its device's work limits.
    pub checker: RequestCheck,
    /// The LoRAs and embeddings its jobs may use.
    pub addons: Arc<AddonLibrary>,
    /// The folders `addons` was read from, for [`Served::redact`].
    addon_dirs: Vec<(PathBuf, &'static str)>,
    /// The server's `--vae-approx` files, for the previews.
    vae_approx: Vec<PathBuf>,
}

impl Served {
    /// `entry` as the server runs it: `spec` and `checker` come from its files, `checker` with its work limits.
    /// Fails, naming the key, on a per-model default no job could run with.
    fn new(
        entry: &NamedModel,
        (device, dtype): (String, String),
        spec: &ModelSpec,
        checker: RequestCheck,
        addons: Addons,
    ) -> anyhow::Result<Self> {
        entry.check()?;
        let mut info = ModelInfo::new(&entry.name, spec);
        info.description = entry.description.clone();
        let defaults = &mut info.defaults;
        defaults.steps = entry.steps.unwrap_or(defaults.steps);
        defaults.cfg_scale = entry.cfg_scale.unwrap_or(defaults.cfg_scale);
        defaults.width = entry.width.unwrap_or(defaults.width);
        defaults.height = entry.height.unwrap_or(defaults.height);
        // `check` parsed these: stored under the engine's names.
        if let Some(v) = &entry.sampler {
            defaults.sampler = v.parse::<SamplerKind>()?.name().into();
        }
        let prediction_type = match &entry.prediction_type {
            Some(v) => Some(v.parse::<PredictionType>()?.name().to_string()),
            None => None,
        };
        let timestep_spacing = match &entry.timestep_spacing {
            Some(v) => Some(v.parse::<TimestepSpacing>()?.name().to_string()),
            None => None,
        };
        if let Some(v) = &prediction_type {
            info.prediction_type = v.clone();
            info.notes.push(format!("prediction type {v}: set by the models file"));
        }
        if let Some(v) = &timestep_spacing {
            info.timestep_spacing = v.clone();
            info.notes.push(format!("timestep spacing {v}: set by the models file"));
        }
        Ok(Self {
            info,
            path: entry.path.clone(),
            device,
            dtype,
            prediction_type,
            timestep_spacing,
            checker,
            addons: Arc::new(addons.library),
            addon_dirs: addons.dirs,
            vae_approx: entry.vae_approx.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// A job's parameters on this model: its defaults for what the job leaves out (the models file's schedule
    /// settings included), and its name recorded.
    pub fn resolve(&self, input: ParamsInput, random_seed: impl FnMut() -> u32) -> ember::Result<Params> {
        let mut params = input.resolve(&self.info.defaults, random_seed)?;
        params.model = Some(self.info.name.clone());
        if params.prediction_type.is_none() {
            params.prediction_type = self.prediction_type.clone();
        }
        if params.timestep_spacing.is_none() {
            params.timestep_spacing = self.timestep_spacing.clone();
        }
        // LoRAs under the names the library knows them by (the engine also finds them ignoring case); unknown ones
        // are left for the submit check to report.
        for lora in &mut params.loras {
            if let Some(name) = self.lora_name(&lora.name) {
                lora.name = name.to_string();
            }
        }
        Ok(params)
    }

    /// The library's name of the LoRA `name` (exact first, then ignoring case, as the engine looks it up).
    pub fn lora_name(&self, name: &str) -> Option<&str> {
        let loras = self.addons.loras();
        loras
            .get_key_value(name)
            .or_else(|| loras.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(|(n, _)| n.as_str())
    }

    /// Builds its networks (seconds to minutes; blocking), with the work limits its checks use, and reads its
    /// add-ons into it. Returns the pipeline and the warnings about the add-ons (embeddings made for another family,
    /// names that are also words).
    pub fn load(&self) -> anyhow::Result<(Pipeline, Vec<String>)> {
        let mut pipeline = load(&self.path, &self.device, &self.dtype, self.checker.limits())?;
        set_vae_approx(&mut pipeline, &self.vae_approx)?;
        let warnings = pipeline
            .set_addons((*self.addons).clone())
            .context("cannot read its LoRAs and embeddings")?;
        Ok((pipeline, warnings))
    }

    /// `message` without this model's path (an error while loading it names its files): `<model NAME>` instead; and
    /// without its add-on folders: `<lora-dir>` and `<embedding-dir>`.
    pub fn redact(&self, message: &str) -> String {
        let placeholder = format!("<model {}>", self.info.name);
        let path = Path::new(&self.path);
        let mut out = message.to_string();
        for form in path_forms(path) {
            out = out.replace(&form, &placeholder);
        }
        for (dir, placeholder) in &self.addon_dirs {
            out = replace_dir(&out, dir, placeholder);
        }
        out
    }
}

/// How a message may spell `path`: resolved, made absolute, and as given (forms of one character are left out).
fn path_forms(path: &Path) -> Vec<String> {
    let resolved = std::fs::canonicalize(path).ok();
    let absolute = std::path::absolute(path).ok();
    let mut forms: Vec<String> = Vec::new();
    for form in resolved
        .iter()
        .chain(absolute.iter())
        .chain(std::iter::once(&path.to_path_buf()))
    {
        let text = form.to_string_lossy().into_owned();
        if text.len() > 1 && !forms.contains(&text) {
            forms.push(text);
        }
    }
    forms
}

/// `message` with the files under `dir` named as `placeholder/FILE`: a form of the folder followed by a separator,
/// where a path starts (at the start, after a space, a quote or a bracket), so that a short relative folder name
/// (`--lora-dir loras`) does not replace words of the message.
fn replace_dir(message: &str, dir: &Path, placeholder: &str) -> String {
    let mut out = message.to_string();
    for form in path_forms(dir) {
        let trimmed = form.trim_end_matches(['/', std::path::MAIN_SEPARATOR]);
        if trimmed.is_empty() {
            continue;
        }
        let pattern = format!("{trimmed}{}", std::path::MAIN_SEPARATOR);
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&pattern) {
            let (head, tail) = rest.split_at(at);
            let previous = head.chars().next_back().or_else(|| result.chars().next_back());
            result.push_str(head);
            if previous.is_none_or(|c| c.is_whitespace() || "`'\"([<".contains(c)) {
                result.push_str(placeholder);
                result.push(std::path::MAIN_SEPARATOR);
            } else {
                result.push_str(&pattern);
            }
            rest = &tail[pattern.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// A model's add-on library and the folders it was listed from.
struct Addons {
    library: AddonLibrary,
    dirs: Vec<(PathBuf, &'static str)>,
}

/// The library of `entry`: its own folders first (their files win when names clash), then the server's. Folders
/// are listed, not read (the pipeline reads the embeddings when it loads, and a LoRA when a job uses it). Warnings
/// (two files of one name) go to `warnings`, each once.
fn addon_library(config: &Config, entry: &NamedModel, warnings: &mut BTreeSet<String>) -> anyhow::Result<Addons> {
    // An empty folder name is reported as the key's, not as a missing folder.
    entry.check()?;
    let mut library = AddonLibrary::default();
    let mut dirs = Vec::new();
    let folders = [
        (
            AddonKind::Lora,
            "lora_dir",
            "<lora-dir>",
            &entry.lora_dir,
            &config.lora_dirs,
        ),
        (
            AddonKind::Embedding,
            "embedding_dir",
            "<embedding-dir>",
            &entry.embedding_dir,
            &config.embedding_dirs,
        ),
    ];
    for (kind, key, placeholder, own, global) in folders {
        let flag = format!("--{}", key.replace('_', "-"));
        let named = own.iter().map(|d| (d, key.to_string()));
        for (dir, source) in named.chain(global.iter().map(|d| (d, flag.clone()))) {
            let found = library
                .add_dir(kind, dir)
                .with_context(|| format!("{source} {}", dir.display()))?;
            warnings.extend(found);
            dirs.push((dir.clone(), placeholder));
        }
    }
    Ok(Addons { library, dirs })
}

/// Gives `pipeline` the tiny autoencoder of `files` (`--vae-approx`) for its previews.
fn set_vae_approx(pipeline: &mut Pipeline, files: &[PathBuf]) -> anyhow::Result<()> {
    if !files.is_empty() {
        pipeline.load_vae_approx(files)?;
    }
    Ok(())
}

fn load(path: &str, device: &str, dtype: &str, limits: Option<WorkLimits>) -> anyhow::Result<Pipeline> {
    let device = parse_device(device)?;
    let dtype = resolve_dtype(dtype, &device)?;
    let mut pipeline = Pipeline::load(path, &device, dtype)?;
    pipeline.set_work_limits(limits);
    Ok(pipeline)
}

/// The models of a server, and which one the worker has in memory.
pub struct Models {
    /// The models file's order (by name), a `--model` that is none of them first.
    list: Vec<Served>,
    state: Mutex<Loaded>,
}

#[derive(Debug, Clone, Copy)]
struct Loaded {
    /// The model jobs without `model` run on: the one loaded last (it stays so while a switch fails).
    current: usize,
    /// Whether `current` is in memory (not while the worker switches models, nor after a failed switch).
    in_memory: bool,
}

impl Models {
    fn lock(&self) -> MutexGuard<'_, Loaded> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every model, with its `loaded` flag now.
    pub fn infos(&self) -> Vec<ModelInfo> {
        let loaded = *self.lock();
        self.list
            .iter()
            .enumerate()
            .map(|(i, served)| ModelInfo {
                loaded: loaded.in_memory && i == loaded.current,
                ..served.info.clone()
            })
            .collect()
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|s| s.name() == name)
    }

    /// Panics on an index [`Models::find`] or [`Models::current`] did not give.
    pub fn get(&self, index: usize) -> &Served {
        &self.list[index]
    }

    /// The model a job without `model` runs on.
    pub fn current(&self) -> usize {
        self.lock().current
    }

    /// The model a submitted job runs on: the one it names (None or "": the current one).
    pub fn for_job(&self, name: Option<&str>) -> ApiResult<&Served> {
        match name {
            None | Some("") => Ok(self.get(self.current())),
            Some(name) => self.find(name).map(|i| self.get(i)).ok_or_else(|| {
                ApiError::bad_request(
                    Some("model"),
                    format!(
                        "there is no model '{}' on this server; its models are {} (GET /api/models)",
                        clip(name),
                        self.names()
                    ),
                )
            }),
        }
    }

    /// The names, quoted, for messages: `'a', 'b'`.
    /// Every model's name, in order (what a worker tells the queue it can run).
    pub fn all_names(&self) -> Vec<String> {
        self.list.iter().map(|s| s.name().to_string()).collect()
    }

    /// The name of the model in memory, if one is.
    pub fn loaded_name(&self) -> Option<String> {
        let loaded = *self.lock();
        loaded.in_memory.then(|| self.get(loaded.current).name().to_string())
    }

    pub fn names(&self) -> String {
        let names: Vec<String> = self.list.iter().map(|s| format!("'{}'", s.name())).collect();
        names.join(", ")
    }

    /// `message` without any model's path or add-on folder (see [`Served::redact`]).
    pub fn redact(&self, message: &str) -> String {
        self.list
            .iter()
            .fold(message.to_string(), |out, served| served.redact(&out))
    }

    /// The worker dropped the model in memory (to load another).
    pub fn set_unloaded(&self) {
        self.lock().in_memory = false;
    }

    /// The worker loaded model `index`.
    pub fn set_loaded(&self, index: usize) {
        *self.lock() = Loaded {
            current: index,
            in_memory: true,
        };
    }
}

/// `path` and `model` name the same files (as written, or after resolving the paths).
fn same_model(path: &str, model: &str) -> bool {
    if path == model {
        return true;
    }
    match (std::fs::canonicalize(path), std::fs::canonicalize(model)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A model's device and dtype: its own, else the server's.
fn settings(config: &Config, entry: &NamedModel) -> (String, String) {
    (
        entry.device.clone().unwrap_or_else(|| config.device.clone()),
        entry.dtype.clone().unwrap_or_else(|| config.dtype.clone()),
    )
}

/// The work limits of jobs on `device` (the server's flags over the device's defaults).
fn limits(config: &Config, device: &str) -> anyhow::Result<WorkLimits> {
    config.work_limits(WorkLimits::for_device(&parse_device(device)?))
}

/// [`open`] on a blocking thread, for async callers (the server and the workers at startup).
pub async fn open_off_thread(
    config: &Config,
    load_start: bool,
) -> anyhow::Result<(Option<Pipeline>, Models, Vec<String>)> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || open(&config, load_start))
        .await
        .context("the model loading task failed")?
}

/// Startup (blocking: reads model files): loads `config.model` (only describes it unless `load_start`: a front-end
/// whose workers run elsewhere) and describes every other model of `config.models`. A listed model that cannot be
/// described (a missing file, a bad per-model setting) is logged and left out; the start model must load. Returns
/// its pipeline (when loaded), the models, and a line per model left out.
pub fn open(config: &Config, load_start: bool) -> anyhow::Result<(Option<Pipeline>, Models, Vec<String>)> {
    // The server's add-on folders must exist whatever the models: checked before anything is loaded.
    let mut addon_warnings = BTreeSet::new();
    addon_library(config, &NamedModel::default(), &mut addon_warnings)?;
    let start = config
        .models
        .iter()
        .position(|m| m.name == config.model)
        .or_else(|| config.models.iter().position(|m| same_model(&m.path, &config.model)));
    let mut start_entry = match start {
        Some(i) => config.models[i].clone(),
        None => NamedModel {
            path: config.model.clone(),
            ..NamedModel::default()
        },
    };
    let (device, dtype) = settings(config, &start_entry);
    let start_limits = limits(config, &device)?;
    let start_addons = addon_library(config, &start_entry, &mut addon_warnings)
        .with_context(|| format!("the model '{}' (loaded at start) has a bad setting", config.model))?;
    // The start model: loaded (a worker), or only described (a front-end whose workers run elsewhere).
    let (pipeline, loaded_name, spec, checker) = if load_start {
        let mut pipeline = load(&start_entry.path, &device, &dtype, Some(start_limits)).with_context(|| {
            format!(
                "cannot load the model '{}'; pass a local model with --model PATH",
                config.model
            )
        })?;
        let approx = if start_entry.vae_approx.is_empty() {
            &config.vae_approx
        } else {
            &start_entry.vae_approx
        };
        set_vae_approx(&mut pipeline, approx).context("--vae-approx")?;
        // Before its checker is taken: the checks then know its LoRAs and its embeddings' words.
        for warning in pipeline
            .set_addons(start_addons.library.clone())
            .with_context(|| format!("cannot read the LoRAs and embeddings of the model '{}'", config.model))?
        {
            tracing::warn!("{warning}");
        }
        let (name, spec, checker) = (
            pipeline.model_name().to_string(),
            pipeline.spec().clone(),
            pipeline.checker(),
        );
        (Some(pipeline), name, spec, checker)
    } else {
        let (name, spec, checker, warnings) = Pipeline::describe_named(&start_entry.path, start_addons.library.clone())
            .with_context(|| {
                format!(
                    "cannot read the model '{}'; pass a local model with --model PATH",
                    config.model
                )
            })?;
        addon_warnings.extend(warnings);
        (None, name, spec, checker.with_limits(Some(start_limits)))
    };
    if start.is_none() {
        // Not a listed model: served under its short name (file stem, folder or repo id).
        start_entry.name = loaded_name;
        if config.models.iter().any(|m| m.name == start_entry.name) {
            anyhow::bail!(
                "--model {} is called '{}', like another model of the models file; pass --model {} to start with \
                 that one, or rename it",
                config.model,
                start_entry.name,
                start_entry.name
            );
        }
    }
    let first = Served::new(&start_entry, (device, dtype), &spec, checker, start_addons)
        .with_context(|| format!("the model '{}' (loaded at start) has a bad setting", start_entry.name))?;

    // The start model keeps its place in the file's order; one that is not in the file comes first.
    let mut first = Some(first);
    let mut list = Vec::new();
    let mut skipped = Vec::new();
    if start.is_none() {
        list.extend(first.take());
    }
    for (i, entry) in config.models.iter().enumerate() {
        if config.models[..i].iter().any(|m| m.name == entry.name) || entry.name.is_empty() {
            skipped.push(format!(
                "model '{}' is left out: its name is empty or taken",
                entry.name
            ));
        } else if Some(i) == start {
            list.extend(first.take());
        } else {
            let described = (|| -> anyhow::Result<Served> {
                let (device, dtype) = settings(config, entry);
                let limits = limits(config, &device)?;
                let addons = addon_library(config, entry, &mut addon_warnings)?;
                // The checker knows the model's embeddings (their words, and those made for another family).
                let (spec, checker, warnings) = Pipeline::describe_with_addons(&entry.path, addons.library.clone())?;
                addon_warnings.extend(warnings.into_iter().map(|w| format!("model '{}': {w}", entry.name)));
                Served::new(entry, (device, dtype), &spec, checker.with_limits(Some(limits)), addons)
            })();
            match described {
                Ok(served) => list.push(served),
                Err(e) => skipped.push(format!("model '{}' is left out: {e:#}", entry.name)),
            }
        }
    }
    list.extend(first);
    // A model without its own tiny autoencoder takes the server's.
    for served in list.iter_mut().filter(|s| s.vae_approx.is_empty()) {
        served.vae_approx = config.vae_approx.clone();
    }
    for warning in addon_warnings {
        tracing::warn!("{warning}");
    }
    let start_index = list.iter().position(|s| s.name() == start_entry.name).unwrap_or(0);
    let models = Models {
        list,
        state: Mutex::new(Loaded {
            current: start_index,
            in_memory: pipeline.is_some(),
        }),
    };
    Ok((pipeline, models, skipped))
}

#[cfg(test)]
mod tests {
    use super::replace_dir;
    use std::path::Path;

    #[test]
    fn addon_folders_are_replaced_where_a_path_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loras = dir.path().join("loras");
        let message = format!("cannot use {}/a.safetensors: bad; GET /api/loras/x", loras.display());
        assert_eq!(
            replace_dir(&message, &loras, "<lora-dir>"),
            "cannot use <lora-dir>/a.safetensors: bad; GET /api/loras/x"
        );
        // A relative folder as given: only where a path starts.
        let relative = Path::new("loras");
        assert_eq!(
            replace_dir("`loras/a.pt` and /api/loras/b and loras/c", relative, "<lora-dir>"),
            "`<lora-dir>/a.pt` and /api/loras/b and <lora-dir>/c"
        );
        assert_eq!(
            replace_dir("loras/x", Path::new("loras/"), "<d>"),
            "<d>/x",
            "a trailing separator"
        );
    }
}
