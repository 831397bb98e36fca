//! Weights that LoRAs can patch: a component's tensors (UNet or text encoder) served through a cache, with additive
//! patches (`W + ΔW`) on chosen tensors. Networks built from it get the patched weights *in their layers*, so a LoRA
//! costs nothing per step; changing the patch set and rebuilding a network takes the untouched tensors from the cache
//! (the very tensors the previous network held, shared, not copied) and recomputes only the touched ones — the model
//! file is not read again. A patch is kept as its factors (a LoRA's `up`, `down`), not as a dense `ΔW`: a touched
//! weight is built in one pass, a copy of the base with `up @ down` accumulated into it by one GEMM per term.

use super::weights::WeightMap;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One component's weights with their patches; cheap to share (the `VarBuilder` and the pipeline hold the same one).
#[derive(Clone)]
pub struct PatchableWeights {
    inner: Arc<Inner>,
}

struct Inner {
    base: WeightMap,
    /// Tensors already served, by name and dtype: the networks hold the same tensors (reference-counted), so the cache
    /// costs no memory of its own while they live.
    cache: Mutex<HashMap<(String, DType), Tensor>>,
    /// What to add to a tensor when it is served (already multiplied by the LoRA's weight and scale).
    patches: RwLock<HashMap<String, Vec<PatchTerm>>>,
    /// The networks pack their matrix weights into bf16 tiles (`nn::Precision::packed_bf16`): the bf16 tensors served
    /// on the CPU are packed and dropped, so keeping them here would be a second copy (the packs are kept instead).
    packing: AtomicBool,
}

/// One addition to a weight, seen as a `[rows, cols]` matrix (`rows` = its first dimension), in f32 or f64 (the
/// dtype the base is widened to for the sum).
#[derive(Debug, Clone)]
pub enum PatchTerm {
    /// `up [rows, r] @ down [r, cols]` (a LoRA's factors, `up` already scaled).
    LowRank { up: Tensor, down: Tensor },
    /// A dense `[rows, cols]` difference (LoHa, LoKr, Tucker forms, full differences).
    Dense(Tensor),
}

impl PatchTerm {
    fn dtype(&self) -> DType {
        match self {
            PatchTerm::LowRank { up, .. } => up.dtype(),
            PatchTerm::Dense(d) => d.dtype(),
        }
    }
}

impl PatchableWeights {
    pub(crate) fn new(base: WeightMap) -> Self {
        Self {
            inner: Arc::new(Inner {
                base,
                cache: Mutex::new(HashMap::new()),
                patches: RwLock::new(HashMap::new()),
                packing: AtomicBool::new(false),
            }),
        }
    }

    /// Every tensor's (diffusers/transformers) name with its shape.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.inner
            .base
            .entries
            .iter()
            .map(|(name, entry)| (name.as_str(), entry.shape.as_slice()))
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.inner.base.shape(name)
    }

    /// The names of the tensors patched now.
    pub fn patched(&self) -> Vec<String> {
        let patches = self.inner.patches.read().unwrap_or_else(|e| e.into_inner());
        patches.keys().cloned().collect()
    }

    /// Tells whether the networks built from these weights pack them into bf16 tiles (see `Inner::packing`).
    pub fn set_packing(&self, packing: bool) {
        self.inner.packing.store(packing, Ordering::Relaxed);
    }

    /// Replaces the patch set; tensors served from now on include it.
    pub fn set_patches(&self, patches: HashMap<String, Vec<PatchTerm>>) {
        *self.inner.patches.write().unwrap_or_else(|e| e.into_inner()) = patches;
    }

    /// A `VarBuilder` over these weights, in `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The unpatched tensor `name` in `dtype` (from the cache when it was served before).
    fn base(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        // The bf16 copies CPU layers pack into tiles are dropped once packed: caching them would keep a second copy.
        let packed = self.inner.packing.load(Ordering::Relaxed) && dev.is_cpu() && dtype == DType::BF16;
        let cacheable = !packed;
        let key = (name.to_string(), dtype);
        if cacheable {
            if let Some(t) = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
                return Ok(t.clone());
            }
        }
        let t = self.inner.base.get_unchecked(name, dtype, dev)?;
        if cacheable {
            self.inner
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, t.clone());
        }
        Ok(t)
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let terms = {
            let patches = self.inner.patches.read().unwrap_or_else(|e| e.into_inner());
            patches.get(name).cloned()
        };
        let Some(terms) = terms.filter(|t| !t.is_empty()) else {
            return self.base(name, dtype, dev);
        };
        // Summed on the CPU in the terms' precision (f32, or f64 for a f64 model), rounded once to the model's dtype.
        let sum_dtype = terms[0].dtype();
        let base = self.base(name, sum_dtype, &Device::Cpu)?;
        let sum = match sum_dtype {
            DType::F64 => apply_terms::<f64>(&base, &terms)?,
            _ => apply_terms::<f32>(&base, &terms)?,
        };
        sum.to_dtype(dtype)?.to_device(dev)
    }
}

/// `base + Σ terms` as a new tensor of `base`'s shape: one copy of the base, then each low-rank term accumulated into
/// it by a GEMM (`gemm` with `read_dst`), each dense one added.
fn apply_terms<T>(base: &Tensor, terms: &[PatchTerm]) -> candle_core::Result<Tensor>
where
    T: candle_core::WithDType + std::ops::AddAssign,
{
    let shape = base.shape().clone();
    let rows = shape.dims().first().copied().unwrap_or(1);
    let cols = shape.elem_count() / rows.max(1);
    let mut sum = parallel_copy::<T>(base)?;
    for term in terms {
        match term {
            PatchTerm::LowRank { up, down } => {
                let (up_rows, rank) = up.dims2()?;
                let (down_rank, down_cols) = down.dims2()?;
                if (up_rows, down_rank, down_cols) != (rows, rank, cols) {
                    candle_core::bail!(
                        "patch factors [{up_rows}, {rank}] @ [{down_rank}, {down_cols}] do not fit a weight {shape:?}"
                    );
                }
                let up = up.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
                let down = down.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
                let threads = rayon::current_num_threads();
                // SAFETY: `sum` is rows × cols, `up` rows × rank and `down` rank × cols, all row-major and contiguous
                // (checked above), so every index gemm forms with these strides is in bounds; `sum` is not aliased.
                unsafe {
                    gemm::gemm(
                        rows,
                        cols,
                        rank,
                        sum.as_mut_ptr(),
                        1,
                        cols as isize,
                        true,
                        up.as_ptr(),
                        1,
                        rank as isize,
                        down.as_ptr(),
                        1,
                        cols as isize,
                        T::from_f64(1.0),
                        T::from_f64(1.0),
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(threads),
                    );
                }
            }
            PatchTerm::Dense(delta) => {
                if delta.elem_count() != sum.len() {
                    candle_core::bail!(
                        "a patch of {} values does not fit a weight {shape:?}",
                        delta.elem_count()
                    );
                }
                let delta = delta.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
                for (s, d) in sum.iter_mut().zip(delta) {
                    *s += d;
                }
            }
        }
    }
    Tensor::from_vec(sum, shape, &Device::Cpu)
}

/// The elements of a CPU tensor, copied by all threads (a touched SD 1.5 UNet is ~1 GB of them).
fn parallel_copy<T: candle_core::WithDType>(base: &Tensor) -> candle_core::Result<Vec<T>> {
    use rayon::prelude::*;
    let base = base.contiguous()?;
    let (storage, layout) = base.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("patched weights are summed on the CPU");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("a contiguous tensor without contiguous offsets".into()))?;
    let src = &T::cpu_storage_as_slice(cpu)?[start..end];
    let mut out: Vec<T> = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(1 << 16)
        .zip(src.par_chunks(1 << 16))
        .for_each(|(dst, src)| {
            for (d, s) in dst.iter_mut().zip(src) {
                d.write(*s);
            }
        });
    // SAFETY: the chunks above wrote every one of the first `src.len()` elements.
    unsafe { out.set_len(src.len()) };
    Ok(out)
}

impl SimpleBackend for PatchableWeights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        super::weights::expect_shape(self.load(name, dtype, dev)?, s, name, &self.inner.base.path)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.base.entries.contains_key(name)
    }
}
