//! Multi-head attention shared by the three networks: the one `scaled_dot_product_attention` function
//! (the seam where the CPU's fused kernel takes over) and diffusers' `Attention` projection module used by the UNet
//! (self- and cross-attention) and by the VAE's mid-block.

use super::linear::{linear, linear_no_bias, Linear};
use super::Vars;
use crate::cpu::attention::FusedAttention;
use crate::cpu::attention_bf16::AttentionBf16;
use crate::op_stats::{self, OpClass};
use candle_core::{DType, Module, Result, Tensor};

/// Upper bound on the bytes of f32 attention scores alive at once. At 64×64 latents one head's
/// 4096×4096 score matrix is exactly this, so the big self-attentions run one (batch × head) slice at a
/// time, while the small ones (cross-attention, low resolutions) still batch many slices per matmul.
const SCORE_BUDGET_BYTES: usize = 64 << 20;

/// `softmax(q·kᵀ/√d)·v` of the projections' token layout (`q: [B, N, heads·d]`, `k, v: [B, M, heads·d]`) on the
/// bf16 tile kernel (`cpu::attention_bf16`), as a bf16 `[B, N, heads·d]` for the output projection, which rounds to
/// bf16 anyway. `causal`: query `i` sees keys `0..=i` only (CLIP's text encoder). Needs AMX (`nn::Precision`).
pub(crate) fn attention_on_tiles(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let (b, n, c) = q.dims3()?;
    let op = AttentionBf16 {
        heads,
        scale: ((c / heads) as f32).powf(-0.5),
        causal,
        bf16_output: true,
    };
    op_stats::count(OpClass::Attention, attention_flops(b * n * c, k.dim(1)?), || {
        q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
    })
}

/// `softmax(q·kᵀ/√d [+ causal mask] [+ key_mask]) · v` for `q: [B, H, N, d]`, `k, v: [B, H, M, d]`, returning
/// `[B, H, N, d]` in `q`'s dtype. `causal` masks key positions after the query's (CLIP's text encoder).
/// `key_mask` is added to the scores: any shape that broadcasts to `[B, H, N, M]` (e.g. `[B, 1, 1, M]` with 0 to
/// keep a key and −∞ to ignore it, as transformers' `attention_mask`); a query row whose keys are all −∞ gives NaN.
///
/// The (batch × head) slices are processed in chunks so that the score matrices alive at any time stay
/// within [`SCORE_BUDGET_BYTES`] (but at least one slice); never all heads' N×M matrices at once.
/// On the CPU, unmasked attention in f32/f16/bf16 runs the fused kernel of `cpu::attention` instead (no score
/// matrix at all). Everything inside runs in f32 (f64 for f64 inputs), as torch's CPU attention does for f16 inputs:
/// with f16 scores the rounding of large logits alone gave a 15× larger f16-vs-f32 error on the UNet than torch's own
/// f16.
///
/// Models built for bf16 on a CPU with AMX (`nn::Precision`) do not come here from [`Attention`]: it calls
/// `cpu::attention_bf16` on its projections directly (bf16 matrix products, no head split).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    key_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    op_stats::count(OpClass::Attention, attention_flops(b * h * n * d, k.dim(2)?), || {
        if q.device().is_cpu() && !causal && key_mask.is_none() && q.dtype() != DType::F64 {
            return fused_attention(q, k, v);
        }
        attention_in_chunks(q, k, v, causal, key_mask, SCORE_BUDGET_BYTES)
    })
}

/// q·kᵀ and p·v: 2 multiply-adds per (query, key, channel); `query_values` = queries × channels over all heads.
pub(crate) fn attention_flops(query_values: usize, keys: usize) -> f64 {
    4.0 * query_values as f64 * keys as f64
}

/// The CPU's fused kernel (`cpu::attention`), in f32 whatever the compute dtype, like the chunked path.
fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let as_slices = |t: &Tensor, rows: usize| t.to_dtype(DType::F32)?.reshape((b * h, rows, d))?.contiguous();
    let (q3, k3, v3) = (as_slices(q, n)?, as_slices(k, m)?, as_slices(v, m)?);
    let scale = (d as f32).powf(-0.5);
    let out = q3.apply_op3_no_bwd(&k3, &v3, &FusedAttention { scale })?;
    out.reshape((b, h, n, d))?.to_dtype(q.dtype())
}

fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    key_mask: Option<&Tensor>,
    budget_bytes: usize,
) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let (dtype, slices) = (q.dtype(), b * h);
    let acc = super::accumulation_dtype(dtype);
    let q = (q.to_dtype(acc)?.reshape((slices, n, d))? * (d as f64).powf(-0.5))?;
    let k = k.to_dtype(acc)?.reshape((slices, m, d))?;
    let v = v.to_dtype(acc)?.reshape((slices, m, d))?;
    let mask = if causal {
        // Additive mask: -inf where the key index exceeds the query index.
        let rows: Vec<f32> = (0..n)
            .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Some(Tensor::from_vec(rows, (1, n, m), q.device())?.to_dtype(acc)?)
    } else {
        None
    };
    // One mask row per (batch × head) slice so that chunks can narrow it like q; a per-key mask keeps its single
    // query row (broadcast over N when added), so it stays B·H·M values.
    let key_mask = match key_mask {
        Some(mask) => {
            let rows = match mask.rank() {
                r if r >= 2 && mask.dims()[r - 2] == 1 => 1,
                _ => n,
            };
            let full = mask.to_dtype(acc)?.broadcast_as((b, h, rows, m))?;
            Some(full.contiguous()?.reshape((slices, rows, m))?)
        }
        None => None,
    };
    let per_chunk = (budget_bytes / (n * m * 4).max(1)).clamp(1, slices);
    let mut outs = Vec::with_capacity(slices.div_ceil(per_chunk));
    let mut start = 0;
    while start < slices {
        let len = per_chunk.min(slices - start);
        let scores = q.narrow(0, start, len)?.matmul(&k.narrow(0, start, len)?.t()?)?;
        let scores = match &mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let scores = match &key_mask {
            Some(key_mask) => scores.broadcast_add(&key_mask.narrow(0, start, len)?)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v.narrow(0, start, len)?)?);
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 0)?
    };
    out.reshape((b, h, n, d))?.to_dtype(dtype)
}

/// diffusers' `Attention` (the subset SD 1.x/2.x use): `to_q`, `to_k`, `to_v`, `to_out.0`.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    /// Built for bf16 on a CPU with AMX: the attention itself uses bf16 tile products too (`cpu::attention_bf16`).
    bf16_tiles: bool,
}

impl Attention {
    /// `context_dim`: the key/value input width (`query_dim` for self-attention). `qkv_bias`: the VAE's
    /// attention has biases on q/k/v, the UNet's does not.
    pub fn new(vb: Vars, query_dim: usize, context_dim: usize, heads: usize, qkv_bias: bool) -> Result<Self> {
        let proj = |i: usize, name: &str| {
            if qkv_bias {
                linear(i, query_dim, vb.pp(name))
            } else {
                linear_no_bias(i, query_dim, vb.pp(name))
            }
        };
        if heads == 0 || !query_dim.is_multiple_of(heads) {
            candle_core::bail!("attention width {query_dim} is not divisible into {heads} heads");
        }
        Ok(Self {
            to_q: proj(query_dim, "to_q")?,
            to_k: proj(context_dim, "to_k")?,
            to_v: proj(context_dim, "to_v")?,
            to_out: linear(query_dim, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            bf16_tiles: vb.packs_bf16(),
        })
    }

    /// Whether the projections and the attention run on bf16 tiles (`nn::Precision`).
    pub fn on_bf16_tiles(&self) -> bool {
        self.bf16_tiles
    }

    /// `x: [B, N, C]`, `context: [B, M, C_ctx]` (None: self-attention). Returns `[B, N, C]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let attended = self.attend(x, context)?;
        self.to_out.forward(&attended)
    }

    /// `self.forward(x, context) + residual` (a transformer block's skip connection), added as the output
    /// projection writes its blocks on the AMX path.
    pub fn forward_plus(&self, x: &Tensor, context: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        let attended = self.attend(x, context)?;
        self.to_out.forward_plus(&attended, residual)
    }

    /// The attention before the output projection: `[B, N, C]`.
    fn attend(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let out = if self.bf16_tiles {
            // Every tensor from the projections to the output projection is bf16: each reader rounds to bf16
            // anyway, so the same bits at half the memory traffic. The projections' token layout goes to the
            // kernel as it is: no head split and join.
            let (q, k, v) = (
                self.to_q.forward_to_bf16(x)?,
                self.to_k.forward_to_bf16(context)?,
                self.to_v.forward_to_bf16(context)?,
            );
            attention_on_tiles(&q, &k, &v, self.heads, false)?
        } else {
            let (q, k, v) = (
                self.to_q.forward(x)?,
                self.to_k.forward(context)?,
                self.to_v.forward(context)?,
            );
            let (q, k, v) = (self.split_heads(&q)?, self.split_heads(&k)?, self.split_heads(&v)?);
            let out = scaled_dot_product_attention(&q, &k, &v, false, None)?;
            let (b, h, n, d) = out.dims4()?;
            out.transpose(1, 2)?.reshape((b, n, h * d))?
        };
        Ok(out)
    }

    /// `[B, N, H·d]` → `[B, H, N, d]` (contiguous).
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, self.heads, c / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The chunk loop (1 and 2 slices per chunk, uneven tail) must give what one chunk gives; the
    /// single-chunk path itself is checked against torch in tests/nn_parity.rs.
    #[test]
    fn chunking_does_not_change_the_result() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, n, m, d) = (1, 3, 16, 16, 4);
        let q = Tensor::randn(0f32, 1., (b, h, n, d), &dev)?;
        let k = Tensor::randn(0f32, 1., (b, h, m, d), &dev)?;
        let v = Tensor::randn(0f32, 1., (b, h, m, d), &dev)?;
        let key_mask = Tensor::new(&[0f32, f32::NEG_INFINITY, 0., 0.], &dev)?
            .repeat(m / 4)?
            .reshape((1, 1, 1, m))?;
        for (causal, mask) in [
            (false, None),
            (true, None),
            (false, Some(&key_mask)),
            (true, Some(&key_mask)),
        ] {
            let whole = attention_in_chunks(&q, &k, &v, causal, mask, usize::MAX)?;
            for slices_per_chunk in [1, 2] {
                let got = attention_in_chunks(&q, &k, &v, causal, mask, slices_per_chunk * n * m * 4)?;
                let err = (got - &whole)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(err < 1e-6, "chunks of {slices_per_chunk}: max abs difference {err}");
            }
        }
        Ok(())
    }

    /// The additive key mask against torch's `F.scaled_dot_product_attention` with the same `attn_mask` (fixture
    /// from tools/oracle/make_attention_reference.py), alone and combined with the causal mask; run with one
    /// slice per chunk too, so the per-slice narrowing of the mask is covered.
    #[test]
    fn key_mask_matches_torch() -> Result<()> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/attention_mask_reference.safetensors"
        );
        let r = candle_core::safetensors::load(path, &Device::Cpu)?;
        let get = |name: &str| {
            r.get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("{path} lacks {name}")))
        };
        for (prefix, causal) in [("", false), ("causal_", true)] {
            let (q, k, v) = (
                get(&format!("{prefix}q"))?,
                get(&format!("{prefix}k"))?,
                get(&format!("{prefix}v"))?,
            );
            let mask = get(&format!("{prefix}key_mask"))?;
            let want = get(&format!("{prefix}out"))?;
            let (n, m) = (q.dim(2)?, k.dim(2)?);
            for budget in [usize::MAX, n * m * 4] {
                let got = attention_in_chunks(q, k, v, causal, Some(mask), budget)?;
                let err = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(err < 1e-6, "{prefix}out, budget {budget}: max abs difference {err}");
                let got64 = attention_in_chunks(
                    &q.to_dtype(candle_core::DType::F64)?,
                    &k.to_dtype(candle_core::DType::F64)?,
                    &v.to_dtype(candle_core::DType::F64)?,
                    causal,
                    Some(mask),
                    budget,
                )?;
                let err = (got64.to_dtype(candle_core::DType::F32)? - want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(err < 1e-6, "{prefix}out f64, budget {budget}: max abs difference {err}");
            }
        }
        Ok(())
    }
}
