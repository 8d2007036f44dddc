#!/usr/bin/env bash
# gpu_peer_bench.sh - nanoinfer against llama.cpp on the GPU, same GGUF, one
# device session (issue 10, "Speed"). Run from the repository root on the GPU
# machine, carrying .gpu (Debian libraries, see gpu_env.sh), .peer (a public
# llama.cpp source tree, never committed) and .vocab (a copy of
# ../shared/vocab/*.gguf: the tokenizers the random models borrow):
#
#   bash scripts/gpu_peer_bench.sh            # results under $OUT
#
# Steps, each with its own timeout inside one total budget (BUDGET seconds,
# default 540, so that it fits one 10-minute call); a failing step is logged
# and the run moves on:
#   1. llama.cpp built with CUDA for sm_90 (llama-bench, llama-batched-bench,
#      llama-server) in the background, in $PEER_BUILD (default
#      build-peer-cuda: kept on a warm machine, a second call reuses it);
#   2. ours meanwhile: make USE_CUDA=1 BUILD=build-g build-g/nanoinfer;
#   3. the random-weight models (scripts/gen_gguf_random.py) in /tmp, reused
#      when already there: TinyLlama-1.1B-shaped F16 ($PRESET/$TYPE) and the
#      SmolLM2-135M shape in Q4_1 ($SMALL/$SMALL_TYPE);
#   4. copy bandwidth with torch (1 GiB device-to-device, read + write);
#   5. scripts/peer_bench.py: the rows of the issue's table (single-stream
#      decode, prefill 512 / 4000, batched B = 64 / 256 (+ ours at 512),
#      default-135M shape, served c = 64 when time is left), the ratio and
#      the memory roofline; then scripts/plot_peer.py.
# Output ($OUT, at most 8 files): peer_table.md, peer.json, peer_log.txt
# (every command, its output tail), build_log.txt, peer_throughput.png.
#
# Environment: BUDGET (540), USE_CUDA (1; 0 = a CPU dry run of the whole
# harness), PRESET/TYPE (tinyllama/f16), SMALL/SMALL_TYPE (smollm2/q4_1),
# BUILD_ONLY (1: stop after steps 1-4, e.g. a first call whose builds a
# second call on the warm machine reuses), MEASURE_MIN (150: seconds kept for
# step 5; the llama.cpp build is stopped then), ROWS (see peer_bench.py --rows), BATCH_SIZES (64,256,512), SERVED_CONC (64),
# PEER_SRC (.peer), PEER_BUILD, NI_BUILD (build-g), NI_BIN / PEER_BIN (use
# these binaries, build nothing), JOBS (nproc), BW_GBS (skip the bandwidth
# measurement), STEP_LIMIT (120 s per measuring command), PY (python3).
# CPU dry run (a llama.cpp CPU build in /tmp/peer-cpu):
#   USE_CUDA=0 PRESET=tiny SMALL=tiny BUDGET=300 PEER_BUILD=/tmp/peer-cpu \
#     NI_BUILD=build BATCH_SIZES=4,8 SERVED_CONC=4 OUT=/tmp/peer-out bash scripts/gpu_peer_bench.sh
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${BUDGET:-540}
DEADLINE=$((T0 + BUDGET))
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
USE_CUDA=${USE_CUDA:-1}
PRESET=${PRESET:-tinyllama}; TYPE=${TYPE:-f16}
SMALL=${SMALL:-smollm2}; SMALL_TYPE=${SMALL_TYPE:-q4_1}
PEER_SRC=${PEER_SRC:-.peer}
JOBS=${JOBS:-$(nproc)}
PY=${PY:-python3}
if [ "$USE_CUDA" = 1 ]; then
  PEER_BUILD=${PEER_BUILD:-build-peer-cuda}; NI_BUILD=${NI_BUILD:-build-g}
else
  PEER_BUILD=${PEER_BUILD:-build-peer-cpu}; NI_BUILD=${NI_BUILD:-build}
fi
NI_BIN_GIVEN=${NI_BIN:+1}; PEER_BIN_GIVEN=${PEER_BIN:+1}
NI_BIN=${NI_BIN:-$NI_BUILD/nanoinfer}
PEER_BIN=${PEER_BIN:-$PEER_BUILD/bin}
BLOG=$OUT/build_log.txt
: > "$BLOG"
# shellcheck disable=SC1091
[ "$USE_CUDA" = 1 ] && source scripts/gpu_env.sh
export NCCL_NVLS_ENABLE=0
left() { echo $((DEADLINE - $(date +%s))); }
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$BLOG"; }
# lim N: N seconds, or less when the budget has less left (minus a margin)
lim() { local l; l=$(( $(left) - 10 )); [ "$l" -lt "$1" ] && echo "$((l > 1 ? l : 1))" || echo "$1"; }

log "gpu_peer_bench: budget ${BUDGET}s, USE_CUDA=$USE_CUDA, $PRESET/$TYPE + $SMALL/$SMALL_TYPE, commit $(git rev-parse --short HEAD 2>/dev/null)"
if [ "$USE_CUDA" = 1 ]; then
  DEV=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
else
  DEV="CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"
fi
log "device: ${DEV:-unknown}"

# ---- 1. llama.cpp (background, its own session so a timeout can end it whole)
PEER_TOOLS="llama-bench llama-batched-bench llama-server"
peer_ok() { for t in $PEER_TOOLS; do [ -x "$PEER_BIN/$t" ] || return 1; done; }
PEER_PID=
if [ ! -d "$PEER_SRC" ] && ! peer_ok; then
  log "no llama.cpp source at $PEER_SRC and no binaries in $PEER_BIN: llama.cpp rows will fail"
elif [ -n "$PEER_BIN_GIVEN" ] || { peer_ok && [ "${PEER_REBUILD:-0}" = 0 ]; }; then
  log "llama.cpp binaries found in $PEER_BIN (PEER_REBUILD=1 rebuilds)"
else
  if [ "$USE_CUDA" = 1 ]; then
    CUDA_FLAGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
  else
    CUDA_FLAGS=""
  fi
  # shellcheck disable=SC2086
  SETSID=$(command -v setsid || true)
  $SETSID bash -c "{ [ -f '$PEER_BUILD/Makefile' ] || [ -f '$PEER_BUILD/build.ninja' ] || cmake -S '$PEER_SRC' -B '$PEER_BUILD' \
      $CUDA_FLAGS -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release; } && \
      cmake --build '$PEER_BUILD' -j$JOBS --target $PEER_TOOLS" > "$OUT/.peer_build.log" 2>&1 &
  PEER_PID=$!
  log "llama.cpp build started in $PEER_BUILD (pid $PEER_PID)"
fi

# ---- 2. ours
if [ -n "$NI_BIN_GIVEN" ]; then
  log "using $NI_BIN as given"
else
  log "building $NI_BIN (make -j$JOBS USE_CUDA=$USE_CUDA BUILD=$NI_BUILD)"
  if timeout "$(lim 300)" make -j"$JOBS" USE_CUDA="$USE_CUDA" BUILD="$NI_BUILD" "$NI_BUILD/nanoinfer" \
      > "$OUT/.ni_build.log" 2>&1; then
    log "ours built"
  else
    log "our build FAILED (or timed out):"; tail -25 "$OUT/.ni_build.log" | tee -a "$BLOG"
  fi
fi

# ---- 3. models (reused when the same command already wrote them)
gen() {  # gen PRESET TYPE -> path on stdout
  local f=/tmp/peer-$1-$2.gguf cmd="scripts/gen_gguf_random.py --preset $1 --type $2 --out /tmp/peer-$1-$2.gguf"
  if [ -f "$f" ] && [ "$(cat "$f.cmd" 2>/dev/null)" = "$cmd $(git hash-object scripts/gen_gguf_random.py)" ]; then
    log "model $f reused" >&2
  elif timeout "$(lim 120)" $PY $cmd >> "$BLOG" 2>&1; then
    echo "$cmd $(git hash-object scripts/gen_gguf_random.py)" > "$f.cmd"
    log "model $f written" >&2
  else
    log "model $f FAILED" >&2
  fi
  echo "$f"
}
MODEL=$(gen "$PRESET" "$TYPE")
SMALL_MODEL=$(gen "$SMALL" "$SMALL_TYPE")

# ---- 4. copy bandwidth
if [ -z "${BW_GBS:-}" ] && [ "$USE_CUDA" = 1 ]; then
  BW_GBS=$(timeout "$(lim 90)" $PY scripts/gpu_copy_bw.py --plain 2>> "$BLOG")
  log "copy bandwidth: ${BW_GBS:-?} GB/s (read + write, 1 GiB device to device)"
fi

# ---- wait for llama.cpp, leaving the measurements at least MEASURE_MIN seconds
MEASURE_MIN=${MEASURE_MIN:-$([ "${BUILD_ONLY:-0}" = 1 ] && echo 15 || echo 150)}
if [ -n "$PEER_PID" ]; then
  while kill -0 "$PEER_PID" 2>/dev/null && [ "$(left)" -gt "$MEASURE_MIN" ]; do sleep 2; done
  if kill -0 "$PEER_PID" 2>/dev/null; then
    log "llama.cpp build still running at the measuring deadline: stopped (a later call resumes it)"
    kill -- -"$PEER_PID" 2>/dev/null || kill "$PEER_PID" 2>/dev/null
  fi
  wait "$PEER_PID" 2>/dev/null
  tail -5 "$OUT/.peer_build.log" >> "$BLOG"
fi
for t in $PEER_TOOLS; do [ -x "$PEER_BIN/$t" ] || log "llama.cpp: no $PEER_BIN/$t (the rows that need it fail)"; done
rm -f "$OUT/.peer_build.log" "$OUT/.ni_build.log"
if [ "${BUILD_ONLY:-0}" = 1 ]; then log "BUILD_ONLY: done in $(( $(date +%s) - T0 ))s"; exit 0; fi

# ---- 5. measure (the driver cuts every command to the deadline), then plot
set -o pipefail
$PY scripts/peer_bench.py --ours "$NI_BIN" --peer-bin "$PEER_BIN" --model "$MODEL" \
  --preset "$PRESET" --type "$TYPE" --small-model "$SMALL_MODEL" --small-preset "$SMALL" \
  --small-type "$SMALL_TYPE" --out "$OUT" --scratch /tmp/peer-scratch --deadline "$((DEADLINE - 8))" \
  --step-limit "${STEP_LIMIT:-120}" ${BW_GBS:+--bw-gbs "$BW_GBS"} --device-name "$DEV" \
  --rows "${ROWS:-decode1,prefill512,prefill4000,batched,small1,served}" \
  --batch-sizes "${BATCH_SIZES:-64,256,512}" --served-conc "${SERVED_CONC:-64}" \
  $([ "$USE_CUDA" = 1 ] && echo --ours-arg=--device --ours-arg=cuda) || log "peer_bench.py failed"
timeout 20 $PY scripts/plot_peer.py "$OUT/peer.json" "$OUT/peer_throughput.png" 2>&1 | tee -a "$BLOG"
log "done in $(( $(date +%s) - T0 ))s"
