//! CLIP's `quick_gelu` (`x·σ(1.702·x)`) in one parallel pass with the AVX-512 exp. candle's composition made three
//! passes (scale, sigmoid, product), its sigmoid a scalar `expf` per value: 6% of the text encoder's time.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// `out[i] = x[i] · σ(1.702·x[i])`.
pub fn quick_gelu(x: &[f32], out: &mut [f32]) -> Result<()> {
    if x.len() != out.len() {
        candle_core::bail!("quick_gelu: input of {} values, output of {}", x.len(), out.len());
    }
    out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(out, x)| {
        #[cfg(target_arch = "x86_64")]
        if super::Isa::detect() == super::Isa::Avx512 {
            // SAFETY: AVX-512F was detected; both chunks have the same length.
            unsafe { quick_gelu_avx512(x, out) };
            return;
        }
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v / (1.0 + (-1.702 * v).exp());
        }
    });
    Ok(())
}

/// [`quick_gelu`] on one chunk with 16 lanes, over `min(x.len(), out.len())` values.
///
/// # Safety
/// The CPU must have AVX-512F (checked at run time by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quick_gelu_avx512(x: &[f32], out: &mut [f32]) {
    use super::vector_math::avx512::exp;
    use std::arch::x86_64::*;
    let len = out.len().min(x.len());
    for i in (0..len).step_by(16) {
        let mask: __mmask16 = if len - i >= 16 { 0xffff } else { (1u16 << (len - i)) - 1 };
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        let e = exp(_mm512_mul_ps(v, _mm512_set1_ps(-1.702)));
        let o = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, o);
    }
}

/// [`quick_gelu`] as a candle operation on a contiguous f32 CPU tensor.
pub struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "ember-quick-gelu"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, layout, "quick_gelu: input")?;
        let mut out = super::zeroed_output(x.len());
        quick_gelu(x, &mut out)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// Against the formula in f64, over values where σ saturates both ways and lengths that leave every tail (the
    /// vector exp is within 2e-7 relative of f64's).
    #[test]
    fn matches_the_formula() -> Result<()> {
        for len in [1, 15, 16, 17, 5000] {
            let x: Vec<f32> = test_values(len, len as u64).iter().map(|v| v * 30.0).collect();
            let mut got = vec![f32::NAN; len];
            quick_gelu(&x, &mut got)?;
            for (&v, &g) in x.iter().zip(&got) {
                let want = v as f64 / (1.0 + (-1.702 * v as f64).exp());
                assert!(
                    (g as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{v}: {g} vs {want}"
                );
            }
        }
        Ok(())
    }
}
