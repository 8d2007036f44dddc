#!/usr/bin/env bash
# gpu_check.sh - build NanoInfer with CUDA and check the CUDA backend on a GPU
# machine: op tests, backend tests, compute-sanitizer (memcheck on both test
# programs, racecheck on the op tests) and, unless NI_SKIP_REFERENCE=1, the
# comparison with Hugging Face transformers (scripts/gpu_reference.py).
#
# Usage, from the repository root (logs go to $OUT, default ./gpu_logs):
#   bash ../shared/gpu/bundle-debs.sh libopenblas0 libopenblas0-pthread \
#        libopenblas-dev libopenblas-pthread-dev libgfortran5 libquadmath0   # once, here
#   then on the GPU machine (carry .gpu):  bash scripts/gpu_check.sh
# Each step has a time limit (STEP_TIMEOUT_* below) so the whole run stays
# inside one 10-minute device call; the last lines printed are a summary table.
# Writes at most 7 files under $OUT (summary.txt, build.log, ops.log,
# backend.log, memcheck.log, racecheck.log, reference.log).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
T_REF=${STEP_TIMEOUT_REFERENCE:-240}
T_MEM=${STEP_TIMEOUT_MEMCHECK:-150}
T_RACE=${STEP_TIMEOUT_RACECHECK:-150}

# shellcheck disable=SC1091
source scripts/gpu_env.sh

summary=$OUT/summary.txt
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
note "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
note "nvcc: $(nvcc --version | tail -1)"

t0=$(date +%s)
targets="build/libnanoinfer.a build/test/test_cuda build/test/test_cuda_ops build/test/test_cuda_backend build/test/test_cuda_ref"
if make -j"$(nproc)" USE_CUDA=1 $targets > "$OUT/build.log" 2>&1; then
  note "build: ok ($(( $(date +%s) - t0 )) s)"
else
  note "build: FAILED (see build.log)"; tail -40 "$OUT/build.log"; exit 1
fi
# the whole tree too, when it builds (other modules may be mid-change)
if make -j"$(nproc)" USE_CUDA=1 >> "$OUT/build.log" 2>&1; then note "full build: ok"; else note "full build: failed (not a CUDA problem if the CUDA targets built)"; fi

status=0
step() { # name log timeout cmd...
  local name=$1 log=$2 to=$3; shift 3
  local s=$(date +%s)
  timeout "$to" "$@" > "$log" 2>&1
  local rc=$?
  local res="ok"; [ $rc -ne 0 ] && res="FAILED rc=$rc" && status=1
  [ $rc -eq 124 ] && res="TIMEOUT after ${to}s" && status=1
  note "$(printf '%-22s %-18s %4d s' "$name" "$res" $(( $(date +%s) - s )))"
}

step test_cuda "$OUT/ops.log" 30 build/test/test_cuda
step test_cuda_ops "$OUT/ops.log.2" 120 build/test/test_cuda_ops
cat "$OUT/ops.log.2" >> "$OUT/ops.log"; rm -f "$OUT/ops.log.2"
step test_cuda_backend "$OUT/backend.log" 180 build/test/test_cuda_backend
if [ "${NI_SKIP_REFERENCE:-0}" != 1 ]; then
  step gpu_reference "$OUT/reference.log" "$T_REF" env PYTHONUNBUFFERED=1 python3 scripts/gpu_reference.py --out /tmp/ni_ref
fi
step memcheck_backend "$OUT/memcheck.log" "$T_MEM" compute-sanitizer --tool memcheck --error-exitcode 7 build/test/test_cuda_backend
step memcheck_ops "$OUT/memcheck.log.2" "$T_MEM" compute-sanitizer --tool memcheck --error-exitcode 7 build/test/test_cuda_ops
cat "$OUT/memcheck.log.2" >> "$OUT/memcheck.log"; rm -f "$OUT/memcheck.log.2"
step racecheck_ops "$OUT/racecheck.log" "$T_RACE" compute-sanitizer --tool racecheck --error-exitcode 7 build/test/test_cuda_ops

echo
echo "---- failures / key lines"
grep -hE "FAILED|ERROR SUMMARY|Error|error|rel err|nmse .*e-0[0-3]|PASS|FAIL|agreement|identical|decode steps" \
  "$OUT"/ops.log "$OUT"/backend.log "$OUT"/reference.log "$OUT"/memcheck.log "$OUT"/racecheck.log 2>/dev/null | head -80
echo
cat "$summary"
exit $status
