//! The networks, as plain structs over candle-nn with diffusers' parameter names:
//! CLIP text encoder, UNet2DConditionModel, AutoencoderKL.

pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod unet;
pub mod vae;

pub use clip::ClipTextModel;
pub use unet::UNet2DConditionModel;
pub use vae::AutoencoderKL;
