//! Inpainting masks: where an init image is repainted. The mask comes from `-M` (white = repaint, black = keep, any
//! size: it is resized to the image), else from the init image's transparent pixels (InvokeAI's way), and grows by
//! the canvas `--outcrop` adds. It is processed as diffusers' mask processor does — grey, resized with Lanczos,
//! binarised at ½ — and reaches the latents by nearest-neighbour sampling (`F.interpolate`'s default: the pixel at
//! the top-left corner of each 8×8 block). After decoding, the pixels outside it are put back ([`paste_back`]).

use super::init::{decode, resize_gray, PreparedImage};
use crate::request::{GenerateRequest, Outcrop, MAX_SIDE};
use crate::{Error, Result};
use image::{GrayImage, Luma, RgbImage};
use std::path::Path;

/// Pixel value of the area to repaint in a binarised mask (keep = 0).
pub const REPAINT: u8 = 255;

/// The mask of an inpainting run.
#[derive(Debug, Clone)]
pub struct InpaintMask {
    /// The mask as given (from `-M` or the transparency), binarised, at the init image's run size, before
    /// `--invert-mask` and `--outcrop`: what a front-end saves next to the image (`{prefix}.{seed}.mask.png`) so that
    /// the recorded options replay it. None when only `--outcrop` makes the mask.
    pub given: Option<GrayImage>,
    /// What is repainted, at the run size (the outcropped canvas): 255 = repaint, 0 = keep.
    pub repaint: GrayImage,
}

impl InpaintMask {
    /// The mask at latent resolution (`[h/8 × w/8]`, row-major, 1 = repaint): the pixel at `(8x, 8y)` of each block,
    /// as torch's nearest interpolation picks it.
    pub fn latent(&self) -> (Vec<f32>, usize, usize) {
        let (w, h) = (self.repaint.width() / 8, self.repaint.height() / 8);
        let values = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f32::from(self.repaint.get_pixel(8 * x, 8 * y)[0] == REPAINT))
            .collect();
        (values, w as usize, h as usize)
    }

    /// Whether some latent is repainted: a mask thinner than the 8-pixel grid can miss every sampled pixel.
    pub fn reaches_latents(&self) -> bool {
        self.latent().0.contains(&1.0)
    }
}

/// Makes the mask of `request` for its prepared init image (`prepared` grows by the outcrop), or None for plain
/// img2img (no `-M`, no transparency, no outcrop). Warnings are added to `prepared.warnings`.
pub fn prepare_mask(request: &GenerateRequest, prepared: &mut PreparedImage) -> Result<Option<InpaintMask>> {
    let (w, h) = prepared.rgb.dimensions();
    let given = match &request.init_mask {
        Some(source) => {
            if prepared.transparency.is_some() {
                prepared.warnings.push(
                    "the init image has transparent pixels; the mask given with -M decides what is repainted"
                        .to_string(),
                );
            }
            let name = source.display_name();
            let mask = decode(source)?;
            let (mw, mh) = (mask.width(), mask.height());
            if mw == 0 || mh == 0 {
                return Err(Error::image(Path::new(&name), "the mask has no pixels"));
            }
            // Compare aspect ratios by cross-multiplying; 1% apart is a different shape.
            let (a, b) = (mw as u64 * h as u64, mh as u64 * w as u64);
            if a.abs_diff(b) * 100 > a.max(b) {
                prepared.warnings.push(format!(
                    "the mask {name} is {mw}×{mh} pixels, the image {w}×{h}: it was stretched to the image's shape"
                ));
            }
            Some(binarise(&resize_gray(&pil_luma(&mask), w, h)))
        }
        None => match prepared.transparency.take().map(|t| binarise(&t)) {
            // Faint transparency (alpha ≥ ½ everywhere, e.g. an editor's soft edge) marks nothing to repaint: the
            // image is used as it is rather than refused as an all-black mask.
            Some(mask) if !request.invert_mask && !mask.pixels().any(|p| p[0] == REPAINT) => {
                prepared.warnings.push(
                    "the init image's transparency is faint (alpha ≥ 128 everywhere): nothing is marked for \
                     repainting, so it runs as img2img"
                        .to_string(),
                );
                None
            }
            mask => mask,
        },
    };
    if given.is_none() && request.invert_mask {
        return Err(Error::invalid(
            "invert_mask",
            "there is no mask to invert: give one with -M, or an init image with transparent pixels",
        ));
    }
    if given.is_none() && request.outcrop.is_empty() {
        return Ok(None);
    }
    let mut repaint = given.clone().unwrap_or_else(|| GrayImage::new(w, h));
    if request.invert_mask {
        image::imageops::invert(&mut repaint);
    }
    if !request.outcrop.is_empty() {
        let (rgb, mask) = outcrop(&prepared.rgb, &repaint, request.outcrop)?;
        prepared.rgb = rgb;
        repaint = mask;
    }
    let painted = repaint.pixels().filter(|p| p[0] == REPAINT).count();
    if painted == 0 {
        return Err(Error::invalid(
            "init_mask",
            "the mask is all black: nothing is repainted. Paint white where the image should change \
             (or drop --invert-mask)",
        ));
    }
    if painted == repaint.len() {
        prepared.warnings.push(
            "the mask covers the whole image: nothing of it is kept, this is img2img (drop the mask for that)"
                .to_string(),
        );
    }
    Ok(Some(InpaintMask { given, repaint }))
}

/// A mask image in grey as PIL's `convert("L")` makes it (what diffusers' mask processor does): ITU-R 601 luma
/// `(19595·R + 38470·G + 7471·B + 2¹⁵) >> 16`; an alpha channel is ignored.
fn pil_luma(image: &image::DynamicImage) -> GrayImage {
    if let image::DynamicImage::ImageLuma8(gray) = image {
        return gray.clone();
    }
    let rgb = image.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
        Luma([((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16) as u8])
    })
}

/// diffusers' `binarize`: `v / 255 < 0.5` → keep (0), else repaint (255).
fn binarise(mask: &GrayImage) -> GrayImage {
    GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
        Luma([if mask.get_pixel(x, y)[0] >= 128 { REPAINT } else { 0 }])
    })
}

/// The image on a canvas larger by `by` (the new area black, as transparent black would be without its alpha) and
/// the mask with the new area to repaint.
fn outcrop(rgb: &RgbImage, mask: &GrayImage, by: Outcrop) -> Result<(RgbImage, GrayImage)> {
    let (w, h) = rgb.dimensions();
    let (cw, ch) = (w + by.left + by.right, h + by.top + by.bottom);
    if cw as usize > MAX_SIDE || ch as usize > MAX_SIDE {
        return Err(Error::invalid(
            "outcrop",
            format!("{w}×{h} pixels extended by {by} would be {cw}×{ch}, over the {MAX_SIDE}-pixel limit of a side"),
        ));
    }
    let mut canvas = RgbImage::new(cw, ch);
    image::imageops::replace(&mut canvas, rgb, by.left.into(), by.top.into());
    let mut repaint = GrayImage::from_pixel(cw, ch, Luma([REPAINT]));
    image::imageops::replace(&mut repaint, mask, by.left.into(), by.top.into());
    Ok((canvas, repaint))
}

/// `image × (mask < ½)` in the VAE's [-1, 1] pixels: the area to repaint set to 0 (mid grey), what an inpainting
/// UNet's masked-image latent is encoded from.
pub fn masked_image(pixels: &candle_core::Tensor, mask: &InpaintMask) -> candle_core::Result<candle_core::Tensor> {
    let (w, h) = mask.repaint.dimensions();
    let keep: Vec<f32> = mask.repaint.pixels().map(|p| f32::from(p[0] != REPAINT)).collect();
    let keep = candle_core::Tensor::from_vec(keep, (1, 1, h as usize, w as usize), pixels.device())?
        .to_dtype(pixels.dtype())?;
    pixels.broadcast_mul(&keep)
}

/// Puts the original pixels back outside the mask: `original·(1 − w) + decoded·w`, where `w` is 1 inside the mask
/// and 0 outside. `blur` > 0 feathers `w` over about that many pixels *inside* the edge (a Gaussian of σ = `blur`,
/// rescaled so that it reaches 0 at the edge), so the pixels outside the mask stay exactly the original's.
pub fn paste_back(decoded: &RgbImage, original: &RgbImage, repaint: &GrayImage, blur: u32) -> RgbImage {
    let weight: Vec<f32> = if blur == 0 {
        repaint.pixels().map(|p| f32::from(p[0] == REPAINT)).collect()
    } else {
        let blurred = image::imageops::blur(repaint, blur as f32);
        repaint
            .pixels()
            .zip(blurred.pixels())
            .map(|(m, b)| match m[0] == REPAINT {
                true => (2.0 * f32::from(b[0]) / 255.0 - 1.0).clamp(0.0, 1.0),
                false => 0.0,
            })
            .collect()
    };
    let (w, _) = decoded.dimensions();
    RgbImage::from_fn(decoded.width(), decoded.height(), |x, y| {
        let k = weight[(y * w + x) as usize];
        let (d, o) = (decoded.get_pixel(x, y), original.get_pixel(x, y));
        image::Rgb(std::array::from_fn(|c| {
            (f32::from(o[c]) * (1.0 - k) + f32::from(d[c]) * k).round() as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_mask_samples_the_top_left_pixel_of_each_block() {
        let mut repaint = GrayImage::new(16, 8);
        // Block (1, 0) has only its corner painted; block (0, 0) has everything but its corner.
        repaint.put_pixel(8, 0, Luma([REPAINT]));
        for (x, y, p) in repaint.enumerate_pixels_mut() {
            if x < 8 && (x, y) != (0, 0) {
                *p = Luma([REPAINT]);
            }
        }
        let mask = InpaintMask { given: None, repaint };
        assert_eq!(mask.latent(), (vec![0.0, 1.0], 2, 1));
    }

    #[test]
    fn colour_masks_turn_grey_as_pil_converts_them() {
        // PIL: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for each colour.
        let colours = [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [128, 128, 128],
            [255, 255, 255],
            [200, 100, 50],
        ];
        let want = [76u8, 150, 29, 128, 255, 124];
        for (c, w) in colours.iter().zip(want) {
            let image = image::DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, image::Rgb(*c)));
            assert_eq!(pil_luma(&image).get_pixel(0, 0)[0], w, "{c:?}");
        }
    }

    #[test]
    fn binarising_splits_at_one_half() {
        let gray = GrayImage::from_fn(4, 1, |x, _| Luma([[0, 127, 128, 255][x as usize]]));
        let b = binarise(&gray);
        assert_eq!(b.into_raw(), vec![0, 0, 255, 255]);
    }

    #[test]
    fn paste_back_keeps_the_outside_exactly_and_feathers_inside() {
        let original = RgbImage::from_pixel(32, 32, image::Rgb([10, 20, 30]));
        let decoded = RgbImage::from_pixel(32, 32, image::Rgb([200, 100, 50]));
        let repaint = GrayImage::from_fn(32, 32, |x, _| Luma([if x >= 16 { REPAINT } else { 0 }]));
        for blur in [0, 4] {
            let out = paste_back(&decoded, &original, &repaint, blur);
            for (x, y, p) in out.enumerate_pixels() {
                if x < 16 {
                    assert_eq!(p, original.get_pixel(x, y), "outside the mask, blur {blur}");
                }
            }
            assert_eq!(
                out.get_pixel(31, 5),
                decoded.get_pixel(31, 5),
                "deep inside, blur {blur}"
            );
        }
        let sharp = paste_back(&decoded, &original, &repaint, 0);
        assert_eq!(sharp.get_pixel(16, 0), decoded.get_pixel(16, 0));
        // Feathered: from near the original at the edge to the decoded pixels a few σ inside, rising all the way.
        let soft = paste_back(&decoded, &original, &repaint, 4);
        let red: Vec<u8> = (16..32).map(|x| soft.get_pixel(x, 0)[0]).collect();
        assert!(red[0] < 50, "the edge is mostly the original: {red:?}");
        assert!(red.windows(2).all(|w| w[0] <= w[1]), "rising: {red:?}");
        assert!(red[4] > 50 && red[4] < 200, "feathered over about σ: {red:?}");
    }

    #[test]
    fn outcrop_extends_canvas_and_mask() {
        let rgb = RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
        let mask = GrayImage::new(8, 8);
        let by = Outcrop {
            top: 8,
            left: 16,
            ..Default::default()
        };
        let (canvas, repaint) = outcrop(&rgb, &mask, by).expect("fits");
        assert_eq!(canvas.dimensions(), (24, 16));
        assert_eq!(canvas.get_pixel(16, 8).0, [1, 2, 3]);
        assert_eq!(canvas.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(repaint.get_pixel(16, 8)[0], 0);
        assert_eq!(repaint.get_pixel(15, 8)[0], REPAINT);
        let huge = Outcrop {
            left: 4096,
            ..Default::default()
        };
        assert!(outcrop(&rgb, &mask, huge).is_err());
    }
}
