# gpu_lib.sh - sourced by the one-call GPU scripts (gpu_all.sh,
# gpu_att_lat.sh) after `cd` to the repository root: the GPU environment
# (gpu_env.sh), a time budget with a summary file, step() to run one timed
# and bounded command, and the binaries to run (gpu_bins).
# Before sourcing: OUT (log folder, default ./gpu_logs), BUDGET_S (seconds,
# default 560). Defines: sum (summary.txt), T0, left, note, step, status
# (1 once a step failed), bench_json / json_field / bench_line, core_tests,
# gpu_bins.
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source scripts/gpu_env.sh
BUDGET=${BUDGET_S:-560}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
sum=$OUT/summary.txt
: > "$sum"
note() { echo "$*" | tee -a "$sum"; }
note "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"

status=0
# step name log timeout cmd...: runs cmd (appending to log) within what is
# left of the budget; a summary line says ok / FAILED rc / TIMEOUT / SKIPPED.
step() {
  local name=$1 log=$2 to=$3; shift 3
  local l; l=$(left)
  if [ "$l" -lt 20 ]; then note "$(printf '%-30s SKIPPED (time budget)' "$name")"; return; fi
  [ "$to" -gt "$l" ] && to=$l
  local s; s=$(date +%s)
  echo "===== $name: $*" >> "$log"
  timeout "$to" "$@" >> "$log" 2>&1
  local rc=$?
  local res="ok"; [ $rc -ne 0 ] && res="FAILED rc=$rc" && status=1
  [ $rc -eq 124 ] && res="TIMEOUT after ${to}s"
  note "$(printf '%-30s %-18s %4d s' "$name" "$res" $(( $(date +%s) - s )))"
}

# bench_json label log timeout min_left env... -- args...: one `nanoinfer
# bench --device cuda --json args` with the env assignments, logged, within
# timeout (and the budget); sets BENCH_J to its JSON line ("" when it
# failed) and returns 0, or notes SKIPPED and returns 1 when less than
# min_left seconds of the budget are left.
# json_field name: a number of BENCH_J ("" when absent). NANOINFER, when
# set, names the nanoinfer binary (an A/B build) instead of $BIN/nanoinfer.
bench_json() {
  local label=$1 log=$2 to=$3 min=$4; shift 4
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  local l; l=$(left)
  BENCH_J=
  if [ "$l" -lt "$min" ]; then note "$(printf '%-34s SKIPPED (time budget)' "$label")"; return 1; fi
  [ "$to" -gt "$l" ] && to=$l
  echo "===== $label: ${envs[*]} nanoinfer bench $*" >> "$log"
  BENCH_J=$(env "${envs[@]}" timeout "$to" ${NANOINFER:-$BIN/nanoinfer} bench --device cuda --json "$@" 2>> "$log" | tail -1)
  echo "$BENCH_J" >> "$log"
}
json_field() { echo "$BENCH_J" | grep -o "\"$1\":[0-9.]*" | cut -d: -f2; }
# bench_line label: the summary line of the last bench_json (TPOT p50, output
# and total tok/s, host / backend ms per step; FAILED when it gave nothing).
bench_line() {
  note "$(printf '%-30s TPOT p50 %s ms  %s out tok/s  %s tok/s  host %s / backend %s ms/step' \
    "$1" "$(json_field tpot_p50_ms)" "$(json_field output_tokens_per_s)" \
    "$(json_field total_tokens_per_s)" "$(json_field step_host_ms)" "$(json_field step_backend_ms)")"
  [ -n "$BENCH_J" ] || note "$(printf '%-30s FAILED' "$1")"
}

# core_tests log: test_cuda_ops, test_cuda_backend, test_cuda_graph and
# memcheck of the decode attention op test, each a step logged to log.
core_tests() {
  step "ops" "$1" 150 $BIN/test_cuda_ops
  step "backend" "$1" 150 $BIN/test_cuda_backend
  step "graph" "$1" 120 $BIN/test_cuda_graph
  step "memcheck: attention decode" "$1" 150 env NI_TEST_FILTER=test_attention_decode \
    compute-sanitizer --tool memcheck --error-exitcode 7 $BIN/test_cuda_ops
}

# gpu_bins "test programs...": sets BIN to a folder holding nanoinfer and
# them: .gpu/bin when its binaries run here (built on the development
# machine, `gpu_all.sh --prebuild`; or unpacked from .gpu/bins.tar.xz, the
# stripped binaries compressed under the carry limit), else a fresh
# `make USE_CUDA=1` (exits on a failed build).
gpu_bins() {
  local tests=$1
  BIN=.gpu/bin
  [ -f .gpu/bins.tar.xz ] && mkdir -p $BIN && tar xJf .gpu/bins.tar.xz -C $BIN
  if [ -x $BIN/nanoinfer ] && $BIN/nanoinfer --version > /dev/null 2>&1; then
    note "prebuilt binaries from .gpu/bin"
    return
  fi
  local s; s=$(date +%s)
  if make -j"$(nproc)" USE_CUDA=1 build/nanoinfer $(for t in $tests; do echo build/test/$t; done) > "$OUT/build.log" 2>&1; then
    note "build here: ok ($(( $(date +%s) - s )) s)"
  else
    note "build: FAILED"; tail -30 "$OUT/build.log"; exit 1
  fi
  mkdir -p /tmp/nibin && cp build/nanoinfer /tmp/nibin/ && for t in $tests; do cp build/test/$t /tmp/nibin/; done
  BIN=/tmp/nibin
}
