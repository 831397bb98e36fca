//! img2img init images: decode (with size limits and EXIF orientation), size the image as InvokeAI 2.x does,
//! keep its transparency as an inpainting mask, and convert between RGB images and the VAE's pixel tensors.
//!
//! Sizing: without a fit box the image keeps its size, rounded down to multiples of 8 (the VAE's factor)
//! by a Lanczos resize to that size, as InvokeAI's `_squeeze_image`. With a box `(w, h)` it is scaled
//! (up or down) to fit inside the box keeping its aspect ratio, then rounded down to multiples of 8, as
//! InvokeAI's `InitImageResizer` (which rounds to 64; SD only needs 8).

use crate::request::{InitImage, MAX_SIDE};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits, Luma, RgbImage};
use std::io::BufReader;
use std::path::PathBuf;

/// Largest init image accepted before decoding, per side (it is resized to at most [`MAX_SIDE`] after).
pub const MAX_DECODE_SIDE: u32 = 8192;
/// The VAE halves the size three times: sides must be multiples of 8.
const MULTIPLE: u32 = 8;
/// Smallest side accepted (one latent pixel).
const MIN_SIDE: u32 = 8;

/// An init image ready for the VAE, and what the user should be told about it.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Both sides are multiples of 8, in 8..=[`MAX_SIDE`]. Transparent pixels keep their colour (the alpha channel
    /// is dropped, not flattened, as diffusers' `convert("RGB")`).
    pub rgb: RgbImage,
    /// The image's transparency as a mask of the same size, `255 − alpha` (white = transparent = to repaint), when
    /// some pixel is not fully opaque.
    pub transparency: Option<GrayImage>,
    pub warnings: Vec<String>,
}

/// Loads and sizes an init image. `fit`: the box to scale it into (the request's width × height).
pub fn prepare_init_image(source: &InitImage, fit: Option<(u32, u32)>) -> Result<PreparedImage> {
    let name = PathBuf::from(source.display_name());
    let image = decode(source)?;
    let (w, h) = (image.width(), image.height());
    let (tw, th) = run_size((w, h), fit).map_err(|message| Error::image(&name, message))?;

    let transparency = has_transparency(&image).then(|| {
        let alpha = image.to_luma_alpha8();
        let inverted = GrayImage::from_fn(w, h, |x, y| Luma([255 - alpha.get_pixel(x, y)[1]]));
        resize_gray(&inverted, tw, th)
    });
    let rgb = image.to_rgb8();
    let rgb = if (tw, th) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, tw, th, FilterType::Lanczos3)
    };
    Ok(PreparedImage {
        rgb,
        transparency,
        warnings: Vec::new(),
    })
}

/// A grey image resized with Lanczos (a mask follows its image, as diffusers' mask processor resizes it).
pub(crate) fn resize_gray(gray: &GrayImage, w: u32, h: u32) -> GrayImage {
    if gray.dimensions() == (w, h) {
        return gray.clone();
    }
    image::imageops::resize(gray, w, h, FilterType::Lanczos3)
}

/// The size an init image of `(w, h)` pixels (after EXIF orientation) runs at: scaled into the `fit` box or kept,
/// rounded down to multiples of 8. Needs no pixels, so a front-end can check a job's size from an image's header
/// before decoding it. Errs with a message for the user when the result is too small or too large.
pub fn run_size((w, h): (u32, u32), fit: Option<(u32, u32)>) -> std::result::Result<(u32, u32), String> {
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(format!(
            "it is {w}×{h} pixels; an init image needs at least {MIN_SIDE} pixels on each side"
        ));
    }
    let (tw, th) = match fit {
        Some((bw, bh)) => {
            // InvokeAI: scale = min(box_w / w, box_h / h); int() of each scaled side, then round down.
            let scale = (bw as f64 / w as f64).min(bh as f64 / h as f64);
            let (rw, rh) = ((scale * w as f64) as u32, (scale * h as f64) as u32);
            (floor_multiple(rw), floor_multiple(rh))
        }
        None => (floor_multiple(w), floor_multiple(h)),
    };
    if tw < MIN_SIDE || th < MIN_SIDE {
        return Err(format!(
            "it is {w}×{h} pixels: fitted into the {}×{} box it would be {tw}×{th}, less than {MIN_SIDE} pixels \
             on a side; use a larger box or crop the image",
            fit.map_or(w, |b| b.0),
            fit.map_or(h, |b| b.1)
        ));
    }
    if tw as usize > MAX_SIDE || th as usize > MAX_SIDE {
        return Err(format!(
            "at {tw}×{th} pixels it is larger than {MAX_SIDE} pixels on a side; fit it into a smaller box (fit with \
             width and height) or shrink it first"
        ));
    }
    Ok((tw, th))
}

/// Decodes an image (a file, or one already in memory) within the size limits, with a file's EXIF orientation
/// applied. Front-ends call it to check an input before loading a model (and pass the result as
/// [`InitImage::Memory`]).
pub fn decode(source: &InitImage) -> Result<DynamicImage> {
    match source {
        InitImage::Path(path) => decode_file(path),
        InitImage::Memory { image, name } => {
            if image.width() > MAX_DECODE_SIDE || image.height() > MAX_DECODE_SIDE {
                return Err(Error::image(
                    std::path::Path::new(name),
                    too_large_message(image.width(), image.height()),
                ));
            }
            Ok(image.clone())
        }
    }
}

/// Decodes a file with limits checked before any pixel is allocated, then applies its EXIF orientation.
fn decode_file(path: &std::path::Path) -> Result<DynamicImage> {
    let file = std::fs::File::open(path).map_err(|e| Error::image(path, format!("cannot open it: {e}")))?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| Error::image(path, format!("cannot read it: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::image(
            path,
            "unknown image format; use a PNG, JPEG, WebP or BMP file",
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(path, e))?;
    let orientation = decoder.orientation().map_err(|e| decode_error(path, e))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, e))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn decode_error(path: &std::path::Path, e: image::ImageError) -> Error {
    let message = match e {
        image::ImageError::Limits(_) => format!(
            "its declared size is over {MAX_DECODE_SIDE}×{MAX_DECODE_SIDE} pixels or needs too much memory to decode; \
             shrink it first"
        ),
        image::ImageError::Unsupported(e) => format!("unsupported image: {e}; use a PNG, JPEG, WebP or BMP file"),
        e => format!("the file is broken or truncated: {e}"),
    };
    Error::image(path, message)
}

fn too_large_message(w: u32, h: u32) -> String {
    format!("it is {w}×{h} pixels, over the {MAX_DECODE_SIDE}×{MAX_DECODE_SIDE} limit; shrink it first")
}

fn floor_multiple(v: u32) -> u32 {
    v - v % MULTIPLE
}

/// True when some pixel is not fully opaque (an alpha channel alone, all 255, is not transparency).
fn has_transparency(image: &DynamicImage) -> bool {
    image.color().has_alpha() && image.to_rgba8().pixels().any(|p| p[3] < 255)
}

/// `[1, 3, H, W]` f32 in [-1, 1] (`px / 255 · 2 − 1`), the VAE encoder's input.
pub fn rgb_to_tensor(rgb: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = p[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), device)
}

/// `[3, H, W]` or `[1, 3, H, W]` in [0, 1] (any float dtype, any device) → 8-bit RGB:
/// clamp, `× 255`, round half to even (numpy's `round`, as diffusers' `numpy_to_pil`).
pub fn tensor_to_rgb(t: &Tensor) -> Result<RgbImage> {
    let t = match t.dims() {
        [1, 3, _, _] => t.squeeze(0)?,
        [3, _, _] => t.clone(),
        dims => {
            return Err(candle_core::Error::Msg(format!(
                "tensor_to_rgb expects [3, H, W] or [1, 3, H, W], got {dims:?}"
            ))
            .into())
        }
    };
    let (_, h, w) = t.dims3()?;
    let planes = t
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
    let (w32, h32) = (u32::try_from(w), u32::try_from(h));
    let (Ok(w32), Ok(h32)) = (w32, h32) else {
        return Err(candle_core::Error::Msg(format!("image of {w}×{h} pixels is too large")).into());
    };
    Ok(RgbImage::from_fn(w32, h32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Rgb([to_u8(planes[i]), to_u8(planes[h * w + i]), to_u8(planes[2 * h * w + i])])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip_and_rounding() {
        let rgb = RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 30) as u8, 255]));
        let t = rgb_to_tensor(&rgb, &Device::Cpu).expect("to tensor");
        assert_eq!(t.dims(), &[1, 3, 8, 16]);
        let unit = ((t + 1.0).expect("add") / 2.0).expect("div");
        assert_eq!(tensor_to_rgb(&unit).expect("to rgb"), rgb);
        // 0.5 × 255 = 127.5 → 128 (ties to even); out-of-range values are clamped.
        let t = Tensor::from_vec(vec![0.5f32, -0.2, 1.7], (3, 1, 1), &Device::Cpu).expect("tensor");
        assert_eq!(tensor_to_rgb(&t).expect("to rgb").get_pixel(0, 0).0, [128, 0, 255]);
        let bad = Tensor::zeros((2, 4, 4), DType::F32, &Device::Cpu).expect("tensor");
        assert!(tensor_to_rgb(&bad).is_err());
    }
}
