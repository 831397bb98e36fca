//! The engine's one entry point: a loaded model that turns a [`GenerateRequest`] into an image,
//! reporting progress through [`Event`]s and stopping when its [`CancelToken`] is set.
//!
//! The stages run in the order of the crate docs: text → latents → sample → decode. Writing the PNG is
//! left to the caller ([`crate::image::png_meta::write_png`]) so front-ends choose where images go.

use crate::addons::{AddonLibrary, TargetIndex};
use crate::cancel::cancel_scope;
pub use crate::cancel::CancelToken;
use crate::device::device_name;
use crate::guidance::{Guidance, GuidedUNet};
use crate::image::init::{prepare_init_image, rgb_to_tensor, tensor_to_rgb};
use crate::image::mask::{masked_image, paste_back, prepare_mask, InpaintMask};
use crate::image::metadata::AddonUse;
use crate::image::metadata::RunInfo;
use crate::image::png_meta::ImageRecord;
use crate::model::family::{Family, ModelSpec};
use crate::model::{load_model, ModelWeights};
use crate::nn::vae::{AutoencoderKL, VaeTiling};
use crate::nn::{PackCache, Padding, Precision, TinyAutoencoder};
use crate::request::{img2img_steps, GenerateRequest};
use crate::sample::denoiser::PredictionType;
use crate::sample::rng::TorchRng;
use crate::sample::samplers::{self, StepProgress};
use crate::sample::schedule::{NoiseSchedule, TimestepSpacing};
use crate::sample::variation::{initial_noise, seed_noise};
use crate::text::conditioning::{describe_tokenization, encode_for_model, Conditioning, ParsedPrompts};
use crate::text::encoder::TextConditioner;
use crate::text::tokenizer::ClipTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

mod addons;
mod check;
mod hires;
mod inpaint;

use addons::{wanted_loras, AddonState, NetworkFactory, Networks};
pub use addons::{AppliedLora, EmbeddingInfo};
use inpaint::KnownRegion;

use check::prompt_options;
pub use check::{RequestCheck, Work, WorkLimits, MEGAPIXEL};

/// What a generation reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Something the user should know that does not stop the run (a truncated prompt, a flattened alpha channel).
    Warning(String),
    /// Sampling starts; `total_steps` denoising steps will run, the last ones of a `schedule_steps`-long
    /// schedule (img2img skips the first `schedule_steps - total_steps`; txt2img runs them all). A hires-fix
    /// run counts both passes, and its latents grow from the first pass's size to the target's.
    Started { total_steps: usize, schedule_steps: usize },
    /// Step `step` (1-based) of `total_steps` finished; `latents` is the current sample.
    Step {
        step: usize,
        total_steps: usize,
        latents: &'a Tensor,
    },
}

/// The state one request's sampler passes share: its guidance, its generator (ancestral noise continues across
/// passes), and the step count reported so far.
struct SamplingRun<'r> {
    request: &'r GenerateRequest,
    /// The request's noise schedule (the model's, spaced as the request or the model says).
    schedule: &'r NoiseSchedule,
    guided: &'r GuidedUNet<'r>,
    rng: &'r mut TorchRng,
    /// Inpainting with an ordinary UNet: the region put back after every step.
    known: Option<&'r KnownRegion>,
    cancel: &'r CancelToken,
    on_event: &'r mut dyn FnMut(Event<'_>),
    steps_done: usize,
    total_steps: usize,
}

impl SamplingRun<'_> {
    fn started(&mut self, total_steps: usize, schedule_steps: usize) {
        self.total_steps = total_steps;
        (self.on_event)(Event::Started {
            total_steps,
            schedule_steps,
        });
    }
}

/// A finished image and everything needed to write it.
pub struct Generated {
    pub image: ::image::RgbImage,
    pub record: ImageRecord,
    /// Final latents, before the VAE decode (used by parity tests and previews).
    pub latents: Tensor,
    /// Inpainting: the mask as given (`-M` or the init image's transparency), binarised, at the init image's size,
    /// before `--invert-mask` and `--outcrop` — what a front-end saves next to the image (`{prefix}.{seed}.mask.png`)
    /// and records as the request's `init_mask`, so that the recorded options replay the run. None when there was
    /// no mask, or only `--outcrop` made one.
    pub mask: Option<::image::GrayImage>,
}

/// A loaded Stable Diffusion model (SD 1.x, SD 2.x, SDXL and their Turbo/LCM variants), ready to run requests one
/// at a time.
pub struct Pipeline {
    device: Device,
    dtype: DType,
    /// The prompt tokenizer (the first text encoder's).
    tokenizer: Arc<ClipTokenizer>,
    /// The first tokenizer without the embeddings' words.
    base_tokenizer: ClipTokenizer,
    /// What `generate` checks before any tensor work (shared with front-ends through [`Pipeline::checker`]).
    check: RequestCheck,
    /// The networks the last request ran on (with its LoRAs), and how to build others.
    /// None while networks are being rebuilt (or after a rebuild failed).
    networks: Mutex<Option<Arc<Networks>>>,
    factory: NetworkFactory,
    addons: AddonState,
    vae: AutoencoderKL,
    /// The tiny autoencoder (`--vae-approx`) and its file name: previews, and the decode/encode of requests that ask.
    vae_approx: Option<(Arc<TinyAutoencoder>, String)>,
    spec: ModelSpec,
    model_name: String,
    model_hash: Option<String>,
    /// A size far from the family's native one has been warned about (once per loaded model).
    size_warned: AtomicBool,
}

impl Pipeline {
    /// Loads a model from a path (diffusers folder, `.safetensors`, `.ckpt`) or a Hugging Face repo id.
    pub fn load(model: &str, device: &Device, dtype: DType) -> Result<Self> {
        let weights = load_model(model, device, dtype)?;
        Self::from_weights(weights, device, dtype)
    }

    /// What a model is and how its requests are checked, without building its networks: the files are read for
    /// their configurations and tensor names only (a server describes the models it may load this way).
    pub fn describe(model: &str) -> Result<(ModelSpec, RequestCheck)> {
        let (spec, check, _) = Self::describe_with_addons(model, AddonLibrary::default())?;
        Ok((spec, check))
    }

    /// [`Self::describe`] knowing the LoRAs and embeddings of `library`: the checker also knows the embeddings' words
    /// (their token counts, and which ones do not fit the model) and the LoRA names. Reads the embeddings, builds no
    /// network. Returns the warnings [`Self::set_addons`] would.
    pub fn describe_with_addons(model: &str, library: AddonLibrary) -> Result<(ModelSpec, RequestCheck, Vec<String>)> {
        let (_, spec, check, warnings) = Self::describe_named(model, library)?;
        Ok((spec, check, warnings))
    }

    /// [`Self::describe_with_addons`], with the name the model goes by when loaded ([`Self::model_name`]).
    pub fn describe_named(
        model: &str,
        library: AddonLibrary,
    ) -> Result<(String, ModelSpec, RequestCheck, Vec<String>)> {
        let weights = load_model(model, &Device::Cpu, DType::F32)?;
        let tokenizer = tokenizers(&weights)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::model(&weights.source, "the model has no text encoder"))?;
        let (state, added, warnings) = AddonState::load(library, &weights.spec, &tokenizer, &Device::Cpu)?;
        let check = RequestCheck::new(Arc::new(tokenizer.with_added(added)), weights.spec.native_size())
            .with_addons(state.library.clone(), state.unusable.clone());
        Ok((weights.name.clone(), weights.spec, check, warnings))
    }

    /// Builds the networks from already-located weights.
    pub fn from_weights(weights: ModelWeights, device: &Device, dtype: DType) -> Result<Self> {
        let spec = weights.spec.clone();
        let tokenizers = tokenizers(&weights)?;
        let model_err = |what: &str, e: candle_core::Error| {
            Error::model(
                &weights.source,
                format!("the {what} weights do not fit an {} {what}: {e}", spec.family),
            )
        };
        let precision = Precision::new(device, dtype);
        for weights in std::iter::once(&weights.patchable.unet).chain(&weights.patchable.text_encoders) {
            weights.set_packing(precision.packed_bf16);
        }
        let base_tokenizer = tokenizers
            .first()
            .cloned()
            .ok_or_else(|| Error::model(&weights.source, "the model has no text encoder"))?;
        let tokenizer = Arc::new(base_tokenizer.clone());
        let factory = NetworkFactory {
            index: TargetIndex::new(&weights.patchable, spec.family, spec.unet.layers_per_block),
            patchable: weights.patchable.clone(),
            unet_vb: weights.unet.clone(),
            text_vbs: weights.text_encoders.clone(),
            precision,
            tokenizers,
            // Packs kept for rebuilding the networks with LoRAs (only the touched layers are packed again).
            unet_packs: Arc::new(PackCache::default()),
            text_packs: spec.text_encoders.iter().map(|_| Arc::default()).collect(),
        };
        let addons = AddonState::empty(spec.text_encoders.len());
        let networks = factory.first(&addons, &spec, &model_err)?;
        let vae = AutoencoderKL::new(precision.vars(&weights.vae), &spec.vae).map_err(|e| model_err("VAE", e))?;
        Ok(Self {
            device: device.clone(),
            dtype: precision.activations,
            check: RequestCheck::new(tokenizer.clone(), spec.native_size()),
            tokenizer,
            base_tokenizer,
            networks: Mutex::new(Some(Arc::new(networks))),
            factory,
            addons,
            vae,
            vae_approx: None,
            model_name: weights.name.clone(),
            model_hash: weights.hash.clone(),
            spec,
            size_warned: AtomicBool::new(false),
        })
    }

    /// What the model is: family, configurations, schedule, defaults, and how undecidable details were decided.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The prediction type a request runs with (its override, else the model's).
    pub fn prediction_type(&self, request: &GenerateRequest) -> PredictionType {
        request.prediction_type.unwrap_or(self.spec.scheduler.prediction_type)
    }

    /// The timestep spacing a request runs with (its override, else the model's).
    pub fn timestep_spacing(&self, request: &GenerateRequest) -> TimestepSpacing {
        request.timestep_spacing.unwrap_or(self.spec.scheduler.spacing)
    }

    /// How a request's scale is applied on this model.
    pub fn guidance(&self, request: &GenerateRequest) -> Guidance {
        Guidance::for_scale(request.cfg_scale, self.spec.unet.time_cond_proj_dim)
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The checks `generate` makes before any tensor work, for a front-end to run on submitted requests.
    pub fn checker(&self) -> RequestCheck {
        self.check.clone()
    }

    /// Limits the work one request may take (None: unlimited, the default; see [`WorkLimits::for_device`]).
    pub fn set_work_limits(&mut self, limits: Option<WorkLimits>) {
        self.check = self.check.clone().with_limits(limits);
    }

    /// The LoRAs and embeddings requests may use. Every embedding of `library` is read now (they are small): their
    /// names become words of the tokenizer. Returns warnings for the user (embeddings made for another model
    /// family, names that are also words).
    pub fn set_addons(&mut self, library: AddonLibrary) -> Result<Vec<String>> {
        let (state, added, warnings) = AddonState::load(library, &self.spec, &self.base_tokenizer, &self.device)?;
        self.addons = state;
        self.tokenizer = Arc::new(self.base_tokenizer.with_added(added));
        self.check = RequestCheck::new(self.tokenizer.clone(), self.spec.native_size())
            .with_limits(self.check.limits())
            .with_addons(self.addons.library.clone(), self.addons.unusable.clone());
        let plain = self.factory.plain(&self.addons, &self.spec)?;
        *self.networks.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(plain));
        Ok(warnings)
    }

    /// The LoRAs and embeddings requests may use.
    pub fn addons(&self) -> &AddonLibrary {
        &self.addons.library
    }

    /// The embeddings read from the library (those that fit this model).
    pub fn embeddings(&self) -> &[EmbeddingInfo] {
        &self.addons.embeddings
    }

    /// The networks for a request's LoRAs (its `loras` and its prompt's terms): the ones in use when they have the
    /// same LoRAs at the same weights, else rebuilt with them (warnings go to `on_event`).
    fn networks_for(
        &self,
        request: &GenerateRequest,
        prompts: &ParsedPrompts,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Arc<Networks>> {
        let uses: Vec<_> = request.loras.iter().chain(prompts.loras()).cloned().collect();
        let wanted = wanted_loras(&self.addons.library, &uses)?;
        let mut current = self.networks.lock().unwrap_or_else(|e| e.into_inner());
        let same = |n: &Networks| {
            n.loras.len() == wanted.len()
                && n.loras
                    .iter()
                    .zip(&wanted)
                    .all(|(a, (_, path, t, u))| a.path == *path && a.text_weight == *t && a.unet_weight == *u)
        };
        if let Some(networks) = current.as_ref().filter(|n| same(n)) {
            return Ok(networks.clone());
        }
        // The old networks go first: the tensors they share with the weights' cache stay, the patched ones are
        // freed before the new ones are built.
        *current = None;
        let (networks, warnings) = self.factory.build(&self.addons, &wanted, &self.spec)?;
        for warning in warnings {
            on_event(Event::Warning(warning));
        }
        let networks = Arc::new(networks);
        *current = Some(networks.clone());
        Ok(networks)
    }

    /// Readies the networks for `request`'s LoRAs (patching them in, or taking them out) without generating:
    /// `generate` does it itself; a front-end may call this first to time it or to fail early on a bad LoRA.
    /// Returns the warnings (modules that matched nothing).
    pub fn prepare(&self, request: &GenerateRequest) -> Result<Vec<String>> {
        let prompts = self.check.prompts(request)?;
        let mut warnings = Vec::new();
        self.networks_for(request, &prompts, &mut |event| {
            if let Event::Warning(w) = event {
                warnings.push(w);
            }
        })?;
        Ok(warnings)
    }

    /// The embeddings a request's prompts use, with their hashes.
    fn embeddings_used(&self, request: &GenerateRequest) -> Vec<AddonUse> {
        let vocab = self.tokenizer.vocab_size() as u32;
        let mut ids: Vec<u32> = [&request.prompt, &request.negative_prompt]
            .iter()
            .flat_map(|text| self.tokenizer.encode(text))
            .filter(|&id| id >= vocab)
            .collect();
        ids.sort_unstable();
        let mut first = vocab;
        let mut used = Vec::new();
        for e in &self.addons.embeddings {
            let range = first..first + e.vectors as u32;
            if ids.iter().any(|id| range.contains(id)) {
                used.push(AddonUse {
                    name: e.name.clone(),
                    weight: None,
                    hash: e.hash.clone(),
                });
            }
            first = range.end;
        }
        used
    }

    /// Runs one request. Events arrive in order: warnings, `Started`, one `Step` per denoising step. Setting `cancel`
    /// stops the run between two network layers with [`Error::Cancelled`].
    pub fn generate(
        &self,
        request: &GenerateRequest,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Generated> {
        let _scope = cancel_scope(cancel);
        // A cancelled run fails wherever it was stopped; whatever error that gave, it was a cancellation.
        self.run(request, cancel, on_event)
            .map_err(|e| if cancel.is_cancelled() { Error::Cancelled } else { e })
    }

    fn run(
        &self,
        request: &GenerateRequest,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Generated> {
        // The cheap field checks before the init image is decoded; `admit` repeats them with its size known.
        request.validate()?;

        // Init image first: its size decides the latent size when there is one. Its mask (from -M, its transparency
        // or --outcrop, which also grows the image) makes the run an inpainting one.
        let (init, mask) = match &request.init_image {
            Some(source) => {
                let fit_box = request.fit.then_some((request.width as u32, request.height as u32));
                let mut prepared = prepare_init_image(source, fit_box)?;
                let mask = prepare_mask(request, &mut prepared)?;
                for warning in &prepared.warnings {
                    on_event(Event::Warning(warning.clone()));
                }
                (Some(prepared.rgb), mask)
            }
            None => (None, None),
        };
        let (width, height) = match &init {
            Some(rgb) => (rgb.width() as usize, rgb.height() as usize),
            None => (request.width, request.height),
        };
        let (_, prompts) = self.check.admit(request, init.as_ref().map(|rgb| rgb.dimensions()))?;
        let steps_run = request.steps_to_run();
        if init.is_some() && steps_run == 0 && request.strength > 0.0 {
            on_event(Event::Warning(format!(
                "strength {} × {} steps rounds down to 0 steps: the image only goes through the VAE. \
                 Raise --strength or --steps to change it.",
                request.strength, request.steps
            )));
        }
        let hires_first_pass = match init {
            None if request.hires_fix && self.spec.inpainting() => {
                on_event(Event::Warning(
                    "--hires_fix does not apply to an inpainting model; the image was made at its full size directly"
                        .to_string(),
                ));
                None
            }
            None if request.hires_fix => self.hires_first_pass(width, height, request, on_event),
            _ => None,
        };

        self.warn_about_size(width, height, on_event);
        // The networks with the request's LoRAs patched in.
        let networks = self.networks_for(request, &prompts, on_event)?;
        // text: prompt language → weighted text-encoder hidden states, prompt and negative of equal length (and SDXL's
        // pooled embeddings).
        let mut text = self.encode_parsed(prompts, request, &networks.text)?;
        for warning in std::mem::take(&mut text.warnings) {
            on_event(Event::Warning(warning));
        }
        // SDXL's micro-conditioning: original size = target size = the image's, no crop (diffusers' defaults).
        let time_ids = match self.spec.family {
            Family::Sdxl => {
                let (h, w) = (height as f64, width as f64);
                Some(Tensor::new(&[[h, w, 0.0, 0.0, h, w]], &self.device)?.to_dtype(self.latent_dtype())?)
            }
            _ => None,
        };
        let guidance = self.guidance(request);
        let init_latent = match &init {
            Some(rgb) => Some(self.encode_image(rgb, request)?),
            None => None,
        };
        let latent_mask = match &mask {
            Some(mask) => Some(inpaint::latent_mask(mask, &self.device, self.latent_dtype())?),
            None => None,
        };
        if mask.as_ref().is_some_and(|m| !m.reaches_latents()) {
            on_event(Event::Warning(
                "the mask is too thin to reach the latents (one latent per 8×8 pixels, read at each block's top-left \
                 pixel): only the paste-back shows it; paint it wider"
                    .to_string(),
            ));
        }
        // An inpainting UNet sees the mask and the masked image's latent at every step (without a mask: all of
        // the image is repainted and nothing of it is shown, as diffusers' full mask and A1111's txt2img do).
        let extra_channels = match self.spec.inpainting() {
            true => Some(self.inpainting_channels(
                init.as_ref().zip(mask.as_ref()),
                latent_mask.as_ref(),
                (width, height),
                request,
            )?),
            false => None,
        };
        let guided = GuidedUNet::new(
            &networks.unet,
            &text,
            time_ids.as_ref(),
            extra_channels.as_ref(),
            guidance,
            self.prediction_type(request),
            Padding::seamless(request.seamless),
        )?;
        let schedule = self.spec.scheduler.noise_schedule(request.timestep_spacing)?;

        if request.threshold > 0.0 && !request.sampler.is_k_sampler() {
            on_event(Event::Warning(format!(
                "--threshold acts on the k-samplers only; {} ignores it (as in InvokeAI)",
                request.sampler
            )));
        }
        if request.seamless && request.vae_tiling {
            on_event(Event::Warning(
                "--vae-tiling with --seamless: each VAE tile wraps around its own edges, so an image larger than a \
                 tile may show seams inside it and tile less cleanly"
                    .to_string(),
            ));
        }

        // latents: the seed's noise (with -V variations and --perlin mixed in); ancestral samplers go on drawing
        // from the generator of the last seed used.
        let (noise_w, noise_h) = hires_first_pass.unwrap_or((width, height));
        let (noise, mut rng) = initial_noise(
            request.seed,
            &request.with_variations,
            request.perlin,
            &[1, self.spec.latent_channels(), noise_h / 8, noise_w / 8],
            &Device::Cpu,
        )?;
        let noise = noise.to_dtype(self.latent_dtype())?.to_device(&self.device)?;
        // An ordinary UNet inpaints by putting the region to keep back after every step.
        let known = match (&init_latent, &latent_mask) {
            (Some(init), Some(mask)) if !self.spec.inpainting() => {
                Some(KnownRegion::new(init.clone(), noise.clone(), mask.clone())?)
            }
            _ => None,
        };

        let mut run = SamplingRun {
            request,
            schedule: &schedule,
            guided: &guided,
            rng: &mut rng,
            known: known.as_ref(),
            cancel,
            on_event,
            steps_done: 0,
            total_steps: 0,
        };
        let latents = match (&init_latent, hires_first_pass) {
            // Nothing to denoise: the init image makes a round trip through the VAE.
            (Some(latent), _) if steps_run == 0 => latent.clone(),
            (Some(latent), _) => {
                run.started(steps_run, request.schedule_steps());
                // Strength 1 runs the whole schedule: the image is ignored, giving txt2img with this seed.
                let start_from = Some(latent).filter(|_| steps_run < request.schedule_steps());
                self.denoise(&mut run, Some(steps_run), start_from, &noise)?
            }
            (None, None) => {
                run.started(request.steps, request.steps);
                self.denoise(&mut run, None, None, &noise)?
            }
            // hires fix: txt2img at the first-pass size, latents resized, then img2img with fresh noise.
            (None, Some(_)) => {
                let second_pass = img2img_steps(request.strength, request.steps);
                // Both passes' steps, back to back: no step of this run is skipped.
                run.started(request.steps + second_pass, request.steps + second_pass);
                let small = self.denoise(&mut run, None, None, &noise)?;
                let resized = hires::resize_bilinear(&small, height / 8, width / 8)?;
                if second_pass == 0 {
                    resized
                } else {
                    let noise = self.draw_noise(run.rng, height, width, request.perlin)?;
                    self.denoise(&mut run, Some(second_pass), Some(&resized), &noise)?
                }
            }
        };
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }

        // decode: latents → RGB; an inpainted image gets the original pixels back outside its mask.
        let mut image = self.decode_latents(&latents, request)?;
        if let (Some(original), Some(mask)) = (&init, &mask) {
            if request.paste_back {
                image = paste_back(&image, original, &mask.repaint, request.mask_blur);
            }
        }
        let record = ImageRecord {
            request: request.clone(),
            width,
            height,
            steps_run,
            model_name: self.model_name.clone(),
            model_hash: self.model_hash.clone(),
            init_image_name: request.init_image.as_ref().map(|i| i.display_name()),
            init_mask_name: request.init_mask.as_ref().map(|m| m.display_name()),
            run: RunInfo {
                family: self.spec.family.id().to_string(),
                prediction_type: self.prediction_type(request),
                timestep_spacing: self.timestep_spacing(request),
                guidance: guidance.describe().to_string(),
                loras: networks
                    .loras
                    .iter()
                    .map(|l| AddonUse {
                        name: l.name.clone(),
                        weight: Some(l.unet_weight),
                        hash: l.hash.clone(),
                    })
                    .collect(),
                embeddings: self.embeddings_used(request),
                vae_approx: request
                    .vae_approx_decode
                    .then(|| self.vae_approx.as_ref().map(|(_, name)| name.clone()))
                    .flatten(),
                dtype: self.dtype.as_str().to_string(),
                device: device_name(&self.device),
            },
        };
        Ok(Generated {
            image,
            record,
            latents,
            mask: mask.and_then(|m| m.given),
        })
    }

    /// An inpainting UNet's extra channels for this run: the latent mask and the masked image's latent. Without a
    /// mask (txt2img, img2img on an inpainting model) everything is repainted: a mask of ones over an all-grey image.
    fn inpainting_channels(
        &self,
        init_and_mask: Option<(&::image::RgbImage, &InpaintMask)>,
        latent_mask: Option<&Tensor>,
        (width, height): (usize, usize),
        request: &GenerateRequest,
    ) -> Result<Tensor> {
        let pixels = match init_and_mask {
            Some((rgb, mask)) => masked_image(&rgb_to_tensor(rgb, &self.device)?, mask)?,
            None => Tensor::zeros((1, 3, height, width), DType::F32, &self.device)?,
        };
        let masked_latent = self.encode_pixels(&pixels, request)?;
        let latent_mask = match latent_mask {
            Some(m) => m.clone(),
            None => Tensor::ones((1, 1, height / 8, width / 8), self.latent_dtype(), &self.device)?,
        };
        inpaint::unet_extra_channels(&latent_mask, &masked_latent)
    }

    /// The first-pass size of a hires-fix run, or `None` (with a warning) when the target is no larger than
    /// the model's native size, where a second pass would only repeat the first.
    fn hires_first_pass(
        &self,
        width: usize,
        height: usize,
        request: &GenerateRequest,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Option<(usize, usize)> {
        let native = self.spec.native_size();
        let first = hires::first_pass_size(width, height, native);
        if first.0 >= width && first.1 >= height {
            on_event(Event::Warning(format!(
                "--hires_fix has no effect at {width}×{height}: the model's native size is {n}×{n}; \
                 it helps for larger images (e.g. -W {w} -H {h})",
                n = native,
                w = native * 2,
                h = native,
            )));
            return None;
        }
        debug_assert!(request.hires_fix);
        Some(first)
    }

    /// Fresh noise `[1, C, h/8, w/8]` from the run's generator (with `perlin` mixed in), in the samplers' dtype.
    fn draw_noise(&self, rng: &mut TorchRng, height: usize, width: usize, perlin: f64) -> Result<Tensor> {
        let shape = [1, self.spec.latent_channels(), height / 8, width / 8];
        let noise = seed_noise(rng, &shape, perlin)?;
        Ok(Tensor::from_vec(noise, &shape, &Device::Cpu)?
            .to_dtype(self.latent_dtype())?
            .to_device(&self.device)?)
    }

    /// One sampler run over the request's schedule: txt2img (`t_enc` None) or the last `t_enc` steps from
    /// `init`. Step events continue the numbering of earlier passes of the same request.
    fn denoise(
        &self,
        run: &mut SamplingRun<'_>,
        t_enc: Option<usize>,
        init: Option<&Tensor>,
        noise: &Tensor,
    ) -> Result<Tensor> {
        let request = run.request;
        let schedule = run.schedule;
        let plan = samplers::plan(
            request.sampler,
            schedule,
            request.schedule_steps(),
            request.karras_max,
            t_enc,
        );
        let start = samplers::start_latent(&plan, schedule, noise, init)?;
        let (offset, total) = (run.steps_done, run.total_steps);
        let cancel = run.cancel;
        let known = run.known;
        let on_event = &mut *run.on_event;
        let mut on_step = |progress: StepProgress<'_>| {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if let Some(known) = known {
                *progress.x = known.blend(progress.x, &plan, progress.step, schedule)?;
            }
            on_event(Event::Step {
                step: offset + progress.step,
                total_steps: total,
                latents: progress.x,
            });
            Ok(())
        };
        let latents = samplers::sample_with_threshold(
            request.sampler,
            run.guided,
            schedule,
            start,
            &plan,
            &mut *run.rng,
            request.threshold,
            &mut on_step,
        )?;
        run.steps_done += plan.steps();
        Ok(latents)
    }

    /// A preview of latents: the tiny autoencoder's full-size decode when one is set ([`Self::set_vae_approx`]),
    /// else one pixel per latent position with this model's latent → RGB map.
    pub fn preview(&self, latents: &Tensor) -> Result<::image::RgbImage> {
        match &self.vae_approx {
            Some((approx, _)) => tensor_to_rgb(&self.approx_decode(approx, latents)?),
            None => crate::image::preview::latents_to_rgb_with(latents, self.spec.preview()),
        }
    }

    /// Sets (or with None removes) the tiny autoencoder: loaded with [`TinyAutoencoder::load`] (a decoder file, or a
    /// decoder and an encoder), `name` is what the metadata records. Refuses one made for other latents (FLUX.2's
    /// 32-channel TAEF2 on an SD model) or without a decoder.
    pub fn set_vae_approx(&mut self, approx: Option<(TinyAutoencoder, String)>) -> Result<()> {
        if let Some((approx, name)) = &approx {
            let (theirs, ours) = (approx.latent_channels(), self.spec.latent_channels());
            if theirs != ours {
                return Err(Error::InvalidRequest {
                    field: "vae_approx",
                    message: format!(
                    "--vae-approx {name} decodes {theirs}-channel latents, but this {} model's latents have {ours}; \
                     use the tiny autoencoder made for it (taesd_decoder.pth for SD 1.x/2.x, taesdxl_decoder.pth \
                     for SDXL)",
                    self.spec.family
                ),
                });
            }
            if !approx.has_decoder() {
                return Err(Error::InvalidRequest {
                    field: "vae_approx",
                    message: format!(
                        "--vae-approx {name} is an encoder only; give its decoder too (taesd_decoder.pth)"
                    ),
                });
            }
        }
        self.vae_approx = approx.map(|(approx, name)| (Arc::new(approx), name));
        Ok(())
    }

    /// Loads the tiny autoencoder of `files` (a decoder, or an encoder and a decoder: `--vae-approx`) on this
    /// pipeline's device and precision and sets it ([`Self::set_vae_approx`]), named by its files' names.
    pub fn load_vae_approx(&mut self, files: &[std::path::PathBuf]) -> Result<()> {
        let paths: Vec<&std::path::Path> = files.iter().map(std::path::PathBuf::as_path).collect();
        let approx = crate::model::load_tiny_autoencoder(&paths, &self.device, self.dtype)?;
        let names: Vec<String> = paths
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
            })
            .collect();
        self.set_vae_approx(Some((approx, names.join("+"))))
    }

    /// The tiny autoencoder's file name, when one is set.
    pub fn vae_approx_name(&self) -> Option<&str> {
        self.vae_approx.as_ref().map(|(_, name)| name.as_str())
    }

    /// The tiny autoencoder a request asks for: an error when it asks and none is set.
    fn approx_for(&self, asked: bool, flag: &str) -> Result<Option<&TinyAutoencoder>> {
        match (asked, &self.vae_approx) {
            (false, _) => Ok(None),
            (true, Some((approx, _))) => Ok(Some(approx)),
            (true, None) => Err(Error::InvalidRequest {
                field: "vae_approx",
                message: format!(
                    "{flag} needs a tiny autoencoder: load one with --vae-approx FILE (taesd_decoder.pth)"
                ),
            }),
        }
    }

    /// Pipeline latents → `[1, 3, H, W]` f32 in [0, 1] by the tiny autoencoder (its latents are the pipeline's, with
    /// the VAE's scaling factor applied).
    fn approx_decode(&self, approx: &TinyAutoencoder, latents: &Tensor) -> Result<Tensor> {
        let rgb = approx.decode(&latents.to_dtype(self.dtype)?)?;
        Ok(rgb.to_dtype(DType::F32)?)
    }

    /// The text conditioning of a request's prompts on this model (what the UNet cross-attends to, and SDXL's pooled
    /// embeddings), as `generate` computes it.
    pub fn encode_text(&self, request: &GenerateRequest) -> Result<Conditioning> {
        let prompts = self.check.prompts(request)?;
        let networks = self.networks_for(request, &prompts, &mut |_| {})?;
        self.encode_parsed(prompts, request, &networks.text)
    }

    fn encode_parsed(
        &self,
        prompts: ParsedPrompts,
        request: &GenerateRequest,
        text: &TextConditioner,
    ) -> Result<Conditioning> {
        encode_for_model(
            &self.tokenizer,
            text,
            &self.device,
            prompts,
            &prompt_options(request),
            self.spec.force_zeros_for_empty_prompt && !request.negative_given,
        )
    }

    /// Warns, once per loaded model, about an image much smaller than the family's native size (SDXL at 512², the
    /// SD 2.x 768 model at 512² give broken images; it is allowed all the same).
    fn warn_about_size(&self, width: usize, height: usize, on_event: &mut dyn FnMut(Event<'_>)) {
        let native = self.spec.native_size();
        // SD 1.x keeps InvokeAI's habits (256² and 384² images are common there).
        if self.spec.family == Family::Sd1 || 2 * width * height >= native * native {
            return;
        }
        if !self.size_warned.swap(true, Ordering::Relaxed) {
            on_event(Event::Warning(format!(
                "{width}×{height} is far below this {} model's native {native}×{native}; such models tend to give \
                 broken images this small (try -W {native} -H {native})",
                self.spec.family
            )));
        }
    }

    /// The prompt's tokens as CLIP sees them, with their weights and chunks, for `-t` (InvokeAI's
    /// `--log_tokenization`).
    pub fn describe_tokenization(&self, request: &GenerateRequest) -> Result<String> {
        let mut out = describe_tokenization(
            &self.tokenizer,
            &request.prompt,
            &request.negative_prompt,
            &prompt_options(request),
        )?;
        // The add-ons: LoRAs with their weights and files, embeddings with how many tokens they take.
        let prompts = self.check.prompts(request)?;
        let uses: Vec<_> = request.loras.iter().chain(prompts.loras()).cloned().collect();
        for (name, path, text_weight, unet_weight) in wanted_loras(&self.addons.library, &uses)? {
            let weights = match text_weight == unet_weight {
                true => format!("weight {unet_weight}"),
                false => format!("text encoder weight {text_weight}, UNet weight {unet_weight}"),
            };
            out.push_str(&format!("\nLoRA {name}: {weights} ({})", path.display()));
        }
        for used in self.embeddings_used(request) {
            let vectors = self
                .addons
                .embeddings
                .iter()
                .find(|e| e.name == used.name)
                .map_or(0, |e| e.vectors);
            let plural = if vectors == 1 { "" } else { "s" };
            out.push_str(&format!("\nembedding {}: {vectors} token{plural}", used.name));
        }
        Ok(out)
    }

    /// Samplers keep latents in f32 whatever the networks compute in (f64 in the reference-parity mode).
    fn latent_dtype(&self) -> DType {
        crate::nn::accumulation_dtype(self.dtype)
    }

    /// Init image → VAE posterior mean × scaling factor (deterministic, as InvokeAI); in tiles with the request's
    /// `vae_tiling`, circularly padded with its `seamless`.
    fn encode_image(&self, rgb: &::image::RgbImage, request: &GenerateRequest) -> Result<Tensor> {
        self.encode_pixels(&rgb_to_tensor(rgb, &self.device)?, request)
    }

    /// [`Self::encode_image`] of VAE pixels `[1, 3, H, W]` in [-1, 1].
    fn encode_pixels(&self, pixels: &Tensor, request: &GenerateRequest) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype)?;
        if let Some(approx) = self.approx_for(request.vae_approx_encode, "--vae-approx-encode")? {
            if !approx.has_encoder() {
                return Err(Error::InvalidRequest {
                    field: "vae_approx",
                    message: "--vae-approx-encode needs the tiny autoencoder's encoder: give its encoder file too \
                     (--vae-approx taesd_encoder.pth --vae-approx taesd_decoder.pth)"
                        .into(),
                });
            }
            // The tiny encoder takes [0, 1] pixels and gives the pipeline's (scaled) latents.
            let latents = approx.encode(&((pixels + 1.0)? / 2.0)?)?;
            return Ok(latents.to_dtype(self.latent_dtype())?);
        }
        let tiling = request.vae_tiling.then(VaeTiling::default);
        let mean = self
            .vae
            .encode_mean_padded(&pixels, tiling.as_ref(), Padding::seamless(request.seamless))?;
        Ok((mean.to_dtype(self.latent_dtype())? * self.spec.vae_scale())?)
    }

    /// Latents → RGB image (diffusers' `(x / 2 + 0.5).clamp(0, 1)`, rounded to 8 bits), decoded as `request` says
    /// (`vae_tiling`, `seamless`).
    pub fn decode_latents(&self, latents: &Tensor, request: &GenerateRequest) -> Result<::image::RgbImage> {
        let decoded = self.decode_to_unit_range(latents, request)?;
        tensor_to_rgb(&decoded)
    }

    /// Latents → `[1, 3, H, W]` f32 in [0, 1], decoded as `request` says (`vae_tiling`, `seamless`).
    pub fn decode_to_unit_range(&self, latents: &Tensor, request: &GenerateRequest) -> Result<Tensor> {
        if let Some(approx) = self.approx_for(request.vae_approx_decode, "--vae-approx")? {
            return self.approx_decode(approx, latents);
        }
        let z = (latents / self.spec.vae_scale())?.to_dtype(self.dtype)?;
        if z.device().is_cpu() {
            crate::cpu::release_free_heap();
        }
        let tiling = request.vae_tiling.then(VaeTiling::default);
        let x = self
            .vae
            .decode_padded(&z, tiling.as_ref(), Padding::seamless(request.seamless))?;
        Ok(((x.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }
}

/// Each text encoder's tokenizer: the model's own files, else the bundled vocabulary padding as the family does.
fn tokenizers(weights: &ModelWeights) -> Result<Vec<ClipTokenizer>> {
    weights
        .spec
        .text_encoders
        .iter()
        .zip(&weights.tokenizer_dirs)
        .map(|(encoder, dir)| match dir {
            Some(dir) => ClipTokenizer::from_dir(dir),
            None => ClipTokenizer::bundled_padding_with(encoder.pad_token),
        })
        .collect()
}
