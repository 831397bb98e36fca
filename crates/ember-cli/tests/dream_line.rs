//! Golden tests of the `invoke>` line parser: InvokeAI's prompt/switch split, every switch in its short, long and
//! InvokeAI `_` spellings, and the `Dream` chunk (Ember's writer and InvokeAI's own PNGs) read back exactly.
//! Expected values are written out by hand from InvokeAI 2.x's rules (`Args.parse_cmd`, Python `shlex`).

use ember::image::metadata::{dream_command, sd_metadata_json, ImageRecord, RunInfo};
use ember::request::{GenerateRequest, InitImage};
use ember::sample::denoiser::PredictionType;
use ember::sample::schedule::TimestepSpacing;
use ember_cli::args::{Downweight, Switches};
use ember_cli::dream_line::{parse, parse_variations, split_prompt};
use ember_cli::fetch::fetch_command;
use std::path::{Path, PathBuf};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/invokeai-img2img");

fn words(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn prompt_and_switches_split_like_invokeai() {
    let cases: Vec<(&str, &str, Vec<String>)> = vec![
        ("a red fox -s 30 -S 42", "a red fox", words(&["-s", "30", "-S", "42"])),
        (r#""a -s fox" -s 30"#, "a -s fox", words(&["-s", "30"])),
        // Hyphens inside words, a lone dash and a negative number are prompt text.
        (
            "well-known cat - a dog -5 -s5",
            "well-known cat - a dog -5",
            words(&["-s5"]),
        ),
        ("fire --steps 10", "fire", words(&["--steps", "10"])),
        ("-S 42 -s 3", "", words(&["-S", "42", "-s", "3"])),
        ("just a prompt", "just a prompt", vec![]),
        // Unlike InvokeAI's regex, a flag may end the line.
        ("a fox -g", "a fox", words(&["-g"])),
        (
            r#"a cat --negative "blurry, \"bad\"" -s 2"#,
            "a cat",
            words(&["--negative", r#"blurry, "bad""#, "-s", "2"]),
        ),
        ("a cat -s 2 # a comment -S 5", "a cat", words(&["-s", "2"])),
    ];
    for (line, prompt, switches) in cases {
        let (p, w) = split_prompt(line).expect(line);
        assert_eq!((p.as_str(), &w), (prompt, &switches), "{line}");
    }
}

#[test]
fn every_switch_in_short_form() {
    let line = "fire -s10 -S1592514025 -W384 -H 320 -C7.5 -Ak_lms -I init.png -f0.75 -M mask.png -c top 64 left 128 \
                --invert-mask --mask-blur 4 --no-paste-back -T -n3 -g -v 0.2 \
                -V 1:0.1,2:0.2 -t -x -o out --seamless --vae-tiling --hires_fix --threshold 5 --perlin 0.1 --karras_max 20 \
                --negative \"ugly hands\" --truncate-prompts --downweight mask --exact-steps --step-strip \
                --save-intermediates 2 --decode-intermediates --prediction-type v_prediction --timestep-spacing trailing \
                --lora a.safetensors:0.5 --lora b --embedding e.pt --lora-dir loras --embedding_dir embs";
    let want = Switches {
        steps: Some(10),
        seed: Some(1592514025),
        width: Some(384),
        height: Some(320),
        cfg_scale: Some(7.5),
        sampler: Some("k_lms".into()),
        init_image: Some("init.png".into()),
        strength: Some(0.75),
        fit: true,
        init_mask: Some("mask.png".into()),
        invert_mask: true,
        mask_blur: Some(4),
        outcrop: Some(words(&["top", "64", "left", "128"])),
        no_paste_back: true,
        iterations: Some(3),
        grid: true,
        variation_amount: Some(0.2),
        with_variations: Some("1:0.1,2:0.2".into()),
        seamless: true,
        vae_tiling: true,
        hires_fix: true,
        threshold: Some(5.0),
        perlin: Some(0.1),
        log_tokenization: true,
        skip_normalize: true,
        outdir: Some(PathBuf::from("out")),
        karras_max: Some(20),
        negative: Some("ugly hands".into()),
        truncate_prompts: true,
        downweight: Some(Downweight::Mask),
        exact_steps: true,
        step_strip: true,
        save_intermediates: Some(2),
        decode_intermediates: true,
        prediction_type: Some("v_prediction".into()),
        timestep_spacing: Some("trailing".into()),
        lora: vec!["a.safetensors:0.5".into(), "b".into()],
        embedding: vec!["e.pt".into()],
        lora_dir: vec![PathBuf::from("loras")],
        embedding_dir: vec![PathBuf::from("embs")],
    };
    let parsed = parse(line).expect("parses");
    assert_eq!(parsed.prompt, "fire");
    assert_eq!(parsed.switches, want);
}

#[test]
fn every_switch_in_long_forms_with_underscores_and_dashes() {
    let line = "fire --steps 10 --seed 7 --width 64 --height 72 --cfg_scale 5 --sampler ddim --init_img a.png \
                --strength 0.5 --fit --iterations 2 --grid --variation_amount 0.3 --with_variations 9:0.5 \
                --log_tokenization --skip_normalize --outdir o --hires-fix --karras-max 10 --truncate_prompts \
                --exact_steps --step_strip --save_intermediates 3 --decode_intermediates --downweight remove";
    let s = parse(line).expect("parses").switches;
    assert_eq!(
        (s.steps, s.seed, s.width, s.height, s.cfg_scale),
        (Some(10), Some(7), Some(64), Some(72), Some(5.0))
    );
    assert_eq!(
        (s.sampler.as_deref(), s.init_image.as_deref()),
        (Some("ddim"), Some("a.png"))
    );
    assert_eq!(
        (s.strength, s.iterations, s.variation_amount),
        (Some(0.5), Some(2), Some(0.3))
    );
    assert_eq!(s.with_variations.as_deref(), Some("9:0.5"));
    assert!(s.fit && s.grid && s.log_tokenization && s.skip_normalize && s.hires_fix);
    assert!(s.truncate_prompts && s.exact_steps && s.step_strip && s.decode_intermediates);
    assert_eq!((s.karras_max, s.save_intermediates), (Some(10), Some(3)));
    assert_eq!(s.downweight, Some(Downweight::Remove));
    assert_eq!(s.outdir, Some(PathBuf::from("o")));
    for alias in ["--init-image", "--init_image", "--init-img"] {
        let s = parse(&format!("x {alias} b.png")).expect(alias).switches;
        assert_eq!(s.init_image.as_deref(), Some("b.png"), "{alias}");
    }
    // Inpainting, InvokeAI's `_` spellings.
    let s = parse("x -I a.png --init_mask m.png --invert_mask --mask_blur 8 --outcrop bottom 16 --no_paste_back")
        .expect("inpainting")
        .switches;
    assert_eq!(
        (s.init_mask.as_deref(), s.invert_mask, s.mask_blur, s.no_paste_back),
        (Some("m.png"), true, Some(8), true)
    );
    assert_eq!(s.outcrop, Some(words(&["bottom", "16"])));
    // The REPL's back references: previous seed, previous output.
    let s = parse("x -S -1 -I -2").expect("negative values").switches;
    assert_eq!((s.seed, s.init_image.as_deref()), (Some(-1), Some("-2")));
}

#[test]
fn bad_lines_are_errors_that_name_the_problem() {
    for (line, needle) in [
        ("x --no-such-switch", "--no-such-switch"),
        ("x -s ten", "ten"),
        ("x --downweight fade", "fade"),
        ("x -S 42 stray words", "stray words"),
        (r#""open quote -s 3"#, "double quote"),
    ] {
        let err = parse(line).expect_err(line).to_string();
        assert!(err.contains(needle), "{line}: {err}");
    }
    assert_eq!(
        parse_variations("1234:0.1, 5678:0.25").unwrap(),
        vec![(1234, 0.1), (5678, 0.25)]
    );
    for bad in ["1234", "x:0.1", "1:2.0", "1:y"] {
        assert!(parse_variations(bad).is_err(), "{bad}");
    }
}

fn record(request: GenerateRequest, size: (usize, usize)) -> ImageRecord {
    ImageRecord {
        request,
        width: size.0,
        height: size.1,
        steps_run: 0,
        model_name: "tiny".into(),
        model_hash: None,
        init_image_name: None,
        init_mask_name: None,
        run: Default::default(),
    }
}

/// Ember's own `Dream` writer → parser gives back every field (prompts with quotes, backslashes, prompt-language
/// escapes, unicode and switch-like text included).
#[test]
fn dream_chunks_read_back_exactly() {
    let nasty = r#"a "quoted" \(escaped\) back\slash -s 99 ünïcödé: 火 #tag"#;
    let txt2img = GenerateRequest {
        prompt: nasty.into(),
        negative_prompt: r#"blur "x" \y"#.into(),
        steps: 12,
        cfg_scale: 6.0,
        sampler: "k_euler_a".parse().unwrap(),
        seed: 4294967295,
        width: 128,
        height: 64,
        karras_max: 10,
        with_variations: vec![(12, 0.1), (34, 0.25)],
        seamless: true,
        vae_tiling: true,
        threshold: 2.5,
        perlin: 0.2,
        hires_fix: true,
        strength: 0.6,
        skip_normalize: true,
        truncate_prompts: true,
        downweight_mask: true,
        prediction_type: Some(PredictionType::VPrediction),
        timestep_spacing: Some(TimestepSpacing::Trailing),
        ..Default::default()
    };
    let line = dream_command(&record(txt2img.clone(), (128, 64)));
    assert!(
        line.contains(
            " --truncate-prompts --downweight mask --prediction-type v_prediction --timestep-spacing trailing --negative "
        ),
        "{line}"
    );
    let parsed = parse(&line).expect(&line);
    assert_eq!(parsed.prompt, nasty, "{line}");
    let s = &parsed.switches;
    assert_eq!(s.negative.as_deref(), Some(txt2img.negative_prompt.as_str()));
    assert_eq!(
        (s.steps, s.seed, s.width, s.height),
        (Some(12), Some(4294967295), Some(128), Some(64))
    );
    assert_eq!(
        (s.cfg_scale, s.karras_max, s.sampler.as_deref()),
        (Some(6.0), Some(10), Some("k_euler_a"))
    );
    assert_eq!(
        parse_variations(s.with_variations.as_deref().expect("-V")).unwrap(),
        txt2img.with_variations
    );
    assert!(s.seamless && s.vae_tiling && s.hires_fix && s.skip_normalize && s.truncate_prompts);
    assert_eq!(s.downweight, Some(Downweight::Mask));
    assert_eq!((s.threshold, s.perlin, s.strength), (Some(2.5), Some(0.2), Some(0.6)));
    assert_eq!(
        (s.prediction_type.as_deref(), s.timestep_spacing.as_deref()),
        (Some("v_prediction"), Some("trailing"))
    );

    let img2img = GenerateRequest {
        prompt: "fire".into(),
        steps: 10,
        seed: 1592514025,
        init_image: Some(InitImage::Path("dir with space/fire drawing.png".into())),
        strength: 0.7,
        fit: true,
        exact_steps: true,
        ..Default::default()
    };
    let line = dream_command(&record(img2img, (512, 512)));
    let parsed = parse(&line).expect(&line);
    let s = &parsed.switches;
    assert_eq!(
        s.init_image.as_deref(),
        Some("dir with space/fire drawing.png"),
        "{line}"
    );
    assert_eq!((s.strength, s.fit, s.exact_steps), (Some(0.7), true, true));
    assert_eq!(s.downweight, None, "the default is not written: {line}");
    // Left to the model, the prediction type and spacing are not written, whatever the model made of them.
    assert_eq!(
        (s.prediction_type.as_deref(), s.timestep_spacing.as_deref()),
        (None, None),
        "{line}"
    );
    assert!(
        !line.contains("--prediction-type") && !line.contains("--timestep-spacing"),
        "{line}"
    );

    // Every spelling the engine writes parses back to the same value.
    for prediction in [PredictionType::Epsilon, PredictionType::VPrediction] {
        for spacing in TimestepSpacing::ALL {
            let request = GenerateRequest {
                prompt: "x".into(),
                prediction_type: Some(prediction),
                timestep_spacing: Some(spacing),
                ..Default::default()
            };
            let line = dream_command(&record(request, (512, 512)));
            let s = parse(&line).expect(&line).switches;
            let back: (PredictionType, TimestepSpacing) = (
                s.prediction_type.as_deref().expect("written").parse().expect("known"),
                s.timestep_spacing.as_deref().expect("written").parse().expect("known"),
            );
            assert_eq!(back, (prediction, spacing), "{line}");
        }
    }
}

/// InvokeAI 2.x's own outputs: the Dream line of the seed document's img2img study.
#[test]
fn fetches_invokeai_pngs() {
    let path = Path::new(SHARED).join("000032.1592514025.png");
    let line = fetch_command(&path).unwrap_or_else(|e| panic!("shared test data: {e}"));
    let parsed = parse(&line).expect(&line);
    assert_eq!(parsed.prompt, "fire");
    let s = parsed.switches;
    assert_eq!(
        (s.steps, s.seed, s.width, s.height),
        (Some(10), Some(1592514025), Some(384), Some(384))
    );
    assert_eq!(
        (s.cfg_scale, s.sampler.as_deref(), s.strength),
        (Some(7.5), Some("ddim"), Some(0.7))
    );
    assert_eq!(
        s.init_image.as_deref(),
        Some("outputs/img-samples/../../docs/assets/img2img/fire-drawing.png")
    );
}

/// Without a Dream chunk the line is rebuilt from InvokeAI's sd-metadata JSON.
#[test]
fn falls_back_to_sd_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta-only.png");
    let json = r#"{"model": "stable diffusion", "image": {"prompt": [{"prompt": "a \"b\" c", "weight": 1.0}],
        "steps": 20, "cfg_scale": 7.5, "height": 256, "width": 320, "seed": 77, "sampler": "k_heun",
        "type": "img2img", "init_image_path": "in it.png", "strength": 0.4, "fit": true,
        "variations": [{"seed": 5, "weight": 0.1}], "seamless": true, "threshold": 0, "perlin": 0,
        "downweight": "mask", "vae_tiling": true, "model_family": "sd2", "prediction_type": "v_prediction",
        "timestep_spacing": "trailing", "guidance": "classifier-free"}}"#;
    let pixels = image::RgbImage::new(8, 8);
    ember::image::png_meta::write_png_with_text(&path, &pixels, &[("sd-metadata", json.to_string())]).unwrap();
    let line = fetch_command(&path).expect("sd-metadata");
    let parsed = parse(&line).expect(&line);
    assert_eq!(parsed.prompt, r#"a "b" c"#);
    let s = parsed.switches;
    assert_eq!(
        (s.steps, s.seed, s.width, s.height),
        (Some(20), Some(77), Some(320), Some(256))
    );
    assert_eq!(
        (s.sampler.as_deref(), s.init_image.as_deref()),
        (Some("k_heun"), Some("in it.png"))
    );
    assert_eq!(
        (s.strength, s.fit, s.seamless, s.vae_tiling),
        (Some(0.4), true, true, true)
    );
    assert_eq!(s.with_variations.as_deref(), Some("5:0.1"));
    assert_eq!((s.threshold, s.perlin), (None, None));
    assert_eq!(s.downweight, Some(Downweight::Mask));
    assert_eq!(
        (s.prediction_type.as_deref(), s.timestep_spacing.as_deref()),
        (Some("v_prediction"), Some("trailing"))
    );
    // A PNG without either chunk is an error that says so.
    let bare = dir.path().join("bare.png");
    ember::image::png_meta::write_png_with_text(&bare, &pixels, &[]).unwrap();
    let err = fetch_command(&bare).expect_err("no metadata").to_string();
    assert!(err.contains("Dream") && err.contains("bare.png"), "{err}");
}

/// sd-metadata records what the model ran with (`record.run`: the values used, overrides or not), and `!fetch` of a
/// PNG with only that chunk restores them as switches; values it does not know are left out, not passed on.
#[test]
fn sd_metadata_records_the_run_and_reads_it_back() {
    let request = GenerateRequest {
        prompt: "a fox".into(),
        steps: 1,
        cfg_scale: 0.0,
        seed: 9,
        width: 64,
        height: 64,
        ..Default::default()
    };
    let mut rec = record(request, (64, 64));
    rec.run = RunInfo {
        family: "sdxl".into(),
        prediction_type: PredictionType::Epsilon,
        timestep_spacing: TimestepSpacing::Trailing,
        guidance: "none (cfg ≤ 1: conditional pass only)".into(),
        ..Default::default()
    };
    let json = sd_metadata_json(&rec);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let image = &doc["image"];
    assert_eq!(image["model_family"], "sdxl", "{json}");
    assert_eq!(image["prediction_type"], "epsilon", "{json}");
    assert_eq!(image["timestep_spacing"], "trailing", "{json}");
    assert_eq!(image["guidance"], "none (cfg ≤ 1: conditional pass only)", "{json}");
    // InvokeAI's fields are still there, with their values.
    assert_eq!((image["steps"].as_u64(), image["seed"].as_u64()), (Some(1), Some(9)));
    assert_eq!(
        (image["sampler"].as_str(), image["type"].as_str()),
        (Some("k_lms"), Some("txt2img"))
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta-only.png");
    let pixels = image::RgbImage::new(8, 8);
    ember::image::png_meta::write_png_with_text(&path, &pixels, &[("sd-metadata", json)]).unwrap();
    let line = fetch_command(&path).expect("sd-metadata");
    let s = parse(&line).expect(&line).switches;
    assert_eq!(
        (s.prediction_type.as_deref(), s.timestep_spacing.as_deref()),
        (Some("epsilon"), Some("trailing")),
        "{line}"
    );
    assert_eq!((s.steps, s.cfg_scale, s.seed), (Some(1), Some(0.0), Some(9)), "{line}");

    // Unknown family fields are not written; an unknown spacing from a newer writer is dropped on reading.
    let unknown: serde_json::Value =
        serde_json::from_str(&sd_metadata_json(&record(GenerateRequest::default(), (8, 8)))).unwrap();
    assert!(unknown["image"].get("model_family").is_none() && unknown["image"].get("guidance").is_none());
    let odd = r#"{"image": {"prompt": "x", "steps": 2, "prediction_type": "x0", "timestep_spacing": "sideways"}}"#;
    let path = dir.path().join("odd.png");
    ember::image::png_meta::write_png_with_text(&path, &pixels, &[("sd-metadata", odd.to_string())]).unwrap();
    let line = fetch_command(&path).expect("sd-metadata");
    assert!(
        !line.contains("--prediction-type") && !line.contains("--timestep-spacing"),
        "{line}"
    );
    parse(&line).expect(&line);
}

/// An explicitly empty negative prompt (which SDXL encodes, where it zeroes a missing one) survives the Dream line;
/// no negative writes no switch.
#[test]
fn an_explicitly_empty_negative_prompt_is_recorded() {
    let given = GenerateRequest {
        prompt: "a fox".into(),
        negative_given: true,
        ..GenerateRequest::default()
    };
    let line = dream_command(&record(given, (64, 64)));
    assert!(line.contains(r#"--negative """#), "{line}");
    assert_eq!(parse(&line).expect("parses").switches.negative.as_deref(), Some(""));
    let none = GenerateRequest {
        prompt: "a fox".into(),
        ..GenerateRequest::default()
    };
    let line = dream_command(&record(none, (64, 64)));
    assert!(!line.contains("--negative"), "{line}");
}

/// Inpainting's options (issue 17): the Dream line writes them after the img2img part, in order and only when set,
/// and reads them back; sd-metadata's keys (InvokeAI web's `mask_image_path`, Ember's others) rebuild the same line
/// when the Dream chunk is missing; A1111's block gets `Mask blur` and `Mask mode`.
#[test]
fn inpainting_options_are_recorded_and_read_back() {
    use ember::image::metadata::a1111_parameters;
    use ember::request::Outcrop;
    let request = GenerateRequest {
        prompt: "a red hat".into(),
        steps: 10,
        seed: 7,
        init_image: Some(InitImage::Path("photo.png".into())),
        init_mask: Some(InitImage::Path("hat mask.png".into())),
        strength: 0.8,
        invert_mask: true,
        mask_blur: 4,
        outcrop: Outcrop {
            top: 64,
            left: 128,
            ..Default::default()
        },
        paste_back: false,
        exact_steps: true,
        ..Default::default()
    };
    let mut rec = record(request.clone(), (192, 128));
    rec.init_image_name = Some("photo.png".into());
    // The front-end's saved copy wins over the request's -M.
    rec.init_mask_name = Some("out/000001.7.mask.png".into());
    let line = dream_command(&rec);
    assert!(
        line.contains(
            " -I photo.png -A k_lms -f 0.8 -M out/000001.7.mask.png --invert-mask --mask-blur 4 \
             --outcrop top 64 left 128 --no-paste-back --exact-steps"
        ),
        "{line}"
    );
    let s = parse(&line).expect(&line).switches;
    assert_eq!(
        (s.init_mask.as_deref(), s.invert_mask, s.mask_blur, s.no_paste_back),
        (Some("out/000001.7.mask.png"), true, Some(4), true)
    );
    assert_eq!(s.outcrop, Some(words(&["top", "64", "left", "128"])));
    assert_eq!(Outcrop::parse(s.outcrop.as_deref().unwrap()).unwrap(), request.outcrop);

    // Without a saved copy, the request's -M (quoted when needed).
    rec.init_mask_name = None;
    assert!(dream_command(&rec).contains(r#" -M "hat mask.png" "#));
    rec.init_mask_name = Some("out/000001.7.mask.png".into());

    let json = sd_metadata_json(&rec);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let image = &doc["image"];
    assert_eq!(image["type"], "img2img", "{json}");
    assert_eq!(image["mask_image_path"], "out/000001.7.mask.png", "{json}");
    assert_eq!(
        (image["invert_mask"].as_bool(), image["mask_blur"].as_u64()),
        (Some(true), Some(4))
    );
    assert_eq!(
        image["outcrop"],
        serde_json::json!({"top": 64, "bottom": 0, "left": 128, "right": 0}),
        "{json}"
    );
    assert_eq!(image["paste_back"], false, "{json}");
    let params = a1111_parameters(&rec);
    assert!(
        params.contains(", Mask blur: 4, Mask mode: Inpaint not masked"),
        "{params}"
    );

    // !fetch of a PNG with only sd-metadata gives the same inpainting switches.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta-only.png");
    let pixels = image::RgbImage::new(8, 8);
    ember::image::png_meta::write_png_with_text(&path, &pixels, &[("sd-metadata", json)]).unwrap();
    let fetched = fetch_command(&path).expect("sd-metadata");
    let f = parse(&fetched).expect(&fetched).switches;
    assert_eq!(
        (
            f.init_image.as_deref(),
            f.init_mask.as_deref(),
            f.invert_mask,
            f.mask_blur,
            f.no_paste_back
        ),
        (Some("photo.png"), Some("out/000001.7.mask.png"), true, Some(4), true),
        "{fetched}"
    );
    assert_eq!(f.outcrop, s.outcrop, "{fetched}");
    // InvokeAI's words for the outcrop are read too.
    let words_json = r#"{"image": {"prompt": "x", "type": "img2img", "init_image_path": "a.png", "strength": 0.5,
        "outcrop": "left 64 bottom 8"}}"#;
    let path = dir.path().join("words.png");
    ember::image::png_meta::write_png_with_text(&path, &pixels, &[("sd-metadata", words_json.to_string())]).unwrap();
    let fetched = fetch_command(&path).expect("sd-metadata");
    assert!(fetched.contains("--outcrop bottom 8 left 64"), "{fetched}");

    // Plain img2img and txt2img write none of it.
    let plain = GenerateRequest {
        prompt: "fire".into(),
        init_image: Some(InitImage::Path("fire.png".into())),
        ..Default::default()
    };
    for rec in [record(plain, (64, 64)), record(GenerateRequest::default(), (64, 64))] {
        let line = dream_command(&rec);
        for switch in ["-M", "--invert-mask", "--mask-blur", "--outcrop", "--no-paste-back"] {
            assert!(!line.contains(switch), "{line}");
        }
        let json = sd_metadata_json(&rec);
        for key in ["mask_image_path", "invert_mask", "mask_blur", "outcrop", "paste_back"] {
            assert!(!json.contains(key), "{json}");
        }
        assert!(!a1111_parameters(&rec).contains("Mask"));
    }
}
