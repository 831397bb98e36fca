//! The networks, as plain structs over candle-nn with diffusers' parameter names:
//! CLIP text encoder, UNet2DConditionModel, AutoencoderKL.

pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod linear;
pub mod unet;
pub mod vae;

pub use blocks::{seamless_enabled, seamless_scope, SeamlessScope};
pub use clip::ClipTextModel;
pub use unet::UNet2DConditionModel;
pub use vae::AutoencoderKL;

use candle_core::DType;

/// Precision of the numerically sensitive reductions (softmax, group norm): f32 for f32/f16/bf16 compute,
/// f64 when the whole model runs in f64 (the reference-parity mode).
pub(crate) fn accumulation_dtype(compute: DType) -> DType {
    if compute == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}
