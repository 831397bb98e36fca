//! A scripted `invoke>` session with the real binary through a pseudo-terminal: a generation, a bad line, `-S -1`,
//! `!history`, `!fetch` into the edit buffer and back out with Enter, Ctrl-C during a long generation, `q`; then a
//! second session that finds the history file. Plus the same REPL fed through a pipe.

#![cfg(unix)]

use rexpect::session::spawn_command;
use std::path::Path;
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
/// Generous: a debug build loads the tiny model in well under a second, but CI machines are shared.
const TIMEOUT_MS: u64 = 60_000;

fn repl_command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args(["--model", &format!("{FIXTURES}/tiny-sd.safetensors"), "--device", "cpu"])
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
    p.exp_regex(r"step \d+/1000").expect("generation started");
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
