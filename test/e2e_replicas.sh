#!/usr/bin/env bash
# e2e_replicas.sh - two `nanoinfer serve` replicas behind nginx, configured with
# the nginx.conf of docs/scaling.md: session affinity (consistent hash of
# X-Session-Id) and least_conn, prefix-cache hits across turns, SIGKILL of a
# replica under load, a replacement via `nginx -s reload`, SIGTERM draining.
# test/py/replicas.py does the work (its docstring lists the checks); nginx runs
# as the current user from a temporary prefix on a free loopback port, never
# the system service. Needs nginx (scripts/install-deps.sh): without it the
# test skips saying why, with CI=true it fails.
set -u
cd "$(dirname "$0")/.." || exit 1
. test/test-env.sh
export BUILD=${BUILD:-build}
exec python3 test/py/replicas.py
