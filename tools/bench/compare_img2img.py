#!/usr/bin/env python3
"""End-to-end img2img, Ember against diffusers, each a fresh process from model load to PNG: wall time and peak RSS.

The performance issue's whole-job measurement: 512×512, strength 0.75, 20 steps (15 run), cfg 7.5, LMS, the same
diffusers folder for both (random weights at SD1.5's real sizes cost the same as trained ones:
`python tools/oracle/make_fullsize.py DIR`). Both run one after the other in this invocation, so the ratio comes from
one machine state.

    /work/torchvenv/bin/python tools/bench/compare_img2img.py --ember target/release/ember --model DIR \\
        --init ../shared/testdata/skimage-photos/astronaut.png --dtype f32 --threads 2
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPT = "an astronaut riding a horse, oil painting"

DIFFUSERS_JOB = r"""
import sys, torch
from diffusers import LMSDiscreteScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image
model, init, out, dtype, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None,
                                                      requires_safety_checker=False)
pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
image = Image.open(init).convert("RGB").resize((512, 512))
result = pipe(PROMPT, image=image, strength=0.75, num_inference_steps=20, guidance_scale=7.5,
              generator=torch.Generator("cpu").manual_seed(42)).images[0]
result.save(out)
""".replace("PROMPT", repr(PROMPT))


def run_measured(cmd, env):
    """Runs `cmd` to completion; returns (wall seconds, peak RSS bytes of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{cmd[0]} failed with status {status}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def prepared_init(path, tmp):
    """The init image resized to 512×512, as a PNG in `tmp` (both sides read the same file)."""
    from PIL import Image

    init = os.path.join(tmp, "init-512.png")
    Image.open(path).convert("RGB").resize((512, 512)).save(init)
    return init


def ember_command(ember, model, init, dtype, outdir):
    """Ember's side of the job, the same settings as DIFFUSERS_JOB."""
    return [ember, "generate", PROMPT, "-I", init, "-f", "0.75", "-s", "20", "-C", "7.5", "-A", "k_lms",
            "-S", "42", "-W", "512", "-H", "512", "--model", model, "--device", "cpu",
            "--dtype", dtype, "--outdir", outdir]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", required=True)
    ap.add_argument("--model", required=True, help="diffusers folder (tools/oracle/make_fullsize.py)")
    ap.add_argument("--init", required=True, help="init image (resized to 512×512)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        init = prepared_init(args.init, tmp)
        ember = run_measured(ember_command(args.ember, args.model, init, args.dtype, os.path.join(tmp, "ember")), env)
        diffusers_cmd = [sys.executable, "-c", DIFFUSERS_JOB, args.model, init, os.path.join(tmp, "diffusers.png"),
                         args.dtype, str(args.threads)]
        diffusers = run_measured(diffusers_cmd, env)
    gib = 1 << 30
    print(f"img2img 512×512, strength 0.75, 20 steps (15 run), {args.dtype}, {args.threads} threads")
    print(f"{'':24}{'diffusers':>12}{'ember':>12}{'ember/diffusers':>17}")
    print(f"{'wall time (s)':24}{diffusers[0]:12.1f}{ember[0]:12.1f}{ember[0] / diffusers[0]:17.2f}")
    print(f"{'peak RSS (GiB)':24}{diffusers[1] / gib:12.2f}{ember[1] / gib:12.2f}{ember[1] / diffusers[1]:17.2f}")
    print(json.dumps({"diffusers": {"wall_s": diffusers[0], "peak_rss_bytes": diffusers[1]},
                      "ember": {"wall_s": ember[0], "peak_rss_bytes": ember[1]}}))


if __name__ == "__main__":
    main()
