//! A real server on loopback for the tests: a fresh data folder (SQLite file + images) in a tempdir, the tiny model,
//! a reqwest client, and a small Server-Sent Events reader.

#![allow(dead_code)]

use ember_server::{Config, RunningServer};
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// Generous: the tiny model runs a step in milliseconds, but CI machines are shared.
pub const TIMEOUT: Duration = Duration::from_secs(120);

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
}

pub async fn start() -> TestServer {
    start_in(tempfile::tempdir().expect("tempdir")).await
}

/// A server on an existing data folder (a restart).
pub async fn start_in(data_dir: tempfile::TempDir) -> TestServer {
    start_configured(data_dir, |_| {}).await
}

/// A server whose configuration `configure` changes first (a token, limits).
pub async fn start_configured(data_dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        data_dir: data_dir.path().to_path_buf(),
        model: fixture("tiny-sd.safetensors").display().to_string(),
        device: "cpu".into(),
        dtype: "f32".into(),
        ..Config::default()
    };
    configure(&mut config);
    let server = ember_server::start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    TestServer {
        server: Some(server),
        base,
        client: reqwest::Client::new(),
        data_dir,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Status and JSON body (Null when the body is empty or not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    /// Submits a job that must be accepted; returns the Job.
    pub async fn submit(&self, params: Value) -> Value {
        let (status, job) = self.post_json("/api/jobs", &params).await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        job
    }

    /// Polls a job until `done(job)`.
    pub async fn wait_job(&self, id: i64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let (status, job) = self.get(&format!("/api/jobs/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never got there: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_finished(&self, id: i64) -> Value {
        self.wait_job(id, |j| {
            ["done", "failed", "canceled"].contains(&j["status"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Opens `/api/events`; events published after this returns are all delivered.
    pub async fn events(&self) -> SseReader {
        let response = self.client.get(self.url("/api/events")).send().await.expect("events");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().expect("ascii").to_string();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        SseReader {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    /// Stops the server and hands back its data folder, for [`start_in`].
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        self.data_dir
    }
}

type ByteStream = Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

pub struct SseReader {
    stream: ByteStream,
    buffer: String,
}

impl SseReader {
    /// The next named event: (name, JSON data). Keep-alive comments are skipped.
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if name.is_empty() {
                    continue;
                }
                let value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event {name} data {data}: {e}"));
                return (name, value);
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("an event within the timeout")
                .expect("the stream is open")
                .expect("stream bytes");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every event up to and including the `job` event that finishes job `id`.
    pub async fn until_finished(&mut self, id: i64) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        loop {
            let (name, data) = self.next().await;
            let finished = name == "job"
                && data["id"] == id
                && ["done", "failed", "canceled"].contains(&data["status"].as_str().unwrap_or(""));
            seen.push((name, data));
            if finished {
                return seen;
            }
        }
    }
}

/// The error object of a 4xx body: (field, message).
pub fn error_of(body: &Value) -> (Option<String>, String) {
    let error = &body["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"));
    assert!(!message.is_empty(), "{body}");
    (error["field"].as_str().map(str::to_string), message.to_string())
}

pub async fn submit_raw(t: &TestServer, body: &str) -> (StatusCode, Value) {
    let request = t
        .client
        .post(t.url("/api/jobs"))
        .header("content-type", "application/json")
        .body(body.to_string());
    t.send(request).await
}

pub async fn submit_form(t: &TestServer, params: Option<Value>, file: Option<Vec<u8>>) -> (StatusCode, Value) {
    let mut form = Form::new();
    if let Some(params) = params {
        form = form.text("params", params.to_string());
    }
    if let Some(bytes) = file {
        form = form.part("init_image", Part::bytes(bytes).file_name("init.png"));
    }
    t.send(t.client.post(t.url("/api/jobs")).multipart(form)).await
}

pub fn assert_error(got: (StatusCode, Value), status: StatusCode, field: Option<&str>, what: &str) -> String {
    let (got_status, body) = got;
    assert_eq!(got_status, status, "{what}: {body}");
    let (got_field, message) = error_of(&body);
    assert_eq!(got_field.as_deref(), field, "{what}: {body}");
    message
}

/// A PNG signature and a valid IHDR declaring `w × h`, then IEND: tiny on the wire, huge if decoded.
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, 1, 1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(&[0, 0, 0]).expect("data");
    writer.finish().expect("finish");
    // IHDR's width and height are bytes 16..24; its CRC (bytes 29..33) is recomputed.
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The text chunks of a PNG in memory (`Dream`, `sd-metadata`, `parameters`).
pub fn png_text(bytes: &[u8]) -> Vec<(String, String)> {
    ember::image::png_meta::read_png_text_from(std::io::Cursor::new(bytes), std::path::Path::new("x.png"))
        .expect("PNG text chunks")
}

/// An image encoded as PNG.
pub fn png_bytes(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode");
    out
}
