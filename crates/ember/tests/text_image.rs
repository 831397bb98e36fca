//! Tokenizer, init-image and PNG-metadata tests against references made by transformers (token ids) and
//! InvokeAI (real PNG metadata); the image-preparation cases are built in the tests themselves.

use ember::text::tokenizer::ClipTokenizer;
use serde_json::Value;
use std::path::Path;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn tokenizers() -> Vec<(&'static str, ClipTokenizer)> {
    let dir = format!("{SHARED}/models/clip-tokenizer/derived");
    vec![
        ("bundled", ClipTokenizer::bundled().expect("bundled vocabulary")),
        (
            "from_dir",
            ClipTokenizer::from_dir(Path::new(&dir)).unwrap_or_else(|e| panic!("shared models: {e}")),
        ),
    ]
}

/// Every prompt of the oracle (HF CLIPTokenizer ids, unpadded) with both vocabulary sources.
#[test]
fn clip_tokens_match_hf() {
    let oracle = read_json(&format!("{SHARED}/testdata/oracle/clip_tokens.json"));
    let cases = oracle["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 18);
    for (source, tok) in tokenizers() {
        for case in cases {
            let prompt = case["prompt"].as_str().expect("prompt");
            assert_eq!(tok.encode(prompt), ids_of(&case["ids"]), "{source}: {prompt:?}");
        }
    }
}

/// padding="max_length", max_length=77, truncation=True, as diffusers calls SD 1.x's tokenizer.
#[test]
fn padding_and_truncation_match_hf() {
    let reference = read_json(&format!("{FIXTURES}/tokens_padded.json"));
    let max_len = reference["max_length"].as_u64().expect("max_length") as usize;
    for (source, tok) in tokenizers() {
        assert_eq!(tok.pad_id() as u64, reference["pad_token_id"].as_u64().expect("pad id"));
        for case in reference["cases"].as_array().expect("cases") {
            let prompt = case["prompt"].as_str().expect("prompt");
            let got = tok.encode_padded(prompt, max_len);
            assert_eq!(got.ids, ids_of(&case["ids"]), "{source}: {prompt:?}");
            assert_eq!(
                got.truncated,
                case["truncated"].as_bool().expect("truncated"),
                "{source}: {prompt:?}"
            );
            assert_eq!(
                got.dropped,
                case["dropped_text"].as_str().expect("dropped"),
                "{source}: {prompt:?}"
            );
            assert_eq!(
                tok.encode(prompt).len() as u64,
                case["untruncated_len"].as_u64().expect("len")
            );
        }
    }
}

// ---------------------------------------------------------------- PNG metadata and output names

mod png_output {
    use super::*;
    use ember::image::png_meta::{next_output_path, read_png_text, write_png, ImageRecord};
    use ember::request::{GenerateRequest, InitImage};
    use ember::sample::SamplerKind;
    use std::path::PathBuf;

    const INVOKEAI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/invokeai-img2img");

    fn text_of(path: &Path, key: &str) -> String {
        let chunks = read_png_text(path).unwrap_or_else(|e| panic!("shared test data: {e}"));
        chunks
            .into_iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key} in {path:?}"))
            .1
    }

    /// The settings of InvokeAI's img2img page: "fire", seed 1592514025, 384×384, cfg 7.5.
    fn fire_record(steps: usize, sampler: SamplerKind, init: Option<&str>, strength: f64) -> ImageRecord {
        let request = GenerateRequest {
            prompt: "fire".into(),
            steps,
            sampler,
            seed: 1592514025,
            width: 384,
            height: 384,
            cfg_scale: 7.5,
            strength,
            init_image: init.map(|p| InitImage::Path(PathBuf::from(p))),
            ..GenerateRequest::default()
        };
        ImageRecord {
            steps_run: request.steps_to_run(),
            request,
            width: 384,
            height: 384,
            model_name: "stable-diffusion-1.4".into(),
            model_hash: Some("fe4efff1e174c627256e44ec2991ba279b3816e364b49f9be2abc0b3ff3f8556".into()),
            init_image_name: init.map(str::to_string),
            init_mask_name: None,
            run: Default::default(),
        }
    }

    #[test]
    fn reads_invokeai_metadata() {
        let path = Path::new(INVOKEAI).join("000032.1592514025.png");
        let dream = text_of(&path, "Dream");
        assert!(dream.ends_with("-A ddim -f 0.7"), "{dream}");
        let meta: Value = serde_json::from_str(&text_of(&path, "sd-metadata")).expect("JSON");
        assert_eq!(meta["image"]["seed"], 1592514025);
    }

    /// Our Dream strings equal the ones real InvokeAI wrote for the same settings.
    #[test]
    fn dream_matches_invokeai() {
        let cases = [
            (
                "000046.1592514025.png",
                fire_record(30, SamplerKind::KLms, Some("/tmp/fire-drawing.png"), 0.7),
            ),
            (
                "000034.1592514025.png",
                fire_record(50, SamplerKind::Ddim, Some("/tmp/fire-drawing.png"), 0.7),
            ),
            (
                "000035.1592514025.png",
                fire_record(50, SamplerKind::Ddim, Some("/tmp/fire-drawing.png"), 0.4),
            ),
            (
                "000019.1592514025.png",
                fire_record(10, SamplerKind::KEuler, None, 0.75),
            ),
        ];
        for (file, record) in cases {
            let expected = text_of(&Path::new(INVOKEAI).join(file), "Dream");
            assert_eq!(ember::image::metadata::dream_command(&record), expected, "{file}");
        }
    }

    /// sd-metadata has InvokeAI's structure and values (000032: a ddim img2img run), plus the kept fields.
    #[test]
    fn sd_metadata_matches_invokeai() {
        let real: Value = serde_json::from_str(&text_of(
            &Path::new(INVOKEAI).join("000032.1592514025.png"),
            "sd-metadata",
        ))
        .expect("JSON");
        let mut record = fire_record(10, SamplerKind::Ddim, Some("fire-drawing.png"), 0.7);
        record.request.fit = true;
        let ours: Value =
            serde_json::from_str(&ember::image::metadata::sd_metadata_json(&record)).expect("our JSON parses");
        for key in ["model", "model_hash"] {
            assert_eq!(ours[key], real[key], "{key}");
        }
        let (ours_img, real_img) = (&ours["image"], &real["image"]);
        for key in [
            "seed",
            "height",
            "steps",
            "prompt",
            "width",
            "cfg_scale",
            "postprocessing",
            "sampler",
            "variations",
            "type",
        ] {
            assert_eq!(ours_img[key], real_img[key], "image.{key}");
        }
        assert_eq!(ours["model_weights"], "stable-diffusion-1.4");
        assert_eq!(ours_img["init_image_path"], "fire-drawing.png");
        assert_eq!(ours_img["strength"], 0.7);
        assert_eq!(ours_img["fit"], true);
        assert_eq!(ours_img["seamless"], false);
    }

    #[test]
    fn a1111_parameters_block() {
        let mut record = fire_record(10, SamplerKind::KLms, Some("fire-drawing.png"), 0.7);
        record.request.negative_prompt = "smoke".into();
        assert_eq!(
            ember::image::metadata::a1111_parameters(&record),
            "fire\nNegative prompt: smoke\nSteps: 10, Sampler: LMS, Schedule type: Karras, CFG scale: 7.5, \
             Seed: 1592514025, Size: 384x384, Model hash: fe4efff1e1, Model: stable-diffusion-1.4, \
             Denoising strength: 0.7"
        );
    }

    /// A non-ASCII prompt goes into iTXt chunks and comes back unchanged; the pixels too.
    #[test]
    fn utf8_prompt_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("000001.7.png");
        let prompt = "feu d'artifice — 火";
        let mut record = fire_record(10, SamplerKind::KEulerA, None, 0.75);
        record.request.prompt = prompt.into();
        record.request.karras_max = 12;
        record.request.negative_prompt = "fumée \"grise\"".into();
        let rgb = image::RgbImage::from_fn(384, 384, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        write_png(&path, &rgb, &record).expect("written");

        let dream = text_of(&path, "Dream");
        assert_eq!(
            dream,
            "\"feu d'artifice — 火\" -s 10 -S 1592514025 -W 384 -H 384 -C 7.5 --karras-max 12 -A k_euler_a \
             --negative \"fumée \\\"grise\\\"\""
        );
        let meta: Value = serde_json::from_str(&text_of(&path, "sd-metadata")).expect("JSON");
        assert_eq!(meta["image"]["prompt"][0]["prompt"], prompt);
        assert_eq!(meta["image"]["type"], "txt2img");
        assert!(text_of(&path, "parameters").starts_with(&format!("{prompt}\nNegative prompt: fumée \"grise\"\n")));
        let back = image::open(&path).expect("decodes").to_rgb8();
        assert_eq!(back, rgb);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn write_never_overwrites() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("000001.1.png");
        std::fs::write(&path, b"keep me").expect("write");
        let rgb = image::RgbImage::new(8, 8);
        let err = write_png(&path, &rgb, &fire_record(10, SamplerKind::KLms, None, 0.75)).expect_err("must refuse");
        assert!(matches!(err, ember::Error::Write { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"keep me");
    }

    #[test]
    fn output_numbering() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("outputs");
        // Created when missing; 000001 in an empty folder, as InvokeAI.
        assert_eq!(next_output_path(&out, 42).expect("path"), out.join("000001.42.png"));
        for name in [
            "000032.1592514025.png",
            "000007.steps.png",
            "notes.txt",
            "000099.5.txt",
            "fire.png",
        ] {
            std::fs::write(out.join(name), b"").expect("write");
        }
        assert_eq!(next_output_path(&out, 9).expect("path"), out.join("000033.9.png"));
        std::fs::write(out.join("1000000.3.png"), b"").expect("write");
        assert_eq!(next_output_path(&out, 9).expect("path"), out.join("1000001.9.png"));
    }
}

// ---------------------------------------------------------------- init images

mod init_images {
    use super::*;
    use ember::image::init::prepare_init_image;
    use ember::request::InitImage;
    use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
    use std::path::PathBuf;

    fn save(dir: &Path, name: &str, image: &DynamicImage) -> PathBuf {
        let path = dir.join(name);
        image.save(&path).expect("test image written");
        path
    }

    fn expect_image_error(result: ember::Result<ember::image::init::PreparedImage>, path: &Path, needle: &str) {
        match result {
            Err(ember::Error::Image { path: p, message }) => {
                assert_eq!(p, path);
                assert!(message.contains(needle), "message {message:?} lacks {needle:?}");
            }
            other => panic!("expected an image error, got {other:?}"),
        }
    }

    /// APP1 segment with a big-endian TIFF holding one IFD entry: Orientation (0x0112) = `value`.
    fn exif_app1(value: u16) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
        tiff.extend_from_slice(&value.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, then "no next IFD"
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        seg.extend_from_slice(b"Exif\0\0");
        seg.extend_from_slice(&tiff);
        seg
    }

    #[test]
    fn exif_orientation_is_applied() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 32×16: left half red, right half blue.
        let src = RgbImage::from_fn(32, 16, |x, _| if x < 16 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(src)
            .write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .expect("jpeg");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        // Orientation 6: the camera was turned; display = stored image rotated 90° clockwise.
        let mut with_exif = jpeg[..2].to_vec();
        with_exif.extend(exif_app1(6));
        with_exif.extend_from_slice(&jpeg[2..]);
        let path = dir.path().join("rotated.jpg");
        std::fs::write(&path, &with_exif).expect("write");

        let prepared = prepare_init_image(&InitImage::Path(path), None).expect("prepared");
        assert_eq!(prepared.rgb.dimensions(), (16, 32));
        // Rotating clockwise puts the stored left column (red) on top.
        let (top, bottom) = (prepared.rgb.get_pixel(8, 4), prepared.rgb.get_pixel(8, 27));
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
        assert!(prepared.warnings.is_empty());
    }

    #[test]
    fn transparency_becomes_the_inpainting_mask() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rgba = RgbaImage::from_fn(16, 16, |x, _| match x {
            0..=7 => Rgba([0, 0, 0, 0]),
            8..=11 => Rgba([10, 20, 30, 200]),
            _ => Rgba([10, 20, 30, 255]),
        });
        let path = save(dir.path(), "alpha.png", &DynamicImage::ImageRgba8(rgba));
        let prepared = prepare_init_image(&InitImage::Path(path), None).expect("prepared");
        assert!(prepared.warnings.is_empty());
        // The colour under transparency is kept (alpha dropped, as diffusers' convert("RGB")), not flattened.
        assert_eq!(prepared.rgb.get_pixel(2, 2).0, [0, 0, 0]);
        assert_eq!(prepared.rgb.get_pixel(9, 2).0, [10, 20, 30]);
        let mask = prepared.transparency.expect("transparency kept as a mask");
        assert_eq!(
            (
                mask.get_pixel(2, 2)[0],
                mask.get_pixel(9, 2)[0],
                mask.get_pixel(12, 2)[0]
            ),
            (255, 55, 0)
        );

        // An alpha channel that is fully opaque is not transparency.
        let opaque = RgbaImage::from_pixel(16, 16, Rgba([1, 2, 3, 255]));
        let path = save(dir.path(), "opaque.png", &DynamicImage::ImageRgba8(opaque));
        let prepared = prepare_init_image(&InitImage::Path(path), None).expect("prepared");
        assert!(prepared.warnings.is_empty() && prepared.transparency.is_none());
        assert_eq!(prepared.rgb.get_pixel(0, 0).0, [1, 2, 3]);
    }

    #[test]
    fn sizes_round_down_to_multiples_of_8() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(61, 47, Rgb([90, 120, 200])));
        let source = InitImage::Memory {
            name: "upload.png".into(),
            image: img,
        };
        let prepared = prepare_init_image(&source, None).expect("prepared");
        assert_eq!(prepared.rgb.dimensions(), (56, 40));
        // A flat colour stays flat through the Lanczos resize.
        assert!(prepared.rgb.pixels().all(|p| p.0 == [90, 120, 200]));
    }

    #[test]
    fn fit_scales_into_the_box_keeping_aspect() {
        let wide = DynamicImage::ImageRgb8(RgbImage::new(100, 50));
        let source = InitImage::Memory {
            name: "wide".into(),
            image: wide,
        };
        // scale = min(64/100, 64/50) = 0.64 → 64×32.
        assert_eq!(
            prepare_init_image(&source, Some((64, 64)))
                .expect("fit")
                .rgb
                .dimensions(),
            (64, 32)
        );
        // Small images are scaled up: 30×60 into 512×512 → ×8.53 → 256×512.
        let tall = DynamicImage::ImageRgb8(RgbImage::new(30, 60));
        let source = InitImage::Memory {
            name: "tall".into(),
            image: tall,
        };
        assert_eq!(
            prepare_init_image(&source, Some((512, 512)))
                .expect("fit")
                .rgb
                .dimensions(),
            (256, 512)
        );
        // 77×50 into 100×100 → ×1.2987 → 100×64 → 96×64.
        let odd = DynamicImage::ImageRgb8(RgbImage::new(77, 50));
        let source = InitImage::Memory {
            name: "odd".into(),
            image: odd,
        };
        assert_eq!(
            prepare_init_image(&source, Some((100, 100)))
                .expect("fit")
                .rgb
                .dimensions(),
            (96, 64)
        );
    }

    #[test]
    fn real_init_image_is_unchanged() {
        let path = Path::new(SHARED).join("testdata/invokeai-img2img/fire-drawing.png");
        let original = image::open(&path)
            .unwrap_or_else(|e| panic!("shared test data: cannot read {}: {e}", path.display()))
            .to_rgb8();
        let prepared = prepare_init_image(&InitImage::Path(path), None).expect("prepared");
        assert_eq!(prepared.rgb, original);
        assert!(prepared.warnings.is_empty());
    }

    #[test]
    fn broken_and_truncated_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let garbage = dir.path().join("garbage.png");
        std::fs::write(&garbage, b"this is not an image at all").expect("write");
        expect_image_error(
            prepare_init_image(&InitImage::Path(garbage.clone()), None),
            &garbage,
            "format",
        );

        let good = save(
            dir.path(),
            "good.png",
            &DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| {
                Rgb([(x * 4) as u8, (y * 4) as u8, (x * y) as u8])
            })),
        );
        let bytes = std::fs::read(&good).expect("read");
        let truncated = dir.path().join("truncated.png");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
        expect_image_error(
            prepare_init_image(&InitImage::Path(truncated.clone()), None),
            &truncated,
            "broken",
        );

        let missing = dir.path().join("missing.png");
        expect_image_error(
            prepare_init_image(&InitImage::Path(missing.clone()), None),
            &missing,
            "cannot open",
        );
    }

    #[test]
    fn tiny_images_are_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = save(dir.path(), "dot.png", &DynamicImage::ImageRgb8(RgbImage::new(1, 1)));
        expect_image_error(
            prepare_init_image(&InitImage::Path(path.clone()), None),
            &path,
            "at least 8",
        );
        // Fitting a 400×10 strip into 64×64 would leave it 64×1.
        let strip = DynamicImage::ImageRgb8(RgbImage::new(400, 10));
        let source = InitImage::Memory {
            name: "strip".into(),
            image: strip,
        };
        expect_image_error(
            prepare_init_image(&source, Some((64, 64))),
            Path::new("strip"),
            "less than 8",
        );
    }

    /// A PNG header declaring 100000×100000 pixels is refused before any pixel memory is allocated.
    #[test]
    fn absurd_declared_size_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("huge.png");
        {
            let file = std::fs::File::create(&path).expect("create");
            let mut encoder = png::Encoder::new(file, 100_000, 100_000);
            encoder.set_color(png::ColorType::Rgb);
            // Header only: IHDR declares the size; no image data follows.
            let _header_only = encoder.write_header().expect("header");
        }
        expect_image_error(prepare_init_image(&InitImage::Path(path.clone()), None), &path, "8192");
    }
}
