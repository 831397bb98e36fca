//! Inpainting, the two ways a model allows (as diffusers' `StableDiffusionInpaintPipeline` does them):
//! - an inpainting UNet (9 input channels) sees the mask and the masked image's latent beside the latent at every
//!   step ([`unet_extra_channels`]);
//! - an ordinary UNet (4 channels) is left as it is, and after every step the region to keep is put back from the
//!   init latent noised to where that step landed ([`KnownRegion`]; diffusers' legacy path, InvokeAI 2.x's way).
//!
//! Either way the decoded image then gets the original pixels back outside the mask
//! ([`crate::image::mask::paste_back`]), unless the request says not to.

use crate::image::mask::InpaintMask;
use crate::sample::samplers::SamplingPlan;
use crate::sample::schedule::NoiseSchedule;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// The mask at latent size `[1, 1, h/8, w/8]` (1 = repaint), in `dtype`.
pub(super) fn latent_mask(mask: &InpaintMask, device: &Device, dtype: DType) -> Result<Tensor> {
    let (values, w, h) = mask.latent();
    Ok(Tensor::from_vec(values, (1, 1, h, w), device)?.to_dtype(dtype)?)
}

/// An inpainting UNet's extra input `[1, 5, h, w]`: the latent mask, then the masked image's latent.
pub(super) fn unet_extra_channels(mask: &Tensor, masked_latent: &Tensor) -> Result<Tensor> {
    Ok(Tensor::cat(&[mask, masked_latent], 1)?)
}

/// What an ordinary UNet's run keeps of the init image: the init latent and the run's initial noise, under the mask.
pub(super) struct KnownRegion {
    init: Tensor,
    noise: Tensor,
    /// 1 = repaint (the sampler's latent is kept), 0 = keep (the init latent is put back).
    mask: Tensor,
    keep: Tensor,
}

impl KnownRegion {
    pub(super) fn new(init: Tensor, noise: Tensor, mask: Tensor) -> Result<Self> {
        let keep = mask.affine(-1.0, 1.0)?;
        Ok(Self {
            init,
            noise,
            mask,
            keep,
        })
    }

    /// `x` after step `step` (1-based) of `plan`, with the region to keep replaced by the init latent noised to the
    /// level the step landed on: k-samplers `init + noise·σ` (σ = 0 after the last step: the init latent itself),
    /// DDIM/PLMS/LCM `√ᾱ·init + √(1−ᾱ)·noise` at the next timestep, and the clean init latent after the last step
    /// (diffusers: `add_noise(init, noise, timesteps[i + 1])` while there is a next timestep).
    pub(super) fn blend(
        &self,
        x: &Tensor,
        plan: &SamplingPlan,
        step: usize,
        schedule: &NoiseSchedule,
    ) -> Result<Tensor> {
        let known = match plan {
            SamplingPlan::Sigmas(sigmas) => {
                let sigma = sigmas.get(step).copied().unwrap_or(0.0);
                (&self.init + self.noise.affine(sigma, 0.0)?)?
            }
            SamplingPlan::Timesteps(timesteps) => match timesteps.get(step) {
                Some(&next) => {
                    let a = schedule.alphas_cumprod().get(next).copied().ok_or_else(|| {
                        crate::Error::invalid("timesteps", format!("timestep {next} is outside the model's schedule"))
                    })?;
                    (self.init.affine(a.sqrt(), 0.0)? + self.noise.affine((1.0 - a).sqrt(), 0.0)?)?
                }
                None => self.init.clone(),
            },
        };
        Ok((known.broadcast_mul(&self.keep)? + x.broadcast_mul(&self.mask)?)?)
    }
}
