//! Command-line syntax: long flags plus InvokeAI 2.x's short switches, with InvokeAI's defaults.

use clap::{Args, Parser, Subcommand};
use ember::request::{DEFAULT_CFG_SCALE, DEFAULT_KARRAS_MAX, DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_STRENGTH};
use std::path::PathBuf;

/// The default model: downloaded into the Hugging Face cache on first use.
pub const DEFAULT_MODEL: &str = ember::model::DEFAULT_REPO_ID;

const ABOUT: &str = "Ember: Stable Diffusion 1.x image generation (txt2img and img2img) on your CPU or GPU.";

const LONG_ABOUT: &str = "Ember: Stable Diffusion 1.x image generation (txt2img and img2img) on your CPU or GPU.

img2img: give a drawing or photo with -I and a --strength (-f) between 0 and 1. The image is
encoded to latents, mixed with the seed's noise as if floor(strength × steps) of the steps had
already run, and only those last steps are denoised: -s 10 -f 0.7 runs 7 steps. Low strength keeps
the picture, high strength follows the prompt; 1 ignores the image, 0 returns it unchanged.
Without --fit the init image keeps its own size (rounded down to a multiple of 8).

Example (InvokeAI's img2img study):
  ember generate \"fire\" -I fire-drawing.png -f 0.7 -s 10 -S 1592514025 -A k_lms --model sd15.safetensors";

#[derive(Debug, Parser)]
#[command(name = "ember", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a prompt (txt2img) or from a prompt and an init image (img2img).
    Generate(GenerateArgs),
    /// Time the networks of an SD1.5-size model with random weights (no model file needed).
    Bench(BenchArgs),
    /// Start the web UI and HTTP API (a job queue with live previews and a gallery); see docs/api.md.
    Serve(ServeArgs),
}

/// Where the model comes from and how it runs.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model: a diffusers folder, a single-file .safetensors, a .ckpt, or a Hugging Face repo id.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Device: cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision: f32, f16 or bf16 (f64: slow, exact, for reference checks).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: String,
    /// Negative prompt: what the image should not show.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Number of steps of the full schedule (img2img runs floor(strength × steps) of them).
    #[arg(short = 's', long, default_value_t = DEFAULT_STEPS)]
    pub steps: usize,
    /// Seed (0..=4294967295); a random one is chosen and printed when omitted.
    #[arg(short = 'S', long)]
    pub seed: Option<u32>,
    /// Width in pixels (multiple of 8); ignored for img2img unless --fit.
    #[arg(short = 'W', long, default_value_t = DEFAULT_SIZE)]
    pub width: usize,
    /// Height in pixels (multiple of 8); ignored for img2img unless --fit.
    #[arg(short = 'H', long, default_value_t = DEFAULT_SIZE)]
    pub height: usize,
    /// Classifier-free guidance scale: how strongly the prompt is followed.
    #[arg(short = 'C', long, default_value_t = DEFAULT_CFG_SCALE)]
    pub cfg_scale: f64,
    /// Sampler: k_lms, k_euler, k_euler_a, k_heun, k_dpm_2, k_dpm_2_a, k_dpmpp_2, k_dpmpp_2_a, ddim, plms.
    #[arg(short = 'A', long, default_value = "k_lms")]
    pub sampler: String,
    /// Init image for img2img (PNG, JPEG, WebP, BMP).
    #[arg(short = 'I', long)]
    pub init_image: Option<PathBuf>,
    /// img2img strength in [0, 1]: how much of the schedule runs on the init image.
    #[arg(short = 'f', long, default_value_t = DEFAULT_STRENGTH)]
    pub strength: f64,
    /// img2img: scale the init image into the -W × -H box, keeping its aspect ratio.
    #[arg(short = 'T', long)]
    pub fit: bool,
    /// Number of images; each after the first gets a fresh random seed.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub iterations: usize,
    /// Folder for the PNGs (created if missing).
    #[arg(short = 'o', long, default_value = "outputs")]
    pub outdir: PathBuf,
    /// k-samplers use the Karras noise schedule below this many steps, the model's own schedule from it on.
    #[arg(long, default_value_t = DEFAULT_KARRAS_MAX)]
    pub karras_max: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Compute precision: f32, f16 or bf16 (f64: slow, exact, for reference checks).
    #[arg(long, default_value = "f32")]
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
    #[command(flatten)]
    pub model: ModelArgs,
}
