//! diffusers folders (`model_index.json` with `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, and SDXL's
//! `text_encoder_2/`, `tokenizer_2/`): configs come from each component's config.json and the scheduler's
//! `scheduler_config.json`, weights are memory-mapped from its `.safetensors` files.

use super::family::Hints;
use super::weights::{list_tensors, open_safetensors, Entry, Source, Transform, WeightMap};
use super::{ldm_keys, Components};
use crate::{Error, Result};
use candle_core::DType;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) fn load(dir: &Path, dtype: DType) -> Result<Components> {
    let index_path = dir.join("model_index.json");
    let index: serde_json::Value = read_json(&index_path)?;

    let unet_json: serde_json::Value = read_json(&dir.join("unet/config.json"))?;
    if unet_json
        .get("cross_attention_dim")
        .is_some_and(|v| v.as_u64().is_none())
    {
        return Err(Error::model(
            dir.join("unet/config.json"),
            "cross_attention_dim is not a single number, which no Stable Diffusion UNet has",
        ));
    }
    let unet_config = parse_config(&dir.join("unet/config.json"), unet_json)?;
    let vae_config = parse_config(&dir.join("vae/config.json"), read_json(&dir.join("vae/config.json"))?)?;
    // SDXL's second text encoder and tokenizer sit in `text_encoder_2/` and `tokenizer_2/`.
    let encoders: Vec<&str> = match index.get("text_encoder_2").is_some_and(|v| !v.is_null()) {
        true => vec!["text_encoder", "text_encoder_2"],
        false => vec!["text_encoder"],
    };
    let mut clip_configs = Vec::new();
    let mut text_encoders = Vec::new();
    let mut tokenizer_dirs = Vec::new();
    for (i, name) in encoders.iter().enumerate() {
        let config = dir.join(name).join("config.json");
        clip_configs.push(parse_config(&config, read_json(&config)?)?);
        text_encoders.push(component(&dir.join(name), dtype, None)?);
        let tokenizer = dir.join(if i == 0 {
            "tokenizer".to_string()
        } else {
            format!("tokenizer_{}", i + 1)
        });
        tokenizer_dirs.push(tokenizer.join("vocab.json").is_file().then_some(tokenizer));
    }
    let scheduler_path = dir.join("scheduler/scheduler_config.json");
    let scheduler_config = match scheduler_path.is_file() {
        true => Some(read_json(&scheduler_path)?),
        false => None,
    };

    Ok(Components {
        unet: component(&dir.join("unet"), dtype, None)?,
        vae: component(&dir.join("vae"), dtype, Some(ldm_keys::old_diffusers_vae))?,
        text_encoders,
        unet_config,
        vae_config,
        clip_configs,
        tokenizer_dirs,
        hints: Hints {
            scheduler_config,
            model_index: Some(index),
            ..Hints::default()
        },
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
                 (convert each: `ember models convert X.bin --to X.safetensors`, or download the .safetensors files)"
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
