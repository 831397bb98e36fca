//! Single-file LDM checkpoints (`.safetensors`, or `.ckpt`/`.pt` through ember-pickle): splits the file's
//! tensors into UNet / VAE / text encoder under diffusers' names, recognises model families Ember does
//! not run, and infers the configurations from the shapes. EMA copies and unrelated keys are ignored.

use super::weights::{list_tensors, Entry, Source, Transform, WeightMap};
use super::{infer_config, ldm_keys, Components};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

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

    let (mut unet, mut vae, mut clip) = (WeightMap::new(path), WeightMap::new(path), WeightMap::new(path));
    for (key, shape) in &tensors {
        let (map, name, transform) = if let Some(k) = key.strip_prefix(ldm_keys::UNET_PREFIX) {
            match ldm_keys::unet(k, layers_per_block) {
                Some(n) => (&mut unet, n, Transform::None),
                None => continue,
            }
        } else if let Some(k) = key.strip_prefix(ldm_keys::VAE_PREFIX) {
            match ldm_keys::vae(k, num_up_blocks) {
                Some((n, t)) => (&mut vae, n, t),
                None => continue,
            }
        } else if let Some(k) = key.strip_prefix(ldm_keys::CLIP_PREFIX) {
            (&mut clip, ldm_keys::clip(k), Transform::None)
        } else {
            continue; // EMA weights, schedule buffers, training state
        };
        let shape = match (transform, shape.as_slice()) {
            (Transform::ConvToLinear, [o, i, 1, 1]) => vec![*o, *i],
            _ => shape.clone(),
        };
        map.entries.insert(
            name,
            Entry {
                source: source.clone(),
                key: key.clone(),
                shape,
                transform,
            },
        );
    }
    for (map, what, prefix) in [
        (&unet, "UNet", ldm_keys::UNET_PREFIX),
        (&vae, "VAE", ldm_keys::VAE_PREFIX),
        (&clip, "text encoder", ldm_keys::CLIP_PREFIX),
    ] {
        if map.entries.is_empty() {
            return Err(missing_component(path, what, prefix, &tensors));
        }
    }

    let unet_config = infer_config::unet(&unet)?;
    infer_config::check_unet(path, &unet_config)?;
    Ok(Components {
        clip_config: infer_config::clip(&clip)?,
        vae_config: infer_config::vae(&vae)?,
        unet_config,
        unet,
        vae,
        text_encoder: clip,
        tokenizer_dir: None,
    })
}

/// SD 2.x and SDXL files share most of SD 1.x's names; these keys and shapes tell them apart.
fn refuse_other_families(path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<()> {
    let has = |p: &str| tensors.iter().any(|(k, _)| k.starts_with(p));
    if has("conditioner.embedders.") || has("model.diffusion_model.label_emb.") {
        return Err(infer_config::unsupported_family(path, "Stable Diffusion XL"));
    }
    if has("cond_stage_model.model.") {
        return Err(infer_config::unsupported_family(path, "Stable Diffusion 2.x"));
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
        "it is not a complete Stable Diffusion 1.x checkpoint".to_string()
    };
    Error::model(path, format!("no {what} weights (`{prefix}*`) in the file: {hint}"))
}
