//! The samplers InvokeAI 2.x offers, and LCM's, behind one entry point: [`plan`] turns (sampler, steps, img2img strength) into
//! the sigmas or timesteps to run, [`start_latent`] builds the latent the run starts from, and [`sample`] runs it.
//! The k-diffusion samplers live in `ksamplers`, DDIM, PLMS and LCM in `discrete`.

mod discrete;
mod ksamplers;

pub use discrete::{ddim, lcm, plms};
pub use ksamplers::{dpm_2, dpm_2_ancestral, dpmpp_2m, dpmpp_2s_ancestral, euler, euler_ancestral, heun, lms};

use super::denoiser::{CompVisDenoiser, NoisePredictor};
use super::rng::NoiseSource;
use super::schedule::NoiseSchedule;
use super::SamplerKind;
use crate::guidance::ThresholdedDenoiser;
use crate::{Error, Result};
use candle_core::Tensor;

/// What a run walks: σ values ending in 0 for k-samplers (one step between neighbours), or descending integer
/// timesteps for DDIM/PLMS (one step per entry).
#[derive(Debug, Clone, PartialEq)]
pub enum SamplingPlan {
    Sigmas(Vec<f64>),
    Timesteps(Vec<usize>),
}

impl SamplingPlan {
    /// Number of steps the run takes.
    pub fn steps(&self) -> usize {
        match self {
            SamplingPlan::Sigmas(s) => s.len().saturating_sub(1),
            SamplingPlan::Timesteps(t) => t.len(),
        }
    }
}

/// Reported after every step.
#[derive(Debug)]
pub struct StepProgress<'a> {
    /// Steps done so far, 1..=total.
    pub step: usize,
    pub total: usize,
    /// The latent after this step. The callback may change it — inpainting with an ordinary UNet puts the known
    /// region back here — and the next step starts from what it leaves.
    pub x: &'a mut Tensor,
    /// The model's clean-latent estimate made during this step, when the sampler has one.
    pub denoised: Option<&'a Tensor>,
}

/// The per-step callback; returning an error (e.g. [`Error::Cancelled`]) stops the run with that error.
pub type OnStep<'a> = dyn FnMut(StepProgress<'_>) -> Result<()> + 'a;

/// The schedule InvokeAI runs for `steps` steps: the full-length schedule, of which only the last `t_enc` steps
/// run for img2img (`t_enc = floor(strength × steps)`, clamped to `steps`; `None` for txt2img).
/// k-samplers use Karras sigmas when `steps < karras_max`, else the model's own.
pub fn plan(
    kind: SamplerKind,
    schedule: &NoiseSchedule,
    steps: usize,
    karras_max: usize,
    t_enc: Option<usize>,
) -> SamplingPlan {
    let skip = steps - t_enc.unwrap_or(steps).min(steps);
    if kind.is_k_sampler() {
        let sigmas = if steps == 0 {
            vec![0.0]
        } else {
            schedule.k_sigmas(steps, karras_max)
        };
        SamplingPlan::Sigmas(sigmas[skip..].to_vec())
    } else {
        let timesteps = match (steps, kind) {
            (0, _) => Vec::new(),
            (_, SamplerKind::Lcm) => schedule.lcm_timesteps(steps),
            _ => schedule.ddim_timesteps(steps),
        };
        SamplingPlan::Timesteps(timesteps[skip..].to_vec())
    }
}

/// The latent a run starts from, given standard normal `noise` and, for img2img, the encoded `init` latent:
/// k-samplers `init + noise·σ₀` (txt2img: `noise·σ₀`, or √(σ₀²+1) under `leading` spacing as diffusers starts
/// there); DDIM/PLMS/LCM `√ᾱ·init + √(1-ᾱ)·noise` at the first timestep that runs (txt2img: `noise`).
pub fn start_latent(
    plan: &SamplingPlan,
    schedule: &NoiseSchedule,
    noise: &Tensor,
    init: Option<&Tensor>,
) -> Result<Tensor> {
    match (plan, init) {
        (SamplingPlan::Sigmas(s), None) => {
            let first = s.first().copied().unwrap_or(0.0);
            Ok(noise.affine(schedule.initial_noise_scale(first), 0.0)?)
        }
        (SamplingPlan::Sigmas(s), Some(init)) => Ok((init + noise.affine(s.first().copied().unwrap_or(0.0), 0.0)?)?),
        (SamplingPlan::Timesteps(_), None) => Ok(noise.clone()),
        (SamplingPlan::Timesteps(t), Some(init)) => match t.first() {
            // Nothing runs: the init latent is the result.
            None => Ok(init.clone()),
            Some(&t0) => {
                let a = alpha_at(schedule, t0)?;
                Ok((init.affine(a.sqrt(), 0.0)? + noise.affine((1.0 - a).sqrt(), 0.0)?)?)
            }
        },
    }
}

/// Runs `kind` over `plan` from the start latent `x`. `noise` supplies ancestral samplers' per-step noise (the
/// request's [`super::rng::TorchRng`], continuing after the start noise, as in InvokeAI).
pub fn sample(
    kind: SamplerKind,
    model: &dyn NoisePredictor,
    schedule: &NoiseSchedule,
    x: Tensor,
    plan: &SamplingPlan,
    noise: &mut dyn NoiseSource,
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    sample_with_threshold(kind, model, schedule, x, plan, noise, 0.0, on_step)
}

/// [`sample`] with `--threshold` (0 = off): k-samplers clamp the guided clean-latent estimate as InvokeAI 2.x's
/// `CFGDenoiser` did ([`ThresholdedDenoiser`]); DDIM and PLMS never read it, there as in InvokeAI.
#[allow(clippy::too_many_arguments)]
pub fn sample_with_threshold(
    kind: SamplerKind,
    model: &dyn NoisePredictor,
    schedule: &NoiseSchedule,
    x: Tensor,
    plan: &SamplingPlan,
    noise: &mut dyn NoiseSource,
    threshold: f64,
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    match plan {
        SamplingPlan::Sigmas(sigmas) if kind.is_k_sampler() => {
            let model_denoiser = CompVisDenoiser::new(model, schedule);
            let d = ThresholdedDenoiser::new(&model_denoiser, threshold, plan.steps());
            match kind {
                SamplerKind::KLms => lms(&d, x, sigmas, on_step),
                SamplerKind::KEuler => euler(&d, x, sigmas, on_step),
                SamplerKind::KEulerA => euler_ancestral(&d, x, sigmas, noise, on_step),
                SamplerKind::KHeun => heun(&d, x, sigmas, on_step),
                SamplerKind::KDpm2 => dpm_2(&d, x, sigmas, on_step),
                SamplerKind::KDpm2A => dpm_2_ancestral(&d, x, sigmas, noise, on_step),
                SamplerKind::KDpmpp2 => dpmpp_2m(&d, x, sigmas, on_step),
                SamplerKind::KDpmpp2A => dpmpp_2s_ancestral(&d, x, sigmas, noise, on_step),
                SamplerKind::Ddim | SamplerKind::Plms | SamplerKind::Lcm => unreachable!("guarded by is_k_sampler"),
            }
        }
        SamplingPlan::Timesteps(timesteps) if kind == SamplerKind::Ddim => ddim(model, schedule, x, timesteps, on_step),
        SamplingPlan::Timesteps(timesteps) if kind == SamplerKind::Plms => plms(model, schedule, x, timesteps, on_step),
        SamplingPlan::Timesteps(timesteps) if kind == SamplerKind::Lcm => {
            lcm(model, schedule, x, timesteps, noise, on_step)
        }
        _ => Err(Error::invalid(
            "sampler",
            format!("{kind} cannot run this plan; build it with samplers::plan for the same sampler"),
        )),
    }
}

/// ᾱ at a timestep, with a clear error for timesteps outside the schedule.
fn alpha_at(schedule: &NoiseSchedule, t: usize) -> Result<f64> {
    schedule.alphas_cumprod().get(t).copied().ok_or_else(|| {
        Error::invalid(
            "timesteps",
            format!(
                "timestep {t} is outside the model's {} training steps",
                schedule.num_train_timesteps()
            ),
        )
    })
}

#[cfg(test)]
mod tests;
