//! LoRAs and embeddings through the real binary on the tiny model: `--lora FILE:WEIGHT`, `--lora-dir` with
//! `<lora:NAME:W>` in the prompt, `--embedding` used in the negative prompt; what `-t` prints; the PNG's metadata
//! (Dream line, A1111's `Lora hashes`/`TI hashes`, sd-metadata's lists); the Dream line replayed gives the same pixels;
//! and bad LoRA names or files fail before anything is written.

mod common;

use ember::image::png_meta::read_png_text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(name: &str) -> String {
    Path::new(FIXTURES).join(name).display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn chunk(path: &Path, key: &str) -> String {
    read_png_text(path)
        .expect("a PNG with text chunks")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{} has no {key} chunk", path.display()))
}

fn only_image(out: &Output) -> PathBuf {
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout has the image path only: {stdout}");
    PathBuf::from(lines[0])
}

/// `sha256(file)[..12]`, as A1111 writes TI hashes (computed here independently of the engine).
fn file_hash(path: &str) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read");
    format!("{:x}", sha2::Sha256::digest(&bytes))[..12].to_string()
}

/// The AddNet hash kohya's tools and A1111 use for a `.safetensors` LoRA: sha256 of what follows the header.
fn addnet_hash(path: &str) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read");
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    format!("{:x}", sha2::Sha256::digest(&bytes[8 + header..]))[..12].to_string()
}

#[test]
fn loras_and_embeddings_are_applied_recorded_and_replayed() {
    let home = tempfile::tempdir().expect("tempdir");
    let model = fixture("tiny-sd");
    let lora = fixture("lora/sd1_kohya_locon.safetensors");
    let lora_arg = format!("{lora}:0.8");
    let embedding = fixture("lora/sd1_emb_st.safetensors");
    let out = home.path().join("a").display().to_string();
    let base = [
        "-s", "2", "-W", "64", "-H", "64", "-S", "7", "--model", &model, "--device", "cpu",
    ];

    let plain = {
        let mut args = vec!["generate", "a fox", "-o", &out];
        args.extend(base);
        only_image(&common::run_ember(&args, "", home.path()))
    };
    let mut args = vec![
        "generate",
        "a fox",
        "--negative",
        "sd1_emb_st, blurry",
        "--lora",
        &lora_arg,
        "--embedding",
        &embedding,
        "-t",
        "-o",
        &out,
    ];
    args.extend(base);
    let result = common::run_ember(&args, "", home.path());
    let stderr = text(&result.stderr);
    assert!(stderr.contains("LoRA sd1_kohya_locon: weight 0.8"), "{stderr}");
    assert!(stderr.contains("embedding sd1_emb_st: 1 token"), "{stderr}");
    let image = only_image(&result);
    let a = image::open(&plain).unwrap().to_rgb8();
    let b = image::open(&image).unwrap().to_rgb8();
    assert!(a != b, "the LoRA and the embedding must change the image");

    let dream = chunk(&image, "Dream");
    assert!(dream.contains(&format!("--lora {lora}:0.8")), "{dream}");
    let params = chunk(&image, "parameters");
    assert!(params.starts_with("a fox <lora:sd1_kohya_locon:0.8>"), "{params}");
    let want_lora = format!("Lora hashes: \"sd1_kohya_locon: {}\"", addnet_hash(&lora));
    assert!(params.contains(&want_lora), "{params}");
    let want_ti = format!("TI hashes: \"sd1_emb_st: {}\"", file_hash(&embedding));
    assert!(params.contains(&want_ti), "{params}");
    let meta: serde_json::Value = serde_json::from_str(&chunk(&image, "sd-metadata")).unwrap();
    assert_eq!(meta["image"]["loras"][0]["name"], "sd1_kohya_locon", "{meta}");
    assert_eq!(meta["image"]["loras"][0]["weight"], 0.8, "{meta}");
    assert_eq!(meta["image"]["embeddings"][0]["name"], "sd1_emb_st", "{meta}");

    // The Dream line, replayed with the embedding known, remakes the image.
    let second = home.path().join("b").display().to_string();
    let replay = common::run_ember(
        &[
            "generate",
            "--from-file",
            "-",
            "-o",
            &second,
            "--embedding",
            &embedding,
            "--model",
            &model,
            "--device",
            "cpu",
        ],
        &format!("{dream}\n"),
        home.path(),
    );
    let remade = image::open(only_image(&replay)).unwrap().to_rgb8();
    assert!(remade == b, "{dream} did not reproduce the image");

    // The same LoRA from a folder, named in the prompt: the same pixels.
    let dir = home.path().join("loras");
    std::fs::create_dir_all(dir.join("styles")).unwrap();
    std::fs::copy(&lora, dir.join("styles/sd1_kohya_locon.safetensors")).unwrap();
    let dir = dir.display().to_string();
    let third = home.path().join("c").display().to_string();
    let mut args = vec![
        "generate",
        "a fox <lora:sd1_kohya_locon:0.8>",
        "--negative",
        "sd1_emb_st, blurry",
        "--lora-dir",
        &dir,
        "--embedding",
        &embedding,
        "-o",
        &third,
    ];
    args.extend(base);
    let from_dir = image::open(only_image(&common::run_ember(&args, "", home.path())))
        .unwrap()
        .to_rgb8();
    assert!(from_dir == b, "<lora:…> from --lora-dir differs from --lora FILE");
}

#[test]
fn bad_loras_fail_before_writing() {
    let home = tempfile::tempdir().expect("tempdir");
    let model = fixture("tiny-sd");
    let out = home.path().join("out");
    let out_arg = out.display().to_string();
    let sdxl_lora = fixture("lora/sdxl_kohya.safetensors");
    let evil = fixture("lora/evil_lora.pt");
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["a fox <lora:nosuch:1>"], "unknown LoRA `nosuch`"),
        (vec!["a fox", "--lora", "nosuch.safetensors"], "no such LoRA file"),
        (vec!["a fox", "--lora", &sdxl_lora], "LoRA for SDXL"),
        (vec!["a fox", "--lora", &evil], "refusing"),
        (vec!["a fox <lora:x:heavy>"], "not a number"),
    ];
    for (line, want) in cases {
        let mut args = vec!["generate"];
        args.extend(line.iter());
        args.extend([
            "-s", "1", "-W", "64", "-H", "64", "-o", &out_arg, "--model", &model, "--device", "cpu",
        ]);
        let result = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(&args)
            .env("EMBER_HISTORY", home.path().join("history"))
            .env("EMBER_CONFIG", home.path().join("models.toml"))
            .output()
            .expect("ember runs");
        let stderr = text(&result.stderr);
        assert!(!result.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {want:?} not in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let written = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "{args:?} wrote an image");
    }
}
