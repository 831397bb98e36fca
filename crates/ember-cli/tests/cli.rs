//! The `ember` binary end to end on the tiny test model: paths on stdout, numbered files with metadata,
//! and a clear error (never a panic) for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("ember runs")
}

fn tiny_model() -> String {
    fixture("tiny-sd.safetensors").display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn png_text(path: &Path) -> Vec<(String, String)> {
    ember::image::png_meta::read_png_text(path).expect("PNG metadata readable")
}

#[test]
fn img2img_writes_numbered_pngs_with_metadata_and_prints_their_paths() {
    let outdir = tempfile::tempdir().expect("tempdir");
    let init = fixture("init-64x96.png");
    let out = ember(&[
        "generate",
        "fire",
        "-I",
        init.to_str().unwrap(),
        "-f",
        "0.7",
        "-s",
        "10",
        "-S",
        "1592514025",
        "-A",
        "k_lms",
        "-n",
        "2",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
        "--outdir",
        outdir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let paths: Vec<&str> = stdout.lines().collect();
    assert_eq!(paths.len(), 2, "{stdout}");
    let first = Path::new(paths[0]);
    assert_eq!(first.file_name().unwrap(), "000001.1592514025.png");
    assert!(Path::new(paths[1])
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("000002."));
    let img = image::open(first).expect("a PNG");
    assert_eq!(
        (img.width(), img.height()),
        (64, 96),
        "the init image keeps its size without --fit"
    );

    let text = png_text(first);
    let get = |k: &str| {
        text.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let dream = get("Dream");
    assert!(dream.starts_with("\"fire\" -s 10 -S 1592514025 -W 64 -H 96"), "{dream}");
    assert!(
        dream.contains("-A k_lms") && dream.contains("-f 0.7") && dream.contains("-I "),
        "{dream}"
    );
    let meta: serde_json::Value = serde_json::from_str(&get("sd-metadata")).expect("sd-metadata JSON");
    assert_eq!(meta["image"]["strength"], 0.7);
    assert_eq!(meta["image"]["type"], "img2img");
    assert!(
        get("parameters").contains("Denoising strength: 0.7"),
        "{}",
        get("parameters")
    );

    // A second run continues the numbering.
    let again = ember(&[
        "generate",
        "fire",
        "-s",
        "2",
        "-S",
        "7",
        "-W",
        "64",
        "-H",
        "64",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
        "--outdir",
        outdir.path().to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).trim().ends_with("000003.7.png"));
}

#[test]
fn bad_inputs_get_clear_errors() {
    let outdir = tempfile::tempdir().expect("tempdir");
    let dir = outdir.path().to_str().unwrap().to_string();
    let init = fixture("init-64x96.png").display().to_string();
    let garbage = outdir.path().join("garbage.png");
    std::fs::write(&garbage, b"this is not a PNG").unwrap();
    let truncated = outdir.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("tiny-sd.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let tiny = tiny_model();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "x", "--model", "/no/such/model.safetensors"],
            "/no/such/model.safetensors",
        ),
        (
            vec!["generate", "x", "--model", truncated.to_str().unwrap()],
            "truncated.safetensors",
        ),
        (
            vec!["generate", "x", "-I", &init, "-f", "1.5", "--model", &tiny],
            "strength",
        ),
        (
            vec!["generate", "x", "-I", &init, "-f", "NaN", "--model", &tiny],
            "strength",
        ),
        (vec!["generate", "x", "-s", "0", "--model", &tiny], "steps"),
        (vec!["generate", "x", "-W", "100000", "--model", &tiny], "width"),
        (vec!["generate", "x", "-A", "k_fancy", "--model", &tiny], "k_fancy"),
        (
            vec![
                "generate",
                "x",
                "-I",
                garbage.to_str().unwrap(),
                "-s",
                "2",
                "--model",
                &tiny,
            ],
            "garbage.png",
        ),
        (
            vec!["generate", "x", "-I", "/no/such/drawing.png", "--model", &tiny],
            "drawing.png",
        ),
    ];
    for (mut args, needle) in cases {
        args.extend(["--device", "cpu", "--outdir", &dir]);
        let out = ember(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    }
    // Nothing half-written was left behind.
    let pngs = std::fs::read_dir(outdir.path()).unwrap().filter(|e| {
        e.as_ref()
            .map(|e| e.file_name().to_string_lossy().starts_with("0000"))
            .unwrap_or(false)
    });
    assert_eq!(pngs.count(), 0);
}

#[test]
fn help_explains_img2img() {
    let out = ember(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("img2img") && text.contains("strength"), "{text}");
}
