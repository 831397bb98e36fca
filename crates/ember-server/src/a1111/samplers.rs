//! A1111's sampler and scheduler names, translated into Ember's samplers and their `karras_max`.

use super::{invalid, Result};
use crate::error::clip;
use ember::sample::SamplerKind;

// The one table of A1111's sampler names, in the engine (also read by its `parameters` writer and `!fetch`).
pub(super) use ember::sample::names::{A1111_SAMPLERS as SAMPLERS, KARRAS_ALWAYS};

/// `sampler_name` (A1111's name, an alias, or an old `… Karras` name) and `scheduler` → the engine's sampler and
/// whether it runs on the Karras schedule (None: not a k-sampler, Ember's default `karras_max` stays).
pub(super) fn sampler(
    name: Option<&str>,
    scheduler: Option<&str>,
    default: &str,
) -> Result<(String, Option<bool>, String)> {
    let (entry, karras_in_name) = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(raw) => {
            let lower = raw.to_ascii_lowercase();
            let (base, karras) = match lower.strip_suffix(" karras") {
                Some(base) => (base.to_string(), true),
                None => (lower.clone(), false),
            };
            let found = SAMPLERS.iter().find(|(a1111, _, aliases, _)| {
                a1111.eq_ignore_ascii_case(&base) || aliases.iter().any(|a| a.eq_ignore_ascii_case(&base))
            });
            let entry = found.ok_or_else(|| {
                let names: Vec<&str> = SAMPLERS.iter().map(|s| s.0).collect();
                invalid(
                    "sampler_name",
                    format!(
                        "unknown sampler '{}'; Ember has {} (each also as \"… Karras\"; GET /sdapi/v1/samplers)",
                        clip(raw),
                        names.join(", ")
                    ),
                )
            })?;
            (entry, karras)
        }
        None => {
            let kind: SamplerKind = default.parse()?;
            let entry = SAMPLERS.iter().find(|s| s.1 == kind).unwrap_or(&SAMPLERS[1]);
            (entry, false)
        }
    };
    let karras = match scheduler.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("automatic") => karras_in_name || entry.3,
        Some("karras") => true,
        Some("uniform") => false,
        Some(other) => {
            return Err(invalid(
                "scheduler",
                format!(
                    "unknown scheduler '{}'; Ember has automatic, uniform and karras (GET /sdapi/v1/schedulers)",
                    clip(other)
                ),
            ))
        }
    };
    let label = if karras { "Karras" } else { "Uniform" };
    Ok((
        entry.1.name().to_string(),
        entry.1.is_k_sampler().then_some(karras),
        format!("{}|{label}", entry.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_and_schedulers_map_to_the_engine() {
        let s =
            |name: Option<&str>, sched: Option<&str>| sampler(name, sched, "k_lms").map(|(k, karras, _)| (k, karras));
        assert_eq!(s(Some("Euler a"), None).ok(), Some(("k_euler_a".into(), Some(false))));
        assert_eq!(
            s(Some("Euler a"), Some("automatic")).ok(),
            Some(("k_euler_a".into(), Some(false)))
        );
        assert_eq!(
            s(Some("Euler"), Some("Karras")).ok(),
            Some(("k_euler".into(), Some(true)))
        );
        assert_eq!(
            s(Some("DPM++ 2M"), Some("automatic")).ok(),
            Some(("k_dpmpp_2".into(), Some(true)))
        );
        assert_eq!(
            s(Some("DPM++ 2M"), Some("uniform")).ok(),
            Some(("k_dpmpp_2".into(), Some(false)))
        );
        assert_eq!(
            s(Some("DPM++ 2M Karras"), None).ok(),
            Some(("k_dpmpp_2".into(), Some(true)))
        );
        assert_eq!(s(Some("lms karras"), None).ok(), Some(("k_lms".into(), Some(true))));
        assert_eq!(s(Some("DDIM"), None).ok(), Some(("ddim".into(), None)));
        assert_eq!(s(Some("k_dpm_2_a"), None).ok(), Some(("k_dpm_2_a".into(), Some(true))));
        assert_eq!(
            s(None, None).ok(),
            Some(("k_lms".into(), Some(false))),
            "the model's default"
        );
        let e = s(Some("UniPC"), None).expect_err("unknown");
        assert_eq!(e.0.field.as_deref(), Some("sampler_name"));
        let e = s(Some("Euler"), Some("exponential")).expect_err("unknown");
        assert_eq!(e.0.field.as_deref(), Some("scheduler"));
    }
}
