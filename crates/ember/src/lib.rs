//! Ember: a Stable Diffusion engine (txt2img and img2img; SD 1.x, SD 2.x, SDXL and their Turbo/LCM variants) with
//! InvokeAI's semantics. What a model is (its family, configurations, schedule) is decided once, in `model/family.rs`.
//!
//! The flow every request follows, one module per arrow:
//!
//! ```text
//! request ─► text:    tokenize → CLIP encode (cond + uncond [+ pooled]) text/, nn/clip.rs
//!         ─► latents: torch-compatible seeded noise [+ init image       sample/rng.rs, image/init.rs,
//!                     → VAE encode mean × scale → noised to σ_start]    nn/vae.rs
//!         ─► sample:  sampler(denoiser, schedule[start..], latents)     sample/
//!         ─► decode:  VAE decode → RGB                                  nn/vae.rs
//!         ─► write:   PNG + metadata                                    image/png_meta.rs
//! ```
//!
//! The networks run on candle's ops, except on the CPU where the heavy ones go to Ember's own kernels (`cpu/`).
//!
//! Front-ends (CLI, REPL, web server) build a [`request::GenerateRequest`], hand it to a loaded
//! [`pipeline::Pipeline`] and consume [`pipeline::Event`]s; none of them touches tensors.

pub mod addons;
pub mod bench;
pub mod cancel;
pub(crate) mod cpu;
pub mod device;
pub mod error;
pub mod guidance;
pub mod image;
pub mod model;
pub mod nn;
pub(crate) mod op_stats;
pub mod pipeline;
pub mod request;
pub mod sample;
pub mod text;

/// What front-ends and tests need of the CPU kernels' module: the allocator tuning a binary applies at start, and the
/// instruction set the kernels run on.
pub use cpu::{tune_allocator, Isa};
pub use error::{Error, Result};
