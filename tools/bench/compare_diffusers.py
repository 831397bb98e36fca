#!/usr/bin/env python3
"""Time diffusers/PyTorch on the same shapes `ember bench` measures, and print both side by side.

Both run in this one invocation, one after the other, so the ratios come from the same machine state.
Random weights of the real SD1.5 sizes cost the same as trained ones, so no model file is needed.

    python3 -m venv .venv && .venv/bin/pip install torch diffusers transformers
    .venv/bin/python tools/bench/compare_diffusers.py --ember target/release/ember --dtype f32 --threads 2

--dtype picks the compute precision of both (f32 or bf16). Without --ember only diffusers is timed.
"""
import argparse
import json
import subprocess
import time


def time_min(fn, repeat):
    fn()  # warm-up, as ember bench does
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_diffusers(dtype_name, repeat, threads):
    import resource

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    unet = UNet2DConditionModel(  # diffusers' defaults are SD1.x's UNet
        cross_attention_dim=768, attention_head_dim=8
    ).to(dtype).eval()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
    ).to(dtype).eval()
    clip = CLIPTextModel(  # CLIP ViT-L/14's text tower, as SD 1.x uses
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       max_position_embeddings=77, hidden_act="quick_gelu")
    ).to(dtype).eval()

    out = {"dtype": dtype_name, "threads": threads}
    with torch.inference_mode():
        ids = torch.randint(0, 49407, (2, 77))
        out["clip_s"] = time_min(lambda: clip(ids), repeat)
        ctx = clip(ids).last_hidden_state
        for side in (384, 512):
            x = torch.randn(2, 4, side // 8, side // 8, dtype=dtype)
            t = torch.tensor([500.0, 500.0])
            out[f"unet_step_{side}_s"] = time_min(lambda: unet(x, t, encoder_hidden_states=ctx), repeat)
        img = torch.randn(1, 3, 512, 512, dtype=dtype)
        out["vae_encode_512_s"] = time_min(lambda: vae.encode(img).latent_dist.mean, repeat)
        lat = torch.randn(1, 4, 64, 64, dtype=dtype)
        out["vae_decode_512_s"] = time_min(lambda: vae.decode(lat), repeat)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ember", help="path of the ember binary to run `ember bench --json` with")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    results = {}
    if args.ember:
        cmd = [args.ember, "bench", "--json", "--dtype", args.dtype, "--repeat", str(args.repeat)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results["ember"] = json.loads(proc.stdout.strip().splitlines()[-1])
    results["diffusers"] = bench_diffusers(args.dtype, args.repeat, args.threads)

    keys = ["unet_step_512_s", "unet_step_384_s", "vae_decode_512_s", "vae_encode_512_s", "clip_s", "peak_rss_bytes"]
    print(f"{'measurement':<20} {'diffusers':>12} {'ember':>12} {'ember/diffusers':>16}")
    for k in keys:
        d = results["diffusers"][k]
        e = results.get("ember", {}).get(k)
        ratio = f"{e / d:.2f}" if e else "-"
        fmt = (lambda v: f"{v / 2**30:.2f} GiB") if k == "peak_rss_bytes" else (lambda v: f"{v:.3f}")
        print(f"{k:<20} {fmt(d):>12} {fmt(e) if e else '-':>12} {ratio:>16}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
