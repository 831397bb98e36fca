//! A scripted `invoke>` session with the real binary through a pseudo-terminal: a generation, a bad line, `-S -1`,
//! `!history`, `!fetch` into the edit buffer and back out with Enter, Ctrl-C during a long generation, `q`; then a
//! second session that finds the history file. Plus the same REPL fed through a pipe; tab completion and the echo
//! line `[N] path: dream-line (seconds)` through a pseudo-terminal; a session whose launch model cannot be loaded.

#![cfg(unix)]

use rexpect::session::spawn_command;
use std::path::Path;
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
/// Generous: a debug build loads the tiny model in well under a second, but CI machines are shared.
const TIMEOUT_MS: u64 = 60_000;

fn repl_command(home: &Path) -> Command {
    repl_command_with_model(home, &format!("{FIXTURES}/tiny-sd.safetensors"))
}

fn repl_command_with_model(home: &Path, model: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args(["--model", model, "--device", "cpu"])
        // Sticky defaults for every line.
        .args([
            "-o",
            &home.join("out").display().to_string(),
            "-W",
            "64",
            "-H",
            "64",
            "-s",
            "3",
        ])
        .env("EMBER_HISTORY", home.join("history"))
        .env("EMBER_CONFIG", home.join("models.toml"))
        .env("TERM", "xterm")
        .env_remove("EMBER_LOG");
    cmd
}

fn outputs(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(home.join("out"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn scripted_session_with_bad_line_ctrl_c_fetch_and_quit() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut p = spawn_command(repl_command(home.path()), Some(TIMEOUT_MS)).expect("spawn ember");
    p.exp_string("invoke> ").expect("first prompt");

    p.send_line("a red fox -S 42").expect("send");
    p.exp_string("000001.42.png").expect("first image");
    p.exp_string("invoke> ").expect("prompt after image");

    // A bad line is reported and the REPL goes on.
    p.send_line("a fox -W 100000").expect("send");
    p.exp_string("invalid width").expect("error message");
    p.exp_string("invoke> ").expect("prompt after error");
    p.send_line("a fox --bogus").expect("send");
    p.exp_string("--bogus").expect("unknown switch named");
    p.exp_string("invoke> ").expect("prompt after error");

    // -S -1 reuses the previous seed; -I -1 the previous image.
    p.send_line("another fox -S -1 -I -1 -f 0.5").expect("send");
    p.exp_string("000002.42.png").expect("same seed again");
    p.exp_string("invoke> ").expect("prompt");

    p.send_line("!history").expect("send");
    p.exp_string("[0] a red fox -S 42").expect("history entry 0");
    p.exp_string("invoke> ").expect("prompt");

    // !fetch puts the command line into the edit buffer; Enter runs it and remakes the same picture.
    let first = home.path().join("out").join("000001.42.png");
    p.send_line(&format!("!fetch {}", first.display())).expect("send");
    p.exp_string("\"a red fox\" -s 3 -S 42")
        .expect("fetched line in the buffer");
    p.send_line("").expect("enter");
    p.exp_string("000003.42.png").expect("regenerated");
    p.exp_string("invoke> ").expect("prompt");
    let out = home.path().join("out");
    let a = image::open(out.join("000001.42.png")).expect("png").to_rgb8();
    let b = image::open(out.join("000003.42.png")).expect("png").to_rgb8();
    assert!(a == b, "the fetched line reproduces the image");

    // Ctrl-C during a long generation cancels it and returns to the prompt.
    p.send_line("a slow fox -s 1000 -S 9").expect("send");
    p.exp_regex(r"denoise \d+/1000").expect("generation started");
    p.send_control('c').expect("ctrl-c");
    p.exp_string("cancelled").expect("cancel reported");
    p.exp_string("invoke> ").expect("prompt after cancel");
    assert!(
        !outputs(home.path()).iter().any(|n| n.ends_with(".9.png")),
        "a cancelled image is not written: {:?}",
        outputs(home.path())
    );

    // Still alive after the cancel.
    p.send_line("a quick fox -S 10 -s 2").expect("send");
    p.exp_string("000004.10.png").expect("image after cancel");
    p.exp_string("invoke> ").expect("prompt");

    p.send_line("q").expect("quit");
    p.exp_eof().expect("exits");

    // The history persisted: a new session lists it.
    let history = std::fs::read_to_string(home.path().join("history")).expect("history file");
    assert!(
        history.contains("a red fox -S 42") && history.contains("a slow fox"),
        "{history}"
    );
    let mut p = spawn_command(repl_command(home.path()), Some(TIMEOUT_MS)).expect("spawn ember");
    p.exp_string("invoke> ").expect("prompt");
    p.send_line("!search slow").expect("send");
    p.exp_regex(r"\[\d+\] a slow fox -s 1000 -S 9").expect("search hit");
    p.exp_string("invoke> ").expect("prompt");
    p.send_line("!clear").expect("send");
    p.exp_string("history cleared").expect("cleared");
    p.send_control('d').expect("ctrl-d");
    p.exp_eof().expect("Ctrl-D quits");
    // An empty history may leave no file at all.
    let history = std::fs::read_to_string(home.path().join("history")).unwrap_or_default();
    assert!(!history.contains("fox"), "{history}");
}

#[test]
fn piped_repl_runs_lines_replay_and_named_models() {
    use std::io::Write;
    let home = tempfile::tempdir().expect("tempdir");
    let script = home.path().join("script.txt");
    std::fs::write(
        &script,
        "# a replay file\nfox one -S 1\n\nfox two -S 2 --bogus\nfox three -S 3\n",
    )
    .unwrap();
    std::fs::write(
        home.path().join("models.toml"),
        format!("[models.tiny]\npath = \"{FIXTURES}/tiny-sd\"\ndescription = \"tiny test model\"\n"),
    )
    .unwrap();
    let mut child = repl_command(home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ember runs");
    let input = format!(
        "!replay {}\n!models\n!switch tiny\nfox four -S 4\n!switch nope\n!0\nq\nnot run -S 5\n",
        script.display()
    );
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("script.txt:4") && stderr.contains("--bogus"),
        "{stderr}"
    );
    assert!(
        stdout.contains("tiny") && stdout.contains("tiny test model"),
        "{stdout}"
    );
    assert!(stderr.contains("model tiny loaded"), "{stderr}");
    assert!(stderr.contains("no model named 'nope'"), "{stderr}");
    // !0 recalls history entry 0 (the first generation line typed: "fox four -S 4"); without a terminal it is
    // printed rather than edited.
    assert!(stdout.lines().any(|l| l == "fox four -S 4"), "{stdout}");
    let names = outputs(home.path());
    let seeds: Vec<&str> = names.iter().filter_map(|n| n.split('.').nth(1)).collect();
    assert_eq!(seeds, ["1", "3", "4"], "{names:?}");
}

/// Types `text` and presses Tab (rexpect buffers `send`; the flush makes the keys arrive).
fn type_then_tab(p: &mut rexpect::session::PtySession, text: &str) {
    p.send(text).expect("send");
    p.send("\t").expect("tab");
    p.flush().expect("flush");
}

#[test]
fn tab_completes_switches_models_and_paths_and_images_are_echoed() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("models.toml"),
        format!("[models.tiny]\npath = \"{FIXTURES}/tiny-sd\"\n"),
    )
    .unwrap();
    let mut p = spawn_command(repl_command(home.path()), Some(TIMEOUT_MS)).expect("spawn ember");
    p.exp_string("invoke> ").expect("first prompt");

    // A switch name: `--seaml` + Tab becomes `--seamless`.
    type_then_tab(&mut p, "a fox -S 5 --seaml");
    p.exp_string("--seamless").expect("switch completed");
    p.send_line("").expect("enter");
    // The progress bar appears only once denoising starts: no empty `0/0` frame before it.
    let (before, _) = p.exp_regex(r"denoise \d+/3").expect("progress");
    assert!(!before.contains("0/0"), "an empty bar was drawn: {before:?}");
    // InvokeAI's echo line: `[N] path: dream-line (seconds)`.
    let (_, echo) = p
        .exp_regex(r#"\[1\] [^\r\n]*000001\.5\.png: "a fox" [^\r\n]*-S 5[^\r\n]* \(\d+\.\d\ds\)"#)
        .expect("echo line");
    assert!(echo.contains("--seamless"), "{echo}");
    p.exp_string("invoke> ").expect("prompt");

    // A sampler name.
    type_then_tab(&mut p, "a fox -S 6 -A dd");
    p.exp_string("-A ddim").expect("sampler completed");
    p.send_line("").expect("enter");
    p.exp_regex(r"\[2\] [^\r\n]*000002\.6\.png: [^\r\n]*-A ddim")
        .expect("second echo line");
    p.exp_string("invoke> ").expect("prompt");

    // A `!` command and a model name from the models file.
    type_then_tab(&mut p, "!sw");
    p.exp_string("!switch").expect("command completed");
    type_then_tab(&mut p, "ti");
    p.exp_string("tiny").expect("model name completed");
    p.send_line("").expect("enter");
    p.exp_string("model tiny loaded").expect("switched");
    p.exp_string("invoke> ").expect("prompt");

    // A file path after !fetch (the only file of out/ starting 000001).
    let out = home.path().join("out");
    type_then_tab(&mut p, &format!("!fetch {}/000001", out.display()));
    p.exp_string("000001.5.png").expect("path completed");
    p.send_line("").expect("enter");
    p.exp_string("\"a fox\"").expect("fetched command in the buffer");
    p.send_control('c').expect("drop the buffer");
    p.exp_string("invoke> ").expect("prompt");
    p.send_line("q").expect("quit");
    p.exp_eof().expect("exits");
}

#[test]
fn error_labels_are_coloured_on_a_terminal_unless_no_color() {
    for (no_color, want) in [
        (None, "\x1b[1;31merror:\x1b[0m invalid width"),
        (Some("1"), "error: invalid width"),
    ] {
        let home = tempfile::tempdir().expect("tempdir");
        let mut cmd = repl_command(home.path());
        match no_color {
            Some(value) => cmd.env("NO_COLOR", value),
            None => cmd.env_remove("NO_COLOR"),
        };
        let mut p = spawn_command(cmd, Some(TIMEOUT_MS)).expect("spawn ember");
        p.exp_string("invoke> ").expect("first prompt");
        p.send_line("a fox -W 100000").expect("send");
        p.exp_string(want).expect("error label");
        p.exp_string("invoke> ").expect("prompt");
        p.send_line("q").expect("quit");
        p.exp_eof().expect("exits");
    }
}

#[test]
fn unloadable_launch_model_keeps_the_prompt_when_a_models_file_exists() {
    use std::io::Write;
    let home = tempfile::tempdir().expect("tempdir");
    let missing = home.path().join("no-such-model.safetensors").display().to_string();
    let run = |input: &str| {
        let mut child = repl_command_with_model(home.path(), &missing)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ember runs");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().expect("finishes")
    };
    // No models file: nothing to switch to, so the REPL stops with the load error, as before.
    let out = run("fox -S 1\nq\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));

    std::fs::write(
        home.path().join("models.toml"),
        format!("[models.tiny]\npath = \"{FIXTURES}/tiny-sd\"\n"),
    )
    .unwrap();
    let out = run("fox -S 1\n!switch tiny\nfox -S 2\nq\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-model"), "the load error is reported: {stderr}");
    assert!(
        stderr.contains("no model loaded; use !switch NAME or restart with --model"),
        "{stderr}"
    );
    // Piped, stdout is the bare path of the one image made (after the switch), as `ember generate` prints it.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0].ends_with("/000001.2.png"), "{stdout}");
    assert_eq!(outputs(home.path()), ["000001.2.png"]);
}
