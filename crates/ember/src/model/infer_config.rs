//! Network configurations inferred from tensor shapes (for single files, which carry no config.json). What the
//! shapes cannot tell (attention heads, the prediction type) is decided with the family in `family.rs`.

use super::weights::WeightMap;
use crate::nn::config::{ClipTextConfig, PerBlock, UNetConfig, VaeConfig};
use crate::{Error, Result};
use std::path::Path;

fn dim(w: &WeightMap, name: &str, axis: usize) -> Result<usize> {
    let shape = w.require(name)?;
    shape.get(axis).copied().ok_or_else(|| {
        Error::model(
            &w.path,
            format!("the tensor `{name}` has shape {shape:?}, which no Stable Diffusion model has"),
        )
    })
}

/// Counts `prefix{i}suffix` tensors for i = 0, 1, ...
fn count(w: &WeightMap, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| w.shape(&format!("{prefix}{i}{suffix}")).is_some())
        .count()
}

pub(crate) fn unet(w: &WeightMap) -> Result<UNetConfig> {
    let blocks = count(w, "down_blocks.", ".resnets.0.conv2.weight");
    if blocks == 0 {
        w.require("down_blocks.0.resnets.0.conv2.weight")?;
    }
    let block_out_channels = (0..blocks)
        .map(|b| dim(w, &format!("down_blocks.{b}.resnets.0.conv2.weight"), 0))
        .collect::<Result<Vec<_>>>()?;
    let has_attn = |kind: &str, b: usize| w.shape(&format!("{kind}.{b}.attentions.0.norm.weight")).is_some();
    let down_block_types = (0..blocks)
        .map(|b| {
            if has_attn("down_blocks", b) {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
            .to_string()
        })
        .collect();
    let up_block_types = (0..blocks)
        .map(|b| {
            if has_attn("up_blocks", b) {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
            .to_string()
        })
        .collect();
    let attn = w
        .entries
        .keys()
        .filter(|k| k.ends_with(".attn2.to_k.weight"))
        .min()
        .cloned()
        .ok_or_else(|| {
            Error::model(
                &w.path,
                "the UNet has no cross-attention layers; it is not a text-to-image model",
            )
        })?;
    let proj_in = w
        .entries
        .keys()
        .find(|k| k.ends_with(".proj_in.weight"))
        .and_then(|k| w.shape(k))
        .map(|s| s.len());
    // Transformer blocks per spatial transformer, per down block (1 where a block has none, as diffusers writes it).
    let transformer_layers_per_block = (0..blocks)
        .map(|b| {
            count(
                w,
                &format!("down_blocks.{b}.attentions.0.transformer_blocks."),
                ".norm1.weight",
            )
            .max(1)
        })
        .collect::<Vec<_>>();
    let add_embedding = w.shape("add_embedding.linear_1.weight").map(|s| s.to_vec());
    Ok(UNetConfig {
        transformer_layers_per_block: match transformer_layers_per_block.windows(2).all(|p| p[0] == p[1]) {
            true => PerBlock::One(transformer_layers_per_block.first().copied().unwrap_or(1)),
            false => PerBlock::Each(transformer_layers_per_block),
        },
        // The pooled width is the second text encoder's, so `single_file` completes `addition_time_embed_dim`.
        addition_embed_type: add_embedding.as_ref().map(|_| "text_time".to_string()),
        projection_class_embeddings_input_dim: add_embedding.as_ref().and_then(|s| s.get(1).copied()),
        time_cond_proj_dim: w
            .shape("time_embedding.cond_proj.weight")
            .and_then(|s| s.get(1).copied()),
        in_channels: dim(w, "conv_in.weight", 1)?,
        out_channels: dim(w, "conv_out.weight", 0)?,
        block_out_channels,
        down_block_types,
        up_block_types,
        layers_per_block: count(w, "down_blocks.0.resnets.", ".conv1.weight"),
        // The shapes cannot tell heads from head size: `family::describe` sets them.
        attention_head_dim: PerBlock::One(8),
        cross_attention_dim: dim(w, &attn, 1)?,
        use_linear_projection: proj_in == Some(2),
        ..UNetConfig::default()
    })
}

pub(crate) fn vae(w: &WeightMap) -> Result<VaeConfig> {
    let blocks = count(w, "encoder.down_blocks.", ".resnets.0.conv2.weight");
    if blocks == 0 {
        w.require("encoder.down_blocks.0.resnets.0.conv2.weight")?;
    }
    Ok(VaeConfig {
        in_channels: dim(w, "encoder.conv_in.weight", 1)?,
        out_channels: dim(w, "decoder.conv_out.weight", 0)?,
        latent_channels: dim(w, "post_quant_conv.weight", 0)?,
        block_out_channels: (0..blocks)
            .map(|b| dim(w, &format!("encoder.down_blocks.{b}.resnets.0.conv2.weight"), 0))
            .collect::<Result<_>>()?,
        layers_per_block: count(w, "encoder.down_blocks.0.resnets.", ".conv1.weight"),
        ..VaeConfig::default()
    })
}

pub(crate) fn clip(w: &WeightMap) -> Result<ClipTextConfig> {
    let hidden = dim(w, "text_model.embeddings.token_embedding.weight", 1)?;
    // OpenAI CLIP uses 64-wide heads; toy models narrower than one head use 8 heads.
    let heads = if hidden >= 64 { hidden / 64 } else { (hidden / 8).max(1) };
    Ok(ClipTextConfig {
        vocab_size: dim(w, "text_model.embeddings.token_embedding.weight", 0)?,
        hidden_size: hidden,
        intermediate_size: dim(w, "text_model.encoder.layers.0.mlp.fc1.weight", 0)?,
        num_hidden_layers: count(w, "text_model.encoder.layers.", ".mlp.fc1.weight"),
        num_attention_heads: heads,
        max_position_embeddings: dim(w, "text_model.embeddings.position_embedding.weight", 0)?,
        ..ClipTextConfig::default()
    })
}

/// The refusal for a recognised model family Ember does not run.
pub(crate) fn unsupported_family(path: &Path, family: &str) -> Error {
    Error::model(
        path,
        format!(
            "{} is a {family} checkpoint; Ember runs Stable Diffusion 1.x, 2.x and SDXL models (and their Turbo and \
             LCM variants)",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        ),
    )
}
