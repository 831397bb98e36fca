//! The layers the networks are built of, each with its CPU backends behind it: convolutions (bf16 tiles on AMX,
//! Ember's f32 kernel, candle), group and layer normalisation, `--seamless` circular padding, and the tensor
//! layout helpers (channels-last images, tokens). Blocks made of these live in `blocks.rs`.

use super::Vars;
use crate::cpu::conv::Conv2dStride1;
use crate::cpu::conv_bf16::{Conv2dBf16, ConvOutput, GroupNormParams, PackedConv};
use crate::cpu::group_norm::FusedGroupNorm;
use crate::cpu::layer_norm::FusedLayerNorm;
use crate::op_stats::{self, OpClass};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig};
use std::sync::Arc;

/// How a padded convolution fills its border: with zeros, or wrapping around (`--seamless`: circular padding in
/// every padded convolution of the UNet and the VAE, as InvokeAI 2.x's `configure_model_padding`; unpadded ones are
/// unaffected, so the VAE's explicitly zero-padded downsampling stays as it is). A run passes it down every forward
/// call: one model shared by several front-ends runs tiling and normal requests side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    Zeros,
    Circular,
}

impl Padding {
    /// `--seamless` on or off.
    pub fn seamless(on: bool) -> Self {
        if on {
            Padding::Circular
        } else {
            Padding::Zeros
        }
    }
}

/// torch's `F.pad(x, (p, p, p, p), mode="circular")` on `[B, C, H, W]`: each side gets the opposite edge's `p`
/// rows/columns (corners from the opposite corner).
pub fn pad_circular(x: &Tensor, p: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if p > h || p > w {
        candle_core::bail!("circular padding of {p} cannot wrap a {h}×{w} feature map");
    }
    let wrap = |x: &Tensor, dim: usize, n: usize| -> Result<Tensor> {
        Tensor::cat(&[&x.narrow(dim, n - p, p)?, x, &x.narrow(dim, 0, p)?], dim)
    };
    wrap(&wrap(x, 3, w)?, 2, h)
}

/// A 2-D convolution (PyTorch weight layout `[out, in, k, k]`, with bias). On the CPU they run Ember's kernels: bf16
/// tiles on AMX when the model was built for bf16 there (`nn::Precision`; the weights are packed once, at load; every
/// stride), else the f32 tap-GEMM kernel (`cpu::conv`) for stride 1 whatever the compute dtype; the f32 path's
/// downsamplers run candle's convolution, which has no bf16 kernel either. Half-precision weights are widened per call on the
/// f32 path: keeping f32 copies of every weight would add ~1.5 GB to an SD1.5 model's footprint, widening costs ~2%
/// of a step.
#[derive(Debug, Clone)]
pub struct Conv {
    weights: ConvWeights,
    cfg: Conv2dConfig,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    output_memory: ImageMemory,
}

/// How the AMX path lays out a convolution's output image in memory. A channels-last image is the `[B, C, H, W]`
/// view of `[B, H, W, C]` memory: its convolutions read each pixel's channels as one row of their A operand and write
/// their tile blocks' rows as they are, where a channels-first image costs a transpose each way. The UNet and the
/// VAE keep their activations channels-last from `conv_in` to `conv_out`; every other op sees the same logical
/// tensor (candle's ops take any strides; Ember's group norm, concatenation and tokens views read such memory as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMemory {
    /// Channels-last when the input is.
    AsInput,
    ChannelsLast,
    ChannelsFirst,
}

#[derive(Debug, Clone)]
enum ConvWeights {
    Candle(Conv2d),
    PackedBf16(Arc<PackedConv>),
}

impl Conv {
    /// `k`×`k` kernel, zero padding `k / 2` on every side (unless `padding` says otherwise), `stride`.
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, padding: Option<usize>, vb: Vars) -> Result<Self> {
        Self::build(cin, cout, k, stride, padding, true, vb)
    }

    /// [`Conv::new`] for a layer stored without a bias (`nn.Conv2d(…, bias=False)`): it runs the same kernels, with
    /// a zero bias.
    pub fn new_without_bias(cin: usize, cout: usize, k: usize, stride: usize, vb: Vars) -> Result<Self> {
        Self::build(cin, cout, k, stride, None, false, vb)
    }

    fn build(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: Option<usize>,
        has_bias: bool,
        vb: Vars,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: padding.unwrap_or(k / 2),
            stride,
            ..Default::default()
        };
        let weights = if vb.packs_bf16() {
            let bias = match has_bias {
                true => vb.get(cout, "bias")?.to_vec1::<f32>()?,
                false => vec![0.0; cout],
            };
            let packed = vb.packed(&[cout, cin, k, k], |weight| {
                PackedConv::new(weight, &bias, cout, cin, k)
            })?;
            ConvWeights::PackedBf16(packed)
        } else if has_bias {
            ConvWeights::Candle(conv2d(cin, cout, k, cfg, vb.vb())?)
        } else {
            let weight = vb.get((cout, cin, k, k), "weight")?;
            let bias = Tensor::zeros(cout, weight.dtype(), weight.device())?;
            ConvWeights::Candle(Conv2d::new(weight, Some(bias), cfg))
        };
        Ok(Self {
            weights,
            cfg,
            in_channels: cin,
            out_channels: cout,
            kernel: k,
            output_memory: ImageMemory::AsInput,
        })
    }

    /// This convolution with its output laid out as `memory` says on the AMX path (elsewhere outputs are
    /// contiguous `[B, C, H, W]`).
    pub fn with_output_memory(self, memory: ImageMemory) -> Self {
        Self {
            output_memory: memory,
            ..self
        }
    }

    /// The convolution with its border filled as `mode` says (circular padding is made first, then an unpadded
    /// convolution).
    pub fn forward_padded(&self, x: &Tensor, mode: Padding) -> Result<Tensor> {
        op_stats::count(OpClass::Conv, self.flops(x)?, || self.pad_and_convolve(x, mode))
    }

    /// Circular padding first under `--seamless`, then the convolution.
    fn pad_and_convolve(&self, x: &Tensor, mode: Padding) -> Result<Tensor> {
        let padding = self.cfg.padding;
        if padding > 0 && mode == Padding::Circular {
            let unpadded = Conv2dConfig { padding: 0, ..self.cfg };
            return self.convolve(&pad_circular(x, padding)?, unpadded, false);
        }
        self.convolve(x, self.cfg, true)
    }

    /// Convolves with `cfg` (the layer's own, or the same without padding after circular padding).
    fn convolve(&self, x: &Tensor, cfg: Conv2dConfig, own_cfg: bool) -> Result<Tensor> {
        let conv = match &self.weights {
            ConvWeights::PackedBf16(packed) => return self.amx_run(x, None, None, bf16_op(packed, cfg)),
            ConvWeights::Candle(conv) => conv,
        };
        let own_kernel =
            x.device().is_cpu() && x.dtype() != DType::F64 && cfg.stride == 1 && cfg.dilation == 1 && cfg.groups == 1;
        if let (true, Some(bias)) = (own_kernel, conv.bias()) {
            let as_f32 = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
            let op = Conv2dStride1 { padding: cfg.padding };
            let out = as_f32(x)?.apply_op3_no_bwd(&as_f32(conv.weight())?, &as_f32(bias)?, &op)?;
            return out.to_dtype(x.dtype());
        }
        if x.dtype() == DType::BF16 && x.device().is_cpu() {
            let weight = conv.weight().to_dtype(DType::F32)?;
            let bias = conv.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
            let wide = Conv2d::new(weight, bias, cfg);
            return wide.forward(&x.to_dtype(DType::F32)?)?.to_dtype(DType::BF16);
        }
        if own_cfg {
            return conv.forward(x);
        }
        // Tensors are reference-counted: this shares the weights.
        Conv2d::new(conv.weight().clone(), conv.bias().cloned(), cfg).forward(x)
    }
}

impl Conv {
    /// Multiply-adds ×2 of one call on `x`, for `op_stats`.
    fn flops(&self, x: &Tensor) -> Result<f64> {
        let (batch, _, height, width) = x.dims4()?;
        Ok(self.flops_at(batch, height, width))
    }

    /// [`flops`](Self::flops) for an input of `batch × height × width` pixels.
    fn flops_at(&self, batch: usize, height: usize, width: usize) -> f64 {
        let (k, pad, stride) = (self.kernel, self.cfg.padding, self.cfg.stride.max(1));
        let out_pixels =
            ((height + 2 * pad).saturating_sub(k) / stride + 1) * ((width + 2 * pad).saturating_sub(k) / stride + 1);
        2.0 * (batch * self.out_channels * self.in_channels * k * k) as f64 * out_pixels as f64
    }

    /// `self.forward(upsample_nearest2d(x, 2H, 2W))`; on the AMX path the upsampled tensor is never made (the
    /// convolution reads each pixel of `x` for the four it stands for).
    pub fn forward_upsampled(&self, x: &Tensor, mode: Padding) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        match self.amx_op(mode) {
            Some(op) => {
                let op = Conv2dBf16 { upsample: true, ..op };
                self.amx_convolve(x, None, None, op, self.flops_at(b, 2 * h, 2 * w))
            }
            None => self.forward_padded(&upsample_nearest_2x(x, (2 * h, 2 * w))?, mode),
        }
    }

    /// `self.forward(norm.forward_silu(x))` (`norm.forward(x)` without `silu`), plus `residual` when given; on the
    /// AMX path the input is normalised as the convolution reads it (the normalised tensor is never made: 268 MB at
    /// the VAE decoder's largest) and the residual added as the output is written.
    pub fn forward_after_norm(
        &self,
        x: &Tensor,
        norm: &GroupNorm,
        silu: bool,
        residual: Option<&Tensor>,
        mode: Padding,
    ) -> Result<Tensor> {
        if let Some(op) = self.amx_op(mode) {
            let op = Conv2dBf16 {
                input_norm: Some(Arc::new(norm.params(silu)?)),
                ..op
            };
            return self.amx_convolve(x, residual, None, op, self.flops(x)?);
        }
        let normed = match silu {
            true => norm.forward_silu(x)?,
            false => norm.forward(x)?,
        };
        match residual {
            Some(residual) => self.forward_padded_plus(&normed, residual, mode),
            None => self.forward_padded(&normed, mode),
        }
    }

    /// [`forward_after_norm`](Self::forward_after_norm) without a residual, plus `embedding: [B, C_out]` on every
    /// pixel of each batch item (a resnet block's time embedding): on the AMX path with a channels-last output, added
    /// as the output is written.
    pub fn forward_after_norm_plus_embedding(
        &self,
        x: &Tensor,
        norm: &GroupNorm,
        silu: bool,
        embedding: &Tensor,
        mode: Padding,
    ) -> Result<Tensor> {
        if let Some(op) = self.amx_op(mode) {
            let op = Conv2dBf16 {
                input_norm: Some(Arc::new(norm.params(silu)?)),
                ..op
            };
            return self.amx_convolve(x, None, Some(embedding), op, self.flops(x)?);
        }
        self.forward_after_norm(x, norm, silu, None, mode)?
            .broadcast_add(&embedding.unsqueeze(2)?.unsqueeze(3)?)
    }

    /// [`forward_after_norm`](Self::forward_after_norm) without a residual, as tokens `[B, H·W, C_out]`: on the AMX
    /// path written channels-last as the tile blocks come (no output planes, no transposed copy of them). For
    /// unpadded (1×1) convolutions, which `--seamless` leaves alone.
    pub fn forward_after_norm_to_tokens(&self, x: &Tensor, norm: &GroupNorm, silu: bool) -> Result<Tensor> {
        if let Some(op) = self.amx_op(Padding::Zeros) {
            let op = Conv2dBf16 {
                input_norm: Some(Arc::new(norm.params(silu)?)),
                output: ConvOutput::Tokens,
                ..op
            };
            return self.amx_convolve(x, None, None, op, self.flops(x)?);
        }
        image_to_tokens(&self.forward_after_norm(x, norm, silu, None, Padding::Zeros)?)
    }

    /// `self.forward(x) + residual`; on the AMX path the residual is added as the output is written.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_padded_plus(x, residual, Padding::Zeros)
    }

    /// [`forward_plus`](Self::forward_plus) with the border filled as `mode` says.
    fn forward_padded_plus(&self, x: &Tensor, residual: &Tensor, mode: Padding) -> Result<Tensor> {
        match self.amx_op(mode) {
            Some(op) => self.amx_convolve(x, Some(residual), None, op, self.flops(x)?),
            None => self.forward_padded(x, mode)? + residual,
        }
    }

    /// The AMX convolution of this layer's packed weights under its own padding and stride, for the fused forms
    /// above; `None` for candle weights, and under `--seamless` with padding (circular padding needs the padded
    /// tensor, which `forward` makes).
    fn amx_op(&self, mode: Padding) -> Option<Conv2dBf16> {
        match &self.weights {
            ConvWeights::PackedBf16(packed) if self.cfg.padding == 0 || mode == Padding::Zeros => {
                Some(bf16_op(packed, self.cfg))
            }
            _ => None,
        }
    }
}

impl Conv {
    /// [`amx_run`](Self::amx_run), counted as `flops` of convolution.
    fn amx_convolve(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        embedding: Option<&Tensor>,
        op: Conv2dBf16,
        flops: f64,
    ) -> Result<Tensor> {
        op_stats::count(OpClass::Conv, flops, || self.amx_run(x, residual, embedding, op))
    }

    /// Runs the AMX convolution `op` on `x` in f32, plus `residual` and `embedding` (`[B, C_out]`, on every pixel)
    /// when given, its output image laid out as [`ImageMemory`] says (or tokens, when `op` writes those). A
    /// channels-last `x` is read as it is.
    fn amx_run(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        embedding: Option<&Tensor>,
        mut op: Conv2dBf16,
    ) -> Result<Tensor> {
        let x = match x.dtype() == DType::F32 && is_channels_last(x) {
            true => x.clone(),
            false => x.to_dtype(DType::F32)?.contiguous()?,
        };
        if op.output != ConvOutput::Tokens {
            op.output = match self.output_memory {
                ImageMemory::ChannelsLast => ConvOutput::Pixels,
                ImageMemory::ChannelsFirst => ConvOutput::Planes,
                ImageMemory::AsInput if is_channels_last(&x) => ConvOutput::Pixels,
                ImageMemory::AsInput => ConvOutput::Planes,
            };
        }
        let pixels = op.output == ConvOutput::Pixels;
        // The epilogue adds per-item values only to pixel rows; channels-first outputs get them after.
        let (embedding, added_after) = match (embedding, pixels) {
            (Some(e), true) => (Some(e), None),
            (e, _) => (None, e),
        };
        op.per_item = embedding
            .map(|e| e.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let out = match residual {
            Some(residual) => {
                let residual = residual.to_dtype(DType::F32)?;
                let residual = match pixels {
                    true => residual.permute((0, 2, 3, 1))?.contiguous()?,
                    false => residual.contiguous()?,
                };
                x.apply_op2_no_bwd(&residual, &op)?
            }
            None => x.apply_op1_no_bwd(&op)?,
        };
        let out = match pixels {
            true => out.permute((0, 3, 1, 2))?,
            false => out,
        };
        match added_after {
            Some(e) => out.broadcast_add(&e.to_dtype(DType::F32)?.unsqueeze(2)?.unsqueeze(3)?),
            None => Ok(out),
        }
    }
}

/// Whether `[B, C, H, W]` `x` is laid out channels-last in memory (the view of `[B, H, W, C]`).
pub(crate) fn is_channels_last(x: &Tensor) -> bool {
    match x.dims4() {
        Ok((_, c, h, w)) => x.stride() == [h * w * c, 1, w * c, c] && c > 1,
        Err(_) => false,
    }
}

/// The AMX convolution with packed weights under `cfg`'s padding and stride.
fn bf16_op(packed: &Arc<PackedConv>, cfg: Conv2dConfig) -> Conv2dBf16 {
    Conv2dBf16 {
        weights: packed.clone(),
        padding: cfg.padding,
        stride: cfg.stride,
        upsample: false,
        input_norm: None,
        output: ConvOutput::Planes,
        per_item: None,
    }
}

/// Zero padding.
impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_padded(x, Padding::Zeros)
    }
}

/// Group normalisation computed entirely in f32 (statistics and the affine step), rounded to the input
/// dtype once, as torch does for f16/bf16; candle-nn's version applies the affine step in the input dtype,
/// which doubled the bf16 error against torch's f32 result. On the CPU it is one fused kernel (`cpu::group_norm`,
/// statistics in f64), with the following SiLU when asked.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// `[C, 1]` in f32, to broadcast over `[B, C, H·W]`.
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// diffusers' `nn.GroupNorm(groups, channels, eps)` with `weight` and `bias`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: Vars) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("group norm: {channels} channels cannot be split into {groups} groups");
    }
    let acc = super::accumulation_dtype(vb.dtype());
    let load = |name: &str| vb.get(channels, name)?.to_dtype(acc)?.reshape((channels, 1));
    Ok(GroupNorm {
        weight: load("weight")?,
        bias: load("bias")?,
        groups,
        eps,
    })
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.normalise(x, false)
    }
}

impl GroupNorm {
    /// `silu(group_norm(x))`, as every resnet block and the networks' output heads use it: one fused pass on the CPU.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.normalise(x, true)
    }

    /// The parameters for a kernel that normalises as it reads (`cpu::conv_bf16::GroupNormParams`).
    fn params(&self, silu: bool) -> Result<GroupNormParams> {
        let values = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        Ok(GroupNormParams {
            weight: values(&self.weight)?,
            bias: values(&self.bias)?,
            groups: self.groups,
            eps: self.eps,
            silu,
        })
    }

    fn normalise(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() != DType::F64 {
            let op = FusedGroupNorm {
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            let x32 = x.to_dtype(DType::F32)?.contiguous()?;
            return x32.apply_op3_no_bwd(&self.weight, &self.bias, &op)?.to_dtype(x.dtype());
        }
        let out = self.candle_ops(x)?;
        if silu {
            out.silu()
        } else {
            Ok(out)
        }
    }

    fn candle_ops(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let spatial: usize = dims[2..].iter().product();
        let n = (c / self.groups * spatial) as f64;
        let xf = x.to_dtype(self.weight.dtype())?.reshape((b, self.groups, ()))?;
        let centred = xf.broadcast_sub(&(xf.sum_keepdim(2)? / n)?)?;
        let var = (centred.sqr()?.sum_keepdim(2)? / n)?;
        let normed = centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .reshape((b, c, spatial))?;
        let out = normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?;
        out.reshape(dims)?.to_dtype(x.dtype())
    }
}

/// `[B, C, H, W]` → contiguous tokens `[B, H·W, C]` (a view of a channels-last image's memory, else a copy).
pub fn image_to_tokens(x: &Tensor) -> Result<Tensor> {
    if is_channels_last(x) {
        let (b, c, h, w) = x.dims4()?;
        return x.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
    }
    x.flatten_from(2)?.transpose(1, 2)?.contiguous()
}

/// `[x, y]` joined along the channels (dimension 1): two channels-last images into channels-last memory (pixel by
/// pixel), anything else as candle's `cat` makes it.
pub fn cat_channels(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if is_channels_last(x) && is_channels_last(y) {
        let pixels = |t: &Tensor| t.permute((0, 2, 3, 1));
        return Tensor::cat(&[pixels(x)?, pixels(y)?], 3)?.permute((0, 3, 1, 2));
    }
    Tensor::cat(&[x, y], 1)
}

/// Nearest-neighbour upsampling of `x: [B, C, H, W]` to `(th, tw)`: on the CPU, for exactly ×2, `cpu::upsample`.
pub(crate) fn upsample_nearest_2x(x: &Tensor, (th, tw): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (th, tw) == (2 * h, 2 * w) && x.device().is_cpu() && x.dtype() != DType::F64 {
        let op = crate::cpu::upsample::UpsampleNearest2x;
        return x
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(&op)?
            .to_dtype(x.dtype());
    }
    x.upsample_nearest2d(th, tw)
}

/// `nn.LayerNorm` over the last dimension: on the CPU `cpu::layer_norm` (f32), on a GPU candle's fused kernel; f64
/// (the reference-parity mode) takes the plain formula.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    fused: candle_nn::LayerNorm,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

pub fn layer_norm(dim: usize, eps: f64, vb: Vars) -> Result<LayerNorm> {
    let fused = candle_nn::layer_norm(dim, eps, vb.vb())?;
    let weight = fused.weight().clone();
    let bias = fused
        .bias()
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("layer norm without bias".into()))?;
    Ok(LayerNorm {
        fused,
        weight,
        bias,
        eps,
    })
}

impl LayerNorm {
    /// [`forward`](Module::forward), as a bf16 tensor on the CPU when `bf16_tiles` (every reader a linear layer on
    /// bf16 tiles, which would round it).
    pub fn forward_for(&self, x: &Tensor, bf16_tiles: bool) -> Result<Tensor> {
        if !(bf16_tiles && x.device().is_cpu() && x.dtype() != DType::F64) {
            return self.forward(x);
        }
        self.fused_cpu(x, true)
    }

    /// `cpu::layer_norm`, in f32 whatever the compute dtype.
    fn fused_cpu(&self, x: &Tensor, bf16_output: bool) -> Result<Tensor> {
        let f32_contiguous = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
        let op = FusedLayerNorm {
            eps: self.eps,
            bf16_output,
        };
        f32_contiguous(x)?.apply_op3_no_bwd(&f32_contiguous(&self.weight)?, &f32_contiguous(&self.bias)?, &op)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() != DType::F64 {
            return self.fused_cpu(x, false)?.to_dtype(x.dtype());
        }
        if x.dtype() != DType::F64 {
            return self.fused.forward(x);
        }
        let last = x.rank() - 1;
        let centred = x.broadcast_sub(&x.mean_keepdim(last)?)?;
        let var = centred.sqr()?.mean_keepdim(last)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}
