//! The model seams samplers work through: a [`NoisePredictor`] is the network (the UNet with its guidance) seen from a
//! sampler — its raw output at a (possibly fractional) timestep, and what that output means ([`PredictionType`]: the
//! noise ε, or v); a [`Denoiser`] gives the clean estimate D(x, σ) that k-diffusion samplers need.
//! [`CompVisDenoiser`] turns the first into the second for both prediction types (k-diffusion's `CompVisDenoiser` and
//! `CompVisVDenoiser`); the timestep samplers (DDIM, PLMS, LCM) read ε through [`eps_at`].

use super::schedule::NoiseSchedule;
use crate::{Error, Result};
use candle_core::Tensor;
use std::fmt;
use std::str::FromStr;

/// What a diffusion network predicts from a noised latent `x_t = √ᾱ·x₀ + √(1−ᾱ)·ε`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PredictionType {
    /// The noise ε (SD 1.x, SD 2.x 512-base, SDXL, Turbo, LCM).
    #[default]
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768-v).
    VPrediction,
}

impl PredictionType {
    /// diffusers' `prediction_type` names.
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
        }
    }
}

impl fmt::Display for PredictionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PredictionType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "epsilon" | "eps" => Ok(PredictionType::Epsilon),
            "v_prediction" | "v" => Ok(PredictionType::VPrediction),
            other => Err(Error::invalid(
                "prediction_type",
                format!("unknown prediction type {other:?}; use epsilon or v_prediction"),
            )),
        }
    }
}

/// The network as samplers see it: its output for `x` (a DDPM-scaled latent `x_t`) at training timestep `timestep`
/// (fractional between integer steps), read as [`prediction_type`](Self::prediction_type) says.
pub trait NoisePredictor {
    fn predict(&self, x: &Tensor, timestep: f64) -> Result<Tensor>;

    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }
}

/// ε for `x_t` at integer timestep `t` whose ᾱ is `alpha_t`: the model's output, or from v as diffusers' DDIM
/// computes it, ε = √ᾱ·v + √(1−ᾱ)·x_t.
pub fn eps_at(model: &(impl NoisePredictor + ?Sized), x: &Tensor, t: f64, alpha_t: f64) -> Result<Tensor> {
    let out = model.predict(x, t)?;
    match model.prediction_type() {
        PredictionType::Epsilon => Ok(out),
        PredictionType::VPrediction => Ok((out.affine(alpha_t.sqrt(), 0.0)? + x.affine((1.0 - alpha_t).sqrt(), 0.0)?)?),
    }
}

/// The clean-image estimate D(x, σ) of a latent `x` carrying noise of standard deviation σ.
pub trait Denoiser {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;
}

/// k-diffusion's `CompVisDenoiser` (ε models: D(x, σ) = x − σ·ε) and `CompVisVDenoiser` (v models:
/// D(x, σ) = x/(σ²+1) − σ/√(σ²+1)·v), both evaluating the model at x/√(σ²+1) and t(σ), the fractional timestep of σ on
/// the model's schedule.
pub struct CompVisDenoiser<'a, M: NoisePredictor + ?Sized> {
    model: &'a M,
    schedule: &'a NoiseSchedule,
}

impl<'a, M: NoisePredictor + ?Sized> CompVisDenoiser<'a, M> {
    pub fn new(model: &'a M, schedule: &'a NoiseSchedule) -> Self {
        Self { model, schedule }
    }
}

impl<M: NoisePredictor + ?Sized> Denoiser for CompVisDenoiser<'_, M> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let out = self
            .model
            .predict(&x.affine(c_in, 0.0)?, self.schedule.sigma_to_t(sigma))?;
        match self.model.prediction_type() {
            PredictionType::Epsilon => Ok((x + out.affine(-sigma, 0.0)?)?),
            PredictionType::VPrediction => {
                let c_skip = 1.0 / (sigma * sigma + 1.0);
                let c_out = -sigma * c_in;
                Ok((x.affine(c_skip, 0.0)? + out.affine(c_out, 0.0)?)?)
            }
        }
    }
}
