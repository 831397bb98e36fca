//! Sampler names as people type them: Ember's (InvokeAI 2.x's `k_lms`…), AUTOMATIC1111's (`Euler a`,
//! `DPM++ 2M Karras`), k-diffusion/diffusers-style short names (`euler`, `euler_a`, `dpm++2m`, `dpmpp_2m`), all
//! case-insensitive — one table, read by the CLI, the A1111 API, the `parameters` writer and `!fetch`.
//!
//! A1111's names and their k-diffusion functions (its `modules/sd_samplers_kdiffusion.py`), and the Ember sampler
//! that runs the same function: `Euler a` = `sample_euler_ancestral` = k_euler_a, `Euler` = k_euler, `LMS` =
//! `sample_lms` = k_lms, `Heun` = k_heun, `DPM2` = `sample_dpm_2` = k_dpm_2, `DPM2 a` = k_dpm_2_a, `DPM++ 2M` =
//! `sample_dpmpp_2m` = k_dpmpp_2 (Ember's `dpmpp_2m`), `DPM++ 2S a` = `sample_dpmpp_2s_ancestral` = k_dpmpp_2_a;
//! `DDIM`, `PLMS` and `LCM` are the same samplers. A1111 samplers Ember lacks (`DPM++ SDE`, `UniPC`, …) are refused.
//!
//! The schedule: A1111 names it apart (`Schedule type: Karras`, 1.9+) or in the name (`DPM++ 2M Karras`, before
//! 1.9); Ember decides it by `--karras-max` (Karras while `steps < karras_max`, else the model's own σ, which is
//! A1111's `Uniform`: k-diffusion's `get_sigmas`). So a `… Karras` name means karras_max [`KARRAS_ALWAYS`], and a
//! `Uniform` schedule means karras_max 0. A plain name leaves the schedule to `--karras-max`. A `… Karras` name of a
//! sampler that takes no σ schedule (DDIM, PLMS, LCM) cannot be represented and is refused.

use super::SamplerKind;
use crate::{Error, Result};

/// `karras_max` that makes a k-sampler always run on the Karras schedule (steps are at most 1000).
pub const KARRAS_ALWAYS: usize = 1001;

/// `karras_max` that makes a k-sampler never run on the Karras schedule (A1111's `Uniform`).
pub const KARRAS_NEVER: usize = 0;

/// One row per Ember sampler: (A1111's name, the sampler, other names A1111 accepts for it, whether A1111 1.9+
/// runs it on the Karras schedule when the schedule type is `Automatic`). The A1111 API serves this table.
pub const A1111_SAMPLERS: [(&str, SamplerKind, &[&str], bool); 11] = [
    (
        "Euler a",
        SamplerKind::KEulerA,
        &["k_euler_a", "k_euler_ancestral"],
        false,
    ),
    ("Euler", SamplerKind::KEuler, &["k_euler"], false),
    ("LMS", SamplerKind::KLms, &["k_lms"], false),
    ("Heun", SamplerKind::KHeun, &["k_heun"], false),
    ("DPM2", SamplerKind::KDpm2, &["k_dpm_2"], true),
    ("DPM2 a", SamplerKind::KDpm2A, &["k_dpm_2_a"], true),
    ("DPM++ 2M", SamplerKind::KDpmpp2, &["k_dpmpp_2m", "k_dpmpp_2"], true),
    (
        "DPM++ 2S a",
        SamplerKind::KDpmpp2A,
        &["k_dpmpp_2s_a", "k_dpmpp_2_a"],
        true,
    ),
    ("DDIM", SamplerKind::Ddim, &["ddim"], false),
    ("PLMS", SamplerKind::Plms, &["plms"], false),
    ("LCM", SamplerKind::Lcm, &["lcm", "k_lcm"], false),
];

/// k-diffusion/diffusers-style short names (compared after [`squash`]): `euler_a`, `dpm++2m`, `dpmpp_2s_a`, ….
const SHORT_NAMES: [(&str, SamplerKind); 16] = [
    ("eulera", SamplerKind::KEulerA),
    ("eulerancestral", SamplerKind::KEulerA),
    ("euler", SamplerKind::KEuler),
    ("lms", SamplerKind::KLms),
    ("heun", SamplerKind::KHeun),
    ("dpm2", SamplerKind::KDpm2),
    ("dpm2a", SamplerKind::KDpm2A),
    ("dpm2ancestral", SamplerKind::KDpm2A),
    ("dpmpp2m", SamplerKind::KDpmpp2),
    ("dpmpp2", SamplerKind::KDpmpp2),
    ("dpmpp2sa", SamplerKind::KDpmpp2A),
    ("dpmpp2a", SamplerKind::KDpmpp2A),
    ("dpmpp2sancestral", SamplerKind::KDpmpp2A),
    ("ddim", SamplerKind::Ddim),
    ("plms", SamplerKind::Plms),
    ("lcm", SamplerKind::Lcm),
];

/// A sampler name read with its schedule: `karras` is `Some(true)` for a `… Karras` name, `None` when the name
/// says nothing about the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerName {
    pub kind: SamplerKind,
    pub karras: Option<bool>,
}

impl SamplerName {
    /// The `karras_max` the name asks for, if any ([`KARRAS_ALWAYS`] / [`KARRAS_NEVER`]).
    pub fn karras_max(self) -> Option<usize> {
        self.karras.map(|k| if k { KARRAS_ALWAYS } else { KARRAS_NEVER })
    }
}

/// Lower case without spaces, `_` and `-`, `++` read as `pp`, and a leading `k` of `k_…` dropped: `DPM++ 2M` and
/// `k_dpmpp_2m` both become `dpmpp2m`.
fn squash(name: &str) -> String {
    let lower = name.trim().to_lowercase();
    let lower = lower.strip_prefix("k_").unwrap_or(&lower);
    lower
        .replace("++", "pp")
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .collect()
}

/// The sampler a name means, without a schedule: Ember's, A1111's, their aliases or a short name.
fn lookup(name: &str) -> Option<SamplerKind> {
    let squashed = squash(name);
    let ember = SamplerKind::ALL.iter().copied().find(|k| squash(k.name()) == squashed);
    let a1111 = || {
        A1111_SAMPLERS
            .iter()
            .find(|(a, _, aliases, _)| squash(a) == squashed || aliases.iter().any(|x| squash(x) == squashed))
            .map(|row| row.1)
    };
    let short = || SHORT_NAMES.iter().find(|(s, _)| *s == squashed).map(|row| row.1);
    ember.or_else(a1111).or_else(short)
}

fn unknown(name: &str) -> Error {
    let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
    let a1111: Vec<&str> = A1111_SAMPLERS.iter().map(|row| row.0).collect();
    Error::invalid(
        "sampler",
        format!(
            "unknown sampler '{name}'; choose one of {} (or A1111's {}, each k-sampler also as \"… Karras\")",
            names.join(", "),
            a1111.join(", ")
        ),
    )
}

/// Reads a sampler name with an optional ` Karras` suffix (A1111's pre-1.9 names; case-insensitive).
pub fn parse_sampler_name(name: &str) -> Result<SamplerName> {
    let trimmed = name.trim();
    if let Some(kind) = lookup(trimmed) {
        return Ok(SamplerName { kind, karras: None });
    }
    let lower = trimmed.to_lowercase();
    let base = lower
        .strip_suffix(" karras")
        .or_else(|| lower.strip_suffix("_karras"))
        .or_else(|| lower.strip_suffix("_ka"));
    let Some(kind) = base.and_then(lookup) else {
        return Err(unknown(trimmed));
    };
    if !kind.is_k_sampler() {
        return Err(Error::invalid(
            "sampler",
            format!(
                "'{trimmed}': {} walks the model's discrete timesteps, not a σ schedule, so it has no Karras form; \
                 use -A {} without \"Karras\"",
                kind.name(),
                kind.name()
            ),
        ));
    }
    Ok(SamplerName {
        kind,
        karras: Some(true),
    })
}

/// A1111's name for an Ember sampler (`Euler a`, `DPM++ 2M`, …), without a schedule.
pub fn a1111_name(kind: SamplerKind) -> &'static str {
    A1111_SAMPLERS
        .iter()
        .find(|row| row.1 == kind)
        .map_or(kind.name(), |row| row.0)
}

/// Whether A1111 1.9+ runs `kind` on the Karras schedule when the schedule type is `Automatic` (or absent).
pub fn a1111_automatic_is_karras(kind: SamplerKind) -> bool {
    A1111_SAMPLERS.iter().any(|row| row.1 == kind && row.3)
}

/// A1111's `Schedule type` value for a k-sampler → whether it is Karras; `None` for a schedule Ember cannot run
/// (`Exponential`, `SGM Uniform`, …). `Automatic` resolves as A1111 1.9+ resolves it for `kind`.
pub fn a1111_schedule_is_karras(kind: SamplerKind, schedule: &str) -> Option<bool> {
    match schedule.trim().to_lowercase().as_str() {
        "" | "automatic" => Some(a1111_automatic_is_karras(kind)),
        "karras" => Some(true),
        "uniform" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_case_insensitive_and_name_the_same_sampler() {
        let cases: [(&str, SamplerKind); 22] = [
            ("k_lms", SamplerKind::KLms),
            ("LMS", SamplerKind::KLms),
            ("lms", SamplerKind::KLms),
            ("Euler a", SamplerKind::KEulerA),
            ("euler_a", SamplerKind::KEulerA),
            ("EULER-A", SamplerKind::KEulerA),
            ("k_euler_ancestral", SamplerKind::KEulerA),
            ("euler", SamplerKind::KEuler),
            ("Euler", SamplerKind::KEuler),
            ("Heun", SamplerKind::KHeun),
            ("DPM2", SamplerKind::KDpm2),
            ("DPM2 a", SamplerKind::KDpm2A),
            ("dpm2_a", SamplerKind::KDpm2A),
            ("DPM++ 2M", SamplerKind::KDpmpp2),
            ("dpm++2m", SamplerKind::KDpmpp2),
            ("dpmpp_2m", SamplerKind::KDpmpp2),
            ("k_dpmpp_2", SamplerKind::KDpmpp2),
            ("DPM++ 2S a", SamplerKind::KDpmpp2A),
            ("k_dpmpp_2_a", SamplerKind::KDpmpp2A),
            ("DDIM", SamplerKind::Ddim),
            ("Plms", SamplerKind::Plms),
            ("LCM", SamplerKind::Lcm),
        ];
        for (name, kind) in cases {
            assert_eq!(
                parse_sampler_name(name).ok(),
                Some(SamplerName { kind, karras: None }),
                "{name}"
            );
            assert_eq!(name.parse::<SamplerKind>().ok(), Some(kind), "{name}");
        }
    }

    #[test]
    fn karras_names_set_the_schedule_and_are_refused_where_it_cannot_apply() {
        let dpmpp = parse_sampler_name("DPM++ 2M Karras").expect("A1111 name");
        assert_eq!(
            (dpmpp.kind, dpmpp.karras_max()),
            (SamplerKind::KDpmpp2, Some(KARRAS_ALWAYS))
        );
        let lms = parse_sampler_name("lms karras").expect("lower case");
        assert_eq!((lms.kind, lms.karras), (SamplerKind::KLms, Some(true)));
        assert_eq!(
            parse_sampler_name("k_dpm_2_a_ka").map(|n| n.kind).ok(),
            Some(SamplerKind::KDpm2A)
        );
        // The schedule is not a sampler: SamplerKind alone cannot carry it, so it refuses rather than drop it.
        assert!("DPM++ 2M Karras".parse::<SamplerKind>().is_err());
        let e = parse_sampler_name("DDIM Karras")
            .expect_err("no σ schedule")
            .to_string();
        assert!(e.contains("no Karras form"), "{e}");
        for bad in ["DPM++ SDE", "UniPC", "", "Karras"] {
            let e = parse_sampler_name(bad).expect_err(bad).to_string();
            assert!(
                e.contains("unknown sampler") && e.contains("k_lms") && e.contains("Euler a"),
                "{e}"
            );
        }
    }

    #[test]
    fn a1111_names_and_schedules() {
        for kind in SamplerKind::ALL {
            assert_eq!(parse_sampler_name(a1111_name(kind)).map(|n| n.kind).ok(), Some(kind));
        }
        assert_eq!(a1111_name(SamplerKind::KDpmpp2), "DPM++ 2M");
        // A1111 1.9+'s `Automatic`: Karras for DPM2, DPM2 a, DPM++ 2M and DPM++ 2S a, uniform for the rest.
        assert_eq!(a1111_schedule_is_karras(SamplerKind::KDpmpp2, "Automatic"), Some(true));
        assert_eq!(a1111_schedule_is_karras(SamplerKind::KEuler, ""), Some(false));
        assert_eq!(a1111_schedule_is_karras(SamplerKind::KEuler, "Karras"), Some(true));
        assert_eq!(a1111_schedule_is_karras(SamplerKind::KDpmpp2, "uniform"), Some(false));
        assert_eq!(a1111_schedule_is_karras(SamplerKind::KDpmpp2, "Exponential"), None);
    }
}
