//! Which weight of the loaded model each LoRA module changes. The model's own tensor names (diffusers/transformers)
//! are the index: kohya's flat names are those paths with `_` for `.`, SDXL kohya files use LDM's
//! `input_blocks_…`/`middle_block_…`/`output_blocks_…` (mapped as single-file checkpoints are, `model/ldm_keys.rs`),
//! and diffusers/PEFT names are the paths themselves. A module whose size does not fit its layer, or a file that fits
//! nothing, is a LoRA for another model family.

use super::lora::{Component, LayerName, LoraFile, Module};
use crate::model::family::Family;
use crate::model::{ldm_keys_unet, Patchable};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// The model's weights a LoRA may change, by how files name them.
pub struct TargetIndex {
    components: HashMap<Component, ComponentIndex>,
    family: Family,
    layers_per_block: usize,
}

#[derive(Default)]
struct ComponentIndex {
    /// Module path with `_` for `.` (and without `text_model`) → the weight's name.
    flat: HashMap<String, String>,
    /// Module path (without `text_model.`) → the weight's name.
    dotted: HashMap<String, String>,
    /// Weight name → shape.
    shapes: HashMap<String, Vec<usize>>,
}

/// A LoRA's modules placed on the model's weights.
pub struct Placed<'a> {
    /// (component, weight name, module).
    pub patches: Vec<(Component, String, &'a Module)>,
    /// Modules of the file that fit no weight of this model.
    pub unmatched: Vec<String>,
}

impl TargetIndex {
    pub fn new(patchable: &Patchable, family: Family, layers_per_block: usize) -> Self {
        let mut components = HashMap::new();
        let parts = std::iter::once((Component::Unet, &patchable.unet)).chain(
            patchable
                .text_encoders
                .iter()
                .enumerate()
                .map(|(i, w)| (Component::TextEncoder(i), w)),
        );
        for (component, weights) in parts {
            let mut index = ComponentIndex::default();
            for (name, shape) in weights.tensors() {
                index.shapes.insert(name.to_string(), shape.to_vec());
                let Some(module) = name.strip_suffix(".weight") else {
                    continue;
                };
                let module = module.strip_prefix("text_model.").unwrap_or(module);
                index.flat.insert(module.replace('.', "_"), name.to_string());
                index.dotted.insert(module.to_string(), name.to_string());
            }
            components.insert(component, index);
        }
        Self {
            components,
            family,
            layers_per_block,
        }
    }

    /// The weight `module` changes, if this model has it.
    fn weight_of(&self, module: &Module) -> Option<&str> {
        let index = self.components.get(&module.component)?;
        let found = match &module.layer {
            LayerName::Dotted(path) => {
                let path = path.strip_prefix("text_model.").unwrap_or(path);
                index.dotted.get(path)
            }
            LayerName::Flat(flat) => {
                let flat = flat.strip_prefix("text_model_").unwrap_or(flat);
                index.flat.get(flat).or_else(|| {
                    let dotted = ldm_flat_to_diffusers(flat, self.layers_per_block)?;
                    index.flat.get(&dotted.replace('.', "_"))
                })
            }
        };
        found.map(String::as_str)
    }

    /// Places every module of `lora` (read from `path`); an error when the file is for another family.
    pub fn place<'a>(&self, path: &Path, lora: &'a LoraFile) -> Result<Placed<'a>> {
        let mut placed = Placed {
            patches: Vec::new(),
            unmatched: Vec::new(),
        };
        let other_family = guess_family(lora).filter(|f| *f != self.family);
        for module in &lora.modules {
            let Some(weight) = self.weight_of(module) else {
                placed.unmatched.push(format!("{} {}", module.component, module.layer));
                continue;
            };
            let shape = &self.components[&module.component].shapes[weight];
            let numel: usize = shape.iter().product();
            let delta_numel = module.delta_len().unwrap_or(usize::MAX);
            if delta_numel != numel {
                let family_hint = match other_family {
                    Some(f) => format!("this looks like a LoRA for {f}, and the model is {}", self.family),
                    None => format!("it was made for a model other than this {}", self.family),
                };
                return Err(Error::addon(
                    path,
                    format!(
                        "its module `{}` makes a change of {delta_numel} values for the {} layer `{weight}`, which \
                         has {numel} {shape:?}: {family_hint}",
                        module.layer, module.component
                    ),
                ));
            }
            placed.patches.push((module.component, weight.to_string(), module));
        }
        if placed.patches.is_empty() {
            let message = match other_family {
                Some(f) => format!(
                    "this is a LoRA for {f}; the loaded model is {}. Use it with a {f} model",
                    self.family
                ),
                None => format!(
                    "none of its {} modules matches a layer of this {} model (first: `{}`); is it a LoRA for \
                     another model family?",
                    lora.modules.len(),
                    self.family,
                    lora.modules.first().map(|m| m.layer.to_string()).unwrap_or_default()
                ),
            };
            return Err(Error::addon(path, message));
        }
        Ok(placed)
    }
}

/// kohya's SDXL names are LDM's module paths flattened (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
/// `output_blocks_2_0_in_layers_2`, `middle_block_1_proj_in`): the block indices are put back as LDM's dotted
/// prefix and mapped to diffusers' path, whose remaining part is flat again (`…attentions.0.transformer_blocks_0…`).
fn ldm_flat_to_diffusers(flat: &str, layers_per_block: usize) -> Option<String> {
    fn numbers(rest: &str, count: usize) -> Option<(Vec<&str>, String)> {
        let mut parts = rest.splitn(count + 1, '_');
        let nums: Vec<&str> = (0..count).map(|_| parts.next()).collect::<Option<_>>()?;
        nums.iter().all(|n| n.parse::<usize>().is_ok()).then_some(())?;
        Some((nums, parts.next().unwrap_or("").to_string()))
    }
    let (prefix, tail) = if let Some(rest) = flat.strip_prefix("input_blocks_") {
        let (n, tail) = numbers(rest, 2)?;
        (format!("input_blocks.{}.{}.", n[0], n[1]), tail)
    } else if let Some(rest) = flat.strip_prefix("output_blocks_") {
        let (n, tail) = numbers(rest, 2)?;
        (format!("output_blocks.{}.{}.", n[0], n[1]), tail)
    } else if let Some(rest) = flat.strip_prefix("middle_block_") {
        let (n, tail) = numbers(rest, 1)?;
        (format!("middle_block.{}.", n[0]), tail)
    } else if let Some(rest) = flat.strip_prefix("label_emb_0_") {
        (format!("label_emb.0.{rest}."), String::new())
    } else {
        let (head, n) = flat.rsplit_once('_')?;
        n.parse::<usize>().ok()?;
        (format!("{head}.{n}."), String::new())
    };
    // The resnet parts LDM numbers inside a block.
    let tail = [
        ("in_layers_2", "in_layers.2"),
        ("out_layers_3", "out_layers.3"),
        ("emb_layers_1", "emb_layers.1"),
    ]
    .iter()
    .find_map(|(from, to)| (tail == *from).then(|| to.to_string()))
    .unwrap_or(tail);
    let key = match tail.is_empty() {
        true => format!("{prefix}weight"),
        false => format!("{prefix}{tail}.weight"),
    };
    ldm_keys_unet(&key, layers_per_block).map(|name| name.trim_end_matches(".weight").to_string())
}

/// The family a LoRA was made for, from what only one family has: two text encoders (SDXL), or the width of the
/// text its cross-attention reads (768: SD 1.x, 1024: SD 2.x, 2048: SDXL).
fn guess_family(lora: &LoraFile) -> Option<Family> {
    if lora.modules.iter().any(|m| m.component == Component::TextEncoder(1)) {
        return Some(Family::Sdxl);
    }
    let key_width = lora.modules.iter().find_map(|m| {
        let name = m.layer.to_string();
        let is_cross_key = name.contains("attn2") && (name.ends_with("to_k") || name.ends_with("to_v"));
        match (&m.kind, is_cross_key) {
            (super::lora::Kind::LowRank { down, .. }, true) => down.dims().get(1).copied(),
            _ => None,
        }
    })?;
    match key_width {
        768 => Some(Family::Sd1),
        1024 => Some(Family::Sd2),
        2048 => Some(Family::Sdxl),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

    /// Every LoRA fixture's `ΔW` at weight 1, layer by layer, against diffusers' (`fuse_lora` minus the base weight;
    /// LoHa/LoKr: the oracle's float64 LyCORIS formulas), from `tools/oracle/make_lora_reference.py`. The deltas are
    /// computed in f64 here; the references are stored as f32, so they agree to f32 rounding.
    #[test]
    fn every_delta_matches_the_reference_layer_by_layer() {
        let fixtures = std::path::Path::new(FIXTURES);
        let refs = candle_core::safetensors::load(fixtures.join("lora_deltas.safetensors"), &Device::Cpu).unwrap();
        let mut checked = std::collections::HashSet::new();
        let sd1 = [
            "sd1_kohya_locon.safetensors",
            "sd1_kohya_locon.pt",
            "sd1_loha.safetensors",
            "sd1_lokr.safetensors",
            "sd1_peft.safetensors",
        ];
        let models = [
            ("tiny-sd", &sd1[..]),
            ("tiny-sd2", &["sd2_kohya.safetensors"][..]),
            ("tiny-sdxl", &["sdxl_kohya.safetensors"][..]),
        ];
        for (model, files) in models {
            let weights =
                crate::model::load_model(fixtures.join(model).to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
            let index = TargetIndex::new(
                &weights.patchable,
                weights.spec.family,
                weights.spec.unet.layers_per_block,
            );
            for file in files {
                let path = fixtures.join("lora").join(file);
                let lora = LoraFile::read(&path).unwrap();
                let placed = index.place(&path, &lora).unwrap();
                assert!(placed.unmatched.is_empty(), "{file}: {:?}", placed.unmatched);
                let stem = super::super::stem(&path);
                let mut keys = std::collections::HashSet::new();
                for (component, weight, module) in &placed.patches {
                    let part = match component {
                        Component::Unet => "unet".to_string(),
                        Component::TextEncoder(0) => "text_encoder".to_string(),
                        Component::TextEncoder(n) => format!("text_encoder_{}", n + 1),
                    };
                    let key = format!("{stem}/{part}/{weight}");
                    let want = refs
                        .get(&key)
                        .unwrap_or_else(|| panic!("{file}: no reference for {key}"));
                    let got = super::super::lora::delta(module, DType::F64)
                        .unwrap()
                        .reshape(want.shape())
                        .unwrap();
                    let want = want.to_dtype(DType::F64).unwrap();
                    let scale = want
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    let diff = (got - &want)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap();
                    let err = diff.to_scalar::<f64>().unwrap() / scale;
                    assert!(err < 1e-6, "{key}: {err:.2e}");
                    keys.insert(key);
                }
                let expected: std::collections::HashSet<String> = refs
                    .keys()
                    .filter(|k| k.starts_with(&format!("{stem}/")))
                    .cloned()
                    .collect();
                assert_eq!(keys, expected, "{file}: the layers changed differ from diffusers'");
                checked.insert(stem);
            }
        }
        assert_eq!(checked.len(), 6);
    }

    #[test]
    fn sdxl_kohya_names_map_to_diffusers_paths() {
        let cases = [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks.1.attentions.0.transformer_blocks_0_attn1_to_q",
            ),
            ("input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),
            ("middle_block_1_proj_in", "mid_block.attentions.0.proj_in"),
            ("middle_block_2_emb_layers_1", "mid_block.resnets.1.time_emb_proj"),
            ("output_blocks_2_0_out_layers_3", "up_blocks.0.resnets.2.conv2"),
            (
                "output_blocks_0_0_skip_connection",
                "up_blocks.0.resnets.0.conv_shortcut",
            ),
            ("time_embed_0", "time_embedding.linear_1"),
            ("label_emb_0_2", "add_embedding.linear_2"),
        ];
        for (flat, want) in cases {
            assert_eq!(ldm_flat_to_diffusers(flat, 2).as_deref(), Some(want), "{flat}");
        }
        assert_eq!(ldm_flat_to_diffusers("down_blocks_0_attentions_0_proj_in", 2), None);
    }
}
