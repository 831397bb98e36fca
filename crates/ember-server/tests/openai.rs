//! OpenAI's Images API on a real server with the tiny model: generations as `b64_json` and `url`, edits with an
//! OpenAI-style mask (transparent = edit), `/v1/models`, and errors in OpenAI's shape naming the parameter.

mod common;

use base64::prelude::{Engine, BASE64_STANDARD};
use common::{fixture, png_bytes, png_text, start, start_configured, TestServer};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// An error in OpenAI's shape: its `param` and `message`.
fn openai_error(status: StatusCode, want: StatusCode, body: &Value) -> (Option<String>, String) {
    assert_eq!(status, want, "{body}");
    let error = &body["error"];
    assert!(error["type"].is_string(), "{body}");
    (
        error["param"].as_str().map(str::to_string),
        error["message"].as_str().expect("message").to_string(),
    )
}

#[tokio::test]
async fn generations_answer_base64_pngs_or_gallery_urls() {
    let t = start().await;
    let (status, answer) = t
        .post_json(
            "/v1/images/generations",
            &json!({"prompt": "fire", "n": 2, "size": "64x64", "model": "tiny-sd", "seed": 7, "steps": 2,
                    "quality": "hd", "style": "vivid", "user": "me"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["created"].as_u64() > Some(1_600_000_000));
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for (item, seed) in data.iter().zip(7..) {
        assert_eq!(item["revised_prompt"], Value::Null);
        let png = BASE64_STANDARD
            .decode(item["b64_json"].as_str().expect("b64_json"))
            .expect("base64");
        let image = image::load_from_memory(&png).expect("PNG");
        assert_eq!((image.width(), image.height()), (64, 64));
        let parameters = png_text(&png)
            .into_iter()
            .find(|(k, _)| k == "parameters")
            .expect("metadata")
            .1;
        assert!(parameters.contains(&format!("Seed: {seed},")), "{parameters}");
    }

    // url: a gallery file on this server, absolute. OpenAI's own model names run on the current model.
    let (status, answer) = t
        .post_json(
            "/v1/images/generations",
            &json!({"prompt": "ice", "size": "64x64", "response_format": "url", "model": "dall-e-3", "steps": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let url = answer["data"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&t.base) && url.contains("/api/images/"), "{url}");
    let response = t.client.get(url).send().await.expect("fetch");
    assert_eq!(response.status(), StatusCode::OK);
    let png = response.bytes().await.expect("bytes");
    assert_eq!(image::load_from_memory(&png).expect("PNG").width(), 64);
    let (_, gallery) = t.get("/api/images").await;
    assert_eq!(gallery["total"], 3, "every image is in the gallery");
    t.stop().await;
}

#[tokio::test]
async fn edits_repaint_the_transparent_area_of_the_mask() {
    let t = start().await;
    let init_bytes = std::fs::read(fixture("init-64x96.png")).expect("fixture");
    let init = image::load_from_memory(&init_bytes).expect("init").to_rgb8();
    let hole = |x: u32, y: u32| (16..48).contains(&x) && (24..72).contains(&y);
    let mask = image::RgbaImage::from_fn(64, 96, |x, y| image::Rgba([0, 0, 0, if hole(x, y) { 0 } else { 255 }]));
    let form = Form::new()
        .part(
            "image",
            Part::bytes(init_bytes.clone())
                .file_name("image.png")
                .mime_str("image/png")
                .expect("mime"),
        )
        .part(
            "mask",
            Part::bytes(png_bytes(&image::DynamicImage::ImageRgba8(mask))).file_name("mask.png"),
        )
        .text("prompt", "fire")
        .text("n", "1")
        .text("response_format", "b64_json")
        .text("steps", "4")
        .text("seed", "3");
    let (status, answer) = t.send(t.client.post(t.url("/v1/images/edits")).multipart(form)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let png = BASE64_STANDARD
        .decode(answer["data"][0]["b64_json"].as_str().expect("b64"))
        .expect("base64");
    let out = image::load_from_memory(&png).expect("PNG").to_rgb8();
    assert_eq!(out.dimensions(), (64, 96));
    let (mut kept, mut changed) = (true, 0);
    for (x, y, p) in out.enumerate_pixels() {
        if hole(x, y) {
            changed += usize::from(p != init.get_pixel(x, y));
        } else {
            kept &= p == init.get_pixel(x, y);
        }
    }
    assert!(kept, "the opaque part of the mask is kept");
    assert!(changed > 100, "the transparent hole is repainted ({changed})");
    let (_, jobs) = t.get("/api/jobs").await;
    let job = &jobs["jobs"][0];
    assert_eq!(
        (job["mode"].as_str(), job["steps_total"].as_i64()),
        (Some("img2img"), Some(3)),
        "strength 0.75"
    );
    assert!(job["mask_url"].is_string());

    // `image[]` (the newer clients' name), a size to fit into and the `strength` extension.
    let form = Form::new()
        .part("image[]", Part::bytes(init_bytes.clone()).file_name("a.png"))
        .text("prompt", "ice")
        .text("size", "32x32")
        .text("strength", "0.5")
        .text("steps", "2");
    let (status, answer) = t.send(t.client.post(t.url("/v1/images/edits")).multipart(form)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let png = BASE64_STANDARD
        .decode(answer["data"][0]["b64_json"].as_str().expect("b64"))
        .expect("base64");
    let out = image::load_from_memory(&png).expect("PNG");
    assert_eq!((out.width(), out.height()), (16, 32), "fitted into 32×32, aspect kept");

    // A mask without transparency marks nothing to edit.
    let opaque = image::RgbImage::from_pixel(64, 96, image::Rgb([255, 255, 255]));
    let form = Form::new()
        .part("image", Part::bytes(init_bytes.clone()).file_name("image.png"))
        .part(
            "mask",
            Part::bytes(png_bytes(&image::DynamicImage::ImageRgb8(opaque))).file_name("m.png"),
        )
        .text("prompt", "fire");
    let (status, error) = t.send(t.client.post(t.url("/v1/images/edits")).multipart(form)).await;
    let (param, message) = openai_error(status, StatusCode::BAD_REQUEST, &error);
    assert_eq!(param.as_deref(), Some("mask"));
    assert!(message.contains("transparent"), "{message}");

    // Not an image.
    let form = Form::new()
        .part("image", Part::bytes(b"hello".to_vec()).file_name("image.png"))
        .text("prompt", "fire");
    let (status, error) = t.send(t.client.post(t.url("/v1/images/edits")).multipart(form)).await;
    let (param, message) = openai_error(status, StatusCode::BAD_REQUEST, &error);
    assert_eq!(param.as_deref(), Some("image"), "{message}");
    assert!(message.starts_with("image: "), "{message}");
    let form = Form::new().text("prompt", "fire");
    let (status, error) = t.send(t.client.post(t.url("/v1/images/edits")).multipart(form)).await;
    assert_eq!(
        openai_error(status, StatusCode::BAD_REQUEST, &error).0.as_deref(),
        Some("image")
    );
    t.stop().await;
}

async fn generation_error(t: &TestServer, body: Value, want: StatusCode) -> (Option<String>, String, Value) {
    let (status, error) = t.post_json("/v1/images/generations", &body).await;
    let (param, message) = openai_error(status, want, &error);
    (param, message, error)
}

#[tokio::test]
async fn models_and_errors_in_openai_shapes() {
    let t = start().await;
    let (status, list) = t.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "tiny-sd");
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "ember");
    assert!(list["data"][0]["created"].is_u64());

    let (param, message, error) = generation_error(
        &t,
        json!({"prompt": "a", "model": "no-such-model"}),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(param.as_deref(), Some("model"));
    assert_eq!(error["error"]["code"], "model_not_found");
    assert!(message.contains("no-such-model"), "{message}");
    let (param, message, error) =
        generation_error(&t, json!({"prompt": "a", "size": "100x100"}), StatusCode::BAD_REQUEST).await;
    assert_eq!(param.as_deref(), Some("size"));
    assert!(message.contains("multiples of 8"), "{message}");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    for (body, want) in [
        (json!({"prompt": "a", "n": 11}), "n"),
        (json!({"prompt": "a", "n": 0}), "n"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"n": 1}), "prompt"),
        (json!({"prompt": "a", "response_format": "jpeg"}), "response_format"),
        (
            json!({"prompt": "a", "size": "64x64", "steps": 1, "cfg_scale": 500}),
            "cfg_scale",
        ),
    ] {
        let (param, _, error) = generation_error(&t, body, StatusCode::BAD_REQUEST).await;
        assert_eq!(param.as_deref(), Some(want), "{error}");
    }
    let (status, error) = t.get("/v1/nothing").await;
    assert_eq!(openai_error(status, StatusCode::NOT_FOUND, &error).0, None);
    assert_eq!(t.get("/api/jobs").await.1["jobs"], json!([]), "nothing was queued");
    t.stop().await;

    // With a token: OpenAI's 401, and the client's Bearer works.
    let t = start_configured(tempfile::tempdir().expect("tempdir"), |c| {
        c.token = Some("s3cret".into())
    })
    .await;
    let (status, error) = t.send(t.client.get(t.url("/v1/models")).bearer_auth("sk-wrong")).await;
    openai_error(status, StatusCode::UNAUTHORIZED, &error);
    assert_eq!(error["error"]["code"], "invalid_api_key");
    let (status, _) = t.send(t.client.get(t.url("/v1/models")).bearer_auth("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    t.stop().await;
}
