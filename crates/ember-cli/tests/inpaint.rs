//! Inpainting and outpainting from the command line (issue 17), with the real binary on the tiny model: the mask is
//! saved next to the image as `{prefix}.{seed}.mask.png` and named by the image's `-M`, so `!fetch` replays the run
//! to the same pixels; an init image's transparency is the same as `-M`; `--outcrop` is the same as building the
//! larger canvas and its mask by hand; bad input is a clear error that writes nothing, odd masks run with a warning.

mod common;

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn init_path() -> PathBuf {
    Path::new(FIXTURES).join("init-64x96.png")
}

fn init_rgb() -> RgbImage {
    image::open(init_path()).expect("the init fixture").to_rgb8()
}

fn model_args() -> Vec<String> {
    let model = Path::new(FIXTURES).join("tiny-sd.safetensors");
    vec![
        "--model".into(),
        model.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ]
}

/// `ember generate "a red hat" -s 3 -S 42 … SWITCHES -o OUTDIR --model tiny`; the run's output, success or not.
fn generate(switches: &[&str], outdir: &Path) -> Output {
    let mut args: Vec<String> = ["generate", "a red hat", "-s", "3", "-S", "42", "-A", "k_euler"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(switches.iter().map(|s| s.to_string()));
    args.extend(["-o".into(), outdir.display().to_string()]);
    args.extend(model_args());
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&args)
        .env_remove("EMBER_LOG")
        .output()
        .expect("ember runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a generation that must succeed; returns the one image path it printed and its stderr.
fn generate_ok(switches: &[&str], outdir: &Path) -> (PathBuf, String) {
    let out = generate(switches, outdir);
    let err = stderr(&out);
    assert!(out.status.success(), "{switches:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    (PathBuf::from(lines[0]), err)
}

/// Files in `dir` (none when it does not exist), sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn pixels(path: &Path) -> RgbImage {
    image::open(path).expect("a PNG").to_rgb8()
}

fn chunk(path: &Path, key: &str) -> String {
    ember::image::png_meta::read_png_text(path)
        .expect("PNG text")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{} has no {key} chunk", path.display()))
}

fn save_gray(dir: &Path, name: &str, mask: &GrayImage) -> String {
    let path = dir.join(name);
    mask.save(&path).expect("save mask");
    path.display().to_string()
}

/// 64×96, white (repaint) in the rectangle x 16..48, y 24..72.
fn hat_mask() -> GrayImage {
    GrayImage::from_fn(64, 96, |x, y| {
        Luma([if (16..48).contains(&x) && (24..72).contains(&y) {
            255
        } else {
            0
        }])
    })
}

/// `!fetch PATH` in the REPL (which prints the line when stdin is a pipe), then that line through
/// `ember generate --from-file -` into `outdir`; returns the line and the new image's path.
fn fetch_and_replay(path: &Path, home: &Path, outdir: &Path) -> (String, PathBuf) {
    let mut repl: Vec<String> = vec!["repl".into()];
    repl.extend(model_args());
    let out = common::run_ember(&repl, &format!("!fetch {}\n", path.display()), home);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "!fetch prints one command line: {stdout}");
    let line = lines[0].to_string();
    let mut again: Vec<String> = vec!["generate".into(), "--from-file".into(), "-".into()];
    again.extend(["-o".into(), outdir.display().to_string()]);
    again.extend(model_args());
    let out = common::run_ember(&again, &format!("{line}\n"), home);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let remade: Vec<&str> = stdout.lines().collect();
    assert_eq!(remade.len(), 1, "{stdout}");
    (line, PathBuf::from(remade[0]))
}

#[test]
fn the_mask_is_saved_beside_the_image_and_fetch_replays_the_run() {
    let home = tempfile::tempdir().expect("tempdir");
    let first = home.path().join("first");
    let mask = save_gray(home.path(), "hat-mask.png", &hat_mask());
    let init = init_path().display().to_string();
    let (image_path, _) = generate_ok(&["-I", &init, "-M", &mask, "--mask-blur", "0", "-f", "0.8"], &first);

    assert_eq!(image_path.file_name().unwrap(), "000001.42.png");
    let mask_path = first.join("000001.42.mask.png");
    assert_eq!(files(&first), ["000001.42.mask.png", "000001.42.png"]);
    let saved = image::open(&mask_path).expect("the saved mask").to_luma8();
    assert!(saved == hat_mask(), "the saved mask is the mask given (already binary)");

    let dream = chunk(&image_path, "Dream");
    assert!(
        dream.contains(&format!("-f 0.8 -M {}", mask_path.display())),
        "the Dream line names the saved mask: {dream}"
    );
    assert!(!dream.contains("--mask-blur"), "blur 0 is the default: {dream}");
    let meta: serde_json::Value = serde_json::from_str(&chunk(&image_path, "sd-metadata")).expect("JSON");
    assert_eq!(meta["image"]["mask_image_path"], mask_path.display().to_string());

    // Outside the mask (no blur) the pixels are the init image's own.
    let (made, original) = (pixels(&image_path), init_rgb());
    let mask = hat_mask();
    let kept = mask.enumerate_pixels().filter(|(_, _, m)| m[0] == 0);
    assert!(kept.clone().count() > 0);
    for (x, y, _) in kept {
        assert_eq!(made.get_pixel(x, y), original.get_pixel(x, y), "kept pixel ({x}, {y})");
    }
    assert!(made != original, "the masked area was repainted");

    let second = home.path().join("second");
    let (line, remade) = fetch_and_replay(&image_path, home.path(), &second);
    assert!(line.contains(" -M "), "{line}");
    assert!(
        pixels(&remade) == made,
        "{line} did not reproduce {}",
        image_path.display()
    );
    assert!(
        image::open(second.join("000001.42.mask.png"))
            .expect("replay saves its mask")
            .to_luma8()
            == saved,
        "the replay's mask is the same"
    );
}

/// Every inpainting option in one run is written to the Dream line and replayed exactly.
#[test]
fn every_inpainting_option_replays() {
    let home = tempfile::tempdir().expect("tempdir");
    let first = home.path().join("first");
    // Inverted: the mask keeps the rectangle and repaints the rest.
    let mask = save_gray(home.path(), "mask.png", &hat_mask());
    let init = init_path().display().to_string();
    let (image_path, _) = generate_ok(
        &[
            "-I",
            &init,
            "-M",
            &mask,
            "--invert-mask",
            "--mask-blur",
            "4",
            "-c",
            "right",
            "16",
            "--no-paste-back",
            "-f",
            "0.9",
        ],
        &first,
    );
    let dream = chunk(&image_path, "Dream");
    let mask_path = first.join("000001.42.mask.png");
    assert!(
        dream.contains(&format!(
            "-M {} --invert-mask --mask-blur 4 --outcrop right 16 --no-paste-back",
            mask_path.display()
        )),
        "{dream}"
    );
    assert_eq!(
        pixels(&image_path).dimensions(),
        (80, 96),
        "outcropped by 16 on the right"
    );
    let second = home.path().join("second");
    let (line, remade) = fetch_and_replay(&image_path, home.path(), &second);
    assert!(
        pixels(&remade) == pixels(&image_path),
        "{line} did not reproduce the image"
    );
}

/// InvokeAI's way — the init image's transparent pixels are repainted — gives the image `-M` gives for the same
/// region, and the transparency is saved as the run's mask.
#[test]
fn transparency_is_the_same_as_a_mask() {
    let home = tempfile::tempdir().expect("tempdir");
    let rgb = init_rgb();
    let mask = hat_mask();
    let rgba = RgbaImage::from_fn(64, 96, |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        Rgba([r, g, b, 255 - mask.get_pixel(x, y)[0]])
    });
    let alpha_path = home.path().join("alpha.png");
    DynamicImage::ImageRgba8(rgba).save(&alpha_path).expect("save RGBA");
    let rgb_path = home.path().join("rgb.png");
    rgb.save(&rgb_path).expect("save RGB");
    let mask_path = save_gray(home.path(), "mask.png", &mask);

    let (from_alpha, _) = generate_ok(&["-I", alpha_path.to_str().unwrap()], &home.path().join("alpha"));
    let (from_mask, _) = generate_ok(
        &["-I", rgb_path.to_str().unwrap(), "-M", &mask_path],
        &home.path().join("mask"),
    );
    assert!(pixels(&from_alpha) == pixels(&from_mask), "alpha and -M differ");
    let saved = home.path().join("alpha/000001.42.mask.png");
    assert!(
        image::open(&saved)
            .expect("the transparency saved as the mask")
            .to_luma8()
            == mask
    );
    let dream = chunk(&from_alpha, "Dream");
    assert!(dream.contains(&format!("-M {}", saved.display())), "{dream}");
}

/// `--outcrop left 16 top 8` is the image pasted at (16, 8) on a black canvas 16 wider and 8 taller, with a mask
/// white in the new area; only `--outcrop` makes the mask, so no mask file is written.
#[test]
fn outcrop_equals_the_larger_canvas_and_mask_by_hand() {
    let home = tempfile::tempdir().expect("tempdir");
    let init = init_path().display().to_string();
    let (outcropped, _) = generate_ok(
        &["-I", &init, "--outcrop", "left", "16", "top", "8"],
        &home.path().join("a"),
    );
    assert_eq!(
        files(&home.path().join("a")),
        ["000001.42.png"],
        "no mask file for an outcrop alone"
    );
    let dream = chunk(&outcropped, "Dream");
    assert!(
        dream.contains("--outcrop top 8 left 16") && !dream.contains("-M "),
        "{dream}"
    );

    let mut canvas = RgbImage::from_pixel(80, 104, Rgb([0, 0, 0]));
    image::imageops::replace(&mut canvas, &init_rgb(), 16, 8);
    let canvas_path = home.path().join("canvas.png");
    canvas.save(&canvas_path).expect("save canvas");
    let mask = GrayImage::from_fn(80, 104, |x, y| Luma([if x >= 16 && y >= 8 { 0 } else { 255 }]));
    let mask_path = save_gray(home.path(), "canvas-mask.png", &mask);
    let (by_hand, _) = generate_ok(
        &["-I", canvas_path.to_str().unwrap(), "-M", &mask_path],
        &home.path().join("b"),
    );
    assert_eq!(pixels(&outcropped).dimensions(), (80, 104));
    assert!(
        pixels(&outcropped) == pixels(&by_hand),
        "--outcrop differs from the canvas by hand"
    );
}

/// Bad input: a clear error naming the problem, no panic, and no file written.
#[test]
fn bad_inpainting_input_is_a_clear_error_and_writes_nothing() {
    let home = tempfile::tempdir().expect("tempdir");
    let init = init_path().display().to_string();
    let not_image = home.path().join("notes.png");
    std::fs::write(&not_image, "this is not a picture").expect("write");
    let not_image = not_image.display().to_string();
    let black = save_gray(home.path(), "black.png", &GrayImage::new(64, 96));
    let missing = home.path().join("missing-mask.png").display().to_string();
    let folder = home.path().display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-I", &init, "-M", &not_image], "notes.png"),
        (vec!["-I", &init, "-M", &missing], "missing-mask.png"),
        (vec!["-I", &init, "-M", &folder], "it is a folder"),
        (vec!["-I", &init, "-M", &black], "all black"),
        (vec!["-I", &init, "--outcrop", "top", "12"], "multiple of 8"),
        (vec!["-I", &init, "--outcrop", "left", "4096"], "4096"),
        (vec!["-I", &init, "--outcrop", "top", "64", "left"], "pairs"),
        (vec!["-I", &init, "--outcrop", "up", "64"], "unknown side"),
        (vec!["-M", &black], "init image"),
        (vec!["--outcrop", "top", "64"], "init image"),
        (vec!["-I", &init, "--invert-mask"], "no mask to invert"),
        (vec!["-I", &init, "-M", &black, "--mask-blur", "1000"], "mask_blur"),
    ];
    for (i, (switches, needle)) in cases.iter().enumerate() {
        let outdir = home.path().join(format!("out{i}"));
        let out = generate(switches, &outdir);
        let err = stderr(&out);
        assert!(!out.status.success(), "{switches:?} succeeded: {err}");
        assert!(!err.contains("panicked"), "{switches:?}: {err}");
        assert!(err.contains(needle), "{switches:?}: expected {needle:?} in: {err}");
        assert!(files(&outdir).is_empty(), "{switches:?} wrote {:?}", files(&outdir));
    }
}

/// Odd but usable masks run, with a warning: another aspect ratio is stretched to the image; an all-white mask is
/// img2img.
#[test]
fn odd_masks_run_with_a_warning() {
    let home = tempfile::tempdir().expect("tempdir");
    let init = init_path().display().to_string();
    let square = GrayImage::from_fn(32, 32, |x, _| Luma([if x < 16 { 255 } else { 0 }]));
    let square = save_gray(home.path(), "square.png", &square);
    let (_, err) = generate_ok(&["-I", &init, "-M", &square], &home.path().join("a"));
    assert!(err.contains("stretched"), "{err}");
    let white = save_gray(home.path(), "white.png", &GrayImage::from_pixel(64, 96, Luma([255])));
    let (_, err) = generate_ok(&["-I", &init, "-M", &white], &home.path().join("b"));
    assert!(err.contains("whole image"), "{err}");
}
