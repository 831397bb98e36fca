//! diffusers folders (`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/`): configs come
//! from each component's config.json, weights are memory-mapped from its `.safetensors` files.

use super::weights::{list_tensors, open_safetensors, Entry, Source, Transform, WeightMap};
use super::{infer_config, ldm_keys, Components};
use crate::{Error, Result};
use candle_core::DType;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) fn load(dir: &Path, dtype: DType) -> Result<Components> {
    let index_path = dir.join("model_index.json");
    let index: serde_json::Value = read_json(&index_path)?;
    let class = index.get("_class_name").and_then(|c| c.as_str()).unwrap_or_default();
    if index.get("text_encoder_2").is_some() || class.contains("XL") {
        return Err(infer_config::unsupported_family(dir, "Stable Diffusion XL"));
    }

    let unet_json: serde_json::Value = read_json(&dir.join("unet/config.json"))?;
    if unet_json.get("addition_embed_type").and_then(|v| v.as_str()).is_some() {
        return Err(infer_config::unsupported_family(dir, "Stable Diffusion XL"));
    }
    if unet_json
        .get("cross_attention_dim")
        .is_some_and(|v| v.as_u64().is_none())
    {
        return Err(Error::model(
            dir.join("unet/config.json"),
            "cross_attention_dim is not a single number, which no SD 1.x UNet has",
        ));
    }
    let unet_config = parse_config(&dir.join("unet/config.json"), unet_json)?;
    infer_config::check_unet(dir, &unet_config)?;
    let vae_config = parse_config(&dir.join("vae/config.json"), read_json(&dir.join("vae/config.json"))?)?;
    let clip_config = parse_config(
        &dir.join("text_encoder/config.json"),
        read_json(&dir.join("text_encoder/config.json"))?,
    )?;

    let tokenizer = dir.join("tokenizer");
    Ok(Components {
        unet: component(&dir.join("unet"), dtype, None)?,
        vae: component(&dir.join("vae"), dtype, Some(ldm_keys::old_diffusers_vae))?,
        text_encoder: component(&dir.join("text_encoder"), dtype, None)?,
        unet_config,
        vae_config,
        clip_config,
        tokenizer_dir: tokenizer.join("vocab.json").is_file().then_some(tokenizer),
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            "the file is missing; the diffusers folder is incomplete (download it again)".to_string()
        } else {
            format!("cannot read it: {e}")
        };
        Error::model(path, what)
    })?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("invalid JSON: {e}")))
}

fn parse_config<T: DeserializeOwned>(path: &Path, json: serde_json::Value) -> Result<T> {
    serde_json::from_value(json).map_err(|e| Error::model(path, format!("unexpected configuration: {e}")))
}

/// The `.safetensors` files of one component. When both exist, the fp16 variant is used for f16/bf16
/// loading (half the reading) and the full-precision file otherwise.
fn weight_files(dir: &Path, dtype: DType) -> Result<Vec<PathBuf>> {
    let listing = std::fs::read_dir(dir).map_err(|e| {
        Error::model(
            dir,
            format!("cannot read the component folder ({e}); the diffusers folder is incomplete"),
        )
    })?;
    let mut files: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        // Training variants that repeat the same tensors (SD 1.5 ships `*.non_ema.safetensors`).
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !n.contains(".non_ema.") && !n.contains(".ema.")
        })
        .collect();
    files.sort();
    let is_fp16 = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".fp16."));
    let (fp16, full): (Vec<_>, Vec<_>) = files.into_iter().partition(is_fp16);
    let prefer_fp16 = matches!(dtype, DType::F16 | DType::BF16);
    let chosen = match (fp16.is_empty(), full.is_empty()) {
        (false, false) if prefer_fp16 => fp16,
        (false, false) => full,
        (false, true) => fp16,
        (true, false) => full,
        (true, true) => {
            let has_bin = dir.join("diffusion_pytorch_model.bin").exists() || dir.join("pytorch_model.bin").exists();
            let hint = if has_bin {
                "only .bin (pickle) weights are present; Ember reads .safetensors in diffusers folders \
                 (convert them, or download the .safetensors files)"
            } else {
                "no .safetensors weights found; the diffusers folder is incomplete"
            };
            return Err(Error::model(dir, hint));
        }
    };
    Ok(chosen)
}

fn component(dir: &Path, dtype: DType, rename: Option<fn(&str) -> Option<String>>) -> Result<WeightMap> {
    let mut map = WeightMap::new(dir);
    for file in weight_files(dir, dtype)? {
        let source = Arc::new(Source::Safetensors(open_safetensors(&file)?));
        for (key, shape) in list_tensors(&source) {
            let name = rename.and_then(|f| f(&key)).unwrap_or_else(|| key.clone());
            map.entries.insert(
                name,
                Entry {
                    source: source.clone(),
                    key,
                    shape,
                    transform: Transform::None,
                },
            );
        }
    }
    Ok(map)
}
