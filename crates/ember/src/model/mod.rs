//! Model loading: finds the format of a path (diffusers folder, single-file LDM `.safetensors`,
//! `.ckpt`/`.pt`, Hugging Face repo id), maps its tensors to diffusers' names and infers the configuration; and the
//! tiny autoencoder's files (`taesd.rs`); `inspect.rs` reports on a model file (and converts a `.ckpt`) without
//! building its networks.
//!
//! The result is `VarBuilder`s that serve tensors lazily under diffusers/transformers names, converted to the
//! requested dtype, plus the [`ModelSpec`] (family, configurations, schedule) decided once in `family.rs`.

mod detect;
mod diffusers;
pub mod family;
mod hub;
mod infer_config;
pub mod inspect;
mod ldm_keys;
pub mod patch;
mod sha256;
mod single_file;
mod taesd;
mod weights;

pub use hub::DEFAULT_REPO_ID;

use crate::nn::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use detect::Spec;
pub use family::{Family, ModelSpec};
pub(crate) use ldm_keys::unet as ldm_keys_unet;
pub use patch::{PatchTerm, PatchableWeights};
use std::path::{Path, PathBuf};
pub use taesd::load_tiny_autoencoder;
pub(crate) use weights::ckpt_dtype as ckpt_tensor_dtype;
use weights::{Source, WeightMap};

/// How a model was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A diffusers folder (local, or downloaded from the Hugging Face hub).
    Diffusers,
    /// A single-file LDM checkpoint in `.safetensors`.
    Safetensors,
    /// A single-file LDM checkpoint written by `torch.save` (`.ckpt`, `.pt`).
    Ckpt,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Diffusers => "diffusers",
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Ckpt => "ckpt",
        }
    }
}

/// A loaded model: weights under diffusers' names (read on demand), what the model is, and provenance.
pub struct ModelWeights {
    /// One per text encoder of [`ModelSpec::text_encoders`], in that order.
    pub text_encoders: Vec<VarBuilder<'static>>,
    pub unet: VarBuilder<'static>,
    pub vae: VarBuilder<'static>,
    /// The family and everything derived from it: configurations, schedule, defaults.
    pub spec: ModelSpec,
    /// Each text encoder's own tokenizer files (`vocab.json`, `merges.txt`), when the model ships them.
    pub tokenizer_dirs: Vec<Option<PathBuf>>,
    pub format: ModelFormat,
    /// Short name for metadata: the file stem, folder name or repo id.
    pub name: String,
    /// First 10 hex digits of the file's SHA-256 (the "AutoV2" model hash); `None` for folders.
    pub hash: Option<String>,
    /// The file or folder the weights are read from.
    pub source: PathBuf,
    /// The UNet's and text encoders' weights (the ones [`Self::unet`] and [`Self::text_encoders`] read), for LoRAs
    /// to patch.
    pub patchable: Patchable,
}

/// The components a LoRA can change.
#[derive(Clone)]
pub struct Patchable {
    pub unet: PatchableWeights,
    /// One per text encoder, in [`ModelSpec::text_encoders`]' order.
    pub text_encoders: Vec<PatchableWeights>,
}

/// What each format's loader produces: the weights, the configurations their shapes (or config files) give, and
/// what else the files say ([`family::Hints`]) for [`family::describe`].
pub(crate) struct Components {
    pub unet: WeightMap,
    pub vae: WeightMap,
    pub text_encoders: Vec<WeightMap>,
    pub unet_config: UNetConfig,
    pub vae_config: VaeConfig,
    pub clip_configs: Vec<ClipTextConfig>,
    pub tokenizer_dirs: Vec<Option<PathBuf>>,
    pub hints: family::Hints,
}

/// Loads a model from a diffusers folder, a single `.safetensors`/`.ckpt` file, or a Hugging Face repo id
/// (with the `hub` feature). Tensors are converted to `dtype` and moved to `device` when the networks ask.
pub fn load_model(spec: &str, device: &Device, dtype: DType) -> Result<ModelWeights> {
    let (path, format, parts, name) = match detect::detect(spec)? {
        Spec::Diffusers(dir) => {
            let parts = diffusers::load(&dir, dtype)?;
            (dir, ModelFormat::Diffusers, parts, None)
        }
        Spec::RepoId(id) => {
            let dir = hub::download(&id)?;
            let parts = diffusers::load(&dir, dtype)?;
            (dir, ModelFormat::Diffusers, parts, Some(id))
        }
        Spec::Safetensors(file) => {
            let source = Source::Safetensors(weights::open_safetensors(&file)?);
            let parts = single_file::load(&file, source)?;
            (file, ModelFormat::Safetensors, parts, None)
        }
        Spec::Ckpt(file) => {
            let ckpt = ember_pickle::Checkpoint::open(&file).map_err(|e| ckpt_error(&file, e))?;
            let parts = single_file::load(&file, Source::Ckpt(ckpt))?;
            (file, ModelFormat::Ckpt, parts, None)
        }
    };
    let hash = match format {
        ModelFormat::Diffusers => None,
        _ => {
            let hex =
                sha256::file_hex_cached(&path).map_err(|e| Error::model(&path, format!("cannot read it: {e}")))?;
            Some(hex[..10].to_string())
        }
    };
    let spec = family::describe(
        &path,
        parts.unet_config,
        parts.vae_config,
        parts.clip_configs,
        &parts.hints,
    )?;
    let patchable = Patchable {
        unet: PatchableWeights::new(parts.unet),
        text_encoders: parts.text_encoders.into_iter().map(PatchableWeights::new).collect(),
    };
    Ok(ModelWeights {
        text_encoders: patchable
            .text_encoders
            .iter()
            .map(|w| w.var_builder(dtype, device))
            .collect(),
        unet: patchable.unet.var_builder(dtype, device),
        vae: VarBuilder::from_backend(Box::new(parts.vae), dtype, device.clone()),
        patchable,
        spec,
        tokenizer_dirs: parts.tokenizer_dirs,
        format,
        name: name.unwrap_or_else(|| short_name(&path)),
        hash,
        source: path,
    })
}

fn short_name(path: &Path) -> String {
    let p = if path.is_dir() {
        path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    };
    let name = if p.is_dir() { p.file_name() } else { p.file_stem() };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn ckpt_error(path: &Path, e: ember_pickle::Error) -> Error {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The pickle reader's own advice ("convert it") would send people to torch, which runs the code; Ember's
    // converter refuses the same file, so the only safe way out is another copy of the model.
    let why = match &e {
        ember_pickle::Error::UnsafeGlobal(global) => format!("its pickle calls `{global}`, which is not a tensor"),
        ember_pickle::Error::UnsafeOpcode(op) => {
            format!("its pickle uses the {op} opcode, which builds arbitrary objects")
        }
        _ => return Error::model(path, e.to_string()),
    };
    Error::model(
        path,
        format!(
            "refusing to load {file}: {why}; opening it with torch (or converting it with a tool that uses torch) \
             could run code on this machine. Ember ran nothing and `ember models convert` refuses it too: get the \
             model as .safetensors from a source you trust"
        ),
    )
}
