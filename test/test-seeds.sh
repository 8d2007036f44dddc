#!/usr/bin/env bash
# Runs every randomised test program (those reading NI_TEST_SEED) over N
# consecutive seeds, FIRST .. FIRST+N-1, and prints per program how many
# seeds passed, or that it skipped (a skip proves nothing: CUDA programs skip
# without a GPU, so sweep them on the GPU machine), with the failing seeds
# and the tail of the first failure's output. Exits 1 when any seed failed.
# Usage: test/test-seeds.sh [N=50] [FIRST=1]   (BUILD, NI_MODEL from make)
set -u
. "$(dirname "$0")/test-env.sh"
N=${1:-50}; FIRST=${2:-1}; BUILD=${BUILD:-build}
log=$(mktemp); trap 'rm -f "$log"' EXIT
bad=0
for src in $(grep -l NI_TEST_SEED test/test_*.c); do
  t=$BUILD/test/$(basename "$src" .c)
  [ -x "$t" ] || { echo "$t: not built"; bad=1; continue; }
  ok=0; failed=(); skipped=0
  for ((s = FIRST; s < FIRST + N; s++)); do
    if NI_TEST_SEED=$s "$t" > "$log" 2>&1; then
      ok=$((ok + 1))
      grep -q SKIPPED "$log" && skipped=1
    else
      [ ${#failed[@]} -eq 0 ] && { echo "--- $(basename "$t") seed $s:"; tail -8 "$log"; }
      failed+=("$s")
    fi
  done
  echo "$(basename "$t"): $ok/$N seeds passed${failed:+; failing: ${failed[*]:0:10}}$(
    [ $skipped -eq 1 ] && echo " (some tests SKIPPED here: see their output)")"
  [ ${#failed[@]} -eq 0 ] || bad=1
done
exit $bad
