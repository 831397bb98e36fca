"""Makes the hostile, corrupt and edge-case checkpoints the model-loading tests feed to Ember.

Run from the repository root:  /work/torchvenv/bin/python tools/oracle/make_bad_checkpoints.py
Writes (all small, deterministic):
  tests/fixtures/bad/pwned_os_system.ckpt   a state dict plus an object whose __reduce__ is os.system(touch MARKER)
  tests/fixtures/bad/pwned_eval.ckpt        the same through builtins.eval (protocol 2 names it __builtin__.eval)
  tests/fixtures/bad/unknown_class.ckpt     an instance of an arbitrary class (__main__.Unknown) next to the weights
  tests/fixtures/bad/build_list.ckpt        a hand-written pickle applying BUILD to a list (must be refused)
  tests/fixtures/bad/truncated.ckpt         a valid checkpoint cut in half
  tests/fixtures/bad/short_storage.ckpt     a zip whose data/0 holds fewer bytes than the pickle declares
  tests/fixtures/bad/garbage.ckpt, empty.ckpt, garbage.safetensors, empty.safetensors, truncated.safetensors,
  tests/fixtures/bad/huge_header.safetensors (header length claims 1 TB)
  tests/fixtures/pickle/views.ckpt + views.json   strided / offset / f16 / bf16 / int64 tensors and their values
                                                  as torch reads them (row-major), for the reader's own tests
  tests/fixtures/pickle/proto4.ckpt             the same dict saved with pickle protocol 4 (FRAME, STACK_GLOBAL, MEMOIZE)
Nothing here runs the hostile payloads: pickling only records the call. The markers are unique paths the tests check.
"""

import io
import json
import os
import pathlib
import random
import struct
import zipfile

import torch
from safetensors.torch import save as st_save

ROOT = pathlib.Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "fixtures" / "bad"
GOOD = ROOT / "tests" / "fixtures" / "pickle"
MARK_SYSTEM = "/tmp/ember-pwned-5b1e0c7d-os-system"
MARK_EVAL = "/tmp/ember-pwned-5b1e0c7d-eval"


class PwnSystem:
    def __reduce__(self):
        return (os.system, (f"touch {MARK_SYSTEM}",))


class PwnEval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {MARK_EVAL}')",))


class Unknown:
    def __init__(self):
        self.payload = "arbitrary object"


def weights():
    torch.manual_seed(0)
    return {"model.diffusion_model.conv.weight": torch.randn(2, 3), "bias": torch.randn(3)}


def save(obj, path, **kw):
    torch.save(obj, path, **kw)
    print("wrote", path.relative_to(ROOT), path.stat().st_size, "bytes")


def write(path, data):
    path.write_bytes(data)
    print("wrote", path.relative_to(ROOT), len(data), "bytes")


def rewrite_zip(src, dst, edit):
    """Copies a zip, passing each entry's bytes through edit(name, data)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
    print("wrote", dst.relative_to(ROOT), dst.stat().st_size, "bytes")


def main():
    BAD.mkdir(parents=True, exist_ok=True)
    GOOD.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)

    save({"state_dict": weights(), "x": PwnSystem()}, BAD / "pwned_os_system.ckpt")
    save({"state_dict": weights(), "x": PwnEval()}, BAD / "pwned_eval.ckpt")
    save({"state_dict": weights(), "x": Unknown()}, BAD / "unknown_class.ckpt")

    # BUILD on a list: valid pickle, but BUILD on anything but an OrderedDict could call __setstate__.
    def build_list(name, data):
        if name.endswith("data.pkl"):
            return b"\x80\x02]}\x62."  # PROTO 2, EMPTY_LIST, EMPTY_DICT, BUILD, STOP
        return data

    rewrite_zip(BAD / "unknown_class.ckpt", BAD / "build_list.ckpt", build_list)

    good = io.BytesIO()
    torch.save({"state_dict": weights(), "global_step": 1}, good)
    data = good.getvalue()
    write(BAD / "truncated.ckpt", data[: len(data) // 2])

    tmp = BAD / "_tmp.ckpt"
    tmp.write_bytes(data)
    rewrite_zip(tmp, BAD / "short_storage.ckpt", lambda n, d: d[:5] if n.endswith("data/0") else d)
    tmp.unlink()

    write(BAD / "garbage.ckpt", bytes(rng.randrange(256) for _ in range(4096)))
    write(BAD / "empty.ckpt", b"")
    write(BAD / "empty.safetensors", b"")
    write(BAD / "garbage.safetensors", bytes(rng.randrange(256) for _ in range(4096)))
    st = st_save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3, dtype=torch.float16)})
    write(BAD / "truncated.safetensors", st[: len(st) - 100])
    write(BAD / "huge_header.safetensors", struct.pack("<Q", 1 << 40) + b"{}")

    # Views the reader must gather correctly; values are what torch itself reads back, row-major.
    torch.manual_seed(1)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),
        "row_view": base[2],
        "sliced": base[1:3, ::2],
        "half": torch.randn(3, 2).half(),
        "bf16": torch.randn(5).bfloat16(),
        "long": torch.tensor([1, -2, 3 << 40]),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }
    sd = {"state_dict": tensors, "epoch": 3, "name": "views"}
    save(sd, GOOD / "views.ckpt")
    save(sd, GOOD / "proto4.ckpt", pickle_protocol=4)
    expected = {
        k: {
            "dtype": str(v.dtype).removeprefix("torch."),
            "shape": list(v.shape),
            "stride": list(v.stride()),
            "offset": v.storage_offset(),
            "values": v.detach().float().flatten().tolist() if v.dtype != torch.int64 else v.flatten().tolist(),
        }
        for k, v in tensors.items()
    }
    (GOOD / "views.json").write_text(json.dumps(expected, indent=1) + "\n")
    print("wrote", (GOOD / "views.json").relative_to(ROOT))


if __name__ == "__main__":
    main()
