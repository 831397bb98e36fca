//! `--hires_fix` geometry (InvokeAI 2.x's txt2img2img): the first pass runs at about the model's native area with
//! the target's aspect ratio, and its latents are resized to the target's latent size with torch's bilinear
//! interpolation (`F.interpolate(mode="bilinear", align_corners=False)`) before the img2img pass.

use crate::Result;
use candle_core::{DType, Tensor};

/// Size of the first pass for a `width × height` target with a model trained at `native × native` pixels:
/// area `native²`, the target's aspect ratio, the shorter side at least `native / 2`, floored and trimmed down to
/// multiples of 8.
pub fn first_pass_size(width: usize, height: usize, native: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let min_side = (native as f64 * 0.5).floor();
    let area = (native * native) as f64;
    let (w, h) = if aspect > 1.0 {
        let h = min_side.max((area / aspect).sqrt());
        (h * aspect, h)
    } else {
        let w = min_side.max((area * aspect).sqrt());
        (w, w / aspect)
    };
    let trim = |v: f64| {
        let v = v.floor() as usize;
        v - v % 8
    };
    (trim(w).max(8), trim(h).max(8))
}

/// Bilinear resize of `[n, c, h, w]` latents to `[n, c, out_h, out_w]`, with torch's half-pixel centres
/// (`align_corners=False`): source coordinate `(dst + 0.5) · in / out − 0.5`, clamped at 0.
pub fn resize_bilinear(latents: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, in_h, in_w) = latents.dims4()?;
    let dtype = latents.dtype();
    let planes = latents.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let taps = |out: usize, input: usize| -> Vec<(usize, usize, f64)> {
        let scale = input as f64 / out as f64;
        (0..out)
            .map(|d| {
                let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = (i0 + 1).min(input - 1);
                (i0, i1, src - i0 as f64)
            })
            .collect()
    };
    let (rows, cols) = (taps(out_h, in_h), taps(out_w, in_w));
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    for plane in planes.chunks_exact(in_h * in_w) {
        for &(y0, y1, fy) in &rows {
            for &(x0, x1, fx) in &cols {
                let at = |y: usize, x: usize| plane[y * in_w + x];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, out_h, out_w), latents.device())?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected sizes from `hires_first_pass` in tools/oracle/make_pipeline_reference.py (InvokeAI's formula in
    /// Python), native 512 except the tiny model's 64.
    #[test]
    fn first_pass_keeps_the_native_area_and_the_aspect_ratio() {
        for (w, h, native, want) in [
            (1024, 768, 512, (584, 440)),
            (768, 1024, 512, (440, 584)),
            (1024, 1024, 512, (512, 512)),
            (2048, 512, 512, (1024, 256)),
            (512, 2048, 512, (256, 1024)),
            (640, 480, 512, (584, 440)),
            (128, 96, 64, (72, 48)),
        ] {
            assert_eq!(first_pass_size(w, h, native), want, "{w}×{h}");
        }
    }
}
