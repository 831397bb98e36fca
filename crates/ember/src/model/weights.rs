//! A `VarBuilder` backend that serves tensors under diffusers' names from whatever file holds them
//! (memory-mapped `.safetensors` or a `.ckpt` read through ember-pickle), renaming and reshaping lazily.

use crate::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An opened weight file.
pub(crate) enum Source {
    Safetensors(MmapedSafetensors),
    Ckpt(ember_pickle::Checkpoint),
}

/// A fix applied when a tensor is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    None,
    /// LDM's VAE attention uses 1×1 convolutions (`[C, C, 1, 1]`); diffusers uses linear layers (`[C, C]`).
    ConvToLinear,
}

/// Where one diffusers-named tensor comes from.
#[derive(Clone)]
pub(crate) struct Entry {
    pub source: Arc<Source>,
    /// The tensor's name inside its file.
    pub key: String,
    /// Shape after `transform`.
    pub shape: Vec<usize>,
    pub transform: Transform,
}

/// One component's tensors (UNet, VAE or text encoder), by diffusers name.
pub(crate) struct WeightMap {
    /// File or folder named in errors.
    pub path: PathBuf,
    pub entries: HashMap<String, Entry>,
}

impl WeightMap {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            entries: HashMap::new(),
        }
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Like `shape`, but a missing tensor is an error naming the file.
    pub fn require(&self, name: &str) -> Result<&[usize]> {
        self.shape(name).ok_or_else(|| {
            Error::model(
                &self.path,
                format!("the tensor `{name}` is missing; the file is incomplete or not a Stable Diffusion 1.x model"),
            )
        })
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())?;
        let t = match entry.source.as_ref() {
            Source::Safetensors(st) => st.load(&entry.key, &Device::Cpu)?,
            Source::Ckpt(ckpt) => load_ckpt_tensor(ckpt, &entry.key)?,
        };
        let t = match entry.transform {
            Transform::ConvToLinear if t.rank() == 4 => t.reshape(entry.shape.as_slice())?,
            _ => t,
        };
        // Convert on the CPU first: uploading f16 then converting would need both copies on the device.
        t.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for WeightMap {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name} in {}", self.path.display()),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Reads one tensor of a `.ckpt` into a CPU tensor of its stored dtype.
fn load_ckpt_tensor(ckpt: &ember_pickle::Checkpoint, key: &str) -> candle_core::Result<Tensor> {
    let info = ckpt
        .tensors()
        .iter()
        .find(|(n, _)| n == key)
        .map(|(_, i)| i)
        .ok_or_else(|| candle_core::Error::CannotFindTensor { path: key.to_string() }.bt())?;
    let dtype = ckpt_dtype(info.dtype).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "tensor {key} has dtype {:?}, which Ember cannot use",
            info.dtype
        ))
    })?;
    let bytes = ckpt
        .tensor_bytes(info)
        .map_err(|e| candle_core::Error::Msg(format!("tensor {key}: {e}")))?;
    Tensor::from_raw_buffer(&bytes, dtype, &info.shape, &Device::Cpu)
}

pub(crate) fn ckpt_dtype(d: ember_pickle::StorageDtype) -> Option<DType> {
    use ember_pickle::StorageDtype as S;
    Some(match d {
        S::F64 => DType::F64,
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::I16 => DType::I16,
        S::U8 => DType::U8,
        S::I8 | S::Bool => return None,
    })
}

/// Every tensor of an opened file with its shape, in the file's own names.
pub(crate) fn list_tensors(source: &Source) -> Vec<(String, Vec<usize>)> {
    match source {
        Source::Safetensors(st) => st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect(),
        Source::Ckpt(c) => c.tensors().iter().map(|(n, i)| (n.clone(), i.shape.clone())).collect(),
    }
}

/// Memory-maps a `.safetensors` file, turning its failures into messages about the file.
pub(crate) fn open_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::model(path, format!("cannot read the file: {e}")))?
        .len();
    if len < 8 {
        return Err(Error::model(
            path,
            "the file is empty or truncated (a .safetensors file starts with an 8-byte header length); download it again",
        ));
    }
    // SAFETY: the map is read-only; as with every mmap-based loader, the file must not be truncated while in use.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
        Error::model(
            path,
            format!("not a valid .safetensors file ({e}); it may be truncated or corrupt, download it again"),
        )
    })
}
