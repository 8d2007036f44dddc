#!/usr/bin/env bash
# Runs every randomised test program over N consecutive seeds (NI_TEST_SEED
# = FIRST .. FIRST+N-1) and prints, per program, how many seeds passed and
# the first failing seeds. Exit status 1 when any seed failed.
# Usage: test/test-seeds.sh [N=50] [FIRST=1]   (BUILD, NI_MODEL from make)
# CUDA programs skip ("no GPU") on a machine without one; run this on the
# GPU machine to sweep them.
set -u
N=${1:-50}; FIRST=${2:-1}; BUILD=${BUILD:-build}
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512_bf16 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Cooperlake
  elif grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell; fi
fi
bad=0
for src in $(grep -l NI_TEST_SEED test/test_*.c); do
  t=$BUILD/test/$(basename "$src" .c)
  [ -x "$t" ] || { echo "$t: not built"; bad=1; continue; }
  ok=0; failed=()
  for ((s = FIRST; s < FIRST + N; s++)); do
    if NI_TEST_SEED=$s "$t" > "/tmp/seeds.$$.log" 2>&1; then ok=$((ok + 1));
    else failed+=("$s"); fi
  done
  echo "$(basename "$t"): $ok/$N seeds passed${failed:+; failing: ${failed[*]:0:10}}"
  [ ${#failed[@]} -eq 0 ] || bad=1
done
rm -f "/tmp/seeds.$$.log"
exit $bad
