//! Multi-head attention shared by the three networks: the one `scaled_dot_product_attention` function
//! (the seam a fused kernel can replace) and diffusers' `Attention` projection module used by the UNet
//! (self- and cross-attention) and by the VAE's mid-block.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

/// Upper bound on the bytes of f32 attention scores alive at once. At 64×64 latents one head's
/// 4096×4096 score matrix is exactly this, so the big self-attentions run one (batch × head) slice at a
/// time, while the small ones (cross-attention, low resolutions) still batch many slices per matmul.
const SCORE_BUDGET_BYTES: usize = 64 << 20;

/// `softmax(q·kᵀ/√d [+ causal mask]) · v` for `q: [B, H, N, d]`, `k, v: [B, H, M, d]`, returning `[B, H, N, d]`
/// in `q`'s dtype. `causal` masks key positions after the query's (CLIP's text encoder).
///
/// The (batch × head) slices are processed in chunks so that the score matrices alive at any time stay
/// within [`SCORE_BUDGET_BYTES`] (but at least one slice); never all heads' N×M matrices at once.
/// Everything inside runs in f32 (f64 for f64 inputs), as torch's CPU attention does for f16 inputs: with f16 scores the
/// rounding of large logits alone gave a 15× larger f16-vs-f32 error on the UNet than torch's own f16.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    attention_in_chunks(q, k, v, causal, SCORE_BUDGET_BYTES)
}

fn attention_in_chunks(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, budget_bytes: usize) -> Result<Tensor> {
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
}

impl Attention {
    /// `context_dim`: the key/value input width (`query_dim` for self-attention). `qkv_bias`: the VAE's
    /// attention has biases on q/k/v, the UNet's does not.
    pub fn new(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize, qkv_bias: bool) -> Result<Self> {
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
        })
    }

    /// `x: [B, N, C]`, `context: [B, M, C_ctx]` (None: self-attention). Returns `[B, N, C]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = scaled_dot_product_attention(&q, &k, &v, false)?;
        let (b, h, n, d) = out.dims4()?;
        let out = out.transpose(1, 2)?.reshape((b, n, h * d))?;
        self.to_out.forward(&out)
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
        for causal in [false, true] {
            let whole = attention_in_chunks(&q, &k, &v, causal, usize::MAX)?;
            for slices_per_chunk in [1, 2] {
                let got = attention_in_chunks(&q, &k, &v, causal, slices_per_chunk * n * m * 4)?;
                let err = (got - &whole)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(err < 1e-6, "chunks of {slices_per_chunk}: max abs difference {err}");
            }
        }
        Ok(())
    }
}
