#!/usr/bin/env python3
"""Reference output of SDXL base's deepest UNet block at its real widths, plus the UNet's SDXL time path, for the
test that crates/ember/tests/fullsize_sdxl.rs runs in CI (its whole-network tests are opt-in, see
make_fullsize_sdxl.py). The SDXL sibling of make_fullsize_block.py, made the same way.

Usage (from the repository root, with the venv of tools/oracle/README.md; ~1 CPU minute, ~7 GB of memory):

    python tools/oracle/make_sdxl_block.py

Made with torch 2.15.0, diffusers 0.42.1 (CPU, float32).

Both pieces come from diffusers' `UNet2DConditionModel` built (on the meta device, no memory) with SDXL base's
configuration, SDXL_UNET below (stabilityai/stable-diffusion-xl-base-1.0's unet/config.json), so they are exactly
SDXL's modules:
  * the time path: `time_proj` (320 sinusoids of the timestep) -> `time_embedding` (320 -> 1280 -> 1280), plus
    `add_time_proj` (256 sinusoids of each of the 6 size/crop ids) joined after the pooled text embedding (1280),
    -> `add_embedding` (2816 -> 1280 -> 1280); temb = their sum. Run by diffusers' own `get_time_embed`,
    `time_embedding`, `get_aug_embed` (UNet2DConditionModel.forward's step 1).
  * `down_blocks[2]`: a CrossAttnDownBlock2D of 1280 channels, in 640 -> 1280: 2 x (ResnetBlock2D with the 1280-wide
    time embedding (a 1x1 conv shortcut in the first) + Transformer2DModel of 10 BasicTransformerBlocks, 20 heads of
    64, cross-attention to 2048-wide states, GEGLU feed-forward, linear proj_in/proj_out), GroupNorm 32, no
    downsampler (it is the last level). 742 M parameters.

No weights are committed: every number comes from ONE call `torch.randn(total, generator=g)` with
`g = torch.Generator("cpu").manual_seed(SEED)`, cut in this order (Ember's TorchRng replays the same stream):
  1. the parameters of `time_embedding`, `add_embedding`, `down_blocks.2`, in the UNet's `state_dict()` order and
     under its names (listed, with shapes, in the file's metadata "params"), each scaled exactly as
     make_fullsize_block.py does (powers of two, so no rounding can differ):
       >= 2-D: randn * 2^-floor(log2(fan_in)/2 + 1/2)  (~ 1/sqrt(fan_in); fan_in = numel / shape[0])
       1-D `*.weight` (norms): 1 + randn/32;  1-D biases: randn/32
  2. hidden_states [2,640,8,8], encoder_hidden_states [2,77,2048], text_embeds [2,1280]: plain randn
Not drawn (in the metadata): timestep 500.5 for both samples (fractional, as k-diffusion passes it), and
time_ids [2,6] = TIME_IDS (original height, width, crop top, left, target height, width; a different row per sample).

Writes tests/fixtures/sdxl_down_block_reference.safetensors (float32):
  temb [2,1280]       the time path's output (time_embedding(time_proj(t)) + add_embedding(...))
  out [2,1280,8,8]    the block's output for hidden_states, temb (the above) and encoder_hidden_states
  metadata "reference", a JSON object: seed, params ([[name, [shape...]], ...]), input_shapes, timestep, time_ids,
  checksums (the sum of every parameter and input in float64, so that a test can tell a random-stream mismatch from
  a wrong block), versions
"""

import json
import math
import os

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "sdxl_down_block_reference.safetensors")
SEED = 22016
PREFIXES = ("time_embedding.", "add_embedding.", "down_blocks.2.")
INPUTS = [("hidden_states", [2, 640, 8, 8]), ("encoder_hidden_states", [2, 77, 2048]), ("text_embeds", [2, 1280])]
TIMESTEP = 500.5
TIME_IDS = [[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1344.0, 16.0, 32.0, 896.0, 1152.0]]

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (diffusers 0.19.0.dev0), every key but "_class_name" and
# "_diffusers_version", as UNet2DConditionModel's keyword arguments. make_fullsize_sdxl.py builds the same UNet.
SDXL_UNET = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    center_input_sample=False,
    class_embed_type=None,
    class_embeddings_concat=False,
    conv_in_kernel=3,
    conv_out_kernel=3,
    cross_attention_dim=2048,
    cross_attention_norm=None,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1,
    dual_cross_attention=False,
    encoder_hid_dim=None,
    encoder_hid_dim_type=None,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_only_cross_attention=None,
    mid_block_scale_factor=1,
    mid_block_type="UNetMidBlock2DCrossAttn",
    norm_eps=1e-05,
    norm_num_groups=32,
    num_attention_heads=None,
    num_class_embeds=None,
    only_cross_attention=False,
    out_channels=4,
    projection_class_embeddings_input_dim=2816,
    resnet_out_scale_factor=1.0,
    resnet_skip_time_act=False,
    resnet_time_scale_shift="default",
    sample_size=128,
    time_cond_proj_dim=None,
    time_embedding_act_fn=None,
    time_embedding_dim=None,
    time_embedding_type="positional",
    timestep_post_act=None,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    upcast_attention=None,
    use_linear_projection=True,
)


def scale_exponent(shape):
    fan_in = math.prod(shape) // shape[0]
    return math.floor(math.log2(fan_in) / 2 + 0.5)  # rounds halves up, as the Rust test does


def main():
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    # Only the modules used here get memory; the rest of the UNet stays on the meta device.
    for name in ("time_embedding", "add_embedding"):
        setattr(unet, name, getattr(unet, name).to_empty(device="cpu").eval())
    unet.down_blocks[2] = unet.down_blocks[2].to_empty(device="cpu").eval()
    block = unet.down_blocks[2]
    assert len(block.attentions) == 2 and block.downsamplers is None
    assert all(len(a.transformer_blocks) == 10 and a.transformer_blocks[0].attn1.heads == 20 for a in block.attentions)

    tensors = {k: v for k, v in unet.state_dict().items() if k.startswith(PREFIXES)}
    params = [(k, list(v.shape)) for k, v in tensors.items()]
    n_params = sum(math.prod(s) for _, s in params)
    total = n_params + sum(math.prod(s) for _, s in INPUTS)
    g = torch.Generator("cpu").manual_seed(SEED)
    flat = torch.randn(total, generator=g)

    checksums, off = {}, 0
    for name, shape in params:
        n = math.prod(shape)
        x = flat[off:off + n].reshape(shape)
        off += n
        p = tensors[name]  # the module's own parameter (state_dict shares storage): filled in place
        if len(shape) >= 2:
            p.copy_(x * 2.0 ** -scale_exponent(shape))
        elif name.endswith(".weight"):
            p.copy_(1.0 + x / 32.0)
        else:
            p.copy_(x / 32.0)
        checksums[name] = float(p.double().sum())
    inputs = {}
    for name, shape in INPUTS:
        n = math.prod(shape)
        inputs[name] = flat[off:off + n].reshape(shape).clone()
        off += n
        checksums[name] = float(inputs[name].double().sum())
    assert off == total
    del flat

    # UNet2DConditionModel.forward, step 1 ("time"), with diffusers' own methods.
    sample = inputs["hidden_states"]  # get_time_embed reads only its batch size, dtype and device
    timestep = torch.tensor([TIMESTEP] * 2)
    time_ids = torch.tensor(TIME_IDS)
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=inputs["encoder_hidden_states"],
                             added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": time_ids})
    temb = emb + aug
    assert unet.time_embed_act is None and unet.class_embedding is None

    out, states = block(inputs["hidden_states"], temb=temb, encoder_hidden_states=inputs["encoder_hidden_states"])
    assert len(states) == 2 and torch.equal(states[-1], out)
    # One metadata entry: safetensors writes several in a random order, and the file must be byte-reproducible.
    meta = {"reference": json.dumps({
        "seed": SEED,
        "params": params,
        "input_shapes": INPUTS,
        "timestep": TIMESTEP,
        "time_ids": TIME_IDS,
        "checksums": checksums,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    })}
    save_file({"temb": temb.contiguous(), "out": out.contiguous()}, OUT, metadata=meta)
    print(f"{len(params)} parameters ({n_params} values); temb max |x| {temb.abs().max():.3f}; "
          f"out {list(out.shape)} std {out.std():.4f} max |out| {out.abs().max():.3f} -> {OUT}")


if __name__ == "__main__":
    main()
