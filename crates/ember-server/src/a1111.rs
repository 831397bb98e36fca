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

use crate::blocking::{self, decode_base64, Source, Submission};
use crate::error::{clip, ApiError};
use crate::models::Served;
use crate::types::{AddonEntry, ParamsInput, Variation};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::prelude::{Engine, BASE64_STANDARD};
use ember::addons::AddonKind;
use ember::request::random_seed;
use ember::sample::SamplerKind;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Most images one request may ask for (`batch_size × n_iter`).
pub const MAX_IMAGES: i64 = 32;

/// `karras_max` that makes a k-sampler always run on the Karras schedule (steps are at most 1000).
const KARRAS_ALWAYS: usize = 1001;

/// A1111's sampler names, the engine's sampler, other names clients send for it, and whether A1111 (1.9+) runs it
/// on the Karras schedule when the scheduler is `automatic`.
const SAMPLERS: [(&str, SamplerKind, &[&str], bool); 11] = [
    (
        "Euler a",
        SamplerKind::KEulerA,
        &["k_euler_a", "k_euler_ancestral"],
        false,
    ),
    ("Euler", SamplerKind::KEuler, &["k_euler"], false),
    ("LMS", SamplerKind::KLms, &["k_lms"], false),
    ("Heun", SamplerKind::KHeun, &["k_heun"], false),
    ("DPM2", SamplerKind::KDpm2, &["k_dpm_2"], true),
    ("DPM2 a", SamplerKind::KDpm2A, &["k_dpm_2_a"], true),
    ("DPM++ 2M", SamplerKind::KDpmpp2, &["k_dpmpp_2m", "k_dpmpp_2"], true),
    (
        "DPM++ 2S a",
        SamplerKind::KDpmpp2A,
        &["k_dpmpp_2s_a", "k_dpmpp_2_a"],
        true,
    ),
    ("DDIM", SamplerKind::Ddim, &["ddim"], false),
    ("PLMS", SamplerKind::Plms, &["plms"], false),
    ("LCM", SamplerKind::Lcm, &["lcm", "k_lcm"], false),
];

/// The A1111 API's own settings: the model `POST /sdapi/v1/options` chose for its later requests.
#[derive(Default)]
pub struct Settings {
    model: Mutex<Option<String>>,
}

impl Settings {
    fn model(&self) -> Option<String> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
    fn set_model(&self, name: String) {
        *self.model.lock().unwrap_or_else(PoisonError::into_inner) = Some(name);
    }
}

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

/// A JSON object body whose fields are read one by one, null counting as absent; what is read is remembered, so
/// that the rest can be reported as ignored.
struct Fields {
    map: Map<String, Value>,
    read: Vec<&'static str>,
}

impl Fields {
    fn parse(body: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| A1111Error(ApiError::bad_request(None, format!("the body is not valid JSON: {e}"))))?;
        match value {
            Value::Object(map) => Ok(Self { map, read: Vec::new() }),
            _ => Err(A1111Error(ApiError::bad_request(
                None,
                "the body must be a JSON object",
            ))),
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&Value> {
        self.read.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn int(&mut self, name: &'static str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match (v.as_i64(), v.as_f64()) {
                (Some(i), _) => Ok(Some(i)),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Some(f as i64)),
                _ => Err(invalid(name, format!("{} is not a whole number", clip(&v.to_string())))),
            },
        }
    }

    fn float(&mut self, name: &'static str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(name, format!("{} is not a number", clip(&v.to_string())))),
        }
    }

    /// true/false, or A1111's 0/1 integers (`inpainting_mask_invert`).
    fn flag(&mut self, name: &'static str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) if v.as_i64() == Some(0) => Ok(Some(false)),
            Some(v) if v.as_i64() == Some(1) => Ok(Some(true)),
            Some(v) => Err(invalid(
                name,
                format!("{} is not true/false (or 0/1)", clip(&v.to_string())),
            )),
        }
    }

    fn string(&mut self, name: &'static str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(invalid(name, format!("{} is not a string", clip(&v.to_string())))),
        }
    }

    /// A size or count in `min..=max`.
    fn count(&mut self, name: &'static str, min: i64, max: i64) -> Result<Option<usize>> {
        match self.int(name)? {
            None => Ok(None),
            Some(v) if (min..=max).contains(&v) => Ok(Some(v as usize)),
            Some(v) => Err(invalid(name, format!("{v} is outside {min}..={max}"))),
        }
    }

    /// The fields not read, with values that would have changed the image (`styles: ["x"]`, `restore_faces: true`),
    /// as notes. Values that change nothing — null, false, 0, "", [], {} and A1111's neutral defaults — are not
    /// reported, nor fields that only concern A1111's own files and scripts.
    fn ignored(&self) -> Vec<String> {
        self.map
            .iter()
            .filter(|(k, v)| !self.read.contains(&k.as_str()) && !neutral(k, v))
            .map(|(k, v)| {
                let mut shown = v.to_string();
                if shown.chars().count() > 60 {
                    shown = format!("{}…", shown.chars().take(60).collect::<String>());
                }
                format!("{k} = {shown}: not supported by Ember, ignored")
            })
            .collect()
    }
}

/// Whether an unread field's value would change nothing (see [`Fields::ignored`]).
fn neutral(key: &str, value: &Value) -> bool {
    const SILENT: [&str; 18] = [
        "send_images",
        "save_images",
        "do_not_save_samples",
        "do_not_save_grid",
        "override_settings_restore_afterwards",
        "sampler_index",
        "image_cfg_scale",
        "mask_round",
        "inpaint_full_res_padding",
        "include_init_images",
        "force_task_id",
        "infotext",
        "comments",
        "user",
        "firstphase_width",
        "firstphase_height",
        "script_args",
        "disable_extra_networks",
    ];
    if SILENT.contains(&key) {
        return true;
    }
    let neutral_number = match key {
        "eta" | "s_noise" | "initial_noise_multiplier" => Some(1.0),
        "seed_resize_from_h" | "seed_resize_from_w" => Some(-1.0),
        _ => None,
    };
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(0.0);
            n == 0.0 || Some(n) == neutral_number || (key.starts_with("seed_resize") && n <= 0.0)
        }
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => {
            o.is_empty()
                || (key == "alwayson_scripts"
                    && o.values().all(|v| {
                        v["args"]
                            .as_array()
                            .is_some_and(|a| a.is_empty() || a == &[json!(false)])
                    }))
        }
    }
}

/// The model a request runs on: `override_settings.sd_model_checkpoint`, else the one `POST options` chose, else the
/// server's current one. Names may be Ember's or A1111 titles (`name.safetensors [hash]`).
fn request_model<'a>(state: &'a AppState, wanted: Option<&str>) -> Result<&'a Served> {
    let chosen = wanted.map(str::to_string).or_else(|| state.a1111.model());
    match chosen {
        None => Ok(state.models.get(state.models.current())),
        Some(name) => find_model(state, &name).ok_or_else(|| {
            A1111Error(ApiError::bad_request(
                Some("override_settings.sd_model_checkpoint"),
                format!(
                    "there is no model '{}' on this server; its models are {} (GET /sdapi/v1/sd-models)",
                    clip(&name),
                    state.models.names()
                ),
            ))
        }),
    }
}

/// A model by its name, ignoring case, an A1111 ` [hash]` suffix and a file extension.
fn find_model<'a>(state: &'a AppState, name: &str) -> Option<&'a Served> {
    if let Some(i) = state.models.find(name) {
        return Some(state.models.get(i));
    }
    let simplify = |s: &str| {
        let s = s.trim();
        let s = match s.rsplit_once(" [") {
            Some((head, tail)) if tail.ends_with(']') => head,
            _ => s,
        };
        let lower = s.to_ascii_lowercase();
        [".safetensors", ".ckpt", ".pt", ".bin"]
            .iter()
            .find_map(|ext| lower.strip_suffix(ext).map(str::to_string))
            .unwrap_or(lower)
    };
    let wanted = simplify(name);
    state
        .models
        .infos()
        .iter()
        .position(|m| simplify(&m.name) == wanted)
        .map(|i| state.models.get(i))
}

/// `sampler_name` (A1111's name, an alias, or an old `… Karras` name) and `scheduler` → the engine's sampler and
/// whether it runs on the Karras schedule (None: not a k-sampler, Ember's default `karras_max` stays).
fn sampler(name: Option<&str>, scheduler: Option<&str>, default: &str) -> Result<(String, Option<bool>, String)> {
    let (entry, karras_in_name) = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(raw) => {
            let lower = raw.to_ascii_lowercase();
            let (base, karras) = match lower.strip_suffix(" karras") {
                Some(base) => (base.to_string(), true),
                None => (lower.clone(), false),
            };
            let found = SAMPLERS.iter().find(|(a1111, _, aliases, _)| {
                a1111.eq_ignore_ascii_case(&base) || aliases.iter().any(|a| a.eq_ignore_ascii_case(&base))
            });
            let entry = found.ok_or_else(|| {
                let names: Vec<&str> = SAMPLERS.iter().map(|s| s.0).collect();
                invalid(
                    "sampler_name",
                    format!(
                        "unknown sampler '{}'; Ember has {} (each also as \"… Karras\"; GET /sdapi/v1/samplers)",
                        clip(raw),
                        names.join(", ")
                    ),
                )
            })?;
            (entry, karras)
        }
        None => {
            let kind: SamplerKind = default.parse()?;
            let entry = SAMPLERS.iter().find(|s| s.1 == kind).unwrap_or(&SAMPLERS[1]);
            (entry, false)
        }
    };
    let karras = match scheduler.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("automatic") => karras_in_name || entry.3,
        Some("karras") => true,
        Some("uniform") => false,
        Some(other) => {
            return Err(invalid(
                "scheduler",
                format!(
                    "unknown scheduler '{}'; Ember has automatic, uniform and karras (GET /sdapi/v1/schedulers)",
                    clip(other)
                ),
            ))
        }
    };
    let label = if karras { "Karras" } else { "Uniform" };
    Ok((
        entry.1.name().to_string(),
        entry.1.is_k_sampler().then_some(karras),
        format!("{}|{label}", entry.0),
    ))
}

/// A1111's `seed`/`subseed`: -1 (or absent) is random, else a seed in 0..=u32::MAX.
fn seed(fields: &mut Fields, name: &'static str) -> Result<u32> {
    match fields.int(name)? {
        None | Some(-1) => Ok(random_seed()),
        Some(v) => {
            u32::try_from(v).map_err(|_| invalid(name, format!("{v} is not -1 (random) or a seed in 0..=4294967295")))
        }
    }
}

/// An uploaded image (base64 in JSON), checked for size; `field` names it in errors.
fn image_bytes(value: &str, field: &str) -> Result<Vec<u8>> {
    let bytes = decode_base64(value, field)?;
    if image::guess_format(&bytes).is_err() {
        return Err(invalid(
            field,
            "not an image: the base64 data is not a PNG, JPEG, WebP or BMP file",
        ));
    }
    Ok(bytes)
}

/// A1111 reads an RGBA mask with transparency by its alpha channel (opaque = inpaint); Ember reads masks by their
/// grey level. Such a mask is turned into grey (alpha > 128 → white) here; other masks are passed on as they are.
fn a1111_mask(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let Ok(image) = crate::upload::decode_as(&bytes, "mask") else {
        // The submit check reports it, naming the field.
        return Ok(bytes);
    };
    if !image.color().has_alpha() {
        return Ok(bytes);
    }
    let rgba = image.to_rgba8();
    if rgba.pixels().all(|p| p[3] == 255) {
        return Ok(bytes);
    }
    let grey = image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([if rgba.get_pixel(x, y)[3] > 128 { 255 } else { 0 }])
    });
    encode_png(&image::DynamicImage::ImageLuma8(grey))
}

pub(crate) fn encode_png(image: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| A1111Error(ApiError::internal(format!("cannot encode a PNG: {e}"))))?;
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Txt2img,
    Img2img,
}

#[utoipa::path(post, path = "/sdapi/v1/txt2img", tag = "automatic1111",
    request_body(content = Object, description = "A1111's StableDiffusionTxt2ImgProcessingAPI (see docs/api.md)"),
    responses((status = 200, description = "`{\"images\": [base64 PNG…], \"parameters\": {…}, \"info\": \"JSON\"}`",
        body = Object), (status = 422, description = "A bad field, named in `detail[0].msg`", body = Object)))]
pub async fn txt2img(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    generate(&state, Mode::Txt2img, &body).await.map(Json)
}

#[utoipa::path(post, path = "/sdapi/v1/img2img", tag = "automatic1111",
    request_body(content = Object, description = "A1111's StableDiffusionImg2ImgProcessingAPI: `init_images`, `mask` \
        … as base64 (see docs/api.md)"),
    responses((status = 200, description = "As txt2img", body = Object),
        (status = 422, description = "A bad field, named in `detail[0].msg`", body = Object)))]
pub async fn img2img(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    generate(&state, Mode::Img2img, &body).await.map(Json)
}

async fn generate(state: &AppState, mode: Mode, body: &[u8]) -> Result<Value> {
    let mut f = Fields::parse(body)?;
    let mut notes = Vec::new();
    let prompt = f.string("prompt")?.unwrap_or_default();
    let negative_prompt = f.string("negative_prompt")?.unwrap_or_default();
    let seed0 = seed(&mut f, "seed")?;
    let subseed0 = seed(&mut f, "subseed")?;
    let subseed_strength = f.float("subseed_strength")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&subseed_strength) {
        return Err(invalid(
            "subseed_strength",
            format!("{subseed_strength} is outside [0, 1]"),
        ));
    }
    let batch_size = f.count("batch_size", 1, MAX_IMAGES)?.unwrap_or(1);
    let n_iter = f.count("n_iter", 1, MAX_IMAGES)?.unwrap_or(1);
    let total = batch_size * n_iter;
    if total as i64 > MAX_IMAGES {
        return Err(invalid(
            "batch_size",
            format!("batch_size × n_iter = {total} images, more than the {MAX_IMAGES} one request may ask for"),
        ));
    }
    let steps = f.count("steps", 1, 1000)?;
    let cfg_scale = f.float("cfg_scale")?;
    let mut width = f.count("width", 8, 4096)?;
    let mut height = f.count("height", 8, 4096)?;
    let sampler_name = match f.string("sampler_name")? {
        Some(name) => Some(name),
        None => f.string("sampler_index")?,
    };
    let scheduler = f.string("scheduler")?;
    let tiling = f.flag("tiling")?.unwrap_or(false);
    let mut wanted_model = None;
    if let Some(overrides) = f.get("override_settings").cloned() {
        let Value::Object(overrides) = overrides else {
            return Err(invalid("override_settings", "is not an object"));
        };
        for (key, value) in overrides {
            match (key.as_str(), value) {
                ("sd_model_checkpoint", Value::String(name)) => wanted_model = Some(name),
                ("sd_model_checkpoint", Value::Null) => {}
                ("sd_model_checkpoint", _) => {
                    return Err(invalid("override_settings.sd_model_checkpoint", "is not a string"))
                }
                (key, value) if !neutral(key, &value) => {
                    notes.push(format!("override_settings.{key}: not supported by Ember, ignored"))
                }
                _ => {}
            }
        }
    }
    let served = request_model(state, wanted_model.as_deref())?;
    let (engine_sampler, karras, sampler_label) = sampler(
        sampler_name.as_deref(),
        scheduler.as_deref(),
        &served.info.defaults.sampler,
    )?;
    let (sampler_a1111, scheduler_label) = sampler_label.split_once('|').unwrap_or((&sampler_label, ""));

    let mut input = ParamsInput {
        prompt: Some(prompt.clone()),
        negative_prompt: Some(negative_prompt.clone()),
        steps,
        cfg_scale,
        sampler: Some(engine_sampler),
        seed: Some(seed0),
        width,
        height,
        seamless: Some(tiling),
        karras_max: karras.map(|k| if k { KARRAS_ALWAYS } else { 0 }),
        ..Default::default()
    };
    let mut denoising_strength = None;
    let (mut init, mut mask) = (None, None);
    match mode {
        Mode::Txt2img => {
            if f.flag("enable_hr")?.unwrap_or(false) {
                let scale = f.float("hr_scale")?.unwrap_or(2.0);
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(invalid("hr_scale", format!("{scale} is not a positive number")));
                }
                let (w0, h0) = (
                    width.unwrap_or(served.info.defaults.width),
                    height.unwrap_or(served.info.defaults.height),
                );
                let rx = f.count("hr_resize_x", 0, 4096)?.unwrap_or(0);
                let ry = f.count("hr_resize_y", 0, 4096)?.unwrap_or(0);
                let (w, h) = match (rx, ry) {
                    (0, 0) => ((w0 as f64 * scale) as usize, (h0 as f64 * scale) as usize),
                    (x, 0) => (x, x * h0 / w0),
                    (0, y) => (y * w0 / h0, y),
                    (x, y) => (x, y),
                };
                let (w, h) = ((w / 8).max(1) * 8, (h / 8).max(1) * 8);
                width = Some(w);
                height = Some(h);
                input.width = width;
                input.height = height;
                input.hires_fix = Some(true);
                denoising_strength = f.float("denoising_strength")?;
                input.strength = denoising_strength;
                notes.push(format!(
                    "enable_hr: Ember's hires fix makes the {w}×{h} image from a first pass at about the model's \
                     native size (not at {w0}×{h0}), then img2img with denoising_strength"
                ));
                for (key, neutral_value) in [("hr_upscaler", None), ("hr_second_pass_steps", Some(0))] {
                    if let Some(v) = f.get(key).cloned() {
                        if neutral_value.is_none_or(|n| v.as_i64() != Some(n)) && !neutral(key, &v) {
                            notes.push(format!("{key} = {v}: not supported by Ember, ignored"));
                        }
                    }
                }
            } else {
                // Sent by clients whether or not hires fix is on; only hires fix uses them.
                for key in [
                    "denoising_strength",
                    "hr_scale",
                    "hr_upscaler",
                    "hr_second_pass_steps",
                    "hr_resize_x",
                    "hr_resize_y",
                ] {
                    f.get(key);
                }
            }
        }
        Mode::Img2img => {
            let images = match f.get("init_images").cloned() {
                Some(Value::Array(images)) if !images.is_empty() => images,
                Some(Value::Array(_)) | None => {
                    return Err(invalid(
                        "init_images",
                        "is required: a list with one base64-encoded image",
                    ))
                }
                Some(_) => return Err(invalid("init_images", "is not a list of base64-encoded images")),
            };
            let first = images[0]
                .as_str()
                .ok_or_else(|| invalid("init_images[0]", "is not a base64 string"))?;
            init = Some(image_bytes(first, "init_images[0]")?);
            if images.len() > 1 {
                notes.push(format!(
                    "init_images: Ember uses the first image only; {} more were ignored",
                    images.len() - 1
                ));
            }
            denoising_strength = f.float("denoising_strength")?;
            input.strength = Some(denoising_strength.unwrap_or(0.75));
            denoising_strength = input.strength;
            match f.int("resize_mode")? {
                None | Some(0) => {}
                Some(m @ 1..=3) => notes.push(format!(
                    "resize_mode {m}: Ember scales the init image into width × height keeping its aspect ratio (as \
                     resize_mode 0 does in Ember), without cropping, filling or latent upscaling"
                )),
                Some(m) => return Err(invalid("resize_mode", format!("{m} is not 0, 1, 2 or 3"))),
            }
            // Scaled into width × height when they are given, else the init image's own size.
            input.fit = Some(width.is_some() || height.is_some());
            if let Some(m) = f.string("mask")? {
                mask = Some(a1111_mask(image_bytes(&m, "mask")?)?);
                input.mask_blur = f.count("mask_blur", 0, 256)?.map(|b| b as u32);
                input.invert_mask = f.flag("inpainting_mask_invert")?;
                if f.int("inpainting_fill")?.is_some_and(|v| v != 1) {
                    notes.push(
                        "inpainting_fill: Ember starts the masked area from the init image with noise (A1111's \
                         \"original\"); other fills are not supported"
                            .into(),
                    );
                }
                if f.flag("inpaint_full_res")?.unwrap_or(false) {
                    notes.push(
                        "inpaint_full_res: Ember inpaints the whole image (A1111's \"whole picture\"), not only the \
                         masked area"
                            .into(),
                    );
                }
            } else {
                for key in [
                    "mask_blur",
                    "inpainting_mask_invert",
                    "inpainting_fill",
                    "inpaint_full_res",
                ] {
                    f.get(key);
                }
            }
        }
    }
    if f.flag("restore_faces")?.unwrap_or(false) {
        notes.push("restore_faces: Ember has no face restoration; ignored".into());
    }
    if let Some(Value::Array(styles)) = f.get("styles") {
        if !styles.is_empty() {
            notes.push(format!(
                "styles {}: Ember has no saved styles; ignored",
                Value::Array(styles.clone())
            ));
        }
    }
    let include_init_images = f.flag("include_init_images")?.unwrap_or(false);
    notes.extend(f.ignored());

    // A1111: seeds count up over the images, unless variations are on; then the variation seeds do.
    let seeds: Vec<u32> = (0..total as u32)
        .map(|i| seed0.wrapping_add(if subseed_strength > 0.0 { 0 } else { i }))
        .collect();
    let subseeds: Vec<u32> = (0..total as u32).map(|i| subseed0.wrapping_add(i)).collect();
    let base = served.resolve(input, random_seed)?;
    let uploads = (
        init.map(|b| ("init.png".to_string(), b)),
        mask.map(|b| ("mask.png".to_string(), b)),
    );
    let jobs = (0..total)
        .map(|i| {
            let mut params = base.clone();
            params.seed = seeds[i];
            if subseed_strength > 0.0 {
                params.with_variations = vec![Variation {
                    seed: subseeds[i],
                    weight: subseed_strength,
                }];
            }
            Submission {
                model: served,
                params,
                uploads: uploads.clone(),
            }
        })
        .collect();
    let finished = blocking::run(state, Source::A1111, jobs).await?;

    let mut images = Vec::new();
    let mut infotexts = Vec::new();
    let mut image_ids = Vec::new();
    let (mut out_w, mut out_h) = (base.width as u32, base.height as u32);
    let mut interrupted = false;
    for f in &finished {
        match (&f.image, f.job.status) {
            (Some(done), _) => {
                images.push(Value::String(BASE64_STANDARD.encode(&done.png)));
                infotexts.push(Value::String(done.parameters.clone()));
                image_ids.push(done.image.id);
                (out_w, out_h) = (done.image.width, done.image.height);
            }
            (None, crate::types::JobStatus::Canceled) => interrupted = true,
            (None, _) => {
                let error = f.job.error.clone().unwrap_or_else(|| "the job failed".into());
                return Err(A1111Error(ApiError::internal(format!(
                    "job {} failed: {error}",
                    f.job.id
                ))));
            }
        }
    }
    if interrupted {
        notes.push(format!(
            "interrupted: {} of {total} images were canceled (POST /sdapi/v1/interrupt, or from Ember's page)",
            total - images.len()
        ));
    }
    let info = json!({
        "prompt": prompt,
        "all_prompts": vec![prompt.clone(); total],
        "negative_prompt": negative_prompt,
        "all_negative_prompts": vec![negative_prompt.clone(); total],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": subseed_strength,
        "width": out_w,
        "height": out_h,
        "sampler_name": sampler_a1111,
        "scheduler": scheduler_label,
        "cfg_scale": base.cfg_scale,
        "steps": base.steps,
        "batch_size": batch_size,
        "n_iter": n_iter,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": served.name(),
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": denoising_strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": chrono_stamp(),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": false,
        "version": concat!("ember ", env!("CARGO_PKG_VERSION")),
        "interrupted": interrupted,
        "notes": notes,
        "job_ids": finished.iter().map(|f| f.job.id).collect::<Vec<_>>(),
        "image_ids": image_ids,
    });
    let mut parameters = f.map;
    if !include_init_images {
        for key in ["init_images", "mask"] {
            if parameters.contains_key(key) {
                parameters.insert(key.into(), Value::Null);
            }
        }
    }
    Ok(json!({
        "images": images,
        "parameters": parameters,
        "info": info.to_string(),
    }))
}

/// A1111's `job_timestamp`: `YYYYmmddHHMMSS` (UTC here).
fn chrono_stamp() -> String {
    let secs = blocking::unix_now();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

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
    let running = state.queue.running_id();
    let queued = state
        .db
        .call(|conn| Ok(crate::db::list_jobs(conn, Some(crate::types::JobStatus::Queued), 500)?.len()))
        .await?;
    let Some(id) = running else {
        return Ok(Json(json!({
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": state_dict("", queued, 0, 0),
            "current_image": null,
            "textinfo": null,
        })));
    };
    let job = state.db.call(move |conn| Ok(crate::db::get_job(conn, id)?)).await?;
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
    if let Some(id) = state.queue.running_id() {
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
    if let Some(id) = state.queue.running_id() {
        let _ = crate::api::cancel(&state, id).await;
    }
    Ok(Json(json!({})))
}

fn current_model_name(state: &AppState) -> String {
    state
        .a1111
        .model()
        .filter(|m| state.models.find(m).is_some())
        .unwrap_or_else(|| state.models.get(state.models.current()).name().to_string())
}

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

#[utoipa::path(post, path = "/sdapi/v1/png-info", tag = "automatic1111",
    request_body(content = Object, description = "`{\"image\": base64}`"),
    responses((status = 200, description = "`{\"info\": the parameters text, \"items\": {other text chunks}, \
        \"parameters\": {the text parsed as A1111 does}}`", body = Object),
        (status = 422, description = "Not an image", body = Object)))]
pub async fn png_info(body: Bytes) -> Result<Json<Value>> {
    let mut f = Fields::parse(&body)?;
    let text = f
        .string("image")?
        .ok_or_else(|| invalid("image", "is required: a base64-encoded image"))?;
    let bytes = image_bytes(&text, "image")?;
    let chunks = blocking::png_text(&bytes).unwrap_or_default();
    let mut info = String::new();
    let mut items = Map::new();
    for (key, value) in chunks {
        if key == "parameters" && info.is_empty() {
            info = value;
        } else {
            items.insert(key, Value::String(value));
        }
    }
    let parameters = parse_infotext(&info);
    Ok(Json(json!({"info": info, "items": items, "parameters": parameters})))
}

/// A1111's `parse_generation_parameters`: the prompt, `Negative prompt:` and the last line's `Key: value` pairs (a
/// `WxH` value split into `Key-1`, `Key-2`), every value a string.
pub fn parse_infotext(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let text = text.trim();
    if text.is_empty() {
        return out;
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    let last = lines.pop().unwrap_or("");
    let pairs = key_values(last);
    let last_is_params = pairs.len() >= 3;
    if !last_is_params {
        lines.push(last);
    }
    let (mut prompt, mut negative, mut in_negative) = (String::new(), String::new(), false);
    for line in lines {
        let line = match line.strip_prefix("Negative prompt:") {
            Some(rest) => {
                in_negative = true;
                rest.trim()
            }
            None => line,
        };
        let target = if in_negative { &mut negative } else { &mut prompt };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line.trim_end());
    }
    out.insert("Prompt".into(), Value::String(prompt));
    out.insert("Negative prompt".into(), Value::String(negative));
    if last_is_params {
        for (key, value) in pairs {
            let size = value
                .split_once('x')
                .filter(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
            match size {
                Some((a, b)) => {
                    out.insert(format!("{key}-1"), Value::String(a.into()));
                    out.insert(format!("{key}-2"), Value::String(b.into()));
                }
                None => {
                    out.insert(key, Value::String(value));
                }
            }
        }
    }
    out
}

/// `Steps: 20, Sampler: Euler a, Lora hashes: "a: 1, b: 2"` → pairs, quoted values unquoted.
fn key_values(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once(':') else {
            break;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_alphanumeric() || " -_/".contains(c)) {
            break;
        }
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"').and_then(closing_quote) {
            // A JSON string, up to its closing quote.
            Some(end) => {
                let quoted = &after[..=end + 1];
                let value = serde_json::from_str::<String>(quoted).unwrap_or_else(|_| quoted.to_string());
                (value, &after[end + 2..])
            }
            None => match after.split_once(',') {
                Some((value, next)) => (value.trim().to_string(), next),
                None => (after.trim().to_string(), ""),
            },
        };
        out.push((key.to_string(), value));
        rest = next.trim_start().trim_start_matches(',').trim();
    }
    out
}

/// The byte offset of the unescaped `"` ending a string whose opening quote was just before `s`.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_and_schedulers_map_to_the_engine() {
        let s =
            |name: Option<&str>, sched: Option<&str>| sampler(name, sched, "k_lms").map(|(k, karras, _)| (k, karras));
        assert_eq!(s(Some("Euler a"), None).ok(), Some(("k_euler_a".into(), Some(false))));
        assert_eq!(
            s(Some("Euler a"), Some("automatic")).ok(),
            Some(("k_euler_a".into(), Some(false)))
        );
        assert_eq!(
            s(Some("Euler"), Some("Karras")).ok(),
            Some(("k_euler".into(), Some(true)))
        );
        assert_eq!(
            s(Some("DPM++ 2M"), Some("automatic")).ok(),
            Some(("k_dpmpp_2".into(), Some(true)))
        );
        assert_eq!(
            s(Some("DPM++ 2M"), Some("uniform")).ok(),
            Some(("k_dpmpp_2".into(), Some(false)))
        );
        assert_eq!(
            s(Some("DPM++ 2M Karras"), None).ok(),
            Some(("k_dpmpp_2".into(), Some(true)))
        );
        assert_eq!(s(Some("lms karras"), None).ok(), Some(("k_lms".into(), Some(true))));
        assert_eq!(s(Some("DDIM"), None).ok(), Some(("ddim".into(), None)));
        assert_eq!(s(Some("k_dpm_2_a"), None).ok(), Some(("k_dpm_2_a".into(), Some(true))));
        assert_eq!(
            s(None, None).ok(),
            Some(("k_lms".into(), Some(false))),
            "the model's default"
        );
        let e = s(Some("UniPC"), None).expect_err("unknown");
        assert_eq!(e.0.field.as_deref(), Some("sampler_name"));
        let e = s(Some("Euler"), Some("exponential")).expect_err("unknown");
        assert_eq!(e.0.field.as_deref(), Some("scheduler"));
    }

    #[test]
    fn infotexts_parse_as_a1111_parses_them() {
        let text = "a cat, (fur)\nmore prompt\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, \
                    Seed: 42, Size: 64x96, Model: \"tiny, sd\", Lora hashes: \"a: 1, b: 2\"";
        let p = parse_infotext(text);
        assert_eq!(p["Prompt"], "a cat, (fur)\nmore prompt");
        assert_eq!(p["Negative prompt"], "ugly");
        assert_eq!(p["Steps"], "20");
        assert_eq!(p["Sampler"], "Euler a");
        assert_eq!(p["Size-1"], "64");
        assert_eq!(p["Size-2"], "96");
        assert_eq!(p["Model"], "tiny, sd");
        assert_eq!(p["Lora hashes"], "a: 1, b: 2");
        let p = parse_infotext("just a prompt");
        assert_eq!(p["Prompt"], "just a prompt");
    }

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

    #[test]
    fn timestamps_are_civil_dates() {
        let stamp = chrono_stamp();
        assert_eq!(stamp.len(), 14, "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
    }
}
