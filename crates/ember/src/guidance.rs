//! The noise predictor the samplers see: the UNet with classifier-free guidance,
//! `eps = uncond + scale · (cond − uncond)`, both halves run as one batch of two.

use crate::nn::unet::UNet2DConditionModel;
use crate::sample::denoiser::EpsModel;
use candle_core::Tensor;

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
