//! Textual-inversion embeddings: vectors that stand in the prompt for a word (a style, a character, a "negative"
//! embedding). The file forms people download: A1111's `.pt` (`string_to_param`, with its extra keys), A1111's
//! `.safetensors` (`emb_params`), diffusers' `learned_embeds` (`{token: vector}`), SDXL's (`clip_l` + `clip_g`), any
//! of them with several vectors.

use super::files::read_tensor_file;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// An embedding, read: its vectors for each text encoder of the model.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// What the prompt calls it: the file's stem.
    pub name: String,
    /// The token its file was trained under (diffusers' `<cat-toy>`), also recognised in prompts.
    pub token: Option<String>,
    pub path: PathBuf,
    /// One `[vectors, width]` tensor (f32) per text encoder of the model.
    pub vectors: Vec<Tensor>,
}

impl Embedding {
    pub fn vector_count(&self) -> usize {
        self.vectors
            .first()
            .and_then(|v| v.dims().first().copied())
            .unwrap_or(0)
    }

    /// Reads `path` for a model whose text encoders are `widths` wide (one width per encoder; SDXL: 768, 1280).
    pub fn read(path: &Path, widths: &[usize]) -> Result<Self> {
        let file = read_tensor_file(path, "embedding")?;
        let name = super::stem(path);
        let fail = |message: String| Error::addon(path, message);
        let find = |key: &str| file.tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t.clone());
        let (per_encoder, token): (Vec<Tensor>, Option<String>) =
            if let (Some(l), Some(g)) = (find("clip_l"), find("clip_g")) {
                (vec![l, g], None)
            } else {
                let a1111 = file
                    .tensors
                    .iter()
                    .find(|(k, _)| k.starts_with("string_to_param."))
                    .map(|(_, t)| t.clone());
                let single = match (a1111, find("emb_params")) {
                    (Some(t), _) | (None, Some(t)) => (t, None),
                    _ => match file.tensors.as_slice() {
                        // diffusers' learned_embeds: the only key is the token.
                        [(token, t)] => (t.clone(), Some(token.clone())),
                        _ => {
                            return Err(fail(format!(
                                "no embedding in this file: expected `string_to_param` (A1111 .pt), `emb_params`, \
                             `clip_l` + `clip_g` (SDXL) or a single token → vector entry; it has {} tensors",
                                file.tensors.len()
                            )))
                        }
                    },
                };
                (vec![single.0], single.1)
            };
        if per_encoder.len() != widths.len() {
            let (made, model) = (per_encoder.len(), widths.len());
            return Err(fail(format!(
                "this embedding has vectors for {made} text encoder(s) ({}), the model has {model} ({}): it was \
                 made for another model family",
                describe_widths(&per_encoder),
                widths.iter().map(usize::to_string).collect::<Vec<_>>().join(" + ")
            )));
        }
        let mut vectors = Vec::with_capacity(widths.len());
        for (t, &width) in per_encoder.into_iter().zip(widths) {
            let t = match t.rank() {
                1 => t.unsqueeze(0)?,
                2 => t,
                r => {
                    return Err(fail(format!(
                        "its vectors have {r} dimensions; an embedding is [vectors, width]"
                    )))
                }
            };
            let (count, got) = t.dims2()?;
            if got != width {
                return Err(fail(format!(
                    "its vectors are {got} wide and the model's text encoder takes {width}: it was made for another \
                     model family"
                )));
            }
            if count == 0 || count > 75 {
                return Err(fail(format!("{count} vectors; an embedding has 1 to 75")));
            }
            let t = t.to_dtype(DType::F32)?;
            if t.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
                return Err(fail(
                    "its vectors hold NaN or infinite values; the file is damaged".into(),
                ));
            }
            vectors.push(t);
        }
        let token = token.filter(|t| !t.eq_ignore_ascii_case(&name));
        Ok(Self {
            name,
            token,
            path: path.to_path_buf(),
            vectors,
        })
    }
}

fn describe_widths(tensors: &[Tensor]) -> String {
    tensors
        .iter()
        .map(|t| t.dims().last().map_or("?".into(), |w| w.to_string()))
        .collect::<Vec<_>>()
        .join(" + ")
        + " wide"
}
