#!/usr/bin/env bash
# gpu_att_lat.sh - one device call for the decode attention's fine key
# chunks (docs/cuda.md "Fine key chunks for small batches", docs/perf.md):
# the CUDA tests (test_cuda_graph seeds 1-5 too), memcheck of the decode
# attention test, the attention kernel table (NI_PERF_ATT=1 test_cuda_perf:
# "new" against "thru", the coarse chunks), then on the random-init shapes
# of scripts/gpu_models.py (Llama-3.2-1B, SmolLM2-135M) NI_CUDA_ATT_LAT=1 / 0
# interleaved: test_cuda_perf decode steps at 1, 2 and 4 sequences and
# `nanoinfer bench` single streams (TPOT p50); the same at 1 sequence with
# the persistent decode kernel (NI_CUDA_PERSIST=1). Inside BUDGET_S (default
# 560 s); steps that would not fit are skipped and say so. Logs under $OUT
# (summary.txt, tests.log, perf.log, bench.log, model.log, build.log).
# Binaries: gpu_bins (scripts/gpu_lib.sh): carry .gpu, with the stripped
# binaries built here as .gpu/bins.tar.xz to stay under the carry limit.
# Usage: bash scripts/gpu_att_lat.sh [--skip-tests] [--rounds N]
set -u
cd "$(dirname "$0")/.."
TESTS="test_cuda_ops test_cuda_backend test_cuda_graph test_cuda_perf"
SKIP_TESTS=0; ROUNDS=2
while [ $# -gt 0 ]; do
  case $1 in
    --skip-tests) SKIP_TESTS=1 ;;
    --rounds) ROUNDS=$2; shift ;;
  esac
  shift
done
# shellcheck disable=SC1091
source scripts/gpu_lib.sh
gpu_bins "$TESTS test_cuda test_cuda_sample test_cuda_quant"

TL=$OUT/tests.log PL=$OUT/perf.log BL=$OUT/bench.log
if [ "$SKIP_TESTS" = 0 ]; then
  core_tests "$TL"
  for seed in 1 2 3 4 5; do
    step "graph seed $seed" "$TL" 60 env NI_TEST_SEED=$seed $BIN/test_cuda_graph
  done
  for t in test_cuda test_cuda_sample test_cuda_quant; do
    [ -x $BIN/$t ] && step "$t" "$TL" 120 $BIN/$t
  done
  step "memcheck: persistent kernel" "$TL" 120 env NI_TEST_FILTER=test_persist \
    compute-sanitizer --tool memcheck --error-exitcode 7 $BIN/test_cuda_graph
fi
step "attention kernel table" "$PL" 120 env NI_PERF_ATT=1 NI_TEST_FILTER=test_attention_kernels $BIN/test_cuda_perf

step "build random models" "$OUT/model.log" 150 env PYTHONUNBUFFERED=1 python3 scripts/gpu_models.py

bench() { # label env... -- args...
  local label=$1; shift
  bench_json "$label" "$BL" 90 30 "$@" && bench_line "$label"
}
for r in $(seq 1 "$ROUNDS"); do
  for lat in 1 0; do
    step "perf smol S=1,2,4 lat=$lat" "$PL" 60 env NI_CUDA_ATT_LAT=$lat NI_PERF_MODEL=/tmp/smol NI_PERF_SEQS=1,2,4 NI_PERF_STEPS=128 $BIN/test_cuda_perf
    step "perf 1B S=1,2,4 lat=$lat" "$PL" 60 env NI_CUDA_ATT_LAT=$lat NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1,2,4 NI_PERF_STEPS=128 $BIN/test_cuda_perf
  done
  for lat in 1 0; do
    bench "smol single lat=$lat" NI_CUDA_ATT_LAT=$lat -- --model /tmp/smol --num-requests 1 --input-len 128 --output-len 256
    bench "1B single lat=$lat" NI_CUDA_ATT_LAT=$lat -- --model /tmp/l1b --num-requests 1 --input-len 128 --output-len 256
  done
done
# the persistent decode kernel (opt-in) with fine / coarse attention chunks
for r in $(seq 1 "$ROUNDS"); do
  for lat in 1 0; do
    step "perf smol S=1 persist lat=$lat" "$PL" 60 env NI_CUDA_PERSIST=1 NI_CUDA_ATT_LAT=$lat NI_PERF_MODEL=/tmp/smol NI_PERF_SEQS=1 NI_PERF_STEPS=128 $BIN/test_cuda_perf
    step "perf 1B S=1 persist lat=$lat" "$PL" 60 env NI_CUDA_PERSIST=1 NI_CUDA_ATT_LAT=$lat NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1 NI_PERF_STEPS=128 $BIN/test_cuda_perf
  done
  for lat in 1 0; do
    bench "smol single persist lat=$lat" NI_CUDA_PERSIST=1 NI_CUDA_ATT_LAT=$lat -- --model /tmp/smol --num-requests 1 --input-len 128 --output-len 256
  done
done
for lat in 1 0; do
  bench "1B 1 x 4000+64 lat=$lat" NI_CUDA_ATT_LAT=$lat -- --model /tmp/l1b --num-requests 1 --input-len 4000 --output-len 64
done

echo
echo "---- key lines"
grep -hE "FAILED|failed|ERROR|PASSED|ATT_LAT|\[  (PASSED|FAILED)" "$TL" 2>/dev/null | head -30
grep -hE "^  (TinyLlama|Llama|Qwen3|SmolLM2)|shape  " "$PL" 2>/dev/null | head -40
grep -hE "ms/step|seqs |agreement" "$PL" 2>/dev/null | head -60
echo
cat "$sum"
exit $status
