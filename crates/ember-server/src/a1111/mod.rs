//! AUTOMATIC1111's HTTP API (`/sdapi/v1/…`), as the `webuiapi` client, chat front-ends and painting plugins use it,
//! translated onto Ember's jobs (docs/api.md, "AUTOMATIC1111 API").
//!
//! `txt2img` and `img2img` block until their images are done, as A1111's do, but every image is an Ember job
//! (`blocking.rs`): it shows in the page's progress and gallery, can be canceled there, and its PNG carries the same
//! metadata as the CLI's. Fields are read leniently, as A1111's pydantic models do: unknown ones and features Ember
//! does not have are accepted and ignored, each ignored setting that would have changed the image named in the
//! answer's `info.notes`. Semantics stay Ember's where they differ (img2img's step count, `resize_mode`, prompt
//! syntax); the translation table is in docs/api.md.
//!
//! Errors have A1111's shapes: `422 {"detail": [{"loc", "msg", "type"}]}` (FastAPI's validation error) for a bad
//! field, the message naming it (`init_images[0]: not an image …`), and `{"error", "detail", "body", "errors"}`
//! (A1111's exception handler) for the rest.
//!
//! The parts:
//! - `fields.rs`: reading a JSON body leniently, and which unread fields are worth a note;
//! - `model.rs`: which model a request runs on (`override_settings`, `POST options`, A1111 titles);
//! - `images.rs`: uploaded images and masks;
//! - `samplers.rs`: A1111's sampler and scheduler names;
//! - `request.rs`: a txt2img/img2img body translated into Ember job parameters (seeds, hires fix, init image and
//!   mask, notes on what is ignored);
//! - `generate.rs`: the `txt2img`/`img2img` handlers: running the jobs and building `{images, parameters, info}`;
//! - `progress.rs`: `progress`, `interrupt`, `skip`;
//! - `lists.rs`: options, models, samplers, schedulers, add-ons and the routes that answer empty;
//! - `infotext.rs`: `png-info` and A1111's infotext parser;
//! - here: the error type and A1111's error shapes.

mod fields;
mod generate;
mod images;
mod infotext;
mod lists;
mod model;
mod progress;
mod request;
mod samplers;

// The handlers (and utoipa's `__path_*` items, which `openapi.rs` reaches through this module).
pub use generate::{__path_img2img, __path_txt2img, img2img, txt2img};
pub use infotext::{__path_png_info, png_info};
pub use lists::{
    __path_embeddings, __path_get_options, __path_loras, __path_samplers, __path_schedulers, __path_sd_models,
    __path_set_options, cmd_flags, embeddings, empty_list, get_options, loras, no_op, samplers, schedulers, scripts,
    sd_models, set_options,
};
pub use model::Settings;
pub use progress::{__path_interrupt, __path_progress, __path_skip, interrupt, progress, skip};

pub(crate) use images::encode_png;

use crate::error::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An error in one of A1111's shapes (see the module documentation).
#[derive(Debug)]
pub struct A1111Error(pub ApiError);

impl From<ApiError> for A1111Error {
    fn from(mut e: ApiError) -> Self {
        e.field = e.field.map(|f| a1111_field(&f));
        Self(e)
    }
}

impl From<ember::Error> for A1111Error {
    fn from(e: ember::Error) -> Self {
        ApiError::from(e).into()
    }
}

type Result<T> = std::result::Result<T, A1111Error>;

/// A refused field: `422`, `field: message`.
fn invalid(field: &str, message: impl std::fmt::Display) -> A1111Error {
    A1111Error(ApiError::bad_request(Some(field), message.to_string()))
}

/// The A1111 name of an Ember request field, for errors the shared checks raise.
fn a1111_field(field: &str) -> String {
    match field {
        "init_image" => "init_images[0]",
        "init_mask" => "mask",
        "strength" => "denoising_strength",
        "invert_mask" => "inpainting_mask_invert",
        "seamless" => "tiling",
        "sampler" => "sampler_name",
        "model" => "override_settings.sd_model_checkpoint",
        "with_variations" | "variation_amount" => "subseed_strength",
        "hires_fix" => "enable_hr",
        other => other,
    }
    .to_string()
}

/// `init_images[0]` → `["body", "init_images", 0]`.
fn location(field: &str) -> Vec<Value> {
    let mut loc = vec![json!("body")];
    for part in field.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            loc.push(json!(&rest[..open]));
            rest = &rest[open..];
            while let Some(inner) = rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
                loc.push(inner.0.parse::<u64>().map_or_else(|_| json!(inner.0), |i| json!(i)));
                rest = inner.1;
            }
        } else {
            loc.push(json!(rest));
        }
    }
    loc
}
/// The body of an A1111 error (also for the access guard's refusals on `/sdapi/` paths).
pub fn error_response(e: ApiError) -> Response {
    let message = crate::error::clip_message(&e.message);
    let text = match &e.field {
        Some(field) if !message.starts_with(field.as_str()) => format!("{field}: {message}"),
        _ => message,
    };
    if e.status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("{text}");
    }
    let body = if e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::UNPROCESSABLE_ENTITY {
        let loc = e.field.as_deref().map_or_else(|| vec![json!("body")], location);
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        let body = json!({
            "detail": [{"loc": loc, "msg": text, "type": "value_error"}],
            "error": "RequestValidationError",
            "body": "",
            "errors": text,
        });
        return (status, Json(body)).into_response();
    } else {
        json!({
            "error": if e.status.is_server_error() { "RuntimeError" } else { "HTTPException" },
            "detail": text,
            "body": "",
            "errors": text,
        })
    };
    (e.status, Json(body)).into_response()
}

impl IntoResponse for A1111Error {
    fn into_response(self) -> Response {
        error_response(self.0)
    }
}

/// A1111's answer to an unknown path under `/sdapi/v1`.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_locations_split_fields() {
        assert_eq!(
            location("init_images[0]"),
            vec![json!("body"), json!("init_images"), json!(0)]
        );
        assert_eq!(
            location("override_settings.sd_model_checkpoint"),
            vec![json!("body"), json!("override_settings"), json!("sd_model_checkpoint")]
        );
    }
}
