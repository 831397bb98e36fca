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

#[test]
fn strips_intermediates_and_grids_are_written_next_to_the_images() {
    let outdir = tempfile::tempdir().expect("tempdir");
    let out = ember(&[
        "generate",
        "a fox",
        "-s",
        "4",
        "-S",
        "42",
        "-W",
        "64",
        "-H",
        "64",
        "-n",
        "2",
        "-g",
        "--step-strip",
        "--save-intermediates",
        "2",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
        "--outdir",
        outdir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut names: Vec<String> = std::fs::read_dir(outdir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let second_seed = names[4].split('.').nth(1).unwrap().to_string();
    let want = [
        "000001.42.png".to_string(),
        "000001.42.step-2.png".into(),
        "000001.42.step-4.png".into(),
        "000001.42.strip.png".into(),
        format!("000002.{second_seed}.png"),
        format!("000002.{second_seed}.step-2.png"),
        format!("000002.{second_seed}.step-4.png"),
        format!("000002.{second_seed}.strip.png"),
        "000003.42.grid.png".into(),
    ];
    assert_eq!(names, want);
    let size = |n: &str| image::open(outdir.path().join(n)).expect(n).dimensions();
    use image::GenericImageView;
    // Fast previews are latent-sized; the grid is two 64×64 images side by side.
    assert_eq!(size("000001.42.step-2.png"), (8, 8));
    assert_eq!(size("000003.42.grid.png"), (128, 64));
}

#[test]
fn from_file_runs_each_line_and_reports_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("batch.txt");
    std::fs::write(&file, "# batch\na fox -S 1\n\na fox -S 2 -s 0\n\"a cat\" -S 3 -C 5\n").unwrap();
    let out = ember(&[
        "generate",
        "--from-file",
        file.to_str().unwrap(),
        "-s",
        "2",
        "-W",
        "64",
        "-H",
        "64",
        "--model",
        &tiny_model(),
        "--device",
        "cpu",
        "--outdir",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "line 4 is bad, so the batch fails");
    let err = stderr(&out);
    assert!(
        err.contains("line 4") && err.contains("steps") && err.contains("1 of 3"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = stdout.lines().map(|l| l.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["000001.1.png", "000002.3.png"]);
}

#[test]
fn vae_approx_decodes_with_the_tiny_autoencoder_and_says_so() {
    let outdir = tempfile::tempdir().expect("tempdir");
    let dir = outdir.path().to_str().expect("utf-8");
    let decoder = fixture("taesd-tiny/taesd_decoder.pth");
    let model = tiny_model();
    let base = [
        "generate",
        "a lighthouse",
        "-s",
        "3",
        "-S",
        "11",
        "-W",
        "64",
        "-H",
        "64",
        "--model",
        &model,
        "-o",
        dir,
    ];
    let plain = ember(&base);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let mut fast_args = base.to_vec();
    fast_args.extend(["--vae-approx", decoder.to_str().expect("utf-8")]);
    let fast = ember(&fast_args);
    assert!(fast.status.success(), "{}", stderr(&fast));
    let paths: Vec<PathBuf> = [&plain, &fast]
        .iter()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .collect();
    let texts = png_text(&paths[1]);
    let parameters = texts.iter().find(|(k, _)| k == "parameters").map(|(_, v)| v.as_str());
    assert!(
        parameters.is_some_and(|p| p.contains("VAE: taesd_decoder.pth")),
        "{texts:?}"
    );
    let sd_metadata = texts.iter().find(|(k, _)| k == "sd-metadata").map(|(_, v)| v.as_str());
    assert!(
        sd_metadata.is_some_and(|m| m.contains("\"vae_approx\":\"taesd_decoder.pth\"")),
        "{texts:?}"
    );
    let (a, b) = (
        image::open(&paths[0]).expect("png"),
        image::open(&paths[1]).expect("png"),
    );
    assert_eq!((b.width(), b.height()), (64, 64));
    assert_ne!(
        a.to_rgb8().into_raw(),
        b.to_rgb8().into_raw(),
        "the tiny decoder's image differs from the VAE's"
    );

    // Bad uses: the encode flag alone, a file made for other latents, a missing file.
    let mut alone = base.to_vec();
    alone.push("--vae-approx-encode");
    let refused = ember(&alone);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--vae-approx"), "{}", stderr(&refused));
    let taef2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/taesd/taef2_decoder.pth");
    let mut foreign = base.to_vec();
    foreign.extend(["--vae-approx", taef2.to_str().expect("utf-8")]);
    let refused = ember(&foreign);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("32-channel"), "{}", stderr(&refused));
    let mut missing = base.to_vec();
    missing.extend(["--vae-approx", "/nonexistent/taesd_decoder.pth"]);
    let refused = ember(&missing);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("/nonexistent/taesd_decoder.pth"),
        "{}",
        stderr(&refused)
    );
}
