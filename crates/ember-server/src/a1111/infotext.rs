//! `png-info`: the text chunks of a PNG, its `parameters` parsed as A1111 parses an infotext.

use super::fields::Fields;
use super::images::image_bytes;
use super::{invalid, Result};
use crate::blocking;
use axum::body::Bytes;
use axum::Json;
use serde_json::{json, Map, Value};

#[utoipa::path(post, path = "/sdapi/v1/png-info", tag = "automatic1111",
    request_body(content = Object, description = "`{\"image\": base64}`"),
    responses((status = 200, description = "`{\"info\": the parameters text, \"items\": {other text chunks}, \
        \"parameters\": {the text parsed as A1111 does}}`", body = Object),
        (status = 422, description = "Not an image", body = Object)))]
pub async fn png_info(body: Bytes) -> Result<Json<Value>> {
    let mut f = Fields::parse(&body)?;
    let text = f
        .string("image")?
        .ok_or_else(|| invalid("image", "is required: a base64-encoded image"))?;
    let bytes = image_bytes(&text, "image")?;
    let chunks = blocking::png_text(&bytes).unwrap_or_default();
    let mut info = String::new();
    let mut items = Map::new();
    for (key, value) in chunks {
        if key == "parameters" && info.is_empty() {
            info = value;
        } else {
            items.insert(key, Value::String(value));
        }
    }
    let parameters = parse_infotext(&info);
    Ok(Json(json!({"info": info, "items": items, "parameters": parameters})))
}

/// A1111's `parse_generation_parameters`: the prompt, `Negative prompt:` and the last line's `Key: value` pairs (a
/// `WxH` value split into `Key-1`, `Key-2`), every value a string.
pub fn parse_infotext(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let text = text.trim();
    if text.is_empty() {
        return out;
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    let last = lines.pop().unwrap_or("");
    let pairs = key_values(last);
    let last_is_params = pairs.len() >= 3;
    if !last_is_params {
        lines.push(last);
    }
    let (mut prompt, mut negative, mut in_negative) = (String::new(), String::new(), false);
    for line in lines {
        let line = match line.strip_prefix("Negative prompt:") {
            Some(rest) => {
                in_negative = true;
                rest.trim()
            }
            None => line,
        };
        let target = if in_negative { &mut negative } else { &mut prompt };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line.trim_end());
    }
    out.insert("Prompt".into(), Value::String(prompt));
    out.insert("Negative prompt".into(), Value::String(negative));
    if last_is_params {
        for (key, value) in pairs {
            let size = value
                .split_once('x')
                .filter(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
            match size {
                Some((a, b)) => {
                    out.insert(format!("{key}-1"), Value::String(a.into()));
                    out.insert(format!("{key}-2"), Value::String(b.into()));
                }
                None => {
                    out.insert(key, Value::String(value));
                }
            }
        }
    }
    out
}

/// `Steps: 20, Sampler: Euler a, Lora hashes: "a: 1, b: 2"` → pairs, quoted values unquoted.
fn key_values(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once(':') else {
            break;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_alphanumeric() || " -_/".contains(c)) {
            break;
        }
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"').and_then(closing_quote) {
            // A JSON string, up to its closing quote.
            Some(end) => {
                let quoted = &after[..=end + 1];
                let value = serde_json::from_str::<String>(quoted).unwrap_or_else(|_| quoted.to_string());
                (value, &after[end + 2..])
            }
            None => match after.split_once(',') {
                Some((value, next)) => (value.trim().to_string(), next),
                None => (after.trim().to_string(), ""),
            },
        };
        out.push((key.to_string(), value));
        rest = next.trim_start().trim_start_matches(',').trim();
    }
    out
}

/// The byte offset of the unescaped `"` ending a string whose opening quote was just before `s`.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infotexts_parse_as_a1111_parses_them() {
        let text = "a cat, (fur)\nmore prompt\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, \
                    Seed: 42, Size: 64x96, Model: \"tiny, sd\", Lora hashes: \"a: 1, b: 2\"";
        let p = parse_infotext(text);
        assert_eq!(p["Prompt"], "a cat, (fur)\nmore prompt");
        assert_eq!(p["Negative prompt"], "ugly");
        assert_eq!(p["Steps"], "20");
        assert_eq!(p["Sampler"], "Euler a");
        assert_eq!(p["Size-1"], "64");
        assert_eq!(p["Size-2"], "96");
        assert_eq!(p["Model"], "tiny, sd");
        assert_eq!(p["Lora hashes"], "a: 1, b: 2");
        let p = parse_infotext("just a prompt");
        assert_eq!(p["Prompt"], "just a prompt");
    }
}
