//! The model's discrete noise schedule and the step lists samplers walk, computed as LDM and k-diffusion do
//! (InvokeAI 2.x runs both): ᾱ (`alphas_cumprod`), model sigmas σ_t = √((1-ᾱ_t)/ᾱ_t), k-diffusion's
//! `CompVisDenoiser` helpers (σ ↔ fractional t by log-σ interpolation, `get_sigmas`), Karras sigmas, and
//! LDM's DDIM/PLMS timesteps, diffusers' timestep spacings (leading, trailing, linspace) and LCM's timesteps.
//! Everything is plain data, computed once per request.

use crate::{Error, Result};

/// Karras et al.'s ρ, as InvokeAI passes it.
pub const KARRAS_RHO: f64 = 7.0;

/// How the steps of an `n`-step run are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum TimestepSpacing {
    /// InvokeAI 2.x's schedule, Ember's default for SD 1.x/2.x: k-diffusion's `get_sigmas` (evenly spaced in t,
    /// log-σ interpolated; Karras between the model's σ_min and σ_max) for k-samplers, LDM's uniform timesteps
    /// (+1) for DDIM/PLMS.
    #[default]
    KDiffusion,
    /// diffusers' `linspace`: `linspace(0, T−1, n)`, reversed.
    Linspace,
    /// diffusers' `leading`: `arange(n)·(T // n) + steps_offset`, reversed (SDXL's default).
    Leading,
    /// diffusers' `trailing`: `round(arange(T, 0, −T/n)) − 1` (SD-Turbo, SDXL-Turbo).
    Trailing,
}

impl TimestepSpacing {
    pub const ALL: [TimestepSpacing; 4] = [
        TimestepSpacing::KDiffusion,
        TimestepSpacing::Linspace,
        TimestepSpacing::Leading,
        TimestepSpacing::Trailing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TimestepSpacing::KDiffusion => "karras-kdiffusion",
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

impl std::fmt::Display for TimestepSpacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TimestepSpacing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linspace" => Ok(TimestepSpacing::Linspace),
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "karras-kdiffusion" | "kdiffusion" | "k-diffusion" | "invokeai" => Ok(TimestepSpacing::KDiffusion),
            other => Err(Error::invalid(
                "timestep_spacing",
                format!("unknown timestep spacing {other:?}; use linspace, leading, trailing or karras-kdiffusion"),
            )),
        }
    }
}

/// LCM's schedule parameters (diffusers' `LCMScheduler`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LcmParams {
    /// The distillation's timestep grid: `original_inference_steps` evenly spaced timesteps (50).
    pub original_inference_steps: usize,
    /// Scales the timestep in the consistency boundary conditions (10).
    pub timestep_scaling: f64,
}

impl Default for LcmParams {
    fn default() -> Self {
        Self {
            original_inference_steps: 50,
            timestep_scaling: 10.0,
        }
    }
}

/// A DDPM noise schedule over `num_train_timesteps` discrete timesteps, with how a run spaces its steps on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// ᾱ_t, rounded to f32 as LDM stores its `alphas_cumprod` buffer (k-diffusion and the samplers read that).
    alphas_cumprod: Vec<f64>,
    /// σ_t, ascending with t.
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
    spacing: TimestepSpacing,
    /// Added to `leading` timesteps (diffusers' `steps_offset`: 1 for every SD model).
    steps_offset: usize,
    lcm: LcmParams,
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
            spacing: TimestepSpacing::KDiffusion,
            steps_offset: 1,
            lcm: LcmParams::default(),
        })
    }

    /// This schedule with runs spaced as `spacing` says (`steps_offset` for `leading`).
    pub fn with_spacing(self, spacing: TimestepSpacing, steps_offset: usize) -> Self {
        Self {
            spacing,
            steps_offset,
            ..self
        }
    }

    /// This schedule with LCM's parameters.
    pub fn with_lcm(self, lcm: LcmParams) -> Self {
        Self { lcm, ..self }
    }

    pub fn spacing(&self) -> TimestepSpacing {
        self.spacing
    }

    pub fn lcm(&self) -> LcmParams {
        self.lcm
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

    /// The k-sampler schedule for `steps`: Karras when `steps < karras_max` (InvokeAI's rule), else the plain one.
    /// Under [`TimestepSpacing::KDiffusion`] that is InvokeAI 2.x's: Karras between the model's σ_min and σ_max, or
    /// k-diffusion's `get_sigmas`. Under a diffusers spacing it is diffusers' `EulerDiscreteScheduler`: σ linearly
    /// interpolated at the spaced timesteps, and Karras (`use_karras_sigmas`) between that list's ends.
    pub fn k_sigmas(&self, steps: usize, karras_max: usize) -> Vec<f64> {
        let karras = steps < karras_max;
        if self.spacing == TimestepSpacing::KDiffusion {
            return match karras {
                true => self.karras_sigmas(steps),
                false => self.model_sigmas(steps),
            };
        }
        let mut sigmas: Vec<f64> = self
            .spaced_timesteps(steps)
            .into_iter()
            .map(|t| self.sigma_at_linear(t))
            .collect();
        if karras && !sigmas.is_empty() {
            let (max, min) = (sigmas[0], sigmas[sigmas.len() - 1]);
            sigmas = karras_sigmas(steps, min, max, KARRAS_RHO);
        } else {
            sigmas.push(0.0);
        }
        sigmas
    }

    /// The factor txt2img's noise is scaled by before a k-sampler's first step, whose σ is `first_sigma`: σ itself,
    /// except under `leading` spacing, where diffusers' Euler schedulers start from √(σ² + 1) (their
    /// `init_noise_sigma`), and Ember follows them there.
    pub fn initial_noise_scale(&self, first_sigma: f64) -> f64 {
        match self.spacing {
            TimestepSpacing::Leading => (first_sigma * first_sigma + 1.0).sqrt(),
            _ => first_sigma,
        }
    }

    /// σ at a (fractional) timestep by linear interpolation of σ (numpy's `interp`, as diffusers does).
    fn sigma_at_linear(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, (self.sigmas.len() - 1) as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - t.floor();
        self.sigmas[low] + w * (self.sigmas[high] - self.sigmas[low])
    }

    /// A run's timesteps under a diffusers spacing, descending (fractional for `linspace`, as diffusers' Euler
    /// scheduler keeps them).
    pub fn spaced_timesteps(&self, steps: usize) -> Vec<f64> {
        let total = self.num_train_timesteps();
        let steps = steps.clamp(1, total);
        match self.spacing {
            TimestepSpacing::Linspace => linspace(0.0, (total - 1) as f64, steps).into_iter().rev().collect(),
            TimestepSpacing::KDiffusion | TimestepSpacing::Leading => {
                let ratio = total / steps;
                (0..steps)
                    .rev()
                    .map(|i| ((i * ratio + self.steps_offset).min(total - 1)) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = total as f64 / steps as f64;
                (0..steps)
                    .map(|i| ((total as f64 - i as f64 * ratio).round_ties_even() - 1.0).max(0.0))
                    .collect()
            }
        }
    }

    /// DDIM/PLMS timesteps, descending. InvokeAI's (and `leading`): `arange(steps) · (T // steps) + 1` reversed (LDM
    /// "uniform" spacing with its +1 offset); `linspace` and `trailing` as diffusers' DDIM rounds them (numpy rounds halves to even). `steps` is
    /// clamped to 1..=T.
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<usize> {
        let total = self.num_train_timesteps();
        let steps = steps.clamp(1, total);
        match self.spacing {
            TimestepSpacing::KDiffusion => {
                let stride = total / steps;
                (0..steps).rev().map(|i| (i * stride + 1).min(total - 1)).collect()
            }
            _ => self
                .spaced_timesteps(steps)
                .into_iter()
                .map(|t| t.round_ties_even() as usize)
                .collect(),
        }
    }

    /// LCM's timesteps for a `steps`-step run, descending (diffusers' `LCMScheduler.set_timesteps` at strength 1):
    /// the distillation grid `k·(T / original_steps) − 1` for k = 1..=original_steps, reversed, then `steps` of them
    /// at evenly spaced indices (floored). At most `original_inference_steps` steps.
    pub fn lcm_timesteps(&self, steps: usize) -> Vec<usize> {
        let total = self.num_train_timesteps();
        let original = self.lcm.original_inference_steps.clamp(1, total);
        let k = total / original;
        let grid: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let steps = steps.clamp(1, original);
        (0..steps)
            .map(|i| grid[(i as f64 * original as f64 / steps as f64).floor() as usize])
            .collect()
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
