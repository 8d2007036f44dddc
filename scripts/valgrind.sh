#!/usr/bin/env bash
# valgrind.sh - `nanoinfer serve` under valgrind memcheck (`make valgrind`).
#
# Builds a CPU-only server without sanitizers (-O1 -g, BUILD=build/valgrind),
# starts it on loopback under
#   valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
# sends a few requests (a completion, a chat completion, a streamed completion
# read to [DONE], a streamed completion the client drops mid-generation, which
# the server aborts), then stops it with SIGTERM and waits for the exit.
# Fails when valgrind reports any memory error (invalid read/write, use of
# uninitialised values, bad free) or a definite leak, when a request does not
# get its answer, or when the server does not exit 0.
#
# Model: VALGRIND_MODEL, default test/models/tiny-llama3 (the committed tiny
# model: memcheck is 20-50x slower than native, the real 135M model takes
# minutes per request here). Log: build/valgrind/valgrind.log.
# Time here (2 shared cores): ~30 s for the -O1 build, ~15 s under memcheck.
set -u
cd "$(dirname "$0")/.." || exit 1
. test/test-env.sh
# valgrind 3.19 emulates no AVX-512: pin OpenBLAS to its AVX2 kernels
export OPENBLAS_CORETYPE=Haswell OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
B=build/valgrind
MODEL=${VALGRIND_MODEL:-test/models/tiny-llama3}
LOG=$B/valgrind.log
SRV_LOG=$B/server.log
for tool in valgrind curl jq; do
  command -v $tool >/dev/null || { echo "FAIL: $tool is required (make deps)"; exit 1; }
done
T0=$(date +%s)
make --no-print-directory -j"$(nproc)" USE_CUDA=0 BUILD=$B OPT="-O1 -march=x86-64-v3" "$B/nanoinfer" >"$B.build.log" 2>&1 ||
  { tail -30 "$B.build.log"; echo "FAIL: build"; exit 1; }
echo "valgrind: built $B/nanoinfer in $(( $(date +%s) - T0 ))s"

fail=0
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
T1=$(date +%s)
valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
  --error-exitcode=99 --track-origins=yes --num-callers=30 --log-file="$LOG" \
  "$B/nanoinfer" serve --model "$MODEL" --host 127.0.0.1 --port 0 --threads 2 --kv-blocks 256 >"$SRV_LOG" 2>&1 &
VG_PID=$!
trap 'kill -9 $VG_PID 2>/dev/null' EXIT
PORT=
for _ in $(seq 1 1200); do   # up to 2 minutes for the model load under memcheck
  PORT=$(grep -o 'listening on http://[^ ]*' "$SRV_LOG" | sed 's/.*://')
  [ -n "$PORT" ] && break
  kill -0 $VG_PID 2>/dev/null || break
  sleep 0.1
done
[ -n "$PORT" ] || { cat "$SRV_LOG" "$LOG"; echo "FAIL: the server did not start under valgrind"; exit 1; }
BASE=http://127.0.0.1:$PORT
# "listening" comes before the model load; /health is 200 once it is ready
for _ in $(seq 1 1200); do
  [ "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$BASE/health")" = 200 ] && break
  kill -0 $VG_PID 2>/dev/null || break
  sleep 0.1
done
[ "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$BASE/health")" = 200 ] ||
  { cat "$SRV_LOG" "$LOG"; echo "FAIL: the server never became healthy under valgrind"; exit 1; }
echo "valgrind: server up on $BASE after $(( $(date +%s) - T1 ))s"

# post PATH BODY -> body on stdout; fails on a non-200
post() { curl -sf -m 120 "$BASE$1" -d "$2"; }
out=$(post /v1/completions '{"prompt":"Once upon a time","max_tokens":8,"temperature":0}')
[ "$(jq -r '.choices[0].finish_reason' <<<"$out" 2>/dev/null)" = length ] || bad "completion: $out"
out=$(post /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8}')
[ "$(jq -r '.usage.completion_tokens' <<<"$out" 2>/dev/null)" -ge 1 ] 2>/dev/null || bad "chat: $out"
out=$(post /v1/completions '{"prompt":"Count:","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}')
grep -q '^data: \[DONE\]' <<<"$out" || bad "stream did not end with [DONE]: $out"
# the abort: a long stream the client drops once tokens flow (the tiny model's
# context is 512 tokens)
rm -f "$B/abort.sse"
curl -sN -m 120 "$BASE/v1/completions" -o "$B/abort.sse" \
  -d '{"prompt":"A long story:","max_tokens":480,"ignore_eos":true,"stream":true}' & C=$!
for _ in $(seq 1 600); do [ -s "$B/abort.sse" ] && break; sleep 0.1; done
kill $C 2>/dev/null; wait $C 2>/dev/null
[ -s "$B/abort.sse" ] || bad "the stream to abort never started"
aborted=
for _ in $(seq 1 600); do
  aborted=$(curl -s -m 30 "$BASE/metrics" | awk '$1 == "nanoinfer_requests_aborted_total{reason=\"disconnect\"}" {print $2}')
  [ "${aborted:-0}" -ge 1 ] 2>/dev/null && break
  sleep 0.1
done
[ "${aborted:-0}" -ge 1 ] 2>/dev/null || bad "the dropped stream was not aborted (disconnects: ${aborted:-none})"
out=$(post /v1/completions '{"prompt":"after the abort","max_tokens":2}') || bad "request after the abort"

kill -TERM $VG_PID
wait $VG_PID
rc=$?
trap - EXIT
echo "valgrind: server exited $rc, $(( $(date +%s) - T1 ))s under memcheck"
if [ $rc -eq 99 ] || grep -qE 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]|Invalid (read|write|free)|uninitialised' "$LOG"; then
  cat "$LOG"; bad "valgrind reported errors or definite leaks (log: $LOG)"
elif [ $rc -ne 0 ]; then
  tail -20 "$SRV_LOG"; cat "$LOG"; bad "the server exited $rc after SIGTERM"
fi
[ $fail -eq 0 ] && echo "valgrind: OK, no memory error and no definite leak (total $(( $(date +%s) - T0 ))s)"
[ $fail -eq 0 ]
