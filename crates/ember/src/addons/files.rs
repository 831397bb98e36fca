//! Reading an add-on file (LoRA or embedding): every tensor of a `.safetensors` file (with its metadata), or of a
//! `.pt`/`.ckpt`/`.bin` written by `torch.save` through ember-pickle's restricted reader (parsed, never run: a file
//! whose pickle would run code is refused like a checkpoint). And the short hashes A1111 writes into image metadata.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// An add-on file's tensors, in file order, and its safetensors metadata (empty for pickles).
pub(crate) struct TensorFile {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
}

/// Largest add-on file read (a full-rank LyCORIS for SDXL is ~2 GB).
const MAX_ADDON_BYTES: u64 = 4 << 30;

pub(crate) fn read_tensor_file(path: &Path, what: &str) -> Result<TensorFile> {
    let fail = |message: String| Error::addon(path, message);
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read the {what}: {e}")))?;
    if !meta.is_file() {
        return Err(fail(format!("not a file; give the path of a {what} file")));
    }
    if meta.len() > MAX_ADDON_BYTES {
        return Err(fail(format!(
            "{} bytes is more than any {what} file should be ({MAX_ADDON_BYTES})",
            meta.len()
        )));
    }
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "safetensors" => read_safetensors(path, what),
        "pt" | "ckpt" | "bin" | "pth" => read_pickle(path, what),
        _ => Err(fail(format!(
            "unknown {what} file type `.{extension}`; Ember reads .safetensors and torch .pt/.ckpt/.bin files"
        ))),
    }
}

fn read_safetensors(path: &Path, what: &str) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::addon(path, format!("cannot read the {what}: {e}")))?;
    let corrupt = |e: &dyn std::fmt::Display| {
        Error::addon(
            path,
            format!("not a valid .safetensors file ({e}); it may be truncated or corrupt, download it again"),
        )
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&e))?;
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = file.tensor(&name).map_err(|e| corrupt(&e))?;
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
            .map_err(|e| Error::addon(path, format!("tensor `{name}`: {e}")))?;
        tensors.push((name, t));
    }
    Ok(TensorFile { tensors, metadata })
}

fn read_pickle(path: &Path, what: &str) -> Result<TensorFile> {
    let ckpt = ember_pickle::Checkpoint::open(path).map_err(|e| match e {
        ember_pickle::Error::UnsafeGlobal(_) | ember_pickle::Error::UnsafeOpcode(_) => {
            Error::addon(path, format!("refusing to load this {what}: {e}"))
        }
        e => Error::addon(path, format!("cannot read this {what}: {e}")),
    })?;
    let mut tensors = Vec::with_capacity(ckpt.tensors().len());
    for (name, info) in ckpt.tensors() {
        let dtype = crate::model::ckpt_tensor_dtype(info.dtype).ok_or_else(|| {
            Error::addon(
                path,
                format!("tensor `{name}` has dtype {:?}, which Ember cannot use", info.dtype),
            )
        })?;
        let bytes = ckpt
            .tensor_bytes(info)
            .map_err(|e| Error::addon(path, format!("tensor `{name}`: {e}")))?;
        let t = Tensor::from_raw_buffer(&bytes, dtype, &info.shape, &Device::Cpu)
            .map_err(|e| Error::addon(path, format!("tensor `{name}`: {e}")))?;
        tensors.push((name.clone(), t));
    }
    Ok(TensorFile {
        tensors,
        metadata: HashMap::new(),
    })
}

/// The hash A1111 records for an add-on: the first 12 hex digits of the SHA-256 of the whole file, or — for a LoRA
/// in `.safetensors` (`addnet = true`) — of its tensor data after the header (the "AddNet" hash kohya's tools
/// write, so that editing the metadata keeps the hash).
pub(crate) fn short_hash(path: &Path, addnet: bool) -> Result<String> {
    let fail = |e: std::io::Error| Error::addon(path, format!("cannot read it to hash it: {e}"));
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let is_safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if addnet && is_safetensors {
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(fail)?;
        let header = u64::from_le_bytes(len);
        std::io::copy(&mut (&mut file).take(header), &mut std::io::sink()).map_err(fail)?;
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(fail)?;
    Ok(format!("{:x}", hasher.finalize())[..12].to_string())
}
