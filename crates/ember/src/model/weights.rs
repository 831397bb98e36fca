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
    /// Rows `start..start + len` of the stored tensor (OpenCLIP stores q, k and v stacked in one `in_proj`).
    Rows {
        start: usize,
        len: usize,
    },
    /// The stored matrix transposed (OpenCLIP's `text_projection` is applied as `x @ P`, transformers' as `x @ Wᵀ`).
    Transpose,
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
                format!("the tensor `{name}` is missing; the file is incomplete or not a Stable Diffusion model"),
            )
        })
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())?;
        let t = match entry.source.as_ref() {
            Source::Safetensors(st) => {
                let t = match half_to_bf16(st, &entry.key, dtype)? {
                    Some(t) => t,
                    None => st.load(&entry.key, &Device::Cpu)?,
                };
                release_mapped_pages(st.get(&entry.key)?.data());
                t
            }
            Source::Ckpt(ckpt) => load_ckpt_tensor(ckpt, &entry.key)?,
        };
        let t = match entry.transform {
            Transform::ConvToLinear if t.rank() == 4 => t.reshape(entry.shape.as_slice())?,
            Transform::Rows { start, len } => t.narrow(0, start, len)?.contiguous()?,
            Transform::Transpose => t.t()?.contiguous()?,
            _ => t,
        };
        // Convert on the CPU first: uploading f16 then converting would need both copies on the device.
        t.to_dtype(dtype)?.to_device(dev)
    }
}

/// An f16 tensor of a memory-mapped file read straight into bf16, in parallel (the bf16 tile kernels' weights): one
/// pass over the mapped bytes instead of a copy, then a single-threaded conversion; each chunk goes through f32 with
/// `half`'s F16C slice conversion and the AVX-512 rounding (one value at a time it was ~0.5 s of a full-size UNet's
/// load). `None` for other dtype pairs.
fn half_to_bf16(st: &MmapedSafetensors, key: &str, want: DType) -> candle_core::Result<Option<Tensor>> {
    use rayon::prelude::*;
    let view = st.get(key)?;
    if want != DType::BF16 || view.dtype() != safetensors::Dtype::F16 {
        return Ok(None);
    }
    let bytes = view.data();
    let len = bytes.len() / 2;
    // Each task initialises its own chunk (zeroing all of it first, on this thread, was a pass of its own and took
    // the page faults of the whole tensor here).
    let mut values: Vec<half::bf16> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(1 << 16)
        .zip(bytes.par_chunks(2 << 16))
        .for_each(|(dst, src)| {
            use half::slice::HalfFloatSliceExt;
            dst.fill(std::mem::MaybeUninit::new(half::bf16::ZERO));
            // SAFETY: every value of the chunk was just initialised.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut half::bf16, dst.len()) };
            const RUN: usize = 4096;
            let (mut f16, mut f32) = ([half::f16::ZERO; RUN], [0f32; RUN]);
            for (dst, src) in dst.chunks_mut(RUN).zip(src.chunks(2 * RUN)) {
                // The file's bytes need not be aligned for f16: decoded into an aligned buffer first.
                for (value, pair) in f16.iter_mut().zip(src.chunks_exact(2)) {
                    *value = half::f16::from_bits(u16::from_le_bytes([pair[0], pair[1]]));
                }
                f16[..dst.len()].convert_to_f32_slice(&mut f32[..dst.len()]);
                crate::cpu::amx::round_to_bf16(&f32[..dst.len()], dst.reinterpret_cast_mut());
            }
        });
    // SAFETY: the chunks above cover and initialised the first `len` values.
    unsafe { values.set_len(len) };
    Ok(Some(Tensor::from_vec(values, view.shape(), &Device::Cpu)?))
}

/// Drops this process's copy of the mapped file pages under `bytes` once their tensor has been read (the kernel keeps
/// them in its page cache; a later read faults them back in). Without it every page of the weight file stayed in
/// the process's resident set while the model was built, on top of the converted weights: a full-size f16 UNet
/// file adds 1.7 GB to the peak.
fn release_mapped_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
        let (first, last) = (start.div_ceil(page) * page, end / page * page);
        if last > first {
            // SAFETY: the range lies inside a read-only file mapping that stays mapped; MADV_DONTNEED on it only
            // drops resident pages, which are read back from the file if touched again, so the contents seen
            // through `bytes` do not change.
            unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED) };
        }
    }
}

/// `t` if it has the shape a network asks for, else candle's shape error naming the tensor and its file.
pub(crate) fn expect_shape(t: Tensor, expected: Shape, name: &str, path: &Path) -> candle_core::Result<Tensor> {
    if t.shape() != &expected {
        return Err(candle_core::Error::UnexpectedShape {
            msg: format!("shape mismatch for {name} in {}", path.display()),
            expected,
            got: t.shape().clone(),
        }
        .bt());
    }
    Ok(t)
}

impl SimpleBackend for WeightMap {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        expect_shape(self.load(name, dtype, dev)?, s, name, &self.path)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct f16 → bf16 read gives exactly what loading and converting with candle gives (values spread over
    /// f16's range, subnormals, ±0, infinities).
    #[test]
    fn half_to_bf16_equals_candles_conversion() -> candle_core::Result<()> {
        let mut values: Vec<half::f16> = (0..70_000u32)
            .map(|i| half::f16::from_bits((i * 7919 % 65536) as u16))
            .collect();
        values.retain(|v| !v.is_nan());
        let t = Tensor::from_vec(values.clone(), values.len(), &Device::Cpu)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("w.safetensors");
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t.clone())]), &path)?;
        // SAFETY: the file was just written by this test and is not modified while mapped.
        let st = unsafe { MmapedSafetensors::new(&path)? };
        let direct = half_to_bf16(&st, "w", DType::BF16)?.expect("an f16 tensor read as bf16");
        let via_candle = st.load("w", &Device::Cpu)?.to_dtype(DType::BF16)?;
        let (a, b) = (direct.to_vec1::<half::bf16>()?, via_candle.to_vec1::<half::bf16>()?);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(half_to_bf16(&st, "w", DType::F32)?.is_none());
        Ok(())
    }
}
