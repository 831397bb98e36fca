//! Fused ("flash") attention for the CPU: `softmax(q·kᵀ·scale)·v` computed block by block with an online softmax,
//! so the N×M score matrix is never materialised (at 64×64 latents one head's is 64 MiB, and candle's
//! matmul → softmax → matmul wrote and re-read it for every head). A block of query rows keeps a running row
//! maximum, a running sum and an unnormalised output, updated for each block of keys; the keys' block of scores lives
//! in a few KiB of scratch.
//!
//! Layout: `q: [S, N, d]`, `k, v: [S, M, d]`, out `[S, N, d]`, all contiguous f32 (S = batch × heads). No masks: the
//! causal / key-masked attention of the text encoder stays on the plain path.

use super::{contiguous_f32, Isa};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// Keys per block: the scores of one block of rows against them stay in registers / L1.
const KEY_BLOCK: usize = 64;
/// Query rows per parallel task (the keys and values are streamed once per task).
const QUERY_BLOCK: usize = 64;

/// Sizes of one fused attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDims {
    /// Independent (batch × head) slices.
    pub slices: usize,
    /// Query rows per slice.
    pub queries: usize,
    /// Keys (and values) per slice.
    pub keys: usize,
    /// Head width.
    pub head_dim: usize,
    /// Factor on the scores before the softmax (`1/√d` for standard attention).
    pub scale: f32,
}

impl AttentionDims {
    pub(crate) fn check(&self, q: &[f32], k: &[f32], v: &[f32], out_len: usize) -> Result<()> {
        self.check_lengths(q.len(), k.len(), v.len(), out_len)
    }

    /// [`check`](Self::check) on the buffers' lengths.
    pub(crate) fn check_lengths(&self, q: usize, k: usize, v: usize, out_len: usize) -> Result<()> {
        let (s, n, m, d) = (self.slices, self.queries, self.keys, self.head_dim);
        if m == 0 || d == 0 {
            candle_core::bail!(
                "fused attention needs at least one key and a non-zero head width (got {m} keys, d = {d})"
            );
        }
        if q != s * n * d || out_len != s * n * d || k != s * m * d || v != s * m * d {
            candle_core::bail!(
                "fused attention: buffer sizes q {q}, k {k}, v {v}, out {out_len} do not match {s} slices × ({n} queries, {m} keys) × {d}"
            );
        }
        Ok(())
    }
}

/// Computes attention into `out` with the given instruction set, in parallel over slices and blocks of query rows
/// (rayon's pool).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: AttentionDims, isa: Isa) -> Result<()> {
    dims.check(q, k, v, out.len())?;
    let (n, m, d) = (dims.queries, dims.keys, dims.head_dim);
    if n == 0 {
        return Ok(());
    }
    let padded_keys = m.div_ceil(KEY_BLOCK) * KEY_BLOCK;
    out.par_chunks_mut(n * d).enumerate().for_each(|(slice, out)| {
        let (q, k, v) = (
            &q[slice * n * d..(slice + 1) * n * d],
            &k[slice * m * d..(slice + 1) * m * d],
            &v[slice * m * d..(slice + 1) * m * d],
        );
        // kᵀ, `[d, padded_keys]`: the score kernel reads a block of keys as contiguous vectors per channel.
        let mut k_t = vec![0f32; d * padded_keys];
        for (j, row) in k.chunks_exact(d).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                k_t[c * padded_keys + j] = x;
            }
        }
        let slice = SliceInputs {
            k_t: &k_t,
            v,
            keys: m,
            padded_keys,
            head_dim: d,
            scale: dims.scale,
        };
        out.par_chunks_mut(QUERY_BLOCK * d)
            .zip(q.par_chunks(QUERY_BLOCK * d))
            .for_each(|(out, q)| slice.query_block(q, out, isa));
    });
    Ok(())
}

/// One slice's keys and values, shared by its query blocks.
struct SliceInputs<'a> {
    k_t: &'a [f32],
    v: &'a [f32],
    keys: usize,
    padded_keys: usize,
    head_dim: usize,
    scale: f32,
}

impl SliceInputs<'_> {
    /// Attention of up to [`QUERY_BLOCK`] query rows (`q`, `out`: `[rows, d]`) over all keys.
    fn query_block(&self, q: &[f32], out: &mut [f32], isa: Isa) {
        let d = self.head_dim;
        let rows = q.len() / d;
        let mut scores = vec![0f32; rows * KEY_BLOCK];
        let mut acc = vec![0f32; rows * d];
        let mut row_max = vec![f32::NEG_INFINITY; rows];
        let mut row_sum = vec![0f32; rows];
        for start in (0..self.keys).step_by(KEY_BLOCK) {
            let valid = KEY_BLOCK.min(self.keys - start);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx512` is only chosen when the CPU has AVX-512F; the slices' sizes are checked by
                // `AttentionDims::check` and the padding of `k_t`.
                Isa::Avx512 => unsafe { avx512::scores(q, &self.k_t[start..], self.padded_keys, d, &mut scores) },
                _ => portable::scores(q, &self.k_t[start..], self.padded_keys, d, &mut scores),
            }
            self.online_softmax(&mut scores, valid, &mut row_max, &mut row_sum, &mut acc, isa);
            let v = &self.v[start * d..(start + valid) * d];
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above; `v` holds `valid` rows of `d`.
                Isa::Avx512 => unsafe { avx512::accumulate_values(&scores, valid, v, d, &mut acc) },
                _ => portable::accumulate_values(&scores, valid, v, d, &mut acc),
            }
        }
        for ((out, acc), sum) in out.chunks_exact_mut(d).zip(acc.chunks_exact(d)).zip(&row_sum) {
            let inv = 1.0 / sum;
            for (o, a) in out.iter_mut().zip(acc) {
                *o = a * inv;
            }
        }
    }

    /// Turns a block of raw scores into unnormalised probabilities `exp(s·scale − max)` (0 for the padding keys),
    /// raising each row's running maximum and rescaling its running sum and output accumulator to match.
    fn online_softmax(
        &self,
        scores: &mut [f32],
        valid: usize,
        row_max: &mut [f32],
        row_sum: &mut [f32],
        acc: &mut [f32],
        isa: Isa,
    ) {
        let d = self.head_dim;
        for (r, row) in scores.chunks_exact_mut(KEY_BLOCK).enumerate() {
            let block_max = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F is present (see `query_block`); `row` holds KEY_BLOCK floats.
                Isa::Avx512 => unsafe { avx512::max(row, valid) },
                _ => portable::max(row, valid),
            } * self.scale;
            let new_max = row_max[r].max(block_max);
            let block_sum = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F is present (see `query_block`); `row` holds KEY_BLOCK floats.
                Isa::Avx512 => unsafe { avx512::exp_row(row, valid, self.scale, new_max) },
                _ => portable::exp_row(row, valid, self.scale, new_max),
            };
            // The first block has row_max −∞: the factor is 0 and the (zero) accumulator stays zero.
            let rescale = (row_max[r] - new_max).exp();
            row_sum[r] = row_sum[r] * rescale + block_sum;
            row_max[r] = new_max;
            if rescale != 1.0 {
                acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= rescale);
            }
        }
    }
}

/// Plain versions of the block kernels: the fallback on CPUs without AVX-512, and a second implementation for tests.
mod portable {
    use super::KEY_BLOCK;

    /// `scores[r][j] = Σ_c q[r][c]·k_t[c][j]` for the KEY_BLOCK keys at the start of `k_t` (row stride `stride`).
    pub(super) fn scores(q: &[f32], k_t: &[f32], stride: usize, d: usize, scores: &mut [f32]) {
        for (q_row, s_row) in q.chunks_exact(d).zip(scores.chunks_exact_mut(KEY_BLOCK)) {
            s_row.fill(0.0);
            for (c, &qc) in q_row.iter().enumerate() {
                for (s, &kt) in s_row.iter_mut().zip(&k_t[c * stride..c * stride + KEY_BLOCK]) {
                    *s += qc * kt;
                }
            }
        }
    }

    /// The largest of the first `valid` scores.
    pub(super) fn max(row: &[f32], valid: usize) -> f32 {
        row[..valid].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s))
    }

    /// `row[j] = exp(row[j]·scale − max)` for the valid keys, 0 for the rest; returns the sum.
    pub(super) fn exp_row(row: &mut [f32], valid: usize, scale: f32, max: f32) -> f32 {
        let mut sum = 0.0;
        for s in &mut row[..valid] {
            *s = (*s * scale - max).exp();
            sum += *s;
        }
        row[valid..].fill(0.0);
        sum
    }

    /// `acc[r] += Σ_j p[r][j]·v[j]` over the `valid` keys.
    pub(super) fn accumulate_values(p: &[f32], valid: usize, v: &[f32], d: usize, acc: &mut [f32]) {
        for (p_row, acc_row) in p.chunks_exact(KEY_BLOCK).zip(acc.chunks_exact_mut(d)) {
            for (&pj, v_row) in p_row[..valid].iter().zip(v.chunks_exact(d)) {
                for (a, &x) in acc_row.iter_mut().zip(v_row) {
                    *a += pj * x;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! Register-blocked versions: 4 query rows at a time, so each loaded vector of keys or values feeds 4 FMAs.
    use super::KEY_BLOCK;
    use crate::cpu::vector_math::avx512::exp;
    use std::arch::x86_64::*;

    const ROWS: usize = 4;
    const KEY_VECTORS: usize = KEY_BLOCK / 16;

    /// See `portable::scores`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked at run time by the caller, [`Isa::detect`](crate::cpu::Isa::detect)).
    /// The sizes are asserted here: `k_t` holds `(d − 1)·stride + KEY_BLOCK` floats, `scores` `KEY_BLOCK` per row of
    /// `q`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(q: &[f32], k_t: &[f32], stride: usize, d: usize, scores: &mut [f32]) {
        assert!(k_t.len() >= (d - 1) * stride + KEY_BLOCK);
        let rows = q.len() / d;
        let mut r = 0;
        while r < rows {
            let (q, s) = (&q[r * d..], &mut scores[r * KEY_BLOCK..]);
            match rows - r {
                1 => scores_rows::<1>(q, k_t, stride, d, s),
                2 => scores_rows::<2>(q, k_t, stride, d, s),
                3 => scores_rows::<3>(q, k_t, stride, d, s),
                _ => scores_rows::<ROWS>(q, k_t, stride, d, s),
            }
            r += ROWS;
        }
    }

    /// `R` query rows' scores against one key block.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `d ≥ 1` and `k_t` holds at least `(d − 1)·stride + KEY_BLOCK` floats (the rows of
    /// `q` and `scores` are asserted here).
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_rows<const R: usize>(q: &[f32], k_t: &[f32], stride: usize, d: usize, scores: &mut [f32]) {
        assert!(q.len() >= R * d && scores.len() >= R * KEY_BLOCK);
        let mut acc = [[_mm512_setzero_ps(); KEY_VECTORS]; R];
        let (q, k_t) = (q.as_ptr(), k_t.as_ptr());
        for c in 0..d {
            let keys: [__m512; KEY_VECTORS] = std::array::from_fn(|x| _mm512_loadu_ps(k_t.add(c * stride + 16 * x)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*q.add(r * d + c));
                for (a, &kv) in acc.iter_mut().zip(&keys) {
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (x, &a) in acc.iter().enumerate() {
                _mm512_storeu_ps(scores.as_mut_ptr().add(r * KEY_BLOCK + 16 * x), a);
            }
        }
    }

    /// See `portable::max` (the scalar fold was a tenth of the attention time).
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked by the caller); `row` holding `KEY_BLOCK` floats is asserted here.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max(row: &[f32], valid: usize) -> f32 {
        assert!(row.len() >= KEY_BLOCK);
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for x in 0..KEY_VECTORS {
            let lanes = valid.saturating_sub(16 * x).min(16);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
            max = _mm512_mask_max_ps(max, mask, max, _mm512_loadu_ps(row.as_ptr().add(16 * x)));
        }
        _mm512_reduce_max_ps(max)
    }

    /// See `portable::exp_row`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked by the caller); `row` holding `KEY_BLOCK` floats is asserted here.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_row(row: &mut [f32], valid: usize, scale: f32, max: f32) -> f32 {
        assert!(row.len() >= KEY_BLOCK);
        let (scale, max) = (_mm512_set1_ps(scale), _mm512_set1_ps(max));
        let mut sum = _mm512_setzero_ps();
        for x in 0..KEY_VECTORS {
            let lanes = valid.saturating_sub(16 * x).min(16);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
            let p = row.as_mut_ptr().add(16 * x);
            let e = _mm512_maskz_mov_ps(mask, exp(_mm512_fmsub_ps(_mm512_loadu_ps(p), scale, max)));
            _mm512_storeu_ps(p, e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// See `portable::accumulate_values`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked by the caller). The sizes (`p` holds `rows × KEY_BLOCK`, `v` `valid × d`,
    /// `acc` `rows × d` floats) are asserted here and in `values_rows`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn accumulate_values(p: &[f32], valid: usize, v: &[f32], d: usize, acc: &mut [f32]) {
        assert!(v.len() >= valid * d);
        let rows = acc.len() / d;
        // The head width in chunks of up to 4 vectors (64 channels); the last vector of a chunk may be partial.
        let mut c = 0;
        while c < d {
            let width = (d - c).min(64);
            let mut r = 0;
            while r < rows {
                let (p, acc) = (&p[r * KEY_BLOCK..], &mut acc[r * d + c..]);
                let v = &v[c..];
                match (rows - r).min(ROWS) {
                    1 => values_rows::<1>(p, valid, v, d, width, acc),
                    2 => values_rows::<2>(p, valid, v, d, width, acc),
                    3 => values_rows::<3>(p, valid, v, d, width, acc),
                    _ => values_rows::<ROWS>(p, valid, v, d, width, acc),
                }
                r += ROWS;
            }
            c += width;
        }
    }

    /// `R` rows × `width` (≤ 64) channels of the accumulator, which has row stride `d` like `v`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; the slices' sizes are asserted here.
    #[target_feature(enable = "avx512f")]
    unsafe fn values_rows<const R: usize>(p: &[f32], valid: usize, v: &[f32], d: usize, width: usize, acc: &mut [f32]) {
        let masks: [__mmask16; 4] = std::array::from_fn(|x| {
            let lanes = width.saturating_sub(16 * x).min(16);
            ((1u32 << lanes) - 1) as u16
        });
        assert!(p.len() >= (R - 1) * KEY_BLOCK + valid && acc.len() >= (R - 1) * d + width);
        assert!(valid == 0 || v.len() >= (valid - 1) * d + width);
        let vectors = width.div_ceil(16);
        let (p, v, out) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
        let mut sums = [[_mm512_setzero_ps(); 4]; R];
        for (r, sums) in sums.iter_mut().enumerate() {
            for (x, s) in sums.iter_mut().enumerate().take(vectors) {
                *s = _mm512_maskz_loadu_ps(masks[x], out.add(r * d + 16 * x));
            }
        }
        for j in 0..valid {
            let values: [__m512; 4] = std::array::from_fn(|x| _mm512_maskz_loadu_ps(masks[x], v.add(j * d + 16 * x)));
            for (r, sums) in sums.iter_mut().enumerate() {
                let pj = _mm512_set1_ps(*p.add(r * KEY_BLOCK + j));
                for (s, &val) in sums.iter_mut().zip(&values).take(vectors) {
                    *s = _mm512_fmadd_ps(pj, val, *s);
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            for (x, &s) in sums.iter().enumerate().take(vectors) {
                _mm512_mask_storeu_ps(out.add(r * d + 16 * x), masks[x], s);
            }
        }
    }
}

/// [`attention`] as a candle operation on `[S, N, d]`, `[S, M, d]`, `[S, M, d]` contiguous f32 CPU tensors.
pub struct FusedAttention {
    pub scale: f32,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "ember-fused-attention"
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
        let (slices, queries, head_dim) = q_l.shape().dims3()?;
        let keys = k_l.shape().dims3()?.1;
        let (q, k, v) = (
            contiguous_f32(q, q_l, "fused attention: q")?,
            contiguous_f32(k, k_l, "fused attention: k")?,
            contiguous_f32(v, v_l, "fused attention: v")?,
        );
        let mut out = super::zeroed_output(q.len());
        let dims = AttentionDims {
            slices,
            queries,
            keys,
            head_dim,
            scale: self.scale,
        };
        attention(q, k, v, &mut out, dims, Isa::detect())?;
        Ok((CpuStorage::F32(out), q_l.shape().clone()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// Plain three-pass attention in f64: the reference for both kernels.
    pub(crate) fn reference(q: &[f32], k: &[f32], v: &[f32], dims: AttentionDims) -> Vec<f32> {
        let (n, m, d) = (dims.queries, dims.keys, dims.head_dim);
        let mut out = vec![0f32; q.len()];
        for s in 0..dims.slices {
            for i in 0..n {
                let q_row = &q[(s * n + i) * d..][..d];
                let scores: Vec<f64> = (0..m)
                    .map(|j| {
                        let k_row = &k[(s * m + j) * d..][..d];
                        q_row.iter().zip(k_row).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * dims.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 = (0..m).map(|j| e[j] * v[(s * m + j) * d + c] as f64).sum();
                    out[(s * n + i) * d + c] = (o / total) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn kernels_match_the_reference_on_odd_shapes() -> Result<()> {
        // SD's head widths (40, 80, 160, 64), odd widths and counts, fewer keys than a block, ragged blocks.
        let shapes = [
            (1, 1, 1, 1),
            (2, 5, 3, 7),
            (3, 7, 77, 40),
            (2, 65, 64, 80),
            (1, 130, 129, 33),
            (2, 64, 77, 160),
            (1, 67, 200, 64),
            (1, 9, 300, 17),
        ];
        for (i, &(slices, queries, keys, head_dim)) in shapes.iter().enumerate() {
            let dims = AttentionDims {
                slices,
                queries,
                keys,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            let seed = i as u64 * 3;
            // Scores up to ~±30: exercises the running-maximum rescaling.
            let scaled = |len, seed, amp: f32| -> Vec<f32> { test_values(len, seed).iter().map(|x| x * amp).collect() };
            let q = scaled(slices * queries * head_dim, seed, 3.0);
            let k = scaled(slices * keys * head_dim, seed + 1, 3.0);
            let v = scaled(slices * keys * head_dim, seed + 2, 1.0);
            let want = reference(&q, &k, &v, dims);
            for isa in Isa::all_supported() {
                let mut got = vec![f32::NAN; want.len()];
                attention(&q, &k, &v, &mut got, dims, isa)?;
                let err = crate::cpu::max_abs_error(&got, &want);
                assert!(
                    err < 2e-6,
                    "{isa:?} {slices}×{queries}×{keys}×{head_dim}: max abs error {err}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let dims = AttentionDims {
            slices: 1,
            queries: 2,
            keys: 3,
            head_dim: 4,
            scale: 0.5,
        };
        let (q, k) = (vec![0f32; 8], vec![0f32; 12]);
        let mut out = vec![0f32; 8];
        assert!(attention(&q, &k, &k[..11], &mut out, dims, Isa::Portable).is_err());
        let no_keys = AttentionDims { keys: 0, ..dims };
        assert!(attention(&q, &[], &[], &mut out, no_keys, Isa::Portable).is_err());
    }
}
