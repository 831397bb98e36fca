//! Blocks the UNet and the VAE are made of, after diffusers' `resnet.py`, `downsampling.py`, `upsampling.py` and
//! `transformers/transformer_2d.py`: residual blocks, resampling, and the spatial transformer (self-attention,
//! cross-attention, GEGLU feed-forward). The layers under them are in `layers.rs`.

use super::attention::Attention;
use super::layers::{
    group_norm, image_to_tokens, is_channels_last, layer_norm, upsample_nearest_2x, Conv, GroupNorm, LayerNorm, Padding,
};
use super::linear::{linear, Linear};
use super::Vars;
use crate::cancel::check_between_layers;
use crate::cpu::geglu::Geglu;
use candle_core::{DType, Module, Result, Tensor, D};

fn conv3x3(cin: usize, cout: usize, stride: usize, padding: usize, vb: Vars) -> Result<Conv> {
    Conv::new(cin, cout, 3, stride, Some(padding), vb)
}

fn conv1x1(cin: usize, cout: usize, vb: Vars) -> Result<Conv> {
    Conv::new(cin, cout, 1, 1, None, vb)
}

/// diffusers' `ResnetBlock2D` (default "default" time-embedding norm, output scale 1).
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl ResnetBlock2D {
    /// `temb_channels`: None for the VAE's blocks, which take no time embedding.
    pub fn new<'a>(
        vb: impl Into<Vars<'a>>,
        cin: usize,
        cout: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: temb_channels
                .map(|t| linear(t, cout, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv1x1(cin, cout, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    /// [`forward`](Self::forward) taking `x`, so that a block with a shortcut convolution frees it before `conv2`
    /// (the VAE decoder's largest blocks: 268 MB at 512×512 that no longer coexists with `conv2`'s tensors).
    pub fn forward_owned(&self, x: Tensor, temb: Option<&Tensor>, padding: Padding) -> Result<Tensor> {
        let Some(shortcut) = &self.conv_shortcut else {
            return self.forward(&x, temb, padding);
        };
        let h = self.first_half(&x, temb, padding)?;
        let skip = shortcut.forward(&x)?;
        drop(x);
        self.conv2
            .forward_after_norm(&h, &self.norm2, true, Some(&skip), padding)
    }

    /// `temb: [B, T]` (already the UNet's time embedding; SiLU is applied here as in diffusers). The 3×3
    /// convolutions fill their border as `padding` says.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>, padding: Padding) -> Result<Tensor> {
        let h = self.first_half(x, temb, padding)?;
        match &self.conv_shortcut {
            Some(sc) => self
                .conv2
                .forward_after_norm(&h, &self.norm2, true, Some(&sc.forward(x)?), padding),
            None => self.conv2.forward_after_norm(&h, &self.norm2, true, Some(x), padding),
        }
    }

    /// `conv1(silu(norm1(x)))` plus the projected time embedding.
    fn first_half(&self, x: &Tensor, temb: Option<&Tensor>, padding: Padding) -> Result<Tensor> {
        match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj.forward(&temb.silu()?)?;
                self.conv1
                    .forward_after_norm_plus_embedding(x, &self.norm1, true, &t, padding)
            }
            _ => self.conv1.forward_after_norm(x, &self.norm1, true, None, padding),
        }
    }
}

/// diffusers' `Downsample2D` with a convolution: 3×3, stride 2. The UNet pads 1 on every side; the VAE
/// pads (0, 1, 0, 1) explicitly and convolves unpadded.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv,
    asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn new<'a>(vb: impl Into<Vars<'a>>, channels: usize, asymmetric_pad: bool) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        let padding = if asymmetric_pad { 0 } else { 1 };
        Ok(Self {
            conv: conv3x3(channels, channels, 2, padding, vb.pp("conv"))?,
            asymmetric_pad,
        })
    }

    /// The VAE's explicit zero padding stays under `--seamless` (as in InvokeAI); the UNet's padded convolution
    /// follows `padding`.
    pub fn forward(&self, x: &Tensor, padding: Padding) -> Result<Tensor> {
        if self.asymmetric_pad && is_channels_last(x) {
            // Padded as pixels, so the padded image stays channels-last.
            let pixels = x
                .permute((0, 2, 3, 1))?
                .pad_with_zeros(2, 0, 1)?
                .pad_with_zeros(1, 0, 1)?;
            self.conv.forward(&pixels.permute((0, 3, 1, 2))?)
        } else if self.asymmetric_pad {
            let x = x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward_padded(x, padding)
        }
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour ×2 (or to `size`, the skip connection's
/// size, when the latent is not divisible by the UNet's total downsampling), then 3×3.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv,
}

impl Upsample2D {
    pub fn new<'a>(vb: impl Into<Vars<'a>>, channels: usize) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        Ok(Self {
            conv: conv3x3(channels, channels, 1, 1, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>, padding: Padding) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        if (th, tw) == (2 * h, 2 * w) {
            return self.conv.forward_upsampled(x, padding);
        }
        self.conv.forward_padded(&upsample_nearest_2x(x, (th, tw))?, padding)
    }
}

/// GEGLU feed-forward: `net.0.proj` produces value and gate halves, `value · gelu(gate)`, then `net.2`.
#[derive(Debug, Clone)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(vb: Vars, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: linear(dim, 2 * inner, vb.pp("net").pp("0").pp("proj"))?,
            proj_out: linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }

    /// `self(x) + residual`, the residual added by the output projection.
    fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(gated) = self.proj_in.forward_geglu(x)? {
            return self.proj_out.forward_plus(&gated, residual);
        }
        let h = self.proj_in.forward(x)?;
        // diffusers uses the exact (erf) GELU here, not the tanh approximation. On the CPU one fused pass
        // (`cpu::geglu`, in f32), else candle's ops.
        let gated = if h.device().is_cpu() && h.dtype() != DType::F64 && crate::cpu::geglu::available() {
            h.to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(&Geglu)?
                .to_dtype(h.dtype())?
        } else {
            let half = h.dim(D::Minus1)? / 2;
            (h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.gelu_erf()?)?
        };
        self.proj_out.forward_plus(&gated, residual)
    }
}

/// diffusers' `BasicTransformerBlock`: pre-norm self-attention, cross-attention, feed-forward.
#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: Vars, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, false)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, false)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        // On bf16 tiles every norm feeds linear layers alone, which round their input to bf16: normed as bf16.
        let tiles = self.attn1.on_bf16_tiles();
        // Self-attention over a large image's tokens is the longest single layer (quadratic in them): a cancel is
        // looked at around it too.
        check_between_layers()?;
        let x = self.attn1.forward_plus(&self.norm1.forward_for(x, tiles)?, None, x)?;
        check_between_layers()?;
        let x = self
            .attn2
            .forward_plus(&self.norm2.forward_for(&x, tiles)?, Some(context), &x)?;
        self.ff.forward_plus(&self.norm3.forward_for(&x, tiles)?, &x)
    }
}

/// `proj_in`/`proj_out`: 1×1 convolutions (SD 1.x) or linear layers (SD 2.x).
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv),
    Linear(Linear),
}

impl Projection {
    fn new(vb: Vars, cin: usize, cout: usize, use_linear: bool) -> Result<Self> {
        Ok(if use_linear {
            Projection::Linear(linear(cin, cout, vb)?)
        } else {
            Projection::Conv(conv1x1(cin, cout, vb)?)
        })
    }
}

/// The shape of a spatial transformer, as a UNet block's configuration gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerShape {
    pub channels: usize,
    pub heads: usize,
    /// Width of the context the cross-attention reads (the text encoders' hidden size).
    pub context_dim: usize,
    pub groups: usize,
    /// Linear `proj_in`/`proj_out` (SD 2.x, SDXL) instead of 1×1 convolutions (SD 1.x).
    pub linear_projection: bool,
    /// `BasicTransformerBlock`s in a row (diffusers' `transformer_layers_per_block`: 1 for SD 1.x/2.x, up to 10 in
    /// SDXL's deepest blocks).
    pub depth: usize,
}

/// diffusers' `Transformer2DModel` for continuous inputs: group norm, `proj_in`, `depth` transformer blocks,
/// `proj_out`, plus the input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    pub fn new<'a>(vb: impl Into<Vars<'a>>, shape: TransformerShape) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        let TransformerShape {
            channels,
            heads,
            context_dim,
            groups,
            linear_projection,
            depth,
        } = shape;
        if depth == 0 {
            candle_core::bail!("a spatial transformer needs at least one transformer block");
        }
        let blocks = (0..depth)
            .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), channels, heads, context_dim))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(vb.pp("proj_in"), channels, channels, linear_projection)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), channels, channels, linear_projection)?,
        })
    }

    /// `x: [B, C, H, W]`, `context: [B, M, C_ctx]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // The tokens as a channels-last image (a view: a reshape of the transposed tokens would copy them).
        let to_image = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        // With 1×1 convolutions, on the AMX path the norm is applied as `proj_in` reads its input and the residual
        // added as `proj_out` writes its output (neither the normed tensor nor a separate add pass).
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => conv.forward_after_norm_to_tokens(x, &self.norm, false)?,
            Projection::Linear(lin) => lin.forward(&image_to_tokens(&self.norm.forward(x)?)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        match &self.proj_out {
            Projection::Conv(conv) => conv.forward_plus(&to_image(&tokens)?, x),
            Projection::Linear(lin) => to_image(&lin.forward_plus(&tokens, &image_to_tokens(x)?)?),
        }
    }
}
