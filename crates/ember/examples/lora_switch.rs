//! Benchmark: what switching LoRA sets costs next to loading the model, and what a LoRA costs per step.
//!
//! ```text
//! python tools/oracle/make_fullsize.py /tmp/sd15-random          # full-size SD 1.5, random weights (~2 GB)
//! cargo run --release -p ember --example lora_switch -- /tmp/sd15-random [RANK]
//! ```
//!
//! Writes a rank-`RANK` (default 32) kohya LoRA over every attention projection and feed-forward layer of the UNet
//! and the text encoder, then prints, in seconds and as ratios to the full load (same run, same machine):
//! the model's full load (`Pipeline::load`, second of two so the page cache is warm for both), switching to the
//! LoRA, changing its weight, switching back to none, and one UNet step (a 2-step 256² txt2img, k_euler, per step)
//! with and without the LoRA.

use candle_core::{DType, Device, Tensor};
use ember::addons::{AddonKind, AddonLibrary};
use ember::pipeline::{CancelToken, Pipeline};
use ember::request::GenerateRequest;
use ember::text::prompt::LoraUse;
use std::collections::HashMap;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the `ember` binary does at start.
    ember::tune_allocator();
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: lora_switch MODEL_DIR [RANK]")?;
    let rank: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(32);
    let device = Device::Cpu;
    let dtype = DType::F32;

    let timed = |what: &str, f: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| {
        let start = Instant::now();
        let result = f();
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{what}: {secs:.3} s");
        result.map(|_| secs)
    };

    let mut pipeline = None;
    timed("load (cold)", &mut || {
        pipeline = Some(Pipeline::load(&model, &device, dtype)?);
        Ok(())
    })?;
    pipeline = None;
    let load = timed("load (warm)", &mut || {
        pipeline = Some(Pipeline::load(&model, &device, dtype)?);
        Ok(())
    })?;
    let mut pipeline = pipeline.ok_or("no pipeline")?;

    let dir = tempfile::tempdir()?;
    let lora_path = dir.path().join("bench_lora.safetensors");
    let (modules, params) = write_lora(&model, rank, &lora_path)?;
    eprintln!("LoRA: rank {rank}, {modules} modules, {params} parameters");
    let mut library = AddonLibrary::default();
    library.add_file(AddonKind::Lora, &lora_path)?;
    pipeline.set_addons(library)?;

    let request = |weight: Option<f64>| GenerateRequest {
        prompt: "a photo of an astronaut riding a horse".into(),
        steps: 2,
        width: 256,
        height: 256,
        sampler: "k_euler".parse().expect("sampler"),
        loras: weight.map(|w| vec![LoraUse::new("bench_lora", w)]).unwrap_or_default(),
        ..Default::default()
    };
    let switch = |pipeline: &Pipeline, weight: Option<f64>| -> Result<(), Box<dyn std::error::Error>> {
        pipeline.prepare(&request(weight))?;
        Ok(())
    };
    let on = timed("switch: none → LoRA 1.0", &mut || switch(&pipeline, Some(1.0)))?;
    let reweight = timed("switch: LoRA 1.0 → 0.5", &mut || switch(&pipeline, Some(0.5)))?;
    let off = timed("switch: LoRA → none", &mut || switch(&pipeline, None))?;
    let on_again = timed("switch: none → LoRA 1.0 (file cached)", &mut || {
        switch(&pipeline, Some(1.0))
    })?;

    let step = |pipeline: &Pipeline, weight: Option<f64>| -> Result<f64, Box<dyn std::error::Error>> {
        pipeline.prepare(&request(weight))?;
        let start = Instant::now();
        pipeline.generate(&request(weight), &CancelToken::new(), &mut |_| {})?;
        Ok(start.elapsed().as_secs_f64() / 2.0)
    };
    // Alternating, twice each, best of two: the machine is shared and noisy.
    let mut plain = f64::INFINITY;
    let mut with = f64::INFINITY;
    for _ in 0..2 {
        plain = plain.min(step(&pipeline, None)?);
        with = with.min(step(&pipeline, Some(1.0))?);
    }
    println!("full load (warm)            {load:8.3} s  1.00");
    for (what, secs) in [
        ("switch none → LoRA", on),
        ("switch LoRA weight", reweight),
        ("switch LoRA → none", off),
        ("switch none → LoRA again", on_again),
    ] {
        println!("{what:27} {secs:8.3} s  {:.2} × load", secs / load);
    }
    println!("UNet step (256², plain)     {plain:8.3} s  (2-step txt2img incl. text and VAE, per step)");
    println!("UNet step (256², with LoRA) {with:8.3} s  {:.3} × plain", with / plain);
    Ok(())
}

/// A kohya LoRA over every attention projection and feed-forward layer of the model's UNet and text encoder, with
/// small random factors; returns (modules, parameters).
fn write_lora(model: &str, rank: usize, path: &std::path::Path) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"];
    let te_targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut params = 0;
    for (folder, prefix, names) in [
        ("unet", "lora_unet_", &targets[..]),
        ("text_encoder", "lora_te_", &te_targets[..]),
    ] {
        let dir = std::path::Path::new(model).join(folder);
        for entry in std::fs::read_dir(&dir)? {
            let file = entry?.path();
            if file.extension().is_none_or(|e| e != "safetensors") {
                continue;
            }
            // SAFETY: read-only map of a file this benchmark does not modify.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&file)? };
            for (name, view) in st.tensors() {
                let Some(module) = name.strip_suffix(".weight") else {
                    continue;
                };
                if !names.iter().any(|t| module.ends_with(t)) || view.shape().len() != 2 {
                    continue;
                }
                let (out, inp) = (view.shape()[0], view.shape()[1]);
                let module = module.strip_prefix("text_model.").unwrap_or(module);
                let flat = format!("{prefix}{}", module.replace('.', "_"));
                let down = (Tensor::randn(0f32, 1.0, (rank, inp), &Device::Cpu)? * 0.01)?;
                let up = (Tensor::randn(0f32, 1.0, (out, rank), &Device::Cpu)? * 0.01)?;
                params += rank * (inp + out);
                tensors.insert(format!("{flat}.lora_down.weight"), down.to_dtype(DType::F16)?);
                tensors.insert(format!("{flat}.lora_up.weight"), up.to_dtype(DType::F16)?);
                tensors.insert(
                    format!("{flat}.alpha"),
                    Tensor::new(rank as f32, &Device::Cpu)?.to_dtype(DType::F16)?,
                );
            }
        }
    }
    let modules = tensors.len() / 3;
    candle_core::safetensors::save(&tensors, path)?;
    Ok((modules, params))
}
