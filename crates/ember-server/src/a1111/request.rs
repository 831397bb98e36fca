//! A txt2img/img2img body translated into Ember job parameters (`translate`): A1111's fields read and checked in a
//! fixed order (so that of several bad fields, the same one is reported), seeds and variation seeds, hires fix, the
//! init image and mask, and a note for each setting Ember ignores.

use super::fields::{neutral, Fields};
use super::images::{a1111_mask, image_bytes};
use super::model::request_model;
use super::samplers::{sampler, KARRAS_ALWAYS};
use super::{invalid, Result};
use crate::api::Upload;
use crate::models::Served;
use crate::types::{Params, ParamsInput};
use crate::AppState;
use ember::request::random_seed;
use serde_json::{Map, Value};

/// Most images one request may ask for (`batch_size × n_iter`).
pub const MAX_IMAGES: i64 = 32;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Txt2img,
    Img2img,
}

/// A txt2img/img2img request, translated: the jobs to run, and what the answer reports about them.
pub(super) struct Plan<'a> {
    /// The model the jobs run on.
    pub served: &'a Served,
    /// Every job's parameters, but for its seed and variation.
    pub base: Params,
    /// The init image and mask (img2img), uploaded with every job.
    pub uploads: (Option<Upload>, Option<Upload>),
    /// One seed and one variation seed per image.
    pub seeds: Vec<u32>,
    pub subseeds: Vec<u32>,
    pub subseed_strength: f64,
    pub prompt: String,
    pub negative_prompt: String,
    pub batch_size: usize,
    pub n_iter: usize,
    /// A1111's names for the sampler and the schedule it runs on (`Euler a`, `Karras`).
    pub sampler_name: String,
    pub scheduler: String,
    /// The strength asked for (img2img's default 0.75 included), before the model's defaults fill it in.
    pub denoising_strength: Option<f64>,
    /// What Ember ignored or does otherwise than A1111, for `info.notes`.
    pub notes: Vec<String>,
    /// The body as sent, echoed as the answer's `parameters`.
    pub body: Map<String, Value>,
    pub include_init_images: bool,
}

impl Plan<'_> {
    /// How many images the request asks for.
    pub fn total(&self) -> usize {
        self.batch_size * self.n_iter
    }
}

/// Reads a txt2img/img2img body into the jobs it asks for; the first bad field is the error.
pub(super) fn translate<'a>(state: &'a AppState, mode: Mode, body: &[u8]) -> Result<Plan<'a>> {
    let mut f = Fields::parse(body)?;
    let mut notes = Vec::new();
    let common = Common::read(&mut f)?;
    let wanted_model = model_override(&mut f, &mut notes)?;
    let served = request_model(state, wanted_model.as_deref())?;
    let (engine_sampler, karras, sampler_label) = sampler(
        common.sampler_name.as_deref(),
        common.scheduler.as_deref(),
        &served.info.defaults.sampler,
    )?;
    let (sampler_name, scheduler) = sampler_label.split_once('|').unwrap_or((&sampler_label, ""));

    let mut input = ParamsInput {
        prompt: Some(common.prompt.clone()),
        negative_prompt: Some(common.negative_prompt.clone()),
        steps: common.steps,
        cfg_scale: common.cfg_scale,
        sampler: Some(engine_sampler),
        seed: Some(common.seed),
        width: common.width,
        height: common.height,
        seamless: Some(common.tiling),
        karras_max: karras.map(|k| if k { KARRAS_ALWAYS } else { 0 }),
        ..Default::default()
    };
    let uploads = match mode {
        Mode::Txt2img => {
            read_hires_fix(&mut f, served, &mut input, &mut notes)?;
            (None, None)
        }
        Mode::Img2img => read_img2img(&mut f, &mut input, &mut notes)?,
    };
    note_missing_features(&mut f, &mut notes)?;
    let include_init_images = f.flag("include_init_images")?.unwrap_or(false);
    // Last, as it reports the fields not read: every field the translation uses has been read by now.
    notes.extend(f.ignored());

    let (seeds, subseeds) = common.image_seeds();
    let denoising_strength = input.strength;
    let base = served.resolve(input, random_seed)?;
    Ok(Plan {
        served,
        base,
        uploads,
        seeds,
        subseeds,
        subseed_strength: common.subseed_strength,
        prompt: common.prompt,
        negative_prompt: common.negative_prompt,
        batch_size: common.batch_size,
        n_iter: common.n_iter,
        sampler_name: sampler_name.to_string(),
        scheduler: scheduler.to_string(),
        denoising_strength,
        notes,
        body: f.map,
        include_init_images,
    })
}

/// The fields txt2img and img2img share, checked.
struct Common {
    prompt: String,
    negative_prompt: String,
    seed: u32,
    subseed: u32,
    subseed_strength: f64,
    batch_size: usize,
    n_iter: usize,
    steps: Option<usize>,
    cfg_scale: Option<f64>,
    width: Option<usize>,
    height: Option<usize>,
    /// `sampler_name`, else the older `sampler_index` (a name too).
    sampler_name: Option<String>,
    scheduler: Option<String>,
    tiling: bool,
}

impl Common {
    fn read(f: &mut Fields) -> Result<Self> {
        let prompt = f.string("prompt")?.unwrap_or_default();
        let negative_prompt = f.string("negative_prompt")?.unwrap_or_default();
        let seed = read_seed(f, "seed")?;
        let subseed = read_seed(f, "subseed")?;
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
        let width = f.count("width", 8, 4096)?;
        let height = f.count("height", 8, 4096)?;
        let sampler_name = match f.string("sampler_name")? {
            Some(name) => Some(name),
            None => f.string("sampler_index")?,
        };
        let scheduler = f.string("scheduler")?;
        let tiling = f.flag("tiling")?.unwrap_or(false);
        Ok(Self {
            prompt,
            negative_prompt,
            seed,
            subseed,
            subseed_strength,
            batch_size,
            n_iter,
            steps,
            cfg_scale,
            width,
            height,
            sampler_name,
            scheduler,
            tiling,
        })
    }

    /// Each image's seed and variation seed. A1111: seeds count up over the images, unless variations are on; then
    /// the variation seeds do.
    fn image_seeds(&self) -> (Vec<u32>, Vec<u32>) {
        let total = (self.batch_size * self.n_iter) as u32;
        let seeds = (0..total)
            .map(|i| self.seed.wrapping_add(if self.subseed_strength > 0.0 { 0 } else { i }))
            .collect();
        let subseeds = (0..total).map(|i| self.subseed.wrapping_add(i)).collect();
        (seeds, subseeds)
    }
}

/// A1111's `seed`/`subseed`: -1 (or absent) is random, else a seed in 0..=u32::MAX.
fn read_seed(fields: &mut Fields, name: &'static str) -> Result<u32> {
    match fields.int(name)? {
        None | Some(-1) => Ok(random_seed()),
        Some(v) => {
            u32::try_from(v).map_err(|_| invalid(name, format!("{v} is not -1 (random) or a seed in 0..=4294967295")))
        }
    }
}

/// `override_settings`: the model to run on (`sd_model_checkpoint`); any other setting that would change the image
/// gets a note.
fn model_override(f: &mut Fields, notes: &mut Vec<String>) -> Result<Option<String>> {
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
    Ok(wanted_model)
}

/// txt2img's own fields, all about hires fix (`enable_hr`): the final size, `denoising_strength` for the second pass.
fn read_hires_fix(f: &mut Fields, served: &Served, input: &mut ParamsInput, notes: &mut Vec<String>) -> Result<()> {
    if !f.flag("enable_hr")?.unwrap_or(false) {
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
        return Ok(());
    }
    let scale = f.float("hr_scale")?.unwrap_or(2.0);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(invalid("hr_scale", format!("{scale} is not a positive number")));
    }
    let (w0, h0) = (
        input.width.unwrap_or(served.info.defaults.width),
        input.height.unwrap_or(served.info.defaults.height),
    );
    // A1111's final size: `hr_resize_x`/`hr_resize_y` (one of them keeps the aspect ratio), else `hr_scale` times the
    // first pass's; Ember's sizes are multiples of 8.
    let rx = f.count("hr_resize_x", 0, 4096)?.unwrap_or(0);
    let ry = f.count("hr_resize_y", 0, 4096)?.unwrap_or(0);
    let (w, h) = match (rx, ry) {
        (0, 0) => ((w0 as f64 * scale) as usize, (h0 as f64 * scale) as usize),
        (x, 0) => (x, x * h0 / w0),
        (0, y) => (y * w0 / h0, y),
        (x, y) => (x, y),
    };
    let (w, h) = ((w / 8).max(1) * 8, (h / 8).max(1) * 8);
    input.width = Some(w);
    input.height = Some(h);
    input.hires_fix = Some(true);
    input.strength = f.float("denoising_strength")?;
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
    Ok(())
}

/// img2img's own fields: the init image, `denoising_strength`, `resize_mode` and the inpainting mask; returns the
/// uploads (init image, mask).
fn read_img2img(
    f: &mut Fields,
    input: &mut ParamsInput,
    notes: &mut Vec<String>,
) -> Result<(Option<Upload>, Option<Upload>)> {
    let init = init_image(f, notes)?;
    input.strength = Some(f.float("denoising_strength")?.unwrap_or(0.75));
    match f.int("resize_mode")? {
        None | Some(0) => {}
        Some(m @ 1..=3) => notes.push(format!(
            "resize_mode {m}: Ember scales the init image into width × height keeping its aspect ratio (as \
             resize_mode 0 does in Ember), without cropping, filling or latent upscaling"
        )),
        Some(m) => return Err(invalid("resize_mode", format!("{m} is not 0, 1, 2 or 3"))),
    }
    // Scaled into width × height when they are given, else the init image's own size.
    input.fit = Some(input.width.is_some() || input.height.is_some());
    let mask = inpainting_mask(f, input, notes)?;
    Ok((
        Some(("init.png".to_string(), init)),
        mask.map(|b| ("mask.png".to_string(), b)),
    ))
}

/// `init_images`: Ember takes one image, the first.
fn init_image(f: &mut Fields, notes: &mut Vec<String>) -> Result<Vec<u8>> {
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
    let init = image_bytes(first, "init_images[0]")?;
    if images.len() > 1 {
        notes.push(format!(
            "init_images: Ember uses the first image only; {} more were ignored",
            images.len() - 1
        ));
    }
    Ok(init)
}

/// `mask` and its settings (`mask_blur`, `inpainting_mask_invert`, …), which only matter when there is a mask.
fn inpainting_mask(f: &mut Fields, input: &mut ParamsInput, notes: &mut Vec<String>) -> Result<Option<Vec<u8>>> {
    let Some(m) = f.string("mask")? else {
        for key in [
            "mask_blur",
            "inpainting_mask_invert",
            "inpainting_fill",
            "inpaint_full_res",
        ] {
            f.get(key);
        }
        return Ok(None);
    };
    let mask = a1111_mask(image_bytes(&m, "mask")?)?;
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
    Ok(Some(mask))
}

/// A1111 features Ember lacks that clients commonly turn on (face restoration, saved styles): a note each.
fn note_missing_features(f: &mut Fields, notes: &mut Vec<String>) -> Result<()> {
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
    Ok(())
}
