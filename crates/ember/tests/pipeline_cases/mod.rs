//! The end-to-end reference cases of `tests/fixtures/pipeline_cases.json` (made by
//! `tools/oracle/make_pipeline_reference.py`), shared by the parity and bf16 fidelity tests.

use ember::request::{GenerateRequest, InitImage};
use serde::Deserialize;
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub prompt: String,
    pub negative: String,
    pub seed: u32,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: String,
    pub width: usize,
    pub height: usize,
    pub strength: Option<f64>,
    pub init_image: Option<String>,
    pub karras_max: usize,
    pub exact_steps: bool,
    pub hires_fix: bool,
    pub with_variations: Vec<(u32, f64)>,
    pub perlin: f64,
    pub threshold: f64,
    pub seamless: bool,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("pipeline_cases.json")).expect("pipeline_cases.json");
    serde_json::from_str(&text).expect("cases parse")
}

pub fn request_for(case: &Case) -> GenerateRequest {
    GenerateRequest {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative.clone(),
        steps: case.steps,
        cfg_scale: case.cfg,
        sampler: case.sampler.parse().expect("sampler name"),
        seed: case.seed,
        width: case.width,
        height: case.height,
        init_image: case.init_image.as_ref().map(|n| InitImage::Path(fixture(n))),
        strength: case.strength.unwrap_or(0.75),
        fit: false,
        karras_max: case.karras_max,
        exact_steps: case.exact_steps,
        hires_fix: case.hires_fix,
        with_variations: case.with_variations.clone(),
        perlin: case.perlin,
        threshold: case.threshold,
        seamless: case.seamless,
        // The references cut prompts at 77 tokens, as diffusers does.
        truncate_prompts: true,
        ..Default::default()
    }
}
