//! A1111's settings and lists: `options` (the model later requests run on), `sd-models`, `samplers`, `schedulers`,
//! `loras`, `embeddings`, and the routes Ember answers with an empty list or nothing (VAEs, upscalers, scripts,
//! refreshes…).

use super::fields::Fields;
use super::model::{current_model_name, find_model, request_model};
use super::samplers::SAMPLERS;
use super::{invalid, Result};
use crate::error::clip;
use crate::types::AddonEntry;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use ember::addons::AddonKind;
use serde_json::{json, Map, Value};

#[utoipa::path(get, path = "/sdapi/v1/options", tag = "automatic1111",
    responses((status = 200, description = "`sd_model_checkpoint` (the model A1111 requests run on), \
        `sd_checkpoint_hash`, `samples_format` and a few more of A1111's settings", body = Object)))]
pub async fn get_options(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "sd_model_checkpoint": current_model_name(&state),
        "sd_checkpoint_hash": null,
        "samples_format": "png",
        "grid_format": "png",
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "img2img_fix_steps": false,
        "enable_pnginfo": true,
    }))
}

#[utoipa::path(post, path = "/sdapi/v1/options", tag = "automatic1111",
    request_body(content = Object, description = "`{\"sd_model_checkpoint\": NAME}`: a model name or A1111 title"),
    responses((status = 200, description = "The model is the default of later A1111 requests (it loads when the \
        first of them runs); other settings are ignored", body = Object),
        (status = 422, description = "Unknown model", body = Object)))]
pub async fn set_options(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    let mut f = Fields::parse(&body)?;
    if let Some(name) = f.string("sd_model_checkpoint")? {
        let served = find_model(&state, &name).ok_or_else(|| {
            invalid(
                "sd_model_checkpoint",
                format!(
                    "there is no model '{}' on this server; its models are {} (GET /sdapi/v1/sd-models)",
                    clip(&name),
                    state.models.names()
                ),
            )
        })?;
        state.a1111.set_model(served.name().to_string());
    }
    Ok(Json(Value::Null))
}

#[utoipa::path(get, path = "/sdapi/v1/sd-models", tag = "automatic1111",
    responses((status = 200, description = "`[{\"title\", \"model_name\", \"hash\", \"sha256\", \"filename\", \
        \"config\"}]`: the server's models (no file paths)", body = Object)))]
pub async fn sd_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .models
        .infos()
        .into_iter()
        .map(|m| {
            json!({
                "title": m.name,
                "model_name": m.name,
                "hash": null,
                "sha256": null,
                "filename": m.name,
                "config": null,
            })
        })
        .collect();
    Json(Value::Array(models))
}

#[utoipa::path(get, path = "/sdapi/v1/samplers", tag = "automatic1111",
    responses((status = 200, description = "`[{\"name\", \"aliases\", \"options\"}]`", body = Object)))]
pub async fn samplers() -> Json<Value> {
    let list: Vec<Value> = SAMPLERS
        .iter()
        .map(|(name, kind, aliases, karras)| {
            let options = if *karras {
                json!({"scheduler": "karras"})
            } else {
                json!({})
            };
            json!({"name": name, "aliases": aliases, "options": options, "ember": kind.name()})
        })
        .collect();
    Json(Value::Array(list))
}

#[utoipa::path(get, path = "/sdapi/v1/schedulers", tag = "automatic1111",
    responses((status = 200, description = "`automatic`, `uniform`, `karras`", body = Object)))]
pub async fn schedulers() -> Json<Value> {
    Json(json!([
        {"name": "automatic", "label": "Automatic", "aliases": null, "default_rho": -1, "need_inner_model": false},
        {"name": "uniform", "label": "Uniform", "aliases": null, "default_rho": -1, "need_inner_model": true},
        {"name": "karras", "label": "Karras", "aliases": null, "default_rho": 7.0, "need_inner_model": false},
    ]))
}

/// The add-on entries of the model A1111 requests run on.
async fn addon_entries(state: &AppState, kind: AddonKind) -> Result<(Vec<AddonEntry>, String)> {
    let served = request_model(state, None)?;
    let family = served.info.family.id.clone();
    Ok((crate::addons::entries(state, served, kind).await?, family))
}

#[utoipa::path(get, path = "/sdapi/v1/loras", tag = "automatic1111",
    responses((status = 200, description = "`[{\"name\", \"alias\", \"path\", \"metadata\"}]` of the A1111 model's \
        library (`path` is the name: no server paths)", body = Object)))]
pub async fn loras(State(state): State<AppState>) -> Result<Json<Value>> {
    let (entries, _) = addon_entries(&state, AddonKind::Lora).await?;
    let list: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            json!({
                "name": e.name,
                "alias": e.name,
                "path": e.name,
                "metadata": {"family": e.family, "trigger_words": e.trigger_words},
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[utoipa::path(get, path = "/sdapi/v1/embeddings", tag = "automatic1111",
    responses((status = 200, description = "`{\"loaded\": {NAME: {…}}, \"skipped\": {NAME: {…}}}`: skipped are \
        those made for another family or unreadable", body = Object)))]
pub async fn embeddings(State(state): State<AppState>) -> Result<Json<Value>> {
    let (entries, family) = addon_entries(&state, AddonKind::Embedding).await?;
    let (mut loaded, mut skipped) = (Map::new(), Map::new());
    for e in entries {
        let usable = e.error.is_none() && e.family.as_deref().is_none_or(|f| f == family);
        let item = json!({
            "step": null,
            "sd_checkpoint": null,
            "sd_checkpoint_name": null,
            "shape": null,
            "vectors": e.vectors,
        });
        if usable {
            loaded.insert(e.name, item);
        } else {
            skipped.insert(e.name, item);
        }
    }
    Ok(Json(json!({"loaded": loaded, "skipped": skipped})))
}

/// `GET /sdapi/v1/sd-vae`, `upscalers`, `hypernetworks`, `face-restorers`, `prompt-styles`…: Ember has none.
pub async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/scripts`: no scripts (webuiapi asks at start to find extensions).
pub async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}

/// `GET /sdapi/v1/cmd-flags`: the few of A1111's flags a client may look at.
pub async fn cmd_flags() -> Json<Value> {
    Json(json!({"api": true, "nowebui": false, "listen": false, "ckpt_dir": null, "lora_dir": null}))
}

/// `POST /sdapi/v1/refresh-checkpoints`, `refresh-loras`…: Ember lists its files at startup; nothing to do.
pub async fn no_op() -> Json<Value> {
    Json(Value::Null)
}
