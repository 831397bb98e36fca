//! Replays every fuzz input kept in the repository (fuzz/corpus/<target>/ and fuzz/regressions/<target>/) through
//! the same function the libFuzzer binary calls (fuzz/targets.rs): none may panic or take more than
//! [`PER_INPUT_LIMIT`]. Long campaigns that grow the corpora: fuzz/run.sh (README, "Fuzzing").

#[allow(dead_code)]
#[path = "../../../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every input takes milliseconds; this leaves room for a loaded CI machine and an unoptimised build.
const PER_INPUT_LIMIT: Duration = Duration::from_secs(3);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs each input on its own thread; collects panics and inputs over the time limit, then fails naming them.
fn replay(target: &str, run: fn(&[u8])) {
    let corpus = fuzz_dir().join("corpus").join(target);
    assert!(
        corpus.is_dir(),
        "the fuzz corpus folder {} is missing: it holds the inputs this test replays (see README, \"Fuzzing\")",
        corpus.display()
    );
    let mut inputs = files_in(&corpus);
    assert!(
        !inputs.is_empty(),
        "the fuzz corpus folder {} is empty",
        corpus.display()
    );
    let regressions = fuzz_dir().join("regressions").join(target);
    if regressions.is_dir() {
        inputs.extend(files_in(&regressions));
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let (done, finished) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name(format!("{target}: {}", path.display()))
            .spawn(move || {
                run(&data);
                let _ = done.send(());
            })
            .expect("spawn a replay thread");
        match finished.recv_timeout(PER_INPUT_LIMIT) {
            Ok(()) => worker.join().expect("the input finished"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The thread is left behind: there is no way to stop it, and the test fails anyway.
                failures.push(format!("{}: took over {PER_INPUT_LIMIT:?} (a hang)", path.display()));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let payload = worker.join().expect_err("the thread ended without finishing: a panic");
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{}: panicked: {message}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {target} fuzz inputs failed:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
    eprintln!(
        "{target}: {} inputs replayed in {:.2?}",
        inputs.len(),
        started.elapsed()
    );
}

#[test]
fn prompt_corpus() {
    replay("prompt", targets::prompt);
}

#[test]
fn dream_line_corpus() {
    replay("dream_line", targets::dream_line);
}

#[test]
fn png_text_corpus() {
    replay("png_text", targets::png_text);
}

#[test]
fn pickle_corpus() {
    replay("pickle", targets::pickle);
}

#[test]
fn model_file_corpus() {
    replay("model_file", targets::model_file);
}

#[test]
fn addon_file_corpus() {
    replay("addon_file", targets::addon_file);
}

#[test]
fn job_json_corpus() {
    replay("job_json", targets::job_json);
}

#[test]
fn job_multipart_corpus() {
    replay("job_multipart", targets::job_multipart);
}
