//! A pipeline's LoRAs and embeddings: which networks a request runs on (the model's, or rebuilt with a LoRA set
//! patched into their weights), and the words embeddings add to the tokenizer.
//!
//! Switching LoRA sets rebuilds the UNet and text encoders from [`PatchableWeights`]: untouched layers get the very
//! tensors the previous networks held, touched layers `W + Σ wᵢ·ΔWᵢ`; the model file is not read again, and a
//! step costs what it costs without LoRAs.

use crate::addons::{lora, AddonKind, AddonLibrary, Component, Embedding, LoraFile, TargetIndex};
use crate::model::family::ModelSpec;
use crate::model::{PatchTerm, Patchable, PatchableWeights};
use crate::nn::clip::ClipTextModel;
use crate::nn::unet::UNet2DConditionModel;
use crate::nn::{PackCache, Precision};
use crate::text::encoder::TextConditioner;
use crate::text::prompt::LoraUse;
use crate::text::tokenizer::{AddedTokens, ClipTokenizer};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The networks one request runs on.
pub(super) struct Networks {
    pub text: TextConditioner,
    pub unet: UNet2DConditionModel,
    /// The LoRAs patched in (empty: the model as loaded).
    pub loras: Vec<AppliedLora>,
}

/// A LoRA as applied: for metadata and `-t`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedLora {
    pub name: String,
    pub text_weight: f64,
    pub unet_weight: f64,
    /// A1111's short hash (12 hex digits).
    pub hash: String,
    pub path: PathBuf,
    /// Modules of the file applied, and all of them.
    pub modules_applied: usize,
    pub modules: usize,
}

/// An embedding the tokenizer knows, for metadata and `-t`.
#[derive(Debug, Clone)]
pub struct EmbeddingInfo {
    pub name: String,
    pub vectors: usize,
    pub hash: String,
}

/// How networks are (re)built: the model's weights, their precision, and what the text side needs.
pub(super) struct NetworkFactory {
    pub patchable: Patchable,
    pub unet_vb: candle_nn::VarBuilder<'static>,
    pub text_vbs: Vec<candle_nn::VarBuilder<'static>>,
    pub precision: Precision,
    pub tokenizers: Vec<ClipTokenizer>,
    pub index: TargetIndex,
    /// The bf16 packs of the UNet's and each text encoder's layers (AMX), kept between builds.
    pub unet_packs: Arc<PackCache>,
    pub text_packs: Vec<Arc<PackCache>>,
}

/// Most LoRA files kept read between requests.
const LORA_FILES_KEPT: usize = 8;

/// The add-on side of a pipeline.
pub(super) struct AddonState {
    pub library: Arc<AddonLibrary>,
    /// The embeddings read (all of the library's that fit the model), and each encoder's rows for their ids.
    pub embeddings: Vec<EmbeddingInfo>,
    pub extra_rows: Vec<Option<Tensor>>,
    /// Embeddings of the library this model cannot use, by name, with why (an error if a prompt uses one).
    pub unusable: Arc<Vec<(String, String)>>,
    /// LoRA files read, most recently used last, with their short hashes.
    lora_files: Mutex<Vec<(PathBuf, Arc<ReadLora>)>>,
}

impl AddonState {
    pub fn empty(encoders: usize) -> Self {
        Self {
            library: Arc::new(AddonLibrary::default()),
            embeddings: Vec::new(),
            extra_rows: vec![None; encoders],
            unusable: Arc::new(Vec::new()),
            lora_files: Mutex::new(Vec::new()),
        }
    }

    /// Reads every embedding of `library` for a model with these text encoders; returns the state, the tokenizer's
    /// added words and the warnings to show (embeddings that do not fit the model, names that are real words).
    pub fn load(
        library: AddonLibrary,
        spec: &ModelSpec,
        tokenizer: &ClipTokenizer,
        device: &Device,
    ) -> Result<(Self, AddedTokens, Vec<String>)> {
        let widths: Vec<usize> = spec.text_encoders.iter().map(|e| e.config.hidden_size).collect();
        let mut state = Self::empty(widths.len());
        let mut words = Vec::new();
        let mut warnings = Vec::new();
        let mut rows: Vec<Vec<Tensor>> = vec![Vec::new(); widths.len()];
        let mut next_id = tokenizer.vocab_size() as u32;
        let mut unusable = Vec::new();
        for (name, path) in library.embeddings() {
            let embedding = match Embedding::read(path, &widths) {
                Ok(e) => e,
                Err(e) => {
                    warnings.push(format!("the embedding `{name}` cannot be used with this model: {e}"));
                    unusable.push((name.to_lowercase(), e.to_string()));
                    continue;
                }
            };
            let count = embedding.vector_count();
            let ids: Vec<u32> = (next_id..next_id + count as u32).collect();
            next_id += count as u32;
            for (encoder_rows, vectors) in rows.iter_mut().zip(&embedding.vectors) {
                encoder_rows.push(vectors.clone());
            }
            let single_word = tokenizer.encode(name).len() == 3;
            if single_word {
                warnings.push(format!(
                    "the embedding `{name}` has the name of a word CLIP knows: wherever `{name}` is in a prompt, the \
                     embedding is used instead of the word (rename the file to keep both)"
                ));
            }
            words.push((name.clone(), ids.clone()));
            words.push((format!("<{name}>"), ids.clone()));
            if let Some(token) = &embedding.token {
                words.push((token.clone(), ids));
            }
            state.embeddings.push(EmbeddingInfo {
                name: name.clone(),
                vectors: count,
                hash: crate::addons::short_hash(AddonKind::Embedding, path)?,
            });
        }
        state.extra_rows = rows
            .into_iter()
            .map(|r| match r.is_empty() {
                true => Ok(None),
                false => Ok(Some(Tensor::cat(&r, 0)?.to_device(device)?)),
            })
            .collect::<Result<_>>()?;
        state.unusable = Arc::new(unusable);
        state.library = Arc::new(library);
        Ok((state, AddedTokens::new(words), warnings))
    }

    /// The LoRA file at `path`, read (and hashed) once and kept for the next requests.
    fn lora_file(&self, path: &Path) -> Result<Arc<ReadLora>> {
        let mut files = self.lora_files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = files.iter().position(|(p, _)| p == path) {
            let entry = files.remove(i);
            let file = entry.1.clone();
            files.push(entry);
            return Ok(file);
        }
        let file = Arc::new(ReadLora {
            lora: LoraFile::read(path)?,
            hash: crate::addons::short_hash(AddonKind::Lora, path)?,
        });
        if files.len() >= LORA_FILES_KEPT {
            files.remove(0);
        }
        files.push((path.to_path_buf(), file.clone()));
        Ok(file)
    }
}

/// A LoRA file as read, with its A1111 hash.
struct ReadLora {
    lora: LoraFile,
    hash: String,
}

/// The LoRA uses of a request (its `loras` and its prompt's terms) → one entry per file, weights summed, those with
/// both weights 0 left out (a weight-0 LoRA is the model itself).
pub(super) fn wanted_loras(library: &AddonLibrary, uses: &[LoraUse]) -> Result<Vec<(String, PathBuf, f64, f64)>> {
    let mut out: Vec<(String, PathBuf, f64, f64)> = Vec::new();
    for u in uses {
        let path = library
            .lora(&u.name)
            .ok_or_else(|| library.unknown_lora(&u.name, "prompt"))?
            .to_path_buf();
        match out.iter_mut().find(|(_, p, _, _)| *p == path) {
            Some(entry) => {
                entry.2 += u.text_weight;
                entry.3 += u.unet_weight;
            }
            None => out.push((crate::addons::stem(&path), path, u.text_weight, u.unet_weight)),
        }
    }
    out.retain(|(_, _, t, u)| *t != 0.0 || *u != 0.0);
    Ok(out)
}

impl NetworkFactory {
    /// Networks with `wanted` LoRAs patched in (none: the model's own weights), and the warnings to show.
    pub fn build(
        &self,
        state: &AddonState,
        wanted: &[(String, PathBuf, f64, f64)],
        spec: &ModelSpec,
    ) -> Result<(Networks, Vec<String>)> {
        let delta_dtype = match self.precision.activations {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let mut patches: HashMap<Component, HashMap<String, Vec<PatchTerm>>> = HashMap::new();
        let mut applied = Vec::with_capacity(wanted.len());
        let mut warnings = Vec::new();
        for (name, path, text_weight, unet_weight) in wanted {
            let read = state.lora_file(path)?;
            let file = &read.lora;
            let placed = self.index.place(path, file)?;
            if !placed.unmatched.is_empty() {
                warnings.push(format!(
                    "LoRA `{name}`: {} of its {} modules match nothing in this model and are not applied (first: {})",
                    placed.unmatched.len(),
                    file.modules.len(),
                    placed.unmatched[0]
                ));
            }
            if !file.unsupported.is_empty() {
                warnings.push(format!(
                    "LoRA `{name}`: {} entries Ember does not apply (first: {})",
                    file.unsupported.len(),
                    file.unsupported[0]
                ));
            }
            for (component, weight_name, module) in &placed.patches {
                let weight = match component {
                    Component::Unet => *unet_weight,
                    Component::TextEncoder(_) => *text_weight,
                };
                if weight == 0.0 {
                    continue;
                }
                let term = lora::patch_term(module, weight, delta_dtype)?;
                patches
                    .entry(*component)
                    .or_default()
                    .entry(weight_name.clone())
                    .or_default()
                    .push(term);
            }
            applied.push(AppliedLora {
                name: name.clone(),
                text_weight: *text_weight,
                unet_weight: *unet_weight,
                hash: read.hash.clone(),
                path: path.clone(),
                modules_applied: placed.patches.len(),
                modules: file.modules.len(),
            });
        }
        // The weights patched before or now change: their packs are dropped, every other layer keeps its own.
        let mut set = |weights: &PatchableWeights, packs: &PackCache, component: Component| {
            let new = patches.remove(&component).unwrap_or_default();
            let old = weights.patched();
            packs.forget(old.iter().map(String::as_str).chain(new.keys().map(String::as_str)));
            weights.set_patches(new);
        };
        set(&self.patchable.unet, &self.unet_packs, Component::Unet);
        for (i, (w, packs)) in self.patchable.text_encoders.iter().zip(&self.text_packs).enumerate() {
            set(w, packs, Component::TextEncoder(i));
        }
        let networks = self.networks(state, spec, applied, &lora_err)?;
        Ok((networks, warnings))
    }

    /// The networks first built from a model's weights; `model_err` says what a network whose weights do not fit
    /// is (a model error naming the file).
    pub fn first(
        &self,
        state: &AddonState,
        spec: &ModelSpec,
        model_err: &dyn Fn(&str, candle_core::Error) -> Error,
    ) -> Result<Networks> {
        self.networks(state, spec, Vec::new(), model_err)
    }

    /// The networks from the weights as now patched, with the embeddings' rows; a network that cannot be built is
    /// `model_err(which, error)`.
    fn networks(
        &self,
        state: &AddonState,
        spec: &ModelSpec,
        loras: Vec<AppliedLora>,
        model_err: &dyn Fn(&str, candle_core::Error) -> Error,
    ) -> Result<Networks> {
        let text_encoders = self
            .text_vbs
            .iter()
            .zip(&spec.text_encoders)
            .zip(&state.extra_rows)
            .zip(&self.text_packs)
            .map(|(((vb, encoder), rows), packs)| {
                ClipTextModel::new(self.precision.vars_with_packs(vb, packs), &encoder.config)
                    .map(|m| m.with_extra_tokens(rows.clone()))
                    .map_err(|e| model_err("text encoder", e))
            })
            .collect::<Result<Vec<_>>>()?;
        let unet = UNet2DConditionModel::new(
            self.precision.vars_with_packs(&self.unet_vb, &self.unet_packs),
            &spec.unet,
        )
        .map_err(|e| model_err("UNet", e))?;
        let tokenizer_refs: Vec<&ClipTokenizer> = self.tokenizers.iter().collect();
        Ok(Networks {
            text: TextConditioner::new(text_encoders, &spec.text_encoders, &tokenizer_refs),
            unet,
            loras,
        })
    }

    /// The networks of the model as loaded (no LoRA), with the embeddings' rows.
    pub fn plain(&self, state: &AddonState, spec: &ModelSpec) -> Result<Networks> {
        let parts = std::iter::once((&self.patchable.unet, &self.unet_packs))
            .chain(self.patchable.text_encoders.iter().zip(&self.text_packs));
        for (weights, packs) in parts {
            packs.forget(weights.patched().iter().map(String::as_str));
            weights.set_patches(HashMap::new());
        }
        self.networks(state, spec, Vec::new(), &lora_err)
    }
}

/// A network that cannot be built once LoRAs are patched in (the model's own weights built before).
fn lora_err(what: &str, e: candle_core::Error) -> Error {
    Error::invalid("lora", format!("the {what} could not be built with these LoRAs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addons::AddonKind;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

    /// Built for bf16 tiles (forced here: packing needs no AMX, only running does), a LoRA re-packs the layers it
    /// touches and reuses every other layer's pack; taking it out re-packs the touched layers from the base weights.
    #[test]
    fn a_lora_repacks_only_the_layers_it_touches() -> Result<()> {
        let fixtures = Path::new(FIXTURES);
        let weights = crate::model::load_model(fixtures.join("tiny-sd").to_str().unwrap(), &Device::Cpu, DType::F32)?;
        let spec = weights.spec.clone();
        let factory = NetworkFactory {
            index: TargetIndex::new(&weights.patchable, spec.family, spec.unet.layers_per_block),
            patchable: weights.patchable.clone(),
            unet_vb: weights.unet.clone(),
            text_vbs: weights.text_encoders.clone(),
            precision: Precision {
                activations: DType::F32,
                packed_bf16: true,
            },
            tokenizers: vec![ClipTokenizer::bundled()?],
            unet_packs: Arc::default(),
            text_packs: vec![Arc::default()],
        };
        let lora = fixtures.join("lora").join("sd1_kohya_locon.safetensors");
        let mut library = AddonLibrary::default();
        library.add_file(AddonKind::Lora, &lora)?;
        let (state, _, _) = AddonState::load(library, &spec, &factory.tokenizers[0], &Device::Cpu)?;
        factory.plain(&state, &spec)?;
        let touched = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
        let untouched = "time_embedding.linear_1.weight";
        let kept = |name: &str| factory.unet_packs.kept(name).expect("a pack");
        let (plain_touched, plain_untouched) = (kept(touched), kept(untouched));
        let packs = factory.unet_packs.len();

        let (networks, _) = factory.build(&state, &[("k".into(), lora, 1.0, 1.0)], &spec)?;
        assert_eq!(networks.loras.len(), 1);
        assert!(
            !Arc::ptr_eq(&kept(touched), &plain_touched),
            "a touched layer must be packed again"
        );
        assert!(
            Arc::ptr_eq(&kept(untouched), &plain_untouched),
            "an untouched layer keeps its pack"
        );
        assert_eq!(factory.unet_packs.len(), packs);

        let with_lora = kept(touched);
        factory.plain(&state, &spec)?;
        assert!(
            !Arc::ptr_eq(&kept(touched), &with_lora),
            "taking the LoRA out re-packs the layer"
        );
        assert!(Arc::ptr_eq(&kept(untouched), &plain_untouched));
        Ok(())
    }
}
