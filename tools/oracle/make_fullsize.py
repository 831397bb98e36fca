#!/usr/bin/env python3
"""Random weights at the REAL SD1.5 sizes plus reference forward outputs, for an opt-in full-size parity test.

Usage (from the repository root; needs ~10 GB RAM, writes ~2 GB, a few CPU minutes):

    python tools/oracle/make_fullsize.py OUTDIR [--ldm] [--shared ../shared]

Writes (NOT committed):
  OUTDIR/                         diffusers StableDiffusionPipeline folder, f16 safetensors: UNet 320/640/1280/1280
                                  (cross-attention 768, 8 heads), VAE 128/256/512/512, CLIP ViT-L/14 text tower
                                  (768 wide, 12 layers, 12 heads, quick_gelu), tokenizer, PNDM scheduler (SD1.5 config)
  OUTDIR/sd15-random-ldm.safetensors   with --ldm: the same weights in the original CompVis/LDM single-file layout
  OUTDIR/reference.safetensors    float32 forward outputs computed from the f16-rounded weights:
      clip/input_ids [1,77] int64            ids of PROMPT (padded with <|endoftext|> to 77)
      clip/last_hidden_state [1,77,768]
      unet/sample [2,4,64,64]                randn (seed 1)
      unet/timestep [2]                      500.5 (fractional, as k-diffusion passes it)
      unet/encoder_hidden_states [2,77,768]  [CLIP(""), CLIP(PROMPT)]
      unet/out [2,4,64,64]                   unet(sample, timestep, encoder_hidden_states).sample
      vae/image [1,3,256,256]                astronaut photo resized to 256x256, in [-1, 1]
      vae/latent_mean [1,4,32,32]            vae.encode(image).latent_dist.mean (NOT multiplied by 0.18215)
      vae/decoded [1,3,256,256]              vae.decode(vae/latent_mean).sample (unclamped)

Weights are diffusers' default init + 0.02*randn per parameter (seed fixed), then rounded to float16, exactly as
make_tiny_model.py does for the tiny model.
"""

import argparse
import copy
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_model import (  # noqa: E402 - the converter and folder fix-ups are shared with the tiny model
    ROOT, SCHEDULER_CONFIG, compare, finish_tokenizer_folder, ldm_state_dict, prefix_text_encoder_file)

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
SEED = 15001


def build_models():
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=8,
        cross_attention_dim=768,
        use_linear_projection=False,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    with torch.no_grad():
        for model in (unet, vae, text_encoder):
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape))
                p.copy_(p.half().float())
    for m in (unet, vae, text_encoder):
        m.eval()
    return unet, vae, text_encoder


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--ldm", action="store_true", help="also write the LDM single-file layout")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"), help="the shared/ data folder")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    os.makedirs(args.outdir, exist_ok=True)

    unet, vae, text_encoder = build_models()
    tok_dir = os.path.join(args.shared, "models", "clip-tokenizer", "derived")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(text_encoder).half(), tokenizer=tokenizer,
        unet=copy.deepcopy(unet).half(), scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(args.outdir, safe_serialization=True)
    del pipe
    finish_tokenizer_folder(os.path.join(args.outdir, "tokenizer"), tok_dir)
    prefix_text_encoder_file(args.outdir)
    if args.ldm:
        ldm = ldm_state_dict(unet, vae, text_encoder)
        save_file(ldm, os.path.join(args.outdir, "sd15-random-ldm.safetensors"), metadata={"format": "pt"})
        # The tiny VAE (all 32 channels) has no nin_shortcut; the full-size one does, so verify the converter here too.
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
        ok = compare("full-size unet", unet.state_dict(), convert_ldm_unet_checkpoint(dict(ldm), dict(unet.config)))
        ok &= compare("full-size vae", vae.state_dict(), convert_ldm_vae_checkpoint(dict(ldm), dict(vae.config)))
        if not ok:
            raise SystemExit("LDM converter verification FAILED")
        del ldm
    print("weights written", flush=True)

    ref = {}
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer("", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref["clip/input_ids"] = ids
    ref["clip/last_hidden_state"] = text_encoder(ids).last_hidden_state
    uncond = text_encoder(empty).last_hidden_state
    print("clip done", flush=True)

    g = torch.Generator("cpu").manual_seed(1)
    ref["unet/sample"] = torch.randn([2, 4, 64, 64], generator=g)
    ref["unet/timestep"] = torch.tensor([500.5, 500.5])
    ref["unet/encoder_hidden_states"] = torch.cat([uncond, ref["clip/last_hidden_state"]])
    ref["unet/out"] = unet(ref["unet/sample"], ref["unet/timestep"],
                           encoder_hidden_states=ref["unet/encoder_hidden_states"]).sample
    print("unet done", flush=True)

    photo = Image.open(os.path.join(args.shared, "testdata", "skimage-photos", "astronaut.png")).convert("RGB")
    photo = np.asarray(photo.resize((256, 256), Image.LANCZOS), dtype=np.float32)
    ref["vae/image"] = torch.from_numpy(photo / 255.0 * 2.0 - 1.0).permute(2, 0, 1)[None].contiguous()
    ref["vae/latent_mean"] = vae.encode(ref["vae/image"]).latent_dist.mean
    ref["vae/decoded"] = vae.decode(ref["vae/latent_mean"]).sample
    print("vae done", flush=True)

    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(args.outdir, "reference.safetensors"))
    for k, v in ref.items():
        print(f"{k:32s} {list(v.shape)} {v.dtype} std {v.float().std():.4f}")


if __name__ == "__main__":
    main()
