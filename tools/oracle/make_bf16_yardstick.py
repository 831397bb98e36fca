#!/usr/bin/env python3
"""PyTorch-bf16's own error on the pipeline cases: the yardstick for Ember's bf16 fidelity test.

Runs every case of make_pipeline_reference.py exactly as that script does, but with the three networks in
torch.bfloat16 (inputs cast to bf16 at each network's boundary, outputs back to float64; the samplers stay in float64),
which is what running diffusers with `torch_dtype=torch.bfloat16` does to the networks. Writes, per case, the
relative RMS error of the final latents and of the image against the float64 references in
tests/fixtures/pipeline_reference.safetensors, to tests/fixtures/bf16_yardstick.json.

The random tiny model amplifies rounding (cfg 7.5 on a conditioning that barely depends on the prompt), so absolute
bounds mean little on it; Ember's test compares its own bf16 error with these, case by case.

    /work/torchvenv/bin/python tools/oracle/make_bf16_yardstick.py
"""
import json
import os
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

import make_pipeline_reference as ref

BF16 = torch.bfloat16


class Bf16Vae:
    """The VAE in bf16 behind the two calls the reference script makes."""

    def __init__(self, vae):
        self.vae = vae.to(BF16)

    def encode(self, x):
        mean = self.vae.encode(x.to(BF16)).latent_dist.mean
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean.double()))

    def decode(self, z):
        return SimpleNamespace(sample=self.vae.decode(z.to(BF16)).sample.double())

    def modules(self):
        return self.vae.modules()


class Bf16Model(ref.Model):
    def __init__(self):
        super().__init__()
        self.text_encoder.to(BF16)
        self.unet.to(BF16)
        self.vae = Bf16Vae(self.vae)

    def encode_text(self, text):
        ids = self.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids).last_hidden_state.double()

    def apply_model(self, x, t, cond):
        return self.unet(x.to(BF16), t, encoder_hidden_states=cond.to(BF16)).sample.double()


def rel_rms(got, want):
    got, want = got.double(), want.double()
    return ((got - want).pow(2).sum() / want.pow(2).sum()).sqrt().item()


def main():
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    refs = load_file(os.path.join(ref.FIXTURES, "pipeline_reference.safetensors"))
    model = Bf16Model()
    result = {}
    for c in ref.make_cases():
        ref.set_circular_padding(model, c["seamless"])
        out = ref.generate(model, dict(c))
        ref.set_circular_padding(model, False)
        lat = rel_rms(out["latents"], refs[f"{c['name']}/latents"])
        img = rel_rms(out["image"], refs[f"{c['name']}/image"])
        result[c["name"]] = {"latents_rel_rms": lat, "image_rel_rms": img}
        print(f"{c['name']:34s} torch bf16: latents rel RMS {lat:.2e}  image {img:.2e}")
    path = os.path.join(ref.FIXTURES, "bf16_yardstick.json")
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "cases": result}, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
