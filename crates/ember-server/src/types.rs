//! The JSON objects of docs/api.md: job parameters (as sent and as resolved), jobs, gallery images, events.

use ember::model::family::ModelSpec;
use ember::request::Outcrop as EngineOutcrop;
use ember::request::{
    GenerateRequest, InitImage, DEFAULT_CFG_SCALE, DEFAULT_KARRAS_MAX, DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_STRENGTH,
};
use ember::sample::denoiser::PredictionType;
use ember::sample::schedule::TimestepSpacing;
use ember::sample::SamplerKind;
use ember::text::prompt::LoraUse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Job parameters as a client sends them; everything but `prompt` has a default: the job's model's for `steps`,
/// `cfg_scale`, `sampler`, `width` and `height` (`GET /api/models`: InvokeAI's for SD 1.x), InvokeAI's for the rest.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamsInput {
    /// The model to run on: a `name` from `GET /api/models`. Null, absent or "": the model loaded now. A job whose
    /// model is not the loaded one waits for the server to load it (one model is in memory at a time).
    pub model: Option<String>,
    /// Required, non-empty. InvokeAI's prompt language: `word+`, `(phrase)1.3`, `[negative words]`, blends
    /// `("a", "b").blend(1, 1)` and `a:0.25 b:0.75`.
    // An Option only so that a missing prompt gets the API's own error naming it; clients must send it.
    #[schema(required = true, value_type = String)]
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// Default: the model's (50; 1 for Turbo models, 4 for LCM models).
    pub steps: Option<usize>,
    /// Default: the model's (7.5; 0 for Turbo models, 8 for LCM models). ≤ 1 runs without classifier-free guidance.
    pub cfg_scale: Option<f64>,
    /// Default: the model's (`k_lms` for SD 1.x/2.x, `k_euler` for SDXL and Turbo, `lcm` for LCM models); see
    /// `GET /api/samplers`.
    pub sampler: Option<String>,
    /// Null or absent: a random seed, chosen at submit time and returned in the job's params.
    // A u32: int32 would tell generated clients to refuse seeds over 2147483647.
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub seed: Option<u32>,
    /// Default: the model's size (512 for SD 1.x, the trained 512 or 768 for SD 2.x, 1024 for SDXL).
    pub width: Option<usize>,
    /// Default: the model's size, as `width`.
    pub height: Option<usize>,
    /// img2img, and the second pass of `hires_fix`: in [0, 1]; default 0.75.
    pub strength: Option<f64>,
    /// img2img: scale the init image into width × height. Default false.
    pub fit: Option<bool>,
    /// Default 30.
    pub karras_max: Option<usize>,
    /// A gallery image to use as init image (not with an uploaded `init_image`).
    pub init_image_id: Option<i64>,
    /// img2img: lengthen the schedule so that exactly `steps` steps run from the init image. Default false.
    pub exact_steps: Option<bool>,
    /// InvokeAI's `-V`: the seed's noise is walked toward each `seed`'s noise by `weight` (in [0, 1]), in order.
    pub with_variations: Option<Vec<Variation>>,
    /// InvokeAI's `-v`, in [0, 1] (0 = none): a fresh random seed is chosen at submit time and appended to
    /// `with_variations` with this weight; the job's params report it there.
    pub variation_amount: Option<f64>,
    /// Circular padding, so the image tiles. Default false.
    pub seamless: Option<bool>,
    /// VAE encode/decode in overlapping 512-pixel tiles (diffusers' VAE tiling): bounded memory for large images,
    /// pixels differ slightly. Default false.
    pub vae_tiling: Option<bool>,
    /// InvokeAI's dynamic threshold of the guided prediction, k-samplers only; ≥ 0, 0 = off (default).
    pub threshold: Option<f64>,
    /// Fraction of Perlin noise mixed into the initial noise, in [0, 1], 0 = off (default); the image's sides must
    /// be multiples of 64 pixels.
    pub perlin: Option<f64>,
    /// txt2img larger than the model's native size: a first pass at about the native size, then img2img up to
    /// width × height with `strength`. Default false.
    pub hires_fix: Option<bool>,
    /// Keep prompt blend weights as written instead of normalising them to sum 1. Default false.
    pub skip_normalize: Option<bool>,
    /// Cut prompts at CLIP's 77 tokens (InvokeAI 2.x) instead of encoding long prompts in 77-token chunks.
    /// Default false.
    pub truncate_prompts: Option<bool>,
    /// Fade prompt fragments weighted below 1 by masking their tokens in the text encoder's attention (compel's
    /// default) instead of mixing in the prompt without them (InvokeAI 2.x). Default false.
    pub downweight_mask: Option<bool>,
    /// `epsilon` or `v_prediction`: what the model predicts, for a single file that cannot say (SD 2.x). Null,
    /// absent or "": the model's own (`GET /api/models`).
    pub prediction_type: Option<String>,
    /// `linspace`, `leading`, `trailing` (diffusers' spacings) or `karras-kdiffusion` (InvokeAI's). Default: the
    /// model's own (trailing for Turbo models, leading for SDXL, InvokeAI's for SD 1.x/2.x). Null, absent or "":
    /// the model's own.
    pub timestep_spacing: Option<String>,
    /// LoRAs applied to the image besides those the prompt names (`<lora:NAME:WEIGHT>`, `withLora(NAME, WEIGHT)`):
    /// names from `GET /api/loras` (of the job's model), each with a weight (default 1; at most 100 either way).
    /// Default none.
    pub loras: Option<Vec<LoraInput>>,
    /// Inpainting: a gallery image whose stored mask (its `mask_url`) is this job's mask, as an uploaded
    /// `init_mask` would be (not with one). Needs an init image. "Use all" of a page resubmits a mask this way.
    pub init_mask_id: Option<i64>,
    /// Inpainting: repaint what the mask keeps and keep what it repaints. Default false.
    pub invert_mask: Option<bool>,
    /// Inpainting: feathers the edge of the pasted-back area over this many pixels, inside the repainted area;
    /// 0 (default) to 256.
    #[schema(maximum = 256)]
    pub mask_blur: Option<u32>,
    /// Outpainting (InvokeAI's `--outcrop`): pixels added to each side of the init image's canvas, multiples of 8;
    /// the new area is painted. Default none.
    pub outcrop: Option<Outcrop>,
    /// Inpainting: put the init image's own pixels back outside the mask (default true); false returns the decoded
    /// image as it is (diffusers' output: everything went through the VAE).
    pub paste_back: Option<bool>,
}

/// Pixels added to each side of an init image for outpainting: multiples of 8, each at most 4096, and the extended
/// canvas at most 4096 pixels on a side. A side left out is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Outcrop {
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
}

impl Outcrop {
    pub fn is_empty(&self) -> bool {
        *self == Outcrop::default()
    }

    pub fn to_engine(self) -> EngineOutcrop {
        EngineOutcrop {
            top: self.top,
            bottom: self.bottom,
            left: self.left,
            right: self.right,
        }
    }

    /// The canvas an image of `(w, h)` pixels grows to.
    pub fn grow(&self, (w, h): (u32, u32)) -> (u32, u32) {
        (
            w.saturating_add(self.left).saturating_add(self.right),
            h.saturating_add(self.top).saturating_add(self.bottom),
        )
    }
}

/// A LoRA of a job as a client sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraInput {
    /// A `name` from `GET /api/loras`.
    pub name: String,
    /// How strongly it applies, on the text encoders and the UNet alike; default 1. Finite, in [-100, 100]; 0 leaves
    /// the model as it is.
    pub weight: Option<f64>,
}

/// A LoRA a job applies, with its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoraWeight {
    /// Its name in `GET /api/loras`.
    pub name: String,
    pub weight: f64,
}

/// One variation of the initial noise: slerp toward the noise of `seed` by `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variation {
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub seed: u32,
    /// In [0, 1]: 0 keeps the noise, 1 replaces it by `seed`'s.
    pub weight: f64,
}

/// Job parameters with defaults and the seeds filled in: what runs, and what a job and its image report.
///
/// Stored as JSON in the database; `serde(default)` lets rows written before a field existed load with that
/// field's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Params {
    /// The model the job runs on (its `name` in `GET /api/models`). Null in jobs stored by an Ember that served one
    /// model: those run on the model loaded when they start.
    pub model: Option<String>,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: String,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub seed: u32,
    pub width: usize,
    pub height: usize,
    pub strength: f64,
    pub fit: bool,
    pub karras_max: usize,
    pub init_image_id: Option<i64>,
    pub exact_steps: bool,
    /// Every variation applied, `variation_amount`'s included.
    pub with_variations: Vec<Variation>,
    pub seamless: bool,
    pub vae_tiling: bool,
    pub threshold: f64,
    pub perlin: f64,
    pub hires_fix: bool,
    pub skip_normalize: bool,
    pub truncate_prompts: bool,
    pub downweight_mask: bool,
    /// `epsilon` or `v_prediction`; null: the model's own.
    pub prediction_type: Option<String>,
    /// `linspace`, `leading`, `trailing` or `karras-kdiffusion`; null: the model's own.
    pub timestep_spacing: Option<String>,
    /// The `loras` list (the prompt's LoRA terms stay in the prompt); empty in jobs stored before it existed.
    pub loras: Vec<LoraWeight>,
    /// The gallery image whose mask the job reused; null when the mask was uploaded (or there is none). Whether a
    /// job had a mask shows in its image's `mask_url`.
    pub init_mask_id: Option<i64>,
    pub invert_mask: bool,
    pub mask_blur: u32,
    pub outcrop: Outcrop,
    pub paste_back: bool,
}

/// InvokeAI's defaults, which are also an SD 1.x model's: 50 steps, CFG 7.5, `k_lms`, 512 × 512.
pub fn invokeai_defaults() -> ModelDefaults {
    ModelDefaults {
        steps: DEFAULT_STEPS,
        cfg_scale: DEFAULT_CFG_SCALE,
        sampler: SamplerKind::KLms.name().into(),
        width: DEFAULT_SIZE,
        height: DEFAULT_SIZE,
    }
}

impl Default for Params {
    /// InvokeAI's defaults, with an empty prompt and seed 0.
    fn default() -> Self {
        ParamsInput::default().resolve_with(&invokeai_defaults(), 0, Vec::new())
    }
}

impl ParamsInput {
    /// Fills in the defaults: `defaults` (the job's model's) for steps, CFG scale, sampler and size, InvokeAI's for
    /// the rest. `random_seed` is called for the seed when none was given, then for the variation seed of a non-zero
    /// `variation_amount`. Fails, naming the field, on a `variation_amount` outside [0, 1] or an unknown
    /// `prediction_type` / `timestep_spacing` (which are stored under their canonical names; "" is the model's own).
    pub fn resolve(mut self, defaults: &ModelDefaults, mut random_seed: impl FnMut() -> u32) -> ember::Result<Params> {
        self.prediction_type = canonical::<PredictionType>(self.prediction_type.take(), PredictionType::name)?;
        self.timestep_spacing = canonical::<TimestepSpacing>(self.timestep_spacing.take(), TimestepSpacing::name)?;
        let amount = self.variation_amount.unwrap_or(0.0);
        ember::request::check_variation_amount(amount)?;
        let loras = resolve_loras(self.loras.take().unwrap_or_default())?;
        let seed = self.seed.unwrap_or_else(&mut random_seed);
        let mut variations = self.with_variations.take().unwrap_or_default();
        if amount > 0.0 {
            variations.push(Variation {
                seed: random_seed(),
                weight: amount,
            });
        }
        let mut params = self.resolve_with(defaults, seed, variations);
        params.loras = loras;
        Ok(params)
    }

    fn resolve_with(self, defaults: &ModelDefaults, seed: u32, with_variations: Vec<Variation>) -> Params {
        Params {
            model: self.model.filter(|m| !m.is_empty()),
            prompt: self.prompt.unwrap_or_default(),
            negative_prompt: self.negative_prompt.unwrap_or_default(),
            steps: self.steps.unwrap_or(defaults.steps),
            cfg_scale: self.cfg_scale.unwrap_or(defaults.cfg_scale),
            sampler: self.sampler.unwrap_or_else(|| defaults.sampler.clone()),
            seed,
            width: self.width.unwrap_or(defaults.width),
            height: self.height.unwrap_or(defaults.height),
            strength: self.strength.unwrap_or(DEFAULT_STRENGTH),
            fit: self.fit.unwrap_or(false),
            karras_max: self.karras_max.unwrap_or(DEFAULT_KARRAS_MAX),
            init_image_id: self.init_image_id,
            exact_steps: self.exact_steps.unwrap_or(false),
            with_variations,
            seamless: self.seamless.unwrap_or(false),
            vae_tiling: self.vae_tiling.unwrap_or(false),
            threshold: self.threshold.unwrap_or(0.0),
            perlin: self.perlin.unwrap_or(0.0),
            hires_fix: self.hires_fix.unwrap_or(false),
            skip_normalize: self.skip_normalize.unwrap_or(false),
            truncate_prompts: self.truncate_prompts.unwrap_or(false),
            downweight_mask: self.downweight_mask.unwrap_or(false),
            prediction_type: self.prediction_type,
            timestep_spacing: self.timestep_spacing,
            loras: Vec::new(),
            init_mask_id: self.init_mask_id,
            invert_mask: self.invert_mask.unwrap_or(false),
            mask_blur: self.mask_blur.unwrap_or(0),
            outcrop: self.outcrop.unwrap_or_default(),
            paste_back: self.paste_back.unwrap_or(true),
        }
    }
}

/// A job's `loras` with their weights filled in (1 by default); fails, naming `loras`, on an empty name, a weight
/// that is not a finite number in [-100, 100], or more than [`ember::request::MAX_LORAS`] entries (the engine's checks,
/// [`ember::request`]). Whether the names exist is the job's model's to say (its library).
fn resolve_loras(input: Vec<LoraInput>) -> ember::Result<Vec<LoraWeight>> {
    ember::request::check_lora_count(input.len())?;
    input
        .into_iter()
        .enumerate()
        .map(|(i, lora)| {
            let name = lora.name.trim();
            if name.is_empty() {
                return Err(ember::Error::invalid(
                    "loras",
                    format!("entry {i} has an empty name; give a name from GET /api/loras"),
                ));
            }
            let weight = lora.weight.unwrap_or(1.0);
            ember::request::check_lora_weight(name, weight)?;
            Ok(LoraWeight {
                name: name.to_string(),
                weight,
            })
        })
        .collect()
}

/// An optional engine name as the engine spells it (`eps` → `epsilon`); "" means none. The parse error names the
/// field.
fn canonical<T: std::str::FromStr<Err = ember::Error>>(
    value: Option<String>,
    name: fn(T) -> &'static str,
) -> ember::Result<Option<String>> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => Ok(Some(name(raw.parse::<T>()?).to_string())),
    }
}

impl Params {
    /// The engine request; `init_image` is None for txt2img, `init_mask` the inpainting mask (an upload or the
    /// `init_mask_id` image's), if any.
    pub fn to_request(
        &self,
        init_image: Option<InitImage>,
        init_mask: Option<InitImage>,
    ) -> ember::Result<GenerateRequest> {
        Ok(GenerateRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            // The page always sends the field: an empty box means no negative prompt.
            negative_given: !self.negative_prompt.is_empty(),
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
            exact_steps: self.exact_steps,
            with_variations: self.with_variations.iter().map(|v| (v.seed, v.weight)).collect(),
            seamless: self.seamless,
            threshold: self.threshold,
            perlin: self.perlin,
            hires_fix: self.hires_fix,
            skip_normalize: self.skip_normalize,
            truncate_prompts: self.truncate_prompts,
            downweight_mask: self.downweight_mask,
            vae_tiling: self.vae_tiling,
            // A server's --vae-approx serves the live previews; its images come from the VAE.
            vae_approx_decode: false,
            vae_approx_encode: false,
            prediction_type: self.prediction_type.as_deref().map(str::parse).transpose()?,
            timestep_spacing: self.timestep_spacing.as_deref().map(str::parse).transpose()?,
            loras: self.loras.iter().map(|l| LoraUse::new(&l.name, l.weight)).collect(),
            init_mask,
            invert_mask: self.invert_mask,
            mask_blur: self.mask_blur,
            outcrop: self.outcrop.to_engine(),
            paste_back: self.paste_back,
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
    /// Inpainting: `/api/images/{image_id}/mask`, the mask stored with the job's image; null until the job is done,
    /// and for jobs without a mask.
    pub mask_url: Option<String>,
    /// How many times a worker took the job: 0 while it waits, 1 once it started, more when a worker died (lost
    /// its lease) and another took it again (`--queue postgres://…`).
    pub attempts: i64,
    /// The worker that runs (or ran) the job, by name (`ember worker --name`); null for the embedded worker of
    /// the SQLite queue and for jobs not started.
    pub worker: Option<String>,
}

/// A finished image in the gallery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Image {
    pub id: i64,
    pub job_id: i64,
    /// `/api/images/{id}/file`.
    pub url: String,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub seed: u32,
    pub width: u32,
    pub height: u32,
    pub created_at: String,
    pub params: Params,
    /// InvokeAI's `Dream` command line that reproduces the image.
    pub dream: String,
    /// Inpainting: `/api/images/{id}/mask`, the mask the image was painted with (white = repainted, at the init
    /// image's run size, before `invert_mask` and `outcrop`); null when the job had none. `init_mask_id` reuses it.
    pub mask_url: Option<String>,
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

/// A model the server runs: what it is and the defaults a job without `steps`, `cfg_scale`, `sampler`, `width` or
/// `height` takes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    /// What a job's `model` names.
    pub name: String,
    /// Whether it is the model in memory now (at most one is; none while the server switches models).
    pub loaded: bool,
    /// The models file's description of it.
    pub description: Option<String>,
    pub family: FamilyInfo,
    /// What the network predicts: `epsilon` or `v_prediction` (the models file's setting, if it has one).
    pub prediction_type: String,
    /// How a run's timesteps are spaced: `linspace`, `leading`, `trailing` or `karras-kdiffusion` (InvokeAI's); the
    /// models file's setting, if it has one.
    pub timestep_spacing: String,
    /// The side in pixels the model was trained at; `hires_fix` makes its first pass at about this size.
    pub native_size: usize,
    pub defaults: ModelDefaults,
    /// How details the model's files could not state were decided (e.g. an SD 2.x single file's prediction type).
    pub notes: Vec<String>,
}

/// A model family.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FamilyInfo {
    /// `sd1`, `sd2` or `sdxl`.
    pub id: String,
    /// `SD 1.x`, `SD 2.x` or `SDXL`.
    pub name: String,
}

/// The generation settings a model runs with when a job does not set them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ModelDefaults {
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: String,
    pub width: usize,
    pub height: usize,
}

impl ModelInfo {
    /// The model `name`, described by its spec (not loaded; no description).
    pub fn new(name: &str, spec: &ModelSpec) -> Self {
        let d = &spec.defaults;
        Self {
            name: name.to_string(),
            loaded: false,
            description: None,
            family: FamilyInfo {
                id: spec.family.id().into(),
                name: spec.family.name().into(),
            },
            prediction_type: spec.scheduler.prediction_type.to_string(),
            timestep_spacing: spec.scheduler.spacing.to_string(),
            native_size: spec.native_size(),
            defaults: ModelDefaults {
                steps: d.steps,
                cfg_scale: d.cfg_scale,
                sampler: d.sampler.name().into(),
                width: d.size,
                height: d.size,
            },
            notes: spec.notes.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

/// A LoRA or embedding file of a model's library, as a picker lists it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AddonEntry {
    /// What jobs and prompts call it (the file name without its extension): `<lora:NAME:1>` or a `loras` entry for
    /// a LoRA, the name itself in a prompt for an embedding.
    pub name: String,
    /// The family it was made for, `sd1`, `sd2` or `sdxl`, when its file tells; null when it does not.
    pub family: Option<String>,
    /// Words it was trained on (its metadata's trigger phrase, else its most frequent training tags).
    pub trigger_words: Vec<String>,
    /// Embeddings: how many token positions it takes in the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vectors: Option<usize>,
    /// Why the file cannot be read (then `family` is null and `trigger_words` empty); absent when it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/loras`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoraList {
    /// By name.
    pub loras: Vec<AddonEntry>,
}

/// `GET /api/embeddings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// By name.
    pub embeddings: Vec<AddonEntry>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variation_amount_appends_a_fresh_seed_after_the_given_variations() {
        let input = ParamsInput {
            prompt: Some("a".into()),
            with_variations: Some(vec![Variation { seed: 7, weight: 0.3 }]),
            variation_amount: Some(0.1),
            ..Default::default()
        };
        let mut seeds = [11, 12].into_iter();
        let params = input
            .resolve(&invokeai_defaults(), || seeds.next().unwrap_or(0))
            .expect("valid");
        assert_eq!(params.seed, 11, "the seed is drawn first");
        assert_eq!(
            params.with_variations,
            [Variation { seed: 7, weight: 0.3 }, Variation { seed: 12, weight: 0.1 }]
        );
        let request = params.to_request(None, None).expect("request");
        assert_eq!(request.with_variations, [(7, 0.3), (12, 0.1)]);

        // Amount 0 (or none) draws nothing.
        let zero = ParamsInput {
            seed: Some(5),
            variation_amount: Some(0.0),
            ..Default::default()
        };
        let params = zero
            .resolve(&invokeai_defaults(), || panic!("no seed to draw"))
            .expect("valid");
        assert!(params.with_variations.is_empty());

        for bad in [1.5, -0.1, f64::NAN] {
            let input = ParamsInput {
                variation_amount: Some(bad),
                ..Default::default()
            };
            let err = input.resolve(&invokeai_defaults(), || 1).expect_err("out of range");
            assert!(
                matches!(&err, ember::Error::InvalidRequest { field, .. } if *field == "variation_amount"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unset_fields_take_the_model_defaults_and_set_ones_win() {
        let turbo = ModelDefaults {
            steps: 1,
            cfg_scale: 0.0,
            sampler: "k_euler".into(),
            width: 1024,
            height: 1024,
        };
        let params = ParamsInput::default().resolve(&turbo, || 3).expect("valid");
        assert_eq!(
            (
                params.steps,
                params.cfg_scale,
                params.sampler.as_str(),
                params.width,
                params.height
            ),
            (1, 0.0, "k_euler", 1024, 1024)
        );
        let set = ParamsInput {
            steps: Some(4),
            cfg_scale: Some(2.0),
            sampler: Some("ddim".into()),
            width: Some(512),
            ..Default::default()
        };
        let params = set.resolve(&turbo, || 3).expect("valid");
        assert_eq!(
            (
                params.steps,
                params.cfg_scale,
                params.sampler.as_str(),
                params.width,
                params.height
            ),
            (4, 2.0, "ddim", 512, 1024),
            "each field that is not set takes its own default"
        );
        // SD 1.x's defaults are InvokeAI's, which `Params::default` keeps.
        let sd1 = ParamsInput::default()
            .resolve(&invokeai_defaults(), || 0)
            .expect("valid");
        assert_eq!(sd1, Params::default());
        assert_eq!(
            (sd1.steps, sd1.cfg_scale, sd1.sampler.as_str(), sd1.width),
            (50, 7.5, "k_lms", 512)
        );
    }

    #[test]
    fn prediction_type_and_spacing_are_checked_and_stored_by_their_engine_names() {
        let input = ParamsInput {
            prediction_type: Some("v".into()),
            timestep_spacing: Some("kdiffusion".into()),
            ..Default::default()
        };
        let params = input.resolve(&invokeai_defaults(), || 0).expect("valid");
        assert_eq!(params.prediction_type.as_deref(), Some("v_prediction"));
        assert_eq!(params.timestep_spacing.as_deref(), Some("karras-kdiffusion"));
        let request = params.to_request(None, None).expect("request");
        assert_eq!(request.prediction_type, Some(PredictionType::VPrediction));
        assert_eq!(request.timestep_spacing, Some(TimestepSpacing::KDiffusion));

        let empty = ParamsInput {
            prediction_type: Some(String::new()),
            timestep_spacing: Some(String::new()),
            ..Default::default()
        };
        let params = empty.resolve(&invokeai_defaults(), || 0).expect("valid");
        assert_eq!(
            (params.prediction_type, params.timestep_spacing),
            (None, None),
            "\"\" is the model's own"
        );

        for (field, input) in [
            (
                "prediction_type",
                ParamsInput {
                    prediction_type: Some("x0".into()),
                    ..Default::default()
                },
            ),
            (
                "timestep_spacing",
                ParamsInput {
                    timestep_spacing: Some("evenly".into()),
                    ..Default::default()
                },
            ),
        ] {
            let err = input.resolve(&invokeai_defaults(), || 0).expect_err("unknown");
            assert!(
                matches!(&err, ember::Error::InvalidRequest { field: f, .. } if *f == field),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn params_stored_before_the_new_options_load_with_their_defaults() {
        // A row's `params` exactly as the previous version wrote it.
        let old = r#"{"prompt":"fire","negative_prompt":"","steps":5,"cfg_scale":7.5,"sampler":"k_euler","seed":42,
                      "width":64,"height":64,"strength":0.75,"fit":false,"karras_max":30,"init_image_id":null}"#;
        let params: Params = serde_json::from_str(old).expect("an old row loads");
        assert_eq!((params.prompt.as_str(), params.seed, params.steps), ("fire", 42, 5));
        let request = params.to_request(None, None).expect("request");
        let default = GenerateRequest::default();
        assert_eq!(request.with_variations, default.with_variations);
        assert_eq!(
            (request.exact_steps, request.seamless, request.hires_fix),
            (false, false, false)
        );
        assert_eq!((request.threshold, request.perlin), (0.0, 0.0));
        assert_eq!((request.skip_normalize, request.truncate_prompts), (false, false));
        assert!(!request.downweight_mask);
        assert!(!request.vae_tiling);
        assert!(params.loras.is_empty() && request.loras.is_empty(), "no LoRAs");
    }

    #[test]
    fn loras_take_weight_1_by_default_and_reach_the_request() {
        let input: ParamsInput = serde_json::from_str(
            r#"{"prompt": "a", "loras": [{"name": "style", "weight": 0.8}, {"name": " ink "}, {"name": "neg", "weight": -1.5}]}"#,
        )
        .expect("valid JSON");
        let params = input.resolve(&invokeai_defaults(), || 0).expect("valid");
        let weights: Vec<(&str, f64)> = params.loras.iter().map(|l| (l.name.as_str(), l.weight)).collect();
        assert_eq!(weights, [("style", 0.8), ("ink", 1.0), ("neg", -1.5)]);
        let request = params.to_request(None, None).expect("request");
        assert_eq!(
            request.loras,
            [
                LoraUse::new("style", 0.8),
                LoraUse::new("ink", 1.0),
                LoraUse::new("neg", -1.5)
            ]
        );
        // Stored and read back as the job's params.
        let stored = serde_json::to_string(&params).expect("JSON");
        assert_eq!(serde_json::from_str::<Params>(&stored).expect("reads back"), params);

        let lora = |name: &str, weight: Option<f64>| LoraInput {
            name: name.into(),
            weight,
        };
        for bad in [
            vec![lora("a", Some(f64::NAN))],
            vec![lora("a", Some(f64::INFINITY))],
            vec![lora("a", Some(100.5))],
            vec![lora("", None)],
            (0..=ember::request::MAX_LORAS).map(|_| lora("a", None)).collect(),
        ] {
            let input = ParamsInput {
                loras: Some(bad.clone()),
                ..Default::default()
            };
            let err = input.resolve(&invokeai_defaults(), || 0).expect_err("refused");
            assert!(
                matches!(&err, ember::Error::InvalidRequest { field, .. } if *field == "loras"),
                "{bad:?}: {err}"
            );
        }
    }
}
