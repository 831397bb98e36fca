#!/usr/bin/env python3
"""Time diffusers/PyTorch on the same shapes `ember bench` measures, and print both side by side.

Both run in this one invocation, one after the other, so the ratios come from the same machine state.
Random weights of the real SD1.5 sizes cost the same as trained ones, so no model file is needed.

    python3 -m venv .venv && .venv/bin/pip install torch diffusers transformers
    .venv/bin/python tools/bench/compare_diffusers.py --ember target/release/ember --dtype f32 --threads 2

--dtype picks the compute precision of both (f32, f16 or bf16). Without --ember only diffusers is timed.
--family sdxl times SDXL base's networks instead (UNet step 1024×1024 with CFG batch 2 and its text_time inputs,
VAE decode 1024×1024, both text encoders with the pooled embedding), each built, timed and freed in turn on both
sides (`ember bench --family sdxl`); in f32 that needs about 11 GiB per side.
Each measurement is the fastest of --repeat timed runs after one untimed warm-up, on both sides.

--device cuda runs both on the first GPU (the binary must be built with `--features cuda`; see
tools/bench/gpu_bench.sh). Then every timed diffusers call ends with torch.cuda.synchronize() (Ember's bench
copies each result back to the host, which waits for the GPU too), --threads is ignored, and two more rows are
printed: the peak GPU memory of each side, read the same way for both (the GPU's used memory sampled through
NVML or nvidia-smi while that side runs, minus what was used before it started; it includes the CUDA context),
and PyTorch's own torch.cuda.max_memory_allocated (diffusers only). PyTorch runs with its defaults: for f32,
cuDNN convolutions may use TF32 (torch.backends.cudnn.allow_tf32, True by default), matmuls do not; the flags
are in the JSON. Use --repeat 3 or more on a GPU: one run is milliseconds.
"""
import argparse
import json
import subprocess
import sys
import threading
import time


def time_min(fn, repeat, sync=None):
    def run():
        fn()
        if sync:
            sync()

    run()  # warm-up, as ember bench does
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


class GpuMemorySampler:
    """Peak of the GPU's used memory while it runs, minus the used memory before it started (bytes).

    Reads NVML (nvidia-ml-py) when importable, else nvidia-smi; `peak_bytes` is None when neither answers.
    It counts every process on that GPU: run nothing else on it meanwhile.
    """

    def __init__(self, index=0, interval_s=0.02):
        self.index, self.interval_s = index, interval_s
        self._read = self._nvml_reader()
        self.reader = "nvml" if self._read else None
        if not self._read:
            self._read = self._smi_reader()
            self.reader = "nvidia-smi" if self._read else None
        self.baseline = self._read() if self._read else None
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = None

    def _nvml_reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used
        except Exception:
            return None

    def _smi_reader(self):
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]

        def read():
            try:
                return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[0]) << 20
            except Exception:
                return None

        return read if read() is not None else None

    def _loop(self):
        while not self._stop.is_set():
            used = self._read()
            if used is not None:
                self.peak = max(self.peak, used)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        if self._read:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()
            used = self._read()
            if used is not None:
                self.peak = max(self.peak, used)

    @property
    def peak_bytes(self):
        return None if self.baseline is None else self.peak - self.baseline


def bench_diffusers(dtype_name, repeat, threads, device="cpu"):
    import resource

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    on_gpu = device != "cpu"
    if not on_gpu:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    sync = torch.cuda.synchronize if on_gpu else None
    unet = UNet2DConditionModel(  # diffusers' defaults are SD1.x's UNet
        cross_attention_dim=768, attention_head_dim=8
    ).to(device=device, dtype=dtype).eval()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
    ).to(device=device, dtype=dtype).eval()
    clip = CLIPTextModel(  # CLIP ViT-L/14's text tower, as SD 1.x uses
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       max_position_embeddings=77, hidden_act="quick_gelu")
    ).to(device=device, dtype=dtype).eval()

    out = {"dtype": dtype_name, "device": device, "threads": None if on_gpu else threads}
    with torch.inference_mode():
        ids = torch.randint(0, 49407, (2, 77)).to(device)
        out["clip_s"] = time_min(lambda: clip(ids), repeat, sync)
        ctx = clip(ids).last_hidden_state
        for side in (384, 512):
            x = torch.randn(2, 4, side // 8, side // 8, dtype=dtype).to(device)
            t = torch.tensor([500.0, 500.0]).to(device)
            out[f"unet_step_{side}_s"] = time_min(lambda: unet(x, t, encoder_hidden_states=ctx), repeat, sync)
        img = torch.randn(1, 3, 512, 512, dtype=dtype).to(device)
        out["vae_encode_512_s"] = time_min(lambda: vae.encode(img).latent_dist.mean, repeat, sync)
        lat = torch.randn(1, 4, 64, 64, dtype=dtype).to(device)
        out["vae_decode_512_s"] = time_min(lambda: vae.decode(lat), repeat, sync)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if on_gpu:
        out["torch_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["gpu_name"] = torch.cuda.get_device_name()
        out["torch"] = torch.__version__
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        out["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    import diffusers

    out["diffusers"] = diffusers.__version__
    return out


def bench_diffusers_sdxl(dtype_name, repeat, threads):
    """SDXL base's networks at their real sizes with random weights, on the CPU, one at a time."""
    import gc
    import resource

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
    out = {"family": "sdxl", "dtype": dtype_name, "device": "cpu", "threads": threads}
    with torch.inference_mode():
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                              num_attention_heads=12, hidden_act="quick_gelu")).to(dtype).eval()
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            hidden_act="gelu", projection_dim=1280)).to(dtype).eval()
        ids = torch.randint(0, 49407, (2, 77))

        def text():  # as StableDiffusionXLPipeline.encode_prompt: penultimate states of both, bigG's pooled
            a = clip_l(ids, output_hidden_states=True).hidden_states[-2]
            g = clip_g(ids, output_hidden_states=True)
            return torch.cat([a, g.hidden_states[-2]], -1), g.text_embeds

        out["sdxl_text_s"] = time_min(text, repeat)
        del clip_l, clip_g
        gc.collect()
        unet = UNet2DConditionModel(  # SDXL base 1.0's unet/config.json
            sample_size=128, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).to(dtype).eval()
        x = torch.randn(2, 4, 128, 128, dtype=dtype)
        t = torch.tensor([500.0, 500.0])
        ctx = torch.randn(2, 77, 2048, dtype=dtype)
        added = {"text_embeds": torch.randn(2, 1280, dtype=dtype),
                 "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2, dtype=dtype)}
        out["sdxl_unet_step_1024_s"] = time_min(
            lambda: unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added), repeat)
        del unet
        gc.collect()
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, scaling_factor=0.13025,
        ).to(dtype).eval()
        lat = torch.randn(1, 4, 128, 128, dtype=dtype)
        out["sdxl_vae_decode_1024_s"] = time_min(lambda: vae.decode(lat), repeat)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import diffusers

    out["diffusers"] = diffusers.__version__
    out["torch"] = torch.__version__
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ember", help="path of the ember binary to run `ember bench --json` with")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both sides run (cuda: the first GPU)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per measurement (the fastest is reported)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of PyTorch (ignored with --device cuda)")
    ap.add_argument("--family", default="sd1", choices=["sd1", "sdxl"],
                    help="whose networks to time: SD 1.5's (512×512) or SDXL base's (1024×1024; CPU only)")
    args = ap.parse_args()
    on_gpu = args.device == "cuda"
    sdxl = args.family == "sdxl"
    if sdxl and on_gpu:
        ap.error("--family sdxl runs on the CPU only")

    results = {}
    failed = False
    if args.ember:
        cmd = [args.ember, "bench", "--json", "--dtype", args.dtype, "--repeat", str(args.repeat),
               "--family", args.family]
        if on_gpu:
            cmd += ["--device", "cuda"]
        sampler = GpuMemorySampler() if on_gpu else None
        if sampler:
            with sampler:
                proc = subprocess.run(cmd, capture_output=True, text=True)
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            results["ember"] = json.loads(proc.stdout.strip().splitlines()[-1])
            if sampler:
                results["ember"]["peak_gpu_bytes"] = sampler.peak_bytes
                results["ember"]["gpu_memory_reader"] = sampler.reader
        else:  # say why, and still time diffusers
            failed = True
            print(f"ember bench failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}",
                  file=sys.stderr)
    if on_gpu:
        with GpuMemorySampler() as sampler:
            results["diffusers"] = bench_diffusers(args.dtype, args.repeat, args.threads, args.device)
        results["diffusers"]["peak_gpu_bytes"] = sampler.peak_bytes
        results["diffusers"]["gpu_memory_reader"] = sampler.reader
    elif sdxl:
        results["diffusers"] = bench_diffusers_sdxl(args.dtype, args.repeat, args.threads)
    else:
        results["diffusers"] = bench_diffusers(args.dtype, args.repeat, args.threads, args.device)

    keys = ["unet_step_512_s", "unet_step_384_s", "vae_decode_512_s", "vae_encode_512_s", "clip_s", "peak_rss_bytes"]
    if sdxl:
        keys = ["sdxl_unet_step_1024_s", "sdxl_vae_decode_1024_s", "sdxl_text_s", "peak_rss_bytes"]
    if on_gpu:
        keys += ["peak_gpu_bytes", "torch_max_memory_allocated_bytes"]
    w = max(20, *map(len, keys))
    print(f"{'measurement':<{w}} {'diffusers':>12} {'ember':>12} {'ember/diffusers':>16}")
    for k in keys:
        d = results["diffusers"].get(k)
        e = results.get("ember", {}).get(k)
        ratio = f"{e / d:.2f}" if e and d else "-"
        fmt = (lambda v: f"{v / 2**30:.2f} GiB") if k.endswith("_bytes") else (lambda v: f"{v:.3f}")
        print(f"{k:<{w}} {fmt(d) if d is not None else '-':>12} {fmt(e) if e else '-':>12} {ratio:>16}")
    print(json.dumps(results))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
