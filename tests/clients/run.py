#!/usr/bin/env python3
"""Drives `ember serve` with the published clients of the APIs it speaks (issue 21): `webuiapi` for AUTOMATIC1111's
`/sdapi/v1` and `openai` for OpenAI's Images API, not with hand-written requests. The server runs the tiny test
model on the CPU with a temporary data folder on a free port; one line per check, "N passed, M failed" last, a
non-zero exit status on any failure.

    python tests/clients/run.py          (EMBER_BIN=path/to/ember, default target/debug/ember)

Install the clients first: `pip install -r tests/clients/requirements.txt` (see tests/clients/README.md).
"""

import base64
import importlib.metadata
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import openai
import webuiapi
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODEL = FIXTURES / "tiny-sd.safetensors"
MODEL2 = FIXTURES / "tiny-sd2.safetensors"  # an SD 2.x model: a switch shows in the images' metadata
INIT = FIXTURES / "init-64x96.png"
MASK = FIXTURES / "mask-64x96.png"
TOKEN = "s3cret-client-token"
SLOW_STEPS = 1000  # the job that get_progress watches and interrupt ends (~30 s uninterrupted in a debug build)
STEPS = 4

EMBER = Path(os.environ.get("EMBER_BIN", "target/debug/ember"))
if not EMBER.is_absolute():
    EMBER = REPO / EMBER


# ---------------------------------------------------------------------------------------------------------------
# Checks

RESULTS = []


def check(name, fn):
    started = time.monotonic()
    try:
        note = fn()
        RESULTS.append(True)
        extra = f" ({note})" if isinstance(note, str) and note else ""
        print(f"ok   {name}{extra} [{time.monotonic() - started:.1f}s]", flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        RESULTS.append(False)
        lines = [f"{type(e).__name__}: {e}"[:600]]
        tb = traceback.extract_tb(e.__traceback__)
        here = [f for f in tb if f.filename == __file__]
        if here:
            f = here[-1]
            lines.append(f"at run.py:{f.lineno}: {f.line}")
        print(f"FAIL {name}\n     " + "\n     ".join(lines), flush=True)


class CheckFailed(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise CheckFailed(message)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


# ---------------------------------------------------------------------------------------------------------------
# The server

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ember serve` on a free port with a temporary data folder; `stop()` ends it and removes the folder."""

    def __init__(self, *extra):
        if not EMBER.exists():
            raise SystemExit(f"{EMBER} does not exist: build it with `cargo build -p ember-cli` or set EMBER_BIN")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ember-clients-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(EMBER), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--model", str(MODEL),
                "--device", "cpu", "--data-dir", str(self.data_dir), *extra]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a debug build loads the model in about a second
        while True:
            if self.proc.poll() is not None:
                out = self.output()
                self.stop()
                raise RuntimeError(f"`{' '.join(args[1:])}` exited ({self.proc.returncode}) before answering:\n{out}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not answer on {self.url} within 120 s:\n{self.output()}")
            time.sleep(0.2)

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def http_get(url, token=None):
    """GET url → (status, content type, bytes); an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def get_json(url, token=None):
    status, _, body = http_get(url, token)
    expect_eq(status, 200, f"GET {url} status ({body[:300]!r})")
    return json.loads(body)


# ---------------------------------------------------------------------------------------------------------------
# Images

def pixels(img):
    return img.convert("RGB").tobytes()


def png_text(img):
    """The PNG's text chunks (Pillow reads tEXt/iTXt/zTXt into .text)."""
    img.load()
    return dict(getattr(img, "text", {}) or {})


def expect_ember_metadata(img, seed=None, size=None):
    """Ember's three chunks as the CLI writes them; returns (Dream line, sd-metadata dict, parameters text)."""
    expect_eq(img.format, "PNG", "image format")
    text = png_text(img)
    for key in ("Dream", "sd-metadata", "parameters"):
        expect(key in text, f"PNG text chunk {key!r} missing: has {sorted(text)}")
    dream, meta, params = text["Dream"], json.loads(text["sd-metadata"]), text["parameters"]
    expect_eq(meta.get("app_id"), "ember", "sd-metadata app_id")
    if seed is not None:
        expect(f"-S {seed} " in dream + " ", f"Dream line lacks -S {seed}: {dream!r}")
        expect_eq(meta["image"]["seed"], seed, "sd-metadata image.seed")
        expect(f"Seed: {seed}," in params, f"parameters lack 'Seed: {seed}': {params!r}")
    if size is not None:
        w, h = size
        expect(f"-W {w} -H {h}" in dream, f"Dream line lacks -W {w} -H {h}: {dream!r}")
        expect(f"Size: {w}x{h}" in params, f"parameters lack 'Size: {w}x{h}': {params!r}")
    return dream, meta, params


def mask_sets():
    """Pixel indices the fixture mask keeps (< 128), repaints (≥ 128), and keeps with 4 px to spare."""
    mask = Image.open(MASK).convert("L")
    grown = mask.filter(ImageFilter.MaxFilter(9))
    m, g = mask.tobytes(), grown.tobytes()
    keep = [i for i, v in enumerate(m) if v < 128]
    repaint = [i for i, v in enumerate(m) if v >= 128]
    far = [i for i, v in enumerate(g) if v == 0]
    return keep, repaint, far


def same_at(out, ref, indices):
    """How many of the pixels `indices` differ between two RGB images of one size."""
    a, b = pixels(out), pixels(ref)
    return sum(1 for i in indices if a[3 * i:3 * i + 3] != b[3 * i:3 * i + 3])


def decode_b64_png(data):
    return Image.open(io.BytesIO(base64.b64decode(data)))


def cli_generate(args):
    """`ember generate ARGS` into a temporary folder → the PIL image it wrote."""
    out = Path(tempfile.mkdtemp(prefix="ember-clients-cli-"))
    try:
        cmd = [str(EMBER), "generate", *args, "--model", str(MODEL), "--device", "cpu", "-o", str(out)]
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        expect(run.returncode == 0, f"`ember generate {shlex.join(args)}` failed: {run.stderr[-800:]}")
        paths = [Path(p) for p in run.stdout.split() if p.endswith(".png") and not p.endswith(".mask.png")]
        expect(len(paths) == 1, f"`ember generate` printed {run.stdout!r}")
        img = Image.open(paths[0])
        img.load()
        return img
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# AUTOMATIC1111's API through webuiapi

def a1111_error(fn, *args, **kwargs):
    """webuiapi raises RuntimeError(status, body text) for a non-200 answer; returns (status, body)."""
    try:
        fn(*args, **kwargs)
    except RuntimeError as e:
        expect(len(e.args) == 2 and isinstance(e.args[0], int), f"not webuiapi's RuntimeError(status, text): {e!r}")
        return e.args[0], e.args[1]
    raise CheckFailed("the request succeeded; an error was expected")


def expect_a1111_error(status, text, field):
    """A 4xx JSON body in A1111's shapes (FastAPI's {"detail": …} or its {"error", "detail", "errors"}), naming
    `field` (the message a client shows)."""
    expect(400 <= status < 500, f"status {status} is not a client error: {text[:300]}")
    try:
        body = json.loads(text)
    except ValueError:
        raise CheckFailed(f"the error body is not JSON: {text[:300]!r}") from None
    expect(isinstance(body, dict) and ("detail" in body or "error" in body),
           f"not A1111's error shape (detail / error): {text[:300]}")
    expect(field in text, f"the error does not name {field!r}: {text[:300]}")
    return f"{status}: {text[:140]}"


def a1111_checks(srv):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)  # the client's defaults: sampler "Euler a", 20 steps
    init = Image.open(INIT)
    init.load()
    mask = Image.open(MASK)
    mask.load()
    keep, repaint, far = mask_sets()
    state = {}

    def lists():
        names = api.util_get_model_names()
        expect(len(names) == 2, f"sd-models titles: {names}")
        expect(any(n.startswith("tiny-sd2") for n in names), f"no tiny-sd2 among {names}")
        models = api.get_sd_models()
        for m in models:
            for key in ("title", "model_name", "filename"):
                expect(key in m, f"sd-models entry lacks {key!r}: {m}")
        samplers = api.util_get_sampler_names()
        for s in ("Euler a", "Euler", "LMS", "DDIM"):
            expect(s in samplers, f"{s!r} not among the samplers {samplers}")
        schedulers = api.util_get_scheduler_names()
        for s in ("automatic", "karras"):
            expect(s in schedulers, f"{s!r} not among the schedulers {schedulers}")
        expect(isinstance(api.get_loras(), list), "loras is not a list")
        expect(isinstance(api.get_embeddings().get("loaded"), dict), "embeddings.loaded is not an object")
        current = api.util_get_current_model()
        expect(current in names and current.startswith("tiny-sd") and not current.startswith("tiny-sd2"),
               f"current model {current!r} (titles {names})")
        state["titles"] = names
        return f"models {names}; {len(samplers)} samplers; schedulers {schedulers}"

    def txt2img():
        r = api.txt2img(prompt="a red fox", seed=1234, steps=STEPS, width=64, height=64)
        expect_eq(len(r.images), 1, "image count")
        expect_eq(r.image.size, (64, 64), "image size")
        expect(isinstance(r.info, dict), f"info is not a JSON string: {r.json.get('info')!r}")
        expect_eq(r.info.get("seed"), 1234, "info.seed")
        expect_eq(r.info.get("all_seeds"), [1234], "info.all_seeds")
        infotexts = r.info.get("infotexts") or []
        expect(len(infotexts) == 1 and "Seed: 1234" in infotexts[0], f"info.infotexts: {infotexts}")
        expect(isinstance(r.parameters, dict) and r.parameters.get("prompt") == "a red fox",
               f"parameters: {r.parameters!r}"[:300])
        dream, meta, params = expect_ember_metadata(r.image, seed=1234, size=(64, 64))
        expect_eq(meta["image"]["steps"], STEPS, "sd-metadata image.steps")
        expect_eq(meta["image"]["sampler"], "k_euler_a", "sd-metadata sampler for webuiapi's default 'Euler a'")
        expect_eq(infotexts[0], params, "info.infotexts[0] against the PNG's parameters")
        state["txt2img"] = r.image
        return dream

    def gallery():
        expect("txt2img" in state, "txt2img did not run")
        listing = get_json(f"{srv.url}/api/images?per_page=1")
        expect(listing["images"], "the gallery is empty")
        newest = listing["images"][0]
        expect_eq(newest["seed"], 1234, "the gallery's newest image's seed")
        status, ctype, body = http_get(srv.url + newest["url"])
        expect_eq(status, 200, "gallery file status")
        img = Image.open(io.BytesIO(body))
        expect(pixels(img) == pixels(state["txt2img"]), "the gallery's file has other pixels than the API returned")
        expect_eq(png_text(img).get("Dream"), png_text(state["txt2img"]).get("Dream"), "Dream line in the gallery")

    def random_seed():
        r = api.txt2img(prompt="a red fox", seed=-1, steps=STEPS, width=64, height=64)
        seed = r.info.get("seed")
        expect(isinstance(seed, int) and 0 <= seed < 2**32, f"info.seed {seed!r} for seed -1")
        expect_eq(r.info.get("all_seeds"), [seed], "info.all_seeds")
        expect_ember_metadata(r.image, seed=seed, size=(64, 64))
        return f"seed {seed}"

    def batch():
        r = api.txt2img(prompt="a red fox", seed=77, steps=STEPS, width=64, height=64, batch_size=2)
        expect_eq(len(r.images), 2, "images for batch_size 2")
        seeds = r.info.get("all_seeds")
        expect(isinstance(seeds, list) and len(seeds) == 2 and len(set(seeds)) == 2, f"all_seeds {seeds}")
        expect_eq(seeds[0], 77, "the first seed")
        for img, seed in zip(r.images, seeds):
            expect_ember_metadata(img, seed=seed, size=(64, 64))
        expect(pixels(r.images[0]) != pixels(r.images[1]), "the two images are the same")
        return f"seeds {seeds}"

    def img2img():
        r = api.img2img(images=[init], prompt="fire", denoising_strength=0.5, seed=99, steps=STEPS,
                        width=64, height=96)
        expect_eq(len(r.images), 1, "image count")
        expect_eq(r.image.size, (64, 96), "image size")
        dream, meta, _ = expect_ember_metadata(r.image, seed=99, size=(64, 96))
        expect_eq(meta["image"].get("type"), "img2img", "sd-metadata image.type")
        expect_eq(meta["image"].get("strength"), 0.5, "sd-metadata image.strength")
        expect(" -f 0.5" in dream and " -I " in dream, f"Dream line: {dream!r}")
        expect(pixels(r.image) != pixels(init), "the output is the init image")
        state["img2img"] = r.image
        return dream

    def inpaint(blur, invert=0):
        r = api.img2img(images=[init], mask_image=mask, mask_blur=blur, inpainting_mask_invert=invert,
                        prompt="a hat", denoising_strength=0.8, seed=5, steps=STEPS, width=64, height=96)
        expect_eq(r.image.size, (64, 96), "image size")
        _, meta, params = expect_ember_metadata(r.image, seed=5, size=(64, 96))
        expect(meta["image"].get("mask_image_path"), f"sd-metadata has no mask_image_path: {meta['image']}")
        kept, changed = (repaint, keep) if invert else ((keep if blur == 0 else far), repaint)
        bad = same_at(r.image, init, kept)
        expect(bad == 0, f"{bad} of {len(kept)} pixels the mask keeps differ from the init image")
        moved = same_at(r.image, init, changed)
        expect(moved > len(changed) // 2, f"only {moved} of {len(changed)} repainted pixels changed")
        return f"{len(kept)} kept pixels equal, {moved}/{len(changed)} repainted changed"

    def png_info():
        expect("txt2img" in state, "txt2img did not run")
        r = api.png_info(state["txt2img"])
        text = r.info if isinstance(r.info, str) else json.dumps(r.json)
        expect("Seed: 1234" in text and "Steps: 4" in text, f"png-info answer: {r.json!r}"[:400])

    def switch_model():
        titles = state.get("titles") or api.util_get_model_names()
        sd2 = next(t for t in titles if t.startswith("tiny-sd2"))
        sd1 = next(t for t in titles if not t.startswith("tiny-sd2"))
        api.util_set_model(sd2)
        expect_eq(api.util_get_current_model(), sd2, "current model after util_set_model")
        r = api.txt2img(prompt="a red fox", seed=3, steps=STEPS, width=64, height=64)
        _, meta, params = expect_ember_metadata(r.image, seed=3, size=(64, 64))
        expect_eq(meta["image"].get("model_family"), "sd2", "model family after switching to tiny-sd2")
        expect("Model: tiny-sd2" in params, f"parameters after the switch: {params!r}")
        api.util_set_model(sd1)
        expect_eq(api.util_get_current_model(), sd1, "current model after switching back")
        r = api.txt2img(prompt="a red fox", seed=3, steps=STEPS, width=64, height=64)
        _, meta, _ = expect_ember_metadata(r.image, seed=3)
        expect_eq(meta["image"].get("model_family"), "sd1", "model family after switching back")
        return f"{sd1} → {sd2} → {sd1}"

    def override_model():
        r = api.txt2img(prompt="a red fox", seed=3, steps=STEPS, width=64, height=64,
                        override_settings={"sd_model_checkpoint": "tiny-sd2"})
        _, meta, _ = expect_ember_metadata(r.image, seed=3, size=(64, 64))
        expect_eq(meta["image"].get("model_family"), "sd2", "model family with override_settings tiny-sd2")
        current = api.util_get_current_model()
        expect(not current.startswith("tiny-sd2"), f"override_settings changed the current model to {current!r}")

    def bad_sampler():
        status, text = a1111_error(api.txt2img, prompt="x", steps=STEPS, width=64, height=64, sampler_name="Nope")
        expect(400 <= status < 500, f"status {status}: {text[:300]}")
        expect("sampler_name" in text or "Sampler" in text, f"the error names no sampler: {text[:300]}")
        return f"{status}: {text[:140]}"

    def progress_and_interrupt():
        worker_api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
        outcome = {}

        def slow():
            began = time.monotonic()
            try:
                outcome["result"] = worker_api.txt2img(prompt="slow", seed=11, steps=SLOW_STEPS, width=64, height=64,
                                                       sampler_name="Euler")
            except Exception as e:  # noqa: BLE001 - reported below
                outcome["error"] = e
            outcome["elapsed"] = time.monotonic() - began

        idle = api.get_progress()
        expect_eq(idle.get("progress"), 0, "progress while idle")
        thread = threading.Thread(target=slow, daemon=True)
        thread.start()
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and thread.is_alive():
            p = api.get_progress()
            st = p.get("state") or {}
            if p.get("progress", 0) > 0 and st.get("sampling_step", 0) > 0 and p.get("current_image"):
                seen = p
                break
            time.sleep(0.2)
        expect(thread.is_alive(), f"the {SLOW_STEPS}-step job ended before progress was seen: {outcome}")
        try:
            expect(seen is not None, f"no progress > 0 with a current_image within 60 s: last {p!r}"[:500])
            st = seen["state"]
            expect(0 < seen["progress"] < 1, f"progress {seen['progress']}")
            expect_eq(st.get("sampling_steps"), SLOW_STEPS, "state.sampling_steps")
            expect(st.get("job_count", 0) >= 1, f"state.job_count {st.get('job_count')}")
            expect(isinstance(seen.get("eta_relative"), (int, float)) and seen["eta_relative"] > 0,
                   f"eta_relative {seen.get('eta_relative')!r}")
            preview = decode_b64_png(seen["current_image"])
            expect(preview.size[0] > 0, "current_image")
        finally:
            stop_at = time.monotonic()
            answer = api.interrupt()
            thread.join(120)
        expect(not thread.is_alive(), "the interrupted request did not return within 120 s")
        waited = time.monotonic() - stop_at
        expect(waited < 10, f"the request returned {waited:.1f} s after interrupt")
        after = api.get_progress()
        expect_eq(after.get("progress"), 0, "progress after the interrupt")
        ready = threading.Thread(target=api.util_wait_for_ready, args=(0.2,), daemon=True)
        ready.start()
        ready.join(15)
        expect(not ready.is_alive(), "util_wait_for_ready still waits 15 s after the interrupt")
        if "error" in outcome:
            got = f"txt2img raised {outcome['error']!r}"[:200]
        else:
            r = outcome["result"]
            expect(r.images or (isinstance(r.info, dict) and r.info.get("interrupted") is True),
                   f"no image and no info.interrupted: {r.json!r}"[:300])
            got = f"txt2img returned {len(r.images)} image(s), info.interrupted {r.info.get('interrupted')}"
        return (f"progress {seen['progress']:.3f} at step {seen['state']['sampling_step']}/{SLOW_STEPS}, "
                f"interrupt → {answer!r}, request ended {waited:.1f} s later; {got}")

    def parity_txt2img():
        r = api.txt2img(prompt="parity fox", seed=4242, steps=STEPS, cfg_scale=7, width=64, height=64,
                        sampler_name="Euler", negative_prompt="blurry")
        cli = cli_generate(["parity fox", "--negative", "blurry", "-s", str(STEPS), "-S", "4242", "-C", "7",
                            "-W", "64", "-H", "64", "-A", "k_euler", "--karras-max", "0"])
        expect_eq(cli.size, r.image.size, "size")
        expect(pixels(cli) == pixels(r.image), "`ember generate` with the same switches gives other pixels")
        state["parity"] = r.image

    def parity_replay():
        expect("parity" in state, "the parity txt2img did not run")
        dream = png_text(state["parity"])["Dream"]
        cli = cli_generate(shlex.split(dream))
        expect(pixels(cli) == pixels(state["parity"]), f"replaying the Dream line {dream!r} gives other pixels")
        text = png_text(cli)
        expect_eq(text["Dream"], dream, "the replayed image's Dream line")
        expect_eq(text["parameters"], png_text(state["parity"])["parameters"], "the replayed image's parameters")

    def parity_img2img():
        expect("img2img" in state, "img2img did not run")
        cli = cli_generate(["fire", "-I", str(INIT), "-f", "0.5", "-s", str(STEPS), "-S", "99", "-C", "7",
                            "-A", "k_euler_a", "--karras-max", "0"])
        expect(pixels(cli) == pixels(state["img2img"]), "`ember generate -I … -f 0.5` gives other pixels")

    def parity_karras():
        r = api.txt2img(prompt="parity fox", seed=4243, steps=STEPS, cfg_scale=5, width=64, height=64,
                        sampler_name="DPM++ 2M", scheduler="Karras")
        cli = cli_generate(["parity fox", "-s", str(STEPS), "-S", "4243", "-C", "5", "-W", "64", "-H", "64",
                            "-A", "k_dpmpp_2", "--karras-max", "1000"])
        expect(pixels(cli) == pixels(r.image), "`ember generate -A k_dpmpp_2` (Karras) gives other pixels")

    def bad_base64():
        payload = {"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"], "steps": STEPS, "width": 64, "height": 64}
        status, text = a1111_error(api.custom_post, "sdapi/v1/img2img", payload)
        return expect_a1111_error(status, text, "init_images")

    def bad_mask():
        payload = {"prompt": "x", "init_images": [webuiapi.b64_img(init)], "mask": "data:image/png;base64,AAAA",
                   "steps": STEPS, "width": 64, "height": 96}
        status, text = a1111_error(api.custom_post, "sdapi/v1/img2img", payload)
        return expect_a1111_error(status, text, "mask")

    def bad_model():
        # webuiapi's set_options returns the JSON answer whatever the status; custom_post shows the status.
        answer = api.set_options({"sd_model_checkpoint": "no-such-model"})
        expect(isinstance(answer, dict) and ("detail" in answer or "error" in answer),
               f"set_options answer: {answer!r}")
        status, text = a1111_error(api.custom_post, "sdapi/v1/options", {"sd_model_checkpoint": "no-such-model"})
        return expect_a1111_error(status, text, "sd_model_checkpoint")

    def bad_size():
        status, text = a1111_error(api.txt2img, prompt="x", steps=STEPS, width=60, height=64)
        return expect_a1111_error(status, text, "width")

    check("a1111: sd-models, samplers, schedulers, options (current model)", lists)
    check("a1111: txt2img 64x64 seed 1234, Ember's PNG metadata, info", txt2img)
    check("a1111: the txt2img image is in Ember's gallery with the same pixels", gallery)
    check("a1111: txt2img seed -1 gets a random seed, recorded", random_seed)
    check("a1111: txt2img batch_size 2", batch)
    check("a1111: img2img init image + denoising_strength 0.5", img2img)
    check("a1111: img2img with mask_image (mask_blur 0): kept pixels equal the init image",
          lambda: inpaint(0))
    check("a1111: img2img with mask_image (webuiapi's mask_blur 4): pixels 4+ px outside the mask equal the init",
          lambda: inpaint(4))
    check("a1111: img2img inpainting_mask_invert 1 keeps the masked pixels", lambda: inpaint(0, invert=1))
    check("a1111: png_info reads the parameters back", png_info)
    check("a1111: util_set_model switches models (tiny-sd2 and back)", switch_model)
    check("a1111: txt2img override_settings.sd_model_checkpoint for one request", override_model)
    check("a1111: get_progress during a slow job, interrupt ends it, util_wait_for_ready", progress_and_interrupt)
    check("parity: A1111 txt2img 'Euler' (automatic: uniform) = `ember generate -A k_euler --karras-max 0`",
          parity_txt2img)
    check("parity: the A1111 image's Dream line replayed by `ember generate`", parity_replay)
    check("parity: A1111 img2img 'Euler a' = `ember generate -I … -f 0.5 -A k_euler_a --karras-max 0`",
          parity_img2img)
    check("parity: A1111 'DPM++ 2M' + scheduler 'Karras' = `ember generate -A k_dpmpp_2`", parity_karras)
    check("a1111 error: init_images not an image", bad_base64)
    check("a1111 error: mask not an image", bad_mask)
    check("a1111 error: unknown sd_model_checkpoint", bad_model)
    check("a1111 error: width 60 (not a multiple of 8)", bad_size)
    check("a1111 error: unknown sampler_name", bad_sampler)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI's Images API through openai

def openai_client(srv, key="x"):
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=300)


def openai_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except openai.APIStatusError as e:
        return e
    raise CheckFailed("the request succeeded; an error was expected")


def expect_openai_error(e, status, field):
    """OpenAI's error shape {"error": {"message", "type", "param", "code"}}: the client puts body["error"] in
    e.body and reads message/type/param from it."""
    statuses = status if isinstance(status, tuple) else (status,)
    expect(e.status_code in statuses, f"status {e.status_code}, expected {statuses}: {e.body!r}"[:400])
    expect(isinstance(e.body, dict), f"not OpenAI's error shape: {e.response.text[:300]!r}")
    expect(isinstance(e.body.get("message"), str) and e.body["message"], f"error.message: {e.body!r}")
    expect(isinstance(e.body.get("type"), str), f"error.type: {e.body!r}")
    if field is not None:
        expect(e.param == field or field in e.body["message"],
               f"the error names neither param={field!r} nor {field!r} in its message: {e.body!r}"[:400])
    return f"{e.status_code} {type(e).__name__}: {e.body['message'][:120]}"


def openai_checks(srv):
    client = openai_client(srv)
    keep, repaint, _ = mask_sets()
    init_bytes = INIT.read_bytes()
    # OpenAI's mask: a PNG whose fully transparent pixels are the ones to edit.
    alpha = Image.open(MASK).convert("L").point(lambda v: 0 if v >= 128 else 255)
    openai_mask = Image.new("RGBA", alpha.size, (0, 0, 0, 255))
    openai_mask.putalpha(alpha)
    buf = io.BytesIO()
    openai_mask.save(buf, format="PNG")
    mask_bytes = buf.getvalue()
    init = Image.open(INIT)
    init.load()

    def models():
        ids = [m.id for m in client.models.list()]
        expect("tiny-sd" in ids and "tiny-sd2" in ids, f"/v1/models ids {ids}")
        return f"{ids}"

    def generate_b64():
        r = client.images.generate(prompt="a red fox", model="tiny-sd", size="64x64", response_format="b64_json")
        expect(isinstance(r.created, int), f"created {r.created!r}")
        expect(r.data and len(r.data) == 1, f"data {r.data!r}"[:300])
        img = decode_b64_png(r.data[0].b64_json)
        expect_eq(img.size, (64, 64), "image size")
        dream, meta, _ = expect_ember_metadata(img, size=(64, 64))
        expect_eq(meta["image"]["steps"], STEPS, "steps (the models file's default for tiny-sd)")
        return dream

    def extensions():
        r = client.images.generate(prompt="a red fox", size="64x64", response_format="b64_json",
                                   extra_body={"seed": 31, "steps": 3, "negative_prompt": "blurry"})
        img = decode_b64_png(r.data[0].b64_json)
        dream, meta, _ = expect_ember_metadata(img, seed=31, size=(64, 64))
        expect_eq(meta["image"]["steps"], 3, "steps")
        expect("blurry" in dream, f"the negative prompt is not in the Dream line {dream!r}")
        return dream

    def generate_n2_wide():
        r = client.images.generate(prompt="a red fox", size="96x64", n=2, response_format="b64_json")
        expect(r.data and len(r.data) == 2, f"{len(r.data or [])} images for n=2")
        imgs = [decode_b64_png(d.b64_json) for d in r.data]
        for img in imgs:
            expect_eq(img.size, (96, 64), "image size for size=96x64 (width × height)")
            expect_ember_metadata(img, size=(96, 64))
        expect(pixels(imgs[0]) != pixels(imgs[1]), "the two images are the same")

    def generate_url():
        r = client.images.generate(prompt="a red fox", size="64x64", response_format="url")
        url = r.data[0].url
        expect(isinstance(url, str) and url.startswith("http://127.0.0.1:"),
               f"url {url!r}: OpenAI gives an absolute URL, which clients fetch as is")
        status, ctype, body = http_get(url, token="x")
        expect_eq(status, 200, f"GET {url}")
        expect(ctype.startswith("image/png"), f"content type {ctype!r}")
        img = Image.open(io.BytesIO(body))
        expect_eq(img.size, (64, 64), "image size")
        expect_ember_metadata(img, size=(64, 64))
        return url

    def edit_mask():
        r = client.images.edit(image=("init.png", init_bytes, "image/png"),
                               mask=("mask.png", mask_bytes, "image/png"),
                               prompt="a hat", response_format="b64_json")
        img = decode_b64_png(r.data[0].b64_json)
        expect_eq(img.size, (64, 96), "image size (the init image's)")
        _, meta, _ = expect_ember_metadata(img, size=(64, 96))
        expect(meta["image"].get("mask_image_path"), f"sd-metadata has no mask: {meta['image']}")
        bad = same_at(img, init, keep)
        expect(bad == 0, f"{bad} of {len(keep)} opaque-mask pixels differ from the init image")
        moved = same_at(img, init, repaint)
        expect(moved > len(repaint) // 2, f"only {moved} of {len(repaint)} transparent-mask pixels changed")
        return f"{len(keep)} kept pixels equal, {moved}/{len(repaint)} edited changed"

    def edit_plain():
        r = client.images.edit(image=("init.png", init_bytes, "image/png"), prompt="fire", size="64x96",
                               response_format="b64_json")
        img = decode_b64_png(r.data[0].b64_json)
        expect_eq(img.size, (64, 96), "image size")
        _, meta, _ = expect_ember_metadata(img, size=(64, 96))
        expect_eq(meta["image"].get("type"), "img2img", "sd-metadata image.type")

    def bad_size():
        e = openai_error(client.images.generate, prompt="x", size="60x64", response_format="b64_json")
        expect(isinstance(e, openai.BadRequestError), f"{type(e).__name__}, expected BadRequestError")
        return expect_openai_error(e, 400, "size")

    def bad_model():
        e = openai_error(client.images.generate, prompt="x", model="no-such-model", size="64x64")
        return expect_openai_error(e, (400, 404), "model")

    def bad_image():
        e = openai_error(client.images.edit, image=("init.png", b"not an image at all", "image/png"), prompt="x")
        expect(isinstance(e, openai.BadRequestError), f"{type(e).__name__}, expected BadRequestError")
        return expect_openai_error(e, 400, "image")

    check("openai: models.list names the served models", models)
    check("openai: images.generate b64_json 64x64, Ember's PNG metadata", generate_b64)
    check("openai: images.generate with Ember's extensions in extra_body (seed, steps, negative_prompt)", extensions)
    check("openai: images.generate n=2 size 96x64", generate_n2_wide)
    check("openai: images.generate url, fetched with the same auth", generate_url)
    check("openai: images.edit image + mask (transparent = edit)", edit_mask)
    check("openai: images.edit image without mask (img2img)", edit_plain)
    check("openai error: size 60x64 (not a multiple of 8)", bad_size)
    check("openai error: unknown model", bad_model)
    check("openai error: image not an image", bad_image)


def token_checks(srv):
    def wrong_key():
        e = openai_error(openai_client(srv, "wrong").images.generate, prompt="x", size="64x64")
        expect(isinstance(e, openai.AuthenticationError), f"{type(e).__name__}, expected AuthenticationError")
        return expect_openai_error(e, 401, None)

    def right_key():
        r = openai_client(srv, TOKEN).images.generate(prompt="a red fox", size="64x64", response_format="url")
        url = r.data[0].url
        status, _, body = http_get(url, token=TOKEN)
        expect_eq(status, 200, f"GET {url} with the bearer token")
        expect_eq(Image.open(io.BytesIO(body)).size, (64, 64), "image size")
        status, _, _ = http_get(url)
        expect_eq(status, 401, f"GET {url} without the token")

    check("openai + --token: a wrong api_key gets AuthenticationError (401) in OpenAI's shape", wrong_key)
    check("openai + --token: the token as api_key generates; the url needs it too", right_key)


def api_switch_checks(srv):
    def a1111_off():
        api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port)
        status, text = a1111_error(api.txt2img, prompt="x", steps=STEPS, width=64, height=64)
        expect_eq(status, 404, f"txt2img status with --api openai,ember ({text[:200]})")

    def ember_on():
        get_json(f"{srv.url}/api/models")

    def openai_on():
        r = openai_client(srv).images.generate(prompt="a red fox", size="64x64", response_format="b64_json")
        expect_eq(decode_b64_png(r.data[0].b64_json).size, (64, 64), "image size")

    check("--api openai,ember: webuiapi's txt2img gets 404", a1111_off)
    check("--api openai,ember: Ember's API answers", ember_on)
    check("--api openai,ember: openai's images.generate works", openai_on)


# ---------------------------------------------------------------------------------------------------------------

def main():
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("webuiapi", "openai", "pillow"))
    print(f"{versions}; {EMBER}", flush=True)
    limit = float(os.environ.get("EMBER_CLIENTS_TIMEOUT", "900"))
    servers = []

    def watchdog():
        print(f"FAIL the client tests did not finish within {limit:.0f} s", flush=True)
        for s in servers:
            if s.proc.poll() is None:
                s.proc.kill()
        os._exit(2)

    timer = threading.Timer(limit, watchdog)
    timer.daemon = True
    timer.start()
    models_root = Path(tempfile.mkdtemp(prefix="ember-clients-models-"))
    try:
        models_file = models_root / "models.toml"
        # OpenAI's API has no steps: the models file's per-model default keeps its images quick.
        models_file.write_text(f'[models.tiny-sd]\npath = {json.dumps(str(MODEL))}\nsteps = {STEPS}\n\n'
                               f'[models.tiny-sd2]\npath = {json.dumps(str(MODEL2))}\nsteps = {STEPS}\n')
        models = ["--models", str(models_file)]
        for label, extra, checks in (
            ("models file: tiny-sd, tiny-sd2", models, (a1111_checks, openai_checks)),
            ("--token", [*models, "--token", TOKEN], (token_checks,)),
            ("--api openai,ember", [*models, "--api", "openai,ember"], (api_switch_checks,)),
        ):
            try:
                srv = Server(*extra)
            except Exception as e:  # noqa: BLE001
                RESULTS.append(False)
                print(f"FAIL start `ember serve` ({label})\n     {str(e)[:1500]}", flush=True)
                continue
            servers.append(srv)
            try:
                for fn in checks:
                    fn(srv)
            finally:
                if srv.proc.poll() is not None:
                    print(f"     the server ({label}) exited with {srv.proc.returncode}:\n{srv.output()}")
                elif os.environ.get("EMBER_CLIENTS_LOG") == "1" or not all(RESULTS):
                    tail = "\n".join(srv.output().splitlines()[-15:])
                    print(f"     server log ({label}), last lines:\n{tail}")
                srv.stop()
    finally:
        shutil.rmtree(models_root, ignore_errors=True)
        timer.cancel()
    passed = sum(RESULTS)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not RESULTS else 0


if __name__ == "__main__":
    sys.exit(main())
