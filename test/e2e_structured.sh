#!/usr/bin/env bash
# e2e_structured.sh - structured outputs end to end: test/py/test_structured.py
# (official `openai` client + `jsonschema`) against servers it starts on
# loopback with the real model ($NI_MODEL, default
# models/SmolLM2-135M-Instruct.Q4_1.gguf) and test/models/tiny-llama3: the
# schema corpus test/data/schemas.json must come back valid, the bad corpus
# test/data/bad_schemas.json must be refused with a 400 naming the parameter;
# then tool calling, test/py/test_tools.py (real model + tiny-qwen3).
# Python packages come from test/py-env.sh (skip with a message only when they
# cannot be installed; under CI=true that is a failure). Without the real
# model file the real-model tests skip (CI=true: fail); the rest still runs.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
export BUILD
. test/test-env.sh
. test/py-env.sh
py_env openai jsonschema
[ -x "$BUILD/nanoinfer" ] || { echo "FAIL: $BUILD/nanoinfer is not built"; exit 1; }
rc=0
"$PY" test/py/test_structured.py -v || rc=1
"$PY" test/py/test_tools.py -v || rc=1
exit $rc
