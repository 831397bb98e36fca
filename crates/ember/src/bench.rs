//! `ember bench`: times the networks of an SD1.5-size (or, with `--family sdxl`, SDXL-size) model with random weights
//! built in memory (random weights cost the same as real ones), so performance can be measured without any model
//! file.

use crate::nn::clip::ClipTextModel;
use crate::nn::config::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::nn::unet::UNet2DConditionModel;
use crate::nn::vae::AutoencoderKL;
use crate::nn::Precision;
use crate::op_stats::{self, OpClass};
use crate::Result;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Serialize;
use std::time::Instant;

/// Every weight the networks ask for, made up on the spot: N(0, 1/fan_in) so activations stay in range.
struct RandomWeights {
    /// Whether a text encoder built from these has a `text_projection` (SDXL's second encoder).
    text_projection: bool,
}

const PLAIN: RandomWeights = RandomWeights { text_projection: false };

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = shape.dims();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let std = (1.0 / fan_in as f64).sqrt();
        let t = if dims.len() == 1 {
            // Norm scales and biases: around 1 and 0 like trained ones.
            (Tensor::randn(0f32, 0.02, shape, dev)? + if name.ends_with("weight") { 1.0 } else { 0.0 })?
        } else {
            Tensor::randn(0f32, std as f32, shape, dev)?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        // The one tensor whose shape a network reads before asking for it: a square projection here.
        if name.ends_with("text_projection.weight") && self.text_projection {
            return Tensor::zeros((SDXL_POOLED, SDXL_POOLED), dtype, dev);
        }
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.text_projection || !name.ends_with("text_projection.weight")
    }
}

/// How a benchmark ran; its fields are `--json` keys of every report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSetup {
    /// The requested compute dtype.
    pub dtype: String,
    /// bf16 ran as packed bf16 weights on AMX tiles with f32 activations (`nn::Precision`).
    pub bf16_tiles: bool,
    pub device: String,
    pub threads: usize,
}

impl BenchSetup {
    fn new(options: &BenchOptions, precision: Precision) -> Self {
        Self {
            dtype: format!("{:?}", options.dtype).to_lowercase(),
            bf16_tiles: precision.packed_bf16,
            device: if options.device.is_cuda() {
                "cuda".into()
            } else {
                "cpu".into()
            },
            threads: candle_core::utils::get_num_threads(),
        }
    }
}

/// What `ember bench` measured. Field names are the `--json` keys.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub setup: BenchSetup,
    pub unet_step_512_s: f64,
    pub unet_step_384_s: f64,
    /// The same step through an inpainting UNet (9 input channels: latent, mask, masked-image latent). An inpainting
    /// run adds one VAE encode (the masked image) to img2img's work.
    pub inpaint_unet_step_512_s: f64,
    pub vae_decode_512_s: f64,
    pub vae_encode_512_s: f64,
    /// The tiny autoencoder (TAESD, `--vae-approx`) decoding the same 64×64×4 latent to a 512² image.
    pub taesd_decode_512_s: f64,
    pub clip_s: f64,
    pub peak_rss_bytes: u64,
    /// Measured arithmetic peak of this CPU on all threads (None: no AVX-512F / AVX512-BF16, or not on the CPU).
    pub peak_f32_gflops: Option<f64>,
    pub peak_bf16_gflops: Option<f64>,
    /// The AMX tile unit's measured peak (bf16 products, f32 sums) on all threads (None: no AMX-BF16).
    pub peak_amx_gflops: Option<f64>,
    /// Where the time of the fastest UNet 512×512 step and VAE 512×512 decode went (CPU only; empty on CUDA).
    pub unet_step_512_ops: Vec<OpClassReport>,
    pub vae_decode_512_ops: Vec<OpClassReport>,
}

/// One op class's share of a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct OpClassReport {
    /// conv, linear, attention, other (the rest: norms, activations, copies), or total.
    pub class: &'static str,
    pub seconds: f64,
    pub gflop: f64,
    /// Achieved GFLOP/s (0 for "other", whose FLOPs are not counted).
    pub gflops_per_s: f64,
}

/// Splits a run of `total_s` seconds into the counted classes, the rest, and the total.
fn op_breakdown(total_s: f64, totals: &[op_stats::ClassTotals; 3]) -> Vec<OpClassReport> {
    let report = |class, seconds: f64, flops: f64| OpClassReport {
        class,
        seconds,
        gflop: flops / 1e9,
        gflops_per_s: if seconds > 0.0 { flops / 1e9 / seconds } else { 0.0 },
    };
    let mut rows: Vec<_> = OpClass::ALL
        .iter()
        .zip(totals)
        .map(|(class, t)| report(class.name(), t.time.as_secs_f64(), t.flops))
        .collect();
    let counted_s: f64 = rows.iter().map(|r| r.seconds).sum();
    let flops: f64 = totals.iter().map(|t| t.flops).sum();
    rows.push(report("other", (total_s - counted_s).max(0.0), 0.0));
    rows.push(report("total", total_s, flops));
    rows
}

/// Options of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub dtype: DType,
    pub device: Device,
    /// Timed repetitions per measurement (the minimum is reported); one untimed warm-up runs first.
    pub repeat: usize,
}

fn time_min<T>(repeat: usize, f: impl FnMut() -> Result<T>) -> Result<f64> {
    Ok(time_min_counted(repeat, f)?.0)
}

/// Like `time_min`, also returning the op-class totals (`op_stats`) of the fastest run.
fn time_min_counted<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, [op_stats::ClassTotals; 3])> {
    f()?; // warm-up: first-touch page faults and lazy initialisation are not what we measure
    let mut best = (f64::INFINITY, Default::default());
    for _ in 0..repeat.max(1) {
        op_stats::start();
        let start = Instant::now();
        let result = f();
        let (elapsed, totals) = (start.elapsed().as_secs_f64(), op_stats::stop());
        result?;
        if elapsed < best.0 {
            best = (elapsed, totals);
        }
    }
    Ok(best)
}

/// Builds SD1.5-size networks with random weights and times them. `on_progress` receives a line per stage.
pub fn run(options: &BenchOptions, on_progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let dev = &options.device;
    let precision = Precision::new(dev, options.dtype);
    let dtype = precision.activations;
    let vb = || precision.vars(&VarBuilder::from_backend(Box::new(PLAIN), dtype, dev.clone()));

    on_progress("building random SD1.5-size networks");
    let clip = ClipTextModel::new(vb(), &ClipTextConfig::default())?;
    let unet = UNet2DConditionModel::new(vb(), &UNetConfig::default())?;
    let vae = AutoencoderKL::new(vb(), &VaeConfig::default())?;

    let ids: Vec<u32> = (0..2 * 77)
        .map(|i| if i % 77 == 0 { 49406 } else { 320 + (i as u32 % 1000) })
        .collect();
    let ids = Tensor::from_vec(ids, (2, 77), dev)?;
    on_progress("CLIP text encoder, batch 2");
    let clip_s = time_min(options.repeat, || Ok(clip.forward(&ids)?.to_device(&Device::Cpu)?))?;
    let inputs = crate::nn::unet::UNetInputs::text(clip.forward(&ids)?);

    let unet_step = |side: usize| {
        let latent = Tensor::randn(0f32, 1.0, (2, 4, side / 8, side / 8), dev)?.to_dtype(dtype)?;
        time_min_counted(options.repeat, || {
            Ok(unet.forward(&latent, 500.0, &inputs)?.to_device(&Device::Cpu)?)
        })
    };
    on_progress("UNet step 384×384 (CFG batch 2)");
    let unet_step_384_s = unet_step(384)?.0;
    on_progress("UNet step 512×512 (CFG batch 2)");
    let (unet_step_512_s, unet_ops) = unet_step(512)?;
    drop(unet);

    on_progress("UNet step 512×512, inpainting UNet (CFG batch 2)");
    let inpaint_unet = UNet2DConditionModel::new(
        vb(),
        &UNetConfig {
            in_channels: 9,
            ..UNetConfig::default()
        },
    )?;
    let inpaint_inputs = crate::nn::unet::UNetInputs {
        extra_channels: Some(Tensor::randn(0f32, 1.0, (2, 5, 64, 64), dev)?.to_dtype(dtype)?),
        ..inputs.clone()
    };
    let latent = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), dev)?.to_dtype(dtype)?;
    // Timed as the ordinary step is (with the op counters on), so that the two compare.
    let inpaint_unet_step_512_s = time_min_counted(options.repeat, || {
        Ok(inpaint_unet
            .forward(&latent, 500.0, &inpaint_inputs)?
            .to_device(&Device::Cpu)?)
    })?
    .0;
    drop(inpaint_unet);

    on_progress("VAE encode 512×512");
    let image = Tensor::randn(0f32, 0.5, (1, 3, 512, 512), dev)?.to_dtype(dtype)?;
    let vae_encode_512_s = time_min(options.repeat, || {
        Ok(vae.encode_mean(&image)?.to_device(&Device::Cpu)?)
    })?;
    on_progress("VAE decode 512×512");
    let latent = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), dev)?.to_dtype(dtype)?;
    let (vae_decode_512_s, vae_ops) =
        time_min_counted(options.repeat, || Ok(vae.decode(&latent)?.to_device(&Device::Cpu)?))?;
    on_progress("tiny autoencoder (TAESD) decode 512×512");
    let taesd = crate::nn::taesd::TinyDecoder::new(
        vb(),
        crate::nn::taesd::TinyConfig {
            latent_channels: 4,
            pool: false,
        },
    )?;
    let taesd_decode_512_s = time_min(options.repeat, || {
        Ok(taesd.forward(&latent)?.to_device(&Device::Cpu)?)
    })?;
    drop(taesd);
    let on_cpu = dev.is_cpu();
    if on_cpu {
        on_progress("arithmetic peak of this CPU");
    }
    let peaks = if on_cpu {
        crate::cpu::peak::measure()
    } else {
        Default::default()
    };
    let breakdown = |total_s, ops| if on_cpu { op_breakdown(total_s, ops) } else { Vec::new() };

    Ok(BenchReport {
        setup: BenchSetup::new(options, precision),
        unet_step_512_s,
        unet_step_384_s,
        inpaint_unet_step_512_s,
        vae_decode_512_s,
        vae_encode_512_s,
        taesd_decode_512_s,
        clip_s,
        peak_rss_bytes: peak_rss_bytes(),
        peak_f32_gflops: peaks.f32_fma,
        peak_bf16_gflops: peaks.bf16_dot,
        peak_amx_gflops: peaks.amx_bf16,
        unet_step_512_ops: breakdown(unet_step_512_s, &unet_ops),
        vae_decode_512_ops: breakdown(vae_decode_512_s, &vae_ops),
    })
}

/// SDXL base's pooled text embedding width (bigG's `text_projection`).
const SDXL_POOLED: usize = 1280;

/// SDXL base 1.0's UNet (diffusers' `unet/config.json`).
pub fn sdxl_unet_config() -> UNetConfig {
    use crate::nn::config::PerBlock;
    UNetConfig {
        block_out_channels: vec![320, 640, 1280],
        down_block_types: vec![
            "DownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "CrossAttnUpBlock2D".into(),
            "CrossAttnUpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        attention_head_dim: PerBlock::Each(vec![5, 10, 20]),
        transformer_layers_per_block: PerBlock::Each(vec![1, 2, 10]),
        cross_attention_dim: 2048,
        use_linear_projection: true,
        sample_size: 128,
        addition_embed_type: Some("text_time".into()),
        addition_time_embed_dim: Some(256),
        projection_class_embeddings_input_dim: Some(2816),
        ..UNetConfig::default()
    }
}

/// SDXL's second text encoder, OpenCLIP ViT-bigG/14's text tower (the first is CLIP ViT-L's, `ClipTextConfig`'s
/// default).
pub fn sdxl_text_encoder_2_config() -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: 1280,
        intermediate_size: 5120,
        num_hidden_layers: 32,
        num_attention_heads: 20,
        hidden_act: "gelu".into(),
        ..ClipTextConfig::default()
    }
}

/// What `ember bench --family sdxl` measured. Field names are the `--json` keys.
#[derive(Debug, Clone, Serialize)]
pub struct SdxlBenchReport {
    pub family: &'static str,
    #[serde(flatten)]
    pub setup: BenchSetup,
    /// One UNet evaluation at 1024×1024 with classifier-free guidance (batch 2), text_time conditioning included.
    pub sdxl_unet_step_1024_s: f64,
    pub sdxl_vae_decode_1024_s: f64,
    /// Both text encoders on a batch of 2 (prompt and negative), penultimate states and the pooled embedding.
    pub sdxl_text_s: f64,
    pub peak_rss_bytes: u64,
}

/// Builds SDXL-size networks with random weights and times them, one at a time (each is dropped before the next is
/// built, so the peak is the UNet's).
pub fn run_sdxl(options: &BenchOptions, on_progress: &mut dyn FnMut(&str)) -> Result<SdxlBenchReport> {
    let dev = &options.device;
    let precision = Precision::new(dev, options.dtype);
    let dtype = precision.activations;
    let vb = |weights: RandomWeights| precision.vars(&VarBuilder::from_backend(Box::new(weights), dtype, dev.clone()));

    on_progress("building random SDXL text encoders");
    let clip_l = ClipTextModel::new(vb(PLAIN), &ClipTextConfig::default())?;
    let clip_g = ClipTextModel::new(
        vb(RandomWeights { text_projection: true }),
        &sdxl_text_encoder_2_config(),
    )?;
    let ids: Vec<u32> = (0..2 * 77)
        .map(|i| if i % 77 == 0 { 49406 } else { 320 + (i as u32 % 1000) })
        .collect();
    let ids = Tensor::from_vec(ids, (2, 77), dev)?;
    on_progress("SDXL text encoders, batch 2");
    let sdxl_text_s = time_min(options.repeat, || {
        let l = clip_l.hidden_states(&ids, None)?.penultimate;
        let g = clip_g.hidden_states(&ids, None)?;
        let pooled = clip_g.pooled(&ids, &g.last_normed)?;
        Ok((
            Tensor::cat(&[l, g.penultimate], 2)?.to_device(&Device::Cpu)?,
            pooled.to_device(&Device::Cpu)?,
        ))
    })?;
    drop((clip_l, clip_g));

    on_progress("building a random SDXL UNet (2.6 B parameters)");
    let unet = UNet2DConditionModel::new(vb(PLAIN), &sdxl_unet_config())?;
    let inputs = crate::nn::unet::UNetInputs {
        context: Tensor::randn(0f32, 1.0, (2, 77, 2048), dev)?.to_dtype(dtype)?,
        text_time: Some((
            Tensor::randn(0f32, 1.0, (2, SDXL_POOLED), dev)?.to_dtype(dtype)?,
            Tensor::new(&[[1024f32, 1024., 0., 0., 1024., 1024.]; 2], dev)?.to_dtype(dtype)?,
        )),
        timestep_cond: None,
        extra_channels: None,
        padding: crate::nn::Padding::Zeros,
    };
    let latent = Tensor::randn(0f32, 1.0, (2, 4, 128, 128), dev)?.to_dtype(dtype)?;
    on_progress("SDXL UNet step 1024×1024 (CFG batch 2)");
    let sdxl_unet_step_1024_s = time_min(options.repeat, || {
        Ok(unet.forward(&latent, 500.0, &inputs)?.to_device(&Device::Cpu)?)
    })?;
    drop(unet);

    on_progress("building a random SDXL VAE");
    let vae_config = VaeConfig {
        scaling_factor: 0.13025,
        ..VaeConfig::default()
    };
    let vae = AutoencoderKL::new(vb(PLAIN), &vae_config)?;
    let latent = Tensor::randn(0f32, 1.0, (1, 4, 128, 128), dev)?.to_dtype(dtype)?;
    on_progress("SDXL VAE decode 1024×1024");
    let sdxl_vae_decode_1024_s = time_min(options.repeat, || Ok(vae.decode(&latent)?.to_device(&Device::Cpu)?))?;

    Ok(SdxlBenchReport {
        family: "sdxl",
        setup: BenchSetup::new(options, precision),
        sdxl_unet_step_1024_s,
        sdxl_vae_decode_1024_s,
        sdxl_text_s,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// SD 2.1's UNet (diffusers' `unet/config.json`; SD-Turbo's is the same network).
pub fn sd2_unet_config() -> UNetConfig {
    use crate::nn::config::PerBlock;
    UNetConfig {
        attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
        cross_attention_dim: 1024,
        use_linear_projection: true,
        ..UNetConfig::default()
    }
}

/// SD 2.x's text encoder: OpenCLIP ViT-H/14's text tower, cut to its penultimate layer (23 of 24).
pub fn sd2_text_encoder_config() -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_hidden_layers: 23,
        num_attention_heads: 16,
        hidden_act: "gelu".into(),
        ..ClipTextConfig::default()
    }
}

/// What `ember bench --family sd2` measured (SD-Turbo's use: one step, no classifier-free guidance).
#[derive(Debug, Clone, Serialize)]
pub struct TurboBenchReport {
    pub family: &'static str,
    #[serde(flatten)]
    pub setup: BenchSetup,
    /// One UNet evaluation at 512×512 without guidance (batch 1).
    pub sd2_unet_step_512_nocfg_s: f64,
    pub sd2_vae_decode_512_s: f64,
    /// The text encoder on one prompt.
    pub sd2_text_s: f64,
    /// A whole warm one-step 512×512 txt2img as SD-Turbo runs it: text, one UNet pass, VAE decode.
    pub turbo_txt2img_512_1step_s: f64,
    pub peak_rss_bytes: u64,
}

/// Builds SD 2.1-size networks with random weights and times SD-Turbo's one-step txt2img and its parts.
pub fn run_sd2_turbo(options: &BenchOptions, on_progress: &mut dyn FnMut(&str)) -> Result<TurboBenchReport> {
    let dev = &options.device;
    let precision = Precision::new(dev, options.dtype);
    let dtype = precision.activations;
    let vb = || precision.vars(&VarBuilder::from_backend(Box::new(PLAIN), dtype, dev.clone()));
    on_progress("building random SD 2.1-size networks");
    let clip = ClipTextModel::new(vb(), &sd2_text_encoder_config())?;
    let unet = UNet2DConditionModel::new(vb(), &sd2_unet_config())?;
    let vae = AutoencoderKL::new(vb(), &VaeConfig::default())?;
    let ids: Vec<u32> = (0..77).map(|i| if i == 0 { 49406 } else { 320 + i as u32 }).collect();
    let ids = Tensor::from_vec(ids, (1, 77), dev)?;
    let latent = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), dev)?.to_dtype(dtype)?;
    on_progress("SD 2.x text encoder, one prompt");
    let sd2_text_s = time_min(options.repeat, || Ok(clip.forward(&ids)?.to_device(&Device::Cpu)?))?;
    let inputs = crate::nn::unet::UNetInputs::text(clip.forward(&ids)?);
    on_progress("SD 2.x UNet step 512×512 without guidance (batch 1)");
    let sd2_unet_step_512_nocfg_s = time_min(options.repeat, || {
        Ok(unet.forward(&latent, 999.0, &inputs)?.to_device(&Device::Cpu)?)
    })?;
    on_progress("VAE decode 512×512");
    let sd2_vae_decode_512_s = time_min(options.repeat, || Ok(vae.decode(&latent)?.to_device(&Device::Cpu)?))?;
    on_progress("SD-Turbo-style one-step txt2img 512×512");
    let turbo_txt2img_512_1step_s = time_min(options.repeat, || {
        let context = crate::nn::unet::UNetInputs::text(clip.forward(&ids)?);
        let eps = unet.forward(&latent, 999.0, &context)?;
        Ok(vae.decode(&(&latent - eps)?)?.to_device(&Device::Cpu)?)
    })?;
    Ok(TurboBenchReport {
        family: "sd2",
        setup: BenchSetup::new(options, precision),
        sd2_unet_step_512_nocfg_s,
        sd2_vae_decode_512_s,
        sd2_text_s,
        turbo_txt2img_512_1step_s,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Peak resident set size of this process (Linux `VmHWM`); 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
