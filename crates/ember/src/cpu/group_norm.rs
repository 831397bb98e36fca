//! Group normalisation with the optional SiLU that follows it in every resnet block, in one pass over the output
//! (candle's ops took eight: statistics, centring, scaling, the affine step and the activation, each into a new
//! buffer). Statistics are accumulated in f64, the output is computed in f32.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

/// Sizes of one group-norm call on `[B, C, spatial…]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormDims {
    pub batch: usize,
    pub channels: usize,
    /// Product of the spatial dimensions.
    pub spatial: usize,
    pub groups: usize,
    pub eps: f64,
    /// Apply SiLU (`x·σ(x)`) to the normalised, scaled and shifted values.
    pub silu: bool,
}

impl GroupNormDims {
    /// Checks the group split and the sizes of `x: [B, C, spatial]`, `weight` and `bias` (`C` each).
    fn check(&self, x: &[f32], weight: &[f32], bias: &[f32]) -> Result<()> {
        let GroupNormDims {
            batch,
            channels,
            spatial,
            groups,
            ..
        } = *self;
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("group norm: {channels} channels cannot be split into {groups} groups");
        }
        if x.len() != batch * channels * spatial || weight.len() != channels || bias.len() != channels {
            candle_core::bail!(
                "group norm: buffer sizes x {}, weight {}, bias {} do not match {batch}×{channels}×{spatial}",
                x.len(),
                weight.len(),
                bias.len()
            );
        }
        Ok(())
    }
}

/// `out = [silu](((x − mean_g) / √(var_g + eps))·weight[c] + bias[c])` per batch item and group.
pub fn group_norm(x: &[f32], weight: &[f32], bias: &[f32], out: &mut [f32], dims: GroupNormDims) -> Result<()> {
    let GroupNormDims {
        channels,
        spatial,
        groups,
        eps,
        silu,
        ..
    } = dims;
    dims.check(x, weight, bias)?;
    if out.len() != x.len() {
        candle_core::bail!("group norm: output of {} values for an input of {}", out.len(), x.len());
    }
    let per_group = channels / groups * spatial;
    if per_group == 0 {
        return Ok(());
    }
    out.par_chunks_mut(per_group)
        .zip(x.par_chunks(per_group))
        .enumerate()
        .for_each(|(index, (out, x))| {
            let first_channel = index % groups * (channels / groups);
            let channel_count = channels / groups;
            let (weight, bias) = (
                &weight[first_channel..][..channel_count],
                &bias[first_channel..][..channel_count],
            );
            let (mean, var) = mean_and_variance(x);
            let inv_std = (1.0 / (var + eps).sqrt()) as f32;
            #[cfg(target_arch = "x86_64")]
            if super::Isa::detect() == super::Isa::Avx512 {
                // SAFETY: AVX-512F was detected.
                unsafe { avx512::normalise_group(x, out, weight, bias, spatial, (mean, inv_std), silu) };
                return;
            }
            for (c, (out, x)) in out.chunks_exact_mut(spatial).zip(x.chunks_exact(spatial)).enumerate() {
                // Centred in f64: with the mean rounded to f32 (or folded into the shift), groups whose |mean| ≫ std
                // lost digits.
                let (scale, shift) = (inv_std * weight[c], bias[c]);
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v as f64 - mean) as f32 * scale + shift;
                }
                if silu {
                    out.iter_mut().for_each(|o| *o /= 1.0 + (-*o).exp());
                }
            }
        });
    Ok(())
}

/// Group norm as a per-(batch item, channel) affine map: `(scale, shift)`, each `B·C` long, such that the output of
/// [`group_norm`] (before any SiLU) is `x·scale + shift` for every value of that item and channel. The statistics
/// are computed here (in f64), for a consumer that normalises as it reads `x` instead of reading a normalised copy
/// (the bf16 convolution's input fill, `cpu::conv_bf16::InputNorm`).
pub fn folded_affine(x: &[f32], weight: &[f32], bias: &[f32], dims: GroupNormDims) -> Result<(Vec<f32>, Vec<f32>)> {
    let GroupNormDims {
        batch,
        channels,
        spatial,
        groups,
        ..
    } = dims;
    dims.check(x, weight, bias)?;
    let per_group = channels / groups * spatial;
    if per_group == 0 {
        return Ok((vec![0f32; batch * channels], vec![0f32; batch * channels]));
    }
    let statistics: Vec<(f64, f64)> = x.par_chunks(per_group).map(mean_and_variance).collect();
    Ok(affine_of_statistics(&statistics, weight, bias, dims))
}

/// The folded affine map from each (batch item, group)'s `(mean, variance)`, in that order: `(scale, shift)` per
/// (item, channel), `weight[c] / √(var + eps)` and `bias[c] − mean · scale`.
fn affine_of_statistics(
    statistics: &[(f64, f64)],
    weight: &[f32],
    bias: &[f32],
    dims: GroupNormDims,
) -> (Vec<f32>, Vec<f32>) {
    let GroupNormDims {
        batch,
        channels,
        groups,
        eps,
        ..
    } = dims;
    let mut scale = vec![0f32; batch * channels];
    let mut shift = vec![0f32; batch * channels];
    for (index, &(mean, var)) in statistics.iter().enumerate() {
        let inv_std = 1.0 / (var + eps).sqrt();
        let (item, group) = (index / groups, index % groups);
        for c in group * (channels / groups)..(group + 1) * (channels / groups) {
            let s = inv_std * weight[c] as f64;
            scale[item * channels + c] = s as f32;
            shift[item * channels + c] = (bias[c] as f64 - mean * s) as f32;
        }
    }
    (scale, shift)
}

/// [`folded_affine`] of a channels-last `x: [B, spatial, C]` (the UNet's and the VAE's activations on the AMX
/// path): one pass sums each channel's values over the pixels in f64, relative to the channel's first value (so that
/// a mean far from zero costs no digits), and the sums are combined per group.
pub fn folded_affine_channels_last(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    dims: GroupNormDims,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let GroupNormDims {
        batch,
        channels,
        spatial,
        groups,
        ..
    } = dims;
    dims.check(x, weight, bias)?;
    if spatial == 0 || channels == 0 {
        return Ok((vec![0f32; batch * channels], vec![0f32; batch * channels]));
    }
    // Tasks of about 64 KiB of pixels: a channel's pass over them reads from L2.
    let pixels_per_task = (16384 / channels).max(16).min(spatial);
    let tasks_per_item = spatial.div_ceil(pixels_per_task);
    let sums: Vec<ChannelSums> = (0..batch * tasks_per_item)
        .into_par_iter()
        .map(|task| {
            let (item, part) = (task / tasks_per_item, task % tasks_per_item);
            let pixels = part * pixels_per_task..((part + 1) * pixels_per_task).min(spatial);
            let values = &x[(item * spatial + pixels.start) * channels..(item * spatial + pixels.end) * channels];
            ChannelSums::of(values, &x[item * spatial * channels..][..channels])
        })
        .collect();
    let per_group = channels / groups;
    let n = (per_group * spatial) as f64;
    let mut statistics = Vec::with_capacity(batch * groups);
    for (item, parts) in sums.chunks(tasks_per_item).enumerate() {
        let pivot = &x[item * spatial * channels..][..channels];
        let total = |c: usize, of: fn(&ChannelSums) -> &[f64]| parts.iter().map(|p| of(p)[c]).sum::<f64>();
        for group in 0..groups {
            let members = group * per_group..(group + 1) * per_group;
            let first_moment: Vec<f64> = members.clone().map(|c| total(c, |p| &p.first)).collect();
            let mean = members
                .clone()
                .zip(&first_moment)
                .map(|(c, s)| s + spatial as f64 * pivot[c] as f64)
                .sum::<f64>()
                / n;
            // Σ(x − mean)² per channel from its sums about the pivot p: Σ(x − p)² + 2(p − mean)Σ(x − p) + n(p − mean)².
            let var = members
                .clone()
                .zip(&first_moment)
                .map(|(c, s)| {
                    let offset = pivot[c] as f64 - mean;
                    total(c, |p| &p.second) + 2.0 * offset * s + spatial as f64 * offset * offset
                })
                .sum::<f64>()
                / n;
            // (Rounding may leave a constant group's variance a hair below zero.)
            statistics.push((mean, var.max(0.0)));
        }
    }
    Ok(affine_of_statistics(&statistics, weight, bias, dims))
}

/// Per channel of some pixels `[pixels][C]`: Σ(x − p) and Σ(x − p)² in f64, `p` the channel's pivot value.
struct ChannelSums {
    first: Vec<f64>,
    second: Vec<f64>,
}

impl ChannelSums {
    fn of(values: &[f32], pivot: &[f32]) -> Self {
        let channels = pivot.len();
        let mut sums = ChannelSums {
            first: vec![0.0; channels],
            second: vec![0.0; channels],
        };
        #[cfg(target_arch = "x86_64")]
        if super::Isa::detect() == super::Isa::Avx512 {
            // SAFETY: AVX-512F was detected; the sums and the pivot have `channels` values, `values` whole pixels.
            unsafe { avx512::channel_sums(values, pivot, &mut sums.first, &mut sums.second) };
            return sums;
        }
        for pixel in values.chunks_exact(channels) {
            for (c, (&v, &p)) in pixel.iter().zip(pivot).enumerate() {
                let d = v as f64 - p as f64;
                sums.first[c] += d;
                sums.second[c] += d * d;
            }
        }
        sums
    }
}

/// Mean and (biased) variance of `x`, accumulated in f64 (16 lanes with AVX-512): the statistics of every
/// normalisation here (group norm, its folded form, `cpu::layer_norm`).
pub(crate) fn mean_and_variance(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    #[cfg(target_arch = "x86_64")]
    if super::Isa::detect() == super::Isa::Avx512 {
        use std::arch::x86_64::*;
        // SAFETY: AVX-512F was detected.
        unsafe {
            let mean = avx512::sum_f64(x, |v| v) / n;
            let mean_v = _mm512_set1_pd(mean);
            let var = avx512::sum_f64(x, |v| {
                let d = _mm512_sub_pd(v, mean_v);
                _mm512_mul_pd(d, d)
            }) / n;
            return (mean, var);
        }
    }
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

/// The same per group with 16 lanes: statistics in f64 (8 lanes, four accumulators), the affine step and SiLU in
/// f32 with the vectorised exp. The VAE's 512×512 layers normalise a million values per group.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use crate::cpu::vector_math::avx512::exp;
    use std::arch::x86_64::*;

    /// Σ f(x) over `x` in f64, 16 values per step (tail masked).
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked at run time by the caller).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn sum_f64(x: &[f32], f: impl Fn(__m512d) -> __m512d) -> f64 {
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let len = x.len();
        for i in (0..len).step_by(16) {
            let mask: __mmask16 = if len - i >= 16 { 0xffff } else { (1u16 << (len - i)) - 1 };
            let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
            let (a, b) = (
                _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))),
            );
            // Masked-off lanes are 0 and must stay out of the sum (f(0) need not be 0).
            lo = _mm512_mask_add_pd(lo, mask as __mmask8, lo, f(a));
            hi = _mm512_mask_add_pd(hi, (mask >> 8) as __mmask8, hi, f(b));
        }
        _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
    }

    /// [`ChannelSums::of`](super::ChannelSums::of) with 8 channels per vector, two pixels' chains in flight.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked at run time by the caller); the sizes are asserted here.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn channel_sums(values: &[f32], pivot: &[f32], first: &mut [f64], second: &mut [f64]) {
        let channels = pivot.len();
        assert!(first.len() == channels && second.len() == channels && values.len().is_multiple_of(channels));
        let pixels = values.len() / channels;
        for c0 in (0..channels).step_by(8) {
            let mask: __mmask8 = if channels - c0 >= 8 {
                0xff
            } else {
                (1u8 << (channels - c0)) - 1
            };
            let p = widened(mask, pivot.as_ptr().add(c0));
            let [mut s0, mut s1, mut q0, mut q1] = [_mm512_setzero_pd(); 4];
            let at = |pixel: usize| values.as_ptr().add(pixel * channels + c0);
            for pixel in (0..pixels).step_by(2) {
                let d = _mm512_sub_pd(widened(mask, at(pixel)), p);
                s0 = _mm512_add_pd(s0, d);
                q0 = _mm512_fmadd_pd(d, d, q0);
                if pixel + 1 < pixels {
                    let d = _mm512_sub_pd(widened(mask, at(pixel + 1)), p);
                    s1 = _mm512_add_pd(s1, d);
                    q1 = _mm512_fmadd_pd(d, d, q1);
                }
            }
            _mm512_mask_storeu_pd(first.as_mut_ptr().add(c0), mask, _mm512_add_pd(s0, s1));
            _mm512_mask_storeu_pd(second.as_mut_ptr().add(c0), mask, _mm512_add_pd(q0, q1));
        }
    }

    /// The `mask`ed of eight f32 values at `at`, as f64: a 512-bit masked load (AVX-512F alone; the 256-bit masked
    /// load needs VL, and without it compiled to a call per load).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `at + l` must be readable for every lane `l` set in `mask`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn widened(mask: __mmask8, at: *const f32) -> __m512d {
        _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(mask as __mmask16, at)))
    }

    /// `v − mean` computed in f64 (8 lanes at a time), rounded to f32.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked at run time by the caller).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn centred(v: __m512, mean: __m512d) -> __m512 {
        let lower = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), mean));
        let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let upper = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_cvtps_pd(upper), mean));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(lower)),
            _mm256_castps_pd(upper),
        ))
    }

    /// One group, given its `(mean, 1/√(var + eps))`: `x` and `out` as channels of `spatial` values.
    ///
    /// # Safety
    /// The CPU must have AVX-512F (checked at run time by the caller). Every access is bounds-checked (`weight[c]`,
    /// `bias[c]`) or stays inside a `spatial`-long chunk of `x` and `out`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn normalise_group(
        x: &[f32],
        out: &mut [f32],
        weight: &[f32],
        bias: &[f32],
        spatial: usize,
        (mean, inv_std): (f64, f32),
        silu: bool,
    ) {
        let mean_v = _mm512_set1_pd(mean);
        for (c, (out, x)) in out.chunks_exact_mut(spatial).zip(x.chunks_exact(spatial)).enumerate() {
            let (scale, shift) = (_mm512_set1_ps(inv_std * weight[c]), _mm512_set1_ps(bias[c]));
            for i in (0..spatial).step_by(16) {
                let mask: __mmask16 = if spatial - i >= 16 {
                    0xffff
                } else {
                    (1u16 << (spatial - i)) - 1
                };
                let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
                // Centred in f64 (see the portable loop), then scaled in f32.
                let mut o = _mm512_fmadd_ps(centred(v, mean_v), scale, shift);
                if silu {
                    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), o));
                    o = _mm512_div_ps(o, _mm512_add_ps(_mm512_set1_ps(1.0), e));
                }
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, o);
            }
        }
    }
}

/// [`group_norm`] as a candle operation on contiguous f32 CPU tensors `x: [B, C, …]`, `weight`, `bias`: `C` values.
pub struct FusedGroupNorm {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "ember-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        weight: &CpuStorage,
        weight_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = x_l.shape().dims();
        if dims.len() < 2 {
            candle_core::bail!("group norm needs [B, C, …], got {:?}", x_l.shape());
        }
        let x = contiguous_f32(x, x_l, "group norm: input")?;
        let mut out = super::zeroed_output(x.len());
        let sizes = GroupNormDims {
            batch: dims[0],
            channels: dims[1],
            spatial: dims[2..].iter().product(),
            groups: self.groups,
            eps: self.eps,
            silu: self.silu,
        };
        group_norm(
            x,
            contiguous_f32(weight, weight_l, "group norm: weight")?,
            contiguous_f32(bias, bias_l, "group norm: bias")?,
            &mut out,
            sizes,
        )?;
        Ok((CpuStorage::F32(out), x_l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_textbook_formula() -> Result<()> {
        // (batch, channels, spatial, groups): SD's 32 groups, one channel per group, one pixel, odd sizes.
        for &(batch, channels, spatial, groups) in &[(2, 64, 9, 32), (1, 6, 1, 3), (3, 5, 7, 5), (1, 12, 33, 1)] {
            let len = batch * channels * spatial;
            // An offset and spread that differ per group, as real activations do.
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.07 + (i / 50) as f32)
                .collect();
            let weight: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32 * 0.1).collect();
            let bias: Vec<f32> = (0..channels).map(|c| c as f32 * 0.05 - 0.2).collect();
            for silu in [false, true] {
                let dims = GroupNormDims {
                    batch,
                    channels,
                    spatial,
                    groups,
                    eps: 1e-5,
                    silu,
                };
                let mut got = vec![f32::NAN; len];
                group_norm(&x, &weight, &bias, &mut got, dims)?;
                let per = channels / groups * spatial;
                for (g, chunk) in x.chunks(per).enumerate() {
                    let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
                    let var = chunk.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per as f64;
                    for (i, &v) in chunk.iter().enumerate() {
                        let c = (g % groups) * (channels / groups) + i / spatial;
                        let y = (v as f64 - mean) / (var + 1e-5).sqrt() * weight[c] as f64 + bias[c] as f64;
                        let want = if silu { y / (1.0 + (-y).exp()) } else { y };
                        // A few f32 roundings of a value of this size (one ulp at 20 is 1.9e-6).
                        let err = (got[g * per + i] as f64 - want).abs() / want.abs().max(1.0);
                        assert!(
                            err < 5e-7,
                            "{batch}×{channels}×{spatial}/{groups} silu {silu}: relative error {err}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// `x: [B, C, spatial]` whose groups' means sit `offset` plus a drift away from their spread, and a norm's
    /// weight and bias: `(x, weight, bias, dims)` without SiLU.
    fn folding_case(
        (batch, channels, spatial, groups): (usize, usize, usize, usize),
        offset: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, GroupNormDims) {
        let x = (0..batch * channels * spatial)
            .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.07 + offset + (i / 50) as f32)
            .collect();
        let weight = (0..channels).map(|c| 0.5 + c as f32 * 0.1).collect();
        let bias = (0..channels).map(|c| c as f32 * 0.05 - 0.2).collect();
        let dims = GroupNormDims {
            batch,
            channels,
            spatial,
            groups,
            eps: 1e-5,
            silu: false,
        };
        (x, weight, bias, dims)
    }

    /// The folded affine map reproduces the kernel's output (without SiLU) value for value, to f32 rounding of
    /// `x·scale + shift`, on groups with a mean far from zero.
    #[test]
    fn folded_affine_matches_the_kernel() -> Result<()> {
        let (x, weight, bias, dims) = folding_case((2, 12, 33, 4), 0.0);
        let spatial = dims.spatial;
        let mut want = vec![f32::NAN; x.len()];
        group_norm(&x, &weight, &bias, &mut want, dims)?;
        let (scale, shift) = folded_affine(&x, &weight, &bias, dims)?;
        for (index, (&v, &w)) in x.iter().zip(&want).enumerate() {
            let plane = index / spatial;
            let got = v * scale[plane] + shift[plane];
            assert!((got - w).abs() < 2e-5 * w.abs().max(1.0), "value {index}: {got} vs {w}");
        }
        Ok(())
    }

    /// The channels-last statistics give the channels-first folded map (the same f64 sums in another order) on
    /// groups whose mean is far from their spread, for channel counts that leave every vector tail.
    #[test]
    fn channels_last_folded_affine_matches_the_channels_first_one() -> Result<()> {
        for &sizes in &[(2, 12, 33, 4), (1, 40, 300, 8), (2, 17, 5, 1), (1, 3, 1, 3)] {
            let (x, weight, bias, dims) = folding_case(sizes, 100.0);
            let (channels, spatial) = (dims.channels, dims.spatial);
            let (want_scale, want_shift) = folded_affine(&x, &weight, &bias, dims)?;
            // `[B, C, spatial]` → `[B, spatial, C]`.
            let pixels: Vec<f32> = (0..x.len())
                .map(|i| {
                    let (item, p, c) = (i / (spatial * channels), i / channels % spatial, i % channels);
                    x[(item * channels + c) * spatial + p]
                })
                .collect();
            let (scale, shift) = folded_affine_channels_last(&pixels, &weight, &bias, dims)?;
            for (i, ((&s, &w), (&h, &v))) in scale
                .iter()
                .zip(&want_scale)
                .zip(shift.iter().zip(&want_shift))
                .enumerate()
            {
                assert!((s - w).abs() <= 1e-6 * w.abs(), "{dims:?} scale {i}: {s} vs {w}");
                assert!(
                    (h - v).abs() <= 1e-6 * v.abs().max(1.0),
                    "{dims:?} shift {i}: {h} vs {v}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bad_sizes_are_errors() {
        let dims = GroupNormDims {
            batch: 1,
            channels: 6,
            spatial: 2,
            groups: 4,
            eps: 1e-5,
            silu: false,
        };
        let mut out = vec![0f32; 12];
        assert!(group_norm(&[0.0; 12], &[1.0; 6], &[0.0; 6], &mut out, dims).is_err());
        let fits = GroupNormDims { groups: 3, ..dims };
        assert!(group_norm(&[0.0; 11], &[1.0; 6], &[0.0; 6], &mut out, fits).is_err());
    }
}
