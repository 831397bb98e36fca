//! The HTTP API of docs/api.md: jobs, events, gallery, samplers and models. Handlers validate everything that comes
//! from the client and answer with [`ApiError`]s naming the field at fault; they never panic on input.

use crate::db::NewJob;
use crate::error::{clip, ApiError, ApiResult, ErrorBody};
use crate::types::{Image, ImagePage, Job, JobList, JobStatus, Mode, ModelList, Params, ParamsInput, SamplerList};
use crate::upload::{self, MAX_UPLOAD_BYTES};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ember::addons::AddonLibrary;
use ember::pipeline::{RequestCheck, Work};
use ember::request::{random_seed, InitImage, MAX_SIDE};
use ember::sample::perlin::check_image_size;
use ember::sample::SamplerKind;
use ember::text::prompt::take_loras;
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use utoipa::{IntoParams, ToSchema};

/// The multipart form of `POST /api/jobs` (for the OpenAPI document).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobUpload {
    /// The same JSON object as the plain JSON body.
    params: String,
    /// PNG, JPEG, WebP or BMP; at most 20 MB and 8192×8192 pixels.
    #[schema(value_type = Option<String>, format = Binary)]
    init_image: Option<Vec<u8>>,
    /// Inpainting mask, checked as `init_image` is: white (luma ≥ 128) = repaint, black = keep; any size (it is
    /// resized to the init image, with a warning when its shape differs). Needs an init image (`init_image`, or
    /// `init_image_id` in `params`); not with `init_mask_id`. Without one, an init image's transparent pixels are
    /// the mask, if it has any.
    #[schema(value_type = Option<String>, format = Binary)]
    init_mask: Option<Vec<u8>>,
}

/// An uploaded file: (name, bytes).
pub(crate) type Upload = (String, Vec<u8>);

/// The parts of a `POST /api/jobs` form: the params JSON, and the uploads.
pub(crate) struct JobForm {
    pub params: Vec<u8>,
    pub init_image: Option<Upload>,
    pub init_mask: Option<Upload>,
}

/// Largest `params` part of a multipart form: a prompt is a few hundred bytes.
const MAX_PARAMS_BYTES: usize = 64 * 1024;

#[utoipa::path(post, path = "/api/jobs", tag = "jobs",
    request_body(content(
        (ParamsInput = "application/json"),
        (JobUpload = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Queued", body = Job),
        (status = 400, description = "Invalid parameters or image", body = ErrorBody),
        (status = 413, description = "Upload over 20 MB", body = ErrorBody),
    ))]
pub async fn create_job(State(state): State<AppState>, request: Request) -> ApiResult<(StatusCode, Json<Job>)> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let multipart = content_type.starts_with("multipart/form-data");
    let form = if multipart {
        read_multipart(request, &state).await?
    } else if content_type.starts_with("application/json") {
        let bytes = Bytes::from_request(request, &state)
            .await
            .map_err(|e| ApiError::new(e.status(), None, e.body_text()))?;
        JobForm {
            params: bytes.to_vec(),
            init_image: None,
            init_mask: None,
        }
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            format!("content type '{content_type}' is not accepted; send application/json or multipart/form-data"),
        ));
    };

    let mut input = parse_params(&form.params, multipart.then_some("params"))?;
    let model = state.models.for_job(input.model.take().as_deref())?;
    let params = model.resolve(input, random_seed)?;
    let job = submit(&state, model, params, (form.init_image, form.init_mask)).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// Queues a job on `model` with resolved `params` and its uploads (init image, mask), after the checks of
/// [`check_job`]: what `POST /api/jobs` and the compatibility APIs (`a1111/`, `openai.rs`) share.
pub(crate) async fn submit(
    state: &AppState,
    model: &crate::models::Served,
    params: Params,
    uploads: (Option<Upload>, Option<Upload>),
) -> ApiResult<Job> {
    let new_job = check_job(state, (model.checker.clone(), model.addons.clone()), params, uploads)
        .await
        // The engine names an add-on by its file (an embedding the model cannot use): no server paths to clients.
        .map_err(|mut e| {
            e.message = state.storage.redact(&state.models.redact(&e.message));
            e
        })?;
    // A job accepted into a removed database, or onto a full disk, would be lost.
    state.storage.check().map_err(ApiError::unavailable)?;
    let inserted = state.db.insert_job(new_job, model.name(), &state.events).await;
    let job = match inserted {
        Ok(job) => {
            state.storage.recovered();
            job
        }
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
            state.storage.failed("cannot queue a job", &e.message);
            return Err(ApiError::unavailable(state.storage.redact(&e.message)));
        }
        Err(e) => return Err(e),
    };
    Ok(job)
}

/// Reads the `params`, `init_image` and `init_mask` parts, in any order.
pub(crate) async fn read_multipart<S: Send + Sync>(request: Request, state: &S) -> ApiResult<JobForm> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::new(e.status(), None, e.body_text()))?;
    let (mut params, mut init_image, mut init_mask) = (None, None, None);
    // The part being read: a body over the limit is that part's fault.
    let mut name = String::from("init_image");
    loop {
        let field = multipart.next_field().await.map_err(|e| multipart_error(e, &name))?;
        let Some(mut field) = field else { break };
        name = field.name().unwrap_or("").to_string();
        let taken = match name.as_str() {
            "params" => params.is_some(),
            "init_image" => init_image.is_some(),
            "init_mask" => init_mask.is_some(),
            _ => {
                return Err(ApiError::bad_request(
                    Some(name.as_str()),
                    format!(
                        "unknown form part '{}'; send 'params' and optionally 'init_image' and 'init_mask'",
                        clip(&name)
                    ),
                ))
            }
        };
        if taken {
            return Err(ApiError::bad_request(
                Some(name.as_str()),
                format!("the form has more than one '{name}' part"),
            ));
        }
        let limit = if name == "params" {
            MAX_PARAMS_BYTES
        } else {
            MAX_UPLOAD_BYTES
        };
        let file_name = field.file_name().map(upload_name);
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, &name))? {
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some(name.as_str()),
                    format!("'{name}' is larger than {limit} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        match name.as_str() {
            "params" => params = Some(bytes),
            "init_image" => init_image = Some((file_name.unwrap_or_else(|| "upload".into()), bytes)),
            _ => init_mask = Some((file_name.unwrap_or_else(|| "mask".into()), bytes)),
        }
    }
    let params = params.ok_or_else(|| {
        ApiError::bad_request(
            Some("params"),
            "the form has no 'params' part with the job's JSON parameters",
        )
    })?;
    Ok(JobForm {
        params,
        init_image,
        init_mask,
    })
}

/// A form that cannot be read, while reading the part `part` (a body over the limit is that part's fault).
fn multipart_error(e: axum::extract::multipart::MultipartError, part: &str) -> ApiError {
    let field = (e.status() == StatusCode::PAYLOAD_TOO_LARGE).then_some(part);
    ApiError::new(e.status(), field, format!("cannot read the form: {}", e.body_text()))
}

/// The name an upload is recorded under (the Dream command's `-I`): the last path component, printable, short.
fn upload_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).take(100).collect();
    if clean.trim().is_empty() {
        "upload".into()
    } else {
        clean
    }
}

/// JSON → [`ParamsInput`]; a type error names the field it is in.
/// `part`: the multipart form part the JSON came from (`params`), which errors about the whole JSON (not valid JSON,
/// not an object) name as their field; `None` for a JSON body.
pub(crate) fn parse_params(json: &[u8], part: Option<&'static str>) -> ApiResult<ParamsInput> {
    let (whole_is, whole_must) = match part {
        Some(_) => ("the 'params' part is", "the 'params' part must"),
        None => ("the body is", "the parameters must"),
    };
    // Syntax first: a syntax error is about the whole body, not the field the parser happened to be in.
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(part, format!("{whole_is} not valid JSON: {e}")))?;
    if !value.is_object() {
        // serde would read an array as the struct's fields in order.
        return Err(ApiError::bad_request(part, format!("{whole_must} be a JSON object")));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        ApiError::bad_request(field.as_deref().or(part), e.into_inner().to_string())
    })
}

/// Checks the parameters (and the uploads) with the engine's own [`ember::pipeline::RequestCheck`] of the job's
/// model (`checker`) — fields, prompts, the device's work limits — and its LoRAs against the model's `library`, so a
/// bad job fails at submit time, naming the field, not in the queue. An upload's size is read from its header and
/// checked before any pixel is decoded. `uploads` are the init image and the inpainting mask, as (name, bytes).
async fn check_job(
    state: &AppState,
    (checker, library): (RequestCheck, std::sync::Arc<AddonLibrary>),
    params: Params,
    uploads: (Option<Upload>, Option<Upload>),
) -> ApiResult<NewJob> {
    let (upload, mask) = uploads;
    let gallery_size = match (&upload, params.init_image_id) {
        (None, Some(id)) => Some(gallery_init_size(state, id).await?),
        _ => None,
    };
    if let (None, Some(id)) = (&mask, params.init_mask_id) {
        gallery_mask(state, id).await?;
    }
    // Tokenizing a long prompt is CPU work: off the async executor.
    let (params, upload, mask, work) = tokio::task::spawn_blocking(move || {
        let work = check_submission(
            &checker,
            &library,
            &params,
            Inputs {
                init_image: upload.as_ref().map(|(_, b)| b.as_slice()),
                init_mask: mask.as_ref().map(|(_, b)| b.as_slice()),
                gallery_size,
            },
        )?;
        Ok::<_, ApiError>((params, upload, mask, work))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the request check failed: {e}")))??;
    let upload = match upload {
        Some((name, bytes)) => {
            let (bytes, has_alpha) =
                check_decodes(state, bytes, "init_image", |image| image.color().has_alpha()).await?;
            if params.invert_mask && mask.is_none() && params.init_mask_id.is_none() && !has_alpha {
                return Err(no_mask_to_invert());
            }
            Some((name, bytes))
        }
        None => None,
    };
    let mask = match mask {
        Some((name, bytes)) => {
            let (bytes, (repaints, keeps)) = check_decodes(state, bytes, "init_mask", |image| {
                // The engine binarises at ½ (after resizing it to the image, which may differ by a pixel or two).
                let luma = image.to_luma8();
                (luma.iter().any(|&v| v >= 128), luma.iter().any(|&v| v < 128))
            })
            .await?;
            check_mask_paints(&params, repaints, keeps)?;
            Some((name, bytes))
        }
        None => None,
    };
    Ok(NewJob {
        mode: if params.init_image_id.is_some() || upload.is_some() {
            Mode::Img2img
        } else {
            Mode::Txt2img
        },
        params,
        steps_total: work.steps,
        upload,
        mask,
    })
}

fn no_mask_to_invert() -> ApiError {
    ApiError::bad_request(
        Some("invert_mask"),
        "there is no mask to invert: upload an init_mask (or give init_mask_id), or an init image with transparent \
         pixels",
    )
}

/// An uploaded mask repaints something: it has white pixels (`repaints`), or black ones (`keeps`) when inverted,
/// unless an outcrop adds an area to paint anyway. The engine would fail the job; this fails the submission.
fn check_mask_paints(params: &Params, repaints: bool, keeps: bool) -> ApiResult<()> {
    if !params.outcrop.is_empty() {
        return Ok(());
    }
    if !params.invert_mask && !repaints {
        return Err(ApiError::bad_request(
            Some("init_mask"),
            "the mask is all black: nothing would be repainted. Paint white where the image should change",
        ));
    }
    if params.invert_mask && !keeps {
        return Err(ApiError::bad_request(
            Some("init_mask"),
            "the mask is all white and invert_mask is set: nothing would be repainted. Drop invert_mask, or paint \
             black where the image should change",
        ));
    }
    Ok(())
}

/// What a submission brings besides its parameters, for [`check_submission`]: the uploaded files' bytes (only their
/// headers are read) and the declared size of an `init_image_id`'s image.
#[derive(Default)]
pub(crate) struct Inputs<'a> {
    pub init_image: Option<&'a [u8]>,
    pub init_mask: Option<&'a [u8]>,
    pub gallery_size: Option<(u32, u32)>,
}

/// The checks of a submission that need neither the database nor a decoded image: `library` holds the LoRAs the
/// job's model knows.
pub(crate) fn check_submission(
    checker: &RequestCheck,
    library: &AddonLibrary,
    params: &Params,
    inputs: Inputs<'_>,
) -> ApiResult<Work> {
    let Inputs {
        init_image: upload,
        init_mask: mask,
        gallery_size,
    } = inputs;
    if params.prompt.trim().is_empty() {
        return Err(ApiError::bad_request(
            Some("prompt"),
            "is required and must not be empty",
        ));
    }
    // The values' ranges (strength, steps, sizes, …) are the engine's to check, below: `GenerateRequest::validate`,
    // the one set of checks every front-end goes through.
    if params.init_image_id.is_some() && upload.is_some() {
        return Err(ApiError::bad_request(
            Some("init_image_id"),
            "give either an uploaded init_image or an init_image_id, not both",
        ));
    }
    if params.init_mask_id.is_some() && mask.is_some() {
        return Err(ApiError::bad_request(
            Some("init_mask_id"),
            "give either an uploaded init_mask or an init_mask_id, not both",
        ));
    }
    let has_init = upload.is_some() || params.init_image_id.is_some();
    let mask_field = if mask.is_some() {
        Some("init_mask")
    } else {
        params.init_mask_id.and(Some("init_mask_id"))
    };
    if let (Some(field), false) = (mask_field, has_init) {
        return Err(ApiError::bad_request(
            Some(field),
            "a mask needs an init image to paint on: upload an init_image or give an init_image_id",
        ));
    }
    match mask {
        Some([]) => return Err(ApiError::bad_request(Some("init_mask"), "the uploaded file is empty")),
        Some(bytes) => {
            upload::probe_as(bytes, "init_mask")?;
        }
        None => {}
    }
    if params.invert_mask && mask_field.is_none() && params.init_image_id.is_some() {
        // Gallery images are opaque: no transparency to take the mask from.
        return Err(no_mask_to_invert());
    }
    let fit = params.fit.then_some((params.width as u32, params.height as u32));
    // The size the init image runs at, from its header: what the work limits and Perlin's sizes depend on.
    let init_size = match upload {
        Some([]) => return Err(ApiError::bad_request(Some("init_image"), "the uploaded file is empty")),
        Some(bytes) => Some(run_size(upload::probe(bytes)?, fit, "init_image")?),
        None => gallery_size
            .map(|declared| run_size(declared, fit, "init_image_id"))
            .transpose()?,
    };
    // The engine only needs to know that there is an init image (and a mask) to check the rest.
    let placeholder = init_size.map(|_| InitImage::Path("init image".into()));
    let mask_placeholder = mask_field.map(|_| InitImage::Path("mask".into()));
    let mut request = params.to_request(placeholder, mask_placeholder)?;
    // Lengths first: the LoRA terms are looked for in a prompt of bounded size.
    request.validate()?;
    // Outpainting runs on the larger canvas.
    let run = init_size.map(|size| params.outcrop.grow(size));
    if let (Some((w, h)), Some(size)) = (run, init_size) {
        if w as usize > MAX_SIDE || h as usize > MAX_SIDE {
            return Err(ApiError::bad_request(
                Some("outcrop"),
                format!(
                    "the init image runs at {}×{} pixels; extended by the outcrop it would be {w}×{h}, over the \
                     {MAX_SIDE}-pixel limit of a side",
                    size.0, size.1
                ),
            ));
        }
    }
    // The LoRAs are checked here, against the model's library: a model described at startup (not loaded) has a
    // checker without one. It checks the prompt without its LoRA terms, which is what the engine encodes.
    request.prompt = check_loras(library, params)?;
    request.loras.clear();
    let work = checker.check(&request, run).map_err(|e| {
        let mut e = ApiError::from(e);
        // Over the pixel limit only because of the outcrop: that is the field to change.
        let fits_without = || checker.check(&request, init_size).is_ok();
        if !params.outcrop.is_empty() && e.field.as_deref() != Some("steps") && fits_without() {
            e.field = Some("outcrop".into());
        }
        e
    })?;
    if let Some(size) = run.filter(|_| params.perlin > 0.0) {
        check_image_size(size.0 as usize, size.1 as usize)?;
    }
    Ok(work)
}

/// Every LoRA of the job — its `loras` and the prompt's `<lora:NAME:WEIGHT>` / `withLora(NAME, WEIGHT)` terms — is
/// one of `library`'s; returns the prompt without its LoRA terms. A malformed term is a `400 prompt` too.
fn check_loras(library: &AddonLibrary, params: &Params) -> ApiResult<String> {
    let unknown = |name: &str, field: &str| {
        let known: Vec<&str> = library.loras().keys().map(String::as_str).take(20).collect();
        let known = if known.is_empty() {
            "this server has no LoRAs for this model (start it with --lora-dir DIR, or give the model a lora_dir in \
             the models file)"
                .to_string()
        } else {
            let more = if library.loras().len() > known.len() {
                ", …"
            } else {
                ""
            };
            format!("its LoRAs are {}{more} (GET /api/loras)", known.join(", "))
        };
        ApiError::bad_request(
            Some(field),
            format!("there is no LoRA '{}' for this model; {known}", clip(name)),
        )
    };
    if let Some(lora) = params.loras.iter().find(|l| library.lora(&l.name).is_none()) {
        return Err(unknown(&lora.name, "loras"));
    }
    let (prompt, terms) = take_loras(&params.prompt, "prompt")?;
    if let Some(term) = terms.iter().find(|t| library.lora(&t.name).is_none()) {
        return Err(unknown(&term.name, "prompt"));
    }
    Ok(prompt)
}

/// [`ember::image::init::run_size`], its message naming `field`.
fn run_size(declared: (u32, u32), fit: Option<(u32, u32)>, field: &str) -> ApiResult<(u32, u32)> {
    ember::image::init::run_size(declared, fit).map_err(|message| ApiError::bad_request(Some(field), message))
}

/// Decodes an upload that passed every other check, so a broken or truncated image fails now, naming `field`;
/// `inspect` looks at the pixels before they are dropped. Decodes wait for a share of [`MAX_DECODING_MEGAPIXELS`],
/// so concurrent uploads cannot hold gigabytes at once.
async fn check_decodes<T: Send + 'static>(
    state: &AppState,
    bytes: Vec<u8>,
    field: &'static str,
    inspect: impl FnOnce(&image::DynamicImage) -> T + Send + 'static,
) -> ApiResult<(Vec<u8>, T)> {
    let (w, h) = upload::probe_as(&bytes, field)?;
    let megapixels = (w as u64 * h as u64)
        .div_ceil(1 << 20)
        .clamp(1, MAX_DECODING_MEGAPIXELS as u64) as u32;
    let _permit = state
        .decodes
        .acquire_many(megapixels)
        .await
        .map_err(|_| ApiError::unavailable("the server is stopping"))?;
    tokio::task::spawn_blocking(move || {
        let seen = inspect(&upload::decode_as(&bytes, field)?);
        Ok((bytes, seen))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the image check failed: {e}")))?
}

/// Megapixels of uploads decoded at once: 64 (an 8192² image), ≤ 512 MB of pixels even at 16 bits × RGBA.
pub const MAX_DECODING_MEGAPIXELS: usize = 64;

/// The size a gallery image declares (its header), for [`check_submission`].
async fn gallery_init_size(state: &AppState, id: i64) -> ApiResult<(u32, u32)> {
    let missing =
        move || ApiError::bad_request(Some("init_image_id"), format!("there is no gallery image with id {id}"));
    let file = state.db.image_file(id).await?;
    let bytes = state
        .images
        .get(&file.ok_or_else(missing)?)
        .await
        .map_err(|_| missing())?;
    upload::probe(&bytes).map_err(|e| ApiError::bad_request(Some("init_image_id"), e.message))
}

/// Checks that gallery image `id` exists and has a mask, for `init_mask_id`.
async fn gallery_mask(state: &AppState, id: i64) -> ApiResult<()> {
    match state.db.image_mask_file(id).await? {
        Some(Some(_)) => Ok(()),
        Some(None) => Err(ApiError::bad_request(
            Some("init_mask_id"),
            format!("gallery image {id} was not inpainted: it has no mask (its mask_url is null)"),
        )),
        None => Err(ApiError::bad_request(
            Some("init_mask_id"),
            format!("there is no gallery image with id {id}"),
        )),
    }
}

/// Ids in paths are positive integers; anything else (`..%2Fetc`, `abc`) is an unknown id.
fn parse_id(raw: Result<Path<String>, PathRejection>, what: &str) -> ApiResult<i64> {
    let unknown = |raw: &str| ApiError::not_found(format!("there is no {what} with id '{}'", clip(raw)));
    let Path(raw) = raw.map_err(|_| unknown("?"))?;
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(unknown(&raw)),
    }
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(None, format!("bad query string: {}", e.body_text()))
}

/// A positive integer query parameter within `max`.
fn query_number(value: Option<&str>, name: &str, default: i64, max: i64) -> ApiResult<i64> {
    let Some(value) = value else { return Ok(default) };
    match value.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            Some(name),
            format!("'{}' is not a whole number in 1..={max}", clip(value)),
        )),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// queued, running, done, failed or canceled.
    status: Option<String>,
    /// 1..=500, default 50.
    #[param(value_type = Option<u32>)]
    limit: Option<String>,
}

#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, description = "Newest first", body = JobList), (status = 400, body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> ApiResult<Json<JobList>> {
    let Query(query) = query.map_err(query_error)?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                Some("status"),
                format!(
                    "unknown status '{}'; use queued, running, done, failed or canceled",
                    clip(s)
                ),
            )
        })?),
    };
    let limit = query_number(query.limit.as_deref(), "limit", 50, 500)?;
    let jobs = state.db.list_jobs(status, limit).await?;
    Ok(Json(JobList { jobs }))
}

#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn get_job(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> ApiResult<Json<Job>> {
    let id = parse_id(id, "job")?;
    let job = state.db.get_job(id).await?;
    job.map(Json)
        .ok_or_else(|| ApiError::not_found(format!("there is no job with id {id}")))
}

#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "A queued job is canceled at once; a running one stops within a step", body = Job),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The job already finished", body = ErrorBody),
    ))]
pub async fn cancel_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Job>> {
    let id = parse_id(id, "job")?;
    cancel(&state, id).await.map(Json)
}

/// Cancels job `id`: a queued job at once, a running one within a step; 409 when it already finished.
pub(crate) async fn cancel(state: &AppState, id: i64) -> ApiResult<Job> {
    state.db.cancel(id, &state.events).await
}

#[utoipa::path(get, path = "/api/events", tag = "events",
    responses((status = 200,
        description = "Server-Sent Events: `job` (a Job), `progress` (a Progress), `image` (an ImageEvent)",
        content_type = "text/event-stream", body = String)))]
pub async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    state.events.sse()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImagesQuery {
    /// 1-based, default 1.
    #[param(value_type = Option<u32>)]
    page: Option<String>,
    /// 1..=200, default 24.
    #[param(value_type = Option<u32>)]
    per_page: Option<String>,
    /// Only images whose prompt contains this text (ignoring case); `total` counts those. At most 200 characters.
    q: Option<String>,
}

#[utoipa::path(get, path = "/api/images", tag = "gallery", params(ImagesQuery),
    responses((status = 200, description = "Newest first", body = ImagePage), (status = 400, body = ErrorBody)))]
pub async fn list_images(
    State(state): State<AppState>,
    query: Result<Query<ImagesQuery>, QueryRejection>,
) -> ApiResult<Json<ImagePage>> {
    let Query(query) = query.map_err(query_error)?;
    let page = query_number(query.page.as_deref(), "page", 1, 1_000_000)?;
    let per_page = query_number(query.per_page.as_deref(), "per_page", 24, 200)?;
    let search = query.q.unwrap_or_default().trim().to_string();
    if search.chars().count() > 200 {
        return Err(ApiError::bad_request(
            Some("q"),
            "the search text is over 200 characters; search for a few words of the prompt",
        ));
    }
    let (images, total) = state.db.list_images(page, per_page, search).await?;
    Ok(Json(ImagePage {
        images,
        total,
        page,
        per_page,
    }))
}

#[utoipa::path(get, path = "/api/images/{id}", tag = "gallery", params(("id" = i64, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Image>> {
    let id = parse_id(id, "image")?;
    let image = state.db.get_image(id).await?;
    image
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("there is no image with id {id}")))
}

#[utoipa::path(get, path = "/api/images/{id}/file", tag = "gallery", params(("id" = i64, Path)),
    responses((status = 200, description = "The PNG with its Dream, sd-metadata and parameters text chunks",
        content_type = "image/png", body = Vec<u8>), (status = 404, body = ErrorBody)))]
pub async fn image_file(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> ApiResult<Response> {
    let id = parse_id(id, "image")?;
    let file = state.db.image_file(id).await?;
    let file = file.ok_or_else(|| ApiError::not_found(format!("there is no image with id {id}")))?;
    let name = download_name(&state, id, "").await;
    serve_png(&state, &file, &format!("the file of image {id}"), &name).await
}

#[utoipa::path(get, path = "/api/images/{id}/mask", tag = "gallery", params(("id" = i64, Path)),
    responses((status = 200, description = "The inpainting mask the image was painted with: a greyscale PNG, white = \
        repainted, black = kept, at the init image's run size (before `invert_mask` and `outcrop`)",
        content_type = "image/png", body = Vec<u8>),
        (status = 404, description = "No such image, or it has no mask (its `mask_url` is null)", body = ErrorBody)))]
pub async fn image_mask(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> ApiResult<Response> {
    let id = parse_id(id, "image")?;
    let file = state.db.image_mask_file(id).await?;
    let file = file.ok_or_else(|| ApiError::not_found(format!("there is no image with id {id}")))?;
    let file = file.ok_or_else(|| ApiError::not_found(format!("image {id} has no mask: it was not inpainted")))?;
    let name = download_name(&state, id, "-mask").await;
    serve_png(&state, &file, &format!("the mask of image {id}"), &name).await
}

#[utoipa::path(get, path = "/api/images/{id}/init", tag = "gallery", params(("id" = i64, Path)),
    responses((status = 200, description = "The uploaded init image the image was made from, as uploaded (PNG, JPEG, \
        WebP or BMP): what \"use all\" and \"Variations\" send again as `init_image` to reproduce an img2img image",
        content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such image, or it was not made from an upload (txt2img, a gallery init \
            image, or made by an Ember that did not keep uploads)", body = ErrorBody)))]
pub async fn image_init(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> ApiResult<Response> {
    let id = parse_id(id, "image")?;
    let upload = state.db.image_init_upload(id).await?;
    let upload = upload.ok_or_else(|| ApiError::not_found(format!("there is no image with id {id}")))?;
    let (name, bytes) = upload.ok_or_else(|| {
        ApiError::not_found(format!(
            "image {id} was not made from an uploaded init image (or was made before Ember kept them)"
        ))
    })?;
    let content_type = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(image::ImageFormat::Bmp) => "image/bmp",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, content_disposition(&name)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=31536000, immutable"),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// The name a browser saves image `id` under: `{prompt-words}-{seed}{suffix}.png`, so that the page's Download
/// (which leaves the name to this header) and a right-click "Save image as" agree.
async fn download_name(state: &AppState, id: i64, suffix: &str) -> String {
    match state.db.get_image(id).await {
        Ok(Some(image)) => format!("{}-{}{suffix}.png", prompt_words(&image.params.prompt), image.seed),
        _ => format!("ember-{id}{suffix}.png"),
    }
}

/// The first words of a prompt as a file name part: letters and digits only (no prompt syntax, no path
/// separators), lowercase, joined by `-`, at most 6 words and 60 characters; `ember` when none are left.
pub(crate) fn prompt_words(prompt: &str) -> String {
    let mut out = String::new();
    let words = prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(6);
    for word in words {
        let word = word.to_lowercase();
        if out.chars().count() + word.chars().count() + 1 > 60 {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&word);
    }
    if out.is_empty() {
        "ember".into()
    } else {
        out
    }
}

/// `inline` with the name twice: `filename` in ASCII for old clients, `filename*` (RFC 6266) in UTF-8.
fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b".-_".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&format!("inline; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

/// A PNG of the images folder, named in the database; `what` names it in errors, `download` is the name a browser
/// saves it under.
async fn serve_png(state: &AppState, file: &str, what: &str, download: &str) -> ApiResult<Response> {
    // The name comes from our own database, but a file name with a separator would still leave the folder.
    if file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(ApiError::internal(format!(
            "{what} has an unsafe file name in the database"
        )));
    }
    let bytes = state.images.get(file).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::not_found(format!("{what} is missing from the image store"))
        } else {
            ApiError::internal(format!("cannot read {what}: {e}"))
        }
    })?;
    let disposition = content_disposition(download);
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (header::CONTENT_DISPOSITION, disposition),
            // Ids are never reused, so an image's bytes never change.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=31536000, immutable"),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/images/{id}", tag = "gallery", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted, its file (and mask) included"), (status = 404, body = ErrorBody)))]
pub async fn delete_image(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = parse_id(id, "image")?;
    let file = state.db.delete_image(id).await?;
    let (file, mask) = file.ok_or_else(|| ApiError::not_found(format!("there is no image with id {id}")))?;
    for file in std::iter::once(file).chain(mask) {
        if file.contains(['/', '\\']) {
            continue;
        }
        match state.images.delete(&file).await {
            Ok(()) => {}
            Err(e) => tracing::warn!("image {id} was removed from the gallery but its file {file} stays: {e}"),
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` while the server cannot take jobs (the answer's status is then 503).
    pub status: String,
    /// `ok`, or what is wrong with the data folder (a full disk, a removed database).
    pub storage: String,
    /// The job the worker runs now, if any.
    pub running_job: Option<i64>,
}

#[utoipa::path(get, path = "/api/health", tag = "other",
    responses((status = 200, body = Health), (status = 503, description = "The storage is unusable", body = Health)))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let storage = state.storage.check();
    let status = if storage.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let health = Health {
        status: if storage.is_ok() { "ok" } else { "unavailable" }.into(),
        storage: storage.err().unwrap_or_else(|| "ok".into()),
        running_job: state.db.running_id().await,
    };
    (status, Json(health))
}

#[utoipa::path(get, path = "/api/samplers", tag = "other", responses((status = 200, body = SamplerList)))]
pub async fn samplers() -> Json<SamplerList> {
    Json(SamplerList {
        samplers: SamplerKind::ALL.iter().map(|k| k.name().to_string()).collect(),
    })
}

#[utoipa::path(get, path = "/api/models", tag = "other", responses((status = 200,
    description = "The models jobs may name (`model`), `loaded` saying which one is in memory: each with its family, \
                   prediction type, timestep spacing, and the defaults of jobs that leave steps, cfg_scale, sampler, \
                   width or height out", body = ModelList)))]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        models: state.models.infos(),
    })
}

/// `GET /api/workers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<crate::pg::WorkerInfo>,
}

#[utoipa::path(get, path = "/api/workers", tag = "other", responses((status = 200,
    description = "The workers of a PostgreSQL queue (`ember worker`, and `ember serve --workers N`): the models each \
                   may run, the one in memory, the job it runs, and whether it is alive (answered within three \
                   leases). Empty for the SQLite queue, whose one worker runs inside the server", body = WorkerList)))]
pub async fn workers(State(state): State<AppState>) -> ApiResult<Json<WorkerList>> {
    Ok(Json(WorkerList {
        workers: state.db.workers().await?,
    }))
}

/// Unknown API paths get the JSON error shape too.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/openapi.json")
}
