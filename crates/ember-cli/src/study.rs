//! `ember study`: one init image, a list of strengths and a list of step counts → every combination generated
//! with one seed, each written as a normal PNG, plus one labelled grid (`study.{seed}.png`: strengths down the
//! side, `-s` across the top, the steps actually run under each image, optionally its step strip).
//! It makes the tables of InvokeAI's img2img documentation in one command:
//!
//! ```text
//! ember study "fire" -I fire-drawing.png --strengths 0.7,0.4 --steps 10,30 -S 1592514025 -A k_lms --strip
//! ```

use crate::args::ModelArgs;
use crate::runner::load_pipeline;
use ember::image::grid::{labelled_grid, stack_vertical, text_image, LABEL_SCALE};
use ember::image::png_meta::write_png_with_text;
use ember::image::png_meta::{next_output_path, write_png};
use ember::image::strip::{strip_path, StepStrip};
use ember::pipeline::{CancelToken, Event};
use ember::request::{
    random_seed, GenerateRequest, InitImage, DEFAULT_CFG_SCALE, DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_STRENGTH,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A study strip wraps after this many steps (InvokeAI's 500-px strips hold 10), so 50-step strips stay
/// about as wide as the image; the wrap keeps the last steps on the last row, so strips still line up.
const STRIP_SLOTS_PER_ROW: usize = 10;
/// Longest prompt shown in the grid's title line, in characters.
const TITLE_PROMPT_CHARS: usize = 48;

#[derive(Debug, Clone, clap::Args)]
pub struct StudyArgs {
    /// The prompt.
    pub prompt: String,
    /// Init image (PNG, JPEG, WebP, BMP); every cell starts from it.
    #[arg(short = 'I', long)]
    pub init_image: PathBuf,
    /// Strengths, one grid row each, comma-separated (e.g. 0.7,0.4).
    #[arg(short = 'f', long, value_delimiter = ',', num_args = 1.., default_values_t = [DEFAULT_STRENGTH])]
    pub strengths: Vec<f64>,
    /// Step counts (-s), one grid column each, comma-separated (e.g. 10,30).
    #[arg(short = 's', long, value_delimiter = ',', num_args = 1.., default_values_t = [DEFAULT_STEPS])]
    pub steps: Vec<usize>,
    /// Seed shared by every cell; a random one is chosen and printed when omitted.
    #[arg(short = 'S', long)]
    pub seed: Option<u32>,
    /// Sampler (see `ember generate --help`).
    #[arg(short = 'A', long, default_value = "k_lms")]
    pub sampler: String,
    /// Classifier-free guidance scale.
    #[arg(short = 'C', long, default_value_t = DEFAULT_CFG_SCALE)]
    pub cfg_scale: f64,
    /// Negative prompt.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Scale the init image into the -W × -H box, keeping its aspect ratio.
    #[arg(short = 'T', long)]
    pub fit: bool,
    /// Width of the --fit box.
    #[arg(short = 'W', long, default_value_t = DEFAULT_SIZE)]
    pub width: usize,
    /// Height of the --fit box.
    #[arg(short = 'H', long, default_value_t = DEFAULT_SIZE)]
    pub height: usize,
    /// Run exactly -s steps from the image at every strength (the schedule is lengthened to ceil(s / strength)).
    #[arg(long)]
    pub exact_steps: bool,
    /// Put each image's step strip (the latent after every step) under it, and write it as NNNNNN.SEED.strip.png.
    #[arg(long)]
    pub strip: bool,
    /// Folder for the images and the grid (created if missing).
    #[arg(short = 'o', long, default_value = "outputs")]
    pub outdir: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// One generated cell, as recorded in the grid's `ember-study` metadata.
struct CellRecord {
    strength: f64,
    steps: usize,
    schedule_steps: usize,
    steps_run: usize,
    file: PathBuf,
    strip: Option<PathBuf>,
}

pub fn run(args: &StudyArgs) -> anyhow::Result<()> {
    // The config file's model, device and dtype (crate::settings); the grid's metadata names the resolved model.
    let args = &StudyArgs {
        model: crate::settings::resolve_model(&args.model)?.model,
        ..args.clone()
    };
    if args.strengths.is_empty() || args.steps.is_empty() {
        anyhow::bail!("invalid study: give at least one --strengths value and one --steps value");
    }
    if !args.init_image.is_file() {
        anyhow::bail!(
            "cannot use image {}: no such file (ember study needs an init image, -I)",
            args.init_image.display()
        );
    }
    let seed = match args.seed {
        Some(seed) => seed,
        None => {
            let seed = random_seed();
            eprintln!("seed: {seed}");
            seed
        }
    };
    let base = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        cfg_scale: args.cfg_scale,
        sampler: args.sampler.parse()?,
        seed,
        width: args.width,
        height: args.height,
        init_image: Some(InitImage::Path(args.init_image.clone())),
        fit: args.fit,
        exact_steps: args.exact_steps,
        ..Default::default()
    };
    // Every combination is checked before the (slow) model load, so a bad value fails at once.
    let requests: Vec<Vec<GenerateRequest>> = args
        .strengths
        .iter()
        .map(|&strength| {
            args.steps
                .iter()
                .map(|&steps| {
                    let request = GenerateRequest {
                        strength,
                        steps,
                        ..base.clone()
                    };
                    request.validate().map(|()| request)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;

    let pipeline = load_pipeline(&args.model)?;
    let cancel = CancelToken::new();
    let mut stdout = std::io::stdout().lock();

    let mut cells = Vec::with_capacity(requests.len());
    let mut records = Vec::new();
    for row in &requests {
        let mut cell_row = Vec::with_capacity(row.len());
        for request in row {
            let started = Instant::now();
            let mut strip: Option<StepStrip> = None;
            let mut strip_error = None;
            let generated = pipeline.generate(request, &cancel, &mut |event| match event {
                Event::Warning(w) => crate::term::warning(w),
                Event::Started {
                    total_steps,
                    schedule_steps,
                } if args.strip => strip = Some(StepStrip::for_run(total_steps, schedule_steps)),
                Event::Step { latents, .. } => {
                    if let Some(s) = strip.as_mut() {
                        if let Err(e) = pipeline.preview(latents).and_then(|cell| s.push_image(cell)) {
                            strip_error.get_or_insert(e);
                        }
                    }
                }
                Event::Started { .. } => {}
            })?;
            if let Some(e) = strip_error {
                return Err(e.into());
            }
            let (steps_run, schedule_steps) = (request.steps_to_run(), request.schedule_steps());
            eprintln!(
                "strength {}, -s {}: {steps_run} of {schedule_steps} steps ({:.1} s)",
                request.strength,
                request.steps,
                started.elapsed().as_secs_f64()
            );

            let path = next_output_path(&args.outdir, seed)?;
            write_png(&path, &generated.image, &generated.record)?;
            writeln!(stdout, "{}", path.display())?;
            // A run that took no step (strength × steps < 1) has no strip to show. The file is one row, as
            // `--step-strip` writes it; the grid gets it wrapped.
            let strip = strip.filter(|s| !s.is_empty());
            let mut strip_file = None;
            if let Some(strip) = &strip {
                let file = strip_path(&path);
                write_png(&file, &strip.render(), &generated.record)?;
                writeln!(stdout, "{}", file.display())?;
                strip_file = Some(file);
            }
            let strip = strip.map(|s| s.render_wrapped(STRIP_SLOTS_PER_ROW));
            stdout.flush()?;

            let caption = text_image(&steps_caption(steps_run, schedule_steps), LABEL_SCALE);
            let mut parts = vec![&generated.image, &caption];
            parts.extend(strip.as_ref());
            cell_row.push(stack_vertical(&parts, 0));
            records.push(CellRecord {
                strength: request.strength,
                steps: request.steps,
                schedule_steps,
                steps_run,
                file: path,
                strip: strip_file,
            });
        }
        cells.push(cell_row);
    }

    let row_labels: Vec<String> = args.strengths.iter().map(|s| format!("strength {s}")).collect();
    let column_labels: Vec<String> = args
        .steps
        .iter()
        .map(|s| {
            if args.exact_steps {
                format!("-s {s} exact")
            } else {
                format!("-s {s}")
            }
        })
        .collect();
    let grid = labelled_grid(&cells, &row_labels, &column_labels, Some(&title(args, seed)))?;
    let grid_path = free_grid_path(&args.outdir, seed);
    let chunks = [
        ("Software", format!("Ember {}", env!("CARGO_PKG_VERSION"))),
        ("Description", study_command(args, seed)),
        ("ember-study", study_json(args, seed, &records).to_string()),
    ];
    write_png_with_text(&grid_path, &grid, &chunks)?;
    writeln!(stdout, "{}", grid_path.display())?;
    stdout.flush()?;
    Ok(())
}

/// What each cell's caption says: the steps actually run, of the schedule's length.
fn steps_caption(steps_run: usize, schedule_steps: usize) -> String {
    format!("{steps_run} of {schedule_steps} steps")
}

/// The grid's title line: the settings every cell shares.
fn title(args: &StudyArgs, seed: u32) -> String {
    let mut prompt: String = args.prompt.chars().take(TITLE_PROMPT_CHARS).collect();
    if prompt.len() < args.prompt.len() {
        prompt.push_str("...");
    }
    format!("\"{prompt}\" -S {seed} -A {} -C {}", args.sampler, args.cfg_scale)
}

/// `{outdir}/study.{seed}.png`, or `study.{seed}.2.png`, `.3`, … when earlier studies of this seed are there
/// (Ember never overwrites an image).
fn free_grid_path(outdir: &Path, seed: u32) -> PathBuf {
    let first = outdir.join(format!("study.{seed}.png"));
    if !first.exists() {
        return first;
    }
    (2u32..)
        .map(|n| outdir.join(format!("study.{seed}.{n}.png")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// The command line that repeats the study (the grid's `Description` text chunk).
fn study_command(args: &StudyArgs, seed: u32) -> String {
    let list = |v: Vec<String>| v.join(",");
    let mut parts = vec![
        "ember study".to_string(),
        format!("{:?}", args.prompt),
        format!("-I {:?}", args.init_image.display().to_string()),
        format!(
            "--strengths {}",
            list(args.strengths.iter().map(|s| s.to_string()).collect())
        ),
        format!("--steps {}", list(args.steps.iter().map(|s| s.to_string()).collect())),
        format!("-S {seed}"),
        format!("-A {}", args.sampler),
        format!("-C {}", args.cfg_scale),
    ];
    if !args.negative.is_empty() {
        parts.push(format!("--negative {:?}", args.negative));
    }
    if args.fit {
        parts.push(format!("-T -W {} -H {}", args.width, args.height));
    }
    if args.exact_steps {
        parts.push("--exact-steps".to_string());
    }
    if args.strip {
        parts.push("--strip".to_string());
    }
    parts.push(format!("--model {:?}", args.model.model));
    parts.join(" ")
}

/// Machine-readable description of the grid: the shared settings and, per cell, its place and files.
fn study_json(args: &StudyArgs, seed: u32, records: &[CellRecord]) -> serde_json::Value {
    let columns = args.steps.len();
    let cells: Vec<serde_json::Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            serde_json::json!({
                "row": i / columns,
                "column": i % columns,
                "strength": r.strength,
                "steps": r.steps,
                "schedule_steps": r.schedule_steps,
                "steps_run": r.steps_run,
                "file": file_name(&r.file),
                "strip": r.strip.as_deref().map(file_name),
            })
        })
        .collect();
    serde_json::json!({
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "init_image": args.init_image.display().to_string(),
        "seed": seed,
        "sampler": args.sampler,
        "cfg_scale": args.cfg_scale,
        "exact_steps": args.exact_steps,
        "strengths": args.strengths,
        "steps": args.steps,
        "model": args.model.model,
        "cells": cells,
    })
}

/// File names are recorded without the folder: the grid stays valid when the folder is moved.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
