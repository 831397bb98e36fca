//! Command-line syntax: long flags plus InvokeAI 2.x's short switches, with InvokeAI's defaults.
//!
//! The per-image switches live in one struct, [`Switches`], shared by `ember generate`, the REPL's launch flags
//! (which become the sticky defaults of every `invoke>` line) and the `invoke>` line parser itself
//! ([`crate::dream_line`]). Every field is optional there; [`Switches::over`] layers a line over the launch flags,
//! and [`crate::runner::Runner`] fills what is still unset with InvokeAI's defaults.
//! Long flags are written with `-` (`--cfg-scale`); InvokeAI's `_` spellings (`--cfg_scale`) are accepted too.

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// The default model: downloaded into the Hugging Face cache on first use.
pub const DEFAULT_MODEL: &str = ember::model::DEFAULT_REPO_ID;

const ABOUT: &str =
    "Ember: Stable Diffusion image generation (txt2img, img2img, inpainting; SD 1.x/2.x, SDXL, Turbo, LCM) on CPU/GPU.";

const LONG_ABOUT: &str =
    "Ember: Stable Diffusion image generation (txt2img, img2img and inpainting; SD 1.x, 2.x, SDXL, Turbo, LCM) on
your CPU or GPU. The model's family is read from its files; unset -s, -C, -A, -W and -H take the model's defaults.

Without a subcommand (or with `ember repl`) Ember opens InvokeAI's `invoke>` prompt: the model stays
loaded and each line is a prompt with switches, e.g. `a red fox -s 30 -S 42 -W 512 -H 512 -C 7.5`.
Type !help there for its commands.

img2img: give a drawing or photo with -I and a --strength (-f) between 0 and 1. The image is
encoded to latents, mixed with the seed's noise as if floor(strength × steps) of the steps had
already run, and only those last steps are denoised: -s 10 -f 0.7 runs 7 steps. Low strength keeps
the picture, high strength follows the prompt; 1 ignores the image, 0 returns it unchanged.
Without --fit the init image keeps its own size (rounded down to a multiple of 8).

Inpainting: add a mask with -M (white = repaint, black = keep; resized to the image), or give an -I
image whose transparent pixels are the area to repaint; -f works as in img2img. --outcrop top 64
left 128 (-c) extends the canvas by those pixels (multiples of 8) and paints the new area. Outside
the mask the original pixels are put back (--mask-blur N feathers that edge inside the mask;
--no-paste-back keeps the decoded image). An inpainting checkpoint (9-channel UNet) is used as
such; any other model re-imposes the kept region at every step. The mask is saved next to the
image as {prefix}.{seed}.mask.png and named in its metadata, so !fetch replays the run.

Examples (InvokeAI's img2img study; inpainting; outpainting):
  ember generate \"fire\" -I fire-drawing.png -f 0.7 -s 10 -S 1592514025 -A k_lms --model sd15.safetensors
  ember generate \"a red hat\" -I photo.png -M hat-mask.png -f 0.8 --model sd15-inpainting.safetensors
  ember generate \"a beach at dusk\" -I photo.png --outcrop left 128 top 64 -f 1 --mask-blur 8";

/// The environment variables Ember reads (README.md has the same table; keep the two together).
const ENVIRONMENT: &str = "Config file: `model = \"NAME\"` (the default model: a [models] name, file, folder or
repo id), a [defaults] table (steps, cfg_scale, sampler, width, height, strength, outdir,
karras_max, negative, prediction_type, timestep_spacing, lora_dir, embedding_dir, device, dtype)
and [models.NAME] tables (`ember models list`). Unknown keys are errors. Precedence: command
line > EMBER_MODEL (the model) > a named model's settings > the config file > the model's own
defaults > built-in ones.

Environment:
  EMBER_CONFIG       the config file [default: $XDG_CONFIG_HOME/ember/config.toml, else
                     ~/.config/ember/config.toml; without EMBER_CONFIG, an older models.toml
                     beside it is read too, its [models] under config.toml's]
  EMBER_MODEL        the model when --model is not given (a path, repo id or [models] name)
  EMBER_HISTORY      the REPL's history [default: $XDG_DATA_HOME/ember/history, else
                     ~/.local/share/ember/history]
  EMBER_CACHE_DIR    where model hashes are remembered [default: $XDG_CACHE_HOME/ember,
                     else ~/.cache/ember]
  EMBER_LOG          log filter for stderr, e.g. info or ember=debug [default: warn]
  EMBER_TOKEN        ember serve: --token, the API's access token
  EMBER_QUEUE        ember serve / worker: --queue, the PostgreSQL job queue
  EMBER_IMAGES       ember serve / worker: --images, a folder or s3://bucket/prefix (S3:
                     AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                     AWS_ALLOW_HTTP)
  EMBER_CPU_KERNELS  portable: the portable CPU kernels (avx512: no AMX), to compare
  HF_HOME            the Hugging Face cache repo ids download into [default:
                     ~/.cache/huggingface]
  NO_COLOR           set: no colours in messages";

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    after_long_help = ENVIRONMENT,
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    // `-V` is InvokeAI's --with_variations, so the version flag is long-only (declared below).
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    // InvokeAI's argparse: a switch given twice takes its last value (how a `!fetch`ed line is edited).
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Launch flags of the REPL that opens when no subcommand is given.
    #[command(flatten)]
    pub repl: ReplArgs,
    /// Print version.
    #[arg(long, action = ArgAction::Version)]
    pub version: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a prompt (txt2img) or from a prompt and an init image (img2img, inpainting with a mask).
    Generate(GenerateArgs),
    /// Open the interactive `invoke>` prompt (the default without a subcommand).
    Repl(ReplArgs),
    /// Time the networks of an SD1.5-size model with random weights (no model file needed).
    Bench(BenchArgs),
    /// One init image at several strengths and/or step counts → a labelled grid PNG (the img2img study tables).
    Study(crate::study::StudyArgs),
    /// Start the web UI and HTTP API (a job queue with live previews and a gallery); see docs/api.md.
    Serve(ServeArgs),
    /// Run the jobs of a PostgreSQL queue (`ember serve --queue postgres://…`) on this machine, with no HTTP server;
    /// images go to --images (a folder or s3://bucket/prefix). Start as many as there are machines or GPUs.
    Worker(crate::serve::WorkerArgs),
    /// Print the generation settings stored in images (Dream line, sd-metadata, A1111 parameters, ComfyUI prompt).
    Info(crate::info::InfoArgs),
    /// Model files: list the models file, inspect a model, convert a .ckpt to .safetensors, hash.
    Models(crate::models::ModelsArgs),
    /// Print a shell completion script: `ember completions bash > ~/.local/share/bash-completion/completions/ember`.
    Completions(crate::completions::CompletionsArgs),
}

/// Where the model comes from and how it runs.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model: a diffusers folder, a single-file .safetensors, a .ckpt, a Hugging Face repo id, or the name of a
    /// [models.NAME] entry of the config file (used when no such file or folder exists) [default: the config file's
    /// `model`, else stable-diffusion-v1-5/stable-diffusion-v1-5].
    // Empty (as are --device and --dtype) until `settings::resolve_model` fills it in from the config file.
    #[arg(long, env = "EMBER_MODEL", default_value = "", hide_default_value = true)]
    pub model: String,
    /// Device: cpu, cuda, cuda:N, or auto (CUDA when available) [default: the named model's, else the config file's
    /// [defaults] device, else auto].
    #[arg(long, default_value = "", hide_default_value = true)]
    pub device: String,
    /// Compute precision: auto (f16 on CUDA, bf16 on CPUs with AMX, else f32), f32, f16 or bf16 (f64: slow, exact,
    /// for reference checks) [default: the named model's, else the config file's [defaults] dtype, else auto].
    #[arg(long, default_value = "", hide_default_value = true)]
    pub dtype: String,
    /// A tiny autoencoder (TAESD: taesd_decoder.pth for SD 1.x/2.x, taesdxl_decoder.pth for SDXL; .pth or
    /// .safetensors, also diffusers' AutoencoderTiny) that decodes the final images and the step previews: much
    /// faster than the VAE, slightly softer. Repeat the flag to give its encoder file too (for --vae-approx-encode).
    #[arg(long = "vae-approx", alias = "vae_approx", value_name = "FILE")]
    pub vae_approx: Vec<PathBuf>,
    /// Encode img2img's init image with the tiny autoencoder as well (needs its encoder file in --vae-approx).
    #[arg(long = "vae-approx-encode", alias = "vae_approx_encode", requires = "vae_approx")]
    pub vae_approx_encode: bool,
}

/// The switches of one image request (InvokeAI 2.x's `invoke>` switches). Unset fields fall back to the REPL's
/// launch flags, then to InvokeAI's defaults.
#[derive(Debug, Args, Clone, Default, PartialEq)]
pub struct Switches {
    /// Number of steps of the full schedule (img2img runs floor(strength × steps) of them) [default: 50].
    #[arg(short = 's', long, allow_negative_numbers = true, value_parser = at_least_1)]
    pub steps: Option<usize>,
    /// Seed (0..=4294967295), random when omitted; in the REPL -1 reuses the previous image's seed (-2 the one before).
    #[arg(short = 'S', long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Width in pixels (multiple of 8); ignored for img2img unless --fit [default: 512].
    #[arg(short = 'W', long, allow_negative_numbers = true, value_parser = pixels)]
    pub width: Option<usize>,
    /// Height in pixels (multiple of 8); ignored for img2img unless --fit [default: 512].
    #[arg(short = 'H', long, allow_negative_numbers = true, value_parser = pixels)]
    pub height: Option<usize>,
    /// Classifier-free guidance scale: how strongly the prompt is followed; ≤ 1 runs without guidance (one UNet pass
    /// per step) [default: the model's: 7.5, 0 for Turbo models, 8 for LCM models].
    #[arg(short = 'C', long, alias = "cfg_scale", allow_negative_numbers = true)]
    pub cfg_scale: Option<f64>,
    /// Sampler: k_lms, k_euler, k_euler_a, k_heun, k_dpm_2, k_dpm_2_a, k_dpmpp_2, k_dpmpp_2_a, ddim, plms, lcm, or
    /// A1111's names and short ones, any case ("Euler a", euler_a, dpm++2m; "DPM++ 2M Karras" also sets --karras-max)
    /// [default: the model's: k_lms for SD 1.x/2.x, k_euler for SDXL and Turbo, lcm for LCM models].
    #[arg(short = 'A', long)]
    pub sampler: Option<String>,
    /// Init image for img2img (PNG, JPEG, WebP, BMP); in the REPL -1 is the previous output (-2 the one before).
    #[arg(
        short = 'I',
        long,
        alias = "init_image",
        alias = "init_img",
        alias = "init-img",
        allow_hyphen_values = true
    )]
    pub init_image: Option<String>,
    /// img2img strength in [0, 1]: how much of the schedule runs on the init image (also --hires_fix's) [default: 0.75].
    #[arg(short = 'f', long, allow_negative_numbers = true)]
    pub strength: Option<f64>,
    /// img2img: scale the init image into the -W × -H box, keeping its aspect ratio.
    #[arg(short = 'T', long)]
    pub fit: bool,
    /// Inpainting mask for the -I image: white = repaint, black = keep (any size: it is resized to the image).
    /// Without it, the init image's transparent pixels are the area to repaint.
    #[arg(short = 'M', long = "init-mask", alias = "init_mask", value_name = "PATH")]
    pub init_mask: Option<String>,
    /// Inpainting: repaint what the mask (or the transparency) keeps, and keep what it repaints.
    #[arg(long = "invert-mask", alias = "invert_mask")]
    pub invert_mask: bool,
    /// Inpainting: feather the edge where the original pixels are put back over N pixels, inside the mask (pixels
    /// outside it stay exactly the original) [default: 0, at most 256].
    #[arg(long = "mask-blur", alias = "mask_blur", value_name = "N", allow_negative_numbers = true,
          value_parser = at_least_0::<u32>)]
    pub mask_blur: Option<u32>,
    /// Outpainting: extend the -I image's canvas by these pixels (multiples of 8) and paint the new area, as
    /// InvokeAI's `--outcrop top 64 left 128` (sides: top, bottom, left, right).
    #[arg(short = 'c', long, num_args = 2..=8, value_names = ["SIDE", "PX"])]
    pub outcrop: Option<Vec<String>>,
    /// Inpainting: return the decoded image as it is (diffusers' output) instead of putting the original pixels
    /// back outside the mask.
    #[arg(long = "no-paste-back", alias = "no_paste_back")]
    pub no_paste_back: bool,
    /// Number of images; each after the first gets a fresh random seed (with -v: a fresh variation seed) [default: 1].
    #[arg(short = 'n', long, allow_negative_numbers = true, value_parser = at_least_1)]
    pub iterations: Option<usize>,
    /// Also write a grid PNG of the -n images.
    #[arg(short = 'g', long)]
    pub grid: bool,
    /// Variation amount in [0, 1]: each image blends the seed's noise toward a fresh random seed's by this much.
    #[arg(short = 'v', long, alias = "variation_amount", allow_negative_numbers = true)]
    pub variation_amount: Option<f64>,
    /// Variations applied to the seed's noise, in order: "seed:weight,seed:weight".
    #[arg(short = 'V', long, alias = "with_variations")]
    pub with_variations: Option<String>,
    /// Circular padding, so the image tiles seamlessly.
    #[arg(long)]
    pub seamless: bool,
    /// Encode and decode with the VAE in overlapping 512-pixel tiles (diffusers' VAE tiling): large images need far
    /// less memory, pixels differ slightly.
    #[arg(long = "vae-tiling", alias = "vae_tiling")]
    pub vae_tiling: bool,
    /// txt2img larger than the model's native size: first generate at about the native size, then img2img up.
    #[arg(long = "hires-fix", alias = "hires_fix")]
    pub hires_fix: bool,
    /// InvokeAI's dynamic threshold of the guided prediction (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f64>,
    /// Fraction of Perlin noise mixed into the initial noise, in [0, 1] (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub perlin: Option<f64>,
    /// Print how the prompt was tokenized, with each token's weight.
    #[arg(short = 't', long, alias = "log_tokenization")]
    pub log_tokenization: bool,
    /// Keep prompt blend weights as written instead of normalising them to sum 1.
    #[arg(short = 'x', long, alias = "skip_normalize")]
    pub skip_normalize: bool,
    /// Folder for the PNGs (created if missing) [default: outputs].
    #[arg(short = 'o', long)]
    pub outdir: Option<PathBuf>,
    /// k-samplers use the Karras noise schedule below this many steps, the model's own from it on [default: 30].
    #[arg(long, alias = "karras_max", allow_negative_numbers = true, value_parser = at_least_0::<usize>)]
    pub karras_max: Option<usize>,
    /// Negative prompt: what the image should not show.
    #[arg(long)]
    pub negative: Option<String>,
    /// What the model predicts: epsilon or v_prediction (an SD 2.x single file cannot say; see its .yaml)
    /// [default: the model's].
    #[arg(long = "prediction-type", alias = "prediction_type")]
    pub prediction_type: Option<String>,
    /// How the steps are spread over the noise schedule: linspace, leading, trailing (diffusers') or
    /// karras-kdiffusion (InvokeAI 2.x's) [default: the model's: trailing for Turbo, leading for SDXL, karras-kdiffusion
    /// for SD 1.x/2.x].
    #[arg(long = "timestep-spacing", alias = "timestep_spacing")]
    pub timestep_spacing: Option<String>,
    /// Cut prompts at CLIP's 77 tokens (InvokeAI 2.x) instead of encoding long prompts in 77-token chunks.
    #[arg(long, alias = "truncate_prompts")]
    pub truncate_prompts: bool,
    /// How a prompt fragment weighted below 1 fades: `remove` mixes in the prompt without it (InvokeAI 2.x),
    /// `mask` the same tokens with the fragment masked out of the text encoder's attention (compel) [default: remove].
    #[arg(long, value_enum)]
    pub downweight: Option<Downweight>,
    /// img2img: lengthen the schedule so that exactly -s steps run from the init image.
    #[arg(long, alias = "exact_steps")]
    pub exact_steps: bool,
    /// Write {prefix}.{seed}.strip.png next to each image: the latent at every step taken.
    #[arg(long, alias = "step_strip")]
    pub step_strip: bool,
    /// Write every N-th step as {prefix}.{seed}.step-{k}.png (a fast latent preview, see --decode-intermediates).
    #[arg(long, alias = "save_intermediates", value_name = "N", allow_negative_numbers = true,
          value_parser = at_least_1)]
    pub save_intermediates: Option<usize>,
    /// With --save-intermediates: decode those steps with the VAE (full size, slower) instead of the fast preview.
    #[arg(long, alias = "decode_intermediates")]
    pub decode_intermediates: bool,
    /// Apply a LoRA (or LyCORIS) to every image: a file, or the name of one in --lora-dir, with an optional weight
    /// (`style.safetensors:0.8`) [default weight: 1]. Repeatable. In the prompt: `<lora:NAME:WEIGHT>`.
    #[arg(long, value_name = "FILE[:WEIGHT]")]
    pub lora: Vec<String>,
    /// A textual-inversion embedding to make known by its file name (use it by that name in the prompt or the
    /// negative prompt). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub embedding: Vec<String>,
    /// A folder of LoRAs, known by their file names in `<lora:NAME:WEIGHT>` and --lora. Repeatable.
    #[arg(long = "lora-dir", alias = "lora_dir", value_name = "DIR")]
    pub lora_dir: Vec<PathBuf>,
    /// A folder of embeddings, each known by its file name in prompts. Repeatable.
    #[arg(long = "embedding-dir", alias = "embedding_dir", value_name = "DIR")]
    pub embedding_dir: Vec<PathBuf>,
}

/// `--downweight`'s values (see `ember::text::conditioning::Downweight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Downweight {
    Remove,
    Mask,
}

impl Switches {
    /// `self` (a command line) layered over `base` (the launch flags): set values win; flags add up.
    pub fn over(&self, base: &Switches) -> Switches {
        Switches {
            steps: self.steps.or(base.steps),
            seed: self.seed.or(base.seed),
            width: self.width.or(base.width),
            height: self.height.or(base.height),
            cfg_scale: self.cfg_scale.or(base.cfg_scale),
            sampler: self.sampler.clone().or_else(|| base.sampler.clone()),
            init_image: self.init_image.clone().or_else(|| base.init_image.clone()),
            strength: self.strength.or(base.strength),
            fit: self.fit || base.fit,
            init_mask: self.init_mask.clone().or_else(|| base.init_mask.clone()),
            invert_mask: self.invert_mask || base.invert_mask,
            mask_blur: self.mask_blur.or(base.mask_blur),
            outcrop: self.outcrop.clone().or_else(|| base.outcrop.clone()),
            no_paste_back: self.no_paste_back || base.no_paste_back,
            iterations: self.iterations.or(base.iterations),
            grid: self.grid || base.grid,
            variation_amount: self.variation_amount.or(base.variation_amount),
            with_variations: self.with_variations.clone().or_else(|| base.with_variations.clone()),
            seamless: self.seamless || base.seamless,
            vae_tiling: self.vae_tiling || base.vae_tiling,
            hires_fix: self.hires_fix || base.hires_fix,
            threshold: self.threshold.or(base.threshold),
            perlin: self.perlin.or(base.perlin),
            log_tokenization: self.log_tokenization || base.log_tokenization,
            skip_normalize: self.skip_normalize || base.skip_normalize,
            outdir: self.outdir.clone().or_else(|| base.outdir.clone()),
            karras_max: self.karras_max.or(base.karras_max),
            negative: self.negative.clone().or_else(|| base.negative.clone()),
            prediction_type: self.prediction_type.clone().or_else(|| base.prediction_type.clone()),
            timestep_spacing: self.timestep_spacing.clone().or_else(|| base.timestep_spacing.clone()),
            truncate_prompts: self.truncate_prompts || base.truncate_prompts,
            downweight: self.downweight.or(base.downweight),
            exact_steps: self.exact_steps || base.exact_steps,
            step_strip: self.step_strip || base.step_strip,
            save_intermediates: self.save_intermediates.or(base.save_intermediates),
            decode_intermediates: self.decode_intermediates || base.decode_intermediates,
            // A line's LoRAs replace the launch flags' (a line without --lora keeps them); folders and embeddings
            // only make names known, so they add up.
            lora: if self.lora.is_empty() {
                base.lora.clone()
            } else {
                self.lora.clone()
            },
            embedding: union(&self.embedding, &base.embedding),
            lora_dir: union(&self.lora_dir, &base.lora_dir),
            embedding_dir: union(&self.embedding_dir, &base.embedding_dir),
        }
    }
}

/// InvokeAI 2.x switches Ember does not have, with what they did: a line or command that uses one is told so, rather
/// than getting clap's generic "unexpected argument". The names are InvokeAI's `args.py` spellings.
const INVOKEAI_ONLY_SWITCHES: &[(&[&str], &str)] = &[
    (&["-U", "--upscale"], "upscaling with ESRGAN"),
    (
        &["-G", "--gfpgan_strength", "--facetool_strength"],
        "face restoration with GFPGAN",
    ),
    (&["-ft", "--facetool"], "face restoration"),
    (&["-cf", "--codeformer_fidelity"], "face restoration with CodeFormer"),
    (
        &["--save_original", "-save_orig"],
        "keeping the image before upscaling or face restoration",
    ),
    (
        &[
            "--embiggen",
            "-embiggen",
            "--embiggen_tiles",
            "-embiggen_tiles",
            "--embiggen_strength",
        ],
        "embiggen upscaling",
    ),
    (&["-tm", "--text_mask"], "masks from text with clipseg"),
    (
        &["--inpaint_replace", "-r"],
        "inpaint_replace; -f sets how much is repainted",
    ),
    (&["--png_compression", "-z"], "PNG compression levels"),
    (&["--fnformat"], "file name formats"),
    (&["--hires_strength"], "a separate hires strength; --hires_fix uses -f"),
];

/// The message for an InvokeAI 2.x switch Ember lacks (`-U 2`, `--embiggen=2`), or None for any other word.
pub fn unsupported_invokeai_switch(word: &str) -> Option<String> {
    let name = word.split_once('=').map_or(word, |(name, _)| name);
    INVOKEAI_ONLY_SWITCHES
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, what)| {
            format!("{name} ({what}) is an InvokeAI switch that is not supported by Ember; drop it from the line")
        })
}

/// The unsupported-switch message for clap's "unexpected argument" error about an InvokeAI-only switch.
pub fn unsupported_switch_in(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    if error.kind() != clap::error::ErrorKind::UnknownArgument {
        return None;
    }
    match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(word)) => unsupported_invokeai_switch(word),
        _ => None,
    }
}

/// A count that must be at least 1 (`-s`, `-n`, `--save-intermediates`): a negative or zero value is refused with
/// the range, not clap's "unexpected argument '-5'" (the switches accept negative numbers so that this check sees
/// them).
fn at_least_1(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        Ok(n) => Err(format!("{n} is not allowed: the value must be at least 1")),
        Err(_) => Err(format!("`{text}` is not a whole number (the value must be at least 1)")),
    }
}

/// A whole number that must be at least 0 (`--mask-blur`, `--karras-max`).
fn at_least_0<T: TryFrom<i64>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 0 => T::try_from(n).map_err(|_| format!("{n} is too large")),
        Ok(n) => Err(format!("{n} is not allowed: the value must be 0 or more")),
        Err(_) => Err(format!("`{text}` is not a whole number (the value must be 0 or more)")),
    }
}

/// A side in pixels (`-W`, `-H`): a positive whole number (the request's checks then ask for a multiple of 8).
fn pixels(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        Ok(n) => Err(format!(
            "{n} is not allowed: a side is a number of pixels, at least 8 (try 512)"
        )),
        Err(_) => Err(format!("`{text}` is not a number of pixels (try 512)")),
    }
}

/// `first` then the entries of `second` not in it.
fn union<T: Clone + PartialEq>(first: &[T], second: &[T]) -> Vec<T> {
    let mut out = first.to_vec();
    out.extend(second.iter().filter(|x| !first.contains(x)).cloned());
    out
}

#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct GenerateArgs {
    /// The prompt (give either a prompt or --from-file).
    #[arg(required_unless_present = "from_file")]
    pub prompt: Option<String>,
    /// Run one `invoke>` command line per line of FILE (`-` reads standard input); blank lines and # comments
    /// are skipped. The other switches given here are the defaults of every line.
    #[arg(long, alias = "from_file", value_name = "FILE", conflicts_with = "prompt")]
    pub from_file: Option<PathBuf>,
    /// When to show progress on stderr: auto (a bar when stderr is a terminal), always (also one line per stage into a
    /// pipe or file), never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::term::ProgressMode::Auto)]
    pub progress: crate::term::ProgressMode,
    #[command(flatten)]
    pub switches: Switches,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `ember` / `ember repl`: the model and the sticky defaults of every `invoke>` line.
#[derive(Debug, Args, Clone)]
#[command(args_override_self = true)]
pub struct ReplArgs {
    #[command(flatten)]
    pub switches: Switches,
    #[command(flatten)]
    pub model: ModelArgs,
    /// When to show progress on stderr: auto (a bar when stderr is a terminal), always (also one line per stage into a
    /// pipe or file), never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::term::ProgressMode::Auto)]
    pub progress: crate::term::ProgressMode,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Compute precision: auto (f16 on CUDA, bf16 on CPUs with AMX, else f32), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed repetitions per measurement (the fastest is reported), after one warm-up.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Which model family's networks to time: sd1 (SD 1.5 sizes, 512×512), sd2 (SD 2.1 sizes as SD-Turbo runs
    /// them: one unguided step and a whole one-step 512×512 txt2img) or sdxl (SDXL base sizes, 1024×1024: UNet step,
    /// VAE decode, both text encoders; about 11 GiB of memory in f32).
    #[arg(long, default_value = "sd1")]
    pub family: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; the default serves this machine only (0.0.0.0 exposes the API to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 9090)]
    pub port: u16,
    /// Folder for the job database (ember.sqlite) and the generated images (images/); created if missing.
    #[arg(long, default_value = "ember-data")]
    pub data_dir: PathBuf,
    /// Access token every API request must carry (`Authorization: Bearer TOKEN`; the page asks for it once). Set it
    /// when --host exposes the server to a network.
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A host name the server may be reached under besides IP addresses and localhost (repeatable). Requests naming
    /// any other host are refused, which stops DNS-rebinding attacks from web pages.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// `--model`, `--models`, `--device`, `--dtype`, the add-on folders and the work limits (defined in serve.rs).
    #[command(flatten)]
    pub served: crate::serve::ServedModelArgs,
    /// The HTTP APIs to serve, comma-separated: `ember` (Ember's own /api, which the web page needs), `a1111`
    /// (AUTOMATIC1111's /sdapi/v1) and `openai` (OpenAI's Images API under /v1). A left-out API's routes answer 404.
    #[arg(long = "api", value_name = "LIST", default_value = "ember,a1111,openai", value_parser = parse_apis)]
    pub api: ember_server::Apis,
    /// `--queue`, `--images`, `--lease-secs` (defined in serve.rs).
    #[command(flatten)]
    pub queue: crate::serve::QueueArgs,
    /// Workers inside this server, each with the model in memory: 0 makes a front-end only, whose jobs run in
    /// `ember worker` processes; more than one needs --queue postgres://….
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// Apply the PostgreSQL schema of --queue and exit (a server also migrates at start, under a lock).
    #[arg(long)]
    pub migrate: bool,
    /// PostgreSQL queue: a job submitted here whose worker stopped answering this many times (killed, power or
    /// network lost) fails, with the reason; before that it goes back to the queue for another worker.
    #[arg(long, value_name = "N", default_value_t = ember_server::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub max_attempts: i64,
}

fn parse_apis(list: &str) -> Result<ember_server::Apis, String> {
    list.parse()
}
