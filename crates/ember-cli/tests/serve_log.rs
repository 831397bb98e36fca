//! `ember serve`'s log written into a file (`ember serve … 2>log`, a service manager) is plain text: the colour
//! codes of the terminal log would show there as `^[[32m` garbage (issue 18).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

#[test]
fn the_server_log_into_a_file_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--port", "0", "--device", "cpu", "--model"])
        .arg(Path::new(FIXTURES).join("tiny-sd.safetensors"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // Info level: the lines the subscriber writes at startup (the model, the work limits).
        .env("EMBER_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ember serve starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("work limits") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("INFO"), "the log has the startup lines: {text:?}");
    assert!(!text.contains('\x1b'), "colour codes in a log file: {text:?}");
}
