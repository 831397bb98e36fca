//! The initial noise of a run: the seed's Gaussian noise, optionally mixed with Perlin noise (`--perlin`) and
//! walked toward other seeds' noise (`-V seed:weight,…`, and `-v` which is one more such pair), as InvokeAI 2.x
//! builds it (`Generator.generate_initial_noise`, `get_noise`, `slerp` in ldm/invoke/generator/, tag v2.1.2):
//!
//! ```text
//! seed_everything(seed);   noise = get_noise()            get_noise = randn([1,4,h,w]), then if perlin > 0:
//! for (v_seed, w) in -V:                                              (1-p)·noise + p·perlin_noise()
//!     seed_everything(v_seed); noise = slerp(w, noise, get_noise())
//! ```
//!
//! Sampling then goes on with the global torch generator as the last `get_noise` left it: ancestral samplers (and
//! anything else drawing afterwards) continue from the **last seed seeded** — the seed's own generator without
//! variations, the last variation seed's with them — after its `randn` and, with `--perlin`, its 4 × 81 uniforms.
//! `-v AMOUNT` picks a fresh random seed S and does exactly one more step, `slerp(AMOUNT, noise, get_noise(S))`, so
//! it is `-V` with `(S, AMOUNT)` appended; InvokeAI records it that way.

use super::perlin::{mix_perlin, perlin_noise};
use super::rng::TorchRng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// |cos θ| above which InvokeAI's slerp falls back to a straight lerp (nearly parallel vectors).
pub const SLERP_DOT_THRESHOLD: f64 = 0.9995;

/// The initial noise for `seed` with `with_variations` applied in order, `perlin` (0 = off) mixed into every seed's
/// noise, as an f32 tensor of `shape` (`[1, 4, h, w]`) on `device`; and the generator that sampling must continue
/// with (see the module docs). Without variations and perlin this is `TorchRng::new(seed).randn_tensor(shape)` and
/// that same generator, bit for bit.
pub fn initial_noise(
    seed: u32,
    with_variations: &[(u32, f64)],
    perlin: f64,
    shape: &[usize],
    device: &Device,
) -> Result<(Tensor, TorchRng)> {
    let mut rng = TorchRng::new(seed as u64);
    let mut noise = seed_noise(&mut rng, shape, perlin)?;
    for &(variation_seed, weight) in with_variations {
        rng = TorchRng::new(variation_seed as u64);
        let target = seed_noise(&mut rng, shape, perlin)?;
        noise = slerp(weight, &noise, &target)?;
    }
    Ok((Tensor::from_vec(noise, shape, device)?, rng))
}

/// InvokeAI's `get_noise` for txt2img on a CPU generator: `randn(shape)`, then with `perlin > 0` the Perlin mix,
/// whose fields draw from the same generator. `shape` is `[batch, channels, h, w]`.
pub fn seed_noise(rng: &mut TorchRng, shape: &[usize], perlin: f64) -> Result<Vec<f32>> {
    let mut noise = rng.randn(shape.iter().product());
    if perlin > 0.0 {
        let &[_, channels, height, width] = shape else {
            return Err(Error::invalid(
                "perlin",
                format!("Perlin noise needs a [batch, channels, height, width] latent, not {shape:?}"),
            ));
        };
        let field = perlin_noise(rng, channels, height, width)?;
        mix_perlin(&mut noise, &field, perlin);
    }
    Ok(noise)
}

/// Spherical interpolation from `v0` (t = 0) to `v1` (t = 1), treating each whole tensor as one vector, with the
/// float32/float64 mix numpy uses in InvokeAI's `slerp`: the cosine in float32 (numpy's pairwise sum), the angle's
/// sines in float64, the final `s0·v0 + s1·v1` in float32. Falls back to `(1-t)·v0 + t·v1` when |cos| > 0.9995.
pub fn slerp(t: f64, v0: &[f32], v1: &[f32]) -> Result<Vec<f32>> {
    if v0.len() != v1.len() {
        return Err(Error::invalid(
            "with_variations",
            format!("cannot slerp noise of {} values toward noise of {}", v0.len(), v1.len()),
        ));
    }
    let dot = normalised_dot(v0, v1);
    if !dot.is_finite() {
        return Err(Error::invalid(
            "with_variations",
            "cannot interpolate toward all-zero or non-finite noise",
        ));
    }
    let (s0, s1) = if (dot.abs() as f64) > SLERP_DOT_THRESHOLD {
        ((1.0 - t) as f32, t as f32)
    } else {
        // numpy: arccos/sin of a float32 stay float32; multiplying by the Python float t moves to float64.
        let theta_0 = dot.acos();
        let sin_theta_0 = theta_0.sin() as f64;
        let theta_t = theta_0 as f64 * t;
        let s0 = (theta_0 as f64 - theta_t).sin() / sin_theta_0;
        let s1 = theta_t.sin() / sin_theta_0;
        (s0 as f32, s1 as f32)
    };
    Ok(v0.iter().zip(v1).map(|(&a, &b)| s0 * a + s1 * b).collect())
}

/// [`slerp`] over tensors of the same shape (any dtype and device; computed in f32 on the host).
pub fn slerp_tensors(t: f64, v0: &Tensor, v1: &Tensor) -> Result<Tensor> {
    if v0.dims() != v1.dims() {
        return Err(Error::invalid(
            "with_variations",
            format!("cannot slerp a {:?} tensor toward a {:?} one", v0.dims(), v1.dims()),
        ));
    }
    let host = |v: &Tensor| -> Result<Vec<f32>> { Ok(v.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?) };
    let out = slerp(t, &host(v0)?, &host(v1)?)?;
    Ok(Tensor::from_vec(out, v0.dims(), v0.device())?.to_dtype(v0.dtype())?)
}

/// numpy's `np.sum(v0 * v1 / (norm(v0) * norm(v1)))` on float32 arrays. The norms come from BLAS `sdot`, whose
/// summation order is the BLAS build's; they are taken in f64 and rounded here, within an ulp of it.
fn normalised_dot(v0: &[f32], v1: &[f32]) -> f32 {
    let norm = |v: &[f32]| (v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() as f32).sqrt();
    let denom = norm(v0) * norm(v1);
    let terms: Vec<f32> = v0.iter().zip(v1).map(|(&a, &b)| a * b / denom).collect();
    numpy_sum_f32(&terms)
}

/// numpy's float32 `sum` of a contiguous array: pairwise summation over buffers of 8192 elements, the buffers'
/// sums added in order.
fn numpy_sum_f32(values: &[f32]) -> f32 {
    const BUFFER: usize = 8192;
    values
        .chunks(BUFFER)
        .fold(0.0f32, |acc, chunk| acc + pairwise_sum(chunk))
}

/// numpy's `pairwise_sum_FLOAT`: 8 running sums over blocks of up to 128 values, halves above that.
fn pairwise_sum(a: &[f32]) -> f32 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0f32, |acc, &x| acc + x);
    }
    if n <= BLOCK {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(block) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[whole..] {
            res += x;
        }
        return res;
    }
    let mut half = n / 2;
    half -= half % 8;
    pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_variations_is_the_seed_noise_and_generator() {
        let shape = [1, 4, 8, 8];
        let (noise, mut rng) = initial_noise(42, &[], 0.0, &shape, &Device::Cpu).unwrap();
        let mut plain = TorchRng::new(42);
        let want = plain.randn_tensor(&shape, &Device::Cpu).unwrap();
        let diff = (noise - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(rng.randn(20), plain.randn(20));
    }

    #[test]
    fn pairwise_sum_of_small_integers_is_exact() {
        let v: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let want: f32 = v.iter().sum();
        assert_eq!(numpy_sum_f32(&v), want);
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        assert!(slerp(0.5, &[1.0, 2.0], &[1.0]).is_err());
        assert!(slerp(0.5, &[0.0, 0.0], &[1.0, 0.0]).is_err());
    }
}
