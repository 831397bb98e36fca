//! The tiny autoencoder (`nn::taesd`, `model::taesd`) against its references:
//! - madebyollin's trained TAEF2 (FLUX.2: 32 latent channels, pool branch) `.pth` files in ../shared/models/taesd
//!   against `taesd.py` run by torch in float32 (../shared/testdata/oracle/taef2_fire_drawing.safetensors);
//! - the SD variant (4 channels) on random weights against diffusers' `AutoencoderTiny`
//!   (tools/oracle/make_taesd_reference.py → tests/fixtures/taesd-tiny), loaded from a torch-written `.pth`, from
//!   `.safetensors` in madebyollin's and diffusers' layouts, stored as f16, bf16 and f32;
//! - broken, truncated and foreign files, which must give errors naming the problem.
//!
//! Timing (not a test of time): `cargo test --release -p ember --test taesd_parity -- --ignored --nocapture`.

use candle_core::{DType, Device, Tensor};
use ember::model::load_tiny_autoencoder;
use ember::nn::TinyAutoencoder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod reference;
use reference::Reference;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

// Bounds. f32 against torch f32 on the same CPU, where only the order of accumulation differs; max |Δ| measured
// 2026-12-07 on AMD EPYC (AVX-512, no AMX), default kernels (the portable kernels, EMBER_CPU_KERNELS=portable, give the same to two digits):
// - TAEF2 decoder 384²: 1.2e-6 (values up to 1.05); bound ≈ 10×.
// - SD random weights 64²: encode 5.8e-6, decode 1.8e-5, round trip 8.1e-6 (values up to 3.2, 6.3, 4.4); bound ≈ 10×.
// - TAEF2 encoder 384²: 4.1e-4 (values up to 4.2). This encoder amplifies rounding: torch's own f32 result is 9.8e-5
//   from torch's f64 one, Ember's f32 is 4.6e-4 from it, and Ember's f64 equals torch's f64 to f32 storage (0.0;
//   `taef2_encoder_f64_matches_taesd_py_f64`). Bound 1e-3 (2.4× the measured, 2.4e-4 of the largest value), not 10×:
//   at 4e-3 a real error in one channel could hide.
// f64 against torch f64: 0.0 after rounding both to f32; the bound is one f32 ulp at 4.2 with margin.
const TOL_TAEF2_ENCODE: f32 = 1e-3;
const TOL_TAEF2_DECODE: f32 = 1e-5;
const TOL_SD: f32 = 2e-4;
const TOL_F64: f32 = 2e-6;

fn taef2(name: &str) -> PathBuf {
    PathBuf::from(format!("{SHARED}/models/taesd/{name}"))
}

fn sd_fixture(name: &str) -> PathBuf {
    PathBuf::from(format!("{FIXTURES}/taesd-tiny/{name}"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn max_abs(a: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    Ok(a.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// `got` within `tol` of `want` (printing the error, for the bounds' comment).
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> TestResult {
    let err = max_abs_diff(got, want)?;
    println!(
        "{what}: max |Δ| {err:.3e} (values up to {:.3}; bound {tol:.0e})",
        max_abs(want)?
    );
    assert!(err.is_finite() && err <= tol, "{what}: max |Δ| {err:e} > {tol:e}");
    Ok(())
}

fn taef2_reference() -> Result<Reference, Box<dyn std::error::Error>> {
    Reference::load(
        format!("{SHARED}/testdata/oracle/taef2_fire_drawing.safetensors"),
        "the shared oracle (../shared/testdata/oracle/README.md)",
    )
}

fn sd_reference() -> Result<Reference, Box<dyn std::error::Error>> {
    Reference::load(
        sd_fixture("reference.safetensors"),
        "tools/oracle/make_taesd_reference.py",
    )
}

#[test]
fn taef2_encoder_matches_taesd_py() -> TestResult {
    let reference = taef2_reference()?;
    let tae = TinyAutoencoder::load(&taef2("taef2_encoder.pth"), &Device::Cpu, DType::F32)?;
    assert_eq!(tae.latent_channels(), 32);
    assert!(tae.has_encoder() && !tae.has_decoder());
    let latent = tae.encode(reference.get("input")?)?;
    assert_close("TAEF2 encode", &latent, reference.get("latent")?, TOL_TAEF2_ENCODE)
}

#[test]
fn taef2_decoder_matches_taesd_py() -> TestResult {
    let reference = taef2_reference()?;
    let tae = TinyAutoencoder::load(&taef2("taef2_decoder.pth"), &Device::Cpu, DType::F32)?;
    assert_eq!(tae.latent_channels(), 32);
    assert!(tae.has_decoder() && !tae.has_encoder());
    let want = reference.get("decoded_unclamped")?;
    let unclamped = tae.decode_unclamped(reference.get("latent")?)?;
    assert_close("TAEF2 decode (unclamped)", &unclamped, want, TOL_TAEF2_DECODE)?;
    let clamped = tae.decode(reference.get("latent")?)?;
    assert_close(
        "TAEF2 decode (clamped)",
        &clamped,
        &want.clamp(0f32, 1f32)?,
        TOL_TAEF2_DECODE,
    )
}

/// Both halves from their two files: one autoencoder, encode then decode (the oracle's PSNR was 34.5 dB).
#[test]
fn taef2_halves_load_together() -> TestResult {
    let reference = taef2_reference()?;
    let (enc, dec) = (taef2("taef2_encoder.pth"), taef2("taef2_decoder.pth"));
    let tae = load_tiny_autoencoder(&[&enc, &dec], &Device::Cpu, DType::F32)?;
    assert!(tae.has_encoder() && tae.has_decoder());
    let input = reference.get("input")?;
    let out = tae.decode(&tae.encode(input)?)?;
    let mse = (out - input)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
    let psnr = -10.0 * mse.log10();
    println!("TAEF2 round trip: {psnr:.2} dB");
    assert!(psnr > 34.0, "round trip PSNR {psnr} dB");
    // The same half twice is refused.
    let err = load_tiny_autoencoder(&[&dec, &dec], &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("also holds a tiny decoder"), "{err}");
    Ok(())
}

/// The SD variant's decoder from the `.pth` torch wrote (madebyollin's layout).
#[test]
fn sd_decoder_pth_matches_diffusers() -> TestResult {
    let reference = sd_reference()?;
    let tae = TinyAutoencoder::load(&sd_fixture("taesd_decoder.pth"), &Device::Cpu, DType::F32)?;
    assert_eq!(tae.latent_channels(), 4);
    let out = tae.decode_unclamped(reference.get("noise_latent")?)?;
    assert_close("SD decode (.pth)", &out, reference.get("decoded_unclamped")?, TOL_SD)
}

/// The `.pth` decoder's tensors in madebyollin's names (`1.weight`, …), as f16 CPU tensors.
fn pth_decoder_tensors() -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    let ckpt = ember_pickle::Checkpoint::open(sd_fixture("taesd_decoder.pth"))?;
    let mut out = HashMap::new();
    for (name, info) in ckpt.tensors() {
        assert_eq!(info.dtype, ember_pickle::StorageDtype::F16);
        let bytes = ckpt.tensor_bytes(info)?;
        out.insert(
            name.clone(),
            Tensor::from_raw_buffer(&bytes, DType::F16, &info.shape, &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// The encoder's random weights, derived from the decoder's by make_taesd_reference.py's rule (`derive_encoder`).
fn derive_encoder(dec: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    let square = |down: &[usize], blocks: &[usize]| {
        let mut names: Vec<String> = down.iter().map(|i| format!("{i}.weight")).collect();
        for b in blocks {
            names.extend([0, 2, 4].map(|j| format!("{b}.conv.{j}.weight")));
            names.extend([0, 2, 4].map(|j| format!("{b}.conv.{j}.bias")));
        }
        names
    };
    let enc_names = square(&[2, 6, 10], &[1, 3, 4, 5, 7, 8, 9, 11, 12, 13]);
    let dec_names = square(&[7, 12, 17], &[3, 4, 5, 8, 9, 10, 13, 14, 15, 18]);
    let mut enc = HashMap::new();
    for (e, d) in enc_names.iter().zip(&dec_names) {
        enc.insert(e.clone(), dec[d].clone());
    }
    enc.insert("0.weight".into(), dec["19.weight"].transpose(0, 1)?.contiguous()?);
    enc.insert("0.bias".into(), dec["1.bias"].clone());
    enc.insert("14.weight".into(), dec["1.weight"].transpose(0, 1)?.contiguous()?);
    enc.insert("14.bias".into(), dec["3.conv.0.bias"].narrow(0, 0, 4)?);
    Ok(enc)
}

/// Both halves in diffusers' `AutoencoderTiny` layout (`encoder.layers.N`, `decoder.layers.N - 1`) as `dtype`.
fn diffusers_layout(dtype: DType) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    let dec = pth_decoder_tensors()?;
    let enc = derive_encoder(&dec)?;
    let mut out = HashMap::new();
    for (name, t) in enc {
        out.insert(format!("encoder.layers.{name}"), t.to_dtype(dtype)?);
    }
    for (name, t) in dec {
        let (i, rest) = name.split_once('.').ok_or("bad key")?;
        let i: usize = i.parse()?;
        out.insert(format!("decoder.layers.{}.{rest}", i - 1), t.to_dtype(dtype)?);
    }
    Ok(out)
}

/// diffusers' own state dict names and shapes (written by the oracle) are exactly this layout's.
#[test]
fn diffusers_layout_is_diffusers_own() -> TestResult {
    let text = std::fs::read_to_string(sd_fixture("diffusers_keys.json"))?;
    let keys: HashMap<String, Vec<usize>> = serde_json::from_str(&text)?;
    let ours: HashMap<String, Vec<usize>> = diffusers_layout(DType::F16)?
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect();
    assert_eq!(ours, keys);
    Ok(())
}

/// Diffusers-layout `.safetensors` with both halves, stored as f16, bf16 and f32: encode, decode and the round trip
/// against diffusers. The f16 values are what the oracle used, so f16 and f32 storage give the same bits; bf16
/// storage rounds the weights to 8 significant bits, so it is only held to a relative bound.
#[test]
fn sd_diffusers_safetensors_matches_diffusers() -> TestResult {
    let reference = sd_reference()?;
    let dir = tempfile::tempdir()?;
    let mut decoded = Vec::new();
    for dtype in [DType::F16, DType::F32, DType::BF16] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        candle_core::safetensors::save(&diffusers_layout(dtype)?, &path)?;
        let tae = TinyAutoencoder::load(&path, &Device::Cpu, DType::F32)?;
        assert!(tae.has_encoder() && tae.has_decoder() && tae.latent_channels() == 4);
        let latent = tae.encode(reference.get("input")?)?;
        let out = tae.decode_unclamped(reference.get("noise_latent")?)?;
        let roundtrip = tae.decode_unclamped(reference.get("latent")?)?;
        if dtype == DType::BF16 {
            let rel = max_abs_diff(&out, reference.get("decoded_unclamped")?)? / max_abs(&out)?;
            println!("SD decode, bf16-stored weights: max |Δ| / max {rel:.3e}");
            assert!(rel < 0.1, "bf16-stored weights: relative error {rel}");
        } else {
            assert_close(
                &format!("SD encode ({dtype:?})"),
                &latent,
                reference.get("latent")?,
                TOL_SD,
            )?;
            assert_close(
                &format!("SD decode ({dtype:?})"),
                &out,
                reference.get("decoded_unclamped")?,
                TOL_SD,
            )?;
            let want = reference.get("roundtrip_unclamped")?;
            assert_close(&format!("SD round trip ({dtype:?})"), &roundtrip, want, TOL_SD)?;
            decoded.push(out);
        }
    }
    assert_eq!(
        max_abs_diff(&decoded[0], &decoded[1])?,
        0.0,
        "f16 and f32 storage differ"
    );
    // The folder form (diffusers' save_pretrained) finds diffusion_pytorch_model.safetensors.
    let folder = dir.path().join("taesd");
    std::fs::create_dir(&folder)?;
    std::fs::copy(
        dir.path().join("F16.safetensors"),
        folder.join("diffusion_pytorch_model.safetensors"),
    )?;
    let tae = TinyAutoencoder::load(&folder, &Device::Cpu, DType::F32)?;
    let out = tae.decode_unclamped(reference.get("noise_latent")?)?;
    assert_eq!(max_abs_diff(&out, &decoded[0])?, 0.0);
    Ok(())
}

/// madebyollin's layout as `.safetensors` (bare indices, decoder only) gives exactly what the `.pth` gives; so does a
/// whole `TAESD` module's state dict (`decoder.1.weight`).
#[test]
fn plain_safetensors_equals_pth() -> TestResult {
    let reference = sd_reference()?;
    let latent = reference.get("noise_latent")?;
    let from_pth = TinyAutoencoder::load(&sd_fixture("taesd_decoder.pth"), &Device::Cpu, DType::F32)?;
    let want = from_pth.decode(latent)?;
    let dir = tempfile::tempdir()?;
    let dec = pth_decoder_tensors()?;
    let plain = dir.path().join("taesd_decoder.safetensors");
    candle_core::safetensors::save(&dec, &plain)?;
    let module: HashMap<String, Tensor> = dec.iter().map(|(k, t)| (format!("decoder.{k}"), t.clone())).collect();
    let whole = dir.path().join("taesd.safetensors");
    candle_core::safetensors::save(&module, &whole)?;
    for path in [plain, whole] {
        let tae = TinyAutoencoder::load(&path, &Device::Cpu, DType::F32)?;
        assert!(tae.has_decoder() && !tae.has_encoder());
        assert_eq!(max_abs_diff(&tae.decode(latent)?, &want)?, 0.0, "{}", path.display());
        let err = tae.encode(reference.get("input")?).unwrap_err().to_string();
        assert!(err.contains("no encoder"), "{err}");
    }
    Ok(())
}

/// Reduced-precision compute (f16, bf16 activations) stays near the f32 result (a smoke test of those paths, not a
/// fidelity claim): relative to the largest value, within what 11 / 8 significant bits allow over ~20 layers.
#[test]
fn half_precision_compute_runs() -> TestResult {
    let reference = sd_reference()?;
    for (dtype, bound) in [(DType::F16, 2e-2f32), (DType::BF16, 1e-1)] {
        let tae = TinyAutoencoder::load(&sd_fixture("taesd_decoder.pth"), &Device::Cpu, dtype)?;
        let out = tae.decode_unclamped(&reference.get("noise_latent")?.to_dtype(dtype)?)?;
        assert_eq!(out.dtype(), dtype);
        let want = reference.get("decoded_unclamped")?;
        let rel = max_abs_diff(&out, want)? / max_abs(want)?;
        println!("SD decode in {dtype:?}: max |Δ| / max {rel:.3e}");
        assert!(rel < bound, "{dtype:?}: relative error {rel}");
        let clamped = tae.decode(&reference.get("noise_latent")?.to_dtype(dtype)?)?;
        assert!(max_abs(&clamped)? <= 1.0);
    }
    Ok(())
}

fn load_error(path: &Path) -> String {
    match TinyAutoencoder::load(path, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(err: &str, path: &Path, words: &[&str]) {
    assert!(
        err.contains(&path.display().to_string()),
        "the error does not name the file: {err}"
    );
    for w in words {
        assert!(err.contains(w), "the error does not say `{w}`: {err}");
    }
}

#[test]
fn bad_files_give_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("taesd_decoder.pth");
    assert_mentions(&load_error(&missing), &missing, &["no such file"]);
    assert_mentions(&load_error(dir.path()), dir.path(), &["folder without"]);

    // Truncated .pth: the zip's directory (at its end) is gone; cut later, a storage is short.
    let pth = std::fs::read(sd_fixture("taesd_decoder.pth"))?;
    for keep in [pth.len() / 2, pth.len() - 30] {
        let cut = dir.path().join(format!("cut{keep}.pth"));
        std::fs::write(&cut, &pth[..keep])?;
        let err = load_error(&cut);
        assert!(err.contains(&cut.display().to_string()), "{err}");
        println!("truncated .pth ({keep} of {} bytes): {err}", pth.len());
    }

    // Truncated .safetensors.
    let st = dir.path().join("plain.safetensors");
    candle_core::safetensors::save(&pth_decoder_tensors()?, &st)?;
    let bytes = std::fs::read(&st)?;
    for keep in [4, 100, bytes.len() / 2] {
        let cut = dir.path().join(format!("cut{keep}.safetensors"));
        std::fs::write(&cut, &bytes[..keep])?;
        let err = load_error(&cut);
        assert_mentions(&err, &cut, &["truncated"]);
    }

    // Another model's weights: the tiny SD's full VAE.
    let vae = PathBuf::from(format!("{FIXTURES}/tiny-sd/vae/diffusion_pytorch_model.safetensors"));
    assert_mentions(&load_error(&vae), &vae, &["not a tiny autoencoder"]);

    // TAESana's 32×-downscaling encoder: recognised and refused.
    let sana = taef2("taesana_encoder.pth");
    if sana.exists() {
        assert_mentions(&load_error(&sana), &sana, &["TAESana"]);
    }

    // Tensors that do not fit: one missing, one of the wrong shape, one extra, mismatched halves.
    let dec = pth_decoder_tensors()?;
    let write = |name: &str, map: &HashMap<String, Tensor>| -> Result<PathBuf, Box<dyn std::error::Error>> {
        let p = dir.path().join(name);
        candle_core::safetensors::save(map, &p)?;
        Ok(p)
    };
    let mut missing_one = dec.clone();
    missing_one.remove("8.conv.2.bias");
    let p = write("missing.safetensors", &missing_one)?;
    assert_mentions(&load_error(&p), &p, &["`8.conv.2.bias`", "missing", "does not fit"]);
    let mut wrong_shape = dec.clone();
    wrong_shape.insert(
        "12.weight".into(),
        Tensor::zeros((64, 32, 3, 3), DType::F16, &Device::Cpu)?,
    );
    let p = write("shape.safetensors", &wrong_shape)?;
    assert_mentions(
        &load_error(&p),
        &p,
        &["`12.weight`", "[64, 32, 3, 3]", "expected [64, 64, 3, 3]"],
    );
    let mut extra = dec.clone();
    extra.insert(
        "18.skip.weight".into(),
        Tensor::zeros((64, 64, 1, 1), DType::F16, &Device::Cpu)?,
    );
    let p = write("extra.safetensors", &extra)?;
    assert_mentions(&load_error(&p), &p, &["unexpected tensor `18.skip.weight`"]);
    let mut ints = dec.clone();
    ints.insert("1.bias".into(), Tensor::zeros(64, DType::U8, &Device::Cpu)?);
    let p = write("ints.safetensors", &ints)?;
    assert_mentions(&load_error(&p), &p, &["`1.bias`", "not a floating-point"]);
    let encoder = taef2("taef2_encoder.pth");
    let err = match load_tiny_autoencoder(&[&encoder, &sd_fixture("taesd_decoder.pth")], &Device::Cpu, DType::F32) {
        Ok(_) => panic!("a 32-channel encoder and a 4-channel decoder loaded together"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("different models") && err.contains("4 latent channels"),
        "{err}"
    );
    Ok(())
}

/// Decode time of a 64×64×4 latent (a 512² image), random weights, f32 (and bf16) on this CPU: best of 3 after a
/// warm-up. Prints; asserts nothing about time.
#[test]
#[ignore]
fn time_decode_512() -> TestResult {
    use ember::nn::taesd::{expected_tensors, Half, TinyConfig, TinyDecoder, TinyEncoder};
    let cfg = TinyConfig {
        latent_channels: 4,
        pool: false,
    };
    let mut tensors = HashMap::new();
    for half in [Half::Encoder, Half::Decoder] {
        for (name, shape) in expected_tensors(half, cfg) {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let std = (2.0 / fan_in as f64).sqrt() * 0.5;
            tensors.insert(
                format!("{}.{name}", half.as_str()),
                Tensor::randn(0f32, std as f32, shape.as_slice(), &Device::Cpu)?,
            );
        }
    }
    for dtype in [DType::F32, DType::BF16] {
        let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
        let vars = ember::nn::Precision::new(&Device::Cpu, dtype).vars(&vb);
        let tae = TinyAutoencoder::new(
            Some(TinyEncoder::new(vars.pp("encoder"), cfg)?),
            Some(TinyDecoder::new(vars.pp("decoder"), cfg)?),
        )?;
        let latent = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &Device::Cpu)?.to_dtype(dtype)?;
        let image = Tensor::rand(0f32, 1.0, (1, 3, 512, 512), &Device::Cpu)?.to_dtype(dtype)?;
        let best = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<f64, Box<dyn std::error::Error>> {
            f()?;
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                f()?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let decode = best(&|| tae.decode(&latent))?;
        let encode = best(&|| tae.encode(&image))?;
        println!("tiny autoencoder 512², {dtype:?}: decode {decode:.3} s, encode {encode:.3} s (best of 3)");
    }
    Ok(())
}

/// In float64 the encoder equals `taesd.py` run by torch in float64 (tests/fixtures/taesd-tiny/taef2_f64.safetensors)
/// to float32 storage precision: the float32 gap above is rounding the encoder amplifies, not a difference in the
/// network.
#[test]
fn taef2_encoder_f64_matches_taesd_py_f64() -> TestResult {
    let input = taef2_reference()?.get("input")?.to_dtype(DType::F64)?;
    let want = Reference::load(
        sd_fixture("taef2_f64.safetensors"),
        "tools/oracle/make_taesd_reference.py",
    )?;
    let tae = TinyAutoencoder::load(&taef2("taef2_encoder.pth"), &Device::Cpu, DType::F64)?;
    let latent = tae.encode(&input)?;
    assert_eq!(latent.dtype(), DType::F64);
    assert_close("TAEF2 encode, f64", &latent, want.get("latent")?, TOL_F64)?;
    let f32_run = TinyAutoencoder::load(&taef2("taef2_encoder.pth"), &Device::Cpu, DType::F32)?;
    let err = max_abs_diff(&f32_run.encode(&input.to_dtype(DType::F32)?)?, want.get("latent")?)?;
    println!("TAEF2 encode, Ember f32 against torch f64: max |Δ| {err:.3e}");
    Ok(())
}
