//! Every kind of bad request gets the right 4xx and a JSON error naming the field, and never reaches a file
//! outside the server's own.

mod common;

use common::{assert_error, error_of, fixture, png_declaring, start, submit_form, submit_raw, TestServer};
use reqwest::multipart::Form;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_parameters_name_the_field() {
    let t = start().await;
    let bad = StatusCode::BAD_REQUEST;
    let message = assert_error(submit_raw(&t, "{\"prompt\": ").await, bad, None, "truncated JSON");
    assert!(message.contains("not valid JSON"), "{message}");
    assert_error(submit_raw(&t, "[1, 2]").await, bad, None, "not an object");
    assert_error(
        submit_raw(&t, "{\"prompt\": \"a\"} trailing").await,
        bad,
        None,
        "trailing garbage",
    );

    let cases = [
        (json!({"steps": 5}), "prompt", "missing prompt"),
        (json!({"prompt": "  "}), "prompt", "blank prompt"),
        (json!({"prompt": "a", "strength": 1.5}), "strength", "strength 1.5"),
        (
            json!({"prompt": "a", "strength": -0.1}),
            "strength",
            "negative strength",
        ),
        (json!({"prompt": "a", "steps": 0}), "steps", "steps 0"),
        (json!({"prompt": "a", "steps": 5000}), "steps", "steps 5000"),
        (json!({"prompt": "a", "steps": -1}), "steps", "negative steps"),
        (json!({"prompt": "a", "steps": "ten"}), "steps", "steps as text"),
        (json!({"prompt": "a", "sampler": "k_foo"}), "sampler", "unknown sampler"),
        (json!({"prompt": "a", "width": 100000}), "width", "width 100000"),
        (
            json!({"prompt": "a", "height": 100}),
            "height",
            "height not a multiple of 8",
        ),
        (
            json!({"prompt": "a", "seed": 5_000_000_000u64}),
            "seed",
            "seed over u32",
        ),
        (json!({"prompt": "a", "fit": "yes"}), "fit", "fit as text"),
        (
            json!({"prompt": "a", "init_image_id": 999}),
            "init_image_id",
            "unknown gallery image",
        ),
        (json!({"prompt": 5}), "prompt", "prompt as a number"),
        (json!({"prompt": "a", "perlin": 1.5}), "perlin", "perlin 1.5"),
        (json!({"prompt": "a", "perlin": -0.1}), "perlin", "negative perlin"),
        (
            json!({"prompt": "a", "perlin": 0.1, "width": 96}),
            "perlin",
            "perlin at a width that is no multiple of 64",
        ),
        (
            json!({"prompt": "a", "threshold": -1}),
            "threshold",
            "negative threshold",
        ),
        (
            json!({"prompt": "a", "with_variations": [{"seed": 1, "weight": 1.5}]}),
            "with_variations",
            "variation weight 1.5",
        ),
        (
            json!({"prompt": "a", "with_variations": [{"seed": 1, "weight": -0.5}]}),
            "with_variations",
            "negative variation weight",
        ),
        (
            json!({"prompt": "a", "with_variations": [{"seed": -1, "weight": 0.5}]}),
            "with_variations[0].seed",
            "negative variation seed",
        ),
        (
            json!({"prompt": "a", "with_variations": "1:0.5"}),
            "with_variations",
            "variations as InvokeAI's text",
        ),
        (
            json!({"prompt": "a", "variation_amount": 1.5}),
            "variation_amount",
            "variation amount 1.5",
        ),
        (
            json!({"prompt": "a", "variation_amount": -0.1}),
            "variation_amount",
            "negative variation amount",
        ),
        (
            json!({"prompt": "a", "hires_fix": "yes"}),
            "hires_fix",
            "hires_fix as text",
        ),
        (
            json!({"prompt": "a", "seamless": 1}),
            "seamless",
            "seamless as a number",
        ),
    ];
    for (params, field, what) in cases {
        assert_error(t.post_json("/api/jobs", &params).await, bad, Some(field), what);
    }
    let (status, body) = t.post_json("/api/jobs", &json!({"prompt": "a", "promt": "b"})).await;
    assert_eq!(status, bad, "{body}");
    assert!(
        error_of(&body).1.contains("unknown field `promt`"),
        "a typo is named: {body}"
    );
    let message = assert_error(
        t.post_json("/api/jobs", &json!({"prompt": "a", "sampler": "k_foo"}))
            .await,
        bad,
        Some("sampler"),
        "sampler",
    );
    assert!(message.contains("k_lms"), "lists the samplers: {message}");

    let unsupported = t
        .client
        .post(t.url("/api/jobs"))
        .header("content-type", "text/plain")
        .body("prompt=a");
    assert_error(
        t.send(unsupported).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        None,
        "text body",
    );

    // Nothing was queued by any of this.
    let (_, jobs) = t.get("/api/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_before_decoding() {
    let t = start().await;
    let init = std::fs::read(fixture("init-64x96.png")).expect("fixture");
    let params = json!({"prompt": "a", "strength": 0.5, "steps": 2});
    let bad = StatusCode::BAD_REQUEST;

    let message = assert_error(
        submit_form(
            &t,
            Some(params.clone()),
            Some(b"#!/bin/sh\necho not an image\n".to_vec()),
        )
        .await,
        bad,
        Some("init_image"),
        "non-image upload",
    );
    assert!(message.contains("PNG, JPEG, WebP or BMP"), "{message}");

    let started = std::time::Instant::now();
    let message = assert_error(
        submit_form(&t, Some(params.clone()), Some(png_declaring(100_000, 100_000))).await,
        bad,
        Some("init_image"),
        "huge declared PNG",
    );
    assert!(message.contains("8192"), "{message}");
    // Decoding 10¹⁰ pixels would take minutes and 30 GB; refusing from the header takes no time.
    assert!(started.elapsed().as_secs() < 10);

    let mut oversize = init.clone();
    oversize.resize(20_000_001, 0);
    let message = assert_error(
        submit_form(&t, Some(params.clone()), Some(oversize)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("init_image"),
        "upload over 20 MB",
    );
    assert!(message.contains("20000000"), "{message}");

    let mut truncated = init.clone();
    truncated.truncate(init.len() / 2);
    assert_error(
        submit_form(&t, Some(params.clone()), Some(truncated)).await,
        bad,
        Some("init_image"),
        "truncated",
    );
    assert_error(
        submit_form(&t, None, Some(init.clone())).await,
        bad,
        Some("params"),
        "no params part",
    );
    assert_error(
        submit_form(&t, Some(json!({"prompt": "a", "strength": 1.5})), Some(init.clone())).await,
        bad,
        Some("strength"),
        "img2img strength 1.5",
    );
    let message = assert_error(
        submit_form(&t, Some(json!({"prompt": "a", "perlin": 0.2})), Some(init.clone())).await,
        bad,
        Some("perlin"),
        "perlin with a 64×96 init image",
    );
    assert!(message.contains("64×96"), "{message}");
    let with_both = json!({"prompt": "a", "init_image_id": 1});
    assert_error(
        submit_form(&t, Some(with_both), Some(init.clone())).await,
        bad,
        Some("init_image_id"),
        "both",
    );
    let form = Form::new().text("params", params.to_string()).text("extra", "x");
    assert_error(
        t.send(t.client.post(t.url("/api/jobs")).multipart(form)).await,
        bad,
        Some("extra"),
        "unknown part",
    );

    let (_, jobs) = t.get("/api/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    t.stop().await;
}

/// Sends one raw HTTP/1.1 request (no client-side path normalisation) and returns the status and body.
async fn raw_get(t: &TestServer, path: &str) -> (u16, String) {
    let addr = t.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_paths_are_404_and_never_leave_the_server_files() {
    let t = start().await;
    let not_found = StatusCode::NOT_FOUND;
    for path in [
        "/api/jobs/999",
        "/api/jobs/abc",
        "/api/jobs/-1",
        "/api/images/999",
        "/api/images/999/file",
        "/api/nope",
    ] {
        assert_error(t.get(path).await, not_found, None, path);
    }
    assert_error(
        t.post_json("/api/jobs/999/cancel", &json!({})).await,
        not_found,
        None,
        "cancel unknown",
    );
    let deleted = t.send(t.client.delete(t.url("/api/images/999"))).await;
    assert_error(deleted, not_found, None, "delete unknown");

    let bad = StatusCode::BAD_REQUEST;
    assert_error(
        t.get("/api/jobs?status=bogus").await,
        bad,
        Some("status"),
        "unknown status",
    );
    assert_error(t.get("/api/jobs?limit=0").await, bad, Some("limit"), "limit 0");
    assert_error(
        t.get("/api/images?per_page=1000").await,
        bad,
        Some("per_page"),
        "per_page 1000",
    );
    assert_error(t.get("/api/images?page=x").await, bad, Some("page"), "page x");

    let secret = t.data_dir.path().join("ember.sqlite");
    assert!(secret.exists());
    for path in [
        "/api/images/..%2F..%2Fetc%2Fpasswd/file",
        "/api/images/..%2Fember.sqlite/file",
        "/api/images/1%2F..%2F..%2Fember.sqlite/file",
        "/api/images/../../etc/passwd",
        "/assets/..%2F..%2F..%2FCargo.toml",
        "/assets/../../../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/../../etc/passwd",
    ] {
        let (status, response) = raw_get(&t, path).await;
        assert!((400..500).contains(&status), "{path}: {response}");
        assert!(
            !response.contains("root:") && !response.contains("SQLite format"),
            "{path} leaked a file"
        );
        assert!(
            !response.contains("[workspace]") && !response.contains("[package]"),
            "{path} leaked a file"
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_samplers_models_and_openapi() {
    let t = start().await;
    let (status, samplers) = t.get("/api/samplers").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = samplers["samplers"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(names.len(), 11);
    assert_eq!(names[0], "k_lms");
    assert!(names.contains(&"ddim") && names.contains(&"k_dpmpp_2_a") && names.contains(&"lcm"));

    let (_, models) = t.get("/api/models").await;
    assert_eq!(models["models"][0]["loaded"], true);
    assert!(
        models["models"][0]["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{models}"
    );

    let (status, doc) = t.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/cancel",
        "/api/events",
        "/api/images",
        "/api/images/{id}",
        "/api/images/{id}/file",
        "/api/samplers",
        "/api/models",
        "/api/health",
        "/api/session",
        "/api/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["components"]["schemas"]["Job"].is_object());
    let input = &doc["components"]["schemas"]["ParamsInput"]["properties"];
    for field in [
        "with_variations",
        "variation_amount",
        "seamless",
        "threshold",
        "perlin",
        "hires_fix",
        "exact_steps",
        "skip_normalize",
        "truncate_prompts",
        "downweight_mask",
        "prediction_type",
        "timestep_spacing",
    ] {
        assert!(input[field].is_object(), "ParamsInput.{field} is documented");
    }
    assert!(doc["components"]["schemas"]["Variation"].is_object());

    let page = t.client.get(t.url("/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert!(page.text().await.expect("html").contains("/assets/app.js"));
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("advanced.js", "text/javascript"),
        ("gallery.js", "text/javascript"),
        ("inpaint.js", "text/javascript"),
        ("style.css", "text/css"),
    ] {
        let asset = t
            .client
            .get(t.url(&format!("/assets/{file}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(asset.status(), StatusCode::OK, "{file}");
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(kind),
            "{file}"
        );
    }
    assert_eq!(t.get("/assets/nope.js").await.0, StatusCode::NOT_FOUND);
    t.stop().await;
}
