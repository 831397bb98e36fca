//! The noise predictor the samplers see: the UNet with its conditioning and guidance — classifier-free
//! (`out = uncond + scale · (cond − uncond)`, both halves run as one batch of two), a single conditional pass
//! (scale ≤ 1), or LCM's guidance embedding — reporting the model's prediction type; and InvokeAI's `--threshold`
//! clamp of the guided clean-latent estimate ([`ThresholdedDenoiser`]).

use crate::nn::unet::{UNet2DConditionModel, UNetInputs};
use crate::nn::Padding;
use crate::sample::denoiser::{Denoiser, NoisePredictor, PredictionType};
use crate::text::conditioning::Conditioning;
use candle_core::{DType, Tensor};
use std::cell::Cell;

/// How a run turns the UNet into one prediction per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guidance {
    /// Classifier-free guidance at this scale: unconditional and conditional passes as one batch of two.
    Classifier(f64),
    /// One conditional pass (a scale ≤ 1, as diffusers decides: Turbo models, LCM-LoRA at low cfg). Half the work.
    Conditional,
    /// An LCM-distilled UNet: one conditional pass, the scale given to the network as an embedding of `w = cfg − 1`.
    Embedded { scale: f64, dim: usize },
}

impl Guidance {
    /// diffusers' rule: guidance is embedded when the UNet takes it, classifier-free above a scale of 1, else off.
    pub fn for_scale(cfg_scale: f64, embedding_dim: Option<usize>) -> Self {
        match embedding_dim {
            Some(dim) => Guidance::Embedded { scale: cfg_scale, dim },
            None if cfg_scale > 1.0 => Guidance::Classifier(cfg_scale),
            None => Guidance::Conditional,
        }
    }

    /// What a metadata record says of it.
    pub fn describe(self) -> &'static str {
        match self {
            Guidance::Classifier(_) => "classifier-free",
            Guidance::Conditional => "none (cfg ≤ 1: conditional pass only)",
            Guidance::Embedded { .. } => "embedded (LCM guidance embedding)",
        }
    }
}

/// The UNet with its conditioning and guidance, as the samplers see it.
pub struct GuidedUNet<'a> {
    unet: &'a UNet2DConditionModel,
    /// Batched inputs: `[uncond, cond]` for classifier-free guidance, `[cond]` otherwise.
    inputs: UNetInputs,
    guidance: Guidance,
    prediction: PredictionType,
}

impl<'a> GuidedUNet<'a> {
    /// `time_ids`: SDXL's micro-conditioning `[1, 6]`, used for both halves of the batch (with the pooled embeddings
    /// of `text`); `extra_channels`: an inpainting UNet's mask and masked-image latent `[1, 5, h, w]`, the same for
    /// both halves; `padding`: how the UNet's convolutions fill their border (`--seamless`).
    pub fn new(
        unet: &'a UNet2DConditionModel,
        text: &Conditioning,
        time_ids: Option<&Tensor>,
        extra_channels: Option<&Tensor>,
        guidance: Guidance,
        prediction: PredictionType,
        padding: Padding,
    ) -> crate::Result<Self> {
        let both = matches!(guidance, Guidance::Classifier(_));
        let batch = |uncond: &Tensor, cond: &Tensor| -> crate::Result<Tensor> {
            Ok(match both {
                true => Tensor::cat(&[uncond, cond], 0)?,
                false => cond.clone(),
            })
        };
        let context = batch(&text.uncond, &text.cond)?;
        let text_time = match (&text.cond_pooled, &text.uncond_pooled, time_ids) {
            (Some(cond), Some(uncond), Some(ids)) => {
                let pooled = batch(uncond, cond)?;
                let ids = ids.to_dtype(pooled.dtype())?;
                Some((pooled, batch(&ids, &ids)?))
            }
            _ => None,
        };
        let timestep_cond = match guidance {
            Guidance::Embedded { scale, dim } => Some(
                guidance_scale_embedding(scale - 1.0, dim)?
                    .to_device(context.device())?
                    .to_dtype(context.dtype())?,
            ),
            _ => None,
        };
        let extra_channels = match extra_channels {
            Some(extra) => Some(batch(extra, extra)?.to_dtype(context.dtype())?),
            None => None,
        };
        Ok(Self {
            unet,
            inputs: UNetInputs {
                context,
                text_time,
                timestep_cond,
                extra_channels,
                padding,
            },
            guidance,
            prediction,
        })
    }
}

impl NoisePredictor for GuidedUNet<'_> {
    fn predict(&self, x: &Tensor, timestep: f64) -> crate::Result<Tensor> {
        // The networks compute in the context's dtype; the samplers keep latents in f32 (f64 in parity mode).
        let dtype = self.inputs.context.dtype();
        let Guidance::Classifier(scale) = self.guidance else {
            let out = self.unet.forward(&x.to_dtype(dtype)?, timestep, &self.inputs)?;
            return Ok(out.to_dtype(x.dtype())?);
        };
        let x_in = Tensor::cat(&[x, x], 0)?.to_dtype(dtype)?;
        let out = self.unet.forward(&x_in, timestep, &self.inputs)?.to_dtype(x.dtype())?;
        let uncond = out.narrow(0, 0, 1)?;
        let cond = out.narrow(0, 1, 1)?;
        Ok((&uncond + ((cond - &uncond)? * scale)?)?)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }
}

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` for one `w`: `w·1000` in sinusoids at frequencies
/// `exp(−ln(10000)·i / (dim/2 − 1))`, `[sin, cos]`, `[1, dim]` f32.
pub fn guidance_scale_embedding(w: f64, dim: usize) -> crate::Result<Tensor> {
    let half = dim / 2;
    // In f32, in diffusers' order (`w` is a float32 tensor there).
    let w = w as f32 * 1000.0;
    let step = 10000f32.ln() / (half as f32 - 1.0).max(1.0);
    let args: Vec<f32> = (0..half).map(|i| w * (-(i as f32) * step).exp()).collect();
    let mut emb: Vec<f32> = args
        .iter()
        .map(|a| a.sin())
        .chain(args.iter().map(|a| a.cos()))
        .collect();
    emb.resize(dim, 0.0);
    Ok(Tensor::from_vec(emb, (1, dim), &candle_core::Device::Cpu)?)
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
