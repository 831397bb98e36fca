//! Fast step previews: latents mapped straight to RGB by a fixed 4×3 linear map (plus a bias), without the VAE.
//!
//! SD 1.x/2.x (one VAE): keturn's least-squares fit of SD 1.4's VAE ("Decoding latents to RGB without
//! upscaling", discuss.huggingface.co/t/23204), the factors InvokeAI 2.x (`v1_5_latent_rgb_factors` in
//! `ldm/invoke/generator/base.py`), AUTOMATIC1111 ("Approx cheap", `sd_vae_approx.py`) and early ComfyUI
//! (`latent_formats.SD15`) use. SDXL (another VAE, another latent space): ComfyUI's published fit for SDXL's VAE
//! (`latent_formats.SDXL`, with its bias). As in InvokeAI 2.x the result, roughly in [-1, 1], is mapped with
//! `((x + 1) / 2).clamp(0, 1) × 255` and truncated to 8 bits (torch's `.byte()`).

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

/// Rows are the four latent channels, columns R, G, B.
pub const SD1_LATENT_RGB_FACTORS: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// SDXL's VAE: rows are the four latent channels, columns R, G, B.
pub const SDXL_LATENT_RGB_FACTORS: [[f32; 3]; 4] = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
];
/// Added to SDXL's previews' R, G, B.
pub const SDXL_LATENT_RGB_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];

/// A latent space's linear map to RGB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentRgb {
    /// Rows are the latent channels, columns R, G, B.
    pub factors: [[f32; 3]; 4],
    pub bias: [f32; 3],
}

impl LatentRgb {
    /// SD 1.x's VAE (SD 2.x shares it).
    pub const SD1: LatentRgb = LatentRgb {
        factors: SD1_LATENT_RGB_FACTORS,
        bias: [0.0; 3],
    };
    /// SDXL's VAE.
    pub const SDXL: LatentRgb = LatentRgb {
        factors: SDXL_LATENT_RGB_FACTORS,
        bias: SDXL_LATENT_RGB_BIAS,
    };
}

/// `[1, 4, h, w]` or `[4, h, w]` SD 1.x/2.x latents (any float dtype, any device) → an `w × h` RGB preview, one pixel
/// per latent position (64×64 for a 512×512 image).
pub fn latents_to_rgb(latents: &Tensor) -> Result<RgbImage> {
    latents_to_rgb_with(latents, &LatentRgb::SD1)
}

/// [`latents_to_rgb`] for the latent space `map` describes (see `ModelSpec::preview`).
pub fn latents_to_rgb_with(latents: &Tensor, map: &LatentRgb) -> Result<RgbImage> {
    let latents = match latents.dims() {
        [1, 4, _, _] => latents.squeeze(0)?,
        [4, _, _] => latents.clone(),
        dims => {
            return Err(Error::Candle(candle_core::Error::Msg(format!(
                "a preview needs 4-channel latents of shape [1, 4, h, w] or [4, h, w], got {dims:?}"
            ))))
        }
    };
    let (_, h, w) = latents.dims3()?;
    let planes = latents
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(Error::Candle(candle_core::Error::Msg(format!(
            "latents of {w}×{h} are too large for a preview"
        ))));
    };
    let to_u8 = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
    Ok(RgbImage::from_fn(w32, h32, |x, y| {
        let i = y as usize * w + x as usize;
        let mut rgb = map.bias;
        for (c, factors) in map.factors.iter().enumerate() {
            let v = planes[c * h * w + i];
            for (out, f) in rgb.iter_mut().zip(factors) {
                *out += v * f;
            }
        }
        image::Rgb(rgb.map(to_u8))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_latent_position_through_the_factors() {
        // 1×4×1×3: position 0 is channel 1 only, position 1 is all zeros, position 2 mixes channels 3 and 4.
        #[rustfmt::skip]
        let data = vec![
            1.0f32, 0.0, 0.0, // L1
            0.0,    0.0, 0.0, // L2
            0.0,    0.0, 2.0, // L3
            0.0,    0.0, 1.0, // L4
        ];
        let latents = Tensor::from_vec(data, (1, 4, 1, 3), &Device::Cpu).expect("tensor");
        let rgb = latents_to_rgb(&latents).expect("preview");
        assert_eq!((rgb.width(), rgb.height()), (3, 1));
        // (0.298 + 1) / 2 × 255 = 165.495 → 165; (1.207 / 2) × 255 = 153.89 → 153; 1.208 / 2 × 255 = 154.02 → 154.
        assert_eq!(rgb.get_pixel(0, 0).0, [165, 153, 154]);
        // Zero latents are mid grey: 0.5 × 255 = 127.5 → 127.
        assert_eq!(rgb.get_pixel(1, 0).0, [127, 127, 127]);
        // 2·L3 + L4 = (−0.5, 0.107, 0.055) → (0.25, 0.5535, 0.5275) × 255 = (63.75, 141.14, 134.51).
        assert_eq!(rgb.get_pixel(2, 0).0, [63, 141, 134]);
    }

    #[test]
    fn clamps_and_accepts_unbatched_f64_latents() {
        let latents = Tensor::from_vec(vec![10.0f64, -10.0, 0.0, 0.0], (4, 1, 1), &Device::Cpu).expect("tensor");
        // L1·10 − L2·10 = (1.11, −0.79, 0.35): R clamps to 255, G to 0.105 → 26, B to 0.675 → 172.
        assert_eq!(
            latents_to_rgb(&latents).expect("preview").get_pixel(0, 0).0,
            [255, 26, 172]
        );
        let wrong = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).expect("tensor");
        assert!(latents_to_rgb(&wrong).is_err());
    }

    #[test]
    fn sdxl_latents_go_through_sdxl_factors_and_bias() {
        let data = vec![0.0f32, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let latents = Tensor::from_vec(data, (1, 4, 1, 2), &Device::Cpu).expect("tensor");
        let rgb = latents_to_rgb_with(&latents, &LatentRgb::SDXL).expect("preview");
        // Zero latents give the bias: (1.1084, 0.9825, 0.9989) / 2 × 255 = (141.32, 125.27, 127.36).
        assert_eq!(rgb.get_pixel(0, 0).0, [141, 125, 127]);
        // L1 + bias = (0.4735, 0.4057, 0.4330) → (1.4735, 1.4057, 1.4330) / 2 × 255 = (187.87, 179.23, 182.71).
        assert_eq!(rgb.get_pixel(1, 0).0, [187, 179, 182]);
    }
}
