#!/usr/bin/env python3
"""Make tiny random-weight models of the SD 2.x, SDXL and LCM families (diffusers folders + original single files).

Usage (from the repository root, with the venv described in tools/oracle/README.md; after make_tiny_model.py, whose
helpers it imports):

    python tools/oracle/make_family_models.py [--shared ../shared]

Writes (deterministic: one fixed torch seed per model, CPU, float16 weights):
  tests/fixtures/tiny-sd2/             diffusers StableDiffusionPipeline folder with SD 2.x's architecture: linear
                                       proj_in/proj_out, heads of 8 channels (attention_head_dim [4,4,4,8]), widths
                                       32/32/32/64, OpenCLIP-style text encoder (gelu) already cut to the penultimate
                                       layer (2 layers), tokenizer padding with "!" (id 0), DDIMScheduler with
                                       prediction_type v_prediction (stable-diffusion-2-1's scheduler_config.json)
  tests/fixtures/tiny-sd2.safetensors  the same model as one file in the original LDM/SD2 layout:
                                       model.diffusion_model.*, first_stage_model.*, and the text encoder in OpenCLIP
                                       layout under cond_stage_model.model.* with a THIRD resblock (index 2, own
                                       random weights) the folder lacks (a loader must drop the last layer, as real
                                       24-layer SD2 files have 23 in diffusers) and text_projection [16,16]
  tests/fixtures/tiny-sd2.yaml         minimal LDM config as SD 2.x v-model yaml files have (parameterization "v")
  tests/fixtures/tiny-sdxl/            diffusers StableDiffusionXLPipeline folder (force_zeros_for_empty_prompt):
                                       UNet 32/32/32, transformer depth [1,2,3], add_embedding "text_time";
                                       text_encoder (CLIP-L-like, quick_gelu, 3 layers), text_encoder_2
                                       (CLIPTextModelWithProjection, gelu, 3 layers, projection 16); tokenizer pads
                                       with <|endoftext|>, tokenizer_2 with "!"; VAE scaling 0.13025; Euler
                                       (SDXL base's scheduler_config.json, leading spacing)
  tests/fixtures/tiny-sdxl.safetensors one file in Stability's SGM layout: model.diffusion_model.* (label_emb.0.{0,2}
                                       = add_embedding.linear_{1,2}), first_stage_model.*,
                                       conditioner.embedders.0.transformer.text_model.* (transformers names),
                                       conditioner.embedders.1.model.* (OpenCLIP layout, text_projection = W^T)
  tests/fixtures/tiny-sdxl.yaml        minimal SGM config (network_config ... adm_in_channels 64)
  tests/fixtures/tiny-lcm/             diffusers LatentConsistencyModelPipeline folder: tiny-sd's architecture, UNet
                                       with time_cond_proj_dim 8, LCMScheduler as SimianLuo/LCM_Dreamshaper_v7 ships

As in make_tiny_model.py, every parameter gets +0.02*randn after construction (no weight exactly 0 or 1) and is
rounded to float16: the stored f16 weights are the model. Each text encoder has hidden size 16 (its 49408-token
table costs 1.6 MB in f16).

Verified at the end (exit status 1 on a mismatch): diffusers' own single-file conversion
(convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_open_clip_checkpoint, convert_ldm_clip_checkpoint)
gives back every tensor of the folders bit-exactly (SD2 text encoder: its first 2 layers; diffusers' SD2 code only
drops a layer named resblocks.23), `from_single_file` with the folder as config does the same for UNet and VAE,
diffusers' create_{unet,vae}_diffusers_config_from_ldm read the yaml files to the folders' configs (where diffusers'
size-keyed SDXL detection allows; differences are printed), and every folder loads back with from_pretrained.
"""

import argparse
import copy
import inspect
import json
import os
import sys

import torch
import yaml
from safetensors.torch import load_file, save_file

from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, LatentConsistencyModelPipeline,
                       LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import make_tiny_model as mt  # SD1 converters (vae_to_ldm, unet_to_ldm), tokenizer folder, compare

ROOT = mt.ROOT
FIXTURES = mt.FIXTURES
SEEDS = {"tiny-sd2": 20240602, "tiny-sdxl": 20240603, "tiny-lcm": 20240604}

BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             trained_betas=None)
# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json
SD2_SCHEDULER = dict(BETAS, clip_sample=False, prediction_type="v_prediction", set_alpha_to_one=False,
                     skip_prk_steps=True, steps_offset=1)
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SDXL_SCHEDULER = dict(BETAS, clip_sample=False, interpolation_type="linear", prediction_type="epsilon",
                      sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                      timestep_spacing="leading", use_karras_sigmas=False)
# SimianLuo/LCM_Dreamshaper_v7 scheduler/scheduler_config.json
LCM_SCHEDULER = dict(BETAS, clip_sample=False, clip_sample_range=1.0, dynamic_thresholding_ratio=0.995,
                     original_inference_steps=50, prediction_type="epsilon", rescale_betas_zero_snr=False,
                     sample_max_value=1.0, set_alpha_to_one=True, steps_offset=1, thresholding=False,
                     timestep_scaling=10.0, timestep_spacing="leading")

SD2_YAML = """\
# Minimal LDM config of the tiny SD 2.x v-model (tests/fixtures/tiny-sd2.safetensors), shaped like
# stablediffusion's configs/stable-diffusion/v2-inference-v.yaml. Written by tools/oracle/make_family_models.py.
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 8
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 1, 1, 2 ]
        num_head_channels: 8
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 16
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [ 1, 1, 1, 1 ]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""

SDXL_YAML = """\
# Minimal SGM config of the tiny SDXL model (tests/fixtures/tiny-sdxl.safetensors), shaped like
# generative-models' configs/inference/sd_xl_base.yaml. Written by tools/oracle/make_family_models.py.
model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.13025
    disable_first_stage_autocast: True

    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        num_idx: 1000

        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling
        discretization_config:
          target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization

    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        adm_in_channels: 64
        num_classes: sequential
        use_checkpoint: True
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [4, 2]
        num_res_blocks: 2
        channel_mult: [1, 1, 1]
        num_head_channels: 8
        use_linear_in_transformer: True
        transformer_depth: [1, 2, 3]
        context_dim: 32
        spatial_transformer_attn_type: softmax-xformers

    conditioner_config:
      target: sgm.modules.GeneralConditioner
      params:
        emb_models:
          # crossattn cond
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenCLIPEmbedder
            params:
              layer: hidden
              layer_idx: 2
          # crossattn and vector cond
          - is_trainable: False
            input_key: txt
            target: sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2
            params:
              arch: ViT-bigG-14
              version: laion2b_s39b_b160k
              freeze: True
              layer: penultimate
              always_return_pooled: True
              legacy: False
          # vector cond
          - is_trainable: False
            input_key: original_size_as_tuple
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params:
              outdim: 8  # multiplied by two
          # vector cond
          - is_trainable: False
            input_key: crop_coords_top_left
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params:
              outdim: 8  # multiplied by two
          # vector cond
          - is_trainable: False
            input_key: target_size_as_tuple
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params:
              outdim: 8  # multiplied by two

    first_stage_config:
      target: sgm.models.autoencoder.AutoencoderKLInferenceWrapper
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          attn_type: vanilla-xformers
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [1, 1, 1, 1]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
"""


# ---------------------------------------------------------------- model construction
def perturb(*models):
    """+0.02*randn on every parameter, then round to f16: the stored f16 weights ARE the model."""
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape))
                p.copy_(p.half().float())
    for m in models:
        m.eval()


def tiny_vae(scaling_factor):
    """tiny-sd's VAE architecture (make_tiny_model.build_models)."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=64,
                         scaling_factor=scaling_factor)


def clip_config(layers, act, pad_token_id, projection_dim=512):
    return CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=37, num_hidden_layers=layers,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act=act, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=pad_token_id, projection_dim=projection_dim)


def build_sd2():
    torch.manual_seed(SEEDS["tiny-sd2"])
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 32, 64), layers_per_block=2, norm_num_groups=32,
        attention_head_dim=(4, 4, 4, 8), cross_attention_dim=16, use_linear_projection=True,
        upcast_attention=False, flip_sin_to_cos=True, freq_shift=0)
    vae = tiny_vae(0.18215)
    # The "full" OpenCLIP text tower of the single file: 3 layers + text_projection. The diffusers folder keeps the
    # first 2 layers (as SD2 folders keep 23 of OpenCLIP ViT-H's 24) and no projection.
    full = CLIPTextModelWithProjection(clip_config(3, "gelu", 0, projection_dim=16))
    perturb(unet, vae, full)
    te = CLIPTextModel(clip_config(2, "gelu", 0))
    te.load_state_dict({k: v for k, v in full.text_model.state_dict().items() if ".layers.2." not in k}, strict=True)
    te.eval()
    return unet, vae, te, full


def build_sdxl():
    torch.manual_seed(SEEDS["tiny-sdxl"])
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 32), layers_per_block=2, transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(4, 4, 4), use_linear_projection=True, cross_attention_dim=32, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
        upcast_attention=False, flip_sin_to_cos=True, freq_shift=0)
    vae = tiny_vae(0.13025)
    te1 = CLIPTextModel(clip_config(3, "quick_gelu", 49407))
    te2 = CLIPTextModelWithProjection(clip_config(3, "gelu", 0, projection_dim=16))
    perturb(unet, vae, te1, te2)
    return unet, vae, te1, te2


def build_lcm():
    """tiny-sd's UNet/VAE/text-encoder configs (copied from the committed folder), UNet with time_cond_proj_dim 8."""
    torch.manual_seed(SEEDS["tiny-lcm"])
    sd_dir = os.path.join(FIXTURES, "tiny-sd")
    ucfg = UNet2DConditionModel.load_config(os.path.join(sd_dir, "unet"))
    ucfg["time_cond_proj_dim"] = 8
    unet = UNet2DConditionModel.from_config(ucfg)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(sd_dir, "vae")))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(sd_dir, "text_encoder")))
    te.float()
    perturb(unet, vae, te)
    return unet, vae, te


# ---------------------------------------------------------------- diffusers -> original layouts
def unet_to_ldm(sd, config):
    """Inverse of diffusers' convert_ldm_unet_checkpoint for any number of levels (SD1/SD2: 4, SDXL: 3), with
    SDXL's add_embedding as label_emb.0.{0,2}. Attention blocks keep their diffusers inner names (LDM's are the same:
    transformer_blocks.N.attn1.to_q, ff.net.0.proj, linear or conv proj_in/proj_out)."""
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    prefixes = {}
    for i in range(n):
        for j in range(per):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(per + 1) * i + j + 1}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(per + 1) * i + j + 1}.1."
        for j in range(per + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(per + 1) * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(per + 1) * i + j}.1."
        if i < n - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(per + 1) * (i + 1)}.0.op."
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(per + 1) * i + per}.{2 if up_attn[i] else 1}."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    out = {}
    for k, v in sd.items():
        new = next((b + k[len(a):] for a, b in fixed.items() if k.startswith(a)), None)
        if new is None:
            for a, b in prefixes.items():
                if k.startswith(a):
                    rest = k[len(a):]
                    if ".resnets." in a:
                        for d, l in resnet:
                            if rest.startswith(d + "."):
                                rest = l + rest[len(d):]
                                break
                    new = b + rest
                    break
        if new is None:
            raise KeyError(f"unmapped UNet key {k}")
        out["model.diffusion_model." + new] = v
    return out


def to_open_clip(full_sd, prefix):
    """transformers CLIPTextModelWithProjection state dict ("text_model.*", "text_projection.weight") -> OpenCLIP's
    names: token_embedding, positional_embedding, transformer.resblocks.{i}.{ln_1,ln_2,attn.in_proj_*,
    attn.out_proj,mlp.c_fc,mlp.c_proj}, ln_final, text_projection (OpenCLIP computes x @ text_projection, so W^T)."""
    sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in full_sd.items()}
    out = {"token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": sd.pop("final_layer_norm.weight"), "ln_final.bias": sd.pop("final_layer_norm.bias"),
           "text_projection": sd.pop("text_projection.weight").t().contiguous()}
    sd.pop("embeddings.position_ids", None)
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        a, b = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.in_proj_{kind}"] = torch.cat([sd.pop(a + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            for x, y in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[b + f"{y}.{kind}"] = sd.pop(a + f"{x}.{kind}")
    if sd:
        raise KeyError(f"unmapped text-encoder keys {sorted(sd)[:5]}")
    return {prefix + k: v for k, v in out.items()}


def half(sd):
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}


# ---------------------------------------------------------------- folders
def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def patch_scheduler(folder, extra):
    """Add the keys the real scheduler_config.json carries that this scheduler class does not take."""
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(extra)
    write_json(path, cfg)


def tokenizer(tok_dir, pad):
    return CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token=pad)


def save_sd2(unet, vae, te, tok_dir):
    folder = os.path.join(FIXTURES, "tiny-sd2")
    sched = DDIMScheduler(**{k: v for k, v in SD2_SCHEDULER.items() if k != "skip_prk_steps"})
    pipe = StableDiffusionPipeline(vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(te).half(),
                                   tokenizer=tokenizer(tok_dir, "!"), unet=copy.deepcopy(unet).half(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    mt.finish_tokenizer_folder(os.path.join(folder, "tokenizer"), tok_dir)
    mt.prefix_text_encoder_file(folder)
    patch_scheduler(folder, {"skip_prk_steps": True})
    return folder


def save_sdxl(unet, vae, te1, te2, tok_dir):
    folder = os.path.join(FIXTURES, "tiny-sdxl")
    keys = inspect.signature(EulerDiscreteScheduler).parameters
    sched = EulerDiscreteScheduler(**{k: v for k, v in SDXL_SCHEDULER.items() if k in keys})
    pipe = StableDiffusionXLPipeline(vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(te1).half(),
                                     text_encoder_2=copy.deepcopy(te2).half(),
                                     tokenizer=tokenizer(tok_dir, "<|endoftext|>"), tokenizer_2=tokenizer(tok_dir, "!"),
                                     unet=copy.deepcopy(unet).half(), scheduler=sched,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        mt.finish_tokenizer_folder(os.path.join(folder, sub), tok_dir)
    mt.prefix_text_encoder_file(folder)  # text_encoder/ only: text_encoder_2 already has text_model.* keys
    patch_scheduler(folder, {k: v for k, v in SDXL_SCHEDULER.items() if k not in keys})
    return folder


def save_lcm(unet, vae, te, tok_dir):
    folder = os.path.join(FIXTURES, "tiny-lcm")
    keys = inspect.signature(LCMScheduler).parameters
    sched = LCMScheduler(**{k: v for k, v in LCM_SCHEDULER.items() if k in keys})
    pipe = LatentConsistencyModelPipeline(vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(te).half(),
                                          tokenizer=tokenizer(tok_dir, "<|endoftext|>"),
                                          unet=copy.deepcopy(unet).half(), scheduler=sched, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    mt.finish_tokenizer_folder(os.path.join(folder, "tokenizer"), tok_dir)
    mt.prefix_text_encoder_file(folder)
    patch_scheduler(folder, {k: v for k, v in LCM_SCHEDULER.items() if k not in keys})
    return folder


# ---------------------------------------------------------------- verification
def check(name, ok):
    print(f"verify {name}: {'OK' if ok else 'FAIL'}")
    return ok


def verify_folder_loads(folder, pipe_cls, parts):
    """Every component loads back from the folder (strictly) to the f16-rounded weights."""
    ok = True
    pipe = pipe_cls.from_pretrained(folder, torch_dtype=torch.float32)
    for name, model in parts.items():
        theirs = getattr(pipe, name).state_dict()
        ok &= mt.compare(f"{os.path.basename(folder)}/{name} via from_pretrained", mt.clip_hf_keys(model.state_dict())
                         if isinstance(model, CLIPTextModel) else model.state_dict(),
                         mt.clip_hf_keys(theirs) if isinstance(model, CLIPTextModel) else theirs)
    return ok, pipe


def verify_tokenizer(folder, sub, pad_id):
    tok = CLIPTokenizer.from_pretrained(os.path.join(folder, sub))
    ids = tok("a photo", padding="max_length", max_length=77, truncation=True).input_ids
    return check(f"{os.path.basename(folder)}/{sub} pads with id {pad_id}", ids[-1] == pad_id and ids[3] == 49407)


def verify_yaml(name, yaml_text, ckpt, unet, vae, allowed):
    """diffusers' create_*_diffusers_config_from_ldm on the yaml must give the UNet's / VAE's config (sample_size is
    guessed from the model type by diffusers, so not compared); `allowed` lists keys where diffusers' size-keyed
    detection cannot read a tiny model (printed)."""
    from diffusers.loaders.single_file_utils import (create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)
    original = yaml.safe_load(yaml_text)
    ok = True
    for what, derived, model in (("unet", create_unet_diffusers_config_from_ldm(original, ckpt), unet),
                                 ("vae", create_vae_diffusers_config_from_ldm(original, ckpt), vae)):
        diffs = {}
        for k, v in derived.items():
            ours = model.config[k]
            if k == "sample_size":
                continue
            norm = (lambda x: list(x) if isinstance(x, (list, tuple)) else x)
            if norm(v) != norm(ours):
                diffs[k] = (v, ours)
        bad = {k: d for k, d in diffs.items() if k not in allowed}
        for k, (v, ours) in diffs.items():
            print(f"  {name}.yaml {what}.{k}: diffusers reads {v!r}, model has {ours!r}"
                  f"{'' if k in bad else ' (expected: diffusers keys this on full-size widths)'}")
        ok &= check(f"{name}.yaml -> diffusers {what} config", not bad)
    return ok


def verify_sd2(ldm, unet, vae, te, full, path, folder):
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     convert_open_clip_checkpoint)
    ok = True
    ckpt = dict(ldm)
    ok &= mt.compare("sd2 convert_ldm_unet_checkpoint", unet.state_dict(),
                     convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    ok &= mt.compare("sd2 convert_ldm_vae_checkpoint", vae.state_dict(),
                     convert_ldm_vae_checkpoint(ckpt, dict(vae.config)))
    conv = convert_open_clip_checkpoint(CLIPTextModel(te.config), ckpt, prefix="cond_stage_model.model.")
    # diffusers keeps the extra layer (it only drops one named resblocks.23) and drops text_projection (SD2's
    # CLIPTextModel has none): compare its first 2 layers with the folder, the third with the 3-layer tower.
    extra = {k: v for k, v in conv.items() if ".layers.2." in k}
    ok &= mt.compare("sd2 convert_open_clip_checkpoint (first 2 layers)", mt.clip_hf_keys(te.state_dict()),
                     {k: v for k, v in conv.items() if k not in extra})
    ok &= mt.compare("sd2 convert_open_clip_checkpoint (layer 2 vs the 3-layer tower)",
                     {k: v for k, v in full.state_dict().items() if ".layers.2." in k}, extra)
    ok &= check("sd2 cond_stage_model.model.text_projection == text_projection.weight^T",
                torch.equal(ckpt["cond_stage_model.model.text_projection"].float(), full.text_projection.weight.t()))
    try:
        te_conv = CLIPTextModel(te.config)
        te_conv.load_state_dict({k[len("text_model."):]: v for k, v in conv.items() if k not in extra}, strict=True)
        pipe = StableDiffusionPipeline.from_single_file(path, config=folder, local_files_only=True,
                                                        text_encoder=te_conv, torch_dtype=torch.float32,
                                                        safety_checker=None, requires_safety_checker=False)
        ok &= mt.compare("sd2 from_single_file unet", unet.state_dict(), pipe.unet.state_dict())
        ok &= mt.compare("sd2 from_single_file vae", vae.state_dict(), pipe.vae.state_dict())
    except Exception as e:  # noqa: BLE001
        print(f"verify sd2 from_single_file: could not run ({type(e).__name__}: {e})")
        ok = False
    ok &= verify_yaml("tiny-sd2", SD2_YAML, ckpt, unet, vae, allowed=())
    return ok


def verify_sdxl(ldm, unet, vae, te1, te2, path, folder):
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    ok = True
    ckpt = dict(ldm)
    ok &= mt.compare("sdxl convert_ldm_unet_checkpoint", unet.state_dict(),
                     convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    ok &= mt.compare("sdxl convert_ldm_vae_checkpoint", vae.state_dict(),
                     convert_ldm_vae_checkpoint(ckpt, dict(vae.config)))
    c1 = convert_ldm_clip_checkpoint(ckpt, remove_prefix="conditioner.embedders.0.transformer.")
    ok &= mt.compare("sdxl convert_ldm_clip_checkpoint (text_encoder)", mt.clip_hf_keys(te1.state_dict()), c1)
    c2 = convert_open_clip_checkpoint(te2, ckpt, prefix="conditioner.embedders.1.model.")
    ok &= mt.compare("sdxl convert_open_clip_checkpoint (text_encoder_2)",
                     {k: v for k, v in te2.state_dict().items() if not k.endswith("position_ids")}, c2)
    try:
        t1 = CLIPTextModel(te1.config)
        t1.load_state_dict({k[len("text_model."):]: v for k, v in c1.items()}, strict=True)
        t2 = CLIPTextModelWithProjection(te2.config)
        t2.load_state_dict(c2, strict=True)
        pipe = StableDiffusionXLPipeline.from_single_file(path, config=folder, local_files_only=True,
                                                          text_encoder=t1, text_encoder_2=t2,
                                                          torch_dtype=torch.float32)
        ok &= mt.compare("sdxl from_single_file unet", unet.state_dict(), pipe.unet.state_dict())
        ok &= mt.compare("sdxl from_single_file vae", vae.state_dict(), pipe.vae.state_dict())
    except Exception as e:  # noqa: BLE001
        print(f"verify sdxl from_single_file: could not run ({type(e).__name__}: {e})")
        ok = False
    ok &= verify_yaml("tiny-sdxl", SDXL_YAML, ckpt, unet, vae,
                      allowed=("class_embed_type", "addition_embed_type", "addition_time_embed_dim"))
    return ok


def file_sizes(paths):
    total = 0
    for p in paths:
        files = [p] if os.path.isfile(p) else sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs)
        for f in files:
            n = os.path.getsize(f)
            total += n
            print(f"  {os.path.relpath(f, ROOT):60s} {n:>10,d} bytes")
    print(f"  {'total':60s} {total:>10,d} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"), help="the shared/ data folder")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    tok_dir = os.path.join(args.shared, "models", "clip-tokenizer", "derived")
    ok = True

    # A. SD 2.x (v-prediction)
    unet, vae, te, full = build_sd2()
    sd2_dir = save_sd2(unet, vae, te, tok_dir)
    ldm = {}
    ldm.update(unet_to_ldm(unet.state_dict(), unet.config))
    ok &= check("unet_to_ldm == make_tiny_model.unet_to_ldm on SD2's block layout",
                ldm.keys() == mt.unet_to_ldm(unet.state_dict()).keys())
    ldm.update(mt.vae_to_ldm(vae.state_dict()))
    ldm.update(to_open_clip(full.state_dict(), "cond_stage_model.model."))
    ldm = half(ldm)
    sd2_file = os.path.join(FIXTURES, "tiny-sd2.safetensors")
    save_file(ldm, sd2_file, metadata={"format": "pt"})
    with open(os.path.join(FIXTURES, "tiny-sd2.yaml"), "w") as f:
        f.write(SD2_YAML)
    ok &= verify_sd2(ldm, unet, vae, te, full, sd2_file, sd2_dir)
    good, _ = verify_folder_loads(sd2_dir, StableDiffusionPipeline, {"unet": unet, "vae": vae, "text_encoder": te})
    ok &= good & verify_tokenizer(sd2_dir, "tokenizer", 0)

    # B. SDXL
    unet, vae, te1, te2 = build_sdxl()
    sdxl_dir = save_sdxl(unet, vae, te1, te2, tok_dir)
    ldm = {}
    ldm.update(unet_to_ldm(unet.state_dict(), unet.config))
    ldm.update(mt.vae_to_ldm(vae.state_dict()))
    ldm.update({"conditioner.embedders.0.transformer." + k: v for k, v in mt.clip_hf_keys(te1.state_dict()).items()})
    ldm.update(to_open_clip(te2.state_dict(), "conditioner.embedders.1.model."))
    ldm = half(ldm)
    sdxl_file = os.path.join(FIXTURES, "tiny-sdxl.safetensors")
    save_file(ldm, sdxl_file, metadata={"format": "pt"})
    with open(os.path.join(FIXTURES, "tiny-sdxl.yaml"), "w") as f:
        f.write(SDXL_YAML)
    ok &= verify_sdxl(ldm, unet, vae, te1, te2, sdxl_file, sdxl_dir)
    good, pipe = verify_folder_loads(sdxl_dir, StableDiffusionXLPipeline,
                                     {"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2})
    ok &= good & verify_tokenizer(sdxl_dir, "tokenizer", 49407) & verify_tokenizer(sdxl_dir, "tokenizer_2", 0)
    ok &= check("tiny-sdxl model_index force_zeros_for_empty_prompt",
                json.load(open(os.path.join(sdxl_dir, "model_index.json"))).get("force_zeros_for_empty_prompt") is True)

    # C. LCM
    unet, vae, te = build_lcm()
    lcm_dir = save_lcm(unet, vae, te, tok_dir)
    good, _ = verify_folder_loads(lcm_dir, LatentConsistencyModelPipeline,
                                  {"unet": unet, "vae": vae, "text_encoder": te})
    ok &= good & verify_tokenizer(lcm_dir, "tokenizer", 49407)

    print("files written:")
    file_sizes([sd2_dir, sd2_file, os.path.join(FIXTURES, "tiny-sd2.yaml"), sdxl_dir, sdxl_file,
                os.path.join(FIXTURES, "tiny-sdxl.yaml"), lcm_dir])
    print("family model verification:", "PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
