#!/usr/bin/env bash
# Runs every randomised test program over N consecutive seeds, FIRST ..
# FIRST+N-1, and ends with a table: per program the seeds run, passed and
# failed, the failing seeds, and whether some of its tests skipped (a skip
# proves nothing: CUDA programs skip without a GPU, so sweep them on the GPU
# machine). The tail of each program's first failure is printed as it comes.
# A program is randomised when it calls tu_seed() (test_util.h) or reads
# NI_TEST_SEED itself; both are found by grep, so a new randomised test is
# swept without being listed here. Exits 1 when any seed failed or a program
# is not built.
# Usage: test/test-seeds.sh [N=50] [FIRST=1]   (BUILD, NI_MODEL from make)
set -u
. "$(dirname "$0")/test-env.sh"
N=${1:-50}; FIRST=${2:-1}; BUILD=${BUILD:-build}
log=$(mktemp); trap 'rm -f "$log"' EXIT
bad=0; rows=()
for src in $(grep -l -e 'tu_seed(' -e NI_TEST_SEED test/test_*.c | grep -v '/test_util\.c$'); do
  name=$(basename "$src" .c); t=$BUILD/test/$name
  if [ ! -x "$t" ]; then rows+=("$name|0|0|0|not built"); bad=1; continue; fi
  ok=0; failed=(); skipped=0
  for ((s = FIRST; s < FIRST + N; s++)); do
    if NI_TEST_SEED=$s "$t" > "$log" 2>&1; then
      ok=$((ok + 1))
      grep -q SKIPPED "$log" && skipped=1
    else
      [ ${#failed[@]} -eq 0 ] && { echo "--- $name seed $s:"; tail -8 "$log"; }
      failed+=("$s")
    fi
  done
  note=
  [ ${#failed[@]} -eq 0 ] || { note="failing seeds: ${failed[*]:0:10}"; bad=1; }
  [ $skipped -eq 1 ] && note="${note:+$note; }some tests SKIPPED (see their output)"
  rows+=("$name|$N|$ok|${#failed[@]}|$note")
  echo "$name: $ok/$N seeds passed"
done
echo
printf '%-22s %6s %6s %6s  %s\n' program seeds passed failed note
for r in "${rows[@]}"; do
  IFS='|' read -r p n o f note <<< "$r"
  printf '%-22s %6s %6s %6s  %s\n' "$p" "$n" "$o" "$f" "$note"
done
echo "seeds $FIRST..$((FIRST + N - 1)): $([ $bad -eq 0 ] && echo PASS || echo FAIL)"
exit $bad
