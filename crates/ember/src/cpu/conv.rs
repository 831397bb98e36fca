//! Stride-1 convolution as a sum of one GEMM per kernel tap, with no im2col matrix.
//!
//! The input is copied once into a zero-padded buffer laid out `[C_in][B][H+2p][W+2p]`. Read as a matrix with one row
//! per input channel, that buffer shifted by `ky·(W+2p) + kx` elements holds, in every column, the input pixel that
//! tap `(ky, kx)` sees for the output pixel of that column — for all batch items at once. So
//! `out_wide[C_out, columns] = Σ_taps W_tap[C_out, C_in] · padded[C_in, columns + shift]` is `k²` plain GEMMs on
//! strided views (the `gemm` crate, AVX-512 kernels where the CPU has them), accumulating into one buffer. Columns that
//! fall on padding (the last `2p` of every row, the last `2p` rows of every item) are computed and dropped when the
//! result is copied out to `[B, C_out, H_out, W_out]` with the bias added. That waste is `(H+2p)(W+2p)/(HW)` − 1: 6% at
//! 64×64, more at SD's 8×8 layers, which are few. candle's own CPU convolution builds an im2col tile per 512 pixels and
//! re-lays out the kernel on every call.
//!
//! Tried and dropped: an AVX-512 direct kernel (6 output channels × 64 columns in registers, summed over all taps and
//! input channels before one store) reached 138 GFLOP/s on the UNet's convolutions against 174 for these GEMM calls
//! (`ember bench`, same run): gemm's packed panels beat streaming the unpacked weights.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// Output columns per GEMM: the accumulator for one block of columns (`C_out` × this) stays in cache while the
/// `k²` taps add into it.
const COLUMN_BLOCK: usize = 1024;

/// Geometry of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvDims {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvDims {
    pub(crate) fn padded(&self) -> (usize, usize) {
        (self.height + 2 * self.padding, self.width + 2 * self.padding)
    }

    /// Values of one padded image plane, the stride between batch items in a channel row of the padded buffer.
    pub(crate) fn plane(&self) -> usize {
        let (hp, wp) = self.padded();
        hp * wp
    }

    /// Columns of the wide output: the most a view shifted by the largest tap offset, `(k − 1)·(Wp + 1)`, can
    /// cover without reading past a channel row of the padded buffer. Needs the kernel to fit (checked first).
    pub(crate) fn columns(&self) -> usize {
        let (_, wp) = self.padded();
        self.batch * self.plane() - (self.kernel - 1) * (wp + 1)
    }

    /// Output height and width; `None` when the kernel does not fit the padded input.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        let (hp, wp) = self.padded();
        Some((hp.checked_sub(self.kernel)? + 1, wp.checked_sub(self.kernel)? + 1))
    }

    pub(crate) fn check(&self, input: &[f32], weight: &[f32], bias: &[f32]) -> Result<(usize, usize)> {
        let ConvDims {
            batch: b,
            in_channels: ci,
            out_channels: co,
            height: h,
            width: w,
            kernel: k,
            ..
        } = *self;
        let Some(out) = self.output_size().filter(|&(oh, ow)| oh > 0 && ow > 0 && k > 0) else {
            candle_core::bail!(
                "convolution: a {k}×{k} kernel does not fit a {h}×{w} input padded by {}",
                self.padding
            );
        };
        if input.len() != b * ci * h * w || weight.len() != co * ci * k * k || bias.len() != co {
            candle_core::bail!(
                "convolution: buffer sizes input {}, weight {}, bias {} do not match {b}×{ci}×{h}×{w} → {co} channels, {k}×{k} kernel",
                input.len(),
                weight.len(),
                bias.len()
            );
        }
        Ok(out)
    }
}

/// Convolves `input: [B, C_in, H, W]` with `weight: [C_out, C_in, k, k]` (PyTorch layout) plus `bias: [C_out]`,
/// stride 1, into `out: [B, C_out, H_out, W_out]`.
pub fn conv2d(input: &[f32], weight: &[f32], bias: &[f32], out: &mut [f32], dims: ConvDims) -> Result<()> {
    let (out_h, out_w) = dims.check(input, weight, bias)?;
    let ConvDims {
        batch: b,
        in_channels: ci,
        out_channels: co,
        ..
    } = dims;
    if out.len() != b * co * out_h * out_w {
        candle_core::bail!(
            "convolution: output buffer has {} values, expected {}",
            out.len(),
            b * co * out_h * out_w
        );
    }
    let (plane, columns) = (dims.plane(), dims.columns());
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch { padded, wide } = &mut *scratch;
        // `padded` must start all zeros (its borders are the padding); `wide` is overwritten by the first tap.
        padded.clear();
        padded.resize(ci * b * plane, 0.0);
        if wide.len() < co * columns {
            wide.resize(co * columns, 0.0);
        }
        convolve_padded(input, weight, bias, out, dims, padded, &mut wide[..co * columns]);
        // Keep the buffers for the next call unless they are huge (the VAE's full-resolution layers).
        if padded.capacity() + wide.capacity() > SCRATCH_KEEP_FLOATS {
            *scratch = Scratch::default();
        }
    });
    Ok(())
}

/// Floats of scratch a thread keeps between calls (64 MiB): every UNet layer at 512×512 fits, so its steps allocate
/// no scratch at all (fresh buffers cost page faults and the kernel's page zeroing).
const SCRATCH_KEEP_FLOATS: usize = 16 << 20;

#[derive(Default)]
struct Scratch {
    padded: Vec<f32>,
    wide: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The convolution proper, with `padded` zeroed to `[C_in][B][Hp][Wp]` and `wide` `[C_out][columns]`.
fn convolve_padded(
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    dims: ConvDims,
    padded: &mut [f32],
    wide: &mut [f32],
) {
    let ConvDims {
        batch: b,
        in_channels: ci,
        height: h,
        width: w,
        padding: p,
        ..
    } = dims;
    let (_, wp) = dims.padded();
    let (plane, columns) = (dims.plane(), dims.columns());
    padded.par_chunks_exact_mut(plane).enumerate().for_each(|(index, dst)| {
        let (c, item) = (index / b, index % b);
        let src = &input[(item * ci + c) * h * w..][..h * w];
        for (y, row) in src.chunks_exact(w).enumerate() {
            dst[(y + p) * wp + p..][..w].copy_from_slice(row);
        }
    });
    sum_taps_with_gemm(padded, weight, wide, dims);
    copy_out_with_bias(wide, columns, bias, out, dims);
}

/// Keeps the real output pixels of `wide` (`[C_out][row]`, `row` ≥ the wide output's columns) and adds the bias.
fn copy_out_with_bias(wide: &[f32], row: usize, bias: &[f32], out: &mut [f32], dims: ConvDims) {
    let co = dims.out_channels;
    let (hp, wp) = dims.padded();
    let (out_h, out_w) = (hp + 1 - dims.kernel, wp + 1 - dims.kernel);
    let plane = dims.plane();
    out.par_chunks_exact_mut(out_h * out_w)
        .enumerate()
        .for_each(|(plane_index, dst)| {
            let (item, o) = (plane_index / co, plane_index % co);
            let src = &wide[o * row + item * plane..];
            for (y, row) in dst.chunks_exact_mut(out_w).enumerate() {
                for (d, &s) in row.iter_mut().zip(&src[y * wp..y * wp + out_w]) {
                    *d = s + bias[o];
                }
            }
        });
}

/// One `gemm` call per tap and block of columns, accumulating into `wide`.
fn sum_taps_with_gemm(padded: &[f32], weight: &[f32], wide: &mut [f32], dims: ConvDims) {
    let ConvDims {
        batch: b,
        in_channels: ci,
        out_channels: co,
        kernel: k,
        ..
    } = dims;
    let (_, wp) = dims.padded();
    let (plane, columns) = (dims.plane(), dims.columns());
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let taps = k * k;
    for start in (0..columns).step_by(COLUMN_BLOCK) {
        let n = COLUMN_BLOCK.min(columns - start);
        for tap in 0..taps {
            let shift = (tap / k) * wp + tap % k;
            // SAFETY: every view stays inside its buffer: `wide` rows are `columns` long (start + n ≤ columns);
            // `padded` rows are `b·plane` long and start + n + shift ≤ columns + (k − 1)·(wp + 1) = b·plane; the weight
            // view reads element (o, i) at o·ci·taps + i·taps + tap < co·ci·taps.
            unsafe {
                gemm::gemm(
                    co,
                    n,
                    ci,
                    wide.as_mut_ptr().add(start),
                    1,
                    columns as isize,
                    tap > 0,
                    weight.as_ptr().add(tap),
                    taps as isize,
                    (ci * taps) as isize,
                    padded.as_ptr().add(start + shift),
                    1,
                    (b * plane) as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    }
}

/// [`conv2d`] as a candle operation on contiguous f32 CPU tensors `input: [B, C_in, H, W]`,
/// `weight: [C_out, C_in, k, k]`, `bias: [C_out]`.
pub struct Conv2dStride1 {
    pub padding: usize,
}

impl CustomOp3 for Conv2dStride1 {
    fn name(&self) -> &'static str {
        "ember-conv2d"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_l: &Layout,
        weight: &CpuStorage,
        weight_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, in_channels, height, width) = input_l.shape().dims4()?;
        let (out_channels, weight_in, kernel, kernel_w) = weight_l.shape().dims4()?;
        if weight_in != in_channels || kernel != kernel_w {
            candle_core::bail!(
                "convolution: weight {:?} does not fit an input with {in_channels} channels",
                weight_l.shape()
            );
        }
        let dims = ConvDims {
            batch,
            in_channels,
            out_channels,
            height,
            width,
            kernel,
            padding: self.padding,
        };
        let Some((out_h, out_w)) = dims.output_size() else {
            candle_core::bail!("convolution: a {kernel}×{kernel} kernel does not fit a {height}×{width} input");
        };
        let mut out = super::zeroed_output(batch * out_channels * out_h * out_w);
        conv2d(
            contiguous_f32(input, input_l, "convolution: input")?,
            contiguous_f32(weight, weight_l, "convolution: weight")?,
            contiguous_f32(bias, bias_l, "convolution: bias")?,
            &mut out,
            dims,
        )?;
        Ok((CpuStorage::F32(out), Shape::from((batch, out_channels, out_h, out_w))))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// The textbook six-loop convolution in f64.
    pub(crate) fn reference(input: &[f32], weight: &[f32], bias: &[f32], dims: ConvDims) -> Vec<f32> {
        let ConvDims {
            batch: b,
            in_channels: ci,
            out_channels: co,
            height: h,
            width: w,
            kernel: k,
            padding: p,
        } = dims;
        let (oh, ow) = dims.output_size().unwrap();
        let mut out = vec![0f32; b * co * oh * ow];
        for item in 0..b {
            for o in 0..co {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut sum = bias[o] as f64;
                        for i in 0..ci {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = ((y + ky) as isize - p as isize, (x + kx) as isize - p as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let v = input[((item * ci + i) * h + iy as usize) * w + ix as usize];
                                    sum += v as f64 * weight[((o * ci + i) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        out[((item * co + o) * oh + y) * ow + x] = sum as f32;
                    }
                }
            }
        }
        out
    }

    /// SD's 3×3/pad 1 and 1×1, channel counts that are not multiples of 16, the VAE's 3-channel ends, 1-pixel and
    /// non-square images, unpadded 3×3 (after circular padding), several parallel tasks in both directions.
    pub(crate) fn odd_shapes() -> Vec<ConvDims> {
        [
            (1, 1, 1, 1, 1, 1, 0),
            (2, 3, 5, 7, 9, 3, 1),
            (2, 17, 33, 8, 8, 3, 1),
            (1, 4, 3, 13, 11, 3, 1),
            (2, 40, 24, 5, 6, 1, 0),
            (1, 5, 7, 1, 1, 3, 1),
            (2, 6, 10, 9, 7, 3, 0),
            (1, 3, 8, 40, 36, 3, 1),
            (2, 70, 100, 12, 20, 3, 1),
            (2, 5, 9, 6, 7, 5, 2),
            (2, 3, 4, 4, 5, 3, 2),
        ]
        .into_iter()
        .map(
            |(batch, in_channels, out_channels, height, width, kernel, padding)| ConvDims {
                batch,
                in_channels,
                out_channels,
                height,
                width,
                kernel,
                padding,
            },
        )
        .collect()
    }

    /// Input, weight and bias values for case `i` of `dims`, input and weight passed through `round`.
    pub(crate) fn case_values(dims: ConvDims, i: u64, round: fn(f32) -> f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let ConvDims {
            batch: b,
            in_channels: ci,
            out_channels: co,
            height: h,
            width: w,
            kernel: k,
            ..
        } = dims;
        let input = test_values(b * ci * h * w, 3 * i).into_iter().map(round).collect();
        let weight = test_values(co * ci * k * k, 3 * i + 1).into_iter().map(round).collect();
        (input, weight, test_values(co, 3 * i + 2))
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() -> Result<()> {
        for (i, dims) in odd_shapes().into_iter().enumerate() {
            let (input, weight, bias) = case_values(dims, i as u64, |v| v);
            let want = reference(&input, &weight, &bias, dims);
            let mut got = vec![f32::NAN; want.len()];
            conv2d(&input, &weight, &bias, &mut got, dims)?;
            let err = crate::cpu::max_abs_error(&got, &want);
            assert!(err < 1e-5, "{dims:?}: max abs error {err}");
        }
        Ok(())
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let dims = ConvDims {
            batch: 1,
            in_channels: 1,
            out_channels: 1,
            height: 2,
            width: 2,
            kernel: 3,
            padding: 0,
        };
        let mut out = vec![0f32; 1];
        assert!(conv2d(&[0.0; 4], &[0.0; 9], &[0.0], &mut out, dims).is_err());
        let fits = ConvDims { padding: 1, ..dims };
        assert!(conv2d(&[0.0; 3], &[0.0; 9], &[0.0], &mut out, fits).is_err());
    }
}
