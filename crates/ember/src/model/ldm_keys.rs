//! Names of CompVis/LDM single-file checkpoints (`model.diffusion_model.*`, `first_stage_model.*`,
//! `cond_stage_model.transformer.*`) mapped to diffusers/transformers state-dict names, the ones `nn/` asks for.
//! The mapping follows the layout of LDM's `openaimodel.UNetModel` and `autoencoder.AutoencoderKL`.

use super::weights::Transform;

pub(crate) const UNET_PREFIX: &str = "model.diffusion_model.";
pub(crate) const VAE_PREFIX: &str = "first_stage_model.";
pub(crate) const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// Splits `"12.0.rest"` into `(12, "0.rest")`.
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// LDM ResBlock parameter names → diffusers `ResnetBlock2D`.
fn resnet(rest: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    MAP.iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// Maps a UNet key (without `model.diffusion_model.`); `None` for keys diffusers has no place for.
/// `layers_per_block` fixes how LDM's flat `input_blocks`/`output_blocks` lists split into blocks.
pub(crate) fn unet(key: &str, layers_per_block: usize) -> Option<String> {
    let per = layers_per_block + 1;
    for (from, to) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        // LCM-distilled UNets' guidance embedding.
        ("time_embed.cond_proj.", "time_embedding.cond_proj."),
        // SDXL's `text_time` added conditioning.
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ] {
        if let Some(r) = key.strip_prefix(from) {
            return Some(format!("{to}{r}"));
        }
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (i, rest) = index(rest)?;
        let (j, rest) = index(rest)?;
        let (block, layer) = ((i.checked_sub(1)?) / per, (i - 1) % per);
        return match j {
            0 if layer < layers_per_block => Some(format!("down_blocks.{block}.resnets.{layer}.{}", resnet(rest)?)),
            0 => Some(format!(
                "down_blocks.{block}.downsamplers.0.conv.{}",
                rest.strip_prefix("op.")?
            )),
            1 => Some(format!("down_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        return match index(rest)? {
            (0, r) => Some(format!("mid_block.resnets.0.{}", resnet(r)?)),
            (1, r) => Some(format!("mid_block.attentions.0.{r}")),
            (2, r) => Some(format!("mid_block.resnets.1.{}", resnet(r)?)),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (i, rest) = index(rest)?;
        let (j, rest) = index(rest)?;
        let (block, layer) = (i / per, i % per);
        // The upsampler is the module after the resnet, or after the attention when the block has one.
        if let (1 | 2, Some(r)) = (j, rest.strip_prefix("conv.")) {
            return Some(format!("up_blocks.{block}.upsamplers.0.conv.{r}"));
        }
        return match j {
            0 => Some(format!("up_blocks.{block}.resnets.{layer}.{}", resnet(rest)?)),
            1 => Some(format!("up_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    None
}

/// Maps a VAE key (without `first_stage_model.`); `num_up_blocks` is needed because LDM numbers the
/// decoder's blocks from the lowest resolution up and diffusers the other way round.
pub(crate) fn vae(key: &str, num_up_blocks: usize) -> Option<(String, Transform)> {
    let plain = |s: String| Some((s, Transform::None));
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return plain(key.to_string());
    }
    let (part, rest) = key.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let vae_resnet = |r: &str| match r.strip_prefix("nin_shortcut.") {
        Some(r) => format!("conv_shortcut.{r}"),
        None => r.to_string(),
    };
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return plain(format!("{part}.{rest}"));
    }
    if let Some(r) = rest.strip_prefix("norm_out.") {
        return plain(format!("{part}.conv_norm_out.{r}"));
    }
    if let Some(r) = rest.strip_prefix("mid.block_1.") {
        return plain(format!("{part}.mid_block.resnets.0.{}", vae_resnet(r)));
    }
    if let Some(r) = rest.strip_prefix("mid.block_2.") {
        return plain(format!("{part}.mid_block.resnets.1.{}", vae_resnet(r)));
    }
    if let Some(r) = rest.strip_prefix("mid.attn_1.") {
        let (name, param) = r.split_once('.')?;
        let to = match name {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        let t = if name != "norm" && param == "weight" {
            Transform::ConvToLinear
        } else {
            Transform::None
        };
        return Some((format!("{part}.mid_block.attentions.0.{to}.{param}"), t));
    }
    let (kind, rest) = rest.split_once('.')?;
    let (i, rest) = index(rest)?;
    let (diff_kind, block) = match (part, kind) {
        ("encoder", "down") => ("down_blocks", i),
        ("decoder", "up") => ("up_blocks", num_up_blocks.checked_sub(i + 1)?),
        _ => return None,
    };
    if let Some(r) = rest.strip_prefix("block.") {
        let (j, r) = index(r)?;
        return plain(format!("{part}.{diff_kind}.{block}.resnets.{j}.{}", vae_resnet(r)));
    }
    let sampler = if diff_kind == "down_blocks" {
        "downsample.conv."
    } else {
        "upsample.conv."
    };
    let r = rest.strip_prefix(sampler)?;
    let name = if diff_kind == "down_blocks" {
        "downsamplers"
    } else {
        "upsamplers"
    };
    plain(format!("{part}.{diff_kind}.{block}.{name}.0.conv.{r}"))
}

/// Maps a text-encoder key (without `cond_stage_model.transformer.`): older files omit `text_model.`.
pub(crate) fn clip(key: &str) -> String {
    if key.starts_with("text_model.") {
        key.to_string()
    } else {
        format!("text_model.{key}")
    }
}

/// Maps an OpenCLIP text-tower key (SD 2.x's `cond_stage_model.model.*`, SDXL's `conditioner.embedders.1.model.*`,
/// without that prefix) to transformers' `CLIPTextModel(WithProjection)` names, with the transform that makes the
/// stored tensor into each: `in_proj` holds q, k and v stacked (three names from one key), `text_projection` is
/// stored transposed. `width` is the hidden size. Keys with no place (`logit_scale`, the attention mask buffer) map
/// to nothing.
pub(crate) fn open_clip(key: &str, width: usize) -> Vec<(String, Transform)> {
    let one = |name: String, t: Transform| vec![(name, t)];
    let plain = |name: String| one(name, Transform::None);
    match key {
        "token_embedding.weight" => return plain("text_model.embeddings.token_embedding.weight".into()),
        "positional_embedding" => return plain("text_model.embeddings.position_embedding.weight".into()),
        "text_projection" => return one("text_projection.weight".into(), Transform::Transpose),
        _ => {}
    }
    if let Some(r) = key.strip_prefix("ln_final.") {
        return plain(format!("text_model.final_layer_norm.{r}"));
    }
    let Some(rest) = key.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((i, rest)) = index(rest) else {
        return Vec::new();
    };
    let layer = format!("text_model.encoder.layers.{i}");
    if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
        return ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(n, proj)| {
                let rows = Transform::Rows {
                    start: n * width,
                    len: width,
                };
                (format!("{layer}.self_attn.{proj}.{kind}"), rows)
            })
            .collect();
    }
    const MAP: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    MAP.iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| plain(format!("{layer}.{to}{r}"))))
        .unwrap_or_default()
}

/// Old diffusers VAE attention names (`query`, `key`, `value`, `proj_attn`) → current ones.
pub(crate) fn old_diffusers_vae(key: &str) -> Option<String> {
    const MAP: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    if !key.contains(".attentions.") {
        return None;
    }
    MAP.iter()
        .find(|(from, _)| key.contains(from))
        .map(|(from, to)| key.replacen(from, to, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected names are those of diffusers' own converter (convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint)
    // for the SD 1.5 layout (layers_per_block 2, 4 blocks).
    #[test]
    fn unet_names() {
        let cases = [
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.2.0.in_layers.2.weight",
                "down_blocks.0.resnets.1.conv1.weight",
            ),
            (
                "input_blocks.4.1.proj_in.weight",
                "down_blocks.1.attentions.0.proj_in.weight",
            ),
            ("input_blocks.6.0.op.weight", "down_blocks.1.downsamplers.0.conv.weight"),
            (
                "input_blocks.7.0.skip_connection.bias",
                "down_blocks.2.resnets.0.conv_shortcut.bias",
            ),
            (
                "middle_block.2.emb_layers.1.weight",
                "mid_block.resnets.1.time_emb_proj.weight",
            ),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            (
                "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
                "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(unet(ldm, 2).as_deref(), Some(diffusers), "{ldm}");
        }
        // SDXL's added conditioning.
        assert_eq!(
            unet("label_emb.0.0.weight", 2).as_deref(),
            Some("add_embedding.linear_1.weight")
        );
        assert_eq!(
            unet("label_emb.0.2.bias", 2).as_deref(),
            Some("add_embedding.linear_2.bias")
        );
        assert_eq!(unet("label_emb.1.weight", 2), None);
        // An LCM-distilled UNet's guidance embedding.
        assert_eq!(
            unet("time_embed.cond_proj.weight", 2).as_deref(),
            Some("time_embedding.cond_proj.weight")
        );
    }

    #[test]
    fn vae_names() {
        let cases = [
            (
                "decoder.up.3.block.0.nin_shortcut.weight",
                "decoder.up_blocks.0.resnets.0.conv_shortcut.weight",
                false,
            ),
            (
                "decoder.up.1.upsample.conv.bias",
                "decoder.up_blocks.2.upsamplers.0.conv.bias",
                false,
            ),
            (
                "encoder.down.0.downsample.conv.weight",
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
                false,
            ),
            (
                "encoder.mid.attn_1.proj_out.weight",
                "encoder.mid_block.attentions.0.to_out.0.weight",
                true,
            ),
            (
                "encoder.mid.attn_1.q.bias",
                "encoder.mid_block.attentions.0.to_q.bias",
                false,
            ),
            (
                "decoder.mid.attn_1.norm.weight",
                "decoder.mid_block.attentions.0.group_norm.weight",
                false,
            ),
            ("decoder.norm_out.bias", "decoder.conv_norm_out.bias", false),
            ("post_quant_conv.weight", "post_quant_conv.weight", false),
        ];
        for (ldm, diffusers, reshape) in cases {
            let t = if reshape {
                Transform::ConvToLinear
            } else {
                Transform::None
            };
            assert_eq!(vae(ldm, 4), Some((diffusers.to_string(), t)), "{ldm}");
        }
        assert_eq!(vae("decoder.up.4.block.0.conv1.weight", 4), None);
        assert_eq!(
            old_diffusers_vae("decoder.mid_block.attentions.0.proj_attn.bias").as_deref(),
            Some("decoder.mid_block.attentions.0.to_out.0.bias")
        );
        assert_eq!(
            clip("encoder.layers.0.mlp.fc1.weight"),
            "text_model.encoder.layers.0.mlp.fc1.weight"
        );
    }
}
