//! What `ember models` asks of a model file without building any network: [`inspect`] (format, family, stored
//! dtypes and parameter counts per component, from the loaders' tensor maps), [`file_hashes`] (the hashes A1111 and
//! Civitai show) and [`convert_ckpt`] (a `.ckpt` rewritten as `.safetensors` through the restricted pickle reader).

use super::detect::{self, Spec};
use super::weights::{Source, WeightMap};
use super::{ckpt_error, diffusers, sha256, single_file, weights, Components, ModelFormat, ModelSpec};
use crate::{Error, Result};
use candle_core::DType;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One network of a model as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentReport {
    /// `UNet`, `VAE`, `text encoder` (`text encoder 2` for SDXL's second).
    pub name: String,
    pub tensors: usize,
    pub parameters: u64,
    /// The stored dtypes (`f16`, `f32`, …) with the parameters held in each.
    pub dtypes: BTreeMap<String, u64>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
pub struct ModelReport {
    pub path: PathBuf,
    pub format: ModelFormat,
    /// The family and everything decided from it, exactly as loading the model decides it.
    pub spec: ModelSpec,
    /// UNet, VAE, then the text encoder(s).
    pub components: Vec<ComponentReport>,
    /// Size of the file (of all weight files read, for a folder).
    pub bytes: u64,
}

/// Reads what a local model (diffusers folder, `.safetensors`, `.ckpt`) is, as [`super::load_model`] would, without
/// reading any weight. A Hugging Face repo id is refused: inspect its downloaded folder instead.
pub fn inspect(spec: &str) -> Result<ModelReport> {
    let (path, format, parts) = match detect::detect(spec)? {
        Spec::Diffusers(dir) => {
            let parts = diffusers::load(&dir, DType::F32)?;
            (dir, ModelFormat::Diffusers, parts)
        }
        Spec::Safetensors(file) => {
            let parts = single_file::load(&file, Source::Safetensors(weights::open_safetensors(&file)?))?;
            (file, ModelFormat::Safetensors, parts)
        }
        Spec::Ckpt(file) => {
            let ckpt = ember_pickle::Checkpoint::open(&file).map_err(|e| ckpt_error(&file, e))?;
            let parts = single_file::load(&file, Source::Ckpt(ckpt))?;
            (file, ModelFormat::Ckpt, parts)
        }
        Spec::RepoId(id) => {
            return Err(Error::model(
                Path::new(&id),
                "no such local file or folder (inspect reads local models only; a repo id is downloaded by \
                 `ember generate --model ID`, then inspect its folder)",
            ))
        }
    };
    let Components {
        unet,
        vae,
        text_encoders,
        unet_config,
        vae_config,
        clip_configs,
        hints,
        ..
    } = parts;
    let mut components = vec![component("UNet", &unet)?, component("VAE", &vae)?];
    for (i, map) in text_encoders.iter().enumerate() {
        let name = if i == 0 {
            "text encoder".to_string()
        } else {
            format!("text encoder {}", i + 1)
        };
        components.push(component(&name, map)?);
    }
    let bytes = stored_bytes(&path);
    let spec = super::family::describe(&path, unet_config, vae_config, clip_configs, &hints)?;
    Ok(ModelReport {
        path,
        format,
        spec,
        components,
        bytes,
    })
}

/// Counts one component's parameters by stored dtype. OpenCLIP's fused q/k/v appear as three row ranges of one
/// stored tensor, so counting the ranges counts each stored value once.
fn component(name: &str, map: &WeightMap) -> Result<ComponentReport> {
    let mut dtypes: BTreeMap<String, u64> = BTreeMap::new();
    let mut parameters = 0u64;
    for entry in map.entries.values() {
        let count: u64 = entry.shape.iter().map(|&d| d as u64).product();
        let dtype = match entry.source.as_ref() {
            Source::Safetensors(st) => {
                let view = st
                    .get(&entry.key)
                    .map_err(|e| Error::model(&map.path, format!("tensor `{}`: {e}", entry.key)))?;
                format!("{:?}", view.dtype())
            }
            Source::Ckpt(ckpt) => ckpt
                .tensors()
                .iter()
                .find(|(n, _)| n == &entry.key)
                .map(|(_, info)| format!("{:?}", info.dtype))
                .unwrap_or_else(|| "unknown".into()),
        };
        *dtypes.entry(dtype.to_ascii_lowercase()).or_default() += count;
        parameters += count;
    }
    Ok(ComponentReport {
        name: name.to_string(),
        tensors: map.entries.len(),
        parameters,
        dtypes,
    })
}

/// The size of a single file, or of the weight files (`.safetensors`, `.bin`, `.ckpt`) under a folder.
fn stored_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(p),
                Ok(t) if t.is_file() => {
                    let weights = p
                        .extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "safetensors" | "bin" | "ckpt" | "pt"));
                    if weights {
                        total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
                _ => {}
            }
        }
    }
    total
}

/// The hashes model sites and A1111 show for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    /// SHA-256 of the whole file, lower-case hex (Civitai's "SHA256").
    pub sha256: String,
    /// Its first 10 hex digits: A1111's "Model hash" since late 2022 (Civitai's "AutoV2"); Ember writes it in PNGs.
    pub autov2: String,
    /// A1111's old "model hash" (Civitai's "AutoV1"): SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits.
    pub old_model_hash: String,
}

/// Hashes a file (the whole-file SHA-256 is remembered in the hash cache that loading uses).
pub fn file_hashes(path: &Path) -> Result<FileHashes> {
    let unreadable = |e: std::io::Error| Error::model(path, format!("cannot read it: {e}"));
    if !path.is_file() {
        return Err(Error::model(path, "no such file (hashes are of single model files)"));
    }
    let sha256 = sha256::file_hex_cached(path).map_err(unreadable)?;
    let old_model_hash = old_model_hash(path).map_err(unreadable)?;
    Ok(FileHashes {
        autov2: sha256[..10].to_string(),
        sha256,
        old_model_hash,
    })
}

/// A1111's `model_hash`: `seek(0x100000)`, `read(0x10000)`, SHA-256, 8 hex digits (a file shorter than 1 MiB
/// hashes the empty string, as Python's read past the end returns nothing).
fn old_model_hash(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(0x100000))?;
    let mut chunk = Vec::with_capacity(0x10000);
    file.take(0x10000).read_to_end(&mut chunk)?;
    Ok(format!("{:x}", Sha256::digest(&chunk))[..8].to_string())
}

/// What [`convert_ckpt`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub tensors: usize,
    pub bytes: u64,
}

/// Rewrites a `torch.save` checkpoint as `.safetensors` with the same tensor names, shapes, dtypes and values. The
/// pickle goes through ember-pickle's restricted reader, so a checkpoint that would run code is refused before
/// anything is written. The file is written under a temporary name next to `output` and renamed at the end: a
/// failure leaves no half file. An existing `output` is replaced only with `overwrite`.
pub fn convert_ckpt(input: &Path, output: &Path, overwrite: bool) -> Result<Converted> {
    if !overwrite && output.exists() {
        return Err(file_error(output, "it already exists; pass --force to replace it"));
    }
    if let Ok(true) = same_file(input, output) {
        return Err(file_error(output, "the output is the input file; name another output"));
    }
    let ckpt = ember_pickle::Checkpoint::open(input).map_err(|e| ckpt_error(input, e))?;
    if ckpt.tensors().is_empty() {
        return Err(Error::model(
            input,
            "the checkpoint holds no tensors; nothing was written",
        ));
    }
    let failure: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut views = Vec::with_capacity(ckpt.tensors().len());
    for (name, info) in ckpt.tensors() {
        views.push((
            name.clone(),
            LazyTensor {
                ckpt: &ckpt,
                name,
                info,
                dtype: safetensors_dtype(info.dtype),
                failure: &failure,
            },
        ));
    }
    let tmp = temporary_name(output);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let written = safetensors::serialize_to_file(views, Some(metadata), &tmp);
    let failed = failure.lock().ok().and_then(|mut f| f.take());
    let write_error = |e: std::io::Error| Error::Write {
        path: output.to_path_buf(),
        source: e,
    };
    let outcome = match (written, failed) {
        (_, Some(reason)) => Err(Error::model(input, format!("{reason}; nothing was written"))),
        (Err(e), None) => Err(write_error(std::io::Error::other(e))),
        // The temporary file is private (0600); the result gets the input's permissions, as a copy would.
        (Ok(()), None) => std::fs::metadata(input)
            .and_then(|m| std::fs::set_permissions(&tmp, m.permissions()))
            .and_then(|()| std::fs::rename(&tmp, output))
            .map_err(write_error),
    };
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Converted {
        tensors: ckpt.tensors().len(),
        bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    })
}

/// An error about a file that is not a model being loaded (the converter's output).
fn file_error(path: &Path, message: &str) -> Error {
    Error::Addon {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn same_file(a: &Path, b: &Path) -> std::io::Result<bool> {
    Ok(a.canonicalize()? == b.canonicalize()?)
}

/// `.NAME.partial-PID` next to the output (same folder, so the final rename does not cross file systems).
fn temporary_name(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn safetensors_dtype(d: ember_pickle::StorageDtype) -> safetensors::Dtype {
    use ember_pickle::StorageDtype as S;
    use safetensors::Dtype as D;
    match d {
        S::F64 => D::F64,
        S::F32 => D::F32,
        S::F16 => D::F16,
        S::BF16 => D::BF16,
        S::I64 => D::I64,
        S::I32 => D::I32,
        S::I16 => D::I16,
        S::I8 => D::I8,
        S::U8 => D::U8,
        S::Bool => D::BOOL,
    }
}

/// One checkpoint tensor, read only when the writer reaches it (a model is gigabytes; holding all of it at once
/// would double the memory needed). `View::data` cannot fail, so a read error is recorded in `failure` and the
/// tensor written as zeros; [`convert_ckpt`] then deletes the temporary file.
struct LazyTensor<'a> {
    ckpt: &'a ember_pickle::Checkpoint,
    name: &'a str,
    info: &'a ember_pickle::TensorInfo,
    dtype: safetensors::Dtype,
    failure: &'a std::sync::Mutex<Option<String>>,
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.info.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.ckpt.tensor_bytes(self.info) {
            Ok(bytes) if bytes.len() == self.data_len() => bytes.into(),
            outcome => {
                let reason = match outcome {
                    Err(e) => format!("tensor {}: {e}", self.name),
                    Ok(bytes) => format!(
                        "tensor {}: {} bytes, expected {}",
                        self.name,
                        bytes.len(),
                        self.data_len()
                    ),
                };
                if let Ok(mut failure) = self.failure.lock() {
                    failure.get_or_insert(reason);
                }
                vec![0u8; self.data_len()].into()
            }
        }
    }

    fn data_len(&self) -> usize {
        self.info.numel() * self.info.dtype.size_in_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A1111's formula, written out with Python's semantics: a file shorter than 1 MiB hashes b"".
    #[test]
    fn old_model_hash_reads_64_kib_at_1_mib() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("small");
        std::fs::write(&small, b"abc").expect("write");
        assert_eq!(
            old_model_hash(&small).expect("hash"),
            format!("{:x}", Sha256::digest(b""))[..8]
        );
        let big = dir.path().join("big");
        let bytes: Vec<u8> = (0..0x120000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &bytes).expect("write");
        let want = format!("{:x}", Sha256::digest(&bytes[0x100000..0x110000]));
        assert_eq!(old_model_hash(&big).expect("hash"), want[..8]);
    }
}
