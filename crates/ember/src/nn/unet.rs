//! diffusers' `UNet2DConditionModel` (the SD 1.x/2.x layout): predicts the noise ε of a latent at a
//! timestep, conditioned on CLIP hidden states through cross-attention.

use super::blocks::{
    cat_channels, group_norm, Conv, Downsample2D, GroupNorm, ImageMemory, ResnetBlock2D, Transformer2DModel, Upsample2D,
};
use super::config::UNetConfig;
use super::linear::{linear, Linear};
use crate::cancel::check_between_layers;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// One down or up block: resnets, each optionally followed by a spatial transformer.
#[derive(Debug, Clone)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl Block {
    fn layer(&self, i: usize, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = self.resnets[i].forward(x, Some(temb))?;
        match self.attentions.get(i) {
            Some(attn) => attn.forward(&x, context),
            None => Ok(x),
        }
    }
}

fn has_cross_attention(block_type: &str) -> Result<bool> {
    match block_type {
        "CrossAttnDownBlock2D" | "CrossAttnUpBlock2D" => Ok(true),
        "DownBlock2D" | "UpBlock2D" => Ok(false),
        other => candle_core::bail!("unsupported UNet block type {other:?} (only SD 1.x/2.x layouts are supported)"),
    }
}

/// `UNet2DConditionModel`. Parameter names are diffusers' state-dict keys.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<(Block, Option<Downsample2D>)>,
    mid: (ResnetBlock2D, Transformer2DModel, ResnetBlock2D),
    up: Vec<(Block, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
    time_proj_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    dtype: DType,
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        if n == 0 || cfg.down_block_types.len() != n || cfg.up_block_types.len() != n {
            candle_core::bail!(
                "UNet config: block_out_channels, down_block_types and up_block_types must have the same non-zero length"
            );
        }
        let temb_dim = 4 * boc[0];
        let (groups, eps, ctx) = (cfg.norm_num_groups, cfg.norm_eps, cfg.cross_attention_dim);
        let transformer = |vb: VarBuilder, ch: usize, heads: usize| {
            Transformer2DModel::new(vb, ch, heads, ctx, groups, cfg.use_linear_projection)
        };

        let mut down = Vec::with_capacity(n);
        let vb_down = vb.pp("down_blocks");
        for (i, &out_ch) in boc.iter().enumerate() {
            let vb = vb_down.pp(i);
            let cross = has_cross_attention(&cfg.down_block_types[i])?;
            let mut block = Block {
                resnets: vec![],
                attentions: vec![],
            };
            for j in 0..cfg.layers_per_block {
                let in_ch = if j == 0 { boc[i.saturating_sub(1)] } else { out_ch };
                let vb_r = vb.pp("resnets").pp(j);
                block
                    .resnets
                    .push(ResnetBlock2D::new(vb_r, in_ch, out_ch, Some(temb_dim), groups, eps)?);
                if cross {
                    let heads = cfg.attention_head_dim.get(i);
                    block
                        .attentions
                        .push(transformer(vb.pp("attentions").pp(j), out_ch, heads)?);
                }
            }
            let downsample = if i + 1 < n {
                Some(Downsample2D::new(vb.pp("downsamplers").pp(0), out_ch, false)?)
            } else {
                None
            };
            down.push((block, downsample));
        }

        let vb_mid = vb.pp("mid_block");
        let mid_ch = boc[n - 1];
        let mid = (
            ResnetBlock2D::new(vb_mid.pp("resnets").pp(0), mid_ch, mid_ch, Some(temb_dim), groups, eps)?,
            transformer(vb_mid.pp("attentions").pp(0), mid_ch, cfg.attention_head_dim.get(n - 1))?,
            ResnetBlock2D::new(vb_mid.pp("resnets").pp(1), mid_ch, mid_ch, Some(temb_dim), groups, eps)?,
        );

        // Up blocks mirror the down blocks; each resnet also eats one skip connection.
        let mut up = Vec::with_capacity(n);
        let vb_up = vb.pp("up_blocks");
        for i in 0..n {
            let vb = vb_up.pp(i);
            let level = n - 1 - i;
            let out_ch = boc[level];
            let prev_ch = boc[(level + 1).min(n - 1)];
            let skip_in_ch = boc[level.saturating_sub(1)];
            let cross = has_cross_attention(&cfg.up_block_types[i])?;
            let mut block = Block {
                resnets: vec![],
                attentions: vec![],
            };
            for j in 0..=cfg.layers_per_block {
                let res_ch = if j == cfg.layers_per_block { skip_in_ch } else { out_ch };
                let in_ch = if j == 0 { prev_ch } else { out_ch };
                let vb_r = vb.pp("resnets").pp(j);
                block.resnets.push(ResnetBlock2D::new(
                    vb_r,
                    in_ch + res_ch,
                    out_ch,
                    Some(temb_dim),
                    groups,
                    eps,
                )?);
                if cross {
                    let heads = cfg.attention_head_dim.get(level);
                    block
                        .attentions
                        .push(transformer(vb.pp("attentions").pp(j), out_ch, heads)?);
                }
            }
            let upsample = if i + 1 < n {
                Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_ch)?)
            } else {
                None
            };
            up.push((block, upsample));
        }

        Ok(Self {
            // Activations stay channels-last between these two on the AMX path (`ImageMemory`).
            conv_in: Conv::new(cfg.in_channels, boc[0], 3, 1, None, vb.pp("conv_in"))?
                .with_output_memory(ImageMemory::ChannelsLast),
            time_linear_1: linear(boc[0], temb_dim, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: linear(temb_dim, temb_dim, vb.pp("time_embedding").pp("linear_2"))?,
            down,
            mid,
            up,
            conv_norm_out: group_norm(groups, boc[0], eps, vb.pp("conv_norm_out"))?,
            conv_out: Conv::new(boc[0], cfg.out_channels, 3, 1, None, vb.pp("conv_out"))?
                .with_output_memory(ImageMemory::ChannelsFirst),
            time_proj_dim: boc[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            dtype: vb.dtype(),
        })
    }

    /// ε prediction for `sample: [B, C, h, w]` at `timestep` (may be fractional) with
    /// `encoder_hidden_states: [B, M, C_ctx]`. Computes in the weights' dtype and returns `sample`'s dtype.
    pub fn forward(&self, sample: &Tensor, timestep: f64, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let out_dtype = sample.dtype();
        let batch = sample.dim(0)?;
        let x = sample.to_dtype(self.dtype)?;
        let context = encoder_hidden_states.to_dtype(self.dtype)?;

        let t_proj = timestep_embedding(timestep, self.time_proj_dim, self.flip_sin_to_cos, self.freq_shift)?;
        let t_proj = t_proj.to_device(sample.device())?.to_dtype(self.dtype)?;
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t_proj)?.silu()?)?;
        let temb = temb.broadcast_as((batch, temb.dim(1)?))?.contiguous()?;

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for (block, downsample) in &self.down {
            for i in 0..block.resnets.len() {
                check_between_layers()?;
                x = block.layer(i, &x, &temb, &context)?;
                skips.push(x.clone());
            }
            if let Some(ds) = downsample {
                x = ds.forward(&x)?;
                skips.push(x.clone());
            }
        }

        check_between_layers()?;
        let (res0, attn, res1) = &self.mid;
        x = res1.forward(&attn.forward(&res0.forward(&x, Some(&temb))?, &context)?, Some(&temb))?;

        for (block, upsample) in &self.up {
            for i in 0..block.resnets.len() {
                check_between_layers()?;
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("UNet: skip connections exhausted".into()))?;
                x = block.layer(i, &cat_channels(&x, &skip)?, &temb, &context)?;
            }
            if let Some(us) = upsample {
                // Upsample to the next skip's size: equals ×2 unless a size was odd on the way down.
                let size = match skips.last() {
                    Some(s) => Some((s.dim(2)?, s.dim(3)?)),
                    None => None,
                };
                x = us.forward(&x, size)?;
            }
        }

        self.conv_out
            .forward_after_norm(&x, &self.conv_norm_out, true, None)?
            .to_dtype(out_dtype)
    }
}

/// diffusers' `get_timestep_embedding` for one timestep, `[1, dim]` f32: sinusoids at frequencies
/// `exp(-ln(10000)·i / (dim/2 − freq_shift))`, `[sin, cos]` (or `[cos, sin]` with `flip_sin_to_cos`).
/// Computed in f32 in diffusers' operation order so fractional timesteps match torch.
pub fn timestep_embedding(timestep: f64, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Result<Tensor> {
    let half = dim / 2;
    let t = timestep as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let neg_log_period = -(10000f64.ln()) as f32;
    let args: Vec<f32> = (0..half)
        .map(|i| t * ((neg_log_period * i as f32) / denom).exp())
        .collect();
    let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
    let mut emb = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    // Odd widths get one zero column, as in diffusers.
    emb.resize(dim, 0.0);
    Tensor::from_vec(emb, (1, dim), &candle_core::Device::Cpu)
}
