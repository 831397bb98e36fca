//! diffusers' `AutoencoderKL`: the encoder maps RGB in [-1, 1] to the latent posterior (we use its mean),
//! the decoder maps an (unscaled) latent back to RGB. Scaling by `VaeConfig::scaling_factor` is the
//! caller's business.

use super::attention::Attention;
use super::blocks::{group_norm, Conv, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D};
use super::config::VaeConfig;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The VAE's group norms and resnets use eps 1e-6 (diffusers' Encoder/Decoder default).
const EPS: f64 = 1e-6;

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Conv> {
    Conv::new(cin, cout, k, 1, None, vb)
}

/// `UNetMidBlock2D` without time embedding: resnet, single-head spatial self-attention, resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    resnet0: ResnetBlock2D,
    group_norm: GroupNorm,
    attention: Attention,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, ch: usize, groups: usize) -> Result<Self> {
        let vb_attn = vb.pp("attentions").pp(0);
        Ok(Self {
            resnet0: ResnetBlock2D::new(vb.pp("resnets").pp(0), ch, ch, None, groups, EPS)?,
            group_norm: group_norm(groups, ch, EPS, vb_attn.pp("group_norm"))?,
            attention: Attention::new(vb_attn, ch, ch, 1, true)?,
            resnet1: ResnetBlock2D::new(vb.pp("resnets").pp(1), ch, ch, None, groups, EPS)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.resnet0.forward(x, None)?;
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(&x)?
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let attended = self.attention.forward(&tokens, None)?;
        let attended = attended.transpose(1, 2)?.reshape((b, c, h, w))?;
        self.resnet1.forward(&(attended + x)?, None)
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv,
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let groups = cfg.norm_num_groups;
        let mut down = Vec::with_capacity(n);
        for (i, &out_ch) in boc.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let mut resnets = Vec::with_capacity(cfg.layers_per_block);
            for j in 0..cfg.layers_per_block {
                let in_ch = if j == 0 { boc[i.saturating_sub(1)] } else { out_ch };
                resnets.push(ResnetBlock2D::new(
                    vb.pp("resnets").pp(j),
                    in_ch,
                    out_ch,
                    None,
                    groups,
                    EPS,
                )?);
            }
            let ds = if i + 1 < n {
                Some(Downsample2D::new(vb.pp("downsamplers").pp(0), out_ch, true)?)
            } else {
                None
            };
            down.push((resnets, ds));
        }
        Ok(Self {
            conv_in: conv(cfg.in_channels, boc[0], 3, vb.pp("conv_in"))?,
            down,
            mid: MidBlock::new(vb.pp("mid_block"), boc[n - 1], groups)?,
            conv_norm_out: group_norm(groups, boc[n - 1], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(boc[n - 1], 2 * cfg.latent_channels, 3, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for (resnets, ds) in &self.down {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(ds) = ds {
                x = ds.forward(&x)?;
            }
        }
        let x = self.mid.forward(&x)?;
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&x)?)
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv,
    mid: MidBlock,
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let groups = cfg.norm_num_groups;
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("up_blocks").pp(i);
            let out_ch = boc[n - 1 - i];
            let prev_ch = boc[n - i.max(1)];
            let mut resnets = Vec::with_capacity(cfg.layers_per_block + 1);
            for j in 0..=cfg.layers_per_block {
                let in_ch = if j == 0 { prev_ch } else { out_ch };
                resnets.push(ResnetBlock2D::new(
                    vb.pp("resnets").pp(j),
                    in_ch,
                    out_ch,
                    None,
                    groups,
                    EPS,
                )?);
            }
            let us = if i + 1 < n {
                Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_ch)?)
            } else {
                None
            };
            up.push((resnets, us));
        }
        Ok(Self {
            conv_in: conv(cfg.latent_channels, boc[n - 1], 3, vb.pp("conv_in"))?,
            mid: MidBlock::new(vb.pp("mid_block"), boc[n - 1], groups)?,
            up,
            conv_norm_out: group_norm(groups, boc[0], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(boc[0], cfg.out_channels, 3, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut x = self.mid.forward(&self.conv_in.forward(z)?)?;
        for (resnets, us) in &self.up {
            for r in resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(us) = us {
                x = us.forward(&x, None)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&x)?)
    }
}

/// `AutoencoderKL`. Parameter names are diffusers' state-dict keys (current attention names:
/// `to_q`/`to_k`/`to_v`/`to_out.0`/`group_norm`).
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
    latent_channels: usize,
    dtype: DType,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        if cfg.block_out_channels.is_empty() {
            candle_core::bail!("VAE config: block_out_channels is empty");
        }
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv: conv(2 * l, 2 * l, 1, vb.pp("quant_conv"))?,
            post_quant_conv: conv(l, l, 1, vb.pp("post_quant_conv"))?,
            latent_channels: l,
            dtype: vb.dtype(),
        })
    }

    /// Posterior mean (not scaled) of `x: [B, 3, H, W]` in [-1, 1]; `[B, L, H/8, W/8]` in `x`'s dtype.
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        let moments = self
            .quant_conv
            .forward(&self.encoder.forward(&x.to_dtype(self.dtype)?)?)?;
        moments.narrow(1, 0, self.latent_channels)?.to_dtype(x.dtype())
    }

    /// RGB `[B, 3, 8h, 8w]` (about [-1, 1], unclamped) of the unscaled latent `z`, in `z`'s dtype.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z_in = self.post_quant_conv.forward(&z.to_dtype(self.dtype)?)?;
        self.decoder.forward(&z_in)?.to_dtype(z.dtype())
    }
}
