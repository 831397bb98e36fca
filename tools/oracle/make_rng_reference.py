"""Reference noise for Ember's torch-compatible RNG (crates/ember/src/sample/rng.rs).

Writes tests/fixtures/torch_randn.safetensors with exact outputs of
`torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))` (float32, CPU):
  seed{S}/n{N}   for S in SEEDS and N in SIZES (a fresh generator each time);
  seq{S}/{i}     consecutive draws from ONE generator seeded with S: randn(4*8*8), randn(4*8*8), randn(5),
                 randn(4*8*8), randn(3) (the small draws exercise torch's cached Box-Muller half).
Run from the repository root:  /work/torchvenv/bin/python tools/oracle/make_rng_reference.py
Deterministic; note torch's vectorised path depends on the CPU capability (AVX2/AVX-512 vs none): the fixture is made
with the default (AVX-512 here, which equals AVX2), as InvokeAI users' x86 machines run it.
"""
import os

import torch
from safetensors.torch import save_file

SEEDS = [0, 1, 42, 1592514025, 4294967295]
SIZES = [1, 2, 7, 15, 16, 17, 31, 33, 256, 4 * 8 * 8, 4 * 48 * 48]
SEQUENCE = [4 * 8 * 8, 4 * 8 * 8, 5, 4 * 8 * 8, 3]
SEQUENCE_SEEDS = [42, 1592514025]


def main():
    out = {}
    for seed in SEEDS:
        for n in SIZES:
            g = torch.Generator("cpu").manual_seed(seed)
            out[f"seed{seed}/n{n}"] = torch.randn(n, generator=g, dtype=torch.float32)
    for seed in SEQUENCE_SEEDS:
        g = torch.Generator("cpu").manual_seed(seed)
        for i, n in enumerate(SEQUENCE):
            out[f"seq{seed}/{i}"] = torch.randn(n, generator=g, dtype=torch.float32)
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "torch_randn.safetensors")
    meta = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.normpath(path), metadata=meta)
    print(f"wrote {len(out)} tensors to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
