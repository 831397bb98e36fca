//! Convolution with bf16 operands on the AMX tile unit (f32 accumulation), for models built for bf16
//! (`nn::Precision`): an implicit GEMM over a channels-last copy of the input.
//!
//! Stride 1 (all but the downsamplers): the input is rounded to bf16 and copied once into a zero-padded buffer with
//! one row per pixel of the padded image (channels padded to 32). Read as the A operand, that buffer shifted down by
//! `ky·Wp + kx` rows holds, in row `r`, the pixels tap `(ky, kx)` sees for the output pixel of row `r` — and since a
//! shift moves whole rows, every view stays 64-byte aligned (unlike the f32 kernel's shifted columns). Neighbouring
//! images and image rows share their padding ([`SharedPadding`]): `p` zero pixels before each image row serve as the
//! right padding of the row before too, and `p` zero rows before each image as the bottom padding of the image
//! before, so fewer rows are computed only to be dropped (at 16×16, 17² rows per image instead of 18²). Other
//! strides: one row per output pixel holding every tap's channels side by side (im2col).
//! The weights are packed once per tap as B panels (`[C_in] × [C_out]`), so each 32 pixels × 32 output channels
//! block is summed over all taps and input channels in the tile registers, then written once, with the bias (and a
//! resnet block's skip connection and time embedding, when given), into the output: each block row as it is into a
//! channels-last `[B, H_out, W_out, C_out]` output (the UNet's and the VAE's layout on this path), or transposed into
//! the planes of a `[B, C_out, H_out, W_out]` one; rows that fall on padding are dropped there. The input may be
//! channels-first or channels-last, group-normalised (and SiLU'd) and upsampled ×2 as it is read.

use super::amx::{self, AlignedBf16, PanelsB, SharedOut, Staging, Term};
use super::contiguous_f32;
use super::conv::ConvDims;
use super::group_norm::{folded_affine, folded_affine_channels_last, GroupNormDims};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::RefCell;

/// Bytes of weight panels a task keeps in L2 while the pixel rows stream past.
const RESIDENT_BYTES: usize = 768 << 10;

/// A convolution's weights (per tap, `W[:, :, ky, kx]ᵀ` as B panels) and bias, prepared once for [`conv2d_bf16`].
#[derive(Debug)]
pub struct PackedConv {
    out_channels: usize,
    in_channels: usize,
    kernel: usize,
    taps: Vec<PanelsB>,
    bias: Vec<f32>,
}

impl PackedConv {
    /// Packs `weight: [C_out, C_in, k, k]` (PyTorch layout; f32, or bf16 as loaded for this) and `bias: [C_out]`.
    pub fn new<W: amx::Bf16Source>(
        weight: &[W],
        bias: &[f32],
        out_channels: usize,
        in_channels: usize,
        kernel: usize,
    ) -> Result<Self> {
        let taps = kernel * kernel;
        if weight.len() != out_channels * in_channels * taps || bias.len() != out_channels || taps == 0 {
            candle_core::bail!(
                "convolution: weight of {} values and bias of {} do not fit {out_channels}×{in_channels}×{kernel}×{kernel}",
                weight.len(),
                bias.len()
            );
        }
        // Each output channel's `[tap][C_in]` rows (a column of each tap's B operand), from its `[C_in][tap]`
        // weights: channels in parallel, each read from L1 (a strided pass over the whole weight per tap, on one
        // thread, took ~0.5 s of a full-size model's load).
        let mut by_tap = vec![weight[0]; if taps > 1 { weight.len() } else { 0 }];
        by_tap
            .par_chunks_exact_mut(taps * in_channels)
            .zip(weight.par_chunks_exact(in_channels * taps))
            .for_each(|(dst, channel)| {
                for (tap, dst) in dst.chunks_exact_mut(in_channels).enumerate() {
                    for (d, pixel) in dst.iter_mut().zip(channel.chunks_exact(taps)) {
                        *d = pixel[tap];
                    }
                }
            });
        let taps = (0..taps)
            .map(|tap| {
                PanelsB::from_columns(in_channels, out_channels, |o| match taps {
                    1 => &weight[o * in_channels..][..in_channels],
                    _ => &by_tap[(o * taps + tap) * in_channels..][..in_channels],
                })
            })
            .collect();
        Ok(Self {
            out_channels,
            in_channels,
            kernel,
            taps,
            bias: bias.to_vec(),
        })
    }

    /// Output height and width for an input of `height × width`; `None` when the kernel does not fit.
    pub fn output_size(&self, height: usize, width: usize, padding: usize, stride: usize) -> Option<(usize, usize)> {
        let k = self.kernel;
        let fits = height + 2 * padding >= k && width + 2 * padding >= k && stride > 0;
        fits.then(|| {
            (
                (height + 2 * padding - k) / stride + 1,
                (width + 2 * padding - k) / stride + 1,
            )
        })
    }
}

/// The input of [`conv2d_bf16`]: `[B, C_in, H, W]` f32 as convolved. With `upsampled`, `data` holds
/// `[B, C_in, H/2, W/2]` and is read nearest-neighbour upsampled ×2 (pixel `(y, x)` is `(y/2, x/2)`): an upsampler's
/// convolution without the 4× larger upsampled tensor (268 MB at the VAE's last upsampler).
#[derive(Debug, Clone, Copy)]
pub struct ConvInput<'a> {
    pub data: &'a [f32],
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub upsampled: bool,
    /// Normalise each value as it is read (a resnet block's group norm and SiLU before its convolution).
    pub norm: Option<InputNorm<'a>>,
    /// `data` is channels-last, `[B, H, W, C_in]` (the UNet's and the VAE's activations on this path, a
    /// transformer's tokens into its `proj_out`): each pixel's channels are one run of memory, copied (and
    /// normalised) into an A row as they are, with no transpose.
    pub channels_last: bool,
}

/// A group norm (and SiLU) applied to the convolution's input as it is read, so the normalised tensor is never made:
/// value `x·scale + shift` for the batch item and channel (`B·C_in` each, from `group_norm::folded_affine`), then
/// `v·σ(v)` when `silu`. The zero padding stays zero (it pads the normalised tensor, as in PyTorch).
#[derive(Debug, Clone, Copy)]
pub struct InputNorm<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub silu: bool,
}

impl<'a> ConvInput<'a> {
    /// `data: [B, C_in, height, width]` convolved as it is.
    pub fn plain(data: &'a [f32], batch: usize, height: usize, width: usize) -> Self {
        Self {
            data,
            batch,
            height,
            width,
            upsampled: false,
            norm: None,
            channels_last: false,
        }
    }

    /// Height and width of `data` (half the convolved ones when upsampled).
    fn source_size(&self) -> (usize, usize) {
        let factor = self.repeat();
        (self.height / factor, self.width / factor)
    }

    /// How many times each source pixel is repeated along a row and a column.
    fn repeat(&self) -> usize {
        if self.upsampled {
            2
        } else {
            1
        }
    }
}

/// How [`conv2d_bf16`] lays out its output (and residual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLayout {
    /// `[B, C_out, H_out, W_out]`.
    ChannelsFirst,
    /// `[B, H_out, W_out, C_out]`: a transformer's tokens straight from its `proj_in` (each block row is a pixel's
    /// channels, written as it is instead of transposed into planes).
    ChannelsLast,
}

/// What [`conv2d_bf16`] adds to its output besides the bias, as each block is written (instead of in another pass over
/// a fresh buffer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Addends<'a> {
    /// Same shape and layout as the output: a resnet block's skip connection.
    pub residual: Option<&'a [f32]>,
    /// `[B, C_out]`, a value per batch item and output channel: a resnet block's time embedding. Channels-last
    /// output only.
    pub per_item: Option<&'a [f32]>,
}

impl<'a> Addends<'a> {
    /// The residual alone.
    #[cfg(test)]
    pub fn residual(residual: &'a [f32]) -> Self {
        Self {
            residual: Some(residual),
            per_item: None,
        }
    }
}

/// Convolves `input` with the packed weights, zero padding `padding`, `stride`, into `out` (laid out as `layout`
/// says), plus the `addends`.
pub fn conv2d_bf16(
    input: ConvInput<'_>,
    weights: &PackedConv,
    addends: Addends<'_>,
    out: &SharedOut<'_>,
    padding: usize,
    stride: usize,
    layout: OutputLayout,
) -> Result<()> {
    let ConvInput {
        batch, height, width, ..
    } = input;
    let k = weights.kernel;
    let (ci, co) = (weights.in_channels, weights.out_channels);
    let Some((out_h, out_w)) = weights.output_size(height, width, padding, stride) else {
        candle_core::bail!(
            "convolution: a {k}×{k} kernel with stride {stride} does not fit a {height}×{width} input padded by {padding}"
        );
    };
    let (source_h, source_w) = input.source_size();
    if input.upsampled && (stride != 1 || height % 2 != 0 || width % 2 != 0) {
        candle_core::bail!(
            "convolution: an upsampled input needs stride 1 and an even size, got stride {stride}, {height}×{width}"
        );
    }
    if let Some(norm) = input.norm {
        if stride != 1 || norm.scale.len() != batch * ci || norm.shift.len() != batch * ci {
            candle_core::bail!(
                "convolution: a normalised input needs stride 1 and {} scales and shifts, got stride {stride}, {} and {}",
                batch * ci,
                norm.scale.len(),
                norm.shift.len()
            );
        }
    }
    if input.data.len() != batch * ci * source_h * source_w || out.len() != batch * co * out_h * out_w {
        candle_core::bail!(
            "convolution: input of {} values or output of {} does not fit {batch}×{ci}×{source_h}×{source_w} → {co} channels",
            input.data.len(),
            out.len()
        );
    }
    let Addends { residual, per_item } = addends;
    if residual.is_some_and(|r| r.len() != out.len()) {
        candle_core::bail!(
            "convolution: the residual does not have the output's {} values",
            out.len()
        );
    }
    if per_item.is_some_and(|v| v.len() != batch * co || layout != OutputLayout::ChannelsLast) {
        candle_core::bail!("convolution: per-item values need a channels-last output and {batch}×{co} of them");
    }
    if batch == 0 {
        return Ok(());
    }
    let dims = ConvDims {
        batch,
        in_channels: ci,
        out_channels: co,
        height,
        width,
        kernel: k,
        padding,
    };
    let depth = weights.taps[0].depth();
    SCRATCH.with(|scratch| {
        let mut buffer = scratch.borrow_mut();
        let views = if stride == 1 {
            TapViews::shifted_rows(&mut buffer, input, dims, depth)
        } else {
            TapViews::gathered(&mut buffer, input, dims, depth, stride, (out_h, out_w))
        };
        let pixels = buffer.as_slice();
        let taps = weights.taps.len();
        let panels = weights.taps[0].columns() / amx::BLOCK;
        let panels_per_task = (RESIDENT_BYTES / (taps * depth * amx::BLOCK * 2)).clamp(1, panels);
        let panel_groups = panels.div_ceil(panels_per_task);
        let threads = rayon::current_num_threads().max(1);
        let row_groups = (4 * threads).div_ceil(panel_groups).clamp(1, views.row_blocks);
        let blocks_per_task = views.row_blocks.div_ceil(row_groups);
        (0..row_groups * panel_groups).into_par_iter().for_each(|task| {
            let (row_group, panel_group) = (task / panel_groups, task % panel_groups);
            let blocks = row_group * blocks_per_task..((row_group + 1) * blocks_per_task).min(views.row_blocks);
            let panel_range = panel_group * panels_per_task..((panel_group + 1) * panels_per_task).min(panels);
            amx::with_tiles(|tiles| {
                let mut staging = Staging::default();
                let mut terms = Vec::with_capacity(taps);
                for block in blocks {
                    let destinations = views.destinations(block, dims, (out_h, out_w), layout);
                    for panel in panel_range.clone() {
                        terms.clear();
                        terms.extend(weights.taps.iter().enumerate().map(|(tap, tap_weights)| Term {
                            a: &pixels[views.start(block, tap)..],
                            a_row: views.a_row,
                            b: tap_weights.panel(panel),
                        }));
                        tiles.block(&terms, &mut staging);
                        match layout {
                            OutputLayout::ChannelsFirst => {
                                write_block(&staging, &destinations, panel, weights, residual, out_h * out_w, out)
                            }
                            OutputLayout::ChannelsLast => write_pixel_rows(
                                &staging,
                                &destinations,
                                panel,
                                weights,
                                addends,
                                out_h * out_w * co,
                                out,
                            ),
                        }
                    }
                }
            });
        });
        if buffer.capacity_bytes() > 128 << 20 {
            *buffer = AlignedBf16::default();
        }
    });
    Ok(())
}

/// Where each tap's A operand is in the pixel buffer.
struct TapViews {
    /// Distance between A rows (values).
    a_row: usize,
    /// Per tap: rows to skip and the first column of its view.
    row_shift: Vec<usize>,
    column: Vec<usize>,
    /// Blocks of 32 output rows.
    row_blocks: usize,
    /// Stride 1: rows are pixels of the padded grid; otherwise rows are output pixels.
    grid: Option<SharedPadding>,
}

/// The padded grid of a stride-1 convolution's input in which neighbours share their padding: each image row is `p`
/// zero pixels then the row's `W` pixels (`Wp = W + p`: the zeros before a row are also the right padding of the row
/// before), and each image is `p` zero rows then its `H` rows, followed after the last image by `p` zero rows and
/// one more for the right padding of the last row. Reading taps `(ky, kx)` from the output pixel `(y, x)` at grid row
/// `item·(H+p)·Wp + y·Wp + x` reaches `(y + ky − p, x + kx − p)` or, past an edge, zeros — for any kernel and padding,
/// since output pixels reach at most `p` past each edge.
#[derive(Debug, Clone, Copy)]
struct SharedPadding {
    /// Values of `p` (the zero columns and rows before each image row and image).
    padding: usize,
    /// Pixels per grid row, `Wp = W + p`.
    width: usize,
    /// Grid rows per image, `H + p`.
    item_rows: usize,
}

impl SharedPadding {
    fn of(dims: ConvDims) -> Self {
        Self {
            padding: dims.padding,
            width: dims.width + dims.padding,
            item_rows: dims.height + dims.padding,
        }
    }

    /// Buffer rows of `batch` images with the trailing padding.
    fn rows(&self, batch: usize) -> usize {
        (batch * self.item_rows + self.padding + 1) * self.width
    }
}

impl TapViews {
    /// Stride 1: one row per pixel of the padded input ([`SharedPadding`]), each tap a view shifted down by
    /// `ky·Wp + kx` rows.
    fn shifted_rows(buffer: &mut AlignedBf16, input: ConvInput<'_>, dims: ConvDims, depth: usize) -> Self {
        let grid = SharedPadding::of(dims);
        let k = dims.kernel;
        let row_shift: Vec<usize> = (0..k * k).map(|tap| (tap / k) * grid.width + tap % k).collect();
        // Output row `r` is the output pixel whose window starts at buffer row `r`; the buffer has room for the last
        // block shifted by the last tap.
        let row_blocks = (dims.batch * grid.item_rows * grid.width).div_ceil(amx::BLOCK);
        let rows = (row_blocks * amx::BLOCK + row_shift[k * k - 1]).max(grid.rows(dims.batch));
        fill_channels_last(buffer, input, dims, grid, depth, rows);
        Self {
            a_row: depth,
            column: vec![0; k * k],
            row_shift,
            row_blocks,
            grid: Some(grid),
        }
    }

    /// Any stride: one row per output pixel holding every tap's input channels side by side (im2col, channels-last).
    fn gathered(
        buffer: &mut AlignedBf16,
        input: ConvInput<'_>,
        dims: ConvDims,
        depth: usize,
        stride: usize,
        (out_h, out_w): (usize, usize),
    ) -> Self {
        let ConvDims {
            batch,
            in_channels: ci,
            height: h,
            width: w,
            kernel: k,
            padding: p,
            ..
        } = dims;
        let a_row = k * k * depth;
        let rows = batch * out_h * out_w;
        let row_blocks = rows.div_ceil(amx::BLOCK);
        buffer.resize_zeroed(row_blocks * amx::BLOCK * a_row);
        // One task per output image row.
        buffer.as_mut_slice()[..rows * a_row]
            .par_chunks_exact_mut(out_w * a_row)
            .enumerate()
            .for_each(|(image_row, dst)| {
                let (item, oy) = (image_row / out_h, image_row % out_h);
                for tap in 0..k * k {
                    let Some(y) = (stride * oy + tap / k).checked_sub(p).filter(|&y| y < h) else {
                        continue;
                    };
                    if input.channels_last {
                        for ox in 0..out_w {
                            if let Some(x) = (stride * ox + tap % k).checked_sub(p).filter(|&x| x < w) {
                                let pixel = &input.data[((item * h + y) * w + x) * ci..][..ci];
                                amx::round_to_bf16(pixel, &mut dst[ox * a_row + tap * depth..][..ci]);
                            }
                        }
                        continue;
                    }
                    let input = input.data;
                    for c in 0..ci {
                        let src = &input[((item * ci + c) * h + y) * w..][..w];
                        for ox in 0..out_w {
                            if let Some(x) = (stride * ox + tap % k).checked_sub(p).filter(|&x| x < w) {
                                dst[ox * a_row + tap * depth + c] = amx::bf16_bits(src[x]);
                            }
                        }
                    }
                }
            });
        Self {
            a_row,
            row_shift: vec![0; k * k],
            column: (0..k * k).map(|tap| tap * depth).collect(),
            row_blocks,
            grid: None,
        }
    }

    /// Element where tap `tap`'s view of row block `block` starts.
    fn start(&self, block: usize, tap: usize) -> usize {
        (block * amx::BLOCK + self.row_shift[tap]) * self.a_row + self.column[tap]
    }

    /// Where each of a block's 32 rows lands in the output (`layout`), as the offset of its output channel 0; `None`
    /// for rows that are no output pixel (padding of the grid, past the last one).
    fn destinations(
        &self,
        block: usize,
        dims: ConvDims,
        (out_h, out_w): (usize, usize),
        layout: OutputLayout,
    ) -> [Option<usize>; amx::BLOCK] {
        let (row_width, row_height) = match self.grid {
            Some(grid) => (grid.width, grid.item_rows),
            None => (out_w, out_h),
        };
        std::array::from_fn(|r| {
            let row = block * amx::BLOCK + r;
            let (item, y, x) = (
                row / (row_width * row_height),
                (row / row_width) % row_height,
                row % row_width,
            );
            let offset = match layout {
                OutputLayout::ChannelsFirst => (item * dims.out_channels * out_h + y) * out_w + x,
                OutputLayout::ChannelsLast => ((item * out_h + y) * out_w + x) * dims.out_channels,
            };
            (item < dims.batch && y < out_h && x < out_w).then_some(offset)
        })
    }
}

thread_local! {
    /// The channels-last padded input, reused between calls.
    static SCRATCH: RefCell<AlignedBf16> = RefCell::default();
}

/// `buffer[row][c]` = input pixel (item, y, x) of channel `c` at row `(item·(H+p) + y + p)·Wp + x + p` of the shared
/// padding grid, rounded to bf16; zeros elsewhere (padding, channels ≥ C_in, rows past the last item).
fn fill_channels_last(
    buffer: &mut AlignedBf16,
    input: ConvInput<'_>,
    dims: ConvDims,
    grid: SharedPadding,
    depth: usize,
    rows: usize,
) {
    let ConvDims {
        batch,
        in_channels: ci,
        width: w,
        padding: p,
        ..
    } = dims;
    let ((source_h, source_w), repeat) = (input.source_size(), input.repeat());
    // Every value is written below, zeros included: zeroing the whole buffer first was a pass of its own, on one
    // thread (~4% of a 3×3 convolution's time).
    buffer.resize_uninit(rows * depth);
    let (images, trailing) = buffer
        .as_mut_slice()
        .split_at_mut(batch * grid.item_rows * grid.width * depth);
    trailing.fill(0);
    // One task per grid row: its `Wp` buffer rows are disjoint from every other task's.
    images
        .par_chunks_exact_mut(grid.width * depth)
        .enumerate()
        .for_each(|(grid_row, dst)| {
            let (item, y) = (grid_row / grid.item_rows, grid_row % grid.item_rows);
            if y < p {
                dst.fill(0);
                return;
            }
            let (padding, row) = dst.split_at_mut(p * depth);
            padding.fill(0);
            if depth > ci {
                // The writers below store channels 0..C_in of each pixel.
                row.chunks_exact_mut(depth).for_each(|pixel| pixel[ci..].fill(0));
            }
            // This item's slice of the normalisation.
            let norm = input.norm.map(|n| InputNorm {
                scale: &n.scale[item * ci..][..ci],
                shift: &n.shift[item * ci..][..ci],
                silu: n.silu,
            });
            if input.channels_last {
                let first = (item * source_h + (y - p) / repeat) * source_w;
                pixels_to_bf16(&input.data[first * ci..][..source_w * ci], ci, repeat, norm, depth, row);
                return;
            }
            let first = (item * ci * source_h + (y - p) / repeat) * source_w;
            let plane = source_h * source_w;
            #[cfg(target_arch = "x86_64")]
            if super::avx512_bw_vl() && ci * plane < i32::MAX as usize / 4 {
                // SAFETY: AVX-512F/BW/VL detected; the input holds channels 0..ci of this source row (checked by the
                // caller), the gather offsets fit i32 (checked above), `row` holds w pixels of `depth` ≥ ci values,
                // the normalisation `ci` scales and shifts (checked by the caller).
                unsafe { transpose_row_avx512(&input.data[first..], plane, ci, w, repeat, norm, depth, row) };
                return;
            }
            for c in 0..ci {
                let src = &input.data[first + c * plane..][..source_w];
                for x in 0..w {
                    let mut v = src[x / repeat];
                    if let Some(norm) = norm {
                        v = v * norm.scale[c] + norm.shift[c];
                        if norm.silu {
                            v /= 1.0 + (-v).exp();
                        }
                    }
                    row[x * depth + c] = amx::bf16_bits(v);
                }
            }
        });
}

/// One image row from channels-last f32 (`source[(x / repeat)·channels + c]`, normalised when asked) to the A
/// operand's rows (`row[x·depth + c]`, bf16).
fn pixels_to_bf16(
    source: &[f32],
    channels: usize,
    repeat: usize,
    norm: Option<InputNorm<'_>>,
    depth: usize,
    row: &mut [u16],
) {
    let width = row.len() / depth;
    assert!(source.len() >= width.div_ceil(repeat) * channels && depth >= channels);
    if let Some(n) = norm {
        assert!(n.scale.len() >= channels && n.shift.len() >= channels);
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx512_bw_vl() {
        // SAFETY: AVX-512F/BW/VL detected; the sizes were checked above.
        unsafe { pixels_to_bf16_avx512(source, channels, repeat, norm, depth, row) };
        return;
    }
    for (x, pixel) in row.chunks_exact_mut(depth).enumerate() {
        let src = &source[x / repeat * channels..][..channels];
        match norm {
            None => amx::round_to_bf16(src, &mut pixel[..channels]),
            Some(n) => {
                for (c, (dst, &v)) in pixel.iter_mut().zip(src).enumerate() {
                    let v = v.mul_add(n.scale[c], n.shift[c]);
                    *dst = amx::bf16_bits(if n.silu { v / (1.0 + (-v).exp()) } else { v });
                }
            }
        }
    }
}

/// [`pixels_to_bf16`], 16 channels at a time, pixel by pixel (each pixel's channels are one run of memory).
///
/// # Safety
/// The CPU must have AVX-512F, BW and VL (checked at run time by the caller), and the sizes [`pixels_to_bf16`]
/// checks must hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pixels_to_bf16_avx512(
    source: &[f32],
    channels: usize,
    repeat: usize,
    norm: Option<InputNorm<'_>>,
    depth: usize,
    row: &mut [u16],
) {
    use super::vector_math::avx512::{exp, to_bf16};
    use std::arch::x86_64::*;
    let tail: __mmask16 = if channels.is_multiple_of(16) {
        0xffff
    } else {
        (1u16 << (channels % 16)) - 1
    };
    for x in 0..row.len() / depth {
        let (src, dst) = (
            source.as_ptr().add(x / repeat * channels),
            row.as_mut_ptr().add(x * depth),
        );
        for c0 in (0..channels).step_by(16) {
            let mask = if channels - c0 >= 16 { 0xffff } else { tail };
            let mut v = _mm512_maskz_loadu_ps(mask, src.add(c0));
            if let Some(n) = norm {
                let scale = _mm512_maskz_loadu_ps(mask, n.scale.as_ptr().add(c0));
                let shift = _mm512_maskz_loadu_ps(mask, n.shift.as_ptr().add(c0));
                v = _mm512_fmadd_ps(v, scale, shift);
                if n.silu {
                    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), v));
                    v = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e));
                }
            }
            _mm256_mask_storeu_epi16(dst.add(c0) as *mut i16, mask, to_bf16(v));
        }
    }
}

/// One image row from channels-first f32 (`input[c·plane + x / repeat]`) to channels-last bf16 (`row[x·depth + c]`):
/// 16 channels of a pixel per gather.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VL (checked at run time by the caller). The gather offsets must fit `i32`:
/// `channels·plane < i32::MAX / 4` (checked by the caller). `repeat ≥ 1`; the slices' sizes (`input` reaches channel
/// `channels − 1`'s last source pixel, `row` holds `width` pixels of `depth ≥ channels` values, the normalisation
/// `channels` scales and shifts) are asserted here.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_row_avx512(
    input: &[f32],
    plane: usize,
    channels: usize,
    width: usize,
    repeat: usize,
    norm: Option<InputNorm<'_>>,
    depth: usize,
    row: &mut [u16],
) {
    use super::vector_math::avx512::{exp, to_bf16};
    use std::arch::x86_64::*;
    assert!(
        input.len() > (channels - 1) * plane + (width - 1) / repeat && row.len() >= width * depth && depth >= channels
    );
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(plane as i32),
    );
    for c0 in (0..channels).step_by(16) {
        let mask: __mmask16 = if channels - c0 >= 16 {
            0xffff
        } else {
            (1u16 << (channels - c0)) - 1
        };
        let base = input.as_ptr().add(c0 * plane);
        let affine = norm.map(|n| {
            assert!(n.scale.len() >= channels && n.shift.len() >= channels);
            (
                _mm512_maskz_loadu_ps(mask, n.scale.as_ptr().add(c0)),
                _mm512_maskz_loadu_ps(mask, n.shift.as_ptr().add(c0)),
                n.silu,
            )
        });
        for x in 0..width {
            let mut v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, base.add(x / repeat).cast());
            if let Some((scale, shift, silu)) = affine {
                v = _mm512_fmadd_ps(v, scale, shift);
                if silu {
                    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), v));
                    v = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e));
                }
            }
            _mm256_mask_storeu_epi16(row.as_mut_ptr().add(x * depth + c0) as *mut i16, mask, to_bf16(v));
        }
    }
}

/// Adds the bias to a finished block (32 pixels × 32 output channels) and writes its real pixels into `out`.
fn write_block(
    staging: &Staging,
    destinations: &[Option<usize>; amx::BLOCK],
    panel: usize,
    weights: &PackedConv,
    residual: Option<&[f32]>,
    out_plane: usize,
    out: &SharedOut,
) {
    let channels = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(weights.out_channels);
    // Checked once here: the largest index written is the last real pixel's in the last channel.
    let last = destinations
        .iter()
        .flatten()
        .max()
        .map(|&d| d + (channels.end - 1) * out_plane);
    if last.is_none_or(|last| last >= out.len()) {
        assert!(last.is_none(), "convolution output index out of bounds");
        return;
    }
    let bias = &weights.bias[channels.clone()];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; every index written is at most `last` < out.len() (checked above), and each
        // (pixel, channel) belongs to exactly one task's block.
        unsafe { write_block_avx512(staging, destinations, bias, channels.start, residual, out_plane, out) };
        return;
    }
    for (r, destination) in destinations.iter().enumerate() {
        let Some(base) = destination else { continue };
        for ((o, &v), &b) in channels.clone().zip(staging.row(r)).zip(bias) {
            let index = base + o * out_plane;
            let skip = residual.map_or(0.0, |r| r[index]);
            // SAFETY: as above.
            unsafe { out.write_unchecked(index, v + b + skip) };
        }
    }
}

/// [`write_block`] into a channels-last output: each real pixel's row of the block, plus the bias (and the addends),
/// is a run of consecutive outputs. `item_size`: values per batch item of the output.
fn write_pixel_rows(
    staging: &Staging,
    destinations: &[Option<usize>; amx::BLOCK],
    panel: usize,
    weights: &PackedConv,
    addends: Addends<'_>,
    item_size: usize,
    out: &SharedOut,
) {
    let co = weights.out_channels;
    let channels = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(co);
    let bias = &weights.bias[channels.clone()];
    let mut values = [0f32; amx::BLOCK];
    let values = &mut values[..channels.len()];
    for (r, destination) in destinations.iter().enumerate() {
        let Some(base) = destination else { continue };
        let start = base + channels.start;
        let per_item = addends
            .per_item
            .map(|v| &v[base / item_size * co + channels.start..][..channels.len()]);
        let residual = addends.residual.map(|v| &v[start..][..channels.len()]);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected; the addends are sliced to the block's channels above, `copy_to` checks
            // the output's bounds.
            unsafe { add_row_avx512(staging.row(r), bias, per_item, residual, values) };
            // SAFETY: each (pixel, channel) belongs to exactly one task's block.
            unsafe { out.copy_to(start, values) };
            continue;
        }
        for (c, (v, &s)) in values.iter_mut().zip(staging.row(r)).enumerate() {
            *v = s + bias[c] + per_item.map_or(0.0, |p| p[c]) + residual.map_or(0.0, |p| p[c]);
        }
        // SAFETY: as above.
        unsafe { out.copy_to(start, values) };
    }
}

/// `values[c] = block_row[c] + bias[c] (+ per_item[c]) (+ residual[c])`, 16 channels at a time.
///
/// # Safety
/// AVX-512F; `bias`, and the addends when given, have `values.len()` ≤ `block_row.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_row_avx512(
    block_row: &[f32],
    bias: &[f32],
    per_item: Option<&[f32]>,
    residual: Option<&[f32]>,
    values: &mut [f32],
) {
    use std::arch::x86_64::*;
    let len = values.len();
    for c in (0..len).step_by(16) {
        let mask: __mmask16 = if len - c >= 16 { 0xffff } else { (1u16 << (len - c)) - 1 };
        // (No closure for the loads: a closure does not inherit the target features, and its intrinsics become
        // calls.)
        let mut v = _mm512_add_ps(
            _mm512_maskz_loadu_ps(mask, block_row.as_ptr().add(c)),
            _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(c)),
        );
        if let Some(p) = per_item {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p.as_ptr().add(c)));
        }
        if let Some(r) = residual {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(c)));
        }
        _mm512_mask_storeu_ps(values.as_mut_ptr().add(c), mask, v);
    }
}

/// [`write_block`]'s loop with the block transposed on the fly: each channel's 16 pixels at a time are gathered from
/// the staging column and, where they are 16 consecutive output pixels (most of an image row), stored as one vector.
///
/// # Safety
/// AVX-512F; every `destination + (first_channel + c)·out_plane` for `c < bias.len()` is in bounds and this task's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_block_avx512(
    staging: &Staging,
    destinations: &[Option<usize>; amx::BLOCK],
    bias: &[f32],
    first_channel: usize,
    residual: Option<&[f32]>,
    out_plane: usize,
    out: &SharedOut,
) {
    use std::arch::x86_64::*;
    // Offsets of rows 0..16 of one staging column.
    let rows = _mm512_setr_epi32(
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480,
    );
    for half in 0..2 {
        let pixels = &destinations[16 * half..][..16];
        // The half's pixels as runs of consecutive output positions (a run ends where the block crosses the end of
        // an image row, or padding): each run is one masked store per channel, the lanes of the others untouched.
        let mut runs = [(0usize, 0u16); 16];
        let mut count = 0;
        let mut lane = 0;
        while lane < 16 {
            let Some(first) = pixels[lane] else {
                lane += 1;
                continue;
            };
            let start = lane;
            while lane + 1 < 16 && pixels[lane + 1] == Some(first + (lane + 1 - start)) {
                lane += 1;
            }
            lane += 1;
            // Lane `l` of the run stores at `first − start + l`; the mask keeps lanes start..lane.
            let mask = (((1u32 << lane) - 1) & !((1u32 << start) - 1)) as u16;
            runs[count] = (first.wrapping_sub(start), mask);
            count += 1;
        }
        for (c, &b) in bias.iter().enumerate() {
            let column = staging.0.as_ptr().add(16 * half * amx::BLOCK + c);
            let v = _mm512_add_ps(_mm512_i32gather_ps::<4>(rows, column.cast()), _mm512_set1_ps(b));
            let channel_offset = (first_channel + c) * out_plane;
            for &(base, mask) in &runs[..count] {
                // `base + channel_offset` may point before the buffer by up to 15 lanes: those lanes are masked off
                // (never read or written), so the pointers are formed with wrapping arithmetic.
                let index = base.wrapping_add(channel_offset);
                let v = match residual {
                    Some(r) => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.as_ptr().wrapping_add(index))),
                    None => v,
                };
                _mm512_mask_storeu_ps(out.ptr_unchecked(0).wrapping_add(index), mask, v);
            }
        }
    }
}

/// [`conv2d_bf16`] as a candle operation on an f32 CPU tensor `input: [B, C_in, H, W]`, contiguous or a view of
/// channels-last memory; as a two-tensor operation, with a residual (the output's shape, contiguous) added in the
/// epilogue.
pub struct Conv2dBf16 {
    pub weights: std::sync::Arc<PackedConv>,
    pub padding: usize,
    pub stride: usize,
    /// Convolve the input nearest-neighbour upsampled ×2 ([`ConvInput::upsampled`]).
    pub upsample: bool,
    /// Group-normalise the input as it is read ([`ConvInput::norm`]).
    pub input_norm: Option<std::sync::Arc<GroupNormParams>>,
    pub output: ConvOutput,
    /// `[B, C_out]` added to the output (a resnet block's time embedding); channels-last outputs only.
    pub per_item: Option<Vec<f32>>,
}

/// The shape and memory layout of [`Conv2dBf16`]'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvOutput {
    /// `[B, C_out, H_out, W_out]`.
    Planes,
    /// `[B, H_out, W_out, C_out]`: an image kept channels-last between layers (each block row written as it is).
    Pixels,
    /// `[B, H_out·W_out, C_out]`: a transformer's tokens.
    Tokens,
}

/// The values of an f32 `[B, C, H, W]` view whose memory is channels-last (`[B, H, W, C]`, e.g. a transformer's
/// tokens transposed back to an image), when it is one.
fn channels_last_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Option<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        return None;
    };
    let (b, c, h, w) = layout.shape().dims4().ok()?;
    let channels_last = layout.stride() == [h * w * c, 1, w * c, c] && c > 1;
    let len = b * c * h * w;
    channels_last
        .then(|| data.get(layout.start_offset()..layout.start_offset() + len))
        .flatten()
}

/// A group norm's parameters for [`Conv2dBf16::input_norm`].
#[derive(Debug)]
pub struct GroupNormParams {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub groups: usize,
    pub eps: f64,
    /// SiLU after the affine step.
    pub silu: bool,
}

impl Conv2dBf16 {
    fn run(
        &self,
        input: &CpuStorage,
        input_l: &Layout,
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, in_channels, source_h, source_w) = input_l.shape().dims4()?;
        let factor = if self.upsample { 2 } else { 1 };
        let (height, width) = (factor * source_h, factor * source_w);
        if in_channels != self.weights.in_channels {
            candle_core::bail!(
                "convolution: input has {in_channels} channels, the layer takes {}",
                self.weights.in_channels
            );
        }
        let (out_h, out_w) = self
            .weights
            .output_size(height, width, self.padding, self.stride)
            .unwrap_or((0, 0));
        let co = self.weights.out_channels;
        let (shape, layout) = match self.output {
            ConvOutput::Planes => (Shape::from((batch, co, out_h, out_w)), OutputLayout::ChannelsFirst),
            ConvOutput::Pixels => (Shape::from((batch, out_h, out_w, co)), OutputLayout::ChannelsLast),
            ConvOutput::Tokens => (Shape::from((batch, out_h * out_w, co)), OutputLayout::ChannelsLast),
        };
        let residual = match residual {
            Some((_, layout)) if layout.shape() != &shape => {
                candle_core::bail!(
                    "convolution: residual {:?} is not the output's {shape:?}",
                    layout.shape()
                )
            }
            Some((storage, layout)) => Some(contiguous_f32(storage, layout, "convolution: residual")?),
            None => None,
        };
        let channels_last = channels_last_f32(input, input_l);
        let data = match channels_last {
            Some(data) => data,
            None => contiguous_f32(input, input_l, "convolution: input")?,
        };
        let affine = match &self.input_norm {
            Some(params) => {
                let dims = GroupNormDims {
                    batch,
                    channels: in_channels,
                    spatial: source_h * source_w,
                    groups: params.groups,
                    eps: params.eps,
                    silu: params.silu,
                };
                Some(match channels_last {
                    Some(_) => folded_affine_channels_last(data, &params.weight, &params.bias, dims)?,
                    None => folded_affine(data, &params.weight, &params.bias, dims)?,
                })
            }
            None => None,
        };
        let input = ConvInput {
            upsampled: self.upsample,
            norm: affine.as_ref().map(|(scale, shift)| InputNorm {
                scale,
                shift,
                silu: self.input_norm.as_ref().is_some_and(|p| p.silu),
            }),
            channels_last: channels_last.is_some(),
            ..ConvInput::plain(data, batch, height, width)
        };
        // SAFETY: `conv2d_bf16` stores every output value.
        let out = unsafe {
            amx::new_output(shape.elem_count(), |out| {
                let addends = Addends {
                    residual,
                    per_item: self.per_item.as_deref(),
                };
                conv2d_bf16(input, &self.weights, addends, out, self.padding, self.stride, layout)
            })?
        };
        Ok((CpuStorage::F32(out), shape))
    }
}

impl CustomOp1 for Conv2dBf16 {
    fn name(&self) -> &'static str {
        "ember-conv2d-bf16"
    }

    fn cpu_fwd(&self, input: &CpuStorage, input_l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(input, input_l, None)
    }
}

impl CustomOp2 for Conv2dBf16 {
    fn name(&self) -> &'static str {
        "ember-conv2d-bf16-residual"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_l: &Layout,
        residual: &CpuStorage,
        residual_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(input, input_l, Some((residual, residual_l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv::tests::{case_values, odd_shapes, reference};
    use crate::cpu::test_values;

    /// `conv2d_bf16` with no addends into a channels-first output, filled with NaN first (so a value left unwritten
    /// shows).
    fn convolve(input: ConvInput<'_>, packed: &PackedConv, padding: usize, stride: usize) -> Result<Vec<f32>> {
        let (h, w) = packed
            .output_size(input.height, input.width, padding, stride)
            .expect("the kernel fits");
        let mut out = vec![f32::NAN; input.batch * packed.out_channels * h * w];
        let target = SharedOut::new(&mut out);
        conv2d_bf16(
            input,
            packed,
            Addends::default(),
            &target,
            padding,
            stride,
            OutputLayout::ChannelsFirst,
        )?;
        Ok(out)
    }

    /// The padded input buffer is reused between calls without clearing: a call with few channels must not see the
    /// infinities a call with more left in its rows (an infinity times a zero weight is NaN).
    #[test]
    fn a_previous_calls_values_do_not_leak_into_padding() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        let wide = ConvDims {
            batch: 2,
            in_channels: 64,
            out_channels: 32,
            height: 9,
            width: 11,
            kernel: 3,
            padding: 1,
        };
        let (_, weight, bias) = case_values(wide, 1, amx::bf16_rounded);
        let packed = PackedConv::new(&weight, &bias, 32, 64, 3)?;
        let infinities = vec![f32::INFINITY; 2 * 64 * 9 * 11];
        convolve(ConvInput::plain(&infinities, 2, 9, 11), &packed, 1, 1)?;
        let narrow = ConvDims {
            in_channels: 3,
            height: 8,
            width: 12,
            ..wide
        };
        let (input, weight, bias) = case_values(narrow, 2, amx::bf16_rounded);
        let want = reference(&input, &weight, &bias, narrow);
        let packed = PackedConv::new(&weight, &bias, 32, 3, 3)?;
        let got = convolve(ConvInput::plain(&input, 2, 8, 12), &packed, 1, 1)?;
        let err = crate::cpu::max_abs_error(&got, &want);
        assert!(err < 1e-5, "max abs error {err}");
        Ok(())
    }

    /// Against the f32 kernel's six-loop f64 reference on the same odd shapes, the operands rounded to bf16 first
    /// (so what is checked is the indexing and the f32 accumulation, not bf16's rounding).
    #[test]
    fn matches_the_reference_on_odd_shapes() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (i, dims) in odd_shapes().into_iter().enumerate() {
            let (input, weight, bias) = case_values(dims, i as u64, amx::bf16_rounded);
            let want = reference(&input, &weight, &bias, dims);
            let ConvDims {
                batch,
                in_channels,
                out_channels,
                height,
                width,
                kernel,
                padding,
            } = dims;
            let packed = PackedConv::new(&weight, &bias, out_channels, in_channels, kernel)?;
            let plain = ConvInput::plain(&input, batch, height, width);
            let mut got = convolve(plain, &packed, padding, 1)?;
            let err = crate::cpu::max_abs_error(&got, &want);
            assert!(err < 1e-5, "{dims:?}: max abs error {err}");
            // With a residual: the same plus the residual, element by element.
            let residual = test_values(want.len(), 99 + i as u64);
            got.fill(f32::NAN);
            conv2d_bf16(
                plain,
                &packed,
                Addends::residual(&residual),
                &SharedOut::new(&mut got),
                padding,
                1,
                OutputLayout::ChannelsFirst,
            )?;
            for ((&g, &w), &r) in got.iter().zip(&want).zip(&residual) {
                assert!((g - (w + r)).abs() < 1e-5, "{dims:?} with residual: {g} vs {}", w + r);
            }
            // Stride 2 and 3: every stride-th output pixel of the stride-1 result (rows and columns).
            let (out_h, out_w) = dims.output_size().expect("fits");
            for stride in [2, 3] {
                let (sh, sw) = packed.output_size(height, width, padding, stride).expect("fits");
                let strided = convolve(plain, &packed, padding, stride)?;
                for (index, &got) in strided.iter().enumerate() {
                    let (plane, y, x) = (index / (sh * sw), index / sw % sh, index % sw);
                    let want = want[(plane * out_h + stride * y) * out_w + stride * x];
                    assert!((got - want).abs() < 1e-5, "{dims:?} stride {stride}: {got} vs {want}");
                }
            }
        }
        Ok(())
    }

    /// Per (item, channel) affine maps of a group norm's kind, different for every plane: `(scale, shift)`.
    fn plane_affine(planes: usize) -> (Vec<f32>, Vec<f32>) {
        (
            (0..planes).map(|i| 0.5 + (i % 7) as f32 * 0.3).collect(),
            (0..planes).map(|i| (i % 5) as f32 * 0.2 - 0.4).collect(),
        )
    }

    /// A group-normalised input convolves like the normalised tensor: without SiLU to f32 accumulation (the
    /// reference rounds `x·scale + shift` with the same single rounding as the kernel's FMA); with SiLU each input may land one bf16
    /// step away (the vector exp is not the scalar one), so the bound is that step's worst effect, the same
    /// convolution of |x|·2⁻⁸ with |W|.
    #[test]
    fn normalised_input_matches_the_normalised_tensor() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (case, dims) in odd_shapes().into_iter().enumerate() {
            let ConvDims {
                batch,
                in_channels,
                out_channels,
                height,
                width,
                kernel,
                padding,
            } = dims;
            let (input, weight, bias) = case_values(dims, 70 + case as u64, amx::bf16_rounded);
            let planes = batch * in_channels;
            let (scale, shift) = plane_affine(planes);
            let packed = PackedConv::new(&weight, &bias, out_channels, in_channels, kernel)?;
            for silu in [false, true] {
                let plane_size = height * width;
                let normalised: Vec<f32> = input
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let plane = i / plane_size;
                        let v = v.mul_add(scale[plane], shift[plane]);
                        amx::bf16_rounded(if silu { v / (1.0 + (-v).exp()) } else { v })
                    })
                    .collect();
                let want = reference(&normalised, &weight, &bias, dims);
                let step: Vec<f32> = normalised.iter().map(|v| v.abs() / 256.0).collect();
                let abs_weight: Vec<f32> = weight.iter().map(|w| w.abs()).collect();
                let bound = reference(&step, &abs_weight, &vec![0.0; out_channels], dims);
                let mut got = vec![f32::NAN; want.len()];
                let input = ConvInput {
                    norm: Some(InputNorm {
                        scale: &scale,
                        shift: &shift,
                        silu,
                    }),
                    ..ConvInput::plain(&input, batch, height, width)
                };
                conv2d_bf16(
                    input,
                    &packed,
                    Addends::default(),
                    &SharedOut::new(&mut got),
                    padding,
                    1,
                    OutputLayout::ChannelsFirst,
                )?;
                for (index, ((&g, &w), &b)) in got.iter().zip(&want).zip(&bound).enumerate() {
                    // f32 accumulation: 1e-5 relative, as the linear layer's test.
                    let allowed = 1e-5 * (1.0 + w.abs()) + if silu { b } else { 0.0 };
                    assert!(
                        (g - w).abs() <= allowed,
                        "{dims:?} silu {silu}, value {index}: {g} vs {w}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A channels-last input (a transformer's tokens) and a channels-last output (and residual) give the bits of
    /// the channels-first convolution, transposed.
    #[test]
    fn channels_last_input_and_output_give_the_channels_first_bits() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (case, &(batch, channels, out_channels, h, w, kernel, padding)) in [
            (2, 40, 33, 3, 5, 1, 0),
            (1, 64, 32, 8, 8, 3, 1),
            (2, 17, 48, 4, 6, 3, 1),
        ]
        .iter()
        .enumerate()
        {
            let dims = ConvDims {
                batch,
                in_channels: channels,
                out_channels,
                height: h,
                width: w,
                kernel,
                padding,
            };
            let (input, weight, bias) = case_values(dims, 70 + case as u64, |v| v);
            let packed = PackedConv::new(&weight, &bias, out_channels, channels, kernel)?;
            // `[B, C, H, W]` with `c` channels → `[B, H, W, C]`.
            let to_pixels = |planes: &[f32], c: usize| -> Vec<f32> {
                (0..planes.len())
                    .map(|index| {
                        let (pixel, channel) = (index / c, index % c);
                        let (item, p) = (pixel / (h * w), pixel % (h * w));
                        planes[(item * c + channel) * h * w + p]
                    })
                    .collect()
            };
            let tokens = to_pixels(&input, channels);
            let residual = test_values(batch * out_channels * h * w, 80 + case as u64);
            let mut want = vec![f32::NAN; residual.len()];
            let plain = ConvInput::plain(&input, batch, h, w);
            conv2d_bf16(
                plain,
                &packed,
                Addends::residual(&residual),
                &SharedOut::new(&mut want),
                padding,
                1,
                OutputLayout::ChannelsFirst,
            )?;
            let mut got = vec![f32::NAN; residual.len()];
            let channels_last = ConvInput {
                channels_last: true,
                ..ConvInput::plain(&tokens, batch, h, w)
            };
            conv2d_bf16(
                channels_last,
                &packed,
                Addends::residual(&residual),
                &SharedOut::new(&mut got),
                padding,
                1,
                OutputLayout::ChannelsFirst,
            )?;
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "{dims:?}"
            );
            // A channels-last output (and residual): the same values, transposed.
            let mut got = vec![f32::NAN; residual.len()];
            let (out, residual) = (SharedOut::new(&mut got), to_pixels(&residual, out_channels));
            let layout = OutputLayout::ChannelsLast;
            conv2d_bf16(plain, &packed, Addends::residual(&residual), &out, padding, 1, layout)?;
            assert!(
                got.iter()
                    .zip(&to_pixels(&want, out_channels))
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{dims:?}"
            );
        }
        Ok(())
    }

    /// Every way of reading a channels-last input (normalised with and without SiLU, upsampled, strided) gives the
    /// bits of the same read of the channels-first input, on all the odd shapes; per-item values on a channels-last
    /// output give the bits of adding them to the output after.
    #[test]
    fn channels_last_reads_give_the_channels_first_bits() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (case, dims) in odd_shapes().into_iter().enumerate() {
            let ConvDims {
                batch,
                in_channels: ci,
                out_channels: co,
                height: h,
                width: w,
                kernel,
                padding,
            } = dims;
            let (input, weight, bias) = case_values(dims, 90 + case as u64, |v| v);
            let packed = PackedConv::new(&weight, &bias, co, ci, kernel)?;
            let pixels: Vec<f32> = (0..input.len())
                .map(|i| {
                    let (item, p, c) = (i / (h * w * ci), i / ci % (h * w), i % ci);
                    input[(item * ci + c) * h * w + p]
                })
                .collect();
            let (scale, shift) = plane_affine(batch * ci);
            let norm = |silu| InputNorm {
                scale: &scale,
                shift: &shift,
                silu,
            };
            // (normalisation, upsampled, stride)
            let reads = [
                (None, false, 1),
                (Some(norm(false)), false, 1),
                (Some(norm(true)), false, 1),
                (Some(norm(true)), true, 1),
                (None, false, 2),
            ];
            for (norm, upsampled, stride) in reads {
                let factor = if upsampled { 2 } else { 1 };
                let (height, width) = (factor * h, factor * w);
                let Some((out_h, out_w)) = packed.output_size(height, width, padding, stride) else {
                    continue;
                };
                let read = |data, channels_last| ConvInput {
                    norm,
                    upsampled,
                    channels_last,
                    ..ConvInput::plain(data, batch, height, width)
                };
                let mut want = vec![f32::NAN; batch * co * out_h * out_w];
                let out = SharedOut::new(&mut want);
                let layout = OutputLayout::ChannelsLast;
                conv2d_bf16(
                    read(&input, false),
                    &packed,
                    Addends::default(),
                    &out,
                    padding,
                    stride,
                    layout,
                )?;
                let mut got = vec![f32::NAN; want.len()];
                let out = SharedOut::new(&mut got);
                conv2d_bf16(
                    read(&pixels, true),
                    &packed,
                    Addends::default(),
                    &out,
                    padding,
                    stride,
                    layout,
                )?;
                let what = format!("{dims:?} norm {norm:?} upsampled {upsampled} stride {stride}");
                assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "{what}");
                // Per-item values, added as the rows are written.
                let per_item = test_values(batch * co, 7);
                let addends = Addends {
                    per_item: Some(&per_item),
                    ..Addends::default()
                };
                let out = SharedOut::new(&mut got);
                conv2d_bf16(read(&pixels, true), &packed, addends, &out, padding, stride, layout)?;
                for (index, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let (item, c) = (index / (out_h * out_w * co), index % co);
                    let w = w + per_item[item * co + c];
                    assert_eq!(g.to_bits(), w.to_bits(), "{what} with per-item values, value {index}");
                }
            }
        }
        Ok(())
    }

    /// An upsampled input convolves like the explicitly upsampled tensor (nearest ×2), against the same reference.
    #[test]
    fn upsampled_input_matches_the_upsampled_tensor() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (case, &(batch, in_channels, out_channels, source_h, source_w)) in
            [(1, 3, 5, 1, 1), (2, 40, 33, 3, 5), (1, 64, 32, 8, 8)]
                .iter()
                .enumerate()
        {
            let dims = ConvDims {
                batch,
                in_channels,
                out_channels,
                height: 2 * source_h,
                width: 2 * source_w,
                kernel: 3,
                padding: 1,
            };
            let source: Vec<f32> = test_values(batch * in_channels * source_h * source_w, 7 + case as u64)
                .into_iter()
                .map(amx::bf16_rounded)
                .collect();
            let upsampled: Vec<f32> = (0..batch * in_channels * dims.height * dims.width)
                .map(|index| {
                    let (plane, y, x) = (
                        index / (dims.height * dims.width),
                        index / dims.width % dims.height,
                        index % dims.width,
                    );
                    source[(plane * source_h + y / 2) * source_w + x / 2]
                })
                .collect();
            let (_, weight, bias) = case_values(dims, 50 + case as u64, amx::bf16_rounded);
            let want = reference(&upsampled, &weight, &bias, dims);
            let packed = PackedConv::new(&weight, &bias, out_channels, in_channels, 3)?;
            let input = ConvInput {
                upsampled: true,
                ..ConvInput::plain(&source, batch, dims.height, dims.width)
            };
            let got = convolve(input, &packed, 1, 1)?;
            let err = crate::cpu::max_abs_error(&got, &want);
            assert!(err < 1e-5, "{dims:?} upsampled: max abs error {err}");
        }
        Ok(())
    }
}
