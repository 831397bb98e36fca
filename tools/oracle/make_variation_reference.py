"""Reference numbers for Ember's variations, Perlin noise and --threshold (crates/ember/src/sample/variation.rs,
sample/perlin.rs, guidance.rs), following InvokeAI 2.1.x (tag v2.1.2) on a CPU device.

What InvokeAI does, re-expressed here with the same torch/numpy operations (so the float32 roundings are the same):
- `Generator.generate_initial_noise`: seed_everything(seed); noise = get_noise(); then for each (v_seed, w) of
  `-V`: seed_everything(v_seed); noise = slerp(w, noise, get_noise()). Sampling then continues on the global torch
  RNG as the last get_noise left it (no reseed).
- `Txt2Img.get_noise`: torch.randn([1, 4, h, w]); with --perlin p: (1 - p) * x + p * get_perlin_noise(w, h), where
  get_perlin_noise stacks 4 × `ldm.util.rand_perlin_2d((h, w), (8, 8))` (each drawing torch.rand(9, 9) from the
  same CPU generator). So every seed's noise, variation seeds included, gets its own Perlin mix before the slerp.
- `Generator.slerp`: numpy on the float32 arrays, lerp when |dot| > 0.9995.
- `ksampler.cfg_apply_threshold` and `CFGDenoiser`'s warm-up (txt2img k-samplers only; warmup = max(0.8·S, S-10)).

Writes tests/fixtures/variation_reference.safetensors (float32, ~60 KB) with:
  rand/seed{S}/n{N}                torch.rand(N) right after torch.manual_seed(S)
  perlin/seed{S}/{H}x{W}           rand_perlin_2d((H, W), (8, 8)) right after torch.manual_seed(S)
  case{i}/noise, case{i}/after     the initial noise of CASES[i] and the torch.randn(shape) drawn after it
  case{i}/spec                     float64 [seed, perlin, h, w, v_seed0, w0, v_seed1, w1, ...]
  slerp/...                        slerp of fixed vectors (both branches)
  threshold/in, threshold/t{T}     cfg_apply_threshold(in, T)
  warmup/S{S}/in, warmup/S{S}/out  CFGDenoiser's per-call thresholded outputs for S steps, threshold WARMUP_T
Run from the repository root:  /work/torchvenv/bin/python tools/oracle/make_variation_reference.py
Deterministic (fixed seeds).
"""
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "variation_reference.safetensors")
)

# (seed, [(variation seed, weight), ...], perlin, latent h, latent w)
CASES = [
    (42, [(7, 0.1)], 0.0, 8, 8),
    (1592514025, [(3, 0.25), (99, 0.5)], 0.0, 12, 10),
    (42, [(42, 0.3)], 0.0, 8, 8),  # the same noise twice: |dot| = 1, InvokeAI's lerp fallback
    (5, [(6, 0.2)], 0.2, 16, 8),
    (11, [], 0.35, 8, 16),
    (1592514025, [(1, 0.1), (2, 0.2), (3, 0.7)], 0.1, 48, 48),  # 384x384: 9216 values, numpy sums in 2 buffers
    (4294967295, [(0, 1.0)], 0.0, 8, 8),  # weight 1: all of the variation seed's noise
]
RAND_SIZES = [1, 5, 16, 81, 100]
PERLIN_SHAPES = [(8, 8), (16, 24), (48, 48), (24, 56)]
THRESHOLDS = [0.0, 0.5, 1.2, 2.0, 5.0, 20.0]
WARMUP_T = 3.0
WARMUP_STEPS = [10, 25]


def rand_perlin_2d(shape, res):
    """ldm.util.rand_perlin_2d with the default fade, on the CPU."""
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    axes = torch.meshgrid(torch.arange(0, res[0], delta[0]), torch.arange(0, res[1], delta[1]), indexing="ij")
    grid = torch.stack(axes, dim=-1) % 1
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)

    def tile(rows, cols):
        return gradients[rows[0] : rows[1], cols[0] : cols[1]].repeat_interleave(d[0], 0).repeat_interleave(d[1], 1)

    def dot(grad, shift):
        g = grid[: shape[0], : shape[1]]
        return (torch.stack((g[..., 0] + shift[0], g[..., 1] + shift[1]), dim=-1) * grad[: shape[0], : shape[1]]).sum(
            dim=-1
        )

    n00 = dot(tile([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile([0, -1], [1, None]), [0, -1])
    n11 = dot(tile([1, None], [1, None]), [-1, -1])
    g = grid[: shape[0], : shape[1]]
    t = 6 * g**5 - 15 * g**4 + 10 * g**3
    return math.sqrt(2) * torch.lerp(torch.lerp(n00, n10, t[..., 0]), torch.lerp(n01, n11, t[..., 0]), t[..., 1])


def get_noise(h, w, perlin):
    """Txt2Img.get_noise on a CPU device (global generator)."""
    x = torch.randn([1, 4, h, w])
    if perlin > 0.0:
        p = torch.stack([rand_perlin_2d((h, w), (8, 8)) for _ in range(4)], dim=0)
        x = (1 - perlin) * x + perlin * p
    return x


def slerp(t, v0, v1, dot_threshold=0.9995):
    """Generator.slerp: numpy on the float32 arrays."""
    v0 = v0.numpy()
    v1 = v1.numpy()
    dot = np.sum(v0 * v1 / (np.linalg.norm(v0) * np.linalg.norm(v1)))
    if np.abs(dot) > dot_threshold:
        v2 = (1 - t) * v0 + t * v1
    else:
        theta_0 = np.arccos(dot)
        sin_theta_0 = np.sin(theta_0)
        theta_t = theta_0 * t
        s0 = np.sin(theta_0 - theta_t) / sin_theta_0
        s1 = np.sin(theta_t) / sin_theta_0
        v2 = s0 * v0 + s1 * v1
    return torch.from_numpy(v2)


def initial_noise(seed, variations, perlin, h, w):
    torch.manual_seed(seed)
    noise = get_noise(h, w, perlin)
    for v_seed, weight in variations:
        torch.manual_seed(v_seed)
        noise = slerp(weight, noise, get_noise(h, w, perlin))
    return noise


def cfg_apply_threshold(result, threshold, scale=0.7):
    if threshold <= 0.0:
        return result
    maxval = 0.0 + torch.max(result).cpu().numpy()
    minval = 0.0 + torch.min(result).cpu().numpy()
    if maxval < threshold and minval > -threshold:
        return result
    if maxval > threshold:
        maxval = min(max(1, scale * maxval), threshold)
    if minval < -threshold:
        minval = max(min(-1, scale * minval), -threshold)
    return torch.clamp(result, min=minval, max=maxval)


class WarmupThreshold:
    """CFGDenoiser's threshold schedule around an already-guided prediction."""

    def __init__(self, threshold, steps):
        self.threshold = threshold
        self.warmup_max = max(0.8 * steps, steps - 10)
        self.warmup = max(self.warmup_max / 10, 1)

    def __call__(self, guided):
        if self.warmup < self.warmup_max:
            thresh = max(1, 1 + (self.threshold - 1) * (self.warmup / self.warmup_max))
            self.warmup += 1
        else:
            thresh = self.threshold
        if thresh > self.threshold:
            thresh = self.threshold
        return cfg_apply_threshold(guided, thresh)


def main():
    torch.set_grad_enabled(False)
    out = {}
    for seed in [0, 42, 1592514025]:
        for n in RAND_SIZES:
            torch.manual_seed(seed)
            out[f"rand/seed{seed}/n{n}"] = torch.rand(n)
    for seed in [3, 1592514025]:
        for h, w in PERLIN_SHAPES:
            torch.manual_seed(seed)
            out[f"perlin/seed{seed}/{h}x{w}"] = rand_perlin_2d((h, w), (8, 8))
    for i, (seed, variations, perlin, h, w) in enumerate(CASES):
        out[f"case{i}/noise"] = initial_noise(seed, variations, perlin, h, w)
        out[f"case{i}/after"] = torch.randn([1, 4, h, w])
        spec = [seed, perlin, h, w] + [x for v in variations for x in v]
        out[f"case{i}/spec"] = torch.tensor(spec, dtype=torch.float64)

    g = torch.Generator().manual_seed(2024)
    a = torch.randn(2, 3, 4, 5, generator=g)
    b = torch.randn(2, 3, 4, 5, generator=g)
    out["slerp/v0"], out["slerp/v1"] = a, b
    for t in [0.0, 0.1, 0.5, 0.9, 1.0]:
        out[f"slerp/t{t}"] = slerp(t, a, b)
    near = a + 0.01 * b  # |dot| > 0.9995: the lerp branch
    out["slerp/near"] = near
    out["slerp/near_t0.3"] = slerp(0.3, a, near)

    x = torch.randn(1, 4, 8, 8, generator=g) * 2.5
    out["threshold/in"] = x
    for t in THRESHOLDS:
        out[f"threshold/t{t}"] = cfg_apply_threshold(x, t)
    small = torch.rand(1, 4, 8, 8, generator=g) * 2.6 - 1.3  # in (-1.3, 1.3): bounds pushed up to ±1
    out["threshold/small_in"] = small
    out["threshold/small_t1.2"] = cfg_apply_threshold(small, 1.2)
    for steps in WARMUP_STEPS:
        calls = steps + 3  # more calls than steps, as Heun/DPM2 make
        ins = torch.randn(calls, 1, 4, 8, 8, generator=g) * 4.0
        wt = WarmupThreshold(WARMUP_T, steps)
        out[f"warmup/S{steps}/in"] = ins
        out[f"warmup/S{steps}/out"] = torch.stack([wt(ins[k]) for k in range(calls)])

    out = {k: v.contiguous().clone() for k, v in out.items()}
    save_file(out, OUT, metadata={"torch": torch.__version__, "numpy": np.__version__})
    print(f"wrote {len(out)} tensors to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
