//! `txt2img` and `img2img`: the request translated (`request.rs`), its jobs run through Ember's queue
//! (`blocking.rs`), and A1111's answer built: `{images, parameters, info}`, `info` being a JSON string.

use super::request::{translate, Mode, Plan};
use super::{A1111Error, Result};
use crate::blocking::{self, Finished, Source, Submission};
use crate::error::ApiError;
use crate::types::{JobStatus, Variation};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};

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

/// Runs a txt2img/img2img request to its end: the images done, or the first error.
async fn generate(state: &AppState, mode: Mode, body: &[u8]) -> Result<Value> {
    let mut plan = translate(state, mode, body)?;
    let finished = blocking::run(state, Source::A1111, submissions(&plan)).await?;
    let outcome = Outcome::collect(&plan, &finished)?;
    if outcome.interrupted {
        let total = plan.total();
        plan.notes.push(format!(
            "interrupted: {} of {total} images were canceled (POST /sdapi/v1/interrupt, or from Ember's page)",
            total - outcome.images.len()
        ));
    }
    let info = info(&plan, &outcome);
    let parameters = echoed_parameters(plan);
    Ok(json!({
        "images": outcome.images,
        "parameters": parameters,
        "info": info.to_string(),
    }))
}

/// One job per image: the plan's parameters with the image's seed and, when variations are on, its variation seed.
fn submissions<'a>(plan: &Plan<'a>) -> Vec<Submission<'a>> {
    (0..plan.total())
        .map(|i| {
            let mut params = plan.base.clone();
            params.seed = plan.seeds[i];
            if plan.subseed_strength > 0.0 {
                params.with_variations = vec![Variation {
                    seed: plan.subseeds[i],
                    weight: plan.subseed_strength,
                }];
            }
            Submission {
                model: plan.served,
                params,
                uploads: plan.uploads.clone(),
            }
        })
        .collect()
}

/// What the jobs came to. Canceled jobs (interrupt, skip, Ember's page) just leave their images out, as A1111 answers
/// with the images done before an interrupt; a failed job fails the request.
struct Outcome {
    /// The PNGs, base64-encoded, and their A1111 `parameters` texts.
    images: Vec<Value>,
    infotexts: Vec<Value>,
    image_ids: Vec<i64>,
    job_ids: Vec<i64>,
    /// The size of the images (the last one's; the plan's when none is done).
    width: u32,
    height: u32,
    interrupted: bool,
}

impl Outcome {
    fn collect(plan: &Plan, finished: &[Finished]) -> Result<Self> {
        let mut images = Vec::new();
        let mut infotexts = Vec::new();
        let mut image_ids = Vec::new();
        let (mut width, mut height) = (plan.base.width as u32, plan.base.height as u32);
        let mut interrupted = false;
        for f in finished {
            match (&f.image, f.job.status) {
                (Some(done), _) => {
                    images.push(Value::String(BASE64_STANDARD.encode(&done.png)));
                    infotexts.push(Value::String(done.parameters.clone()));
                    image_ids.push(done.image.id);
                    (width, height) = (done.image.width, done.image.height);
                }
                (None, JobStatus::Canceled) => interrupted = true,
                (None, _) => {
                    let error = f.job.error.clone().unwrap_or_else(|| "the job failed".into());
                    return Err(A1111Error(ApiError::internal(format!(
                        "job {} failed: {error}",
                        f.job.id
                    ))));
                }
            }
        }
        Ok(Self {
            images,
            infotexts,
            image_ids,
            job_ids: finished.iter().map(|f| f.job.id).collect(),
            width,
            height,
            interrupted,
        })
    }
}

/// A1111's `info` (its `Processed.js()`), plus Ember's `notes`, `job_ids` and `image_ids`.
fn info(plan: &Plan, outcome: &Outcome) -> Value {
    let total = plan.total();
    json!({
        "prompt": plan.prompt,
        "all_prompts": vec![plan.prompt.clone(); total],
        "negative_prompt": plan.negative_prompt,
        "all_negative_prompts": vec![plan.negative_prompt.clone(); total],
        "seed": plan.seeds[0],
        "all_seeds": plan.seeds,
        "subseed": plan.subseeds[0],
        "all_subseeds": plan.subseeds,
        "subseed_strength": plan.subseed_strength,
        "width": outcome.width,
        "height": outcome.height,
        "sampler_name": plan.sampler_name,
        "scheduler": plan.scheduler,
        "cfg_scale": plan.base.cfg_scale,
        "steps": plan.base.steps,
        "batch_size": plan.batch_size,
        "n_iter": plan.n_iter,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": plan.served.name(),
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": plan.denoising_strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": outcome.infotexts,
        "styles": [],
        "job_timestamp": chrono_stamp(),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": false,
        "version": concat!("ember ", env!("CARGO_PKG_VERSION")),
        "interrupted": outcome.interrupted,
        "notes": plan.notes,
        "job_ids": outcome.job_ids,
        "image_ids": outcome.image_ids,
    })
}

/// The body as sent, A1111's `parameters`; its (large) images are nulled unless `include_init_images` asks for them.
fn echoed_parameters(plan: Plan) -> Value {
    let mut parameters = plan.body;
    if !plan.include_init_images {
        for key in ["init_images", "mask"] {
            if parameters.contains_key(key) {
                parameters.insert(key.into(), Value::Null);
            }
        }
    }
    Value::Object(parameters)
}

/// A1111's `job_timestamp`: `YYYYmmddHHMMSS` (UTC here).
pub(super) fn chrono_stamp() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_dates() {
        let stamp = chrono_stamp();
        assert_eq!(stamp.len(), 14, "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
    }
}
