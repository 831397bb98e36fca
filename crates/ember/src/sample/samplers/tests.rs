//! Samplers against k-diffusion (shared kdiffusion_toy + tests/fixtures/kdiffusion_extra) and diffusers' DDIM/PNDM
//! loops (shared schedulers_sd15_toy), replaying the reference's ancestral noise.

use super::*;
use crate::sample::denoiser::Denoiser;
use candle_core::Device;
use std::collections::HashMap;

const EXTRA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/kdiffusion_extra.safetensors"
);
const ORACLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/oracle/");

/// Relative tolerance: max |ours - ref| / max |ref|.
const TOL: f64 = 1e-5;

fn load(path: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A text file of the shared oracle (../shared/testdata/oracle beside the repository); missing, a failure that names it.
fn read_oracle(name: &str) -> String {
    let path = format!("{ORACLE}{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("shared test data: cannot read {path}: {e}"))
}

fn vec1(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> f64 {
    let (a, b) = (vec1(ours), vec1(theirs));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    let err = rel_err(ours, theirs);
    assert!(err < TOL, "{name}: relative error {err:e} > {TOL:e}");
}

/// Replays the reference's stored ancestral noise, and fails if a sampler draws more than it drew.
struct Replay(Vec<Tensor>, usize);

impl Replay {
    fn from(fx: &HashMap<String, Tensor>, prefix: &str) -> Self {
        let mut v = Vec::new();
        while let Some(t) = fx.get(&format!("{prefix}/noise_{:02}", v.len())) {
            v.push(t.clone());
        }
        Replay(v, 0)
    }
    fn assert_all_used(&self, name: &str) {
        assert_eq!(self.1, self.0.len(), "{name}: noise draws");
    }
}

impl NoiseSource for Replay {
    fn randn_like(&mut self, _like: &Tensor) -> Result<Tensor> {
        let t = self
            .0
            .get(self.1)
            .cloned()
            .expect("sampler drew more noise than k-diffusion");
        self.1 += 1;
        Ok(t)
    }
}

/// The shared toy denoiser D(x, σ) = x / (1 + σ²).
struct ToyDenoiser;
impl Denoiser for ToyDenoiser {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(x.affine(1.0 / (1.0 + sigma * sigma), 0.0)?)
    }
}

fn no_progress() -> impl FnMut(StepProgress<'_>) -> Result<()> {
    |_| Ok(())
}

fn run_k(name: &str, d: &dyn Denoiser, x: Tensor, sigmas: &[f64], noise: &mut Replay) -> Tensor {
    let cb = &mut no_progress();
    let out = match name {
        "euler" => euler(d, x, sigmas, cb),
        "euler_ancestral" => euler_ancestral(d, x, sigmas, noise, cb),
        "heun" => heun(d, x, sigmas, cb),
        "dpm_2" => dpm_2(d, x, sigmas, cb),
        "dpm_2_ancestral" => dpm_2_ancestral(d, x, sigmas, noise, cb),
        "lms" => lms(d, x, sigmas, cb),
        "dpmpp_2m" => dpmpp_2m(d, x, sigmas, cb),
        "dpmpp_2s_ancestral" => dpmpp_2s_ancestral(d, x, sigmas, noise, cb),
        other => panic!("no sampler {other}"),
    };
    out.unwrap()
}

#[test]
fn k_samplers_match_k_diffusion_on_the_toy_denoiser() {
    let shared = load(&format!("{ORACLE}kdiffusion_toy.safetensors"));
    let extra = load(EXTRA);
    let sigmas = vec1(&shared["karras20_sigmas"]);
    let cases = [
        (&shared, "sample_euler"),
        (&shared, "sample_euler_ancestral"),
        (&shared, "sample_heun"),
        (&shared, "sample_dpm_2"),
        (&shared, "sample_lms"),
        (&shared, "sample_dpmpp_2m"),
        (&extra, "toy/dpm_2_ancestral"),
        (&extra, "toy/dpmpp_2s_ancestral"),
    ];
    for (fx, prefix) in cases {
        let name = prefix.trim_start_matches("sample_").trim_start_matches("toy/");
        let mut noise = Replay::from(fx, prefix);
        let out = run_k(name, &ToyDenoiser, shared["start"].clone(), &sigmas, &mut noise);
        noise.assert_all_used(prefix);
        assert_close(prefix, &out, &fx[&format!("{prefix}/out")]);
    }
}

/// eps(x_in, t) = x_in · (0.5 + t / 2000), the eps-model of kdiffusion_extra's "cvd" runs.
struct LinearEps;
impl NoisePredictor for LinearEps {
    fn predict(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(x.affine(0.5 + t / 2000.0, 0.0)?)
    }
}

#[test]
fn every_k_sampler_matches_k_diffusion_through_compvis_denoiser_on_an_img2img_tail() {
    let fx = load(EXTRA);
    let schedule = NoiseSchedule::sd15();
    let toy = load(&format!("{ORACLE}schedulers_sd15_toy.safetensors"));
    let kinds = [
        (SamplerKind::KLms, "lms"),
        (SamplerKind::KEuler, "euler"),
        (SamplerKind::KEulerA, "euler_ancestral"),
        (SamplerKind::KHeun, "heun"),
        (SamplerKind::KDpm2, "dpm_2"),
        (SamplerKind::KDpm2A, "dpm_2_ancestral"),
        (SamplerKind::KDpmpp2, "dpmpp_2m"),
        (SamplerKind::KDpmpp2A, "dpmpp_2s_ancestral"),
    ];
    for (kind, name) in kinds {
        // 20 steps on the model schedule (20 >= karras_max 20), strength 0.75: the last 15 run.
        let p = plan(kind, &schedule, 20, 20, Some(15));
        let SamplingPlan::Sigmas(sigmas) = &p else {
            panic!("{kind}: not a sigma plan")
        };
        let theirs = vec1(&fx["cvd/sigmas"]);
        let err = sigmas
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs() / b.max(1e-3))
            .fold(0.0, f64::max);
        assert!(sigmas.len() == theirs.len() && err < 1e-5, "{kind} plan sigmas: {err}");
        let start = start_latent(&p, &schedule, &toy["toy/noise"], Some(&toy["toy/x0"])).unwrap();
        assert_close("cvd/start", &start, &fx["cvd/start"]);
        let prefix = format!("cvd/{name}");
        let mut noise = Replay::from(&fx, &prefix);
        let mut steps = 0;
        let out = sample(
            kind,
            &LinearEps,
            &schedule,
            start,
            &p,
            &mut noise,
            &mut |p: StepProgress<'_>| {
                steps = p.step;
                assert_eq!(p.total, 15);
                assert!(p.denoised.is_some());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(steps, 15, "{kind}: callbacks");
        noise.assert_all_used(&prefix);
        assert_close(&prefix, &out, &fx[&format!("{prefix}/out")]);
    }
}

/// diffusers' toy: eps = √(1 - ᾱ(t)) · x with ᾱ = 1/(1+s²), s = σ linearly interpolated at t.
struct SqrtOneMinusAlphaEps(NoiseSchedule);
impl NoisePredictor for SqrtOneMinusAlphaEps {
    fn predict(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let s = self.0.sigmas();
        let (lo, hi) = (t.floor() as usize, t.ceil() as usize);
        let sigma = s[lo] + (t - t.floor()) * (s[hi] - s[lo]);
        let abar = 1.0 / (1.0 + sigma * sigma);
        Ok(x.affine((1.0 - abar).sqrt(), 0.0)?)
    }
}

fn diffusers_schedule() -> NoiseSchedule {
    let text = read_oracle("schedulers_sd15.json");
    // Python's json writes -Infinity, which serde_json rejects; no test reads that field.
    let text = text.replace("-Infinity", "null");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ac = json["alphas_cumprod"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    NoiseSchedule::from_alphas_cumprod(ac).unwrap()
}

/// Runs DDIM/PLMS and checks every step against `expected(step index)`.
fn check_discrete(
    kind: SamplerKind,
    schedule: &NoiseSchedule,
    p: &SamplingPlan,
    start: Tensor,
    expected: &dyn Fn(usize) -> Tensor,
) {
    let model = SqrtOneMinusAlphaEps(schedule.clone());
    let mut none = Replay(Vec::new(), 0);
    let mut seen = 0;
    let out = sample(kind, &model, schedule, start, p, &mut none, &mut |s: StepProgress<
        '_,
    >| {
        assert_close(&format!("{kind} step {}", s.step), s.x, &expected(s.step - 1));
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, p.steps());
    assert_close(&format!("{kind} final"), &out, &expected(p.steps() - 1));
}

#[test]
fn ddim_and_plms_match_diffusers_loops() {
    let schedule = diffusers_schedule();
    let fx = load(&format!("{ORACLE}schedulers_sd15_toy.safetensors"));
    // (sampler, diffusers scheduler, steps, t_enc, the diffusers step that equals our first step)
    let cases = [
        (SamplerKind::Ddim, "DDIMScheduler", 10, None, 0, "steps10_strength1.0"),
        (
            SamplerKind::Ddim,
            "DDIMScheduler",
            20,
            Some(15),
            0,
            "steps20_strength0.75",
        ),
        // diffusers' PNDM spends its first step() on the improved-Euler predictor.
        (SamplerKind::Plms, "PNDMScheduler", 10, None, 1, "steps10_strength1.0"),
    ];
    for (kind, sched, steps, t_enc, offset, run) in cases {
        let prefix = format!("{sched}/{run}");
        let p = plan(kind, &schedule, steps, 0, t_enc);
        let init = t_enc.map(|_| &fx["toy/x0"]);
        let start = start_latent(&p, &schedule, &fx["toy/noise"], init).unwrap();
        assert_close(&format!("{prefix}/start"), &start, &fx[&format!("{prefix}/start")]);
        check_discrete(kind, &schedule, &p, start, &|i| {
            fx[&format!("{prefix}/after_step_{:02}", i + offset)].clone()
        });
    }
}

#[test]
fn plms_restarts_its_history_on_an_img2img_tail() {
    let fx = load(EXTRA);
    let ac = vec1(&fx["plms_tail/alphas_cumprod"]);
    let schedule = NoiseSchedule::from_alphas_cumprod(ac).unwrap();
    let p = plan(SamplerKind::Plms, &schedule, 20, 0, Some(15));
    let timesteps: Vec<usize> = vec1(&fx["plms_tail/timesteps"])
        .into_iter()
        .map(|t| t as usize)
        .collect();
    assert_eq!(p, SamplingPlan::Timesteps(timesteps));
    let start = fx["plms_tail/start"].clone();
    check_discrete(SamplerKind::Plms, &schedule, &p, start, &|i| {
        fx[&format!("plms_tail/after_step_{:02}", i + 1)].clone()
    });
}

#[test]
fn img2img_plans_match_diffusers_get_timesteps() {
    let schedule = NoiseSchedule::sd15();
    let text = read_oracle("schedulers_sd15.json");
    // Python's json writes -Infinity, which serde_json rejects; no test reads that field.
    let text = text.replace("-Infinity", "null");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for steps in [10usize, 20, 50] {
        for strength in ["0.3", "0.5", "0.75", "1.0"] {
            let runs = &json["schedulers"]["DDIMScheduler"]["runs"][steps.to_string()]["img2img"][strength];
            let theirs: Vec<usize> = runs["timesteps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as usize)
                .collect();
            let t_enc = crate::request::img2img_steps(strength.parse().unwrap(), steps);
            let p = plan(SamplerKind::Ddim, &schedule, steps, 0, Some(t_enc));
            assert_eq!(p, SamplingPlan::Timesteps(theirs), "{steps} steps, strength {strength}");
        }
    }
    // k-samplers: the last t_enc + 1 sigmas of the full schedule.
    let full = schedule.k_sigmas(20, 30);
    assert_eq!(
        plan(SamplerKind::KEuler, &schedule, 20, 30, Some(15)),
        SamplingPlan::Sigmas(full[5..].to_vec())
    );
    assert_eq!(plan(SamplerKind::KEuler, &schedule, 20, 30, None).steps(), 20);
}

#[test]
fn cancelling_from_the_callback_stops_the_run() {
    let schedule = NoiseSchedule::sd15();
    let x = Tensor::ones((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    for kind in SamplerKind::ALL {
        let p = plan(kind, &schedule, 10, 30, None);
        let mut calls = 0;
        let mut rng = crate::sample::rng::TorchRng::new(1);
        let res = sample(
            kind,
            &LinearEps,
            &schedule,
            x.clone(),
            &p,
            &mut rng,
            &mut |_: StepProgress<'_>| {
                calls += 1;
                Err(Error::Cancelled)
            },
        );
        assert!(matches!(res, Err(Error::Cancelled)), "{kind}");
        assert_eq!(calls, 1, "{kind}");
    }
}

#[test]
fn a_plan_for_another_sampler_is_rejected() {
    let schedule = NoiseSchedule::sd15();
    let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let p = plan(SamplerKind::Ddim, &schedule, 5, 30, None);
    let mut rng = crate::sample::rng::TorchRng::new(0);
    let res = sample(
        SamplerKind::KEuler,
        &LinearEps,
        &schedule,
        x,
        &p,
        &mut rng,
        &mut no_progress(),
    );
    assert!(matches!(res, Err(Error::InvalidRequest { .. })));
}
