//! Loading a tiny autoencoder (`nn::taesd`) from its files: madebyollin's `.pth` halves (`taesd_decoder.pth`,
//! `taef2_encoder.pth`, …: `torch.save` of the `nn.Sequential`'s state dict, read through ember-pickle, never
//! unpickled), `.safetensors` with the same index keys, a whole `TAESD` module's state dict (`encoder.0.weight`,
//! `decoder.1.weight`), and diffusers' `AutoencoderTiny` (`encoder.layers.N.…`, `decoder.layers.N.…`, both halves in
//! one `diffusion_pytorch_model.safetensors`, or its folder). Tensors may be f16, bf16 or f32.
//!
//! A file of bare indices is one half: the encoder when `0.weight` is conv(3, 64), the decoder when `19.weight` is
//! conv(64, 3). The latent channels and the pool branch come from the shapes; then every tensor is checked against
//! the architecture (none missing, none extra, every shape right) before anything is built, so a wrong file gets a
//! message naming what is wrong rather than a failure midway.

use super::weights::{ckpt_dtype, list_tensors, open_safetensors, Entry, Source, Transform, WeightMap};
use crate::nn::taesd::{
    expected_tensors, Half, TinyConfig, TinyDecoder, TinyEncoder, CHANNELS, DECODER_IN, DECODER_MID_BLOCKS,
    DECODER_OUT, ENCODER_MID_BLOCKS, ENCODER_OUT,
};
use crate::nn::{Precision, TinyAutoencoder};
use crate::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file diffusers saves an `AutoencoderTiny` in, looked for when a folder is given.
const DIFFUSERS_FILE: &str = "diffusion_pytorch_model.safetensors";

impl TinyAutoencoder {
    /// Loads a tiny autoencoder from one file (or a diffusers folder): an encoder, a decoder, or both.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        load_tiny_autoencoder(&[path], device, dtype)
    }
}

/// Loads a tiny autoencoder from its files (madebyollin's encoder and decoder files together, or one file with
/// either or both halves). Tensors are converted to `dtype` on `device`; on a CPU with AMX, bf16 packs the
/// convolutions as the other networks do (`nn::Precision`).
pub fn load_tiny_autoencoder(paths: &[&Path], device: &Device, dtype: DType) -> Result<TinyAutoencoder> {
    let mut encoder: Option<(PathBuf, TinyEncoder, TinyConfig)> = None;
    let mut decoder: Option<(PathBuf, TinyDecoder, TinyConfig)> = None;
    for &path in paths {
        let (file, source) = open(path)?;
        for (half, map, cfg) in halves(&file, source)? {
            let vb = VarBuilder::from_backend(Box::new(map), dtype, device.clone());
            let vars = Precision::new(device, dtype).vars(&vb);
            let unreadable =
                |e: candle_core::Error| Error::model(&file, format!("cannot read its {} tensors: {e}", half.as_str()));
            let earlier = match half {
                Half::Encoder => encoder
                    .replace((file.clone(), TinyEncoder::new(vars, cfg).map_err(unreadable)?, cfg))
                    .map(|e| e.0),
                Half::Decoder => decoder
                    .replace((file.clone(), TinyDecoder::new(vars, cfg).map_err(unreadable)?, cfg))
                    .map(|d| d.0),
            };
            if let Some(earlier) = earlier {
                return Err(Error::model(
                    &file,
                    format!(
                        "{} also holds a tiny {}; give one of each",
                        earlier.display(),
                        half.as_str()
                    ),
                ));
            }
        }
    }
    if let (Some((e_path, _, e_cfg)), Some((d_path, _, d_cfg))) = (&encoder, &decoder) {
        if e_cfg.latent_channels != d_cfg.latent_channels {
            return Err(Error::model(
                d_path,
                format!(
                    "this tiny decoder takes {} latent channels but the encoder {} makes {}: they belong to \
                     different models",
                    d_cfg.latent_channels,
                    e_path.display(),
                    e_cfg.latent_channels
                ),
            ));
        }
    }
    let first = paths.first().map(|p| p.to_path_buf()).unwrap_or_default();
    TinyAutoencoder::new(encoder.map(|e| e.1), decoder.map(|d| d.1)).map_err(|e| Error::model(first, e.to_string()))
}

/// The weight file at `path` (a folder's `diffusion_pytorch_model.safetensors`), opened by its contents: a zip is a
/// `torch.save` file, anything else must be `.safetensors`.
fn open(path: &Path) -> Result<(PathBuf, Arc<Source>)> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::model(path, "no such file"),
        _ => Error::model(path, format!("cannot read it: {e}")),
    })?;
    let file = if meta.is_dir() {
        let file = path.join(DIFFUSERS_FILE);
        if !file.is_file() {
            return Err(Error::model(
                path,
                format!("a folder without {DIFFUSERS_FILE}; give the tiny autoencoder's .pth or .safetensors file"),
            ));
        }
        file
    } else {
        path.to_path_buf()
    };
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(&file)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::model(&file, format!("cannot read it: {e}")))?;
    let source = if n == 4 && &magic == b"PK\x03\x04" {
        let ckpt = ember_pickle::Checkpoint::open(&file).map_err(|e| super::ckpt_error(&file, e))?;
        Source::Ckpt(ckpt)
    } else {
        Source::Safetensors(open_safetensors(&file)?)
    };
    Ok((file, Arc::new(source)))
}

/// The halves `file` holds, each as its tensors under `taesd.py`'s index names and the configuration their shapes
/// give, checked against the architecture.
fn halves(file: &Path, source: Arc<Source>) -> Result<Vec<(Half, WeightMap, TinyConfig)>> {
    let tensors = list_tensors(&source);
    let mut named: [HashMap<String, (String, Vec<usize>)>; 2] = Default::default();
    let mut plain: HashMap<String, (String, Vec<usize>)> = HashMap::new();
    let mut other: Vec<&str> = Vec::new();
    for (key, shape) in &tensors {
        let value = (key.clone(), shape.clone());
        if let Some(rest) = key.strip_prefix("encoder.layers.") {
            named[0].insert(rest.to_string(), value);
        } else if let Some(rest) = key.strip_prefix("decoder.layers.") {
            // diffusers' DecoderTiny has no module for `taesd.py`'s Clamp (index 0): its indices are one less.
            match rest
                .split_once('.')
                .and_then(|(i, tail)| Some((i.parse::<usize>().ok()?, tail)))
            {
                Some((i, tail)) => named[1].insert(format!("{}.{tail}", i + 1), value),
                None => named[1].insert(format!("?{rest}"), value),
            };
        } else if let Some(rest) = key.strip_prefix("encoder.").filter(|r| starts_with_digit(r)) {
            named[0].insert(rest.to_string(), value);
        } else if let Some(rest) = key.strip_prefix("decoder.").filter(|r| starts_with_digit(r)) {
            named[1].insert(rest.to_string(), value);
        } else if starts_with_digit(key) {
            plain.insert(key.clone(), value);
        } else {
            other.push(key);
        }
    }
    let not_tiny = |what: String| {
        Error::model(
            file,
            format!(
                "not a tiny autoencoder (TAESD) file: {what}. Give madebyollin's taesd_encoder/decoder .pth or \
                 .safetensors, or diffusers' AutoencoderTiny weights"
            ),
        )
    };
    if tensors.is_empty() {
        return Err(not_tiny("it holds no tensors".into()));
    }
    if let Some(key) = other.first() {
        return Err(not_tiny(format!(
            "of its {} tensors, `{key}` is not named like one of its layers",
            tensors.len()
        )));
    }
    if !plain.is_empty() {
        if named.iter().any(|n| !n.is_empty()) {
            return Err(not_tiny(
                "it mixes bare layer indices with encoder./decoder. names".into(),
            ));
        }
        let shape_of = |name: &str| plain.get(name).map(|(_, s)| s.as_slice());
        let half = if shape_of("0.weight") == Some(&[CHANNELS, 3, 3, 3]) {
            Half::Encoder
        } else if shape_of(&format!("{DECODER_OUT}.weight")) == Some(&[3, CHANNELS, 3, 3]) {
            Half::Decoder
        } else {
            let variant = match shape_of("0.weight") {
                Some([32, 3, 3, 3]) => {
                    " (its first layer is TAESana's 32×-downscaling encoder, which Ember does not support)"
                }
                _ => "",
            };
            return Err(not_tiny(format!(
                "neither an encoder (`0.weight` of shape [64, 3, 3, 3]) nor a decoder (`19.weight` of shape \
                 [3, 64, 3, 3]){variant}"
            )));
        };
        named[half as usize] = plain;
    }
    let mut out = Vec::new();
    for (half, tensors) in [Half::Encoder, Half::Decoder].into_iter().zip(named) {
        if tensors.is_empty() {
            continue;
        }
        let cfg = config(file, half, &tensors)?;
        check(file, half, cfg, &tensors, &source)?;
        let mut map = WeightMap::new(file);
        for (name, (key, shape)) in tensors {
            let entry = Entry {
                source: source.clone(),
                key,
                shape,
                transform: Transform::None,
            };
            map.entries.insert(name, entry);
        }
        out.push((half, map, cfg));
    }
    Ok(out)
}

fn starts_with_digit(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
}

/// The latent channels (from the convolution on the latent side) and whether the middle blocks have the pool branch.
fn config(file: &Path, half: Half, tensors: &HashMap<String, (String, Vec<usize>)>) -> Result<TinyConfig> {
    let (latent_conv, mid) = match half {
        Half::Encoder => (ENCODER_OUT, ENCODER_MID_BLOCKS[0]),
        Half::Decoder => (DECODER_IN, DECODER_MID_BLOCKS[0]),
    };
    let name = format!("{latent_conv}.weight");
    let latent_channels = match (half, tensors.get(&name).map(|(_, s)| s.as_slice())) {
        (Half::Encoder, Some(&[c, CHANNELS, 3, 3])) | (Half::Decoder, Some(&[CHANNELS, c, 3, 3])) if c > 0 => c,
        (_, shape) => {
            let (key, wanted) = match half {
                Half::Encoder => ("encoder's last", "[C, 64, 3, 3]"),
                Half::Decoder => ("decoder's first", "[64, C, 3, 3]"),
            };
            let found = match shape {
                Some(s) => format!("has shape {s:?}"),
                None => "is missing".to_string(),
            };
            return Err(Error::model(
                file,
                format!("the tiny {key} convolution `{name}` {found}; it should be {wanted} (C latent channels)"),
            ));
        }
    };
    let pool = tensors.contains_key(&format!("{mid}.pool.0.weight"));
    Ok(TinyConfig { latent_channels, pool })
}

/// Every tensor the architecture reads is there with its shape and a usable dtype, and nothing else is.
fn check(
    file: &Path,
    half: Half,
    cfg: TinyConfig,
    tensors: &HashMap<String, (String, Vec<usize>)>,
    source: &Source,
) -> Result<()> {
    let expected = expected_tensors(half, cfg);
    let what = format!(
        "tiny {} ({} latent channels{})",
        half.as_str(),
        cfg.latent_channels,
        if cfg.pool { ", FLUX.2 pool branch" } else { "" }
    );
    let wrong = |msg: String| Error::model(file, format!("{msg}; the file does not fit the {what} architecture"));
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => return Err(wrong(format!("the tensor for `{name}` {shape:?} is missing"))),
            Some((key, got)) if got != shape => {
                return Err(wrong(format!("`{key}` has shape {got:?}, expected {shape:?}")))
            }
            Some(_) => {}
        }
    }
    if let Some((_, (key, _))) = tensors.iter().find(|(n, _)| !expected.iter().any(|(e, _)| e == *n)) {
        return Err(wrong(format!("unexpected tensor `{key}`")));
    }
    for (key, _) in tensors.values() {
        let dtype = match source {
            Source::Safetensors(st) => st.get(key).ok().and_then(|v| DType::try_from(v.dtype()).ok()),
            Source::Ckpt(c) => c
                .tensors()
                .iter()
                .find(|(n, _)| n == key)
                .and_then(|(_, i)| ckpt_dtype(i.dtype)),
        };
        if !matches!(dtype, Some(DType::F16 | DType::BF16 | DType::F32 | DType::F64)) {
            return Err(wrong(format!("`{key}` is not a floating-point tensor ({dtype:?})")));
        }
    }
    Ok(())
}
