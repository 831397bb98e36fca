//! What several of the binary's integration tests share.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `ember ARGS` with `stdin`, its history and models file under `home`; fails with stderr on a non-zero exit or a
/// panic message.
pub fn run_ember<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S], stdin: &str, home: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .env("EMBER_HISTORY", home.join("history"))
        .env("EMBER_CONFIG", home.join("models.toml"))
        .env_remove("EMBER_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ember runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("ember finishes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}
