//! `ember serve`: the web UI and HTTP API (crate `ember-server`), with the same model flags as `ember generate`,
//! `--models FILE`: the REPL's models file, whose named models jobs may ask for, and the LoRA and embedding folders.
//! `ember worker`: the jobs of a PostgreSQL queue run on another machine, with the same model flags.

use crate::args::{ServeArgs, DEFAULT_MODEL};
use crate::settings::load_models;
use clap::Args;
use std::path::{Path, PathBuf};

/// `ember serve`'s LoRA and embedding folders (part of [`ServeArgs`]).
#[derive(Debug, Args, Clone, Default, PartialEq)]
pub struct AddonDirArgs {
    /// A folder of LoRAs (and LyCORIS) jobs may use on every model, by file name: `"loras": [{"name": NAME,
    /// "weight": 0.8}]` or `<lora:NAME:0.8>` in the prompt; subfolders are searched too. Repeatable. A model's own
    /// `lora_dir` (models file) comes first.
    #[arg(long = "lora-dir", alias = "lora_dir", value_name = "DIR")]
    pub lora_dir: Vec<PathBuf>,
    /// A folder of textual-inversion embeddings prompts may use on every model, each by its file name. Repeatable.
    /// A model's own `embedding_dir` comes first.
    #[arg(long = "embedding-dir", alias = "embedding_dir", value_name = "DIR")]
    pub embedding_dir: Vec<PathBuf>,
}

/// Where jobs and images live, a worker's lease, and the previews' tiny autoencoder (part of [`ServeArgs`] and
/// [`WorkerArgs`]).
#[derive(Debug, Args, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// Where the jobs, their states and the gallery's records live: a SQLite file [default: DATA_DIR/ember.sqlite],
    /// or postgres://USER:PASSWORD@HOST:PORT/DB for one queue shared by workers on several machines.
    #[arg(long, value_name = "URL_OR_FILE", env = "EMBER_QUEUE", hide_env_values = true)]
    pub queue: Option<String>,
    /// Where the images go: a folder [default: DATA_DIR/images], or s3://BUCKET/PREFIX on an S3-compatible store
    /// (AWS S3, MinIO, Ceph, R2; endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; AWS_ALLOW_HTTP=true for a plain-HTTP endpoint).
    #[arg(long, value_name = "FOLDER_OR_S3", env = "EMBER_IMAGES", value_parser = parse_images)]
    pub images: Option<ember_server::ImagesLocation>,
    /// PostgreSQL queue: seconds a worker holds a job without a sign of life (steps and a heartbeat renew it)
    /// before another worker takes the job over.
    #[arg(long, value_name = "SECONDS", default_value_t = ember_server::DEFAULT_LEASE.as_secs_f64(),
          value_parser = parse_lease)]
    pub lease_secs: f64,
    /// A tiny autoencoder (TAESD: taesd_decoder.pth for SD 1.x/2.x, taesdxl_decoder.pth for SDXL) that draws the
    /// live step previews at full size (else one pixel per latent); images still come from the model's VAE.
    #[arg(long = "vae-approx", value_name = "FILE")]
    pub vae_approx: Vec<PathBuf>,
}

fn parse_images(text: &str) -> Result<ember_server::ImagesLocation, String> {
    text.parse()
}

fn parse_lease(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.5..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("'{text}' is not a number of seconds from 0.5 to 86400")),
    }
}

/// The models a server or a worker runs and their limits (part of [`ServeArgs`] and [`WorkerArgs`]).
#[derive(Debug, Args, Clone)]
pub struct ServedModelArgs {
    /// Largest image one job may make, in megapixels (2²⁰ pixels) [default: 2 on a CPU, 16 on a GPU].
    #[arg(long, value_name = "MEGAPIXELS")]
    pub max_pixels: Option<f64>,
    /// Most work one job may take, in megapixel-steps: pixels × denoising steps over all passes
    /// [default: 200 on a CPU (1024² × 190 steps), 2000 on a GPU].
    #[arg(long, value_name = "MEGAPIXEL_STEPS")]
    pub work_budget: Option<f64>,
    /// Named models jobs may ask for ("model": NAME), one in memory at a time: a TOML file in the format of the
    /// REPL's models.toml ([models.NAME] tables with a path and optional dtype, device, description and per-model
    /// defaults). Without --model, the first one by name is loaded at start.
    #[arg(long, value_name = "FILE")]
    pub models: Option<PathBuf>,
    /// Model loaded at start: a diffusers folder, a single-file .safetensors, a .ckpt, a Hugging Face repo id, or a
    /// name from --models [default: the first model of --models, else stable-diffusion-v1-5/stable-diffusion-v1-5].
    /// Jobs name models as their server does: give a worker the same path or name as the server.
    #[arg(long)]
    pub model: Option<String>,
    /// Device: cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision: auto (f16 on CUDA, bf16 on CPUs with AMX, else f32), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    #[command(flatten)]
    pub addons: AddonDirArgs,
}

/// `ember worker`.
#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// This worker's name in the queue (`GET /api/workers`, a job's `worker`) [default: HOST-PID]. A name in use
    /// by a live worker is refused; a restarted worker may take its old name.
    #[arg(long)]
    pub name: Option<String>,
    /// Which jobs it takes: `any` (those for the model in memory first, then those of other models it has, which it
    /// loads) or `loaded` (only those for the model in memory).
    #[arg(long, value_name = "POLICY", default_value = "any", value_parser = ["any", "loaded"])]
    pub claim: String,
    /// `--model`, `--models` (give it the server's file, or a part of it), `--device`, `--dtype`, …
    #[command(flatten)]
    pub served: ServedModelArgs,
}

/// The part of a server's or worker's configuration that `served` gives: its models (`--models`, and `--model`,
/// else the first named model, else the default repo), their device, precision, add-ons and limits.
fn model_config(served: &ServedModelArgs) -> anyhow::Result<ember_server::Config> {
    let models = match &served.models {
        Some(file) => named_models(file)?,
        None => Vec::new(),
    };
    let model = match (&served.model, models.first()) {
        (Some(model), _) => model.clone(),
        (None, Some(first)) => first.name.clone(),
        (None, None) => DEFAULT_MODEL.to_string(),
    };
    Ok(ember_server::Config {
        model,
        models,
        device: served.device.clone(),
        dtype: served.dtype.clone(),
        max_megapixels: served.max_pixels,
        work_budget: served.work_budget,
        lora_dirs: served.addons.lora_dir.clone(),
        embedding_dirs: served.addons.embedding_dir.clone(),
        ..ember_server::Config::default()
    })
}

fn queue_config(config: &mut ember_server::Config, queue: &QueueArgs) {
    config.queue = queue.queue.clone().filter(|q| !q.is_empty());
    config.images = queue.images.clone();
    config.lease = std::time::Duration::from_secs_f64(queue.lease_secs);
    config.vae_approx = queue.vae_approx.clone();
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = ember_server::Config {
        host: args.host.clone(),
        port: args.port,
        data_dir: args.data_dir.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        allowed_hosts: args.allowed_hosts.clone(),
        apis: args.api,
        workers: args.workers,
        max_attempts: args.max_attempts,
        ..model_config(&args.served)?
    };
    queue_config(&mut config, &args.queue);
    if args.migrate {
        println!("{}", ember_server::migrate_blocking(&config)?);
        return Ok(());
    }
    ember_server::serve_blocking(config)
}

pub fn run_worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let mut config = ember_server::Config {
        worker_name: args.name.clone().filter(|n| !n.is_empty()),
        only_loaded: args.claim == "loaded",
        ..model_config(&args.served)?
    };
    queue_config(&mut config, &args.queue);
    if config.queue.is_none() {
        anyhow::bail!("ember worker needs --queue postgres://USER:PASSWORD@HOST:PORT/DB (or EMBER_QUEUE)");
    }
    ember_server::work_blocking(config)
}

/// The models of `file` (the REPL's format, read by the REPL's parser), sorted by name. Unlike the REPL's optional
/// file, a file given with `--models` must exist and name at least one model.
pub fn named_models(file: &Path) -> anyhow::Result<Vec<ember_server::NamedModel>> {
    let entries = load_models(file)?;
    if entries.is_empty() {
        if !file.exists() {
            anyhow::bail!("the models file {} does not exist", file.display());
        }
        anyhow::bail!(
            "the models file {} names no model; write a [models.NAME] table with a path for each",
            file.display()
        );
    }
    Ok(entries.iter().map(|(name, entry)| entry.named(name)).collect())
}

#[cfg(test)]
mod tests {
    use super::named_models;
    use crate::args::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_models_file_gives_named_models_by_name_and_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("models.toml");
        std::fs::write(
            &file,
            "[models.xl]\npath = \"/m/sdxl\"\nsteps = 20\nsampler = \"k_euler_a\"\ndevice = \"cpu\"\n\
             [models.a]\npath = \"/m/sd15.safetensors\"\ndescription = \"SD 1.5\"\ntimestep_spacing = \"trailing\"\n",
        )
        .expect("write");
        let models = named_models(&file).expect("valid");
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "xl"], "sorted by name");
        assert_eq!(models[0].description.as_deref(), Some("SD 1.5"));
        assert_eq!(models[0].timestep_spacing.as_deref(), Some("trailing"));
        assert_eq!(
            (models[1].path.as_str(), models[1].steps, models[1].sampler.as_deref()),
            ("/m/sdxl", Some(20), Some("k_euler_a"))
        );
        assert_eq!(models[1].device.as_deref(), Some("cpu"));

        let missing = named_models(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        std::fs::write(&file, "").expect("write");
        let empty = named_models(&file).expect_err("empty");
        assert!(empty.to_string().contains("names no model"), "{empty}");
        std::fs::write(&file, "[models.m]\npath = \"p\"\nsampler = \"k_nope\"\n").expect("write");
        let bad = named_models(&file).expect_err("bad sampler");
        assert!(format!("{bad:#}").contains("[models.m] sampler"), "{bad:#}");
    }

    #[test]
    fn serve_takes_models_and_an_optional_model() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).expect("parses").command {
            Some(Command::Serve(serve)) => serve,
            other => panic!("not serve: {other:?}"),
        };
        let serve = parse(&["ember", "serve", "--models", "m.toml"]);
        assert_eq!(serve.served.models.as_deref(), Some(std::path::Path::new("m.toml")));
        assert_eq!(serve.served.model, None, "the first named model is loaded at start");
        assert_eq!(
            (serve.served.device.as_str(), serve.served.dtype.as_str()),
            ("auto", "auto")
        );
        assert_eq!(serve.served.addons, super::AddonDirArgs::default(), "no add-on folders");
        assert_eq!(serve.api, ember_server::Apis::default(), "every API by default");
        let serve = parse(&["ember", "serve", "--api", "ember"]);
        assert_eq!(
            serve.api,
            ember_server::Apis {
                ember: true,
                a1111: false,
                openai: false
            }
        );
        let serve = parse(&["ember", "serve", "--api", "a1111,openai"]);
        assert!(!serve.api.ember && serve.api.a1111 && serve.api.openai);
        assert!(Cli::try_parse_from(["ember", "serve", "--api", "comfy"]).is_err());
        assert!(Cli::try_parse_from(["ember", "serve", "--api", ""]).is_err());
        let serve = parse(&[
            "ember",
            "serve",
            "--model",
            "x.safetensors",
            "--device",
            "cpu",
            "--dtype",
            "f32",
        ]);
        assert_eq!(serve.served.model.as_deref(), Some("x.safetensors"));
        assert_eq!(
            (serve.served.device.as_str(), serve.served.dtype.as_str()),
            ("cpu", "f32")
        );
        assert_eq!(serve.served.models, None);
        let serve = parse(&[
            "ember",
            "serve",
            "--lora-dir",
            "/loras/a",
            "--lora_dir",
            "/loras/b",
            "--embedding-dir",
            "/embeddings",
        ]);
        let paths = |v: &[&str]| v.iter().map(std::path::PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            serve.served.addons.lora_dir,
            paths(&["/loras/a", "/loras/b"]),
            "repeatable, both spellings"
        );
        assert_eq!(serve.served.addons.embedding_dir, paths(&["/embeddings"]));
    }
}
