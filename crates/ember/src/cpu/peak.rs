//! The machine's measured arithmetic peak, for `ember bench` to print achieved GFLOP/s against: a loop of independent
//! AVX-512 FMAs (f32), of `vdpbf16ps` (bf16 pairs into f32), and of AMX's `tdpbf16ps` where the CPU has tiles, on
//! every thread of the pool at once.

use std::time::Instant;

/// Peak GFLOP/s measured on all of rayon's threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peaks {
    /// AVX-512 FMAs; `None` without AVX-512F.
    pub f32_fma: Option<f64>,
    /// `vdpbf16ps`; `None` without AVX512-BF16.
    pub bf16_dot: Option<f64>,
    /// AMX `tdpbf16ps` with operands in the tiles; `None` without AMX-BF16 (`cpu::amx::available`).
    pub amx_bf16: Option<f64>,
}

pub fn measure() -> Peaks {
    #[cfg(target_arch = "x86_64")]
    {
        const ITERATIONS: u64 = 20_000_000;
        let f32_fma = std::arch::is_x86_feature_detected!("avx512f").then(|| {
            // SAFETY: AVX-512F was detected.
            on_all_threads(|| unsafe { avx512::fma_loop(ITERATIONS) })
        });
        let bf16_dot = std::arch::is_x86_feature_detected!("avx512bf16").then(|| {
            // SAFETY: AVX512-BF16 (and with it AVX-512F) was detected.
            on_all_threads(|| unsafe { avx512::dpbf16_loop(ITERATIONS) })
        });
        // A tile product does 128× an FMA vector's work: fewer rounds take as long.
        let amx_bf16 = super::amx::available().then(|| on_all_threads(|| super::amx::peak_loop(ITERATIONS / 64)));
        Peaks {
            f32_fma,
            bf16_dot,
            amx_bf16,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Peaks::default()
}

/// Runs `kernel()` (which returns the FLOPs it did) on every pool thread at once; the best GFLOP/s of a few tries.
#[cfg(target_arch = "x86_64")]
fn on_all_threads(kernel: impl Fn() -> f64 + Sync) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let flops: f64 = rayon::broadcast(|_| kernel()).iter().sum();
        best = best.max(flops / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Enough independent accumulators to cover the FMA latency on two pipes.
    const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub(super) fn fma_loop(iterations: u64) -> f64 {
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iterations {
            for x in &mut acc {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        // Use the result so the loop is not removed.
        let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        std::hint::black_box(_mm512_reduce_add_ps(sum));
        iterations as f64 * (CHAINS * 16 * 2) as f64
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn dpbf16_loop(iterations: u64) -> f64 {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(2e-3));
        let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3));
        for _ in 0..iterations {
            for x in &mut acc {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        std::hint::black_box(_mm512_reduce_add_ps(sum));
        // Each lane multiplies-and-adds a pair: 4 FLOPs per lane.
        iterations as f64 * (CHAINS * 16 * 4) as f64
    }
}
