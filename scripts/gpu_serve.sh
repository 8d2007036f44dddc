#!/usr/bin/env bash
# gpu_serve.sh - one device call for the parts of issue 10 that are about
# the whole engine rather than one kernel, and the A/B of the staged decode
# attention (NI_CUDA_ATT_STAGE, docs/cuda.md) that decides its default:
#  1. the CUDA tests that cover the staged chunks (test_cuda_ops,
#     test_cuda_backend's test_att_stage, test_cuda_graph) and memcheck of
#     test_attention_decode (--skip-tests: none);
#  2. the random-init shapes of scripts/gpu_models.py (Llama-3.2-1B,
#     SmolLM2-135M) and, for the HTTP runs, a random TinyLlama-shape F16
#     GGUF with the real LLaMA-2 vocabulary (scripts/gen_gguf_random.py; the
#     vocab GGUF from .vocab, a copy of ../shared/vocab): every sampled id
#     has text, so the served TTFT / ITL are real (the HF models borrow a
#     405-token tokenizer for a 128k / 49k vocabulary: most sampled ids have
#     no text, and the client times text);
#  3. single streams: test_cuda_perf decode steps (graphs, no sampling: the
#     GPU's share) against `nanoinfer bench` (TPOT p50, step_host_ms,
#     step_backend_ms: what the engine adds around it);
#  4. batched decode: test_cuda_perf at 64 / 256 sequences and `nanoinfer
#     bench` 256 x 128+128 and 1 x 4000+64, NI_CUDA_ATT_STAGE=0 / 1
#     interleaved, --rounds times; the eager per-phase profile at 256;
#  5. scripts/http_loss.py at --conc (default 64,128,256) on the GGUF:
#     offline against served at the same concurrency, TTFT / ITL / TPOT.
# Inside BUDGET_S (default 560 s); steps that would not fit are skipped and
# say so. Logs under $OUT (summary.txt, tests.log, perf.log, bench.log,
# http.log, http_loss.jsonl, model.log). Binaries: gpu_bins
# (scripts/gpu_lib.sh). Carry .gpu and .vocab.
# Usage: bash scripts/gpu_serve.sh [--rounds N] [--conc LIST] [--skip-tests] [--skip-http]
set -u
cd "$(dirname "$0")/.."
ROUNDS=2; CONC=64,128,256; HTTP=1; TESTS=1
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --conc) CONC=$2; shift ;;
    --skip-http) HTTP=0 ;;
    --skip-tests) TESTS=0 ;;
  esac
  shift
done
# shellcheck disable=SC1091
source scripts/gpu_lib.sh
gpu_bins "test_cuda_ops test_cuda_backend test_cuda_graph test_cuda_perf"

TL=$OUT/tests.log PL=$OUT/perf.log BL=$OUT/bench.log
if [ "$TESTS" = 1 ]; then
  core_tests "$TL"
fi
step "build random models" "$OUT/model.log" 150 env PYTHONUNBUFFERED=1 python3 scripts/gpu_models.py
[ "$HTTP" = 1 ] && step "random TinyLlama GGUF" "$OUT/model.log" 120 python3 scripts/gen_gguf_random.py \
  --preset tinyllama --type f16 --vocab-dir .vocab --out /tmp/tl.gguf

bench() { # label env... -- args...
  local label=$1; shift
  bench_json "$label" "$BL" 120 30 "$@" && bench_line "$label"
}
step "perf smol S=1" "$PL" 60 env NI_PERF_MODEL=/tmp/smol NI_PERF_SEQS=1 NI_PERF_STEPS=128 NI_PERF_PROMPT=256 $BIN/test_cuda_perf
step "perf 1B S=1" "$PL" 60 env NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=1 NI_PERF_STEPS=128 NI_PERF_PROMPT=256 $BIN/test_cuda_perf
bench "smol single" -- --model /tmp/smol --num-requests 1 --input-len 128 --output-len 256 --warmup 1
bench "1B single" -- --model /tmp/l1b --num-requests 1 --input-len 128 --output-len 256 --warmup 1
# the bench's step is ~30 us longer than test_cuda_perf's C column (graphs + GPU sampler):
# a small KV pool (TLB reach of the cache rows) against the default 1 GiB
bench "1B single, 512 KV blocks" -- --model /tmp/l1b --num-requests 1 --input-len 128 --output-len 256 --warmup 1 --kv-blocks 512
bench "smol single, 512 KV blocks" -- --model /tmp/smol --num-requests 1 --input-len 128 --output-len 256 --warmup 1 --kv-blocks 512
for r in $(seq 1 "$ROUNDS"); do
  for s in 0 1; do
    step "perf 1B S=64,256 stage=$s" "$PL" 90 env NI_CUDA_ATT_STAGE=$s NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=64,256 NI_PERF_STEPS=32 $BIN/test_cuda_perf
    step "perf smol S=256 stage=$s" "$PL" 60 env NI_CUDA_ATT_STAGE=$s NI_PERF_MODEL=/tmp/smol NI_PERF_SEQS=256 NI_PERF_STEPS=32 $BIN/test_cuda_perf
    bench "1B 256 x 128+128 stage=$s" NI_CUDA_ATT_STAGE=$s -- --model /tmp/l1b --num-requests 256 --max-num-seqs 256 --input-len 128 --output-len 128 --warmup 256
    bench "1B 1 x 4000+64 stage=$s" NI_CUDA_ATT_STAGE=$s -- --model /tmp/l1b --num-requests 1 --input-len 4000 --output-len 64 --warmup 1
  done
done
step "profile 1B S=256" "$PL" 120 env NI_PERF_PROFILE=1 NI_PERF_MODEL=/tmp/l1b NI_PERF_SEQS=256 NI_PERF_STEPS=16 $BIN/test_cuda_perf

if [ "$HTTP" = 1 ] && [ -f /tmp/tl.gguf ]; then
  step "http_loss TinyLlama c=$CONC" "$OUT/http.log" 400 python3 scripts/http_loss.py --model /tmp/tl.gguf \
    --device cuda --conc "$CONC" --bin $BIN/nanoinfer --out "$OUT/http_loss.jsonl"
fi

echo
echo "---- key lines"
grep -hE "FAILED|ERROR SUMMARY|\[  PASSED" "$TL" 2>/dev/null | head -20
grep -hE "ms/step|seqs |^  *[a-z_]+ .*%|total" "$PL" 2>/dev/null | head -60
grep -hE "^\|" "$OUT/http.log" 2>/dev/null
echo
cat "$sum"
exit $status
