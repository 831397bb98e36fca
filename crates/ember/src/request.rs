//! What a front-end asks the engine for: one image generation, txt2img, img2img or inpainting (an img2img request
//! with a mask: `init_mask`, or the init image's transparent pixels, or the canvas `outcrop` adds).

use crate::sample::denoiser::PredictionType;
use crate::sample::schedule::TimestepSpacing;
use crate::sample::SamplerKind;
use crate::{Error, Result};
use std::path::PathBuf;

/// InvokeAI 2.x defaults.
pub const DEFAULT_STEPS: usize = 50;
pub const DEFAULT_CFG_SCALE: f64 = 7.5;
pub const DEFAULT_STRENGTH: f64 = 0.75;
pub const DEFAULT_SIZE: usize = 512;
pub const DEFAULT_KARRAS_MAX: usize = 30;

/// The init image of an img2img request.
#[derive(Debug, Clone)]
pub enum InitImage {
    /// A file on disk (PNG, JPEG, WebP, BMP); EXIF orientation is applied.
    Path(PathBuf),
    /// An image already in memory (a front-end's upload); `name` is used in messages and metadata.
    Memory { name: String, image: ::image::DynamicImage },
}

impl InitImage {
    /// The name recorded in metadata and shown in messages.
    pub fn display_name(&self) -> String {
        match self {
            InitImage::Path(p) => p.display().to_string(),
            InitImage::Memory { name, .. } => name.clone(),
        }
    }
}

/// One image to generate. `seed` fully determines the noise.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    /// A negative prompt was given, even an empty one (`--negative ""`): SDXL base zeroes the unconditional embeddings
    /// only when none was, as diffusers' `force_zeros_for_empty_prompt` does for `negative_prompt=None`.
    pub negative_given: bool,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: SamplerKind,
    pub seed: u32,
    /// Output size for txt2img, and the box an init image is fitted into with `fit`.
    pub width: usize,
    pub height: usize,
    pub init_image: Option<InitImage>,
    /// img2img: how much of the schedule runs, in [0, 1]; `floor(strength × steps)` steps are taken.
    pub strength: f64,
    /// img2img: scale the init image into the width×height box (keeping its aspect ratio).
    pub fit: bool,
    /// k-samplers use the Karras schedule when `steps < karras_max`, else the model's own.
    pub karras_max: usize,
    /// img2img: `steps` counts the steps taken from the image; the schedule is lengthened to
    /// [`GenerateRequest::schedule_steps`] so that `floor(strength × schedule) = steps`.
    pub exact_steps: bool,
    /// `-V`: variations applied in order to the seed's noise, each a slerp toward `(seed, weight)`'s noise.
    pub with_variations: Vec<(u32, f64)>,
    /// `--seamless`: circular padding in every convolution, so the image tiles.
    pub seamless: bool,
    /// `--threshold`: InvokeAI's dynamic clamp of the guided prediction (0 = off).
    pub threshold: f64,
    /// `--perlin`: fraction of Perlin noise mixed into the initial noise (0 = off).
    pub perlin: f64,
    /// `--hires_fix`: txt2img larger than 512 first runs at ~512, then img2img to the target size.
    pub hires_fix: bool,
    /// Prompt-language option `-x`: keep blend weights as written instead of normalising them to sum 1.
    pub skip_normalize: bool,
    /// Cut prompts at CLIP's 77 tokens (InvokeAI 2.x / diffusers) instead of encoding them in 77-token chunks.
    pub truncate_prompts: bool,
    /// `--downweight mask`: fade a fragment weighted below 1 by masking its tokens in the text encoder's attention
    /// (compel's default) instead of re-encoding the prompt without it (InvokeAI 2.x).
    pub downweight_mask: bool,
    /// `--vae-tiling`: encode the init image and decode the result in overlapping 512-pixel tiles (diffusers'
    /// `enable_tiling()`), so large images fit in memory; pixels differ slightly from the untiled VAE's.
    pub vae_tiling: bool,
    /// `--vae-approx`: the final image is decoded by the pipeline's tiny autoencoder (TAESD) instead of the VAE —
    /// much cheaper, slightly softer ([`crate::pipeline::Pipeline::set_vae_approx`]).
    pub vae_approx_decode: bool,
    /// `--vae-approx-encode`: img2img's (and inpainting's) init image is encoded by the tiny autoencoder too.
    pub vae_approx_encode: bool,
    /// `--prediction-type`: what the model predicts, when the file cannot say (None: the model's own).
    pub prediction_type: Option<PredictionType>,
    /// `--timestep-spacing`: how the steps are spread over the schedule (None: the model's default).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// LoRAs applied besides those the prompt names (`--lora NAME:WEIGHT`), by their names in the pipeline's
    /// [`crate::addons::AddonLibrary`].
    pub loras: Vec<crate::text::prompt::LoraUse>,
    /// `-M`: the inpainting mask (white = repaint, black = keep; any size, resized to the init image). None: the
    /// init image's transparent pixels are the area to repaint, if it has any.
    pub init_mask: Option<InitImage>,
    /// `--invert-mask`: repaint what the mask keeps, and keep what it repaints.
    pub invert_mask: bool,
    /// `--mask-blur`: feathers the paste-back's edge over this many pixels, inside the repainted area (0 = sharp).
    pub mask_blur: u32,
    /// `--outcrop`: extend the init image's canvas by these pixels and paint the new area.
    pub outcrop: Outcrop,
    /// Inpainting: put the original pixels back outside the mask (the default); `--no-paste-back` returns the
    /// decoded image as it is (what diffusers gives: the whole image has been through the VAE).
    pub paste_back: bool,
}

/// InvokeAI's `--outcrop`: pixels added on each side of the init image (multiples of 8); the new area is
/// transparent, so it is painted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

    /// The sides with their pixels in InvokeAI's words (`top 64 left 128`), zero sides left out.
    pub fn words(&self) -> Vec<(&'static str, u32)> {
        [
            ("top", self.top),
            ("bottom", self.bottom),
            ("left", self.left),
            ("right", self.right),
        ]
        .into_iter()
        .filter(|(_, px)| *px > 0)
        .collect()
    }

    /// Reads InvokeAI's `top 64 left 128` (direction, pixels; in any order, each direction once, `t`/`b`/`l`/`r`
    /// accepted).
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Self> {
        let bad = |message: String| Error::invalid("outcrop", message);
        if words.is_empty() || !words.len().is_multiple_of(2) {
            return Err(bad(format!(
                "takes pairs of a side and pixels, like `top 64 left 128`; got {:?}",
                words.iter().map(|w| w.as_ref()).collect::<Vec<_>>().join(" ")
            )));
        }
        let mut out = Outcrop::default();
        let mut seen = Vec::new();
        for pair in words.chunks(2) {
            let (side, px) = (pair[0].as_ref(), pair[1].as_ref());
            let pixels: u32 = px.parse().map_err(|_| {
                bad(format!(
                    "{px:?} after {side:?} is not a number of pixels (try {side} 64)"
                ))
            })?;
            let slot = match side.to_ascii_lowercase().as_str() {
                "top" | "t" => &mut out.top,
                "bottom" | "b" => &mut out.bottom,
                "left" | "l" => &mut out.left,
                "right" | "r" => &mut out.right,
                other => return Err(bad(format!("unknown side {other:?}; use top, bottom, left or right"))),
            };
            if seen.contains(&side.chars().next()) {
                return Err(bad(format!("{side} is given twice")));
            }
            seen.push(side.chars().next());
            *slot = pixels;
        }
        out.check()?;
        Ok(out)
    }

    /// Each side a multiple of 8 and at most [`MAX_SIDE`].
    pub fn check(&self) -> Result<()> {
        for (side, px) in self.words() {
            if px % 8 != 0 {
                return Err(Error::invalid(
                    "outcrop",
                    format!(
                        "{side} {px} is not a multiple of 8 pixels (the VAE's factor); try {side} {}",
                        (px / 8).max(1) * 8
                    ),
                ));
            }
            if px as usize > MAX_SIDE {
                return Err(Error::invalid(
                    "outcrop",
                    format!("{side} {px} is more than the {MAX_SIDE}-pixel limit of an image side"),
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Outcrop {
    /// `top 64 left 128`, as [`Outcrop::parse`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<String> = self.words().iter().map(|(s, px)| format!("{s} {px}")).collect();
        f.write_str(&words.join(" "))
    }
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            negative_given: false,
            steps: DEFAULT_STEPS,
            cfg_scale: DEFAULT_CFG_SCALE,
            sampler: SamplerKind::KLms,
            seed: 0,
            width: DEFAULT_SIZE,
            height: DEFAULT_SIZE,
            init_image: None,
            strength: DEFAULT_STRENGTH,
            fit: false,
            karras_max: DEFAULT_KARRAS_MAX,
            exact_steps: false,
            with_variations: Vec::new(),
            seamless: false,
            threshold: 0.0,
            perlin: 0.0,
            hires_fix: false,
            skip_normalize: false,
            truncate_prompts: false,
            downweight_mask: false,
            vae_tiling: false,
            vae_approx_decode: false,
            vae_approx_encode: false,
            prediction_type: None,
            timestep_spacing: None,
            loras: Vec::new(),
            init_mask: None,
            invert_mask: false,
            mask_blur: 0,
            outcrop: Outcrop::default(),
            paste_back: true,
        }
    }
}

/// Largest side accepted, in pixels: beyond this the UNet's memory needs are absurd for SD 1.x.
pub const MAX_SIDE: usize = 4096;
/// Classifier-free guidance scales accepted. 0 is the unguided prediction (what Turbo models use); beyond 100 the
/// guided prediction overflows into a black or saturated image (1e308 gave a black image marked "done").
pub const MAX_CFG_SCALE: f64 = 100.0;
/// Longest prompt (and negative prompt) accepted, in characters: 32 chunks of 75 tokens are ~10 000 characters of
/// ordinary text, and the tokenizer's byte-pair merge is quadratic in the length of a word.
pub const MAX_PROMPT_CHARS: usize = 10_000;
/// Most variations applied to one seed's noise (`-V`); each is one more full-size noise tensor.
pub const MAX_VARIATIONS: usize = 64;
/// Widest `--mask-blur`, in pixels: a feather wider than this is no longer an edge.
pub const MAX_MASK_BLUR: u32 = 256;
/// Most LoRAs one request may apply.
pub const MAX_LORAS: usize = 32;
/// Largest LoRA weight accepted (either sign): far beyond any useful strength, but a typo like 80 instead of 0.8 is
/// still refused rather than producing noise.
pub const MAX_LORA_WEIGHT: f64 = 100.0;

/// Checks a strength (`-f`, the API's `strength`, a config file's default): img2img's and hires_fix's fraction of
/// the schedule, in [0, 1].
pub fn check_strength(strength: f64) -> Result<()> {
    // NaN fails `contains` too.
    if (0.0..=1.0).contains(&strength) {
        return Ok(());
    }
    Err(Error::invalid(
        "strength",
        format!("{strength} is outside [0, 1]; 0 keeps the init image, 1 ignores it (try 0.75)"),
    ))
}

/// Checks how many LoRAs one request applies: at most [`MAX_LORAS`].
pub fn check_lora_count(count: usize) -> Result<()> {
    if count <= MAX_LORAS {
        return Ok(());
    }
    Err(Error::invalid(
        "loras",
        format!("{count} LoRAs is more than the {MAX_LORAS} one request may apply"),
    ))
}

/// Checks one LoRA weight (`--lora NAME:W`, the API's `loras[].weight`, a request's LoRA list): a finite number
/// within ±[`MAX_LORA_WEIGHT`].
pub fn check_lora_weight(name: &str, weight: f64) -> Result<()> {
    if weight.is_finite() && weight.abs() <= MAX_LORA_WEIGHT {
        return Ok(());
    }
    Err(Error::invalid(
        "loras",
        format!(
            "the weight {weight} of LoRA '{name}' is outside [-{MAX_LORA_WEIGHT}, {MAX_LORA_WEIGHT}]; 1 applies it as \
             trained, 0.5 half as strongly"
        ),
    ))
}

/// Checks a front-end's variation amount (`-v`, the API's `variation_amount`): each image adds a fresh variation seed
/// with this weight, so it must be a weight in [0, 1]. Kept here with [`GenerateRequest::validate`] so every
/// front-end refuses the same values with the same words.
pub fn check_variation_amount(amount: f64) -> Result<()> {
    // NaN fails `contains` too.
    if (0.0..=1.0).contains(&amount) {
        Ok(())
    } else {
        Err(Error::invalid(
            "variation_amount",
            format!("{amount} is outside [0, 1]; 0.1 gives a close variation, 1 an unrelated image"),
        ))
    }
}

impl GenerateRequest {
    /// Number of denoising steps actually taken: all of them for txt2img, `floor(strength × schedule)` for img2img.
    pub fn steps_to_run(&self) -> usize {
        if self.init_image.is_some() {
            img2img_steps(self.strength, self.schedule_steps())
        } else {
            self.steps
        }
    }

    /// Length of the schedule the sampler is planned over: `steps`, or with `exact_steps` (img2img) the
    /// length that makes exactly `steps` of it run from the image.
    pub fn schedule_steps(&self) -> usize {
        if self.exact_steps && self.init_image.is_some() {
            exact_schedule_steps(self.strength, self.steps).unwrap_or(self.steps)
        } else {
            self.steps
        }
    }

    /// Checks every field a user can get wrong, with messages that say what to do.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1 (try 50)"));
        }
        if self.steps > 1000 {
            return Err(Error::invalid(
                "steps",
                format!("{} is more than the model's 1000 training steps", self.steps),
            ));
        }
        // NaN fails `contains` too.
        if !(0.0..=MAX_CFG_SCALE).contains(&self.cfg_scale) {
            return Err(Error::invalid(
                "cfg_scale",
                format!(
                    "{} is outside [0, {MAX_CFG_SCALE}]; 7.5 is the usual guidance, 1 turns it off",
                    self.cfg_scale
                ),
            ));
        }
        for (field, text) in [("prompt", &self.prompt), ("negative_prompt", &self.negative_prompt)] {
            let chars = text.chars().count();
            if chars > MAX_PROMPT_CHARS {
                return Err(Error::invalid(
                    field,
                    format!("is {chars} characters long, over the {MAX_PROMPT_CHARS} accepted; shorten it"),
                ));
            }
        }
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if !(8..=MAX_SIDE).contains(&v) {
                return Err(Error::invalid(field, format!("{v} is outside 8..={MAX_SIDE} pixels")));
            }
            if self.init_image.is_none() && v % 8 != 0 {
                return Err(Error::invalid(
                    field,
                    format!("{v} is not a multiple of 8 (try {})", (v / 8).max(1) * 8),
                ));
            }
        }
        // Checked even without an init image: hires_fix's second pass runs at this strength, and a value that
        // means nothing should not reach the metadata.
        check_strength(self.strength)?;
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(Error::invalid(
                "threshold",
                format!("{} is out of range: 0 turns it off (try 10)", self.threshold),
            ));
        }
        if !(0.0..=1.0).contains(&self.perlin) {
            return Err(Error::invalid(
                "perlin",
                format!(
                    "{} is outside [0, 1]: it is the fraction of Perlin noise (try 0.1)",
                    self.perlin
                ),
            ));
        }
        if self.perlin > 0.0 && self.init_image.is_none() {
            if self.hires_fix {
                return Err(Error::invalid(
                    "perlin",
                    "cannot be combined with hires_fix: Perlin noise needs sides that are multiples of 64 pixels, \
                     and the first pass runs at a size chosen from the model (drop one of the two)",
                ));
            }
            crate::sample::perlin::check_image_size(self.width, self.height)?;
        }
        check_lora_count(self.loras.len())?;
        for lora in &self.loras {
            check_lora_weight(&lora.name, lora.text_weight)?;
            check_lora_weight(&lora.name, lora.unet_weight)?;
        }
        if self.with_variations.len() > MAX_VARIATIONS {
            return Err(Error::invalid(
                "with_variations",
                format!(
                    "has {} variations, over the {MAX_VARIATIONS} accepted",
                    self.with_variations.len()
                ),
            ));
        }
        for &(seed, weight) in &self.with_variations {
            if !(0.0..=1.0).contains(&weight) {
                return Err(Error::invalid(
                    "with_variations",
                    format!("weight {weight} of variation seed {seed} is outside [0, 1] (try {seed}:0.1)"),
                ));
            }
        }
        if self.init_image.is_none() {
            let needs_init = [
                ("init_mask", self.init_mask.is_some()),
                ("outcrop", !self.outcrop.is_empty()),
                ("invert_mask", self.invert_mask),
            ];
            if let Some((field, _)) = needs_init.into_iter().find(|(_, set)| *set) {
                return Err(Error::invalid(
                    field,
                    "inpainting needs an init image (-I) to paint on; give one, or drop this option",
                ));
            }
        }
        if self.mask_blur > MAX_MASK_BLUR {
            return Err(Error::invalid(
                "mask_blur",
                format!("{} pixels is over the {MAX_MASK_BLUR} accepted (try 4)", self.mask_blur),
            ));
        }
        self.outcrop.check()?;
        if self.exact_steps && self.init_image.is_some() {
            if self.strength <= 0.0 {
                return Err(Error::invalid(
                    "strength",
                    "exact steps need a strength above 0: at 0 no step runs from the image",
                ));
            }
            if exact_schedule_steps(self.strength, self.steps).is_none() {
                return Err(Error::invalid(
                    "steps",
                    format!(
                        "{} steps at strength {} need a schedule longer than 1000 steps; lower steps or raise strength",
                        self.steps, self.strength
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The shortest schedule for which `floor(strength × schedule)` reaches `steps` — exactly `steps`, since the
/// floor grows by at most one per schedule step when strength ≤ 1. Starts from `ceil(steps / strength)` and
/// corrects it by the same float64 truncation InvokeAI applies. `None` when it would exceed 1000 steps.
pub fn exact_schedule_steps(strength: f64, steps: usize) -> Option<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return None;
    }
    let mut schedule = (steps as f64 / strength).ceil().max(1.0) as usize;
    while schedule > 1 && img2img_steps(strength, schedule - 1) >= steps {
        schedule -= 1;
    }
    while img2img_steps(strength, schedule) < steps {
        schedule += 1;
    }
    (schedule <= 1000).then_some(schedule)
}

/// A seed from the OS's entropy, for requests made without one (falls back to the clock only if the OS has no
/// entropy source at all).
pub fn random_seed() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    }
    u32::from_le_bytes(bytes)
}

/// `floor(strength × steps)` in f64, as InvokeAI computes `t_enc`.
pub fn img2img_steps(strength: f64, steps: usize) -> usize {
    (strength * steps as f64).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed document's table and its "compensating" runs. Expected values are Python's
    /// `int(strength * steps)` (InvokeAI's `t_enc`), evaluated with CPython 3.11.
    #[test]
    fn img2img_step_counts_follow_invokeai() {
        let cases = [
            (0.7, 10, 7),
            (0.4, 10, 4),
            (0.4, 50, 20),
            (0.7, 30, 21),
            (0.7, 29, 20),
            (0.75, 10, 7),
            (0.3, 10, 3),
            (0.05, 10, 0),
            (1.0, 10, 10),
            (0.0, 10, 0),
        ];
        for (strength, steps, want) in cases {
            assert_eq!(
                img2img_steps(strength, steps),
                want,
                "strength {strength} × {steps} steps"
            );
        }
    }

    /// `--exact-steps`: the shortest schedule from which Python's `int(strength * schedule)` (InvokeAI's `t_enc`)
    /// reaches the steps asked for; expected values from a CPython 3.11 loop over schedule = 1, 2, …
    #[test]
    fn exact_steps_choose_the_schedule_invokeai_truncates_to_them() {
        let cases = [
            (0.7, 20, 29),
            (0.4, 20, 50),
            (0.75, 10, 14),
            (0.3, 10, 34),
            (0.7, 7, 10),
            (1.0, 10, 10),
            (0.05, 10, 200),
            (0.33, 33, 100),
            (0.1, 7, 70),
        ];
        for (strength, steps, want) in cases {
            assert_eq!(
                exact_schedule_steps(strength, steps),
                Some(want),
                "{strength} × {steps}"
            );
            assert_eq!(
                img2img_steps(strength, want),
                steps,
                "{strength}: schedule {want} runs {steps}"
            );
        }
        assert_eq!(
            exact_schedule_steps(0.01, 50),
            None,
            "5000 steps is beyond the model's 1000"
        );
        assert_eq!(exact_schedule_steps(0.0, 5), None);
        let request = GenerateRequest {
            init_image: Some(InitImage::Path("x.png".into())),
            exact_steps: true,
            strength: 0.7,
            steps: 20,
            ..Default::default()
        };
        assert_eq!((request.schedule_steps(), request.steps_to_run()), (29, 20));
        assert!(GenerateRequest {
            strength: 0.01,
            steps: 50,
            ..request.clone()
        }
        .validate()
        .is_err());
        // txt2img ignores the flag.
        assert_eq!(
            GenerateRequest {
                init_image: None,
                ..request
            }
            .schedule_steps(),
            20
        );
    }

    #[test]
    fn validation_names_the_field() {
        let img2img = GenerateRequest {
            init_image: Some(InitImage::Path("x.png".into())),
            ..Default::default()
        };
        for (request, field) in [
            (
                GenerateRequest {
                    steps: 0,
                    ..Default::default()
                },
                "steps",
            ),
            (
                GenerateRequest {
                    width: 100,
                    ..Default::default()
                },
                "width",
            ),
            (
                GenerateRequest {
                    height: 100_000,
                    ..Default::default()
                },
                "height",
            ),
            (
                GenerateRequest {
                    cfg_scale: f64::INFINITY,
                    ..Default::default()
                },
                "cfg_scale",
            ),
            (
                GenerateRequest {
                    strength: 1.5,
                    ..img2img.clone()
                },
                "strength",
            ),
            (
                GenerateRequest {
                    strength: f64::NAN,
                    ..img2img.clone()
                },
                "strength",
            ),
            (
                GenerateRequest {
                    perlin: 0.2,
                    width: 96,
                    ..Default::default()
                },
                "perlin",
            ),
            (
                GenerateRequest {
                    perlin: 0.2,
                    hires_fix: true,
                    ..Default::default()
                },
                "perlin",
            ),
            (
                GenerateRequest {
                    perlin: 1.5,
                    ..Default::default()
                },
                "perlin",
            ),
            (
                GenerateRequest {
                    threshold: -1.0,
                    ..Default::default()
                },
                "threshold",
            ),
            (
                GenerateRequest {
                    with_variations: vec![(7, 0.1), (8, 2.0)],
                    ..Default::default()
                },
                "with_variations",
            ),
        ] {
            let err = request.validate().expect_err(field);
            assert!(
                matches!(err, Error::InvalidRequest { field: f, .. } if f == field),
                "{field}: {err}"
            );
        }
        // An init image keeps its own size, so -W/-H need not be multiples of 8 then.
        assert!(GenerateRequest { width: 100, ..img2img }.validate().is_ok());
    }

    /// Issue 18: hires_fix's second pass runs at `strength`, so it is checked without an init image too, and so are
    /// the LoRA weights and the variation amount, by the functions every front-end calls.
    #[test]
    fn strength_lora_weights_and_variation_amount_are_checked_for_every_request() {
        let field_of = |r: Result<()>| match r {
            Err(Error::InvalidRequest { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        for strength in [f64::NAN, 1.5, -0.1] {
            let hires = GenerateRequest {
                width: 1024,
                height: 512,
                hires_fix: true,
                strength,
                ..GenerateRequest::default()
            };
            assert_eq!(field_of(hires.validate()), "strength");
        }
        let lora = |weight: f64| GenerateRequest {
            loras: vec![crate::text::prompt::LoraUse::new("style", weight)],
            ..GenerateRequest::default()
        };
        assert!(lora(-100.0).validate().is_ok() && lora(0.8).validate().is_ok());
        for weight in [f64::NAN, f64::INFINITY, 100.5] {
            assert_eq!(field_of(lora(weight).validate()), "loras");
        }
        let many = GenerateRequest {
            loras: (0..=MAX_LORAS)
                .map(|i| crate::text::prompt::LoraUse::new(format!("l{i}"), 1.0))
                .collect(),
            ..GenerateRequest::default()
        };
        assert_eq!(field_of(many.validate()), "loras");
        assert!(check_variation_amount(0.0).is_ok() && check_variation_amount(1.0).is_ok());
        for amount in [f64::NAN, -0.1, 1.01] {
            assert_eq!(field_of(check_variation_amount(amount)), "variation_amount");
        }
    }
}
