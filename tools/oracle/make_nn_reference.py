#!/usr/bin/env python3
"""Reference forward outputs of the tiny model's three networks, for crates/ember/tests/nn_parity.rs.

Usage (from the repository root):

    /work/torchvenv/bin/python tools/oracle/make_nn_reference.py

Reads tests/fixtures/tiny-sd/ (made by make_tiny_model.py: diffusers folder, f16 weights), loads every network in
float32 with diffusers / transformers on CPU and writes tests/fixtures/nn_reference.safetensors (float32 except the
int64 token ids; deterministic: inputs come from a seeded torch generator):

  clip/input_ids [3,77] int64        tokenizer(PROMPTS, padding="max_length", max_length=77)
  clip/output    [3,77,16]           CLIPTextModel(ids).last_hidden_state
  unet/sample    [2,4,8,8]           randn
  unet/context   [2,77,16]           randn (stands in for CLIP hidden states)
  unet/out_t999, unet/out_t500.5, unet/out_t1   [2,4,8,8]   unet(sample, t, context).sample, t passed as a Python
                                     float (diffusers turns it into a float64 tensor, then embeds it in float32)
  unet/odd_sample [2,4,5,9]          randn (latent size not divisible by 8: exercises upsample-to-skip-size)
  unet/odd_out_t500.5 [2,4,5,9]      unet(odd_sample, 500.5, context).sample
  vae/input      [1,3,64,96]         uniform in [-1, 1]
  vae/mean       [1,4,8,12]          vae.encode(input).latent_dist.mean (quant_conv applied, not scaled)
  vae/latent     [1,4,8,12]          randn
  vae/decoded    [1,3,64,96]         vae.decode(latent).sample (post_quant_conv applied, unclamped)
"""

import os

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd")
OUT = os.path.join(ROOT, "tests", "fixtures", "nn_reference.safetensors")
PROMPTS = ["a photograph of an astronaut riding a horse", "", "fire, (smoke:1.2) and embers!"]
TIMESTEPS = {"t999": 999.0, "t500.5": 500.5, "t1": 1.0}
SEED = 1234


def main():
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator("cpu").manual_seed(SEED)
    ref = {}

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))
    clip = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), torch_dtype=torch.float32).eval()
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref["clip/input_ids"] = ids.to(torch.int64)
    ref["clip/output"] = clip(ids).last_hidden_state

    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), torch_dtype=torch.float32).eval()
    ref["unet/sample"] = torch.randn([2, 4, 8, 8], generator=g)
    ref["unet/context"] = torch.randn([2, 77, unet.config.cross_attention_dim], generator=g)
    for name, t in TIMESTEPS.items():
        ref[f"unet/out_{name}"] = unet(ref["unet/sample"], t, encoder_hidden_states=ref["unet/context"]).sample
    ref["unet/odd_sample"] = torch.randn([2, 4, 5, 9], generator=g)
    ref["unet/odd_out_t500.5"] = unet(ref["unet/odd_sample"], 500.5, encoder_hidden_states=ref["unet/context"]).sample

    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"), torch_dtype=torch.float32).eval()
    ref["vae/input"] = torch.rand([1, 3, 64, 96], generator=g) * 2.0 - 1.0
    ref["vae/mean"] = vae.encode(ref["vae/input"]).latent_dist.mean
    ref["vae/latent"] = torch.randn([1, 4, 8, 12], generator=g)
    ref["vae/decoded"] = vae.decode(ref["vae/latent"]).sample

    save_file({k: v.contiguous() for k, v in ref.items()}, OUT)
    for k, v in ref.items():
        print(f"{k:24s} {list(v.shape)} {v.dtype} std {v.float().std():.4f}")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
