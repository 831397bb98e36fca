//! The networks, as plain structs over candle-nn with diffusers' parameter names:
//! CLIP text encoder, UNet2DConditionModel, AutoencoderKL, and the tiny autoencoder (TAESD family).

pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod layers;
pub mod linear;
pub mod taesd;
pub mod unet;
pub mod vae;

pub use clip::ClipTextModel;
pub use layers::Padding;
pub use taesd::TinyAutoencoder;
pub use unet::UNet2DConditionModel;
pub use vae::AutoencoderKL;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Precision of the numerically sensitive reductions (softmax, group norm): f32 for f32/f16/bf16 compute,
/// f64 when the whole model runs in f64 (the reference-parity mode).
pub(crate) fn accumulation_dtype(compute: DType) -> DType {
    if compute == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// How the networks compute for a requested dtype on a device.
///
/// On a CPU with AMX-BF16, `bf16` means bf16 *matrix products*: the weights of every stride-1 convolution and linear
/// layer are packed once, at load, into bf16 tiles (`cpu::conv::PackedConv`, `cpu::linear::PackedLinear`), the
/// activations are rounded to bf16 as they enter those products, and everything else — accumulation, attention,
/// normalisation, activations, residual sums — stays f32. That is both faster (the tile unit does ~4× the f32 FMA
/// rate) and closer to the f32 result than bf16 activations throughout. A tensor whose every reader is such a product
/// is stored as bf16 (the transformer blocks' norms, projections, attention and GEGLU outputs): the same bits reach
/// the tiles, at half the memory traffic (`cpu::amx::Activations`). Elsewhere the dtype is taken as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// The dtype tensors flow between layers in (and the weights not packed are loaded in).
    pub activations: DType,
    /// Convolution and linear weights are packed bf16 tiles for the AMX kernels.
    pub packed_bf16: bool,
}

impl Precision {
    pub fn new(device: &Device, dtype: DType) -> Self {
        let packed_bf16 = device.is_cpu() && dtype == DType::BF16 && crate::cpu::amx::available();
        Precision {
            activations: if packed_bf16 { DType::F32 } else { dtype },
            packed_bf16,
        }
    }

    /// `vb` for networks built in this precision: activations in [`Precision::activations`], and matrix weights
    /// packed as bf16 tiles where [`Precision::packed_bf16`] says.
    pub fn vars<'a>(self, vb: &VarBuilder<'a>) -> Vars<'a> {
        Vars {
            vb: vb.clone().set_dtype(self.activations),
            packed_bf16: self.packed_bf16,
            packs: None,
        }
    }

    /// [`Self::vars`], keeping the packed weights in `packs`: a network built again from the same weights (with a
    /// LoRA set changed) reuses them, except those [`PackCache::forget`] was told changed.
    pub fn vars_with_packs<'a>(self, vb: &VarBuilder<'a>, packs: &Arc<PackCache>) -> Vars<'a> {
        Vars {
            packs: Some(packs.clone()),
            ..self.vars(vb)
        }
    }
}

/// Weights packed into bf16 tiles, by the name of their weight tensor, for networks rebuilt from the same weights.
#[derive(Default)]
pub struct PackCache {
    packed: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl PackCache {
    /// Drops the packs of these weights (they are about to change).
    pub fn forget<'n>(&self, names: impl IntoIterator<Item = &'n str>) {
        let mut packed = self.packed.lock().unwrap_or_else(|e| e.into_inner());
        for name in names {
            packed.remove(name);
        }
    }

    /// The pack kept for the weight `name`, if any.
    pub fn kept(&self, name: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        self.packed.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// How many packs are kept.
    pub fn len(&self) -> usize {
        self.packed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a network's layers are built from: their weights (a `VarBuilder`, under diffusers' names) and the form their
/// matrix weights take, passed explicitly down every constructor (not per-thread state: networks may be built on any
/// thread, and rebuilt with other weights). A plain `VarBuilder` converts into one with candle's weights.
#[derive(Clone)]
pub struct Vars<'a> {
    vb: VarBuilder<'a>,
    /// Convolution and linear weights are packed as bf16 tiles for the AMX kernels (see [`Precision`]).
    packed_bf16: bool,
    /// Where packs are kept between builds, if anywhere.
    packs: Option<Arc<PackCache>>,
}

impl<'a> From<VarBuilder<'a>> for Vars<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self {
            vb,
            packed_bf16: false,
            packs: None,
        }
    }
}

impl<'a> Vars<'a> {
    /// The variables under `name` (a module of this one).
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self {
            vb: self.vb.pp(name),
            packed_bf16: self.packed_bf16,
            packs: self.packs.clone(),
        }
    }

    /// The weights, for candle-nn's layer constructors.
    pub fn vb(&self) -> VarBuilder<'a> {
        self.vb.clone()
    }

    /// Whether layers built from these (on a CPU, in f32) pack their matrix weights as bf16 tiles.
    pub(crate) fn packs_bf16(&self) -> bool {
        self.packed_bf16 && self.vb.device().is_cpu() && self.vb.dtype() == DType::F32
    }

    /// This module's `weight` (of `shape`) packed by `pack` ([`pack_bf16_weight`]), or the pack kept from an earlier
    /// build of the same weights.
    pub(crate) fn packed<P: Send + Sync + 'static>(
        &self,
        shape: &[usize],
        pack: impl FnOnce(&[half::bf16]) -> candle_core::Result<P>,
    ) -> candle_core::Result<Arc<P>> {
        let Some(cache) = &self.packs else {
            return Ok(Arc::new(pack_bf16_weight(&self.vb, shape, pack)?));
        };
        let name = match self.vb.prefix() {
            p if p.is_empty() => "weight".to_string(),
            p => format!("{p}.weight"),
        };
        let kept = cache
            .packed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        if let Some(found) = kept.and_then(|k| k.downcast::<P>().ok()) {
            return Ok(found);
        }
        let packed = Arc::new(pack_bf16_weight(&self.vb, shape, pack)?);
        cache
            .packed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, packed.clone());
        Ok(packed)
    }
}

impl<'a> std::ops::Deref for Vars<'a> {
    type Target = VarBuilder<'a>;

    fn deref(&self) -> &VarBuilder<'a> {
        &self.vb
    }
}

/// A weight for packing into bf16 tiles: loaded from `vb` as bf16 (the loader converts the stored dtype once, with
/// no f32 copy of the model) and handed to `pack` without another copy.
pub(crate) fn pack_bf16_weight<R>(
    vb: &candle_nn::VarBuilder,
    shape: &[usize],
    pack: impl FnOnce(&[half::bf16]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = vb.get_with_hints_dtype(shape, "weight", candle_nn::Init::Const(0.0), DType::BF16)?;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(values)), Some((start, end))) => {
            pack(&values[start..end])
        }
        _ => candle_core::bail!("weights packed for the CPU must be CPU tensors"),
    }
}
