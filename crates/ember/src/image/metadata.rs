//! What a generated image records about how it was made, in the three formats other tools read:
//!
//! - `Dream`: InvokeAI 2.x's reproducing command line, `"fire" -s 10 -S 1592514025 -W 384 -H 384 -C 7.5
//!   -I fire-drawing.png -A k_lms -f 0.7` — same switches in the same order as InvokeAI's `dream_prompt_str`.
//!   Ember adds, only when they are not the defaults: `--karras-max N` after `-C` (where InvokeAI puts
//!   `--karras_max`) and `--negative "…"` at the end (InvokeAI had no negative prompt switch). img2img always
//!   gets `-f` (InvokeAI drops `-f 0`, which then replays at its 0.75 default) and `--fit` when fitted.
//!   `-W`/`-H` are the fit box when fitted (it reproduces the same size), else the image's actual size.
//!   Inpainting follows the img2img part, each only when set: `-M mask.png` (the mask file a front-end saved, so
//!   the line replays the run; [`ImageRecord::init_mask_name`]), `--invert-mask`, `--mask-blur N`,
//!   `--outcrop top 64 left 128` (InvokeAI's words; zero sides left out) and `--no-paste-back`.
//!   Then, each only when set, in this order: `--hires_fix -f S` (txt2img), `--exact-steps`, `-V seed:weight,…`,
//!   `--seamless`, `--vae-tiling`, `--threshold X`, `--perlin X`, `-x`, `--truncate-prompts`,
//!   `--downweight mask`, `--prediction-type X`, `--timestep-spacing Y`, `--lora NAME:W` (each LoRA of the request's
//!   list; the prompt's `<lora:…>` terms stay in the prompt), `--negative "…"`. The prediction type and
//!   timestep spacing are written when the request set them (an override, or a models-file default); left to the
//!   model they are not, since the same model decides them the same way again. The line is a valid REPL command,
//!   which is what `!fetch` relies on: it regenerates the same image.
//! - `sd-metadata`: InvokeAI's JSON (RFC #266 layout), keeping `init_image_path`, `strength`, `fit` and
//!   `seamless` that InvokeAI's CLI lost to a missing comma; `karras_max` when not the default; an Ember `negative_prompt` key when one was given
//!   and `downweight: "mask"` with `--downweight mask`, `vae_tiling: true` with `--vae-tiling`. Inpainting keeps
//!   InvokeAI 2.x's `type: "img2img"` (its web server wrote inpainting so too, with the mask as `mask_image_path`,
//!   the key used here) and adds, each only when set: `mask_image_path`, `invert_mask: true`, `mask_blur: N`,
//!   `outcrop: {"top": 64, "bottom": 0, "left": 128, "right": 0}` (an object with all four sides, in pixels) and
//!   `paste_back: false` with `--no-paste-back`. Ember adds what the
//!   model made of the request ([`RunInfo`], the values used, not only the overrides): `model_family` (`sd1`, `sd2`,
//!   `sdxl`), `prediction_type` (`epsilon`, `v_prediction`), `timestep_spacing` (`karras-kdiffusion`, `linspace`,
//!   `leading`, `trailing`) and `guidance` (how the cfg scale acted: classifier-free, none at cfg ≤ 1, or LCM's
//!   embedding), `loras` (name, weight, hash) / `embeddings` (name, hash) when any were used, and `dtype`
//!   (`f32`, `bf16`, …) and `device` (`cpu`, `cuda:0`) the networks ran on.
//! - `parameters`: AUTOMATIC1111's text block, read by most image browsers, in A1111's layout and names
//!   ([`super::infotext`]): `Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, VAE, Variation
//!   seed, Variation seed strength, Denoising strength, Tiling`, then `Mask blur, Mask mode, Lora hashes, TI hashes`.
//!   The sampler is A1111's name (`DPM++ 2M`, [`crate::sample::names`]) and `Schedule type` says what ran: `Karras`
//!   or `Uniform` (the model's own σ), for k-samplers only. A1111 has no key for the prediction type
//!   or a diffusers timestep spacing (its `Schedule type` names σ schedules such as Karras, which the sampler name
//!   already carries, and its `SGM Uniform` is not diffusers' `trailing`), so neither is written there. LoRAs of the
//!   request's list are written into the prompt as `<lora:NAME:W>` (where A1111 reads them), and the hashes as A1111
//!   writes them: `Lora hashes: "name: hash, …"`, `TI hashes: "name: hash"`. Inpainting adds A1111's
//!   `Mask blur: N` (when above 0) and `Mask mode: Inpaint not masked` (with `--invert-mask`); A1111 has no key for
//!   the mask file, the outcrop or paste-back (its `Inpaint area` and `Masked content` are other features).

use super::infotext;
use crate::request::{GenerateRequest, DEFAULT_KARRAS_MAX};
use crate::sample::names::a1111_name;
use serde::Serialize;

/// Everything written into an output PNG besides its pixels.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub request: GenerateRequest,
    /// The image's actual size (img2img: the prepared init image's).
    pub width: usize,
    pub height: usize,
    /// Denoising steps actually taken (`floor(strength × steps)` for img2img).
    pub steps_run: usize,
    pub model_name: String,
    /// sha256 of the weights, hex, when known.
    pub model_hash: Option<String>,
    /// How the init image was named (path or upload name), for img2img.
    pub init_image_name: Option<String>,
    /// How the inpainting mask was named: the `-M` path or upload name, or the file a front-end saved the
    /// pipeline's [`crate::pipeline::Generated::mask`] to (a mask taken from the init image's transparency has no
    /// name until then).
    pub init_mask_name: Option<String>,
    /// What the model made of the request: the settings the request left to the model, as they were applied.
    pub run: RunInfo,
}

/// The model-side settings of a generation, recorded so that an image says how it was made even where the request
/// left them to the model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunInfo {
    /// `sd1`, `sd2`, `sdxl` (see [`crate::model::Family::id`]); empty when unknown.
    pub family: String,
    pub prediction_type: crate::sample::denoiser::PredictionType,
    pub timestep_spacing: crate::sample::schedule::TimestepSpacing,
    /// How the cfg scale was applied: [`crate::guidance::Guidance::describe`].
    pub guidance: String,
    /// The LoRAs applied (from the request's list and the prompt's terms), with their UNet weights.
    pub loras: Vec<AddonUse>,
    /// The embeddings the prompts used.
    pub embeddings: Vec<AddonUse>,
    /// The tiny autoencoder's file name when it decoded the image (`--vae-approx`).
    pub vae_approx: Option<String>,
    /// The precision the networks ran in (`f32`, `bf16`, `f16`, `f64`) and the device (`cpu`, `cuda:0`): the same
    /// settings on another precision or device give slightly different pixels, so an image says which it had.
    pub dtype: String,
    pub device: String,
}

/// A LoRA or embedding an image was made with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddonUse {
    pub name: String,
    /// A LoRA's weight (on the UNet); none for an embedding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// A1111's short hash (12 hex digits).
    pub hash: String,
}

impl ImageRecord {
    fn init_name(&self) -> Option<String> {
        let from_request = || self.request.init_image.as_ref().map(|i| i.display_name());
        self.init_image_name.clone().or_else(from_request)
    }

    /// The inpainting mask's name: the file the front-end saved, else the request's `-M`.
    fn mask_name(&self) -> Option<String> {
        let from_request = || self.request.init_mask.as_ref().map(|m| m.display_name());
        self.init_mask_name.clone().or_else(from_request)
    }

    fn is_img2img(&self) -> bool {
        self.request.init_image.is_some() || self.init_image_name.is_some()
    }

    /// Whether a k-sampler ran on the Karras schedule (InvokeAI: `steps < karras_max`).
    fn uses_karras(&self) -> bool {
        self.request.sampler.is_k_sampler() && self.request.schedule_steps() < self.request.karras_max
    }
}

/// Text chunks for the PNG, in writing order: `Dream`, `sd-metadata`, `parameters`.
pub fn text_chunks(record: &ImageRecord) -> Vec<(&'static str, String)> {
    vec![
        ("Dream", dream_command(record)),
        ("sd-metadata", sd_metadata_json(record)),
        ("parameters", a1111_parameters(record)),
    ]
}

/// InvokeAI's `Dream` command line (see the module documentation).
pub fn dream_command(record: &ImageRecord) -> String {
    let r = &record.request;
    let (w, h) = if r.fit && record.is_img2img() {
        (r.width, r.height)
    } else {
        (record.width, record.height)
    };
    let mut parts = vec![
        quote(&r.prompt),
        format!("-s {}", r.steps),
        format!("-S {}", r.seed),
        format!("-W {w}"),
        format!("-H {h}"),
        format!("-C {}", py_float(r.cfg_scale)),
    ];
    if r.karras_max != DEFAULT_KARRAS_MAX {
        parts.push(format!("--karras-max {}", r.karras_max));
    }
    match record.init_name().filter(|_| record.is_img2img()) {
        Some(init) => {
            parts.push(format!("-I {}", quote_if_needed(&init)));
            parts.push(format!("-A {}", r.sampler));
            if r.fit {
                parts.push("--fit".to_string());
            }
            parts.push(format!("-f {}", py_float(r.strength)));
            if let Some(mask) = record.mask_name() {
                parts.push(format!("-M {}", quote_if_needed(&mask)));
            }
            if r.invert_mask {
                parts.push("--invert-mask".to_string());
            }
            if r.mask_blur > 0 {
                parts.push(format!("--mask-blur {}", r.mask_blur));
            }
            if !r.outcrop.is_empty() {
                parts.push(format!("--outcrop {}", r.outcrop));
            }
            if !r.paste_back {
                parts.push("--no-paste-back".to_string());
            }
        }
        None => {
            parts.push(format!("-A {}", r.sampler));
            if r.hires_fix {
                parts.push("--hires_fix".to_string());
                parts.push(format!("-f {}", py_float(r.strength)));
            }
        }
    }
    if r.exact_steps && record.is_img2img() {
        parts.push("--exact-steps".to_string());
    }
    if !r.with_variations.is_empty() {
        let list: Vec<String> = r
            .with_variations
            .iter()
            .map(|(seed, weight)| format!("{seed}:{}", py_float(*weight)))
            .collect();
        parts.push(format!("-V {}", list.join(",")));
    }
    if r.seamless {
        parts.push("--seamless".to_string());
    }
    // Tiles change the pixels slightly: recorded so that `!fetch` reproduces the image.
    if r.vae_tiling {
        parts.push("--vae-tiling".to_string());
    }
    if r.threshold > 0.0 {
        parts.push(format!("--threshold {}", py_float(r.threshold)));
    }
    if r.perlin > 0.0 {
        parts.push(format!("--perlin {}", py_float(r.perlin)));
    }
    if r.skip_normalize {
        parts.push("-x".to_string());
    }
    if r.truncate_prompts {
        parts.push("--truncate-prompts".to_string());
    }
    if r.downweight_mask {
        parts.push("--downweight mask".to_string());
    }
    if let Some(prediction) = r.prediction_type {
        parts.push(format!("--prediction-type {prediction}"));
    }
    if let Some(spacing) = r.timestep_spacing {
        parts.push(format!("--timestep-spacing {spacing}"));
    }
    for lora in &r.loras {
        parts.push(format!(
            "--lora {}",
            quote_if_needed(&format!("{}:{}", lora.name, py_float(lora.unet_weight)))
        ));
    }
    // An explicitly empty negative is recorded too: SDXL encodes it where it zeroes a missing one.
    if !r.negative_prompt.is_empty() || r.negative_given {
        parts.push(format!("--negative {}", quote(&r.negative_prompt)));
    }
    parts.join(" ")
}

#[derive(Serialize)]
struct SdMetadata<'a> {
    model: &'static str,
    model_weights: &'a str,
    model_hash: Option<&'a str>,
    app_id: &'static str,
    app_version: &'static str,
    image: SdImage<'a>,
}

#[derive(Serialize)]
struct SdPrompt<'a> {
    prompt: &'a str,
    weight: f64,
}

/// One `-V` entry, as InvokeAI wrote it.
#[derive(Serialize)]
struct SdVariation {
    seed: u32,
    weight: f64,
}

/// `--outcrop`, in pixels per side.
#[derive(Serialize)]
struct SdOutcrop {
    top: u32,
    bottom: u32,
    left: u32,
    right: u32,
}

#[derive(Serialize)]
struct SdImage<'a> {
    prompt: Vec<SdPrompt<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    /// Length of the schedule; with `exact_steps` also `steps_run`, the steps taken from the image.
    steps: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    exact_steps: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps_run: Option<usize>,
    cfg_scale: f64,
    /// `--karras-max` when it is not the default (InvokeAI's CLI kept it out of sd-metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    karras_max: Option<usize>,
    threshold: f64,
    perlin: f64,
    height: usize,
    width: usize,
    seed: u32,
    seamless: bool,
    /// `--vae-tiling`; absent when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    vae_tiling: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    hires_fix: bool,
    /// `"mask"` with `--downweight mask`; absent for the default (InvokeAI 2.x's removal).
    #[serde(skip_serializing_if = "Option::is_none")]
    downweight: Option<&'static str>,
    postprocessing: Option<()>,
    sampler: &'static str,
    variations: Vec<SdVariation>,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_image_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strength: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fit: Option<bool>,
    /// Inpainting (InvokeAI 2.x web's key): the mask file; then Ember's options, each absent when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    mask_image_path: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    invert_mask: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask_blur: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcrop: Option<SdOutcrop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paste_back: Option<bool>,
    /// Ember: what the model made of the request ([`RunInfo`]); the family and guidance are absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_family: Option<&'a str>,
    prediction_type: &'static str,
    timestep_spacing: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    guidance: Option<&'a str>,
    /// Ember: the LoRAs applied (name, weight, A1111 hash) and the embeddings used (name, hash); absent when none.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    loras: &'a [AddonUse],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    embeddings: &'a [AddonUse],
    /// Ember: the tiny autoencoder that decoded the image (`--vae-approx`); absent for the VAE.
    #[serde(skip_serializing_if = "Option::is_none")]
    vae_approx: Option<&'a str>,
    /// Ember: the precision and device the image was made with; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    dtype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
}

/// InvokeAI's `sd-metadata` JSON (see the module documentation).
pub fn sd_metadata_json(record: &ImageRecord) -> String {
    let r = &record.request;
    let img2img = record.is_img2img();
    let doc = SdMetadata {
        model: "stable diffusion",
        model_weights: &record.model_name,
        model_hash: record.model_hash.as_deref(),
        app_id: "ember",
        app_version: env!("CARGO_PKG_VERSION"),
        image: SdImage {
            prompt: vec![SdPrompt {
                prompt: &r.prompt,
                weight: 1.0,
            }],
            negative_prompt: Some(r.negative_prompt.as_str()).filter(|n| !n.is_empty()),
            steps: r.schedule_steps(),
            exact_steps: r.exact_steps && img2img,
            steps_run: (r.exact_steps && img2img).then_some(record.steps_run),
            cfg_scale: r.cfg_scale,
            karras_max: Some(r.karras_max).filter(|&k| k != DEFAULT_KARRAS_MAX),
            threshold: r.threshold,
            perlin: r.perlin,
            height: record.height,
            width: record.width,
            seed: r.seed,
            seamless: r.seamless,
            vae_tiling: r.vae_tiling,
            hires_fix: r.hires_fix && !img2img,
            downweight: r.downweight_mask.then_some("mask"),
            postprocessing: None,
            sampler: r.sampler.name(),
            variations: r
                .with_variations
                .iter()
                .map(|&(seed, weight)| SdVariation { seed, weight })
                .collect(),
            kind: if img2img { "img2img" } else { "txt2img" },
            init_image_path: if img2img { record.init_name() } else { None },
            strength: (img2img || r.hires_fix).then_some(r.strength),
            fit: img2img.then_some(r.fit),
            mask_image_path: record.mask_name().filter(|_| img2img),
            invert_mask: r.invert_mask && img2img,
            mask_blur: Some(r.mask_blur).filter(|&b| b > 0 && img2img),
            outcrop: (!r.outcrop.is_empty() && img2img).then_some(SdOutcrop {
                top: r.outcrop.top,
                bottom: r.outcrop.bottom,
                left: r.outcrop.left,
                right: r.outcrop.right,
            }),
            paste_back: (!r.paste_back && img2img).then_some(false),
            model_family: Some(record.run.family.as_str()).filter(|f| !f.is_empty()),
            prediction_type: record.run.prediction_type.name(),
            timestep_spacing: record.run.timestep_spacing.name(),
            guidance: Some(record.run.guidance.as_str()).filter(|g| !g.is_empty()),
            loras: &record.run.loras,
            embeddings: &record.run.embeddings,
            vae_approx: record.run.vae_approx.as_deref(),
            dtype: Some(record.run.dtype.as_str()).filter(|d| !d.is_empty()),
            device: Some(record.run.device.as_str()).filter(|d| !d.is_empty()),
        },
    };
    // Plain data with string keys: serialization cannot fail; fall back to an empty object regardless.
    serde_json::to_string(&doc).unwrap_or_else(|_| "{}".to_string())
}

/// AUTOMATIC1111's `parameters` block (see the module documentation), in A1111's own layout (its
/// `create_infotext`): the prompt, `Negative prompt: …` when there is one, then one line of `Key: value` pairs in
/// A1111's order, each value quoted as A1111 quotes it ([`infotext::quote`]).
pub fn a1111_parameters(record: &ImageRecord) -> String {
    let r = &record.request;
    let mut prompt = r.prompt.clone();
    // LoRAs given outside the prompt (--lora, the API's `loras`) go into it, where A1111 reads them.
    for lora in &r.loras {
        let name = std::path::Path::new(&lora.name)
            .file_stem()
            .map_or(lora.name.clone(), |s| s.to_string_lossy().into_owned());
        prompt.push_str(&format!(" <lora:{name}:{}>", py_float(lora.unet_weight)));
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("Steps", r.schedule_steps().to_string()),
        ("Sampler", a1111_name(r.sampler).to_string()),
    ];
    // A1111 1.9+ writes the schedule apart; Ember's is Karras or the model's own σ (A1111's `Uniform`). Samplers
    // on discrete timesteps (DDIM, PLMS, LCM) take no σ schedule: none is written, which A1111 reads as Automatic.
    if r.sampler.is_k_sampler() {
        let schedule = if record.uses_karras() { "Karras" } else { "Uniform" };
        fields.push(("Schedule type", schedule.to_string()));
    }
    fields.push(("CFG scale", py_float(r.cfg_scale)));
    fields.push(("Seed", r.seed.to_string()));
    fields.push(("Size", format!("{}x{}", record.width, record.height)));
    if let Some(hash) = &record.model_hash {
        // A1111's short hash: the first 10 hex digits of the sha256.
        fields.push(("Model hash", hash.chars().take(10).collect()));
    }
    fields.push(("Model", record.model_name.clone()));
    // A1111 names the VAE that decoded an image; here the tiny autoencoder's file.
    if let Some(name) = &record.run.vae_approx {
        fields.push(("VAE", name.clone()));
    }
    // A1111 has one variation seed; the last `-V` entry is the one a single variation run adds.
    if let Some((seed, weight)) = r.with_variations.last() {
        fields.push(("Variation seed", seed.to_string()));
        fields.push(("Variation seed strength", py_float(*weight)));
    }
    if record.is_img2img() || r.hires_fix {
        fields.push(("Denoising strength", py_float(r.strength)));
    }
    if r.seamless {
        fields.push(("Tiling", "True".to_string()));
    }
    // A1111's img2img keys come from its `extra_generation_params`, after the fixed ones.
    if record.is_img2img() && r.mask_blur > 0 {
        fields.push(("Mask blur", r.mask_blur.to_string()));
    }
    if record.is_img2img() && r.invert_mask {
        fields.push(("Mask mode", "Inpaint not masked".to_string()));
    }
    // As A1111 writes them: `Lora hashes: "name: hash, name: hash"`.
    for (key, list) in [
        ("Lora hashes", &record.run.loras),
        ("TI hashes", &record.run.embeddings),
    ] {
        if !list.is_empty() {
            let joined: Vec<String> = list.iter().map(|a| format!("{}: {}", a.name, a.hash)).collect();
            fields.push((key, joined.join(", ")));
        }
    }
    infotext::format(&prompt, &r.negative_prompt, &fields)
}

/// A double-quoted shell word as InvokeAI's `shlex.split` reads it back. Line breaks become spaces (CLIP
/// collapses whitespace anyway) so the command stays one line.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as one shell word: bare when that reads back unchanged, else [`quote`]d. `#` needs quotes too, since
/// the reader (`shlex.split(comments=True)`, like InvokeAI's) ends the line at a bare one.
pub fn quote_if_needed(s: &str) -> String {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || "\"'\\#".contains(c)) {
        quote(s)
    } else {
        s.to_string()
    }
}

/// A float as Python's `str()` writes it for ordinary values: `7.5`, `7.0`, `0.75`.
fn py_float(v: f64) -> String {
    let s = format!("{v}");
    if v.is_finite() && !s.contains(['.', 'e']) {
        format!("{s}.0")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_and_quoting() {
        assert_eq!(py_float(7.5), "7.5");
        assert_eq!(py_float(7.0), "7.0");
        assert_eq!(py_float(0.7), "0.7");
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quote_if_needed("dir/fire drawing.png"), "\"dir/fire drawing.png\"");
        assert_eq!(quote_if_needed("/tmp/fire-drawing.png"), "/tmp/fire-drawing.png");
        assert_eq!(quote_if_needed("take#2.png"), "\"take#2.png\"");
    }

    fn record(request: GenerateRequest) -> ImageRecord {
        ImageRecord {
            request,
            width: 64,
            height: 96,
            steps_run: 0,
            model_name: "tiny".into(),
            model_hash: None,
            init_image_name: None,
            init_mask_name: None,
            run: RunInfo::default(),
        }
    }

    #[test]
    fn inpainting_options_follow_the_img2img_part_only_with_an_init_image() {
        use crate::request::{InitImage, Outcrop};
        let inpaint = GenerateRequest {
            prompt: "hat".into(),
            init_image: Some(InitImage::Path("in.png".into())),
            init_mask: Some(InitImage::Path("m.png".into())),
            invert_mask: true,
            mask_blur: 2,
            outcrop: Outcrop {
                bottom: 8,
                right: 16,
                ..Outcrop::default()
            },
            paste_back: false,
            seamless: true,
            ..GenerateRequest::default()
        };
        let line = dream_command(&record(inpaint.clone()));
        assert!(
            line.ends_with(
                "-I in.png -A k_lms -f 0.75 -M m.png --invert-mask --mask-blur 2 --outcrop bottom 8 right 16 \
                 --no-paste-back --seamless"
            ),
            "{line}"
        );
        // Without an init image (validation refuses such a request; the writer ignores the options).
        let txt2img = GenerateRequest {
            init_image: None,
            ..inpaint
        };
        let rec = record(txt2img);
        let line = dream_command(&rec);
        assert!(
            !line.contains("-M") && !line.contains("mask") && !line.contains("--outcrop"),
            "{line}"
        );
        assert!(!sd_metadata_json(&rec).contains("mask") && !a1111_parameters(&rec).contains("Mask"));
    }
}
