//! Several named models (`ember serve --models FILE`), one in memory at a time: a job names its model, is checked
//! and given defaults by that model at submit time, and the worker loads that model before running it.
//! `GET /api/models` lists every model with a `loaded` flag that follows the switches.

mod common;

use common::{assert_error, fixture, png_text, start_configured, TestServer};
use ember_server::NamedModel;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn named(name: &str, path: &str) -> NamedModel {
    NamedModel {
        name: name.into(),
        path: path.into(),
        ..NamedModel::default()
    }
}

fn tiny_sd() -> String {
    fixture("tiny-sd.safetensors").display().to_string()
}

/// The two tiny models: `sd` (SD 1.x single file) and `xl` (SDXL diffusers folder, 2 steps by the models file).
fn two_models() -> Vec<NamedModel> {
    vec![
        NamedModel {
            description: Some("tiny SD 1.x".into()),
            ..named("sd", &tiny_sd())
        },
        NamedModel {
            description: Some("tiny SDXL".into()),
            steps: Some(2),
            ..named("xl", &fixture("tiny-sdxl").display().to_string())
        },
    ]
}

/// `GET /api/models`, by name.
async fn models(t: &TestServer) -> serde_json::Map<String, Value> {
    let (status, body) = t.get("/api/models").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["models"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| (m["name"].as_str().expect("a name").to_string(), m.clone()))
        .collect()
}

/// The names of the loaded models (at most one).
async fn loaded(t: &TestServer) -> Vec<String> {
    models(t)
        .await
        .into_iter()
        .filter(|(_, m)| m["loaded"] == true)
        .map(|(name, _)| name)
        .collect()
}

/// The `model_weights` of an image's sd-metadata: the short name of the files that made it.
async fn image_weights(t: &TestServer, image_id: &Value) -> String {
    let response = t
        .client
        .get(t.url(&format!("/api/images/{image_id}/file")))
        .send()
        .await
        .expect("file");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.expect("bytes");
    let text = png_text(&bytes);
    let (_, json) = text.iter().find(|(k, _)| k == "sd-metadata").expect("sd-metadata");
    let doc: Value = serde_json::from_str(json).expect("JSON");
    doc["model_weights"].as_str().expect("model_weights").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_the_model_they_name_and_the_server_switches_models() {
    let data = tempfile::tempdir().expect("tempdir");
    // `--model` is the tiny SD file, which is the `sd` entry: it is not listed twice.
    let t = start_configured(data, |c| c.models = two_models()).await;
    let listed = models(&t).await;
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["sd", "xl"], "{listed:?}");
    let (sd, xl) = (&listed["sd"], &listed["xl"]);
    assert_eq!((&sd["loaded"], &xl["loaded"]), (&json!(true), &json!(false)));
    assert_eq!(sd["family"]["id"], "sd1");
    assert_eq!(xl["family"], json!({"id": "sdxl", "name": "SDXL"}));
    assert_eq!(sd["description"], "tiny SD 1.x");
    assert_eq!(
        sd["defaults"],
        json!({"steps": 50, "cfg_scale": 7.5, "sampler": "k_lms", "width": 512, "height": 512})
    );
    // SDXL's own defaults, with the models file's steps over them.
    let xl_defaults = json!({"steps": 2, "cfg_scale": 7.5, "sampler": "k_euler", "width": 128, "height": 128});
    assert_eq!(xl["defaults"], xl_defaults);
    assert_eq!(xl["timestep_spacing"], "leading");
    let server = t.server.as_ref().expect("running");
    assert_eq!(
        (server.model_name.as_str(), &server.models),
        ("sd", &vec!["sd".to_string(), "xl".into()])
    );
    assert!(server.left_out.is_empty(), "{:?}", server.left_out);

    // An unknown model is refused at submit time, naming `model` and the models there are.
    let message = assert_error(
        t.post_json("/api/jobs", &json!({"prompt": "fire", "model": "sd3"}))
            .await,
        StatusCode::BAD_REQUEST,
        Some("model"),
        "unknown model",
    );
    assert!(
        message.contains("'sd3'") && message.contains("'sd'") && message.contains("'xl'"),
        "{message}"
    );
    assert_error(
        t.post_json("/api/jobs", &json!({"prompt": "fire", "model": 3})).await,
        StatusCode::BAD_REQUEST,
        Some("model"),
        "a model that is not a name",
    );
    let (_, jobs) = t.get("/api/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was queued");

    // A job for `xl` takes its defaults, and the worker switches to it.
    let mut events = t.events().await;
    let job = t.submit(json!({"prompt": "fire", "seed": 5, "model": "xl"})).await;
    assert_eq!(job["params"]["model"], "xl");
    let settings = |p: &Value| {
        json!({"steps": p["steps"], "cfg_scale": p["cfg_scale"], "sampler": p["sampler"], "width": p["width"],
               "height": p["height"]})
    };
    assert_eq!(settings(&job["params"]), xl_defaults, "{job}");
    assert_eq!(job["steps_total"], 2);
    let id = job["id"].as_i64().expect("id");
    let seen = events.until_finished(id).await;
    let statuses: Vec<&str> = seen
        .iter()
        .filter(|(name, data)| name == "job" && data["id"] == id)
        .filter_map(|(_, data)| data["status"].as_str())
        .collect();
    assert_eq!(statuses, ["queued", "running", "done"], "{seen:?}");
    let steps: Vec<&Value> = seen
        .iter()
        .filter(|(name, data)| name == "progress" && data["job_id"] == id)
        .map(|(_, data)| &data["step"])
        .collect();
    assert_eq!(steps, [&json!(1), &json!(2)], "progress as with one model");
    let done = t.wait_finished(id).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["params"]["model"], "xl", "the stored params name the model");
    let (_, image) = t.get(&format!("/api/images/{}", done["image_id"])).await;
    assert_eq!(image["params"]["model"], "xl");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(128), Some(128))
    );
    assert_eq!(
        image_weights(&t, &done["image_id"]).await,
        "tiny-sdxl",
        "made by the SDXL files"
    );
    assert_eq!(loaded(&t).await, ["xl"]);

    // No `model`: the loaded one, with its defaults.
    let job = t
        .submit(json!({"prompt": "fire", "seed": 6, "steps": 1, "width": 64, "height": 64}))
        .await;
    assert_eq!(
        (&job["params"]["model"], &job["params"]["sampler"]),
        (&json!("xl"), &json!("k_euler"))
    );
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(image_weights(&t, &done["image_id"]).await, "tiny-sdxl");

    // Back to `sd`: its own defaults, its files.
    let job = t
        .submit(json!({"prompt": "fire", "seed": 7, "steps": 2, "width": 64, "height": 64, "model": "sd"}))
        .await;
    assert_eq!(
        (&job["params"]["model"], &job["params"]["sampler"]),
        (&json!("sd"), &json!("k_lms"))
    );
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["params"]["model"], "sd");
    assert_eq!(image_weights(&t, &done["image_id"]).await, "tiny-sd");
    assert_eq!(loaded(&t).await, ["sd"]);

    // A job on a model that had to be loaded for it cancels as any other.
    let job = t
        .submit(json!({"prompt": "fire", "seed": 8, "steps": 1000, "width": 64, "height": 64, "model": "xl"}))
        .await;
    let id = job["id"].as_i64().expect("id");
    t.wait_job(id, |j| j["steps_done"].as_i64().unwrap_or(0) >= 1).await;
    assert_eq!(loaded(&t).await, ["xl"]);
    let (status, _) = t.post_json(&format!("/api/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let done = t.wait_finished(id).await;
    assert_eq!(done["status"], "canceled", "{done}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_that_cannot_be_described_are_left_out_and_file_defaults_apply() {
    let data = tempfile::tempdir().expect("tempdir");
    let t = start_configured(data, |c| {
        c.model = "sd".into();
        c.models = vec![
            named("broken", "/nonexistent/ember-test-model.safetensors"),
            NamedModel {
                sampler: Some("k_nope".into()),
                ..named("misspelt", &tiny_sd())
            },
            NamedModel {
                cfg_scale: Some(5.0),
                sampler: Some("ddim".into()),
                width: Some(64),
                height: Some(64),
                timestep_spacing: Some("trailing".into()),
                ..named("sd", &tiny_sd())
            },
        ];
    })
    .await;
    let server = t.server.as_ref().expect("running");
    assert_eq!(server.models, ["sd"]);
    assert_eq!(server.left_out.len(), 2, "{:?}", server.left_out);
    assert!(server.left_out[0].contains("'broken'"), "{:?}", server.left_out);
    assert!(
        server.left_out[1].contains("'misspelt'") && server.left_out[1].contains("sampler"),
        "{:?}",
        server.left_out
    );

    let listed = models(&t).await;
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["sd"]);
    let sd = &listed["sd"];
    assert_eq!(sd["loaded"], true);
    assert_eq!(
        sd["defaults"],
        json!({"steps": 50, "cfg_scale": 5.0, "sampler": "ddim", "width": 64, "height": 64})
    );
    assert_eq!(sd["timestep_spacing"], "trailing", "the models file's");
    assert_eq!(sd["description"], Value::Null);
    assert!(
        sd["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .any(|n| n.as_str().unwrap_or("").contains("models file")),
        "{sd}"
    );
    let (_, doc) = t.get("/api/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("ParamsInput", "model"),
        ("Params", "model"),
        ("ModelInfo", "description"),
    ] {
        assert!(
            schemas[schema]["properties"][field].is_object(),
            "{schema}.{field} is documented"
        );
    }
    assert_error(
        t.post_json("/api/jobs", &json!({"prompt": "fire", "model": "broken"}))
            .await,
        StatusCode::BAD_REQUEST,
        Some("model"),
        "a model left out",
    );

    // The file's schedule setting is the default; a job's own wins; "" is the default again.
    let base = json!({"prompt": "fire", "seed": 1, "steps": 2, "model": "sd"});
    let job = t.submit(base.clone()).await;
    let p = &job["params"];
    assert_eq!(
        (
            &p["timestep_spacing"],
            &p["prediction_type"],
            &p["sampler"],
            &p["cfg_scale"],
            &p["width"]
        ),
        (
            &json!("trailing"),
            &Value::Null,
            &json!("ddim"),
            &json!(5.0),
            &json!(64)
        )
    );
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    for (value, expected) in [(json!("leading"), "leading"), (json!(""), "trailing")] {
        let mut body = base.clone();
        body["timestep_spacing"] = value;
        let job = t.submit(body).await;
        assert_eq!(job["params"]["timestep_spacing"], expected, "{job}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_fails_its_job_and_the_next_job_loads_its_own() {
    let models_dir = tempfile::tempdir().expect("tempdir");
    let gone = models_dir.path().join("gone.safetensors");
    std::fs::copy(fixture("tiny-sd.safetensors"), &gone).expect("copy");
    let data = tempfile::tempdir().expect("tempdir");
    let t = start_configured(data, |c| {
        c.model = "sd".into();
        c.models = vec![named("gone", &gone.display().to_string()), named("sd", &tiny_sd())];
    })
    .await;
    assert_eq!(models(&t).await.keys().collect::<Vec<_>>(), ["gone", "sd"]);
    // Described at startup, removed before its job runs.
    std::fs::remove_file(&gone).expect("remove");

    let small = json!({"prompt": "fire", "seed": 1, "steps": 1, "width": 64, "height": 64});
    let mut body = small.clone();
    body["model"] = json!("gone");
    let job = t.submit(body).await;
    let failed = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().expect("an error");
    assert!(error.contains("cannot load the model 'gone'"), "{error}");
    assert!(
        !error.contains(&*models_dir.path().to_string_lossy()),
        "no server path in the error: {error}"
    );
    assert_eq!(loaded(&t).await, Vec::<String>::new(), "sd was dropped for it");

    // Jobs without a model stay on the last model that loaded.
    let job = t.submit(small).await;
    assert_eq!(job["params"]["model"], "sd");
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(loaded(&t).await, ["sd"]);
    t.stop().await;
}
