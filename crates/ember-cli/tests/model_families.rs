//! The CLI side of model families, with the real binary: what a load prints on stderr (family, prediction type,
//! spacing, defaults, the loader's notes), the models file's per-model defaults under `!switch` (and that one entry's
//! settings do not leak into the next), and the PNG metadata of SD 2.x, SDXL and LCM runs, replayed from their Dream
//! lines.

mod common;

use ember::image::png_meta::read_png_text;
use std::path::Path;
use std::process::Output;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(name: &str) -> String {
    Path::new(FIXTURES).join(name).display().to_string()
}

/// Runs `ember ARGS` with `stdin` (history and models file under `home`); fails with stderr on a non-zero exit.
fn ember(args: &[&str], stdin: &str, home: &Path) -> Output {
    common::run_ember(args, stdin, home)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The PNG's text chunk `key`.
fn chunk(path: &Path, key: &str) -> String {
    let chunks = read_png_text(path).expect("a PNG with text chunks");
    chunks
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{} has no {key} chunk", path.display()))
}

fn sd_metadata(path: &Path) -> serde_json::Value {
    serde_json::from_str(&chunk(path, "sd-metadata")).expect("sd-metadata is JSON")
}

/// The stderr lines that follow `marker`'s line, up to the next `loading model` line.
fn after<'a>(stderr: &'a str, marker: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .skip_while(|l| !l.contains(marker))
        .skip(1)
        .take_while(|l| !l.starts_with("loading model"))
        .collect()
}

/// A models-file entry's defaults apply to the lines that do not set them, replace the model's own, are recorded
/// in the Dream line, and go away (with the entry's dtype) on `!switch` to an entry without them. `!models` marks
/// the loaded entry with what it is and lists every entry's defaults; stdout carries nothing else.
#[test]
fn models_file_defaults_apply_on_switch_and_do_not_leak() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out");
    let launch_model = fixture("tiny-sd.safetensors");
    std::fs::write(
        home.path().join("models.toml"),
        format!(
            r#"
[models.fast]
path = "{folder}"
description = "turbo-like settings"
dtype = "f64"
steps = 2
cfg_scale = 0
sampler = "k_euler"
width = 64
height = 64
timestep_spacing = "trailing"

[models.plain]
path = "{launch_model}"
"#,
            folder = fixture("tiny-sd"),
        ),
    )
    .unwrap();
    let script =
        "!models\n!switch fast\n!models\nfox -S 1\nfox -S 2 -s 3 -C 5\n!switch plain\nfox -S 3 -s 2 -W 64 -H 64\n";
    let args = ["--model", &launch_model, "--device", "cpu", "--dtype", "f32", "-o"];
    let mut args: Vec<&str> = args.to_vec();
    let out_arg = out.display().to_string();
    args.push(&out_arg);
    let result = ember(&args, script, home.path());
    let stdout = text(&result.stdout);
    let stderr = text(&result.stderr);

    // Three loads (launch, fast, plain), each described once, in its dtype: fast's f64 does not stay for plain.
    let described: Vec<&str> = stderr.lines().filter(|l| l.starts_with("model: ")).collect();
    assert_eq!(described.len(), 3, "{stderr}");
    for line in &described {
        assert!(
            line.contains("(SD 1.x, epsilon, karras-kdiffusion spacing) on cpu")
                && line.contains("defaults -s 50 -C 7.5 -A k_lms -W 512 -H 512"),
            "{line}"
        );
    }
    assert!(described[0].contains(" in f32;"), "{}", described[0]);
    let fast = after(&stderr, "loading model fast");
    assert!(
        fast.iter().any(|l| l.starts_with("model: ") && l.contains(" in f64;")),
        "{fast:?}"
    );
    assert!(
        fast.iter().any(|l| l
            .contains("model fast loaded; its defaults: -s 2 -C 0 -A k_euler -W 64 -H 64 --timestep-spacing trailing")),
        "{fast:?}"
    );
    let plain = after(&stderr, "loading model plain");
    assert!(
        plain.iter().any(|l| l.starts_with("model: ") && l.contains(" in f32;")),
        "the previous entry's dtype leaked: {plain:?}"
    );
    assert!(plain.contains(&"model plain loaded"), "{plain:?}");

    // stdout: the two !models listings and the image paths, nothing from the loads.
    assert!(!stdout.contains("model: "), "{stdout}");
    assert!(
        stdout.contains("* plain"),
        "the launch model is the plain entry's path: {stdout}"
    );
    assert!(stdout.contains("* fast"), "after !switch fast: {stdout}");
    assert!(
        stdout.contains("    loaded: SD 1.x, epsilon, karras-kdiffusion spacing"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    settings: --dtype f64 -s 2 -C 0 -A k_euler -W 64 -H 64 --timestep-spacing trailing"),
        "{stdout}"
    );

    // The images: the entry's defaults where the line said nothing, the line's switches where it did, and after the
    // switch to plain the model's own defaults again, with no spacing override.
    let images: Vec<&str> = stdout.lines().filter(|l| l.ends_with(".png")).collect();
    assert_eq!(images.len(), 3, "{stdout}");
    let dreams: Vec<String> = images.iter().map(|p| chunk(Path::new(p), "Dream")).collect();
    assert_eq!(
        dreams[0],
        "\"fox\" -s 2 -S 1 -W 64 -H 64 -C 0.0 -A k_euler --timestep-spacing trailing"
    );
    assert_eq!(
        dreams[1],
        "\"fox\" -s 3 -S 2 -W 64 -H 64 -C 5.0 -A k_euler --timestep-spacing trailing"
    );
    assert_eq!(dreams[2], "\"fox\" -s 2 -S 3 -W 64 -H 64 -C 7.5 -A k_lms");
    let meta = sd_metadata(Path::new(images[0]));
    assert_eq!(meta["image"]["timestep_spacing"], "trailing");
    assert_eq!(meta["image"]["guidance"], "none (cfg ≤ 1: conditional pass only)");
    assert_eq!(meta["image"]["model_family"], "sd1");
    let meta = sd_metadata(Path::new(images[2]));
    assert_eq!(meta["image"]["timestep_spacing"], "karras-kdiffusion");
    assert_eq!(meta["image"]["guidance"], "classifier-free");
}

/// The launch flags are the command line too: they win over a models-file entry's defaults.
#[test]
fn launch_flags_win_over_entry_defaults() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = home.path().join("out").display().to_string();
    std::fs::write(
        home.path().join("models.toml"),
        format!(
            "[models.fast]\npath = \"{}\"\nsteps = 4\ncfg_scale = 0\nwidth = 64\nheight = 64\n",
            fixture("tiny-sd")
        ),
    )
    .unwrap();
    let model = fixture("tiny-sd.safetensors");
    let args = ["--model", &model, "--device", "cpu", "-o", &out, "-s", "2"];
    let result = ember(&args, "!switch fast\nfox -S 4\n", home.path());
    let stdout = text(&result.stdout);
    let image = stdout.lines().find(|l| l.ends_with(".png")).expect("an image");
    assert_eq!(
        chunk(Path::new(image), "Dream"),
        "\"fox\" -s 2 -S 4 -W 64 -H 64 -C 0.0 -A k_lms"
    );
}

/// One txt2img run per family fixture: the load says what the model is (and, for a single file, how its prediction
/// type was decided); the PNG records the family, prediction type, spacing and guidance the run used; and the Dream
/// line, replayed on the same model, gives the same pixels.
#[test]
fn each_family_is_described_recorded_and_replayed() {
    struct Case {
        model: &'static str,
        switches: &'static [&'static str],
        stderr: &'static [&'static str],
        dream_tail: &'static str,
        run: (&'static str, &'static str, &'static str, &'static str),
    }
    let cases = [
        Case {
            model: "tiny-sd2",
            switches: &["-s", "2", "-W", "64", "-H", "64"],
            stderr: &["(SD 2.x, v_prediction, karras-kdiffusion spacing)"],
            dream_tail: "-C 7.5 -A k_lms",
            run: ("sd2", "v_prediction", "karras-kdiffusion", "classifier-free"),
        },
        Case {
            // A single file: the prediction type comes from the .yaml next to it, and a note says so. SD-Turbo style:
            // trailing spacing, no guidance at cfg ≤ 1; the overrides are recorded.
            model: "tiny-sd2.safetensors",
            switches: &[
                "-s",
                "1",
                "-C",
                "1",
                "-W",
                "64",
                "-H",
                "64",
                "--prediction-type",
                "epsilon",
                "--timestep-spacing",
                "trailing",
            ],
            stderr: &[
                "(SD 2.x, v_prediction, karras-kdiffusion spacing)",
                "note: v-prediction (from the model's .yaml",
            ],
            dream_tail: "-C 1.0 -A k_lms --prediction-type epsilon --timestep-spacing trailing",
            run: ("sd2", "epsilon", "trailing", "none (cfg ≤ 1: conditional pass only)"),
        },
        Case {
            model: "tiny-sdxl",
            switches: &["-s", "2", "-W", "128", "-H", "128"],
            stderr: &["(SDXL, epsilon, leading spacing)", "-A k_euler -W 128 -H 128"],
            dream_tail: "-C 7.5 -A k_euler",
            run: ("sdxl", "epsilon", "leading", "classifier-free"),
        },
        Case {
            // LCM: the model's defaults (4 steps, cfg 8 as an embedding, the lcm sampler) for what the line leaves.
            model: "tiny-lcm",
            switches: &["-W", "64", "-H", "64"],
            stderr: &["(SD 1.x, epsilon", "defaults -s 4 -C 8 -A lcm"],
            dream_tail: "-C 8.0 -A lcm",
            run: (
                "sd1",
                "epsilon",
                "karras-kdiffusion",
                "embedded (LCM guidance embedding)",
            ),
        },
    ];
    for case in cases {
        let home = tempfile::tempdir().expect("tempdir");
        let model = fixture(case.model);
        let first = home.path().join("first").display().to_string();
        let mut args = vec!["generate", "a fox", "-S", "21", "-o", &first];
        args.extend_from_slice(case.switches);
        args.extend(["--model", &model, "--device", "cpu"]);
        let result = ember(&args, "", home.path());
        let stderr = text(&result.stderr);
        let described: Vec<&str> = stderr.lines().filter(|l| l.starts_with("model: ")).collect();
        assert_eq!(described.len(), 1, "{}: {stderr}", case.model);
        for needle in case.stderr {
            assert!(stderr.contains(needle), "{}: {needle:?} not in {stderr}", case.model);
        }
        let stdout = text(&result.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout has the image path only: {stdout}");
        let image = Path::new(lines[0]);
        let dream = chunk(image, "Dream");
        assert!(dream.ends_with(case.dream_tail), "{}: {dream}", case.model);
        let meta = sd_metadata(image);
        let got = (
            meta["image"]["model_family"].as_str().unwrap_or_default(),
            meta["image"]["prediction_type"].as_str().unwrap_or_default(),
            meta["image"]["timestep_spacing"].as_str().unwrap_or_default(),
            meta["image"]["guidance"].as_str().unwrap_or_default(),
        );
        assert_eq!(got, case.run, "{}", case.model);

        let second = home.path().join("second").display().to_string();
        let again = [
            "generate",
            "--from-file",
            "-",
            "-o",
            &second,
            "--model",
            &model,
            "--device",
            "cpu",
        ];
        let replay = ember(&again, &format!("{dream}\n"), home.path());
        let remade = text(&replay.stdout);
        let remade = remade.lines().next().expect("an image");
        let a = image::open(image).expect("png").to_rgb8();
        let b = image::open(remade).expect("png").to_rgb8();
        assert!(a == b, "{}: {dream} did not reproduce the image", case.model);
    }
}
