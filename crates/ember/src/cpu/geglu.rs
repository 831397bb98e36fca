//! GEGLU (`value · gelu(gate)`, the UNet's feed-forward activation) in one pass: each output row reads its row of the
//! projection once, both halves, and writes the product. candle's chunk → gelu → multiply made three passes over
//! `[B, tokens, 4·dim]` tensors (10 M values per block at 64×64 latents) with a scalar erf: ~120 ms per transformer
//! block there, the largest share of the UNet's non-matrix time.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// `out[r][c] = x[r][c] · gelu(x[r][inner + c])` for `x: [rows, 2·inner]`, with the exact (erf) GELU that diffusers
/// uses. Needs AVX-512F (`available`).
pub fn geglu(x: &[f32], out: &mut [f32], inner: usize) -> Result<()> {
    if inner == 0 || x.len() != 2 * out.len() || !out.len().is_multiple_of(inner) {
        candle_core::bail!(
            "GEGLU: input of {} values and output of {} do not split into rows of 2 × {inner}",
            x.len(),
            out.len()
        );
    }
    if !available() {
        candle_core::bail!("the fused GEGLU kernel needs AVX-512F");
    }
    out.par_chunks_mut(inner)
        .zip(x.par_chunks(2 * inner))
        .for_each(|(dst, src)| {
            let (value, gate) = src.split_at(inner);
            // SAFETY: AVX-512F checked above; the three slices are `inner` long.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                geglu_row_avx512(value, gate, dst)
            };
        });
    Ok(())
}

/// One row of [`geglu`]: `out[c] = value[c] · gelu(gate[c])` over `out`'s length (the fused bf16 feed-forward calls
/// it per block of 32 features). Without AVX-512F, a scalar loop with candle's erf.
pub fn geglu_row(value: &[f32], gate: &[f32], out: &mut [f32]) {
    let len = out.len();
    assert!(
        value.len() >= len && gate.len() >= len,
        "GEGLU row: value or gate shorter than the output"
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F detected; both inputs hold at least `out.len()` values.
        unsafe { geglu_row_avx512(value, gate, out) };
        return;
    }
    for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
        *o = v * 0.5 * g * (1.0 + candle_core::cpu::erf::erf_f32(g * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Whether [`geglu`] runs on this CPU (AVX-512F, not turned off by `EMBER_CPU_KERNELS=portable`).
pub fn available() -> bool {
    super::Isa::detect() == super::Isa::Avx512
}

/// [`geglu_row`] with 16 lanes.
///
/// # Safety
/// The CPU must have AVX-512F (checked at run time by the caller); `value` and `gate` hold at least `out.len()`
/// values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn geglu_row_avx512(value: &[f32], gate: &[f32], out: &mut [f32]) {
    use super::vector_math::avx512::erf;
    use std::arch::x86_64::*;
    let len = out.len();
    for i in (0..len).step_by(16) {
        let mask: __mmask16 = if len - i >= 16 { 0xffff } else { (1u16 << (len - i)) - 1 };
        let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(i));
        let v = _mm512_maskz_loadu_ps(mask, value.as_ptr().add(i));
        // gelu(g) = g/2 · (1 + erf(g/√2))
        let cdf = _mm512_add_ps(
            _mm512_set1_ps(1.0),
            erf(_mm512_mul_ps(g, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2))),
        );
        let gelu = _mm512_mul_ps(_mm512_mul_ps(g, _mm512_set1_ps(0.5)), cdf);
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, _mm512_mul_ps(v, gelu));
    }
}

/// [`geglu`] as a candle operation on a contiguous f32 CPU tensor `[.., 2·inner]` → `[.., inner]`.
pub struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "ember-geglu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let Some(&width) = dims.last().filter(|&&w| w % 2 == 0) else {
            candle_core::bail!("GEGLU: input {:?} does not end in an even width", layout.shape());
        };
        let x = contiguous_f32(x, layout, "GEGLU: input")?;
        let mut out = super::zeroed_output(x.len() / 2);
        geglu(x, &mut out, width / 2)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = width / 2;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    #[test]
    fn matches_value_times_exact_gelu() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::Avx512) {
            return Ok(());
        }
        for (rows, inner) in [(1, 1), (3, 17), (5, 40), (2, 333)] {
            let x: Vec<f32> = test_values(rows * 2 * inner, inner as u64)
                .iter()
                .map(|v| v * 6.0)
                .collect();
            let mut got = vec![f32::NAN; rows * inner];
            geglu(&x, &mut got, inner)?;
            for r in 0..rows {
                for c in 0..inner {
                    let (v, g) = (x[r * 2 * inner + c] as f64, x[r * 2 * inner + inner + c] as f64);
                    // The exact GELU in f64 (candle's f64 erf); the kernel's erf is within 3e-7 of it.
                    let erf = candle_core::cpu::erf::erf_f64(g / std::f64::consts::SQRT_2);
                    let want = v * 0.5 * g * (1.0 + erf);
                    let err = (got[r * inner + c] as f64 - want).abs();
                    assert!(
                        err < 1e-6 * (1.0 + want.abs()) + 4e-7 * v.abs() * g.abs(),
                        "({r}, {c}): {} vs {want}",
                        got[r * inner + c]
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn odd_widths_are_errors() {
        let mut out = vec![0f32; 3];
        assert!(geglu(&[0.0; 5], &mut out, 3).is_err());
    }
}
