//! `GET /api/models` describes the loaded model (family, prediction type, timestep spacing, defaults, notes), and
//! jobs that leave steps, CFG scale, sampler or size out take that model's defaults.

mod common;

use common::{assert_error, fixture, start, start_configured};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The one model `GET /api/models` lists.
async fn loaded_model(t: &common::TestServer) -> Value {
    let (status, models) = t.get("/api/models").await;
    assert_eq!(status, StatusCode::OK, "{models}");
    let list = models["models"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{models}");
    list[0].clone()
}

/// The params a job resolved to, for the fields a model gives defaults to.
fn settings(params: &Value) -> Value {
    json!({
        "steps": params["steps"],
        "cfg_scale": params["cfg_scale"],
        "sampler": params["sampler"],
        "width": params["width"],
        "height": params["height"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_reports_the_family_schedule_defaults_and_notes_of_the_loaded_model() {
    let t = start().await;
    let model = loaded_model(&t).await;
    assert_eq!(model["loaded"], true);
    assert!(model["name"].as_str().is_some_and(|n| !n.is_empty()), "{model}");
    assert_eq!(model["family"], json!({"id": "sd1", "name": "SD 1.x"}));
    assert_eq!(model["prediction_type"], "epsilon");
    assert_eq!(
        model["timestep_spacing"], "karras-kdiffusion",
        "InvokeAI's spacing for SD 1.x"
    );
    // SD 1.x's defaults are InvokeAI's.
    assert_eq!(
        model["defaults"],
        json!({"steps": 50, "cfg_scale": 7.5, "sampler": "k_lms", "width": 512, "height": 512})
    );
    assert!(model["native_size"].as_u64().is_some_and(|n| n > 0), "{model}");
    assert!(model["notes"].is_array(), "{model}");

    let (_, doc) = t.get("/api/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    for field in ["family", "prediction_type", "timestep_spacing", "defaults", "notes"] {
        assert!(
            schemas["ModelInfo"]["properties"][field].is_object(),
            "ModelInfo.{field} is documented"
        );
    }
    assert!(schemas["ModelDefaults"]["properties"]["sampler"].is_object());
    assert!(schemas["FamilyInfo"]["properties"]["id"].is_object());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_without_settings_take_the_model_defaults_and_report_them() {
    let t = start().await;
    let defaults = loaded_model(&t).await["defaults"].clone();

    // Nothing but the prompt: every default is the model's, and the job says which values it runs with.
    let job = t.submit(json!({"prompt": "fire", "seed": 1})).await;
    assert_eq!(settings(&job["params"]), defaults, "{job}");
    assert_eq!(job["steps_total"], defaults["steps"]);
    let id = job["id"].as_i64().expect("id");
    let (_, stored) = t.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(settings(&stored["params"]), defaults, "stored: {stored}");
    assert_eq!(stored["params"]["prediction_type"], Value::Null, "the model's own");
    assert_eq!(stored["params"]["timestep_spacing"], Value::Null, "the model's own");
    // 50 steps at 512² are not needed to show it.
    let (status, canceled) = t.post_json(&format!("/api/jobs/{id}/cancel"), &json!({})).await;
    assert!(
        status == StatusCode::OK || status == StatusCode::CONFLICT,
        "{status}: {canceled}"
    );

    // What a client sets wins, field by field.
    let job = t
        .submit(json!({"prompt": "fire", "seed": 1, "steps": 2, "sampler": "k_euler", "width": 64}))
        .await;
    let mut expected = defaults.clone();
    expected["steps"] = json!(2);
    expected["sampler"] = json!("k_euler");
    expected["width"] = json!(64);
    assert_eq!(settings(&job["params"]), expected, "{job}");
    let id = job["id"].as_i64().expect("id");
    t.post_json(&format!("/api/jobs/{id}/cancel"), &json!({})).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_type_and_timestep_spacing_are_checked_at_submit_and_run() {
    let t = start().await;
    let base = json!({"prompt": "fire", "seed": 7, "steps": 2, "width": 64, "height": 64});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for (field, value) in [
        ("prediction_type", json!("x0")),
        ("prediction_type", json!(3)),
        ("timestep_spacing", json!("evenly")),
        ("timestep_spacing", json!(true)),
    ] {
        let message = assert_error(
            t.post_json("/api/jobs", &with(field, value.clone())).await,
            StatusCode::BAD_REQUEST,
            Some(field),
            &format!("{field} {value}"),
        );
        assert!(!message.is_empty());
    }
    let (status, jobs) = t.get("/api/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(0),
        "nothing was queued: {jobs}"
    );

    // Aliases are stored by their engine names; "" is the model's own; the job runs with them.
    let mut body = with("prediction_type", json!("v"));
    body["timestep_spacing"] = json!("trailing");
    let job = t.submit(body).await;
    assert_eq!(job["params"]["prediction_type"], "v_prediction");
    assert_eq!(job["params"]["timestep_spacing"], "trailing");
    let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["params"], job["params"]);

    let mut body = with("prediction_type", json!(""));
    body["timestep_spacing"] = json!(null);
    let job = t.submit(body).await;
    assert_eq!(job["params"]["prediction_type"], Value::Null);
    assert_eq!(job["params"]["timestep_spacing"], Value::Null);
    t.stop().await;
}

/// The tiny SD 2.x, SDXL and LCM models (diffusers folders written by tools/oracle/make_family_models.py) report
/// their own family, schedule and defaults, and a job without settings runs with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_families_report_their_own_defaults_and_jobs_use_them() {
    // (fixture, family id, prediction type, spacing, defaults): the family's rules in `ember::model::family`,
    // applied to what each folder's scheduler config says (all say `leading`, which SD 1.x/2.x read as InvokeAI's
    // spacing).
    let cases = [
        (
            "tiny-sd2",
            "sd2",
            "v_prediction",
            "karras-kdiffusion",
            (50, 7.5, "k_lms", 64u64),
        ),
        ("tiny-sdxl", "sdxl", "epsilon", "leading", (50, 7.5, "k_euler", 128)),
        ("tiny-lcm", "sd1", "epsilon", "karras-kdiffusion", (4, 8.0, "lcm", 512)),
    ];
    for (name, family, prediction, spacing, (steps, cfg, sampler, size)) in cases {
        let data = tempfile::tempdir().expect("tempdir");
        let t = start_configured(data, |c| c.model = fixture(name).display().to_string()).await;
        let model = loaded_model(&t).await;
        assert_eq!(model["family"]["id"], family, "{name}: {model}");
        assert_eq!(model["prediction_type"], prediction, "{name}: {model}");
        assert_eq!(model["timestep_spacing"], spacing, "{name}: {model}");
        let defaults = json!({"steps": steps, "cfg_scale": cfg, "sampler": sampler, "width": size, "height": size});
        assert_eq!(model["defaults"], defaults, "{name}: {model}");

        let job = t.submit(json!({"prompt": "fire", "seed": 3})).await;
        assert_eq!(settings(&job["params"]), defaults, "{name}: {job}");
        if size <= 128 {
            // Small enough to run here: the image has the model's size.
            let done = t.wait_finished(job["id"].as_i64().expect("id")).await;
            assert_eq!(done["status"], "done", "{name}: {done}");
            let (_, image) = t.get(&format!("/api/images/{}", done["image_id"])).await;
            assert_eq!(
                (image["width"].as_u64(), image["height"].as_u64()),
                (Some(size), Some(size))
            );
        }
        t.stop().await;
    }
}
