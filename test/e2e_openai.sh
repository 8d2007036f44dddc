#!/usr/bin/env bash
# e2e_openai.sh - the official `openai` Python package against `nanoinfer serve`
# (test/py/test_openai.py starts and kills its own servers on loopback).
# Installs the package when missing: pip, then pip --break-system-packages
# (Debian's externally-managed Python), then a venv under build/. Skips, saying
# why, only when none of these can install it (no package index reachable).
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
export BUILD
PY=python3
if ! $PY -c 'import openai' 2>/dev/null; then
  echo "installing the openai package..."
  if ! $PY -m pip install -q openai >/dev/null 2>&1 &&
     ! $PY -m pip install -q --break-system-packages openai >/dev/null 2>&1; then
    if [ -x "$BUILD/pyenv/bin/python" ] || $PY -m venv "$BUILD/pyenv" >/dev/null 2>&1; then
      "$BUILD/pyenv/bin/python" -c 'import openai' 2>/dev/null ||
        "$BUILD/pyenv/bin/pip" install -q openai >/dev/null 2>&1
      PY=$BUILD/pyenv/bin/python
    fi
  fi
fi
if ! $PY -c 'import openai' 2>/dev/null; then
  echo "SKIP: the openai Python package is not installed and could not be installed (offline?)"
  exit 0
fi
[ -x "$BUILD/nanoinfer" ] || { echo "FAIL: $BUILD/nanoinfer is not built"; exit 1; }
exec $PY test/py/test_openai.py -v
