//! What a front-end shows of a LoRA or embedding without applying it: the family it was made for and the words it
//! was trained on, read from the file's header and metadata (a `.safetensors` LoRA is not read past its header).

use super::{stem, AddonKind};
use crate::model::family::Family;
use crate::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A LoRA or embedding as a picker lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AddonInfo {
    pub name: String,
    /// `sd1`, `sd2` or `sdxl` when the file tells; None when it does not.
    pub family: Option<&'static str>,
    /// Trigger words: `modelspec.trigger_phrase`, else the most frequent tags of `ss_tag_frequency` (at most 10).
    pub trigger_words: Vec<String>,
    /// Embeddings: how many vectors it takes in the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vectors: Option<usize>,
}

impl AddonInfo {
    /// Reads what `path` says about itself; a file that cannot be read is an error naming it.
    pub fn read(kind: AddonKind, path: &Path) -> Result<Self> {
        let (shapes, metadata) = header(path)?;
        let family = match kind {
            AddonKind::Lora => lora_family(&shapes),
            AddonKind::Embedding => embedding_family(&shapes),
        };
        let vectors = match kind {
            AddonKind::Lora => None,
            AddonKind::Embedding => shapes.values().next().map(|s| if s.len() == 2 { s[0] } else { 1 }),
        };
        Ok(Self {
            name: stem(path),
            family: family.map(Family::id),
            trigger_words: trigger_words(&metadata),
            vectors,
        })
    }
}

/// Tensor shapes by name.
type Shapes = BTreeMap<String, Vec<usize>>;

/// Tensor shapes by name, and the safetensors metadata (none for pickles).
fn header(path: &Path) -> Result<(Shapes, BTreeMap<String, String>)> {
    let is_safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        let file = super::files::read_tensor_file(path, "add-on")?;
        let shapes = file
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        return Ok((shapes, BTreeMap::new()));
    }
    use std::io::Read;
    let fail = |m: String| crate::Error::addon(path, m);
    let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| fail("the file is empty or truncated; download it again".into()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(fail(format!("its header claims {len} bytes; the file is corrupt")));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes)
        .map_err(|_| fail("the header is truncated; download it again".into()))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("the header is not valid JSON ({e})")))?;
    let mut shapes = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (key, value) in json {
        if key == "__metadata__" {
            if let serde_json::Value::Object(m) = value {
                for (k, v) in m {
                    if let serde_json::Value::String(v) = v {
                        metadata.insert(k, v);
                    }
                }
            }
        } else if let Some(shape) = value.get("shape").and_then(|s| s.as_array()) {
            shapes.insert(
                key,
                shape.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect(),
            );
        }
    }
    Ok((shapes, metadata))
}

/// SDXL when a second text encoder is named; else the width of the text the cross-attention keys read.
fn lora_family(shapes: &Shapes) -> Option<Family> {
    if shapes
        .keys()
        .any(|k| k.starts_with("lora_te2_") || k.starts_with("text_encoder_2."))
    {
        return Some(Family::Sdxl);
    }
    let width = shapes.iter().find_map(|(k, s)| {
        let cross_key = k.contains("attn2") && (k.contains("to_k") || k.contains("to_v"));
        let down = k.ends_with("lora_down.weight") || k.ends_with("lora_A.weight");
        (cross_key && down).then(|| s.get(1).copied()).flatten()
    })?;
    match width {
        768 => Some(Family::Sd1),
        1024 => Some(Family::Sd2),
        2048 => Some(Family::Sdxl),
        _ => None,
    }
}

fn embedding_family(shapes: &Shapes) -> Option<Family> {
    if shapes.contains_key("clip_g") {
        return Some(Family::Sdxl);
    }
    match shapes.values().next()?.last()? {
        768 => Some(Family::Sd1),
        1024 => Some(Family::Sd2),
        _ => None,
    }
}

fn trigger_words(metadata: &BTreeMap<String, String>) -> Vec<String> {
    if let Some(phrase) = metadata
        .get("modelspec.trigger_phrase")
        .filter(|p| !p.trim().is_empty())
    {
        return phrase
            .split(',')
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();
    }
    // kohya: {"dataset dir": {"tag": count, …}, …}
    let Some(Ok(serde_json::Value::Object(dirs))) = metadata.get("ss_tag_frequency").map(|t| serde_json::from_str(t))
    else {
        return Vec::new();
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for tags in dirs.values() {
        if let serde_json::Value::Object(tags) = tags {
            for (tag, n) in tags {
                *counts.entry(tag.trim().to_string()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().filter(|(t, _)| !t.is_empty()).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.into_iter().take(10).map(|(t, _)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_words_from_either_key() {
        let mut m = BTreeMap::new();
        m.insert(
            "ss_tag_frequency".to_string(),
            r#"{"10_dir": {"red hat": 5, "smile": 9}, "5_other": {"red hat": 7}}"#.to_string(),
        );
        assert_eq!(trigger_words(&m), vec!["red hat", "smile"]);
        m.insert("modelspec.trigger_phrase".to_string(), "zxc style, blue".to_string());
        assert_eq!(trigger_words(&m), vec!["zxc style", "blue"]);
    }
}
