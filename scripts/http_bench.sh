#!/usr/bin/env bash
# http_bench.sh - HTTP overhead of `nanoinfer serve` (64 concurrent SSE streams)
# against `nanoinfer bench` offline on the same workload (docs/perf.md,
# "HTTP overhead"). A wrapper around scripts/http_bench.py (python3 standard
# library only): builds build/nanoinfer when it is missing, then runs
#   N=128 requests, prompts 32..128 and outputs 32..128 tokens (seed 0),
#   64 streams, 2 repetitions (medians),
# with the default model (or $NI_MODEL), writing $OUT/http_bench_<model>.json
# and the server logs under $OUT (default build/http_bench).
#
# Usage: scripts/http_bench.sh [http_bench.py flags]; later flags win, e.g.
#   scripts/http_bench.sh                                  # SmolLM2 on this machine
#   scripts/http_bench.sh --model test/models/tiny-llama3 --num-requests 1024   # fast smoke
#   scripts/http_bench.sh --device cuda --num-requests 512 --input-len 100:1024 --output-len 100:1024
# Environment: BIN (default build/nanoinfer; REBUILD=1 runs make even when it
# exists), NI_MODEL (default model), OUT (results directory).
set -eu
cd "$(dirname "$0")/.."
BIN=${BIN:-build/nanoinfer}
MODEL=${NI_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-build/http_bench}
mkdir -p "$OUT"

# the model and device the flags ask for (for the build and the file name)
model=$MODEL device=
prev=
for a in "$@"; do
  case $prev in --model) model=$a ;; --device) device=$a ;; esac
  case $a in --model=*) model=${a#--model=} ;; --device=*) device=${a#--device=} ;; esac
  prev=$a
done
if [ "$device" = cuda ]; then
  # shellcheck disable=SC1091
  [ -f scripts/gpu_env.sh ] && source scripts/gpu_env.sh
fi
if [ ! -x "$BIN" ] || [ "${REBUILD:-0}" = 1 ]; then
  [ "$BIN" = build/nanoinfer ] || { echo "error: $BIN is not built" >&2; exit 2; }
  if [ "$device" = cuda ]; then
    make -j"$(nproc)" USE_CUDA=1 build/nanoinfer
  else
    make -j"$(nproc)" build/nanoinfer
  fi
fi
if [ ! -e "$model" ]; then
  echo "error: model $model not found (make model, NI_MODEL=..., or --model M)" >&2
  exit 2
fi
name=$(basename "$model"); name=${name%.gguf}
exec python3 scripts/http_bench.py --bin "$BIN" --model "$MODEL" \
  --num-requests 128 --input-len 32:128 --output-len 32:128 --seed 0 --concurrency 64 --repeat 2 \
  --out "$OUT/http_bench_${name}${device:+_$device}.json" --log-dir "$OUT" "$@"
