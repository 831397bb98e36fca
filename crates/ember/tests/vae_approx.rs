//! `--vae-approx`: the tiny autoencoder in the pipeline. Its final decode is exactly the tiny decoder applied to the
//! run's final latents (which are the same as without it: only the decode changes); its previews are that decode
//! of the step's latents; `--vae-approx-encode` encodes img2img's init image with the tiny encoder; the metadata
//! names the file; mismatched or incomplete autoencoders are refused with the reason.
//!
//! The tiny autoencoder is tests/fixtures/taesd-tiny's 4-channel decoder (random weights, diffusers-checked in
//! tests/taesd_parity.rs) on the tiny SD model.

use candle_core::{DType, Device, Tensor};
use ember::image::metadata::{a1111_parameters, sd_metadata_json};
use ember::model::load_tiny_autoencoder;
use ember::pipeline::{CancelToken, Event, Pipeline};
use ember::request::{GenerateRequest, InitImage};
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn pipeline() -> Pipeline {
    let model = fixture("tiny-sd.safetensors");
    Pipeline::load(model.to_str().expect("utf-8"), &Device::Cpu, DType::F32).expect("the tiny model loads")
}

fn decoder() -> ember::nn::TinyAutoencoder {
    let path = fixture("taesd-tiny/taesd_decoder.pth");
    load_tiny_autoencoder(&[path.as_path()], &Device::Cpu, DType::F32).expect("the tiny decoder loads")
}

fn request() -> GenerateRequest {
    GenerateRequest {
        prompt: "a lighthouse".into(),
        steps: 3,
        sampler: "k_euler".parse().expect("sampler"),
        seed: 11,
        width: 64,
        height: 64,
        ..GenerateRequest::default()
    }
}

fn run(pipeline: &Pipeline, request: &GenerateRequest) -> ember::Result<ember::pipeline::Generated> {
    pipeline.generate(request, &CancelToken::new(), &mut |_| {})
}

/// The image the tiny decoder makes of `latents`, rounded as the pipeline rounds ([0, 1] → 8 bits).
fn tiny_decode(latents: &Tensor) -> Vec<u8> {
    let rgb = decoder().decode(latents).expect("decode"); // [1, 3, H, W] in [0, 1]
    let rgb = (rgb.squeeze(0).expect("batch").permute((1, 2, 0)).expect("hwc") * 255.0).expect("scale");
    let values: Vec<f32> = rgb.flatten_all().expect("flat").to_vec1().expect("values");
    values.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect()
}

#[test]
fn the_final_image_and_the_previews_are_the_tiny_decoders() {
    let plain = pipeline();
    let without = run(&plain, &request()).expect("the VAE run");

    let mut fast = pipeline();
    fast.set_vae_approx(Some((decoder(), "taesd_decoder.pth".into())))
        .expect("a 4-channel decoder fits an SD model");
    assert_eq!(fast.vae_approx_name(), Some("taesd_decoder.pth"));
    let asked = GenerateRequest {
        vae_approx_decode: true,
        ..request()
    };
    // Front-ends take a preview of each step's latents with `Pipeline::preview`: the tiny decode, at full size.
    let mut previews = Vec::new();
    let mut on_event = |event: Event<'_>| {
        if let Event::Step { latents, .. } = event {
            let preview = fast.preview(latents).expect("preview");
            previews.push((preview.dimensions(), preview.into_raw() == tiny_decode(latents)));
        }
    };
    let with = fast
        .generate(&asked, &CancelToken::new(), &mut on_event)
        .expect("the fast run");
    assert_eq!(previews, vec![((64, 64), true); 3], "a full-size tiny decode per step");

    let (a, b): (Vec<f32>, Vec<f32>) = (
        without.latents.flatten_all().unwrap().to_vec1().unwrap(),
        with.latents.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(a, b, "the denoising is the same; only the decode changes");
    assert_eq!(
        with.image.as_raw(),
        &tiny_decode(&with.latents),
        "the image is the tiny decoder's"
    );
    assert_ne!(with.image.as_raw(), without.image.as_raw(), "and not the VAE's");
    assert_eq!((with.image.width(), with.image.height()), (64, 64));

    // A preview of the final latents is the tiny decode at full size (without a tiny autoencoder: 8×8).
    let preview = fast.preview(&with.latents).expect("preview");
    assert_eq!((preview.width(), preview.height()), (64, 64));
    assert_eq!(preview.as_raw(), &tiny_decode(&with.latents));
    let coarse = plain.preview(&with.latents).expect("preview");
    assert_eq!((coarse.width(), coarse.height()), (8, 8));

    // The metadata names the file; a run that does not ask for it does not.
    assert!(sd_metadata_json(&with.record).contains("\"vae_approx\":\"taesd_decoder.pth\""));
    assert!(a1111_parameters(&with.record).contains("VAE: taesd_decoder.pth"));
    let plain_run = run(&fast, &request()).expect("a VAE run on the same pipeline");
    assert_eq!(
        plain_run.image.as_raw(),
        without.image.as_raw(),
        "without the flag the VAE decodes"
    );
    assert!(!sd_metadata_json(&plain_run.record).contains("vae_approx"));
    assert!(!a1111_parameters(&plain_run.record).contains("VAE:"));
}

#[test]
fn img2img_encodes_with_the_tiny_encoder_when_asked() {
    let reference = fixture("taesd-tiny/reference.safetensors");
    assert!(reference.exists(), "{}", reference.display());
    // The committed fixture has the decoder only: an encode with it is refused, naming the missing file.
    let mut fast = pipeline();
    fast.set_vae_approx(Some((decoder(), "taesd_decoder.pth".into())))
        .expect("set");
    let img2img = GenerateRequest {
        init_image: Some(InitImage::Path(fixture("init-64x96.png"))),
        strength: 0.5,
        vae_approx_encode: true,
        ..request()
    };
    let refused = run(&fast, &img2img).err().expect("no encoder");
    assert!(refused.to_string().contains("encoder"), "{refused}");
    // With the VAE's encode (the default) the same request runs.
    let ok = GenerateRequest {
        vae_approx_encode: false,
        ..img2img
    };
    run(&fast, &ok).expect("img2img with the VAE encode");
}

/// The fixture's decoder with an encoder of random weights (the encode path's wiring is what is checked here; the
/// encoder's numbers are checked against diffusers in tests/taesd_parity.rs).
fn with_random_encoder() -> ember::nn::TinyAutoencoder {
    use ember::nn::taesd::{expected_tensors, Half, TinyConfig, TinyEncoder};
    let cfg = TinyConfig {
        latent_channels: 4,
        pool: false,
    };
    let mut tensors = std::collections::HashMap::new();
    for (i, (name, shape)) in expected_tensors(Half::Encoder, cfg).into_iter().enumerate() {
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let len: usize = shape.iter().product();
        // Deterministic values in ±sqrt(1/fan_in) (no RNG: the same weights in every run).
        let scale = (1.0 / fan_in as f32).sqrt();
        let values: Vec<f32> = (0..len)
            .map(|k| scale * (((k * 7919 + i * 104729) % 2003) as f32 / 1001.0 - 1.0))
            .collect();
        let tensor = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).expect("tensor");
        tensors.insert(format!("encoder.{name}"), tensor);
    }
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let vars = ember::nn::Precision::new(&Device::Cpu, DType::F32).vars(&vb);
    let encoder = TinyEncoder::new(vars.pp("encoder"), cfg).expect("encoder");
    let decoder = decoder().decoder().cloned();
    ember::nn::TinyAutoencoder::new(Some(encoder), decoder).expect("both halves")
}

#[test]
fn the_tiny_encoder_encodes_the_init_image_when_asked() {
    let mut fast = pipeline();
    fast.set_vae_approx(Some((with_random_encoder(), "tiny.safetensors".into())))
        .expect("set");
    let img2img = GenerateRequest {
        init_image: Some(InitImage::Path(fixture("init-64x96.png"))),
        strength: 0.5,
        ..request()
    };
    let vae = run(&fast, &img2img).expect("the VAE's encode");
    let tiny = run(
        &fast,
        &GenerateRequest {
            vae_approx_encode: true,
            ..img2img.clone()
        },
    )
    .expect("the tiny encode");
    let latents = |g: &ember::pipeline::Generated| -> Vec<f32> { g.latents.flatten_all().unwrap().to_vec1().unwrap() };
    assert_ne!(latents(&vae), latents(&tiny), "another encoder, other starting latents");
    // The same request again gives the same latents: the tiny encode is deterministic.
    let again = run(
        &fast,
        &GenerateRequest {
            vae_approx_encode: true,
            ..img2img
        },
    )
    .expect("again");
    assert_eq!(latents(&tiny), latents(&again));
}

#[test]
fn mismatched_or_missing_tiny_autoencoders_are_refused() {
    // FLUX.2's TAEF2 decodes 32-channel latents: not an SD model's.
    let taef2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/taesd/taef2_decoder.pth");
    let approx = load_tiny_autoencoder(&[taef2.as_path()], &Device::Cpu, DType::F32).expect("TAEF2 loads");
    let mut fast = pipeline();
    let refused = fast
        .set_vae_approx(Some((approx, "taef2_decoder.pth".into())))
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("32-channel") && message.contains("have 4"),
        "{message}"
    );
    assert_eq!(fast.vae_approx_name(), None);

    // An encoder alone cannot decode.
    let encoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/taesd/taef2_encoder.pth");
    let approx = load_tiny_autoencoder(&[encoder.as_path()], &Device::Cpu, DType::F32).expect("loads");
    assert!(!approx.has_decoder());

    // A request that asks for the tiny decoder on a pipeline without one.
    let plain = pipeline();
    let asked = GenerateRequest {
        vae_approx_decode: true,
        ..request()
    };
    let refused = run(&plain, &asked).err().expect("refused");
    assert!(refused.to_string().contains("--vae-approx FILE"), "{refused}");
}
