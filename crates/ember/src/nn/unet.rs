//! diffusers' `UNet2DConditionModel` as SD 1.x/2.x, SDXL and LCM configure it: predicts the noise ε (or v) of a
//! latent at a timestep, conditioned on text hidden states through cross-attention and on whatever else the model
//! takes ([`UNetInputs`]: SDXL's pooled text and size micro-conditioning, LCM's guidance embedding, an inpainting
//! UNet's extra input channels).

use super::blocks::{Downsample2D, ResnetBlock2D, Transformer2DModel, TransformerShape, Upsample2D};
use super::config::UNetConfig;
use super::layers::{cat_channels, group_norm, Conv, GroupNorm, ImageMemory, Padding};
use super::linear::{linear, linear_no_bias, Linear};
use super::Vars;
use crate::cancel::check_between_layers;
use candle_core::{DType, Module, Result, Tensor};

/// One down or up block: resnets, each optionally followed by a spatial transformer.
#[derive(Debug, Clone)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl Block {
    fn layer(&self, i: usize, x: &Tensor, temb: &Tensor, context: &Tensor, padding: Padding) -> Result<Tensor> {
        let x = self.resnets[i].forward(x, Some(temb), padding)?;
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
        other => {
            candle_core::bail!("unsupported UNet block type {other:?} (SD 1.x, SD 2.x and SDXL layouts are supported)")
        }
    }
}

/// What the UNet is conditioned on besides the latent and the timestep; every tensor's batch matches the latent's.
/// (ControlNet residuals will join here.)
#[derive(Debug, Clone)]
pub struct UNetInputs {
    /// Text hidden states the cross-attention reads, `[B, M, C_ctx]`.
    pub context: Tensor,
    /// SDXL's `text_time` conditioning: the pooled text embedding `[B, P]` and the size micro-conditioning
    /// `[B, 6]` (original height, width, crop top, left, target height, width).
    pub text_time: Option<(Tensor, Tensor)>,
    /// An LCM-distilled UNet's guidance-scale embedding, `[B, time_cond_proj_dim]`.
    pub timestep_cond: Option<Tensor>,
    /// Channels joined to the latent before `conv_in` (an inpainting UNet's mask and masked-image latent).
    pub extra_channels: Option<Tensor>,
    /// How the padded convolutions fill their border (`--seamless`: circular).
    pub padding: Padding,
}

impl UNetInputs {
    /// Text conditioning alone (SD 1.x/2.x).
    pub fn text(context: Tensor) -> Self {
        Self {
            context,
            text_time: None,
            timestep_cond: None,
            extra_channels: None,
            padding: Padding::Zeros,
        }
    }
}

/// SDXL's `add_time_proj` + `add_embedding`: six sinusoidal size embeddings and the pooled text embedding, through
/// two linear layers, added to the time embedding.
#[derive(Debug, Clone)]
struct AddEmbedding {
    time_embed_dim: usize,
    linear_1: Linear,
    linear_2: Linear,
}

/// `UNet2DConditionModel`. Parameter names are diffusers' state-dict keys.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv,
    time_linear_1: Linear,
    time_linear_2: Linear,
    /// LCM: `time_embedding.cond_proj`, the guidance embedding added to the timestep's.
    time_cond_proj: Option<Linear>,
    add_embedding: Option<AddEmbedding>,
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
    pub fn new<'a>(vb: impl Into<Vars<'a>>, cfg: &UNetConfig) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        if n == 0 || cfg.down_block_types.len() != n || cfg.up_block_types.len() != n {
            candle_core::bail!(
                "UNet config: block_out_channels, down_block_types and up_block_types must have the same non-zero length"
            );
        }
        let temb_dim = 4 * boc[0];
        let (groups, eps, ctx) = (cfg.norm_num_groups, cfg.norm_eps, cfg.cross_attention_dim);
        let transformer = |vb: Vars, channels: usize, heads: usize, depth: usize| {
            let shape = TransformerShape {
                channels,
                heads,
                context_dim: ctx,
                groups,
                linear_projection: cfg.use_linear_projection,
                depth,
            };
            Transformer2DModel::new(vb, shape)
        };
        let depth = &cfg.transformer_layers_per_block;

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
                    block.attentions.push(transformer(
                        vb.pp("attentions").pp(j),
                        out_ch,
                        cfg.heads(i),
                        depth.get(i),
                    )?);
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
            transformer(vb_mid.pp("attentions").pp(0), mid_ch, cfg.mid_heads(), depth.last())?,
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
                    block.attentions.push(transformer(
                        vb.pp("attentions").pp(j),
                        out_ch,
                        cfg.heads(level),
                        depth.get(level),
                    )?);
                }
            }
            let upsample = if i + 1 < n {
                Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_ch)?)
            } else {
                None
            };
            up.push((block, upsample));
        }

        let time_cond_proj = cfg
            .time_cond_proj_dim
            .map(|dim| linear_no_bias(dim, boc[0], vb.pp("time_embedding").pp("cond_proj")))
            .transpose()?;
        let add_embedding = match (cfg.has_text_time(), cfg.addition_time_embed_dim, cfg.projection_class_embeddings_input_dim) {
            (false, _, _) => None,
            (true, Some(time_embed_dim), Some(input)) => Some(AddEmbedding {
                time_embed_dim,
                linear_1: linear(input, temb_dim, vb.pp("add_embedding").pp("linear_1"))?,
                linear_2: linear(temb_dim, temb_dim, vb.pp("add_embedding").pp("linear_2"))?,
            }),
            (true, _, _) => candle_core::bail!(
                "UNet config: text_time conditioning needs addition_time_embed_dim and projection_class_embeddings_input_dim"
            ),
        };

        Ok(Self {
            time_cond_proj,
            add_embedding,
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

    /// The network's output for `sample: [B, C, h, w]` at `timestep` (may be fractional), conditioned on `inputs`.
    /// Computes in the weights' dtype and returns `sample`'s dtype.
    pub fn forward(&self, sample: &Tensor, timestep: f64, inputs: &UNetInputs) -> Result<Tensor> {
        let out_dtype = sample.dtype();
        let batch = sample.dim(0)?;
        let x = match &inputs.extra_channels {
            Some(extra) => Tensor::cat(&[sample, &extra.to_dtype(sample.dtype())?], 1)?,
            None => sample.clone(),
        };
        let x = x.to_dtype(self.dtype)?;
        let context = inputs.context.to_dtype(self.dtype)?;

        let t_proj = timestep_embedding(timestep, self.time_proj_dim, self.flip_sin_to_cos, self.freq_shift)?;
        let mut t_proj = t_proj.to_device(sample.device())?.to_dtype(self.dtype)?;
        match (&self.time_cond_proj, &inputs.timestep_cond) {
            (Some(proj), Some(cond)) => t_proj = t_proj.broadcast_add(&proj.forward(&cond.to_dtype(self.dtype)?)?)?,
            (Some(_), None) => candle_core::bail!("this UNet (LCM) needs a guidance embedding (timestep_cond)"),
            (None, _) => {}
        }
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t_proj)?.silu()?)?;
        let temb = match (&self.add_embedding, &inputs.text_time) {
            (Some(add), Some((pooled, time_ids))) => temb.broadcast_add(&add.forward(pooled, time_ids, self)?)?,
            (Some(_), None) => {
                candle_core::bail!("this UNet (SDXL) needs the pooled text embedding and size conditioning")
            }
            (None, _) => temb,
        };
        let temb = temb.broadcast_as((batch, temb.dim(1)?))?.contiguous()?;

        let padding = inputs.padding;
        let mut x = self.conv_in.forward_padded(&x, padding)?;
        let mut skips = vec![x.clone()];
        for (block, downsample) in &self.down {
            for i in 0..block.resnets.len() {
                check_between_layers()?;
                x = block.layer(i, &x, &temb, &context, padding)?;
                skips.push(x.clone());
            }
            if let Some(ds) = downsample {
                x = ds.forward(&x, padding)?;
                skips.push(x.clone());
            }
        }

        check_between_layers()?;
        let (res0, attn, res1) = &self.mid;
        let mid = attn.forward(&res0.forward(&x, Some(&temb), padding)?, &context)?;
        x = res1.forward(&mid, Some(&temb), padding)?;

        for (block, upsample) in &self.up {
            for i in 0..block.resnets.len() {
                check_between_layers()?;
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("UNet: skip connections exhausted".into()))?;
                x = block.layer(i, &cat_channels(&x, &skip)?, &temb, &context, padding)?;
            }
            if let Some(us) = upsample {
                // Upsample to the next skip's size: equals ×2 unless a size was odd on the way down.
                let size = match skips.last() {
                    Some(s) => Some((s.dim(2)?, s.dim(3)?)),
                    None => None,
                };
                x = us.forward(&x, size, padding)?;
            }
        }

        self.conv_out
            .forward_after_norm(&x, &self.conv_norm_out, true, None, padding)?
            .to_dtype(out_dtype)
    }
}

impl AddEmbedding {
    /// `[B, temb]` from `pooled: [B, P]` and `time_ids: [B, 6]`.
    fn forward(&self, pooled: &Tensor, time_ids: &Tensor, unet: &UNet2DConditionModel) -> Result<Tensor> {
        let (batch, n) = time_ids.dims2()?;
        let values = time_ids.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let rows = values
            .iter()
            .map(|&v| timestep_embedding(v, self.time_embed_dim, unet.flip_sin_to_cos, unet.freq_shift))
            .collect::<Result<Vec<_>>>()?;
        let sizes = Tensor::cat(&rows, 0)?.reshape((batch, n * self.time_embed_dim))?;
        let sizes = sizes.to_device(pooled.device())?.to_dtype(unet.dtype)?;
        let input = Tensor::cat(&[&pooled.to_dtype(unet.dtype)?, &sizes], 1)?;
        self.linear_2.forward(&self.linear_1.forward(&input)?.silu()?)
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
