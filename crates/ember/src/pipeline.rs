//! The engine's one entry point: a loaded model that turns a [`GenerateRequest`] into an image,
//! reporting progress through [`Event`]s and stopping when its [`CancelToken`] is set.
//!
//! The stages run in the order of the crate docs: text → latents → sample → decode. Writing the PNG is
//! left to the caller ([`crate::image::png_meta::write_png`]) so front-ends choose where images go.

use crate::guidance::GuidedUNet;
use crate::image::init::{prepare_init_image, rgb_to_tensor, tensor_to_rgb};
use crate::image::png_meta::ImageRecord;
use crate::model::{load_model, ModelWeights};
use crate::nn::clip::ClipTextModel;
use crate::nn::unet::UNet2DConditionModel;
use crate::nn::vae::AutoencoderKL;
use crate::request::GenerateRequest;
use crate::sample::rng::TorchRng;
use crate::sample::samplers::{self, StepProgress};
use crate::sample::schedule::NoiseSchedule;
use crate::text::tokenizer::ClipTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// SD 1.x prompts are cut to the CLIP text model's 77 positions.
const MAX_TOKENS: usize = 77;

/// Shared flag a front-end sets to stop a running generation (Ctrl-C, a web "cancel" button).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a generation reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Something the user should know that does not stop the run (a truncated prompt, a flattened alpha channel).
    Warning(String),
    /// Sampling starts; `total_steps` denoising steps will run.
    Started { total_steps: usize },
    /// Step `step` (1-based) of `total_steps` finished; `latents` is the current sample.
    Step {
        step: usize,
        total_steps: usize,
        latents: &'a Tensor,
    },
}

/// A finished image and everything needed to write it.
pub struct Generated {
    pub image: ::image::RgbImage,
    pub record: ImageRecord,
    /// Final latents, before the VAE decode (used by parity tests and previews).
    pub latents: Tensor,
}

/// A loaded Stable Diffusion 1.x model, ready to run requests one at a time.
pub struct Pipeline {
    device: Device,
    dtype: DType,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    vae_scale: f64,
    schedule: NoiseSchedule,
    model_name: String,
    model_hash: Option<String>,
}

impl Pipeline {
    /// Loads a model from a path (diffusers folder, `.safetensors`, `.ckpt`) or a Hugging Face repo id.
    pub fn load(model: &str, device: &Device, dtype: DType) -> Result<Self> {
        let weights = load_model(model, device, dtype)?;
        Self::from_weights(weights, device, dtype)
    }

    /// Builds the networks from already-located weights.
    pub fn from_weights(weights: ModelWeights, device: &Device, dtype: DType) -> Result<Self> {
        let tokenizer = match &weights.tokenizer_dir {
            Some(dir) => ClipTokenizer::from_dir(dir)?,
            None => ClipTokenizer::bundled()?,
        };
        let model_err = |what: &str, e: candle_core::Error| {
            Error::model(
                &weights.source,
                format!("the {what} weights do not fit an SD 1.x {what}: {e}"),
            )
        };
        let text_encoder = ClipTextModel::new(weights.text_encoder.clone(), &weights.clip_config)
            .map_err(|e| model_err("text encoder", e))?;
        let unet =
            UNet2DConditionModel::new(weights.unet.clone(), &weights.unet_config).map_err(|e| model_err("UNet", e))?;
        let vae = AutoencoderKL::new(weights.vae.clone(), &weights.vae_config).map_err(|e| model_err("VAE", e))?;
        Ok(Self {
            device: device.clone(),
            dtype,
            tokenizer,
            text_encoder,
            unet,
            vae,
            vae_scale: weights.vae_config.scaling_factor,
            schedule: NoiseSchedule::sd15(),
            model_name: weights.name.clone(),
            model_hash: weights.hash.clone(),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs one request. Events arrive in order: warnings, `Started`, one `Step` per denoising step.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Generated> {
        request.validate()?;

        // Init image first: its size decides the latent size when there is one.
        let init = match &request.init_image {
            Some(source) => {
                let fit_box = request.fit.then_some((request.width as u32, request.height as u32));
                let prepared = prepare_init_image(source, fit_box)?;
                for warning in &prepared.warnings {
                    on_event(Event::Warning(warning.clone()));
                }
                Some(prepared.rgb)
            }
            None => None,
        };
        let (width, height) = match &init {
            Some(rgb) => (rgb.width() as usize, rgb.height() as usize),
            None => (request.width, request.height),
        };
        let steps_run = request.steps_to_run();
        if init.is_some() && steps_run == 0 && request.strength > 0.0 {
            on_event(Event::Warning(format!(
                "strength {} × {} steps rounds down to 0 steps: the image only goes through the VAE. \
                 Raise --strength or --steps to change it.",
                request.strength, request.steps
            )));
        }

        // text: prompt and negative prompt → CLIP hidden states.
        let cond = self.encode_text(&request.prompt, "prompt", on_event)?;
        let uncond = self.encode_text(&request.negative_prompt, "negative prompt", on_event)?;

        // latents: the seed's first draw is the initial noise; ancestral samplers draw after it.
        let mut rng = TorchRng::new(request.seed as u64);
        let noise = rng
            .randn_tensor(&[1, 4, height / 8, width / 8], &Device::Cpu)?
            .to_dtype(self.latent_dtype())?
            .to_device(&self.device)?;
        let init_latent = match &init {
            Some(rgb) => Some(self.encode_image(rgb)?),
            None => None,
        };

        let latents = match (&init_latent, steps_run) {
            // Nothing to denoise: the init image makes a round trip through the VAE.
            (Some(latent), 0) => latent.clone(),
            _ => {
                let t_enc = init_latent.as_ref().map(|_| steps_run);
                let plan = samplers::plan(
                    request.sampler,
                    &self.schedule,
                    request.steps,
                    request.karras_max,
                    t_enc,
                );
                // Strength 1 runs the whole schedule: the image is ignored, giving txt2img with this seed.
                let start_from = init_latent.as_ref().filter(|_| steps_run < request.steps);
                let start = samplers::start_latent(&plan, &self.schedule, &noise, start_from)?;
                let guided = GuidedUNet::new(&self.unet, &uncond, &cond, request.cfg_scale)?;
                on_event(Event::Started { total_steps: steps_run });
                let mut on_step = |progress: StepProgress<'_>| {
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    on_event(Event::Step {
                        step: progress.step,
                        total_steps: progress.total,
                        latents: progress.x,
                    });
                    Ok(())
                };
                samplers::sample(
                    request.sampler,
                    &guided,
                    &self.schedule,
                    start,
                    &plan,
                    &mut rng,
                    &mut on_step,
                )?
            }
        };
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }

        // decode: latents → RGB.
        let image = self.decode_latents(&latents)?;
        let record = ImageRecord {
            request: request.clone(),
            width,
            height,
            steps_run,
            model_name: self.model_name.clone(),
            model_hash: self.model_hash.clone(),
            init_image_name: request.init_image.as_ref().map(|i| i.display_name()),
        };
        Ok(Generated { image, record, latents })
    }

    /// Tokenizes (77 tokens, SD1 padding) and encodes one prompt: `[1, 77, hidden]` in the compute dtype.
    fn encode_text(&self, text: &str, what: &str, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Tensor> {
        let tokens = self.tokenizer.encode_padded(text, MAX_TOKENS);
        if tokens.truncated {
            on_event(Event::Warning(format!(
                "the {what} is longer than CLIP's {MAX_TOKENS} tokens; this part was ignored: \"{}\"",
                tokens.dropped
            )));
        }
        let ids = Tensor::new(tokens.ids.as_slice(), &self.device)?.unsqueeze(0)?;
        Ok(self.text_encoder.forward(&ids)?)
    }

    /// Samplers keep latents in f32 whatever the networks compute in (f64 in the reference-parity mode).
    fn latent_dtype(&self) -> DType {
        crate::nn::accumulation_dtype(self.dtype)
    }

    /// Init image → VAE posterior mean × scaling factor (deterministic, as InvokeAI).
    fn encode_image(&self, rgb: &::image::RgbImage) -> Result<Tensor> {
        let pixels = rgb_to_tensor(rgb, &self.device)?.to_dtype(self.dtype)?;
        let mean = self.vae.encode_mean(&pixels)?.to_dtype(self.latent_dtype())?;
        Ok((mean * self.vae_scale)?)
    }

    /// Latents → RGB image (diffusers' `(x / 2 + 0.5).clamp(0, 1)`, rounded to 8 bits).
    fn decode_latents(&self, latents: &Tensor) -> Result<::image::RgbImage> {
        let decoded = self.decode_to_unit_range(latents)?;
        tensor_to_rgb(&decoded)
    }

    /// Latents → `[1, 3, H, W]` f32 in [0, 1].
    pub fn decode_to_unit_range(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.vae_scale)?.to_dtype(self.dtype)?;
        let x = self.vae.decode(&z)?.to_dtype(DType::F32)?;
        Ok(((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }
}
