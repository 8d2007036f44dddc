#!/usr/bin/env bash
# e2e_soak.sh - scripts/soak.sh for ~45 s with the tiny model (test/models/
# tiny-llama3) inside `make test`: 64 connections of mixed streamed,
# non-streamed and abandoned requests; zero socket errors, only 2xx and
# deliberate 429/503, RSS growth < 5 % after the warm-up, KV blocks back to 0,
# /health 200 at the end. The 10-minute run is `make soak` (the real model).
# SOAK_SECONDS overrides the length.
set -u
cd "$(dirname "$0")/.." || exit 1
MODEL=test/models/tiny-llama3 bash scripts/soak.sh "${SOAK_SECONDS:-45}"
