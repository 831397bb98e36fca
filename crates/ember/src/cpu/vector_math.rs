//! Vectorised transcendental functions for the AVX-512 kernels (the scalar `expf` in softmax and activations was a
//! large share of candle's CPU time).

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `e^x` for 16 lanes, relative error below 2e-7 over the whole f32 range: `x = n·ln2 + r` with `|r| ≤ ln2/2`,
    /// a degree-6 polynomial for `e^r` (Cephes' `expf` coefficients, rounded to f32), and `scalef` for the `2^n`. Inputs below
    /// −87.3 give 0 (or a subnormal), above 88.7 give `+∞`, as `expf` does.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.8));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        // ln 2 split in two so that n·ln2 is subtracted without rounding error (Cody–Waite).
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e_r = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e_r, n)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::avx512;
    use std::arch::x86_64::*;

    #[test]
    fn exp_matches_libm() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut inputs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0443).collect();
        inputs.extend([-1000.0, -104.0, -87.0, -0.0, 0.0, 1e-8, 88.0, 88.7, 100.0]);
        while !inputs.len().is_multiple_of(16) {
            inputs.push(0.5);
        }
        for chunk in inputs.chunks(16) {
            let mut out = [0f32; 16];
            // SAFETY: avx512f was detected above; both pointers cover 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &got) in chunk.iter().zip(&out) {
                let want = (x as f64).exp();
                if want > f32::MAX as f64 {
                    assert_eq!(got, f32::INFINITY, "exp({x})");
                } else if want < 1e-37 {
                    assert!(got.abs() < 1e-37, "exp({x}) = {got}");
                } else {
                    let rel = ((got as f64 - want) / want).abs();
                    assert!(rel < 2e-7, "exp({x}) = {got}, want {want}: relative error {rel}");
                }
            }
        }
    }
}
