//! Admission: everything about a request that can be known before any tensor work — its fields
//! ([`GenerateRequest::validate`]), its prompts (parsed, and their CLIP length), and the work it will take against a
//! device's [`WorkLimits`]. [`super::Pipeline::generate`] runs it first; a server runs the same [`RequestCheck`]
//! when a job is submitted, so a bad job is refused at once, naming the field, instead of failing in the queue.

use super::hires::first_pass_size;
use crate::addons::AddonLibrary;
use crate::request::{img2img_steps, GenerateRequest};
use crate::text::conditioning::{parse_prompts, Downweight, ParsedPrompts, PromptOptions};
use crate::text::tokenizer::{AddedTokens, ClipTokenizer};
use crate::{Error, Result};
use candle_core::Device;
use std::sync::Arc;

/// How much one job may ask of a device: a cap on its image size and a budget of pixels × denoising steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkLimits {
    /// Largest image, in pixels (width × height). Attention grows with the square of it.
    pub max_pixels: u64,
    /// Most pixels × steps one job may take, all passes together.
    pub max_pixel_steps: u64,
}

impl WorkLimits {
    /// Generous defaults for the device. A CPU runs a 512² step in 1.5–8.5 s and a 1024² step in ~4× that, so its
    /// cap is 2 megapixels and 200 megapixel-steps (1024² × 190 steps, or 512² at the 1000-step maximum: about an
    /// hour of CPU time at most); a GPU is 10–50× faster, so the request limits (4096² pixels) and 2000 megapixel-steps.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Self::CPU
        } else {
            Self::GPU
        }
    }

    pub const CPU: Self = Self {
        max_pixels: 2 * MEGAPIXEL,
        max_pixel_steps: 200 * MEGAPIXEL,
    };
    pub const GPU: Self = Self {
        max_pixels: 16 * MEGAPIXEL,
        max_pixel_steps: 2000 * MEGAPIXEL,
    };
}

/// 2²⁰ pixels (1024 × 1024): the unit limits are written and reported in.
pub const MEGAPIXEL: u64 = 1 << 20;

/// The work a request takes, as [`RequestCheck::check`] computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Denoising steps that run, all passes together (what progress events count to).
    pub steps: usize,
    /// The output's width × height.
    pub pixels: u64,
    /// Σ pixels × steps over the passes; a pass of 0 steps (strength 0) counts one step for the VAE.
    pub pixel_steps: u64,
}

/// The checks of one loaded model: its tokenizer (prompt lengths), its native size (the hires-fix first pass) and
/// the limits in force. Cheap to clone and to share between threads.
#[derive(Clone)]
pub struct RequestCheck {
    tokenizer: Arc<ClipTokenizer>,
    native_size: usize,
    limits: Option<WorkLimits>,
    /// The LoRAs requests may name.
    library: Arc<AddonLibrary>,
    /// Embeddings of the library the model cannot use (lowercase name, why), and their names as words to find in a
    /// prompt.
    unusable_embeddings: Arc<Vec<(String, String)>>,
    unusable_words: Arc<AddedTokens>,
}

impl RequestCheck {
    /// Checks for a model with `tokenizer` trained at `native_size` pixels (512 for SD 1.x), without work limits.
    pub fn new(tokenizer: Arc<ClipTokenizer>, native_size: usize) -> Self {
        Self {
            tokenizer,
            native_size,
            limits: None,
            library: Arc::new(AddonLibrary::default()),
            unusable_embeddings: Arc::new(Vec::new()),
            unusable_words: Arc::new(AddedTokens::default()),
        }
    }

    /// The same checks knowing the LoRAs and embeddings of `library` (and which embeddings the model cannot use).
    pub(super) fn with_addons(mut self, library: Arc<AddonLibrary>, unusable: Arc<Vec<(String, String)>>) -> Self {
        self.library = library;
        self.unusable_words = Arc::new(AddedTokens::new(
            unusable.iter().map(|(name, _)| (name.clone(), vec![0])),
        ));
        self.unusable_embeddings = unusable;
        self
    }

    /// The same checks with `limits` (None: no limit on the work).
    pub fn with_limits(mut self, limits: Option<WorkLimits>) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Option<WorkLimits> {
        self.limits
    }

    /// Checks `request` and returns the work it takes. `init_size`: the size its init image runs at
    /// ([`crate::image::init::run_size`], known from the image's header), None for txt2img.
    pub fn check(&self, request: &GenerateRequest, init_size: Option<(u32, u32)>) -> Result<Work> {
        self.admit(request, init_size).map(|(work, _)| work)
    }

    /// [`check`](Self::check), also handing over the parsed prompts, so that the pipeline encodes what it checked
    /// instead of parsing and tokenizing them again.
    pub(super) fn admit(
        &self,
        request: &GenerateRequest,
        init_size: Option<(u32, u32)>,
    ) -> Result<(Work, ParsedPrompts)> {
        request.validate()?;
        let prompts = self.prompts(request)?;
        let work = self.work(request, init_size);
        if let Some(limits) = self.limits {
            check_limits(&work, &limits, init_size.is_some())?;
        }
        Ok((work, prompts))
    }

    /// The request's prompts parsed, its LoRAs known to the library, no embedding the model cannot use named.
    pub(super) fn prompts(&self, request: &GenerateRequest) -> Result<ParsedPrompts> {
        let prompts = parse_prompts(
            &self.tokenizer,
            &request.prompt,
            &request.negative_prompt,
            &prompt_options(request),
        )?;
        for (field, uses) in [("loras", request.loras.as_slice()), ("prompt", prompts.loras())] {
            if let Some(unknown) = uses.iter().find(|u| self.library.lora(&u.name).is_none()) {
                return Err(self.library.unknown_lora(&unknown.name, field));
            }
        }
        if !self.unusable_words.is_empty() {
            for (field, text) in [
                ("prompt", &request.prompt),
                ("negative_prompt", &request.negative_prompt),
            ] {
                if let Some(word) = self.unusable_words.first_match(text) {
                    let why = self
                        .unusable_embeddings
                        .iter()
                        .find(|(name, _)| *name == word)
                        .map_or("", |(_, why)| why.as_str());
                    return Err(Error::invalid(
                        field,
                        format!("the embedding `{word}` cannot be used: {why}"),
                    ));
                }
            }
        }
        Ok(prompts)
    }

    fn work(&self, request: &GenerateRequest, init_size: Option<(u32, u32)>) -> Work {
        let pixels = |(w, h): (usize, usize)| w as u64 * h as u64;
        let (size, passes) = match init_size {
            Some((w, h)) => {
                let size = (w as usize, h as usize);
                (size, vec![(size, request.steps_to_run())])
            }
            None => {
                let size = (request.width, request.height);
                let first = first_pass_size(size.0, size.1, self.native_size);
                if request.hires_fix && (first.0 < size.0 || first.1 < size.1) {
                    let second = img2img_steps(request.strength, request.steps);
                    (size, vec![(first, request.steps), (size, second)])
                } else {
                    (size, vec![(size, request.steps)])
                }
            }
        };
        Work {
            steps: passes.iter().map(|&(_, steps)| steps).sum(),
            pixels: pixels(size),
            pixel_steps: passes
                .iter()
                .map(|&(size, steps)| pixels(size).saturating_mul(steps.max(1) as u64))
                .fold(0, u64::saturating_add),
        }
    }
}

fn check_limits(work: &Work, limits: &WorkLimits, img2img: bool) -> Result<()> {
    let megapixels = |v: u64| v as f64 / MEGAPIXEL as f64;
    if work.pixels > limits.max_pixels {
        return Err(Error::invalid(
            if img2img { "init_image" } else { "width" },
            format!(
                "the image would be {:.2} megapixels, over this device's limit of {:.2} (the server's --max-pixels); \
                 make it smaller{}",
                megapixels(work.pixels),
                megapixels(limits.max_pixels),
                if img2img { " (fit it into a smaller box)" } else { "" }
            ),
        ));
    }
    if work.pixel_steps > limits.max_pixel_steps {
        return Err(Error::invalid(
            "steps",
            format!(
                "this job takes {:.1} megapixel-steps (pixels × steps over its passes), over this device's work \
                 budget of {:.1} (the server's --work-budget); use fewer steps or a smaller image",
                megapixels(work.pixel_steps),
                megapixels(limits.max_pixel_steps)
            ),
        ));
    }
    Ok(())
}

/// How the request's prompts are turned into conditioning.
pub(super) fn prompt_options(request: &GenerateRequest) -> PromptOptions {
    PromptOptions {
        truncate: request.truncate_prompts,
        skip_normalize: request.skip_normalize,
        downweight: if request.downweight_mask {
            Downweight::Mask
        } else {
            Downweight::Remove
        },
    }
}
