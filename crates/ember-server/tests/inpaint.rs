//! Inpainting and outpainting through the HTTP API: an uploaded `init_mask` is checked like an init image, stored
//! with the job (surviving a restart), written next to the image, served at `/api/images/{id}/mask` and reused by
//! `init_mask_id`; `outcrop` grows the canvas; bad masks and outcrops are refused at submit, naming the field.

mod common;

use common::{assert_error, fixture, png_declaring, start, TestServer};
use image::{GrayImage, Luma, RgbImage};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The init image's size (tests/fixtures/init-64x96.png).
const W: u32 = 64;
const H: u32 = 96;

fn png(image: &GrayImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encode");
    bytes
}

/// White (repaint) inside `x0..x1 × y0..y1`, black elsewhere.
fn rect_mask(w: u32, h: u32, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            255
        } else {
            0
        }])
    })
}

fn init_bytes() -> Vec<u8> {
    std::fs::read(fixture("init-64x96.png")).expect("fixture")
}

/// Posts a multipart job: `params`, and optionally the init image and the mask.
async fn submit_parts(
    t: &TestServer,
    params: &Value,
    init: Option<Vec<u8>>,
    mask: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut form = Form::new().text("params", params.to_string());
    if let Some(bytes) = init {
        form = form.part("init_image", Part::bytes(bytes).file_name("init.png"));
    }
    if let Some(bytes) = mask {
        form = form.part("init_mask", Part::bytes(bytes).file_name("mask.png"));
    }
    t.send(t.client.post(t.url("/api/jobs")).multipart(form)).await
}

async fn get_bytes(t: &TestServer, path: &str) -> (StatusCode, Vec<u8>) {
    let response = t.client.get(t.url(path)).send().await.expect("request");
    let status = response.status();
    (status, response.bytes().await.expect("body").to_vec())
}

/// The finished job's image (JSON) and its pixels.
async fn image_of(t: &TestServer, job_id: i64) -> (Value, RgbImage) {
    let job = t.wait_finished(job_id).await;
    assert_eq!(job["status"], "done", "{job}");
    let image_id = job["image_id"].as_i64().expect("image id");
    let (status, image) = t.get(&format!("/api/images/{image_id}")).await;
    assert_eq!(status, StatusCode::OK, "{image}");
    assert_eq!(job["mask_url"], image["mask_url"], "the job names its image's mask");
    let (status, bytes) = get_bytes(t, &format!("/api/images/{image_id}/file")).await;
    assert_eq!(status, StatusCode::OK);
    let pixels = image::load_from_memory(&bytes).expect("PNG").to_rgb8();
    (image, pixels)
}

fn images_in(t: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(t.data_dir.path().join("images"))
        .expect("images dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_mask_is_stored_served_pasted_back_and_reused() {
    let t = start().await;
    let init = init_bytes();
    let init_rgb = image::load_from_memory(&init).expect("fixture").to_rgb8();
    let mask = rect_mask(W, H, (8, 40), (16, 56));
    let params = json!({"prompt": "fire", "steps": 4, "strength": 1.0, "seed": 7, "sampler": "k_euler"});
    let (status, job) = submit_parts(&t, &params, Some(init.clone()), Some(png(&mask))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["mode"], "img2img");
    let resolved = &job["params"];
    assert_eq!(
        (
            &resolved["invert_mask"],
            &resolved["mask_blur"],
            &resolved["paste_back"],
            &resolved["init_mask_id"]
        ),
        (&json!(false), &json!(0), &json!(true), &Value::Null),
        "inpainting defaults: {resolved}"
    );
    assert_eq!(
        resolved["outcrop"],
        json!({"top": 0, "bottom": 0, "left": 0, "right": 0})
    );
    assert_eq!(job["mask_url"], Value::Null, "no image yet");

    let (image, pixels) = image_of(&t, job["id"].as_i64().expect("id")).await;
    let image_id = image["id"].as_i64().expect("id");
    assert_eq!(image["mask_url"], format!("/api/images/{image_id}/mask"));
    assert_eq!(pixels.dimensions(), (W, H));
    // Paste-back: outside the (sharp) mask the pixels are the init image's, exactly.
    let mut changed_inside = 0;
    for (x, y, p) in pixels.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(p, init_rgb.get_pixel(x, y), "pixel ({x}, {y}) outside the mask");
        } else if p != init_rgb.get_pixel(x, y) {
            changed_inside += 1;
        }
    }
    assert!(changed_inside > 0, "the masked area was repainted");

    // The stored mask: the upload, binarised, at the init image's size, next to the image.
    let (status, stored) = get_bytes(&t, &format!("/api/images/{image_id}/mask")).await;
    assert_eq!(status, StatusCode::OK);
    let stored = image::load_from_memory(&stored).expect("PNG").to_luma8();
    assert_eq!(stored, mask, "the stored mask is the uploaded one");
    let files = images_in(&t);
    assert_eq!(files.len(), 2, "{files:?}");
    let mask_file = files.iter().find(|f| f.ends_with(".mask.png")).expect("a mask file");
    let dream = image["dream"].as_str().expect("dream");
    assert!(
        dream.contains(&format!("-M {mask_file}")),
        "the Dream command names the mask: {dream}"
    );

    // Resubmitted by id (a page's "use all"): the same mask, inverted, feathered, from the gallery image.
    let reuse = json!({"prompt": "fire", "steps": 4, "strength": 1.0, "seed": 7, "sampler": "k_euler",
                       "init_image_id": image_id, "init_mask_id": image_id, "invert_mask": true, "mask_blur": 4});
    let job = t.submit(reuse).await;
    assert_eq!(
        (&job["params"]["init_mask_id"], &job["params"]["mask_blur"]),
        (&json!(image_id), &json!(4))
    );
    let (second, second_pixels) = image_of(&t, job["id"].as_i64().expect("id")).await;
    let second_id = second["id"].as_i64().expect("id");
    let (status, reused) = get_bytes(&t, &format!("/api/images/{second_id}/mask")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        image::load_from_memory(&reused).expect("PNG").to_luma8(),
        mask,
        "the mask is stored as given, before invert_mask"
    );
    // Inverted: the rectangle is kept this time.
    for (x, y) in [(10, 20), (38, 54), (24, 36)] {
        assert_eq!(
            second_pixels.get_pixel(x, y),
            pixels.get_pixel(x, y),
            "({x}, {y}) is kept"
        );
    }

    // A gallery init image with an uploaded mask (the page's painted mask on an init_image_id).
    let gallery_init = json!({"prompt": "fire", "steps": 2, "strength": 1.0, "seed": 8, "init_image_id": image_id});
    let (status, job) = submit_parts(&t, &gallery_init, None, Some(png(&mask))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let (third, _) = image_of(&t, job["id"].as_i64().expect("id")).await;
    assert!(third["mask_url"].is_string(), "{third}");

    // A mask and an image without one; deleting an image removes its mask file too.
    let plain = t
        .submit(json!({"prompt": "fire", "steps": 1, "width": 64, "height": 64, "seed": 1}))
        .await;
    let (plain, _) = image_of(&t, plain["id"].as_i64().expect("id")).await;
    assert_eq!(plain["mask_url"], Value::Null);
    let plain_id = plain["id"].as_i64().expect("id");
    let (status, body) = t.get(&format!("/api/images/{plain_id}/mask")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let no_mask = json!({"prompt": "a", "init_image_id": image_id, "init_mask_id": plain_id});
    let message = assert_error(
        t.post_json("/api/jobs", &no_mask).await,
        StatusCode::BAD_REQUEST,
        Some("init_mask_id"),
        "an image without a mask",
    );
    assert!(message.contains("no mask"), "{message}");

    let before = images_in(&t).len();
    let response = t
        .client
        .delete(t.url(&format!("/api/images/{image_id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(images_in(&t).len(), before - 2, "the image and its mask are removed");
    assert!(!images_in(&t).contains(mask_file));
    assert_eq!(
        t.get(&format!("/api/images/{image_id}/mask")).await.0,
        StatusCode::NOT_FOUND
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcrop_grows_the_canvas_and_keeps_the_image_where_it_was() {
    let t = start().await;
    let init = init_bytes();
    let init_rgb = image::load_from_memory(&init).expect("fixture").to_rgb8();
    let params = json!({"prompt": "fire", "steps": 3, "strength": 1.0, "seed": 3, "sampler": "k_euler",
                        "outcrop": {"left": 16, "top": 8}, "mask_blur": 2});
    let (status, job) = submit_parts(&t, &params, Some(init), None).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(
        job["params"]["outcrop"],
        json!({"top": 8, "bottom": 0, "left": 16, "right": 0})
    );
    let (image, pixels) = image_of(&t, job["id"].as_i64().expect("id")).await;
    assert_eq!(pixels.dimensions(), (W + 16, H + 8), "the canvas grew left and up");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(80), Some(104))
    );
    assert_eq!(
        image["mask_url"],
        Value::Null,
        "only the outcrop made a mask: nothing to store"
    );
    for (x, y, p) in init_rgb.enumerate_pixels() {
        assert_eq!(
            pixels.get_pixel(x + 16, y + 8),
            p,
            "init pixel ({x}, {y}) kept in place"
        );
    }
    let dream = image["dream"].as_str().expect("dream");
    assert!(dream.contains("top 8") && dream.contains("left 16"), "{dream}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_masks_and_outcrops_are_refused_naming_the_field() {
    let t = start().await;
    let init = init_bytes();
    let mask = png(&rect_mask(W, H, (8, 40), (16, 56)));
    let params = json!({"prompt": "a", "steps": 2, "strength": 0.5});
    let bad = StatusCode::BAD_REQUEST;

    let with = |extra: Value| {
        let mut p = params.clone();
        for (k, v) in extra.as_object().expect("object") {
            p[k] = v.clone();
        }
        p
    };
    // (params, init image, mask, the field named, what the case is)
    type Case = (Value, Option<Vec<u8>>, Option<Vec<u8>>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (
            params.clone(),
            Some(init.clone()),
            Some(b"not an image".to_vec()),
            "init_mask",
            "not an image",
        ),
        (
            params.clone(),
            Some(init.clone()),
            Some(Vec::new()),
            "init_mask",
            "an empty mask",
        ),
        (
            params.clone(),
            Some(init.clone()),
            Some(png_declaring(100_000, 100_000)),
            "init_mask",
            "a huge mask",
        ),
        (
            params.clone(),
            None,
            Some(mask.clone()),
            "init_mask",
            "a mask without an init image",
        ),
        (
            params.clone(),
            Some(init.clone()),
            Some(png(&GrayImage::new(W, H))),
            "init_mask",
            "an all-black mask",
        ),
        (
            with(json!({"invert_mask": true})),
            Some(init.clone()),
            Some(png(&GrayImage::from_pixel(W, H, Luma([255])))),
            "init_mask",
            "an all-white mask, inverted",
        ),
        (
            with(json!({"init_mask_id": 1})),
            Some(init.clone()),
            Some(mask.clone()),
            "init_mask_id",
            "both a mask upload and an id",
        ),
        (
            with(json!({"init_mask_id": 1})),
            None,
            None,
            "init_mask_id",
            "a mask id without an init image",
        ),
        (
            with(json!({"init_mask_id": 999})),
            Some(init.clone()),
            None,
            "init_mask_id",
            "an unknown mask id",
        ),
        (
            with(json!({"outcrop": {"left": 12}})),
            Some(init.clone()),
            None,
            "outcrop",
            "outcrop not × 8",
        ),
        (
            with(json!({"outcrop": {"top": 4096}})),
            Some(init.clone()),
            None,
            "outcrop",
            "outcrop past 4096",
        ),
        (
            with(json!({"outcrop": {"left": 4040}})),
            Some(init.clone()),
            None,
            "outcrop",
            "64 + 4040 > 4096",
        ),
        (
            with(json!({"outcrop": {"top": -8}})),
            Some(init.clone()),
            None,
            "outcrop.top",
            "a negative side",
        ),
        (
            with(json!({"outcrop": {"up": 8}})),
            Some(init.clone()),
            None,
            "outcrop",
            "an unknown side",
        ),
        (
            with(json!({"outcrop": {"top": 64}})),
            None,
            None,
            "outcrop",
            "outcrop without an init image",
        ),
        (
            with(json!({"mask_blur": 1000})),
            Some(init.clone()),
            Some(mask.clone()),
            "mask_blur",
            "blur 1000",
        ),
        (
            with(json!({"mask_blur": -1})),
            Some(init.clone()),
            Some(mask.clone()),
            "mask_blur",
            "blur -1",
        ),
        (
            with(json!({"invert_mask": true})),
            Some(init.clone()),
            None,
            "invert_mask",
            "nothing to invert (an opaque init image)",
        ),
        (
            with(json!({"paste_back": "yes"})),
            Some(init.clone()),
            None,
            "paste_back",
            "not a boolean",
        ),
    ];
    for (params, init, mask, field, what) in cases {
        let got = submit_parts(&t, &params, init, mask).await;
        let (status, body) = &got;
        assert_eq!(*status, bad, "{what}: {body}");
        let (got_field, message) = common::error_of(body);
        assert!(
            got_field.as_deref() == Some(field) || got_field.as_deref().is_some_and(|f| f.starts_with(field)),
            "{what}: field {got_field:?}, expected {field}: {message}"
        );
    }

    // Over 20 MB: 413, naming the part.
    let mut oversize = mask.clone();
    oversize.resize(20_000_001, 0);
    assert_error(
        submit_parts(&t, &params, Some(init.clone()), Some(oversize)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("init_mask"),
        "a mask over 20 MB",
    );
    // Two masks.
    let form = Form::new()
        .text("params", params.to_string())
        .part("init_image", Part::bytes(init.clone()).file_name("i.png"))
        .part("init_mask", Part::bytes(mask.clone()).file_name("m.png"))
        .part("init_mask", Part::bytes(mask.clone()).file_name("m.png"));
    assert_error(
        t.send(t.client.post(t.url("/api/jobs")).multipart(form)).await,
        bad,
        Some("init_mask"),
        "two masks",
    );

    let (_, jobs) = t.get("/api/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was queued");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_keeps_its_mask_across_a_restart() {
    let t = start().await;
    // The worker is busy with this one while the masked job waits in the queue.
    let slow = t
        .submit(json!({"prompt": "slow", "steps": 1000, "width": 128, "height": 128, "seed": 1}))
        .await;
    t.wait_job(slow["id"].as_i64().expect("id"), |j| j["status"] == "running")
        .await;
    let mask = rect_mask(W, H, (0, 32), (0, 48));
    let params = json!({"prompt": "fire", "steps": 2, "strength": 1.0, "seed": 5, "sampler": "k_euler"});
    let (status, job) = submit_parts(&t, &params, Some(init_bytes()), Some(png(&mask))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_i64().expect("id");
    let data_dir = t.stop_keeping_data().await;

    let t = common::start_in(data_dir).await;
    let (image, _) = image_of(&t, id).await;
    let image_id = image["id"].as_i64().expect("id");
    let (status, stored) = get_bytes(&t, &format!("/api/images/{image_id}/mask")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(image::load_from_memory(&stored).expect("PNG").to_luma8(), mask);
    // The upload is dropped from the queue once the job is done; the mask file stays with the image.
    let conn = rusqlite::Connection::open(t.data_dir.path().join("ember.sqlite")).expect("open");
    let (blob, name): (Option<Vec<u8>>, Option<String>) = conn
        .query_row("SELECT init_mask, init_mask_name FROM jobs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("row");
    assert_eq!((blob, name.as_deref()), (None, Some("mask.png")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_masks() {
    let t = start().await;
    let (_, doc) = t.get("/api/openapi.json").await;
    assert!(doc["paths"]["/api/images/{id}/mask"]["get"].is_object());
    let input = &doc["components"]["schemas"]["ParamsInput"]["properties"];
    for field in ["init_mask_id", "invert_mask", "mask_blur", "outcrop", "paste_back"] {
        assert!(input[field].is_object(), "ParamsInput.{field}");
    }
    assert!(doc["components"]["schemas"]["JobUpload"]["properties"]["init_mask"].is_object());
    assert!(doc["components"]["schemas"]["Image"]["properties"]["mask_url"].is_object());
    assert!(doc["components"]["schemas"]["Outcrop"]["properties"]["left"].is_object());
    t.stop().await;
}
