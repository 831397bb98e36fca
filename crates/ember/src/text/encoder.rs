//! A model's text side behind one seam: its tokenizer and text encoder(s), turning a 77-token chunk of ids into the
//! context the UNet cross-attends to, and a prompt into the pooled embedding SDXL also needs. SD 1.x/2.x have one
//! CLIP encoder (last layer, normed; SD 2.x's tower already cut to its penultimate layer); SDXL has CLIP-L and
//! OpenCLIP bigG, whose penultimate hidden states are joined along the channels (2048 wide) and whose second
//! encoder's projected EOS embedding is the pooled one.

use crate::model::family::{TextEncoderSpec, TextLayer};
use crate::nn::clip::ClipTextModel;
use crate::text::tokenizer::{ClipTokenizer, EOS_ID};
use crate::Result;
use candle_core::{Device, Tensor};

/// What the prompt language needs from a text encoder: one chunk of ids (BOS … EOS, padded to 77) → `[1, 77, C]`.
pub trait ChunkEncoder {
    /// `mask`: transformers' `attention_mask` (`[1, 77]`, 1 = attend).
    fn encode_chunk(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor>;
}

/// A single CLIP encoder read as SD 1.x/2.x read it: the last hidden state, final layer norm applied.
impl ChunkEncoder for ClipTextModel {
    fn encode_chunk(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_masked(ids, mask)?)
    }
}

/// One encoder of a model, with what its family reads from it.
struct Encoder {
    model: ClipTextModel,
    layer: TextLayer,
    /// The id this encoder's tokenizer pads with; the prompt's ids (padded by the first tokenizer) are re-padded.
    pad_id: u32,
    pooled: bool,
}

/// A model's text encoders as one [`ChunkEncoder`], plus the pooled embedding where the family has one.
pub struct TextConditioner {
    encoders: Vec<Encoder>,
}

impl TextConditioner {
    /// `models[i]` built from `specs[i]`; `tokenizers[i]` tell each encoder's pad id.
    pub fn new(models: Vec<ClipTextModel>, specs: &[TextEncoderSpec], tokenizers: &[&ClipTokenizer]) -> Self {
        let encoders = models
            .into_iter()
            .zip(specs)
            .zip(tokenizers)
            .map(|((model, spec), tokenizer)| Encoder {
                model,
                layer: spec.layer,
                pad_id: tokenizer.pad_id(),
                pooled: spec.pooled,
            })
            .collect();
        Self { encoders }
    }

    /// Whether this model conditions on a pooled text embedding (SDXL).
    pub fn has_pooled(&self) -> bool {
        self.encoders.iter().any(|e| e.pooled)
    }

    /// The pooled embedding `[1, P]` of a chunk of ids (the prompt's first 77 tokens, weights dropped, as compel
    /// computes SDXL's pooled prompt).
    pub fn pooled(&self, ids: &[u32], device: &Device) -> Result<Option<Tensor>> {
        let Some(encoder) = self.encoders.iter().find(|e| e.pooled) else {
            return Ok(None);
        };
        let ids = Tensor::new(repad(ids, encoder.pad_id).as_slice(), device)?.unsqueeze(0)?;
        let hidden = encoder.model.hidden_states(&ids, None)?;
        Ok(Some(encoder.model.pooled(&ids, &hidden.last_normed)?))
    }
}

impl ChunkEncoder for TextConditioner {
    fn encode_chunk(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let device = ids.device();
        let first_pad = self.encoders.first().map(|e| e.pad_id);
        let rows = ids.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?;
        let mut parts = Vec::with_capacity(self.encoders.len());
        for encoder in &self.encoders {
            let ids = match Some(encoder.pad_id) == first_pad {
                true => ids.clone(),
                false => {
                    let repadded: Vec<Vec<u32>> = rows.iter().map(|r| repad(r, encoder.pad_id)).collect();
                    Tensor::new(repadded, device)?
                }
            };
            parts.push(match encoder.layer {
                TextLayer::LastNormed => encoder.model.forward_masked(&ids, mask)?,
                TextLayer::Penultimate => encoder.model.hidden_states(&ids, mask)?.penultimate,
            });
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}

/// `ids` with everything after the first EOS set to `pad` (how another tokenizer would have padded the same text).
fn repad(ids: &[u32], pad: u32) -> Vec<u32> {
    let end = ids.iter().position(|&t| t == EOS_ID).map_or(ids.len(), |p| p + 1);
    ids.iter()
        .enumerate()
        .map(|(i, &t)| if i < end { t } else { pad })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn repad_keeps_the_first_eos_and_replaces_what_follows() {
        let e = super::EOS_ID;
        assert_eq!(super::repad(&[1, 5, e, e, e], 0), vec![1, 5, e, 0, 0]);
        assert_eq!(super::repad(&[1, 5, e, 0, 0], e), vec![1, 5, e, e, e]);
        assert_eq!(super::repad(&[1, 5], 0), vec![1, 5]);
    }
}
