//! `ember study` end to end on the tiny test model: 2 strengths × 2 step counts from one init image give four
//! normal PNGs (with their step strips) and one labelled grid that holds exactly those pixels.

use ember::image::grid::{labelled_grid, labelled_grid_layout, stack_vertical, text_image, LABEL_SCALE};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(name: &str) -> String {
    Path::new(FIXTURES).join(name).display().to_string()
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("ember runs")
}

fn rgb(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Whether every pixel of a strip slot's inside (cell area) is background white.
fn slot_is_blank(strip: &RgbImage, slot: u32, slot_w: u32) -> bool {
    (slot * slot_w..(slot + 1) * slot_w).all(|x| (0..strip.height()).all(|y| strip.get_pixel(x, y).0 == [255; 3]))
}

#[test]
fn study_writes_each_image_and_a_grid_of_them() {
    let outdir = tempfile::tempdir().expect("tempdir");
    let out = ember(&[
        "study",
        "fire",
        "-I",
        &fixture("init-64x96.png"),
        "--strengths",
        "0.7,0.4",
        "--steps",
        "4,6",
        "-S",
        "42",
        "-A",
        "k_lms",
        "--strip",
        "--model",
        &fixture("tiny-sd.safetensors"),
        "--device",
        "cpu",
        "-o",
        outdir.path().to_str().expect("utf-8 temp path"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let paths: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    // Per cell the image then its strip, row by row; the grid last.
    assert_eq!(paths.len(), 4 * 2 + 1, "{stdout}");
    let grid_path = outdir.path().join("study.42.png");
    assert_eq!(paths[8], grid_path);
    for (i, pair) in paths[..8].chunks(2).enumerate() {
        assert_eq!(pair[0], outdir.path().join(format!("{:06}.42.png", i + 1)));
        assert_eq!(pair[1], outdir.path().join(format!("{:06}.42.strip.png", i + 1)));
    }

    // Steps taken: Python's int(strength * steps) (InvokeAI's t_enc) for 0.7×4, 0.7×6, 0.4×4, 0.4×6.
    let expected_runs = [(4, 2), (6, 4), (4, 1), (6, 2)];
    let images: Vec<RgbImage> = paths[..8].iter().step_by(2).map(|p| rgb(p)).collect();
    let strips: Vec<RgbImage> = paths[1..8].iter().step_by(2).map(|p| rgb(p)).collect();
    for ((img, strip), &(schedule, run)) in images.iter().zip(&strips).zip(&expected_runs) {
        assert_eq!(img.dimensions(), (64, 96));
        // One 10×16 slot per schedule step (an 8×12 latent cell with InvokeAI's 1-px / 2-px white border);
        // the skipped steps' slots are blank on the left, the steps run fill the right.
        assert_eq!(strip.dimensions(), (10 * schedule, 16));
        for slot in 0..schedule {
            let skipped = slot < schedule - run;
            assert_eq!(
                slot_is_blank(strip, slot, 10),
                skipped,
                "slot {slot} of {schedule}, {run} run"
            );
        }
    }

    // The grid: strengths down the side, -s across the top, each image over its caption and strip.
    let grid = rgb(&grid_path);
    let cells: Vec<Vec<RgbImage>> = (0..2)
        .map(|row| {
            (0..2)
                .map(|col| {
                    let i = row * 2 + col;
                    let (schedule, run) = expected_runs[i];
                    let caption = text_image(&format!("{run} of {schedule} steps"), LABEL_SCALE);
                    stack_vertical(&[&images[i], &caption, &strips[i]], 0)
                })
                .collect()
        })
        .collect();
    let rows = ["strength 0.7".to_string(), "strength 0.4".to_string()];
    let cols = ["-s 4".to_string(), "-s 6".to_string()];
    let title = "\"fire\" -S 42 -A k_lms -C 7.5";
    let layout = labelled_grid_layout(&cells, &rows, &cols, Some(title)).expect("layout");
    assert_eq!(grid.dimensions(), (layout.width, layout.height));
    for (r, origins) in layout.cells.iter().enumerate() {
        for (c, &(x, y)) in origins.iter().enumerate() {
            let img = &images[r * 2 + c];
            // The image is centred at the top of its (wider) cell.
            let x = x + (cells[r][c].width() - img.width()) / 2;
            let view = image::imageops::crop_imm(&grid, x, y, img.width(), img.height()).to_image();
            assert!(
                &view == img,
                "the grid's cell {r},{c} differs from {}",
                paths[2 * (r * 2 + c)].display()
            );
        }
    }
    let expected = labelled_grid(&cells, &rows, &cols, Some(title)).expect("grid");
    assert!(grid == expected, "labels, captions or strips of the grid differ");

    // The grid's metadata describes the study.
    let text = ember::image::png_meta::read_png_text(&grid_path).expect("grid metadata");
    let json = &text
        .iter()
        .find(|(k, _)| k == "ember-study")
        .expect("ember-study chunk")
        .1;
    let study: serde_json::Value = serde_json::from_str(json).expect("JSON");
    assert_eq!(study["seed"], 42);
    let cells = study["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 4);
    for (i, cell) in cells.iter().enumerate() {
        assert_eq!(cell["steps_run"], expected_runs[i].1, "cell {i}");
        assert_eq!(cell["file"], format!("{:06}.42.png", i + 1));
    }
    let description = &text.iter().find(|(k, _)| k == "Description").expect("Description").1;
    assert!(
        description.contains("--strengths 0.7,0.4 --steps 4,6 -S 42"),
        "{description}"
    );
}

#[test]
fn a_bad_strength_fails_before_loading_the_model() {
    let outdir = tempfile::tempdir().expect("tempdir");
    let out = ember(&[
        "study",
        "fire",
        "-I",
        &fixture("init-64x96.png"),
        "--strengths",
        "0.7,1.5",
        "--model",
        "/nonexistent/model.safetensors",
        "-o",
        outdir.path().to_str().expect("utf-8 temp path"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("strength") && stderr.contains("1.5"), "{stderr}");
    assert_eq!(std::fs::read_dir(outdir.path()).expect("outdir").count(), 0);
}
