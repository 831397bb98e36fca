//! `--vae-tiling` against diffusers' `AutoencoderKL.enable_tiling()` on the tiny VAE
//! (tools/oracle/make_vae_tiling_reference.py, torch f64 CPU, rounded to f32): tiled encode (posterior mean) and
//! decode of a 72×104 image / 9×13 latent with the VAE's own 64-pixel tiles and with 32-pixel tiles, and the
//! untiled fallback for inputs no larger than a tile.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ember::nn::config::VaeConfig;
use ember::nn::vae::VaeTiling;
use ember::nn::AutoencoderKL;

mod reference;
use reference::Reference;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-sd");
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/vae_tiling_reference.safetensors"
);

/// Ember f32 against torch f64: only f32 rounding differs. Measured 2026-12-06 (AMD EPYC, AVX-512, no AMX), max |Δ|
/// over the six comparisons: 4.6e-6 with the AVX-512 kernels, 3.1e-6 with `EMBER_CPU_KERNELS=portable` (decodes;
/// encodes 1.3e-6); the bound is ≈10× that, and 4–5 orders below what tiling itself changes (tiled vs untiled
/// differ by 1.0 in the encode and 3.4 in the decode, `tiling_changes_large_outputs`), which a wrong blend mixes in.
const TOL_VAE: f32 = 5e-5;

fn reference() -> Result<Reference, Box<dyn std::error::Error>> {
    Reference::load(REFERENCE, "tools/oracle/make_vae_tiling_reference.py")
}

fn vae() -> Result<AutoencoderKL, Box<dyn std::error::Error>> {
    let cfg: VaeConfig = serde_json::from_str(&std::fs::read_to_string(format!("{MODEL}/vae/config.json"))?)?;
    let path = format!("{MODEL}/vae/diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture file is not modified while the test runs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)? };
    Ok(AutoencoderKL::new(vb, &cfg)?)
}

/// The tiling diffusers ran with, from the reference's `(tile_sample_min_size, tile_latent_min_size, overlap)`;
/// the latent tile must be the one Ember derives (sample tile / 8).
fn tiling(r: &Reference, set: &str) -> Result<VaeTiling, Box<dyn std::error::Error>> {
    let s = r.get(&format!("{set}/settings"))?.to_vec1::<f32>()?;
    let [sample, latent, overlap] = s[..] else {
        return Err(format!("{set}/settings has {} values, not 3", s.len()).into());
    };
    assert_eq!(
        sample,
        latent * 8.0,
        "{set}: diffusers' latent tile is not sample tile / 8"
    );
    Ok(VaeTiling {
        sample_tile: sample as usize,
        overlap: overlap as f64,
    })
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
fn tiled_encode_and_decode_match_diffusers() -> TestResult {
    let r = reference()?;
    let vae = vae()?;
    let (input, latent) = (r.get("input")?, r.get("latent")?);
    for set in ["tile64", "tile32"] {
        let tiling = tiling(&r, set)?;
        check(
            &format!("{set} tiled encode mean"),
            &vae.encode_mean_tiled(input, &tiling)?,
            r.get(&format!("{set}/mean"))?,
            TOL_VAE,
        )?;
        check(
            &format!("{set} tiled decode"),
            &vae.decode_tiled(latent, &tiling)?,
            r.get(&format!("{set}/decoded"))?,
            TOL_VAE,
        )?;
    }
    Ok(())
}

#[test]
fn inputs_no_larger_than_a_tile_take_the_untiled_path() -> TestResult {
    let r = reference()?;
    let vae = vae()?;
    let tiling = tiling(&r, "tile64")?;
    let (small_input, small_latent) = (r.get("small_input")?, r.get("small_latent")?);
    let mean = vae.encode_mean_tiled(small_input, &tiling)?;
    let decoded = vae.decode_tiled(small_latent, &tiling)?;
    check("small tiled encode mean", &mean, r.get("tile64/small_mean")?, TOL_VAE)?;
    check("small tiled decode", &decoded, r.get("tile64/small_decoded")?, TOL_VAE)?;
    assert_eq!(max_err(&mean, &vae.encode_mean(small_input)?)?, 0.0);
    assert_eq!(max_err(&decoded, &vae.decode(small_latent)?)?, 0.0);
    Ok(())
}

#[test]
fn tiling_changes_large_outputs() -> TestResult {
    // Proves the parity test above ran the tiled path: tiles see less context than the whole image.
    let r = reference()?;
    let vae = vae()?;
    let tiling = tiling(&r, "tile32")?;
    let (input, latent) = (r.get("input")?, r.get("latent")?);
    let encode_diff = max_err(&vae.encode_mean_tiled(input, &tiling)?, &vae.encode_mean(input)?)?;
    let decode_diff = max_err(&vae.decode_tiled(latent, &tiling)?, &vae.decode(latent)?)?;
    println!("tiled vs untiled: encode {encode_diff:e}, decode {decode_diff:e}");
    assert!(
        encode_diff > 1e-2,
        "tiled and untiled encodes nearly agree ({encode_diff})"
    );
    assert!(
        decode_diff > 1e-2,
        "tiled and untiled decodes nearly agree ({decode_diff})"
    );
    Ok(())
}

#[test]
fn default_is_diffusers_sd15_tiling() {
    let d = VaeTiling::default();
    assert_eq!((d.sample_tile, d.overlap), (512, 0.25));
}

#[test]
fn settings_that_do_not_fall_on_whole_latents_are_errors() -> TestResult {
    let vae = vae()?;
    let image = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
    let latent = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu)?;
    for (sample_tile, overlap) in [
        (36, 0.25),
        (40, 0.25),
        (4, 0.25),
        (0, 0.25),
        (32, 1.0),
        (32, -0.5),
        (32, f64::NAN),
    ] {
        let tiling = VaeTiling { sample_tile, overlap };
        assert!(vae.encode_mean_tiled(&image, &tiling).is_err(), "{tiling:?} encodes");
        assert!(vae.decode_tiled(&latent, &tiling).is_err(), "{tiling:?} decodes");
    }
    Ok(())
}
