"""Reference outputs of the tiny VAE with diffusers' tiling on (`--vae-tiling`, crates/ember/src/nn/vae.rs).

diffusers' `AutoencoderKL.enable_tiling()` (0.42.1, models/autoencoders/autoencoder_kl.py) encodes an image larger than
`tile_sample_min_size` on either side, and decodes a latent larger than `tile_latent_min_size`, in overlapping tiles
(`_tiled_encode`, `tiled_decode`): tiles start every `int(tile × (1 - tile_overlap_factor))`, edge tiles are cut short
by the border, each tile's first rows/columns are blended (`blend_v`, `blend_h`) with the already-blended tiles above
and to the left, and each tile is cropped to `row_limit` before the tiles are concatenated. Inputs no larger than a
tile take the untiled path.

The tiny VAE's own defaults (config sample_size 64 → tiles of 64 pixels / 8 latents) and a smaller setting (32 / 4)
are both used, on a non-square input (72×104 pixels, 9×13 latents) that gives several overlapping tiles and ragged
edge tiles (down to 8 pixels / 1 latent wide), plus inputs no larger than a 64-pixel tile (64×48 pixels, 8×6 latents).
The overlap factor stays diffusers' 0.25.

The VAE runs in float64 (inputs drawn in float32, so Ember gets exactly the same inputs); outputs are stored rounded
to float32. "Mean" is the posterior mean (`latent_dist.mean`), what Ember's `encode_mean_tiled` returns.

Writes tests/fixtures/vae_tiling_reference.safetensors (float32, CPU):
  input [1,3,72,104], latent [1,4,9,13], small_input [1,3,64,48], small_latent [1,4,8,6]
  for SET in tile64, tile32:
    SET/settings [3] = (tile_sample_min_size, tile_latent_min_size, tile_overlap_factor)
    SET/mean (tiled encode of input), SET/decoded (tiled decode of latent)
  tile64/small_mean, tile64/small_decoded (inputs no larger than a tile: diffusers' untiled path)
Run from the repository root (after make_tiny_model.py):
  /work/torchvenv/bin/python tools/oracle/make_vae_tiling_reference.py
Deterministic (fixed seed).
"""
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd", "vae")
OUT = os.path.join(ROOT, "tests", "fixtures", "vae_tiling_reference.safetensors")
SEED = 2468
# (name, tile_sample_min_size, tile_latent_min_size); None keeps the config's defaults.
SETTINGS = [("tile64", None, None), ("tile32", 32, 4)]


def main():
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator("cpu").manual_seed(SEED)
    ref = {
        "input": torch.rand([1, 3, 72, 104], generator=g) * 2.0 - 1.0,
        "latent": torch.randn([1, 4, 9, 13], generator=g) * 4.0,
        "small_input": torch.rand([1, 3, 64, 48], generator=g) * 2.0 - 1.0,
        "small_latent": torch.randn([1, 4, 8, 6], generator=g) * 4.0,
    }

    vae = AutoencoderKL.from_pretrained(MODEL, torch_dtype=torch.float32).eval().double()
    vae.enable_tiling()
    for name, sample_tile, latent_tile in SETTINGS:
        if sample_tile is not None:
            vae.tile_sample_min_size = sample_tile
            vae.tile_latent_min_size = latent_tile
        settings = (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)
        print(f"{name}: sample tile {settings[0]}, latent tile {settings[1]}, overlap {settings[2]}")
        ref[f"{name}/settings"] = torch.tensor(settings, dtype=torch.float64)
        ref[f"{name}/mean"] = vae.encode(ref["input"].double()).latent_dist.mean
        ref[f"{name}/decoded"] = vae.decode(ref["latent"].double()).sample
        if name == "tile64":
            ref[f"{name}/small_mean"] = vae.encode(ref["small_input"].double()).latent_dist.mean
            ref[f"{name}/small_decoded"] = vae.decode(ref["small_latent"].double()).sample

    save_file({k: v.float().contiguous().clone() for k, v in ref.items()}, OUT, metadata={"torch": torch.__version__})
    for k, v in ref.items():
        print(f"{k:22s} {list(v.shape)} std {v.float().std():.4f}")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
