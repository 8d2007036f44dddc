#!/usr/bin/env bash
# e2e_openai.sh - the official `openai` Python package against `nanoinfer serve`
# (test/py/test_openai.py starts and kills its own servers on loopback).
# test/py-env.sh installs the package when missing (pip, pip
# --break-system-packages, a venv under $BUILD/pyenv) and skips, saying why,
# only when it cannot (under CI=true that is a failure).
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
export BUILD
. test/py-env.sh
py_env openai
[ -x "$BUILD/nanoinfer" ] || { echo "FAIL: $BUILD/nanoinfer is not built"; exit 1; }
exec "$PY" test/py/test_openai.py -v
