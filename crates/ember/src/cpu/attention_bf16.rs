//! Attention with bf16 matrix products on the AMX tile unit, for models built for bf16 (`nn::Precision`).
//!
//! Per (slice, block of 32 query rows), key chunk by key chunk (64 keys): the scores `q·kᵀ` of the block against the
//! chunk (a tile product into 32 × 64 f32, which stays in L1), their exponentials in f32 with AVX-512 (accurate to
//! 3e-6, far below the bf16 rounding that follows) rounded to bf16, and `p·v` added to the block's f32 output
//! accumulators (a second tile product); at the end the outputs are divided by the row sums. Each row's
//! exponentials are shifted by a bound on its largest score (`scale·|q|·max|k|`) rather than the score itself, so
//! no pass finds the maximum first and no chunk's results are rescaled later; rows whose bound is too loose (their
//! probabilities would near f32's underflow) and causal attention take the whole-row path (all scores of the block
//! at once, 512 KiB at 4096 keys, in L2; each row shifted by its maximum). Keys and values are packed once per slice
//! as B panels. Rounded to bf16: q, k, v and the probabilities; the scores, the exponentials, their sums and the
//! accumulation are f32. Head widths are padded to whole tiles (32): SD's 40-wide heads do 60% more multiplications
//! than they need, still far faster than the f32 kernel.

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
    /// The largest norm of a key (for a bound on each query's scores).
    largest_key: f32,
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
    let d_p = round_up(d, amx::DEPTH);
    // As bf16, whole (rounded once where they came as f32): the packers and the query blocks then copy bits.
    let (q, k, v) = (q.to_bf16(), k.to_bf16(), v.to_bf16());
    let packed: Vec<PackedSlice> = (0..dims.slices)
        .into_par_iter()
        .map(|s| PackedSlice {
            keys: PanelsB::from_columns(d, m, |j| &k[row_at(s, j, m)..][..d]),
            values: PanelsB::from_rows(m, d, |j| &v[row_at(s, j, m)..][..d]),
            largest_key: (0..m)
                .map(|j| {
                    norm(half::slice::HalfFloatSliceExt::reinterpret_cast(
                        &k[row_at(s, j, m)..][..d],
                    ))
                })
                .fold(0.0, f32::max),
        })
        .collect();
    let blocks = n.div_ceil(QUERY_BLOCK);
    // Each task takes a run of query blocks of one slice (the tile configuration and the scratch are set up once per
    // run: per block, that was a third of a cross-attention's time), and writes their rows of the slice alone.
    let threads = rayon::current_num_threads().max(1);
    let run = (dims.slices * blocks / (8 * threads)).clamp(1, 8);
    let runs = blocks.div_ceil(run);
    let shape = BlockShape {
        keys: m,
        d_p,
        scale: dims.scale,
        causal,
    };
    (0..dims.slices * runs).into_par_iter().for_each(|task| {
        let s = task / runs;
        let run_blocks = task % runs * run..((task % runs + 1) * run).min(blocks);
        let slice = &packed[s];
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let scratch = &mut *scratch;
            scratch.q_tile.resize_zeroed(QUERY_BLOCK * d_p);
            amx::with_tiles(|tiles| {
                for block in run_blocks {
                    let first = block * QUERY_BLOCK;
                    let rows = QUERY_BLOCK.min(n - first);
                    for (r, dst) in scratch.q_tile.as_mut_slice().chunks_exact_mut(d_p).enumerate() {
                        match r < rows {
                            true => dst[..d].copy_from_slice(half::slice::HalfFloatSliceExt::reinterpret_cast(
                                &q[row_at(s, first + r, n)..][..d],
                            )),
                            false => dst.fill(0),
                        }
                    }
                    let sums = match scratch.block_in_key_chunks(tiles, slice, shape, rows) {
                        Some(sums) => sums,
                        None => scratch.block_whole_rows(tiles, slice, shape, rows, first),
                    };
                    // The unnormalised outputs divided by the row sums.
                    for (panel, acc) in scratch.outputs.iter_mut().enumerate() {
                        let columns = panel * amx::BLOCK..((panel + 1) * amx::BLOCK).min(d);
                        for (row, &sum) in acc.0.chunks_exact_mut(amx::BLOCK).zip(&sums).take(rows) {
                            let inv = 1.0 / sum;
                            row.iter_mut().for_each(|x| *x *= inv);
                        }
                        let (start, out_row) = (row_at(s, first, n) + columns.start, heads * d);
                        // SAFETY: rows `first..first + rows` of slice `s` belong to this task alone.
                        unsafe { out.store_rows(start, out_row, acc, rows, columns.len()) };
                    }
                }
            });
        });
    });
    Ok(())
}

/// The Euclidean norm of a vector of bf16 values (bits), in f32.
fn norm(x: &[u16]) -> f32 {
    x.iter()
        .map(|&v| f32::from_bits((v as u32) << 16).powi(2))
        .sum::<f32>()
        .sqrt()
}

/// What every query block of one call shares.
#[derive(Clone, Copy)]
struct BlockShape {
    keys: usize,
    /// The head width padded to whole tile depths.
    d_p: usize,
    scale: f32,
    causal: bool,
}

/// Keys per chunk of [`Scratch::block_in_key_chunks`]: the chunk's scores, probabilities and the output blocks stay in
/// L1.
const KEY_CHUNK: usize = 64;

/// A row whose probabilities sum to less than this had a shift too far above its largest score (its largest
/// probability may be near f32's smallest normal, e⁻⁸⁷): it is computed again with its exact maximum.
const SMALLEST_SUM: f32 = 1e-26;

impl Scratch {
    /// One block of (up to) 32 query rows, in `q_tile`, against all keys in chunks of [`KEY_CHUNK`], without a pass
    /// for each row's maximum score: the exponentials are shifted by a bound on it instead, `scale·|q|·max|k|`
    /// (Cauchy–Schwarz), so a chunk's probabilities are final as soon as they are computed (no rescaling as in an
    /// online softmax) and the chunk's scores never leave L1. Any shift at or above the maximum gives the same
    /// softmax; bf16 and f32 keep their relative precision at any exponent down to e⁻⁸⁷, and a row whose bound was
    /// so loose that its probabilities near that is reported by returning `None` (then the block is done again by
    /// [`block_whole_rows`](Self::block_whole_rows)). Leaves `outputs` holding the unnormalised `p·v` per value panel
    /// and returns the row sums. Causal attention (CLIP's 77 tokens) takes the whole-rows path.
    fn block_in_key_chunks(
        &mut self,
        tiles: &amx::Tiles,
        slice: &PackedSlice,
        shape: BlockShape,
        rows: usize,
    ) -> Option<[f32; QUERY_BLOCK]> {
        if shape.causal {
            return None;
        }
        let BlockShape { keys, d_p, scale, .. } = shape;
        let keys_p = round_up(keys, amx::BLOCK);
        // Row strides one cache line more than the chunk (the 16 rows of a tile fall in different L1 sets).
        let (score_row, prob_row) = (KEY_CHUNK + 16, KEY_CHUNK + 32);
        self.chunk_scores.resize(QUERY_BLOCK * score_row, 0.0);
        self.chunk_probs.resize_uninit(QUERY_BLOCK * prob_row);
        let value_panels = slice.values.columns() / amx::BLOCK;
        self.outputs.resize_with(value_panels, Staging::default);
        self.outputs.iter_mut().for_each(|o| o.0.fill(0.0));
        // exp(scale·s − bound) = 2^(s·c − bound·log2 e), c = scale·log2 e.
        let c = scale * std::f32::consts::LOG2_E;
        let mut offsets = [0f32; QUERY_BLOCK];
        for (offset, row) in offsets
            .iter_mut()
            .zip(self.q_tile.as_slice().chunks_exact(d_p))
            .take(rows)
        {
            *offset = -(scale * norm(row) * slice.largest_key) * std::f32::consts::LOG2_E;
        }
        let mut sums = RowSums::default();
        for chunk in (0..keys_p).step_by(KEY_CHUNK) {
            let chunk_len = KEY_CHUNK.min(keys_p - chunk);
            for panel in 0..chunk_len / amx::BLOCK {
                let term = Term {
                    a: self.q_tile.as_slice(),
                    a_row: d_p,
                    b: slice.keys.panel(chunk / amx::BLOCK + panel),
                };
                tiles.block_into(&[term], &mut self.chunk_scores[panel * amx::BLOCK..], score_row);
            }
            let probs = self.chunk_probs.as_mut_slice();
            let exps = ChunkExps {
                scores: &self.chunk_scores,
                score_row,
                prob_row,
                rows,
                visible: keys.saturating_sub(chunk).min(chunk_len),
                chunk_len,
                c,
            };
            exp_chunk(exps, &offsets, probs, &mut sums);
            for (panel, output) in self.outputs.iter_mut().enumerate() {
                let term = Term {
                    a: probs,
                    a_row: prob_row,
                    b: &slice.values.panel(panel)[chunk * amx::BLOCK..][..chunk_len * amx::BLOCK],
                };
                tiles.block_accumulate(&[term], &mut output.0, amx::BLOCK);
            }
        }
        let sums = sums.totals();
        sums[..rows].iter().all(|&sum| sum >= SMALLEST_SUM).then_some(sums)
    }

    /// One block of query rows (in `q_tile`), the scores against every key at once, each row's softmax shifted by
    /// its exact maximum. Leaves `outputs` and returns the sums as [`block_in_key_chunks`](Self::block_in_key_chunks).
    fn block_whole_rows(
        &mut self,
        tiles: &amx::Tiles,
        slice: &PackedSlice,
        shape: BlockShape,
        rows: usize,
        first: usize,
    ) -> [f32; QUERY_BLOCK] {
        let BlockShape {
            keys,
            d_p,
            scale,
            causal,
            ..
        } = shape;
        let keys_p = round_up(keys, amx::BLOCK);
        // Row strides of the score and probability blocks: one cache line more than the keys, so that the 16 rows a
        // tile load or store touches fall in different L1 sets (at 4096 keys the plain strides, 16 and 8 KiB, mapped
        // every row of a tile to the same set).
        let (score_row, prob_row) = (keys_p + 16, keys_p + 32);
        self.scores.resize(QUERY_BLOCK * score_row, 0.0);
        self.probs.resize_uninit(QUERY_BLOCK * prob_row);
        for panel in 0..keys_p / amx::BLOCK {
            let term = Term {
                a: self.q_tile.as_slice(),
                a_row: d_p,
                b: slice.keys.panel(panel),
            };
            tiles.block_into(&[term], &mut self.scores[panel * amx::BLOCK..], score_row);
        }
        let mut sums = [0f32; QUERY_BLOCK];
        let probs = self.probs.as_mut_slice();
        for (r, (sum, row)) in sums.iter_mut().zip(probs.chunks_exact_mut(prob_row)).enumerate() {
            // Padding keys, keys after the query's own under `causal`, and the rows past the last query weigh
            // nothing.
            if r < rows {
                let visible = if causal { (first + r + 1).min(keys) } else { keys };
                *sum = softmax_row(&self.scores[r * score_row..][..visible], scale, &mut row[..visible]);
                row[visible..].fill(0);
            } else {
                row.fill(0);
            }
        }
        let value_panels = slice.values.columns() / amx::BLOCK;
        self.outputs.resize_with(value_panels, Staging::default);
        for (panel, output) in self.outputs.iter_mut().enumerate() {
            let term = Term {
                a: probs,
                a_row: prob_row,
                b: slice.values.panel(panel),
            };
            tiles.block(&[term], output);
        }
        sums
    }
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
    /// The block's query rows (bf16, the head width padded to `d_p`).
    q_tile: AlignedBf16,
    /// A key chunk's scores and probabilities ([`Scratch::block_in_key_chunks`]).
    chunk_scores: Vec<f32>,
    chunk_probs: AlignedBf16,
    /// All keys' scores and probabilities ([`Scratch::block_whole_rows`]).
    scores: Vec<f32>,
    probs: AlignedBf16,
    /// The block's unnormalised outputs, per panel of 32 value columns.
    outputs: Vec<Staging>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The largest of `scores` (−∞ for none).
fn row_max(scores: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected.
        return unsafe { row_max_avx512(scores) };
    }
    scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
}

/// [`row_max`] with 16 lanes.
///
/// # Safety
/// The CPU must have AVX-512F (checked at run time by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_max_avx512(scores: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let len = scores.len();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..len).step_by(16) {
        let mask: __mmask16 = if len - i >= 16 { 0xffff } else { (1u16 << (len - i)) - 1 };
        max = _mm512_max_ps(max, _mm512_mask_loadu_ps(max, mask, scores.as_ptr().add(i)));
    }
    _mm512_reduce_max_ps(max)
}

/// Writes `exp(scale·(s − max))` for the row's scores as bf16 into `probs` (the row's maximum found first) and returns
/// their f32 sum.
fn softmax_row(scores: &[f32], scale: f32, probs: &mut [u16]) -> f32 {
    let max = row_max(scores);
    // exp(scale·(s − max)) = 2^(s·c − max·c) with c = scale·log2(e).
    let c = scale * std::f32::consts::LOG2_E;
    exp_row(scores, c, -max * c, probs)
}

/// One key chunk's scores of a block of query rows, for [`exp_chunk`].
#[derive(Clone, Copy)]
struct ChunkExps<'a> {
    /// `QUERY_BLOCK` rows of `score_row` values; the first `visible` of each are real keys.
    scores: &'a [f32],
    score_row: usize,
    prob_row: usize,
    /// Real query rows.
    rows: usize,
    visible: usize,
    chunk_len: usize,
    /// `scale·log2 e`.
    c: f32,
}

/// Each query row's running sum of its exponentials, kept as 16 lanes until the end (a horizontal sum per row and
/// chunk cost as much as the chunk's exponentials).
#[derive(Clone, Copy)]
#[repr(align(64))]
struct RowSums([[f32; 16]; QUERY_BLOCK]);

impl Default for RowSums {
    fn default() -> Self {
        Self([[0.0; 16]; QUERY_BLOCK])
    }
}

impl RowSums {
    fn totals(&self) -> [f32; QUERY_BLOCK] {
        std::array::from_fn(|r| self.0[r].iter().sum())
    }
}

/// A key chunk's exponentials: `probs[r][k] = 2^(s·c + offsets[r])` as bf16 for the real rows and keys, added to the
/// row's sums; zeros past them (padding keys and rows weigh nothing in `p·v`).
fn exp_chunk(exps: ChunkExps<'_>, offsets: &[f32; QUERY_BLOCK], probs: &mut [u16], sums: &mut RowSums) {
    assert!(
        exps.scores.len() >= QUERY_BLOCK * exps.score_row
            && probs.len() >= QUERY_BLOCK * exps.prob_row
            && exps.visible <= exps.chunk_len
            && exps.chunk_len <= exps.score_row.min(exps.prob_row)
            && exps.rows <= QUERY_BLOCK,
        "exponentials of a key chunk out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512_exponentials() {
        // SAFETY: AVX-512F, BW, VL, DQ and BF16 were detected; the bounds were checked above.
        return unsafe { exp_chunk_avx512(exps, offsets, probs, sums) };
    }
    let (visible, chunk_len) = (exps.visible, exps.chunk_len);
    for (r, row) in probs.chunks_exact_mut(exps.prob_row).take(QUERY_BLOCK).enumerate() {
        if r < exps.rows {
            let scores = &exps.scores[r * exps.score_row..][..visible];
            sums.0[r][0] += exp_row(scores, exps.c, offsets[r], &mut row[..visible]);
            row[visible..chunk_len].fill(0);
        } else {
            row[..chunk_len].fill(0);
        }
    }
}

/// [`exp_chunk`] with 16 lanes ([`exp16`]), one call per chunk.
///
/// # Safety
/// The CPU must have AVX-512F, BW, VL, DQ and BF16 ([`avx512_exponentials`], checked by the caller), and the sizes
/// that [`exp_chunk`] asserts must hold: `scores` holds `QUERY_BLOCK·score_row` values and `probs`
/// `QUERY_BLOCK·prob_row`, `visible ≤ chunk_len ≤ min(score_row, prob_row)`, `rows ≤ QUERY_BLOCK`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn exp_chunk_avx512(exps: ChunkExps<'_>, offsets: &[f32; QUERY_BLOCK], probs: &mut [u16], sums: &mut RowSums) {
    use std::arch::x86_64::*;
    let ChunkExps {
        scores,
        score_row,
        prob_row,
        rows,
        visible,
        chunk_len,
        c,
    } = exps;
    let c = _mm512_set1_ps(c);
    let zeros = _mm256_setzero_si256();
    for (r, (&offset, sum_lanes)) in offsets.iter().zip(&mut sums.0).enumerate() {
        let probs = probs.as_mut_ptr().add(r * prob_row);
        let mut i = 0;
        if r < rows {
            let (scores, offset) = (scores.as_ptr().add(r * score_row), _mm512_set1_ps(offset));
            let mut sum = _mm512_load_ps(sum_lanes.as_ptr());
            while i < visible {
                let mask = lanes_before(visible - i);
                let (e, bf16) = exp16(scores.add(i), mask, c, offset);
                sum = _mm512_add_ps(sum, e);
                // Zeros in the lanes past the last key, too.
                _mm256_mask_storeu_epi16(probs.add(i) as *mut i16, lanes_before(chunk_len - i), bf16);
                i += 16;
            }
            _mm512_store_ps(sum_lanes.as_mut_ptr(), sum);
        }
        while i < chunk_len {
            _mm256_mask_storeu_epi16(probs.add(i) as *mut i16, lanes_before(chunk_len - i), zeros);
            i += 16;
        }
    }
}

/// Whether this CPU has what [`exp16`] needs: AVX-512F, BW, VL, DQ and BF16.
#[cfg(target_arch = "x86_64")]
fn avx512_exponentials() -> bool {
    super::avx512_bw_vl()
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// The first `n` of 16 lanes (all for `n` ≥ 16).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes_before(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Writes `2^(s·c + offset)` for the row's scores as bf16 into `probs` and returns their f32 sum: a softmax's
/// exponentials for a known shift (`offset` ≤ −c·max s).
fn exp_row(scores: &[f32], c: f32, offset: f32, probs: &mut [u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512_exponentials() {
        // SAFETY: AVX-512F, BW, VL, DQ and BF16 were detected.
        return unsafe { exp_row_avx512(scores, c, offset, probs) };
    }
    let mut sum = 0f32;
    for (p, &s) in probs.iter_mut().zip(scores) {
        let e = s.mul_add(c, offset).exp2();
        sum += e;
        *p = bf16_bits(e);
    }
    sum
}

/// [`exp_row`] with 16 lanes ([`exp16`]), over the first `min(scores.len(), probs.len())` values.
///
/// # Safety
/// The CPU must have AVX-512F, BW, VL, DQ and BF16 ([`avx512_exponentials`], checked by the caller).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn exp_row_avx512(scores: &[f32], c: f32, offset: f32, probs: &mut [u16]) -> f32 {
    use std::arch::x86_64::*;
    let len = scores.len().min(probs.len());
    let (c, offset) = (_mm512_set1_ps(c), _mm512_set1_ps(offset));
    let mut sum = _mm512_setzero_ps();
    for i in (0..len).step_by(16) {
        let mask = lanes_before(len - i);
        let (e, bf16) = exp16(scores.as_ptr().add(i), mask, c, offset);
        sum = _mm512_add_ps(sum, e);
        _mm256_mask_storeu_epi16(probs.as_mut_ptr().add(i) as *mut i16, mask, bf16);
    }
    _mm512_reduce_add_ps(sum)
}

/// `2^(s·c + offset)` of the 16 scores at `scores` (the lanes in `mask`; zero in the others), in f32 and rounded to
/// bf16. The exponentials are only needed to bf16's precision (they are rounded to bf16 for the `p·v` product), so
/// `2^t` is `p(t − ⌊t⌋) · 2^⌊t⌋` with a degree-4 polynomial fitted to `2^f` on [0, 1) (relative error 2.7e-6, against
/// bf16's 2e-3): `vreduceps` gives the fraction and `vscalefps` floors the exponent itself, 11 vector operations per
/// 16 scores with the caller's sum and store (a cubic, 7.5e-5, made the bf16 fidelity test's ratio 0.68 → 0.72 for
/// one operation less). The exponentials are the largest part of the attention at 4096 keys.
///
/// # Safety
/// The CPU must have AVX-512F, BW, VL, DQ and BF16 ([`avx512_exponentials`]); `scores + l` must be readable for
/// every lane `l` set in `mask` (the masked-off lanes are not read).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
#[inline]
unsafe fn exp16(
    scores: *const f32,
    mask: u16,
    c: std::arch::x86_64::__m512,
    offset: std::arch::x86_64::__m512,
) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // 2^f ≈ c0 + c1·f + … + c4·f⁴ on [0, 1), fitted for the smallest maximum relative error (iteratively
    // reweighted least squares over 20 001 points; 2.7e-6 evaluated in f32).
    const C: [f32; 5] = [1.000_002_6, 0.693_003_83, 0.241_442_74, 0.052_011_49, 0.013_534_151];
    let t = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, scores), c, offset);
    // f = t − ⌊t⌋ in [0, 1).
    let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
    let mut p = _mm512_set1_ps(C[4]);
    for &k in C[..4].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
    }
    // p · 2^⌊t⌋, zero in the lanes outside the mask.
    let e = _mm512_maskz_scalef_ps(mask, p, t);
    (e, std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::amx::Activations::{Bf16, F32};
    use crate::cpu::attention::tests::reference;
    use crate::cpu::test_values;

    /// The row exponentials against f64's: each probability its f64 value rounded to bf16 (within one bf16 step,
    /// 2⁻⁸ relative; the polynomial's 2.7e-6 is far below), over scores that take the exponent through 30 binades and
    /// lengths that leave every tail size; shifted by the row's maximum (`softmax_row`) and by a bound 50 above it
    /// (`exp_row`, as the chunked attention does: bf16 keeps its relative precision down there).
    #[test]
    fn row_exponentials_are_accurate() {
        for len in [1, 15, 16, 17, 100, 4096] {
            let scores: Vec<f32> = test_values(len, len as u64).iter().map(|v| 20.0 * v).collect();
            let scale = 0.7f32;
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            for extra_shift in [0.0, 50.0] {
                let mut probs = vec![0u16; len];
                if extra_shift == 0.0 {
                    softmax_row(&scores, scale, &mut probs);
                } else {
                    let c = scale * std::f32::consts::LOG2_E;
                    let offset = -(scale * max + extra_shift) * std::f32::consts::LOG2_E;
                    exp_row(&scores, c, offset, &mut probs);
                }
                for (&p, &s) in probs.iter().zip(&scores) {
                    let e = ((s as f64 - max as f64) * scale as f64 - extra_shift as f64).exp();
                    let p = f32::from_bits((p as u32) << 16) as f64;
                    assert!(
                        (p - e).abs() <= e * 2f64.powi(-8),
                        "{len} shift {extra_shift}: {p} vs {e}"
                    );
                }
            }
        }
    }

    /// bf16 q, k, v give the bits of their f32 values (which the kernel rounds to the same bf16); a bf16 output is
    /// the f32 output rounded.
    #[test]
    fn bf16_activations_give_the_f32_paths_bits() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
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
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
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

    /// Queries and keys whose norms make the bound on the scores (`scale·|q|·max|k|`) hundreds above the actual
    /// ones, whose exponentials would all underflow: those rows are computed again with their exact maximum, and
    /// match the f64 softmax as the other tests' (the largest probability exact, the others within 2⁻⁸).
    #[test]
    fn a_loose_score_bound_falls_back_to_the_exact_maximum() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
            return Ok(());
        }
        let (queries, keys, d) = (40, 100, 40);
        // Queries along the first axis, keys along the second: nearly orthogonal, scores small, norms 64.
        let along = |axis: usize, rows: usize, seed: u64| -> Vec<f32> {
            let noise = test_values(rows * d, seed);
            bf16_rounded(
                (0..rows * d)
                    .map(|i| if i % d == axis { 64.0 } else { noise[i] })
                    .collect(),
            )
        };
        let (q, k) = (along(0, queries, 1), along(1, keys, 2));
        let v = bf16_rounded(test_values(keys * d, 3));
        let dims = AttentionDims {
            slices: 1,
            queries,
            keys,
            head_dim: d,
            scale: 0.1,
        };
        let want = reference(&q, &k, &v, dims);
        let mut got = vec![f32::NAN; q.len()];
        attention_bf16(F32(&q), F32(&k), F32(&v), &SharedOut::new(&mut got), dims, 1, false)?;
        for (index, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 4e-3, "value {index}: {g} vs {w}");
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
    /// multiples of 32, head widths 1–80). The probabilities' bf16 rounding is the only difference left: at most
    /// half a unit in the last of bf16's 8 significant bits, 2⁻⁸ relative, for each (the largest included: the
    /// chunked path shifts by a bound, not the maximum), so each output, a weighted mean of values within [−1, 1],
    /// is within 2⁻⁸ = 3.9e-3 plus f32 rounding.
    #[test]
    fn matches_an_f64_softmax_attention() -> Result<()> {
        if crate::cpu::skip_without(crate::cpu::Needs::AmxBf16) {
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
                assert!((g - w).abs() < 4e-3, "{dims:?} value {index}: {g} vs {w}");
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
                        (g - w).abs() < 4e-3,
                        "{dims:?} in {heads} heads, value {index}: {g} vs {w}"
                    );
                }
            }
        }
        Ok(())
    }
}
