//! `ember serve` and `ember worker` as a cluster on PostgreSQL and S3 (issue 19), with the real binary on the tiny
//! model: a front-end (`serve --workers 0`) and several workers share one queue and one bucket; a worker killed in
//! the middle of a job loses it to another after its lease, a restarted worker picks up again, a running job is
//! canceled on whichever worker runs it, every finished job has exactly one image object, and a job that keeps
//! losing its worker fails after `--max-attempts`. Bad configuration stops the binaries at once.
//!
//! These tests need a PostgreSQL server and an S3-compatible one, so they are `#[ignore]`d; .ci/run starts both:
//!
//! ```text
//! dir=$(mktemp -d) && tools/services/start.sh "$dir" && source "$dir/env"
//! cargo test --workspace --test cluster -- --ignored --test-threads=1
//! tools/services/stop.sh "$dir"
//! ```
//!
//! `EMBER_TEST_POSTGRES` is a superuser's URL (each test creates and drops its own database),
//! `EMBER_TEST_S3_BUCKET` a bucket (each test writes under its own prefix), and the standard AWS variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …) reach the S3 server, for the binaries and for these tests alike.

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
/// A process's start: `ember serve` listening, or `ember worker` registered.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Bad configuration must stop a binary "within ~15 s"; a little more here for a loaded CI machine.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(20);
/// A graceful stop (SIGTERM): at most the job in hand, a second or so for the tiny model's jobs here.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn model() -> String {
    Path::new(FIXTURES).join("tiny-sd.safetensors").display().to_string()
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with `tools/services/start.sh DIR` and `source DIR/env` \
             (see .ci/run)"
        )
    })
}

fn bucket() -> String {
    env_var("EMBER_TEST_S3_BUCKET")
}

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// ------------------------------------------------------------------------------------------------------------------
// PostgreSQL: one database per test.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let query = url[path_start..].find('?').map_or("", |i| &url[path_start + i..]);
    format!("{}/{database}{query}", &url[..path_start])
}

/// `url` with its password replaced by `password`.
fn with_password(url: &str, password: &str) -> String {
    let scheme_end = url.find("://").expect("a URL") + 3;
    let at = scheme_end + url[scheme_end..].find('@').expect("a user in the URL");
    let colon = scheme_end + url[scheme_end..at].find(':').expect("a password in the URL");
    format!("{}{password}{}", &url[..colon + 1], &url[at..])
}

/// Runs `sql` (one or more statements, as one transaction) on the database at `url`.
fn pg_execute(url: &str, sql: &str) {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let connection = tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} on {url}: {e:?}"));
        drop(client);
        let _ = connection.await;
    })
}

/// A database of its own for one test, created from `EMBER_TEST_POSTGRES` and dropped (FORCE) when this is dropped.
struct TestDb {
    admin_url: String,
    name: String,
    /// The URL `--queue` takes.
    url: String,
}

impl TestDb {
    fn create(test: &str) -> TestDb {
        let admin_url = env_var("EMBER_TEST_POSTGRES");
        // Short names: PostgreSQL cuts identifiers at 63 bytes.
        let name = format!("ember_cluster_{test}_{}", std::process::id());
        // One statement each: DROP and CREATE DATABASE cannot run in a transaction (a batch is one).
        pg_execute(&admin_url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        pg_execute(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        TestDb { admin_url, name, url }
    }

    fn execute(&self, sql: &str) {
        pg_execute(&self.url, sql);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin_url = self.admin_url.clone();
        // Never a second panic while unwinding.
        let dropped = std::panic::catch_unwind(move || pg_execute(&admin_url, &sql));
        if dropped.is_err() {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------
// S3

/// Every object under `prefix` in the test bucket: (name below the prefix, size).
fn list_objects(prefix: &str) -> Vec<(String, u64)> {
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket())
        .build()
        .expect("an S3 client from the AWS_* variables");
    let listed = runtime()
        .block_on(store.list_with_delimiter(Some(&object_store::path::Path::from(prefix))))
        .unwrap_or_else(|e| panic!("list s3://{}/{prefix}: {e}", bucket()));
    assert!(
        listed.common_prefixes.is_empty(),
        "no folders under the images prefix: {:?}",
        listed.common_prefixes
    );
    listed
        .objects
        .into_iter()
        .map(|o| {
            let name = o.location.filename().expect("an object name").to_string();
            (name, o.size)
        })
        .collect()
}

/// `{job_id:06}-{attempt}.{seed}.png` (or `….mask.png`) → (job id, attempt, seed, is the mask).
fn parse_object_name(name: &str) -> Option<(i64, i64, i64, bool)> {
    let (stem, mask) = match name.strip_suffix(".mask.png") {
        Some(stem) => (stem, true),
        None => (name.strip_suffix(".png")?, false),
    };
    let (job_attempt, seed) = stem.split_once('.')?;
    let (job, attempt) = job_attempt.split_once('-')?;
    if job.len() < 6 || !job.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((job.parse().ok()?, attempt.parse().ok()?, seed.parse().ok()?, mask))
}

// ------------------------------------------------------------------------------------------------------------------
// Processes

/// One `ember` child process, its stdout and stderr in files.
struct Proc {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status once it has exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {} ({})", self.pid(), self.label);
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) still runs {timeout:?} after it should have stopped",
                self.label,
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn report(&mut self) -> String {
        let status = match self.poll() {
            Some(status) => status.to_string(),
            None => "running".into(),
        };
        format!(
            "----- {} (pid {}, {status}) stdout:\n{}\n----- {} stderr:\n{}\n",
            self.label,
            self.pid(),
            tail(&self.stdout(), 3000),
            self.label,
            tail(&self.stderr(), 6000)
        )
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Every process a test starts: all killed (SIGKILL) when this is dropped, and when the test failed, their output is
/// printed.
struct Harness {
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

/// Index into `Harness::procs`.
type ProcId = usize;

struct Server {
    proc: ProcId,
    base: String,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            dir: tempfile::tempdir().expect("tempdir"),
            procs: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `ember ARGS` with its output in files named after `label`.
    fn spawn(&mut self, label: &str, args: &[String]) -> ProcId {
        let n = self.procs.len();
        let stdout = self.path(&format!("{n:02}-{label}.stdout"));
        let stderr = self.path(&format!("{n:02}-{label}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(args)
            .env_remove("EMBER_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start ember {args:?}: {e}"));
        self.procs.push(Proc {
            label: format!("{label}: ember {}", args.join(" ")),
            child,
            stdout,
            stderr,
            exited: None,
        });
        n
    }

    fn proc(&mut self, id: ProcId) -> &mut Proc {
        &mut self.procs[id]
    }

    /// Waits until `ready` holds of the process's (stdout, stderr); panics when it exits first or takes too long.
    fn wait_output(&mut self, id: ProcId, what: &str, ready: impl Fn(&str, &str) -> bool) {
        if let Err(status) = self.try_wait_output(id, what, ready) {
            panic!("{} exited ({status}) before {what}", self.procs[id].label);
        }
    }

    /// `wait_output`, or `Err` with the exit status when the process exits first.
    fn try_wait_output(
        &mut self,
        id: ProcId,
        what: &str,
        ready: impl Fn(&str, &str) -> bool,
    ) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let proc = &mut self.procs[id];
            if ready(&proc.stdout(), &proc.stderr()) {
                return Ok(());
            }
            if let Some(status) = proc.poll() {
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not get to {what} within {START_TIMEOUT:?}",
                proc.label
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ember serve --queue QUEUE --images IMAGES --model tiny --port 0 --data-dir … EXTRA`, once it listens.
    fn serve(&mut self, label: &str, queue: &str, images: &str, extra: &[&str]) -> Server {
        let data_dir = self.path(&format!("{label}-data"));
        let mut args = strings(&["serve", "--queue", queue, "--images", images, "--model", &model()]);
        args.extend(strings(&["--port", "0", "--data-dir", &data_dir.display().to_string()]));
        args.extend(strings(extra));
        let id = self.spawn(label, &args);
        self.wait_output(id, "listening", |out, _| out.contains("listening on http://"));
        let out = self.procs[id].stdout();
        let line = out
            .lines()
            .find(|l| l.contains("listening on http://"))
            .expect("the listening line");
        let start = line.find("http://").expect("an address");
        let base = line[start..]
            .split_whitespace()
            .next()
            .expect("url")
            .trim_end_matches('/')
            .to_string();
        Server { proc: id, base }
    }

    /// `ember worker --queue QUEUE --images IMAGES --model tiny --name NAME EXTRA`, once it says it is ready. A worker
    /// of this name that was SIGKILLed still counts as alive for a while (its heartbeat is recent): a start refused
    /// as "already running" is tried again, for up to `START_TIMEOUT`.
    fn worker(&mut self, name: &str, queue: &str, images: &str, extra: &[&str]) -> ProcId {
        let mut args = strings(&["worker", "--queue", queue, "--images", images, "--model", &model()]);
        args.extend(strings(&["--name", name]));
        args.extend(strings(extra));
        let ready = format!("worker {name} ready");
        let what = format!("`{ready}` on stderr");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let id = self.spawn(name, &args);
            match self.try_wait_output(id, &what, |_, err| err.contains(&ready)) {
                Ok(()) => return id,
                Err(_) if self.procs[id].stderr().contains("already running") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(status) => panic!("{} exited ({status}) before {what}", self.procs[id].label),
            }
        }
    }

    /// Starts `ember ARGS`, which must fail within `REFUSAL_TIMEOUT` with a message on stderr that `expect` accepts
    /// (described by `what`); while it runs and after, nothing may listen on `port`.
    fn expect_refused(
        &mut self,
        label: &str,
        args: &[String],
        port: Option<u16>,
        what: &str,
        expect: impl Fn(&str) -> bool,
    ) {
        let started = Instant::now();
        let id = self.spawn(label, args);
        let status = loop {
            if let Some(port) = port {
                assert!(
                    !listening(port),
                    "{label}: something listens on port {port} although the configuration is bad"
                );
            }
            if let Some(status) = self.procs[id].poll() {
                break status;
            }
            assert!(
                started.elapsed() < REFUSAL_TIMEOUT,
                "{label}: still running {REFUSAL_TIMEOUT:?} after the start; bad configuration must stop it at once"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = self.procs[id].stderr();
        assert!(!status.success(), "{label}: exited with {status}, expected a failure");
        assert!(
            !stderr.contains("panicked"),
            "{label}: a panic, not a message: {stderr}"
        );
        assert!(expect(&stderr), "{label}: stderr should say {what}; it says:\n{stderr}");
        if let Some(port) = port {
            assert!(!listening(port), "{label}: port {port} listens after the refusal");
        }
        eprintln!(
            "{label}: refused in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            stderr.trim()
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            proc.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== output of the {} processes this test started =====",
                self.procs.len()
            );
            for proc in &mut self.procs {
                eprintln!("{}", proc.report());
            }
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------------------------------------------------------
// HTTP

struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            base: server.base.clone(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn read(response: reqwest::blocking::Response, what: &str) -> Value {
        let status = response.status();
        let body = response.text().unwrap_or_default();
        assert!(status.is_success(), "{what}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"))
    }

    fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Api::read(response, &format!("GET {path}"))
    }

    fn job(&self, id: i64) -> Value {
        self.get(&format!("/api/jobs/{id}"))
    }

    /// POST /api/jobs: JSON, or multipart with the `params` part and an `init_image` when there is one.
    fn submit(&self, params: Value, init_image: Option<&[u8]>) -> Value {
        let request = self.http.post(self.url("/api/jobs"));
        let request = match init_image {
            None => request.json(&params),
            Some(png) => {
                let part = reqwest::blocking::multipart::Part::bytes(png.to_vec())
                    .file_name("init.png")
                    .mime_str("image/png")
                    .expect("mime");
                let form = reqwest::blocking::multipart::Form::new()
                    .text("params", params.to_string())
                    .part("init_image", part);
                request.multipart(form)
            }
        };
        let response = request.send().expect("POST /api/jobs");
        assert_eq!(response.status().as_u16(), 201, "POST /api/jobs {params}");
        Api::read(response, "POST /api/jobs")
    }

    fn cancel(&self, id: i64) -> Value {
        let response = self
            .http
            .post(self.url(&format!("/api/jobs/{id}/cancel")))
            .send()
            .expect("POST cancel");
        Api::read(response, &format!("POST /api/jobs/{id}/cancel"))
    }

    /// Polls job `id` until `done` holds of it.
    fn wait_job(&self, id: i64, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(id);
            if done(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {what} within {timeout:?}: {job}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Polls the jobs until none is queued or running; their final JSON by id.
    fn wait_all_finished(&self, ids: &[i64], timeout: Duration) -> BTreeMap<i64, Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let jobs: BTreeMap<i64, Value> = ids.iter().map(|&id| (id, self.job(id))).collect();
            let unfinished: Vec<String> = jobs
                .values()
                .filter(|j| j["status"] == "queued" || j["status"] == "running")
                .map(|j| {
                    format!(
                        "{} {} (worker {}, attempts {})",
                        j["id"], j["status"], j["worker"], j["attempts"]
                    )
                })
                .collect();
            if unfinished.is_empty() {
                return jobs;
            }
            assert!(
                Instant::now() < deadline,
                "{} jobs still unfinished after {timeout:?}: {unfinished:?}\nworkers: {}",
                unfinished.len(),
                self.get("/api/workers")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every gallery image (all pages).
    fn all_images(&self) -> Vec<Value> {
        let mut images = Vec::new();
        for page in 1.. {
            let listed = self.get(&format!("/api/images?page={page}&per_page=50"));
            let batch = listed["images"].as_array().expect("images").clone();
            let total = listed["total"].as_u64().expect("total") as usize;
            let empty = batch.is_empty();
            images.extend(batch);
            if empty || images.len() >= total {
                assert_eq!(images.len(), total, "the pages add up to the total: {listed}");
                break;
            }
            assert!(page < 100, "too many pages");
        }
        images
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Server-sent events

#[derive(Default)]
struct Events {
    /// Job id → every worker a `job` event named for it.
    job_workers: BTreeMap<i64, BTreeSet<String>>,
    /// Job id → `progress` events seen.
    progress: BTreeMap<i64, usize>,
    /// Events whose data was not what docs/api.md says.
    malformed: Vec<String>,
}

impl Events {
    fn record(&mut self, event: &str, data: &str) {
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            self.malformed.push(format!("{event}: {data}"));
            return;
        };
        match event {
            "job" => match value["id"].as_i64() {
                Some(id) => {
                    let workers = self.job_workers.entry(id).or_default();
                    if let Some(worker) = value["worker"].as_str() {
                        workers.insert(worker.to_string());
                    }
                }
                None => self.malformed.push(format!("{event}: {data}")),
            },
            "progress" => {
                let fields = ["job_id", "step", "total", "eta_s", "preview"];
                if fields.iter().any(|f| value.get(f).is_none()) {
                    self.malformed.push(format!("{event}: {data}"));
                }
                if let Some(id) = value["job_id"].as_i64() {
                    *self.progress.entry(id).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

/// Reads `GET /api/events` in a thread until the server goes away; returns once the stream is open.
fn listen(api: &Api) -> Arc<Mutex<Events>> {
    let events = Arc::new(Mutex::new(Events::default()));
    let url = api.url("/api/events");
    let (opened, open) = mpsc::channel();
    let sink = Arc::clone(&events);
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .expect("client");
        let response = match client.get(&url).send() {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                return opened
                    .send(Err(format!("GET /api/events: {}", r.status())))
                    .unwrap_or(())
            }
            Err(e) => return opened.send(Err(format!("GET /api/events: {e}"))).unwrap_or(()),
        };
        let _ = opened.send(Ok(()));
        let (mut event, mut data) = (String::from("message"), String::new());
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { break };
            if line.is_empty() {
                if !data.is_empty() {
                    sink.lock().unwrap().record(&event, &data);
                }
                event = "message".into();
                data.clear();
            } else if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(text) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(text.strip_prefix(' ').unwrap_or(text));
            }
        }
    });
    open.recv_timeout(Duration::from_secs(30))
        .expect("GET /api/events answers")
        .unwrap_or_else(|e| panic!("{e}"));
    events
}

// ------------------------------------------------------------------------------------------------------------------
// The tests

/// `GET /api/workers` by name (an array of workers, or `{"workers": [...]}`).
fn workers_by_name(api: &Api) -> BTreeMap<String, Value> {
    let listed = api.get("/api/workers");
    let workers = match listed.get("workers") {
        Some(workers) => workers.as_array(),
        None => listed.as_array(),
    };
    workers
        .unwrap_or_else(|| panic!("GET /api/workers lists workers: {listed}"))
        .iter()
        .map(|w| (w["name"].as_str().expect("a worker's name").to_string(), w.clone()))
        .collect()
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: tools/services/start.sh, see .ci/run"]
fn sixty_jobs_on_three_workers_survive_a_killed_worker() {
    let db = TestDb::create("sixty");
    let prefix = format!("sixty-{}", std::process::id());
    let images = format!("s3://{}/{prefix}", bucket());
    let mut h = Harness::new();
    let server = h.serve("serve", &db.url, &images, &["--workers", "0"]);
    let api = Api::new(&server);
    let lease = ["--lease-secs", "3"];
    let mut workers: BTreeMap<String, ProcId> = BTreeMap::new();
    for name in ["w1", "w2", "w3"] {
        workers.insert(name.to_string(), h.worker(name, &db.url, &images, &lease));
    }
    let registered = workers_by_name(&api);
    for name in workers.keys() {
        let worker = registered
            .get(name)
            .unwrap_or_else(|| panic!("{name} in /api/workers: {registered:?}"));
        assert_eq!(worker["alive"], true, "{worker}");
        assert!(worker["models"].is_array(), "{worker}");
        assert!(worker.get("heartbeat_at").is_some(), "{worker}");
    }
    let events = listen(&api);

    let init = std::fs::read(Path::new(FIXTURES).join("init-64x96.png")).expect("the init fixture");
    // Job i: even ones txt2img at 64×64, odd ones img2img from the uploaded 64×96 init image.
    let job = |i: i64| -> (Value, bool) {
        if i % 2 == 0 {
            let params = json!({"prompt": format!("a lighthouse {i}"), "steps": 8, "width": 64, "height": 64,
                "seed": 1000 + i});
            (params, false)
        } else {
            let params = json!({"prompt": format!("a harbour {i}"), "steps": 10, "strength": 0.6,
                "seed": 1000 + i});
            (params, true)
        }
    };
    let submit = |i: i64| -> i64 {
        let (params, img2img) = job(i);
        let submitted = api.submit(params, img2img.then_some(init.as_slice()));
        submitted["id"].as_i64().expect("id")
    };
    // Two long jobs first: one to lose its worker, one to cancel while it runs. Then 38 ordinary ones; the last 20
    // go in after a worker's restart.
    let long = |steps: i64, seed: i64| {
        let params = json!({"prompt": "a long job", "steps": steps, "width": 128, "height": 128, "seed": seed});
        api.submit(params, None)["id"].as_i64().expect("id")
    };
    let killed_job = long(40, 1);
    let canceled_job = long(60, 2);
    let mut ids = vec![killed_job, canceled_job];
    ids.extend((0..38).map(submit));

    // SIGKILL the worker that runs the first long job, in the middle of it.
    let running = |j: &Value| j["status"] == "running" && j["steps_done"].as_i64() >= Some(1);
    let before_kill = api.wait_job(killed_job, "running", START_TIMEOUT, running);
    let killed = before_kill["worker"]
        .as_str()
        .unwrap_or_else(|| panic!("a running job names its worker: {before_kill}"))
        .to_string();
    assert_eq!(before_kill["attempts"], 1, "{before_kill}");
    let killed_proc = *workers
        .get(&killed)
        .unwrap_or_else(|| panic!("an unknown worker {killed:?}"));
    h.proc(killed_proc).kill();
    eprintln!("killed {killed} while it ran job {killed_job}: {before_kill}");

    // Cancel the second long job on whichever worker runs it.
    let before_cancel = api.wait_job(canceled_job, "running", START_TIMEOUT, running);
    let canceler = before_cancel["worker"].as_str().expect("a worker").to_string();
    assert_ne!(canceler, killed, "a killed worker runs nothing: {before_cancel}");
    api.cancel(canceled_job);
    let after_cancel = api.wait_job(canceled_job, "canceled", Duration::from_secs(30), |j| {
        j["status"] != "running" && j["status"] != "queued"
    });
    assert_eq!(after_cancel["status"], "canceled", "{after_cancel}");

    // Restart the third worker: SIGTERM, a clean exit, and the same name again.
    let restarted = ["w1", "w2", "w3"]
        .into_iter()
        .find(|n| *n != killed && *n != canceler)
        .expect("a third worker")
        .to_string();
    let old = workers[&restarted];
    h.proc(old).signal("TERM");
    let status = h.proc(old).wait_exit(STOP_TIMEOUT);
    assert!(status.success(), "{restarted} stops cleanly on SIGTERM: {status}");
    workers.insert(restarted.clone(), h.worker(&restarted, &db.url, &images, &lease));
    eprintln!("restarted {restarted}");

    let second_batch: Vec<i64> = (38..58).map(submit).collect();
    ids.extend(&second_batch);
    assert_eq!(ids.len(), 60);

    let jobs = api.wait_all_finished(&ids, Duration::from_secs(480));
    let done: BTreeMap<i64, &Value> = jobs
        .iter()
        .filter(|(_, j)| j["status"] == "done")
        .map(|(&id, j)| (id, j))
        .collect();
    for (&id, job) in &jobs {
        if id == canceled_job {
            assert_eq!(job["status"], "canceled", "{job}");
            assert!(job["image_id"].is_null(), "{job}");
        } else {
            assert_eq!(job["status"], "done", "every job but the canceled one is done: {job}");
            assert!(job["attempts"].as_i64() >= Some(1), "{job}");
            assert!(job["worker"].is_string(), "{job}");
        }
    }
    assert_eq!(done.len(), 59);
    let lost = &jobs[&killed_job];
    assert_eq!(lost["attempts"], 2, "the killed worker's job ran again, once: {lost}");
    assert_ne!(lost["worker"], killed.as_str(), "{lost}");
    assert!(
        second_batch.iter().any(|id| jobs[id]["worker"] == restarted.as_str()),
        "the restarted worker {restarted} ran none of the jobs submitted after its restart"
    );

    // Exactly one image object per done job, named after its last attempt and its seed; nothing else.
    let objects = list_objects(&prefix);
    let mut per_job: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (name, size) in &objects {
        let (job, attempt, seed, mask) =
            parse_object_name(name).unwrap_or_else(|| panic!("an object named {name:?} under {prefix}"));
        assert!(!mask, "no job here has a mask: {name}");
        assert!(*size > 0, "{name} is empty");
        let owner = done
            .get(&job)
            .unwrap_or_else(|| panic!("{name}: an orphan; job {job} is not done: {:?}", jobs.get(&job)));
        assert_eq!(owner["attempts"].as_i64(), Some(attempt), "{name}: {owner}");
        assert_eq!(owner["params"]["seed"].as_i64(), Some(seed), "{name}: {owner}");
        per_job.entry(job).or_default().push(name.clone());
    }
    for id in done.keys() {
        let names = per_job.get(id).cloned().unwrap_or_default();
        assert_eq!(names.len(), 1, "job {id}: one image object, found {names:?}");
    }
    assert_eq!(objects.len(), done.len());

    // The gallery: one image per done job, each file served.
    let gallery = api.all_images();
    assert_eq!(gallery.len(), done.len(), "as many gallery images as done jobs");
    let gallery_jobs: BTreeSet<i64> = gallery.iter().map(|i| i["job_id"].as_i64().expect("job_id")).collect();
    assert_eq!(
        gallery_jobs,
        done.keys().copied().collect(),
        "one gallery image per done job"
    );
    for image in &gallery {
        let url = api.url(image["url"].as_str().expect("url"));
        let file = api.http.get(&url).send().expect("GET image file");
        assert_eq!(file.status().as_u16(), 200, "{url}");
        let bytes = file.bytes().expect("body");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{url} is a PNG");
    }
    for (id, job) in &done {
        assert_eq!(gallery.iter().filter(|i| i["job_id"] == *id).count(), 1, "{job}");
    }

    // Events from every worker reached the one front-end.
    std::thread::sleep(Duration::from_millis(500));
    let events = events.lock().unwrap();
    assert!(events.malformed.is_empty(), "malformed events: {:?}", events.malformed);
    for name in ["w1", "w2", "w3"] {
        let with_progress: Vec<i64> = events
            .job_workers
            .iter()
            .filter(|(id, workers)| workers.contains(name) && events.progress.contains_key(id))
            .map(|(&id, _)| id)
            .collect();
        assert!(
            !with_progress.is_empty(),
            "no job that {name} ran had progress events; job events name workers {:?}, progress for {} jobs",
            events.job_workers,
            events.progress.len()
        );
    }
    let killed_job_workers = events.job_workers.get(&killed_job).cloned().unwrap_or_default();
    assert!(
        killed_job_workers.contains(&killed) && killed_job_workers.len() >= 2,
        "job events for job {killed_job} name the killed worker and the one that ran it again: {killed_job_workers:?}"
    );

    // The workers as the front-end sees them: the killed one is not alive, the others are.
    let registered = workers_by_name(&api);
    if let Some(dead) = registered.get(&killed) {
        assert_eq!(dead["alive"], false, "a SIGKILLed worker: {dead}");
    }
    for name in ["w1", "w2", "w3"].into_iter().filter(|n| *n != killed) {
        let worker = registered
            .get(name)
            .unwrap_or_else(|| panic!("{name} in {registered:?}"));
        assert_eq!(worker["alive"], true, "{worker}");
        assert!(worker["running_job"].is_null(), "idle at the end: {worker}");
    }
    drop(events);
    drop(server);
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: tools/services/start.sh, see .ci/run"]
fn bad_configuration_is_refused_at_start() {
    let db = TestDb::create("badconf");
    let pid = std::process::id();
    let images = format!("s3://{}/badconf-{pid}", bucket());
    let mut h = Harness::new();
    let data_dir = h.path("data").display().to_string();
    let serve_args = |queue: &str, images: &str, port: u16| {
        let mut args = strings(&["serve", "--queue", queue, "--images", images, "--workers", "0"]);
        args.extend(strings(&[
            "--model",
            &model(),
            "--port",
            &port.to_string(),
            "--data-dir",
            &data_dir,
        ]));
        args
    };
    let worker_args = |queue: &str, images: &str| {
        strings(&[
            "worker",
            "--queue",
            queue,
            "--images",
            images,
            "--model",
            &model(),
            "--name",
            "bad",
        ])
    };

    // Nothing listens on the database's port.
    let nowhere = with_database(
        &format!("postgres://ember:ember-test@127.0.0.1:{}/postgres", free_port()),
        &db.name,
    );
    let unreachable = |e: &str| e.contains("cannot connect to PostgreSQL");
    let port = free_port();
    h.expect_refused(
        "serve-unreachable",
        &serve_args(&nowhere, &images, port),
        Some(port),
        "cannot connect to PostgreSQL",
        unreachable,
    );
    h.expect_refused(
        "worker-unreachable",
        &worker_args(&nowhere, &images),
        None,
        "cannot connect to PostgreSQL",
        unreachable,
    );

    // The wrong password (one that does not itself spell "password").
    let wrong = with_password(&db.url, "not-the-secret");
    let refused = |e: &str| {
        let e = e.to_lowercase();
        e.contains("password") || e.contains("authentication")
    };
    let port = free_port();
    h.expect_refused(
        "serve-wrong-password",
        &serve_args(&wrong, &images, port),
        Some(port),
        "\"password\" or \"authentication\"",
        refused,
    );
    h.expect_refused(
        "worker-wrong-password",
        &worker_args(&wrong, &images),
        None,
        "\"password\" or \"authentication\"",
        refused,
    );

    // A bucket that does not exist (a name without the word "bucket" in it).
    let absent = format!("ember-absent-{pid}");
    let missing = format!("s3://{absent}/images");
    let names_it = |e: &str| e.contains(&absent) && e.to_lowercase().contains("bucket");
    let what = format!("the bucket's name {absent:?} and \"bucket\"");
    let port = free_port();
    h.expect_refused(
        "serve-missing-bucket",
        &serve_args(&db.url, &missing, port),
        Some(port),
        &what,
        names_it,
    );
    h.expect_refused(
        "worker-missing-bucket",
        &worker_args(&db.url, &missing),
        None,
        &what,
        names_it,
    );

    // A schema newer than the binary knows: a good start migrates the database, then the version moves on.
    let server = h.serve("serve-migrates", &db.url, &images, &["--workers", "0"]);
    h.proc(server.proc).signal("TERM");
    let status = h.proc(server.proc).wait_exit(STOP_TIMEOUT);
    assert!(status.success(), "ember serve stops cleanly on SIGTERM: {status}");
    db.execute("UPDATE ember_schema SET version = 999");
    h.expect_refused(
        "worker-newer-schema",
        &worker_args(&db.url, &images),
        None,
        "\"schema version\"",
        |e| e.contains("schema version"),
    );
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: tools/services/start.sh, see .ci/run"]
fn a_job_that_keeps_losing_its_worker_fails_after_max_attempts() {
    let db = TestDb::create("maxattempts");
    let prefix = format!("maxattempts-{}", std::process::id());
    let images = format!("s3://{}/{prefix}", bucket());
    let mut h = Harness::new();
    // `--max-attempts` is the server's: a job gets the attempts of the server it was submitted to.
    let server = h.serve("serve", &db.url, &images, &["--workers", "0", "--max-attempts", "2"]);
    let api = Api::new(&server);
    let args = ["--lease-secs", "2"];
    let lease = Duration::from_secs(2);
    let mut worker = h.worker("w1", &db.url, &images, &args);

    // Several seconds of work on the tiny model.
    let params = json!({"prompt": "a long job", "steps": 60, "width": 128, "height": 128, "seed": 7});
    let id = api.submit(params, None)["id"].as_i64().expect("id");
    for attempt in 1..=2 {
        // Into the steps of this attempt (a claim starts `steps_done` at 0 again), then SIGKILL.
        let job = api.wait_job(id, &format!("running its attempt {attempt}"), START_TIMEOUT, |j| {
            j["status"] == "running" && j["attempts"] == attempt && j["steps_done"].as_i64() >= Some(1)
        });
        assert_eq!(job["worker"], "w1", "{job}");
        h.proc(worker).kill();
        eprintln!("killed w1 in attempt {attempt}: {job}");
        // Past the lease, then the worker again under the same name; it must not run the job a third time.
        std::thread::sleep(lease + Duration::from_secs(1));
        worker = h.worker("w1", &db.url, &images, &args);
    }
    let job = api.wait_job(id, "failed", Duration::from_secs(60), |j| {
        j["status"] != "running" && j["status"] != "queued"
    });
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("attempt"), "the error names the attempts: {job}");
    assert!(job["image_id"].is_null(), "{job}");

    // The worker goes on with other jobs.
    let params = json!({"prompt": "a short job", "steps": 4, "width": 64, "height": 64, "seed": 8});
    let quick = api.submit(params, None)["id"].as_i64().expect("id");
    let done = api.wait_job(quick, "finished", Duration::from_secs(120), |j| {
        j["status"] != "running" && j["status"] != "queued"
    });
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    let objects = list_objects(&prefix);
    let names: Vec<&str> = objects.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 1, "only the short job's image: {names:?}");
    assert_eq!(parse_object_name(names[0]).map(|p| p.0), Some(quick), "{names:?}");
    drop(server);
}

/// Waits for job `id` to end and returns it, which must be done.
fn wait_done(api: &Api, id: i64) -> Value {
    let job = api.wait_job(id, "finished", Duration::from_secs(120), |j| {
        j["status"] != "running" && j["status"] != "queued"
    });
    assert_eq!(job["status"], "done", "{job}");
    job
}

#[test]
#[ignore = "needs PostgreSQL and an S3 server: tools/services/start.sh, see .ci/run"]
fn any_queue_works_with_any_image_store() {
    // The SQLite queue (its in-process worker) with images in the bucket.
    let prefix = format!("combo-sqlite-{}", std::process::id());
    let mut h = Harness::new();
    let queue = h.path("queue.sqlite").display().to_string();
    let server = h.serve("sqlite", &queue, &format!("s3://{}/{prefix}", bucket()), &[]);
    let api = Api::new(&server);
    let params = json!({"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 11});
    let first = wait_done(&api, api.submit(params, None)["id"].as_i64().expect("id"));
    let image_id = first["image_id"].as_i64().expect("image id");
    // The worker reads a gallery image back from the bucket for img2img.
    let params = json!({"prompt": "fire", "steps": 6, "strength": 0.5, "seed": 12, "init_image_id": image_id});
    let second = wait_done(&api, api.submit(params, None)["id"].as_i64().expect("id"));
    assert_eq!(second["mode"], "img2img", "{second}");
    assert_eq!(second["attempts"], 1, "{second}");
    let mut names: Vec<String> = list_objects(&prefix).into_iter().map(|(n, _)| n).collect();
    names.sort();
    let expected =
        [(&first, 11), (&second, 12)].map(|(job, seed)| format!("{:06}-1.{seed}.png", job["id"].as_i64().expect("id")));
    assert_eq!(names, expected, "one object per job, named by job and attempt");
    let file = api
        .http
        .get(api.url(&format!("/api/images/{image_id}/file")))
        .send()
        .expect("GET file");
    assert_eq!(file.status().as_u16(), 200);
    assert!(
        file.bytes().expect("body").starts_with(b"\x89PNG"),
        "a PNG from the bucket"
    );
    let deleted = api
        .http
        .delete(api.url(&format!("/api/images/{image_id}")))
        .send()
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(list_objects(&prefix).len(), 1, "deleting the image deletes its object");
    drop(server);

    // PostgreSQL with a local images folder and two workers inside the server.
    let db = TestDb::create("combo");
    let folder = h.path("images");
    let server = h.serve("pg", &db.url, &folder.display().to_string(), &["--workers", "2"]);
    let api = Api::new(&server);
    let ids: Vec<i64> = (0..6)
        .map(|i| {
            let params = json!({"prompt": format!("a harbour {i}"), "steps": 4, "width": 64, "height": 64,
                "seed": 20 + i});
            api.submit(params, None)["id"].as_i64().expect("id")
        })
        .collect();
    let jobs: Vec<Value> = ids.iter().map(|&id| wait_done(&api, id)).collect();
    let workers = workers_by_name(&api);
    assert_eq!(workers.len(), 2, "two in-process workers registered: {workers:?}");
    for job in &jobs {
        let name = job["worker"].as_str().expect("a worker name");
        assert!(workers.contains_key(name), "{job}");
    }
    let params = json!({"prompt": "fire", "steps": 6, "strength": 0.5, "seed": 30,
        "init_image_id": jobs[0]["image_id"]});
    let reused = wait_done(&api, api.submit(params, None)["id"].as_i64().expect("id"));
    // Gallery search and the kept upload of an img2img image, on PostgreSQL as on SQLite (web_api.rs).
    let found = api.get("/api/images?q=HARBOUR%203");
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["images"][0]["params"]["prompt"], "a harbour 3", "{found}");
    assert_eq!(api.get("/api/images?q=harbour")["total"], 6);
    assert_eq!(api.get("/api/images?q=")["total"], 7);
    let upload = std::fs::read(Path::new(FIXTURES).join("init-64x96.png")).expect("the init fixture");
    let params = json!({"prompt": "kept", "steps": 4, "strength": 0.5, "seed": 31});
    let uploaded = wait_done(&api, api.submit(params, Some(&upload))["id"].as_i64().expect("id"));
    let init_url = api.url(&format!("/api/images/{}/init", uploaded["image_id"]));
    let kept = api.http.get(&init_url).send().expect("GET init");
    assert_eq!(kept.status().as_u16(), 200);
    assert_eq!(kept.bytes().expect("bytes").as_ref(), upload.as_slice());
    let deleted = api
        .http
        .delete(api.url(&format!("/api/images/{}", uploaded["image_id"])))
        .send()
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(api.http.get(&init_url).send().expect("GET init").status().as_u16(), 404);
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .expect("the images folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = jobs
        .iter()
        .chain([&reused])
        .map(|j| format!("{:06}-1.{}.png", j["id"].as_i64().expect("id"), j["params"]["seed"]))
        .collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "one file per job in the folder, no temporary files left"
    );
    drop(server);
}

#[test]
fn object_names_parse() {
    assert_eq!(parse_object_name("000012-1.42.png"), Some((12, 1, 42, false)));
    assert_eq!(parse_object_name("000012-2.42.mask.png"), Some((12, 2, 42, true)));
    assert_eq!(parse_object_name("1234567-1.5.png"), Some((1234567, 1, 5, false)));
    assert_eq!(parse_object_name("12-1.42.png"), None);
    assert_eq!(parse_object_name("000012.42.png"), None);
    assert_eq!(parse_object_name("init/000012-1.42.png"), None);
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5432/postgres", "x"),
        "postgres://u:p@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(with_password("postgres://u:p@h:1/db", "q"), "postgres://u:q@h:1/db");
}
