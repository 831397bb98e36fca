//! `progress`, `interrupt` and `skip`: A1111's view of the job running now, whichever API queued it.

use super::generate::chrono_stamp;
use super::Result;
use crate::blocking::Source;
use crate::AppState;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

#[utoipa::path(get, path = "/sdapi/v1/progress", tag = "automatic1111",
    params(("skip_current_image" = Option<bool>, Query, description = "Leave the preview out")),
    responses((status = 200, description = "`{\"progress\": 0..1, \"eta_relative\", \"state\": {…}, \"current_image\": \
        base64 PNG|null, \"textinfo\"}` of the job running now (whichever API queued it)", body = Object)))]
pub async fn progress(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let skip_image = query
        .get("skip_current_image")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let running = state.db.running_id().await;
    let queued = state
        .db
        .list_jobs(Some(crate::types::JobStatus::Queued), 500)
        .await?
        .len();
    let Some(id) = running else {
        return Ok(Json(json!({
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": state_dict("", queued, 0, 0),
            "current_image": null,
            "textinfo": null,
        })));
    };
    let job = state.db.get_job(id).await?;
    let latest = state.events.latest_progress().filter(|p| p.job_id == id);
    let (step, total) = match (&latest, &job) {
        (Some(p), _) => (p.step, p.total),
        (None, Some(job)) => (job.steps_done.max(0) as usize, job.steps_total.max(0) as usize),
        (None, None) => (0, 0),
    };
    let progress = if total > 0 { step as f64 / total as f64 } else { 0.0 };
    let current_image = latest
        .as_ref()
        .filter(|_| !skip_image)
        .and_then(|p| p.preview.strip_prefix("data:image/png;base64,").map(str::to_string));
    Ok(Json(json!({
        "progress": progress,
        "eta_relative": latest.as_ref().map_or(0.0, |p| p.eta_s),
        "state": state_dict(&format!("job {id}"), queued + 1, step, total),
        "current_image": current_image,
        "textinfo": format!("job {id}: step {step} of {total}"),
    })))
}

/// A1111's `shared.state.dict()`.
fn state_dict(job: &str, job_count: usize, step: usize, steps: usize) -> Value {
    json!({
        "skipped": false,
        "interrupted": false,
        "stopping_generation": false,
        "job": job,
        "job_count": job_count,
        "job_timestamp": chrono_stamp(),
        "job_no": 0,
        "sampling_step": step,
        "sampling_steps": steps,
    })
}

#[utoipa::path(post, path = "/sdapi/v1/interrupt", tag = "automatic1111",
    responses((status = 200, description = "Cancels the job running now (whichever API queued it) and, when it \
        belongs to an A1111 txt2img/img2img request, that request's other images; the request answers with the \
        images done before", body = Object)))]
pub async fn interrupt(State(state): State<AppState>) -> Result<Json<Value>> {
    if let Some(id) = state.db.running_id().await {
        let mut ids = state.requests.siblings(Source::A1111, id);
        ids.retain(|&other| other != id);
        // The running one first, so the worker does not start the next of the request meanwhile… and the rest.
        for id in std::iter::once(id).chain(ids) {
            let _ = crate::api::cancel(&state, id).await;
        }
    }
    Ok(Json(json!({})))
}

#[utoipa::path(post, path = "/sdapi/v1/skip", tag = "automatic1111",
    responses((status = 200, description = "Cancels the job running now only (the request's other images go on)",
        body = Object)))]
pub async fn skip(State(state): State<AppState>) -> Result<Json<Value>> {
    if let Some(id) = state.db.running_id().await {
        let _ = crate::api::cancel(&state, id).await;
    }
    Ok(Json(json!({})))
}
