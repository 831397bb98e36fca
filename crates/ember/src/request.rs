//! What a front-end asks the engine for: one image generation, txt2img or img2img.

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
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
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
        }
    }
}

/// Largest side accepted, in pixels: beyond this the UNet's memory needs are absurd for SD 1.x.
pub const MAX_SIDE: usize = 4096;

impl GenerateRequest {
    /// Number of denoising steps actually taken: all of them for txt2img, `floor(strength × steps)` for img2img.
    pub fn steps_to_run(&self) -> usize {
        if self.init_image.is_some() {
            img2img_steps(self.strength, self.steps)
        } else {
            self.steps
        }
    }

    /// Checks every field a user can get wrong, with messages that say what to do.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1 (try -s 50)"));
        }
        if self.steps > 1000 {
            return Err(Error::invalid(
                "steps",
                format!("{} is more than the model's 1000 training steps", self.steps),
            ));
        }
        if !self.cfg_scale.is_finite() {
            return Err(Error::invalid("cfg_scale", "must be a finite number (try -C 7.5)"));
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
        // NaN fails `contains` too.
        if self.init_image.is_some() && !(0.0..=1.0).contains(&self.strength) {
            return Err(Error::invalid(
                "strength",
                format!(
                    "{} is outside [0, 1]; 0 keeps the init image, 1 ignores it (try -f 0.75)",
                    self.strength
                ),
            ));
        }
        Ok(())
    }
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
}
