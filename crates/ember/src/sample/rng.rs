//! Seeded Gaussian noise that is bit-for-bit what `torch.randn(shape, generator=g)` gives on CPU in f32,
//! after `g = torch.Generator("cpu").manual_seed(seed)`: the same seed gives the same image as InvokeAI.
//!
//! What torch does (ATen `CPUGeneratorImpl`, `cpu/DistributionTemplates.h`, `core/DistributionsHelper.h`):
//! - the engine is a 32-bit Mersenne Twister seeded with the low 32 bits of the seed;
//! - `numel >= 16` (contiguous f32): every element first gets a float uniform (24 random bits), then each block
//!   of 16 becomes 16 normals by Box–Muller (`u1 = 1 - data[j]`, `u2 = data[j + 8]`). When `numel % 16 != 0`
//!   the last 16 values are redrawn from fresh uniforms and transformed again (overlapping the previous block).
//!   On x86 CPUs with AVX2 (and AVX-512) torch does that transform with `avx_mathfun.h`'s Cephes-style
//!   `log256_ps`/`sincos256_ps`, compiled by GCC with FMA contraction; [`normal_fill_16`] replays exactly
//!   those operations, fused where GCC fused them (checked against torch 2.15 on every fixture);
//! - `numel < 16`: one double-precision `normal_distribution` sample per element (two 53-bit uniforms, Box–Muller
//!   with libm `log1p`/`cos`/`sin`); the unused sine half is cached in the generator and returned by the next
//!   scalar draw, even one made by a later `randn` call.

use crate::Result;
use candle_core::{Device, Tensor};

/// A source of standard normal noise shaped like a tensor. Samplers draw ancestral noise through this, so
/// tests can replay stored noise; [`TorchRng`] is the one used for real generation.
pub trait NoiseSource {
    /// Noise of `like`'s shape, dtype and device (one `torch.randn_like(like)`).
    fn randn_like(&mut self, like: &Tensor) -> Result<Tensor>;
}

const MT_N: usize = 624;
const MT_M: usize = 397;

/// torch's `at::mt19937` (the standard MT19937 with `init_genrand` seeding).
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        // torch keeps only the low 32 bits of the seed.
        state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, index: MT_N }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..MT_N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % MT_N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// `torch.Generator("cpu").manual_seed(seed)` followed by any number of `torch.randn(..., generator=g)` calls.
#[derive(Clone)]
pub struct TorchRng {
    engine: Mt19937,
    /// The cached second half of the last scalar (double) Box–Muller pair (`next_double_normal_sample_`).
    next_double_normal: Option<f64>,
}

impl TorchRng {
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled to [0, 1).
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 bits of `random64()` (first draw in the high word).
    fn uniform_f64(&mut self) -> f64 {
        let hi = self.engine.next_u32() as u64;
        let lo = self.engine.next_u32() as u64;
        let bits = ((hi << 32) | lo) & ((1u64 << 53) - 1);
        bits as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `normal_distribution<double>(0, 1)` as drawn by torch's serial kernel.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `n` standard normals, exactly `torch.randn(n, generator=g)` (any shape with `n` elements gives the same).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }

    /// `n` uniforms in [0, 1), exactly `torch.rand(n, generator=g)` (float32, CPU): torch's uniform kernel is
    /// serial, one engine draw per element, whatever `n` is (no 16-block path as for `randn`).
    pub fn rand(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform_f32()).collect()
    }

    /// `torch.randn(shape, generator=g)` as an f32 tensor on `device`.
    pub fn randn_tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let data = self.randn(n);
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

impl NoiseSource for TorchRng {
    fn randn_like(&mut self, like: &Tensor) -> Result<Tensor> {
        let noise = self.randn_tensor(like.dims(), like.device())?;
        Ok(noise.to_dtype(like.dtype())?)
    }
}

/// Box–Muller over one block of 16 uniforms, in place: `data[j]`, `data[j + 8]` become `r·cos θ`, `r·sin θ`.
fn normal_fill_16(data: &mut [f32]) {
    // torch rounds 2π (a double) to float once.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * cephes_log(u1)).sqrt();
        let (sin, cos) = cephes_sincos(two_pi * u2);
        data[j] = radius * cos;
        data[j + 8] = radius * sin;
    }
}

// The constants are avx_mathfun's literals verbatim, so they round to the same floats.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
/// `log256_ps` for one lane (valid for the (0, 1] inputs Box–Muller gives it).
fn cephes_log(x: f32) -> f32 {
    // avx_mathfun's constants are double literals rounded to float, as here.
    const SQRTHF: f32 = 0.707106781186547524_f64 as f32;
    const P: [f32; 9] = [
        7.0376836292E-2_f64 as f32,
        -1.1514610310E-1_f64 as f32,
        1.1676998740E-1_f64 as f32,
        -1.2420140846E-1_f64 as f32,
        1.4249322787E-1_f64 as f32,
        -1.6668057665E-1_f64 as f32,
        2.0000714765E-1_f64 as f32,
        -2.4999993993E-1_f64 as f32,
        3.3333331174E-1_f64 as f32,
    ];
    const Q1: f32 = -2.12194440e-4_f64 as f32;
    const Q2: f32 = 0.693359375;
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    // Mantissa in [0.5, 1).
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let below = m < SQRTHF;
    let mut x = m - 1.0;
    if below {
        e -= 1.0;
        x += m;
    }
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    let y = y * x;
    // GCC fuses `y * z + e * q1` as fma(y, z, e * q1).
    let y = y.mul_add(z, e * Q1);
    let y = (-z).mul_add(0.5, y);
    let x = x + y;
    e.mul_add(Q2, x)
}

#[allow(clippy::excessive_precision)]
/// `sincos256_ps` for one lane: (sin θ, cos θ) for θ ≥ 0.
fn cephes_sincos(theta: f32) -> (f32, f32) {
    const FOPI: f32 = 1.27323954473516_f64 as f32; // 4 / π
    const DP1: f32 = -0.78515625;
    const DP2: f32 = -2.4187564849853515625e-4_f64 as f32;
    const DP3: f32 = -3.77489497744594108e-8_f64 as f32;
    const COS: [f32; 3] = [
        2.443315711809948E-005_f64 as f32,
        -1.388731625493765E-003_f64 as f32,
        4.166664568298827E-002_f64 as f32,
    ];
    const SIN: [f32; 3] = [
        -1.9515295891E-4_f64 as f32,
        8.3321608736E-3_f64 as f32,
        -1.6666654611E-1_f64 as f32,
    ];
    let x = theta.abs();
    let sign_sin = theta.is_sign_negative();
    // j = (trunc(x · 4/π) + 1) & !1 selects the octant pair.
    let j = (((x * FOPI) as i32) + 1) & !1;
    let y = j as f32;
    let swap_sin = j & 4 != 0;
    let cos_poly_for_cos = j & 2 == 0;
    let cos_negative = !(j - 2) & 4 != 0;
    // Extended-precision reduction x - y·π/4 (GCC fuses each step).
    let x = y.mul_add(DP1, x);
    let x = y.mul_add(DP2, x);
    let x = y.mul_add(DP3, x);
    let z = x * x;
    let c = COS[0].mul_add(z, COS[1]).mul_add(z, COS[2]);
    let c = c * z;
    // GCC fuses `c * z - z * 0.5` as fma(c, z, -(z * 0.5)).
    let c = c.mul_add(z, -(z * 0.5)) + 1.0;
    let s = SIN[0].mul_add(z, SIN[1]).mul_add(z, SIN[2]);
    let s = (s * z).mul_add(x, x);
    let (sin, cos) = if cos_poly_for_cos { (s, c) } else { (c, s) };
    let sin = if swap_sin != sign_sin { -sin } else { sin };
    let cos = if cos_negative { -cos } else { cos };
    (sin, cos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/torch_randn.safetensors"
    );

    fn load() -> HashMap<String, Tensor> {
        candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("tests/fixtures/torch_randn.safetensors")
    }

    fn assert_bitwise(name: &str, ours: &[f32], theirs: &Tensor) {
        let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: length");
        let bad: Vec<usize> = (0..ours.len())
            .filter(|&i| ours[i].to_bits() != theirs[i].to_bits())
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: {} of {} values differ, first at {} ({} vs torch {})",
            bad.len(),
            ours.len(),
            bad[0],
            ours[bad[0]],
            theirs[bad[0]]
        );
    }

    #[test]
    fn matches_torch_randn_bitwise() {
        let fx = load();
        let seeds = [0u64, 1, 42, 1_592_514_025, 4_294_967_295];
        let sizes = [1usize, 2, 7, 15, 16, 17, 31, 33, 256, 4 * 8 * 8, 4 * 48 * 48];
        for seed in seeds {
            for n in sizes {
                let name = format!("seed{seed}/n{n}");
                let theirs = fx.get(&name).unwrap_or_else(|| panic!("fixture lacks {name}"));
                assert_bitwise(&name, &TorchRng::new(seed).randn(n), theirs);
            }
        }
    }

    #[test]
    fn consecutive_draws_match_one_torch_generator() {
        let fx = load();
        for seed in [42u64, 1_592_514_025] {
            let mut rng = TorchRng::new(seed);
            for (i, n) in [256usize, 256, 5, 256, 3].into_iter().enumerate() {
                let name = format!("seq{seed}/{i}");
                let theirs = fx.get(&name).unwrap_or_else(|| panic!("fixture lacks {name}"));
                assert_bitwise(&name, &rng.randn(n), theirs);
            }
        }
    }

    #[test]
    fn randn_tensor_has_the_shape_and_values() {
        let fx = load();
        let t = TorchRng::new(42).randn_tensor(&[1, 4, 8, 8], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 4, 8, 8]);
        let ours = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_bitwise("seed42/n256 as [1,4,8,8]", &ours, &fx["seed42/n256"]);
    }
}
