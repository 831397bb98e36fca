//! Parity of Ember's networks with diffusers / transformers on the tiny model (tests/fixtures/tiny-sd):
//! reference outputs come from tools/oracle/make_nn_reference.py (torch, float32, CPU).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ember::nn::config::{ClipTextConfig, UNetConfig, VaeConfig};
use ember::nn::unet::UNetInputs;
use ember::nn::{AutoencoderKL, ClipTextModel, UNet2DConditionModel};

mod reference;
use reference::Reference;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-sd");
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/nn_reference.safetensors"
);

// Bounds from the errors measured 2026-12-06 on AMD EPYC (AVX-512, no AMX), with the default (AVX-512) kernels and
// with `EMBER_CPU_KERNELS=portable`; none of these tests reaches the AMX kernels (they build the networks without
// `nn::Precision`, so bf16 here means bf16 activations on every CPU).

/// f32 CPU against torch f32 CPU: only accumulation order differs. Max |Δ|: CLIP 1.5e-6, UNet 1.9e-6 (5×9 latent;
/// 1.1–1.6e-6 at 8×8), VAE mean 1.6e-6, VAE decode 7.5e-6 (outputs up to 2.6, 1.4, 0.9, 4.0); bounds ≈10×.
const TOL_CLIP_UNET: f32 = 2e-5;
const TOL_VAE: f32 = 1e-4;
/// Reduced-precision compute vs the torch f32 reference, as max|Δ| / max|reference|. Rounding to 8 (bf16) or 11
/// (f16) significant bits sets these errors, so 10× them would let bf16 be 20% off; the bounds are ≈2× (f16) and
/// ≈1.4× (bf16) the worst measured, about PyTorch's own error in the same dtype (measured when the reference was
/// made: torch f16 UNet 1.7e-3, VAE 2.1e-3 / 3.4e-3; torch bf16 CLIP 1.3e-2, UNet 2.0e-2, VAE 1.4e-2 / 2.7e-2).
/// Measured f16 (AVX-512 / portable): CLIP 1.4e-3 / 1.4e-3, UNet 1.7e-3 / 1.5e-3, VAE mean 1.6e-3 / 2.5e-3, VAE
/// decode 2.2e-3 / 2.3e-3. bf16: CLIP 2.1e-2 / 2.1e-2, UNet 1.5e-2 / 1.4e-2, VAE mean 1.9e-2 / 2.1e-2, VAE decode
/// 2.1e-2 / 2.1e-2.
const TOL_F16_REL: f32 = 5e-3;
const TOL_BF16_REL: f32 = 3e-2;

fn reference() -> Result<Reference, Box<dyn std::error::Error>> {
    Reference::load(REFERENCE, "tools/oracle/make_nn_reference.py")
}

fn config<T: serde::de::DeserializeOwned>(sub: &str) -> Result<T, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(format!("{MODEL}/{sub}/config.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn weights(sub: &str, file: &str, dtype: DType) -> Result<VarBuilder<'static>, Box<dyn std::error::Error>> {
    let path = format!("{MODEL}/{sub}/{file}");
    // SAFETY: the fixture file is not modified while the test runs.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, &Device::Cpu)? })
}

fn unet(dtype: DType) -> Result<UNet2DConditionModel, Box<dyn std::error::Error>> {
    let cfg: UNetConfig = config("unet")?;
    Ok(UNet2DConditionModel::new(
        weights("unet", "diffusion_pytorch_model.safetensors", dtype)?,
        &cfg,
    )?)
}

fn vae(dtype: DType) -> Result<AutoencoderKL, Box<dyn std::error::Error>> {
    let cfg: VaeConfig = config("vae")?;
    Ok(AutoencoderKL::new(
        weights("vae", "diffusion_pytorch_model.safetensors", dtype)?,
        &cfg,
    )?)
}

fn clip(dtype: DType) -> Result<ClipTextModel, Box<dyn std::error::Error>> {
    let cfg: ClipTextConfig = config("text_encoder")?;
    Ok(ClipTextModel::new(
        weights("text_encoder", "model.safetensors", dtype)?,
        &cfg,
    )?)
}

fn max_abs(t: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    Ok(t.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// Max absolute difference, after checking the shapes agree.
fn max_err(got: &Tensor, want: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    assert_eq!(got.dims(), want.dims(), "shape");
    max_abs(&(got.to_dtype(DType::F32)? - want)?)
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> TestResult {
    let err = max_err(got, want)?;
    println!(
        "{what}: max abs error {err:.3e} (tolerance {tol:.0e}, reference max {:.3})",
        max_abs(want)?
    );
    assert!(err <= tol, "{what}: max abs error {err} > {tol}");
    Ok(())
}

fn check_rel(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> TestResult {
    let rel = max_err(got, want)? / max_abs(want)?;
    println!("{what}: max|Δ|/max|ref| {rel:.3e} (tolerance {tol:.0e})");
    assert!(rel <= tol, "{what}: relative error {rel} > {tol}");
    Ok(())
}

fn input_ids(r: &Reference) -> Result<Tensor, Box<dyn std::error::Error>> {
    Ok(r.get("clip/input_ids")?.to_dtype(DType::U32)?)
}

#[test]
fn clip_matches_transformers() -> TestResult {
    let r = reference()?;
    let out = clip(DType::F32)?.forward(&input_ids(&r)?)?;
    check("clip", &out, r.get("clip/output")?, TOL_CLIP_UNET)
}

#[test]
fn unet_matches_diffusers_at_integer_and_fractional_timesteps() -> TestResult {
    let r = reference()?;
    let model = unet(DType::F32)?;
    let (sample, context) = (r.get("unet/sample")?, r.get("unet/context")?);
    for (name, t) in [("t999", 999.0), ("t500.5", 500.5), ("t1", 1.0)] {
        let out = model.forward(sample, t, &UNetInputs::text(context.clone()))?;
        check(
            &format!("unet {name}"),
            &out,
            r.get(&format!("unet/out_{name}"))?,
            TOL_CLIP_UNET,
        )?;
    }
    Ok(())
}

#[test]
fn unet_handles_latents_not_divisible_by_8() -> TestResult {
    let r = reference()?;
    let out = unet(DType::F32)?.forward(
        r.get("unet/odd_sample")?,
        500.5,
        &UNetInputs::text(r.get("unet/context")?.clone()),
    )?;
    check("unet 5x9", &out, r.get("unet/odd_out_t500.5")?, TOL_CLIP_UNET)
}

#[test]
fn vae_encode_mean_and_decode_match_diffusers() -> TestResult {
    let r = reference()?;
    let model = vae(DType::F32)?;
    check(
        "vae mean",
        &model.encode_mean(r.get("vae/input")?)?,
        r.get("vae/mean")?,
        TOL_VAE,
    )?;
    check(
        "vae decode",
        &model.decode(r.get("vae/latent")?)?,
        r.get("vae/decoded")?,
        TOL_VAE,
    )
}

/// Runs all three networks with `dtype` weights and activations (norms, softmax and attention in f32 inside)
/// and checks them against torch's f32 result.
fn reduced_precision_stays_close(dtype: DType, tol: f32) -> TestResult {
    let r = reference()?;
    let ids = input_ids(&r)?;
    let out = clip(dtype)?.forward(&ids)?;
    assert_eq!(out.dtype(), dtype);
    check_rel(&format!("clip {dtype:?}"), &out, r.get("clip/output")?, tol)?;

    let out = unet(dtype)?.forward(
        r.get("unet/sample")?,
        500.5,
        &UNetInputs::text(r.get("unet/context")?.clone()),
    )?;
    assert_eq!(out.dtype(), DType::F32, "UNet returns the sample's dtype");
    check_rel(&format!("unet {dtype:?}"), &out, r.get("unet/out_t500.5")?, tol)?;

    let model = vae(dtype)?;
    let mean = model.encode_mean(r.get("vae/input")?)?;
    check_rel(&format!("vae mean {dtype:?}"), &mean, r.get("vae/mean")?, tol)?;
    let decoded = model.decode(r.get("vae/latent")?)?;
    check_rel(&format!("vae decode {dtype:?}"), &decoded, r.get("vae/decoded")?, tol)
}

#[test]
fn f16_compute_stays_close_to_f32_reference() -> TestResult {
    reduced_precision_stays_close(DType::F16, TOL_F16_REL)
}

#[test]
fn bf16_compute_stays_close_to_f32_reference() -> TestResult {
    reduced_precision_stays_close(DType::BF16, TOL_BF16_REL)
}

/// A cancelled run stops between two layers of each network (a 4096² UNet step takes minutes on a CPU, so waiting
/// for the step's end is not enough); outside a cancel scope the same calls run through.
#[test]
fn networks_stop_between_layers_when_cancelled() -> Result<(), Box<dyn std::error::Error>> {
    use ember::cancel::{cancel_scope, CancelToken};
    let (unet, vae, clip) = (unet(DType::F32)?, vae(DType::F32)?, clip(DType::F32)?);
    let unet_cfg: UNetConfig = config("unet")?;
    let latents = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu)?;
    let context = Tensor::zeros((1, 77, unet_cfg.cross_attention_dim), DType::F32, &Device::Cpu)?;
    let ids = Tensor::zeros((1, 77), DType::U32, &Device::Cpu)?;
    let run = |what: &str| -> Vec<(String, bool)> {
        vec![
            (
                format!("{what} UNet"),
                unet.forward(&latents, 10.0, &UNetInputs::text(context.clone())).is_ok(),
            ),
            (format!("{what} VAE decode"), vae.decode(&latents).is_ok()),
            (format!("{what} CLIP"), clip.forward(&ids).is_ok()),
        ]
    };
    for (name, ok) in run("unscoped") {
        assert!(ok, "{name} runs");
    }
    let token = CancelToken::new();
    let _scope = cancel_scope(&token);
    for (name, ok) in run("running") {
        assert!(ok, "{name} runs while not cancelled");
    }
    token.cancel();
    let err = unet
        .forward(&latents, 10.0, &UNetInputs::text(context.clone()))
        .expect_err("cancelled");
    assert!(err.to_string().starts_with("cancelled"), "{err}");
    for (name, ok) in run("cancelled") {
        assert!(!ok, "{name} stops");
    }
    Ok(())
}
