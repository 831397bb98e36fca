//! LoRA terms in a prompt: A1111's `<lora:NAME>`, `<lora:NAME:WEIGHT>` and `<lora:NAME:TE_WEIGHT:UNET_WEIGHT>` (also
//! `<lyco:…>`, the LyCORIS extension's), and InvokeAI's `withLora(NAME)` / `withLora(NAME, WEIGHT)` (also
//! `useLora`). They are taken out of the text before it is parsed, as both tools do; the weight defaults to 1.

use crate::{Error, Result};

/// One LoRA a request applies, with its weight on the text encoder(s) and on the UNet (equal unless A1111's
/// three-part form set them apart).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraUse {
    pub name: String,
    pub text_weight: f64,
    pub unet_weight: f64,
}

impl LoraUse {
    pub fn new(name: impl Into<String>, weight: f64) -> Self {
        Self {
            name: name.into(),
            text_weight: weight,
            unet_weight: weight,
        }
    }

    /// A1111's prompt form of this use.
    pub fn to_prompt_term(&self) -> String {
        if self.text_weight == self.unet_weight {
            format!("<lora:{}:{}>", self.name, self.unet_weight)
        } else {
            format!("<lora:{}:{}:{}>", self.name, self.text_weight, self.unet_weight)
        }
    }
}

/// `text` without its LoRA terms, and the terms in order. `field` names the prompt in errors.
pub fn take_loras(text: &str, field: &'static str) -> Result<(String, Vec<LoraUse>)> {
    let mut out = String::with_capacity(text.len());
    let mut uses = Vec::new();
    let mut rest = text;
    loop {
        let angle = ["<lora:", "<lyco:"].iter().filter_map(|p| rest.find(p)).min();
        let call = ["withLora(", "useLora("]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
            .min();
        let (start, is_angle, open_len) = match (angle, call) {
            (Some(a), Some((c, len))) if c < a => (c, false, len),
            (Some(a), _) => (a, true, "<lora:".len()),
            (None, Some((c, len))) => (c, false, len),
            (None, None) => break,
        };
        out.push_str(&rest[..start]);
        let body_start = start + open_len;
        let close = if is_angle { '>' } else { ')' };
        let Some(len) = rest[body_start..].find(close) else {
            let shown: String = rest[start..].chars().take(40).collect();
            return Err(Error::invalid(
                field,
                format!("`{shown}` is not closed with `{close}`; write a LoRA as <lora:NAME:WEIGHT> or withLora(NAME, WEIGHT)"),
            ));
        };
        let body = &rest[body_start..body_start + len];
        uses.push(if is_angle {
            angle_term(body, field)?
        } else {
            call_term(body, field)?
        });
        rest = &rest[body_start + len + 1..];
    }
    out.push_str(rest);
    Ok((out, uses))
}

/// `NAME[:WEIGHT[:UNET_WEIGHT]]`.
fn angle_term(body: &str, field: &'static str) -> Result<LoraUse> {
    let parts: Vec<&str> = body.split(':').map(str::trim).collect();
    let name = lora_name(parts[0], body, field)?;
    let weight = |i: usize| parts.get(i).map(|w| parse_weight(w, body, field)).transpose();
    if parts.len() > 3 {
        return Err(Error::invalid(
            field,
            format!(
                "`<lora:{body}>` has too many parts; write <lora:NAME:WEIGHT> or <lora:NAME:TEXT_WEIGHT:UNET_WEIGHT>"
            ),
        ));
    }
    let text_weight = weight(1)?.unwrap_or(1.0);
    let unet_weight = weight(2)?.unwrap_or(text_weight);
    Ok(LoraUse {
        name,
        text_weight,
        unet_weight,
    })
}

/// `NAME[, WEIGHT]`, the name optionally quoted.
fn call_term(body: &str, field: &'static str) -> Result<LoraUse> {
    let (name, weight) = match body.split_once(',') {
        Some((n, w)) => (n, Some(parse_weight(w.trim(), body, field)?)),
        None => (body, None),
    };
    let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
    Ok(LoraUse::new(lora_name(name, body, field)?, weight.unwrap_or(1.0)))
}

fn lora_name(name: &str, body: &str, field: &'static str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::invalid(field, format!("the LoRA term `{body}` has no name")));
    }
    Ok(name.to_string())
}

fn parse_weight(text: &str, body: &str, field: &'static str) -> Result<f64> {
    match text.parse::<f64>() {
        Ok(w) if w.is_finite() && w.abs() <= 100.0 => Ok(w),
        Ok(w) => Err(Error::invalid(
            field,
            format!("LoRA weight {w} in `{body}` is out of range (-100 to 100)"),
        )),
        Err(_) => Err(Error::invalid(
            field,
            format!("LoRA weight `{text}` in `{body}` is not a number (write e.g. <lora:NAME:0.8>)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_syntaxes_are_taken_out() {
        let (text, uses) = take_loras(
            "a cat <lora:foo:0.8>, withLora(bar, 0.5) <lora:baz> <lyco:q:1:0.25>",
            "prompt",
        )
        .unwrap();
        assert_eq!(text, "a cat ,   ");
        assert_eq!(
            uses,
            vec![
                LoraUse::new("foo", 0.8),
                LoraUse::new("bar", 0.5),
                LoraUse::new("baz", 1.0),
                LoraUse {
                    name: "q".into(),
                    text_weight: 1.0,
                    unet_weight: 0.25
                },
            ]
        );
        assert_eq!(take_loras("no loras (here)1.2", "prompt").unwrap().1, vec![]);
        assert_eq!(
            take_loras("withLora(\"x y\")", "prompt").unwrap().1,
            vec![LoraUse::new("x y", 1.0)]
        );
    }

    #[test]
    fn malformed_terms_are_errors() {
        for bad in [
            "<lora:foo:0.8",
            "<lora:foo:heavy>",
            "<lora::1>",
            "withLora(foo, x)",
            "<lora:a:1:2:3>",
            "<lora:a:inf>",
        ] {
            let err = take_loras(bad, "prompt").unwrap_err().to_string();
            assert!(err.starts_with("invalid prompt:"), "{bad}: {err}");
        }
    }
}
