//! Sampling: torch-compatible noise, noise schedules, and the samplers that walk them.

pub mod denoiser;
pub mod names;
pub mod perlin;
pub mod rng;
pub mod samplers;
pub mod schedule;
pub mod variation;

use std::fmt;
use std::str::FromStr;

/// InvokeAI 2.x's sampler names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    KLms,
    KEuler,
    KEulerA,
    KHeun,
    KDpm2,
    KDpm2A,
    /// DPM++ 2M
    KDpmpp2,
    /// DPM++ 2S ancestral
    KDpmpp2A,
    Ddim,
    Plms,
    /// Latent consistency sampling (diffusers' `LCMScheduler`), for LCM-distilled models and LCM-LoRA: 2–8 steps.
    Lcm,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 11] = [
        SamplerKind::KLms,
        SamplerKind::KEuler,
        SamplerKind::KEulerA,
        SamplerKind::KHeun,
        SamplerKind::KDpm2,
        SamplerKind::KDpm2A,
        SamplerKind::KDpmpp2,
        SamplerKind::KDpmpp2A,
        SamplerKind::Ddim,
        SamplerKind::Plms,
        SamplerKind::Lcm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::KLms => "k_lms",
            SamplerKind::KEuler => "k_euler",
            SamplerKind::KEulerA => "k_euler_a",
            SamplerKind::KHeun => "k_heun",
            SamplerKind::KDpm2 => "k_dpm_2",
            SamplerKind::KDpm2A => "k_dpm_2_a",
            SamplerKind::KDpmpp2 => "k_dpmpp_2",
            SamplerKind::KDpmpp2A => "k_dpmpp_2_a",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Plms => "plms",
            SamplerKind::Lcm => "lcm",
        }
    }

    /// k-diffusion samplers work in σ space; ddim/plms/lcm work on discrete timesteps.
    pub fn is_k_sampler(self) -> bool {
        !matches!(self, SamplerKind::Ddim | SamplerKind::Plms | SamplerKind::Lcm)
    }

    /// Ancestral samplers draw fresh noise at every step.
    pub fn is_ancestral(self) -> bool {
        matches!(self, SamplerKind::KEulerA | SamplerKind::KDpm2A | SamplerKind::KDpmpp2A)
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = crate::Error;
    /// Ember's names and their aliases, case-insensitive ([`names`]). A `… Karras` name also sets the schedule,
    /// which a sampler alone cannot carry: it is refused here; [`names::parse_sampler_name`] reads it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = names::parse_sampler_name(s)?;
        if name.karras.is_some() {
            return Err(crate::Error::invalid(
                "sampler",
                format!(
                    "'{}' also names the Karras schedule, which is set apart here: use sampler {} with karras_max {}",
                    s.trim(),
                    name.kind.name(),
                    names::KARRAS_ALWAYS
                ),
            ));
        }
        Ok(name.kind)
    }
}
