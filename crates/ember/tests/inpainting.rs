//! Inpainting's behaviour through the engine on the tiny SD 1.x model (an ordinary UNet, so diffusers' legacy path):
//! paste-back keeps the pixels outside the mask exactly, a transparent init image and `-M` agree, `--outcrop` equals
//! the larger canvas and mask built by hand, and bad masks and outcrops are refused with clear errors. Parity with
//! diffusers is `inpaint_parity.rs`.

#[allow(dead_code)]
mod common;

use candle_core::DType;
use common::{fixture, load, rel_err};
use ember::pipeline::{CancelToken, Generated, Pipeline};
use ember::request::{GenerateRequest, InitImage, Outcrop};
use image::{DynamicImage, GrayImage, Luma, RgbImage, Rgba, RgbaImage};

fn init_rgb() -> RgbImage {
    image::open(fixture("init-64x96.png")).expect("fixture").to_rgb8()
}

/// A mask over the 64×96 init image, edges off the 8-pixel grid: a rectangle (12..44, 30..70).
fn rect_mask() -> GrayImage {
    GrayImage::from_fn(64, 96, |x, y| {
        Luma([if (12..44).contains(&x) && (30..70).contains(&y) {
            255
        } else {
            0
        }])
    })
}

fn memory(name: &str, image: DynamicImage) -> InitImage {
    InitImage::Memory {
        name: name.to_string(),
        image,
    }
}

fn request(init: InitImage, mask: Option<GrayImage>) -> GenerateRequest {
    GenerateRequest {
        prompt: "a red hat".into(),
        steps: 4,
        sampler: "k_euler".parse().expect("sampler"),
        seed: 7,
        init_image: Some(init),
        strength: 0.75,
        init_mask: mask.map(|m| memory("mask.png", DynamicImage::ImageLuma8(m))),
        ..Default::default()
    }
}

fn run(pipeline: &Pipeline, request: &GenerateRequest) -> (Generated, Vec<String>) {
    let mut warnings = Vec::new();
    let generated = pipeline
        .generate(request, &CancelToken::new(), &mut |event| {
            if let ember::pipeline::Event::Warning(w) = event {
                warnings.push(w);
            }
        })
        .expect("generates");
    (generated, warnings)
}

fn error(pipeline: &Pipeline, request: &GenerateRequest) -> String {
    match pipeline.generate(request, &CancelToken::new(), &mut |_| {}) {
        Ok(_) => panic!("the request should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn paste_back_keeps_every_pixel_outside_the_mask() {
    let pipeline = load("tiny-sd", DType::F32);
    let original = init_rgb();
    let mask = rect_mask();
    let (pasted, _) = run(
        &pipeline,
        &request(InitImage::Path(fixture("init-64x96.png")), Some(mask.clone())),
    );
    let raw_request = GenerateRequest {
        paste_back: false,
        ..request(InitImage::Path(fixture("init-64x96.png")), Some(mask.clone()))
    };
    let (raw, _) = run(&pipeline, &raw_request);
    assert_eq!(
        rel_err(&pasted.latents, &raw.latents),
        0.0,
        "paste-back happens after decoding"
    );
    let (mut outside_changed_raw, mut inside) = (0, 0);
    for (x, y, p) in pasted.image.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(p, original.get_pixel(x, y), "outside the mask at ({x}, {y})");
            outside_changed_raw += usize::from(raw.image.get_pixel(x, y) != original.get_pixel(x, y));
        } else {
            assert_eq!(
                p,
                raw.image.get_pixel(x, y),
                "inside the mask, the decoded pixels at ({x}, {y})"
            );
            inside += 1;
        }
    }
    assert!(inside > 0);
    // Without paste-back the whole image has been through the VAE: pixels outside the mask change too.
    assert!(
        outside_changed_raw > 100,
        "{outside_changed_raw} pixels changed outside"
    );
    // The mask the front-end saves is the one given.
    assert_eq!(pasted.mask.as_ref(), Some(&mask));

    // Feathered: still exact outside, softened inside near the edge.
    let feathered = GenerateRequest {
        mask_blur: 4,
        ..request(InitImage::Path(fixture("init-64x96.png")), Some(mask.clone()))
    };
    let (soft, _) = run(&pipeline, &feathered);
    for (x, y, p) in soft.image.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(p, original.get_pixel(x, y), "feathered, outside the mask at ({x}, {y})");
        }
    }
    assert_ne!(soft.image, pasted.image, "the feather changes pixels inside the edge");
}

#[test]
fn the_known_region_is_the_init_latent_after_the_last_step() {
    // diffusers' legacy path ends with (1 − m)·init_latent + m·x: where the latent mask is 0 the final latents are
    // the init image's latents exactly, as a strength-0 run (the VAE round trip) gives them.
    let pipeline = load("tiny-sd", DType::F32);
    let mask = rect_mask();
    let (inpainted, _) = run(
        &pipeline,
        &request(InitImage::Path(fixture("init-64x96.png")), Some(mask.clone())),
    );
    let zero = GenerateRequest {
        strength: 0.0,
        init_mask: None,
        ..request(InitImage::Path(fixture("init-64x96.png")), None)
    };
    let (round_trip, _) = run(&pipeline, &zero);
    let (a, b) = (
        inpainted.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        round_trip.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    let (w, h) = (8, 12);
    let (mut kept, mut painted) = (0, 0);
    for c in 0..4 {
        for y in 0..h {
            for x in 0..w {
                let i = (c * h + y) * w + x;
                if mask.get_pixel(8 * x as u32, 8 * y as u32)[0] == 0 {
                    assert_eq!(a[i], b[i], "kept latent ({c}, {y}, {x})");
                    kept += 1;
                } else {
                    painted += usize::from(a[i] != b[i]);
                }
            }
        }
    }
    assert!(kept > 0 && painted > 0, "{kept} kept, {painted} repainted");
}

#[test]
fn transparency_and_a_mask_file_paint_the_same_region() {
    let pipeline = load("tiny-sd", DType::F32);
    let rgb = init_rgb();
    let mask = rect_mask();
    let rgba = RgbaImage::from_fn(64, 96, |x, y| {
        let p = rgb.get_pixel(x, y);
        Rgba([p[0], p[1], p[2], if mask.get_pixel(x, y)[0] == 255 { 0 } else { 255 }])
    });
    let (alpha, _) = run(
        &pipeline,
        &request(memory("alpha.png", DynamicImage::ImageRgba8(rgba)), None),
    );
    let (file, _) = run(
        &pipeline,
        &request(memory("rgb.png", DynamicImage::ImageRgb8(rgb)), Some(mask.clone())),
    );
    assert_eq!(rel_err(&alpha.latents, &file.latents), 0.0);
    assert_eq!(alpha.image, file.image);
    assert_eq!(
        alpha.mask.as_ref(),
        Some(&mask),
        "the transparency is saved as a white-is-repaint mask"
    );

    // --invert-mask on the inverted mask paints the same region too.
    let mut inverted = mask.clone();
    image::imageops::invert(&mut inverted);
    let request_inverted = GenerateRequest {
        invert_mask: true,
        ..request(
            memory("rgb.png", DynamicImage::ImageRgb8(init_rgb())),
            Some(inverted.clone()),
        )
    };
    let (inv, _) = run(&pipeline, &request_inverted);
    assert_eq!(rel_err(&inv.latents, &file.latents), 0.0);
    assert_eq!(
        inv.mask.as_ref(),
        Some(&inverted),
        "the saved mask is the one given, before --invert-mask"
    );
}

#[test]
fn outcrop_equals_the_canvas_and_mask_built_by_hand() {
    let pipeline = load("tiny-sd", DType::F32);
    let rgb = init_rgb();
    let outcrop = Outcrop {
        left: 16,
        top: 8,
        ..Default::default()
    };
    let cropped = GenerateRequest {
        outcrop,
        ..request(memory("rgb.png", DynamicImage::ImageRgb8(rgb.clone())), None)
    };
    let (out, _) = run(&pipeline, &cropped);
    assert_eq!(out.image.dimensions(), (80, 104));
    assert!(out.mask.is_none(), "only the outcrop made the mask: nothing to save");

    let mut canvas = RgbImage::new(80, 104);
    image::imageops::replace(&mut canvas, &rgb, 16, 8);
    let mask = GrayImage::from_fn(80, 104, |x, y| Luma([if x < 16 || y < 8 { 255 } else { 0 }]));
    let (by_hand, _) = run(
        &pipeline,
        &request(memory("canvas.png", DynamicImage::ImageRgb8(canvas)), Some(mask)),
    );
    assert_eq!(rel_err(&out.latents, &by_hand.latents), 0.0);
    assert_eq!(out.image, by_hand.image);
    // The original image comes back unchanged in its place.
    for (x, y, p) in rgb.enumerate_pixels() {
        assert_eq!(out.image.get_pixel(x + 16, y + 8), p);
    }
}

#[test]
fn odd_masks_warn_and_bad_ones_are_refused() {
    let pipeline = load("tiny-sd", DType::F32);
    let init = || InitImage::Path(fixture("init-64x96.png"));

    // Another aspect ratio is stretched to the image, with a warning.
    let wide = GrayImage::from_fn(96, 32, |x, _| Luma([if x > 40 { 255 } else { 0 }]));
    let (_, warnings) = run(&pipeline, &request(init(), Some(wide)));
    assert!(warnings.iter().any(|w| w.contains("stretched")), "{warnings:?}");
    // All white: img2img, with a warning.
    let (_, warnings) = run(
        &pipeline,
        &request(init(), Some(GrayImage::from_pixel(64, 96, Luma([255])))),
    );
    assert!(warnings.iter().any(|w| w.contains("whole image")), "{warnings:?}");

    // Faint transparency (alpha ≥ 128 everywhere) marks nothing: img2img of the same pixels, with a warning.
    let rgb = init_rgb();
    let faint = RgbaImage::from_fn(64, 96, |x, y| {
        let p = rgb.get_pixel(x, y);
        Rgba([p[0], p[1], p[2], if x < 32 { 200 } else { 255 }])
    });
    let (faint_run, warnings) = run(
        &pipeline,
        &request(memory("faint.png", DynamicImage::ImageRgba8(faint)), None),
    );
    assert!(warnings.iter().any(|w| w.contains("faint")), "{warnings:?}");
    let (plain, _) = run(
        &pipeline,
        &request(memory("rgb.png", DynamicImage::ImageRgb8(rgb)), None),
    );
    assert_eq!(rel_err(&faint_run.latents, &plain.latents), 0.0);
    assert!(faint_run.mask.is_none());

    let all_black = request(init(), Some(GrayImage::new(64, 96)));
    assert!(error(&pipeline, &all_black).contains("all black"));
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("mask.png");
    std::fs::write(&garbage, b"not an image at all").expect("written");
    let not_an_image = GenerateRequest {
        init_mask: Some(InitImage::Path(garbage.clone())),
        ..request(init(), None)
    };
    let message = error(&pipeline, &not_an_image);
    assert!(message.contains("mask.png"), "{message}");
    let missing = GenerateRequest {
        init_mask: Some(InitImage::Path(dir.path().join("missing.png"))),
        ..request(init(), None)
    };
    assert!(error(&pipeline, &missing).contains("missing.png"));
    for (outcrop, expected) in [
        (
            Outcrop {
                left: 12,
                ..Default::default()
            },
            "multiple of 8",
        ),
        (
            Outcrop {
                left: 4088,
                ..Default::default()
            },
            "4096",
        ),
    ] {
        let r = GenerateRequest {
            outcrop,
            ..request(init(), None)
        };
        let message = error(&pipeline, &r);
        assert!(message.contains(expected), "{outcrop}: {message}");
    }
    let no_init = GenerateRequest {
        init_image: None,
        ..request(init(), Some(rect_mask()))
    };
    assert!(error(&pipeline, &no_init).contains("init image"));
    let nothing_to_invert = GenerateRequest {
        invert_mask: true,
        ..request(init(), None)
    };
    assert!(error(&pipeline, &nothing_to_invert).contains("no mask to invert"));
    let blur = GenerateRequest {
        mask_blur: 100_000,
        ..request(init(), Some(rect_mask()))
    };
    assert!(error(&pipeline, &blur).contains("mask_blur"));
}
