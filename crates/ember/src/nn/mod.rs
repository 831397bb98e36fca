//! The networks, as plain structs over candle-nn with diffusers' parameter names:
//! CLIP text encoder, UNet2DConditionModel, AutoencoderKL.

pub mod clip;
pub mod config;
pub mod unet;
pub mod vae;
