//! The model's discrete noise schedule and the step lists samplers walk, computed as LDM and k-diffusion do
//! (InvokeAI 2.x runs both): ᾱ (`alphas_cumprod`), model sigmas σ_t = √((1-ᾱ_t)/ᾱ_t), k-diffusion's
//! `CompVisDenoiser` helpers (σ ↔ fractional t by log-σ interpolation, `get_sigmas`), Karras sigmas, and
//! LDM's DDIM/PLMS timesteps. Everything is plain data, computed once per request.

use crate::{Error, Result};

/// Karras et al.'s ρ, as InvokeAI passes it.
pub const KARRAS_RHO: f64 = 7.0;

/// A DDPM noise schedule over `num_train_timesteps` discrete timesteps.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// ᾱ_t, rounded to f32 as LDM stores its `alphas_cumprod` buffer (k-diffusion and the samplers read that).
    alphas_cumprod: Vec<f64>,
    /// σ_t, ascending with t.
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl NoiseSchedule {
    /// LDM's `scaled_linear` schedule: β = linspace(√β_start, √β_end, n)² in f64, ᾱ = cumprod(1 - β).
    pub fn scaled_linear(beta_start: f64, beta_end: f64, num_train_timesteps: usize) -> Result<Self> {
        let valid = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !valid(beta_start) || !valid(beta_end) {
            return Err(Error::invalid(
                "beta schedule",
                format!("beta_start {beta_start} and beta_end {beta_end} must lie in (0, 1) (SD 1.x: 0.00085, 0.012)"),
            ));
        }
        let betas: Vec<f64> = linspace(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
            .into_iter()
            .map(|b| b * b)
            .collect();
        Self::from_betas(&betas)
    }

    /// Stable Diffusion 1.x: scaled_linear 0.00085..0.012 over 1000 timesteps.
    pub fn sd15() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000).expect("SD 1.5's constants are a valid schedule")
    }

    /// A schedule from explicit betas (each in (0, 1)), at least two of them.
    pub fn from_betas(betas: &[f64]) -> Result<Self> {
        if betas.len() < 2 {
            return Err(Error::invalid(
                "beta schedule",
                format!("needs at least 2 timesteps, got {}", betas.len()),
            ));
        }
        if let Some(b) = betas.iter().find(|b| !(b.is_finite() && **b > 0.0 && **b < 1.0)) {
            return Err(Error::invalid("beta schedule", format!("beta {b} is outside (0, 1)")));
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0f64;
        for b in betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc as f32 as f64);
        }
        Self::from_alphas_cumprod(alphas_cumprod)
    }

    /// A schedule from ᾱ directly (e.g. one read from a model's config), strictly decreasing in (0, 1).
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Result<Self> {
        if alphas_cumprod.len() < 2 {
            return Err(Error::invalid(
                "beta schedule",
                format!("needs at least 2 timesteps, got {}", alphas_cumprod.len()),
            ));
        }
        let in_range = alphas_cumprod.iter().all(|a| a.is_finite() && *a > 0.0 && *a < 1.0);
        if !in_range || alphas_cumprod.windows(2).any(|w| w[1] >= w[0]) {
            return Err(Error::invalid(
                "beta schedule",
                "alphas_cumprod must decrease strictly within (0, 1)",
            ));
        }
        let sigmas: Vec<f64> = alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Ok(Self {
            alphas_cumprod,
            sigmas,
            log_sigmas,
        })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// ᾱ for every training timestep.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The model's σ for every training timestep, ascending.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// σ at timestep 0 (≈ 0.0292 for SD 1.x).
    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    /// σ at the last timestep (≈ 14.6146 for SD 1.x).
    pub fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// The fractional timestep whose log-σ interpolates to `sigma` (k-diffusion's `sigma_to_t`, unquantized).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let n = self.log_sigmas.len();
        if sigma.is_nan() || sigma <= 0.0 {
            return 0.0;
        }
        let log_sigma = sigma.ln();
        // The last index whose log σ is ≤ log_sigma, kept below n - 1 so there is an upper neighbour.
        let low = self
            .log_sigmas
            .partition_point(|&l| l <= log_sigma)
            .saturating_sub(1)
            .min(n - 2);
        let (lo, hi) = (self.log_sigmas[low], self.log_sigmas[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// σ at a fractional timestep, interpolating log σ (k-diffusion's `t_to_sigma`); `t` is clamped to the schedule.
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.log_sigmas.len() - 1) as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// `steps` sigmas evenly spaced in t from the last timestep to 0, then 0 (k-diffusion's `get_sigmas(n)`).
    pub fn model_sigmas(&self, steps: usize) -> Vec<f64> {
        let t_max = (self.sigmas.len() - 1) as f64;
        let mut out: Vec<f64> = linspace(t_max, 0.0, steps)
            .into_iter()
            .map(|t| self.t_to_sigma(t))
            .collect();
        out.push(0.0);
        out
    }

    /// Karras sigmas between this model's σ_min and σ_max (ρ = 7), then 0, as InvokeAI builds them.
    pub fn karras_sigmas(&self, steps: usize) -> Vec<f64> {
        karras_sigmas(steps, self.sigma_min(), self.sigma_max(), KARRAS_RHO)
    }

    /// The k-sampler schedule InvokeAI uses for `steps`: Karras when `steps < karras_max`, else the model's.
    pub fn k_sigmas(&self, steps: usize, karras_max: usize) -> Vec<f64> {
        if steps < karras_max {
            self.karras_sigmas(steps)
        } else {
            self.model_sigmas(steps)
        }
    }

    /// DDIM/PLMS timesteps, descending: `arange(steps) · (T // steps) + 1` reversed (LDM "uniform" spacing
    /// with its +1 offset). `steps` is clamped to 1..=T.
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<usize> {
        let total = self.num_train_timesteps();
        let steps = steps.clamp(1, total);
        let stride = total / steps;
        (0..steps).rev().map(|i| (i * stride + 1).min(total - 1)).collect()
    }
}

/// Karras et al. (2022) sigmas: (σ_max^(1/ρ) + ramp·(σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ over ramp = linspace(0, 1, n),
/// then a final 0 (k-diffusion's `get_sigmas_karras`).
pub fn karras_sigmas(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let mut out: Vec<f64> = linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect();
    out.push(0.0);
    out
}

/// `torch.linspace(start, end, n)`: the first half counts up from `start`, the second half down from `end`, so
/// both endpoints are exact.
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        start + step * i as f64
                    } else {
                        end - step * (n - 1 - i) as f64
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests;
