//! Decides what a model argument names: a diffusers folder, a single `.safetensors` file, a `.ckpt`/`.pt`
//! file, or a Hugging Face repo id. Files are recognised by content, so a misnamed file still loads.

use super::hub;
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What `load_model`'s argument refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    Diffusers(PathBuf),
    Safetensors(PathBuf),
    Ckpt(PathBuf),
    RepoId(String),
}

pub(crate) fn detect(spec: &str) -> Result<Spec> {
    if spec.trim().is_empty() {
        return Err(Error::model(
            "",
            "no model given; pass a .safetensors/.ckpt file, a diffusers folder or a Hugging Face repo id",
        ));
    }
    let path = Path::new(spec);
    if path.is_dir() {
        if path.join("model_index.json").is_file() {
            return Ok(Spec::Diffusers(path.to_path_buf()));
        }
        return Err(Error::model(
            path,
            "this folder has no model_index.json, so it is not a diffusers model folder; pass the folder that \
             contains model_index.json, or a .safetensors/.ckpt file",
        ));
    }
    if path.is_file() {
        if path.file_name().is_some_and(|n| n == "model_index.json") {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            return Ok(Spec::Diffusers(dir.to_path_buf()));
        }
        return sniff(path);
    }
    if hub::looks_like_repo_id(spec) {
        return Ok(Spec::RepoId(spec.to_string()));
    }
    Err(Error::model(
        path,
        "no such file or folder; pass a .safetensors/.ckpt file, a diffusers folder or a Hugging Face repo id \
         (owner/name)",
    ))
}

/// Looks at the first bytes: zip (torch.save), safetensors (8-byte little-endian header size, then JSON).
fn sniff(path: &Path) -> Result<Spec> {
    let mut head = [0u8; 9];
    let mut n = 0;
    let mut f = std::fs::File::open(path).map_err(|e| Error::model(path, format!("cannot open it: {e}")))?;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .map_err(|e| Error::model(path, format!("cannot read it: {e}")))?
        {
            0 => break,
            k => n += k,
        }
    }
    if n == 0 {
        return Err(Error::model(path, "the file is empty; download it again"));
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Spec::Ckpt(path.to_path_buf()));
    }
    if n == 9 && head[8] == b'{' {
        return Ok(Spec::Safetensors(path.to_path_buf()));
    }
    // Unrecognised content: trust the extension so that the format's own reader explains what is wrong.
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("safetensors") => Ok(Spec::Safetensors(path.to_path_buf())),
        Some("ckpt" | "pt" | "pth" | "bin") => Ok(Spec::Ckpt(path.to_path_buf())),
        _ => Err(Error::model(
            path,
            "not a model file Ember knows (expected .safetensors, or a .ckpt/.pt written by torch.save)",
        )),
    }
}
