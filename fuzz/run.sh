#!/usr/bin/env bash
# Fuzzing on stable Rust: libFuzzer (from the libfuzzer-sys crate, built with the system C++ compiler) driven by
# rustc's SanitizerCoverage pass, enabled with -Cpasses=sancov-module instead of cargo-fuzz's nightly flags.
#
#   fuzz/run.sh build                    build every target (fuzz/target/x86_64-unknown-linux-gnu/release/)
#   fuzz/run.sh TARGET [SECONDS] [ARGS]  a campaign: grows fuzz/corpus/TARGET (default 600 s); crashers, hangs
#                                        and over-allocations go to fuzz/artifacts/TARGET/
#   fuzz/run.sh merge TARGET             minimise fuzz/corpus/TARGET (libFuzzer's set-cover merge) before committing
#   fuzz/run.sh repro TARGET FILE...     run inputs once (e.g. a crasher from fuzz/artifacts/)
#
# Targets: prompt dream_line png_text pickle model_file addon_file job_json job_multipart (fuzz/targets.rs says what each
# one calls). Per input: a 5 s time limit, 512 MiB for any one allocation, 2 GiB of RSS. Set JOBS=N to run N
# fuzzing processes in parallel (libFuzzer -fork). Extra ARGS go to libFuzzer (e.g. -max_len=65536).
set -euo pipefail
cd "$(dirname "$0")"

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=target/$TRIPLE/release
LIMITS=(-timeout=5 -malloc_limit_mb=512 -rss_limit_mb=2048)

build() {
  # --target keeps these flags off build scripts and proc macros (they would not link without libFuzzer).
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
    cargo build --release --target "$TRIPLE" --bins
}

case "${1:-}" in
  "" | -h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  build)
    build
    ;;
  merge)
    target=${2:?usage: fuzz/run.sh merge TARGET}
    build
    rm -rf "work/$target.merged" && mkdir -p "work/$target.merged"
    # The smallest set of inputs that covers every edge the corpus reaches (hit counts ignored): commit-sized.
    "$BIN_DIR/$target" "${LIMITS[@]}" -use_counters=0 -set_cover_merge=1 "work/$target.merged" "corpus/$target"
    rm -rf "corpus/$target" && mv "work/$target.merged" "corpus/$target"
    ;;
  repro)
    target=${2:?usage: fuzz/run.sh repro TARGET FILE...}
    shift 2
    build
    "$BIN_DIR/$target" "${LIMITS[@]}" "$@"
    ;;
  *)
    target=$1
    seconds=${2:-600}
    shift $(($# < 2 ? $# : 2))
    build
    mkdir -p "corpus/$target" "artifacts/$target"
    # Regression inputs are read as extra seeds, never written to (libFuzzer adds new inputs to the first folder).
    seeds=()
    [ -d "regressions/$target" ] && seeds+=("regressions/$target")
    fork=()
    [ -n "${JOBS:-}" ] && fork=(-fork="$JOBS" -ignore_crashes=0)
    exec "$BIN_DIR/$target" "${LIMITS[@]}" "${fork[@]}" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="artifacts/$target/" "$@" "corpus/$target" "${seeds[@]}"
    ;;
esac
