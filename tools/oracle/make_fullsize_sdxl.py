#!/usr/bin/env python3
"""Random weights at SDXL base's REAL sizes plus reference forward outputs, for the opt-in full-size parity tests of
crates/ember/tests/fullsize_sdxl.rs (the SDXL sibling of make_fullsize.py, made the same way).

Usage (from the repository root; writes 6.5 GB; about 3 minutes and 13 GB of memory on 2 cores):

    python tools/oracle/make_fullsize_sdxl.py OUTDIR [--shared ../shared]

Writes (NOT committed):
  OUTDIR/                         a diffusers StableDiffusionXLPipeline folder, f16 safetensors, with SDXL base's
                                  configurations (stabilityai/stable-diffusion-xl-base-1.0's config.json files):
      unet/                       SDXL_UNET of make_sdxl_block.py: 320/640/1280, transformer depth [1, 2, 10], heads
                                  of 64, cross-attention 2048, text_time added embedding (256 per id, 2816 in);
                                  2.57 G parameters
      text_encoder/               CLIPTextModel, CLIP ViT-L/14's text tower (768 wide, 12 layers, quick_gelu)
      text_encoder_2/             CLIPTextModelWithProjection, OpenCLIP ViT-bigG/14's text tower (1280 wide, 32 layers,
                                  20 heads, gelu, text_projection 1280 x 1280); 695 M parameters
      vae/                        AutoencoderKL 128/256/512/512, scaling_factor 0.13025, force_upcast
      tokenizer/, tokenizer_2/    the CLIP vocabulary, padding with <|endoftext|> and "!" (as SDXL base's)
      scheduler/                  EulerDiscreteScheduler, SDXL base's scheduler_config.json
      model_index.json            StableDiffusionXLPipeline, force_zeros_for_empty_prompt
  OUTDIR/reference.safetensors    float32 forward outputs computed from the f16-rounded weights:
      text_encoder/input_ids [2,77] int64       tokenizer(["", PROMPT]) padded to 77
      text_encoder/penultimate [2,77,768]       hidden_states[-2] (what SDXL reads), not normed
      text_encoder_2/input_ids [2,77] int64     tokenizer_2(["", PROMPT]) padded to 77 (with "!", id 0)
      text_encoder_2/penultimate [2,77,1280]
      text_encoder_2/text_embeds [2,1280]       the pooled, projected EOS state (transformers' text_embeds)
      unet/sample [2,4,32,32]                   randn (seed 1)
      unet/timestep [2]                         500.5 (fractional, as k-diffusion passes it)
      unet/encoder_hidden_states [2,77,2048]    the two penultimate states joined along channels (SDXL's context)
      unet/text_embeds [2,1280]                 = text_encoder_2/text_embeds
      unet/time_ids [2,6]                       (orig h, w, crop top, left, target h, w), a different row per sample
      unet/out [2,4,32,32]                      unet(sample, timestep, encoder_hidden_states,
                                                added_cond_kwargs={text_embeds, time_ids}).sample
      vae/image [1,3,256,256]                   astronaut photo resized to 256x256, in [-1, 1]
      vae/latent_mean [1,4,32,32]               vae.encode(image).latent_dist.mean (NOT multiplied by 0.13025)
      vae/decoded [1,3,256,256]                 vae.decode(vae/latent_mean).sample (unclamped)

Weights are diffusers' / transformers' default init + 0.02*randn per parameter (one torch seed per network), then
rounded to float16, exactly as make_fullsize.py does. One network is in memory at a time (the UNet alone is 10 GB in
float32): each is built, run for its references, converted to f16 in place, saved and freed.
"""

import argparse
import gc
import inspect
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_family_models import SDXL_SCHEDULER, patch_scheduler, perturb, write_json  # noqa: E402
from make_sdxl_block import SDXL_UNET  # noqa: E402
from make_tiny_model import ROOT, finish_tokenizer_folder, prefix_text_encoder_file  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
SEEDS = {"text_encoder": 15101, "text_encoder_2": 15102, "vae": 15103, "unet": 15104}
TIMESTEP = 500.5
TIME_IDS = [[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1344.0, 16.0, 32.0, 896.0, 1152.0]]

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json
SDXL_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    force_upcast=True, in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
    sample_size=1024, scaling_factor=0.13025, up_block_types=["UpDecoderBlock2D"] * 4)
# text_encoder/config.json (openai/clip-vit-large-patch14's text tower) and text_encoder_2/config.json
# (laion/CLIP-ViT-bigG-14-laion2B-39B-b160k's); both keep the pre-#24773 eos_token_id 2, so transformers pools at
# the argmax of the ids (the first <|endoftext|>).
SDXL_CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1)
SDXL_CLIP_G = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1)


def built(cls, seed, *args, **kwargs):
    """One network at its default init + 0.02*randn, f16-rounded (make_fullsize.py's rule), in eval mode."""
    torch.manual_seed(seed)
    model = cls(*args, **kwargs)
    perturb(model)
    return model


def free(model):
    del model
    gc.collect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"), help="the shared/ data folder")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    out = args.outdir
    os.makedirs(out, exist_ok=True)
    tok_dir = os.path.join(args.shared, "models", "clip-tokenizer", "derived")
    ref = {}

    # Text encoders, as StableDiffusionXLPipeline.encode_prompt runs them.
    prompts = ["", PROMPT]
    for sub, tok_sub, cls, cfg, pad in (
            ("text_encoder", "tokenizer", CLIPTextModel, SDXL_CLIP_L, "<|endoftext|>"),
            ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection, SDXL_CLIP_G, "!")):
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77, pad_token=pad)
        tokenizer.save_pretrained(os.path.join(out, tok_sub))
        finish_tokenizer_folder(os.path.join(out, tok_sub), tok_dir)
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        model = built(cls, SEEDS[sub], CLIPTextConfig(**cfg))
        result = model(ids, output_hidden_states=True)
        ref[f"{sub}/input_ids"] = ids
        ref[f"{sub}/penultimate"] = result.hidden_states[-2]
        if cls is CLIPTextModelWithProjection:
            ref[f"{sub}/text_embeds"] = result.text_embeds
        model.half()
        model.config.architectures = [cls.__name__]
        model.save_pretrained(os.path.join(out, sub))
        free(model)
        print(f"{sub} done", flush=True)
    # transformers 5 writes CLIPTextModel's keys without "text_model." (CLIPTextModelWithProjection's keep it):
    # SDXL base's files have it, as make_family_models.py's tiny-sdxl.
    prefix_text_encoder_file(out)

    vae = built(AutoencoderKL, SEEDS["vae"], **SDXL_VAE)
    photo = Image.open(os.path.join(args.shared, "testdata", "skimage-photos", "astronaut.png")).convert("RGB")
    photo = np.asarray(photo.resize((256, 256), Image.LANCZOS), dtype=np.float32)
    ref["vae/image"] = torch.from_numpy(photo / 255.0 * 2.0 - 1.0).permute(2, 0, 1)[None].contiguous()
    ref["vae/latent_mean"] = vae.encode(ref["vae/image"]).latent_dist.mean
    ref["vae/decoded"] = vae.decode(ref["vae/latent_mean"]).sample
    vae.half().save_pretrained(os.path.join(out, "vae"))
    free(vae)
    print("vae done", flush=True)

    unet = built(UNet2DConditionModel, SEEDS["unet"], **SDXL_UNET)
    g = torch.Generator("cpu").manual_seed(1)
    ref["unet/sample"] = torch.randn([2, 4, 32, 32], generator=g)
    ref["unet/timestep"] = torch.tensor([TIMESTEP, TIMESTEP])
    ref["unet/encoder_hidden_states"] = torch.cat(
        [ref["text_encoder/penultimate"], ref["text_encoder_2/penultimate"]], dim=-1)
    ref["unet/text_embeds"] = ref["text_encoder_2/text_embeds"].clone()
    ref["unet/time_ids"] = torch.tensor(TIME_IDS)
    ref["unet/out"] = unet(ref["unet/sample"], ref["unet/timestep"],
                           encoder_hidden_states=ref["unet/encoder_hidden_states"],
                           added_cond_kwargs={"text_embeds": ref["unet/text_embeds"],
                                              "time_ids": ref["unet/time_ids"]}).sample
    print(f"unet done ({sum(p.numel() for p in unet.parameters())} parameters)", flush=True)
    unet.half().save_pretrained(os.path.join(out, "unet"))
    free(unet)

    keys = inspect.signature(EulerDiscreteScheduler).parameters
    EulerDiscreteScheduler(**{k: v for k, v in SDXL_SCHEDULER.items() if k in keys}).save_pretrained(
        os.path.join(out, "scheduler"))
    patch_scheduler(out, {k: v for k, v in SDXL_SCHEDULER.items() if k not in keys})
    # What StableDiffusionXLPipeline.save_pretrained writes (see tests/fixtures/tiny-sdxl/model_index.json).
    write_json(os.path.join(out, "model_index.json"), {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "force_zeros_for_empty_prompt": True, "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})

    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    for k, v in ref.items():
        print(f"{k:32s} {list(v.shape)} {v.dtype} std {v.float().std():.4f} max |x| {v.float().abs().max():.3f}")


if __name__ == "__main__":
    main()
