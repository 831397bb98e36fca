//! Single-file checkpoints (`.safetensors`, or `.ckpt`/`.pt` through ember-pickle) in Stability's LDM (SD 1.x/2.x)
//! and SGM (SDXL) layouts: splits the file's tensors into UNet / VAE / text encoder(s) under diffusers' and
//! transformers' names (OpenCLIP towers included), recognises model families Ember does not run, and infers the
//! configurations from the shapes. EMA copies and unrelated keys are ignored.

use super::family::{Hints, Sidecar};
use super::weights::{list_tensors, Entry, Source, Transform, WeightMap};
use super::{infer_config, ldm_keys, Components};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Where a single file keeps a text encoder, and in which naming.
struct TextSource {
    prefix: &'static str,
    /// 0: the first (or only) encoder; 1: SDXL's second.
    slot: usize,
    open_clip: bool,
}

const TEXT_SOURCES: [TextSource; 4] = [
    // SD 1.x: transformers' CLIPTextModel.
    TextSource {
        prefix: ldm_keys::CLIP_PREFIX,
        slot: 0,
        open_clip: false,
    },
    // SD 2.x: OpenCLIP ViT-H.
    TextSource {
        prefix: "cond_stage_model.model.",
        slot: 0,
        open_clip: true,
    },
    // SDXL: CLIP-L in transformers' names, then OpenCLIP bigG.
    TextSource {
        prefix: "conditioner.embedders.0.transformer.",
        slot: 0,
        open_clip: false,
    },
    TextSource {
        prefix: "conditioner.embedders.1.model.",
        slot: 1,
        open_clip: true,
    },
];

pub(crate) fn load(path: &Path, source: Source) -> Result<Components> {
    let source = Arc::new(source);
    let tensors = list_tensors(&source);
    refuse_other_families(path, &tensors)?;

    let layers_per_block = unet_layers_per_block(&tensors);
    let num_up_blocks = tensors
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("first_stage_model.decoder.up.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    // OpenCLIP's fused q/k/v are split by the tower's width.
    let open_clip_width = |prefix: &str| {
        tensors
            .iter()
            .find(|(k, _)| k.strip_prefix(prefix) == Some("token_embedding.weight"))
            .and_then(|(_, s)| s.get(1).copied())
    };

    let (mut unet, mut vae) = (WeightMap::new(path), WeightMap::new(path));
    let mut text = [WeightMap::new(path), WeightMap::new(path)];
    let entry = |key: &String, shape: Vec<usize>, transform: Transform| Entry {
        source: source.clone(),
        key: key.clone(),
        shape,
        transform,
    };
    for (key, shape) in &tensors {
        if let Some(k) = key.strip_prefix(ldm_keys::UNET_PREFIX) {
            if let Some(name) = ldm_keys::unet(k, layers_per_block) {
                unet.entries.insert(name, entry(key, shape.clone(), Transform::None));
            }
        } else if let Some(k) = key.strip_prefix(ldm_keys::VAE_PREFIX) {
            if let Some((name, transform)) = ldm_keys::vae(k, num_up_blocks) {
                let shape = match (transform, shape.as_slice()) {
                    (Transform::ConvToLinear, [o, i, 1, 1]) => vec![*o, *i],
                    _ => shape.clone(),
                };
                vae.entries.insert(name, entry(key, shape, transform));
            }
        } else if let Some((src, k)) = TEXT_SOURCES
            .iter()
            .find_map(|src| key.strip_prefix(src.prefix).map(|k| (src, k)))
        {
            let map = &mut text[src.slot];
            if !src.open_clip {
                map.entries
                    .insert(ldm_keys::clip(k), entry(key, shape.clone(), Transform::None));
                continue;
            }
            let width = open_clip_width(src.prefix).unwrap_or(0);
            for (name, transform) in ldm_keys::open_clip(k, width) {
                let shape = match (transform, shape.as_slice()) {
                    (Transform::Rows { len, .. }, [_, rest @ ..]) => [&[len], rest].concat(),
                    (Transform::Transpose, [a, b]) => vec![*b, *a],
                    _ => shape.clone(),
                };
                map.entries.insert(name, entry(key, shape, transform));
            }
        }
        // Anything else: EMA weights, schedule buffers, training state.
    }
    for (map, what, prefix) in [
        (&unet, "UNet", ldm_keys::UNET_PREFIX),
        (&vae, "VAE", ldm_keys::VAE_PREFIX),
        (&text[0], "text encoder", ldm_keys::CLIP_PREFIX),
    ] {
        if map.entries.is_empty() {
            return Err(missing_component(path, what, prefix, &tensors));
        }
    }
    let [first, second] = text;
    let text_encoders: Vec<WeightMap> = match second.entries.is_empty() {
        true => vec![first],
        false => vec![first, second],
    };

    let mut unet_config = infer_config::unet(&unet)?;
    // Before the text encoders' shapes are read: a UNet Ember cannot run is refused as such, whatever else is missing.
    super::family::check_unet(path, &unet_config)?;
    if let (Some(input), Some(encoder)) = (unet_config.projection_class_embeddings_input_dim, text_encoders.get(1)) {
        // `add_embedding` eats six sinusoidal size embeddings and the pooled text embedding.
        let pooled = encoder.require("text_projection.weight")?[0];
        unet_config.addition_time_embed_dim = Some(input.saturating_sub(pooled) / 6);
    }
    Ok(Components {
        clip_configs: text_encoders.iter().map(infer_config::clip).collect::<Result<_>>()?,
        vae_config: infer_config::vae(&vae)?,
        unet_config,
        unet,
        vae,
        tokenizer_dirs: vec![None; text_encoders.len()],
        text_encoders,
        hints: Hints {
            sidecar: Sidecar::find(path)?,
            single_file: true,
            ..Hints::default()
        },
    })
}

/// Families Ember does not run share some of SD's names; these keys tell them apart.
fn refuse_other_families(path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<()> {
    let has = |p: &str| {
        tensors
            .iter()
            .any(|(k, _)| k.starts_with(p) || k.contains(&format!(".{p}")))
    };
    if has("joint_blocks.") {
        return Err(infer_config::unsupported_family(path, "Stable Diffusion 3"));
    }
    if has("double_blocks.") || has("single_blocks.") {
        return Err(infer_config::unsupported_family(path, "FLUX"));
    }
    if has("down_blocks.0.0.channelwise.") || has("clf.") {
        return Err(infer_config::unsupported_family(path, "Stable Cascade"));
    }
    if has("conditioner.embedders.0.model.") {
        return Err(infer_config::unsupported_family(path, "SDXL refiner"));
    }
    Ok(())
}

/// LDM's `input_blocks` list holds `layers_per_block` resnets then a downsampler (`.0.op`) per block.
fn unet_layers_per_block(tensors: &[(String, Vec<usize>)]) -> usize {
    let first_op = tensors
        .iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix("model.diffusion_model.input_blocks.")?;
            let (i, rest) = rest.split_once('.')?;
            rest.starts_with("0.op.").then(|| i.parse::<usize>().ok()).flatten()
        })
        .min();
    // No downsampler at all: a single-block UNet, whose input_blocks after conv_in are all resnets.
    first_op.map(|i| i.saturating_sub(1)).unwrap_or_else(|| {
        tensors
            .iter()
            .filter_map(|(k, _)| {
                k.strip_prefix("model.diffusion_model.input_blocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    })
}

fn missing_component(path: &Path, what: &str, prefix: &str, tensors: &[(String, Vec<usize>)]) -> Error {
    let standalone_vae = tensors
        .iter()
        .any(|(k, _)| k.starts_with("encoder.down.") || k.starts_with("decoder.up."));
    let hint = if standalone_vae {
        "it looks like a standalone VAE, not a full Stable Diffusion model".to_string()
    } else if tensors
        .iter()
        .any(|(k, _)| k.starts_with("down_blocks.") || k.starts_with("text_model."))
    {
        "it looks like one component of a diffusers model; pass the whole diffusers folder (with model_index.json)"
            .to_string()
    } else {
        "it is not a complete Stable Diffusion checkpoint".to_string()
    };
    Error::model(path, format!("no {what} weights (`{prefix}*`) in the file: {hint}"))
}
