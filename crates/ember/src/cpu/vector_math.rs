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

    /// The 16 lanes rounded to bf16 (to nearest, ties to even; NaN stays NaN), as 16 packed u16.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn to_bf16(x: __m512) -> __m256i {
        let bits = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0)))
    }

    /// `erf(x)` for 16 lanes, absolute error below 3e-7 (the formula's 1.5e-7 plus f32 rounding): Abramowitz & Stegun 7.1.26,
    /// `1 − (a₁t + … + a₅t⁵)·e^(−x²)` with `t = 1/(1 + p|x|)`, the sign restored.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn erf(x: __m512) -> __m512 {
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let a = _mm512_abs_ps(x);
        let t = _mm512_div_ps(
            _mm512_set1_ps(1.0),
            _mm512_fmadd_ps(a, _mm512_set1_ps(0.327_591_1), _mm512_set1_ps(1.0)),
        );
        let mut poly = _mm512_set1_ps(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
        }
        poly = _mm512_mul_ps(poly, t);
        let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
        let magnitude = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.0));
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign))
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::avx512;
    use std::arch::x86_64::*;

    #[test]
    fn erf_matches_f64_erf() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        // erf in f64: its Taylor series for |x| ≤ 3, else 1 − erfc(|x|) from erfc's asymptotic series (four terms:
        // truncation below 3e-8 at |x| = 3).
        fn erf64(x: f64) -> f64 {
            if x.abs() > 3.0 {
                let (a, x2) = (x.abs(), x * x);
                let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2);
                let erfc = (-x2).exp() / (a * std::f64::consts::PI.sqrt()) * series;
                return x.signum() * (1.0 - erfc);
            }
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut inputs: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.01).collect();
        inputs.extend([-30.0, -0.0, 0.0, 1e-8, 1e-3, 30.0]);
        while !inputs.len().is_multiple_of(16) {
            inputs.push(0.25);
        }
        for chunk in inputs.chunks(16) {
            let mut out = [0f32; 16];
            // SAFETY: avx512f was detected above; both pointers cover 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), avx512::erf(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &got) in chunk.iter().zip(&out) {
                let want = erf64(x as f64);
                assert!((got as f64 - want).abs() < 3e-7, "erf({x}) = {got}, want {want}");
            }
        }
    }

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
