//! AUTOMATIC1111's `/sdapi/v1` on a real server with the tiny model: txt2img and img2img block until their images
//! are done but run as Ember jobs (gallery, metadata), seeds and batches count as A1111's do, samplers and schedulers
//! map onto Ember's, options switch the model, progress shows the running job and interrupt stops it, png-info reads
//! the metadata back, and errors come in A1111's shapes naming the field.

mod common;

use base64::prelude::{Engine, BASE64_STANDARD};
use common::{fixture, png_bytes, png_text, start, start_configured, TestServer};
use ember_server::{Apis, NamedModel};
use image::{GrayImage, Luma, RgbImage};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// A successful txt2img/img2img answer: its images (PNG bytes) and its `info`, parsed.
async fn generate(t: &TestServer, path: &str, body: Value) -> (Vec<Vec<u8>>, Value, Value) {
    let (status, answer) = t.post_json(&format!("/sdapi/v1/{path}"), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let images = answer["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| BASE64_STANDARD.decode(i.as_str().expect("base64")).expect("base64"))
        .collect();
    let info: Value = serde_json::from_str(answer["info"].as_str().expect("info is a JSON string")).expect("JSON");
    (images, info, answer["parameters"].clone())
}

/// A 422 in FastAPI's shape: its `loc` and `msg`.
fn validation_error(status: StatusCode, body: &Value) -> (Vec<Value>, String) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let detail = &body["detail"][0];
    (
        detail["loc"].as_array().expect("loc").clone(),
        detail["msg"].as_str().expect("msg").to_string(),
    )
}

fn parameters_of(png: &[u8]) -> String {
    png_text(png)
        .into_iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v)
        .expect("a parameters chunk")
}

#[tokio::test]
async fn txt2img_runs_as_an_ember_job_with_the_cli_metadata_and_the_engine_pixels() {
    let t = start().await;
    let (images, info, parameters) = generate(
        &t,
        "txt2img",
        json!({"prompt": "fire", "negative_prompt": "ice", "steps": 3, "width": 64, "height": 64, "seed": 42,
               "cfg_scale": 7.0, "sampler_name": "Euler", "scheduler": "automatic", "restore_faces": true,
               "styles": ["warm"], "eta": 1.0, "s_churn": 0, "send_images": true, "some_extension_field": 3}),
    )
    .await;
    assert_eq!(images.len(), 1);
    let decoded = image::load_from_memory(&images[0]).expect("a PNG").to_rgb8();
    assert_eq!(decoded.dimensions(), (64, 64));
    let keys: Vec<String> = png_text(&images[0]).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["Dream", "sd-metadata", "parameters"], "the CLI's metadata");
    let text = parameters_of(&images[0]);
    assert!(
        text.contains("Steps: 3, Sampler: Euler, Schedule type: Uniform, CFG scale: 7.0, Seed: 42, Size: 64x64"),
        "{text}"
    );
    assert_eq!(
        (info["seed"].as_u64(), info["all_seeds"].clone()),
        (Some(42), json!([42]))
    );
    assert_eq!(info["infotexts"], json!([text]));
    assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(64), Some(64)));
    assert_eq!(info["sampler_name"], "Euler");
    assert_eq!(info["all_prompts"], json!(["fire"]));
    assert_eq!(info["negative_prompt"], "ice");
    let notes = info["notes"].to_string();
    for ignored in ["restore_faces", "styles", "some_extension_field"] {
        assert!(notes.contains(ignored), "{ignored} is noted: {notes}");
    }
    for neutral in ["eta", "s_churn", "send_images"] {
        assert!(!notes.contains(neutral), "{neutral} changes nothing: {notes}");
    }
    assert_eq!(parameters["prompt"], "fire", "the request is echoed");

    // The image is in the gallery, made by a done job.
    let (_, gallery) = t.get("/api/images").await;
    assert_eq!(gallery["total"], 1);
    let (_, jobs) = t.get("/api/jobs").await;
    assert_eq!(jobs["jobs"][0]["status"], "done");
    assert_eq!(jobs["jobs"][0]["params"]["sampler"], "k_euler");
    assert_eq!(
        jobs["jobs"][0]["params"]["karras_max"], 0,
        "A1111's Euler: no Karras schedule"
    );

    // The engine itself, with the same settings, gives the same pixels.
    let device = ember::device::parse_device("cpu").expect("cpu");
    let dtype = ember::device::resolve_dtype("f32", &device).expect("f32");
    let model = fixture("tiny-sd.safetensors").display().to_string();
    let direct = tokio::task::spawn_blocking(move || {
        let pipeline = ember::pipeline::Pipeline::load(&model, &device, dtype).expect("the tiny model loads");
        let request = ember::request::GenerateRequest {
            prompt: "fire".into(),
            negative_prompt: "ice".into(),
            negative_given: true,
            steps: 3,
            cfg_scale: 7.0,
            sampler: ember::sample::SamplerKind::KEuler,
            seed: 42,
            width: 64,
            height: 64,
            karras_max: 0,
            ..Default::default()
        };
        let cancel = ember::pipeline::CancelToken::new();
        pipeline
            .generate(&request, &cancel, &mut |_| {})
            .expect("generates")
            .image
    })
    .await
    .expect("joined");
    assert!(direct == decoded, "A1111 txt2img and the engine give identical pixels");
    t.stop().await;
}

#[tokio::test]
async fn seeds_batches_and_variations_count_as_a1111_does() {
    let t = start().await;
    let base = json!({"prompt": "fire", "steps": 1, "width": 64, "height": 64, "sampler_name": "DDIM"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body
    };
    // seed -1: a random seed, reported.
    let (_, a, _) = generate(&t, "txt2img", with(json!({"seed": -1}))).await;
    let (_, b, _) = generate(&t, "txt2img", with(json!({"seed": -1}))).await;
    assert!(a["seed"].is_u64() && b["seed"].is_u64());
    assert_ne!(a["seed"], b["seed"], "two random seeds");

    // batch_size × n_iter images, seeds s, s+1, …
    let (images, info, _) = generate(&t, "txt2img", with(json!({"seed": 100, "batch_size": 2, "n_iter": 2}))).await;
    assert_eq!(images.len(), 4);
    assert_eq!(info["all_seeds"], json!([100, 101, 102, 103]));
    for (png, seed) in images.iter().zip(100..) {
        assert!(parameters_of(png).contains(&format!("Seed: {seed},")), "{seed}");
    }
    assert_eq!(info["infotexts"].as_array().map(Vec::len), Some(4));

    // Variations: the seed stays, the subseeds count up.
    let (images, info, _) = generate(
        &t,
        "txt2img",
        with(json!({"seed": 5, "subseed": 9, "subseed_strength": 0.5, "batch_size": 2})),
    )
    .await;
    assert_eq!(
        (info["all_seeds"].clone(), info["all_subseeds"].clone()),
        (json!([5, 5]), json!([9, 10]))
    );
    let text = parameters_of(&images[1]);
    assert!(
        text.contains("Variation seed: 10, Variation seed strength: 0.5"),
        "{text}"
    );
    t.stop().await;
}

#[tokio::test]
async fn sampler_names_and_schedulers_map_to_ember_samplers() {
    let t = start().await;
    let body = |sampler: &str, scheduler: Value| {
        json!({"prompt": "fire", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": sampler,
               "scheduler": scheduler})
    };
    for (sampler, scheduler, written) in [
        (
            "Euler a",
            json!("automatic"),
            "Sampler: Euler a, Schedule type: Uniform,",
        ),
        (
            "DPM++ 2M",
            json!("Automatic"),
            "Sampler: DPM++ 2M, Schedule type: Karras,",
        ),
        (
            "DPM++ 2M Karras",
            Value::Null,
            "Sampler: DPM++ 2M, Schedule type: Karras,",
        ),
        (
            "DPM++ 2M",
            json!("uniform"),
            "Sampler: DPM++ 2M, Schedule type: Uniform,",
        ),
        ("LMS", json!("karras"), "Sampler: LMS, Schedule type: Karras,"),
        ("Heun", Value::Null, "Sampler: Heun, Schedule type: Uniform,"),
        ("k_dpm_2_a", Value::Null, "Sampler: DPM2 a, Schedule type: Karras,"),
        ("PLMS", Value::Null, "Sampler: PLMS, CFG scale:"),
    ] {
        let (images, _, _) = generate(&t, "txt2img", body(sampler, scheduler)).await;
        let text = parameters_of(&images[0]);
        assert!(text.contains(written), "{sampler}: {text}");
    }
    let (status, error) = t.post_json("/sdapi/v1/txt2img", &body("UniPC", Value::Null)).await;
    let (loc, msg) = validation_error(status, &error);
    assert_eq!(loc, [json!("body"), json!("sampler_name")]);
    assert!(msg.starts_with("sampler_name: unknown sampler 'UniPC'"), "{msg}");
    let (status, error) = t
        .post_json("/sdapi/v1/txt2img", &body("Euler", json!("exponential")))
        .await;
    assert!(validation_error(status, &error).1.starts_with("scheduler:"), "{error}");

    let (status, list) = t.get("/sdapi/v1/samplers").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "Euler a",
            "Euler",
            "LMS",
            "Heun",
            "DPM2",
            "DPM2 a",
            "DPM++ 2M",
            "DPM++ 2S a",
            "DDIM",
            "PLMS",
            "LCM"
        ]
    );
    let (_, schedulers) = t.get("/sdapi/v1/schedulers").await;
    assert_eq!(schedulers[2]["name"], "karras");
    t.stop().await;
}

/// White (repaint) inside `x0..x1 × y0..y1`.
fn rect_mask(w: u32, h: u32, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            255
        } else {
            0
        }])
    })
}

#[tokio::test]
async fn img2img_with_a_mask_repaints_only_the_mask() {
    let t = start().await;
    let init_bytes = std::fs::read(fixture("init-64x96.png")).expect("fixture");
    let init = image::load_from_memory(&init_bytes).expect("init").to_rgb8();
    let mask = rect_mask(64, 96, (16, 48), (24, 72));
    let body = json!({
        "init_images": [format!("data:image/png;base64,{}", BASE64_STANDARD.encode(&init_bytes))],
        "mask": BASE64_STANDARD.encode(png_bytes(&image::DynamicImage::ImageLuma8(mask.clone()))),
        "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": true, "inpainting_mask_invert": 0,
        "denoising_strength": 0.75, "prompt": "fire", "steps": 4, "seed": 3, "sampler_name": "Euler a",
        "resize_mode": 0,
    });
    let (images, info, parameters) = generate(&t, "img2img", body).await;
    let out: RgbImage = image::load_from_memory(&images[0]).expect("PNG").to_rgb8();
    assert_eq!(out.dimensions(), (64, 96), "no width/height: the init image's size");
    let (mut kept, mut changed) = (true, 0);
    for (x, y, p) in out.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            kept &= p == init.get_pixel(x, y);
        } else if p != init.get_pixel(x, y) {
            changed += 1;
        }
    }
    assert!(kept, "the pixels outside the mask are the init image's (paste-back)");
    assert!(changed > 100, "the masked area is repainted ({changed} pixels changed)");
    assert_eq!(
        parameters["init_images"],
        Value::Null,
        "not echoed without include_init_images"
    );
    let notes = info["notes"].to_string();
    assert!(
        notes.contains("inpaint_full_res") && notes.contains("inpainting_fill"),
        "{notes}"
    );
    assert_eq!(info["denoising_strength"], 0.75);
    let text = parameters_of(&images[0]);
    assert!(
        text.contains("Denoising strength: 0.75") && text.contains("Mask blur: 4"),
        "{text}"
    );
    let (_, jobs) = t.get("/api/jobs").await;
    let job = &jobs["jobs"][0];
    assert_eq!(
        (job["mode"].as_str(), job["steps_total"].as_i64()),
        (Some("img2img"), Some(3)),
        "floor(0.75 × 4)"
    );
    assert!(job["mask_url"].is_string(), "the mask is stored with the image");

    // width/height: scaled into the box, keeping the aspect ratio (Ember's fit).
    let body = json!({"init_images": [BASE64_STANDARD.encode(&init_bytes)], "prompt": "ice", "steps": 2,
                      "width": 32, "height": 32, "denoising_strength": 0.5});
    let (images, _, _) = generate(&t, "img2img", body).await;
    let out = image::load_from_memory(&images[0]).expect("PNG");
    assert_eq!((out.width(), out.height()), (16, 32));

    // An RGBA mask with transparency is read by its alpha, as A1111 reads it: opaque = repaint.
    let alpha_mask = image::RgbaImage::from_fn(64, 96, |x, y| {
        let inside = (16..48).contains(&x) && (24..72).contains(&y);
        image::Rgba([0, 0, 0, if inside { 255 } else { 0 }])
    });
    let body = json!({
        "init_images": [BASE64_STANDARD.encode(&init_bytes)],
        "mask": BASE64_STANDARD.encode(png_bytes(&image::DynamicImage::ImageRgba8(alpha_mask))),
        "mask_blur": 0, "prompt": "fire", "steps": 4, "seed": 3, "denoising_strength": 1.0,
    });
    let (images, _, _) = generate(&t, "img2img", body).await;
    let out = image::load_from_memory(&images[0]).expect("PNG").to_rgb8();
    let outside_kept = out
        .enumerate_pixels()
        .filter(|(x, y, _)| mask.get_pixel(*x, *y)[0] == 0)
        .all(|(x, y, p)| p == init.get_pixel(x, y));
    assert!(outside_kept);
    t.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a1111_errors_naming_the_field() {
    let t = start().await;
    let init = BASE64_STANDARD.encode(std::fs::read(fixture("init-64x96.png")).expect("fixture"));
    let cases = [
        (
            json!({"prompt": "a", "init_images": ["not base64!!"]}),
            "init_images[0]",
            vec![json!("init_images"), json!(0)],
        ),
        (
            json!({"prompt": "a", "init_images": [BASE64_STANDARD.encode("hello, not an image")]}),
            "init_images[0]",
            vec![json!("init_images"), json!(0)],
        ),
        (json!({"prompt": "a"}), "init_images", vec![json!("init_images")]),
        (
            json!({"prompt": "a", "init_images": [init.clone()], "mask": "AAAA"}),
            "mask",
            vec![json!("mask")],
        ),
        (
            json!({"prompt": "a", "init_images": [init.clone()], "denoising_strength": 1.5}),
            "denoising_strength",
            vec![json!("denoising_strength")],
        ),
        (
            json!({"prompt": "a", "init_images": [init.clone()], "override_settings": {"sd_model_checkpoint": "nope"}}),
            "override_settings.sd_model_checkpoint",
            vec![json!("override_settings"), json!("sd_model_checkpoint")],
        ),
        (
            json!({"prompt": "", "init_images": [init.clone()]}),
            "prompt",
            vec![json!("prompt")],
        ),
        (
            json!({"prompt": "a", "init_images": [init.clone()], "steps": "many"}),
            "steps",
            vec![json!("steps")],
        ),
        (
            json!({"prompt": "a", "init_images": [init.clone()], "seed": -5}),
            "seed",
            vec![json!("seed")],
        ),
    ];
    for (body, field, loc) in cases {
        let (status, error) = t.post_json("/sdapi/v1/img2img", &body).await;
        let (got_loc, msg) = validation_error(status, &error);
        assert_eq!(got_loc[1..], loc[..], "{field}: {error}");
        assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}");
        assert_eq!(error["errors"], msg, "A1111's key too");
    }
    let (status, error) = t
        .post_json("/sdapi/v1/txt2img", &json!({"prompt": "a", "width": 60, "steps": 1}))
        .await;
    assert!(validation_error(status, &error).1.starts_with("width:"), "{error}");
    let (status, error) = t.post_json("/sdapi/v1/txt2img", &json!([1, 2])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let (status, error) = t.get("/sdapi/v1/no-such-thing").await;
    assert_eq!((status, error), (StatusCode::NOT_FOUND, json!({"detail": "Not Found"})));
    assert_eq!(t.get("/api/jobs").await.1["jobs"], json!([]), "nothing was queued");
    t.stop().await;
}

#[tokio::test]
async fn options_switch_the_model_of_later_requests() {
    let tiny = fixture("tiny-sd.safetensors").display().to_string();
    let named = |name: &str, steps: usize| NamedModel {
        name: name.into(),
        path: tiny.clone(),
        steps: Some(steps),
        ..NamedModel::default()
    };
    let models = vec![named("alpha", 2), named("beta", 3)];
    let t = start_configured(tempfile::tempdir().expect("tempdir"), |c| {
        c.models = models;
        c.model = "alpha".into();
    })
    .await;
    let (status, options) = t.get("/sdapi/v1/options").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(options["sd_model_checkpoint"], "alpha");
    assert_eq!(options["samples_format"], "png");
    assert!(options.get("sd_checkpoint_hash").is_some());
    let (_, list) = t.get("/sdapi/v1/sd-models").await;
    let titles: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["title"].as_str())
        .collect();
    assert_eq!(titles, ["alpha", "beta"]);
    for key in ["model_name", "hash", "sha256", "filename", "config"] {
        assert!(list[0].get(key).is_some(), "{key}");
    }

    let (status, _) = t
        .post_json(
            "/sdapi/v1/options",
            &json!({"sd_model_checkpoint": "Beta [0123456789]"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t.get("/sdapi/v1/options").await.1["sd_model_checkpoint"], "beta");
    let body = json!({"prompt": "fire", "width": 64, "height": 64, "seed": 1});
    let (_, info, _) = generate(&t, "txt2img", body.clone()).await;
    assert_eq!(
        (info["sd_model_name"].as_str(), info["steps"].as_u64()),
        (Some("beta"), Some(3)),
        "beta's defaults"
    );
    // override_settings wins for one request.
    let mut once = body.clone();
    once["override_settings"] = json!({"sd_model_checkpoint": "alpha"});
    let (_, info, _) = generate(&t, "txt2img", once).await;
    assert_eq!(info["sd_model_name"], "alpha");
    // The page's jobs are not affected.
    let (status, job) = t
        .post_json(
            "/api/jobs",
            &json!({"prompt": "x", "steps": 1, "width": 64, "height": 64}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(job["params"]["model"], "alpha");
    t.wait_finished(job["id"].as_i64().expect("id")).await;

    let (status, error) = t
        .post_json("/sdapi/v1/options", &json!({"sd_model_checkpoint": "gamma"}))
        .await;
    assert!(
        validation_error(status, &error).1.starts_with("sd_model_checkpoint:"),
        "{error}"
    );
    t.stop().await;
}

#[tokio::test]
async fn progress_shows_the_running_job_and_interrupt_stops_its_request() {
    let t = start().await;
    let (status, idle) = t.get("/sdapi/v1/progress").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (idle["progress"].as_f64(), idle["state"]["job_count"].as_u64()),
        (Some(0.0), Some(0))
    );
    let slow = json!({"prompt": "slow", "steps": 1000, "width": 128, "height": 128, "seed": 1, "batch_size": 2,
                      "sampler_name": "Euler"});
    let (client, url) = (t.client.clone(), t.url("/sdapi/v1/txt2img"));
    let request = tokio::spawn(async move {
        let response = client.post(url).json(&slow).send().await.expect("sent");
        (response.status(), response.json::<Value>().await.expect("JSON"))
    });
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    let progress = loop {
        let (_, p) = t.get("/sdapi/v1/progress").await;
        if p["state"]["sampling_step"].as_u64() >= Some(2) && p["current_image"].is_string() {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fraction = progress["progress"].as_f64().expect("progress");
    assert!(fraction > 0.0 && fraction < 1.0, "{progress}");
    assert_eq!(progress["state"]["sampling_steps"], 1000);
    assert_eq!(
        progress["state"]["job_count"], 2,
        "the running image and the queued one"
    );
    assert!(progress["eta_relative"].as_f64() > Some(0.0), "{progress}");
    let preview = BASE64_STANDARD
        .decode(progress["current_image"].as_str().expect("preview"))
        .expect("base64");
    let preview = image::load_from_memory(&preview).expect("a PNG preview");
    assert_eq!((preview.width(), preview.height()), (16, 16), "latent size");
    let (_, skipped) = t.get("/sdapi/v1/progress?skip_current_image=true").await;
    assert_eq!(skipped["current_image"], Value::Null);

    let (status, answer) = t.post_json("/sdapi/v1/interrupt", &json!({})).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (status, answer) = tokio::time::timeout(common::TIMEOUT, request)
        .await
        .expect("answered")
        .expect("joined");
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["images"], json!([]));
    let info: Value = serde_json::from_str(answer["info"].as_str().expect("info")).expect("JSON");
    assert_eq!(info["interrupted"], true);
    let (_, jobs) = t.get("/api/jobs").await;
    let statuses: Vec<&str> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["status"].as_str())
        .collect();
    assert_eq!(statuses, ["canceled", "canceled"], "both images of the request");
    let (_, idle) = t.get("/sdapi/v1/progress").await;
    assert_eq!(
        (idle["progress"].as_f64(), idle["state"]["job_count"].as_u64()),
        (Some(0.0), Some(0))
    );
    t.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_images() {
    let t = start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .expect("client");
    let slow = json!({"prompt": "slow", "steps": 1000, "width": 128, "height": 128, "seed": 1});
    let sent = client.post(t.url("/sdapi/v1/txt2img")).json(&slow).send().await;
    assert!(sent.is_err(), "the client gave up");
    let (_, jobs) = t.get("/api/jobs").await;
    let id = jobs["jobs"][0]["id"].as_i64().expect("the job was queued");
    let job = t.wait_finished(id).await;
    assert_eq!(job["status"], "canceled", "{job}");
    t.stop().await;
}

#[tokio::test]
async fn png_info_reads_the_metadata_back() {
    let t = start().await;
    let (images, info, _) = generate(
        &t,
        "txt2img",
        json!({"prompt": "fire, (warm)", "negative_prompt": "ice", "steps": 2, "width": 64, "height": 64, "seed": 42,
               "sampler_name": "Euler a"}),
    )
    .await;
    let (status, read) = t
        .post_json(
            "/sdapi/v1/png-info",
            &json!({"image": format!("data:image/png;base64,{}", BASE64_STANDARD.encode(&images[0]))}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["info"], info["infotexts"][0]);
    let p = &read["parameters"];
    assert_eq!(
        (p["Prompt"].as_str(), p["Negative prompt"].as_str()),
        (Some("fire, (warm)"), Some("ice"))
    );
    assert_eq!(
        (p["Seed"].as_str(), p["Steps"].as_str(), p["Sampler"].as_str()),
        (Some("42"), Some("2"), Some("Euler a"))
    );
    assert_eq!((p["Size-1"].as_str(), p["Size-2"].as_str()), (Some("64"), Some("64")));
    assert!(
        read["items"]["Dream"].is_string() && read["items"]["sd-metadata"].is_string(),
        "{read}"
    );

    let (status, error) = t.post_json("/sdapi/v1/png-info", &json!({"image": "####"})).await;
    assert!(validation_error(status, &error).1.starts_with("image:"), "{error}");
    t.stop().await;
}

#[tokio::test]
async fn the_other_routes_answer_in_a1111_shapes() {
    let t = start().await;
    let (_, loras) = t.get("/sdapi/v1/loras").await;
    assert_eq!(loras, json!([]));
    let (_, embeddings) = t.get("/sdapi/v1/embeddings").await;
    assert_eq!(embeddings, json!({"loaded": {}, "skipped": {}}));
    let (_, scripts) = t.get("/sdapi/v1/scripts").await;
    assert_eq!(scripts, json!({"txt2img": [], "img2img": []}));
    for path in ["sd-vae", "upscalers"] {
        assert_eq!(
            t.get(&format!("/sdapi/v1/{path}")).await,
            (StatusCode::OK, json!([])),
            "{path}"
        );
    }
    let (status, _) = t.post_json("/sdapi/v1/refresh-checkpoints", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, document) = t.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
        "/sdapi/v1/progress",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/models",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} is documented");
    }
    t.stop().await;
}

#[tokio::test]
async fn apis_can_be_switched_off_and_the_token_guards_them() {
    let only_ember = Apis {
        ember: true,
        a1111: false,
        openai: false,
    };
    let t = start_configured(tempfile::tempdir().expect("tempdir"), |c| c.apis = only_ember).await;
    for path in ["/sdapi/v1/options", "/sdapi/v1/sd-models", "/v1/models"] {
        assert_eq!(t.get(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = t.post_json("/sdapi/v1/txt2img", &json!({"prompt": "a"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(t.get("/api/models").await.0, StatusCode::OK);
    t.stop().await;

    let no_ember = Apis {
        ember: false,
        a1111: true,
        openai: true,
    };
    let t = start_configured(tempfile::tempdir().expect("tempdir"), |c| c.apis = no_ember).await;
    assert_eq!(t.get("/api/jobs").await.0, StatusCode::NOT_FOUND);
    assert_eq!(t.get("/api/health").await.0, StatusCode::OK, "health stays");
    assert_eq!(t.get("/sdapi/v1/options").await.0, StatusCode::OK);
    assert_eq!(t.get("/v1/models").await.0, StatusCode::OK);
    t.stop().await;

    let t = start_configured(tempfile::tempdir().expect("tempdir"), |c| {
        c.token = Some("s3cret".into())
    })
    .await;
    let (status, error) = t.get("/sdapi/v1/options").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        error["detail"].as_str().is_some_and(|d| d.contains("token")),
        "A1111's shape: {error}"
    );
    let with_bearer = t.client.get(t.url("/sdapi/v1/options")).bearer_auth("s3cret");
    assert_eq!(t.send(with_bearer).await.0, StatusCode::OK);
    // webuiapi's set_auth(user, password): HTTP Basic with the token as the password.
    let with_basic = t
        .client
        .get(t.url("/sdapi/v1/options"))
        .basic_auth("ember", Some("s3cret"));
    assert_eq!(t.send(with_basic).await.0, StatusCode::OK);
    // A cross-site POST is refused even with the token.
    let cross = t
        .client
        .post(t.url("/sdapi/v1/interrupt"))
        .bearer_auth("s3cret")
        .header("origin", "http://evil.example");
    assert_eq!(t.send(cross).await.0, StatusCode::FORBIDDEN);
    t.stop().await;
}
