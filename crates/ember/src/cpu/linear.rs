//! Linear layers (`x · Wᵀ + b`) with bf16 operands on the AMX tile unit, f32 accumulation: the weights are packed
//! once, at load, as AMX's B operand; the activations are rounded to bf16 as they are copied into the A operand.

use super::{amx, contiguous_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;

/// A linear layer's `weight: [out, in]` as a bf16 `[in, out]` matrix in the pair-interleaved layout, padded to whole
/// tiles, and its bias (zeros without one).
#[derive(Debug)]
pub struct PackedLinear {
    in_features: usize,
    out_features: usize,
    /// `in` and `out` rounded up to whole tiles.
    depth: usize,
    columns: usize,
    weight: Vec<u16>,
    bias: Vec<f32>,
}

impl PackedLinear {
    pub fn new(weight: &[f32], bias: Option<&[f32]>, out_features: usize, in_features: usize) -> Result<Self> {
        if weight.len() != out_features * in_features || bias.is_some_and(|b| b.len() != out_features) {
            candle_core::bail!(
                "linear layer: weight of {} values or its bias does not fit {out_features}×{in_features}",
                weight.len()
            );
        }
        let depth = amx::round_up(in_features, amx::DEPTH);
        let columns = amx::round_up(out_features, amx::BLOCK);
        let mut packed = vec![0u16; depth * columns];
        for (o, row) in weight.chunks_exact(in_features.max(1)).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                packed[(i / 2) * 2 * columns + 2 * o + i % 2] = amx::bf16_bits(w);
            }
        }
        Ok(Self {
            in_features,
            out_features,
            depth,
            columns,
            weight: packed,
            bias: bias.map_or_else(|| vec![0.0; out_features], <[f32]>::to_vec),
        })
    }

    /// Bytes held (the packed weight and the bias).
    pub fn bytes(&self) -> usize {
        self.weight.len() * 2 + self.bias.len() * 4
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
        let padded_rows = amx::round_up(rows, amx::BLOCK);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (a, c) = &mut *scratch;
            a.clear();
            a.resize(padded_rows * self.depth, 0);
            a.par_chunks_exact_mut(self.depth)
                .zip(x.par_chunks_exact(k))
                .for_each(|(dst, src)| {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = amx::bf16_bits(s);
                    }
                });
            if c.len() < padded_rows * self.columns {
                c.resize(padded_rows * self.columns, 0.0);
            }
            amx::TileProduct {
                m: padded_rows,
                n: self.columns,
                k: self.depth,
                a,
                a_row: self.depth,
                b: &self.weight,
                b_pair_row: 2 * self.columns,
                segments: &[(0, 0)],
                weights: amx::Operand::B,
            }
            .run(c);
            out.par_chunks_exact_mut(n)
                .zip(c.par_chunks_exact(self.columns))
                .for_each(|(dst, src)| {
                    for ((d, &s), &b) in dst.iter_mut().zip(src).zip(&self.bias) {
                        *d = s + b;
                    }
                });
            // The feed-forward layers at 512×512 need ~80 MiB; keep no more than that between calls.
            if a.capacity() * 2 + c.capacity() * 4 > 128 << 20 {
                *scratch = Default::default();
            }
        });
        Ok(())
    }
}

thread_local! {
    /// The bf16 activations (A) and the padded f32 result (C), reused between calls.
    static SCRATCH: RefCell<(Vec<u16>, Vec<f32>)> = RefCell::default();
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
        v.into_iter()
            .map(|x| f32::from_bits((amx::bf16_bits(x) as u32) << 16))
            .collect()
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
