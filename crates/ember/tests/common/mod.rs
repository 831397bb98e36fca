//! What the family, LoRA and inpainting parity tests share: their case format (tools/oracle/make_family_reference.py's,
//! which make_lora_reference.py extends with `loras` and `embeddings`, make_inpaint_reference.py with `mask` and
//! `invert_mask`), the request a case stands for, and how far a result is from its reference.

use candle_core::{DType, Device, Tensor};
use ember::pipeline::{CancelToken, Pipeline};
use ember::request::{GenerateRequest, InitImage};
use ember::text::prompt::LoraUse;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub prompt: String,
    /// None: no negative prompt given.
    pub negative: Option<String>,
    pub seed: u32,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: String,
    pub width: usize,
    pub height: usize,
    pub strength: Option<f64>,
    pub init_image: Option<String>,
    pub karras_max: usize,
    pub model: String,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    /// LoRA files under `tests/fixtures/lora/` with their weights (applied by their stems).
    #[serde(default)]
    pub loras: Vec<(String, f64)>,
    /// Embedding files under `tests/fixtures/lora/`.
    #[serde(default)]
    pub embeddings: Vec<String>,
    /// Inpainting (make_inpaint_reference.py): the mask file under `tests/fixtures/` (None with an init image: its
    /// transparent pixels are the mask, if any).
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub invert_mask: bool,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// The cases of `tests/fixtures/{file}`.
pub fn cases(file: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).expect("cases parse")
}

/// The reference tensors of `tests/fixtures/{file}`.
pub fn references(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(file), &Device::Cpu).expect("references")
}

pub fn stem(file: &str) -> String {
    Path::new(file).file_stem().unwrap().to_string_lossy().into_owned()
}

pub fn request_for(case: &Case) -> GenerateRequest {
    GenerateRequest {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative.clone().unwrap_or_default(),
        negative_given: case.negative.is_some(),
        steps: case.steps,
        cfg_scale: case.cfg,
        sampler: case.sampler.parse().expect("sampler name"),
        seed: case.seed,
        width: case.width,
        height: case.height,
        init_image: case.init_image.as_ref().map(|n| InitImage::Path(fixture(n))),
        strength: case.strength.unwrap_or(0.75),
        karras_max: case.karras_max,
        prediction_type: case
            .prediction_type
            .as_deref()
            .map(|p| p.parse().expect("prediction type")),
        timestep_spacing: case.timestep_spacing.as_deref().map(|s| s.parse().expect("spacing")),
        // diffusers cuts prompts at 77 tokens.
        truncate_prompts: true,
        loras: case
            .loras
            .iter()
            .map(|(file, w)| LoraUse::new(stem(file), *w))
            .collect(),
        init_mask: case.mask.as_ref().map(|n| InitImage::Path(fixture(n))),
        invert_mask: case.invert_mask,
        ..Default::default()
    }
}

pub fn load(model: &str, dtype: DType) -> Pipeline {
    Pipeline::load(fixture(model).to_str().expect("utf-8"), &Device::Cpu, dtype).expect("tiny model loads")
}

pub fn generate(pipeline: &Pipeline, request: &GenerateRequest) -> Tensor {
    pipeline
        .generate(request, &CancelToken::new(), &mut |_| {})
        .expect("generates")
        .latents
}

/// Generates every case on its model (each loaded once, in `dtype`) and compares its final latents with the reference
/// `{name}.latents` of `refs`: returns a line per case farther than `bound(case)` (max |Δ| / max |reference|).
pub fn latents_failures(
    cases: Vec<Case>,
    refs: &HashMap<String, Tensor>,
    dtype: DType,
    bound: impl Fn(&Case) -> f64,
) -> Vec<String> {
    let mut pipelines: HashMap<String, Pipeline> = HashMap::new();
    let mut failures = Vec::new();
    for case in cases {
        let pipeline = pipelines
            .entry(case.model.clone())
            .or_insert_with(|| load(&case.model, dtype));
        let latents = generate(pipeline, &request_for(&case));
        let err = rel_err(&latents, &refs[&format!("{}.latents", case.name)]);
        let bound = bound(&case);
        println!("{:32} {dtype:?} latents {err:.2e} (bound {bound:.0e})", case.name);
        if err.is_nan() || err > bound {
            failures.push(format!("{}: latents {err:.2e} > {bound:.0e}", case.name));
        }
    }
    failures
}

/// max |t|, in f64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |got − want| / max |want| (max |got − want| where the reference is all zeros: SDXL's zeroed negative).
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let scale = max_abs(want);
    max_abs(&(f64(got) - f64(want)).unwrap()) / if scale > 0.0 { scale } else { 1.0 }
}
