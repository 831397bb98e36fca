//! The model seams samplers work through: an [`EpsModel`] predicts the noise in a latent at a (possibly
//! fractional) timestep (the UNet with classifier-free guidance implements it), and a [`Denoiser`] gives the clean
//! estimate D(x, σ) that k-diffusion samplers need. [`CompVisDenoiser`] turns the first into the second.

use super::schedule::NoiseSchedule;
use crate::Result;
use candle_core::Tensor;

/// Predicts ε, the noise in `x`, at training timestep `timestep` (fractional between integer steps).
pub trait EpsModel {
    fn predict_eps(&self, x: &Tensor, timestep: f64) -> Result<Tensor>;
}

/// The clean-image estimate D(x, σ) of a latent `x` carrying noise of standard deviation σ.
pub trait Denoiser {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;
}

/// k-diffusion's `CompVisDenoiser` (`DiscreteEpsDDPMDenoiser`): D(x, σ) = x - σ·ε(x / √(σ²+1), t(σ)), with t(σ)
/// the fractional timestep of σ on the model's schedule.
pub struct CompVisDenoiser<'a, M: EpsModel + ?Sized> {
    model: &'a M,
    schedule: &'a NoiseSchedule,
}

impl<'a, M: EpsModel + ?Sized> CompVisDenoiser<'a, M> {
    pub fn new(model: &'a M, schedule: &'a NoiseSchedule) -> Self {
        Self { model, schedule }
    }
}

impl<M: EpsModel + ?Sized> Denoiser for CompVisDenoiser<'_, M> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let c_out = -sigma;
        let eps = self
            .model
            .predict_eps(&x.affine(c_in, 0.0)?, self.schedule.sigma_to_t(sigma))?;
        Ok((x + eps.affine(c_out, 0.0)?)?)
    }
}
