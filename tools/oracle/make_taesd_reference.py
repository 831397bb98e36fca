"""Reference outputs of the tiny autoencoder's SD variant (4 latent channels, no pool branch) on random weights,
for crates/ember/tests/taesd_parity.rs (the FLUX.2 variant is checked on madebyollin's trained TAEF2 weights instead).

The network is diffusers 0.42.1's `AutoencoderTiny` with its SD defaults (latent_channels 4, 64 channels, encoder
blocks (1, 3, 3, 3), decoder blocks (3, 3, 3, 1), ReLU, nearest ×2 upsampling), seeded random weights (torch's
default init × 2) rounded to float16, which is how they are stored. References are the raw `EncoderTiny.layers` /
`DecoderTiny` stacks in float32: diffusers' `EncoderTiny.forward` maps its input from [-1, 1] to [0, 1] first and
`DecoderTiny.forward` maps its output from [0, 1] to [-1, 1] last; Ember's convention is taesd.py's ([0, 1] both
ways), so the references skip those two affine maps (the script checks they are the only difference).

One half of the weights is ~2.45 MB in float16, so to keep the fixture small only the decoder is stored, and the
encoder's random weights are the decoder's, rearranged (the 33 64→64 convolutions in order — upsamplers to
downsamplers, block to block —, encoder 0.weight = decoder 19.weight with its two first dimensions swapped, 0.bias =
decoder 1.bias, 14.weight = decoder 1.weight swapped likewise, 14.bias = decoder 3.conv.0.bias[:4]). The test rebuilds
the encoder by the same rule and writes it, with the decoder, as a diffusers-layout `.safetensors` in f16, bf16 and
f32; `diffusers_keys.json` lists the names and shapes diffusers' own state dict has, so that file's layout is
diffusers' own.

Writes tests/fixtures/taesd-tiny/:
  taesd_decoder.pth        the decoder in madebyollin's layout (`1.weight`, `3.conv.0.weight`, …; the nn.Sequential
                           indices of taesd.py's Decoder, i.e. diffusers' decoder.layers.N at N + 1), float16,
                           written by torch.save (the zip format), so it is read through ember-pickle
  diffusers_keys.json      {name: shape} of AutoencoderTiny.state_dict()
  taef2_f64.safetensors    latent [1,32,48,48]: taesd.py's Encoder with the trained TAEF2 weights
                           (../shared/models/taesd/taef2_encoder.pth) run in float64 on the shared oracle's input
                           (../shared/testdata/oracle/taef2_fire_drawing.safetensors), stored as float32: the encoder
                           amplifies rounding (torch's own float32 result is 9.8e-5 from it), so Ember's float64 run is
                           held to this, and its float32 run to the float32 oracle with a bound set from the two
                           (taesd.py is read from the madebyollin/taesd checkout given as TAESD_PY, default /tmp/taesd_ref.py)
  reference.safetensors    float32: input [1,3,64,64] (the top-left 64×64 of tests/fixtures/init-64x96.png, in [0,1]),
                           latent [1,4,8,8] (encoder(input)), noise_latent [1,4,8,8] (seeded randn × 2),
                           decoded_unclamped [1,3,64,64] (decoder(noise_latent)), roundtrip_unclamped [1,3,64,64]
                           (decoder(latent))
Run from the repository root:
  /tmp/venv/bin/python tools/oracle/make_taesd_reference.py
Deterministic (fixed seed).
"""
import collections
import json
import os

import numpy as np
import torch
from diffusers import AutoencoderTiny
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "taesd-tiny")
IMAGE = os.path.join(ROOT, "tests", "fixtures", "init-64x96.png")
SEED = 1357
# torch's default Conv2d init (uniform, std 1/sqrt(3·fan_in)) shrinks a ReLU stack's activations by ~2.5× per
# convolution; scaled by 2 the images and latents come out O(0.1–1) instead of O(0.01), so that rounding errors are
# measured on values of a realistic size.
WEIGHT_GAIN = 2.0

# taesd.py's Sequential indices of the 64→64 3×3 convolutions, in order: encoder downsamplers then blocks' convs,
# decoder upsamplers then blocks' convs (the rule that derives the encoder's weights from the decoder's).
ENC_DOWN, ENC_BLOCKS = [2, 6, 10], [1, 3, 4, 5, 7, 8, 9, 11, 12, 13]
DEC_UP, DEC_BLOCKS = [7, 12, 17], [3, 4, 5, 8, 9, 10, 13, 14, 15, 18]


def square_convs(down, blocks):
    names = [f"{i}.weight" for i in down]
    for b in blocks:
        names += [f"{b}.conv.{j}.weight" for j in (0, 2, 4)] + [f"{b}.conv.{j}.bias" for j in (0, 2, 4)]
    return names


def derive_encoder(dec):
    """The encoder's weights (taesd.py names) from the decoder's (taesd.py names), as the module doc says."""
    enc = {}
    for e, d in zip(square_convs(ENC_DOWN, ENC_BLOCKS), square_convs(DEC_UP, DEC_BLOCKS)):
        enc[e] = dec[d].clone()
    enc["0.weight"] = dec["19.weight"].transpose(0, 1).contiguous()
    enc["0.bias"] = dec["1.bias"].clone()
    enc["14.weight"] = dec["1.weight"].transpose(0, 1).contiguous()
    enc["14.bias"] = dec["3.conv.0.bias"][:4].clone()
    return enc


def main():
    torch.set_grad_enabled(False)
    torch.manual_seed(SEED)
    vae = AutoencoderTiny(latent_channels=4).eval()
    # Decoder weights rounded to float16 (as stored), in taesd.py's names.
    dec = {}
    for k, v in vae.decoder.layers.state_dict().items():
        i, rest = k.split(".", 1)
        dec[f"{int(i) + 1}.{rest}"] = (v * WEIGHT_GAIN).half().float()
    enc = derive_encoder(dec)
    assert set(enc) == set(vae.encoder.layers.state_dict()), "encoder derivation does not cover the encoder"
    vae.encoder.layers.load_state_dict(enc)
    vae.decoder.layers.load_state_dict({f"{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in dec.items()})

    os.makedirs(OUT, exist_ok=True)
    torch.save(
        collections.OrderedDict((k, v.half()) for k, v in sorted(dec.items(), key=lambda kv: int(kv[0].split(".")[0]))),
        os.path.join(OUT, "taesd_decoder.pth"),
    )
    keys = sorted((k, list(v.shape)) for k, v in vae.state_dict().items())
    with open(os.path.join(OUT, "diffusers_keys.json"), "w") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(s)}" for k, s in keys) + "\n}\n")

    rgb = np.asarray(Image.open(IMAGE).convert("RGB"), dtype=np.float32)[:64, :64] / 255.0
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()
    g = torch.Generator("cpu").manual_seed(SEED)
    noise_latent = torch.randn([1, 4, 8, 8], generator=g) * 2.0

    def decode_raw(z):
        return vae.decoder.layers(torch.tanh(z / 3) * 3)

    latent = vae.encoder.layers(x)
    decoded = decode_raw(noise_latent)
    roundtrip = decode_raw(latent)
    # diffusers' public forward differs only by the [-1, 1] maps.
    assert torch.allclose(vae.encoder(x * 2 - 1), latent, atol=1e-5)
    assert torch.allclose(vae.decoder(noise_latent), decoded * 2 - 1, atol=1e-5)
    assert torch.allclose(vae.decode(noise_latent).sample, decoded * 2 - 1, atol=1e-5)  # scaling_factor 1: no scaling
    ref = {
        "input": x,
        "latent": latent,
        "noise_latent": noise_latent,
        "decoded_unclamped": decoded,
        "roundtrip_unclamped": roundtrip,
    }
    save_file({k: v.float().contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    for k, v in ref.items():
        print(f"{k}: {list(v.shape)} min {v.min():.4f} max {v.max():.4f} std {v.std():.4f}")


def taef2_f64():
    import importlib.util

    spec = importlib.util.spec_from_file_location("taesd", os.environ.get("TAESD_PY", "/tmp/taesd_ref.py"))
    taesd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(taesd)
    shared = os.path.join(ROOT, "..", "shared")
    encoder = taesd.Encoder(32, use_midblock_gn=True)
    encoder.load_state_dict(
        torch.load(os.path.join(shared, "models", "taesd", "taef2_encoder.pth"), map_location="cpu", weights_only=True)
    )
    ref = load_file(os.path.join(shared, "testdata", "oracle", "taef2_fire_drawing.safetensors"))
    latent = encoder.double()(ref["input"].double())
    print(f"TAEF2 encoder float64 vs the float32 oracle: {(latent - ref['latent'].double()).abs().max():.3e}")
    save_file({"latent": latent.float().contiguous()}, os.path.join(OUT, "taef2_f64.safetensors"))


if __name__ == "__main__":
    main()
    taef2_f64()
