//! Jobs end to end on a real server: txt2img and img2img through the queue, progress over SSE, the gallery,
//! cancellation, and submission order under concurrent load.

mod common;

use base64::prelude::{Engine, BASE64_STANDARD};
use common::{fixture, png_text, start};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn is_rfc3339_utc(s: &Value) -> bool {
    let s = s.as_str().unwrap_or("");
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt2img_job_streams_progress_and_lands_in_the_gallery() {
    let t = start().await;
    let mut events = t.events().await;
    let job = t
        .submit(json!({"prompt": "fire", "steps": 5, "width": 64, "height": 64, "seed": 42, "sampler": "k_euler"}))
        .await;
    let id = job["id"].as_i64().expect("id");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["mode"], "txt2img");
    assert_eq!(job["steps_total"], 5);
    assert_eq!(job["params"]["seed"], 42);
    assert_eq!(job["params"]["cfg_scale"], 7.5, "defaults are filled in");
    assert!(is_rfc3339_utc(&job["created_at"]), "{job}");

    let seen = events.until_finished(id).await;
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["job", "job", "progress", "progress", "progress", "progress", "progress", "image", "job"],
        "queued, running, one progress per step, the image, done"
    );
    assert_eq!(seen[1].1["status"], "running");
    for (i, (_, progress)) in seen[2..7].iter().enumerate() {
        assert_eq!(progress["job_id"], id);
        assert_eq!(progress["step"], i + 1);
        assert_eq!(progress["total"], 5);
        assert!(progress["eta_s"].as_f64().expect("eta") >= 0.0);
        let preview = progress["preview"].as_str().expect("preview");
        let b64 = preview.strip_prefix("data:image/png;base64,").expect("a PNG data URL");
        let png = image::load_from_memory(&BASE64_STANDARD.decode(b64).expect("base64")).expect("PNG");
        assert_eq!((png.width(), png.height()), (8, 8), "latent size: 64 / 8");
    }
    let image = seen[7].1["image"].clone();
    let done = &seen[8].1;
    assert_eq!(done["status"], "done");
    assert_eq!(done["steps_done"], 5);
    assert_eq!(done["image_id"], image["id"]);
    assert!(
        is_rfc3339_utc(&done["started_at"]) && is_rfc3339_utc(&done["finished_at"]),
        "{done}"
    );

    let image_id = image["id"].as_i64().expect("image id");
    let (status, fetched) = t.get(&format!("/api/images/{image_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["url"], format!("/api/images/{image_id}/file"));
    assert_eq!(
        (fetched["width"].as_i64(), fetched["height"].as_i64()),
        (Some(64), Some(64))
    );
    assert_eq!(fetched["seed"], 42);
    assert_eq!(fetched["job_id"], id);
    let dream = fetched["dream"].as_str().expect("dream");
    assert!(dream.starts_with("\"fire\" -s 5 -S 42 -W 64 -H 64"), "{dream}");

    let response = t
        .client
        .get(t.url(&format!("/api/images/{image_id}/file")))
        .send()
        .await
        .expect("file");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.expect("bytes");
    let png = image::load_from_memory(&bytes).expect("a PNG");
    assert_eq!((png.width(), png.height()), (64, 64));
    let text = png_text(&bytes);
    let keys: Vec<&str> = text.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["Dream", "sd-metadata", "parameters"], "the CLI's metadata");
    assert_eq!(text[0].1, dream);

    let (status, page) = t.get("/api/images?page=1&per_page=24").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (page["total"].as_i64(), page["page"].as_i64(), page["per_page"].as_i64()),
        (Some(1), Some(1), Some(24))
    );
    let (_, done_jobs) = t.get("/api/jobs?status=done").await;
    assert_eq!(done_jobs["jobs"][0]["id"], id);
    let (_, queued_jobs) = t.get("/api/jobs?status=queued").await;
    assert_eq!(queued_jobs["jobs"], json!([]));

    // Deleting removes the row and the file.
    let images_dir = t.data_dir.path().join("images");
    assert_eq!(std::fs::read_dir(&images_dir).expect("images dir").count(), 1);
    let response = t
        .client
        .delete(t.url(&format!("/api/images/{image_id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(std::fs::read_dir(&images_dir).expect("images dir").count(), 0);
    assert_eq!(t.get(&format!("/api/images/{image_id}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get(&format!("/api/images/{image_id}/file")).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, page) = t.get("/api/images").await;
    assert_eq!(page["total"], 0);

    // No seed: one is chosen at submit time and reported.
    let job = t
        .submit(json!({"prompt": "fire", "steps": 1, "width": 64, "height": 64}))
        .await;
    assert!(job["params"]["seed"].as_u64().is_some(), "{job}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn img2img_upload_runs_floor_strength_times_steps() {
    let t = start().await;
    let mut events = t.events().await;
    let init = std::fs::read(fixture("init-64x96.png")).expect("fixture");
    let params = json!({"prompt": "fire", "strength": 0.7, "steps": 10, "seed": 1592514025, "sampler": "k_lms"});
    let form = Form::new().text("params", params.to_string()).part(
        "init_image",
        Part::bytes(init)
            .file_name("init-64x96.png")
            .mime_str("image/png")
            .expect("mime"),
    );
    let (status, job) = t.send(t.client.post(t.url("/api/jobs")).multipart(form)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_i64().expect("id");
    assert_eq!(job["mode"], "img2img");
    assert_eq!(job["steps_total"], 7, "floor(0.7 × 10)");

    let seen = events.until_finished(id).await;
    let steps: Vec<i64> = seen
        .iter()
        .filter(|(name, data)| name == "progress" && data["job_id"] == id)
        .map(|(_, data)| data["step"].as_i64().expect("step"))
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6, 7], "exactly 7 progress events");
    let done = &seen.last().expect("events").1;
    assert_eq!(done["status"], "done", "{done}");
    let (_, image) = t.get(&format!("/api/images/{}", done["image_id"])).await;
    assert_eq!(
        (image["width"].as_i64(), image["height"].as_i64()),
        (Some(64), Some(96)),
        "the init image's size"
    );
    let dream = image["dream"].as_str().expect("dream");
    assert!(
        dream.contains("-I init-64x96.png") && dream.ends_with("-f 0.7"),
        "{dream}"
    );

    // Perlin noise needs sides that are multiples of 64; the gallery image is checked at submit time too.
    let (status, body) = t
        .post_json(
            "/api/jobs",
            &json!({"prompt": "ice", "perlin": 0.1, "init_image_id": image["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (field, message) = common::error_of(&body);
    assert_eq!(field.as_deref(), Some("perlin"), "{body}");
    assert!(message.contains("64×96"), "{message}");

    // A gallery image as init image: floor(0.5 × 4) = 2 steps.
    let job = t
        .submit(json!({"prompt": "ice", "strength": 0.5, "steps": 4, "init_image_id": image["id"], "seed": 7}))
        .await;
    assert_eq!(
        (job["mode"].as_str(), job["steps_total"].as_i64()),
        (Some("img2img"), Some(2))
    );
    let seen = events.until_finished(job["id"].as_i64().expect("id")).await;
    let done = &seen.last().expect("events").1;
    assert_eq!(done["status"], "done", "{done}");
    let (_, second) = t.get(&format!("/api/images/{}", done["image_id"])).await;
    assert_eq!(
        (second["width"].as_i64(), second["height"].as_i64()),
        (Some(64), Some(96))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_queued_jobs_at_once_and_running_jobs_within_a_step() {
    let t = start().await;
    // Long enough that it is still running when canceled; it stops within one step.
    let slow = t
        .submit(json!({"prompt": "slow", "steps": 1000, "width": 128, "height": 128, "seed": 1}))
        .await;
    let queued = t
        .submit(json!({"prompt": "next", "steps": 3, "width": 64, "height": 64, "seed": 2}))
        .await;
    let (slow_id, queued_id) = (slow["id"].as_i64().expect("id"), queued["id"].as_i64().expect("id"));
    t.wait_job(slow_id, |j| {
        j["status"] == "running" && j["steps_done"].as_i64() >= Some(1)
    })
    .await;

    let (status, canceled) = t.post_json(&format!("/api/jobs/{queued_id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(canceled["status"], "canceled", "a queued job is canceled at once");
    assert!(canceled["finished_at"].is_string());

    let (status, _) = t.post_json(&format!("/api/jobs/{slow_id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let slow = t.wait_finished(slow_id).await;
    assert_eq!(slow["status"], "canceled", "{slow}");
    assert!(slow["steps_done"].as_i64() < Some(1000));
    assert_eq!(slow["image_id"], Value::Null);

    for id in [slow_id, queued_id] {
        let (status, body) = t.post_json(&format!("/api/jobs/{id}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(common::error_of(&body).1.contains("already canceled"), "{body}");
    }
    // The canceled queued job never ran, and the worker goes on with new work.
    assert_eq!(
        t.get(&format!("/api/jobs/{queued_id}")).await.1["started_at"],
        Value::Null
    );
    let next = t
        .submit(json!({"prompt": "after", "steps": 2, "width": 64, "height": 64}))
        .await;
    assert_eq!(
        t.wait_finished(next["id"].as_i64().expect("id")).await["status"],
        "done"
    );
    let (_, page) = t.get("/api/images").await;
    assert_eq!(page["total"], 1, "canceled jobs leave no image");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_submissions_all_complete_in_submission_order() {
    let t = start().await;
    let mut events = t.events().await;
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let (client, url) = (t.client.clone(), t.url("/api/jobs"));
        tasks.push(tokio::spawn(async move {
            let params = json!({"prompt": format!("job {i}"), "steps": 1, "width": 64, "height": 64, "seed": i});
            let response = client.post(url).json(&params).send().await.expect("submit");
            assert_eq!(response.status(), StatusCode::CREATED);
            response.json::<Value>().await.expect("job")["id"].as_i64().expect("id")
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("submission task"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50, "every submission got its own id");

    // The worker starts them in id (= submission) order, one at a time.
    let mut started = Vec::new();
    let mut done = 0;
    while done < 50 {
        let (name, data) = events.next().await;
        if name != "job" {
            continue;
        }
        match data["status"].as_str() {
            Some("running") => {
                assert_eq!(started.len(), done, "one job at a time");
                started.push(data["id"].as_i64().expect("id"));
            }
            Some("done") => done += 1,
            Some("queued") => {}
            other => panic!("job ended {other:?}: {data}"),
        }
    }
    assert_eq!(started, ids);
    let (_, list) = t.get("/api/jobs?status=done&limit=100").await;
    let jobs = list["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 50);
    // Newest first; each started after the one before it finished.
    for pair in jobs.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert!(newer["id"].as_i64() > older["id"].as_i64());
        assert!(
            newer["started_at"].as_str() >= older["finished_at"].as_str(),
            "{newer} / {older}"
        );
    }
    let (_, page) = t.get("/api/images?per_page=10&page=2").await;
    assert_eq!(
        (page["total"].as_i64(), page["images"].as_array().map(Vec::len)),
        (Some(50), Some(10))
    );
    t.stop().await;
}

/// The pixels of a gallery image.
async fn image_pixels(t: &common::TestServer, image_id: &Value) -> Vec<u8> {
    let response = t
        .client
        .get(t.url(&format!("/api/images/{image_id}/file")))
        .send()
        .await
        .expect("file");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.expect("bytes");
    image::load_from_memory(&bytes).expect("a PNG").to_rgb8().into_raw()
}

/// Submits a job, waits for it and returns (the job as submitted, the done job, its image).
async fn run_job(t: &common::TestServer, params: Value) -> (Value, Value, Value) {
    let job = t.submit(params).await;
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    let (status, image) = t.get(&format!("/api/images/{}", done["image_id"])).await;
    assert_eq!(status, StatusCode::OK, "{image}");
    (job, done, image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variations_and_noise_options_resolve_at_submit_and_reproduce() {
    let t = start().await;
    let base = json!({"prompt": "fire", "steps": 3, "width": 64, "height": 64, "seed": 42, "sampler": "k_euler"});
    let (_, _, plain) = run_job(&t, base.clone()).await;
    assert_eq!(plain["params"]["with_variations"], json!([]), "{plain}");
    assert_eq!(plain["params"]["perlin"], 0.0);

    let mut params = base.clone();
    let options = json!({
        "with_variations": [{"seed": 7, "weight": 0.3}],
        "variation_amount": 0.2,
        "seamless": true,
        "threshold": 2.5,
        "perlin": 0.1,
        "skip_normalize": true,
        "truncate_prompts": true,
        "downweight_mask": true,
    });
    for (k, v) in options.as_object().expect("object") {
        params[k] = v.clone();
    }
    let (job, done, image) = run_job(&t, params).await;
    let resolved = &job["params"];
    let variations = resolved["with_variations"].as_array().expect("a list");
    assert_eq!(variations.len(), 2, "-V's entry, then variation_amount's: {resolved}");
    assert_eq!(variations[0], json!({"seed": 7, "weight": 0.3}));
    assert_eq!(variations[1]["weight"], 0.2);
    let fresh = variations[1]["seed"]
        .as_u64()
        .expect("the variation seed chosen at submit time");
    assert!(
        resolved.get("variation_amount").is_none(),
        "resolved into with_variations: {resolved}"
    );
    for key in [
        "seamless",
        "threshold",
        "perlin",
        "skip_normalize",
        "truncate_prompts",
        "downweight_mask",
    ] {
        assert_eq!(resolved[key], options[key], "{key}");
    }
    assert_eq!(resolved["seed"], 42);
    assert_eq!(done["params"], *resolved, "the stored job keeps the resolved params");
    assert_eq!(image["params"], *resolved, "and so does its image");
    let dream = image["dream"].as_str().expect("dream");
    for part in [
        format!("-V 7:0.3,{fresh}:0.2"),
        "--seamless".into(),
        "--perlin 0.1".into(),
        "--truncate-prompts".into(),
        "--downweight mask".into(),
    ] {
        assert!(dream.contains(&part), "{part} in {dream}");
    }
    let varied = image_pixels(&t, &image["id"]).await;
    assert_ne!(
        varied,
        image_pixels(&t, &plain["id"]).await,
        "the options change the image"
    );

    // The resolved params are a valid submission that makes the same image again.
    let (again, _, replayed) = run_job(&t, resolved.clone()).await;
    assert_eq!(again["params"], *resolved, "nothing is re-randomised");
    assert_eq!(image_pixels(&t, &replayed["id"]).await, varied, "byte-identical pixels");

    // img2img with exact steps: 7 steps from the image at strength 0.7 (a schedule of 10).
    let (job, done, _) = run_job(
        &t,
        json!({"prompt": "ice", "init_image_id": image["id"], "strength": 0.7, "steps": 7, "exact_steps": true,
               "seed": 3}),
    )
    .await;
    assert_eq!(
        (job["mode"].as_str(), job["steps_total"].as_i64()),
        (Some("img2img"), Some(7))
    );
    assert_eq!(
        (done["steps_done"].as_i64(), done["params"]["exact_steps"].as_bool()),
        (Some(7), Some(true))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hires_fix_runs_two_passes_and_reports_their_steps() {
    let t = start().await;
    let mut events = t.events().await;
    // The single-file tiny model has SD 1.x's config (native 512×512): 640×512 runs 2 steps at about 512² (568×456),
    // then floor(0.5 × 2) = 1 at 640×512 — counted at submit by the engine's admission check, which knows the model.
    let job = t
        .submit(
            json!({"prompt": "fire", "steps": 2, "strength": 0.5, "width": 640, "height": 512, "seed": 5, "hires_fix": true}),
        )
        .await;
    let id = job["id"].as_i64().expect("id");
    assert_eq!(job["params"]["hires_fix"], true);
    assert_eq!(job["steps_total"], 3, "both passes are counted at submit");
    let seen = events.until_finished(id).await;
    let steps: Vec<(i64, i64)> = seen
        .iter()
        .filter(|(name, data)| name == "progress" && data["job_id"] == id)
        .map(|(_, data)| {
            (
                data["step"].as_i64().expect("step"),
                data["total"].as_i64().expect("total"),
            )
        })
        .collect();
    assert_eq!(
        steps,
        (1..=3).map(|s| (s, 3)).collect::<Vec<_>>(),
        "both passes, numbered on"
    );
    let done = &seen.last().expect("events").1;
    assert_eq!(
        (
            done["status"].as_str(),
            done["steps_total"].as_i64(),
            done["steps_done"].as_i64()
        ),
        (Some("done"), Some(3), Some(3)),
        "{done}"
    );
    let (_, image) = t.get(&format!("/api/images/{}", done["image_id"])).await;
    assert_eq!(
        (image["width"].as_i64(), image["height"].as_i64()),
        (Some(640), Some(512))
    );
    let dream = image["dream"].as_str().expect("dream");
    assert!(dream.contains("--hires_fix -f 0.5"), "{dream}");
    t.stop().await;
}

/// Params exactly as Ember stored them before the InvokeAI options existed.
const OLD_PARAMS: &str = r#"{"prompt":"old","negative_prompt":"","steps":2,"cfg_scale":7.5,"sampler":"k_euler","seed":9,"width":64,"height":64,"strength":0.75,"fit":false,"karras_max":30,"init_image_id":null}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_images_stored_by_older_versions_still_load_and_run() {
    let data_dir = start().await.stop_keeping_data().await;
    let conn = rusqlite::Connection::open(data_dir.path().join("ember.sqlite")).expect("open the database");
    conn.execute_batch(&format!(
        "INSERT INTO jobs (id, status, params, mode, steps_total, created_at)
           VALUES (100, 'queued', '{OLD_PARAMS}', 'txt2img', 2, '2026-01-01T00:00:00.000Z');
         INSERT INTO images (id, job_id, file, seed, width, height, created_at, params, dream)
           VALUES (50, 99, 'gone.png', 9, 64, 64, '2026-01-01T00:00:00.000Z', '{OLD_PARAMS}', '\"old\" -s 2 -S 9');"
    ))
    .expect("old rows");
    drop(conn);

    let t = common::start_in(data_dir).await;
    let (status, image) = t.get("/api/images/50").await;
    assert_eq!(status, StatusCode::OK, "{image}");
    let params = &image["params"];
    assert_eq!(
        (params["prompt"].as_str(), params["seed"].as_i64()),
        (Some("old"), Some(9))
    );
    assert_eq!(params["with_variations"], json!([]), "new fields take their defaults");
    for key in [
        "exact_steps",
        "seamless",
        "hires_fix",
        "skip_normalize",
        "truncate_prompts",
        "downweight_mask",
    ] {
        assert_eq!(params[key], false, "{key}");
    }
    assert_eq!(
        (params["threshold"].as_f64(), params["perlin"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    // The queued old job runs after the restart.
    let done = t.wait_finished(100).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["params"]["with_variations"], json!([]));
    t.stop().await;
}
