#!/usr/bin/env bash
# gpu_all.sh - one device call for the CUDA work of docs/cuda.md: the CUDA
# tests, the decode-graph / int8 benchmarks and compute-sanitizer memcheck,
# inside a time budget (BUDGET_S, default 560 s) so that it fits one
# 10-minute call; steps that would not fit are skipped and say so.
# (Logs: summary.txt, tests.log, bench.log, model.log, perf.log, nsys.log,
# memcheck.log, build.log: at most 8 files.)
#
# Binaries: .gpu/bin/ when present and runnable (built on the development
# machine with `bash scripts/gpu_all.sh --prebuild`, x86-64, the same nvcc),
# else `make USE_CUDA=1` here (gpu_bins, scripts/gpu_lib.sh). Carry .gpu.
# Logs under $OUT. Models: scripts/gpu_models.py.
#
# Benchmarks (random-init models built with transformers, BF16 weights):
#   - Llama-3.2-1B shape, 1 request, 128 prompt + 512 output tokens:
#     NI_CUDA_GRAPHS=1 vs 0, and --quant int8 with graphs;
#   - SmolLM2-135M shape (576 x 30 layers, 9/3 heads, vocab 49152, tied),
#     the default 256-request workload (in/out uniform [100, 1024], greedy):
#     graphs 1 vs 0 (and int8 when time allows).
# With --perf: only the models and test_cuda_perf (decode-step timing of
# graphs / GPU sampler, 1B and SmolLM2 shapes, BF16 and int8), plus an
# nsys kernel summary of the 1B single-stream run when nsys is installed
# (perf.log, nsys.log).
# The default run does everything: tests, models, test_cuda_perf, the
# nanoinfer benchmarks, memcheck.
# Usage: bash scripts/gpu_all.sh [--prebuild] [--skip-memcheck] [--skip-bench] [--perf]
set -u
cd "$(dirname "$0")/.."
TESTS="test_cuda test_cuda_ops test_cuda_backend test_cuda_graph test_cuda_sample test_cuda_quant test_cuda_perf"
if [ "${1:-}" = "--prebuild" ]; then
  make -j"$(nproc)" USE_CUDA=1 build/nanoinfer $(for t in $TESTS; do echo build/test/$t; done) || exit 1
  mkdir -p .gpu/bin && cp build/nanoinfer .gpu/bin/ && for t in $TESTS; do cp build/test/$t .gpu/bin/; done
  strip --strip-debug .gpu/bin/* && ls -la .gpu/bin && exit 0
fi
SKIP_MEM=0; SKIP_BENCH=0; PERF=0
for a in "$@"; do
  [ "$a" = --skip-memcheck ] && SKIP_MEM=1
  [ "$a" = --skip-bench ] && SKIP_BENCH=1
  [ "$a" = --perf ] && PERF=1 && SKIP_MEM=1
done
# shellcheck disable=SC1091
source scripts/gpu_lib.sh
gpu_bins "$TESTS"

TL=$OUT/tests.log
if [ "$PERF" = 0 ]; then
  for t in test_cuda_graph test_cuda_sample test_cuda_quant test_cuda_backend test_cuda_ops test_cuda; do
    step "$t" "$TL" 150 $BIN/$t
  done
fi

if [ "$SKIP_BENCH" = 0 ]; then
  ML=$OUT/model.log
  step "build random models" "$ML" 150 env PYTHONUNBUFFERED=1 python3 scripts/gpu_models.py
  if true; then
    PL=$OUT/perf.log
    step "perf 1B bf16 S=1,16" "$PL" 120 env NI_PERF_PROFILE=1 NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1,16 NI_PERF_STEPS=128 $BIN/test_cuda_perf
    step "perf 1B int8 S=1,16" "$PL" 120 env NI_PERF_PROFILE=1 NI_CUDA_QUANT=int8 NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1,16 NI_PERF_STEPS=128 $BIN/test_cuda_perf
    step "perf smol bf16 S=1,64,256" "$PL" 150 env NI_PERF_PROFILE=1 NI_PERF_MODEL=/tmp/smol NI_PERF_SEQS=1,64,256 NI_PERF_STEPS=64 $BIN/test_cuda_perf
    # the persistent decode kernel (opt-in) against the per-op kernels, interleaved
    for r in 1 2; do for ps in 1 0; do
      step "perf smol S=1 persist=$ps" "$PL" 60 env NI_CUDA_PERSIST=$ps NI_PERF_MODEL=/tmp/smol NI_PERF_SEQS=1 NI_PERF_STEPS=128 $BIN/test_cuda_perf
      step "perf 1B S=1 persist=$ps" "$PL" 60 env NI_CUDA_PERSIST=$ps NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1 NI_PERF_STEPS=128 $BIN/test_cuda_perf
    done; done
    if command -v nsys > /dev/null 2>&1; then
      NL=$OUT/nsys.log
      step "nsys 1B S=1" "$NL" 150 nsys profile -t cuda -o /tmp/p1b --force-overwrite true env NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1 NI_PERF_STEPS=64 $BIN/test_cuda_perf
      step "nsys stats" "$NL" 60 nsys stats -q -r cuda_gpu_kern_sum -f csv /tmp/p1b.nsys-rep
    else
      note "nsys: not installed"
    fi
    if [ "$PERF" = 1 ]; then
      grep -hE "ms/step|seqs|agreement|model |us/step" "$PL"
      cat "$sum"
      exit $status
    fi
  fi
  BL=$OUT/bench.log
  run_bench() { # label env... -- args...
    local label=$1; shift
    bench_json "$label" "$BL" 180 40 "$@" || return
    local tps el; tps=$(json_field output_tokens_per_s); el=$(json_field elapsed_s)
    note "$(printf '%-34s %10s output tok/s  (%s s)' "$label" "${tps:-FAILED}" "${el:-?}")"
  }
  if [ -f /tmp/l1b/config.json ]; then
    S1="--model /tmp/l1b --num-requests 1 --input-len 128 --output-len 512"
    run_bench "1B single, graphs"      NI_CUDA_GRAPHS=1 -- $S1
    run_bench "1B single, no graphs"   NI_CUDA_GRAPHS=0 -- $S1
    run_bench "1B single, int8+graphs" NI_CUDA_GRAPHS=1 -- $S1 --quant int8
    run_bench "1B single, int8 no graphs" NI_CUDA_GRAPHS=0 -- $S1 --quant int8
    run_bench "1B single, persistent kernel" NI_CUDA_PERSIST=1 -- $S1
  fi
  if [ -f /tmp/smol/config.json ]; then
    run_bench "smol-shape 256 req, graphs"    NI_CUDA_GRAPHS=1 -- --model /tmp/smol
    run_bench "smol-shape 256 req, no graphs" NI_CUDA_GRAPHS=0 -- --model /tmp/smol
    S1S="--model /tmp/smol --num-requests 1 --input-len 128 --output-len 256"
    run_bench "smol-shape single, graphs" NI_CUDA_GRAPHS=1 -- $S1S
    run_bench "smol-shape single, persistent" NI_CUDA_PERSIST=1 -- $S1S
  fi
  if [ -f /opt/smol.gguf ]; then
    run_bench "SmolLM2 gguf 256 req, graphs"    NI_CUDA_GRAPHS=1 -- --model /opt/smol.gguf
    run_bench "SmolLM2 gguf 256 req, no graphs" NI_CUDA_GRAPHS=0 -- --model /opt/smol.gguf
  fi
  [ -f /tmp/smol/config.json ] && run_bench "smol-shape 256 req, int8+graphs" NI_CUDA_GRAPHS=1 -- --model /tmp/smol --quant int8
fi

if [ "$SKIP_MEM" = 0 ]; then
  MC=$OUT/memcheck.log
  for t in test_cuda_graph test_cuda_sample test_cuda_quant test_cuda_backend; do
    step "memcheck $t" "$MC" 200 compute-sanitizer --tool memcheck --error-exitcode 7 $BIN/$t
  done
fi

echo
echo "---- key lines"
grep -hE "FAILED|ERROR SUMMARY|bit-identical|DIFFERENT|NMSE|draws|backend:|int8 (fp32|bf16)|PASSED" \
  "$OUT"/tests.log "$OUT"/memcheck.log 2>/dev/null | head -60
grep -hE "ms/step|seqs|agreement|us/step|cuda profile" "$OUT"/perf.log 2>/dev/null | head -70
echo
cat "$sum"
exit $status
