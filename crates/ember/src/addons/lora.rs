//! LoRA files in the forms people download, read into one description: which layer of which component each module
//! changes, and how its `ΔW` is built.
//!
//! - kohya / A1111 (`lora_unet_…`, `lora_te_…`, SDXL `lora_te1_…`/`lora_te2_…`; the module path with `_` for `.`):
//!   `lora_down`/`lora_up`/`alpha` (LoRA and LoCon, 3×3 convolutions included, optionally with a Tucker `lora_mid`),
//!   LyCORIS LoHa (`hada_w1_a` …) and LoKr (`lokr_w1` …), and full differences (`diff`).
//! - diffusers / PEFT (`unet.….lora_A.weight`/`lora_B.weight`, `text_encoder.…`, `text_encoder_2.…`, and the older
//!   `lora.down`/`lora.up` and attention-processor forms), alphas from the file's `lora_adapter_metadata`.
//!
//! The scale of a module is `alpha / rank` as kohya, LyCORIS and A1111 compute it (1 without an alpha; LoKr with
//! both factors full: 1), or PEFT's `lora_alpha / r` (`/ √r` with rsLoRA).

use super::files::TensorFile;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The part of a model a module changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    /// The n-th text encoder (SDXL: 0 = CLIP-L, 1 = OpenCLIP bigG).
    TextEncoder(usize),
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Unet => f.write_str("UNet"),
            Component::TextEncoder(0) => f.write_str("text encoder"),
            Component::TextEncoder(n) => write!(f, "text encoder {}", n + 1),
        }
    }
}

/// How a file names a module's layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerName {
    /// kohya: the module path with `_` for `.` (`down_blocks_0_attentions_0_proj_in`, or SDXL's LDM-style
    /// `input_blocks_4_1_transformer_blocks_0_attn1_to_q`).
    Flat(String),
    /// diffusers / PEFT: the module path itself (`down_blocks.0.attentions.0.proj_in`).
    Dotted(String),
}

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerName::Flat(s) | LayerName::Dotted(s) => f.write_str(s),
        }
    }
}

/// A factor of a LoKr product: stored whole, or as a low-rank product `a @ b`.
#[derive(Debug, Clone)]
pub enum Factor {
    Full(Tensor),
    LowRank { a: Tensor, b: Tensor },
}

/// How one module's `ΔW` is built (before its scale).
#[derive(Debug, Clone)]
pub enum Kind {
    /// `up @ down` (LoRA, LoCon); with `mid`, the Tucker form `up ×₁ mid ×₂ down` of a convolution.
    LowRank {
        down: Tensor,
        up: Tensor,
        mid: Option<Tensor>,
    },
    /// LyCORIS LoHa: `(w1_a @ w1_b) ⊙ (w2_a @ w2_b)`, each side optionally Tucker (`t1`, `t2`).
    Hadamard {
        w1: (Tensor, Tensor),
        w2: (Tensor, Tensor),
        t1: Option<Tensor>,
        t2: Option<Tensor>,
    },
    /// LyCORIS LoKr: `w1 ⊗ w2` (Kronecker product), `w2` optionally Tucker (`t2`).
    Kronecker { w1: Factor, w2: Factor, t2: Option<Tensor> },
    /// The difference itself.
    Full(Tensor),
}

/// One layer's change.
#[derive(Debug, Clone)]
pub struct Module {
    pub component: Component,
    pub layer: LayerName,
    pub kind: Kind,
    /// `ΔW = scale · build(kind)`.
    pub scale: f64,
}

/// A LoRA file, read.
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub modules: Vec<Module>,
    /// Keys of the file that are not LoRA weights Ember knows (DoRA magnitudes, norm-layer patches, …), for the
    /// warning about what is not applied.
    pub unsupported: Vec<String>,
    /// The trainer's metadata (`ss_*`, `modelspec.*`).
    pub metadata: HashMap<String, String>,
}

impl Module {
    /// How many values this module's `ΔW` has, from its factors' shapes (without computing it); None when the shapes
    /// claim more than `usize` holds.
    pub fn delta_len(&self) -> Option<usize> {
        let dims = |t: &Tensor, from: usize| -> Option<usize> {
            t.dims().get(from..)?.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
        };
        match &self.kind {
            Kind::LowRank { down, up, mid } => {
                let spatial = mid.as_ref().map_or(Some(1), |m| dims(m, 2))?;
                up.dims().first()?.checked_mul(dims(down, 1)?)?.checked_mul(spatial)
            }
            Kind::Hadamard { w1, t1, .. } => match t1 {
                Some(t) => {
                    w1.0.dims()
                        .get(1)?
                        .checked_mul(*w1.1.dims().get(1)?)?
                        .checked_mul(dims(t, 2)?)
                }
                None => w1.0.dims().first()?.checked_mul(dims(&w1.1, 1)?),
            },
            Kind::Kronecker { w1, w2, t2 } => {
                let size = |w: &Factor| match w {
                    Factor::Full(t) => Some(t.elem_count()),
                    Factor::LowRank { a, b } => a.dims().first()?.checked_mul(dims(b, 1)?),
                };
                let w2_size = match (t2, w2) {
                    (Some(t), Factor::LowRank { a, b }) => a
                        .dims()
                        .get(1)?
                        .checked_mul(*b.dims().get(1)?)?
                        .checked_mul(dims(t, 2)?)?,
                    _ => size(w2)?,
                };
                size(w1)?.checked_mul(w2_size)
            }
            Kind::Full(d) => Some(d.elem_count()),
        }
    }

    /// This module's `ΔW` (times its scale) in f32, as a `[rows, cols]`-ordered tensor of [`Self::delta_len`] values.
    pub fn delta(&self) -> Result<Tensor> {
        delta(self, DType::F32)
    }
}

impl LoraFile {
    /// Reads a LoRA file (`.safetensors`, or `.pt`/`.ckpt`/`.bin` through the restricted pickle reader).
    pub fn read(path: &Path) -> Result<Self> {
        let file = super::files::read_tensor_file(path, "LoRA")?;
        Self::from_tensors(path, file)
    }

    pub(crate) fn from_tensors(path: &Path, file: TensorFile) -> Result<Self> {
        let peft = PeftAlphas::from_metadata(&file.metadata);
        let mut groups: BTreeMap<(Component, LayerName), HashMap<String, Tensor>> = BTreeMap::new();
        let mut unsupported = Vec::new();
        for (key, tensor) in file.tensors {
            match split_key(&key) {
                Some((component, layer, param)) => {
                    groups.entry((component, layer)).or_default().insert(param, tensor);
                }
                None => unsupported.push(key),
            }
        }
        let mut modules = Vec::with_capacity(groups.len());
        for ((component, layer), params) in groups {
            match module(component, &layer, params, &peft)
                .map_err(|e| Error::addon(path, format!("module `{layer}`: {e}")))?
            {
                Some(m) => modules.push(m),
                None => unsupported.push(layer.to_string()),
            }
        }
        if modules.is_empty() {
            return Err(Error::addon(
                path,
                "no LoRA weights in this file (expected kohya `lora_unet_…`/`lora_te_…` keys with lora_down/lora_up, \
                 LyCORIS hada_/lokr_ keys, or diffusers `unet.….lora_A`/`lora_B` keys); is it a LoRA?",
            ));
        }
        Ok(Self {
            modules,
            unsupported,
            metadata: file.metadata,
        })
    }
}

/// kohya prefixes and the component each names.
const FLAT_PREFIXES: [(&str, Component); 4] = [
    ("lora_unet_", Component::Unet),
    ("lora_te1_", Component::TextEncoder(0)),
    ("lora_te2_", Component::TextEncoder(1)),
    ("lora_te_", Component::TextEncoder(0)),
];

/// Parameter suffixes of the diffusers/PEFT forms, and what they are in kohya's terms.
const DOTTED_PARAMS: [(&str, &str); 10] = [
    (".lora_A.weight", "lora_down.weight"),
    (".lora_B.weight", "lora_up.weight"),
    (".lora_A.default.weight", "lora_down.weight"),
    (".lora_B.default.weight", "lora_up.weight"),
    (".lora.down.weight", "lora_down.weight"),
    (".lora.up.weight", "lora_up.weight"),
    (".lora_linear_layer.down.weight", "lora_down.weight"),
    (".lora_linear_layer.up.weight", "lora_up.weight"),
    (".lora_magnitude_vector", "dora_scale"),
    (".alpha", "alpha"),
];

/// `key` → (component, layer, parameter in kohya's terms), or None for keys that are not LoRA weights.
fn split_key(key: &str) -> Option<(Component, LayerName, String)> {
    for (prefix, component) in FLAT_PREFIXES {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (layer, param) = rest.split_once('.')?;
            return Some((component, LayerName::Flat(layer.to_string()), param.to_string()));
        }
    }
    let (component, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (Component::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
        (Component::TextEncoder(1), r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (Component::TextEncoder(0), r)
    } else if ["down_blocks.", "mid_block.", "up_blocks."]
        .iter()
        .any(|p| key.starts_with(p))
    {
        // The oldest diffusers files (attention processors saved alone) name UNet modules without a prefix.
        (Component::Unet, key)
    } else {
        return None;
    };
    for (suffix, param) in DOTTED_PARAMS {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Some((component, LayerName::Dotted(module.to_string()), param.to_string()));
        }
    }
    // Attention-processor LoRAs: `….processor.to_q_lora.down.weight`.
    for (suffix, param) in [
        ("_lora.down.weight", "lora_down.weight"),
        ("_lora.up.weight", "lora_up.weight"),
    ] {
        if let Some(module) = rest.strip_suffix(suffix).filter(|m| m.contains(".processor.")) {
            return Some((
                component,
                LayerName::Dotted(processor_module(module)),
                param.to_string(),
            ));
        }
    }
    None
}

/// diffusers' attention-processor LoRAs: `….processor.to_q` is the layer `….to_q` (`to_out`: `to_out.0`).
fn processor_module(module: &str) -> String {
    match module.rsplit_once(".processor.") {
        Some((owner, "to_out")) => format!("{owner}.to_out.0"),
        Some((owner, proj)) => format!("{owner}.{proj}"),
        None => module.to_string(),
    }
}

/// One module's tensors → its [`Module`]; None for a module with nothing Ember applies (norm-layer patches).
fn module(
    component: Component,
    layer: &LayerName,
    mut p: HashMap<String, Tensor>,
    peft: &PeftAlphas,
) -> Result<Option<Module>> {
    if p.contains_key("dora_scale") {
        return Err(Error::invalid(
            "lora",
            "DoRA (weight-decomposed LoRA) is not supported; use a plain LoRA/LyCORIS version of this file",
        ));
    }
    let alpha = p.remove("alpha").map(|a| scalar(&a)).transpose()?;
    let is_lokr = take_any(&p, &["lokr_w1", "lokr_w1_a"]) && take_any(&p, &["lokr_w2", "lokr_w2_a"]);
    let mut take = |name: &str| p.remove(name);
    let (kind, rank) = if let (Some(down), Some(up)) = (take("lora_down.weight"), take("lora_up.weight")) {
        let rank = down.dim(0)?;
        let mid = take("lora_mid.weight");
        (Kind::LowRank { down, up, mid }, Some(rank))
    } else if let (Some(w1a), Some(w1b), Some(w2a), Some(w2b)) = (
        take("hada_w1_a"),
        take("hada_w1_b"),
        take("hada_w2_a"),
        take("hada_w2_b"),
    ) {
        let rank = w1b.dim(0)?;
        let (t1, t2) = (take("hada_t1"), take("hada_t2"));
        (
            Kind::Hadamard {
                w1: (w1a, w1b),
                w2: (w2a, w2b),
                t1,
                t2,
            },
            Some(rank),
        )
    } else if is_lokr {
        let factor = |full: Option<Tensor>, a: Option<Tensor>, b: Option<Tensor>| match (full, a, b) {
            (Some(w), _, _) => Ok(Factor::Full(w)),
            (None, Some(a), Some(b)) => Ok(Factor::LowRank { a, b }),
            _ => Err(Error::invalid("lora", "a LoKr factor has only one of its two halves")),
        };
        let w1 = factor(take("lokr_w1"), take("lokr_w1_a"), take("lokr_w1_b"))?;
        let w2 = factor(take("lokr_w2"), take("lokr_w2_a"), take("lokr_w2_b"))?;
        // A1111's network_lokr: the rank is w1_b's, else w2_b's; with both factors whole there is none (scale 1).
        let rank = match (&w1, &w2) {
            (Factor::LowRank { b, .. }, _) | (_, Factor::LowRank { b, .. }) => Some(b.dim(0)?),
            _ => None,
        };
        (
            Kind::Kronecker {
                w1,
                w2,
                t2: take("lokr_t2"),
            },
            rank,
        )
    } else if let Some(diff) = take("diff") {
        (Kind::Full(diff), None)
    } else {
        return Ok(None);
    };
    let scale = match layer {
        LayerName::Dotted(module) if alpha.is_none() => peft.scale(component, module, rank.unwrap_or(1)),
        _ => match (alpha, rank) {
            (Some(alpha), Some(rank)) if rank > 0 => alpha / rank as f64,
            _ => 1.0,
        },
    };
    Ok(Some(Module {
        component,
        layer: layer.clone(),
        kind,
        scale,
    }))
}

fn take_any(p: &HashMap<String, Tensor>, names: &[&str]) -> bool {
    names.iter().any(|n| p.contains_key(*n))
}

fn scalar(t: &Tensor) -> Result<f64> {
    let values = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    match values.as_slice() {
        [v] if v.is_finite() => Ok(*v),
        _ => Err(Error::invalid("lora", "alpha must be one finite number")),
    }
}

/// PEFT's alphas, as diffusers saves them in the `lora_adapter_metadata` of a `.safetensors` file: per component
/// (`unet.`, `text_encoder.`, `text_encoder_2.` prefixes) `lora_alpha`, `alpha_pattern` and `use_rslora`. Without
/// them diffusers takes alpha = rank (scale 1).
#[derive(Debug, Default)]
struct PeftAlphas {
    components: HashMap<Component, PeftConfig>,
}

#[derive(Debug, Default)]
struct PeftConfig {
    lora_alpha: Option<f64>,
    alpha_pattern: Vec<(String, f64)>,
    rslora: bool,
}

impl PeftAlphas {
    fn from_metadata(metadata: &HashMap<String, String>) -> Self {
        let mut out = Self::default();
        let Some(raw) = metadata.get("lora_adapter_metadata") else {
            return out;
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(raw) else {
            return out;
        };
        for (key, value) in map {
            let (component, field) = if let Some(f) = key.strip_prefix("unet.") {
                (Component::Unet, f)
            } else if let Some(f) = key.strip_prefix("text_encoder_2.") {
                (Component::TextEncoder(1), f)
            } else if let Some(f) = key.strip_prefix("text_encoder.") {
                (Component::TextEncoder(0), f)
            } else {
                continue;
            };
            let config = out.components.entry(component).or_default();
            match field {
                "lora_alpha" => config.lora_alpha = value.as_f64(),
                "use_rslora" => config.rslora = value.as_bool().unwrap_or(false),
                "alpha_pattern" => {
                    if let serde_json::Value::Object(patterns) = value {
                        config.alpha_pattern = patterns
                            .into_iter()
                            .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                            .collect();
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// PEFT's scale for `module` of `component` with rank `rank`: `alpha / r` (`alpha / √r` with rsLoRA), alpha from
    /// the most specific `alpha_pattern` entry the module's path ends with, else `lora_alpha`, else the rank.
    fn scale(&self, component: Component, module: &str, rank: usize) -> f64 {
        let Some(config) = self.components.get(&component) else {
            return 1.0;
        };
        let pattern = config
            .alpha_pattern
            .iter()
            .filter(|(k, _)| module == k || module.ends_with(&format!(".{k}")))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, v)| *v);
        let alpha = pattern.or(config.lora_alpha).unwrap_or(rank as f64);
        if config.rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }
}

/// `module` at `weight` as a term to add to its layer's weight: a LoRA's factors (`up` scaled by scale × weight, both
/// as matrices), or for the other kinds the dense `ΔW`, in `dtype` (f32, or f64 for a model run in f64).
pub(crate) fn patch_term(module: &Module, weight: f64, dtype: DType) -> Result<crate::model::PatchTerm> {
    use crate::model::PatchTerm;
    Ok(match &module.kind {
        Kind::LowRank { down, up, mid: None } => PatchTerm::LowRank {
            up: (up.to_dtype(dtype)?.flatten_from(1)? * (module.scale * weight))?.contiguous()?,
            down: down.to_dtype(dtype)?.flatten_from(1)?.contiguous()?,
        },
        _ => PatchTerm::Dense((delta(module, dtype)? * weight)?),
    })
}

/// `ΔW` of `module` (times its scale) as a `[out, in·kh·kw]`-ordered tensor of `numel` elements, computed in
/// `dtype` (f32, or f64 for a model run in f64).
pub(crate) fn delta(module: &Module, dtype: DType) -> Result<Tensor> {
    let f = |t: &Tensor| t.to_dtype(dtype);
    let rows = |t: &Tensor| -> Result<Tensor> { Ok(f(t)?.flatten_from(1)?) };
    let d = match &module.kind {
        Kind::LowRank { down, up, mid: None } => rows(up)?.matmul(&rows(down)?)?,
        Kind::LowRank {
            down,
            up,
            mid: Some(mid),
        } => tucker(&f(mid)?, &rows(down)?, &rows(up)?.t()?)?,
        Kind::Hadamard { w1, w2, t1, t2 } => {
            let side = |(a, b): &(Tensor, Tensor), t: &Option<Tensor>| -> Result<Tensor> {
                match t {
                    // LyCORIS' Tucker LoHa stores `a` as [rank, out].
                    Some(t) => tucker(&f(t)?, &rows(b)?, &rows(a)?),
                    None => Ok(rows(a)?.matmul(&rows(b)?)?),
                }
            };
            (side(w1, t1)? * side(w2, t2)?)?
        }
        Kind::Kronecker { w1, w2, t2 } => {
            let factor = |w: &Factor| -> Result<Tensor> {
                match w {
                    Factor::Full(w) => Ok(f(w)?),
                    Factor::LowRank { a, b } => Ok(rows(a)?.matmul(&rows(b)?)?),
                }
            };
            let w1 = factor(w1)?;
            let w2 = match (t2, w2) {
                (Some(t), Factor::LowRank { a, b }) => tucker(&f(t)?, &rows(b)?, &rows(a)?)?,
                _ => factor(w2)?,
            };
            kron(&w1, &w2)?
        }
        Kind::Full(diff) => f(diff)?,
    };
    Ok((d * module.scale)?)
}

/// LyCORIS' Tucker reconstruction `einsum('i j k l, j r, i p -> p r k l', t, b, a)`: `t [R, R, kh, kw]`,
/// `b [R, in]`, `a [R, out]` → `[out, in, kh, kw]`.
fn tucker(t: &Tensor, b: &Tensor, a: &Tensor) -> Result<Tensor> {
    let (r1, r2, kh, kw) = t.dims4()?;
    let (out, inp) = (a.dim(1)?, b.dim(1)?);
    // [kh·kw, R1, R2] @ [R2, in] → [kh·kw, R1, in]; then aᵀ [out, R1] @ … → [kh·kw, out, in].
    let t = t.reshape((r1, r2, kh * kw))?.permute((2, 0, 1))?.contiguous()?;
    let tb = t.broadcast_matmul(&b.contiguous()?)?;
    let atb = a.t()?.contiguous()?.broadcast_matmul(&tb)?;
    Ok(atb.permute((1, 2, 0))?.reshape((out, inp, kh, kw))?)
}

/// The Kronecker product `torch.kron(w1, w2)` for a matrix `w1 [a, b]` and `w2 [c, d, …]`: `[a·c, b·d, …]`.
fn kron(w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
    let (a, b) = w1.dims2()?;
    let (c, d) = (w2.dim(0)?, w2.dim(1)?);
    let rest: usize = w2.dims()[2..].iter().product();
    let w1 = w1.reshape((a, 1, b, 1, 1))?;
    let w2 = w2.reshape((1, c, 1, d, rest))?;
    let product = w1.broadcast_mul(&w2)?;
    Ok(product.reshape((a * c, b * d * rest))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn keys_of_each_form() {
        let k = |key: &str| split_key(key).map(|(c, l, p)| (c, l.to_string(), p));
        assert_eq!(
            k("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"),
            Some((
                Component::Unet,
                "down_blocks_0_attentions_0_proj_in".into(),
                "lora_down.weight".into()
            ))
        );
        assert_eq!(
            k("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"),
            Some((
                Component::TextEncoder(1),
                "text_model_encoder_layers_0_mlp_fc1".into(),
                "alpha".into()
            ))
        );
        assert_eq!(
            k("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"),
            Some((
                Component::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q".into(),
                "lora_down.weight".into()
            ))
        );
        assert_eq!(
            k("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight"),
            Some((
                Component::Unet,
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0".into(),
                "lora_up.weight".into()
            ))
        );
        assert_eq!(
            k("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight").map(|x| x.1),
            Some("mid_block.attentions.0.transformer_blocks.0.attn2.to_k".into())
        );
        assert_eq!(
            k("text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight").map(|x| x.0),
            Some(Component::TextEncoder(1))
        );
        assert_eq!(k("some_other_key"), None);
    }

    #[test]
    fn kron_matches_its_definition() -> Result<()> {
        let dev = Device::Cpu;
        let w1 = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev)?;
        let w2 = Tensor::new(&[[0f32, 5., 1.], [6., 7., 2.]], &dev)?;
        let k = kron(&w1, &w2)?.to_vec2::<f32>()?;
        for i in 0..2 {
            for j in 0..2 {
                for x in 0..2 {
                    for y in 0..3 {
                        let want = [[1f32, 2.], [3., 4.]][i][j] * [[0f32, 5., 1.], [6., 7., 2.]][x][y];
                        assert_eq!(k[i * 2 + x][j * 3 + y], want);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn tucker_matches_the_einsum() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 2. * 2. * 3. * 3., &dev)?.reshape((2, 2, 3, 3))?;
        let b = Tensor::new(&[[1f32, -1., 0.5], [2., 0., 1.]], &dev)?; // [R=2, in=3]
        let a = Tensor::new(&[[1f32, 0.], [-2., 3.]], &dev)?; // [R=2, out=2]
        let got = tucker(&t, &b, &a)?; // [out, in, 3, 3]
        let (bv, av) = (b.to_vec2::<f32>()?, a.to_vec2::<f32>()?);
        let t4: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let g: Vec<f32> = got.flatten_all()?.to_vec1()?;
        for p in 0..2 {
            for r in 0..3 {
                for kl in 0..9 {
                    let mut want = 0f32;
                    for i in 0..2 {
                        for j in 0..2 {
                            want += t4[(i * 2 + j) * 9 + kl] * bv[j][r] * av[i][p];
                        }
                    }
                    assert!((g[(p * 3 + r) * 9 + kl] - want).abs() < 1e-4);
                }
            }
        }
        Ok(())
    }
}
