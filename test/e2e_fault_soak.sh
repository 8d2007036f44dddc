#!/usr/bin/env bash
# e2e_fault_soak.sh - backend failures under load (issue 14), inside `make
# test`: scripts/soak.sh's fault mode with the tiny model (test/models/
# tiny-llama3), 64 connections of streamed and non-streamed requests.
#   1. forward:200 (eio: a lost device, sticky): every in-flight and later
#      request ends with a 500 / 503 OpenAI error (an SSE error event for a
#      stream), none hangs or is cut short, /health answers 503, and the
#      server exits non-zero within 10 s of the fault.
#   2. forward:200-230:enomem (transient): the batches of those forwards fail
#      with the same errors, later requests complete, KV blocks go back to 0
#      and /health is 200 again.
# First the client's own checks against a misbehaving fake server (a hang, a
# 200 cut short, a non-JSON 500 must each count as a failure).
# The fault fires after a second or two of load on 2 CPU cores; SECONDS bounds
# a run that never sees it.
set -u
cd "$(dirname "$0")/.." || exit 1
rc=0
python3 test/py/soak_client.py --self-test || rc=1
MODEL=test/models/tiny-llama3 SOAK_FAULT=forward:200 bash scripts/soak.sh 60 || rc=1
MODEL=test/models/tiny-llama3 SOAK_FAULT=forward:200-230:enomem bash scripts/soak.sh 10 || rc=1
exit $rc
