//! The JSON objects of docs/api.md: job parameters (as sent and as resolved), jobs, gallery images, events.

use ember::request::{
    GenerateRequest, InitImage, DEFAULT_CFG_SCALE, DEFAULT_KARRAS_MAX, DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_STRENGTH,
};
use ember::sample::SamplerKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Job parameters as a client sends them; everything but `prompt` has InvokeAI's default.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamsInput {
    /// Required, non-empty.
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// Default 50.
    pub steps: Option<usize>,
    /// Default 7.5.
    pub cfg_scale: Option<f64>,
    /// Default `k_lms`; see `GET /api/samplers`.
    pub sampler: Option<String>,
    /// Null or absent: a random seed, chosen at submit time and returned in the job's params.
    pub seed: Option<u32>,
    /// Default 512.
    pub width: Option<usize>,
    /// Default 512.
    pub height: Option<usize>,
    /// img2img only, in [0, 1]; default 0.75.
    pub strength: Option<f64>,
    /// img2img: scale the init image into width × height. Default false.
    pub fit: Option<bool>,
    /// Default 30.
    pub karras_max: Option<usize>,
    /// A gallery image to use as init image (not with an uploaded `init_image`).
    pub init_image_id: Option<i64>,
}

/// Job parameters with defaults and the seed filled in: what runs, and what a job and its image report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Params {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: String,
    pub seed: u32,
    pub width: usize,
    pub height: usize,
    pub strength: f64,
    pub fit: bool,
    pub karras_max: usize,
    pub init_image_id: Option<i64>,
}

impl ParamsInput {
    /// Fills in the defaults; `random_seed` is called only when no seed was given.
    pub fn resolve(self, random_seed: impl FnOnce() -> u32) -> Params {
        Params {
            prompt: self.prompt.unwrap_or_default(),
            negative_prompt: self.negative_prompt.unwrap_or_default(),
            steps: self.steps.unwrap_or(DEFAULT_STEPS),
            cfg_scale: self.cfg_scale.unwrap_or(DEFAULT_CFG_SCALE),
            sampler: self.sampler.unwrap_or_else(|| SamplerKind::KLms.name().to_string()),
            seed: self.seed.unwrap_or_else(random_seed),
            width: self.width.unwrap_or(DEFAULT_SIZE),
            height: self.height.unwrap_or(DEFAULT_SIZE),
            strength: self.strength.unwrap_or(DEFAULT_STRENGTH),
            fit: self.fit.unwrap_or(false),
            karras_max: self.karras_max.unwrap_or(DEFAULT_KARRAS_MAX),
            init_image_id: self.init_image_id,
        }
    }
}

impl Params {
    /// The engine request; `init_image` is None for txt2img.
    pub fn to_request(&self, init_image: Option<InitImage>) -> ember::Result<GenerateRequest> {
        Ok(GenerateRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.parse()?,
            seed: self.seed,
            width: self.width,
            height: self.height,
            init_image,
            strength: self.strength,
            fit: self.fit,
            karras_max: self.karras_max,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed | JobStatus::Canceled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Txt2img,
    Img2img,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Txt2img => "txt2img",
            Mode::Img2img => "img2img",
        }
    }
}

/// One generation request in the queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub status: JobStatus,
    pub params: Params,
    pub mode: Mode,
    /// Steps that will actually run: `floor(strength × steps)` for img2img.
    pub steps_total: i64,
    pub steps_done: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub image_id: Option<i64>,
}

/// A finished image in the gallery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Image {
    pub id: i64,
    pub job_id: i64,
    /// `/api/images/{id}/file`.
    pub url: String,
    pub seed: u32,
    pub width: u32,
    pub height: u32,
    pub created_at: String,
    pub params: Params,
    /// InvokeAI's `Dream` command line that reproduces the image.
    pub dream: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImagePage {
    pub images: Vec<Image>,
    pub total: i64,
    pub page: i64,
    pub per_page: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SamplerList {
    pub samplers: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub loaded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

/// `progress` event data: one denoising step finished.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    pub job_id: i64,
    pub step: usize,
    pub total: usize,
    /// Estimated seconds left, from the mean step time so far.
    pub eta_s: f64,
    /// `data:image/png;base64,…`: the latents mapped to RGB, at latent size (1/8 of the image).
    pub preview: String,
}

/// `image` event data: a job's image is in the gallery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageEvent {
    pub job_id: i64,
    pub image: Image,
}
