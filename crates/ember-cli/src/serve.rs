//! `ember serve`: the web UI and HTTP API (crate `ember-server`), with the same model flags as `ember generate`,
//! `--models FILE`: the REPL's models file, whose named models jobs may ask for, and the LoRA and embedding folders.

use crate::args::{ServeArgs, DEFAULT_MODEL};
use crate::repl::config::load_models;
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

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let models = match &args.models {
        Some(file) => named_models(file)?,
        None => Vec::new(),
    };
    // `--model`, else the first named model, else the default repo.
    let model = match (&args.model, models.first()) {
        (Some(model), _) => model.clone(),
        (None, Some(first)) => first.name.clone(),
        (None, None) => DEFAULT_MODEL.to_string(),
    };
    ember_server::serve_blocking(ember_server::Config {
        host: args.host.clone(),
        port: args.port,
        data_dir: args.data_dir.clone(),
        model,
        models,
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        allowed_hosts: args.allowed_hosts.clone(),
        max_megapixels: args.max_pixels,
        work_budget: args.work_budget,
        lora_dirs: args.addons.lora_dir.clone(),
        embedding_dirs: args.addons.embedding_dir.clone(),
        apis: args.api,
    })
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
        assert_eq!(serve.models.as_deref(), Some(std::path::Path::new("m.toml")));
        assert_eq!(serve.model, None, "the first named model is loaded at start");
        assert_eq!((serve.device.as_str(), serve.dtype.as_str()), ("auto", "auto"));
        assert_eq!(serve.addons, super::AddonDirArgs::default(), "no add-on folders");
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
        assert_eq!(serve.model.as_deref(), Some("x.safetensors"));
        assert_eq!((serve.device.as_str(), serve.dtype.as_str()), ("cpu", "f32"));
        assert_eq!(serve.models, None);
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
            serve.addons.lora_dir,
            paths(&["/loras/a", "/loras/b"]),
            "repeatable, both spellings"
        );
        assert_eq!(serve.addons.embedding_dir, paths(&["/embeddings"]));
    }
}
