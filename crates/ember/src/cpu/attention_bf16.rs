//! Attention with bf16 matrix products on the AMX tile unit, for models built for bf16 (`nn::Precision`).
//!
//! Per (slice, block of 32 query rows): the scores `q·kᵀ` of the block against *all* keys (one tile product into
//! `32 × M` f32, 512 KiB at 4096 keys: it stays in L2), a softmax in f32 over each row with AVX-512 (its exp accurate
//! to 3e-6, far below the bf16 rounding that follows), the unnormalised probabilities rounded to bf16, then `p·v` (a
//! second tile product) divided by the row sums. Keys and
//! values are packed once per slice as B panels. Rounded to bf16: q, k, v and the probabilities; the
//! scores, the softmax and the accumulation are f32. Head widths are padded to whole tiles (32): SD's 40-wide heads
//! do 60% more multiplications than they need, still far faster than the f32 kernel.

use super::amx::{
    self, bf16_bits, round_up, Activations, AlignedBf16, OutputElement, PanelsB, SharedOut, Staging, Term,
};
use super::attention::AttentionDims;
use super::contiguous_activations;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::RefCell;

/// Query rows per task: one row of tiles.
const QUERY_BLOCK: usize = amx::BLOCK;

/// One slice's keys and values as B operands.
struct PackedSlice {
    /// `kᵀ` (`d × M`).
    keys: PanelsB,
    /// `v` (`M × d`).
    values: PanelsB,
}

/// Computes `softmax(q·kᵀ·scale)·v` into `out`, storing every value of it. Needs AMX (`amx::available`).
///
/// Layouts: with `heads` = 1, as `cpu::attention::attention` (`q, out: [S, N, d]`, `k, v: [S, M, d]`); with more,
/// the projections' own token layout, `q, out: [B, N, heads·d]` and `k, v: [B, M, heads·d]` with slice
/// `s = b·heads + h` in columns `h·d..(h+1)·d`, so the heads need not be split into slices (and joined back) by
/// copies around the call. `causal`: query `i` sees keys `0..=i` only (CLIP's text encoder).
///
/// q, k and v may arrive as bf16 already (`Activations`); the output may be bf16, for a reader that rounds it anyway.
pub fn attention_bf16<T: OutputElement>(
    q: Activations<'_>,
    k: Activations<'_>,
    v: Activations<'_>,
    out: &SharedOut<'_, T>,
    dims: AttentionDims,
    heads: usize,
    causal: bool,
) -> Result<()> {
    dims.check_lengths(q.len(), k.len(), v.len(), out.len())?;
    if heads == 0 || !dims.slices.is_multiple_of(heads) {
        candle_core::bail!(
            "bf16 attention: {} slices are not whole tokens of {heads} heads",
            dims.slices
        );
    }
    if !amx::available() {
        candle_core::bail!("bf16 attention needs a CPU with AMX-BF16");
    }
    let (n, m, d) = (dims.queries, dims.keys, dims.head_dim);
    if n == 0 {
        return Ok(());
    }
    // Where row `i` of slice `s` starts, in a buffer of `rows` rows per slice.
    let row_at = |s: usize, i: usize, rows: usize| ((s / heads * rows + i) * heads + s % heads) * d;
    let (keys_p, d_p) = (round_up(m, amx::BLOCK), round_up(d, amx::DEPTH));
    // Row strides of the score and probability blocks: one cache line more than the keys, so that the 16 rows a tile
    // load or store touches fall in different L1 sets (at 4096 keys the plain strides, 16 and 8 KiB, mapped every
    // row of a tile to the same set).
    let (score_row, prob_row) = (keys_p + 16, keys_p + 32);
    // As bf16, whole (rounded once where they came as f32): the packers and the query blocks then copy bits.
    let (q, k, v) = (q.to_bf16(), k.to_bf16(), v.to_bf16());
    let packed: Vec<PackedSlice> = (0..dims.slices)
        .into_par_iter()
        .map(|s| PackedSlice {
            keys: PanelsB::from_columns(d, m, |j| &k[row_at(s, j, m)..][..d]),
            values: PanelsB::from_rows(m, d, |j| &v[row_at(s, j, m)..][..d]),
        })
        .collect();
    let blocks = n.div_ceil(QUERY_BLOCK);
    // Each task takes a run of query blocks of one slice (the tile configuration and the scratch are set up once per
    // run: per block, that was a third of a cross-attention's time), and writes their rows of the slice alone.
    let threads = rayon::current_num_threads().max(1);
    let run = (dims.slices * blocks / (8 * threads)).clamp(1, 8);
    let runs = blocks.div_ceil(run);
    (0..dims.slices * runs).into_par_iter().for_each(|task| {
        let s = task / runs;
        let run_blocks = task % runs * run..((task % runs + 1) * run).min(blocks);
        let slice = &packed[s];
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { q_tile, scores, probs } = &mut *scratch;
            q_tile.resize_zeroed(QUERY_BLOCK * d_p);
            scores.resize(QUERY_BLOCK * score_row, 0.0);
            probs.resize_uninit(QUERY_BLOCK * prob_row);
            amx::with_tiles(|tiles| {
                let mut staging = Staging::default();
                for block in run_blocks {
                    let first = block * QUERY_BLOCK;
                    let rows = QUERY_BLOCK.min(n - first);
                    for (r, dst) in q_tile.as_mut_slice().chunks_exact_mut(d_p).enumerate() {
                        match r < rows {
                            true => dst[..d].copy_from_slice(half::slice::HalfFloatSliceExt::reinterpret_cast(
                                &q[row_at(s, first + r, n)..][..d],
                            )),
                            false => dst.fill(0),
                        }
                    }
                    // Scores of the block against every key.
                    for panel in 0..keys_p / amx::BLOCK {
                        let term = Term {
                            a: q_tile.as_slice(),
                            a_row: d_p,
                            b: slice.keys.panel(panel),
                        };
                        tiles.block_into(&[term], &mut scores[panel * amx::BLOCK..], score_row);
                    }
                    let mut sums = [0f32; QUERY_BLOCK];
                    let probs = probs.as_mut_slice();
                    for (r, (sum, row)) in sums.iter_mut().zip(probs.chunks_exact_mut(prob_row)).enumerate() {
                        // Padding keys, keys after the query's own under `causal`, and the rows past the last query
                        // weigh nothing.
                        if r < rows {
                            let visible = if causal { (first + r + 1).min(m) } else { m };
                            *sum = softmax_row(&scores[r * score_row..][..visible], dims.scale, &mut row[..visible]);
                            row[visible..].fill(0);
                        } else {
                            row.fill(0);
                        }
                    }
                    // Unnormalised probabilities times the values, divided by the row sums.
                    for panel in 0..slice.values.columns() / amx::BLOCK {
                        let term = Term {
                            a: probs,
                            a_row: prob_row,
                            b: slice.values.panel(panel),
                        };
                        tiles.block(&[term], &mut staging);
                        let columns = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(d);
                        for (row, &sum) in staging.0.chunks_exact_mut(amx::BLOCK).zip(&sums).take(rows) {
                            let inv = 1.0 / sum;
                            row.iter_mut().for_each(|x| *x *= inv);
                        }
                        let (start, out_row) = (row_at(s, first, n) + columns.start, heads * d);
                        // SAFETY: rows `first..first + rows` of slice `s` belong to this task alone.
                        unsafe { out.store_rows(start, out_row, &staging, rows, columns.len()) };
                    }
                }
            });
        });
    });
    Ok(())
}

/// [`attention_bf16`] as a candle operation on the projections' token layout: contiguous f32 CPU tensors
/// `q: [B, N, heads·d]`, `k, v: [B, M, heads·d]` → `[B, N, heads·d]`.
pub struct AttentionBf16 {
    pub heads: usize,
    pub scale: f32,
    /// Query `i` sees keys `0..=i` only.
    pub causal: bool,
    /// The output as bf16 (for an output projection on bf16 tiles, which would round it), else f32.
    pub bf16_output: bool,
}

impl CustomOp3 for AttentionBf16 {
    fn name(&self) -> &'static str {
        "ember-attention-bf16"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, queries, width) = q_l.shape().dims3()?;
        let keys = k_l.shape().dims3()?.1;
        if self.heads == 0 || !width.is_multiple_of(self.heads) {
            candle_core::bail!("bf16 attention: width {width} does not split into {} heads", self.heads);
        }
        let dims = AttentionDims {
            slices: batch * self.heads,
            queries,
            keys,
            head_dim: width / self.heads,
            scale: self.scale,
        };
        let (q, k, v) = (
            contiguous_activations(q, q_l, "bf16 attention: q")?,
            contiguous_activations(k, k_l, "bf16 attention: k")?,
            contiguous_activations(v, v_l, "bf16 attention: v")?,
        );
        let (heads, causal) = (self.heads, self.causal);
        // SAFETY: `attention_bf16` stores every output value.
        let out = unsafe {
            match self.bf16_output {
                true => CpuStorage::BF16(amx::new_output(q.len(), |out| {
                    attention_bf16(q, k, v, out, dims, heads, causal)
                })?),
                false => CpuStorage::F32(amx::new_output(q.len(), |out| {
                    attention_bf16(q, k, v, out, dims, heads, causal)
                })?),
            }
        };
        Ok((out, q_l.shape().clone()))
    }
}

#[derive(Default)]
struct Scratch {
    q_tile: AlignedBf16,
    scores: Vec<f32>,
    probs: AlignedBf16,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Writes `exp(scale·(s − max))` for the row's scores as bf16 into `probs` and returns their f32 sum.
fn softmax_row(scores: &[f32], scale: f32, probs: &mut [u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::avx512_bw_vl()
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bf16")
    {
        // SAFETY: AVX-512F, BW, VL, DQ and BF16 were detected.
        return unsafe { softmax_row_avx512(scores, scale, probs) };
    }
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (p, &s) in probs.iter_mut().zip(scores) {
        let e = ((s - max) * scale).exp();
        sum += e;
        *p = bf16_bits(e);
    }
    sum
}

/// [`softmax_row`] with 16 lanes. The exponentials are only needed to bf16's precision (they are rounded to bf16 for
/// the `p·v` product), so `2^t` is `p(t − ⌊t⌋) · 2^⌊t⌋` with a degree-4 polynomial fitted to `2^f` on [0, 1) (relative
/// error 2.7e-6, against bf16's 2e-3): `vreduceps` gives the fraction and `vscalefps` floors the exponent itself, 11
/// vector operations per 16 scores. The softmax is the largest part of the attention at 4096 keys.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn softmax_row_avx512(scores: &[f32], scale: f32, probs: &mut [u16]) -> f32 {
    use std::arch::x86_64::*;
    // 2^f ≈ c0 + c1·f + … + c4·f⁴ on [0, 1), fitted for the smallest maximum relative error (iteratively
    // reweighted least squares over 20 001 points; 2.7e-6 evaluated in f32).
    const C: [f32; 5] = [1.000_002_6, 0.693_003_83, 0.241_442_74, 0.052_011_49, 0.013_534_151];
    let len = scores.len().min(probs.len());
    let tail: __mmask16 = if len.is_multiple_of(16) {
        0xffff
    } else {
        (1u16 << (len % 16)) - 1
    };
    let mask = |i: usize| if len - i >= 16 { 0xffff } else { tail };
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..len).step_by(16) {
        let s = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask(i), scores.as_ptr().add(i));
        max = _mm512_max_ps(max, s);
    }
    // exp(scale·(s − max)) = 2^(s·c − max·c) with c = scale·log2(e); the exponent is ≤ 0.
    let c = scale * std::f32::consts::LOG2_E;
    let (c_v, offset) = (_mm512_set1_ps(c), _mm512_set1_ps(-_mm512_reduce_max_ps(max) * c));
    let mut sum = _mm512_setzero_ps();
    for i in (0..len).step_by(16) {
        let s = _mm512_maskz_loadu_ps(mask(i), scores.as_ptr().add(i));
        let t = _mm512_fmadd_ps(s, c_v, offset);
        // f = t − ⌊t⌋ in [0, 1).
        let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let mut p = _mm512_set1_ps(C[4]);
        for &k in C[..4].iter().rev() {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
        }
        // p · 2^⌊t⌋.
        let e = _mm512_maskz_scalef_ps(mask(i), p, t);
        sum = _mm512_add_ps(sum, e);
        let bf16: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
        _mm256_mask_storeu_epi16(probs.as_mut_ptr().add(i) as *mut i16, mask(i), bf16);
    }
    _mm512_reduce_add_ps(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::amx::Activations::{Bf16, F32};
    use crate::cpu::attention::tests::reference;
    use crate::cpu::test_values;

    /// The row softmax's exponentials against f64's: the sum within 1e-5 relative (the polynomial's 2.7e-6 plus f32
    /// summation), each probability its f64 value rounded to bf16 (within one bf16 step, 2⁻⁸ relative), over scores
    /// that take the exponent through 30 binades and lengths that leave every tail size.
    #[test]
    fn softmax_row_exponentials_are_accurate() {
        for len in [1, 15, 16, 17, 100, 4096] {
            let scores: Vec<f32> = test_values(len, len as u64).iter().map(|v| 20.0 * v).collect();
            let scale = 0.7;
            let mut probs = vec![0u16; len];
            let sum = softmax_row(&scores, scale, &mut probs);
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exact: Vec<f64> = scores
                .iter()
                .map(|&s| ((s as f64 - max) * scale as f64).exp())
                .collect();
            let exact_sum: f64 = exact.iter().sum();
            assert!(
                ((sum as f64 - exact_sum) / exact_sum).abs() < 1e-5,
                "{len}: sum {sum} vs {exact_sum}"
            );
            for (&p, &e) in probs.iter().zip(&exact) {
                let p = f32::from_bits((p as u32) << 16) as f64;
                assert!((p - e).abs() <= e * 2f64.powi(-8), "{len}: {p} vs {e}");
            }
        }
    }

    /// bf16 q, k, v give the bits of their f32 values (which the kernel rounds to the same bf16); a bf16 output is
    /// the f32 output rounded.
    #[test]
    fn bf16_activations_give_the_f32_paths_bits() -> Result<()> {
        if !amx::available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (bf16 attention is only used where it has)");
            return Ok(());
        }
        let (slices, n, m, d) = (4, 50, 70, 40);
        let dims = AttentionDims {
            slices,
            queries: n,
            keys: m,
            head_dim: d,
            scale: 0.3,
        };
        let to_bf16 =
            |x: &[f32]| -> Vec<half::bf16> { x.iter().map(|&v| half::bf16::from_bits(bf16_bits(v))).collect() };
        let (q, k, v) = (
            test_values(slices * n * d, 1),
            test_values(slices * m * d, 2),
            test_values(slices * m * d, 3),
        );
        let mut want = vec![f32::NAN; q.len()];
        attention_bf16(F32(&q), F32(&k), F32(&v), &SharedOut::new(&mut want), dims, 2, false)?;
        let (q, k, v) = (to_bf16(&q), to_bf16(&k), to_bf16(&v));
        let mut got = vec![f32::NAN; want.len()];
        attention_bf16(Bf16(&q), Bf16(&k), Bf16(&v), &SharedOut::new(&mut got), dims, 2, false)?;
        assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()));
        let mut got = vec![half::bf16::NAN; want.len()];
        attention_bf16(Bf16(&q), Bf16(&k), Bf16(&v), &SharedOut::new(&mut got), dims, 2, false)?;
        assert_eq!(got, to_bf16(&want));
        Ok(())
    }

    /// Causal: each query row against the reference on its visible keys alone (`0..=i`), with query blocks that cut
    /// through the key range and a key count that is not a multiple of 32.
    #[test]
    fn causal_rows_see_only_earlier_keys() -> Result<()> {
        if !amx::available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (bf16 attention is only used where it has)");
            return Ok(());
        }
        let (slices, n, d) = (3, 77, 24);
        let q = bf16_rounded(test_values(slices * n * d, 5));
        let k = bf16_rounded(test_values(slices * n * d, 6));
        let v = bf16_rounded(test_values(slices * n * d, 7));
        let dims = AttentionDims {
            slices,
            queries: n,
            keys: n,
            head_dim: d,
            scale: 0.4,
        };
        let mut got = vec![f32::NAN; q.len()];
        attention_bf16(F32(&q), F32(&k), F32(&v), &SharedOut::new(&mut got), dims, 1, true)?;
        for s in 0..slices {
            for i in 0..n {
                let visible = i + 1;
                let one = AttentionDims {
                    slices: 1,
                    queries: 1,
                    keys: visible,
                    ..dims
                };
                let want = reference(
                    &q[(s * n + i) * d..][..d],
                    &k[s * n * d..][..visible * d],
                    &v[s * n * d..][..visible * d],
                    one,
                );
                for (c, &w) in want.iter().enumerate() {
                    let g = got[(s * n + i) * d + c];
                    assert!((g - w).abs() < 2e-3, "slice {s} query {i} column {c}: {g} vs {w}");
                }
            }
        }
        Ok(())
    }

    /// `[batch·heads, rows, d]` → `[batch, rows, heads·d]`.
    fn to_tokens(x: &[f32], heads: usize, rows: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (index, &value) in x.iter().enumerate() {
            let (slice, row, c) = (index / (rows * d), index / d % rows, index % d);
            let (b, h) = (slice / heads, slice % heads);
            out[((b * rows + row) * heads + h) * d + c] = value;
        }
        out
    }

    fn bf16_rounded(v: Vec<f32>) -> Vec<f32> {
        v.into_iter().map(amx::bf16_rounded).collect()
    }

    /// Against an f64 softmax attention of the same bf16-rounded q, k, v, on ragged sizes (queries and keys not
    /// multiples of 32, head widths 1–80). The probabilities' bf16 rounding (2⁻⁹ relative each) is the only
    /// difference left, so the bound is 2e-3 on values within [−1, 1].
    #[test]
    fn matches_an_f64_softmax_attention() -> Result<()> {
        if !amx::available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (bf16 attention is only used where it has)");
            return Ok(());
        }
        for (case, &(slices, queries, keys, head_dim)) in [
            (1, 1, 1, 1),
            (2, 33, 7, 40),
            (3, 70, 77, 17),
            (1, 100, 300, 80),
            (2, 5, 64, 64),
            (6, 40, 50, 8),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * case as u64;
            let q = bf16_rounded(test_values(slices * queries * head_dim, seed));
            let k = bf16_rounded(test_values(slices * keys * head_dim, seed + 1));
            let v = bf16_rounded(test_values(slices * keys * head_dim, seed + 2));
            let dims = AttentionDims {
                slices,
                queries,
                keys,
                head_dim,
                scale: 3.0 / (head_dim as f32).sqrt(),
            };
            // The f32 kernel's three-pass f64 reference (rounded to f32 at the end, far below the bound).
            let want = reference(&q, &k, &v, dims);
            let mut got = vec![f32::NAN; q.len()];
            attention_bf16(F32(&q), F32(&k), F32(&v), &SharedOut::new(&mut got), dims, 1, false)?;
            for (index, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 2e-3, "{dims:?} value {index}: {g} vs {w}");
            }
            // The same slices as the heads of token rows (`[B, rows, heads·d]`), for every way to split them.
            for heads in (2..=slices).filter(|h| slices % h == 0) {
                let tokens = |slices_layout: &[f32], rows: usize| to_tokens(slices_layout, heads, rows, head_dim);
                let mut got = vec![f32::NAN; q.len()];
                let out = SharedOut::new(&mut got);
                attention_bf16(
                    F32(&tokens(&q, queries)),
                    F32(&tokens(&k, keys)),
                    F32(&tokens(&v, keys)),
                    &out,
                    dims,
                    heads,
                    false,
                )?;
                for (index, (&g, &w)) in got.iter().zip(&tokens(&want, queries)).enumerate() {
                    assert!(
                        (g - w).abs() < 2e-3,
                        "{dims:?} in {heads} heads, value {index}: {g} vs {w}"
                    );
                }
            }
        }
        Ok(())
    }
}
