//! The small API points the web page relies on (issue 18): the download name of an image agrees with the page, a
//! `params` form part that is not JSON is named, ids that are not numbers are unknown ids (404), and the OpenAPI
//! document types `seed` as the u32 it is and marks `prompt` required.

mod common;

use common::{assert_error, start, submit_form};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_downloads_under_its_prompt_words_and_seed() {
    let t = start().await;
    let job = t
        .submit(
            json!({"prompt": "A (lighthouse)1.3 at dusk/../x, oil+ painting! café", "width": 64, "height": 64,
            "steps": 2, "seed": 4_000_000_000u32}),
        )
        .await;
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    let image_id = &done["image_id"];
    let response = t
        .client
        .get(t.url(&format!("/api/images/{image_id}/file")))
        .send()
        .await
        .expect("file");
    assert_eq!(response.status(), StatusCode::OK);
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .expect("ascii header")
        .to_string();
    // The first six words, no prompt syntax nor path separators; non-ASCII letters in `filename*` only.
    assert_eq!(
        disposition,
        "inline; filename=\"a-lighthouse-1-3-at-dusk-4000000000.png\"; \
         filename*=UTF-8''a-lighthouse-1-3-at-dusk-4000000000.png"
    );
    let job = t
        .submit(json!({"prompt": "café", "width": 64, "height": 64, "steps": 1, "seed": 7}))
        .await;
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    let response = t
        .client
        .get(t.url(&format!("/api/images/{}/file", done["image_id"])))
        .send()
        .await
        .expect("file");
    assert_eq!(
        response.headers()["content-disposition"]
            .to_str()
            .expect("ascii header"),
        "inline; filename=\"caf_-7.png\"; filename*=UTF-8''caf%C3%A9-7.png"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_params_part_that_is_not_json_is_named() {
    let t = start().await;
    let bad = StatusCode::BAD_REQUEST;
    let not_json = t
        .send(
            t.client
                .post(t.url("/api/jobs"))
                .multipart(reqwest::multipart::Form::new().text("params", "not json")),
        )
        .await;
    let message = assert_error(not_json, bad, Some("params"), "params not JSON");
    assert!(message.contains("'params' part is not valid JSON"), "{message}");
    let array = t
        .send(
            t.client
                .post(t.url("/api/jobs"))
                .multipart(reqwest::multipart::Form::new().text("params", "[1]")),
        )
        .await;
    assert_error(array, bad, Some("params"), "params an array");
    // A field's type error still names the field; a plain JSON body's syntax error is about the body.
    let typed = submit_form(&t, Some(json!({"prompt": "a", "steps": "ten"})), None).await;
    assert_error(typed, bad, Some("steps"), "steps as text");
    let body = t
        .send(
            t.client
                .post(t.url("/api/jobs"))
                .header("content-type", "application/json")
                .body("not json"),
        )
        .await;
    assert_error(body, bad, None, "a JSON body that is not JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_numbers_are_unknown_ids() {
    let t = start().await;
    for path in [
        "/api/jobs/abc",
        "/api/images/abc",
        "/api/images/abc/file",
        "/api/images/abc/mask",
        "/api/jobs/1.5",
    ] {
        let message = assert_error(t.get(path).await, StatusCode::NOT_FOUND, None, path);
        assert!(message.starts_with("there is no"), "{path}: {message}");
    }
    let cancel = t.post_json("/api/jobs/abc/cancel", &json!({})).await;
    assert_error(cancel, StatusCode::NOT_FOUND, None, "cancel abc");
    let delete = t.send(t.client.delete(t.url("/api/images/abc"))).await;
    assert_error(delete, StatusCode::NOT_FOUND, None, "delete abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_types_seed_as_u32_and_requires_prompt() {
    let t = start().await;
    let (status, doc) = t.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    let input = &schemas["ParamsInput"];
    let required: Vec<&str> = input["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(required, ["prompt"], "{input}");
    for (schema, seed) in [
        ("ParamsInput", &input["properties"]["seed"]),
        ("Params", &schemas["Params"]["properties"]["seed"]),
        ("Image", &schemas["Image"]["properties"]["seed"]),
        ("Variation", &schemas["Variation"]["properties"]["seed"]),
    ] {
        assert_eq!(seed["format"], "int64", "{schema}: {seed}");
        assert_eq!(seed["minimum"], 0, "{schema}: {seed}");
        assert_eq!(seed["maximum"], u32::MAX, "{schema}: {seed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gallery_searches_prompts() {
    let t = start().await;
    for prompt in ["Red fox in snow", "a blue whale", "red_% barn"] {
        let job = t
            .submit(json!({"prompt": prompt, "width": 64, "height": 64, "steps": 1}))
            .await;
        let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
        assert_eq!(done["status"], "done", "{done}");
    }
    let prompts = |page: &Value| -> Vec<String> {
        page["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["params"]["prompt"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let (status, red) = t.get("/api/images?q=RED").await;
    assert_eq!(status, StatusCode::OK, "{red}");
    assert_eq!(prompts(&red), ["red_% barn", "Red fox in snow"]);
    assert_eq!(red["total"], 2);
    // `%` and `_` are plain characters, not patterns.
    let (_, literal) = t.get("/api/images?q=_%25").await;
    assert_eq!(prompts(&literal), ["red_% barn"]);
    let (_, none) = t.get("/api/images?q=zebra").await;
    assert_eq!((prompts(&none).len(), none["total"].as_i64()), (0, Some(0)));
    let (_, all) = t.get("/api/images?q=").await;
    assert_eq!(all["total"], 3);
    let long = "x".repeat(201);
    assert_error(
        t.get(&format!("/api/images?q={long}")).await,
        StatusCode::BAD_REQUEST,
        Some("q"),
        "long q",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_img2img_image_keeps_its_uploaded_init_image_until_it_is_deleted() {
    let t = start().await;
    let upload = std::fs::read(common::fixture("init-64x96.png")).expect("fixture");
    let (status, job) = submit_form(
        &t,
        Some(json!({"prompt": "kept", "steps": 2, "strength": 0.5})),
        Some(upload.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    let image_id = done["image_id"].as_i64().expect("image id");
    let response = t
        .client
        .get(t.url(&format!("/api/images/{image_id}/init")))
        .send()
        .await
        .expect("init");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap_or("")
            .contains("filename*=UTF-8''init.png"),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.bytes().await.expect("bytes").as_ref(), upload.as_slice());

    // A txt2img image has none; a deleted image's upload goes with it.
    let txt = t
        .submit(json!({"prompt": "no init", "width": 64, "height": 64, "steps": 1}))
        .await;
    let txt = t.wait_finished(txt["id"].as_i64().expect("id")).await;
    let message = assert_error(
        t.get(&format!("/api/images/{}/init", txt["image_id"])).await,
        StatusCode::NOT_FOUND,
        None,
        "txt2img",
    );
    assert!(message.contains("not made from an uploaded init image"), "{message}");
    let deleted = t.send(t.client.delete(t.url(&format!("/api/images/{image_id}")))).await;
    assert_eq!(deleted.0, StatusCode::NO_CONTENT);
    assert_error(
        t.get(&format!("/api/images/{image_id}/init")).await,
        StatusCode::NOT_FOUND,
        None,
        "deleted",
    );
    assert_error(t.get("/api/images/abc/init").await, StatusCode::NOT_FOUND, None, "abc");
}
