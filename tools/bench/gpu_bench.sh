#!/usr/bin/env bash
# Ember vs diffusers on one NVIDIA GPU: `ember bench --device cuda` and the same shapes through diffusers/PyTorch,
# side by side (tools/bench/compare_diffusers.py --device cuda), for each compute precision.
#
#   tools/bench/gpu_bench.sh [EMBER_BINARY] [WHEEL_DIR]
#
# EMBER_BINARY: an `ember` built with `--features cuda` (default .gpu/ember; a NAME.xz is unpacked first). It needs
# libcuda (the driver's) and CUDA 13's libcudart/libcublas/libcublasLt/libcurand at run time; the script looks for
# them in PyTorch's Python packages (the nvidia-* wheels) and adds their folders to LD_LIBRARY_PATH.
# WHEEL_DIR (default .gpu/whl): wheels to install first into /tmp/site when diffusers is not importable
# (e.g. diffusers and importlib_metadata, for a machine without network).
# Environment: DTYPES (default "f16 bf16 f32"), REPEAT (timed runs per measurement, default 5; the fastest is
# reported), PYTHON (default python3), OUT (folder for gpu_bench.log and the JSON lines; default /tmp/gpu_bench).
#
# Building EMBER_BINARY where there is no GPU and no CUDA toolkit (how BENCHMARKS.md's GPU figures were made): the
# CUDA 13.0 compiler and libraries from PyPI; nvcc 13.0 to match the CUDA 13.0 driver (580) of the test machine,
# since candle's kernels are PTX that the driver compiles, and a newer nvcc's PTX may need a newer driver:
#   pip install --target $P nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
#       nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
#       nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
#   CUDA_HOME=$H with $H/bin and $H/include linked to $P/nvidia/cu13/{bin,include}, and $H/lib64 holding links
#   libcublas.so, libcublasLt.so, libcudart.so, libcurand.so, libnvrtc.so to $P/nvidia/cu13/lib/*.so.* and a
#   link-time stub libcuda.so (soname libcuda.so.1: one empty function per `pub unsafe fn cu*` of cudarc's
#   src/driver/sys/mod.rs, `gcc -shared -fPIC -Wl,-soname,libcuda.so.1`); then
#   CUDA_HOME=$H PATH=$H/bin:$PATH CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 \
#       cargo build --release -p ember-cli --features cuda
#   strip, then `xz -9e` to carry it.
set -uo pipefail

EMBER=${1:-.gpu/ember}
WHEELS=${2:-.gpu/whl}
DTYPES=${DTYPES:-"f16 bf16 f32"}
REPEAT=${REPEAT:-5}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
LOG=$OUT/gpu_bench.log
export PYTHONUNBUFFERED=1

say() { echo "== $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; }

if [[ $EMBER == *.xz ]]; then  # a stripped CUDA build is ~65 MB; xz makes it ~11 MB to carry
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$EMBER" /tmp/ember-gpu-bench || exit 1
    chmod +x /tmp/ember-gpu-bench
    EMBER=/tmp/ember-gpu-bench
fi

say "$(date -u +%FT%TZ) gpu_bench.sh, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
run nvidia-smi -L
run nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,power.limit \
    --format=csv

if ! "$PYTHON" -c 'import diffusers' 2>/dev/null; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        say "installing $(ls "$WHEELS" | tr '\n' ' ')into /tmp/site"
        run "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
run "$PYTHON" -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "| diffusers", diffusers.__version__, "| transformers", transformers.__version__)' || exit 1

# CUDA libraries of PyTorch's nvidia-* wheels (nvidia/cu13/lib in CUDA 13's layout, nvidia/*/lib before).
libdirs=$("$PYTHON" - <<'PY'
import glob, os
import nvidia
dirs = set()
for root in nvidia.__path__:
    for f in glob.glob(os.path.join(root, "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The driver's libcuda, if it is outside ldconfig's paths.
if ldd "$EMBER" 2>&1 | grep 'libcuda.so.1 => not found' >/dev/null; then
    drv=$(find /usr/local/nvidia /usr/lib /usr/lib64 /usr/local -name 'libcuda.so.1' 2>/dev/null | head -1)
    [ -n "$drv" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$drv")
fi
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$EMBER" >"$OUT/ldd.txt" 2>&1
grep -Ei 'cuda|cublas|curand|nvrtc|not found' "$OUT/ldd.txt" | tee -a "$LOG"
if grep -q 'not found' "$OUT/ldd.txt"; then
    say "a library of $EMBER was not found"
    exit 1
fi

status=0
for dtype in $DTYPES; do
    say "dtype $dtype: ember bench --device cuda --dtype $dtype --repeat $REPEAT, then diffusers"
    # compare_diffusers.py runs `ember bench --json --device cuda` itself, then diffusers on the same GPU.
    run timeout 130 "$PYTHON" tools/bench/compare_diffusers.py --ember "$EMBER" --device cuda --dtype "$dtype" \
        --repeat "$REPEAT" || { status=1; say "dtype $dtype: failed"; }
done
say "done, status $status"
exit $status
