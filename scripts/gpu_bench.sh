#!/usr/bin/env bash
# gpu_bench.sh - the GPU figures of docs/perf.md, run on the GPU machine from
# the repository root (carry .gpu; logs and results under $OUT):
#   1. device-to-device copy bandwidth (torch, 1 GiB buffers), the roofline's
#      denominator;
#   2. single-stream decode of a random-init Llama-3.2-1B-shaped model in BF16
#      (built by scripts/gpu_reference.py's make_config), as tokens/s and as a
#      fraction of the roofline (copy bandwidth / bytes of weights per token);
#   3. `nanoinfer bench` on the default 256-request workload with the default
#      model, when $NI_GPU_MODEL (default /opt/smol.gguf) exists.
# Usage: bash scripts/gpu_bench.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source scripts/gpu_env.sh
res=$OUT/bench_results.txt
: > "$res"
note() { echo "$*" | tee -a "$res"; }
note "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
if ! make -j"$(nproc)" USE_CUDA=1 build/nanoinfer > "$OUT/bench_build.log" 2>&1; then
  note "build FAILED"; tail -30 "$OUT/bench_build.log"; exit 1
fi

python3 scripts/gpu_copy_bw.py 2>&1 | tee -a "$res"

python3 - <<'PY' > "$OUT/bench_model.log" 2>&1
import os, shutil, sys, torch
sys.path.insert(0, "scripts")
from gpu_reference import make_config
from transformers import LlamaForCausalLM
cfg = make_config("llama3")
cfg.max_position_embeddings = 8192
torch.manual_seed(0)
with torch.device("cuda"):
    m = LlamaForCausalLM(cfg)
m = m.to(torch.bfloat16)
d = "/tmp/l1b"
shutil.rmtree(d, ignore_errors=True)
m.save_pretrained(d, safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join("test/models/tiny-llama3", f), d)
n = sum(p.numel() for p in m.parameters())
print(f"params {n}")
PY
params=$(grep -o 'params [0-9]*' "$OUT/bench_model.log" | cut -d' ' -f2)
note "llama-3.2-1B-shaped model: ${params:-?} parameters (BF16: $(( ${params:-0} * 2 / 1000000 )) MB of weights read per token)"
./build/nanoinfer bench --model /tmp/l1b --device cuda --num-requests 1 --input-len 128 \
  --output-len 512 --json > "$OUT/bench_1b_single.json" 2> "$OUT/bench_1b_single.err"
note "1B single stream: $(cat "$OUT/bench_1b_single.json")"
./build/nanoinfer bench --model /tmp/l1b --device cuda --num-requests 64 --input-len 128 \
  --output-len 256 --json > "$OUT/bench_1b_64.json" 2>> "$OUT/bench_1b_single.err"
note "1B 64 concurrent: $(cat "$OUT/bench_1b_64.json")"

M=${NI_GPU_MODEL:-/opt/smol.gguf}
if [ -f "$M" ]; then
  note "default model sha256: $(sha256sum "$M" | cut -c1-16)"
  ./build/nanoinfer bench --model "$M" --device cuda --json > "$OUT/bench_smol_256.json" 2> "$OUT/bench_smol.err"
  note "SmolLM2 default workload (256 requests, in/out uniform [100,1024]): $(cat "$OUT/bench_smol_256.json")"
  ./build/nanoinfer generate --model "$M" --device cuda --prompt "The capital of France is" --max-tokens 24 >> "$res" 2>&1
else
  note "default model not at $M: skipped the 256-request workload"
fi
