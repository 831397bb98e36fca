#!/usr/bin/env python3
"""LoRA / LyCORIS / textual-inversion fixtures for the tiny models, and reference generations with them (float64).

Usage (from the repository root, after make_tiny_model.py and make_family_models.py):

    python tools/oracle/make_lora_reference.py

About 40 s on 2 cores; needs peft besides the venv of README.md (0.21.2 used). Deterministic: a re-run rewrites
byte-identical files (seeded torch generators; the PEFT file's safetensors header is canonicalised).

Writes, under tests/fixtures/lora/ (random weights; every delta is scaled to 20% of the RMS of the weight it changes):
  sd1_kohya_locon.safetensors  kohya / A1111 LoRA + LoCon for tiny-sd: `lora_unet_<diffusers module path, . -> _>` and
                               `lora_te_text_model_<CLIP module path, . -> _>`, each with `.lora_down.weight`
                               ([r,in] linear, [r,in,kh,kw] conv), `.lora_up.weight` ([out,r], [out,r,1,1] conv) and
                               `.alpha` (0-d). Rank 4, alpha 2 everywhere (scale alpha/rank = 0.5). Covers attn1/attn2
                               to_q/to_k/to_v/to_out_0, ff_net_0_proj, ff_net_2, proj_in/proj_out (1x1 convs),
                               resnets conv1/conv2 (3x3 LoCon), time_emb_proj, conv_shortcut (1x1), the downsampler
                               and upsampler convs (3x3), CLIP self_attn q/k/v/out_proj and mlp fc1/fc2.
  sd1_kohya_locon.pt           the same dict, torch.save (zip pickle).
  sd1_loha.safetensors         LyCORIS LoHa: `.hada_w1_a` [out,r], `.hada_w1_b` [r,in*kh*kw], `.hada_w2_a`,
                               `.hada_w2_b`, `.alpha` (0-d; absent on one module = scale 1). Linear layers, a 1x1 conv
                               and a 3x3 conv; two text-encoder layers. delta = (w1_a@w1_b)*(w2_a@w2_b)*alpha/r,
                               r = w1_b.shape[0], reshaped to the weight's shape.
  sd1_lokr.safetensors         LyCORIS LoKr: `.lokr_w1` [a,b] with either `.lokr_w2_a` [out/a,r] + `.lokr_w2_b`
                               [r,in/b] (scale alpha/r, r = w2_b.shape[0]) or a full `.lokr_w2` [out/a,in/b(,kh,kw)]
                               (scale 1.0 whatever `.alpha` says: A1111's network_lokr.py); one 3x3 conv with a full
                               4-d lokr_w2. delta = kron(w1, w2) * scale (w1 unsqueezed to [a,b,1,1] for a conv).
  sd1_peft.safetensors         diffusers/PEFT: written by StableDiffusionPipeline.save_lora_weights from peft
                               LoraConfig(r=4, lora_alpha=8) adapters on the UNet (to_q, to_k, to_v, to_out.0: every
                               attention) and the text encoder (q_proj, k_proj, v_proj, out_proj). Keys
                               `unet.<module>.lora_A.weight` / `.lora_B.weight` and
                               `text_encoder.text_model.<module>.lora_{A,B}.weight`; the alphas live in the safetensors
                               metadata only: `lora_adapter_metadata` = JSON of each LoraConfig.to_dict() flattened with
                               a component prefix (`"unet.r": 4, "unet.lora_alpha": 8, "text_encoder.lora_alpha": 8`,
                               ...), next to `"format": "pt"`. The text-encoder keys get the `text_model.` prefix that
                               files trained under transformers 4 carry (transformers 5's flat CLIPTextModel has none;
                               diffusers 0.42 strips it when loading).
  sdxl_kohya.safetensors       kohya SDXL LoRA for tiny-sdxl in kohya's SGM names: `lora_unet_input_blocks_<i>_<j>_...`,
                               `lora_unet_middle_block_<j>_...`, `lora_unet_output_blocks_<i>_<j>_...` (transformer
                               attention/ff/proj layers, in_layers_2, out_layers_3, emb_layers_1, skip_connection, the
                               `input_blocks_3_0_op` downsampler and `output_blocks_2_2_conv` upsampler) and
                               `lora_te1_text_model_...` (CLIP-L) / `lora_te2_text_model_...` (bigG, HF names).
                               Rank 4, alpha 2 everywhere. SGM_NAMES below lists every name with its diffusers module.
  sd2_kohya.safetensors        kohya LoRA for tiny-sd2 (SD 2.x). Its text tower is stored as an HF CLIPTextModel
                               (text_model.encoder.layers.<i>.self_attn.{q,k,v,out}_proj, mlp.fc1/fc2), so kohya's
                               names are SD 1.x's: `lora_unet_<module, . -> _>`, `lora_te_text_model_<module>`. Rank 4,
                               alpha 2 everywhere. SD2_KOHYA_UNET / SD2_KOHYA_TE: linear proj_in/proj_out (SD 2.x's
                               use_linear_projection: 2-d [4,32] / [32,4]), attn1/attn2 q/k/v/out_0, ff_net_0_proj,
                               ff_net_2 of one block, two mid-block attention layers, one up-block ff, a 3x3 LoCon
                               resnet conv2; CLIP layer 0 q/k/v/out_proj + fc1/fc2, layer 1 v_proj/out_proj/fc1.
  sd1_emb_a1111.pt             A1111 textual inversion (torch.save): {'string_to_token': {'*': 265}, 'string_to_param':
                               {'*': [2,16]}, 'name', 'step', 'sd_checkpoint', 'sd_checkpoint_name'}.
  sd1_emb_st.safetensors       {'emb_params': [1,16]}.
  sd1_learned_embeds.safetensors  diffusers {'<cat-toy>': [16]} (known by its file stem and by its token).
  sdxl_emb.safetensors         {'clip_l': [2,16], 'clip_g': [2,16]} for tiny-sdxl.
  sd2_emb.safetensors          {'emb_params': [2,16]} for tiny-sd2 (its text width is 16).
  evil_lora.pt                 a torch zip whose pickle REDUCEs `os.system('echo pwned')` (GLOBAL "os system") inside
                               a LoRA-looking dict. Written by hand-steered pickling; never loaded here.
Embedding vectors: random directions with the mean row norm of the model's token-embedding table.
Every file has its own seeded generator (1001..1008), so files added later leave the earlier ones byte-identical.

tests/fixtures/lora_cases.json: family_cases.json's fields plus `loras` ([[file under tests/fixtures/lora, weight]])
and `embeddings` ([file under tests/fixtures/lora]). 17 cases; the last three were appended later (the first 14 and
their numbers unchanged):
  sd1_lcm_lora   LCM-LoRA usage on an ordinary model: tiny-sd + sd1_kohya_locon at 1.0, sampler lcm, 4 steps, cfg 1.0
                 (no classifier-free guidance: one conditional pass, as diffusers does at guidance_scale <= 1; no
                 timestep_cond, tiny-sd has no time_cond_proj_dim), 64x64. The loop is make_family_reference.run_lcm
                 with LCMScheduler.from_config(tiny-sd's PNDMScheduler config): original_inference_steps 50 (LCM's
                 default; the config has none), timestep_scaling 10, set_alpha_to_one false, epsilon; LCMScheduler
                 ignores the config's timestep_spacing "leading" and steps_offset 1 -- timesteps [999, 759, 499, 259].
  sd2_kohya_v    tiny-sd2 (v-prediction) + sd2_kohya at 0.9, k_euler 6 steps, cfg 7.5, negative "", 96x64.
  sd2_emb        tiny-sd2, "a photo of sd2_emb" (-> `sd2_emb sd2_emb_1`), k_euler 6 steps, cfg 7.5, negative "", 96x64.
  tiny-sd2 runs at 96x64 as family_cases' txt2img v cases do: at 64x64 diffusers' float32 pipeline differs from the
  float64 loop by 0.6%-1.7% of max |latents| (with and without the LoRA, with "" or a real negative prompt), at 96x64
  by ~2e-6 (probably: at 64x64 the 1x1 deepest level leaves 2 values per GroupNorm group of the 64-channel blocks).

tests/fixtures/lora_reference.safetensors (float32), per case N, named as make_family_reference.py names them:
N.cond, N.uncond, N.noise, N.start, N.sigmas, N.latents (+ N.init_latent for img2img; N.pooled, N.uncond_pooled,
N.add_time_ids for SDXL). The lcm case has N.timesteps instead of N.sigmas and no N.uncond (no CFG runs).

tests/fixtures/lora_deltas.safetensors (float32): for every LoRA file stem F at weight 1.0, for every parameter whose
value changes, `F/<component>/<param>` = weight after - weight before, component unet / text_encoder /
text_encoder_2, param the name in the model folder's safetensors (text encoders: `text_model.encoder.layers...`);
F = sd1_kohya_locon, sd1_loha, sd1_lokr, sd1_peft, sdxl_kohya, sd2_kohya (on tiny-sd2).
kohya (.safetensors; the .pt holds the same tensors), PEFT, SD 2.x kohya and SDXL kohya: diffusers' load_lora_weights +
fuse_lora(lora_scale=1.0) + unload_lora_weights on the float64 models, diffed. LoHa / LoKr: this script's own float64
merge (the formulas above) -- diffusers 0.42 cannot load them for SD 1.x (load_lora_weights raises "The following keys
have not been correctly renamed" for both files: it has no LoHa loader, and its LoKr converters take Z-Image / Flux2
keys only).

How each case's reference is produced: the float64 models of make_family_reference.Family (tiny-sd / tiny-sdxl /
tiny-sd2), fresh for each case, then
- LoRAs (kohya .safetensors/.pt, PEFT, SD 2.x and SDXL kohya): wrapped in a diffusers pipeline object,
  pipe.load_lora_weights(file, adapter_name=stem), pipe.set_adapters([names], adapter_weights=[weights]),
  pipe.fuse_lora(adapter_names=names, lora_scale=1.0), pipe.unload_lora_weights() -- the fused weights stay. Stacking =
  both adapters fused at their weights.
- LoHa / LoKr: W += weight * delta, delta computed here in float64 from the file's float32 tensors.
- Embeddings: pipe.load_textual_inversion(file, token=<file stem>) (the diffusers-format file with token=None, so its
  own key `<cat-toy>` is the token); SDXL: clip_l into text_encoder/tokenizer, clip_g into text_encoder_2/tokenizer_2,
  both as token `sdxl_emb`. A k-vector embedding becomes tokens `name`, `name_1` .. `name_{k-1}`; prompts go through
  pipe.maybe_convert_prompt(prompt, tokenizer) before tokenizing (every tokenizer, as diffusers' encode_prompt does),
  so `name` expands to `name name_1 ...`; the tokenizer then matches added tokens as HF tokenizers do (after
  lower-casing, leftmost-longest, anywhere in the text).
- Then make_family_reference.generate, unchanged: the same float64 k-diffusion loop as family_cases (SD 1.x and 2.x:
  InvokeAI spacing, Karras since steps < karras_max, tiny-sd2 through CompVisVDenoiser; SDXL: leading spacing,
  sqrt(sigma_max^2+1) start), or its LCM loop (run_lcm) for the lcm case. tiny-sd's UNet runs at batch 1 there, so
  make_family_reference.allow_single_value_group_norm is applied (a torch sanity check only; no number changes).

Checks (exit status 1 if one fails):
- Every LoRA file diffusers loads: its fused delta equals this script's own float64 formula for every module of the
  file (so diffusers' key mapping touched exactly the intended weights), to 1e-12 of the weight's max.
- Weight linearity: kohya at 0.8 fused = 0.8 x the 1.0 delta (checked through the .pt file, also checking .pt == .st).
- sd1_kohya_pt_w08's latents are bit-identical to sd1_kohya_locon_w08's.
- Every LoRA / embedding changes the latents by > 1% of their max (the effect is visible).
- diffusers' own float32 pipelines (LoRAs through load_lora_weights + set_adapters, unfused; embeddings through
  load_textual_inversion; latents passed in, output_type "latent") agree with the float64 references to 1e-4 of max
  |latents| (make_family_reference's tolerance) for every k_euler and lcm txt2img case: SD 1.x / 2.x with
  EulerDiscreteScheduler (linspace spacing + Karras = k-diffusion's Karras sigmas; tiny-sd2's config gives
  v_prediction), SDXL with its own Euler (leading), sd1_lcm_lora with StableDiffusionPipeline +
  LCMScheduler.from_config(pipe.scheduler.config), guidance_scale 1.0 (the generator continues after the initial
  noise, as in the loop); LDM's alphas (LCM: final_alpha_cumprod reset from them).

What diffusers 0.42.1 (with transformers 5.24, peft 0.21) does with kohya files, found while writing this (see
tools/oracle/README.md): it loads LoCon 3x3 convs, 1x1 proj_in/proj_out, time_emb_proj, conv_shortcut and the
down/upsampler convs; mixed alphas within one file are mis-scaled (its alpha_pattern keys for attention and text-encoder
modules do not match the modules, and a module without `.alpha` gets the file's most common alpha instead of its
rank), hence one alpha per kohya file here; a text-encoder LoRA whose self_attn keys come without any out_proj key is
silently dropped for self_attn (its old/new-format detection looks for `to_out_lora`), hence out_proj in every file.
"""

import io
import json
import os
import pickle
import sys
import types

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_family_reference as fr  # noqa: E402  Family, generate (the float64 loop)
import make_pipeline_reference as pr  # noqa: E402  FIXTURES

from diffusers import (EulerDiscreteScheduler, LCMScheduler, PNDMScheduler, StableDiffusionPipeline,  # noqa: E402
                       StableDiffusionXLPipeline)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

FIXTURES = pr.FIXTURES
LORA_DIR = os.path.join(FIXTURES, "lora")
REL = 0.2  # delta RMS / weight RMS, per module
RANK = 4
PROMPT = "a photo of an astronaut riding a horse"

# ---------------------------------------------------------------------------------------------- module selections
T0 = "down_blocks.0.attentions.0.transformer_blocks.0"
MID = "mid_block.attentions.0.transformer_blocks.0"
UP3 = "up_blocks.3.attentions.2.transformer_blocks.0"
ATTN = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
        "attn2.to_out.0"]
SD1_KOHYA_UNET = (
    ["down_blocks.0.attentions.0.proj_in", "down_blocks.0.attentions.0.proj_out"]
    + [f"{T0}.{m}" for m in ATTN + ["ff.net.0.proj", "ff.net.2"]]
    + [f"{MID}.attn2.to_k", f"{MID}.attn2.to_v", f"{MID}.attn1.to_out.0", f"{UP3}.attn1.to_q", f"{UP3}.attn1.to_v",
       f"{UP3}.ff.net.2", "up_blocks.3.attentions.2.proj_out",
       "down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2", "down_blocks.0.resnets.0.time_emb_proj",
       "down_blocks.0.downsamplers.0.conv", "up_blocks.0.resnets.0.conv_shortcut", "up_blocks.0.upsamplers.0.conv"]
)
SD1_KOHYA_TE = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.k_proj",
                "encoder.layers.0.self_attn.v_proj", "encoder.layers.0.self_attn.out_proj", "encoder.layers.0.mlp.fc1",
                "encoder.layers.0.mlp.fc2", "encoder.layers.1.self_attn.q_proj", "encoder.layers.1.self_attn.out_proj",
                "encoder.layers.1.mlp.fc2"]

# (component, module, alpha or None)
T1 = "down_blocks.1.attentions.0.transformer_blocks.0"
SD1_LOHA = [("unet", f"{T1}.attn1.to_q", 2.0), ("unet", f"{T1}.attn1.to_k", None), ("unet", f"{T1}.attn2.to_v", 8.0),
            ("unet", f"{T1}.ff.net.2", 2.0), ("unet", "down_blocks.1.attentions.0.proj_in", 2.0),
            ("unet", "down_blocks.1.resnets.0.conv1", 2.0),
            ("text_encoder", "encoder.layers.0.mlp.fc1", 2.0),
            ("text_encoder", "encoder.layers.1.self_attn.v_proj", 4.0)]

# (component, module, w1 shape [a,b], "lr" (w2_a/w2_b rank 4) or "full", alpha or None)
T2 = "down_blocks.2.attentions.0.transformer_blocks.0"
SD1_LOKR = [("unet", f"{T2}.attn1.to_q", (4, 4), "lr", 2.0), ("unet", f"{T2}.attn1.to_out.0", (4, 4), "full", 3.0),
            ("unet", f"{T2}.attn2.to_k", (4, 2), "full", None), ("unet", f"{T2}.ff.net.0.proj", (8, 4), "lr", 2.0),
            ("unet", "down_blocks.2.resnets.1.conv2", (4, 4), "full", None),
            ("text_encoder", "encoder.layers.1.self_attn.k_proj", (2, 2), "lr", 8.0),
            ("text_encoder", "encoder.layers.0.mlp.fc2", (4, 1), "full", 1.0)]

XT = "input_blocks_4_1_transformer_blocks_0_"
DT = "down_blocks.1.attentions.0.transformer_blocks.0."
SGM_NAMES = (  # kohya SDXL name (after lora_unet_) -> diffusers module
    [("input_blocks_4_1_proj_in", "down_blocks.1.attentions.0.proj_in"),
     ("input_blocks_4_1_proj_out", "down_blocks.1.attentions.0.proj_out")]
    + [(XT + m.replace(".", "_"), DT + m) for m in ATTN + ["ff.net.0.proj", "ff.net.2"]]
    + [("input_blocks_8_1_transformer_blocks_2_attn2_to_k",
        "down_blocks.2.attentions.1.transformer_blocks.2.attn2.to_k"),
       ("middle_block_1_transformer_blocks_1_attn1_to_v", "mid_block.attentions.0.transformer_blocks.1.attn1.to_v"),
       ("output_blocks_0_1_transformer_blocks_2_ff_net_2", "up_blocks.0.attentions.0.transformer_blocks.2.ff.net.2"),
       ("output_blocks_4_1_transformer_blocks_1_attn2_to_q",
        "up_blocks.1.attentions.1.transformer_blocks.1.attn2.to_q"),
       ("input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),
       ("input_blocks_1_0_emb_layers_1", "down_blocks.0.resnets.0.time_emb_proj"),
       ("middle_block_2_out_layers_3", "mid_block.resnets.1.conv2"),
       ("output_blocks_3_0_skip_connection", "up_blocks.1.resnets.0.conv_shortcut"),
       ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
       ("output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv")]
)
SDXL_TE1 = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.k_proj",
            "encoder.layers.0.self_attn.v_proj", "encoder.layers.0.self_attn.out_proj", "encoder.layers.2.mlp.fc1"]
SDXL_TE2 = ["encoder.layers.1.self_attn.q_proj", "encoder.layers.1.self_attn.k_proj",
            "encoder.layers.1.self_attn.v_proj", "encoder.layers.1.self_attn.out_proj", "encoder.layers.2.mlp.fc2"]

# tiny-sd2 (SD 2.x: linear proj_in/proj_out, v-prediction; its text tower is stored as an HF CLIPTextModel, so kohya
# names it as for SD 1.x: lora_te_text_model_encoder_layers_...)
T_SD2 = "down_blocks.1.attentions.1.transformer_blocks.0"
SD2_KOHYA_UNET = (
    ["down_blocks.1.attentions.1.proj_in", "down_blocks.1.attentions.1.proj_out"]
    + [f"{T_SD2}.{m}" for m in ATTN + ["ff.net.0.proj", "ff.net.2"]]
    + [f"{MID}.attn2.to_k", f"{MID}.attn1.to_v", "up_blocks.2.attentions.0.transformer_blocks.0.ff.net.0.proj",
       "down_blocks.1.resnets.1.conv2"]
)
SD2_KOHYA_TE = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.k_proj",
                "encoder.layers.0.self_attn.v_proj", "encoder.layers.0.self_attn.out_proj", "encoder.layers.0.mlp.fc1",
                "encoder.layers.0.mlp.fc2", "encoder.layers.1.self_attn.v_proj", "encoder.layers.1.self_attn.out_proj",
                "encoder.layers.1.mlp.fc1"]

LORA_FILES = ["sd1_kohya_locon.safetensors", "sd1_loha.safetensors", "sd1_lokr.safetensors", "sd1_peft.safetensors",
              "sdxl_kohya.safetensors", "sd2_kohya.safetensors"]
OWN_MERGE = {"sd1_loha", "sd1_lokr"}  # applied by this script (diffusers cannot load them)
LCM_KEYS = ("original_inference_steps", "timestep_spacing", "steps_offset", "timestep_scaling", "set_alpha_to_one",
            "prediction_type")


def stem(name):
    return os.path.splitext(name)[0]


def model_of(lora_stem):
    """The tiny model a LoRA file of this script is made for."""
    return "tiny-sdxl" if lora_stem.startswith("sdxl") else "tiny-sd2" if lora_stem.startswith("sd2") else "tiny-sd"


# ---------------------------------------------------------------------------------------------- cases
def make_cases():
    cases = []

    def case(name, loras=(), embeddings=(), model="tiny-sd", sampler="k_euler", prompt=PROMPT, negative="",
             steps=6, cfg=7.5, karras_max=30, width=64, height=64, strength=None, init_image=None):
        cases.append(dict(name=name, prompt=prompt, negative=negative, seed=42, steps=steps, cfg=cfg, sampler=sampler,
                          width=width, height=height, strength=strength, init_image=init_image,
                          karras_max=karras_max, model=model, prediction_type=None, timestep_spacing=None,
                          loras=[list(x) for x in loras], embeddings=list(embeddings)))

    kohya = "sd1_kohya_locon.safetensors"
    case("sd1_kohya_locon_w08", [(kohya, 0.8)])
    case("sd1_kohya_pt_w08", [("sd1_kohya_locon.pt", 0.8)])
    case("sd1_kohya_img2img_w08", [(kohya, 0.8)], width=64, height=96, strength=0.5, init_image="init-64x96.png")
    case("sd1_loha_w1", [("sd1_loha.safetensors", 1.0)])
    case("sd1_lokr_w1", [("sd1_lokr.safetensors", 1.0)], sampler="k_lms")
    case("sd1_peft_w07", [("sd1_peft.safetensors", 0.7)])
    case("sd1_stacked", [(kohya, 0.6), ("sd1_peft.safetensors", 0.5)])
    case("sd1_negative_weight", [(kohya, -0.5)])
    case("sd1_emb_a1111", prompt="a photo of sd1_emb_a1111 on a table", embeddings=["sd1_emb_a1111.pt"])
    case("sd1_emb_st_negative", prompt="a photo of a cat", negative="sd1_emb_st, blurry",
         embeddings=["sd1_emb_st.safetensors"])
    case("sd1_emb_learned", prompt="a <cat-toy> on a beach", embeddings=["sd1_learned_embeds.safetensors"])
    case("sd1_emb_and_lora", [(kohya, 1.0)], prompt="a photo of sd1_emb_a1111 on a table",
         embeddings=["sd1_emb_a1111.pt"])
    xl = dict(model="tiny-sdxl", cfg=5.0, karras_max=0)
    case("sdxl_kohya_w1", [("sdxl_kohya.safetensors", 1.0)], negative="blurry", **xl)
    case("sdxl_emb", prompt="a photo of sdxl_emb", negative=None, embeddings=["sdxl_emb.safetensors"], **xl)
    # Appended later (the cases above and their numbers are unchanged): an LCM-LoRA-style use of an ordinary model
    # (LCM sampling, no CFG at cfg 1.0, no timestep_cond: tiny-sd has no time_cond_proj_dim) and tiny-sd2 (SD 2.x,
    # v-prediction). tiny-sd2 runs at 96x64, as family_cases' txt2img v cases: at 64x64 diffusers' float32 pipeline
    # differs from the float64 loop by 0.6%-1.7% of max |latents| (with or without the LoRA, with "" or a real negative
    # prompt), at 96x64 by 2e-6 (probably the 1x1 deepest level: 2 values per GroupNorm group of 64 channels).
    case("sd1_lcm_lora", [(kohya, 1.0)], sampler="lcm", steps=4, cfg=1.0)
    sd2 = dict(model="tiny-sd2", width=96, height=64)
    case("sd2_kohya_v", [("sd2_kohya.safetensors", 0.9)], **sd2)
    case("sd2_emb", prompt="a photo of sd2_emb", embeddings=["sd2_emb.safetensors"], **sd2)
    return cases


# ---------------------------------------------------------------------------------------------- helpers
def rms(t):
    return t.double().pow(2).mean().sqrt().item()


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def rescale(factors, delta_fn, weight):
    """Multiply each factor by the same c so that RMS(delta_fn(factors)) = REL * RMS(weight); float32 results."""
    s = REL * rms(weight) / rms(delta_fn(factors))
    c = s ** (1.0 / len(factors))
    return [(f.double() * c).float() for f in factors]


def lora_delta(down, up, alpha):
    """kohya / A1111: (up @ down) * alpha/rank (1.0 without alpha), reshaped to [out, *down.shape[1:]] (a LoCon
    [r,in,kh,kw] down with a [out,r,1,1] up composes to one [out,in,kh,kw] kernel)."""
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    out = up.shape[0]
    prod = up.double().reshape(out, -1) @ down.double().reshape(down.shape[0], -1)
    return prod.reshape(out, *down.shape[1:]) * scale


def loha_delta(w1a, w1b, w2a, w2b, alpha, shape):
    scale = alpha / w1b.shape[0] if alpha is not None else 1.0
    return ((w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double()) * scale).reshape(shape)


def lokr_delta(w, shape):
    """A1111 network_lokr.py: dim = w1_b.shape[0] or w2_b.shape[0] (None when both factors are full); scale =
    alpha/dim when alpha and dim, else 1.0; kron(w1, w2), w1 unsqueezed for a 4-d w2."""
    w1 = w["lokr_w1"].double()
    if "lokr_w2" in w:
        w2, dim = w["lokr_w2"].double(), None
    else:
        w2, dim = w["lokr_w2_a"].double() @ w["lokr_w2_b"].double(), w["lokr_w2_b"].shape[0]
    alpha = w["alpha"].item() if "alpha" in w else None
    scale = alpha / dim if (alpha is not None and dim is not None) else 1.0
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(shape) * scale


def te_file_keys(fixture, sub):
    with safe_open(os.path.join(FIXTURES, fixture, sub, "model.safetensors"), "pt") as f:
        return set(f.keys())


def param_name(model_name, comp, name):
    """A parameter's name as the model folder's safetensors spells it (text encoders: `text_model.` prefix)."""
    if comp == "unet":
        return name
    keys = te_file_keys(model_name, comp)
    return name if name in keys else f"text_model.{name}" if f"text_model.{name}" in keys else name


def components(fam):
    out = {"unet": fam.unet, "text_encoder": fam.text_encoder}
    if fam.sdxl:
        out["text_encoder_2"] = fam.text_encoder_2
    return out


def modules(model):
    """named_modules without the `text_model.` prefix (transformers 5 flattens CLIPTextModel but not
    CLIPTextModelWithProjection), so both text encoders are addressed as `encoder.layers...`."""
    return {n.removeprefix("text_model."): m for n, m in model.named_modules()}


def params(model):
    return {n.removeprefix("text_model."): p for n, p in model.state_dict().items()}


def load_family(name):
    return fr.Family(name)


# ---------------------------------------------------------------------------------------------- file builders
def build_kohya(entries, seed, alpha=2.0):
    """entries: [(kohya name, module)] -> kohya state dict (rank 4, one alpha for the file)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in entries:
        w = mod.weight.detach()
        out, inn = w.shape[:2]
        if w.dim() == 4:
            down, up = randn(g, RANK, inn, *w.shape[2:]), randn(g, out, RANK, 1, 1)
        else:
            down, up = randn(g, RANK, inn), randn(g, out, RANK)
        down, up = rescale([down, up], lambda f: lora_delta(f[0], f[1], alpha), w)
        sd[f"{name}.lora_down.weight"] = down.contiguous()
        sd[f"{name}.lora_up.weight"] = up.contiguous()
        sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd


def kohya_expect(sd):
    """{kohya name: float64 delta at weight 1} from a kohya dict."""
    out = {}
    for k in sd:
        if k.endswith(".lora_down.weight"):
            n = k[: -len(".lora_down.weight")]
            a = sd[f"{n}.alpha"].item() if f"{n}.alpha" in sd else None
            out[n] = lora_delta(sd[k], sd[f"{n}.lora_up.weight"], a)
    return out


def make_sd1_kohya(fam):
    u, t = modules(fam.unet), modules(fam.text_encoder)
    entries = [("lora_unet_" + m.replace(".", "_"), u[m]) for m in SD1_KOHYA_UNET]
    entries += [("lora_te_text_model_" + m.replace(".", "_"), t[m]) for m in SD1_KOHYA_TE]
    sd = build_kohya(entries, seed=1001)
    mapping = {("lora_unet_" + m.replace(".", "_")): ("unet", m) for m in SD1_KOHYA_UNET}
    mapping.update({("lora_te_text_model_" + m.replace(".", "_")): ("text_encoder", m) for m in SD1_KOHYA_TE})
    return sd, mapping


def make_sd2_kohya(fam):
    u, t = modules(fam.unet), modules(fam.text_encoder)
    mapping = {("lora_unet_" + m.replace(".", "_")): ("unet", m) for m in SD2_KOHYA_UNET}
    mapping.update({("lora_te_text_model_" + m.replace(".", "_")): ("text_encoder", m) for m in SD2_KOHYA_TE})
    mods = {"unet": u, "text_encoder": t}
    entries = [(k, mods[c][m]) for k, (c, m) in mapping.items()]
    return build_kohya(entries, seed=1007), mapping


def make_sdxl_kohya(fam):
    u, t1, t2 = modules(fam.unet), modules(fam.text_encoder), modules(fam.text_encoder_2)
    mapping = {f"lora_unet_{k}": ("unet", m) for k, m in SGM_NAMES}
    mapping.update({"lora_te1_text_model_" + m.replace(".", "_"): ("text_encoder", m) for m in SDXL_TE1})
    mapping.update({"lora_te2_text_model_" + m.replace(".", "_"): ("text_encoder_2", m) for m in SDXL_TE2})
    mods = {"unet": u, "text_encoder": t1, "text_encoder_2": t2}
    entries = [(k, mods[c][m]) for k, (c, m) in mapping.items()]
    return build_kohya(entries, seed=1005), mapping


def kohya_prefix(comp, sdxl=False):
    return {"unet": "lora_unet_", "text_encoder": "lora_te1_text_model_" if sdxl else "lora_te_text_model_",
            "text_encoder_2": "lora_te2_text_model_"}[comp]


def make_loha(fam):
    g = torch.Generator().manual_seed(1002)
    mods = {c: modules(m) for c, m in components(fam).items()}
    sd, mapping = {}, {}
    for comp, m, alpha in SD1_LOHA:
        w = mods[comp][m].weight.detach()
        out, k = w.shape[0], w[0].numel()
        f = [randn(g, out, RANK), randn(g, RANK, k), randn(g, out, RANK), randn(g, RANK, k)]
        f = rescale(f, lambda f: loha_delta(*f, alpha, w.shape), w)
        name = kohya_prefix(comp) + m.replace(".", "_")
        for key, v in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), f):
            sd[f"{name}.{key}"] = v.contiguous()
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        mapping[name] = (comp, m)
    return sd, mapping


def make_lokr(fam):
    g = torch.Generator().manual_seed(1003)
    mods = {c: modules(m) for c, m in components(fam).items()}
    sd, mapping = {}, {}
    for comp, m, (a, b), kind, alpha in SD1_LOKR:
        w = mods[comp][m].weight.detach()
        out, inn = w.shape[:2]
        assert out % a == 0 and inn % b == 0, (m, w.shape)
        keys = ["lokr_w1"]
        f = [randn(g, a, b)]
        if kind == "lr":
            keys += ["lokr_w2_a", "lokr_w2_b"]
            f += [randn(g, out // a, RANK), randn(g, RANK, inn // b)]
        else:
            keys += ["lokr_w2"]
            f += [randn(g, out // a, inn // b, *w.shape[2:])]
        extra = {} if alpha is None else {"alpha": torch.tensor(alpha, dtype=torch.float32)}
        f = rescale(f, lambda f: lokr_delta(dict(zip(keys, f), **extra), w.shape), w)
        name = kohya_prefix(comp) + m.replace(".", "_")
        for key, v in zip(keys, f):
            sd[f"{name}.{key}"] = v.contiguous()
        sd.update({f"{name}.{k}": v for k, v in extra.items()})
        mapping[name] = (comp, m)
    return sd, mapping


def make_peft(model_dir):
    """PEFT adapters on float32 copies of tiny-sd's UNet and text encoder, randomised, saved by diffusers."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    torch.set_default_dtype(torch.float32)
    try:
        unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.float32)
        te = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", torch_dtype=torch.float32)
        ucfg = LoraConfig(r=RANK, lora_alpha=8, init_lora_weights="gaussian",
                          target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        tcfg = LoraConfig(r=RANK, lora_alpha=8, init_lora_weights="gaussian",
                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
        unet.add_adapter(ucfg)
        # transformers 5.24's CLIPTextModel.add_adapter demands peft >= 0.22 (not released): inject directly.
        te = inject_adapter_in_model(tcfg, te)
        g = torch.Generator().manual_seed(1004)
        with torch.no_grad():
            for model in (unet, te):
                for _, mod in sorted(model.named_modules(), key=lambda x: x[0]):
                    if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
                        A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                        w = mod.get_base_layer().weight
                        a, b = rescale([randn(g, *A.shape), randn(g, *B.shape)],
                                       lambda f: lora_delta(f[0], f[1], 8.0), w)
                        A.copy_(a)
                        B.copy_(b)
        unet_sd = get_peft_model_state_dict(unet)
        te_sd = {f"text_model.{k.replace('.default.', '.')}": v for k, v in te.state_dict().items() if ".lora_" in k}
        out = os.path.join(LORA_DIR, "_peft_tmp")
        StableDiffusionPipeline.save_lora_weights(
            out, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, weight_name="sd1_peft.safetensors",
            unet_lora_adapter_metadata=sorted_sets(unet.peft_config["default"].to_dict()),
            text_encoder_lora_adapter_metadata=sorted_sets(tcfg.to_dict()))
        os.replace(os.path.join(out, "sd1_peft.safetensors"), os.path.join(LORA_DIR, "sd1_peft.safetensors"))
        os.rmdir(out)
        canonical_header(os.path.join(LORA_DIR, "sd1_peft.safetensors"))
    finally:
        torch.set_default_dtype(torch.float64)


def canonical_header(path):
    """Rewrite a safetensors header with its `__metadata__` keys sorted. The safetensors writer keeps the metadata in
    a Rust HashMap, so with two keys (diffusers' "format" and "lora_adapter_metadata") their order -- and the file's
    bytes -- change from run to run. Tensor offsets are relative to the end of the header and stay valid."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def sorted_sets(config):
    """LoraConfig.to_dict() with its sets (target_modules) as sorted lists: diffusers would list them in set order,
    which varies with the string hash seed, and the file would not be byte-reproducible."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def peft_expect(path):
    """{(component, module): float64 delta at weight 1} from a diffusers/PEFT file with metadata alphas."""
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for k in sd:
        if k.endswith(".lora_A.weight"):
            comp, mod = k[: -len(".lora_A.weight")].split(".", 1)
            mod = mod.removeprefix("text_model.")
            r, alpha = meta[f"{comp}.r"], meta[f"{comp}.lora_alpha"]
            A, B = sd[k], sd[k.replace("lora_A", "lora_B")]
            assert A.shape[0] == r
            out[(comp, mod)] = lora_delta(A, B, float(alpha))
    return out, meta


def vectors(g, n, table):
    """n random directions with the mean row norm of a token-embedding table, float32."""
    norm = table.norm(dim=1).mean().item()
    v = randn(g, n, table.shape[1]).double()
    return (v / v.norm(dim=1, keepdim=True) * norm).float()


def make_embeddings(sd1, sdxl):
    g = torch.Generator().manual_seed(1006)
    tok = sd1.text_encoder.get_input_embeddings().weight.detach()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(g, 2, tok)},
                "name": "sd1_emb_a1111", "step": 1000, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "tiny"},
               os.path.join(LORA_DIR, "sd1_emb_a1111.pt"))
    save_file({"emb_params": vectors(g, 1, tok)}, os.path.join(LORA_DIR, "sd1_emb_st.safetensors"))
    save_file({"<cat-toy>": vectors(g, 1, tok)[0].contiguous()},
              os.path.join(LORA_DIR, "sd1_learned_embeds.safetensors"))
    save_file({"clip_l": vectors(g, 2, sdxl.text_encoder.get_input_embeddings().weight.detach()),
               "clip_g": vectors(g, 2, sdxl.text_encoder_2.get_input_embeddings().weight.detach())},
              os.path.join(LORA_DIR, "sdxl_emb.safetensors"))


def make_sd2_embedding(sd2):
    g = torch.Generator().manual_seed(1008)  # its own generator: the files above keep their bytes
    save_file({"emb_params": vectors(g, 2, sd2.text_encoder.get_input_embeddings().weight.detach())},
              os.path.join(LORA_DIR, "sd2_emb.safetensors"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _EvilPickler(pickle._Pickler):
    """Pure-Python pickler that spells os.system as GLOBAL 'os system' (CPython would write 'posix system')."""

    def save_global(self, obj, name=None):
        if obj is os.system:
            self.write(pickle.GLOBAL + b"os\nsystem\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def make_evil():
    mod = types.ModuleType("evil_pickle")
    mod.Pickler = _EvilPickler
    mod.Unpickler = pickle.Unpickler
    path = os.path.join(LORA_DIR, "evil_lora.pt")
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    torch.save({f"{name}.lora_down.weight": torch.zeros(4, 32, 1, 1, dtype=torch.float32),
                f"{name}.lora_up.weight": torch.zeros(32, 4, 1, 1, dtype=torch.float32),
                "payload": _Evil()}, path, pickle_module=mod, pickle_protocol=2)
    import zipfile
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"cos\nsystem\n" in data and b"echo pwned" in data and pickle.REDUCE in data, "evil pickle not as meant"


# ---------------------------------------------------------------------------------------------- application
class ConvertingTokenizer:
    """Stands in for a CLIPTokenizer in Family.encode: the prompt first goes through diffusers' maybe_convert_prompt
    (multi-vector embeddings expand to `name name_1 ...`), as StableDiffusion(XL)Pipeline.encode_prompt does."""

    def __init__(self, pipe, tok):
        self.pipe, self.tok = pipe, tok

    def __call__(self, text, **kw):
        return self.tok(self.pipe.maybe_convert_prompt(text, self.tok), **kw)


def wrap_pipeline(fam):
    if fam.sdxl:
        sched = EulerDiscreteScheduler.from_config(fam.scheduler_config)
        return StableDiffusionXLPipeline(vae=fam.vae, text_encoder=fam.text_encoder, text_encoder_2=fam.text_encoder_2,
                                         tokenizer=fam.tokenizer, tokenizer_2=fam.tokenizer_2, unet=fam.unet,
                                         scheduler=sched, force_zeros_for_empty_prompt=fam.force_zeros,
                                         add_watermarker=False)
    sched = PNDMScheduler.from_config(fam.scheduler_config)
    return StableDiffusionPipeline(vae=fam.vae, text_encoder=fam.text_encoder, tokenizer=fam.tokenizer,
                                   unet=fam.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load_embeddings(pipe, files):
    for f in files:
        path = os.path.join(LORA_DIR, f)
        if f == "sdxl_emb.safetensors":
            with safe_open(path, "pt") as sf:
                sd = {k: sf.get_tensor(k) for k in sf.keys()}
            pipe.load_textual_inversion(sd["clip_l"], token=stem(f), text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(sd["clip_g"], token=stem(f), text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        elif f == "sd1_learned_embeds.safetensors":
            pipe.load_textual_inversion(path)  # its own token, <cat-toy>
        else:
            pipe.load_textual_inversion(path, token=stem(f))


def adapter_name(f):
    return stem(f).replace(".", "_") + ("_pt" if f.endswith(".pt") else "")


def apply_own_merge(fam, f, weight, own):
    mods = {c: modules(m) for c, m in components(fam).items()}
    with torch.no_grad():
        for (comp, m), delta in own[stem(f)].items():
            mods[comp][m].weight += weight * delta


def prepare(case, own):
    """A fresh float64 Family with the case's LoRAs fused and embeddings loaded; returns (family, pipe)."""
    fam = load_family(case["model"])
    pipe = wrap_pipeline(fam)
    names, weights = [], []
    for f, w in case["loras"]:
        if stem(f) in OWN_MERGE:
            apply_own_merge(fam, f, w, own)
        else:
            pipe.load_lora_weights(os.path.join(LORA_DIR, f), adapter_name=adapter_name(f))
            names.append(adapter_name(f))
            weights.append(w)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
    load_embeddings(pipe, case["embeddings"])
    fam.tokenizer = ConvertingTokenizer(pipe, pipe.tokenizer)
    if fam.sdxl:
        fam.tokenizer_2 = ConvertingTokenizer(pipe, pipe.tokenizer_2)
    return fam, pipe


def snapshot(fam):
    return {(c, k): v.detach().clone() for c, m in components(fam).items() for k, v in params(m).items()}


def diffusers_delta(model, f, weight=1.0):
    """{(component, param): float64 delta} of diffusers' load + fuse at `weight` on fresh float64 models."""
    fam = load_family(model)
    before = snapshot(fam)
    pipe = wrap_pipeline(fam)
    name = adapter_name(f)
    pipe.load_lora_weights(os.path.join(LORA_DIR, f), adapter_name=name)
    pipe.set_adapters([name], adapter_weights=[weight])
    pipe.fuse_lora(adapter_names=[name], lora_scale=1.0)
    pipe.unload_lora_weights()
    after = snapshot(fam)
    assert set(after) == set(before), f"{f}: parameter set changed after unload"
    return {k: after[k] - before[k] for k in before if not torch.equal(after[k], before[k])}


def compare_deltas(label, got, want, fam):
    """got: {(comp, param)}; want: {(comp, module)} -> ok."""
    want_p = {(c, f"{m}.weight"): d for (c, m), d in want.items()}
    ok = set(got) == set(want_p)
    if not ok:
        print(f"  {label}: diffusers changed {sorted(set(got) - set(want_p))}, "
              f"skipped {sorted(set(want_p) - set(got))}")
    base = {(c, k): v for c, m in components(fam).items() for k, v in params(m).items()}
    worst = 0.0
    for k in set(got) & set(want_p):
        err = (got[k] - want_p[k]).abs().max().item() / base[k].abs().max().item()
        worst = max(worst, err)
    ok &= worst <= 1e-12
    print(f"check {label}: diffusers' fused delta vs own formula, {len(want_p)} modules, max err / max |W| "
          f"{worst:.3g} {'OK' if ok else 'FAIL'}")
    return ok


# ---------------------------------------------------------------------------------------------- cross-check
def cross_check(cases, latents):
    """diffusers' float32 pipelines (adapters unfused, set_adapters weights) against the float64 references."""
    ok = True
    torch.set_default_dtype(torch.float32)
    try:
        for c in cases:
            if c["sampler"] not in ("k_euler", "lcm") or c["init_image"] is not None or any(
                    stem(f) in OWN_MERGE for f, _ in c["loras"]):
                continue
            folder = os.path.join(FIXTURES, c["model"])
            if c["model"] == "tiny-sdxl":
                pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                                 add_watermarker=False)
            elif c["sampler"] == "lcm":
                # LCM-LoRA use: the model's own scheduler config, LCMScheduler.from_config (as the LCM-LoRA model
                # cards do); guidance_scale <= 1 and no time_cond_proj_dim: no CFG, no timestep_cond
                pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                               safety_checker=None, requires_safety_checker=False)
                pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                               safety_checker=None, requires_safety_checker=False)
                # k-diffusion's Karras sigmas over the whole schedule = Euler, linspace spacing, use_karras_sigmas
                assert c["steps"] < c["karras_max"]
                pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace",
                                                                    use_karras_sigmas=True)
            pipe.scheduler.alphas_cumprod = fr.Family.ldm_alphas_cumprod()
            if isinstance(pipe.scheduler, LCMScheduler):
                sched = pipe.scheduler
                sched.final_alpha_cumprod = (torch.tensor(1.0) if sched.config.set_alpha_to_one
                                             else sched.alphas_cumprod[0])
            pipe.set_progress_bar_config(disable=True)
            names = [adapter_name(f) for f, _ in c["loras"]]
            for f, _ in c["loras"]:
                pipe.load_lora_weights(os.path.join(LORA_DIR, f), adapter_name=adapter_name(f))
            if names:
                pipe.set_adapters(names, adapter_weights=[w for _, w in c["loras"]])
            load_embeddings(pipe, c["embeddings"])
            g = torch.Generator("cpu").manual_seed(c["seed"])
            noise = torch.randn([1, 4, c["height"] // 8, c["width"] // 8], generator=g, dtype=torch.float32)
            neg = {} if c["negative"] is None else {"negative_prompt": c["negative"]}
            lat = pipe(c["prompt"], height=c["height"], width=c["width"], num_inference_steps=c["steps"],
                       guidance_scale=c["cfg"], latents=noise, generator=g, output_type="latent", **neg).images
            want = latents[c["name"]]
            err = ((lat.double() - want).abs().max() / want.abs().max()).item()
            good = err <= 1e-4
            ok &= good
            print(f"check {c['name']} vs diffusers {pipe.__class__.__name__} + {pipe.scheduler.__class__.__name__} "
                  f"(float32): max abs diff / max |latents| {err:.3g} {'OK' if good else 'FAIL'}")
    finally:
        torch.set_default_dtype(torch.float64)
    return ok


# ---------------------------------------------------------------------------------------------- main
def main():
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    fr.allow_single_value_group_norm()  # LCM runs tiny-sd's UNet at batch 1 (no CFG): see make_family_reference.py
    os.makedirs(LORA_DIR, exist_ok=True)
    ok = True

    # ---- fixture files
    sd1, sdxl, sd2 = load_family("tiny-sd"), load_family("tiny-sdxl"), load_family("tiny-sd2")
    kohya, kohya_map = make_sd1_kohya(sd1)
    save_file(kohya, os.path.join(LORA_DIR, "sd1_kohya_locon.safetensors"))
    torch.save(dict(kohya), os.path.join(LORA_DIR, "sd1_kohya_locon.pt"))
    loha, loha_map = make_loha(sd1)
    save_file(loha, os.path.join(LORA_DIR, "sd1_loha.safetensors"))
    lokr, lokr_map = make_lokr(sd1)
    save_file(lokr, os.path.join(LORA_DIR, "sd1_lokr.safetensors"))
    make_peft(os.path.join(FIXTURES, "tiny-sd"))
    xl, xl_map = make_sdxl_kohya(sdxl)
    save_file(xl, os.path.join(LORA_DIR, "sdxl_kohya.safetensors"))
    make_embeddings(sd1, sdxl)
    make_evil()
    sd2k, sd2k_map = make_sd2_kohya(sd2)
    save_file(sd2k, os.path.join(LORA_DIR, "sd2_kohya.safetensors"))
    make_sd2_embedding(sd2)

    # ---- expected deltas (own float64 formulas), {(component, module): delta}
    sd1_mods = {c: modules(m) for c, m in components(sd1).items()}
    expect = {
        "sd1_kohya_locon": {kohya_map[n]: d for n, d in kohya_expect(kohya).items()},
        "sdxl_kohya": {xl_map[n]: d for n, d in kohya_expect(xl).items()},
        "sd2_kohya": {sd2k_map[n]: d for n, d in kohya_expect(sd2k).items()},
        "sd1_loha": {}, "sd1_lokr": {},
    }
    for name, (comp, m) in loha_map.items():
        w = {k[len(name) + 1:]: v for k, v in loha.items() if k.startswith(name + ".")}
        a = w["alpha"].item() if "alpha" in w else None
        expect["sd1_loha"][(comp, m)] = loha_delta(w["hada_w1_a"], w["hada_w1_b"], w["hada_w2_a"], w["hada_w2_b"], a,
                                                   sd1_mods[comp][m].weight.shape)
    for name, (comp, m) in lokr_map.items():
        w = {k[len(name) + 1:]: v for k, v in lokr.items() if k.startswith(name + ".")}
        expect["sd1_lokr"][(comp, m)] = lokr_delta(w, sd1_mods[comp][m].weight.shape)
    expect["sd1_peft"], peft_meta = peft_expect(os.path.join(LORA_DIR, "sd1_peft.safetensors"))

    # ---- deltas file: diffusers' fused deltas (checked against the formulas) or own merges
    deltas = {}
    for f in LORA_FILES:
        s = stem(f)
        model = model_of(s)
        fam = {"tiny-sd": sd1, "tiny-sdxl": sdxl, "tiny-sd2": sd2}[model]
        if s in OWN_MERGE:
            got = {(c, f"{m}.weight"): d for (c, m), d in expect[s].items()}
        else:
            got = diffusers_delta(model, f)
            ok &= compare_deltas(s, got, expect[s], fam)
        for (c, p), d in sorted(got.items()):
            deltas[f"{s}/{c}/{param_name(model, c, p)}"] = d.float().contiguous()
    # .pt == .safetensors, and linearity in the weight
    got_pt = diffusers_delta("tiny-sd", "sd1_kohya_locon.pt", 0.8)
    ref = {(c, f"{m}.weight"): d for (c, m), d in expect["sd1_kohya_locon"].items()}
    lin = set(got_pt) == set(ref) and max(
        (got_pt[k] - 0.8 * ref[k]).abs().max().item() for k in ref) <= 1e-12
    ok &= lin
    print(f"check sd1_kohya_locon.pt at 0.8 (diffusers) == 0.8 x the .safetensors formula: {'OK' if lin else 'FAIL'}")

    # ---- references
    cases = make_cases()
    lcm = LCMScheduler.from_config(sd1.scheduler_config)
    lcm.set_timesteps(4)
    print(f"LCMScheduler.from_config(tiny-sd's {sd1.scheduler_config['_class_name']} config): "
          f"{ {k: lcm.config[k] for k in LCM_KEYS} }; 4-step timesteps {lcm.timesteps.tolist()}")
    tensors, latents = {}, {}
    base = {}
    for c in cases:
        fam, pipe = prepare(c, expect)
        if c["embeddings"]:
            for label, text in (("prompt", c["prompt"]), ("negative", c["negative"])):
                if text:
                    toks = [pipe.tokenizer] + ([pipe.tokenizer_2] if fam.sdxl else [])
                    for tok in toks:
                        conv = pipe.maybe_convert_prompt(text, tok)
                        ids = tok(conv).input_ids
                        print(f"  {c['name']} {label}: {conv!r} -> {ids}")
        out = fr.generate({c["model"]: fam}, c)
        latents[c["name"]] = out["latents"]
        for k, v in out.items():
            tensors[f"{c['name']}.{k}"] = v.detach().float().contiguous()
        # the same request without LoRAs / embeddings, to show the effect is visible
        key = (c["model"], c["prompt"], c["negative"], c["sampler"], c["steps"], c["cfg"], c["init_image"])
        if key not in base:
            plain = dict(c, loras=[], embeddings=[])
            base[key] = fr.generate({c["model"]: load_family(c["model"])}, plain)["latents"]
        lat = out["latents"]
        change = ((lat - base[key]).abs().max() / base[key].abs().max()).item()
        ok &= change > 0.01
        print(f"{c['name']:24s} latents mean {lat.mean():+.4f} std {lat.std():.4f}; change vs no LoRA/embedding: "
              f"{change:.3f} of max |latents| {'OK' if change > 0.01 else 'FAIL (effect too small)'}")
    same = torch.equal(latents["sd1_kohya_locon_w08"], latents["sd1_kohya_pt_w08"])
    ok &= same
    print(f"check sd1_kohya_pt_w08 == sd1_kohya_locon_w08 bit for bit: {'OK' if same else 'FAIL'}")
    ok &= cross_check(cases, latents)

    # ---- write
    save_file(tensors, os.path.join(FIXTURES, "lora_reference.safetensors"))
    save_file(deltas, os.path.join(FIXTURES, "lora_deltas.safetensors"))
    with open(os.path.join(FIXTURES, "lora_cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    print(f"PEFT metadata (safetensors key lora_adapter_metadata): "
          f"{ {k: v for k, v in peft_meta.items() if k.endswith(('.r', '.lora_alpha', '.target_modules'))} }")
    for s in [stem(f) for f in LORA_FILES]:
        mx = max(v.abs().max().item() for k, v in deltas.items() if k.startswith(s + "/"))
        n = sum(1 for k in deltas if k.startswith(s + "/"))
        print(f"deltas {s}: {n} parameters, max |delta| {mx:.4g}")
    total = 0
    for name in sorted(os.listdir(LORA_DIR)):
        size = os.path.getsize(os.path.join(LORA_DIR, name))
        total += size
        print(f"wrote tests/fixtures/lora/{name}: {size:,d} bytes")
    print(f"tests/fixtures/lora/ total {total:,d} bytes")
    for name in ("lora_cases.json", "lora_reference.safetensors", "lora_deltas.safetensors"):
        print(f"wrote tests/fixtures/{name}: {os.path.getsize(os.path.join(FIXTURES, name)):,d} bytes")
    print(f"{len(cases)} cases, {len(tensors)} reference tensors, {len(deltas)} deltas; checks "
          f"{'PASSED' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
