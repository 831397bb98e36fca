//! How `ember serve` is set up: where it listens, where it keeps its data and which models it runs.

use crate::image_store::ImagesLocation;
use ember::pipeline::{WorkLimits, MEGAPIXEL};
use ember::sample::denoiser::PredictionType;
use ember::sample::schedule::TimestepSpacing;
use ember::sample::SamplerKind;
use std::path::PathBuf;
use std::time::Duration;

/// Server settings. [`Config::default`] matches the CLI's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; loopback by default so the API is not exposed to the network by accident.
    pub host: String,
    /// TCP port; 0 picks a free one (tests).
    pub port: u16,
    /// Holds `ember.sqlite` and `images/`.
    pub data_dir: PathBuf,
    /// The model loaded at start: a path or Hugging Face repo id, as `ember generate --model`, or the name (or path)
    /// of one of `models`.
    pub model: String,
    /// Named models a job may ask for (`ember serve --models FILE`), one in memory at a time. Empty: `model` only.
    /// A `model` that is none of them is served too, under its own short name.
    pub models: Vec<NamedModel>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// `auto`, `f32`, `f16` or `bf16` (as `ember generate --dtype`).
    pub dtype: String,
    /// When set, every API request must carry it (see `access.rs`).
    pub token: Option<String>,
    /// Host names accepted in the `Host` header besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Largest image of one job, in megapixels; None: the device's default ([`ember::pipeline::WorkLimits`]).
    pub max_megapixels: Option<f64>,
    /// Most megapixel-steps one job may take; None: the device's default.
    pub work_budget: Option<f64>,
    /// Folders of LoRAs every model's jobs may use (`ember serve --lora-dir`), after each model's own `lora_dir`.
    pub lora_dirs: Vec<PathBuf>,
    /// Folders of textual-inversion embeddings for every model (`--embedding-dir`), after each model's own.
    pub embedding_dirs: Vec<PathBuf>,
    /// The HTTP APIs served (`--api`); a disabled one's routes answer 404.
    pub apis: Apis,
    /// Where the jobs and the gallery's records live (`--queue`): None, `<data-dir>/ember.sqlite`; a path, that SQLite
    /// file; `postgres://…`, PostgreSQL (for workers on several machines).
    pub queue: Option<String>,
    /// Where the PNGs go (`--images`): None, `<data-dir>/images`; a folder; or `s3://bucket/prefix`.
    pub images: Option<ImagesLocation>,
    /// Workers inside `ember serve` (`--workers`): 1 by default; 0 for a front-end only (its jobs run in `ember
    /// worker` processes); more than one needs the PostgreSQL queue (each loads its own model).
    pub workers: usize,
    /// PostgreSQL queue: how long a worker holds a job without a sign of life before another may take it.
    pub lease: Duration,
    /// PostgreSQL queue: a job submitted here whose worker died this many times fails (with the reason).
    pub max_attempts: i64,
    /// `ember worker --name`: None, `HOST-PID`.
    pub worker_name: Option<String>,
    /// `ember worker --claim loaded`: take only jobs for the model in memory (never switch models).
    pub only_loaded: bool,
    /// `--vae-approx`: a tiny autoencoder (TAESD) for the live previews of every model it fits (a decoder file, and
    /// optionally its encoder). Images are still decoded by each model's VAE.
    pub vae_approx: Vec<PathBuf>,
}

/// Where `--queue` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueLocation {
    Sqlite(PathBuf),
    /// The connection URL (with its password: never log it; see `pg::describe_url`).
    Postgres(String),
}

/// A worker lease unless `--lease-secs` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Attempts a job gets unless `--max-attempts` says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;

/// Which HTTP APIs a server answers (`ember serve --api ember,a1111,openai`, all three by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Apis {
    /// Ember's own `/api/…` (jobs, events, gallery), which the page needs. `GET /api/health` and
    /// `GET /api/openapi.json` are served whatever the list.
    pub ember: bool,
    /// AUTOMATIC1111's `/sdapi/v1/…`.
    pub a1111: bool,
    /// OpenAI's Images API: `/v1/images/generations`, `/v1/images/edits`, `/v1/models`.
    pub openai: bool,
}

impl Default for Apis {
    fn default() -> Self {
        Self {
            ember: true,
            a1111: true,
            openai: true,
        }
    }
}

impl std::str::FromStr for Apis {
    type Err = String;

    /// A comma-separated list of `ember`, `a1111` (also `automatic1111`, `sdapi`) and `openai`.
    fn from_str(list: &str) -> Result<Self, String> {
        let mut apis = Apis {
            ember: false,
            a1111: false,
            openai: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.to_ascii_lowercase().as_str() {
                "ember" => apis.ember = true,
                "a1111" | "automatic1111" | "sdapi" => apis.a1111 = true,
                "openai" => apis.openai = true,
                other => {
                    return Err(format!(
                        "unknown API '{other}'; give a comma-separated list of ember, a1111 and openai"
                    ))
                }
            }
        }
        if apis
            == (Apis {
                ember: false,
                a1111: false,
                openai: false,
            })
        {
            return Err("name at least one API: ember, a1111 or openai".into());
        }
        Ok(apis)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9090,
            data_dir: PathBuf::from("ember-data"),
            model: ember::model::DEFAULT_REPO_ID.into(),
            models: Vec::new(),
            device: "auto".into(),
            dtype: "auto".into(),
            token: None,
            allowed_hosts: Vec::new(),
            max_megapixels: None,
            work_budget: None,
            lora_dirs: Vec::new(),
            embedding_dirs: Vec::new(),
            apis: Apis::default(),
            queue: None,
            images: None,
            workers: 1,
            lease: DEFAULT_LEASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            worker_name: None,
            only_loaded: false,
            vae_approx: Vec::new(),
        }
    }
}

/// One model a job may name (an entry of the REPL's models file, `[models.NAME]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedModel {
    /// What a job's `model` says; `GET /api/models` lists it.
    pub name: String,
    /// Anything `--model` takes: a file, a diffusers folder or a Hugging Face repo id.
    pub path: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto`; None: the server's.
    pub device: Option<String>,
    /// `auto`, `f32`, `f16` or `bf16`; None: the server's.
    pub dtype: Option<String>,
    /// Shown with the model in `GET /api/models`.
    pub description: Option<String>,
    /// What a job on this model that leaves the field out takes; these win over the model's own defaults.
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub sampler: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// `epsilon` or `v_prediction`, for jobs that leave `prediction_type` out.
    pub prediction_type: Option<String>,
    /// `linspace`, `leading`, `trailing` or `karras-kdiffusion`, for jobs that leave `timestep_spacing` out.
    pub timestep_spacing: Option<String>,
    /// A folder of LoRAs for this model's jobs, besides the server's `--lora-dir` folders (its files win over theirs
    /// when names clash).
    pub lora_dir: Option<PathBuf>,
    /// A folder of textual-inversion embeddings for this model, besides the server's `--embedding-dir` folders.
    pub embedding_dir: Option<PathBuf>,
    /// This model's tiny autoencoder for previews (`vae_approx`): replaces the server's `--vae-approx` for it.
    pub vae_approx: Vec<PathBuf>,
}

impl NamedModel {
    /// Rejects per-model values no job could run with, naming the key (`steps: must be at least 1`); the REPL reads
    /// its models file through this check too.
    pub fn check(&self) -> anyhow::Result<()> {
        let bad = |key: &str, e: &dyn std::fmt::Display| anyhow::anyhow!("{key}: {e}");
        if let Some(v) = &self.sampler {
            v.parse::<SamplerKind>().map_err(|e| bad("sampler", &e))?;
        }
        if let Some(v) = &self.prediction_type {
            v.parse::<PredictionType>().map_err(|e| bad("prediction_type", &e))?;
        }
        if let Some(v) = &self.timestep_spacing {
            v.parse::<TimestepSpacing>().map_err(|e| bad("timestep_spacing", &e))?;
        }
        if self.steps == Some(0) {
            return Err(bad("steps", &"must be at least 1"));
        }
        if let Some(v) = self.cfg_scale.filter(|v| !v.is_finite() || *v < 0.0) {
            return Err(bad("cfg_scale", &format!("{v} is not a scale ≥ 0")));
        }
        for (key, side) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = side.filter(|v| *v == 0 || v % 8 != 0) {
                return Err(bad(key, &format!("{v} is not a positive multiple of 8")));
            }
        }
        // Whether the folder exists is found when the server or the REPL reads it.
        for (key, dir) in [("lora_dir", &self.lora_dir), ("embedding_dir", &self.embedding_dir)] {
            if dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
                return Err(bad(key, &"is empty; give a folder, or leave the key out"));
            }
        }
        Ok(())
    }
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("ember.sqlite")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    /// Where the queue is (`--queue`, else the SQLite file of the data folder).
    pub fn queue_location(&self) -> QueueLocation {
        match self.queue.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                QueueLocation::Postgres(url.to_string())
            }
            Some(path) => QueueLocation::Sqlite(PathBuf::from(path)),
            None => QueueLocation::Sqlite(self.db_path()),
        }
    }

    /// Where the images go (`--images`, else the data folder's `images/`).
    pub fn images_location(&self) -> ImagesLocation {
        self.images
            .clone()
            .unwrap_or_else(|| ImagesLocation::Folder(self.images_dir()))
    }

    /// The device's default limits (`defaults`) with this configuration's overrides.
    pub fn work_limits(&self, defaults: WorkLimits) -> anyhow::Result<WorkLimits> {
        let megapixels = |value: Option<f64>, flag: &str, default: u64| -> anyhow::Result<u64> {
            match value {
                None => Ok(default),
                Some(v) if v.is_finite() && v > 0.0 => Ok((v * MEGAPIXEL as f64).min(u64::MAX as f64) as u64),
                Some(v) => anyhow::bail!("{flag} {v} must be a positive number"),
            }
        };
        Ok(WorkLimits {
            max_pixels: megapixels(self.max_megapixels, "--max-pixels", defaults.max_pixels)?,
            max_pixel_steps: megapixels(self.work_budget, "--work-budget", defaults.max_pixel_steps)?,
        })
    }
}
