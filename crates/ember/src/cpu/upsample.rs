//! Nearest-neighbour ×2 upsampling (every `Upsample2D` of the UNet and the VAE decoder), parallel over channel
//! planes. candle's generic version took ~210 ms for the VAE's last one (256 channels to 512×512) on one thread.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// `out[p][2y + dy][2x + dx] = input[p][y][x]` for `planes` planes of `height × width`.
pub fn upsample_nearest_2x(input: &[f32], out: &mut [f32], height: usize, width: usize) -> Result<()> {
    let plane = height * width;
    if plane == 0 || !input.len().is_multiple_of(plane) || out.len() != 4 * input.len() {
        candle_core::bail!(
            "upsampling: input of {} values and output of {} do not fit planes of {height}×{width}",
            input.len(),
            out.len()
        );
    }
    out.par_chunks_exact_mut(4 * plane)
        .zip(input.par_chunks_exact(plane))
        .for_each(|(dst, src)| {
            for (rows, src_row) in dst.chunks_exact_mut(4 * width).zip(src.chunks_exact(width)) {
                let (top, bottom) = rows.split_at_mut(2 * width);
                for (pair, &v) in top.chunks_exact_mut(2).zip(src_row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    Ok(())
}

/// [`upsample_nearest_2x`] as a candle operation on a contiguous f32 CPU tensor `[B, C, H, W]` → `[B, C, 2H, 2W]`.
pub struct UpsampleNearest2x;

impl CustomOp1 for UpsampleNearest2x {
    fn name(&self) -> &'static str {
        "ember-upsample-nearest-2x"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let x = contiguous_f32(x, layout, "upsampling: input")?;
        let mut out = super::zeroed_output(4 * x.len());
        upsample_nearest_2x(x, &mut out, h, w)?;
        Ok((CpuStorage::F32(out), Shape::from((b, c, 2 * h, 2 * w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    #[test]
    fn every_output_pixel_is_its_source_pixel() -> Result<()> {
        for (planes, h, w) in [(1, 1, 1), (3, 2, 5), (2, 7, 3)] {
            let input = test_values(planes * h * w, (h * w) as u64);
            let mut out = vec![f32::NAN; 4 * input.len()];
            upsample_nearest_2x(&input, &mut out, h, w)?;
            for (i, &v) in out.iter().enumerate() {
                let (p, y, x) = (i / (4 * h * w), i / (2 * w) % (2 * h), i % (2 * w));
                assert_eq!(v, input[(p * h + y / 2) * w + x / 2], "plane {p}, ({y}, {x})");
            }
        }
        assert!(upsample_nearest_2x(&[0.0; 6], &mut [0.0; 8], 2, 2).is_err());
        Ok(())
    }
}
