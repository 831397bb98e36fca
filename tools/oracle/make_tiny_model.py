#!/usr/bin/env python3
"""Make the tiny random-weight SD1.5-structured model that Ember's tests load, in three file formats.

Usage (from the repository root, with the venv described in tools/oracle/README.md):

    python tools/oracle/make_tiny_model.py [--shared ../shared]

Writes (deterministic: fixed torch seed, CPU, float16 weights):
  tests/fixtures/tiny-sd/               diffusers folder (StableDiffusionPipeline layout, safetensors, f16)
  tests/fixtures/tiny-sd.safetensors    single file in the original CompVis/LDM key layout (f16), plus keys real
                                        checkpoints carry that a loader must ignore (EMA, betas, position_ids, ...)
  tests/fixtures/tiny-sd.ckpt           torch.save({"state_dict": <same LDM dict>, "global_step": 123, "epoch": 1})
  tests/fixtures/init-64x96.png         64x96 (WxH) RGB crop of skimage's astronaut photo

The networks have SD1.5's exact block structure but tiny widths (UNet 32x4, cross-attention 16; VAE 32x4;
CLIP hidden 16, 2 layers). Every parameter gets +0.02*randn after construction so no weight is exactly 0 or 1
(zero-initialised output layers would make parity tests meaningless), then is rounded to float16: the stored f16
weights are the model; references are computed in float32 from them.

The diffusers->LDM converter here is the inverse of diffusers' single-file loader; it is verified at the end by
converting the LDM dict back with diffusers' own `convert_ldm_*_checkpoint` functions and by loading the file with
`StableDiffusionPipeline.from_single_file`, comparing every tensor with the diffusers model.
"""

import argparse
import copy
import json
import os
import sys

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SEED = 20240601

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    trained_betas=None,
)


def build_models():
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=8,
        cross_attention_dim=16,
        use_linear_projection=False,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    with torch.no_grad():
        for model in (unet, vae, text_encoder):
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape))
                # The f16 files ARE the model: round now so every reference uses exactly the stored values.
                p.copy_(p.half().float())
    for m in (unet, vae, text_encoder):
        m.eval()
    return unet, vae, text_encoder


# ---------------------------------------------------------------- diffusers -> original LDM key layout
def unet_to_ldm(sd):
    """Inverse of diffusers' convert_ldm_unet_checkpoint for the SD1.x layout."""
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    prefixes = {}
    for i in range(4):
        for j in range(2):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{3 * i + j + 1}.0."
            if i < 3:
                prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{3 * i + j + 1}.1."
        for j in range(3):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{3 * i + j}.0."
            if i > 0:
                prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{3 * i + j}.1."
        if i < 3:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{3 * (i + 1)}.0.op."
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    out = {}
    for k, v in sd.items():
        new = None
        for a, b in fixed.items():
            if k.startswith(a):
                new = b + k[len(a):]
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


def vae_to_ldm(sd):
    """Inverse of diffusers' convert_ldm_vae_checkpoint (mid attention stored as 1x1 convs, as the original does)."""
    prefixes = {}
    for i in range(4):
        for j in range(2):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        if i < 3:
            prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{3 - i}.upsample."
        for j in range(3):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{3 - i}.block.{j}."
    for side in ("encoder", "decoder"):
        for j in range(2):
            prefixes[f"{side}.mid_block.resnets.{j}."] = f"{side}.mid.block_{j + 1}."
        prefixes[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        prefixes[f"{side}.conv_norm_out."] = f"{side}.norm_out."
    attn = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for k, v in sd.items():
        new = k
        for a, b in prefixes.items():
            if k.startswith(a):
                rest = k[len(a):]
                if a.endswith("mid_block.attentions.0."):
                    for x, y in attn.items():
                        if rest.startswith(x):
                            rest = y + rest[len(x):]
                            break
                    else:
                        raise KeyError(f"unmapped VAE attention key {k}")
                    if rest.endswith(".weight") and v.ndim == 2 and not rest.startswith("norm."):
                        v = v[:, :, None, None]
                elif rest.startswith("conv_shortcut."):
                    rest = "nin_shortcut." + rest[len("conv_shortcut."):]
                new = b + rest
                break
        out["first_stage_model." + new] = v
    return out


def clip_hf_keys(sd):
    """transformers 5's CLIPTextModel is flat ("embeddings.*"); real SD1.5 files (transformers 4 layout) and the
    LDM checkpoints name its tensors "text_model.embeddings.*". Use the real layout everywhere."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in sd.items() if not k.endswith("position_ids")}


def clip_to_ldm(sd):
    return {"cond_stage_model.transformer." + k: v for k, v in clip_hf_keys(sd).items()}


def prefix_text_encoder_file(folder):
    """Rewrite text_encoder/model.safetensors with SD1.5's "text_model." key prefix (transformers 5 loads both)."""
    path = os.path.join(folder, "text_encoder", "model.safetensors")
    save_file(clip_hf_keys(load_file(path)), path, metadata={"format": "pt"})


def ldm_state_dict(unet, vae, text_encoder):
    sd = {}
    sd.update(unet_to_ldm(unet.state_dict()))
    sd.update(vae_to_ldm(vae.state_dict()))
    sd.update(clip_to_ldm(text_encoder.state_dict()))
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    # Keys real SD1.x checkpoints carry that a loader must ignore.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    sd["betas"] = betas.float()
    sd["alphas_cumprod"] = torch.cumprod(1.0 - betas, 0).float()
    sd["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    sd["model_ema.num_updates"] = torch.tensor(123, dtype=torch.int32)
    for k in ("input_blocks.0.0.weight", "input_blocks.0.0.bias", "out.2.bias"):
        sd["model_ema.diffusion_model" + k.replace(".", "")] = sd["model.diffusion_model." + k].clone()
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return sd


# ---------------------------------------------------------------- verification with diffusers' own loaders
def compare(name, ours, theirs):
    bad = []
    if set(ours) != set(theirs):
        bad.append(f"key sets differ: only ours {sorted(set(ours) - set(theirs))[:5]}, "
                   f"only theirs {sorted(set(theirs) - set(ours))[:5]}")
    for k in set(ours) & set(theirs):
        a, b = ours[k].float(), theirs[k].float().reshape(ours[k].shape)
        if a.shape != b.shape or not torch.equal(a, b):
            bad.append(f"{k} differs")
    print(f"verify {name}: {len(ours)} tensors, {'OK' if not bad else 'FAIL ' + '; '.join(bad[:5])}")
    return not bad


def verify(ldm, unet, vae, text_encoder, single_file):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint)
    ok = True
    ckpt = dict(ldm)
    ok &= compare("convert_ldm_unet_checkpoint", unet.state_dict(),
                  convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    ok &= compare("convert_ldm_vae_checkpoint", vae.state_dict(), convert_ldm_vae_checkpoint(ckpt, dict(vae.config)))
    clip = {k: v for k, v in convert_ldm_clip_checkpoint(ckpt).items() if not k.endswith("position_ids")}
    ok &= compare("convert_ldm_clip_checkpoint", clip_hf_keys(text_encoder.state_dict()), clip)
    # The diffusers folder's text encoder must load (all keys, no leftovers) to the same weights.
    te_loaded, info = CLIPTextModel.from_pretrained(os.path.join(FIXTURES, "tiny-sd"), subfolder="text_encoder",
                                                    torch_dtype=torch.float32, output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        print(f"verify tiny-sd/text_encoder: FAIL {info}")
        ok = False
    ok &= compare("tiny-sd/text_encoder via from_pretrained", clip_hf_keys(text_encoder.state_dict()),
                  clip_hf_keys(te_loaded.state_dict()))
    try:
        # diffusers only auto-detects a CLIP text encoder in a single file by CLIP-L's layer 22, which the
        # 2-layer tiny model lacks; so the text encoder converted above by diffusers' own function is passed in
        # (loaded strictly: every converted key must fit the model).
        te = CLIPTextModel(text_encoder.config)
        te.load_state_dict({k[len("text_model."):]: v for k, v in clip.items()}, strict=True)
        pipe = StableDiffusionPipeline.from_single_file(
            single_file, config=os.path.join(FIXTURES, "tiny-sd"), local_files_only=True, text_encoder=te,
            torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
        ok &= compare("from_single_file unet", unet.state_dict(), pipe.unet.state_dict())
        ok &= compare("from_single_file vae", vae.state_dict(), pipe.vae.state_dict())
    except Exception as e:  # noqa: BLE001 - report, the convert_* checks above still stand
        print(f"verify from_single_file: could not run ({type(e).__name__}: {e})")
        ok = False
    return ok


def finish_tokenizer_folder(out, tok_dir):
    """Make tokenizer/ look like SD1.5's: vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json.
    transformers 5 writes a 3.6 MB tokenizer.json instead; it is dropped (CLIPTokenizer rebuilds the same
    tokenizer from vocab.json + merges.txt) and machine-specific config keys are removed."""
    os.remove(os.path.join(out, "tokenizer.json"))
    for name in ("vocab.json", "merges.txt"):
        with open(os.path.join(tok_dir, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    for k in ("is_local", "local_files_only"):
        cfg.pop(k, None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2, sort_keys=True)


def write_init_image(shared):
    src = Image.open(os.path.join(shared, "testdata", "skimage-photos", "astronaut.png")).convert("RGB")
    # 2:3 (WxH) crop around the astronaut's face and shoulders, then a high-quality downscale.
    crop = src.crop((96, 0, 416, 480)).resize((64, 96), Image.LANCZOS)
    crop.save(os.path.join(FIXTURES, "init-64x96.png"), optimize=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"), help="the shared/ data folder")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    os.makedirs(FIXTURES, exist_ok=True)

    unet, vae, text_encoder = build_models()
    tok_dir = os.path.join(args.shared, "models", "clip-tokenizer", "derived")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    scheduler = PNDMScheduler(**SCHEDULER_CONFIG)

    # (a) diffusers folder, f16 weights.
    folder = os.path.join(FIXTURES, "tiny-sd")
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(text_encoder).half(),
        tokenizer=tokenizer, unet=copy.deepcopy(unet).half(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    finish_tokenizer_folder(os.path.join(folder, "tokenizer"), tok_dir)
    prefix_text_encoder_file(folder)
    # SD1.5's scheduler_config.json also says clip_sample false; PNDM ignores it, but DDIMScheduler.from_config
    # (InvokeAI's ddim) would otherwise default to clipping x0 to [-1, 1].
    sched_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    with open(sched_path) as f:
        sched_cfg = json.load(f)
    sched_cfg["clip_sample"] = False
    with open(sched_path, "w") as f:
        json.dump(sched_cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    # (b) single LDM-layout safetensors and (c) a real torch zip .ckpt with the same dict.
    ldm = ldm_state_dict(unet, vae, text_encoder)
    st_path = os.path.join(FIXTURES, "tiny-sd.safetensors")
    save_file(ldm, st_path, metadata={"format": "pt"})
    torch.save({"state_dict": ldm, "global_step": 123, "epoch": 1}, os.path.join(FIXTURES, "tiny-sd.ckpt"))

    write_init_image(args.shared)

    ok = verify(ldm, unet, vae, text_encoder, st_path)
    print("converter verification:", "PASSED" if ok else "FAILED")
    n = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    print(json.dumps({k: sum(p.numel() for p in m.parameters()) for k, m in n.items()}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
