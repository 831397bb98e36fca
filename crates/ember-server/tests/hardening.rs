//! The hardening issue's attacks, as regression tests: cross-site and rebinding requests, an access token,
//! jobs that must be refused at submit (bad prompts, absurd numbers, work over the device's budget), uploads
//! refused from their header, and a data folder removed under a running server.

mod common;

use common::{assert_error, error_of, png_declaring, start, start_configured, submit_form, TestServer};
use reqwest::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

async fn job_count(t: &TestServer) -> usize {
    let (_, jobs) = t.get("/api/jobs").await;
    jobs["jobs"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_submissions_and_foreign_hosts_are_refused() {
    let t = start().await;
    let params = json!({"prompt": "x", "steps": 1, "width": 64, "height": 64});
    let post = || t.client.post(t.url("/api/jobs"));

    // `curl -H 'Origin: http://evil' -F 'params={"prompt":"x"}'`: a form post from another site.
    let form = reqwest::multipart::Form::new().text("params", params.to_string());
    let (status, body) = t.send(post().header(ORIGIN, "http://evil").multipart(form)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(error_of(&body).1.contains("cross-site"), "{body}");
    // A `no-cors` fetch: the browser says where it comes from.
    let (status, _) = t
        .send(post().header("sec-fetch-site", "cross-site").json(&params))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = t.send(post().header(ORIGIN, "null").json(&params)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // DNS rebinding: the page's own name resolving to 127.0.0.1.
    let (status, body) = t
        .send(t.client.get(t.url("/api/jobs")).header(HOST, "evil.example:9090"))
        .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    let (status, _) = t.send(post().header(HOST, "evil.example").json(&params)).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    // Cancels and deletions are state changes too.
    let (status, _) = t
        .send(t.client.post(t.url("/api/jobs/1/cancel")).header(ORIGIN, "http://evil"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(job_count(&t).await, 0, "nothing was queued");

    // The page itself (same origin) and plain clients (no Origin) still work.
    let own_origin = t.base.clone();
    let (status, body) = t.send(post().header(ORIGIN, own_origin).json(&params)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    t.submit(params).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_guards_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_configured(dir, |c| c.token = Some("correct horse".into())).await;
    let (status, body) = t.get("/api/jobs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_of(&body).1.contains("token"), "{body}");
    let (status, _) = t.post_json("/api/jobs", &json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let bearer = |path: &str, token: &str| t.client.get(t.url(path)).bearer_auth(token);
    assert_eq!(t.send(bearer("/api/jobs", "wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(t.send(bearer("/api/jobs", "correct horse")).await.0, StatusCode::OK);
    // The page and the health check need none: the page asks for the token.
    let page = t.client.get(t.url("/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(t.get("/api/health").await.0, StatusCode::OK);

    // The page's sign-in: a cookie other sites' requests never carry.
    let (status, _) = t.post_json("/api/session", &json!({"token": "nope"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = t.post_json("/api/session", &json!({"tok": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the API's error shape: {body}");
    assert_eq!(error_of(&body).0.as_deref(), Some("token"));
    let response = t
        .client
        .post(t.url("/api/session"))
        .json(&json!({"token": "correct horse"}))
        .send()
        .await
        .expect("session");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cookie = response.headers()[SET_COOKIE].to_str().expect("ascii").to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_string();
    let (status, _) = t.send(t.client.get(t.url("/api/jobs")).header(COOKIE, pair)).await;
    assert_eq!(status, StatusCode::OK);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_would_fail_are_refused_at_submit_naming_the_field() {
    let t = start().await;
    let bad = StatusCode::BAD_REQUEST;
    let long_prompt = "a photo of a red fox in the snow, ".repeat(250);
    let cases = [
        (json!({"prompt": "(a, b).blend(1"}), "prompt", "a broken .blend("),
        (
            json!({"prompt": "(a, b).blend(1, x)"}),
            "prompt",
            "a blend weight that is no number",
        ),
        (
            json!({"prompt": "x", "negative_prompt": "(a, b).blend(1"}),
            "negative_prompt",
            "a broken negative blend",
        ),
        (
            json!({"prompt": long_prompt}),
            "prompt",
            "a prompt over the chunk limit",
        ),
        (
            json!({"prompt": format!("{}x", "(".repeat(150))}),
            "prompt",
            "150 nested parentheses",
        ),
        (
            json!({"prompt": "x", "cfg_scale": 1e308}),
            "cfg_scale",
            "cfg_scale 1e308",
        ),
        (json!({"prompt": "x", "cfg_scale": -5}), "cfg_scale", "cfg_scale -5"),
        (
            json!({"prompt": "x", "with_variations": (0..100).map(|s| json!({"seed": s, "weight": 0.1})).collect::<Vec<_>>()}),
            "with_variations",
            "100 variations",
        ),
    ];
    for (params, field, what) in cases {
        let message = assert_error(t.post_json("/api/jobs", &params).await, bad, Some(field), what);
        assert!(
            !message.contains("--truncate") || message.contains("truncate_prompts"),
            "{what}: {message}"
        );
    }
    // The chunk limit names the API's field, not only the CLI's flag.
    let message = assert_error(
        t.post_json("/api/jobs", &json!({"prompt": long_prompt})).await,
        bad,
        Some("prompt"),
        "long prompt",
    );
    assert!(message.contains("truncate_prompts"), "{message}");
    // A 100 KB prompt is refused without being echoed whole.
    let huge = "x".repeat(100_000);
    let (status, body) = t.post_json("/api/jobs", &json!({"prompt": huge})).await;
    assert_eq!(status, bad);
    assert!(
        body.to_string().len() < 2_000,
        "{} bytes of error",
        body.to_string().len()
    );
    // 40 unclosed parentheses took hours with the backtracking parser: now a valid (literal) prompt.
    let unclosed = json!({"prompt": format!("{}x", "(".repeat(40)), "steps": 1, "width": 64, "height": 64});
    let job = t.submit(unclosed).await;
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(job_count(&t).await, 1, "only the valid job was queued");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_over_the_devices_limits_is_refused_at_submit() {
    let t = start().await;
    let bad = StatusCode::BAD_REQUEST;
    // 4096² ran for over a minute per step on a CPU: over the CPU's 2-megapixel cap.
    let message = assert_error(
        t.post_json(
            "/api/jobs",
            &json!({"prompt": "x", "width": 4096, "height": 4096, "steps": 1}),
        )
        .await,
        bad,
        Some("width"),
        "4096²",
    );
    assert!(
        message.contains("16.00 megapixels") && message.contains("limit of 2.00"),
        "{message}"
    );
    // Within the size cap but over the budget of pixels × steps (1024² × 1000 steps).
    let message = assert_error(
        t.post_json(
            "/api/jobs",
            &json!({"prompt": "x", "width": 1024, "height": 1024, "steps": 1000}),
        )
        .await,
        bad,
        Some("steps"),
        "1024² × 1000 steps",
    );
    assert!(
        message.contains("1000.0 megapixel-steps") && message.contains("200.0"),
        "{message}"
    );
    // An upload is sized from its header: 8000² without --fit runs at 8000², over the side limit, and is refused
    // before a pixel is decoded (the file declares 8000² but holds one pixel).
    let params = json!({"prompt": "x", "strength": 0.5, "steps": 2});
    let message = assert_error(
        submit_form(&t, Some(params), Some(png_declaring(8000, 8000))).await,
        bad,
        Some("init_image"),
        "8000² upload",
    );
    assert!(message.contains("4096"), "{message}");
    // Fitted into 2048×1024 it would be within the sides but over the 2-megapixel cap.
    let fitted = json!({"prompt": "x", "strength": 0.5, "steps": 2, "fit": true, "width": 2048, "height": 2048});
    let message = assert_error(
        submit_form(&t, Some(fitted), Some(png_declaring(8000, 8000))).await,
        bad,
        Some("init_image"),
        "8000² fitted into 2048²",
    );
    assert!(message.contains("megapixels"), "{message}");
    assert_eq!(job_count(&t).await, 0);
    t.stop().await;

    // The budget is the server's to set.
    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_configured(dir, |c| c.work_budget = Some(0.01)).await;
    let message = assert_error(
        t.post_json(
            "/api/jobs",
            &json!({"prompt": "x", "width": 64, "height": 64, "steps": 5}),
        )
        .await,
        bad,
        Some("steps"),
        "budget 0.01",
    );
    assert!(message.contains("0.0 (the server's --work-budget)"), "{message}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_data_folder_refuses_jobs_and_shows_in_health() {
    let t = start().await;
    let (status, health) = t.get("/api/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{health}"
    );
    std::fs::remove_dir_all(t.data_dir.path()).expect("remove the data folder");

    let (status, body) = t.post_json("/api/jobs", &json!({"prompt": "x", "steps": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = error_of(&body).1;
    assert!(message.contains("restart"), "{message}");
    let (status, health) = t.get("/api/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "unavailable");
    let absolute = t.data_dir.path().display().to_string();
    assert!(!health.to_string().contains(&absolute), "no server paths: {health}");
    t.stop().await;
}
