//! Network configurations, read from diffusers' `config.json` files (unknown fields ignored) or inferred
//! from a checkpoint's tensor shapes by `model/`. Defaults are Stable Diffusion 1.5's; `model::family` derives the
//! other families' from them.

use serde::Deserialize;

/// A field diffusers may write as `null` (SDXL base: `"upcast_attention": null`): null reads as the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// diffusers writes `attention_head_dim` either as one number or one per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[block.min(v.len().saturating_sub(1))],
        }
    }

    /// The last block's value (the mid block takes the deepest block's settings).
    pub fn last(&self) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.last().copied().unwrap_or(0),
        }
    }
}

/// `UNet2DConditionModel`, configured by data as in diffusers: SD 1.x/2.x (cross-attention down blocks, then a plain
/// one; mirrored going up), SDXL (a plain block first, deeper transformers, `text_time` added conditioning), LCM
/// (a guidance embedding through `time_cond_proj_dim`), inpainting (9 input channels).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    /// In SD configs this is the number of heads (a diffusers misnomer); head size is channels / heads.
    pub attention_head_dim: PerBlock,
    /// The number of heads when a config names it properly (it then wins over `attention_head_dim`).
    pub num_attention_heads: Option<PerBlock>,
    /// Transformer blocks per spatial transformer, per down block (up blocks mirror it; the mid block takes the last).
    pub transformer_layers_per_block: PerBlock,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    /// SD 2.x uses linear `proj_in`/`proj_out`; SD 1.x uses 1×1 convolutions.
    #[serde(deserialize_with = "null_as_default")]
    pub use_linear_projection: bool,
    pub sample_size: usize,
    /// `"text_time"` for SDXL: a pooled text embedding and the image-size micro-conditioning are added to the
    /// time embedding.
    pub addition_embed_type: Option<String>,
    /// Width of each micro-conditioning value's sinusoidal embedding (SDXL: 256).
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding`: 6 × `addition_time_embed_dim` + the pooled embedding's width (SDXL: 2816).
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// LCM-distilled UNets take the guidance scale as an embedding of this width (`time_embedding.cond_proj`).
    pub time_cond_proj_dim: Option<usize>,
    /// SD 2.1-768 computes attention in f32 even in f16 (Ember's attention always accumulates in f32).
    #[serde(deserialize_with = "null_as_default")]
    pub upcast_attention: bool,
}

impl UNetConfig {
    /// Attention heads of the transformers in down block `block` (up blocks mirror it).
    pub fn heads(&self, block: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(block)
    }

    /// Attention heads of the mid block's transformer.
    pub fn mid_heads(&self) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .last()
    }

    /// Whether this UNet takes SDXL's pooled text embedding and micro-conditioning.
    pub fn has_text_time(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: vec![
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "DownBlock2D".into(),
            ],
            up_block_types: vec![
                "UpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
            ],
            layers_per_block: 2,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            transformer_layers_per_block: PerBlock::One(1),
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            use_linear_projection: false,
            sample_size: 64,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
            time_cond_proj_dim: None,
            upcast_attention: false,
        }
    }
}

/// `AutoencoderKL`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    /// Latents are `posterior mean × scaling_factor` (0.18215 for SD 1.x).
    pub scaling_factor: f64,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }
}

/// transformers' `CLIPTextModel` (SD 1.x: ViT-L/14's text tower, 77 positions).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `quick_gelu` for SD 1.x (OpenAI CLIP), `gelu` for SD 2.x (OpenCLIP).
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_booleans_of_real_configs_read_as_false() {
        // SDXL base 1.0's unet/config.json writes these as null.
        let json = r#"{"upcast_attention": null, "use_linear_projection": true, "num_attention_heads": null,
            "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10], "time_cond_proj_dim": null,
            "addition_embed_type": "text_time"}"#;
        let c: UNetConfig = serde_json::from_str(json).unwrap();
        assert!(!c.upcast_attention && c.use_linear_projection && c.has_text_time());
        assert_eq!(
            (c.heads(2), c.mid_heads(), c.transformer_layers_per_block.last()),
            (20, 20, 10)
        );
        let c: UNetConfig = serde_json::from_str(r#"{"use_linear_projection": null}"#).unwrap();
        assert!(!c.use_linear_projection);
    }
}
