//! Runs one parsed command line — `-n` images with their seeds and variations, each PNG, its step strip and
//! intermediates, and the `-g` grid — for `ember generate`, `--from-file` and the REPL alike.
//!
//! A [`Runner`] keeps the loaded model, the sticky defaults (launch flags) and the images it made, so `-S -1`
//! and `-I -1` can refer back to them. Every request is checked before the model is loaded, so a typo fails
//! at once instead of after a long load.
//!
//! Where a switch comes from, first set wins: the line, the launch flags, the models-file entry the REPL's
//! `!switch` loaded ([`Runner::switch_model`]), the model's own defaults ([`ModelSpec::defaults`]: its family's, or
//! its Turbo/LCM variant's), InvokeAI's. Loading a model prints its family and how the loader decided what the files
//! could not say, on stderr (stdout carries only image paths).

use crate::args::{Downweight, ModelArgs, Switches};
use crate::dream_line::{self, DreamLine};
use crate::term::{self, Progress, ProgressDraw, ProgressMode};
use anyhow::Context;
use ember::addons::{AddonKind, AddonLibrary};
use ember::device::{parse_device, resolve_dtype};
use ember::image::grid::image_grid;
use ember::image::metadata::dream_command;
use ember::image::png_meta::write_png_with_text;
use ember::image::png_meta::{next_output_path, write_png};
use ember::image::strip::{strip_path, StepStrip};
use ember::model::family::{GenerationDefaults, ModelSpec};
use ember::pipeline::{CancelToken, Event, Pipeline};
use ember::request::{
    random_seed, GenerateRequest, InitImage, Outcrop, DEFAULT_CFG_SCALE, DEFAULT_KARRAS_MAX, DEFAULT_SIZE,
};
use ember::request::{DEFAULT_STEPS, DEFAULT_STRENGTH};
use ember::text::prompt::LoraUse;
use ember::Error;
use image::RgbImage;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where images go when neither the line nor the launch flags say.
pub const DEFAULT_OUTDIR: &str = "outputs";

/// A loaded model plus what one session remembers between command lines.
pub struct Runner {
    model: ModelArgs,
    pipeline: Option<Pipeline>,
    /// Sticky defaults: the launch flags, under every line's own switches.
    defaults: Switches,
    /// The loaded model's defaults from the models file, under the launch flags; empty for a model not loaded by name.
    model_defaults: Switches,
    cancel: CancelToken,
    /// Every image written so far, oldest first: `(path, seed)`.
    outputs: Vec<(PathBuf, u32)>,
    /// `--progress`: how the stages and steps show on stderr.
    progress: ProgressMode,
    /// The REPL's stdout: `[N] path: dream-line (seconds)` per image instead of the bare path.
    echo_lines: bool,
}

impl Runner {
    pub fn new(model: ModelArgs, defaults: Switches) -> Self {
        Self {
            model,
            pipeline: None,
            defaults,
            model_defaults: Switches::default(),
            cancel: CancelToken::new(),
            outputs: Vec::new(),
            progress: ProgressMode::Auto,
            echo_lines: false,
        }
    }

    /// Sets the defaults under the launch flags (a named model's and the config file's [defaults]) before the
    /// model loads, as [`Self::switch_model`] does for a later model.
    pub fn with_model_defaults(mut self, defaults: Switches) -> Self {
        self.model_defaults = defaults;
        self
    }

    /// `--progress`: when stages and steps show on stderr.
    pub fn set_progress(&mut self, mode: ProgressMode) {
        self.progress = mode;
    }

    /// Stdout as the REPL shows it: each image as InvokeAI echoes it, `[N] path: dream-line (seconds)`, N counting
    /// the session's images from 1. Off (`ember generate`), stdout carries one bare path per line for scripts.
    pub fn set_echo_lines(&mut self, echo: bool) {
        self.echo_lines = echo;
    }

    /// Whether a model is loaded.
    pub fn is_loaded(&self) -> bool {
        self.pipeline.is_some()
    }

    /// The token that stops the running image (the REPL's Ctrl-C handler holds a clone).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn model(&self) -> &ModelArgs {
        &self.model
    }

    /// Loads the model now if it is not loaded yet.
    pub fn load(&mut self) -> anyhow::Result<&Pipeline> {
        if self.pipeline.is_none() {
            // The first stage of a run; on stderr, and only where progress shows.
            if self.progress.draw_here() != ProgressDraw::Off {
                eprintln!("loading model {} …", self.model.model);
            }
            self.pipeline = Some(load_pipeline(&self.model)?);
        }
        self.pipeline
            .as_ref()
            .context("the model is not loaded; pass --model path/to/model.safetensors")
    }

    /// What the loaded model is, when one is loaded.
    pub fn spec(&self) -> Option<&ModelSpec> {
        self.pipeline.as_ref().map(Pipeline::spec)
    }

    /// Loads another model with its own generation defaults (`defaults`: a models-file entry's, which replace the
    /// previous model's entirely); on failure the current model and its defaults stay.
    pub fn switch_model(&mut self, model: ModelArgs, defaults: Switches) -> anyhow::Result<()> {
        let pipeline = load_pipeline(&model)?;
        self.pipeline = Some(pipeline);
        self.model = model;
        self.model_defaults = defaults;
        Ok(())
    }

    /// The loaded pipeline, knowing the LoRAs and embeddings of `library` (read again only when it changed).
    fn use_addons(&mut self, library: AddonLibrary) -> anyhow::Result<&Pipeline> {
        let pipeline = self
            .pipeline
            .as_mut()
            .context("the model is not loaded; pass --model path/to/model.safetensors")?;
        if *pipeline.addons() != library {
            for warning in pipeline.set_addons(library)? {
                term::warning(warning);
            }
        }
        Ok(pipeline)
    }

    /// Parses and runs one `invoke>` command line; returns the image paths written.
    pub fn run_line(&mut self, line: &str) -> anyhow::Result<Vec<PathBuf>> {
        let parsed = dream_line::parse(line)?;
        self.run(&parsed)
    }

    /// Runs one command: `-n` images (seed, variations), each written as it finishes, then the `-g` grid.
    pub fn run(&mut self, line: &DreamLine) -> anyhow::Result<Vec<PathBuf>> {
        let sw = line.switches.over(&self.defaults).over(&self.model_defaults);
        let mut plan = self.plan(&line.prompt, &sw)?;
        self.cancel.reset();
        let cancel = self.cancel.clone();
        // Copied before the pipeline borrows `self`.
        let (draw, echo_lines, images_before) = (self.progress.draw_here(), self.echo_lines, self.outputs.len());
        let (library, loras) = addon_library(&sw)?;
        plan.request.loras = loras;
        self.load()?;
        let pipeline = self.use_addons(library)?;
        apply_model_defaults(&mut plan.request, &sw, pipeline.spec().defaults);
        plan.request.validate()?;
        if sw.log_tokenization {
            // stderr: stdout carries only the image paths, for scripts.
            eprintln!("{}", pipeline.describe_tokenization(&plan.request)?);
        }
        let mut written = Vec::new();
        let mut images = Vec::new();
        let mut first_dream = None;
        let mut request = plan.request.clone();
        for iteration in 0..plan.iterations {
            if plan.variation_amount > 0.0 {
                // InvokeAI's -v: the seed stays, each image adds a fresh variation seed (recorded as -V r:AMOUNT).
                request.with_variations = plan.request.with_variations.clone();
                request.with_variations.push((random_seed(), plan.variation_amount));
            } else if iteration > 0 {
                request.seed = random_seed();
            }
            if plan.seed_was_random || iteration > 0 {
                eprintln!("seed: {}", request.seed);
            }
            let label = if plan.iterations > 1 {
                format!("image {}/{} seed {}", iteration + 1, plan.iterations, request.seed)
            } else {
                format!("seed {}", request.seed)
            };
            let mut progress = Progress::new(draw, label);
            let started = Instant::now();
            let made = generate_one(pipeline, &cancel, &request, &sw, &plan.outdir, &mut progress)?;
            // stdout: the image, then its strip, one path per line (the REPL echoes the image's command line too).
            let mut stdout = std::io::stdout().lock();
            if echo_lines {
                let number = images_before + written.len() + 1;
                let seconds = started.elapsed().as_secs_f64();
                writeln!(
                    stdout,
                    "[{number}] {}: {} ({seconds:.2}s)",
                    made.path.display(),
                    made.dream
                )?;
            } else {
                writeln!(stdout, "{}", made.path.display())?;
            }
            if let Some(strip) = &made.strip {
                writeln!(stdout, "{}", strip.display())?;
            }
            stdout.flush()?;
            first_dream.get_or_insert(made.dream);
            written.push((made.path, request.seed));
            if sw.grid {
                images.push(made.image);
            }
        }
        if sw.grid && !images.is_empty() {
            let grid = image_grid(&images, None)?;
            let image_path = next_output_path(&plan.outdir, plan.request.seed)?;
            let path = image_path.with_file_name(format!("{}.grid.png", file_stem(&image_path)));
            // The first image's command with the grid switches: replaying it remakes the grid.
            let dream = format!("{} -n {} -g", first_dream.unwrap_or_default(), images.len());
            write_png_with_text(&path, &grid, &[("Dream", dream)])?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", path.display())?;
            stdout.flush()?;
        }
        let paths = written.iter().map(|(p, _)| p.clone()).collect();
        self.outputs.extend(written);
        Ok(paths)
    }

    /// Resolves the switches into a checked request (nothing is loaded yet).
    fn plan(&self, prompt: &str, sw: &Switches) -> anyhow::Result<Plan> {
        let iterations = sw.iterations.unwrap_or(1);
        if iterations == 0 {
            return Err(Error::invalid("iterations", "0 images requested (use -n 1 or more)").into());
        }
        let (seed, seed_was_random) = match sw.seed {
            None => (random_seed(), true),
            Some(back) if back < 0 => (self.previous(back, "-S")?.1, false),
            Some(seed) => (
                u32::try_from(seed).map_err(|_| Error::invalid("seed", format!("{seed} is outside 0..=4294967295")))?,
                false,
            ),
        };
        let init_image = match sw.init_image.as_deref() {
            None | Some("") => None,
            Some(back) if is_back_reference(back) => {
                let n: i64 = back
                    .parse()
                    .map_err(|_| Error::invalid("init_image", back.to_string()))?;
                Some(self.previous(n, "-I")?.0)
            }
            Some(path) => Some(PathBuf::from(path)),
        };
        if let Some(path) = &init_image {
            if !path.is_file() {
                return Err(Error::image(path, not_a_file(path)).into());
            }
        }
        let init_mask = sw.init_mask.as_deref().filter(|p| !p.is_empty()).map(PathBuf::from);
        if let Some(path) = &init_mask {
            if !path.is_file() {
                return Err(Error::image(path, format!("{} (the -M inpainting mask)", not_a_file(path))).into());
            }
        }
        // Decoded now, so a broken file fails before the model loads; the request carries the decoded pixels.
        let init_image = init_image.map(decoded).transpose()?;
        let init_mask = init_mask.map(decoded).transpose()?;
        let outdir = sw.outdir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_OUTDIR));
        check_output_folder(&outdir)?;
        let outcrop = match &sw.outcrop {
            Some(words) => Outcrop::parse(words)?,
            None => Outcrop::default(),
        };
        let variation_amount = sw.variation_amount.unwrap_or(0.0);
        ember::request::check_variation_amount(variation_amount)?;
        if sw.save_intermediates == Some(0) {
            return Err(Error::invalid("save_intermediates", "must be at least 1 (every N-th step)").into());
        }
        let with_variations = match &sw.with_variations {
            Some(list) => dream_line::parse_variations(list)?,
            None => Vec::new(),
        };
        // A1111's `… Karras` names (`-A "DPM++ 2M Karras"`) set the schedule too: karras_max, unless given.
        let sampler = ember::sample::names::parse_sampler_name(sw.sampler.as_deref().unwrap_or("k_lms"))?;
        let request = GenerateRequest {
            prompt: prompt.to_string(),
            negative_prompt: sw.negative.clone().unwrap_or_default(),
            negative_given: sw.negative.is_some(),
            steps: sw.steps.unwrap_or(DEFAULT_STEPS),
            cfg_scale: sw.cfg_scale.unwrap_or(DEFAULT_CFG_SCALE),
            sampler: sampler.kind,
            seed,
            width: sw.width.unwrap_or(DEFAULT_SIZE),
            height: sw.height.unwrap_or(DEFAULT_SIZE),
            init_image,
            strength: sw.strength.unwrap_or(DEFAULT_STRENGTH),
            fit: sw.fit,
            karras_max: sw.karras_max.or(sampler.karras_max()).unwrap_or(DEFAULT_KARRAS_MAX),
            exact_steps: sw.exact_steps,
            with_variations,
            seamless: sw.seamless,
            threshold: sw.threshold.unwrap_or(0.0),
            perlin: sw.perlin.unwrap_or(0.0),
            hires_fix: sw.hires_fix,
            skip_normalize: sw.skip_normalize,
            truncate_prompts: sw.truncate_prompts,
            downweight_mask: sw.downweight == Some(Downweight::Mask),
            vae_tiling: sw.vae_tiling,
            vae_approx_decode: !self.model.vae_approx.is_empty(),
            vae_approx_encode: self.model.vae_approx_encode,
            prediction_type: sw.prediction_type.as_deref().map(str::parse).transpose()?,
            timestep_spacing: sw.timestep_spacing.as_deref().map(str::parse).transpose()?,
            loras: Vec::new(),
            init_mask,
            invert_mask: sw.invert_mask,
            mask_blur: sw.mask_blur.unwrap_or(0),
            outcrop,
            paste_back: !sw.no_paste_back,
        };
        request.validate()?;
        Ok(Plan {
            request,
            iterations,
            variation_amount,
            seed_was_random,
            outdir,
        })
    }

    /// `-1` → the latest image, `-2` the one before, … (InvokeAI's negative `-S`/`-I`).
    fn previous(&self, back: i64, switch: &str) -> anyhow::Result<(PathBuf, u32)> {
        let index = usize::try_from(back.unsigned_abs())
            .ok()
            .and_then(|n| self.outputs.len().checked_sub(n));
        match index.and_then(|i| self.outputs.get(i)) {
            Some(found) => Ok(found.clone()),
            None => Err(Error::invalid(
                if switch == "-S" { "seed" } else { "init_image" },
                format!(
                    "{switch} {back} refers to an earlier image, but this session has made {} so far",
                    self.outputs.len()
                ),
            )
            .into()),
        }
    }
}

/// The LoRAs and embeddings a command's switches name: a library of the folders (`--lora-dir`, `--embedding-dir`)
/// and files (`--embedding`, `--lora FILE`), and the request's LoRA list (`--lora FILE_OR_NAME[:WEIGHT]`; a name is
/// looked up in the folders).
fn addon_library(sw: &Switches) -> anyhow::Result<(AddonLibrary, Vec<LoraUse>)> {
    let mut library = AddonLibrary::default();
    for (kind, dirs) in [
        (AddonKind::Lora, &sw.lora_dir),
        (AddonKind::Embedding, &sw.embedding_dir),
    ] {
        for dir in dirs {
            for warning in library.add_dir(kind, dir)? {
                term::warning(warning);
            }
        }
    }
    for file in &sw.embedding {
        library.add_file(AddonKind::Embedding, Path::new(file))?;
    }
    let mut loras = Vec::with_capacity(sw.lora.len());
    for spec in &sw.lora {
        let (target, weight) = split_weight(spec)?;
        // A file stays named by its path, so the image's Dream line (`--lora PATH:WEIGHT`) finds it again.
        let name = if Path::new(target).is_file() {
            library.add_file(AddonKind::Lora, Path::new(target))?;
            target.to_string()
        } else if library.lora(target).is_some() {
            target.to_string()
        } else {
            return Err(Error::addon(
                target,
                "no such LoRA file, and no LoRA of that name in the --lora-dir folders (check the path or the name)",
            )
            .into());
        };
        loras.push(LoraUse::new(name, weight));
    }
    Ok((library, loras))
}

/// `FILE_OR_NAME[:WEIGHT]` → (file or name, weight; 1 by default). The weight is what follows the last `:` when
/// that is a number, so Windows paths (`C:\…`) keep their colon.
fn split_weight(spec: &str) -> anyhow::Result<(&str, f64)> {
    let Some((target, weight)) = spec.rsplit_once(':') else {
        return Ok((spec, 1.0));
    };
    match weight.trim().parse::<f64>() {
        Ok(_) if target.is_empty() => {
            Err(Error::invalid("lora", format!("`{spec}` names no LoRA before its weight")).into())
        }
        Ok(w) => {
            ember::request::check_lora_weight(target, w)?;
            Ok((target, w))
        }
        Err(_) if weight.contains(['\\', '/']) || target.len() == 1 => Ok((spec, 1.0)),
        Err(_) => Err(Error::invalid(
            "lora",
            format!("`{weight}` in `{spec}` is not a weight; write --lora FILE:0.8 (or just FILE for weight 1)"),
        )
        .into()),
    }
}

/// A command's request and what varies per image.
struct Plan {
    request: GenerateRequest,
    iterations: usize,
    variation_amount: f64,
    seed_was_random: bool,
    outdir: PathBuf,
}

/// The model's defaults (its family's, or its Turbo/LCM variant's) for the options the command did not set.
fn apply_model_defaults(request: &mut GenerateRequest, sw: &Switches, defaults: GenerationDefaults) {
    if sw.steps.is_none() {
        request.steps = defaults.steps;
    }
    if sw.cfg_scale.is_none() {
        request.cfg_scale = defaults.cfg_scale;
    }
    if sw.sampler.is_none() {
        request.sampler = defaults.sampler;
    }
    if sw.width.is_none() && sw.height.is_none() {
        request.width = defaults.size;
        request.height = defaults.size;
    }
}

/// Loads the model the flags name, on their device and in their precision, and says on stderr what it is, once:
/// `model: tiny-sd2 (SD 2.x, v_prediction, karras-kdiffusion spacing) on cpu in f32; defaults -s 50 …`, then each
/// of the loader's notes (how it decided what the files could not say) as a `note:` line.
pub fn load_pipeline(model: &ModelArgs) -> anyhow::Result<Pipeline> {
    let device = parse_device(&model.device)?;
    let dtype = resolve_dtype(&model.dtype, &device)?;
    let loaded = Pipeline::load(&model.model, &device, dtype);
    // The engine's error names the path and what to pass; only the default model, which the user did not choose,
    // needs the hint of how to choose one.
    let mut pipeline = if model.model == crate::args::DEFAULT_MODEL {
        loaded.with_context(|| {
            format!(
                "the default model {} could not be loaded; pass a local model with --model \
                 path/to/model.safetensors (or set `model` in the config file, or EMBER_MODEL)",
                crate::args::DEFAULT_MODEL
            )
        })?
    } else {
        loaded?
    };
    if !model.vae_approx.is_empty() {
        pipeline.load_vae_approx(&model.vae_approx)?;
    }
    let place = if device.is_cpu() {
        "cpu"
    } else if device.is_cuda() {
        "cuda"
    } else {
        "gpu"
    };
    let spec = pipeline.spec();
    eprintln!(
        "model: {} ({}) on {place} in {}; defaults {}",
        pipeline.model_name(),
        describe_spec(spec),
        dtype.as_str(),
        defaults_text(spec.defaults)
    );
    for note in &spec.notes {
        term::note(note);
    }
    Ok(pipeline)
}

/// `SD 2.x, v_prediction, karras-kdiffusion spacing`: the family, what the model predicts and how its steps are spaced
/// when a line does not say.
pub fn describe_spec(spec: &ModelSpec) -> String {
    format!(
        "{}, {}, {} spacing",
        spec.family.name(),
        spec.scheduler.prediction_type,
        spec.scheduler.spacing
    )
}

/// The model's own defaults as switches: `-s 50 -C 7.5 -A k_lms -W 512 -H 512`.
pub fn defaults_text(d: GenerationDefaults) -> String {
    format!(
        "-s {} -C {} -A {} -W {} -H {}",
        d.steps, d.cfg_scale, d.sampler, d.size, d.size
    )
}

/// One image written: its path, pixels and Dream line, and its step strip's path.
struct MadeImage {
    path: PathBuf,
    image: RgbImage,
    dream: String,
    strip: Option<PathBuf>,
}

/// Generates one image and writes it, with its strip and intermediates; `progress` shows its stages.
///
/// The image's name is taken before denoising, so each `--save-intermediates` picture is written under it as its
/// step finishes (a cancelled or killed run keeps the steps it got to); the names share the image's numeric
/// prefix, so the image itself still gets that name afterwards.
fn generate_one(
    pipeline: &Pipeline,
    cancel: &CancelToken,
    request: &GenerateRequest,
    sw: &Switches,
    outdir: &Path,
    progress: &mut Progress,
) -> anyhow::Result<MadeImage> {
    let path = next_output_path(outdir, request.seed)?;
    let stem = file_stem(&path);
    let mut strip: Option<StepStrip> = None;
    // The event callback cannot fail the run; the first preview error is reported after it, and the first error
    // writing an intermediate fails the command once the image is safe on disk.
    let mut preview_error: Option<Error> = None;
    let mut intermediate_error: Option<anyhow::Error> = None;
    progress.stage("encoding text");
    let generated = pipeline.generate(request, cancel, &mut |event| match event {
        Event::Warning(w) => progress.suspend(|| term::warning(w)),
        Event::Started {
            total_steps,
            schedule_steps,
        } => {
            progress.start_denoise(total_steps);
            if sw.step_strip {
                strip = Some(StepStrip::for_run(total_steps, schedule_steps));
            }
        }
        Event::Step {
            step,
            total_steps,
            latents,
        } => {
            progress.step(step);
            if let Some(strip) = strip.as_mut() {
                if let Err(e) = pipeline.preview(latents).and_then(|cell| strip.push_image(cell)) {
                    preview_error.get_or_insert(e);
                }
            }
            if sw.save_intermediates.is_some_and(|n| n > 0 && step % n == 0) {
                let picture = if sw.decode_intermediates {
                    pipeline.decode_latents(latents, request)
                } else {
                    pipeline.preview(latents)
                };
                match picture {
                    Ok(p) => {
                        let file = path.with_file_name(format!("{stem}.step-{step}.png"));
                        if let Err(e) = write_png_with_text(&file, &p, &[]) {
                            intermediate_error.get_or_insert(e.into());
                        }
                    }
                    Err(e) => {
                        preview_error.get_or_insert(e);
                    }
                }
            }
            if step == total_steps {
                progress.stage("decoding");
            }
        }
    });
    progress.finish();
    let mut generated = generated?;
    // The name was chosen before denoising; another `ember` writing into the same folder meanwhile may have taken
    // it (a run without step files leaves nothing under it): then the next free one.
    let path = if path.exists() || mask_path(&path).exists() {
        next_output_path(outdir, request.seed)?
    } else {
        path
    };
    // Inpainting: the mask as the run used it (from -M or the init image's transparency), saved first so that the
    // image's recorded `-M` names a file that exists, and its Dream line replays the run.
    if let Some(mask) = &generated.mask {
        let mask_file = mask_path(&path);
        let rgb = image::DynamicImage::ImageLuma8(mask.clone()).to_rgb8();
        write_png_with_text(&mask_file, &rgb, &[])?;
        generated.record.init_mask_name = Some(mask_file.display().to_string());
    }
    write_png(&path, &generated.image, &generated.record)?;
    if let Some(e) = preview_error {
        term::warning(format!("step previews incomplete: {e}"));
    }
    let strip_file = match strip {
        Some(strip) if !strip.is_empty() => {
            let strip_file = strip_path(&path);
            write_png_with_text(&strip_file, &strip.render(), &[])?;
            Some(strip_file)
        }
        Some(_) => {
            term::warning("no step was taken, so there is no step strip");
            None
        }
        None if sw.step_strip => {
            term::warning("no step was taken, so there is no step strip");
            None
        }
        None => None,
    };
    if let Some(e) = intermediate_error {
        return Err(e.context(format!(
            "{} was written, but not all of its --save-intermediates steps",
            path.display()
        )));
    }
    Ok(MadeImage {
        dream: dream_command(&generated.record),
        path,
        image: generated.image,
        strip: strip_file,
    })
}

/// An init image or mask file decoded (with the engine's limits and EXIF orientation), named by its path.
fn decoded(path: PathBuf) -> anyhow::Result<InitImage> {
    let image = ember::image::init::decode(&InitImage::Path(path.clone()))?;
    Ok(InitImage::Memory {
        name: path.display().to_string(),
        image,
    })
}

/// Creates the output folder if needed and checks that a file can be made in it, before any model loads or step
/// runs: a typo in `-o` should not cost a whole generation.
fn check_output_folder(outdir: &Path) -> anyhow::Result<()> {
    let cannot = |what: &str, e: std::io::Error| {
        anyhow::anyhow!(
            "cannot {what} the output folder {}: {e}; choose another with -o/--outdir",
            outdir.display()
        )
    };
    std::fs::create_dir_all(outdir).map_err(|e| cannot("create", e))?;
    let probe = outdir.join(format!(".ember-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| cannot("write into", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `{prefix}.{seed}.mask.png` beside the image `{prefix}.{seed}.png`: the inpainting mask it was made with.
pub fn mask_path(image_path: &Path) -> PathBuf {
    image_path.with_file_name(format!("{}.mask.png", file_stem(image_path)))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `-1`, `-2`, …: InvokeAI's reference to an earlier output in place of an init image path.
fn is_back_reference(s: &str) -> bool {
    s.strip_prefix('-')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Why an image path that is not a file cannot be used.
fn not_a_file(path: &std::path::Path) -> &'static str {
    if path.is_dir() {
        "it is a folder; give an image file"
    } else {
        "no such file"
    }
}
