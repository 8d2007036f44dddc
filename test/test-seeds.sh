#!/usr/bin/env bash
# Runs every randomised test program over N consecutive seeds, FIRST ..
# FIRST+N-1, and ends with a table: per program the seeds run, passed and
# failed, on how many seeds some test skipped, the failing seeds, and whether
# some or all of its tests skipped (a skip
# proves nothing: CUDA programs skip without a GPU, so sweep them on the GPU
# machine). The tail of each program's first failure is printed as it comes.
# A program is randomised when it calls tu_seed() (test_util.h) or reads
# NI_TEST_SEED itself; both are found by grep, so a new randomised test is
# swept without being listed here. Exits 1 when any seed failed or a program
# is not built. Tests that skip under NI_TEST_SKIP_SLOW (tu_skip_if_slow:
# test_q8's SmolLM2 runs, deterministic, about a minute each on 2 cores) skip
# here too, since no seed changes them: `make test` runs them once.
# SEEDS_SLOW=1 sweeps them as well.
# Usage: test/test-seeds.sh [N=50] [FIRST=1]   (BUILD, NI_MODEL from make)
set -u
. "$(dirname "$0")/test-env.sh"
N=${1:-50}; FIRST=${2:-1}; BUILD=${BUILD:-build}
[ "${SEEDS_SLOW:-0}" = 1 ] || export NI_TEST_SKIP_SLOW=1
log=$(mktemp); trap 'rm -f "$log"' EXIT
bad=0; rows=()
for src in $(grep -l -e 'tu_seed(' -e NI_TEST_SEED test/test_*.c | grep -v '/test_util\.c$'); do
  name=$(basename "$src" .c); t=$BUILD/test/$name
  if [ ! -x "$t" ]; then rows+=("$name|0|0|0|0|not built"); bad=1; continue; fi
  ok=0; failed=(); skipped=0; empty=0
  for ((s = FIRST; s < FIRST + N; s++)); do
    if NI_TEST_SEED=$s "$t" > "$log" 2>&1; then
      ok=$((ok + 1))
      grep -q SKIPPED "$log" && skipped=$((skipped + 1))
      # cmocka's "[  PASSED  ] 0 test(s)": every test skipped, the seed proved nothing
      grep -q 'PASSED  \] 0 test' "$log" && empty=$((empty + 1))
    else
      [ ${#failed[@]} -eq 0 ] && { echo "--- $name seed $s:"; tail -8 "$log"; }
      failed+=("$s")
    fi
  done
  note=
  [ ${#failed[@]} -eq 0 ] || { note="failing seeds: ${failed[*]:0:10}"; bad=1; }
  if [ $empty -gt 0 ]; then note="${note:+$note; }every test SKIPPED on $empty seeds (no GPU?)"
  elif [ $skipped -gt 0 ]; then note="${note:+$note; }some tests SKIPPED (see their output)"; fi
  rows+=("$name|$N|$ok|${#failed[@]}|$skipped|$note")
  echo "$name: $ok/$N seeds passed"
done
echo
printf '%-22s %6s %6s %6s %8s  %s\n' program seeds passed failed skipping note
for r in "${rows[@]}"; do
  IFS='|' read -r p n o f k note <<< "$r"
  printf '%-22s %6s %6s %6s %8s  %s\n' "$p" "$n" "$o" "$f" "$k" "$note"
done
echo "seeds $FIRST..$((FIRST + N - 1)): $([ $bad -eq 0 ] && echo PASS || echo FAIL)"
exit $bad
