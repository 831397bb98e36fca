#!/usr/bin/env python3
"""Stable Diffusion 1.5's full-size tensor layout, without weights: the names and shapes of every tensor in a diffusers
folder and in an original CompVis/LDM single-file checkpoint, for crates/ember/tests/fullsize_formats.rs, which writes
random weights both ways at test time and checks that the two give identical pixels.

Usage (from the repository root, with the venv of tools/oracle/README.md; seconds, no weights are allocated):

    python tools/oracle/make_sd15_layout.py

Made with torch 2.15.0, diffusers 0.42.1, transformers 5.24.0.

Writes tests/fixtures/sd15-layout/ (deterministic, re-running rewrites identical files):
  unet/config.json, vae/config.json, text_encoder/config.json
      the configs diffusers / transformers write for SD 1.5's networks (the sizes of make_fullsize.py: UNet
      320/640/1280/1280 with cross-attention 768 and 8 heads, VAE 128/256/512/512, CLIP ViT-L/14 text tower)
  keys.tsv
      one line per tensor: component, diffusers name, diffusers shape, LDM name, LDM shape (shapes comma-separated;
      the LDM shape differs only for the VAE's mid-attention q/k/v/proj_out, stored as 1x1 convolutions)

The networks are built on torch's meta device (shapes only). The diffusers -> LDM names come from make_tiny_model.py's
converter, and are verified here against diffusers' own single-file converters (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint): every LDM tensor is a distinct constant (an expanded
scalar, no memory), and converting the LDM dict back must put each constant under its diffusers name, shape
included. So the table is diffusers' layout, not Ember's (Ember's own LDM key map is what the test exercises).
"""

import json
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_model import ROOT, clip_hf_keys, clip_to_ldm, unet_to_ldm, vae_to_ldm  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "sd15-layout")

# The same networks as make_fullsize.py's build_models().
UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32, attention_head_dim=8,
    cross_attention_dim=768, use_linear_projection=False, flip_sin_to_cos=True, freq_shift=0)
VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
    eos_token_id=49407, pad_token_id=49407)


def marked(sd):
    """Each tensor replaced by a distinct constant of its shape (id = position + 1), without allocating it."""
    return {k: torch.tensor(float(i + 1)).expand(v.shape) for i, (k, v) in enumerate(sd.items())}


def check_same(what, ours, theirs):
    """`theirs` (diffusers' conversion of our LDM dict) must hold our tensors under the same names and shapes."""
    if set(ours) != set(theirs):
        raise SystemExit(f"{what}: names differ: only ours {sorted(set(ours) - set(theirs))[:5]}, "
                         f"only diffusers' {sorted(set(theirs) - set(ours))[:5]}")
    for k, v in ours.items():
        t = theirs[k]
        if tuple(t.shape) != tuple(v.shape) or t.reshape(-1)[0].item() != v.reshape(-1)[0].item():
            raise SystemExit(f"{what}: {k} is not the tensor it should be")
    print(f"verified against diffusers' converter: {what}, {len(ours)} tensors")


def main():
    torch.set_grad_enabled(False)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP))

    components = {
        "unet": (marked(unet.state_dict()), unet_to_ldm),
        "vae": (marked(vae.state_dict()), vae_to_ldm),
        "text_encoder": (marked(clip_hf_keys(text_encoder.state_dict())), clip_to_ldm),
    }
    rows, ldm_all = [], {}
    for comp, (sd, to_ldm) in components.items():
        ldm = to_ldm(sd)
        if len(ldm) != len(sd):
            raise SystemExit(f"{comp}: the converter merged or dropped tensors")
        by_mark = {v.reshape(-1)[0].item(): (k, v) for k, v in ldm.items()}
        for k, v in sd.items():
            ldm_key, ldm_v = by_mark[v.reshape(-1)[0].item()]
            shape = ",".join(map(str, v.shape))
            rows.append(f"{comp}\t{k}\t{shape}\t{ldm_key}\t{','.join(map(str, ldm_v.shape))}")
        ldm_all.update(ldm)

    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint)
    check_same("unet", components["unet"][0], convert_ldm_unet_checkpoint(dict(ldm_all), dict(unet.config)))
    check_same("vae", components["vae"][0], convert_ldm_vae_checkpoint(dict(ldm_all), dict(vae.config)))
    clip = {k: v for k, v in convert_ldm_clip_checkpoint(dict(ldm_all)).items() if not k.endswith("position_ids")}
    check_same("text_encoder", components["text_encoder"][0], clip_hf_keys(clip))

    for sub, model in (("unet", unet), ("vae", vae)):
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)
        model.save_config(os.path.join(OUT, sub))
    os.makedirs(os.path.join(OUT, "text_encoder"), exist_ok=True)
    text_encoder.config.architectures = ["CLIPTextModel"]
    text_encoder.config.dtype = torch.float16  # the weights the test writes are f16, as make_fullsize.py's
    text_encoder.config.save_pretrained(os.path.join(OUT, "text_encoder"))
    with open(os.path.join(OUT, "keys.tsv"), "w") as f:
        f.write("# component\tdiffusers name\tshape\tLDM name\tLDM shape  (tools/oracle/make_sd15_layout.py)\n")
        f.write("\n".join(rows) + "\n")
    counts = {c: len(sd) for c, (sd, _) in components.items()}
    params = {c: sum(v.numel() for v in sd.values()) for c, (sd, _) in components.items()}
    print(json.dumps({"tensors": counts, "parameters": params}))


if __name__ == "__main__":
    main()
