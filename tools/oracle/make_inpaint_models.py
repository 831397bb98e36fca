#!/usr/bin/env python3
"""Make the tiny 9-channel inpainting models and the mask fixtures.

Usage (from the repository root, after make_tiny_model.py and make_family_models.py, whose helpers it imports):

    python tools/oracle/make_inpaint_models.py

Writes (deterministic: one fixed torch seed per model, CPU, float16 weights):
  tests/fixtures/tiny-sd-inpaint/              diffusers StableDiffusionInpaintPipeline folder: tiny-sd's exact UNet
                                               config with in_channels 9 (new random weights: default init +
                                               0.02*randn, f16-rounded, as make_tiny_model.py), and tiny-sd's vae/,
                                               text_encoder/, tokenizer/, scheduler/ files copied byte for byte;
                                               model_index.json = tiny-sd's with _class_name
                                               StableDiffusionInpaintPipeline
  tests/fixtures/tiny-sd-inpaint.safetensors   the same model as one file in the original LDM layout
                                               (make_tiny_model.ldm_state_dict: model.diffusion_model.* with
                                               input_blocks.0.0.weight [32,9,3,3], first_stage_model.*,
                                               cond_stage_model.transformer.text_model.*, plus the EMA / betas /
                                               position_ids keys real files carry), f16
  tests/fixtures/tiny-sdxl-inpaint/            diffusers StableDiffusionXLInpaintPipeline folder: tiny-sdxl's UNet
                                               config with in_channels 9 (new random weights), every other component
                                               copied byte for byte from tiny-sdxl/; model_index.json = tiny-sdxl's
                                               with _class_name StableDiffusionXLInpaintPipeline and
                                               requires_aesthetics_score false (no single file)
  tests/fixtures/mask-64x96.png                mode L, 64 wide x 96 high, white (255) = repaint, black (0) = keep: an
                                               ellipse and a rectangle whose edges are off the 8-pixel grid, drawn at
                                               8x and box-downscaled (anti-aliased grays at the edges)
  tests/fixtures/init-64x96-alpha.png          RGBA: init-64x96.png's RGB, alpha 0 exactly where mask-64x96.png
                                               binarises to repaint (value >= 128), 255 elsewhere

Verified (exit status 1 otherwise): diffusers' convert_ldm_{unet,vae,clip}_checkpoint and
StableDiffusionInpaintPipeline.from_single_file (folder as config, text encoder passed in as make_tiny_model.py does)
give back every tensor of tiny-sd-inpaint/ bit-exactly; both folders load with from_pretrained to the same weights;
the copied files are byte-identical to their sources; the alpha image's RGB equals init-64x96.png's and its alpha is
the binarised mask.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from diffusers import (AutoencoderKL, StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel

import make_family_models as fm  # perturb, write_json, file_sizes
import make_tiny_model as mt  # ldm_state_dict, compare, clip_hf_keys

FIXTURES = mt.FIXTURES
ROOT = mt.ROOT
SEEDS = {"tiny-sd-inpaint": 20240607, "tiny-sdxl-inpaint": 20240608}
COPIED = {
    "tiny-sd-inpaint": ("tiny-sd", ["vae", "text_encoder", "tokenizer", "scheduler"]),
    "tiny-sdxl-inpaint": ("tiny-sdxl", ["vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                        "scheduler"]),
}
PIPELINE_CLASS = {"tiny-sd-inpaint": "StableDiffusionInpaintPipeline",
                  "tiny-sdxl-inpaint": "StableDiffusionXLInpaintPipeline"}


def build_unet(name):
    """The source model's UNet config with in_channels 9; default init + 0.02*randn, f16-rounded."""
    src = COPIED[name][0]
    cfg = UNet2DConditionModel.load_config(os.path.join(FIXTURES, src, "unet"))
    cfg["in_channels"] = 9
    torch.manual_seed(SEEDS[name])
    unet = UNet2DConditionModel.from_config(cfg)
    fm.perturb(unet)
    return unet


def write_folder(name, unet):
    src_name, parts = COPIED[name]
    src, folder = os.path.join(FIXTURES, src_name), os.path.join(FIXTURES, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    for part in parts:
        shutil.copytree(os.path.join(src, part), os.path.join(folder, part), copy_function=shutil.copyfile)
    unet.half().save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    unet.float()
    with open(os.path.join(src, "model_index.json")) as f:
        index = json.load(f)
    index["_class_name"] = PIPELINE_CLASS[name]
    if "text_encoder_2" in parts:
        index["requires_aesthetics_score"] = False  # as diffusers/stable-diffusion-xl-1.0-inpainting-0.1
    fm.write_json(os.path.join(folder, "model_index.json"), index)
    return folder


def check_copies(name):
    src_name, parts = COPIED[name]
    ok = True
    for part in parts:
        a_dir, b_dir = os.path.join(FIXTURES, src_name, part), os.path.join(FIXTURES, name, part)
        if sorted(os.listdir(a_dir)) != sorted(os.listdir(b_dir)):
            ok = False
        for f in os.listdir(a_dir):
            with open(os.path.join(a_dir, f), "rb") as x, open(os.path.join(b_dir, f), "rb") as y:
                ok &= x.read() == y.read()
    ucfg = json.load(open(os.path.join(FIXTURES, src_name, "unet", "config.json")))
    ncfg = json.load(open(os.path.join(FIXTURES, name, "unet", "config.json")))
    diff = {k for k in set(ucfg) | set(ncfg) if ucfg.get(k) != ncfg.get(k)}
    ok &= diff == {"in_channels"} and ncfg["in_channels"] == 9
    print(f"verify {name}: {', '.join(parts)} byte-identical to {src_name}'s, unet config differs only in "
          f"in_channels (9): {'OK' if ok else 'FAIL (' + str(diff) + ')'}")
    return ok


def verify_sd(ldm, unet, vae, te, single_file, folder):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint)
    ok = True
    ckpt = dict(ldm)
    ok &= mt.compare("inpaint convert_ldm_unet_checkpoint", unet.state_dict(),
                     convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    ok &= mt.compare("inpaint convert_ldm_vae_checkpoint", vae.state_dict(),
                     convert_ldm_vae_checkpoint(ckpt, dict(vae.config)))
    clip = {k: v for k, v in convert_ldm_clip_checkpoint(ckpt).items() if not k.endswith("position_ids")}
    ok &= mt.compare("inpaint convert_ldm_clip_checkpoint", mt.clip_hf_keys(te.state_dict()), clip)
    try:
        te_conv = CLIPTextModel(te.config)
        te_conv.load_state_dict({k[len("text_model."):]: v for k, v in clip.items()}, strict=True)
        pipe = StableDiffusionInpaintPipeline.from_single_file(
            single_file, config=folder, local_files_only=True, text_encoder=te_conv, torch_dtype=torch.float32,
            safety_checker=None, requires_safety_checker=False)
        ok &= mt.compare("inpaint from_single_file unet", unet.state_dict(), pipe.unet.state_dict())
        ok &= mt.compare("inpaint from_single_file vae", vae.state_dict(), pipe.vae.state_dict())
        ok &= fm.check("inpaint from_single_file unet in_channels 9", pipe.unet.config.in_channels == 9)
    except Exception as e:  # noqa: BLE001
        print(f"verify inpaint from_single_file: could not run ({type(e).__name__}: {e})")
        ok = False
    return ok


def verify_loads(folder, cls, unet):
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32, **(
        {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionInpaintPipeline else {}))
    ok = mt.compare(f"{os.path.basename(folder)}/unet via {cls.__name__}.from_pretrained", unet.state_dict(),
                    pipe.unet.state_dict())
    return ok


# ---------------------------------------------------------------- masks
def write_masks():
    """mask-64x96.png: an ellipse and a rectangle (edges off the 8-px grid), supersampled 8x then box-downscaled so
    the edges carry gray values; init-64x96-alpha.png: alpha 0 where the mask binarises to repaint (>= 128)."""
    w, h, ss = 64, 96, 8
    big = Image.new("L", (w * ss, h * ss), 0)
    d = ImageDraw.Draw(big)
    d.ellipse([round(10.3 * ss), round(7.6 * ss), round(47.7 * ss), round(53.2 * ss)], fill=255)
    d.rectangle([round(27.4 * ss), round(58.7 * ss), round(58.3 * ss) - 1, round(83.5 * ss) - 1], fill=255)
    mask = big.resize((w, h), Image.BOX)
    mask.save(os.path.join(FIXTURES, "mask-64x96.png"), optimize=True)
    m = np.asarray(mask)
    rgb = np.asarray(Image.open(os.path.join(FIXTURES, "init-64x96.png")).convert("RGB"))
    alpha = np.where(m >= 128, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(os.path.join(FIXTURES, "init-64x96-alpha.png"),
                                                          optimize=True)
    # Read both back.
    m2 = np.asarray(Image.open(os.path.join(FIXTURES, "mask-64x96.png")))
    a2 = Image.open(os.path.join(FIXTURES, "init-64x96-alpha.png"))
    arr = np.asarray(a2)
    ok = (Image.open(os.path.join(FIXTURES, "mask-64x96.png")).mode == "L" and m2.shape == (96, 64)
          and a2.mode == "RGBA" and np.array_equal(arr[..., :3], rgb) and np.array_equal(arr[..., 3], alpha)
          and np.array_equal(np.asarray(a2.convert("RGB")), rgb))
    binar = m2 >= 128
    gray = int(((m2 > 0) & (m2 < 255)).sum())
    latent = binar[::8, ::8]
    print(f"mask-64x96.png: repaint {binar.mean():.1%} of pixels, {gray} anti-aliased gray pixels, "
          f"latent mask (pixel (8i,8j)) {latent.sum()}/{latent.size} ones")
    ok &= 0.3 <= binar.mean() <= 0.5 and gray > 0
    return fm.check("mask / alpha fixtures (read back: mode, size, RGB kept under alpha 0, coverage 30-50%)", ok)


def main():
    torch.use_deterministic_algorithms(True)
    ok = True

    # A. tiny-sd-inpaint (folder + single LDM file)
    unet = build_unet("tiny-sd-inpaint")
    folder = write_folder("tiny-sd-inpaint", unet)
    ok &= check_copies("tiny-sd-inpaint")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    ldm = mt.ldm_state_dict(unet, vae, te)
    single = os.path.join(FIXTURES, "tiny-sd-inpaint.safetensors")
    save_file(ldm, single, metadata={"format": "pt"})
    ok &= verify_sd(ldm, unet, vae, te, single, folder)
    ok &= verify_loads(folder, StableDiffusionInpaintPipeline, unet)

    # B. tiny-sdxl-inpaint (folder only)
    unet_xl = build_unet("tiny-sdxl-inpaint")
    folder_xl = write_folder("tiny-sdxl-inpaint", unet_xl)
    ok &= check_copies("tiny-sdxl-inpaint")
    ok &= verify_loads(folder_xl, StableDiffusionXLInpaintPipeline, unet_xl)

    # C. masks
    ok &= write_masks()

    print("files written:")
    fm.file_sizes([folder, single, folder_xl] + [os.path.join(FIXTURES, f)
                                                 for f in ("mask-64x96.png", "init-64x96-alpha.png")])
    print("inpaint model verification:", "PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
