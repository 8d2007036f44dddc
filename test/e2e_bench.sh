#!/usr/bin/env bash
# e2e_bench.sh - `nanoinfer bench --url` (server/cli/bench_http.c) against
# `nanoinfer serve` on the tiny model, on loopback.
#
# Checks, for /v1/completions and /v1/chat/completions: a sweep at concurrency
# 1,4 and a Poisson run (--request-rate, at most 4 in flight) exit 0 and write
# one --json object per run with every field; per run completed = --num-prompts,
# failed = 0, no errors, output tokens = num_prompts x output_len (from usage),
# prompt tokens reported, one ITL gap per text event after the first, TTFT <=
# E2E (mean and each percentile), p50 <= p90 <= p99 for TTFT / TPOT / ITL /
# E2E. Then the error paths: a too-long max_tokens -> every request counted as http_400 and exit 1; a
# server with one slot and a one-deep queue under 8 connections -> http_429
# counted, ok + failed = num_prompts; no server -> exit 1 naming the address;
# bad options -> exit 2; --help lists the options; and the offline `bench
# --model` path still runs, --warmup (untimed, uncounted) and --prefix
# included (prompts kept within the context). The parsers themselves: test/test_srv_client.c.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
BIN=$BUILD/nanoinfer
TINY=test/models/tiny-llama3
TMP=$(mktemp -d /tmp/ni_e2e_bench.XXXXXX)
PIDS=()
pass=0 fail=0
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$fail" -eq 0 ] || [ -z "${KEEP_TMP:-}" ]; then rm -rf "$TMP"; else echo "logs kept in $TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { local d=$1; shift; if "$@" >/dev/null 2>&1; then ok; else bad "$d"; fi; }
[ -x "$BIN" ] || { echo "FAIL: $BIN is not built"; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 is required"; exit 1; }

# start_server LOGNAME ARGS... -> SRV_PID, BASE (waits for /health 200)
start_server() {
  local log=$TMP/$1.log; shift
  "$BIN" serve --host 127.0.0.1 --port 0 "$@" >"$log" 2>&1 &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  local port=
  for _ in $(seq 1 400); do
    port=$(grep -o 'listening on http://[^ ]*' "$log" | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.025
  done
  [ -n "$port" ] || { echo "server did not start:"; cat "$log"; return 1; }
  BASE=http://127.0.0.1:$port
  for _ in $(seq 1 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health")" = 200 ] && return 0
    sleep 0.025
  done
  echo "server never became healthy:"; cat "$log"; return 1
}

# check_runs FILE RUNS NUM OUTLEN: the JSON checks of a successful sweep
check_runs() {
  python3 - "$@" <<'EOF'
import json, sys
path, runs, num, outlen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
res = json.load(open(path))
bad = []
def need(c, what):
    if not c:
        bad.append(what)
need(isinstance(res, list) and len(res) == runs, f"{runs} run objects (got {len(res)})")
for i, r in enumerate(res):
    p = f"run {i}: "
    for k in ("settings", "completed", "failed", "errors", "retries", "duration_s", "request_throughput",
              "output_throughput", "total_token_throughput", "input_tokens", "output_tokens",
              "output_tokens_from_usage", "sse_events", "client_cpu_s", "client_cpu_pct",
              "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        need(k in r, p + "field " + k)
    s = r.get("settings", {})
    for k in ("url", "endpoint", "model", "concurrency", "request_rate", "num_prompts", "input_len",
              "output_len", "temperature", "seed", "ignore_eos"):
        need(k in s, p + "settings." + k)
    need(r.get("completed") == num, p + f"completed {r.get('completed')} != {num}")
    need(r.get("failed") == 0 and r.get("errors") == {}, p + f"errors {r.get('errors')} {r.get('error_examples')}")
    need(r.get("output_tokens") == num * outlen, p + f"output tokens {r.get('output_tokens')} != {num * outlen}")
    need(r.get("output_tokens_from_usage") is True, p + "output tokens from usage")
    need(r.get("input_tokens", 0) >= num, p + "prompt tokens reported")
    need(r.get("duration_s", 0) > 0 and r.get("output_throughput", 0) > 0, p + "throughput")
    need(abs(r["output_throughput"] * r["duration_s"] - r["output_tokens"]) < 1e-6 * r["output_tokens"] + 1e-6,
         p + "output_throughput = output_tokens / duration")
    need(r.get("sse_events", 0) >= r.get("text_events", 0) >= num, p + "SSE events counted")
    for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        st = r.get(m, {})
        need(st.get("n", 0) > 0, p + m + ".n")
        need(0 <= st.get("p50", -1) <= st.get("p90", -1) <= st.get("p99", -1), p + m + f" percentiles ordered {st}")
        need(st.get("mean", -1) >= 0, p + m + ".mean")
    need(r["ttft_ms"]["n"] == num and r["e2e_ms"]["n"] == num, p + "one TTFT and one E2E per request")
    # a token may carry no text of its own (a partial UTF-8 character is held back)
    need(num * outlen // 2 <= r["text_events"] <= r["output_tokens"], p + f"text events {r['text_events']}")
    need(r["itl_ms"]["n"] == r["text_events"] - num, p + f"ITL gaps {r['itl_ms']['n']} != text events - requests")
    for q in ("mean", "p50", "p90", "p99"):
        need(r["ttft_ms"][q] <= r["e2e_ms"][q], p + f"TTFT {q} <= E2E {q}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
EOF
}

start_server tiny --model "$TINY" || exit 1
N=12 OUT=16
for ep in completions chat; do
  timeout 120 "$BIN" bench --url "$BASE" --endpoint $ep --num-prompts $N --input-len 24:40 --output-len $OUT \
    --concurrency 1,4 --json "$TMP/$ep.json" >"$TMP/$ep.out" 2>&1
  check "bench --url --endpoint $ep --concurrency 1,4 exits 0 ($(tail -3 "$TMP/$ep.out" | tr '\n' ' '))" test $? -eq 0
  out=$(check_runs "$TMP/$ep.json" 2 $N $OUT 2>&1)
  check "$ep sweep JSON: $out" test -z "$out"
  check "$ep: the human report has a TTFT row" grep -q '^  TTFT ' "$TMP/$ep.out"
  check "$ep: the sweep ends with the summary table" grep -q 'out tok/s' "$TMP/$ep.out"
  timeout 120 "$BIN" bench --url "$BASE/v1" --endpoint $ep --num-prompts $N --input-len 32 --output-len $OUT \
    --concurrency 4 --request-rate 40 --json "$TMP/$ep-rate.json" >"$TMP/$ep-rate.out" 2>&1
  check "bench --url .../v1 --endpoint $ep --request-rate 40 exits 0" test $? -eq 0
  out=$(check_runs "$TMP/$ep-rate.json" 1 $N $OUT 2>&1)
  check "$ep rate JSON: $out" test -z "$out"
  check "$ep rate: settings.request_rate 40, concurrency 4" \
    python3 -c "import json,sys; r=json.load(open('$TMP/$ep-rate.json'))[0]['settings']; sys.exit(not (r['request_rate']==40 and r['concurrency']==4))"
done
check "the server logged the chat requests" grep -q 'POST /v1/chat/completions" 200' "$TMP/tiny.log"
check "prompts were sized with /tokenize" \
  python3 -c "import json,sys; sys.exit(not json.load(open('$TMP/completions.json'))[0]['settings']['prompt_sized_by_tokenize'])"

# errors: every request refused with 400 -> counted by status, exit 1
timeout 60 "$BIN" bench --url "$BASE" --num-prompts 3 --concurrency 2 --output-len 100000 --json "$TMP/e400.json" \
  >"$TMP/e400.out" 2>&1
check "all requests 400 -> exit 1" test $? -eq 1
check "http_400 counted for every request" \
  python3 -c "import json,sys; r=json.load(open('$TMP/e400.json'))[0]; sys.exit(not (r['errors']=={'http_400':3} and r['completed']==0 and 'maximum context' in r['error_examples']['http']))"

# 429: one running slot, one queued, eight connections
start_server queue --model "$TINY" --max-num-seqs 1 --max-queue 1 || exit 1
timeout 120 "$BIN" bench --url "$BASE" --num-prompts 24 --concurrency 8 --input-len 16 --output-len 64 \
  --json "$TMP/e429.json" >"$TMP/e429.out" 2>&1
check "bench against a full queue exits 1" test $? -eq 1
check "http_429 counted, ok + failed = num_prompts" \
  python3 -c "import json,sys; r=json.load(open('$TMP/e429.json'))[0]; sys.exit(not (r['errors'].get('http_429',0)>0 and r['completed']+r['failed']==24 and r['failed']==sum(r['errors'].values())))"

# no server, bad options, help
"$BIN" bench --url http://127.0.0.1:1 --num-prompts 2 >"$TMP/noconn.out" 2>&1
check "no server -> exit 1" test $? -eq 1
check "no server -> the error names the address" grep -q 'cannot connect to 127.0.0.1:1' "$TMP/noconn.out"
for args in "--concurrency 0" "--concurrency 4,x" "--request-rate -1" "--input-len 0" "--output-len 5:2" \
  "--endpoint embeddings" "--frobnicate" "--temperature hot"; do
  # shellcheck disable=SC2086
  "$BIN" bench --url "$BASE" $args >"$TMP/usage.out" 2>&1
  check "bench --url $args exits 2" test $? -eq 2
done
"$BIN" bench --url "$BASE" --help >"$TMP/help.out" 2>&1
check "bench --url --help exits 0" test $? -eq 0
for k in --endpoint --model --api-key --num-prompts --input-len --output-len --concurrency --request-rate \
  --json --timeout --seed; do
  check "bench --url --help lists $k" grep -q -- "$k" "$TMP/help.out"
done
check "bench --help mentions --url" bash -c "'$BIN' bench --help 2>&1 | grep -q -- '--url URL'"

# the offline path is unchanged
timeout 120 "$BIN" bench --model "$TINY" --num-requests 4 --input-len 8 --output-len 4 --json >"$TMP/offline.out" 2>&1
check "offline bench --model still runs" python3 -c "import json; r=json.load(open('$TMP/offline.out')); assert r['output_tokens']==16"
check "offline bench: TPOT (time per output token after the first) within the latency" python3 -c "
import json; r = json.load(open('$TMP/offline.out'))
assert 0 < r['tpot_p50_ms'] <= r['tpot_p99_ms'] and r['tpot_mean_ms'] > 0, r
assert r['tpot_mean_ms'] * 3 <= r['latency_p99_s'] * 1e3 + 1.0, r  # latency has 3 decimals"
# --warmup runs untimed requests first: the timed run's counts are the same
# as without it (same steps, tokens), and the engine's time split is reported
timeout 120 "$BIN" bench --model "$TINY" --num-requests 4 --input-len 8 --output-len 4 --warmup 6 --json >"$TMP/warm.out" 2>&1
check "offline bench --warmup: the warm-up is not counted" python3 -c "
import json; r = json.load(open('$TMP/warm.out')); o = json.load(open('$TMP/offline.out'))
assert r['output_tokens'] == 16 and r['input_tokens'] == o['input_tokens'], (r, o)
assert r['steps'] == o['steps'], (r['steps'], o['steps'])
assert r['step_backend_ms'] > 0 and r['step_host_ms'] >= 0, r"
check "bench --warmup -1 is refused" bash -c "! '$BIN' bench --model '$TINY' --warmup -1 >/dev/null 2>&1"
# --prefix fits every prompt in the context (#10): the tiny model has 512
# tokens, and 64 multi-turn requests once grew the history far past it
timeout 300 "$BIN" bench --model "$TINY" --prefix --prefix-requests 64 --json >"$TMP/prefix.out" 2>&1
check "bench --prefix --prefix-requests 64 fits a 512-token context" python3 -c "
import json; r = json.load(open('$TMP/prefix.out')); assert len(r) == 4, r
assert r[3]['experiment'] == 'growing multi-turn' and r[3]['restarts'] > 0, r[3]
assert all(x['hit_rate'] > 0 for x in r if x['experiment'] != 'no shared prefix'), r"

echo "e2e_bench: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
