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

/// A1111's `parse_generation_parameters` ([`ember::image::infotext::parse`], which `!fetch` and `ember info` read
/// too): the prompt, `Negative prompt:` and the last line's `Key: value` pairs (a `WxH` value split into `Key-1`,
/// `Key-2`), every value a string.
pub fn parse_infotext(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    if text.trim().is_empty() {
        return out;
    }
    let parsed = ember::image::infotext::parse(text);
    out.insert("Prompt".into(), Value::String(parsed.prompt));
    out.insert("Negative prompt".into(), Value::String(parsed.negative_prompt));
    for (key, value) in parsed.settings {
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
    out
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
