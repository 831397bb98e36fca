//! Attention with bf16 matrix products on the AMX tile unit, for models built for bf16 (`nn::Precision`).
//!
//! Per (slice, block of 32 query rows): the scores `q·kᵀ` of the block against *all* keys (one tile product into
//! `32 × M` f32, 512 KiB at 4096 keys: it stays in L2), an exact softmax in f32 over each row with AVX-512, the
//! unnormalised probabilities rounded to bf16, then `p·v` (a second tile product) divided by the row sums. Keys and
//! values are packed once per slice as B panels. Rounded to bf16: q, k, v and the probabilities; the
//! scores, the softmax and the accumulation are f32. Head widths are padded to whole tiles (32): SD's 40-wide heads
//! do 60% more multiplications than they need, still far faster than the f32 kernel.

use super::amx::{self, bf16_bits, round_up, AlignedBf16, PanelsB, Staging, Term};
use super::attention::AttentionDims;
use candle_core::Result;
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

/// Computes `softmax(q·kᵀ·scale)·v` into `out` (layouts as `cpu::attention::attention`). Needs AMX (`amx::available`).
pub fn attention_bf16(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: AttentionDims) -> Result<()> {
    dims.check(q, k, v, out)?;
    if !amx::available() {
        candle_core::bail!("bf16 attention needs a CPU with AMX-BF16");
    }
    let (n, m, d) = (dims.queries, dims.keys, dims.head_dim);
    if n == 0 {
        return Ok(());
    }
    let (keys_p, d_p) = (round_up(m, amx::BLOCK), round_up(d, amx::DEPTH));
    let packed: Vec<PackedSlice> = (0..dims.slices)
        .into_par_iter()
        .map(|s| {
            let (k, v) = (&k[s * m * d..][..m * d], &v[s * m * d..][..m * d]);
            PackedSlice {
                keys: PanelsB::from_fn(d, m, |c, j| k[j * d + c]),
                values: PanelsB::from_fn(m, d, |j, c| v[j * d + c]),
            }
        })
        .collect();
    let blocks = n.div_ceil(QUERY_BLOCK);
    // One task per (slice, query block); each writes its own rows of `out`.
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(dims.slices * blocks);
    for (s, slice_out) in out.chunks_mut(n * d).enumerate() {
        for (b, rows) in slice_out.chunks_mut(QUERY_BLOCK * d).enumerate() {
            tasks.push((s, b, rows));
        }
    }
    tasks.into_par_iter().for_each(|(s, b, out_rows)| {
        let rows = out_rows.len() / d;
        let q_rows = &q[(s * n + b * QUERY_BLOCK) * d..][..rows * d];
        let slice = &packed[s];
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { q_tile, scores, probs } = &mut *scratch;
            q_tile.resize_zeroed(QUERY_BLOCK * d_p);
            for (dst, src) in q_tile.as_mut_slice().chunks_exact_mut(d_p).zip(q_rows.chunks_exact(d)) {
                for (t, &x) in dst.iter_mut().zip(src) {
                    *t = bf16_bits(x);
                }
            }
            scores.resize(QUERY_BLOCK * keys_p, 0.0);
            probs.resize_uninit(QUERY_BLOCK * keys_p);
            amx::with_tiles(|tiles| {
                let mut staging = Staging::default();
                // Scores of the block against every key.
                for panel in 0..keys_p / amx::BLOCK {
                    let term = Term {
                        a: q_tile.as_slice(),
                        a_row: d_p,
                        b: slice.keys.panel(panel),
                    };
                    tiles.block_into(&[term], &mut scores[panel * amx::BLOCK..], keys_p);
                }
                let mut sums = [0f32; QUERY_BLOCK];
                let probs = probs.as_mut_slice();
                for (r, (sum, row)) in sums.iter_mut().zip(probs.chunks_exact_mut(keys_p)).enumerate() {
                    // Padding keys, and the rows past the last query, weigh nothing.
                    if r < rows {
                        *sum = softmax_row(&scores[r * keys_p..][..m], dims.scale, &mut row[..m]);
                        row[m..].fill(0);
                    } else {
                        row.fill(0);
                    }
                }
                // Unnormalised probabilities times the values, divided by the row sums.
                for panel in 0..slice.values.columns() / amx::BLOCK {
                    let term = Term {
                        a: probs,
                        a_row: keys_p,
                        b: slice.values.panel(panel),
                    };
                    tiles.block(&[term], &mut staging);
                    let columns = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(d);
                    for (r, dst) in out_rows.chunks_exact_mut(d).enumerate() {
                        let inv = 1.0 / sums[r];
                        for (o, &x) in dst[columns.clone()].iter_mut().zip(staging.row(r)) {
                            *o = x * inv;
                        }
                    }
                }
            });
        });
    });
    Ok(())
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
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(scores: &[f32], scale: f32, probs: &mut [u16]) -> f32 {
    use super::vector_math::avx512::exp;
    use std::arch::x86_64::*;
    let len = scores.len().min(probs.len());
    let mask = |i: usize| -> __mmask16 {
        let left = len - i;
        if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        }
    };
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..len).step_by(16) {
        let s = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), mask(i), scores.as_ptr().add(i));
        max = _mm512_max_ps(max, s);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let scale_v = _mm512_set1_ps(scale);
    let mut sum = _mm512_setzero_ps();
    for i in (0..len).step_by(16) {
        let s = _mm512_maskz_loadu_ps(mask(i), scores.as_ptr().add(i));
        let e = _mm512_maskz_mov_ps(mask(i), exp(_mm512_mul_ps(_mm512_sub_ps(s, max), scale_v)));
        sum = _mm512_add_ps(sum, e);
        // Round to nearest even bf16 (e is finite and ≥ 0): add 0x7fff + the lowest kept bit, keep the top half.
        let bits = _mm512_castps_si512(e);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
        _mm256_mask_storeu_epi16(
            probs.as_mut_ptr().add(i) as *mut i16,
            mask(i),
            _mm512_cvtepi32_epi16(rounded),
        );
    }
    _mm512_reduce_add_ps(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

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
            let mut got = vec![f32::NAN; q.len()];
            attention_bf16(&q, &k, &v, &mut got, dims)?;
            let (n, m, d) = (queries, keys, head_dim);
            for s in 0..slices {
                for i in 0..n {
                    let scores: Vec<f64> = (0..m)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|c| q[(s * n + i) * d + c] as f64 * k[(s * m + j) * d + c] as f64)
                                .sum();
                            dot * dims.scale as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..m).map(|j| e[j] * v[(s * m + j) * d + c] as f64).sum::<f64>() / total;
                        let g = got[(s * n + i) * d + c] as f64;
                        assert!((g - want).abs() < 2e-3, "{dims:?} ({s}, {i}, {c}): {g} vs {want}");
                    }
                }
            }
        }
        Ok(())
    }
}
