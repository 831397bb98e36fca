#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

Standard library only. The campaigns (fuzz/run.sh) grow the corpora from these; `fuzz/run.sh merge TARGET`
minimises them before they are committed. Run from anywhere: python3 fuzz/make_seeds.py
"""
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
FIXTURES = ROOT / "tests" / "fixtures"


def write(target, name, data):
    folder = FUZZ / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# --- prompt language (README "Prompt syntax", compel's and InvokeAI 2.x's forms) ---
PROMPTS = [
    "a red fox in the snow",
    "a cat+ playing with a ball--",
    "(a phrase)++ and (another one)1.3",
    '"a quoted phrase"0.8 with (a phrase).attend(1.2)',
    "((a)1.5 b)1.2 c-",
    r"escaped \(parens\) and \"quotes\" and a\:colon",
    '("a photo", "a painting").blend(1, 1)',
    '("a photo", "a painting", "a sketch").blend(0.5, 0.3, 0.2, no_normalize)',
    "a cat:0.25 a dog:0.75",
    "a forest [blurry, ugly] at dawn [low quality]",
    "a castle:1 on a hill:-0.5",
    "(unbalanced ((parens) here",
    "word+++ (x)-- + - ,no,space",
    "a (nested (deeper (deepest)1.1)0.9)++ prompt",
    '("a", "b").swap(1)',
    "ünïcödé 火 prompt (émphasis)1.1",
]
for i, p in enumerate(PROMPTS):
    write("prompt", f"{i:02}", p)

# --- invoke> lines (crates/ember-cli/tests/dream_line.rs) ---
LINES = [
    "a red fox -s 30 -S 42",
    '"a -s fox" -s 30',
    "well-known cat - a dog -5 -s5",
    "fire --steps 10",
    "-S 42 -s 3",
    "a fox -g",
    r'a cat --negative "blurry, \"bad\"" -s 2',
    "a cat -s 2 # a comment -S 5",
    "fire -s10 -S1592514025 -W384 -H 320 -C7.5 -Ak_lms -I init.png -f0.75 -T -n3 -g -v 0.2 "
    '--negative "ugly hands" --truncate-prompts --downweight mask --exact-steps --step-strip '
    "--save-intermediates 2 --decode-intermediates -V 1:0.1,2:0.2 -o out",
    "fire --steps 10 --seed 7 --width 64 --height 72 --cfg_scale 5 --sampler ddim --init_img a.png "
    "--exact_steps --step_strip --save_intermediates 3 --decode_intermediates --downweight remove",
    "x -S -1 -I -2",
    "x --init-image 'b c.png' --with_variations 9:0.5",
    r'a "quoted" \(escaped\) back\slash -s 99 ünïcödé: 火 #tag',
    "1234:0.1, 5678:0.25",
    "x --hires_fix --seamless --vae-tiling --threshold 2 --perlin 0.1 --fit -A k_euler_a",
]
for i, line in enumerate(LINES):
    write("dream_line", f"{i:02}", line)


# --- PNG text chunks, as Ember writes them (image/png_meta.rs, image/metadata.rs) ---
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(chunks, after_idat=()):
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\x10\x20\x30")
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for c in chunks:
        out += c
    out += chunk(b"IDAT", idat)
    for c in after_idat:
        out += c
    return out + chunk(b"IEND", b"")


def text(key, value):
    return chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))


def ztxt(key, value):
    return chunk(b"zTXt", key.encode("latin-1") + b"\x00\x00" + zlib.compress(value.encode("latin-1")))


def itxt(key, value, compressed=False):
    data = zlib.compress(value.encode()) if compressed else value.encode()
    return chunk(b"iTXt", key.encode() + b"\x00" + (b"\x01\x00" if compressed else b"\x00\x00") + b"\x00\x00" + data)


DREAM = '"fire" -s 10 -S 1592514025 -W 64 -H 96 -C 7.5 -I init-64x96.png -A k_lms -f 0.7'
SD_METADATA = {
    "model": "stable diffusion",
    "model_weights": "tiny-sd",
    "model_hash": "0123456789",
    "app_id": "ember",
    "app_version": "0.1.0",
    "image": {
        "prompt": [{"prompt": "fire", "weight": 1.0}],
        "negative_prompt": "blurry",
        "steps": 10,
        "cfg_scale": 7.5,
        "threshold": 0,
        "perlin": 0.1,
        "height": 96,
        "width": 64,
        "seed": 1592514025,
        "seamless": False,
        "vae_tiling": True,
        "hires_fix": False,
        "sampler": "k_lms",
        "variations": [{"seed": 1, "weight": 0.1}],
        "type": "img2img",
        "init_image_path": "init-64x96.png",
        "strength": 0.7,
        "fit": True,
    },
}
PARAMETERS = "fire\nNegative prompt: blurry\nSteps: 10, Sampler: LMS, CFG scale: 7.5, Seed: 1592514025, Size: 64x96"
write("png_text", "ember", png([text("Dream", DREAM), text("sd-metadata", json.dumps(SD_METADATA)), text("parameters", PARAMETERS)]))
write("png_text", "sd-metadata-only", png([ztxt("sd-metadata", json.dumps(SD_METADATA))]))
blend = dict(SD_METADATA, image=dict(SD_METADATA["image"], prompt=[{"prompt": "a cat", "weight": 0.25}, {"prompt": "a dog", "weight": 0.75}]))
write("png_text", "blend-after-idat", png([], [itxt("sd-metadata", json.dumps(blend), compressed=True)]))
write("png_text", "utf8-dream", png([itxt("Dream", '!dream "ünïcödé 火 (x)1.2" -s 5 --negative "ugly"')]))
write("png_text", "no-metadata", png([text("Software", "Ember")]))


# --- restricted pickle reader: small torch.save files from tests/fixtures, and a bare pickle ---
for path in sorted((FIXTURES / "pickle").glob("*.ckpt")) + sorted((FIXTURES / "bad").glob("*.ckpt")):
    if 0 < path.stat().st_size <= 8192:
        write("pickle", path.stem, path.read_bytes())
with zipfile.ZipFile(FIXTURES / "pickle" / "proto4.ckpt") as z:
    pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
    write("pickle", "proto4-data.pkl", z.read(pkl))


# --- single-file model: safetensors headers with the LDM names of the tiny model, ckpt prefixes ---
def safetensors(tensors, data=b""):
    header = json.dumps(tensors, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


with open(FIXTURES / "tiny-sd.safetensors", "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    tiny = json.loads(f.read(n))
tiny.pop("__metadata__", None)


def empty_tensors(keys):
    """The tiny model's names with zero-element shapes (first dimension 0): header only, no data."""
    return {k: {"dtype": "F16", "shape": [0] + tiny[k]["shape"][1:], "data_offsets": [0, 0]} for k in keys}


def sample(keys, every):
    return [k for i, k in enumerate(sorted(keys)) if i % every == 0]


write("model_file", "tiny-names-all", safetensors(empty_tensors(tiny)))
write("model_file", "tiny-names-sample", safetensors(empty_tensors(sample(tiny, 9))))
vae = [k for k in tiny if k.startswith("first_stage_model.")]
write("model_file", "vae-names", safetensors(empty_tensors(sample(vae, 3))))
# Real shapes and data for a few small tensors (the key map and config inference read shapes).
small = [k for k in sorted(tiny) if tiny[k]["data_offsets"][1] - tiny[k]["data_offsets"][0] <= 64][:40]
tensors, data = {}, b""
for k in small:
    nbytes = tiny[k]["data_offsets"][1] - tiny[k]["data_offsets"][0]
    tensors[k] = {"dtype": tiny[k]["dtype"], "shape": tiny[k]["shape"], "data_offsets": [len(data), len(data) + nbytes]}
    data += bytes(range(nbytes))
tensors["__metadata__"] = {"format": "pt"}
write("model_file", "tiny-small-tensors", safetensors(tensors, data))
write("model_file", "sdxl-key", safetensors(empty_tensors(sample(tiny, 40)) | {"conditioner.embedders.0.x": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}))
write("model_file", "sd2-key", safetensors({"cond_stage_model.model.x": {"dtype": "BF16", "shape": [1, 1], "data_offsets": [0, 2]}}, b"\x00\x00"))
for path in sorted((FIXTURES / "bad").iterdir()):
    if 0 < path.stat().st_size <= 8192:
        write("model_file", path.name, path.read_bytes())
write("model_file", "views.ckpt", (FIXTURES / "pickle" / "views.ckpt").read_bytes())


# --- server: POST /api/jobs as JSON, and as multipart/form-data (first line: the Content-Type header) ---
JOBS = [
    {"prompt": "fire", "steps": 5, "width": 64, "height": 64, "seed": 42, "sampler": "k_euler"},
    {"prompt": "fire", "strength": 0.7, "steps": 10, "seed": 1592514025, "sampler": "k_lms"},
    {"prompt": "ice", "perlin": 0.1, "init_image_id": 3, "threshold": 1.5, "fit": True},
    {"prompt": "a cat:0.25 a dog:0.75", "negative_prompt": "blurry [ugly]", "cfg_scale": 7.5, "karras_max": 29,
     "with_variations": [{"seed": 1, "weight": 0.1}], "variation_amount": 0.2, "seamless": True, "vae_tiling": True,
     "hires_fix": True, "skip_normalize": True, "truncate_prompts": False, "downweight_mask": True, "exact_steps": True},
    {"prompt": '("a photo", "a painting").blend(1, 1)', "width": 512, "height": 768, "steps": 50, "sampler": "ddim"},
    {"prompt": "", "steps": 0, "width": 7, "height": 100000, "seed": -1},
]
for i, job in enumerate(JOBS):
    write("job_json", f"{i:02}", json.dumps(job))
write("job_json", "not-an-object", "[1, 2, 3]")

PNG_1X1 = png([])


def form(parts, boundary="fuzzBOUNDARY"):
    body = b""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            body += f"Content-Type: {ctype}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}\n".encode() + body


params = json.dumps({"prompt": "fire", "strength": 0.7, "steps": 10, "seed": 7, "sampler": "k_lms"}).encode()
write("job_multipart", "params-only", form([("params", None, "application/json", params)]))
write("job_multipart", "params-and-png", form([("params", None, None, params), ("init_image", "init.png", "image/png", PNG_1X1)]))
write("job_multipart", "png-first", form([("init_image", "x.png", None, PNG_1X1), ("params", None, None, params)], "b"))
write("job_multipart", "bmp", form([("params", None, None, params), ("init_image", "x.bmp", "image/bmp",
      b"BM" + struct.pack("<IHHI", 58, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, 4, 0, 0, 0, 0) + b"\x00\x00\xff\x00")]))
write("job_multipart", "unknown-part", form([("other", None, None, b"x")]))

# --- LoRA and embedding files (tests/fixtures/lora, made by tools/oracle/make_lora_reference.py), cut short, and
# hand-made headers whose shapes do not fit together ---
for path in sorted((FIXTURES / "lora").iterdir()):
    if path.suffix in (".safetensors", ".pt") and path.stat().st_size <= 100_000:
        data = path.read_bytes()
        write("addon_file", path.name, data)
        write("addon_file", f"{path.stem}-half{path.suffix}", data[: len(data) // 2])
f32 = lambda n: b"\x00\x00\x80\x3f" * n  # 1.0, n times


def one_module(params):
    """A kohya module `lora_unet_mid_block_attentions_0_proj_in` with `params`: {name: shape}, all ones."""
    tensors, data = {}, b""
    for name, shape in params.items():
        count = 1
        for d in shape:
            count *= d
        tensors[f"lora_unet_mid_block_attentions_0_proj_in.{name}"] = {
            "dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * count]}
        data += f32(count)
    return safetensors(tensors, data)


write("addon_file", "lora-rank-mismatch", one_module({"lora_down.weight": [4, 8], "lora_up.weight": [8, 3], "alpha": []}))
write("addon_file", "lora-1d", one_module({"lora_down.weight": [4], "lora_up.weight": [8]}))
write("addon_file", "loha-tucker", one_module({"hada_w1_a": [2, 8], "hada_w1_b": [2, 8], "hada_w2_a": [2, 8],
                                               "hada_w2_b": [2, 8], "hada_t1": [2, 2, 3, 3], "hada_t2": [2, 2, 3, 3]}))
write("addon_file", "lokr-half-factor", one_module({"lokr_w1_a": [2, 2], "lokr_w2": [4, 4]}))
write("addon_file", "lora-mid", one_module({"lora_down.weight": [2, 8, 1, 1], "lora_mid.weight": [2, 2, 3, 3],
                                            "lora_up.weight": [8, 2, 1, 1], "alpha": []}))
write("addon_file", "dora", one_module({"lora_down.weight": [2, 8], "lora_up.weight": [8, 2], "dora_scale": [8]}))
write("addon_file", "emb-wide", safetensors({"emb_params": {"dtype": "F32", "shape": [2, 16], "data_offsets": [0, 128]}},
                                            f32(32)))
write("addon_file", "emb-sdxl", safetensors({"clip_l": {"dtype": "F32", "shape": [1, 16], "data_offsets": [0, 64]},
                                             "clip_g": {"dtype": "F32", "shape": [1, 16], "data_offsets": [64, 128]}},
                                            f32(32)))
