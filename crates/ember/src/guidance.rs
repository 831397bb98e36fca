//! The noise predictor the samplers see: the UNet with classifier-free guidance,
//! `eps = uncond + scale · (cond − uncond)`, both halves run as one batch of two; and InvokeAI's `--threshold`
//! clamp of the guided clean-latent estimate ([`ThresholdedDenoiser`]).

use crate::nn::unet::UNet2DConditionModel;
use crate::sample::denoiser::{Denoiser, EpsModel};
use candle_core::{DType, Tensor};
use std::cell::Cell;

pub struct GuidedUNet<'a> {
    unet: &'a UNet2DConditionModel,
    /// `[2, 77, C]`: unconditional (negative prompt) first, then the prompt.
    context: Tensor,
    scale: f64,
}

impl<'a> GuidedUNet<'a> {
    pub fn new(unet: &'a UNet2DConditionModel, uncond: &Tensor, cond: &Tensor, scale: f64) -> crate::Result<Self> {
        let context = Tensor::cat(&[uncond, cond], 0)?;
        Ok(Self { unet, context, scale })
    }
}

impl EpsModel for GuidedUNet<'_> {
    fn predict_eps(&self, x: &Tensor, timestep: f64) -> crate::Result<Tensor> {
        // The networks compute in the context's dtype; the samplers keep latents in f32 (f64 in parity mode).
        let x_in = Tensor::cat(&[x, x], 0)?.to_dtype(self.context.dtype())?;
        let eps = self.unet.forward(&x_in, timestep, &self.context)?.to_dtype(x.dtype())?;
        let uncond = eps.narrow(0, 0, 1)?;
        let cond = eps.narrow(0, 1, 1)?;
        Ok((&uncond + ((cond - &uncond)? * self.scale)?)?)
    }
}

/// `--threshold`: InvokeAI 2.x's dynamic clamp of the guided clean-latent estimate, with `CFGDenoiser`'s warm-up
/// (ldm/models/diffusion/ksampler.py, tag v2.1.2). It acts on D(x, σ), the k-diffusion denoiser's output after
/// classifier-free guidance — not on ε, which is why it wraps a [`Denoiser`] rather than [`GuidedUNet`].
///
/// InvokeAI applied it only where its k-samplers ran txt2img: img2img's `decode()` did not pass the threshold on, and
/// DDIM/PLMS never read it. The warm-up counts denoiser calls (two per step for Heun and DPM2), from
/// `max(w/10, 1)` up to `w = max(0.8·steps, steps − 10)`, the bound rising linearly from 1 to the threshold.
pub struct ThresholdedDenoiser<'a> {
    inner: &'a dyn Denoiser,
    threshold: f64,
    warmup_max: f64,
    warmup: Cell<f64>,
}

impl<'a> ThresholdedDenoiser<'a> {
    /// `steps`: the number of sampling steps the run takes (InvokeAI's `S`). `threshold` 0 passes `inner` through.
    pub fn new(inner: &'a dyn Denoiser, threshold: f64, steps: usize) -> Self {
        let steps = steps as f64;
        let warmup_max = (0.8 * steps).max(steps - 10.0);
        Self {
            inner,
            threshold,
            warmup_max,
            warmup: Cell::new((warmup_max / 10.0).max(1.0)),
        }
    }

    /// The bound for the next call, advancing the warm-up.
    fn next_bound(&self) -> f64 {
        let warmup = self.warmup.get();
        let bound = if warmup < self.warmup_max {
            self.warmup.set(warmup + 1.0);
            (1.0 + (self.threshold - 1.0) * (warmup / self.warmup_max)).max(1.0)
        } else {
            self.threshold
        };
        bound.min(self.threshold)
    }
}

impl Denoiser for ThresholdedDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> crate::Result<Tensor> {
        let denoised = self.inner.denoise(x, sigma)?;
        if self.threshold <= 0.0 {
            return Ok(denoised);
        }
        apply_threshold(&denoised, self.next_bound())
    }
}

/// InvokeAI's `cfg_apply_threshold(result, threshold, scale=0.7)`: when values pass ±`threshold`, clamp that side
/// to `0.7 × its extreme`, kept within [1, threshold] (mirrored for the negative side). `threshold ≤ 0` is off.
pub fn apply_threshold(x: &Tensor, threshold: f64) -> crate::Result<Tensor> {
    const SCALE: f64 = 0.7;
    if threshold <= 0.0 {
        return Ok(x.clone());
    }
    let flat = x.flatten_all()?;
    let extreme = |t: Tensor| -> crate::Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let (mut max, mut min) = (extreme(flat.max(0)?)?, extreme(flat.min(0)?)?);
    if max < threshold && min > -threshold {
        return Ok(x.clone());
    }
    if max > threshold {
        max = (SCALE * max).max(1.0).min(threshold);
    }
    if min < -threshold {
        min = (SCALE * min).min(-1.0).max(-threshold);
    }
    // torch.clamp converts its bounds to the tensor's dtype first.
    let (min, max) = match x.dtype() {
        DType::F64 => (min, max),
        _ => (min as f32 as f64, max as f32 as f64),
    };
    Ok(x.clamp(min, max)?)
}
