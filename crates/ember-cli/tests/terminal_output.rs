//! What `ember generate` writes where: stdout carries one path per line (images, step strips, the grid) and nothing
//! else; `--progress` decides what stderr shows of the stages; `--save-intermediates` files appear as their steps
//! finish, so a run killed mid-way keeps the ones it got to.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// `ember generate "a fox" -W 64 -H 64 --device cpu` on the tiny model into `outdir`, plus `extra`.
fn generate(outdir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args(["generate", "a fox", "-W", "64", "-H", "64", "--device", "cpu"])
        .args(["--model", &format!("{FIXTURES}/tiny-sd.safetensors")])
        .arg("--outdir")
        .arg(outdir)
        .args(extra)
        .env_remove("EMBER_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("ember runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn stdout_lists_images_strips_and_the_grid_one_path_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(generate(
        dir.path(),
        &["-s", "2", "-S", "42", "-n", "2", "-g", "--step-strip"],
    ));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    let names: Vec<String> = lines
        .iter()
        .map(|l| Path::new(l).file_name().expect("a path").to_string_lossy().into_owned())
        .collect();
    let second_seed = names[2].split('.').nth(1).expect("prefix.seed.png").to_string();
    assert_eq!(
        names,
        [
            "000001.42.png".to_string(),
            "000001.42.strip.png".into(),
            format!("000002.{second_seed}.png"),
            format!("000002.{second_seed}.strip.png"),
            "000003.42.grid.png".into(),
        ]
    );
    for line in &lines {
        assert!(Path::new(line).is_file(), "{line} is printed but missing");
    }
    // stderr keeps only notes for people; the paths are not repeated there.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("grid:") && !stderr.contains("strip:"), "{stderr}");
}

#[test]
fn progress_always_writes_stage_lines_into_a_pipe_and_never_or_auto_write_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["-s", "3", "-S", "7", "-n", "2"];
    let always = run(generate(dir.path(), &[&args[..], &["--progress", "always"]].concat()));
    let stderr = String::from_utf8_lossy(&always.stderr);
    for stage in [
        "loading model",
        "image 1/2 seed 7: encoding text",
        "image 1/2 seed 7: denoise 1/3",
        "image 1/2 seed 7: denoise 3/3",
        "image 1/2 seed 7: decoding",
        "image 2/2 seed ",
    ] {
        assert!(stderr.contains(stage), "`{stage}` missing from: {stderr}");
    }
    assert!(!stderr.contains('\x1b'), "no terminal codes into a pipe: {stderr:?}");
    for mode in [&["--progress", "never"][..], &["--progress=auto"], &[]] {
        let quiet = run(generate(dir.path(), &[&args[..], mode].concat()));
        let stderr = String::from_utf8_lossy(&quiet.stderr);
        for stage in ["loading model", "encoding text", "denoise", "decoding", "image 1/2"] {
            assert!(!stderr.contains(stage), "{mode:?}: `{stage}` in: {stderr}");
        }
        assert_eq!(String::from_utf8_lossy(&quiet.stdout).lines().count(), 2, "{mode:?}");
    }
    let bad = generate(dir.path(), &["--progress", "sometimes"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("always"));
}

#[test]
fn errors_into_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = generate(dir.path(), &["-W", "100000"]).output().expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: invalid width"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// The `*.step-N.png` files in `dir`.
fn step_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.to_string_lossy().contains(".step-"));
    found.sort();
    found
}

#[test]
fn intermediates_are_on_disk_while_the_run_goes_on_and_survive_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The most steps the model allows: the run is killed long before its end.
    let mut child = generate(dir.path(), &["-s", "1000", "-S", "3", "--save-intermediates", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ember runs");
    let step_2 = dir.path().join("000001.3.step-2.png");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !step_2.exists() && Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ember ended early ({status}) with {:?}", step_files(dir.path()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        step_2.exists(),
        "no step-2 file within two minutes: {:?}",
        step_files(dir.path())
    );
    // Step 1 was complete before step 2 began: a whole PNG, named after the image the run would have written.
    let first = image::open(dir.path().join("000001.3.step-1.png")).expect("step 1 is a readable PNG");
    assert!(first.width() > 0);
    assert!(
        !dir.path().join("000001.3.png").exists(),
        "the image itself was never finished"
    );
}

#[test]
fn completions_prints_a_script_and_survives_a_closed_pipe() {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["completions", "bash"])
        .output()
        .expect("ember runs");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("generate") && script.contains("--strength") && script.contains("info"));
    // `ember completions zsh | head -1`: the reader goes away before the script is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ember runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("finishes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{stderr}");
}
