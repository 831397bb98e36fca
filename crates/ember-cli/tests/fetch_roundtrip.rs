//! `!fetch` round trips with the real binary on the tiny model: generate → `!fetch` the PNG in the REPL (its
//! command line is printed when standard input is a pipe) → run that line with `ember generate --from-file -` →
//! the new image has exactly the same pixels. Covers txt2img, img2img, `-v`/`-V` variations, `--hires_fix` and the
//! `--prediction-type`/`--timestep-spacing` overrides; then PNGs left with only A1111's `parameters` or only
//! `sd-metadata` (the line rebuilt from that chunk must reproduce the image too).

mod common;

use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn model_args() -> Vec<String> {
    let model = Path::new(FIXTURES).join("tiny-sd.safetensors");
    vec![
        "--model".into(),
        model.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ]
}

/// Runs `ember ARGS` with `stdin`; returns stdout lines, failing with stderr on a non-zero exit.
fn ember(args: &[String], stdin: &str, home: &Path) -> Vec<String> {
    let out = common::run_ember(args, stdin, home);
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn pixels(path: &str) -> image::RgbImage {
    image::open(path).expect("a PNG").to_rgb8()
}

/// Generates with `switches`, then fetches and replays each image; asserts identical pixels and returns the
/// fetched lines with the first images' pixels.
fn round_trip(prompt: &str, switches: &[&str]) -> Vec<(String, image::RgbImage)> {
    let home = tempfile::tempdir().expect("tempdir");
    let first = home.path().join("first");
    let second = home.path().join("second");
    let mut args: Vec<String> = vec!["generate".into(), prompt.into()];
    args.extend(switches.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), first.display().to_string()]);
    args.extend(model_args());
    let made = ember(&args, "", home.path());
    assert!(!made.is_empty(), "no image written");

    let mut fetched = Vec::new();
    for path in &made {
        let mut repl: Vec<String> = vec!["repl".into()];
        repl.extend(model_args());
        let out = ember(&repl, &format!("!fetch {path}\n"), home.path());
        assert_eq!(out.len(), 1, "!fetch prints one command line: {out:?}");
        let line = out[0].clone();

        let mut again: Vec<String> = vec!["generate".into(), "--from-file".into(), "-".into()];
        again.extend(["-o".into(), second.display().to_string()]);
        again.extend(model_args());
        let remade = ember(&again, &format!("# fetched from {path}\n{line}\n"), home.path());
        assert_eq!(remade.len(), 1, "{remade:?}");
        assert!(pixels(path) == pixels(&remade[0]), "{line} did not reproduce {path}");
        fetched.push((line, pixels(path)));
    }
    fetched
}

#[test]
fn txt2img_round_trip() {
    let lines = round_trip(
        "a \"red\" fox",
        &[
            "-s",
            "4",
            "-S",
            "42",
            "-W",
            "64",
            "-H",
            "64",
            "-A",
            "k_euler_a",
            "-C",
            "5",
            "--negative",
            "blurry",
        ],
    );
    let line = &lines[0].0;
    assert!(
        line.contains("-S 42") && line.contains("--negative \"blurry\""),
        "{line}"
    );
}

#[test]
fn img2img_round_trip() {
    let init: PathBuf = Path::new(FIXTURES).join("init-64x96.png");
    let init = init.display().to_string();
    let lines = round_trip(
        "fire",
        &["-I", &init, "-f", "0.6", "-s", "6", "-S", "1592514025", "-A", "ddim"],
    );
    let line = &lines[0].0;
    assert!(
        line.contains(&format!("-I {init}")) && line.contains("-f 0.6"),
        "{line}"
    );
    assert_eq!(lines[0].1.dimensions(), (64, 96));
}

#[test]
fn variations_round_trip() {
    // -v: two images of one seed, each with its own random variation seed, recorded as -V.
    let lines = round_trip(
        "a fox",
        &["-s", "3", "-S", "7", "-W", "64", "-H", "64", "-n", "2", "-v", "0.3"],
    );
    assert_eq!(lines.len(), 2);
    for (line, _) in &lines {
        assert!(
            line.contains("-S 7") && line.contains("-V ") && line.contains(":0.3"),
            "{line}"
        );
    }
    assert_ne!(lines[0].0, lines[1].0, "each -v image gets its own variation seed");
    assert!(
        lines[0].1 != lines[1].1,
        "the same seed with different variations gives different images"
    );
    // -V given, plus -v on top: the new variation comes after the given ones.
    let lines = round_trip(
        "a fox",
        &[
            "-s",
            "3",
            "-S",
            "7",
            "-W",
            "64",
            "-H",
            "64",
            "-V",
            "11:0.2,12:0.1",
            "-v",
            "0.5",
        ],
    );
    assert!(lines[0].0.contains("-V 11:0.2,12:0.1,"), "{}", lines[0].0);
}

#[test]
fn hires_fix_round_trip() {
    // The tiny model's native size is 64×64, so 128×128 takes the two-pass path.
    let lines = round_trip(
        "a fox",
        &[
            "-s",
            "3",
            "-S",
            "5",
            "-W",
            "128",
            "-H",
            "128",
            "--hires_fix",
            "-f",
            "0.6",
        ],
    );
    assert!(lines[0].0.contains("--hires_fix"), "{}", lines[0].0);
    assert_eq!(lines[0].1.dimensions(), (128, 128));
}

#[test]
fn prediction_type_and_timestep_spacing_overrides_round_trip() {
    let switches = [
        "-s",
        "3",
        "-S",
        "11",
        "-W",
        "64",
        "-H",
        "64",
        "-A",
        "k_euler",
        "--prediction-type",
        "v_prediction",
        "--timestep-spacing",
        "trailing",
    ];
    let lines = round_trip("a fox", &switches);
    let line = &lines[0].0;
    assert!(
        line.contains("--prediction-type v_prediction --timestep-spacing trailing"),
        "{line}"
    );
    // The overrides changed the picture: without them (the tiny model's ε and InvokeAI's spacing) it differs, so the
    // replay above reproduced them rather than ignoring them.
    let lines_default = round_trip("a fox", &switches[..switches.len() - 4]);
    assert!(
        !lines_default[0].0.contains("--prediction-type"),
        "{}",
        lines_default[0].0
    );
    assert!(
        lines[0].1 != lines_default[0].1,
        "the overrides made no difference to the image"
    );
    // Each on its own is recorded alone.
    let lines = round_trip(
        "a fox",
        &[
            "-s",
            "2",
            "-S",
            "3",
            "-W",
            "64",
            "-H",
            "64",
            "--timestep-spacing",
            "leading",
        ],
    );
    assert!(
        lines[0].0.ends_with("--timestep-spacing leading") && !lines[0].0.contains("--prediction-type"),
        "{}",
        lines[0].0
    );
}

/// A copy of the PNG at `path` (pixels as they are) with only its `keep` text chunk, as another tool would leave it.
fn only_chunk(path: &str, keep: &str, dir: &Path) -> String {
    let chunks = ember::image::png_meta::read_png_text(Path::new(path)).expect("text chunks");
    let kept: Vec<(&str, String)> = chunks
        .iter()
        .filter(|(k, _)| k == keep)
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(kept.len(), 1, "{path} has one {keep} chunk");
    let copy = dir.join(format!("only-{keep}.png"));
    ember::image::png_meta::write_png_with_text(&copy, &pixels(path), &kept).expect("written");
    copy.display().to_string()
}

/// Generates with `switches`, keeps only the `keep` chunk of the image, `!fetch`es that copy and replays the line:
/// the same pixels. Returns the line and what `!fetch` printed on stderr (its notes).
fn round_trip_through(keep: &str, prompt: &str, switches: &[&str]) -> (String, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = vec!["generate".into(), prompt.into()];
    args.extend(switches.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), home.path().join("first").display().to_string()]);
    args.extend(model_args());
    let made = ember(&args, "", home.path());
    let copy = only_chunk(&made[0], keep, home.path());

    let mut repl: Vec<String> = vec!["repl".into()];
    repl.extend(model_args());
    let out = common::run_ember(&repl, &format!("!fetch {copy}\n"), home.path());
    let line = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let notes = String::from_utf8(out.stderr).expect("utf-8");
    let mut again: Vec<String> = vec!["generate".into(), "--from-file".into(), "-".into()];
    again.extend(["-o".into(), home.path().join("second").display().to_string()]);
    again.extend(model_args());
    let remade = ember(&again, &format!("{line}\n"), home.path());
    assert_eq!(remade.len(), 1, "{remade:?}");
    assert!(
        pixels(&made[0]) == pixels(&remade[0]),
        "{line} (from {keep} only) did not reproduce the image"
    );
    (line, notes)
}

/// A1111's `parameters` alone (A1111's sampler names and `Schedule type`) reproduce the image: Karras and the model's
/// own schedule (`Uniform`) both come back as --karras-max.
#[test]
fn a1111_parameters_round_trip() {
    let base = [
        "-s",
        "4",
        "-S",
        "21",
        "-W",
        "64",
        "-H",
        "64",
        "--negative",
        "ugly, dark",
    ];
    let karras: Vec<&str> = base.iter().copied().chain(["-A", "DPM++ 2M Karras"]).collect();
    let (line, _) = round_trip_through("parameters", "a fox: red, <small>", &karras);
    assert!(line.contains("-A k_dpmpp_2 --karras-max 1001"), "{line}");
    // k_lms at 4 steps with --karras-max 2: the model's own σ, written `Schedule type: Uniform`.
    let uniform: Vec<&str> = base
        .iter()
        .copied()
        .chain(["-A", "k_lms", "--karras-max", "2"])
        .collect();
    let (line, notes) = round_trip_through("parameters", "a fox", &uniform);
    assert!(
        line.contains("-A k_lms --karras-max 0") && line.contains("--negative \"ugly, dark\""),
        "{line}"
    );
    assert!(!notes.contains("note:"), "txt2img needs no note: {notes}");
}

/// The defect: a PNG with only sd-metadata lost --hires_fix (and its strength), --karras-max and --exact-steps,
/// silently; the replay then made another image.
#[test]
fn sd_metadata_only_round_trip() {
    let hires = [
        "-s",
        "3",
        "-S",
        "5",
        "-W",
        "128",
        "-H",
        "128",
        "--hires_fix",
        "-f",
        "0.6",
        "-A",
        "k_euler",
        "--karras-max",
        "2",
    ];
    let (line, _) = round_trip_through("sd-metadata", "a fox", &hires);
    assert!(
        line.contains("--hires_fix -f 0.6") && line.contains("--karras-max 2"),
        "{line}"
    );
    let init = Path::new(FIXTURES).join("init-64x96.png").display().to_string();
    let exact = [
        "-I",
        &init,
        "-f",
        "0.5",
        "-s",
        "3",
        "--exact-steps",
        "-S",
        "8",
        "-A",
        "ddim",
    ];
    let (line, _) = round_trip_through("sd-metadata", "fire", &exact);
    assert!(
        line.contains("-s 3 ") && line.contains("--exact-steps") && line.contains("-f 0.5"),
        "{line}"
    );
}

/// InvokeAI 2.x's CLI wrote `strength_steps` and no init image path into sd-metadata: `!fetch` of such a PNG keeps
/// the strength and says the init image must be added (it used to give a txt2img line without a word).
#[test]
fn invokeai_sd_metadata_only_says_what_is_missing() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/testdata/invokeai-img2img/000032.1592514025.png"
    );
    let home = tempfile::tempdir().expect("tempdir");
    let copy = only_chunk(shared, "sd-metadata", home.path());
    let mut repl: Vec<String> = vec!["repl".into()];
    repl.extend(model_args());
    let out = common::run_ember(&repl, &format!("!fetch {copy}\n!fetch {shared}\n"), home.path());
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect();
    let notes = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let sw = ember_cli::dream_line::parse(&lines[0]).expect("a line").switches;
    assert_eq!(
        (sw.strength, sw.sampler.as_deref(), sw.steps),
        (Some(0.7), Some("ddim"), Some(10)),
        "{}",
        lines[0]
    );
    assert!(notes.contains("does not name the init image: add -I FILE"), "{notes}");
    // With its Dream line, the init image is named but not found where InvokeAI put it.
    assert!(
        notes.contains("fire-drawing.png is not found; a file of that name is next to the image"),
        "{notes}"
    );
}
