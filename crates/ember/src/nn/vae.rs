//! diffusers' `AutoencoderKL`: the encoder maps RGB in [-1, 1] to the latent posterior (we use its mean),
//! the decoder maps an (unscaled) latent back to RGB. Scaling by `VaeConfig::scaling_factor` is the
//! caller's business.
//!
//! With [`VaeTiling`], images and latents larger than one tile go through the networks tile by tile
//! (diffusers' `enable_tiling()`), so the activations of a huge image never have to fit in memory at once.

use super::attention::Attention;
use super::blocks::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::config::VaeConfig;
use super::layers::{group_norm, image_to_tokens, Conv, GroupNorm, ImageMemory, Padding};
use super::Vars;
use crate::cancel::check_between_layers;
use candle_core::{DType, Module, Result, Tensor};

/// The VAE's group norms and resnets use eps 1e-6 (diffusers' Encoder/Decoder default).
const EPS: f64 = 1e-6;

fn conv(cin: usize, cout: usize, k: usize, vb: Vars) -> Result<Conv> {
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
    fn new(vb: Vars, ch: usize, groups: usize) -> Result<Self> {
        let vb_attn = vb.pp("attentions").pp(0);
        Ok(Self {
            resnet0: ResnetBlock2D::new(vb.pp("resnets").pp(0), ch, ch, None, groups, EPS)?,
            group_norm: group_norm(groups, ch, EPS, vb_attn.pp("group_norm"))?,
            attention: Attention::new(vb_attn, ch, ch, 1, true)?,
            resnet1: ResnetBlock2D::new(vb.pp("resnets").pp(1), ch, ch, None, groups, EPS)?,
        })
    }

    fn forward(&self, x: &Tensor, padding: Padding) -> Result<Tensor> {
        let x = self.resnet0.forward(x, None, padding)?;
        let (b, c, h, w) = x.dims4()?;
        let tokens = image_to_tokens(&self.group_norm.forward(&x)?)?;
        // The skip connection added by the output projection; the tokens seen as a channels-last image (a view).
        let attended = self.attention.forward_plus(&tokens, None, &image_to_tokens(&x)?)?;
        let attended = attended.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
        self.resnet1.forward(&attended, None, padding)
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
    fn new(vb: Vars, cfg: &VaeConfig) -> Result<Self> {
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
            // Activations stay channels-last between these two on the AMX path (`ImageMemory`).
            conv_in: conv(cfg.in_channels, boc[0], 3, vb.pp("conv_in"))?.with_output_memory(ImageMemory::ChannelsLast),
            down,
            mid: MidBlock::new(vb.pp("mid_block"), boc[n - 1], groups)?,
            conv_norm_out: group_norm(groups, boc[n - 1], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(boc[n - 1], 2 * cfg.latent_channels, 3, vb.pp("conv_out"))?
                .with_output_memory(ImageMemory::ChannelsFirst),
        })
    }

    fn forward(&self, x: &Tensor, padding: Padding) -> Result<Tensor> {
        let mut x = self.conv_in.forward_padded(x, padding)?;
        for (resnets, ds) in &self.down {
            for r in resnets {
                check_between_layers()?;
                x = r.forward(&x, None, padding)?;
            }
            if let Some(ds) = ds {
                x = ds.forward(&x, padding)?;
            }
        }
        let x = self.mid.forward(&x, padding)?;
        // On the AMX path the norm and SiLU are applied as the convolution reads (no normalised copy).
        self.conv_out
            .forward_after_norm(&x, &self.conv_norm_out, true, None, padding)
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
    fn new(vb: Vars, cfg: &VaeConfig) -> Result<Self> {
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
            // As the encoder's: channels-last in between.
            conv_in: conv(cfg.latent_channels, boc[n - 1], 3, vb.pp("conv_in"))?
                .with_output_memory(ImageMemory::ChannelsLast),
            mid: MidBlock::new(vb.pp("mid_block"), boc[n - 1], groups)?,
            up,
            conv_norm_out: group_norm(groups, boc[0], EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(boc[0], cfg.out_channels, 3, vb.pp("conv_out"))?
                .with_output_memory(ImageMemory::ChannelsFirst),
        })
    }

    fn forward(&self, z: &Tensor, padding: Padding) -> Result<Tensor> {
        let mut x = self.mid.forward(&self.conv_in.forward_padded(z, padding)?, padding)?;
        for (resnets, us) in &self.up {
            // Each up block's activations are 4× the last one's; the freed heap the smaller ones leave (glibc keeps
            // it for reuse) is returned first: a 512×512 img2img's peak RSS 2.80 → 2.69 GiB.
            crate::cpu::release_free_heap();
            for r in resnets {
                check_between_layers()?;
                x = r.forward_owned(x, None, padding)?;
            }
            if let Some(us) = us {
                x = us.forward(&x, None, padding)?;
            }
        }
        // On the AMX path the norm and SiLU are applied as the convolution reads (no normalised copy).
        self.conv_out
            .forward_after_norm(&x, &self.conv_norm_out, true, None, padding)
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
    /// Pixels per latent along a side: 2^(number of blocks − 1), 8 for SD 1.x.
    downscale: usize,
    dtype: DType,
}

impl AutoencoderKL {
    pub fn new<'a>(vb: impl Into<Vars<'a>>, cfg: &VaeConfig) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        if cfg.block_out_channels.is_empty() {
            candle_core::bail!("VAE config: block_out_channels is empty");
        }
        let downscale = u32::try_from(cfg.block_out_channels.len() - 1)
            .ok()
            .and_then(|n| 1usize.checked_shl(n))
            .ok_or_else(|| candle_core::Error::Msg("VAE config: too many blocks in block_out_channels".into()))?;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv: conv(2 * l, 2 * l, 1, vb.pp("quant_conv"))?,
            post_quant_conv: conv(l, l, 1, vb.pp("post_quant_conv"))?,
            latent_channels: l,
            downscale,
            dtype: vb.dtype(),
        })
    }

    /// Posterior mean (not scaled) of `x: [B, 3, H, W]` in [-1, 1]; `[B, L, H/8, W/8]` in `x`'s dtype.
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        self.encode_mean_padded(x, None, Padding::Zeros)
    }

    /// RGB `[B, 3, 8h, 8w]` (about [-1, 1], unclamped) of the unscaled latent `z`, in `z`'s dtype.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_padded(z, None, Padding::Zeros)
    }

    /// [`AutoencoderKL::encode_mean`] tile by tile (diffusers' `_tiled_encode`) when `x` is larger than a sample
    /// tile on either side; otherwise exactly `encode_mean(x)`, as diffusers also falls back.
    pub fn encode_mean_tiled(&self, x: &Tensor, tiling: &VaeTiling) -> Result<Tensor> {
        self.encode_mean_padded(x, Some(tiling), Padding::Zeros)
    }

    /// [`AutoencoderKL::decode`] tile by tile (diffusers' `tiled_decode`) when `z` is larger than a latent tile on
    /// either side; otherwise exactly `decode(z)`, as diffusers also falls back.
    pub fn decode_tiled(&self, z: &Tensor, tiling: &VaeTiling) -> Result<Tensor> {
        self.decode_padded(z, Some(tiling), Padding::Zeros)
    }

    /// [`AutoencoderKL::encode_mean`], in tiles with `tiling`, its convolutions filling their border as `padding`
    /// says (`--seamless`).
    pub fn encode_mean_padded(&self, x: &Tensor, tiling: Option<&VaeTiling>, padding: Padding) -> Result<Tensor> {
        let whole = || {
            self.encode_mean_raw(&x.to_dtype(self.dtype)?, padding)?
                .to_dtype(x.dtype())
        };
        let Some(tiling) = tiling else {
            return whole();
        };
        let layout = tiling.layout(self.downscale)?;
        let (_, _, h, w) = x.dims4()?;
        if h.max(w) <= layout.sample_tile {
            return whole();
        }
        let grid = TileGrid {
            tile: layout.sample_tile,
            stride: layout.sample_stride,
            blend: layout.latent_blend,
            keep: layout.latent_tile - layout.latent_blend,
        };
        let mean = grid.map(&x.to_dtype(self.dtype)?, |tile| self.encode_mean_raw(tile, padding))?;
        mean.to_dtype(x.dtype())
    }

    /// [`AutoencoderKL::decode`], in tiles with `tiling`, its convolutions filling their border as `padding` says.
    pub fn decode_padded(&self, z: &Tensor, tiling: Option<&VaeTiling>, padding: Padding) -> Result<Tensor> {
        let whole = || self.decode_raw(&z.to_dtype(self.dtype)?, padding)?.to_dtype(z.dtype());
        let Some(tiling) = tiling else {
            return whole();
        };
        let layout = tiling.layout(self.downscale)?;
        let (_, _, h, w) = z.dims4()?;
        if h.max(w) <= layout.latent_tile {
            return whole();
        }
        let grid = TileGrid {
            tile: layout.latent_tile,
            stride: layout.latent_stride,
            blend: layout.sample_blend,
            keep: layout.sample_tile - layout.sample_blend,
        };
        let rgb = grid.map(&z.to_dtype(self.dtype)?, |tile| self.decode_raw(tile, padding))?;
        rgb.to_dtype(z.dtype())
    }

    /// Posterior mean of `x`, already in the model's dtype. The mean is taken before any tile blending: blending is
    /// per channel, so this equals diffusers' blending of the full moments followed by taking the mean.
    fn encode_mean_raw(&self, x: &Tensor, padding: Padding) -> Result<Tensor> {
        let moments = self.quant_conv.forward(&self.encoder.forward(x, padding)?)?;
        moments.narrow(1, 0, self.latent_channels)
    }

    /// Decoded RGB of `z`, already in the model's dtype.
    fn decode_raw(&self, z: &Tensor, padding: Padding) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(z)?, padding)
    }
}

/// `--vae-tiling`: diffusers' `AutoencoderKL.enable_tiling()` settings. A side longer than a tile is cut into
/// tiles of `sample_tile` pixels (`sample_tile / 8` latents) that overlap by the fraction `overlap`; each tile is
/// encoded or decoded on its own and the overlaps are blended linearly, which bounds memory by the tile size at the
/// cost of slightly different pixels than the untiled VAE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    /// Tile side in pixels (diffusers' `tile_sample_min_size`).
    pub sample_tile: usize,
    /// Fraction of a tile shared with its neighbour (diffusers' `tile_overlap_factor`), in [0, 1).
    pub overlap: f64,
}

impl Default for VaeTiling {
    /// diffusers' defaults for SD 1.x: `tile_sample_min_size` is the VAE config's `sample_size`, 512 in SD 1.x's
    /// `vae/config.json` (and in the configs diffusers builds for single-file SD 1.x checkpoints), overlap 0.25.
    fn default() -> Self {
        Self {
            sample_tile: 512,
            overlap: 0.25,
        }
    }
}

/// Every size diffusers derives from the tiling settings, on both sides of the VAE.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TileLayout {
    sample_tile: usize,
    latent_tile: usize,
    /// Distance between tile starts: `int(tile × (1 − overlap))`.
    sample_stride: usize,
    latent_stride: usize,
    /// Rows/columns blended with the neighbouring tile: `int(tile × overlap)`.
    sample_blend: usize,
    latent_blend: usize,
}

impl VaeTiling {
    /// diffusers' sizes for a VAE that downscales by `downscale`. Settings under which diffusers' tiles would not
    /// line up with the output (gaps or repeated rows: the overlap is not a whole number of latent pixels, or the
    /// tile not a whole number of latents) are refused rather than reproduced.
    fn layout(&self, downscale: usize) -> Result<TileLayout> {
        let overlap = self.overlap;
        if !(0.0..1.0).contains(&overlap) {
            candle_core::bail!("VAE tiling: overlap {overlap} must be in [0, 1)");
        }
        let latent_tile = self.sample_tile / downscale;
        let latent_blend = latent_tile as f64 * overlap;
        if latent_tile == 0 || latent_tile * downscale != self.sample_tile || latent_blend.fract() != 0.0 {
            candle_core::bail!(
                "VAE tiling: a {}-pixel tile with overlap {overlap} does not fall on whole latents (tiles are \
                 multiples of {downscale} pixels and overlap × tile / {downscale} is a whole number)",
                self.sample_tile
            );
        }
        // Python's int() of a positive float truncates, as `as usize` does.
        let stride = |tile: usize| (tile as f64 * (1.0 - overlap)) as usize;
        let blend = |tile: usize| (tile as f64 * overlap) as usize;
        let layout = TileLayout {
            sample_tile: self.sample_tile,
            latent_tile,
            sample_stride: stride(self.sample_tile),
            latent_stride: stride(latent_tile),
            sample_blend: blend(self.sample_tile),
            latent_blend: blend(latent_tile),
        };
        if layout.latent_stride == 0 {
            candle_core::bail!("VAE tiling: overlap {overlap} leaves tiles of {latent_tile} latents no stride");
        }
        Ok(layout)
    }
}

/// How one tiled pass cuts its input and assembles its output: input tiles of `tile` started every `stride`; output
/// tiles blended over `blend` rows/columns with the tile above and the tile to the left, then cut to `keep`.
#[derive(Debug, Clone, Copy)]
struct TileGrid {
    tile: usize,
    stride: usize,
    blend: usize,
    keep: usize,
}

impl TileGrid {
    /// `(start, length)` of the tiles along a side of `len`: diffusers' `range(0, len, stride)`, each tile cut
    /// short by the border.
    fn spans(&self, len: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..len)
            .step_by(self.stride)
            .map(move |start| (start, self.tile.min(len - start)))
    }

    /// Runs `f` on every tile of `x: [B, C, H, W]` and assembles the blended, cropped outputs. Rows are processed
    /// one after the other, keeping only the previous row's tiles: diffusers blends each tile with the neighbours
    /// *as already blended* (its `blend_v`/`blend_h` write into the tile), which this reproduces by blending in
    /// the same order and keeping the blended tiles.
    fn map(&self, x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut above: Vec<Tensor> = Vec::new();
        let mut rows = Vec::new();
        for (top, height) in self.spans(h) {
            let mut row: Vec<Tensor> = Vec::new();
            for (j, (left, width)) in self.spans(w).enumerate() {
                let mut tile = f(&x.narrow(2, top, height)?.narrow(3, left, width)?)?;
                if let Some(up) = above.get(j) {
                    tile = blend(up, &tile, 2, self.blend)?;
                }
                if let Some(prev) = row.last() {
                    tile = blend(prev, &tile, 3, self.blend)?;
                }
                row.push(tile);
            }
            rows.push(self.assemble_row(&row)?);
            above = row;
        }
        Tensor::cat(&rows, 2)
    }

    /// The row's tiles cut to `keep × keep` (less at the bottom and right borders), side by side.
    fn assemble_row(&self, row: &[Tensor]) -> Result<Tensor> {
        let cropped = row
            .iter()
            .map(|tile| {
                let (_, _, h, w) = tile.dims4()?;
                tile.narrow(2, 0, self.keep.min(h))?.narrow(3, 0, self.keep.min(w))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&cropped, 3)
    }
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `e = min(extent, both lengths)` rows (columns)
/// of `b` fade in from the last `e` of `a`: `b[y] = a[len − e + y] · (1 − y/e) + b[y] · y/e`.
fn blend(a: &Tensor, b: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let (a_len, b_len) = (a.dim(dim)?, b.dim(dim)?);
    let e = extent.min(a_len).min(b_len);
    if e == 0 {
        return Ok(b.clone());
    }
    let mut shape = [1usize; 4];
    shape[dim] = e;
    let ramp = |weight: fn(f64) -> f64| -> Result<Tensor> {
        let values: Vec<f64> = (0..e).map(|y| weight(y as f64 / e as f64)).collect();
        Tensor::from_vec(values, &shape[..], b.device())?.to_dtype(b.dtype())
    };
    let from_a = a.narrow(dim, a_len - e, e)?.broadcast_mul(&ramp(|t| 1.0 - t)?)?;
    let from_b = b.narrow(dim, 0, e)?.broadcast_mul(&ramp(|t| t)?)?;
    Tensor::cat(&[(from_a + from_b)?, b.narrow(dim, e, b_len - e)?], dim)
}
