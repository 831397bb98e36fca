"""Reference outputs of the tiny model's UNet and VAE in `--seamless` mode (crates/ember/src/nn/blocks.rs).

InvokeAI 2.x (ldm/invoke/seamless.py, `configure_model_padding`, tag v2.1.2) switched every Conv2d of the model to
circular padding for --seamless: the input is padded by wrapping around (F.pad mode "circular") and convolved without
padding. Here every `nn.Conv2d` of diffusers' UNet and VAE gets `padding_mode = "circular"`, which does exactly that;
unpadded convolutions (1×1, and the VAE's downsampling that zero-pads explicitly) are unaffected, as in InvokeAI.

The networks run in float64 (inputs drawn in float32, so Ember gets exactly the same inputs): a float32 torch
reference carries torch's own rounding (1.1e-4 on the 5×9 UNet case, as much as the parity bound), so Ember's
float32 result is measured against the exact one. Outputs are stored rounded to float32.

Writes tests/fixtures/seamless_reference.safetensors (float32, CPU):
  unet/sample [2,4,8,8], unet/context [2,77,16], unet/out_t500.5
  unet/odd_sample [1,4,5,9], unet/odd_out_t999
  vae/input [1,3,64,96], vae/mean (encoder mean), vae/latent [1,4,8,12], vae/decoded
Run from the repository root (after make_tiny_model.py):
  /work/torchvenv/bin/python tools/oracle/make_seamless_reference.py
Deterministic (fixed seed).
"""
import os

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd")
OUT = os.path.join(ROOT, "tests", "fixtures", "seamless_reference.safetensors")
SEED = 4321


def make_circular(model):
    count = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding_mode = "circular"
            count += 1
    return count


def main():
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator("cpu").manual_seed(SEED)
    ref = {}

    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), torch_dtype=torch.float32).eval().double()
    print("unet convs:", make_circular(unet))
    ref["unet/sample"] = torch.randn([2, 4, 8, 8], generator=g)
    ref["unet/context"] = torch.randn([2, 77, unet.config.cross_attention_dim], generator=g)
    ref["unet/out_t500.5"] = unet(
        ref["unet/sample"].double(), 500.5, encoder_hidden_states=ref["unet/context"].double()
    ).sample
    ref["unet/odd_sample"] = torch.randn([1, 4, 5, 9], generator=g)
    ctx = ref["unet/context"][:1]
    ref["unet/odd_out_t999"] = unet(ref["unet/odd_sample"].double(), 999.0, encoder_hidden_states=ctx.double()).sample

    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"), torch_dtype=torch.float32).eval().double()
    print("vae convs:", make_circular(vae))
    ref["vae/input"] = torch.rand([1, 3, 64, 96], generator=g) * 2.0 - 1.0
    ref["vae/mean"] = vae.encode(ref["vae/input"].double()).latent_dist.mean
    ref["vae/latent"] = torch.randn([1, 4, 8, 12], generator=g)
    ref["vae/decoded"] = vae.decode(ref["vae/latent"].double()).sample

    save_file({k: v.float().contiguous().clone() for k, v in ref.items()}, OUT, metadata={"torch": torch.__version__})
    for k, v in ref.items():
        print(f"{k:20s} {list(v.shape)} std {v.float().std():.4f}")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
