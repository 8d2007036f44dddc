#!/usr/bin/env bash
# e2e_server.sh - `nanoinfer serve` end to end with curl, wrk and the chat client.
#
# Sections (each starts its own servers on 127.0.0.1 with --port 0 and reads
# the port from the "listening on" log line; every server is killed at exit,
# also on failure):
#   config     serve --help / --check-config / bad values -> exit 2 naming the key;
#              --device (and its alias --backend) picks the backend
#   api        tiny model: every endpoint, SSE framing (test/py/check_sse.py),
#              usage, prefix caching, and a corpus of malformed requests -> 4xx
#              with the right param (400/401/404/405/413), never a 5xx; bodies over
#              --max-body (chunked, past the discard cap too) get a readable 413 and a
#              clean close (curl and test/py/upload_limit.py)
#   reasoning  tiny Qwen3: chat_template_kwargs.enable_thinking in the prompt,
#              the qwen3 / deepseek_r1 parsers' message and delta shapes,
#              reasoning_format none (the splitting itself: test_srv_reasoning.c)
#   sampling defaults  a model whose generation_config.json says greedy: requests
#              without temperature are greedy, a request's temperature and serve
#              --temperature win; the start-up line names each source
#   model      SmolLM2 (the real chat template), `nanoinfer chat` multi-turn,
#              queue full -> 429
#   disconnect 50 streaming + 5 non-streaming clients killed mid-generation ->
#              nanoinfer_kv_blocks_used back to 0; a slow reader is cut off;
#              half-closed clients (test/py/half_close.py) still get whole replies,
#              one half-closed mid-body is dropped without a trace
#   shutdown   SIGTERM drains in-flight requests and exits 0; the shutdown
#              timeout aborts the rest (stream ends with "abort" + [DONE])
#   load       scripts/loadtest.sh (wrk) briefly: only 2xx/429, no socket errors
# Needs curl, jq, python3, awk (and wrk for the load section; skipped with a
# message when missing). NI_MODEL (set by make) is the real model.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
BIN=$BUILD/nanoinfer
TINY=test/models/tiny-llama3
REAL=${NI_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TMP=$(mktemp -d /tmp/ni_e2e_server.XXXXXX)
PIDS=()
CLIENTS=()
cleanup() {
  for p in "${CLIENTS[@]}" "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ "$fail" -eq 0 ] || [ -z "${KEEP_TMP:-}" ]; then rm -rf "$TMP"; else echo "logs kept in $TMP"; fi
}
pass=0 fail=0
trap cleanup EXIT
trap 'exit 130' INT TERM
T0=$(date +%s.%N)

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
# check DESCRIPTION COMMAND...: passes when the command succeeds
check() { local d=$1; shift; if "$@" >/dev/null 2>&1; then ok; else bad "$d"; fi; }
# calc EXPR: floating-point arithmetic / comparisons (1 or 0) without bc
calc() { awk "BEGIN { print $* }"; }
# wait_for SECONDS CMD...: polls CMD until it succeeds or SECONDS have passed
# (1 on timeout). Waits are deadlines, never fixed sleeps: CI runs this on 2
# loaded cores and against the ASan build (`make asan`), several times slower.
# NI_E2E_WAIT_SCALE (default 1) multiplies every deadline.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# deadline_ms SECONDS: now + SECONDS * NI_E2E_WAIT_SCALE, in integer milliseconds
# (awk's print would round a float to 6 digits)
deadline_ms() { awk -v n="$(now_ms)" -v s="$1" -v k="${NI_E2E_WAIT_SCALE:-1}" 'BEGIN { printf "%.0f", n + s * k * 1000 }'; }
wait_for() {
  local end
  end=$(deadline_ms "$1"); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(now_ms)" -ge "$end" ] && return 1
    sleep 0.05
  done
}
health_is() { [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$BASE/health")" = "$1" ]; }
metric_is() { [ "$(metric "$1")" = "$2" ]; }
section() { printf -- '-- %s (%ss)\n' "$1" "$(calc "int(($(date +%s.%N) - $T0) * 10) / 10")"; }
for tool in curl jq python3; do
  command -v $tool >/dev/null || { echo "FAIL: $tool is required (make deps)"; exit 1; }
done
[ -x "$BIN" ] || { echo "FAIL: $BIN is not built"; exit 1; }

# start_server LOGNAME ARGS... -> SRV_PID, SRV_PORT, BASE; waits for /health 200
start_server() {
  local log=$TMP/$1.log; shift
  "$BIN" serve --port 0 "$@" >"$log" 2>&1 &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  SRV_PORT=
  local end
  end=$(deadline_ms 60)
  while [ "$(now_ms)" -lt "$end" ]; do
    SRV_PORT=$(grep -o 'listening on http://[^ ]*' "$log" | sed 's/.*://')
    [ -n "$SRV_PORT" ] && break
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.025
  done
  [ -n "$SRV_PORT" ] || { echo "server did not start:"; cat "$log"; return 1; }
  BASE=http://127.0.0.1:$SRV_PORT
  wait_for 60 health_is 200 && return 0
  echo "server never became healthy:"; cat "$log"; return 1
}

STATUSES=""
# req METHOD PATH [BODY] [curl args...] -> $STATUS, body in $TMP/body
req() {
  local m=$1 p=$2 d=${3-}
  shift 2; [ $# -gt 0 ] && shift
  if [ -n "$d" ]; then
    STATUS=$(curl -s -o "$TMP/body" -w '%{http_code}' -X "$m" "${AUTH[@]}" "$@" --data-binary "$d" "$BASE$p")
  else
    STATUS=$(curl -s -o "$TMP/body" -w '%{http_code}' -X "$m" "${AUTH[@]}" "$@" "$BASE$p")
  fi
  STATUSES="$STATUSES $STATUS"
}
jbody() { jq -r "$1" "$TMP/body" 2>/dev/null; }
metric() { curl -s "$BASE/metrics" | awk -v n="$1" '$1 == n {print $2}'; }

# ======================================================================
section config
"$BIN" serve --help >"$TMP/help" 2>&1
check "serve --help exits 0" test $? -eq 0
for k in --model --host --port --api-key --max-body --max-queue --max-num-seqs --max-batched-tokens \
  --prefill-chunk --kv-blocks --no-prefix-cache --threads --shutdown-timeout --log-level \
  --max-tokens-default --device --config --no-webui --tensor-parallel-size; do
  check "serve --help lists $k" grep -q -- "$k" "$TMP/help"
done
"$BIN" serve --config conf/nanoinfer.conf --model "$TINY" --check-config >/dev/null 2>&1
check "conf/nanoinfer.conf validates" test $? -eq 0
while IFS='|' read -r args needle; do
  # shellcheck disable=SC2086
  "$BIN" serve --model "$TINY" $args >"$TMP/cfg.out" 2>&1
  rc=$?
  check "serve $args exits 2" test $rc -eq 2
  check "serve $args names '$needle'" grep -q -- "$needle" "$TMP/cfg.out"
done <<'EOF'
--port 70000|port
--log-level loud|log-level
--max-body 12q|max-body
--frobnicate 1|frobnicate
--prefill-chunk 4096|prefill-chunk
--model /nonexistent.gguf|/nonexistent.gguf
--config /nonexistent.conf|/nonexistent.conf
--device gpu|device
--backend tpu|backend
--tensor-parallel-size 0|tensor-parallel-size
EOF
# --device is the key (as for generate/bench); --backend and the file key backend are aliases
check "serve --help names the --backend alias" grep -q -- "--backend" "$TMP/help"
for args in "--device cpu" "--device=cpu" "--backend cpu"; do
  # shellcheck disable=SC2086
  check "serve $args --check-config exits 0" "$BIN" serve --model "$TINY" $args --check-config
done
# tensor parallelism (CPU, in one process): the same greedy text as unsharded; non-divisors refused
"$BIN" generate --model "$TINY" --device cpu --prompt "hello world" -n 24 --ignore-eos \
  >"$TMP/tp1.out" 2>/dev/null
"$BIN" generate --model "$TINY" --device cpu --prompt "hello world" -n 24 --ignore-eos \
  --tensor-parallel-size 2 >"$TMP/tp2.out" 2>"$TMP/tp2.err"
check "generate --tensor-parallel-size 2 == unsharded" cmp -s "$TMP/tp1.out" "$TMP/tp2.out"
check "generate --tensor-parallel-size 2 says so" grep -q "tensor-parallel 2" "$TMP/tp2.err"
"$BIN" generate --model "$TINY" --device cpu --prompt hi -n 2 --tensor-parallel-size 4 \
  >/dev/null 2>"$TMP/tp4.err"
check "generate --tensor-parallel-size 4 (2 KV heads) is refused" \
  grep -q "tensor-parallel-size 4 does not divide" "$TMP/tp4.err"
# --kv-cache-dtype: the CPU backend (FP32 cache) refuses fp8 with a message naming the option;
# an unknown name is a usage error; the serve key validates
"$BIN" generate --model "$TINY" --device cpu --prompt hi -n 2 --kv-cache-dtype fp8 \
  >/dev/null 2>"$TMP/kv8.err"
check "generate --kv-cache-dtype fp8 on the cpu is refused" \
  grep -q "kv-cache-dtype fp8: the CPU backend keeps its KV cache in fp32" "$TMP/kv8.err"
check "generate --kv-cache-dtype e5m2 is a usage error" \
  test "$("$BIN" generate --model "$TINY" --prompt hi --kv-cache-dtype e5m2 >/dev/null 2>&1; echo $?)" = 2
check "serve --kv-cache-dtype fp8_e4m3 validates" \
  "$BIN" serve --model "$TINY" --kv-cache-dtype fp8_e4m3 --check-config
printf 'backend = cpu\n' >"$TMP/alias.conf"
check "config file key backend (alias) validates" \
  "$BIN" serve --config "$TMP/alias.conf" --model "$TINY" --check-config
start_server device --model "$TINY" --device cpu || exit 1
check "serve --device cpu: the config line says device=cpu" grep -q "device=cpu" "$TMP/device.log"
check "serve --device cpu: runs on the cpu backend" grep -q "backend cpu, KV pool" "$TMP/device.log"
kill "$SRV_PID"
# deployment files: the systemd unit verifies (when systemd-analyze exists), the Dockerfile is multi-stage
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$TMP/unit"
  sed "s#/usr/local/bin/nanoinfer#$PWD/$BIN#g" conf/nanoinfer.service >"$TMP/unit/nanoinfer.service"
  systemd-analyze verify "$TMP/unit/nanoinfer.service" >"$TMP/unit/verify.out" 2>&1
  check "systemd-analyze verify conf/nanoinfer.service ($(head -c 200 "$TMP/unit/verify.out"))" \
    test $? -eq 0 -a ! -s "$TMP/unit/verify.out"
else
  echo "SKIP: systemd-analyze not installed; unit file not verified"
fi
for k in ProtectSystem=strict NoNewPrivileges=yes PrivateTmp=yes Restart=on-failure User=nanoinfer; do
  check "unit has $k" grep -qx "$k" conf/nanoinfer.service
done
check "Dockerfile: CUDA devel build stage" grep -Eq '^FROM nvidia/cuda:.*-devel-ubuntu22.04 AS build' docker/Dockerfile
check "Dockerfile: CUDA runtime stage" grep -Eq '^FROM nvidia/cuda:.*-runtime-ubuntu22.04' docker/Dockerfile
check "Dockerfile: HEALTHCHECK on /health" grep -q 'HEALTHCHECK' docker/Dockerfile
check "Dockerfile: model volume" grep -q 'VOLUME \["/models"\]' docker/Dockerfile
"$BIN" serve --model "$TINY" --host 256.1.1.1 --port 0 >"$TMP/badhost.log" 2>&1
check "unusable host exits 1" test $? -eq 1
check "unusable host is explained" grep -q "256.1.1.1" "$TMP/badhost.log"
check "a broken model exits 1" bash -c "! '$BIN' serve --model conf/nanoinfer.conf --port 0 >'$TMP/badmodel.log' 2>&1"
check "a broken model is explained" grep -q "cannot load the model" "$TMP/badmodel.log"

# ======================================================================
section "api (tiny model)"
KEY=e2e-secret-key
start_server api --model "$TINY" --api-key "$KEY" --max-body 64KiB --kv-blocks 1024 \
  --served-model-name tiny || exit 1
API_PID=$SRV_PID
AUTH=(-H "Authorization: Bearer $KEY")
# control bytes in a header value get a 400 (issue 14): "Bearer KEY\0x" is not the key KEY
# (libmicrohttpd cuts a value at a NUL; the server finds it in the raw header block).
# Raw bytes: curl cannot send them.
raw_status() { # $1: the Authorization value's bytes (python literal)
  python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1', $SRV_PORT)); \
s.sendall(b'GET /v1/models HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\nAuthorization: ' + $1 + b'\\r\\n\\r\\n'); \
print(s.recv(64).split(b' ')[1].decode())"
}
check "Authorization with the key: 200" test "$(raw_status "b'Bearer $KEY'")" = 200
check "Authorization with the key then a control byte: 400" test "$(raw_status "b'Bearer $KEY\\x01x'")" = 400
check "Authorization with the key then a NUL: 400" test "$(raw_status "b'Bearer $KEY\\x00x'")" = 400
check "Authorization with the key then a NUL at the end: 400" test "$(raw_status "b'Bearer $KEY\\x00'")" = 400
check "another header with a NUL: 400" test "$(raw_status "b'Bearer $KEY\\r\\nX-Y: a\\x00b'")" = 400
check "another header with DEL: 400" test "$(raw_status "b'Bearer $KEY\\r\\nX-Y: a\\x7fb'")" = 400
nulbody=$(python3 -c "import socket; s=socket.create_connection(('127.0.0.1', $SRV_PORT)); \
s.sendall(b'GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer $KEY\x00x\r\n\r\n'); \
import json; r=b''
while True:
    d=s.recv(4096)
    if not d: break
    r+=d
print(json.loads(r.partition(b'\r\n\r\n')[2])['error']['type'])" 2>&1)
check "a NUL in a header: OpenAI-style JSON error ($nulbody)" test "$nulbody" = invalid_request_error
check "a TAB in a header is fine: 200" test "$(raw_status "b'Bearer $KEY\\r\\nX-Y: a\\tb'")" = 200
check "bare LF line ends are fine: 200" test "$(raw_status "b'Bearer $KEY\\nX-Y: ab\\n'")" = 200

req GET /health
check "/health 200" test "$STATUS" = 200
check "/health says ok" test "$(jbody .status)" = ok
check "HEAD /health 200" test "$(curl -s -I -o /dev/null -w '%{http_code}' "$BASE/health")" = 200
req GET /v1/models
check "/v1/models 200" test "$STATUS" = 200
check "/v1/models lists the model" test "$(jbody '.data[0].id')/$(jbody .object)" = tiny/list
check "/v1/models max_model_len" test "$(jbody '.data[0].max_model_len')" = 512
req GET /v1/models/tiny
check "/v1/models/tiny 200" test "$STATUS/$(jbody .id)" = 200/tiny
req GET /v1/models/other
check "/v1/models/other 404" test "$STATUS" = 404

req POST /tokenize '{"prompt":"hello world"}'
check "/tokenize 200" test "$STATUS" = 200
TOKS=$(jq -c .tokens "$TMP/body")
check "/tokenize count" test "$(jbody .count)" = "$(jbody '.tokens|length')"
req POST /detokenize "{\"tokens\":$TOKS}"
check "/detokenize round trip" test "$(jbody .prompt)" = "hello world"
req POST /tokenize '{"messages":[{"role":"user","content":"hi"}]}'
check "/tokenize messages" test "$STATUS" = 200

# completions, non-streaming
req POST /v1/completions '{"prompt":"hello world","max_tokens":9,"ignore_eos":true}'
check "completion 200" test "$STATUS" = 200
check "completion id" bash -c "jq -e '.id|startswith(\"cmpl-\")' $TMP/body"
check "completion object" test "$(jbody .object)" = text_completion
check "completion model" test "$(jbody .model)" = tiny
check "completion created" bash -c "jq -e '.created > 1600000000' $TMP/body"
check "completion finish length" test "$(jbody '.choices[0].finish_reason')" = length
NP=$(curl -s "${AUTH[@]}" "$BASE/tokenize" -d '{"prompt":"hello world"}' | jq .count)
check "completion usage" test "$(jbody '[.usage.prompt_tokens,.usage.completion_tokens,.usage.total_tokens]|map(tostring)|join(",")')" = "$NP,9,$((NP + 9))"
check "X-Request-Id header" bash -c "curl -s -D - -o /dev/null ${AUTH[*]@Q} $BASE/v1/completions -d '{\"prompt\":\"x\",\"max_tokens\":1}' | grep -qi '^x-request-id: cmpl-'"
req POST /v1/completions '{"prompt":[1,2,3],"max_tokens":2,"echo":true,"n":3,"seed":7,"temperature":1}'
check "token prompt + echo + n=3" test "$STATUS/$(jbody '.choices|length')/$(jbody .usage.prompt_tokens)" = 200/3/3
check "n=3 usage sums" test "$(jbody .usage.completion_tokens)" -le 6
req POST /v1/completions '{"prompt":"x","max_tokens":3,"logprobs":2,"ignore_eos":true}'
check "completion logprobs" test "$(jbody '.choices[0].logprobs.token_logprobs|length')" = 3

# completions, streaming: SSE framing
curl -sN "${AUTH[@]}" "$BASE/v1/completions" -o "$TMP/sse1" \
  -d '{"prompt":"hello world","max_tokens":12,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}'
check "completion SSE framing + usage" python3 test/py/check_sse.py "$TMP/sse1" --usage
python3 test/py/check_sse.py "$TMP/sse1" --usage >"$TMP/sse1.json" 2>&1
check "streamed usage counts 12 tokens" test "$(jq .usage.completion_tokens "$TMP/sse1.json")" = 12
check "SSE content type" bash -c "curl -s -D - -o /dev/null ${AUTH[*]@Q} $BASE/v1/completions -d '{\"prompt\":\"x\",\"max_tokens\":1,\"stream\":true}' | grep -qi '^content-type: text/event-stream'"
curl -sN "${AUTH[@]}" "$BASE/v1/completions" -o "$TMP/sse2" \
  -d '{"prompt":"abc","max_tokens":5,"stream":true,"n":2,"logprobs":1,"ignore_eos":true}'
check "completion SSE n=2 framing" python3 test/py/check_sse.py "$TMP/sse2" --n 2
# stream and non-stream give the same text for the same seed
S=$(curl -sN "${AUTH[@]}" "$BASE/v1/completions" -d '{"prompt":"seeded","max_tokens":10,"seed":99,"temperature":1,"stream":true,"ignore_eos":true}' >"$TMP/sse3"; python3 test/py/check_sse.py "$TMP/sse3" | jq -r '.text["0"]')
N=$(curl -s "${AUTH[@]}" "$BASE/v1/completions" -d '{"prompt":"seeded","max_tokens":10,"seed":99,"temperature":1,"ignore_eos":true}' | jq -r '.choices[0].text')
check "stream == non-stream for a seed" test "$S" = "$N"

# chat
req POST /v1/chat/completions '{"messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}],"max_tokens":6}'
check "chat 200" test "$STATUS" = 200
check "chat object" test "$(jbody .object)/$(jbody '.choices[0].message.role')" = chat.completion/assistant
check "chat id" bash -c "jq -e '.id|startswith(\"chatcmpl-\")' $TMP/body"
check "chat usage" bash -c "jq -e '.usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens' $TMP/body"
curl -sN "${AUTH[@]}" "$BASE/v1/chat/completions" -o "$TMP/sse4" \
  -d '{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":6,"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2}'
check "chat SSE framing + usage" python3 test/py/check_sse.py "$TMP/sse4" --usage --chat
check "chat SSE role first" bash -c "head -1 $TMP/sse4 | cut -c7- | jq -e '.choices[0].delta.role == \"assistant\"'"
curl -sN "${AUTH[@]}" "$BASE/v1/chat/completions" -o "$TMP/sse5" \
  -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"n":3,"stream":true,"ignore_eos":true}'
check "chat SSE n=3: each choice opens with its role" python3 test/py/check_sse.py "$TMP/sse5" --chat --n 3
curl -sN "${AUTH[@]}" "$BASE/v1/completions" -o "$TMP/sse6" \
  -d '{"prompt":"echo me","max_tokens":3,"echo":true,"stream":true,"ignore_eos":true}'
check "completion SSE echo: the prompt opens the stream" bash -c "head -1 $TMP/sse6 | cut -c7- | jq -e '.choices[0].text == \"echo me\"'"

# prefix caching: the same long prompt twice
LONG=$(printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 12))
req POST /v1/completions "{\"prompt\":\"$LONG\",\"max_tokens\":1}"
req POST /v1/completions "{\"prompt\":\"$LONG\",\"max_tokens\":1}"
check "prefix cache: cached_tokens > 0 on repeat" bash -c "jq -e '.usage.prompt_tokens_details.cached_tokens >= 16' $TMP/body"

# metrics
curl -s "$BASE/metrics" >"$TMP/metrics"
for m in nanoinfer_kv_blocks_used nanoinfer_kv_blocks_total nanoinfer_num_seqs_running nanoinfer_num_seqs_waiting \
  nanoinfer_prefix_cache_hits_total nanoinfer_prefix_cache_queries_total nanoinfer_prefix_cache_lookups_total \
  nanoinfer_prompt_tokens_total nanoinfer_generation_tokens_total nanoinfer_time_to_first_token_seconds_count \
  nanoinfer_inter_token_latency_seconds_count 'nanoinfer_http_requests_total{code="200"}'; do
  check "metric $m" grep -q "^$m " "$TMP/metrics"
done
check "metrics: prefix hits counted" test "$(awk '$1=="nanoinfer_prefix_cache_hits_total"{print $2}' "$TMP/metrics")" -ge 16
check "metrics: TTFT observed" test "$(awk '$1=="nanoinfer_time_to_first_token_seconds_count"{print $2}' "$TMP/metrics")" -ge 5
check "metrics: kv blocks idle" test "$(awk '$1=="nanoinfer_kv_blocks_used"{print $2}' "$TMP/metrics")" = 0
check "metrics text format" bash -c "curl -s -D - -o /dev/null $BASE/metrics | grep -qi '^content-type: text/plain; version=0.0.4'"
# the same data under vLLM's names (docs/metrics.md), labelled with the served model name
out=$(python3 test/py/check_metrics.py "$TMP/metrics" tiny 2>&1); rc=$?
check "metrics: the vllm: series agree with the nanoinfer_ ones ($out)" test $rc -eq 0
for m in vllm:num_requests_running vllm:num_requests_waiting vllm:kv_cache_usage_perc vllm:prompt_tokens_total \
  vllm:generation_tokens_total vllm:time_to_first_token_seconds_count vllm:e2e_request_latency_seconds_count \
  vllm:inter_token_latency_seconds_count vllm:time_per_output_token_seconds_count vllm:num_preemptions_total \
  vllm:request_success_total; do
  check "metric $m{model_name=\"tiny\"}" grep -q "^$m{model_name=\"tiny\"" "$TMP/metrics"
done

# malformed requests: METHOD|PATH|BODY|STATUS|PARAM ('-' = null param, '*' = not checked)
HUGE=$TMP/huge.json
python3 -c "import json; print(json.dumps({'prompt': 'x' * 70000}))" >"$HUGE"
while IFS='|' read -r m p body want param; do
  [ -z "$m" ] && continue
  req "$m" "$p" "$body"
  check "$m $p $body -> $want (got $STATUS)" test "$STATUS" = "$want"
  if [ "$param" != '*' ]; then
    got=$(jbody '.error.param // "-"')
    check "$m $p $body -> param $param (got $got)" test "$got" = "$param"
  fi
  check "$m $p error shape" bash -c "jq -e '.error.message and .error.type and (.error|has(\"param\")) and (.error|has(\"code\"))' $TMP/body"
done <<'EOF'
POST|/v1/completions|{bad json|400|-
POST|/v1/completions|[1,2]|400|-
POST|/v1/completions|"str"|400|-
POST|/v1/completions|{}|400|prompt
POST|/v1/completions|{"prompt":{}}|400|prompt
POST|/v1/completions|{"prompt":["a","b"]}|400|prompt
POST|/v1/completions|{"prompt":[1,99999]}|400|prompt
POST|/v1/completions|{"prompt":"x","max_tokens":"9"}|400|max_tokens
POST|/v1/completions|{"prompt":"x","max_tokens":0}|400|max_tokens
POST|/v1/completions|{"prompt":"x","max_tokens":1000000}|400|max_tokens
POST|/v1/completions|{"prompt":"x","temperature":-1}|400|temperature
POST|/v1/completions|{"prompt":"x","temperature":"hot"}|400|temperature
POST|/v1/completions|{"prompt":"x","top_p":1.5}|400|top_p
POST|/v1/completions|{"prompt":"x","top_k":-7}|400|top_k
POST|/v1/completions|{"prompt":"x","min_p":-0.5}|400|min_p
POST|/v1/completions|{"prompt":"x","presence_penalty":9}|400|presence_penalty
POST|/v1/completions|{"prompt":"x","frequency_penalty":[1]}|400|frequency_penalty
POST|/v1/completions|{"prompt":"x","repetition_penalty":0}|400|repetition_penalty
POST|/v1/completions|{"prompt":"x","n":0}|400|n
POST|/v1/completions|{"prompt":"x","n":99}|400|n
POST|/v1/completions|{"prompt":"x","logprobs":50}|400|logprobs
POST|/v1/completions|{"prompt":"x","seed":"abc"}|400|seed
POST|/v1/completions|{"prompt":"x","stop":[1,2]}|400|stop
POST|/v1/completions|{"prompt":"x","stop_token_ids":[-1]}|400|stop_token_ids
POST|/v1/completions|{"prompt":"x","logit_bias":{"x":1}}|400|logit_bias
POST|/v1/completions|{"prompt":"x","logit_bias":{"1":1000}}|400|logit_bias
POST|/v1/completions|{"prompt":"x","suffix":"tail"}|400|suffix
POST|/v1/completions|{"prompt":"x","stream":"yes"}|400|stream
POST|/v1/completions|{"prompt":"x","stream_options":{"include_usage":true}}|400|stream_options
POST|/v1/completions|{"prompt":"x","echo":true,"logprobs":1}|400|echo
POST|/v1/completions|{"prompt":"x","best_of":3}|400|best_of
POST|/v1/completions|{"prompt":"x","ignore_eos":"sure"}|400|ignore_eos
POST|/v1/completions|{"prompt":"x","model":"gpt-4"}|404|model
POST|/v1/chat/completions|{}|400|messages
POST|/v1/chat/completions|{"messages":"hi"}|400|messages
POST|/v1/chat/completions|{"messages":[]}|400|messages
POST|/v1/chat/completions|{"messages":[{"role":"wizard","content":"x"}]}|400|messages[0]
POST|/v1/chat/completions|{"messages":[{"role":"user"}]}|400|messages[0]
POST|/v1/chat/completions|{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}|400|messages[0]
POST|/v1/chat/completions|{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}|400|top_logprobs
POST|/v1/chat/completions|{"messages":[{"role":"user","content":"x"}],"logprobs":"yes"}|400|logprobs
POST|/v1/chat/completions|{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}|400|tools
POST|/v1/chat/completions|{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-3}|400|max_completion_tokens
POST|/tokenize|{}|400|prompt
POST|/tokenize|not json|400|-
POST|/detokenize|{"tokens":[1,"a"]}|400|tokens
POST|/detokenize|{"tokens":[100000]}|400|tokens
GET|/v1/completions||405|-
PUT|/v1/chat/completions|{}|405|-
DELETE|/v1/models||405|-
POST|/health|{}|405|-
POST|/metrics||405|-
GET|/tokenize||405|-
GET|/nope||404|-
POST|/v1/nope|{}|404|-
GET|/v1/models/x/y||404|*
EOF
check "405 carries Allow" bash -c "curl -s -D - -o /dev/null -X DELETE ${AUTH[*]@Q} $BASE/v1/completions | grep -qi '^allow: POST'"

# authentication
SAVED=("${AUTH[@]}")
AUTH=()
req POST /v1/completions '{"prompt":"x","max_tokens":1}'
check "no key -> 401" test "$STATUS" = 401
check "401 code" test "$(jbody .error.code)" = invalid_api_key
req GET /v1/models
check "no key on /v1/models -> 401" test "$STATUS" = 401
req POST /tokenize '{"prompt":"x"}'
check "no key on /tokenize -> 401" test "$STATUS" = 401
AUTH=(-H "Authorization: Bearer wrong-key")
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"x"}]}'
check "wrong key -> 401" test "$STATUS" = 401
AUTH=(-H "Authorization: Basic $KEY")
req GET /v1/models
check "non-bearer auth -> 401" test "$STATUS" = 401
AUTH=()
req GET /health
check "/health needs no key" test "$STATUS" = 200
req GET /metrics
check "/metrics needs no key" test "$STATUS" = 200
AUTH=("${SAVED[@]}")

# bodies over --max-body (64 KiB): with Content-Length, chunked, and behind Expect: 100-continue
req POST /v1/completions "@$HUGE"
check "huge body -> 413" test "$STATUS" = 413
req POST /v1/completions "@$HUGE" -H 'Transfer-Encoding: chunked'
check "huge chunked body -> 413" test "$STATUS" = 413
req POST /v1/completions "@$HUGE" -H 'Expect:'
check "huge body without 100-continue -> 413" test "$STATUS" = 413
# past the discard cap (16 x --max-body): the 413 is written mid-body and the connection
# drained, so the client reads it instead of a reset (curl: exit 0, not 55 "send failure")
BIGF=$TMP/big.bin
head -c $((4 << 20)) /dev/zero | tr '\0' x >"$BIGF"
code=$(curl -s -o "$TMP/body" -w '%{http_code}' "${AUTH[@]}" --data-binary "@$BIGF" \
  -H 'Transfer-Encoding: chunked' "$BASE/v1/completions")
rc=$?
check "4 MiB chunked body -> 413 (got $code, curl exit $rc)" test "$code/$rc" = 413/0
check "4 MiB chunked body: OpenAI-style error" test "$(jbody .error.type)" = invalid_request_error
code=$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" -H 'Expect:' --data-binary "@$BIGF" \
  "$BASE/v1/completions")
check "4 MiB body with Content-Length, no 100-continue -> 413 (got $code, curl exit $?)" test "$code" = 413
python3 test/py/upload_limit.py "$SRV_PORT" 65536 "$KEY" >"$TMP/upload.out" 2>&1
rc=$?
check "raw-socket uploads over --max-body: 413 + clean close ($(grep -c "^ok" "$TMP/upload.out")/9 ok; $(grep FAIL "$TMP/upload.out" | head -1))" test $rc -eq 0
req POST /v1/completions '{"prompt":"still alive","max_tokens":1}'
check "server fine after 413s" test "$STATUS" = 200

# garbage on the socket never takes the server down
printf 'NOT HTTP AT ALL\r\n\r\n' | timeout 2 curl -s telnet://127.0.0.1:"$SRV_PORT" >/dev/null 2>&1
printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"pro' | timeout 1 curl -s telnet://127.0.0.1:"$SRV_PORT" >/dev/null 2>&1
req GET /health
check "server fine after garbage" test "$STATUS" = 200

for s in $STATUSES; do
  case $s in 5*) bad "a request got $s (user input must never cause a 5xx)" ;; esac
done
check "api server alive" kill -0 "$API_PID"
check "no ERROR lines in the api server log" bash -c "! grep -q ' ERROR ' $TMP/api.log"
check "access log lines" grep -q 'access 127.0.0.1 "POST /v1/completions" 200 prompt=' "$TMP/api.log"

# slow reader: a client that never reads is cut off and its request aborted
start_server slow --model "$TINY" --max-stream-buffer 64KiB --kv-blocks 1024 || exit 1
AUTH=()
python3 test/py/fuzz_requests.py "$SRV_PORT" 600 "$RANDOM" >"$TMP/fuzz.out" 2>&1
check "fuzz: 600 random malformed requests, no 5xx ($(tail -1 "$TMP/fuzz.out"))" test $? -eq 0
check "slow reader is disconnected" python3 test/py/slow_reader.py "$SRV_PORT"
check "slow reader counted" test "$(metric 'nanoinfer_requests_aborted_total{reason="slow_reader"}')" -ge 1
check "slow reader's blocks freed" test "$(metric nanoinfer_kv_blocks_used)" = 0
kill "$SRV_PID"

# ======================================================================
section "sampling defaults"
# the model recommends greedy (generation_config.json do_sample false): a request
# without temperature is greedy, one with a temperature samples; a serve option beats the model
mkdir -p "$TMP/greedy-model"
for f in "$TINY"/*; do ln -s "$PWD/$f" "$TMP/greedy-model/"; done
printf '{"do_sample": false, "temperature": 0.9, "top_k": 20}\n' >"$TMP/greedy-model/generation_config.json"
start_server greedy --model "$TMP/greedy-model" --top-k 0 || exit 1
check "start-up line: temperature from the model" grep -q 'sampling defaults: temperature=0 (model) top_k=0 (option) top_p=1 (built-in)' "$TMP/greedy.log"
check "start-up line: names generation_config.json" grep -q 'sampling defaults: .*model: generation_config.json' "$TMP/greedy.log"
G='{"prompt":"hello world","max_tokens":16,"ignore_eos":true'
gen_text() { curl -s "$BASE/v1/completions" -d "$G$1}" | jq -r '.choices[0].text'; }
A=$(gen_text '')
check "model greedy: a request without temperature == temperature 0 ($A)" test "$A" = "$(gen_text ',"temperature":0')"
check "model greedy: repeatable" test "$A" = "$(gen_text ',"seed":123')"
diff=0
for seed in 1 2 3; do [ "$(gen_text ",\"temperature\":1,\"seed\":$seed")" != "$A" ] && diff=1; done
check "a request's temperature 1 overrides the model's greedy" test $diff = 1
kill "$SRV_PID"
start_server greedy_opt --model "$TMP/greedy-model" --temperature 1 || exit 1
check "start-up line: serve --temperature beats the model" grep -q 'sampling defaults: temperature=1 (option)' "$TMP/greedy_opt.log"
same=1 diff=0
for seed in 1 2 3; do
  X=$(gen_text ",\"seed\":$seed")
  [ "$X" = "$(gen_text ",\"seed\":$seed,\"temperature\":1")" ] || same=0
  [ "$X" != "$(gen_text ',"temperature":0')" ] && diff=1
done
check "serve --temperature 1: a request without temperature == temperature 1 (same seeds)" test $same = 1
check "serve --temperature 1: no longer greedy" test $diff = 1
kill "$SRV_PID"

# ======================================================================
section "reasoning (tiny qwen3)"
# The tiny model's random output never writes <think>: the parser itself is
# test/test_srv_reasoning.c; here the template's enable_thinking and the plumbing.
QWEN=test/models/tiny-qwen3
start_server qwen --model "$QWEN" --chat-template qwen3 || exit 1
check "auto: the Qwen3 template picks the qwen3 parser" grep -q 'chat template qwen3, reasoning parser qwen3' "$TMP/qwen.log"
M='"messages":[{"role":"user","content":"hi"}]'
t_def=$(curl -s "$BASE/tokenize" -d "{$M}" | jq -c .tokens)
t_off=$(curl -s "$BASE/tokenize" -d "{$M,\"chat_template_kwargs\":{\"enable_thinking\":false}}" | jq -c .tokens)
t_on=$(curl -s "$BASE/tokenize" -d "{$M,\"chat_template_kwargs\":{\"enable_thinking\":true}}" | jq -c .tokens)
t_want=$(curl -s "$BASE/tokenize" -d '{"prompt":"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"}' | jq -c .tokens)
check "enable_thinking false: the prompt ends in Qwen3's empty think block" test "$t_off" = "$t_want"
check "enable_thinking true renders as the default" test "$t_on" = "$t_def"
check "enable_thinking false is longer" test "$(echo "$t_off" | jq length)" -gt "$(echo "$t_def" | jq length)"
req POST /v1/chat/completions "{$M,\"max_tokens\":4,\"chat_template_kwargs\":{\"enable_thinking\":false}}"
check "chat usage counts the think block" test "$(jbody .usage.prompt_tokens)" = "$(echo "$t_off" | jq length)"
check "qwen3 parser, no <think> in the output: content, reasoning_content null" \
  jq -e '.choices[0].message | (.content|type) == "string" and .reasoning_content == null' "$TMP/body"
req POST /v1/chat/completions "{$M,\"max_tokens\":4,\"reasoning_format\":\"none\"}"
check "reasoning_format none: no reasoning_content" jq -e '.choices[0].message | has("reasoning_content") | not' "$TMP/body"
req POST /v1/chat/completions "{$M,\"chat_template_kwargs\":{\"enable_thinking\":1}}"
check "bad enable_thinking -> 400 naming chat_template_kwargs" test "$STATUS/$(jbody .error.param)" = 400/chat_template_kwargs
req POST /v1/chat/completions "{$M,\"reasoning_format\":\"parsed\"}"
check "bad reasoning_format -> 400" test "$STATUS/$(jbody .error.param)" = 400/reasoning_format
kill "$SRV_PID"
# deepseek_r1: the template opened the think block, so an output without </think> is all reasoning
start_server r1 --model "$QWEN" --reasoning-parser deepseek_r1 || exit 1
check "--reasoning-parser deepseek_r1 is logged" grep -q 'reasoning parser deepseek_r1' "$TMP/r1.log"
R1="{$M,\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true"
inline=$(curl -s "$BASE/v1/chat/completions" -d "$R1,\"reasoning_format\":\"none\"}" | jq -r '.choices[0].message.content')
req POST /v1/chat/completions "$R1}"
check "deepseek_r1: reasoning_content is the output, content null" \
  test "$(jbody '.choices[0].message.reasoning_content')/$(jbody '.choices[0].message.content')" = "$inline/null"
curl -sN "$BASE/v1/chat/completions" -o "$TMP/sse_r1" -d "$R1,\"stream\":true}"
check "deepseek_r1 stream: SSE framing" python3 test/py/check_sse.py "$TMP/sse_r1" --chat
check "deepseek_r1 stream: the deltas' reasoning_content is the output, no content" \
  test "$(sed -n 's/^data: {/{/p' "$TMP/sse_r1" | jq -rj '.choices[0].delta.reasoning_content // empty')/$(sed -n 's/^data: {/{/p' "$TMP/sse_r1" | jq -rj '.choices[0].delta.content // empty')" = "$inline/"
kill "$SRV_PID"
check "--reasoning-parser bogus exits 2" bash -c "'$BIN' serve --model $QWEN --reasoning-parser bogus --check-config 2>&1; test \$? -eq 2"

# ======================================================================
section "model ($REAL)"
if [ ! -s "$REAL" ]; then
  echo "SKIP: $REAL is missing (make model); real-model sections skipped"
else
  # fp32: the reference path, which matches transformers token for token. The
  # default (--quant auto) runs this Q4_1 file on the 4-bit kernels, whose int8
  # activations flip this prompt's first token ("The" -1.88 vs "L" -1.96 nats in
  # fp32) exactly as llama.cpp does on the same file and prompt ("L'Étoile...").
  start_server real --model "$REAL" --quant fp32 || exit 1
  check "real server runs the weights it was asked for" grep -q 'weights fp32' "$TMP/real.log"
  check "the default model recommends no sampling: built-in defaults, said so" \
    grep -q 'sampling defaults: temperature=1 (built-in) .*model: recommends none' "$TMP/real.log"
  REAL_PID=$SRV_PID
  REAL_BASE=$BASE
  req POST /v1/chat/completions '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":24,"temperature":0}'
  check "chat template: real model answers (got: $(jbody '.choices[0].message.content'))" \
    bash -c "jq -r '.choices[0].message.content' $TMP/body | grep -q Paris"
  check "chat: finish stop" test "$(jbody '.choices[0].finish_reason')" = stop
  # honest streaming: the role chunk leaves with the first token, not before prefill
  out=$(python3 test/py/check_ttft.py "$SRV_PORT" 200 2>&1); rc=$?
  check "stream: the first chunk (role) arrives with the first token ($(echo "$out" | tail -1))" test $rc -eq 0

  # nanoinfer chat: two turns; the second request carries the first exchange
  printf 'My name is Ada.\nWhat is my name?\n' |
    timeout 60 "$BIN" chat --url "$BASE" --max-tokens 16 --temperature 0 >"$TMP/chat.out" 2>"$TMP/chat.err"
  check "nanoinfer chat exits 0" test $? -eq 0
  check "nanoinfer chat printed two replies" test "$(grep -c . "$TMP/chat.out")" -ge 2
  mapfile -t P < <(grep '"POST /v1/chat/completions" 200' "$TMP/real.log" | tail -2 | sed 's/.*prompt=\([0-9]*\).*/\1/')
  check "chat turn 2 carries turn 1 (${P[0]:-?} -> ${P[1]:-?} prompt tokens)" test "${P[1]:-0}" -gt "$(( ${P[0]:-0} + 5 ))"
  check "chat client errors are reported" bash -c "echo hi | '$BIN' chat --url http://127.0.0.1:1 2>&1 | grep -q 'cannot connect'"

  # queue full: one running slot, one waiting slot, the third request is refused
  start_server queue --model "$REAL" --max-num-seqs 1 --max-queue 1 || exit 1
  check "default --quant auto runs this Q4_1 file on the 4-bit kernels" grep -q 'weights q4' "$TMP/queue.log"
  Q='{"prompt":"Count slowly:","max_tokens":200,"ignore_eos":true}'
  curl -s "$BASE/v1/completions" -d "$Q" -o /dev/null & CLIENTS+=($!)
  curl -s "$BASE/v1/completions" -d "$Q" -o /dev/null & CLIENTS+=($!)
  wait_for 30 metric_is nanoinfer_requests_in_flight 2
  req POST /v1/completions "$Q"
  check "queue full -> 429 (got $STATUS)" test "$STATUS" = 429
  check "429 error type" test "$(jbody .error.type)" = rate_limit_error
  check "429 carries Retry-After" bash -c "curl -s -D - -o /dev/null $BASE/v1/completions -d '$Q' | grep -qi '^retry-after: 1'"
  kill -9 "${CLIENTS[@]}" 2>/dev/null
  wait "${CLIENTS[@]}" 2>/dev/null
  CLIENTS=()
  wait_for 30 metric_is nanoinfer_requests_in_flight 0
  req POST /v1/completions '{"prompt":"after","max_tokens":1}'
  check "accepting again once the queue drained" test "$STATUS" = 200
  kill "$SRV_PID"

  # /health watches the engine heartbeat: one long step (a big prefill) past
  # --health-timeout reads as a wedged engine (503); the loop thread keeps answering meanwhile
  start_server stall --model "$REAL" --health-timeout 0.3 || exit 1
  BIG=$(python3 -c "print('lorem ipsum dolor sit amet ' * 100)")
  t0=$(date +%s.%N)
  curl -s "$BASE/v1/completions" -o /dev/null -d "{\"prompt\":\"$BIG\",\"max_tokens\":1}" & C1=$!
  seen=
  for _ in $(seq 1 150); do
    h=$(curl -s -m 1 "$BASE/health")
    case $h in *stalled*) seen=1; break ;; esac
    kill -0 "$C1" 2>/dev/null || break
    sleep 0.02
  done
  wait "$C1"
  took=$(calc "$(date +%s.%N) - $t0")
  if [ -z "$seen" ] && [ "$(calc "$took < 0.6")" = 1 ]; then
    echo "NOTE: the prefill took only ${took}s on this machine; stalled-engine check not applicable"
  else
    check "/health 503 'engine stalled' during a ${took}s step (--health-timeout 0.3)" test -n "$seen"
  fi
  check "/health 200 again after the step" wait_for 60 health_is 200
  kill "$SRV_PID"

  # ====================================================================
  section disconnect
  BASE=$REAL_BASE
  # half-close (shutdown(SHUT_WR)) after the request: the whole reply still comes;
  # mid-body: the request is dropped, /health 200, no KV block left
  python3 test/py/half_close.py "${REAL_BASE##*:}" 48 >"$TMP/half_close.out" 2>&1
  rc=$?
  check "half-closed clients ($(grep -c '^ok' "$TMP/half_close.out")/3 ok; $(grep FAIL "$TMP/half_close.out" | head -1))" test $rc -eq 0
  check "half-closed non-streaming reply went through the probe path" grep -q '^ok   non-streaming.*, probed)' "$TMP/half_close.out"
  mkdir -p "$TMP/dc"
  for i in $(seq 1 50); do
    curl -sN "$BASE/v1/completions" -o "$TMP/dc/$i" \
      -d "{\"prompt\":\"Story number $i:\",\"max_tokens\":400,\"ignore_eos\":true,\"stream\":true}" & CLIENTS+=($!)
  done
  for i in $(seq 1 5); do
    curl -s "$BASE/v1/chat/completions" -o /dev/null \
      -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Essay $i\"}],\"max_tokens\":400,\"ignore_eos\":true}" & CLIENTS+=($!)
  done
  streams_started() { n=0; for i in $(seq 1 50); do [ -s "$TMP/dc/$i" ] && n=$((n + 1)); done; [ $n -eq 50 ]; }
  wait_for 60 streams_started
  streams_started
  check "50 streams are mid-generation ($n streaming)" test "$n" -eq 50
  used=$(metric nanoinfer_kv_blocks_used)
  check "KV blocks in use while streaming ($used)" test "${used:-0}" -gt 0
  check "55 requests in flight" test "$(metric nanoinfer_requests_in_flight)" = 55
  curl -s "$BASE/metrics" >"$TMP/metrics_busy"
  out=$(python3 test/py/check_metrics.py "$TMP/metrics_busy" "$(basename "$REAL")" 2>&1); rc=$?
  check "metrics under load: the vllm: series agree ($out)" test $rc -eq 0
  check "metrics under load: vllm:num_requests_running > 0" \
    awk '$1 ~ /^vllm:num_requests_running\{/ { found = 1; if ($2 > 0) ok = 1 } END { exit !(found && ok) }' "$TMP/metrics_busy"
  kill -9 "${CLIENTS[@]}" 2>/dev/null
  wait "${CLIENTS[@]}" 2>/dev/null
  CLIENTS=()
  drained() { metric_is nanoinfer_kv_blocks_used 0 && metric_is nanoinfer_requests_in_flight 0; }
  wait_for 60 drained
  check "KV blocks back to 0 after the clients died" test "$(metric nanoinfer_kv_blocks_used)" = 0
  check "no request left in flight" test "$(metric nanoinfer_requests_in_flight)" = 0
  check "55 disconnects counted" test "$(metric 'nanoinfer_requests_aborted_total{reason="disconnect"}')" -ge 55
  check "running sequences 0" test "$(metric nanoinfer_num_seqs_running)" = 0
  req POST /v1/completions '{"prompt":"still serving","max_tokens":2}'
  check "serving after the disconnect storm" test "$STATUS" = 200

  # ====================================================================
  section shutdown
  # SIGTERM: in-flight requests complete, new connections are refused, exit 0
  curl -s "$BASE/v1/completions" -o "$TMP/drain.json" -w '%{http_code}' \
    -d '{"prompt":"Drain me","max_tokens":24,"ignore_eos":true}' >"$TMP/drain.code" & C1=$!
  wait_for 30 metric_is nanoinfer_requests_in_flight 1
  kill -TERM "$REAL_PID"
  sleep 0.2
  check "refuses new connections while draining" \
    test "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$BASE/health")" = 000
  wait "$C1"
  check "in-flight request finished with 200" test "$(cat "$TMP/drain.code")" = 200
  check "in-flight request got all its tokens" test "$(jq .usage.completion_tokens "$TMP/drain.json")" = 24
  wait "$REAL_PID"
  check "exit status 0 after SIGTERM" test $? -eq 0
  check "shutdown logged" grep -q "no longer accepting" "$TMP/real.log"

  # the shutdown timeout aborts what is left: the stream ends cleanly
  start_server timeout --model "$REAL" --shutdown-timeout 1 || exit 1
  curl -sN "$BASE/v1/completions" -o "$TMP/abort.sse" \
    -d '{"prompt":"Long story:","max_tokens":2000,"ignore_eos":true,"stream":true}' & C1=$!
  wait_for 30 test -s "$TMP/abort.sse"
  t0=$(date +%s.%N)
  kill -TERM "$SRV_PID"
  wait "$SRV_PID"
  rc=$?
  t1=$(date +%s.%N)
  wait "$C1"
  check "exit 0 after the shutdown timeout" test $rc -eq 0
  check "shutdown took about the timeout ($(calc "$t1 - $t0")s)" test "$(calc "$t1 - $t0 < 4")" = 1
  check "aborted stream is well-formed" python3 test/py/check_sse.py "$TMP/abort.sse"
  check "aborted stream says abort" bash -c "python3 test/py/check_sse.py $TMP/abort.sse | jq -e '.finish[\"0\"] == \"abort\"'"

  # a second signal stops at once
  start_server twice --model "$REAL" --shutdown-timeout 60 || exit 1
  curl -sN "$BASE/v1/completions" -o /dev/null \
    -d '{"prompt":"Long story:","max_tokens":2000,"ignore_eos":true,"stream":true}' & CLIENTS+=($!)
  wait_for 30 metric_is nanoinfer_requests_in_flight 1
  kill -INT "$SRV_PID"; sleep 0.2; kill -INT "$SRV_PID"
  t0=$(date +%s)
  wait "$SRV_PID"
  rc=$?
  check "second SIGINT: exit 0 ($rc)" test $rc -eq 0
  check "second SIGINT: prompt exit" test $(( $(date +%s) - t0 )) -le 3
  kill -9 "${CLIENTS[@]}" 2>/dev/null
  wait "${CLIENTS[@]}" 2>/dev/null
  CLIENTS=()
fi

# ======================================================================
section "connection limit"
# issue 14: at --max-connections the listener must come back once clients leave
start_server maxconn --model "$TINY" --max-connections 20 || exit 1
python3 test/py/conn_limit.py "$SRV_PORT" 20 >"$TMP/conn_limit.out" 2>&1
rc=$?
check "listener survives --max-connections 20: $(tail -1 "$TMP/conn_limit.out")" test $rc -eq 0
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# a model whose weights give NaN: each request 500, the cause logged and counted, /health 503
python3 test/py/nan_model.py "$TINY" "$TMP/nan-model" >/dev/null
start_server nan --model "$TMP/nan-model" || exit 1
for _ in 1 2 3; do req POST /v1/completions '{"prompt":"hi","max_tokens":4}'; done
check "NaN model: requests fail with 500" test "$STATUS" = 500
check "NaN model: the cause is logged" grep -q 'generation failed in the engine: .*no finite logit' "$TMP/nan.log"
check "NaN model: engine errors counted as kind nan" \
  test "$(metric 'nanoinfer_engine_errors_total{kind="nan"}')/$(metric 'nanoinfer_engine_errors_total{kind="oom"}')" = 3/0
req GET /health
check "NaN model: /health 503 (engine failing every request)" test "$STATUS/$(jbody .status)" = "503/engine failing every request"
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# a backend that fails for good (NI_DEBUG_FAULT: the 2nd forward and every later one
# return NI_EIO, a lost device): 500 JSON, 503 after, logged, exit 1 (issue 14)
NI_DEBUG_FAULT=forward:2 start_server fatal --model "$TINY" || exit 1
req POST /v1/completions '{"prompt":"hi","max_tokens":1}'
check "fatal fault: the request before it succeeds" test "$STATUS" = 200
req POST /v1/completions '{"prompt":"hi","max_tokens":4}'
check "fatal fault: the request fails with 500 JSON ($STATUS)" \
  test "$STATUS/$(jbody .error.message)" = "500/generation failed inside the engine (see the server log)"
req GET /health
check "fatal fault: /health 503 ($STATUS)" test "$STATUS" = 503
req POST /v1/completions '{"prompt":"hi","max_tokens":1}'
check "fatal fault: new requests 503 naming the engine" \
  test "$STATUS/$(jbody .error.message)" = "503/the engine failed (see the server log); restarting"
wait "$SRV_PID"
rc=$?
check "fatal fault: the server exits 1 ($rc)" test $rc -eq 1
check "fatal fault: the cause is logged" grep -q 'backend failed for good (I/O error' "$TMP/fatal.log"
# a transient failure (NI_ENOMEM from forwards 2..4): those requests fail, /health is 503
# after three in a row, and the next success makes it 200 again
NI_DEBUG_FAULT=forward:2-4:enomem start_server transient --model "$TINY" || exit 1
req POST /v1/completions '{"prompt":"hi","max_tokens":1}'
check "transient fault: the request before it succeeds" test "$STATUS" = 200
for _ in 1 2 3; do req POST /v1/completions '{"prompt":"hi","max_tokens":1}'; done
check "transient fault: requests fail with 500" test "$STATUS" = 500
req GET /health
check "transient fault: /health 503 while every request fails" test "$STATUS" = 503
req POST /v1/completions '{"prompt":"hi","max_tokens":1}'
check "transient fault: the engine recovers" test "$STATUS" = 200
req GET /health
check "transient fault: /health 200 again" test "$STATUS" = 200
check "transient fault: logged" grep -q 'engine step failed: out of memory' "$TMP/transient.log"
check "transient fault: engine errors counted as kind oom" \
  test "$(metric 'nanoinfer_engine_errors_total{kind="oom"}')/$(metric 'nanoinfer_engine_errors_total{kind="nan"}')" = 3/0
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID"
rc=$?
check "transient fault: a normal exit after it ($rc)" test $rc -eq 0
# --header-timeout / --body-timeout: a client trickling its request one byte at a time gets
# a 408 JSON error and is closed by the deadline; /health answers meanwhile (issue 14)
start_server trickle --model "$TINY" --header-timeout 2 --body-timeout 2 || exit 1
python3 test/py/slow_headers.py "$SRV_PORT" 30 2 headers >"$TMP/trickle.out" 2>&1
rc=$?
check "--header-timeout 2 cuts off 30 trickling clients: $(tail -1 "$TMP/trickle.out")" test $rc -eq 0
python3 test/py/slow_headers.py "$SRV_PORT" 10 2 body >"$TMP/trickle_body.out" 2>&1
rc=$?
check "--body-timeout 2 cuts off 10 clients trickling a body: $(tail -1 "$TMP/trickle_body.out")" test $rc -eq 0
# malformed request heads (bad Content-Length, garbage request line, 414/431/505, a lone
# chunk size of ffffffffffffffff, ...) get one JSON error at once from the server's own
# check of the first request (srv_head.c), no longer libmicrohttpd's HTML, doubled header
# block or silence until a timeout (issue 14)
python3 test/py/bad_heads.py "$SRV_PORT" >"$TMP/bad_heads.out" 2>&1
rc=$?
check "malformed request heads: one JSON error each, at once ($(grep -c '^ok' "$TMP/bad_heads.out") ok)" test $rc -eq 0
[ $rc -eq 0 ] || grep -v '^ok' "$TMP/bad_heads.out"
check "request timeouts are counted" test "$(metric nanoinfer_http_request_timeouts_total)" -ge 40
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# the deprecated --request-timeout still sets both deadlines
start_server trickle_old --model "$TINY" --request-timeout 2 || exit 1
python3 test/py/slow_headers.py "$SRV_PORT" 5 2 body >"$TMP/trickle_old.out" 2>&1
rc=$?
check "--request-timeout 2 (deprecated) still cuts off a trickled body: $(tail -1 "$TMP/trickle_old.out")" test $rc -eq 0
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# at --max-connections a new client gets in: the connection that waited longest for its
# headers is evicted (counted), not the newcomer queued until a timeout (issue 14)
start_server evict --model "$TINY" --max-connections 10 --header-timeout 30 || exit 1
python3 test/py/evict.py "$SRV_PORT" 40 >"$TMP/evict.out" 2>&1
rc=$?
check "--max-connections 10, 40 trickling clients: $(tail -1 "$TMP/evict.out")" test $rc -eq 0
check "evictions are counted" test "$(metric nanoinfer_http_connections_evicted_total)" -ge 1
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# --max-connections-per-ip 2: a third connection from 127.0.0.1 is closed at once
start_server perip --model "$TINY" --max-connections-per-ip 2 || exit 1
perip=$(python3 -c "
import socket
held = [socket.create_connection(('127.0.0.1', $SRV_PORT)) for _ in range(2)]
s = socket.create_connection(('127.0.0.1', $SRV_PORT)); s.settimeout(3)
try:
    s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'); r = s.recv(100)
    print('closed' if r == b'' else 'answered')
except ConnectionResetError: print('closed')
except socket.timeout: print('timeout')
" 2>&1)
check "--max-connections-per-ip 2: a third connection is closed ($perip)" test "$perip" = closed
req GET /health
check "--max-connections-per-ip 2: /health 200 once they are gone" test "$STATUS" = 200
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# a streamed echo whose first events exceed --max-stream-buffer gets a 400
# JSON error up front (it was a stream cut with no error): n = 16 choices each
# open with the echoed prompt, 400 control bytes = 2,400 bytes of JSON apiece
start_server echobuf --model "$TINY" --max-stream-buffer 16384 || exit 1
python3 -c "import json; print(json.dumps({'prompt': '\x01' * 400, 'echo': True, 'stream': True, \
'n': 16, 'max_tokens': 2}))" >"$TMP/echo_req.json"
code=$(curl -s -o "$TMP/echo_body" -w '%{http_code}' "$BASE/v1/completions" \
  -H 'Content-Type: application/json' --data-binary @"$TMP/echo_req.json")
check "stream echo over --max-stream-buffer: 400 ($code)" test "$code" = 400
check "stream echo over --max-stream-buffer: JSON error naming echo" \
  jq -e '.error.param == "echo" and (.error.message | test("max-stream-buffer"))' "$TMP/echo_body"
code=$(curl -s -o "$TMP/echo_body2" -w '%{http_code}' "$BASE/v1/completions" \
  -H 'Content-Type: application/json' -d '{"prompt":"hello","echo":true,"stream":true,"max_tokens":2}')
check "a small stream echo still streams ($code)" grep -q '^data: \[DONE\]' "$TMP/echo_body2"
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null
# --idle-timeout 0.5 closes an idle connection (MHD counts whole seconds: 0.5 once meant never)
start_server idle --model "$TINY" --idle-timeout 0.5 || exit 1
closed=$(python3 -c "import socket,time; s=socket.create_connection(('127.0.0.1', $SRV_PORT)); \
s.settimeout(5); t=time.time(); print('closed' if s.recv(1) == b'' else 'data', round(time.time()-t, 1))" 2>&1)
check "--idle-timeout 0.5 closes an idle connection ($closed s)" bash -c "[[ '$closed' == closed* ]]"
kill "$SRV_PID" 2>/dev/null
wait "$SRV_PID" 2>/dev/null

# ======================================================================
section load
if ! command -v wrk >/dev/null; then
  echo "SKIP: wrk is not installed (make deps); load section skipped"
else
  start_server load --model "$TINY" --max-num-seqs 8 --max-queue 8 --kv-blocks 1024 || exit 1
  scripts/loadtest.sh -u "$BASE" -d 3 -c 24 -t 2 -m 8 >"$TMP/load.out" 2>&1
  rc=$?
  check "loadtest: only 2xx/429, no socket errors (rc $rc)" test $rc -eq 0
  grep -E '^(LOADTEST|loadtest:|latency)' "$TMP/load.out"
  grep -q 'rejected=[1-9]' "$TMP/load.out" || echo "NOTE: no request was shed with 429 (fast machine)"
  scripts/loadtest.sh -u "$BASE" -d 2 -c 4 -t 2 -m 4 --chat --stream >"$TMP/load2.out" 2>&1
  check "loadtest chat+stream (rc $?)" grep -q 'other=0 connect=0 read=0 write=0 timeout=0' "$TMP/load2.out"
  check "load server alive" kill -0 "$SRV_PID"
  check "load: KV blocks back to 0" test "$(metric nanoinfer_kv_blocks_used)" = 0
fi

# sanitizer builds (make asan): no report from the server code; others are noted
for log in "$TMP"/*.log; do
  check "no sanitizer report in $(basename "$log")" \
    bash -c "! grep -E 'Sanitizer|server/[a-z_]*\.c:[0-9]+:[0-9]+: runtime error' '$log'"
done
grep -hE '^[a-z_/]+\.c:[0-9]+:[0-9]+: runtime error' "$TMP"/*.log 2>/dev/null | grep -v '^server/' | sort -u |
  sed 's/^/NOTE (outside server\/): /'
section finished
echo "e2e_server: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
