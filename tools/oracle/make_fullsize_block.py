#!/usr/bin/env python3
"""Reference output of ONE block of Stable Diffusion 1.5's UNet at its real widths, for the test that
crates/ember/tests/fullsize_parity.rs runs in CI (its whole-network tests are opt-in, see make_fullsize.py).

Usage (from the repository root, with the venv of tools/oracle/README.md; a few seconds, < 1 GB of memory):

    python tools/oracle/make_fullsize_block.py

Made with torch 2.15.0, diffusers 0.42.1 (CPU, float32).

The block is `down_blocks[0]` of diffusers' `UNet2DConditionModel` built with SD 1.5's configuration (taken from
that model, built on the meta device, so it is exactly SD 1.5's block): a CrossAttnDownBlock2D of 320 channels,
2 × (ResnetBlock2D with the 1280-wide time embedding + Transformer2DModel with 8 heads of 40, cross-attention to
768-wide states, GEGLU feed-forward, conv proj_in/proj_out), GroupNorm 32, then the stride-2 Downsample2D.

No weights are committed: every number comes from ONE call `torch.randn(total, generator=g)` with
`g = torch.Generator("cpu").manual_seed(SEED)`, cut in this order (Ember's TorchRng replays the same stream):
  1. the block's parameters in `state_dict()` order (listed, with shapes, in the file's metadata "params"), each
     scaled exactly (powers of two, so no rounding can differ):
       >= 2-D: randn * 2^-floor(log2(fan_in)/2 + 1/2)  (~ 1/sqrt(fan_in); fan_in = numel / shape[0])
       1-D `*.weight` (norms): 1 + randn/32;  1-D biases: randn/32
  2. hidden_states [2,320,16,16], temb [2,1280], encoder_hidden_states [2,77,768]: plain randn
Writes tests/fixtures/sd15_down_block_reference.safetensors (float32):
  out [2,320,8,8]   the block's output (the downsampled hidden states)
  metadata "reference", a JSON object: seed, params ([[name, [shape...]], ...]), input_shapes, checksums (the sum of
  every parameter and input in float64, so that a test can tell a random-stream mismatch from a wrong block),
  versions
"""

import json
import math
import os
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sd15_layout import UNET  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "sd15_down_block_reference.safetensors")
SEED = 22015
INPUTS = [("hidden_states", [2, 320, 16, 16]), ("temb", [2, 1280]), ("encoder_hidden_states", [2, 77, 768])]

# SD 1.5's unet/config.json, the one make_sd15_layout.py (and make_fullsize.py) build.
SD15_UNET = UNET


def scale_exponent(shape):
    fan_in = math.prod(shape) // shape[0]
    return math.floor(math.log2(fan_in) / 2 + 0.5)  # rounds halves up, as the Rust test does


def main():
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    block = unet.down_blocks[0].to_empty(device="cpu").eval()
    params = [(k, list(v.shape)) for k, v in block.state_dict().items()]
    total = sum(math.prod(s) for _, s in params) + sum(math.prod(s) for _, s in INPUTS)
    g = torch.Generator("cpu").manual_seed(SEED)
    flat = torch.randn(total, generator=g)

    checksums, off = {}, 0
    state = {}
    for name, shape in params:
        n = math.prod(shape)
        x = flat[off:off + n].reshape(shape)
        off += n
        if len(shape) >= 2:
            w = x * 2.0 ** -scale_exponent(shape)
        elif name.endswith(".weight"):
            w = 1.0 + x / 32.0
        else:
            w = x / 32.0
        state[name] = w.clone()
        checksums[name] = float(w.double().sum())
    block.load_state_dict(state, strict=True)
    inputs = {}
    for name, shape in INPUTS:
        n = math.prod(shape)
        inputs[name] = flat[off:off + n].reshape(shape).clone()
        off += n
        checksums[name] = float(inputs[name].double().sum())
    assert off == total

    out, states = block(inputs["hidden_states"], temb=inputs["temb"],
                        encoder_hidden_states=inputs["encoder_hidden_states"])
    assert len(states) == 3 and torch.equal(states[-1], out)
    # One metadata entry: safetensors writes several in a random order, and the file must be byte-reproducible.
    meta = {"reference": json.dumps({
        "seed": SEED,
        "params": params,
        "input_shapes": INPUTS,
        "checksums": checksums,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    })}
    save_file({"out": out.contiguous()}, OUT, metadata=meta)
    print(f"{len(params)} parameters ({total - sum(math.prod(s) for _, s in INPUTS)} values); "
          f"out {list(out.shape)} std {out.std():.4f} max |out| {out.abs().max():.3f} -> {OUT}")


if __name__ == "__main__":
    main()
