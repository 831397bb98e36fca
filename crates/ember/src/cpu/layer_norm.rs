//! Layer normalisation over the last dimension (the transformer blocks' `norm1`–`norm3`), one pass per row with
//! AVX-512 and statistics in f64 like `group_norm`. candle's CPU kernel summed each row with a scalar loop and zeroed
//! its output first: 2.5% of a bf16 UNet step at 512×512 (`perf`).

use super::amx::{self, OutputElement};
use super::contiguous_f32;
use super::group_norm::mean_and_variance;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// `out[r][c] = (x[r][c] − mean_r) / √(var_r + eps) · weight[c] + bias[c]` for rows of `weight.len()` values; stores
/// every value of `out` when it returns `Ok` (rounded, into a bf16 output).
pub fn layer_norm<T: OutputElement>(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &amx::SharedOut<'_, T>,
    eps: f64,
) -> Result<()> {
    let width = weight.len();
    if width == 0 || bias.len() != width || !x.len().is_multiple_of(width) || out.len() != x.len() {
        candle_core::bail!(
            "layer norm: input of {} values, output of {}, weight {} and bias {} do not form rows of one width",
            x.len(),
            out.len(),
            width,
            bias.len()
        );
    }
    x.par_chunks(width).enumerate().for_each_init(
        || vec![0f32; width],
        |normed, (r, row)| {
            normalise_row(row, weight, bias, eps, normed);
            // SAFETY: row `r` is this task's alone.
            unsafe { out.store(r * width, normed) };
        },
    );
    Ok(())
}

fn normalise_row(x: &[f32], weight: &[f32], bias: &[f32], eps: f64, out: &mut [f32]) {
    let (mean, var) = mean_and_variance(x);
    let inv_std = (1.0 / (var + eps).sqrt()) as f32;
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detect() == super::Isa::Avx512 {
        // SAFETY: AVX-512F was detected; the four slices have the same length.
        unsafe { avx512_row(x, weight, bias, (mean, inv_std), out) };
        return;
    }
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v as f64 - mean) as f32 * inv_std * w + b;
    }
}

/// [`normalise_row`]'s affine step with 16 lanes, over `x.len()` values.
///
/// # Safety
/// The CPU must have AVX-512F (checked at run time by the caller); `weight`, `bias` and `out` hold at least
/// `x.len()` values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_row(x: &[f32], weight: &[f32], bias: &[f32], (mean, inv_std): (f64, f32), out: &mut [f32]) {
    use super::group_norm::avx512::centred;
    use std::arch::x86_64::*;
    let mean_v = _mm512_set1_pd(mean);
    let inv_std = _mm512_set1_ps(inv_std);
    let len = x.len();
    for i in (0..len).step_by(16) {
        let mask: __mmask16 = if len - i >= 16 { 0xffff } else { (1u16 << (len - i)) - 1 };
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        let scale = _mm512_mul_ps(inv_std, _mm512_maskz_loadu_ps(mask, weight.as_ptr().add(i)));
        let shift = _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(i));
        let o = _mm512_fmadd_ps(centred(v, mean_v), scale, shift);
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, o);
    }
}

/// [`layer_norm`] as a candle operation on contiguous f32 CPU tensors `x: [.., C]`, `weight`, `bias`: `C` values.
pub struct FusedLayerNorm {
    pub eps: f64,
    /// The output as bf16 (for linear layers on bf16 tiles, which would round it), else f32.
    pub bf16_output: bool,
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "ember-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        weight: &CpuStorage,
        weight_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_l, "layer norm: input")?;
        let (weight, bias) = (
            contiguous_f32(weight, weight_l, "layer norm: weight")?,
            contiguous_f32(bias, bias_l, "layer norm: bias")?,
        );
        // SAFETY: `layer_norm` stores every output value.
        let out = unsafe {
            match self.bf16_output {
                true => CpuStorage::BF16(amx::new_output(x.len(), |out| {
                    layer_norm(x, weight, bias, out, self.eps)
                })?),
                false => CpuStorage::F32(amx::new_output(x.len(), |out| {
                    layer_norm(x, weight, bias, out, self.eps)
                })?),
            }
        };
        Ok((out, x_l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the formula in f64 on rows whose mean is far from zero (the f64 centring matters there), widths that
    /// leave every vector tail; every output value written (NaN start).
    #[test]
    fn matches_the_textbook_formula() -> Result<()> {
        for width in [1, 7, 16, 33, 320] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.07 + (i / width) as f32 * 30.0)
                .collect();
            let weight: Vec<f32> = (0..width).map(|c| 0.5 + c as f32 * 0.01).collect();
            let bias: Vec<f32> = (0..width).map(|c| c as f32 * 0.005 - 0.2).collect();
            let mut got = vec![f32::NAN; x.len()];
            layer_norm(&x, &weight, &bias, &amx::SharedOut::new(&mut got), 1e-5)?;
            for (r, row) in x.chunks(width).enumerate() {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                for (c, &v) in row.iter().enumerate() {
                    let want = (v as f64 - mean) / (var + 1e-5).sqrt() * weight[c] as f64 + bias[c] as f64;
                    let err = (got[r * width + c] as f64 - want).abs() / want.abs().max(1.0);
                    assert!(err < 5e-7, "width {width} ({r}, {c}): relative error {err}");
                }
            }
        }
        let mut out = vec![0f32; 6];
        assert!(layer_norm(&[0.0; 6], &[1.0; 4], &[0.0; 4], &amx::SharedOut::new(&mut out), 1e-5).is_err());
        // A bf16 output is the f32 output rounded.
        let (x, weight, bias) = (crate::cpu::test_values(3 * 40, 1), vec![0.7; 40], vec![0.1; 40]);
        let mut f32_out = vec![f32::NAN; x.len()];
        layer_norm(&x, &weight, &bias, &amx::SharedOut::new(&mut f32_out), 1e-5)?;
        let mut bf16_out = vec![half::bf16::NAN; x.len()];
        layer_norm(&x, &weight, &bias, &amx::SharedOut::new(&mut bf16_out), 1e-5)?;
        assert!(bf16_out
            .iter()
            .zip(&f32_out)
            .all(|(b, &f)| b.to_bits() == amx::bf16_bits(f)));
        Ok(())
    }
}
