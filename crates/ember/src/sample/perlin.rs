//! `--perlin`: InvokeAI 2.x mixes 2-D Perlin noise into every seed's Gaussian noise,
//! `(1 - p)·randn + p·perlin`, one independent Perlin field per latent channel on an 8×8 lattice of random gradients
//! (`ldm.util.rand_perlin_2d`, called by `Generator.get_perlin_noise`).
//!
//! The gradients' angles come from `torch.rand` on the same CPU generator as the seed's `randn`, so a seed gives the
//! same field as InvokeAI. The arithmetic follows torch's float32 CPU kernels step by step (grid from `arange`,
//! `% 1`, quintic fade, `lerp`), agreeing with torch to a few float32 ulps (libm vs SLEEF `cos`/`sin`/`pow`).

use super::rng::TorchRng;
use crate::{Error, Result};

/// Cells of InvokeAI's Perlin lattice along each latent axis (`res = (8, 8)`).
pub const PERLIN_CELLS: usize = 8;

/// One `rand_perlin_2d((height, width), (8, 8))`: `height × width` values, row-major, drawing 81 uniforms from `rng`.
/// InvokeAI's code only works when both sides are multiples of 8 (it tiles whole cells), i.e. images whose sides are
/// multiples of 64 pixels; other sizes are refused with a message saying so.
pub fn rand_perlin_2d(rng: &mut TorchRng, height: usize, width: usize) -> Result<Vec<f32>> {
    check_size(height, width)?;
    let (cells_y, cells_x) = (PERLIN_CELLS, PERLIN_CELLS);
    let (per_cell_y, per_cell_x) = (height / cells_y, width / cells_x);
    // grid[i][j] = (gy[i], gx[j]): position inside the cell, in [0, 1).
    let fractional = |v: Vec<f32>, n: usize| -> Vec<f32> { v.into_iter().take(n).map(|a| a - a.floor()).collect() };
    let gy = fractional(torch_arange_f32(cells_y as f64, cells_y as f64 / height as f64), height);
    let gx = fractional(torch_arange_f32(cells_x as f64, cells_x as f64 / width as f64), width);

    // Gradients at the (cells + 1)² lattice points: (cos θ, sin θ), θ = 2π·U[0, 1).
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let gradients: Vec<(f32, f32)> = rng
        .rand((cells_y + 1) * (cells_x + 1))
        .into_iter()
        .map(|u| {
            let angle = two_pi * u;
            (angle.cos(), angle.sin())
        })
        .collect();
    let gradient = |row: usize, col: usize| gradients[row * (cells_x + 1) + col];

    let sqrt2 = std::f64::consts::SQRT_2 as f32;
    let mut out = Vec::with_capacity(height * width);
    for (i, &y) in gy.iter().enumerate() {
        let (cell_y, ty) = (i / per_cell_y, fade(y));
        for (j, &x) in gx.iter().enumerate() {
            let (cell_x, tx) = (j / per_cell_x, fade(x));
            // Each corner's gradient dotted with the offset from that corner (torch: product, then a 2-term sum).
            let corner = |dy: usize, dx: usize| {
                let (g0, g1) = gradient(cell_y + dy, cell_x + dx);
                (y - dy as f32) * g0 + (x - dx as f32) * g1
            };
            let (n00, n10, n01, n11) = (corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1));
            // rand_perlin_2d lerps along the first axis with t[..., 0], then along the second with t[..., 1].
            let v = torch_lerp(torch_lerp(n00, n10, ty), torch_lerp(n01, n11, ty), tx);
            out.push(sqrt2 * v);
        }
    }
    Ok(out)
}

/// `Generator.get_perlin_noise`: `channels` independent fields, `[channels, height, width]` row-major.
pub fn perlin_noise(rng: &mut TorchRng, channels: usize, height: usize, width: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(channels * height * width);
    for _ in 0..channels {
        out.extend(rand_perlin_2d(rng, height, width)?);
    }
    Ok(out)
}

/// `x = (1 - p)·x + p·perlin` in float32 as torch computes it (each scalar rounded to float first); `perlin` is one
/// `[channels, h, w]` field broadcast over the batch.
pub fn mix_perlin(noise: &mut [f32], perlin: &[f32], fraction: f64) {
    let keep = (1.0 - fraction) as f32;
    let mix = fraction as f32;
    if perlin.is_empty() {
        return;
    }
    for (i, v) in noise.iter_mut().enumerate() {
        *v = keep * *v + mix * perlin[i % perlin.len()];
    }
}

/// Whether an image of `width × height` pixels can take Perlin noise: InvokeAI tiles the latent (8 pixels a
/// position) with whole 8×8 cells, so both sides must be multiples of 64 pixels. Front-ends call this for sizes
/// they know before the run (an init image's, say); the noise itself checks again.
pub fn check_image_size(width: usize, height: usize) -> Result<()> {
    let side = PERLIN_CELLS * 8;
    let fits = |v: usize| v > 0 && v.is_multiple_of(side);
    if fits(width) && fits(height) {
        return Ok(());
    }
    Err(Error::invalid(
        "perlin",
        format!(
            "Perlin noise needs a width and height that are multiples of {side} pixels (InvokeAI cuts the latent \
             into 8×8 cells); this image is {width}×{height} pixels. Use e.g. width {} and height {} (with fit for \
             an init image), or set perlin to 0",
            (width / side).max(1) * side,
            (height / side).max(1) * side,
        ),
    ))
}

/// [`check_image_size`] for a latent of `height × width` positions.
fn check_size(height: usize, width: usize) -> Result<()> {
    check_image_size(width * 8, height * 8)
}

/// `torch.arange(0, end, step)` in float32 on the CPU. The kernel computes in double and rounds each value; its
/// vectorised loop (two 8-lane vectors per iteration) rounds each vector's base `step·i₀` to float first and adds
/// `k·step` to that, while the tail past the last 16-multiple takes `step·i` directly. Reproducing this keeps the
/// grid bit-identical to torch's (a plain `step·i` differs by an ulp at about 1 in 5 positions for 1/6 steps).
fn torch_arange_f32(end: f64, step: f64) -> Vec<f32> {
    const LANES: usize = 8;
    let n = (end / step).ceil() as usize;
    let vectorised = n - n % (2 * LANES);
    (0..n)
        .map(|i| {
            if i < vectorised {
                let i0 = i / LANES * LANES;
                let base = (step * i0 as f64) as f32;
                (base as f64 + (i - i0) as f64 * step) as f32
            } else {
                (step * i as f64) as f32
            }
        })
        .collect()
}

/// The default fade of `rand_perlin_2d`, `6t⁵ - 15t⁴ + 10t³`, one float32 torch op at a time (`t**3` is `t·t·t`;
/// `t**5`, `t**4` are `pow`, correctly rounded here, within SLEEF's 1 ulp).
fn fade(t: f32) -> f32 {
    let t5 = (t as f64).powi(5) as f32;
    let t4 = (t as f64).powi(4) as f32;
    let t3 = t * t * t;
    (6.0 * t5 - 15.0 * t4) + 10.0 * t3
}

/// `torch.lerp` on float32 (ATen's two-sided formula, fused multiply-add as its CPU kernel compiles it).
fn torch_lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (weight - 1.0).mul_add(end - start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_has_torch_length_and_exact_values_for_power_of_two_steps() {
        let a = torch_arange_f32(8.0, 8.0 / 64.0);
        assert_eq!(a.len(), 64);
        assert!(a.iter().enumerate().all(|(i, &v)| v == i as f32 * 0.125));
    }

    #[test]
    fn sizes_that_are_not_whole_cells_are_refused() {
        let mut rng = TorchRng::new(1);
        let err = rand_perlin_2d(&mut rng, 12, 16).unwrap_err().to_string();
        assert!(err.contains("multiples of 64"), "{err}");
        assert!(rand_perlin_2d(&mut rng, 0, 8).is_err());
    }
}
