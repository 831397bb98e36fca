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
        "truncate_prompts" => "--truncate-prompts",
        _ => return None,
    })
}

/// `e` for the terminal: its chain of causes, with the switch of an invalid request field named.
pub fn describe(e: &anyhow::Error) -> String {
    match e.chain().find_map(|cause| cause.downcast_ref::<ember::Error>()) {
        Some(ember::Error::InvalidRequest { field, .. }) => match switch_for_field(field) {
            Some(switch) => format!("{e:#} [{switch}]"),
            None => format!("{e:#}"),
        },
        _ => format!("{e:#}"),
    }
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
}
