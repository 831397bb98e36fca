//! Prompt → weighted CLIP conditioning, computed as compel 2.x computes it for SD 1.x (what InvokeAI 3+
//! feeds the UNet), with InvokeAI 2.x's prompt conventions on top (see [`crate::text::prompt`]).
//!
//! - Tokens: each fragment is tokenized on its own and the ids concatenated; BOS/EOS frame each chunk.
//! - Long prompts: without `truncate`, the tokens are cut into 75-token chunks, each encoded as its own
//!   77-token sequence (BOS + 75 + EOS/padding), and the chunks' hidden states are concatenated along the
//!   sequence axis (compel's `truncate_long_prompts=False` with `SplitLongTextMode.BRUTAL`; A1111 does the
//!   same). Cond and uncond are padded to the same chunk count with the encoding of the empty prompt, as
//!   compel's `pad_conditioning_tensors_to_same_length`. With `truncate`, the first 75 tokens are kept.
//! - Weight w ≠ 1 on a token: its hidden state becomes `empty + (z − empty)·w` (empty = the empty prompt's
//!   states at the same position).
//! - Weight w < 1 on a fragment additionally mixes in the prompt encoded without that fragment, with mixing
//!   weight `tan((1 − w)·π/2)` against 1 for the full prompt (normalised), so w → 0 approaches the prompt
//!   without it. "Without" is, per [`Downweight`], either the prompt re-tokenized without the fragment (compel's
//!   `DownweightMode.REMOVE`, InvokeAI 2.x's behaviour and Ember's default) or the same tokens with the fragment's
//!   tokens hidden by the text encoder's attention mask (compel's default `DownweightMode.MASK`; the other tokens
//!   keep their positions). As in compel, with `truncate` a fragment that starts past the cut, and every fragment
//!   after it, gets no such term.
//! - Blends: each prompt's conditioning (padded to equal length) mixed by the blend weights.

use crate::text::encoder::{ChunkEncoder, TextConditioner};
use crate::text::prompt::{self, take_loras, Fragment, LoraUse, Prompt};
use crate::text::tokenizer::ClipTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::cell::OnceCell;

/// CLIP's sequence length for SD 1.x: BOS + 75 tokens + EOS.
pub const CHUNK_LEN: usize = 77;
const TOKENS_PER_CHUNK: usize = CHUNK_LEN - 2;
/// Longest prompt encoded, in chunks (2,400 tokens): the UNet's cross-attention grows with every chunk, and a
/// prompt this long is almost surely a pasted file rather than a description.
pub const MAX_CHUNKS: usize = 32;

/// How prompts are turned into conditioning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptOptions {
    /// Keep only the first 75 tokens (one 77-token sequence), as InvokeAI 2.x and diffusers do, instead of
    /// encoding long prompts in chunks.
    pub truncate: bool,
    /// Do not normalise the weights of a legacy `text:weight` blend (InvokeAI's `-x`).
    pub skip_normalize: bool,
    /// What a fragment with weight < 1 is mixed with.
    pub downweight: Downweight,
}

/// How a fragment weighted below 1 is faded out (compel's `DownweightMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Downweight {
    /// Mix with the prompt tokenized without the fragment (InvokeAI 2.x; the later tokens move up).
    #[default]
    Remove,
    /// Mix with the same tokens encoded while the fragment's tokens are masked out of the text encoder's attention
    /// (compel's default, InvokeAI 3+).
    Mask,
}

/// The UNet's text inputs: `cond` and `uncond` are both `[1, 77·chunks, hidden]` with the same chunk count,
/// in the text encoder's dtype; SDXL adds each one's pooled embedding (`[1, P]`).
#[derive(Debug)]
pub struct Conditioning {
    pub cond: Tensor,
    pub uncond: Tensor,
    pub cond_pooled: Option<Tensor>,
    pub uncond_pooled: Option<Tensor>,
    /// For the user: dropped tokens (with `truncate`), legacy blend weights that sum to zero.
    pub warnings: Vec<String>,
}

/// A request's prompts, parsed and checked against [`MAX_CHUNKS`]: what [`encode_prompts`] encodes.
#[derive(Debug)]
pub struct ParsedPrompts {
    prompt: Prompt,
    negative: Prompt,
    warnings: Vec<String>,
    /// The prompt's LoRA terms, taken out of its text.
    loras: Vec<LoraUse>,
}

impl ParsedPrompts {
    /// The LoRAs the prompt names (`<lora:NAME:WEIGHT>`, `withLora(NAME, WEIGHT)`).
    pub fn loras(&self) -> &[LoraUse] {
        &self.loras
    }
}

/// Parses `prompt` (InvokeAI syntax; `[words]` are added to the negative) and `negative` (compel syntax) and checks
/// their length in tokens, without encoding anything (a server runs this when a job is submitted).
pub fn parse_prompts(
    tokenizer: &ClipTokenizer,
    prompt: &str,
    negative: &str,
    options: &PromptOptions,
) -> Result<ParsedPrompts> {
    let (prompt, loras) = take_loras(prompt, "prompt")?;
    no_loras_in_negative(negative)?;
    let parsed = prompt::parse_invokeai(&prompt, options.skip_normalize)?;
    let negative_text = join_nonempty(negative, &parsed.negative);
    let negative_prompt =
        prompt::parse(&negative_text.replace('\n', " ")).map_err(|e| rename_field(e, "negative_prompt"))?;
    for (field, p) in [("prompt", &parsed.prompt), ("negative_prompt", &negative_prompt)] {
        let longest = parts(p)
            .into_iter()
            .map(|f| chunk_ids(tokenizer, f, options.truncate).ids.len() / CHUNK_LEN)
            .max()
            .unwrap_or(0);
        if longest > MAX_CHUNKS {
            return Err(Error::invalid(
                field,
                format!(
                    "{longest} chunks of {TOKENS_PER_CHUNK} tokens is more than the {MAX_CHUNKS} Ember encodes; \
                     shorten it (or set truncate_prompts, `--truncate-prompts`, to keep only the first \
                     {TOKENS_PER_CHUNK} tokens)"
                ),
            ));
        }
    }
    Ok(ParsedPrompts {
        prompt: parsed.prompt,
        negative: negative_prompt,
        warnings: parsed.warnings,
        loras,
    })
}

/// A LoRA changes the model for the whole image: a term in the negative prompt is an error, not text.
fn no_loras_in_negative(negative: &str) -> Result<()> {
    match take_loras(negative, "negative_prompt")?.1.first() {
        Some(term) => Err(Error::invalid(
            "negative_prompt",
            format!(
                "LoRA `{}` is in the negative prompt; a LoRA applies to the whole image, put it in the prompt",
                term.name
            ),
        )),
        None => Ok(()),
    }
}

/// The negative prompt goes through the same parser as the prompt; its errors name its own field.
fn rename_field(e: Error, field: &'static str) -> Error {
    match e {
        Error::InvalidRequest { message, .. } => Error::InvalidRequest { field, message },
        other => other,
    }
}

/// Encodes `prompt` (InvokeAI syntax; `[words]` are added to the negative) and `negative` (compel syntax).
pub fn encode_prompts(
    tokenizer: &ClipTokenizer,
    encoder: &dyn ChunkEncoder,
    device: &Device,
    prompt: &str,
    negative: &str,
    options: &PromptOptions,
) -> Result<Conditioning> {
    let parsed = parse_prompts(tokenizer, prompt, negative, options)?;
    encode_parsed(tokenizer, encoder, device, parsed, options)
}

/// [`encode_prompts`] for prompts [`parse_prompts`] already read (with the same `options`).
pub fn encode_parsed(
    tokenizer: &ClipTokenizer,
    encoder: &dyn ChunkEncoder,
    device: &Device,
    parsed: ParsedPrompts,
    options: &PromptOptions,
) -> Result<Conditioning> {
    let ParsedPrompts {
        prompt: parsed_prompt,
        negative: negative_prompt,
        mut warnings,
        ..
    } = parsed;
    let enc = Encoder::new(tokenizer, encoder, device, options);
    for (what, p) in [("prompt", &parsed_prompt), ("negative prompt", &negative_prompt)] {
        if let Some(dropped) = enc.dropped_text(p) {
            warnings.push(format!(
                "the {what} is longer than CLIP's {CHUNK_LEN} tokens; this part was ignored: \"{dropped}\""
            ));
        }
    }
    let cond = enc.prompt(&parsed_prompt)?;
    let uncond = enc.prompt(&negative_prompt)?;
    let chunks = chunk_count(&cond)?.max(chunk_count(&uncond)?);
    Ok(Conditioning {
        cond: enc.pad_to(cond, chunks)?,
        uncond: enc.pad_to(uncond, chunks)?,
        cond_pooled: None,
        uncond_pooled: None,
        warnings,
    })
}

/// [`encode_parsed`] for a model's whole text side: adds the pooled embeddings where the model has them (of each
/// prompt's first chunk, weights dropped, as compel computes SDXL's), and — for models that ask for it
/// (`force_zeros_for_empty_prompt`) — zeros for an empty negative prompt instead of its encoding, as diffusers.
pub fn encode_for_model(
    tokenizer: &ClipTokenizer,
    conditioner: &TextConditioner,
    device: &Device,
    parsed: ParsedPrompts,
    options: &PromptOptions,
    zeros_for_empty_negative: bool,
) -> Result<Conditioning> {
    let first_chunk = |p: &Prompt| {
        let fragments = parts(p).into_iter().next().unwrap_or(&[]);
        let mut ids = chunk_ids(tokenizer, fragments, true).ids;
        ids.truncate(CHUNK_LEN);
        ids
    };
    let (prompt_ids, negative_ids) = (first_chunk(&parsed.prompt), first_chunk(&parsed.negative));
    let zero_negative = zeros_for_empty_negative && is_empty(&parsed.negative);
    let mut text = encode_parsed(tokenizer, conditioner, device, parsed, options)?;
    text.cond_pooled = conditioner.pooled(&prompt_ids, device)?;
    text.uncond_pooled = conditioner.pooled(&negative_ids, device)?;
    if zero_negative {
        text.uncond = text.uncond.zeros_like()?;
        text.uncond_pooled = text.uncond_pooled.map(|p| p.zeros_like()).transpose()?;
    }
    Ok(text)
}

/// A prompt with no text at all (no negative prompt given).
fn is_empty(prompt: &Prompt) -> bool {
    parts(prompt)
        .iter()
        .all(|fragments| fragments.iter().all(|f| f.text.trim().is_empty()))
}

fn join_nonempty(a: &str, b: &str) -> String {
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (_, true) => a.to_string(),
        (true, false) => b.to_string(),
        (false, false) => format!("{a} {b}"),
    }
}

/// The fragment lists a prompt is encoded from: one, or one per blend part.
fn parts(prompt: &Prompt) -> Vec<&[Fragment]> {
    match prompt {
        Prompt::Weighted(f) => vec![f.as_slice()],
        Prompt::Blend(b) => b.prompts.iter().map(Vec::as_slice).collect(),
    }
}

fn chunk_count(t: &Tensor) -> Result<usize> {
    Ok(t.dim(1)? / CHUNK_LEN)
}

/// Token ids and per-token weights laid out in 77-token chunks.
pub(crate) struct Chunked {
    pub ids: Vec<u32>,
    pub weights: Vec<f64>,
    /// Tokens cut off by `truncate`.
    pub dropped: Vec<u32>,
    /// How many tokens each fragment has (before chunking and truncation).
    pub fragment_tokens: Vec<usize>,
}

/// compel's `get_token_ids_and_expand_weights` + `_chunk_and_pad_token_ids` (brutal split): each fragment
/// tokenized alone, the ids concatenated and laid out as BOS + 75 + EOS (+ padding) chunks.
fn chunk_ids(tokenizer: &ClipTokenizer, fragments: &[Fragment], truncate: bool) -> Chunked {
    let mut tokens = Vec::new();
    let mut token_weights = Vec::new();
    let mut fragment_tokens = Vec::with_capacity(fragments.len());
    for f in fragments {
        let ids = tokenizer.encode(&f.text);
        let ids = &ids[1..ids.len() - 1];
        token_weights.extend(std::iter::repeat_n(f.weight, ids.len()));
        tokens.extend_from_slice(ids);
        fragment_tokens.push(ids.len());
    }
    let mut out = Chunked {
        ids: Vec::new(),
        weights: Vec::new(),
        dropped: Vec::new(),
        fragment_tokens,
    };
    let mut start = 0;
    loop {
        let end = (start + TOKENS_PER_CHUNK).min(tokens.len());
        let pad = CHUNK_LEN - (end - start) - 2;
        out.ids.push(tokenizer.bos_id());
        out.ids.extend_from_slice(&tokens[start..end]);
        out.ids.push(tokenizer.eos_id());
        out.ids.extend(std::iter::repeat_n(tokenizer.pad_id(), pad));
        out.weights.push(1.0);
        out.weights.extend_from_slice(&token_weights[start..end]);
        out.weights.extend(std::iter::repeat_n(1.0, pad + 1));
        start = end;
        if truncate {
            out.dropped = tokens[start..].to_vec();
            break;
        }
        if start >= tokens.len() {
            break;
        }
    }
    out
}

/// Inclusive positions in `chunked.ids` of each fragment's tokens, as compel's `_get_token_ranges_for_fragments`
/// finds them: None for a fragment without tokens. With `truncate`, a fragment running past the cut ends at the
/// EOS position (76), and the list stops at the first fragment starting past the cut: compel gives that fragment
/// and all later ones no down-weighting term.
fn fragment_ranges(chunked: &Chunked, truncate: bool) -> Vec<Option<(usize, usize)>> {
    let position = |t: usize| (t / TOKENS_PER_CHUNK) * CHUNK_LEN + 1 + t % TOKENS_PER_CHUNK;
    let mut out = Vec::with_capacity(chunked.fragment_tokens.len());
    let mut start = 0;
    for &len in &chunked.fragment_tokens {
        if len == 0 {
            out.push(None);
            continue;
        }
        if truncate && start >= TOKENS_PER_CHUNK {
            break;
        }
        let last = if truncate {
            (start + len).min(CHUNK_LEN - 1)
        } else {
            position(start + len - 1)
        };
        out.push(Some((position(start), last)));
        start += len;
    }
    out
}

/// compel's MASK-mode attention mask (1 = attend) hiding positions `first..=last`; without `truncate` every
/// chunk's BOS and last position stay visible (they frame the chunk even when a fragment spans two chunks).
fn mask_without(len: usize, (first, last): (usize, usize), truncate: bool) -> Vec<u8> {
    let mut mask = vec![1u8; len];
    mask[first..=last.min(len - 1)].fill(0);
    if !truncate {
        for chunk in mask.chunks_mut(CHUNK_LEN) {
            chunk[0] = 1;
            chunk[CHUNK_LEN - 1] = 1;
        }
    }
    mask
}

pub(crate) struct Encoder<'a> {
    tokenizer: &'a ClipTokenizer,
    model: &'a dyn ChunkEncoder,
    device: &'a Device,
    truncate: bool,
    downweight: Downweight,
    empty: OnceCell<Tensor>,
}

impl<'a> Encoder<'a> {
    pub fn new(
        tokenizer: &'a ClipTokenizer,
        model: &'a dyn ChunkEncoder,
        device: &'a Device,
        options: &PromptOptions,
    ) -> Self {
        Self {
            tokenizer,
            model,
            device,
            truncate: options.truncate,
            downweight: options.downweight,
            empty: OnceCell::new(),
        }
    }

    fn chunk(&self, fragments: &[Fragment]) -> Chunked {
        chunk_ids(self.tokenizer, fragments, self.truncate)
    }

    /// Text the truncation drops from `prompt` (the longest of a blend's parts), if any.
    fn dropped_text(&self, prompt: &Prompt) -> Option<String> {
        parts(prompt)
            .into_iter()
            .map(|f| self.chunk(f).dropped)
            .filter(|d| !d.is_empty())
            .max_by_key(Vec::len)
            .map(|d| self.tokenizer.decode(&d))
    }

    /// Hidden states of the empty prompt: `[1, 77, hidden]`.
    fn empty(&self) -> Result<&Tensor> {
        if let Some(t) = self.empty.get() {
            return Ok(t);
        }
        let chunked = self.chunk(&[Fragment {
            text: String::new(),
            weight: 1.0,
        }]);
        let z = self.encode_ids(&chunked.ids, None)?;
        Ok(self.empty.get_or_init(|| z))
    }

    /// One 77-token chunk; `mask` as transformers' `attention_mask` (1 = attend).
    fn encode_ids(&self, ids: &[u32], mask: Option<&[u8]>) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.device)?.unsqueeze(0)?;
        let mask = mask
            .map(|m| Tensor::new(m, self.device).and_then(|t| t.unsqueeze(0)))
            .transpose()?;
        self.model.encode_chunk(&ids, mask.as_ref())
    }

    /// compel's `build_weighted_embedding_tensor`: each chunk encoded (under `mask`, laid out like `chunked.ids`),
    /// then `empty + (z − empty)·w` on the tokens whose weight is not exactly 1 (those keep `z` untouched).
    fn weighted_embedding(&self, chunked: &Chunked, mask: Option<&[u8]>) -> Result<Tensor> {
        let mut out = Vec::new();
        for (i, (ids, weights)) in chunked
            .ids
            .chunks(CHUNK_LEN)
            .zip(chunked.weights.chunks(CHUNK_LEN))
            .enumerate()
        {
            let z = self.encode_ids(ids, mask.map(|m| &m[i * CHUNK_LEN..(i + 1) * CHUNK_LEN]))?;
            if weights.iter().all(|&w| w == 1.0) {
                out.push(z);
                continue;
            }
            let empty = self.empty()?;
            let w = Tensor::new(weights, self.device)?
                .to_dtype(z.dtype())?
                .reshape((1, CHUNK_LEN, 1))?;
            let weighted = (empty + z.sub(empty)?.broadcast_mul(&w)?)?;
            let keep: Vec<u8> = weights.iter().map(|&w| u8::from(w == 1.0)).collect();
            let keep = Tensor::new(keep.as_slice(), self.device)?
                .reshape((1, CHUNK_LEN, 1))?
                .broadcast_as(z.shape())?;
            out.push(keep.where_cond(&z, &weighted)?);
        }
        Ok(Tensor::cat(&out, 1)?)
    }

    /// One weighted prompt (compel's `get_embeddings_for_weighted_prompt_fragments`).
    pub fn weighted_prompt(&self, fragments: &[Fragment]) -> Result<Tensor> {
        let chunked = self.chunk(fragments);
        // compel's base embedding in MASK mode passes an all-ones mask, which changes nothing: encode unmasked.
        let base = self.weighted_embedding(&chunked, None)?;
        let chunks = chunk_count(&base)?;
        let mut embeddings = vec![base];
        let mut mix = vec![1.0];
        let ranges = fragment_ranges(&chunked, self.truncate);
        for (i, (f, range)) in fragments.iter().zip(&ranges).enumerate() {
            if f.weight >= 1.0 {
                continue;
            }
            let z = match (self.downweight, range) {
                (Downweight::Remove, _) => {
                    let mut without = fragments.to_vec();
                    without.remove(i);
                    // Removing a fragment can drop a chunk; compel would fail there, Ember pads with the empty prompt.
                    self.pad_to(self.weighted_embedding(&self.chunk(&without), None)?, chunks)?
                }
                (Downweight::Mask, Some(range)) => {
                    let mask = mask_without(chunked.ids.len(), *range, self.truncate);
                    self.weighted_embedding(&chunked, Some(&mask))?
                }
                // No tokens, nothing to mask: the term would equal the base (compel raises an error here).
                (Downweight::Mask, None) => continue,
            };
            embeddings.push(z);
            mix.push(((1.0 - f.weight.max(1e-5)) * std::f64::consts::FRAC_PI_2).tan());
        }
        self.mix(&embeddings, &mix, true)
    }

    /// Conditioning of a parsed prompt, `[1, 77·chunks, hidden]`.
    pub fn prompt(&self, prompt: &Prompt) -> Result<Tensor> {
        match prompt {
            Prompt::Weighted(fragments) => self.weighted_prompt(fragments),
            Prompt::Blend(blend) => {
                let parts = blend
                    .prompts
                    .iter()
                    .map(|p| self.weighted_prompt(p))
                    .collect::<Result<Vec<_>>>()?;
                let chunks = parts.iter().map(chunk_count).try_fold(0, |m, c| c.map(|c| m.max(c)))?;
                let parts = parts
                    .into_iter()
                    .map(|p| self.pad_to(p, chunks))
                    .collect::<Result<Vec<_>>>()?;
                self.mix(&parts, &blend.weights, blend.normalize)
            }
        }
    }

    /// `Σ wᵢ·eᵢ` (compel's `apply_embedding_weights`), weights divided by their sum when `normalize`.
    fn mix(&self, embeddings: &[Tensor], weights: &[f64], normalize: bool) -> Result<Tensor> {
        let dtype = embeddings[0].dtype();
        // compel builds the weights in the embeddings' dtype before normalising.
        let cast = |w: f64| if dtype == DType::F64 { w } else { w as f32 as f64 };
        let sum: f64 = weights.iter().map(|&w| cast(w)).sum();
        if normalize && sum == 0.0 {
            return Err(Error::invalid(
                "prompt",
                "the blend weights add up to zero; change them or skip normalisation",
            ));
        }
        let mut acc: Option<Tensor> = None;
        for (e, &w) in embeddings.iter().zip(weights) {
            let w = if normalize { cast(w) / sum } else { cast(w) };
            let term = e.affine(w, 0.0)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
        acc.ok_or_else(|| Error::invalid("prompt", "nothing to blend"))
    }

    /// Appends empty-prompt chunks until `t` has `chunks` chunks.
    pub fn pad_to(&self, t: Tensor, chunks: usize) -> Result<Tensor> {
        let have = chunk_count(&t)?;
        if have >= chunks {
            return Ok(t);
        }
        let mut parts = vec![t];
        parts.extend(std::iter::repeat_n(self.empty()?.clone(), chunks - have));
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// A readable tokenization of `prompt` and `negative` for `-t`: each chunk's tokens, with the weight of
/// every weighted run, blend parts with their weights, and what `truncate` drops.
pub fn describe_tokenization(
    tokenizer: &ClipTokenizer,
    prompt: &str,
    negative: &str,
    options: &PromptOptions,
) -> Result<String> {
    let (prompt, _) = take_loras(prompt, "prompt")?;
    let parsed = prompt::parse_invokeai(&prompt, options.skip_normalize)?;
    let negative_prompt = prompt::parse(&join_nonempty(negative, &parsed.negative).replace('\n', " "))?;
    // Tokenizing needs no model; only `chunk` is used.
    let mut out = String::new();
    for (label, p) in [("prompt", &parsed.prompt), ("negative prompt", &negative_prompt)] {
        let parts: Vec<(String, &[Fragment])> = match p {
            Prompt::Weighted(f) => vec![(label.to_string(), f.as_slice())],
            Prompt::Blend(b) => (b.prompts.iter().zip(&b.weights).enumerate())
                .map(|(i, (f, w))| (format!("{label}, blend part {} (weight {w})", i + 1), f.as_slice()))
                .collect(),
        };
        for (title, fragments) in parts {
            let chunked = chunk_ids(tokenizer, fragments, options.truncate);
            let chunks = chunked.ids.len() / CHUNK_LEN;
            out.push_str(&format!("{title}: {chunks} chunk(s) of {CHUNK_LEN} tokens\n"));
            for (i, (ids, weights)) in chunked
                .ids
                .chunks(CHUNK_LEN)
                .zip(chunked.weights.chunks(CHUNK_LEN))
                .enumerate()
            {
                out.push_str(&format!(
                    "  chunk {}: {}\n",
                    i + 1,
                    describe_run(tokenizer, ids, weights)
                ));
            }
            if !chunked.dropped.is_empty() {
                out.push_str(&format!(
                    "  dropped ({} tokens past {TOKENS_PER_CHUNK}): {}\n",
                    chunked.dropped.len(),
                    tokenizer.decode(&chunked.dropped)
                ));
            }
        }
    }
    Ok(out)
}

/// Tokens between BOS and EOS, runs of equal weight ≠ 1 shown as `(text)×w`.
fn describe_run(tokenizer: &ClipTokenizer, ids: &[u32], weights: &[f64]) -> String {
    // The chunk's content lies between its BOS and its first EOS.
    let len = ids.iter().skip(1).position(|&i| i == tokenizer.eos_id()).unwrap_or(0);
    let content: Vec<(u32, f64)> = ids[1..=len]
        .iter()
        .zip(&weights[1..=len])
        .map(|(&i, &w)| (i, w))
        .collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < content.len() {
        let w = content[start].1;
        let end = (start..content.len())
            .find(|&j| content[j].1 != w)
            .unwrap_or(content.len());
        let run: Vec<u32> = content[start..end].iter().map(|&(i, _)| i).collect();
        let text = tokenizer.decode(&run);
        pieces.push(if w == 1.0 { text } else { format!("({text})×{w:.4}") });
        start = end;
    }
    format!("[{} tokens] {}", content.len(), pieces.join(" "))
}
