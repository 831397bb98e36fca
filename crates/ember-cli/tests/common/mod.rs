//! What several of the binary's integration tests share.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `ember` with HOME, the XDG folders and its history under `home`, and none of the user's `EMBER_*` settings, so
/// that a test never reads the real config file, history or caches.
#[allow(dead_code)] // Each test file includes this module and uses what it needs.
pub fn isolated_ember(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("EMBER_HISTORY", home.join("history"))
        .env_remove("EMBER_CONFIG")
        .env_remove("EMBER_MODEL")
        .env_remove("EMBER_CACHE_DIR")
        .env_remove("EMBER_LOG");
    command
}

/// Runs `command` with `stdin` fed to it and its output collected; fails on a panic message (not on the exit status).
#[allow(dead_code)]
pub fn output_with_stdin(mut command: Command, stdin: &str) -> Output {
    let mut child = command
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
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// Runs `ember ARGS` with `stdin`, its history and models file under `home`; fails with stderr on a non-zero exit or a
/// panic message.
#[allow(dead_code)]
pub fn run_ember<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S], stdin: &str, home: &Path) -> Output {
    let mut command = isolated_ember(home);
    command.args(args).env("EMBER_CONFIG", home.join("models.toml"));
    let out = output_with_stdin(command, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
