//! `ember serve` survives a crash: the binary is killed with SIGKILL in the middle of its queue and started again
//! on the same data folder. The job that was running is failed with the reason, the queued ones run, and images
//! finished before the crash are still in the gallery.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
const TIMEOUT: Duration = Duration::from_secs(180);

/// A running `ember serve` child and its base URL; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    base: String,
    /// Kept open: a closed pipe would make the server's later prints fail.
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data_dir: &Path) -> Server {
    serve_with(data_dir, &[], Stdio::inherit())
}

fn serve_with(data_dir: &Path, extra_args: &[&str], stderr: Stdio) -> Server {
    let model = Path::new(FIXTURES).join("tiny-sd.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--port", "0", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("ember serve starts");
    // The first stdout line names the address it bound ("… http://127.0.0.1:PORT/ …").
    let stdout = child.stdout.take().expect("stdout");
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a line on stdout");
    let start = line.find("http://").unwrap_or_else(|| panic!("no address in {line:?}"));
    let base = line[start..]
        .split_whitespace()
        .next()
        .expect("url")
        .trim_end_matches('/')
        .to_string();
    Server {
        child,
        base,
        _stdout: stdout,
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn get(server: &Server, path: &str) -> Value {
    let response = http().get(format!("{}{path}", server.base)).send().expect("GET");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().expect("JSON")
}

fn submit(server: &Server, params: Value) -> i64 {
    let response = http()
        .post(format!("{}/api/jobs", server.base))
        .json(&params)
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 201);
    response.json::<Value>().expect("job")["id"].as_i64().expect("id")
}

fn wait_for(server: &Server, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let job = get(server, &format!("/api/jobs/{id}"));
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never became {what}: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_server_fails_the_running_job_and_runs_the_queued_ones_after_restart() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let server = serve(data_dir.path());

    let quick = submit(
        &server,
        json!({"prompt": "before", "steps": 2, "width": 64, "height": 64, "seed": 1}),
    );
    let finished = wait_for(&server, quick, "done", |j| j["status"] == "done");
    let image_id = finished["image_id"].as_i64().expect("image id");

    // Slow jobs: the first will be running when the process dies, the others still queued.
    let slow: Vec<i64> = (0..3)
        .map(|i| {
            submit(
                &server,
                json!({"prompt": "slow", "steps": 20, "width": 128, "height": 128, "seed": 10 + i}),
            )
        })
        .collect();
    wait_for(&server, slow[0], "running", |j| {
        j["status"] == "running" && j["steps_done"].as_i64() >= Some(1)
    });
    drop(server); // SIGKILL: no chance to clean up.

    let server = serve(data_dir.path());
    let interrupted = get(&server, &format!("/api/jobs/{}", slow[0]));
    assert_eq!(interrupted["status"], "failed", "{interrupted}");
    assert_eq!(
        interrupted["error"],
        "interrupted: the server stopped while this job was running; submit it again"
    );
    assert!(interrupted["finished_at"].is_string());
    for &id in &slow[1..] {
        let job = wait_for(&server, id, "finished", |j| {
            j["status"] != "queued" && j["status"] != "running"
        });
        assert_eq!(job["status"], "done", "queued jobs run after the restart: {job}");
    }

    let image = get(&server, &format!("/api/images/{image_id}"));
    assert_eq!(image["job_id"], quick);
    let file = http()
        .get(format!("{}/api/images/{image_id}/file", server.base))
        .send()
        .expect("file");
    assert_eq!(file.status().as_u16(), 200);
    let page = get(&server, "/api/images");
    assert_eq!(
        page["total"], 3,
        "the image from before the crash and the two queued jobs'"
    );
}

/// Ctrl-C (SIGINT) in the middle of a long job stops the job between two layers and the server with it, without
/// waiting for the step to end (the issue: a stuck job kept SIGINT from stopping the process at all).
#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_server_in_the_middle_of_a_long_job() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let log_path = data_dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    // 512² × 200 steps of the tiny model is a minute or more here: over the CPU's default budget, so raise it.
    let mut server = serve_with(data_dir.path(), &["--work-budget", "1000"], Stdio::from(log));
    let id = submit(
        &server,
        json!({"prompt": "long", "steps": 200, "width": 512, "height": 512, "seed": 3}),
    );
    wait_for(&server, id, "running", |j| j["status"] == "running");
    let interrupted = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    // A hang guard, not a timing test: the server gives a stuck job 10 s and says so in its log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ember serve is still running a minute after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("stopping"), "{log}");
    assert!(
        !log.contains("did not stop"),
        "the job stopped by itself, between two layers: {log}"
    );
    drop(server);

    let server = serve(data_dir.path());
    let job = get(&server, &format!("/api/jobs/{id}"));
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().is_some_and(|e| e.starts_with("interrupted")),
        "{job}"
    );
}
