//! `ember info` with the real binary: InvokeAI 2.x's own PNGs (shared test data), an image Ember makes with the tiny
//! model, an A1111 PNG in A1111's own syntax, a ComfyUI `prompt` chunk, `--json` read back with serde_json, and broken
//! files (missing, not a PNG, no settings) beside good ones.

mod common;

use ember_cli::dream_line::parse;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
/// InvokeAI 2.x's img2img documentation images (see their README).
const INVOKEAI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/invokeai-img2img");

/// `ember info ARGS`, whatever its exit status.
fn info(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("info")
        .args(args)
        .env_remove("EMBER_LOG")
        .output()
        .expect("ember runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

fn info_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = info(&all);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    match serde_json::from_str(&text) {
        Ok(Value::Array(list)) => list,
        other => panic!("not a JSON array ({other:?}): {text}"),
    }
}

fn png_with(dir: &Path, name: &str, chunks: &[(&str, String)]) -> PathBuf {
    let path = dir.join(name);
    ember::image::png_meta::write_png_with_text(&path, &image::RgbImage::new(8, 8), chunks).expect("written");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn invokeai_pngs() {
    let img2img = Path::new(INVOKEAI).join("000032.1592514025.png");
    let txt2img = Path::new(INVOKEAI).join("000019.1592514025.png");
    let out = info(&[s(&img2img), s(&txt2img)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("formats: Dream, sd-metadata"), "{text}");
    assert!(
        text.contains("strength_steps: 0.7") && text.contains("app_version v1.15"),
        "{text}"
    );
    // The init image InvokeAI named is not where it says, but a file of that name is next to the image.
    assert!(
        text.contains("the init image outputs/img-samples/../../docs/assets/img2img/fire-drawing.png is not found")
            && text.contains("next to the image"),
        "{text}"
    );

    let list = info_json(&[s(&img2img), s(&txt2img)]);
    assert_eq!(list.len(), 2);
    let first = &list[0];
    assert_eq!(first["path"], s(&img2img));
    assert_eq!(first["formats"], serde_json::json!(["Dream", "sd-metadata"]));
    assert_eq!(first["sd_metadata"]["image"]["type"], "img2img");
    assert_eq!(first["fetch"]["source"], "Dream");
    assert_eq!(first["fetch"]["line"], first["dream"]);
    let line = first["fetch"]["line"].as_str().expect("a line");
    let sw = parse(line).expect(line).switches;
    assert_eq!(
        (sw.steps, sw.seed, sw.sampler.as_deref(), sw.strength),
        (Some(10), Some(1592514025), Some("ddim"), Some(0.7))
    );
    assert!(
        list[1]["fetch"]["notes"].as_array().expect("notes").is_empty(),
        "txt2img needs no file"
    );
    assert_eq!(list[1]["parameters"], Value::Null);
}

#[test]
fn an_image_ember_made() {
    let home = tempfile::tempdir().expect("tempdir");
    let model = Path::new(FIXTURES).join("tiny-sd.safetensors");
    let out_dir = home.path().join("out");
    let args = [
        "generate",
        "a fox, red",
        "-s",
        "2",
        "-S",
        "9",
        "-W",
        "64",
        "-H",
        "64",
        "-A",
        "DPM++ 2M Karras",
        "--negative",
        "blurry",
        "-o",
        s(&out_dir),
        "--model",
        s(&model),
        "--device",
        "cpu",
    ];
    let made = common::run_ember(&args, "", home.path());
    let made = String::from_utf8(made.stdout).expect("utf-8");
    let png = made.lines().next().expect("an image").to_string();

    let list = info_json(&[&png]);
    let image = &list[0];
    assert_eq!(
        image["formats"],
        serde_json::json!(["Dream", "sd-metadata", "parameters"])
    );
    let dream = image["dream"].as_str().expect("Dream");
    assert!(
        dream.contains("-A k_dpmpp_2") && dream.contains("--karras-max 1001"),
        "{dream}"
    );
    assert_eq!(image["fetch"]["line"], dream);
    let p = &image["parameters"];
    assert_eq!(
        (p["prompt"].as_str(), p["negative_prompt"].as_str()),
        (Some("a fox, red"), Some("blurry"))
    );
    let settings = &p["settings"];
    assert_eq!(
        (settings["Sampler"].as_str(), settings["Schedule type"].as_str()),
        (Some("DPM++ 2M"), Some("Karras"))
    );
    assert_eq!(
        (settings["Steps"].as_str(), settings["Seed"].as_str()),
        (Some("2"), Some("9"))
    );
    assert_eq!(image["sd_metadata"]["image"]["karras_max"], 1001);
    // The text form names the same things.
    let out = info(&[&png]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.contains("Schedule type: Karras") && text.contains("fetch (from Dream): "),
        "{text}"
    );
}

/// What A1111 1.x writes: its sampler names, `Denoising strength` for img2img, keys Ember has no switch for.
#[test]
fn an_a1111_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "a castle on a hill, <lora:film:0.8>\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: DPM++ 2M \
                Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, \
                Denoising strength: 0.6, Clip skip: 2, Mask blur: 4, Version: v1.6.0";
    let old = png_with(dir.path(), "a1111.png", &[("parameters", text.to_string())]);
    // A1111 1.9+: the schedule apart, and a sampler Ember does not have.
    let newer = "fox\nSteps: 8, Sampler: Euler, Schedule type: Karras, CFG scale: 5.5, Seed: 3, Size: 64x96";
    let new = png_with(dir.path(), "a1111-19.png", &[("parameters", newer.to_string())]);
    let unknown = "fox\nSteps: 8, Sampler: DPM++ SDE, Schedule type: Exponential, CFG scale: 5, Seed: 3, Size: 64x64";
    let unknown = png_with(dir.path(), "unknown.png", &[("parameters", unknown.to_string())]);

    let list = info_json(&[s(&old), s(&new), s(&unknown)]);
    let a = &list[0];
    assert_eq!(a["formats"], serde_json::json!(["parameters"]));
    assert_eq!(a["parameters"]["text"], text);
    assert_eq!(a["parameters"]["settings"]["Model hash"], "6ce0161689");
    assert_eq!(a["fetch"]["source"], "parameters");
    let line = a["fetch"]["line"].as_str().expect("a line");
    let parsed = parse(line).expect(line);
    assert_eq!(parsed.prompt, "a castle on a hill, <lora:film:0.8>");
    let sw = parsed.switches;
    assert_eq!(
        (sw.steps, sw.seed, sw.width, sw.height, sw.cfg_scale),
        (Some(20), Some(1), Some(512), Some(512), Some(7.0))
    );
    assert_eq!(
        (sw.sampler.as_deref(), sw.karras_max),
        (Some("k_dpmpp_2"), Some(1001)),
        "{line}"
    );
    assert_eq!(
        (sw.strength, sw.negative.as_deref()),
        (Some(0.6), Some("blurry, lowres"))
    );
    let notes = a["fetch"]["notes"].to_string();
    for said in [
        "does not record the init image",
        "does not record the mask",
        "Clip skip 2",
    ] {
        assert!(notes.contains(said), "{said}: {notes}");
    }

    let line = list[1]["fetch"]["line"].as_str().expect("a line");
    let sw = parse(line).expect(line).switches;
    assert_eq!(
        (sw.sampler.as_deref(), sw.karras_max, sw.cfg_scale, sw.width, sw.height),
        (Some("k_euler"), Some(1001), Some(5.5), Some(64), Some(96))
    );
    let line = list[2]["fetch"]["line"].as_str().expect("a line");
    assert!(!line.contains("-A") && !line.contains("--karras-max"), "{line}");
    let notes = list[2]["fetch"]["notes"].to_string();
    assert!(notes.contains("DPM++ SDE is not one Ember has"), "{notes}");
}

#[test]
fn a_comfyui_prompt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompt = r#"{"3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8,
        "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle, purple galaxy", "clip": ["4", 1]}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}"#;
    let path = png_with(
        dir.path(),
        "comfy.png",
        &[("prompt", prompt.to_string()), ("workflow", "{}".to_string())],
    );
    let out = info(&[s(&path)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("ComfyUI prompt (4 nodes)"), "{text}");
    assert!(
        text.contains("#3 KSampler: ") && text.contains("seed=156680208700286") && text.contains("sampler_name=euler"),
        "{text}"
    );
    assert!(
        text.contains("text=a bottle, purple galaxy") && !text.contains("model=["),
        "{text}"
    );
    // Nodes in numeric order: 10 after 6.
    assert!(text.find("#6 ") < text.find("#10 "), "{text}");
    let list = info_json(&[s(&path)]);
    assert_eq!(list[0]["formats"], serde_json::json!(["prompt"]));
    assert_eq!(list[0]["comfyui_prompt"]["3"]["inputs"]["steps"], 20);
    assert!(list[0]["fetch"]["error"].is_string(), "no line from a ComfyUI graph");
}

#[test]
fn broken_files_are_named_and_the_rest_still_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = Path::new(INVOKEAI).join("000019.1592514025.png");
    let missing = dir.path().join("missing.png");
    let not_png = dir.path().join("notes.png");
    std::fs::write(&not_png, "not an image").expect("written");
    let bare = png_with(dir.path(), "bare.png", &[("Software", "GIMP".to_string())]);
    let args = [s(&missing), s(&good), s(&not_png), s(&bare)];
    let out = info(&args);
    assert!(!out.status.success(), "a broken file fails the run");
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    );
    assert!(stdout.contains("-S 1592514025"), "the good image is printed: {stdout}");
    assert!(stderr.contains("missing.png: no such file"), "{stderr}");
    assert!(stderr.contains("notes.png") && stderr.contains("PNG"), "{stderr}");
    assert!(stderr.contains("bare.png: no generation settings"), "{stderr}");
    assert!(stderr.contains("3 of 4 images"), "{stderr}");

    let list = info_json(&args);
    assert_eq!(list.len(), 4);
    assert!(list[0]["error"].as_str().is_some_and(|e| e.contains("no such file")));
    assert_eq!(list[1]["formats"], serde_json::json!(["Dream", "sd-metadata"]));
    assert!(list[2]["error"].is_string() && list[3]["error"].is_string());
}
