#!/usr/bin/env bash
# Runs every test binary given as arguments from the repository root, then the
# end-to-end shell tests (test/e2e_*.sh). Prints a summary; exits non-zero if
# any test failed. Tests that cannot run here (no GPU, no shared vocab) skip
# with a message saying why; they never pass silently. NI_E2E_SKIP="e2e_a
# e2e_b" leaves those e2e scripts out with a SKIP line (the ASan run: too slow).
set -u
. "$(dirname "$0")/test-env.sh"
fail=0; n=0; failed=(); skipped=()
for t in "$@"; do
  n=$((n+1))
  echo "=== $t"
  if ! "$t"; then fail=$((fail+1)); failed+=("$t"); fi
done
for s in test/e2e_*.sh; do
  [ -e "$s" ] || continue
  name=$(basename "$s" .sh)
  if [[ " ${NI_E2E_SKIP:-} " == *" $name "* ]]; then
    echo "=== $s: SKIP (NI_E2E_SKIP names it: too slow for this build, e.g. make asan)"
    skipped+=("$name"); continue
  fi
  n=$((n+1))
  echo "=== $s"
  if ! bash "$s"; then fail=$((fail+1)); failed+=("$s"); fi
done
echo
echo "test programs: $n, failed: $fail ${failed[*]:-}"
[ ${#skipped[@]} -eq 0 ] || echo "e2e scripts skipped (NI_E2E_SKIP): ${skipped[*]}"
[ "$fail" -eq 0 ]
