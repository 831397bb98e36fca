//! Linear layers (`x · Wᵀ + b`) with bf16 operands on the AMX tile unit, f32 accumulation: the weights are packed
//! once, at load, as AMX's B operand; the activations are rounded to bf16 as they are copied into the A operand.

use super::{amx, contiguous_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;

/// A linear layer's `weight: [out, in]` as the bf16 B operand `Wᵀ` (`[in, out]`, panels of 32 output features), and
/// its bias (zeros without one).
#[derive(Debug)]
pub struct PackedLinear {
    in_features: usize,
    out_features: usize,
    weight: amx::PanelsB,
    bias: Vec<f32>,
}

/// Bytes of B panels a task keeps in L2 while the A rows stream past.
const RESIDENT_BYTES: usize = 512 << 10;

impl PackedLinear {
    /// Packs `weight: [out, in]` (f32, or bf16 as loaded for this: rounding bf16 values to bf16 keeps them) and
    /// `bias: [out]`.
    pub fn new<W: Copy + Into<f32> + Sync>(
        weight: &[W],
        bias: Option<&[f32]>,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self> {
        if weight.len() != out_features * in_features || bias.is_some_and(|b| b.len() != out_features) {
            candle_core::bail!(
                "linear layer: weight of {} values or its bias does not fit {out_features}×{in_features}",
                weight.len()
            );
        }
        Ok(Self {
            in_features,
            out_features,
            weight: amx::PanelsB::from_fn(in_features, out_features, |i, o| weight[o * in_features + i].into()),
            bias: bias.map_or_else(|| vec![0.0; out_features], <[f32]>::to_vec),
        })
    }

    /// Bytes held (the packed weight and the bias).
    pub fn bytes(&self) -> usize {
        self.weight.bytes() + self.bias.len() * 4
    }

    /// `out[rows, out] = x[rows, in] · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (k, n) = (self.in_features, self.out_features);
        if k == 0 || !x.len().is_multiple_of(k) || out.len() != x.len() / k * n {
            candle_core::bail!(
                "linear layer: input of {} values / output of {} do not fit {k} → {n} features",
                x.len(),
                out.len()
            );
        }
        let rows = x.len() / k;
        if rows == 0 {
            return Ok(());
        }
        let depth = self.weight.depth();
        let row_blocks = rows.div_ceil(amx::BLOCK);
        SCRATCH.with(|scratch| {
            let mut buffer = scratch.borrow_mut();
            buffer.resize_uninit(row_blocks * amx::BLOCK * depth);
            // The activations as bf16 rows, zero-padded to the weight's depth and to whole blocks of rows.
            buffer
                .as_mut_slice()
                .par_chunks_exact_mut(depth)
                .enumerate()
                .for_each(|(row, dst)| {
                    let src = if row < rows { &x[row * k..][..k] } else { &[][..] };
                    amx::round_to_bf16(src, dst);
                    dst[src.len()..].fill(0);
                });
            let panels = self.weight.columns() / amx::BLOCK;
            let panels_per_task = (RESIDENT_BYTES / (depth * amx::BLOCK * 2)).clamp(1, panels);
            let panel_groups = panels.div_ceil(panels_per_task);
            let threads = rayon::current_num_threads().max(1);
            let row_groups = (4 * threads).div_ceil(panel_groups).clamp(1, row_blocks);
            let rows_per_task = row_blocks.div_ceil(row_groups);
            let out = amx::SharedOut::new(out);
            let a = buffer.as_slice();
            (0..row_groups * panel_groups).into_par_iter().for_each(|task| {
                let (row_group, panel_group) = (task / panel_groups, task % panel_groups);
                let blocks = row_group * rows_per_task..((row_group + 1) * rows_per_task).min(row_blocks);
                let panel_range = panel_group * panels_per_task..((panel_group + 1) * panels_per_task).min(panels);
                amx::with_tiles(|tiles| {
                    let mut staging = amx::Staging::default();
                    for panel in panel_range.clone() {
                        for block in blocks.clone() {
                            let term = amx::Term {
                                a: &a[block * amx::BLOCK * depth..],
                                a_row: depth,
                                b: self.weight.panel(panel),
                            };
                            tiles.block(&[term], &mut staging);
                            let columns = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(n);
                            let bias = &self.bias[columns.clone()];
                            for r in 0..amx::BLOCK.min(rows - block * amx::BLOCK) {
                                let row = block * amx::BLOCK + r;
                                // SAFETY: each (row, output feature) belongs to exactly one task's block.
                                let dst = unsafe { out.slice(row * n + columns.start, columns.len()) };
                                amx::add_into(dst, staging.row(r), bias);
                            }
                        }
                    }
                });
            });
            // The feed-forward layers at 512×512 need ~40 MiB; keep no more than that between calls.
            if buffer.capacity_bytes() > 64 << 20 {
                *buffer = Default::default();
            }
        });
        Ok(())
    }
}

thread_local! {
    /// The bf16 activations (A), reused between calls.
    static SCRATCH: RefCell<amx::AlignedBf16> = RefCell::default();
}

/// [`PackedLinear::forward`] as a candle operation on a contiguous f32 CPU tensor `[.., in]` → `[.., out]`.
pub struct LinearBf16(pub Arc<PackedLinear>);

impl CustomOp1 for LinearBf16 {
    fn name(&self) -> &'static str {
        "ember-linear-bf16"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        if dims.last() != Some(&self.0.in_features) {
            candle_core::bail!(
                "linear layer: input {:?} does not end in {} features",
                layout.shape(),
                self.0.in_features
            );
        }
        let x = contiguous_f32(x, layout, "linear layer: input")?;
        let mut out = vec![0f32; x.len() / self.0.in_features * self.0.out_features];
        self.0.forward(x, &mut out)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = self.0.out_features;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    fn bf16_rounded(v: Vec<f32>) -> Vec<f32> {
        v.into_iter().map(amx::bf16_rounded).collect()
    }

    /// Odd sizes (not multiples of 16/32), one row, many rows, with and without bias, against an f64 sum.
    #[test]
    fn matches_a_plain_product() -> Result<()> {
        if !amx::available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (the bf16 linear layer is only used where it has)");
            return Ok(());
        }
        for (case, &(rows, k, n, with_bias)) in [
            (1, 1, 1, true),
            (3, 17, 5, false),
            (77, 40, 33, true),
            (130, 96, 64, true),
            (2, 320, 1280, false),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * case as u64;
            let x = bf16_rounded(test_values(rows * k, seed));
            let w = bf16_rounded(test_values(n * k, seed + 1));
            let b = test_values(n, seed + 2);
            let packed = PackedLinear::new(&w, with_bias.then_some(&b[..]), n, k)?;
            let mut got = vec![f32::NAN; rows * n];
            packed.forward(&x, &mut got)?;
            for r in 0..rows {
                for o in 0..n {
                    let dot: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[o * k + i] as f64).sum();
                    let want = dot + if with_bias { b[o] as f64 } else { 0.0 };
                    let g = got[r * n + o] as f64;
                    assert!(
                        (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{rows}×{k}→{n} ({r}, {o}): {g} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn wrong_sizes_are_errors() -> Result<()> {
        let packed = PackedLinear::new(&[0.0; 6], None, 2, 3)?;
        assert!(packed.forward(&[0.0; 4], &mut [0.0; 2]).is_err());
        assert!(PackedLinear::new(&[0.0; 5], None, 2, 3).is_err());
        Ok(())
    }
}
