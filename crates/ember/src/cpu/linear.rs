//! Linear layers (`x · Wᵀ + b`) with bf16 operands on the AMX tile unit, f32 accumulation: the weights are packed
//! once, at load, as AMX's B operand; the activations are rounded to bf16 as they are copied into the A operand.

use super::amx::{self, Activations, OutputElement};
use super::{contiguous_activations, contiguous_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};
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
    /// The bias per panel of 32 output features (zeros without one), the accumulators' starting value.
    bias: Vec<amx::BlockBias>,
}

/// Bytes of B panels a task keeps in L2 while the A rows stream past.
const RESIDENT_BYTES: usize = 512 << 10;

impl PackedLinear {
    /// Packs `weight: [out, in]` (f32, or bf16 as loaded for this: rounding bf16 values to bf16 keeps them) and
    /// `bias: [out]`.
    pub fn new<W: amx::Bf16Source>(
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
            weight: amx::PanelsB::from_columns(in_features, out_features, |o| {
                &weight[o * in_features..][..in_features]
            }),
            bias: amx::BlockBias::blocks(&bias.map_or_else(|| vec![0.0; out_features], <[f32]>::to_vec)),
        })
    }

    /// `out[rows, out] = x[rows, in] · Wᵀ + b`.
    #[cfg(test)]
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.forward_into(Activations::F32(x), None, &amx::SharedOut::new(out))
    }

    /// [`forward`](Self::forward) into a shared output, plus `residual` (`out`'s shape) when given: a transformer
    /// block's skip connection, added to each block while it is in L1 instead of in another pass. Stores every value
    /// of `out` when it returns `Ok`.
    /// With a bf16 output, each block goes through the staging block and is rounded there.
    pub fn forward_into<T: OutputElement>(
        &self,
        x: Activations<'_>,
        residual: Option<&[f32]>,
        out: &amx::SharedOut<'_, T>,
    ) -> Result<()> {
        let n = self.out_features;
        let rows = self.check_sizes(x, out, n)?;
        if residual.is_some_and(|r| r.len() != out.len()) {
            candle_core::bail!(
                "linear layer: the residual does not have the output's {} values",
                out.len()
            );
        }
        let panels = self.weight.columns() / amx::BLOCK;
        self.for_each_block(x, panels, 1, |tiles, term, panel, first_row, staging| {
            let bias = &self.bias[panel];
            let columns = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(n);
            let real_rows = amx::BLOCK.min(rows - first_row);
            if let Some(out) = T::as_f32(out).filter(|_| real_rows == amx::BLOCK && columns.len() == amx::BLOCK) {
                // A whole block of real f32 outputs: stored straight into place, the accumulators started from the
                // residual's block when there is one.
                let start = first_row * n + columns.start;
                // SAFETY: each (row, output feature) belongs to exactly one task's block.
                unsafe {
                    match residual {
                        Some(residual) => tiles.block_into_shared_plus(&[term(panel)], bias, residual, out, start, n),
                        None => tiles.block_into_shared(&[term(panel)], bias, out, start, n),
                    }
                }
                return;
            }
            let block = &mut staging[0];
            tiles.block_into_biased(&[term(panel)], bias, &mut block.0, amx::BLOCK);
            let start = first_row * n + columns.start;
            if let Some(residual) = residual {
                for (r, row) in block.0.chunks_exact_mut(amx::BLOCK).take(real_rows).enumerate() {
                    row.iter_mut()
                        .zip(&residual[start + r * n..][..columns.len()])
                        .for_each(|(v, &s)| *v += s);
                }
            }
            // SAFETY: as above.
            unsafe { out.store_rows(start, n, block, real_rows, columns.len()) };
        })
    }

    /// `value · gelu(gate)` of this layer's output, whose first half of features is the value and second the gate
    /// (diffusers' GEGLU), into `out: [rows, out_features / 2]`: both halves of a block are multiplied while they are
    /// in the tiles, so the doubled-width projection (84 MB per transformer block at 64×64 latents) never exists.
    /// Needs half the features to be a multiple of 32 ([`geglu_fuses`](Self::geglu_fuses)); stores every value of
    /// `out` when it returns `Ok`.
    pub fn forward_geglu_into<T: OutputElement>(&self, x: Activations<'_>, out: &amx::SharedOut<'_, T>) -> Result<()> {
        if !self.geglu_fuses() {
            candle_core::bail!(
                "fused GEGLU: {} output features do not split into halves of whole 32-feature panels",
                self.out_features
            );
        }
        let inner = self.out_features / 2;
        let rows = self.check_sizes(x, out, inner)?;
        let value_panels = inner / amx::BLOCK;
        self.for_each_block(x, value_panels, 2, |tiles, term, panel, first_row, staging| {
            let gate_panel = panel + value_panels;
            let [value, gate] = staging;
            tiles.block_into_biased(&[term(panel)], &self.bias[panel], &mut value.0, amx::BLOCK);
            tiles.block_into_biased(&[term(gate_panel)], &self.bias[gate_panel], &mut gate.0, amx::BLOCK);
            let mut gated = [0f32; amx::BLOCK];
            let real_rows = amx::BLOCK.min(rows - first_row);
            for r in 0..real_rows {
                super::geglu::geglu_row(value.row(r), gate.row(r), &mut gated);
                value.0[r * amx::BLOCK..][..amx::BLOCK].copy_from_slice(&gated);
            }
            // SAFETY: each (row, output feature) belongs to exactly one task's block.
            unsafe {
                out.store_rows(
                    first_row * inner + panel * amx::BLOCK,
                    inner,
                    value,
                    real_rows,
                    amx::BLOCK,
                )
            };
        })
    }

    /// Whether [`forward_geglu_into`](Self::forward_geglu_into) takes this layer.
    pub fn geglu_fuses(&self) -> bool {
        self.out_features.is_multiple_of(2 * amx::BLOCK)
    }

    /// A candle operand `[.., in]` as contiguous f32 or bf16, and the shape `[.., width]` of the output.
    fn input<'a>(&self, x: &'a CpuStorage, layout: &Layout, width: usize) -> Result<(Activations<'a>, Shape)> {
        let dims = layout.shape().dims();
        if dims.last() != Some(&self.in_features) {
            candle_core::bail!(
                "linear layer: input {:?} does not end in {} features",
                layout.shape(),
                self.in_features
            );
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = width;
        Ok((
            contiguous_activations(x, layout, "linear layer: input")?,
            Shape::from(out_dims),
        ))
    }

    /// Checks `x: [rows, in]` and `out: [rows, width]`; returns `rows`.
    fn check_sizes<T: Copy>(&self, x: Activations<'_>, out: &amx::SharedOut<'_, T>, width: usize) -> Result<usize> {
        let k = self.in_features;
        if k == 0 || !x.len().is_multiple_of(k) || out.len() != x.len() / k * width {
            candle_core::bail!(
                "linear layer: input of {} values / output of {} do not fit {k} → {width} features",
                x.len(),
                out.len()
            );
        }
        Ok(x.len() / k)
    }

    /// Rounds `x` into bf16 A rows, then calls `visit(tiles, term, panel, first_row, staging)` for every block of 32
    /// rows and every panel in `0..panels`, where `term(p)` is the block's A rows times weight panel `p` and
    /// `staging` is the task's scratch blocks. Each call may use `panel_weight` weight panels (2 for GEGLU's value
    /// and gate). Parallel tasks each keep a group of panels resident in L2 and run their blocks outermost, so a
    /// block's A rows stay in L1 across its panels (panels outermost re-read every A row from L3 per panel: the
    /// 320 → 2560 feed-forward layer ran at 678 instead of 1845 GFLOP/s).
    fn for_each_block<V>(&self, x: Activations<'_>, panels: usize, panel_weight: usize, visit: V) -> Result<()>
    where
        V: for<'t> Fn(&amx::Tiles, &dyn Fn(usize) -> amx::Term<'t>, usize, usize, &mut [amx::Staging; 2]) + Sync,
    {
        let k = self.in_features;
        let rows = x.len() / k.max(1);
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
                .for_each(|(row, dst)| match row < rows {
                    true => {
                        x.round_into(row * k..(row + 1) * k, &mut dst[..k]);
                        dst[k..].fill(0);
                    }
                    false => dst.fill(0),
                });
            let panel_bytes = panel_weight * depth * amx::BLOCK * 2;
            let panels_per_task = (RESIDENT_BYTES / panel_bytes).clamp(1, panels);
            let panel_groups = panels.div_ceil(panels_per_task);
            let threads = rayon::current_num_threads().max(1);
            let row_groups = (4 * threads).div_ceil(panel_groups).clamp(1, row_blocks);
            let rows_per_task = row_blocks.div_ceil(row_groups);
            let a = buffer.as_slice();
            (0..row_groups * panel_groups).into_par_iter().for_each(|task| {
                let (row_group, panel_group) = (task / panel_groups, task % panel_groups);
                let blocks = row_group * rows_per_task..((row_group + 1) * rows_per_task).min(row_blocks);
                let panel_range = panel_group * panels_per_task..((panel_group + 1) * panels_per_task).min(panels);
                amx::with_tiles(|tiles| {
                    let mut staging: [amx::Staging; 2] = Default::default();
                    for block in blocks {
                        let a_block = &a[block * amx::BLOCK * depth..];
                        let term = |panel| amx::Term {
                            a: a_block,
                            a_row: depth,
                            b: self.weight.panel(panel),
                        };
                        for panel in panel_range.clone() {
                            visit(tiles, &term, panel, block * amx::BLOCK, &mut staging);
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

/// [`PackedLinear::forward_geglu_into`] as a candle operation on a contiguous f32 or bf16 CPU tensor `[.., in]` →
/// bf16 `[.., out / 2]` (the feed-forward's last layer, its one reader, rounds it to bf16 anyway).
pub struct LinearGegluBf16(pub Arc<PackedLinear>);

impl CustomOp1 for LinearGegluBf16 {
    fn name(&self) -> &'static str {
        "ember-linear-geglu-bf16"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let inner = self.0.out_features / 2;
        let (x, out_dims) = self.0.input(x, layout, inner)?;
        // SAFETY: `forward_geglu_into` stores every output value.
        let out = unsafe { amx::new_output(out_dims.elem_count(), |out| self.0.forward_geglu_into(x, out))? };
        Ok((CpuStorage::BF16(out), out_dims))
    }
}

/// [`PackedLinear::forward`] as a candle operation on a contiguous f32 or bf16 CPU tensor `[.., in]` → f32
/// `[.., out]`; as a two-tensor operation, plus the second (`[.., out]`, contiguous f32).
pub struct LinearBf16(pub Arc<PackedLinear>);

impl LinearBf16 {
    fn run(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, out_dims) = self.0.input(x, layout, self.0.out_features)?;
        let residual = match residual {
            Some((_, l)) if l.shape() != &out_dims => {
                candle_core::bail!(
                    "linear layer: residual {:?} is not the output's {out_dims:?}",
                    l.shape()
                )
            }
            Some((storage, l)) => Some(contiguous_f32(storage, l, "linear layer: residual")?),
            None => None,
        };
        // SAFETY: `forward_into` stores every output value.
        let out = unsafe { amx::new_output(out_dims.elem_count(), |out| self.0.forward_into(x, residual, out))? };
        Ok((CpuStorage::F32(out), out_dims))
    }
}

impl CustomOp2 for LinearBf16 {
    fn name(&self) -> &'static str {
        "ember-linear-bf16-residual"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        residual: &CpuStorage,
        r_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(x, x_l, Some((residual, r_l)))
    }
}

/// [`PackedLinear::forward`] as a candle operation into a bf16 tensor: for outputs whose every reader rounds them to
/// bf16 (the attention's projections).
pub struct LinearToBf16(pub Arc<PackedLinear>);

impl CustomOp1 for LinearToBf16 {
    fn name(&self) -> &'static str {
        "ember-linear-to-bf16"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, out_dims) = self.0.input(x, layout, self.0.out_features)?;
        // SAFETY: `forward_into` stores every output value.
        let out = unsafe { amx::new_output(out_dims.elem_count(), |out| self.0.forward_into(x, None, out))? };
        Ok((CpuStorage::BF16(out), out_dims))
    }
}

impl CustomOp1 for LinearBf16 {
    fn name(&self) -> &'static str {
        "ember-linear-bf16"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(x, layout, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::amx::Activations::{Bf16, F32};
    use crate::cpu::test_values;

    fn to_bf16(x: &[f32]) -> Vec<half::bf16> {
        x.iter().map(|&v| half::bf16::from_bits(amx::bf16_bits(v))).collect()
    }

    /// bf16 in and out give the bits of the f32 path: a bf16 input equals its f32 values (which the kernel rounds
    /// to the same bf16), a bf16 output equals the f32 output rounded, for the plain and the GEGLU product, whole
    /// and partial blocks.
    #[test]
    fn bf16_activations_give_the_f32_paths_bits() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        let (rows, k, n) = (45, 70, 128);
        let x = test_values(rows * k, 1);
        let packed = PackedLinear::new(&test_values(n * k, 2), Some(&test_values(n, 3)), n, k)?;
        let x_bf16 = to_bf16(&x);
        let mut want = vec![f32::NAN; rows * n];
        packed.forward_into(F32(&x), None, &amx::SharedOut::new(&mut want))?;
        let mut got = vec![f32::NAN; rows * n];
        packed.forward_into(Bf16(&x_bf16), None, &amx::SharedOut::new(&mut got))?;
        assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()));
        let mut got = vec![half::bf16::NAN; rows * n];
        packed.forward_into(Bf16(&x_bf16), None, &amx::SharedOut::new(&mut got))?;
        assert_eq!(got, to_bf16(&want));
        let mut want = vec![f32::NAN; rows * n / 2];
        packed.forward_geglu_into(F32(&x), &amx::SharedOut::new(&mut want))?;
        let mut got = vec![half::bf16::NAN; rows * n / 2];
        packed.forward_geglu_into(Bf16(&x_bf16), &amx::SharedOut::new(&mut got))?;
        assert_eq!(got, to_bf16(&want));
        Ok(())
    }

    fn bf16_rounded(v: Vec<f32>) -> Vec<f32> {
        v.into_iter().map(amx::bf16_rounded).collect()
    }

    /// Odd sizes (not multiples of 16/32), one row, many rows, with and without bias, against an f64 sum.
    #[test]
    fn matches_a_plain_product() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (case, &(rows, k, n, with_bias)) in [
            (1, 1, 1, true),
            (3, 17, 5, false),
            (77, 40, 33, true),
            (130, 96, 64, true),
            (2, 320, 1280, false),
            (64, 64, 96, false),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * case as u64;
            let x = bf16_rounded(test_values(rows * k, seed));
            let w = bf16_rounded(test_values(n * k, seed + 1));
            let b = test_values(n, seed + 2);
            let packed = PackedLinear::new(&w, with_bias.then_some(&b[..]), n, k)?;
            // Without and with a residual (added to every output; whole and partial blocks both).
            let residual = test_values(rows * n, seed + 3);
            for with_residual in [false, true] {
                let mut got = vec![f32::NAN; rows * n];
                let out = amx::SharedOut::new(&mut got);
                packed.forward_into(F32(&x), with_residual.then_some(&residual[..]), &out)?;
                for r in 0..rows {
                    for o in 0..n {
                        let dot: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[o * k + i] as f64).sum();
                        let skip = if with_residual { residual[r * n + o] as f64 } else { 0.0 };
                        let want = dot + if with_bias { b[o] as f64 } else { 0.0 } + skip;
                        let g = got[r * n + o] as f64;
                        assert!(
                            (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                            "{rows}×{k}→{n} residual {with_residual} ({r}, {o}): {g} vs {want}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The fused GEGLU against the f64 product followed by an f64 GEGLU, on ragged row counts (the last block
    /// partial) and every output value written (NaN-filled start).
    #[test]
    fn fused_geglu_matches_product_then_geglu() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        for (case, &(rows, k, inner)) in [(1, 8, 32), (45, 40, 64), (64, 96, 96)].iter().enumerate() {
            let seed = 100 + 10 * case as u64;
            let x = bf16_rounded(test_values(rows * k, seed));
            let w = bf16_rounded(test_values(2 * inner * k, seed + 1));
            let b = test_values(2 * inner, seed + 2);
            let packed = PackedLinear::new(&w, Some(&b), 2 * inner, k)?;
            assert!(packed.geglu_fuses());
            let mut got = vec![f32::NAN; rows * inner];
            packed.forward_geglu_into(F32(&x), &amx::SharedOut::new(&mut got))?;
            let product = |r: usize, o: usize| {
                (0..k).map(|i| x[r * k + i] as f64 * w[o * k + i] as f64).sum::<f64>() + b[o] as f64
            };
            for r in 0..rows {
                for c in 0..inner {
                    let (value, gate) = (product(r, c), product(r, inner + c));
                    let want =
                        value * 0.5 * gate * (1.0 + candle_core::cpu::erf::erf_f64(gate / std::f64::consts::SQRT_2));
                    let g = got[r * inner + c] as f64;
                    assert!(
                        (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{rows}×{k}→2·{inner} ({r}, {c}): {g} vs {want}"
                    );
                }
            }
        }
        let odd = PackedLinear::new(&[0f32; 48 * 2], None, 48, 2)?;
        assert!(!odd.geglu_fuses());
        assert!(odd
            .forward_geglu_into(F32(&[0.0; 2]), &amx::SharedOut::new(&mut [0.0f32; 24]))
            .is_err());
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
