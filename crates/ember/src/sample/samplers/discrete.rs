//! LDM's DDIM (η = 0) and PLMS samplers, and diffusers' LCM sampler, over a [`NoisePredictor`] (ε, or v read as ε),
//! walking explicit descending integer timesteps.
//! Each step goes from ᾱ_t to the ᾱ of the next timestep in the list, and the last one to ᾱ_0 (LDM's
//! `ddim_alphas_prev`; diffusers' `set_alpha_to_one = False`). img2img passes the tail of the full list; PLMS then
//! starts its ε history afresh, with the pseudo improved Euler step, as LDM's `decode` does.

use super::{alpha_at, OnStep, StepProgress};
use crate::sample::denoiser::{eps_at, NoisePredictor};
use crate::sample::rng::NoiseSource;
use crate::sample::schedule::NoiseSchedule;
use crate::Result;
use candle_core::Tensor;

/// One DDIM update with noise estimate `eps`: (x_prev, predicted x₀).
fn ddim_update(x: &Tensor, eps: &Tensor, a_t: f64, a_prev: f64) -> Result<(Tensor, Tensor)> {
    let pred_x0 = (x - eps.affine((1.0 - a_t).sqrt(), 0.0)?)?.affine(1.0 / a_t.sqrt(), 0.0)?;
    let x_prev = (pred_x0.affine(a_prev.sqrt(), 0.0)? + eps.affine((1.0 - a_prev).sqrt(), 0.0)?)?;
    Ok((x_prev, pred_x0))
}

/// ᾱ at step `i` and at the step it lands on.
fn alphas(schedule: &NoiseSchedule, timesteps: &[usize], i: usize) -> Result<(f64, f64)> {
    let a_t = alpha_at(schedule, timesteps[i])?;
    let a_prev = match timesteps.get(i + 1) {
        Some(&t) => alpha_at(schedule, t)?,
        None => alpha_at(schedule, 0)?,
    };
    Ok((a_t, a_prev))
}

pub fn ddim(
    model: &dyn NoisePredictor,
    schedule: &NoiseSchedule,
    mut x: Tensor,
    timesteps: &[usize],
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    for i in 0..timesteps.len() {
        let (a_t, a_prev) = alphas(schedule, timesteps, i)?;
        let eps = eps_at(model, &x, timesteps[i] as f64, a_t)?;
        let (x_prev, pred_x0) = ddim_update(&x, &eps, a_t, a_prev)?;
        x = x_prev;
        on_step(StepProgress {
            step: i + 1,
            total: timesteps.len(),
            x: &mut x,
            denoised: Some(&pred_x0),
        })?;
    }
    Ok(x)
}

/// Pseudo linear multistep: the first step is a pseudo improved Euler (two model calls), later ones
/// Adams–Bashforth of rising order (up to 4) over the past ε.
pub fn plms(
    model: &dyn NoisePredictor,
    schedule: &NoiseSchedule,
    mut x: Tensor,
    timesteps: &[usize],
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    let mut old_eps: Vec<Tensor> = Vec::with_capacity(4);
    for i in 0..timesteps.len() {
        let (a_t, a_prev) = alphas(schedule, timesteps, i)?;
        let e_t = eps_at(model, &x, timesteps[i] as f64, a_t)?;
        let e_prime = match old_eps.len() {
            0 => {
                // LDM evaluates the model at the next timestep (the same one on a 1-step run).
                let t_next = timesteps[(i + 1).min(timesteps.len() - 1)];
                let (x_euler, _) = ddim_update(&x, &e_t, a_t, a_prev)?;
                let e_next = eps_at(model, &x_euler, t_next as f64, alpha_at(schedule, t_next)?)?;
                (&e_t + e_next)?.affine(0.5, 0.0)?
            }
            1 => (e_t.affine(3.0, 0.0)? - &old_eps[0])?.affine(0.5, 0.0)?,
            2 => (e_t.affine(23.0, 0.0)? - old_eps[1].affine(16.0, 0.0)? + old_eps[0].affine(5.0, 0.0)?)?
                .affine(1.0 / 12.0, 0.0)?,
            _ => {
                let n = old_eps.len();
                (e_t.affine(55.0, 0.0)? - old_eps[n - 1].affine(59.0, 0.0)? + old_eps[n - 2].affine(37.0, 0.0)?
                    - old_eps[n - 3].affine(9.0, 0.0)?)?
                .affine(1.0 / 24.0, 0.0)?
            }
        };
        let (x_prev, pred_x0) = ddim_update(&x, &e_prime, a_t, a_prev)?;
        x = x_prev;
        if old_eps.len() == 3 {
            old_eps.remove(0);
        }
        old_eps.push(e_t);
        on_step(StepProgress {
            step: i + 1,
            total: timesteps.len(),
            x: &mut x,
            denoised: Some(&pred_x0),
        })?;
    }
    Ok(x)
}

/// LCM's consistency boundary scalings at timestep `t` (diffusers' `get_scalings_for_boundary_condition_discrete`,
/// σ_data = 0.5): `(c_skip, c_out)`.
fn lcm_scalings(t: f64, timestep_scaling: f64) -> (f64, f64) {
    const SIGMA_DATA: f64 = 0.5;
    let scaled = t * timestep_scaling;
    let d = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
    (SIGMA_DATA * SIGMA_DATA / d, scaled / d.sqrt())
}

/// Latent consistency sampling (diffusers' `LCMScheduler.step`): each step predicts x₀, takes the consistency
/// estimate `c_out·x₀ + c_skip·x`, and — except after the last — noises it afresh to the next timestep with noise
/// from `noise` (after the start noise, from the same generator, as diffusers draws it). The result is the last
/// step's estimate.
pub fn lcm(
    model: &dyn NoisePredictor,
    schedule: &NoiseSchedule,
    mut x: Tensor,
    timesteps: &[usize],
    noise: &mut dyn NoiseSource,
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    let scaling = schedule.lcm().timestep_scaling;
    for i in 0..timesteps.len() {
        let t = timesteps[i];
        let a_t = alpha_at(schedule, t)?;
        let eps = eps_at(model, &x, t as f64, a_t)?;
        let pred_x0 = (&x - eps.affine((1.0 - a_t).sqrt(), 0.0)?)?.affine(1.0 / a_t.sqrt(), 0.0)?;
        let (c_skip, c_out) = lcm_scalings(t as f64, scaling);
        let denoised = (pred_x0.affine(c_out, 0.0)? + x.affine(c_skip, 0.0)?)?;
        x = match timesteps.get(i + 1) {
            Some(&next) => {
                let a_prev = alpha_at(schedule, next)?;
                let n = noise.randn_like(&denoised)?;
                (denoised.affine(a_prev.sqrt(), 0.0)? + n.affine((1.0 - a_prev).sqrt(), 0.0)?)?
            }
            None => denoised.clone(),
        };
        on_step(StepProgress {
            step: i + 1,
            total: timesteps.len(),
            x: &mut x,
            denoised: Some(&denoised),
        })?;
    }
    Ok(x)
}
