//! What a checkpoint is, decided once: its [`Family`] (SD 1.x, SD 2.x, SDXL), and the [`ModelSpec`] derived from it —
//! network configurations, noise schedule (betas, prediction type, timestep spacing, LCM parameters), VAE scaling,
//! native size and generation defaults. Every loader (diffusers folder, single file, `.ckpt`, hub id) hands its
//! shapes and whatever the files say besides ([`Hints`]: a diffusers scheduler config, `model_index.json`, a sidecar
//! `.yaml`) to [`describe`]; nothing else guesses.

use crate::nn::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::sample::denoiser::PredictionType;
use crate::sample::schedule::{LcmParams, NoiseSchedule, TimestepSpacing};
use crate::sample::SamplerKind;
use crate::{Error, Result};
use std::path::Path;

/// The model families Ember runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stable Diffusion 1.x: CLIP ViT-L/14 text encoder, 512².
    Sd1,
    /// Stable Diffusion 2.x (and SD-Turbo): OpenCLIP ViT-H text tower (penultimate layer), 512² (ε) or 768² (v).
    Sd2,
    /// Stable Diffusion XL base (and SDXL-Turbo, fine-tunes): CLIP-L + OpenCLIP bigG, pooled text and size
    /// micro-conditioning, 1024².
    Sdxl,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }

    /// A short machine name (`sd1`, `sd2`, `sdxl`) for APIs and metadata.
    pub fn id(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// SDXL's VAE scaling factor (SD 1.x/2.x: 0.18215, `VaeConfig`'s default).
const SDXL_VAE_SCALE: f64 = 0.13025;

/// What a text encoder's output is taken from, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayer {
    /// The last layer's hidden state after the final layer norm (SD 1.x; SD 2.x, whose tower is cut to its
    /// penultimate layer at load).
    LastNormed,
    /// The penultimate layer's hidden state, not normed (both of SDXL's encoders).
    Penultimate,
}

/// One text encoder of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoderSpec {
    pub config: ClipTextConfig,
    pub layer: TextLayer,
    /// Its pooled, projected EOS embedding is SDXL's `text_embeds`.
    pub pooled: bool,
    /// The token its tokenizer pads with, when the model ships no tokenizer: `<|endoftext|>` or `!`.
    pub pad_token: &'static str,
}

/// The training noise schedule and how a run walks it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSpec {
    pub beta_start: f64,
    pub beta_end: f64,
    /// `scaled_linear` (every SD model) or `linear`.
    pub beta_schedule: String,
    pub num_train_timesteps: usize,
    pub prediction_type: PredictionType,
    pub spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub lcm: LcmParams,
}

impl SchedulerSpec {
    /// SD's schedule: scaled_linear 0.00085..0.012 over 1000 timesteps, ε, InvokeAI's spacing.
    fn stable_diffusion() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            num_train_timesteps: 1000,
            prediction_type: PredictionType::Epsilon,
            spacing: TimestepSpacing::KDiffusion,
            steps_offset: 1,
            lcm: LcmParams::default(),
        }
    }

    /// The noise schedule a run uses, with the request's spacing (or this model's).
    pub fn noise_schedule(&self, spacing: Option<TimestepSpacing>) -> Result<NoiseSchedule> {
        let schedule = match self.beta_schedule.as_str() {
            "scaled_linear" => NoiseSchedule::scaled_linear(self.beta_start, self.beta_end, self.num_train_timesteps)?,
            "linear" => {
                let n = self.num_train_timesteps;
                let betas = crate::sample::schedule::linspace(self.beta_start, self.beta_end, n);
                NoiseSchedule::from_betas(&betas)?
            }
            other => {
                return Err(Error::invalid(
                    "beta schedule",
                    format!("the model's beta_schedule {other:?} is not one Ember knows (scaled_linear, linear)"),
                ))
            }
        };
        Ok(schedule
            .with_spacing(spacing.unwrap_or(self.spacing), self.steps_offset)
            .with_lcm(self.lcm))
    }
}

/// What a front-end uses for options the user did not set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationDefaults {
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: SamplerKind,
    /// The side the model was trained at, in pixels.
    pub size: usize,
}

/// Everything known about a loaded model besides its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub family: Family,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    /// One text encoder (SD 1.x/2.x) or two (SDXL: CLIP-L, then OpenCLIP bigG).
    pub text_encoders: Vec<TextEncoderSpec>,
    pub scheduler: SchedulerSpec,
    /// SDXL base: with no negative prompt the unconditional embeddings are zeros, not the empty prompt's (diffusers'
    /// `force_zeros_for_empty_prompt`).
    pub force_zeros_for_empty_prompt: bool,
    pub defaults: GenerationDefaults,
    /// How a detail the file could not state was decided (e.g. the prediction type of an SD 2.x single file).
    pub notes: Vec<String>,
}

impl ModelSpec {
    pub fn latent_channels(&self) -> usize {
        self.vae.latent_channels
    }

    /// Latents are the VAE posterior × this.
    pub fn vae_scale(&self) -> f64 {
        self.vae.scaling_factor
    }

    /// The side in pixels the UNet was trained at (`sample_size × 8`).
    pub fn native_size(&self) -> usize {
        self.unet.sample_size * 8
    }

    /// The linear latent → RGB map of this model's VAE, for step previews.
    pub fn preview(&self) -> &'static crate::image::preview::LatentRgb {
        match self.family {
            Family::Sdxl => &crate::image::preview::LatentRgb::SDXL,
            Family::Sd1 | Family::Sd2 => &crate::image::preview::LatentRgb::SD1,
        }
    }

    /// An inpainting UNet: besides the latent it takes the mask and the masked image's latent (9 input channels).
    pub fn inpainting(&self) -> bool {
        self.unet.in_channels == 9
    }

    /// An LCM-distilled UNet: takes the guidance scale as an embedding instead of classifier-free guidance.
    pub fn guidance_embedded(&self) -> bool {
        self.unet.time_cond_proj_dim.is_some()
    }
}

/// What a model's files say beyond tensor shapes.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    /// A diffusers folder's `scheduler/scheduler_config.json`.
    pub scheduler_config: Option<serde_json::Value>,
    /// A diffusers folder's `model_index.json`.
    pub model_index: Option<serde_json::Value>,
    /// The `.yaml` next to a single file (A1111's convention), as read by [`Sidecar::read`].
    pub sidecar: Option<Sidecar>,
    /// The weights come from one file (whose text tower and prediction type are told by these rules), not a folder.
    pub single_file: bool,
}

/// The few settings Ember reads from an LDM/SGM `.yaml` config next to a single file.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Sidecar {
    pub path: std::path::PathBuf,
    /// `parameterization: "v"` (else ε).
    pub parameterization: Option<String>,
    pub num_head_channels: Option<usize>,
    pub num_heads: Option<usize>,
    pub context_dim: Option<usize>,
    pub in_channels: Option<usize>,
}

impl Sidecar {
    /// `model.yaml` for `model.safetensors` (or `.ckpt`), if there is one. Reads the first value of each key Ember
    /// uses (the UNet's section comes before the VAE's in every LDM/SGM config); the rest of the file is ignored.
    pub fn find(model_file: &Path) -> Result<Option<Sidecar>> {
        for ext in ["yaml", "yml"] {
            let path = model_file.with_extension(ext);
            if path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::model(&path, format!("cannot read the model's .yaml config: {e}")))?;
                return Ok(Some(Self::read(&path, &text)));
            }
        }
        Ok(None)
    }

    fn read(path: &Path, text: &str) -> Sidecar {
        let mut sidecar = Sidecar {
            path: path.to_path_buf(),
            ..Sidecar::default()
        };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            let number = value.parse::<i64>().ok().filter(|n| *n > 0).map(|n| n as usize);
            let slot = match key.trim() {
                "parameterization" => {
                    sidecar.parameterization.get_or_insert_with(|| value.to_string());
                    continue;
                }
                "num_head_channels" => &mut sidecar.num_head_channels,
                "num_heads" => &mut sidecar.num_heads,
                "context_dim" => &mut sidecar.context_dim,
                "in_channels" => &mut sidecar.in_channels,
                _ => continue,
            };
            if slot.is_none() {
                *slot = number;
            }
        }
        sidecar
    }
}

/// The family of a model from its networks' shapes (and configs), or a refusal naming what it is.
fn family_of(path: &Path, unet: &UNetConfig, text: &[ClipTextConfig]) -> Result<Family> {
    if unet.has_text_time() || text.len() == 2 {
        if text.len() != 2 {
            return Err(Error::model(
                path,
                "this is an SDXL refiner (one text encoder, OpenCLIP bigG); Ember runs SDXL base models and their \
                 fine-tunes, not the refiner",
            ));
        }
        return Ok(Family::Sdxl);
    }
    if let Some(kind) = unet.addition_embed_type.as_deref() {
        return Err(Error::model(
            path,
            format!("the UNet's addition_embed_type {kind:?} belongs to no family Ember runs (SD 1.x, SD 2.x, SDXL)"),
        ));
    }
    let openclip = text.first().is_some_and(|t| t.hidden_act == "gelu");
    if unet.cross_attention_dim == 1024 || unet.use_linear_projection || openclip {
        return Ok(Family::Sd2);
    }
    Ok(Family::Sd1)
}

/// Refuses UNets Ember cannot run, whatever their family: it runs text-to-image UNets (4 input channels) and
/// inpainting ones (9: the latent, the mask and the masked image's latent, as SD 1.5/2 and SDXL inpainting).
pub(crate) fn check_unet(path: &Path, unet: &UNetConfig) -> Result<()> {
    match unet.in_channels {
        4 | 9 => Ok(()),
        8 => Err(Error::model(
            path,
            "the UNet takes 8 input channels (an InstructPix2Pix-style model: latent + image latent); Ember runs \
             text-to-image UNets (4 channels) and inpainting UNets (9)",
        )),
        n => Err(Error::model(
            path,
            format!(
                "the UNet takes {n} input channels; Ember runs text-to-image UNets (4 channels) and inpainting UNets (9)"
            ),
        )),
    }
}

/// Builds the spec of a model from its shapes-derived configs and `hints`.
pub(crate) fn describe(
    path: &Path,
    mut unet: UNetConfig,
    mut vae: VaeConfig,
    mut text: Vec<ClipTextConfig>,
    hints: &Hints,
) -> Result<ModelSpec> {
    let family = family_of(path, &unet, &text)?;
    check_unet(path, &unet)?;
    let mut notes = Vec::new();
    let mut scheduler = SchedulerSpec::stable_diffusion();
    if let Some(sidecar) = &hints.sidecar {
        check_sidecar(path, sidecar, &unet)?;
    }

    if hints.single_file {
        // Single files carry no config: the UNet's heads, SD 2.x's text tower cut and the prediction type are told
        // by the sidecar .yaml or the family's published layout.
        // SDXL's VAE works at another latent scale (a folder's vae/config.json says so; a file cannot).
        if family == Family::Sdxl {
            vae.scaling_factor = SDXL_VAE_SCALE;
        }
        let heads = single_file_heads(path, family, &unet, hints)?;
        unet.attention_head_dim = match heads.windows(2).all(|w| w[0] == w[1]) {
            true => crate::nn::config::PerBlock::One(heads[0]),
            false => crate::nn::config::PerBlock::Each(heads),
        };
        for (i, t) in text.iter_mut().enumerate() {
            if family == Family::Sd2 || (family == Family::Sdxl && i == 1) {
                t.hidden_act = "gelu".into();
            }
            // SD 2.x uses OpenCLIP's penultimate layer, final norm applied (diffusers cuts the tower at conversion).
            if family == Family::Sd2 {
                t.num_hidden_layers = t.num_hidden_layers.saturating_sub(1);
            }
        }
        if family == Family::Sd2 {
            scheduler.prediction_type = match hints.sidecar.as_ref().map(|s| s.parameterization.as_deref()) {
                Some(Some("v")) => {
                    notes.push("v-prediction (from the model's .yaml: parameterization \"v\")".into());
                    PredictionType::VPrediction
                }
                // LDM's default parameterization is ε (SD 2.x 512-base's v2-inference.yaml names none).
                Some(_) => {
                    notes.push("ε-prediction (the model's .yaml names no v parameterization)".into());
                    PredictionType::Epsilon
                }
                None => {
                    notes.push(
                        "v-prediction assumed: an SD 2.x file cannot say, and it has no .yaml next to it; diffusers \
                         takes SD 2.x files as the 768 v model too (pass --prediction-type epsilon for 512-base \
                         models and SD-Turbo, or put the model's .yaml next to it)"
                            .into(),
                    );
                    PredictionType::VPrediction
                }
            };
        }
    }
    if hints.single_file {
        // The trained size is not in the shapes either: SDXL's 1024², SD 2.x v's 768² (the 768-v model), else 512².
        unet.sample_size = match (family, scheduler.prediction_type) {
            (Family::Sdxl, _) => 128,
            (Family::Sd2, PredictionType::VPrediction) => 96,
            _ => 64,
        };
    }
    if family == Family::Sdxl {
        scheduler.spacing = TimestepSpacing::Leading;
    }
    if let Some(config) = &hints.scheduler_config {
        read_scheduler_config(config, family, &mut scheduler)?;
    }
    let force_zeros_for_empty_prompt = match hints
        .model_index
        .as_ref()
        .and_then(|i| i.get("force_zeros_for_empty_prompt"))
    {
        Some(v) => v.as_bool().unwrap_or(false),
        // SDXL base sets it; single files cannot say.
        None => family == Family::Sdxl,
    };

    let lcm = unet.time_cond_proj_dim.is_some()
        || hints
            .scheduler_config
            .as_ref()
            .is_some_and(|c| c.get("_class_name").and_then(|n| n.as_str()) == Some("LCMScheduler"));
    let turbo = scheduler.spacing == TimestepSpacing::Trailing;
    let defaults = GenerationDefaults {
        steps: if lcm {
            4
        } else if turbo {
            1
        } else {
            crate::request::DEFAULT_STEPS
        },
        cfg_scale: if lcm {
            8.0
        } else if turbo {
            0.0
        } else {
            crate::request::DEFAULT_CFG_SCALE
        },
        sampler: if lcm {
            SamplerKind::Lcm
        } else if turbo || family == Family::Sdxl {
            SamplerKind::KEuler
        } else {
            SamplerKind::KLms
        },
        // SD 1.x keeps InvokeAI's 512 whatever the UNet's config says; the others their trained size (SD 2.x: 512
        // or 768, SDXL 1024).
        size: match family {
            Family::Sd1 => crate::request::DEFAULT_SIZE,
            _ => unet.sample_size * 8,
        },
    };
    let text_encoders = text
        .into_iter()
        .enumerate()
        .map(|(i, config)| TextEncoderSpec {
            config,
            layer: if family == Family::Sdxl {
                TextLayer::Penultimate
            } else {
                TextLayer::LastNormed
            },
            pooled: family == Family::Sdxl && i == 1,
            pad_token: if family == Family::Sd1 || (family == Family::Sdxl && i == 0) {
                "<|endoftext|>"
            } else {
                "!"
            },
        })
        .collect();
    Ok(ModelSpec {
        family,
        unet,
        vae,
        text_encoders,
        scheduler,
        force_zeros_for_empty_prompt,
        defaults,
        notes,
    })
}

/// Heads per block of a single file's UNet: the .yaml's `num_head_channels` (head size) or `num_heads`, else the
/// family's published layout (SD 1.x: 8 heads; SD 2.x and SDXL: 64-wide heads).
fn single_file_heads(path: &Path, family: Family, unet: &UNetConfig, hints: &Hints) -> Result<Vec<usize>> {
    let sidecar = hints.sidecar.as_ref();
    let (head_size, heads) = match (
        sidecar.and_then(|s| s.num_head_channels),
        sidecar.and_then(|s| s.num_heads),
    ) {
        (Some(size), _) => (Some(size), None),
        (None, Some(heads)) => (None, Some(heads)),
        (None, None) if family == Family::Sd1 => (None, Some(8)),
        (None, None) => (Some(64), None),
    };
    unet.block_out_channels
        .iter()
        .map(|&channels| match (head_size, heads) {
            (Some(size), _) if channels % size == 0 => Ok(channels / size),
            (Some(size), _) => Err(Error::model(
                path,
                format!(
                    "the UNet's {channels}-channel blocks cannot be split into {size}-wide attention heads; put the \
                     model's .yaml config next to the file (num_head_channels / num_heads)"
                ),
            )),
            (None, Some(heads)) => Ok(heads),
            (None, None) => unreachable!("one of the two is always set"),
        })
        .collect()
}

/// A sidecar that contradicts the file is refused, naming both values.
fn check_sidecar(path: &Path, sidecar: &Sidecar, unet: &UNetConfig) -> Result<()> {
    let contradiction = |what: &str, yaml: usize, file: usize| {
        Error::model(
            path,
            format!(
                "{} says {what}: {yaml}, but the file's UNet has {file}; the .yaml belongs to another model (remove or \
                 replace it)",
                sidecar.path.display()
            ),
        )
    };
    if let Some(dim) = sidecar.context_dim.filter(|&d| d != unet.cross_attention_dim) {
        return Err(contradiction("context_dim", dim, unet.cross_attention_dim));
    }
    if let Some(ch) = sidecar.in_channels.filter(|&c| c != unet.in_channels && c != 3) {
        // `in_channels: 3` is the VAE's (its section can come first in hand-written configs).
        return Err(contradiction("in_channels", ch, unet.in_channels));
    }
    match sidecar.parameterization.as_deref() {
        None | Some("eps") | Some("v") => Ok(()),
        Some(other) => Err(Error::model(
            path,
            format!(
                "{} names parameterization {other:?}; Ember knows \"eps\" and \"v\"",
                sidecar.path.display()
            ),
        )),
    }
}

/// A diffusers `scheduler_config.json`: betas, prediction type, steps offset, LCM's parameters, and the timestep
/// spacing — except that SD 1.x/2.x keep InvokeAI's schedule for `leading`, the value every diffusers save writes
/// whatever the model (real SD 1.x/2.x configs predate the field); `trailing` and `linspace` are a model's choice
/// (SD-Turbo) and are followed.
fn read_scheduler_config(config: &serde_json::Value, family: Family, spec: &mut SchedulerSpec) -> Result<()> {
    let number = |key: &str| config.get(key).and_then(|v| v.as_f64());
    if let Some(v) = number("beta_start") {
        spec.beta_start = v;
    }
    if let Some(v) = number("beta_end") {
        spec.beta_end = v;
    }
    if let Some(v) = config.get("beta_schedule").and_then(|v| v.as_str()) {
        spec.beta_schedule = v.to_string();
    }
    if let Some(v) = number("num_train_timesteps") {
        spec.num_train_timesteps = v as usize;
    }
    if let Some(v) = number("steps_offset") {
        spec.steps_offset = v as usize;
    }
    if let Some(v) = config.get("prediction_type").and_then(|v| v.as_str()) {
        spec.prediction_type = v.parse().map_err(|_| {
            Error::invalid(
                "prediction_type",
                format!(
                    "the model's scheduler config names prediction_type {v:?}; Ember runs epsilon and v_prediction"
                ),
            )
        })?;
    }
    if let Some(v) = number("original_inference_steps") {
        spec.lcm.original_inference_steps = v as usize;
    }
    if let Some(v) = number("timestep_scaling") {
        spec.lcm.timestep_scaling = v;
    }
    if let Some(spacing) = config.get("timestep_spacing").and_then(|v| v.as_str()) {
        let spacing: TimestepSpacing = spacing.parse()?;
        let legacy = matches!(family, Family::Sd1 | Family::Sd2) && spacing == TimestepSpacing::Leading;
        if !legacy {
            spec.spacing = spacing;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_reads_the_first_value_of_each_key() {
        let yaml =
            "model:\n  params:\n    parameterization: \"v\" # comment\n    unet_config:\n      params:\n        \
                    num_head_channels: 64\n        num_heads: -1\n        context_dim: 1024\n        in_channels: 4\n";
        let s = Sidecar::read(Path::new("m.yaml"), yaml);
        assert_eq!(s.parameterization.as_deref(), Some("v"));
        assert_eq!((s.num_head_channels, s.num_heads), (Some(64), None));
        assert_eq!((s.context_dim, s.in_channels), (Some(1024), Some(4)));
    }

    #[test]
    fn leading_in_an_sd1_scheduler_config_keeps_invokeai_spacing_but_trailing_is_followed() {
        let mut spec = SchedulerSpec::stable_diffusion();
        read_scheduler_config(
            &serde_json::json!({"timestep_spacing": "leading"}),
            Family::Sd1,
            &mut spec,
        )
        .unwrap();
        assert_eq!(spec.spacing, TimestepSpacing::KDiffusion);
        read_scheduler_config(
            &serde_json::json!({"timestep_spacing": "trailing"}),
            Family::Sd2,
            &mut spec,
        )
        .unwrap();
        assert_eq!(spec.spacing, TimestepSpacing::Trailing);
        let mut xl = SchedulerSpec::stable_diffusion();
        read_scheduler_config(
            &serde_json::json!({"timestep_spacing": "leading"}),
            Family::Sdxl,
            &mut xl,
        )
        .unwrap();
        assert_eq!(xl.spacing, TimestepSpacing::Leading);
        let err = read_scheduler_config(
            &serde_json::json!({"prediction_type": "sample"}),
            Family::Sd1,
            &mut spec,
        );
        assert!(err.unwrap_err().to_string().contains("prediction_type"));
    }

    #[test]
    fn an_sd2_single_file_without_yaml_is_the_768_v_model_with_64_wide_heads() {
        let unet = UNetConfig {
            cross_attention_dim: 1024,
            use_linear_projection: true,
            ..UNetConfig::default()
        };
        let text = ClipTextConfig {
            hidden_size: 1024,
            num_hidden_layers: 24,
            ..ClipTextConfig::default()
        };
        let hints = Hints {
            single_file: true,
            ..Hints::default()
        };
        let spec = describe(
            Path::new("sd21.safetensors"),
            unet,
            VaeConfig::default(),
            vec![text],
            &hints,
        )
        .unwrap();
        assert_eq!(spec.family, Family::Sd2);
        assert_eq!(spec.scheduler.prediction_type, PredictionType::VPrediction);
        assert!(spec.notes[0].contains("v-prediction assumed"), "{:?}", spec.notes);
        assert_eq!(spec.native_size(), 768);
        assert_eq!(
            spec.unet.attention_head_dim,
            crate::nn::config::PerBlock::Each(vec![5, 10, 20, 20])
        );
        // OpenCLIP's tower: gelu, cut to its penultimate layer, padded with `!`.
        let encoder = &spec.text_encoders[0];
        assert_eq!(
            (encoder.config.hidden_act.as_str(), encoder.config.num_hidden_layers),
            ("gelu", 23)
        );
        assert_eq!((encoder.layer, encoder.pad_token), (TextLayer::LastNormed, "!"));
    }
}
