//! The tiny autoencoder (TAESD family, Ollin Boer Bohan's `taesd.py`, MIT): a distilled stand-in for a diffusion
//! model's VAE, ~1.2 M parameters per half instead of ~34 M for the decoder, plain 3×3 convolutions and ReLUs with no
//! attention and no normalisation (except FLUX.2's pool branch), so it decodes a 512² image in a fraction of the VAE's
//! time — for previews, and for fast final images where its slightly softer detail is acceptable.
//!
//! Conventions (as `taesd.py` and diffusers' `AutoencoderTiny`, whose `scaling_factor` is 1.0):
//! - Images are RGB in **[0, 1]** (the VAE's are in [-1, 1]). [`TinyAutoencoder::encode`] takes such an image,
//!   [`TinyAutoencoder::decode`] returns one, clamped to [0, 1] ([`TinyAutoencoder::decode_unclamped`] does not
//!   clamp). diffusers' `EncoderTiny`/`DecoderTiny` map from / to [-1, 1] around the same layers; Ember does not.
//! - Latents are the diffusion model's own, with **no scaling applied**: for SD 1.x/2.x and SDXL the pipeline's
//!   latents as they are, i.e. already multiplied by the VAE's `scaling_factor` (diffusers' pipelines decode with
//!   `vae.decode(latents / vae.config.scaling_factor)`, and `AutoencoderTiny`'s `scaling_factor` is 1.0; TAESD's
//!   README: its latent "scale_factor" is 1); 4 channels at H/8. TAEF1 / TAESD3 use 16 channels. TAEF2 (FLUX.2) uses
//!   the FLUX.2 VAE's 32-channel latents at H/8 as `AutoencoderKLFlux2.decode` takes them (the pipeline's packed
//!   latents after undoing their batch-norm statistics and 2×2 patching), and adds a pool branch to the middle
//!   blocks. The latent channel count and the pool branch are read from the weights' shapes.
//! - `taesd.py`'s `scale_latents` / `unscale_latents` (latents ↔ [0, 1] for 8-bit PNGs) are not part of a decode.
//!
//! Layers are named as `taesd.py`'s `nn.Sequential` indices, the encoder's under `encoder.` and the decoder's under
//! `decoder.`: `encoder.0.weight`, `decoder.3.conv.0.weight`, `decoder.3.pool.1.bias`… `model::taesd` loads
//! madebyollin's `.pth` halves, `.safetensors` with the same keys, and diffusers' `AutoencoderTiny` layout into these
//! names.

use super::layers::{group_norm, Conv, GroupNorm};
use super::Vars;
use candle_core::{Module, Result, Tensor};

/// Width of every hidden layer (`taesd.py`'s Encoder / Decoder; the F32 variants of TAESana are not supported).
pub const CHANNELS: usize = 64;
/// The pool branch's width (`4 × CHANNELS`) and its group norm (`nn.GroupNorm(4, 256)`, torch's default eps).
const POOL_CHANNELS: usize = 4 * CHANNELS;
const POOL_GROUPS: usize = 4;
const POOL_EPS: f64 = 1e-5;

/// The encoder's layers by `nn.Sequential` index: the stride-2 convolutions, the blocks, and which blocks are the
/// middle ones (those that get the pool branch in TAEF2).
pub const ENCODER_DOWNSAMPLERS: [usize; 3] = [2, 6, 10];
pub const ENCODER_BLOCKS: [usize; 10] = [1, 3, 4, 5, 7, 8, 9, 11, 12, 13];
pub const ENCODER_MID_BLOCKS: [usize; 3] = [11, 12, 13];
/// `encoder.0`: conv(3, 64); `encoder.14`: conv(64, C).
pub const ENCODER_OUT: usize = 14;
/// The decoder's: `decoder.1` conv(C, 64), upsample + bias-free conv at 7, 12, 17, `decoder.19` conv(64, 3).
pub const DECODER_IN: usize = 1;
pub const DECODER_UPSAMPLERS: [usize; 3] = [7, 12, 17];
pub const DECODER_BLOCKS: [usize; 10] = [3, 4, 5, 8, 9, 10, 13, 14, 15, 18];
pub const DECODER_MID_BLOCKS: [usize; 3] = [3, 4, 5];
pub const DECODER_OUT: usize = 19;

/// What the weights say about the network: latent channels, and whether the middle blocks have the pool branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyConfig {
    pub latent_channels: usize,
    pub pool: bool,
}

/// `x + pool(x)`: conv1×1 (64 → 256, no bias), GroupNorm(4, 256), ReLU, conv1×1 (256 → 64, no bias).
#[derive(Debug, Clone)]
struct Pool {
    expand: Conv,
    norm: GroupNorm,
    project: Conv,
}

impl Pool {
    fn new(vb: Vars) -> Result<Self> {
        Ok(Self {
            expand: Conv::new_without_bias(CHANNELS, POOL_CHANNELS, 1, 1, vb.pp(0))?,
            norm: group_norm(POOL_GROUPS, POOL_CHANNELS, POOL_EPS, vb.pp(1))?,
            project: Conv::new_without_bias(POOL_CHANNELS, CHANNELS, 1, 1, vb.pp(3))?,
        })
    }

    fn forward_plus_input(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward(&self.expand.forward(x)?)?.relu()?;
        self.project.forward_plus(&h, x)
    }
}

/// `Block(64, 64)`: `relu(conv(relu(conv(relu(conv(x))))) + x)`, after `x + pool(x)` when it has the pool branch.
/// (Every block of these networks keeps 64 channels, so the 1×1 skip of `taesd.py`'s Block is never there.)
#[derive(Debug, Clone)]
struct Block {
    convs: [Conv; 3],
    pool: Option<Pool>,
}

impl Block {
    fn new(vb: Vars, pool: bool) -> Result<Self> {
        let conv = |i: usize| Conv::new(CHANNELS, CHANNELS, 3, 1, None, vb.pp("conv").pp(i));
        Ok(Self {
            convs: [conv(0)?, conv(2)?, conv(4)?],
            pool: pool.then(|| Pool::new(vb.pp("pool"))).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pooled;
        let x = match &self.pool {
            Some(pool) => {
                pooled = pool.forward_plus_input(x)?;
                &pooled
            }
            None => x,
        };
        let h = self.convs[0].forward(x)?.relu()?;
        let h = self.convs[1].forward(&h)?.relu()?;
        self.convs[2].forward_plus(&h, x)?.relu()
    }
}

/// `taesd.py`'s `Encoder`: RGB in [0, 1] `[B, 3, H, W]` → latents `[B, C, ⌈H/8⌉, ⌈W/8⌉]`.
#[derive(Debug, Clone)]
pub struct TinyEncoder {
    conv_in: Conv,
    /// Index by index from 1 to 13: a stride-2 convolution or a block.
    layers: Vec<Layer>,
    conv_out: Conv,
    latent_channels: usize,
}

#[derive(Debug, Clone)]
enum Layer {
    Block(Box<Block>),
    Down(Conv),
    /// Nearest ×2, then the convolution.
    Up(Conv),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Block(b) => b.forward(x),
            Layer::Down(c) => c.forward(x),
            Layer::Up(c) => c.forward_upsampled(x, super::Padding::Zeros),
        }
    }
}

impl TinyEncoder {
    /// The encoder from `vb` (its tensors under `0.weight`, `1.conv.0.weight`, …).
    pub fn new(vb: Vars, cfg: TinyConfig) -> Result<Self> {
        let mut layers = Vec::with_capacity(13);
        for i in 1..ENCODER_OUT {
            layers.push(if ENCODER_DOWNSAMPLERS.contains(&i) {
                Layer::Down(Conv::new_without_bias(CHANNELS, CHANNELS, 3, 2, vb.pp(i))?)
            } else {
                Layer::Block(Box::new(Block::new(
                    vb.pp(i),
                    cfg.pool && ENCODER_MID_BLOCKS.contains(&i),
                )?))
            });
        }
        Ok(Self {
            conv_in: Conv::new(3, CHANNELS, 3, 1, None, vb.pp(0))?,
            layers,
            conv_out: Conv::new(CHANNELS, cfg.latent_channels, 3, 1, None, vb.pp(ENCODER_OUT))?,
            latent_channels: cfg.latent_channels,
        })
    }

    pub fn forward(&self, rgb01: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = rgb01.dims4()?;
        if c != 3 {
            candle_core::bail!("the tiny autoencoder encodes RGB images [B, 3, H, W], not {c} channels");
        }
        let mut x = self.conv_in.forward(rgb01)?;
        for layer in &self.layers {
            crate::cancel::check_between_layers()?;
            x = layer.forward(&x)?;
        }
        self.conv_out.forward(&x)
    }
}

/// `taesd.py`'s `Decoder`: latents `[B, C, h, w]` → RGB `[B, 3, 8h, 8w]`, not clamped.
#[derive(Debug, Clone)]
pub struct TinyDecoder {
    conv_in: Conv,
    /// Index by index from 3 to 18 (the upsamplers at 6, 11, 16 are folded into the convolution after them).
    layers: Vec<Layer>,
    conv_out: Conv,
    latent_channels: usize,
}

impl TinyDecoder {
    /// The decoder from `vb` (its tensors under `1.weight`, `3.conv.0.weight`, …).
    pub fn new(vb: Vars, cfg: TinyConfig) -> Result<Self> {
        let mut layers = Vec::with_capacity(13);
        for i in DECODER_MID_BLOCKS[0]..DECODER_OUT {
            if DECODER_UPSAMPLERS.contains(&i) {
                layers.push(Layer::Up(Conv::new_without_bias(CHANNELS, CHANNELS, 3, 1, vb.pp(i))?));
            } else if DECODER_BLOCKS.contains(&i) {
                let pool = cfg.pool && DECODER_MID_BLOCKS.contains(&i);
                layers.push(Layer::Block(Box::new(Block::new(vb.pp(i), pool)?)));
            }
        }
        Ok(Self {
            conv_in: Conv::new(cfg.latent_channels, CHANNELS, 3, 1, None, vb.pp(DECODER_IN))?,
            layers,
            conv_out: Conv::new(CHANNELS, 3, 3, 1, None, vb.pp(DECODER_OUT))?,
            latent_channels: cfg.latent_channels,
        })
    }

    /// RGB in about [0, 1], not clamped.
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = latents.dims4()?;
        if c != self.latent_channels {
            candle_core::bail!(
                "this tiny decoder takes {} latent channels, the latents have {c}",
                self.latent_channels
            );
        }
        // `taesd.py`'s Clamp: a soft limit to ±3.
        let x = ((latents / 3.0)?.tanh()? * 3.0)?;
        let mut x = self.conv_in.forward(&x)?.relu()?;
        for layer in &self.layers {
            crate::cancel::check_between_layers()?;
            x = layer.forward(&x)?;
        }
        self.conv_out.forward(&x)
    }
}

/// A tiny autoencoder: its encoder, its decoder, or both (madebyollin ships them as separate files).
#[derive(Debug, Clone)]
pub struct TinyAutoencoder {
    encoder: Option<TinyEncoder>,
    decoder: Option<TinyDecoder>,
}

impl TinyAutoencoder {
    /// From the halves at hand; at least one, and both for the same latent channels.
    pub fn new(encoder: Option<TinyEncoder>, decoder: Option<TinyDecoder>) -> Result<Self> {
        match (&encoder, &decoder) {
            (None, None) => candle_core::bail!("a tiny autoencoder needs an encoder or a decoder"),
            (Some(e), Some(d)) if e.latent_channels != d.latent_channels => candle_core::bail!(
                "the tiny encoder makes {} latent channels but the decoder takes {}",
                e.latent_channels,
                d.latent_channels
            ),
            _ => Ok(Self { encoder, decoder }),
        }
    }

    /// Latent channels (4 for SD 1.x/2.x and SDXL, 16 for FLUX.1 and SD3, 32 for FLUX.2).
    pub fn latent_channels(&self) -> usize {
        match (&self.encoder, &self.decoder) {
            (Some(e), _) => e.latent_channels,
            (None, Some(d)) => d.latent_channels,
            (None, None) => unreachable!("TinyAutoencoder::new refuses to build without both halves"),
        }
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    pub fn encoder(&self) -> Option<&TinyEncoder> {
        self.encoder.as_ref()
    }

    pub fn decoder(&self) -> Option<&TinyDecoder> {
        self.decoder.as_ref()
    }

    /// RGB in [0, 1] `[B, 3, H, W]` → latents `[B, C, ⌈H/8⌉, ⌈W/8⌉]` (unscaled: see the module's doc).
    pub fn encode(&self, rgb01: &Tensor) -> Result<Tensor> {
        match &self.encoder {
            Some(e) => e.forward(rgb01),
            None => candle_core::bail!("this tiny autoencoder has no encoder (load its encoder file too)"),
        }
    }

    /// Latents `[B, C, h, w]` → RGB `[B, 3, 8h, 8w]` clamped to [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_unclamped(latents)?.clamp(0f32, 1f32)
    }

    /// [`Self::decode`] without the final clamp (`taesd.py`'s `Decoder` output).
    pub fn decode_unclamped(&self, latents: &Tensor) -> Result<Tensor> {
        match &self.decoder {
            Some(d) => d.forward(latents),
            None => candle_core::bail!("this tiny autoencoder has no decoder (load its decoder file too)"),
        }
    }
}

/// Which half of a tiny autoencoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Encoder,
    Decoder,
}

impl Half {
    pub fn as_str(self) -> &'static str {
        match self {
            Half::Encoder => "encoder",
            Half::Decoder => "decoder",
        }
    }
}

/// Every tensor `half` reads under `cfg`, with its shape, by `taesd.py`'s index names (`0.weight`, `3.pool.1.bias`):
/// what a file must hold, and all it may hold.
pub fn expected_tensors(half: Half, cfg: TinyConfig) -> Vec<(String, Vec<usize>)> {
    let c = CHANNELS;
    let conv3 = |cout: usize, cin: usize| vec![cout, cin, 3, 3];
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let conv = |out: &mut Vec<(String, Vec<usize>)>, name: String, shape: Vec<usize>, bias: bool| {
        if bias {
            out.push((format!("{name}.bias"), vec![shape[0]]));
        }
        out.push((format!("{name}.weight"), shape));
    };
    let block = |out: &mut Vec<(String, Vec<usize>)>, i: usize, pool: bool| {
        for j in [0, 2, 4] {
            out.push((format!("{i}.conv.{j}.weight"), conv3(c, c)));
            out.push((format!("{i}.conv.{j}.bias"), vec![c]));
        }
        if pool {
            out.push((format!("{i}.pool.0.weight"), vec![POOL_CHANNELS, c, 1, 1]));
            out.push((format!("{i}.pool.1.weight"), vec![POOL_CHANNELS]));
            out.push((format!("{i}.pool.1.bias"), vec![POOL_CHANNELS]));
            out.push((format!("{i}.pool.3.weight"), vec![c, POOL_CHANNELS, 1, 1]));
        }
    };
    match half {
        Half::Encoder => {
            conv(&mut out, "0".into(), conv3(c, 3), true);
            for i in ENCODER_DOWNSAMPLERS {
                conv(&mut out, i.to_string(), conv3(c, c), false);
            }
            for i in ENCODER_BLOCKS {
                block(&mut out, i, cfg.pool && ENCODER_MID_BLOCKS.contains(&i));
            }
            conv(&mut out, ENCODER_OUT.to_string(), conv3(cfg.latent_channels, c), true);
        }
        Half::Decoder => {
            conv(&mut out, DECODER_IN.to_string(), conv3(c, cfg.latent_channels), true);
            for i in DECODER_UPSAMPLERS {
                conv(&mut out, i.to_string(), conv3(c, c), false);
            }
            for i in DECODER_BLOCKS {
                block(&mut out, i, cfg.pool && DECODER_MID_BLOCKS.contains(&i));
            }
            conv(&mut out, DECODER_OUT.to_string(), conv3(3, c), true);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// The networks read exactly [`expected_tensors`]: built from a map holding only those, in every variant, and
    /// the parameter counts match `taesd.py`'s (TAEF2: 1,338,528 / 1,338,499, as the shared weights' README counts).
    #[test]
    fn expected_tensors_are_what_the_networks_read() -> Result<()> {
        for (latent_channels, pool, params) in [(4, false, None), (32, true, Some((1_338_528, 1_338_499)))] {
            let cfg = TinyConfig { latent_channels, pool };
            let mut counts = Vec::new();
            for half in [Half::Encoder, Half::Decoder] {
                let tensors = expected_tensors(half, cfg);
                let map: HashMap<String, Tensor> = tensors
                    .iter()
                    .map(|(n, s)| Ok((n.clone(), Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu)?)))
                    .collect::<Result<_>>()?;
                let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
                match half {
                    Half::Encoder => drop(TinyEncoder::new(vb.into(), cfg)?),
                    Half::Decoder => drop(TinyDecoder::new(vb.into(), cfg)?),
                }
                counts.push(tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>());
            }
            if let Some((enc, dec)) = params {
                assert_eq!((counts[0], counts[1]), (enc, dec));
            }
        }
        Ok(())
    }
}
