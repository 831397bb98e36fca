//! `ember generate`: loads the model once, runs one request per iteration, writes each PNG and prints its path.

use crate::args::GenerateArgs;
use anyhow::Context;
use ember::device::{parse_device, parse_dtype};
use ember::image::png_meta::{next_output_path, write_png};
use ember::pipeline::{CancelToken, Event, Pipeline};
use ember::request::{GenerateRequest, InitImage};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        steps: args.steps,
        cfg_scale: args.cfg_scale,
        sampler: args.sampler.parse()?,
        seed: args.seed.unwrap_or_else(random_seed),
        width: args.width,
        height: args.height,
        init_image: args.init_image.clone().map(InitImage::Path),
        strength: args.strength,
        fit: args.fit,
        karras_max: args.karras_max,
    };
    if args.iterations == 0 {
        anyhow::bail!("invalid iterations: 0 images requested (use -n 1 or more)");
    }
    // Check the request before the (slow) model load, so typos fail fast.
    request.validate()?;
    if let Some(path) = &args.init_image {
        if !path.is_file() {
            anyhow::bail!("cannot use image {}: no such file", path.display());
        }
    }

    let device = parse_device(&args.model.device)?;
    let dtype = parse_dtype(&args.model.dtype)?;
    let pipeline = Pipeline::load(&args.model.model, &device, dtype)
        .with_context(|| "no model loaded; pass a local model with --model path/to/model.safetensors".to_string())?;
    let cancel = CancelToken::new();

    for iteration in 0..args.iterations {
        if iteration > 0 {
            request.seed = random_seed();
        }
        if args.seed.is_none() || iteration > 0 {
            eprintln!("seed: {}", request.seed);
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] step {pos}/{len} ({elapsed} elapsed, ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("seed {}", request.seed));
        let generated = pipeline.generate(&request, &cancel, &mut |event| match event {
            Event::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
            Event::Started { total_steps } => bar.set_length(total_steps as u64),
            Event::Step { step, .. } => bar.set_position(step as u64),
        })?;
        bar.finish_and_clear();
        let path = next_output_path(&args.outdir, request.seed)?;
        write_png(&path, &generated.image, &generated.record)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", path.display())?;
        stdout.flush()?;
    }
    Ok(())
}

/// A seed from the OS's entropy, for runs without `-S`.
fn random_seed() -> u32 {
    let mut bytes = [0u8; 4];
    // Falls back to the clock only if the OS has no entropy source at all.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return nanos;
    }
    u32::from_le_bytes(bytes)
}
