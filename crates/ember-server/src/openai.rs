//! OpenAI's Images API (`/v1/images/generations`, `/v1/images/edits`, `/v1/models`), as the `openai` client libraries
//! and front-ends such as Open WebUI and LibreChat call it with a custom base URL (docs/api.md, "OpenAI Images API").
//!
//! Every image is an Ember job run through the queue (`blocking.rs`), so it shows on the page and in the gallery.
//! `model` is an Ember model name (OpenAI's own model names run on the server's current model); `size` is the image
//! size; `response_format` is `b64_json` (the default, as for OpenAI's GPT image models) or `url` (a gallery file URL
//! on this server). An edit's `mask` follows OpenAI's convention — its TRANSPARENT pixels are the area to edit — and
//! is turned into Ember's white-means-repaint mask. Errors are `{"error": {"message", "type", "param", "code"}}`.

use crate::api::Upload;
use crate::blocking::{self, Source, Submission};
use crate::error::{clip, clip_message, ApiError};
use crate::models::Served;
use crate::types::{JobStatus, ParamsInput};
use crate::upload::MAX_UPLOAD_BYTES;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::prelude::{Engine, BASE64_STANDARD};
use ember::request::random_seed;
use serde_json::{json, Value};

/// Most images one request may ask for (`n`), as OpenAI's limit.
pub const MAX_N: i64 = 10;

/// Largest text part of an edit's form.
const MAX_TEXT_PART: usize = 64 * 1024;

/// An error in OpenAI's shape, with an optional `code`.
#[derive(Debug)]
pub struct OpenAiError {
    pub error: ApiError,
    pub code: Option<&'static str>,
}

impl From<ApiError> for OpenAiError {
    fn from(mut error: ApiError) -> Self {
        error.field = error.field.map(|f| openai_param(&f));
        Self { error, code: None }
    }
}

impl From<ember::Error> for OpenAiError {
    fn from(e: ember::Error) -> Self {
        ApiError::from(e).into()
    }
}

type Result<T> = std::result::Result<T, OpenAiError>;

fn invalid(param: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError {
        error: ApiError::bad_request(Some(param), message),
        code: None,
    }
}

/// The OpenAI name of an Ember request field, for errors the shared checks raise.
fn openai_param(field: &str) -> String {
    match field {
        "init_image" => "image",
        "init_mask" => "mask",
        "width" | "height" => "size",
        other => other,
    }
    .to_string()
}

/// The body of an OpenAI error (also for the access guard's refusals on `/v1/` paths).
pub fn error_response(e: ApiError, code: Option<&str>) -> Response {
    let message = clip_message(&e.message);
    if e.status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("{message}");
    }
    let message = match &e.field {
        Some(field) if !message.starts_with(field.as_str()) => format!("{field}: {message}"),
        _ => message,
    };
    let kind = if e.status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let code = code.or(match e.status {
        StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
        _ => None,
    });
    let body = json!({"error": {"message": message, "type": kind, "param": e.field, "code": code}});
    (e.status, Json(body)).into_response()
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        error_response(self.error, self.code)
    }
}

/// OpenAI's answer to an unknown path under `/v1`.
pub async fn not_found() -> Response {
    error_response(
        ApiError::not_found(
            "no such endpoint; Ember serves POST /v1/images/generations, POST /v1/images/edits and GET /v1/models",
        ),
        Some("unknown_url"),
    )
}

/// What a generation or an edit asks for, from JSON or from the edit's form parts.
#[derive(Debug, Default)]
struct Options {
    prompt: Option<String>,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
    model: Option<String>,
    /// Ember's extensions: not OpenAI fields.
    seed: Option<i64>,
    negative_prompt: Option<String>,
    steps: Option<i64>,
    cfg_scale: Option<f64>,
    strength: Option<f64>,
}

impl Options {
    /// Sets `key` from a form part's text; false when the key is not one of ours (it is ignored).
    fn set_text(&mut self, key: &str, text: String) -> Result<bool> {
        let number = |text: &str| {
            text.trim()
                .parse::<i64>()
                .map_err(|_| invalid(key, format!("'{}' is not a whole number", clip(text))))
        };
        let float = |text: &str| {
            text.trim()
                .parse::<f64>()
                .map_err(|_| invalid(key, format!("'{}' is not a number", clip(text))))
        };
        match key {
            "prompt" => self.prompt = Some(text),
            "n" => self.n = Some(number(&text)?),
            "size" => self.size = Some(text),
            "response_format" => self.response_format = Some(text),
            "model" => self.model = Some(text),
            "seed" => self.seed = Some(number(&text)?),
            "negative_prompt" => self.negative_prompt = Some(text),
            "steps" => self.steps = Some(number(&text)?),
            "cfg_scale" => self.cfg_scale = Some(float(&text)?),
            "strength" => self.strength = Some(float(&text)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// From a JSON object; other keys (`quality`, `style`, `user`, …) are ignored.
    fn from_json(body: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| OpenAiError::from(ApiError::bad_request(None, format!("the body is not valid JSON: {e}"))))?;
        let Value::Object(map) = value else {
            return Err(ApiError::bad_request(None, "the body must be a JSON object").into());
        };
        let mut options = Options::default();
        for (key, value) in map {
            let text = match value {
                Value::Null => continue,
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                other
                    if [
                        "prompt",
                        "n",
                        "size",
                        "response_format",
                        "model",
                        "seed",
                        "negative_prompt",
                        "steps",
                        "cfg_scale",
                        "strength",
                    ]
                    .contains(&key.as_str()) =>
                {
                    return Err(invalid(
                        &key,
                        format!("{} has the wrong type", clip(&other.to_string())),
                    ))
                }
                _ => continue,
            };
            if matches!(key.as_str(), "n" | "seed" | "steps") && text.contains(['.', 'e', 'E']) {
                return Err(invalid(&key, format!("{text} is not a whole number")));
            }
            options.set_text(&key, text)?;
        }
        Ok(options)
    }
}

/// The model: an Ember model name; OpenAI's own names (`dall-e-3`, `gpt-image-1`, …) and none mean the server's
/// current model.
fn model<'a>(state: &'a AppState, name: Option<&str>) -> Result<&'a Served> {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    let openai_own = |n: &str| {
        let n = n.to_ascii_lowercase();
        n.starts_with("dall-e") || n.starts_with("gpt-image") || n.starts_with("chatgpt-image")
    };
    match name {
        None => Ok(state.models.get(state.models.current())),
        Some(n) if state.models.find(n).is_none() && openai_own(n) => Ok(state.models.get(state.models.current())),
        Some(n) => state
            .models
            .find(n)
            .map(|i| state.models.get(i))
            .ok_or_else(|| OpenAiError {
                error: ApiError::new(
                    StatusCode::NOT_FOUND,
                    Some("model"),
                    format!(
                        "the model '{}' does not exist on this server; its models are {} (GET /v1/models)",
                        clip(n),
                        state.models.names()
                    ),
                ),
                code: Some("model_not_found"),
            }),
    }
}

/// `"512x768"` → (512, 768); `"auto"` → None. Sides are multiples of 8 in 8..=4096.
fn size(text: Option<&str>) -> Result<Option<(usize, usize)>> {
    let Some(text) = text
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("auto"))
    else {
        return Ok(None);
    };
    let parsed = text
        .split_once(['x', 'X', '×'])
        .and_then(|(w, h)| Some((w.trim().parse::<usize>().ok()?, h.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((w, h)) if [w, h].iter().all(|v| (8..=4096).contains(v) && v % 8 == 0) => Ok(Some((w, h))),
        Some(_) => Err(invalid(
            "size",
            format!(
                "'{}': both sides must be multiples of 8 from 8 to 4096 (e.g. 512x512, 1024x1024)",
                clip(text)
            ),
        )),
        None => Err(invalid(
            "size",
            format!("'{}' is not WIDTHxHEIGHT (e.g. 1024x1024) or auto", clip(text)),
        )),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    B64Json,
    Url,
}

fn format(text: Option<&str>) -> Result<Format> {
    match text.map(str::trim) {
        None | Some("") | Some("b64_json") => Ok(Format::B64Json),
        Some("url") => Ok(Format::Url),
        Some(other) => Err(invalid(
            "response_format",
            format!("'{}' is not b64_json or url", clip(other)),
        )),
    }
}

#[utoipa::path(post, path = "/v1/images/generations", tag = "openai",
    request_body(content = Object, description = "`{\"prompt\", \"n\", \"size\": \"WxH\", \"response_format\": \
        \"b64_json\"|\"url\", \"model\"}`; Ember extensions `seed`, `negative_prompt`, `steps`, `cfg_scale`"),
    responses((status = 200, description = "`{\"created\", \"data\": [{\"b64_json\"|\"url\", \"revised_prompt\": null}]}`",
        body = Object), (status = 400, description = "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`",
        body = Object), (status = 404, description = "Unknown model", body = Object)))]
pub async fn generations(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>> {
    let options = Options::from_json(&body)?;
    run(&state, &headers, options, None, None).await.map(Json)
}

#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    request_body(content = Object, content_type = "multipart/form-data", description = "`image` (or `image[]`; the \
        first is used), optional `mask` (transparent = the area to edit), `prompt`, `n`, `size`, `response_format`, \
        `model`; Ember extensions `strength` (default 0.75), `seed`, `negative_prompt`, `steps`, `cfg_scale`"),
    responses((status = 200, description = "As generations", body = Object),
        (status = 400, description = "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`", body = Object)))]
pub async fn edits(State(state): State<AppState>, headers: HeaderMap, request: Request) -> Result<Json<Value>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("multipart/form-data") {
        return Err(OpenAiError::from(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "send the edit as multipart/form-data with an `image` file part",
        )));
    }
    let mut multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|e| OpenAiError::from(ApiError::new(e.status(), None, e.body_text())))?;
    let mut options = Options::default();
    let (mut image, mut mask): (Option<Upload>, Option<Upload>) = (None, None);
    let mut extra_images = 0;
    loop {
        let field = multipart.next_field().await.map_err(|e| {
            OpenAiError::from(ApiError::new(
                e.status(),
                None,
                format!("cannot read the form: {}", e.body_text()),
            ))
        })?;
        let Some(mut field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        let param = match name.as_str() {
            "image" | "image[]" => "image",
            "mask" => "mask",
            _ => "",
        };
        let limit = if param.is_empty() {
            MAX_TEXT_PART
        } else {
            MAX_UPLOAD_BYTES
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| {
            OpenAiError::from(ApiError::new(
                e.status(),
                None,
                format!("cannot read the form: {}", e.body_text()),
            ))
        })? {
            if bytes.len() + chunk.len() > limit {
                return Err(OpenAiError::from(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some(if param.is_empty() { name.as_str() } else { param }),
                    format!("is larger than {limit} bytes"),
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        match param {
            "image" if image.is_some() => extra_images += 1,
            "image" => image = Some(("image.png".into(), bytes)),
            "mask" => mask = Some(("mask.png".into(), bytes)),
            _ => {
                let text = String::from_utf8(bytes).map_err(|_| invalid(&name, "is not UTF-8 text"))?;
                options.set_text(&name, text)?;
            }
        }
    }
    let _ = extra_images; // OpenAI's newer models take several images; Ember edits the first.
    let image = image.ok_or_else(|| invalid("image", "is required: the image to edit, as a file part"))?;
    if image.1.is_empty() {
        return Err(invalid("image", "the uploaded file is empty"));
    }
    let mask = match mask {
        Some((name, bytes)) => Some((name, openai_mask(&state, bytes).await?)),
        None => None,
    };
    run(&state, &headers, options, Some(image), mask).await.map(Json)
}

/// OpenAI's mask (transparent = edit) → Ember's (white = repaint), as a grey PNG.
async fn openai_mask(state: &AppState, bytes: Vec<u8>) -> Result<Vec<u8>> {
    crate::upload::probe_as(&bytes, "mask")?;
    let _permit = state
        .decodes
        .acquire_many(1)
        .await
        .map_err(|_| ApiError::unavailable("the server is stopping"))?;
    tokio::task::spawn_blocking(move || {
        let image = crate::upload::decode_as(&bytes, "mask")?;
        let rgba = image.to_rgba8();
        if !image.color().has_alpha() || rgba.pixels().all(|p| p[3] >= 128) {
            return Err(invalid(
                "mask",
                "the mask has no transparent pixels: OpenAI's masks mark the area to edit as fully transparent \
                 (alpha 0), and keep the opaque rest",
            ));
        }
        let grey = image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            image::Luma([if rgba.get_pixel(x, y)[3] < 128 { 255 } else { 0 }])
        });
        crate::a1111::encode_png(&image::DynamicImage::ImageLuma8(grey)).map_err(|e| OpenAiError::from(e.0))
    })
    .await
    .map_err(|e| OpenAiError::from(ApiError::internal(format!("the mask conversion failed: {e}"))))?
}

/// Submits the images, waits for them and answers in OpenAI's shape.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    options: Options,
    image: Option<Upload>,
    mask: Option<Upload>,
) -> Result<Value> {
    let prompt = options
        .prompt
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| invalid("prompt", "is required and must not be empty"))?;
    let n = options.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(invalid("n", format!("{n} is outside 1..={MAX_N}")));
    }
    let size = size(options.size.as_deref())?;
    let format = format(options.response_format.as_deref())?;
    let served = model(state, options.model.as_deref())?;
    let seed0 = match options.seed {
        None | Some(-1) => None,
        Some(s) => Some(u32::try_from(s).map_err(|_| invalid("seed", format!("{s} is not a seed in 0..=4294967295")))?),
    };
    let steps = match options.steps {
        None => None,
        Some(s) if (1..=1000).contains(&s) => Some(s as usize),
        Some(s) => return Err(invalid("steps", format!("{s} is outside 1..=1000"))),
    };
    let is_edit = image.is_some();
    let input = ParamsInput {
        prompt: Some(prompt.clone()),
        negative_prompt: options.negative_prompt,
        steps,
        cfg_scale: options.cfg_scale,
        seed: seed0,
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        strength: options.strength,
        // An edit is scaled into `size` when one is given.
        fit: Some(is_edit && size.is_some()),
        ..Default::default()
    };
    let base = served.resolve(input, random_seed)?;
    let uploads = (image, mask);
    let jobs = (0..n as u32)
        .map(|i| {
            let mut params = base.clone();
            params.seed = match seed0 {
                Some(s) => s.wrapping_add(i),
                None if i == 0 => base.seed,
                None => random_seed(),
            };
            Submission {
                model: served,
                params,
                uploads: uploads.clone(),
            }
        })
        .collect();
    let finished = blocking::run(state, Source::OpenAi, jobs).await?;
    let mut data = Vec::new();
    let mut canceled = 0;
    for f in &finished {
        match (&f.image, f.job.status) {
            (Some(done), _) => data.push(match format {
                Format::B64Json => json!({"b64_json": BASE64_STANDARD.encode(&done.png), "revised_prompt": null}),
                Format::Url => json!({"url": image_url(headers, done.image.id), "revised_prompt": null}),
            }),
            (None, JobStatus::Canceled) => canceled += 1,
            (None, _) => {
                let error = f.job.error.clone().unwrap_or_else(|| "the job failed".into());
                return Err(OpenAiError::from(ApiError::internal(format!(
                    "job {} failed: {error}",
                    f.job.id
                ))));
            }
        }
    }
    if data.is_empty() && canceled > 0 {
        return Err(OpenAiError {
            error: ApiError::conflict("the image was canceled (from Ember's page or API) before it was done"),
            code: Some("canceled"),
        });
    }
    let size = finished
        .iter()
        .find_map(|f| f.image.as_ref())
        .map(|d| format!("{}x{}", d.image.width, d.image.height));
    Ok(json!({
        "created": blocking::unix_now(),
        "data": data,
        "output_format": "png",
        "size": size,
    }))
}

/// The absolute URL of gallery image `id`'s file, on the host the request named (`https` behind a proxy that says
/// `X-Forwarded-Proto: https`).
fn image_url(headers: &HeaderMap, id: i64) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{host}/api/images/{id}/file")
}

fn model_object(name: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "ember"})
}

#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", \
        \"created\", \"owned_by\": \"ember\"}]}`: the server's models", body = Object)))]
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state.models.infos().iter().map(|m| model_object(&m.name)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let served = model(&state, Some(&id))?;
    Ok(Json(model_object(served.name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_multiples_of_8() {
        assert_eq!(size(Some("1024x1024")).ok().flatten(), Some((1024, 1024)));
        assert_eq!(size(Some("64X96")).ok().flatten(), Some((64, 96)));
        assert_eq!(size(Some("auto")).ok().flatten(), None);
        assert_eq!(size(None).ok().flatten(), None);
        for bad in ["100x100", "1024", "axb", "0x64", "8192x64"] {
            let e = size(Some(bad)).expect_err(bad);
            assert_eq!(e.error.field.as_deref(), Some("size"), "{bad}");
        }
    }

    #[test]
    fn json_options_check_types_and_ignore_openai_only_fields() {
        let o = Options::from_json(br#"{"prompt": "a", "n": 2, "quality": "hd", "style": "vivid", "user": "u"}"#)
            .expect("valid");
        assert_eq!((o.prompt.as_deref(), o.n), (Some("a"), Some(2)));
        let e = Options::from_json(br#"{"prompt": "a", "n": 1.5}"#).expect_err("not whole");
        assert_eq!(e.error.field.as_deref(), Some("n"));
        let e = Options::from_json(br#"{"prompt": ["a"]}"#).expect_err("wrong type");
        assert_eq!(e.error.field.as_deref(), Some("prompt"));
    }
}
