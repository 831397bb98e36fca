//! `ember models`: list the config file's named models, inspect a model file, convert a `.ckpt` to `.safetensors`
//! (through the restricted pickle reader) and print a file's hashes. The engine does the work
//! (`ember::model::inspect`); this file only prints.

use crate::settings::Settings;
use anyhow::Context;
use clap::{Args, Subcommand};
use ember::model::inspect::{self, FileHashes, ModelReport};
use ember::model::ModelFormat;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The named models of the config file (`[models.NAME]`): name, path, description, whether the path exists.
    List {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What a model is, read from its files without building the networks: format, family, stored dtypes,
    /// parameters per component, hashes, and how Ember would run it.
    Inspect {
        /// A .safetensors or .ckpt file, or a diffusers folder.
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a .ckpt (or .pt/.bin written by torch.save) as .safetensors with the same tensors. The pickle is read
    /// by Ember's restricted reader: a checkpoint that would run code is refused and nothing is written.
    Convert {
        /// The checkpoint to read.
        file: PathBuf,
        /// The .safetensors file to write [default: FILE with the extension .safetensors].
        #[arg(long, value_name = "OUT")]
        to: Option<PathBuf>,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// The hashes A1111 and Civitai show for a file: SHA-256, AutoV2 (A1111's "Model hash", its first 10 hex
    /// digits, which Ember writes in PNGs) and AutoV1 (A1111's old 8-digit "model hash").
    Hash {
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `println!` that does not panic when the reader went away (`ember models inspect … | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    match &args.command {
        ModelsCommand::List { json } => list(*json),
        ModelsCommand::Inspect { file, json } => inspect_file(file, *json),
        ModelsCommand::Convert { file, to, force } => convert(file, to.as_deref(), *force),
        ModelsCommand::Hash { file, json } => hash(file, *json),
    }
}

fn list(as_json: bool) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    if as_json {
        let models: Vec<_> = settings
            .models
            .iter()
            .map(|(name, entry)| {
                json!({
                    "name": name,
                    "path": entry.path,
                    "description": entry.description,
                    "exists": Path::new(&entry.path).exists(),
                    "dtype": entry.dtype,
                    "device": entry.device,
                    "defaults": entry.defaults_text(),
                })
            })
            .collect();
        let out = json!({
            "config": settings.path,
            "files": settings.files,
            "default_model": settings.model,
            "models": models,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    eprintln!("config file: {}", settings.describe_path());
    if let Some(model) = &settings.model {
        outln!("default model: {model}");
    }
    if settings.models.is_empty() {
        outln!(
            "no named models; add tables like [models.sd15] with path = \"/models/sd15.safetensors\" to {}",
            settings.describe_path()
        );
        return Ok(());
    }
    for (name, entry) in &settings.models {
        let state = if Path::new(&entry.path).exists() {
            "ok"
        } else if entry.path.contains('/') && !entry.path.starts_with(['/', '.', '~']) {
            // owner/name with no such local path: a Hugging Face repo id, downloaded on first use.
            "repo id"
        } else {
            "MISSING"
        };
        let description = entry.description.as_deref().unwrap_or("");
        outln!("{name:<16} {state:<8} {}  {description}", entry.path);
    }
    Ok(())
}

fn inspect_file(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let spec = file.to_str().context("the model path is not valid UTF-8; rename it")?;
    let report = inspect::inspect(spec)?;
    let hashes = match report.format {
        ModelFormat::Diffusers => None,
        _ => Some(inspect::file_hashes(&report.path)?),
    };
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&inspect_json(&report, hashes.as_ref()))?
        );
    } else {
        outln!("{}", inspect_text(&report, hashes.as_ref()).trim_end());
    }
    Ok(())
}

fn format_name(format: ModelFormat) -> &'static str {
    match format {
        ModelFormat::Diffusers => "diffusers folder",
        ModelFormat::Safetensors => "single-file safetensors",
        ModelFormat::Ckpt => "single-file ckpt (torch.save pickle)",
    }
}

/// The family with its variant, as people name models: `SD 1.x inpainting`, `SDXL LCM`.
fn family_name(report: &ModelReport) -> String {
    let spec = &report.spec;
    let mut name = spec.family.name().to_string();
    if spec.inpainting() {
        name.push_str(" inpainting");
    }
    if spec.guidance_embedded() {
        name.push_str(" LCM");
    }
    name
}

/// What `ember generate --model FILE` would do with it.
fn advice(report: &ModelReport) -> String {
    let spec = &report.spec;
    let mut text = format!(
        "loads as {} ({}, {} spacing); defaults {}",
        family_name(report),
        spec.scheduler.prediction_type,
        spec.scheduler.spacing,
        crate::runner::defaults_text(spec.defaults)
    );
    if report.format == ModelFormat::Ckpt {
        let out = report.path.with_extension("safetensors");
        text.push_str(&format!(
            ". A .ckpt is a pickle: Ember reads it with a restricted reader, but `ember models convert {} --to {}` \
             gives a file that loads faster (memory-mapped) and is safe for anyone to open",
            report.path.display(),
            out.display()
        ));
    }
    text
}

fn inspect_json(report: &ModelReport, hashes: Option<&FileHashes>) -> serde_json::Value {
    let spec = &report.spec;
    let components: Vec<_> = report
        .components
        .iter()
        .map(|c| json!({"name": c.name, "tensors": c.tensors, "parameters": c.parameters, "dtypes": c.dtypes}))
        .collect();
    json!({
        "path": report.path,
        "format": report.format.as_str(),
        "family": spec.family.id(),
        "family_name": family_name(report),
        "inpainting": spec.inpainting(),
        "lcm": spec.guidance_embedded(),
        "prediction_type": spec.scheduler.prediction_type.to_string(),
        "timestep_spacing": spec.scheduler.spacing.to_string(),
        "native_size": spec.native_size(),
        "defaults": {
            "steps": spec.defaults.steps,
            "cfg_scale": spec.defaults.cfg_scale,
            "sampler": spec.defaults.sampler.to_string(),
            "width": spec.defaults.size,
            "height": spec.defaults.size,
        },
        "components": components,
        "parameters": report.components.iter().map(|c| c.parameters).sum::<u64>(),
        "bytes": report.bytes,
        "sha256": hashes.map(|h| &h.sha256),
        "autov2": hashes.map(|h| &h.autov2),
        "autov1": hashes.map(|h| &h.old_model_hash),
        "notes": spec.notes,
        "ember": advice(report),
    })
}

fn inspect_text(report: &ModelReport, hashes: Option<&FileHashes>) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<11} {value}\n"));
    line("path:", report.path.display().to_string());
    line(
        "format:",
        format!("{} ({})", format_name(report.format), human_bytes(report.bytes)),
    );
    line(
        "family:",
        format!(
            "{} ({}, {} spacing, native {}×{})",
            family_name(report),
            report.spec.scheduler.prediction_type,
            report.spec.scheduler.spacing,
            report.spec.native_size(),
            report.spec.native_size()
        ),
    );
    for c in &report.components {
        let dtypes: Vec<String> = c.dtypes.keys().cloned().collect();
        line(
            &format!("{}:", c.name),
            format!(
                "{} parameters in {} tensors, stored as {}",
                grouped(c.parameters),
                c.tensors,
                dtypes.join("+")
            ),
        );
    }
    line(
        "total:",
        format!(
            "{} parameters",
            grouped(report.components.iter().map(|c| c.parameters).sum())
        ),
    );
    if let Some(h) = hashes {
        line("sha256:", h.sha256.clone());
        line(
            "hashes:",
            format!("AutoV2 {} (A1111's model hash), AutoV1 {}", h.autov2, h.old_model_hash),
        );
    }
    for note in &report.spec.notes {
        line("note:", note.clone());
    }
    line("ember:", advice(report));
    out
}

/// 123456789 → `123,456,789`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{n} bytes"),
    }
}

fn convert(file: &Path, to: Option<&Path>, force: bool) -> anyhow::Result<()> {
    let output = match to {
        Some(to) => to.to_path_buf(),
        None => file.with_extension("safetensors"),
    };
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        crate::term::warning(format!("{} does not end in .safetensors", output.display()));
    }
    let done = inspect::convert_ckpt(file, &output, force)?;
    outln!(
        "wrote {} ({} tensors, {})",
        output.display(),
        done.tensors,
        human_bytes(done.bytes)
    );
    Ok(())
}

fn hash(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let h = inspect::file_hashes(file)?;
    if as_json {
        let out = json!({"path": file, "sha256": h.sha256, "autov2": h.autov2, "autov1": h.old_model_hash});
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("sha256  {}", h.sha256);
        outln!(
            "AutoV2  {}  (A1111's \"Model hash\"; Ember writes it in PNGs)",
            h.autov2
        );
        outln!("AutoV1  {}  (A1111's old \"model hash\")", h.old_model_hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(123456789), "123,456,789");
    }
}
