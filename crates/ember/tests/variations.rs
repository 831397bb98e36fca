//! Variations (`-V`/`-v`), `--perlin` and `--threshold` against InvokeAI 2.1's arithmetic as re-run with torch/numpy
//! by tools/oracle/make_variation_reference.py (tests/fixtures/variation_reference.safetensors).

use candle_core::{DType, Device, Tensor};
use ember::guidance::{apply_threshold, ThresholdedDenoiser};
use ember::sample::denoiser::Denoiser;
use ember::sample::perlin::rand_perlin_2d;
use ember::sample::rng::TorchRng;
use ember::sample::variation::{initial_noise, slerp_tensors};
use std::cell::RefCell;

mod reference;
use reference::Reference;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/variation_reference.safetensors"
);

/// Noise, slerp and Perlin vs torch/numpy float32: the only differences are libm vs SLEEF/numpy `cos`/`sin`/`pow`
/// (≤ 1 ulp each) and BLAS's summation order in the norms.
const TOL_NOISE: f32 = 1e-6;

fn reference() -> Result<Reference, Box<dyn std::error::Error>> {
    Reference::load(REFERENCE, "tools/oracle/make_variation_reference.py")
}

fn values(t: &Tensor) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

fn max_err(got: &Tensor, want: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    if got.dims() != want.dims() {
        return Err(format!("shape {:?} vs reference {:?}", got.dims(), want.dims()).into());
    }
    let (a, b) = (values(got)?, values(want)?);
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> TestResult {
    let err = max_err(got, want)?;
    println!("{what}: max |Δ| = {err:e}");
    assert!(err <= tol, "{what}: max |Δ| = {err} > {tol}");
    Ok(())
}

#[test]
fn torch_rand_is_bit_exact() -> TestResult {
    let r = reference()?;
    for seed in [0u64, 42, 1_592_514_025] {
        for n in [1usize, 5, 16, 81, 100] {
            let want = values(r.get(&format!("rand/seed{seed}/n{n}"))?)?;
            let got = TorchRng::new(seed).rand(n);
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && got.len() == want.len(),
                "rand seed {seed} n {n}: {got:?} vs {want:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn perlin_fields_match_rand_perlin_2d() -> TestResult {
    let r = reference()?;
    for seed in [3u64, 1_592_514_025] {
        for (h, w) in [(8usize, 8usize), (16, 24), (48, 48), (24, 56)] {
            let got = rand_perlin_2d(&mut TorchRng::new(seed), h, w)?;
            let got = Tensor::from_vec(got, (h, w), &Device::Cpu)?;
            check(
                &format!("perlin seed {seed} {h}x{w}"),
                &got,
                r.get(&format!("perlin/seed{seed}/{h}x{w}"))?,
                TOL_NOISE,
            )?;
        }
    }
    Ok(())
}

#[test]
fn slerp_matches_invokeai_numpy_on_both_branches() -> TestResult {
    let r = reference()?;
    let (v0, v1) = (r.get("slerp/v0")?, r.get("slerp/v1")?);
    for t in ["0.0", "0.1", "0.5", "0.9", "1.0"] {
        let got = slerp_tensors(t.parse()?, v0, v1)?;
        check(&format!("slerp t={t}"), &got, r.get(&format!("slerp/t{t}"))?, TOL_NOISE)?;
    }
    // Nearly parallel: InvokeAI's lerp fallback, all float32 elementwise, so bit-exact.
    let got = slerp_tensors(0.3, v0, r.get("slerp/near")?)?;
    check("slerp lerp branch", &got, r.get("slerp/near_t0.3")?, 0.0)
}

/// Every case: the noise InvokeAI feeds the sampler, and the next `randn` of the generator sampling continues with.
#[test]
fn initial_noise_and_generator_continuation_match() -> TestResult {
    let r = reference()?;
    for case in 0.. {
        let Ok(spec) = r.get(&format!("case{case}/spec")) else {
            assert!(case >= 7, "fixture has only {case} cases");
            break;
        };
        let spec = spec.to_vec1::<f64>()?;
        let (seed, perlin, h, w) = (spec[0] as u32, spec[1], spec[2] as usize, spec[3] as usize);
        let variations: Vec<(u32, f64)> = spec[4..].chunks(2).map(|p| (p[0] as u32, p[1])).collect();
        let shape = [1, 4, h, w];
        let (noise, mut rng) = initial_noise(seed, &variations, perlin, &shape, &Device::Cpu)?;
        let what = format!("case {case}: seed {seed}, -V {variations:?}, perlin {perlin}, {h}x{w}");
        check(&what, &noise, r.get(&format!("case{case}/noise"))?, TOL_NOISE)?;
        // The generator is the same torch stream: bit-exact.
        let after = rng.randn_tensor(&shape, &Device::Cpu)?;
        check(
            &format!("{what}, next draw"),
            &after,
            r.get(&format!("case{case}/after"))?,
            0.0,
        )?;
    }
    Ok(())
}

#[test]
fn perlin_on_sizes_invokeai_cannot_tile_is_a_clear_error() {
    match initial_noise(1, &[], 0.2, &[1, 4, 12, 8], &Device::Cpu) {
        Err(err) => assert!(err.to_string().contains("multiples of 64"), "{err}"),
        Ok(_) => panic!("a 64x96 image with --perlin was accepted"),
    }
    // Without --perlin any size works.
    assert!(initial_noise(1, &[(2, 0.5)], 0.0, &[1, 4, 12, 9], &Device::Cpu).is_ok());
}

#[test]
fn threshold_clamps_like_cfg_apply_threshold() -> TestResult {
    let r = reference()?;
    let x = r.get("threshold/in")?;
    for t in ["0.0", "0.5", "1.2", "2.0", "5.0", "20.0"] {
        let got = apply_threshold(x, t.parse()?)?;
        // A clamp with the same float32 bounds: exact.
        check(&format!("threshold {t}"), &got, r.get(&format!("threshold/t{t}"))?, 0.0)?;
    }
    let got = apply_threshold(r.get("threshold/small_in")?, 1.2)?;
    check(
        "threshold 1.2, bounds raised to ±1",
        &got,
        r.get("threshold/small_t1.2")?,
        0.0,
    )
}

/// Replays stored guided predictions, one per call, as the inner denoiser.
struct Replay {
    outputs: Vec<Tensor>,
    next: RefCell<usize>,
}

impl Denoiser for Replay {
    fn denoise(&self, _x: &Tensor, _sigma: f64) -> ember::Result<Tensor> {
        let mut i = self.next.borrow_mut();
        let out = self.outputs[*i].clone();
        *i += 1;
        Ok(out)
    }
}

#[test]
fn threshold_warmup_follows_cfg_denoiser_call_by_call() -> TestResult {
    let r = reference()?;
    for steps in [10usize, 25] {
        let ins = r.get(&format!("warmup/S{steps}/in"))?;
        let want = r.get(&format!("warmup/S{steps}/out"))?;
        let calls = ins.dim(0)?;
        let inner = Replay {
            outputs: (0..calls).map(|k| ins.get(k)).collect::<Result<_, _>>()?,
            next: RefCell::new(0),
        };
        let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu)?;
        let thresholded = ThresholdedDenoiser::new(&inner, 3.0, steps);
        for k in 0..calls {
            let got = thresholded.denoise(&x, 1.0)?;
            check(&format!("warm-up S={steps} call {k}"), &got, &want.get(k)?, 0.0)?;
        }
    }
    Ok(())
}

#[test]
fn threshold_zero_passes_the_denoiser_through_unchanged() -> TestResult {
    let r = reference()?;
    let ins = r.get("warmup/S10/in")?;
    let inner = Replay {
        outputs: vec![ins.get(0)?],
        next: RefCell::new(0),
    };
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu)?;
    let got = ThresholdedDenoiser::new(&inner, 0.0, 10).denoise(&x, 1.0)?;
    check("threshold off", &got, &ins.get(0)?, 0.0)
}
