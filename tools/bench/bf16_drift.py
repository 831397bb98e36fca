"""How far bf16 moves a whole img2img from its f32 result, for Ember and for diffusers (PyTorch), on the same model.

    /work/torchvenv/bin/python tools/bench/bf16_drift.py --ember target/release/ember --model DIR \\
        --init ../shared/testdata/skimage-photos/astronaut.png --threads 2

Runs compare_img2img.py's job (512×512, strength 0.75, 20 steps, cfg 7.5, LMS, seed 42) four times: Ember and
diffusers, each in f32 and bf16, and prints each side's relative RMS difference between its bf16 and f32 images
(pixel values in [0, 1]; the 8-bit PNGs add about 2e-3). The two sides' images are not compared with each other: their
initial noise comes from different generators. Needs torch and diffusers; takes minutes (f32 on a CPU).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_img2img import DIFFUSERS_JOB, ember_command, prepared_init  # noqa: E402


def relative_rms(a_path, b_path):
    a = np.asarray(Image.open(a_path).convert("RGB"), dtype=np.float64) / 255.0
    b = np.asarray(Image.open(b_path).convert("RGB"), dtype=np.float64) / 255.0
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ember", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        init = prepared_init(args.init, tmp)
        images = {}
        for dtype in ("f32", "bf16"):
            outdir = os.path.join(tmp, f"ember-{dtype}")
            subprocess.run(ember_command(args.ember, args.model, init, dtype, outdir),
                           env=env, check=True, stdout=subprocess.DEVNULL)
            images[("ember", dtype)] = os.path.join(outdir, sorted(os.listdir(outdir))[0])
            out = os.path.join(tmp, f"diffusers-{dtype}.png")
            subprocess.run([sys.executable, "-c", DIFFUSERS_JOB, args.model, init, out, dtype, str(args.threads)],
                           env=env, check=True)
            images[("diffusers", dtype)] = out
        for side in ("ember", "diffusers"):
            drift = relative_rms(images[(side, "bf16")], images[(side, "f32")])
            print(f"{side:10} bf16 vs f32 relative RMS {drift:.2e}")


if __name__ == "__main__":
    main()
