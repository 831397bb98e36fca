//! How the command line shows an error. The engine's messages name request fields (`steps`, `cfg_scale`: the HTTP
//! API's names, shared by every front-end); here each field also gets the switch that sets it.

/// The switch that sets a request field, for the fields the engine's checks name.
pub fn switch_for_field(field: &str) -> Option<&'static str> {
    Some(match field {
        "prompt" => "the prompt",
        "negative_prompt" => "--negative",
        "steps" => "-s/--steps",
        "cfg_scale" => "-C/--cfg-scale",
        "sampler" => "-A/--sampler",
        "width" => "-W/--width",
        "height" => "-H/--height",
        "strength" => "-f/--strength",
        "init_image" => "-I/--init-image",
        "with_variations" => "-V/--with-variations",
        "variation_amount" => "-v/--variation-amount",
        "threshold" => "--threshold",
        "perlin" => "--perlin",
        "hires_fix" => "--hires_fix",
        "loras" | "lora" => "--lora or <lora:NAME:WEIGHT>",
        "seed" => "-S/--seed",
        "iterations" => "-n/--iterations",
        "init_mask" => "-M/--init-mask",
        "mask_blur" => "--mask-blur",
        "outcrop" => "-c/--outcrop",
        "save_intermediates" => "--save-intermediates",
        "truncate_prompts" => "--truncate-prompts",
        _ => return None,
    })
}

/// `e` for the terminal: its chain of causes, with the switch of an invalid request field named.
pub fn describe(e: &anyhow::Error) -> String {
    let text = chain_text(e);
    match e.chain().find_map(|cause| cause.downcast_ref::<ember::Error>()) {
        Some(ember::Error::InvalidRequest { field, .. }) => match switch_for_field(field) {
            Some(switch) => format!("{text} [{switch}]"),
            None => text,
        },
        _ => text,
    }
}

/// The causes joined by `: `, as anyhow's `{:#}`, except that a cause whose text its parent's message already ends
/// with is left out (the engine's "cannot write X: <OS error>" carries its OS error both ways).
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if !previous.is_empty() && previous.ends_with(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        previous = message;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_field_names_its_switch() {
        let e = anyhow::Error::new(ember::Error::invalid("steps", "must be at least 1 (try 50)"));
        assert_eq!(describe(&e), "invalid steps: must be at least 1 (try 50) [-s/--steps]");
        let other = anyhow::anyhow!("cannot open the file");
        assert_eq!(describe(&other), "cannot open the file");
    }

    #[test]
    fn an_os_error_is_shown_once() {
        // Issue 18: `-o /proc/nope/x` printed "…: No such file or directory (os error 2)" twice.
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(ember::Error::Write {
            path: "/proc/nope/x".into(),
            source: io,
        });
        let text = describe(&e);
        assert_eq!(text.matches("not found").count(), 1, "{text}");
        assert!(text.starts_with("cannot write /proc/nope/x: "), "{text}");
        // Context layers still show.
        let layered = anyhow::Error::new(std::io::Error::other("disk full")).context("cannot save the grid");
        assert_eq!(describe(&layered), "cannot save the grid: disk full");
    }
}
