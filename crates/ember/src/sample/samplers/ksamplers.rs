//! k-diffusion's samplers (`k_diffusion/sampling.py`) over a [`Denoiser`], each walking `sigmas` (ending in 0).
//! Churn parameters are at their defaults (0) and ancestral ones use η = 1, s_noise = 1, as InvokeAI calls them.
//! Ancestral noise is drawn once per step whose next σ is > 0, in k-diffusion's order. (k-diffusion's euler, heun
//! and dpm_2 also draw an unused churn noise each step; nothing after sampling reads the RNG, so it is skipped.)

use super::{OnStep, StepProgress};
use crate::sample::denoiser::Denoiser;
use crate::sample::rng::NoiseSource;
use crate::Result;
use candle_core::Tensor;

/// Karras ODE derivative (x - D) / σ.
fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Result<Tensor> {
    Ok((x - denoised)?.affine(1.0 / sigma, 0.0)?)
}

/// `x + d·dt`
fn step(x: &Tensor, d: &Tensor, dt: f64) -> Result<Tensor> {
    Ok((x + d.affine(dt, 0.0)?)?)
}

/// k-diffusion's `get_ancestral_step` with η = 1: (σ_down, σ_up).
fn ancestral_step(sigma_from: f64, sigma_to: f64) -> (f64, f64) {
    let up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from))
        .sqrt()
        .min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (down, up)
}

/// Adds `σ_up · noise` when the next σ is above 0.
fn add_noise(x: Tensor, sigma_next: f64, sigma_up: f64, noise: &mut dyn NoiseSource) -> Result<Tensor> {
    if sigma_next > 0.0 {
        let n = noise.randn_like(&x)?;
        step(&x, &n, sigma_up)
    } else {
        Ok(x)
    }
}

fn report(on_step: &mut OnStep<'_>, i: usize, sigmas: &[f64], x: &mut Tensor, denoised: &Tensor) -> Result<()> {
    on_step(StepProgress {
        step: i + 1,
        total: sigmas.len().saturating_sub(1),
        x,
        denoised: Some(denoised),
    })
}

pub fn euler(model: &dyn Denoiser, mut x: Tensor, sigmas: &[f64], on_step: &mut OnStep<'_>) -> Result<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        let d = to_d(&x, sigmas[i], &denoised)?;
        x = step(&x, &d, sigmas[i + 1] - sigmas[i])?;
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}

pub fn euler_ancestral(
    model: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn NoiseSource,
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1]);
        let d = to_d(&x, sigmas[i], &denoised)?;
        x = step(&x, &d, down - sigmas[i])?;
        x = add_noise(x, sigmas[i + 1], up, noise)?;
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}

pub fn heun(model: &dyn Denoiser, mut x: Tensor, sigmas: &[f64], on_step: &mut OnStep<'_>) -> Result<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        let d = to_d(&x, sigmas[i], &denoised)?;
        let dt = sigmas[i + 1] - sigmas[i];
        x = if sigmas[i + 1] == 0.0 {
            step(&x, &d, dt)?
        } else {
            // Heun: average the slopes at both ends.
            let x_2 = step(&x, &d, dt)?;
            let denoised_2 = model.denoise(&x_2, sigmas[i + 1])?;
            let d_2 = to_d(&x_2, sigmas[i + 1], &denoised_2)?;
            step(&x, &((d + d_2)?.affine(0.5, 0.0)?), dt)?
        };
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}

/// The geometric mean of two sigmas (k-diffusion: exp(lerp(log a, log b, 0.5))).
fn log_midpoint(a: f64, b: f64) -> f64 {
    let (la, lb) = (a.ln(), b.ln());
    (la + 0.5 * (lb - la)).exp()
}

pub fn dpm_2(model: &dyn Denoiser, mut x: Tensor, sigmas: &[f64], on_step: &mut OnStep<'_>) -> Result<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        let d = to_d(&x, sigmas[i], &denoised)?;
        x = if sigmas[i + 1] == 0.0 {
            step(&x, &d, sigmas[i + 1] - sigmas[i])?
        } else {
            // DPM-Solver-2: slope at the log-midpoint.
            let sigma_mid = log_midpoint(sigmas[i], sigmas[i + 1]);
            let x_2 = step(&x, &d, sigma_mid - sigmas[i])?;
            let denoised_2 = model.denoise(&x_2, sigma_mid)?;
            let d_2 = to_d(&x_2, sigma_mid, &denoised_2)?;
            step(&x, &d_2, sigmas[i + 1] - sigmas[i])?
        };
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}

pub fn dpm_2_ancestral(
    model: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn NoiseSource,
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1]);
        let d = to_d(&x, sigmas[i], &denoised)?;
        if down == 0.0 {
            x = step(&x, &d, down - sigmas[i])?;
        } else {
            let sigma_mid = log_midpoint(sigmas[i], down);
            let x_2 = step(&x, &d, sigma_mid - sigmas[i])?;
            let denoised_2 = model.denoise(&x_2, sigma_mid)?;
            let d_2 = to_d(&x_2, sigma_mid, &denoised_2)?;
            x = step(&x, &d_2, down - sigmas[i])?;
            // k-diffusion adds noise only on this branch.
            x = add_noise(x, sigmas[i + 1], up, noise)?;
        }
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}

/// ∫ from t[i] to t[i+1] of the Lagrange basis polynomial that is 1 at t[i-j] and 0 at the other t[i-k],
/// k < order; integrated exactly (k-diffusion integrates it numerically with scipy's `quad`).
fn lms_coeff(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    // Polynomial in u = τ - t[i], coefficients by ascending power.
    let mut poly = vec![1.0f64];
    for k in (0..order).filter(|&k| k != j) {
        let denom = t[i - j] - t[i - k];
        let shift = t[i] - t[i - k];
        // Multiply by (u + shift) / denom.
        let mut next = vec![0.0; poly.len() + 1];
        for (p, c) in poly.iter().enumerate() {
            next[p] += c * shift / denom;
            next[p + 1] += c / denom;
        }
        poly = next;
    }
    let h = t[i + 1] - t[i];
    poly.iter()
        .enumerate()
        .map(|(p, c)| c * h.powi(p as i32 + 1) / (p as f64 + 1.0))
        .sum()
}

/// Linear multistep of order 4 (lower on the first steps).
pub fn lms(model: &dyn Denoiser, mut x: Tensor, sigmas: &[f64], on_step: &mut OnStep<'_>) -> Result<Tensor> {
    const ORDER: usize = 4;
    let mut ds: Vec<Tensor> = Vec::with_capacity(ORDER);
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        if ds.len() == ORDER {
            ds.remove(0);
        }
        ds.push(to_d(&x, sigmas[i], &denoised)?);
        let order = (i + 1).min(ORDER);
        // The newest derivative pairs with j = 0.
        for (j, d) in ds.iter().rev().enumerate().take(order) {
            x = step(&x, d, lms_coeff(order, sigmas, i, j))?;
        }
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}

/// DPM-Solver++(2M).
pub fn dpmpp_2m(model: &dyn Denoiser, mut x: Tensor, sigmas: &[f64], on_step: &mut OnStep<'_>) -> Result<Tensor> {
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        // In t = -log σ; σ_next = 0 gives t_next = ∞, h = ∞, and the step lands on the estimate.
        let (t, t_next) = (-sigmas[i].ln(), -sigmas[i + 1].ln());
        let h = t_next - t;
        let ratio = sigmas[i + 1] / sigmas[i];
        let target = match &old_denoised {
            Some(old) if sigmas[i + 1] != 0.0 => {
                let h_last = t + sigmas[i - 1].ln();
                let r = h_last / h;
                (denoised.affine(1.0 + 1.0 / (2.0 * r), 0.0)? - old.affine(1.0 / (2.0 * r), 0.0)?)?
            }
            _ => denoised.clone(),
        };
        x = (x.affine(ratio, 0.0)? - target.affine((-h).exp_m1(), 0.0)?)?;
        report(on_step, i, sigmas, &mut x, &denoised)?;
        old_denoised = Some(denoised);
    }
    Ok(x)
}

/// DPM-Solver++(2S) ancestral.
pub fn dpmpp_2s_ancestral(
    model: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn NoiseSource,
    on_step: &mut OnStep<'_>,
) -> Result<Tensor> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = model.denoise(&x, sigmas[i])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1]);
        if down == 0.0 {
            let d = to_d(&x, sigmas[i], &denoised)?;
            x = step(&x, &d, down - sigmas[i])?;
        } else {
            let (t, t_next) = (-sigmas[i].ln(), -down.ln());
            let h = t_next - t;
            let s = t + 0.5 * h;
            let sigma_s = (-s).exp();
            let x_2 = (x.affine(sigma_s / sigmas[i], 0.0)? - denoised.affine((-0.5 * h).exp_m1(), 0.0)?)?;
            let denoised_2 = model.denoise(&x_2, sigma_s)?;
            x = (x.affine(down / sigmas[i], 0.0)? - denoised_2.affine((-h).exp_m1(), 0.0)?)?;
        }
        x = add_noise(x, sigmas[i + 1], up, noise)?;
        report(on_step, i, sigmas, &mut x, &denoised)?;
    }
    Ok(x)
}
