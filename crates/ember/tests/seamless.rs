//! `--seamless` (circular padding in every UNet and VAE convolution) against diffusers' tiny model with every
//! `nn.Conv2d` switched to `padding_mode="circular"` (tools/oracle/make_seamless_reference.py, torch f64 CPU, rounded to f32).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ember::nn::config::{UNetConfig, VaeConfig};
use ember::nn::unet::UNetInputs;
use ember::nn::{AutoencoderKL, Padding, UNet2DConditionModel};

mod reference;
use reference::Reference;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-sd");
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/seamless_reference.safetensors"
);

/// The same bounds as the zero-padded parity tests (nn_parity.rs): Ember f32 vs torch f64, only f32 rounding differs.
const TOL_UNET: f32 = 1e-4;
const TOL_VAE: f32 = 1e-3;

fn reference() -> Result<Reference, Box<dyn std::error::Error>> {
    Reference::load(REFERENCE, "tools/oracle/make_seamless_reference.py")
}

fn weights(sub: &str) -> Result<VarBuilder<'static>, Box<dyn std::error::Error>> {
    let path = format!("{MODEL}/{sub}/diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture file is not modified while the test runs.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)? })
}

fn config<T: serde::de::DeserializeOwned>(sub: &str) -> Result<T, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(format!(
        "{MODEL}/{sub}/config.json"
    ))?)?)
}

fn max_err(got: &Tensor, want: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    if got.dims() != want.dims() {
        return Err(format!("shape {:?} vs reference {:?}", got.dims(), want.dims()).into());
    }
    Ok((got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> TestResult {
    let err = max_err(got, want)?;
    println!("{what}: max |Δ| = {err:e}");
    assert!(err <= tol, "{what}: max |Δ| = {err} > {tol}");
    Ok(())
}

#[test]
fn unet_with_circular_padding_matches_diffusers() -> TestResult {
    let r = reference()?;
    let cfg: UNetConfig = config("unet")?;
    let unet = UNet2DConditionModel::new(weights("unet")?, &cfg)?;
    let (sample, context) = (r.get("unet/sample")?, r.get("unet/context")?);
    let odd = r.get("unet/odd_sample")?;
    let circular = |context: Tensor| UNetInputs {
        padding: Padding::Circular,
        ..UNetInputs::text(context)
    };
    let tiled_odd = unet.forward(odd, 999.0, &circular(context.narrow(0, 0, 1)?))?;
    let tiled = unet.forward(sample, 500.5, &circular(context.clone()))?;
    check("unet seamless 8x8", &tiled, r.get("unet/out_t500.5")?, TOL_UNET)?;
    check("unet seamless 5x9", &tiled_odd, r.get("unet/odd_out_t999")?, TOL_UNET)?;

    // Zero padding (the same network, another call): the outputs differ from the circular ones where edges matter.
    let plain = unet.forward(sample, 500.5, &UNetInputs::text(context.clone()))?;
    let diff = max_err(&plain, &tiled)?;
    assert!(
        diff > 1e-2,
        "zero and circular padding give nearly the same output ({diff})"
    );
    Ok(())
}

#[test]
fn vae_with_circular_padding_matches_diffusers() -> TestResult {
    let r = reference()?;
    let cfg: VaeConfig = config("vae")?;
    let vae = AutoencoderKL::new(weights("vae")?, &cfg)?;
    check(
        "vae seamless encode mean",
        &vae.encode_mean_padded(r.get("vae/input")?, None, Padding::Circular)?,
        r.get("vae/mean")?,
        TOL_VAE,
    )?;
    check(
        "vae seamless decode",
        &vae.decode_padded(r.get("vae/latent")?, None, Padding::Circular)?,
        r.get("vae/decoded")?,
        TOL_VAE,
    )
}

#[test]
fn circular_pad_wraps_like_torch() -> TestResult {
    // F.pad(arange(6).reshape(1, 1, 2, 3), (1, 1, 1, 1), mode="circular"):
    let x = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((1, 1, 2, 3))?;
    let padded = ember::nn::layers::pad_circular(&x, 1)?;
    let want: Vec<f32> = vec![
        5., 3., 4., 5., 3., //
        2., 0., 1., 2., 0., //
        5., 3., 4., 5., 3., //
        2., 0., 1., 2., 0.,
    ];
    assert_eq!(padded.dims(), &[1, 1, 4, 5]);
    assert_eq!(padded.flatten_all()?.to_vec1::<f32>()?, want);
    Ok(())
}
