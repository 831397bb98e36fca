//! The networks, as plain structs over candle-nn with diffusers' parameter names:
//! CLIP text encoder, UNet2DConditionModel, AutoencoderKL.

pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod layers;
pub mod linear;
pub mod unet;
pub mod vae;

pub use clip::ClipTextModel;
pub use layers::{seamless_enabled, seamless_scope, SeamlessScope};
pub use unet::UNet2DConditionModel;
pub use vae::AutoencoderKL;

use candle_core::{DType, Device};
use std::cell::Cell;

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

    /// Builds networks (`build` calls their constructors) so that their layers take this precision's weight format.
    pub fn build<T>(self, build: impl FnOnce() -> T) -> T {
        let previous = PACK_BF16.with(|p| p.replace(self.packed_bf16));
        let built = build();
        PACK_BF16.with(|p| p.set(previous));
        built
    }
}

thread_local! {
    /// Set by [`Precision::build`] while networks are being built: layers made now pack their weights as bf16 tiles.
    static PACK_BF16: Cell<bool> = const { Cell::new(false) };
}

/// Whether layers built now (on a CPU, in f32) should pack their weights as bf16 tiles.
pub(crate) fn packing_bf16(device: &Device, dtype: DType) -> bool {
    PACK_BF16.with(|p| p.get()) && device.is_cpu() && dtype == DType::F32
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
