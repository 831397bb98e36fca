//! transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`: token ids → hidden states, the conditioning the
//! UNet cross-attends to — the last layer's after the final layer norm (SD 1.x/2.x) or the penultimate layer's
//! (SDXL) — and the projected EOS embedding (SDXL's pooled `text_embeds`). Causal self-attention; `quick_gelu`
//! (OpenAI CLIP) or `gelu` (OpenCLIP). An optional attention mask hides tokens from the others (compel's
//! `DownweightMode.MASK`).

use super::attention::{attention_on_tiles, scaled_dot_product_attention};
use super::config::ClipTextConfig;
use super::layers::{layer_norm, LayerNorm};
use super::linear::{linear, Linear};
use super::Vars;
use crate::cancel::check_between_layers;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, Embedding};

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => candle_core::bail!("CLIP config: unsupported hidden_act {other:?} (expected quick_gelu or gelu)"),
        }
    }

    fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu if x.device().is_cpu() && x.dtype() != DType::F64 => {
                // `cpu::quick_gelu`, in f32 whatever the compute dtype.
                let op = crate::cpu::quick_gelu::QuickGelu;
                x.to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&op)?
                    .to_dtype(x.dtype())
            }
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            // transformers' "gelu" is the exact erf form.
            Activation::Gelu => x.gelu_erf(),
        }
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
    /// Built for bf16 on a CPU with AMX: the attention uses `cpu::attention_bf16` on the projections' token layout.
    bf16_tiles: bool,
}

impl EncoderLayer {
    fn new(vb: Vars, cfg: &ClipTextConfig, act: Activation) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
            q_proj: linear(d, d, attn.pp("q_proj"))?,
            k_proj: linear(d, d, attn.pp("k_proj"))?,
            v_proj: linear(d, d, attn.pp("v_proj"))?,
            out_proj: linear(d, d, attn.pp("out_proj"))?,
            layer_norm2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
            fc1: linear(d, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, d, vb.pp("mlp").pp("fc2"))?,
            heads: cfg.num_attention_heads,
            act,
            bf16_tiles: vb.packs_bf16(),
        })
    }

    /// `key_mask`: additive, `[B, 1, 1, N]`.
    fn forward(&self, x: &Tensor, key_mask: Option<&Tensor>) -> Result<Tensor> {
        if self.bf16_tiles && key_mask.is_none() {
            return self.forward_on_tiles(x);
        }
        let (b, n, d) = x.dims3()?;
        let heads = |t: Tensor| {
            t.reshape((b, n, self.heads, d / self.heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let h = self.layer_norm1.forward(x)?;
        let (q, k, v) = (
            self.q_proj.forward(&h)?,
            self.k_proj.forward(&h)?,
            self.v_proj.forward(&h)?,
        );
        let attn = scaled_dot_product_attention(&heads(q)?, &heads(k)?, &heads(v)?, true, key_mask)?;
        let attn = attn.transpose(1, 2)?.reshape((b, n, d))?;
        let x = (self.out_proj.forward(&attn)? + x)?;
        let h = self
            .fc2
            .forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        h + x
    }

    /// [`forward`](Self::forward) for a model packed for bf16 tiles, as the UNet's transformer blocks run: tensors
    /// whose every reader is a tile product (the layer norms, the projections, the attention) are handed over in
    /// bf16, which that reader would round them to anyway, and the residual adds are done by the output layers.
    fn forward_on_tiles(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.layer_norm1.forward_for(x, true)?;
        let (q, k, v) = (
            self.q_proj.forward_to_bf16(&h)?,
            self.k_proj.forward_to_bf16(&h)?,
            self.v_proj.forward_to_bf16(&h)?,
        );
        let attn = attention_on_tiles(&q, &k, &v, self.heads, true)?;
        let x = self.out_proj.forward_plus(&attn, x)?;
        let h = self
            .act
            .forward(&self.fc1.forward(&self.layer_norm2.forward_for(&x, true)?)?)?;
        self.fc2.forward_plus(&h, &x)
    }
}

/// `CLIPTextModel`; parameter names are transformers' (`text_model.…`, or the same without the prefix).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s `text_projection` (no bias), when the weights have one.
    text_projection: Option<Linear>,
    max_positions: usize,
    eos_token_id: u32,
    /// Rows for the ids past the vocabulary (textual-inversion embeddings' vectors, `[n, hidden]`): id
    /// `vocab_size + i` is row `i`.
    extra_tokens: Option<Tensor>,
    vocab_size: usize,
}

/// The hidden states SD families read from a text encoder.
#[derive(Debug, Clone)]
pub struct ClipHidden {
    /// The penultimate layer's output, not normed (transformers' `hidden_states[-2]`).
    pub penultimate: Tensor,
    /// The last layer's output after the final layer norm (`last_hidden_state`).
    pub last_normed: Tensor,
}

impl ClipTextModel {
    pub fn new<'a>(vb: impl Into<Vars<'a>>, cfg: &ClipTextConfig) -> Result<Self> {
        let vb: Vars<'a> = vb.into();
        let act = Activation::parse(&cfg.hidden_act)?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "CLIP config: hidden_size {} is not divisible into {} heads",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        // transformers 4.x saves `text_model.`-prefixed keys (the canonical names); 5.x saves
        // `CLIPTextModel` without the prefix. Accept both so either diffusers folder loads as is.
        let root = vb.clone();
        let vb = if vb.contains_tensor("embeddings.token_embedding.weight") {
            vb
        } else {
            vb.pp("text_model")
        };
        let text_projection = match root.contains_tensor("text_projection.weight") {
            true => {
                let shape = root.get_unchecked("text_projection.weight")?.dims().to_vec();
                let projection_dim = shape.first().copied().unwrap_or(cfg.hidden_size);
                Some(super::linear::linear_no_bias(
                    cfg.hidden_size,
                    projection_dim,
                    root.pp("text_projection"),
                )?)
            }
            false => None,
        };
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), cfg, act))
            .collect::<Result<Vec<_>>>()?;
        // Built for bf16 tiles, the token table (49 408 × 768: 152 MB in f32) is kept in bf16 like every other
        // weight; rows are looked up, then widened to f32.
        let token_embedding = match vb.packs_bf16() {
            true => {
                let table = emb.pp("token_embedding").get_with_hints_dtype(
                    (cfg.vocab_size, cfg.hidden_size),
                    "weight",
                    candle_nn::Init::Const(0.0),
                    DType::BF16,
                )?;
                Embedding::new(table, cfg.hidden_size)
            }
            false => embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding").vb())?,
        };
        Ok(Self {
            token_embedding,
            position_embedding: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                emb.pp("position_embedding").vb(),
            )?,
            layers,
            final_layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            text_projection,
            max_positions: cfg.max_position_embeddings,
            eos_token_id: crate::text::tokenizer::EOS_ID,
            extra_tokens: None,
            vocab_size: cfg.vocab_size,
        })
    }

    /// This encoder with `rows` as the embeddings of the ids after its vocabulary (`[n, hidden]`; None: no such ids).
    pub fn with_extra_tokens(&self, rows: Option<Tensor>) -> Self {
        Self {
            extra_tokens: rows,
            ..self.clone()
        }
    }

    /// The token embeddings of `ids` (`[B, N]`, u32): the vocabulary's rows, and [`Self::with_extra_tokens`]' for ids
    /// past it.
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let vocab = self.vocab_size as u32;
        let rows = ids.flatten_all()?.to_vec1::<u32>()?;
        if rows.iter().all(|&id| id < vocab) {
            return self.token_embedding.forward(ids);
        }
        let Some(extra) = &self.extra_tokens else {
            candle_core::bail!(
                "CLIP: token id {} is past the vocabulary and no embedding was loaded for it",
                rows.iter().max().copied().unwrap_or(0)
            );
        };
        let n_extra = extra.dim(0)? as u32;
        if let Some(bad) = rows.iter().find(|&&id| id >= vocab + n_extra) {
            candle_core::bail!("CLIP: token id {bad} is past the vocabulary and the loaded embeddings");
        }
        let (b, n) = ids.dims2()?;
        let device = ids.device();
        let in_vocab: Vec<u32> = rows.iter().map(|&id| id.min(vocab - 1)).collect();
        let in_extra: Vec<u32> = rows.iter().map(|&id| id.saturating_sub(vocab)).collect();
        let is_extra: Vec<u8> = rows.iter().map(|&id| u8::from(id >= vocab)).collect();
        let base = self
            .token_embedding
            .forward(&Tensor::from_vec(in_vocab, (b, n), device)?)?;
        let added = extra
            .to_dtype(base.dtype())?
            .index_select(&Tensor::from_vec(in_extra, b * n, device)?, 0)?
            .reshape(base.shape())?;
        let mask = Tensor::from_vec(is_extra, (b, n, 1), device)?.broadcast_as(base.shape())?;
        mask.where_cond(&added, &base)
    }

    /// Whether this encoder has a `text_projection` (SDXL's second encoder), so [`Self::pooled`] works.
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// `input_ids: [B, N]` (u32, N ≤ max positions, 77 for SD) → `[B, N, hidden]` in the weights' dtype.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.forward_masked(input_ids, None)
    }

    /// [`Self::forward`] with transformers' `attention_mask`: `[B, N]`, nonzero = attend to that token, 0 = no
    /// query attends to it (on top of the causal mask). Every query must keep at least one visible key (position 0
    /// at least, as compel's masks always do), or its row of hidden states becomes NaN.
    pub fn forward_masked(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self.run_layers(input_ids, attention_mask, None)?.0;
        self.final_layer_norm.forward(&x)
    }

    /// The penultimate and the last (normed) hidden states of `input_ids`, masked as [`Self::forward_masked`].
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<ClipHidden> {
        let keep = self.layers.len().saturating_sub(1);
        let (last, penultimate) = self.run_layers(input_ids, attention_mask, Some(keep))?;
        Ok(ClipHidden {
            penultimate: penultimate.unwrap_or_else(|| last.clone()),
            last_normed: self.final_layer_norm.forward(&last)?,
        })
    }

    /// transformers' `text_embeds`: the final-normed hidden state at each sequence's first EOS token, projected by
    /// `text_projection`; `last_normed` is [`ClipHidden::last_normed`] of the same `input_ids`.
    pub fn pooled(&self, input_ids: &Tensor, last_normed: &Tensor) -> Result<Tensor> {
        let Some(projection) = &self.text_projection else {
            candle_core::bail!("this text encoder has no text_projection, so no pooled embedding");
        };
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let rows = ids
            .iter()
            .enumerate()
            .map(|(b, seq)| {
                let eos = seq
                    .iter()
                    .position(|&t| t == self.eos_token_id)
                    .unwrap_or(seq.len() - 1);
                last_normed.get(b)?.get(eos)?.unsqueeze(0)
            })
            .collect::<Result<Vec<_>>>()?;
        projection.forward(&Tensor::cat(&rows, 0)?)
    }

    /// Embeddings and the layers; returns the last layer's output and, with `capture = Some(i)`, the output after
    /// the first `i` layers.
    fn run_layers(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        capture: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, n) = input_ids.dims2()?;
        if n > self.max_positions {
            candle_core::bail!("CLIP: {n} tokens exceed the model's {} positions", self.max_positions);
        }
        let key_mask = match attention_mask {
            Some(mask) => {
                if mask.dims() != [b, n] {
                    candle_core::bail!(
                        "CLIP: attention mask {:?} does not match the ids' [{b}, {n}]",
                        mask.dims()
                    );
                }
                // Additive: 0 where attended, −∞ where masked (transformers uses the dtype's minimum; both give
                // exactly zero probability once a visible key exists).
                let keep = mask.ne(0f64)?;
                let zeros = Tensor::zeros((b, n), DType::F32, mask.device())?;
                let hidden = Tensor::full(f32::NEG_INFINITY, (b, n), mask.device())?;
                Some(keep.where_cond(&zeros, &hidden)?.reshape((b, 1, 1, n))?)
            }
            None => None,
        };
        let positions = Tensor::arange(0u32, n as u32, input_ids.device())?;
        let tokens = self.embed_tokens(&input_ids.to_dtype(DType::U32)?)?;
        let position = self.position_embedding.forward(&positions)?;
        let mut x = tokens.to_dtype(position.dtype())?.broadcast_add(&position)?;
        let mut captured = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if capture == Some(i) {
                captured = Some(x.clone());
            }
            check_between_layers()?;
            x = layer.forward(&x, key_mask.as_ref())?;
        }
        if capture == Some(self.layers.len()) {
            captured = Some(x.clone());
        }
        Ok((x, captured))
    }
}
