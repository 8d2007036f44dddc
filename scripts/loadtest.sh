#!/usr/bin/env bash
# loadtest.sh - HTTP load test of a running `nanoinfer serve` with wrk.
#
#   scripts/loadtest.sh [-u URL] [-d SECONDS] [-c CONNECTIONS] [-t THREADS]
#                       [-m MAX_TOKENS] [-k API_KEY] [-M MODEL] [--chat] [--stream] [--timeout S]
#
# Posts completion (or chat) requests with varied prompts from CONNECTIONS
# concurrent keep-alive connections for SECONDS, then prints wrk's latency
# report and a summary. Exit status: 0 when every response was 2xx or a
# deliberate 429/503 (load shedding) and there were no socket errors
# (connect/read/write/timeout); 1 otherwise; 2 for usage errors or when wrk
# is missing (apt-get install wrk; `make deps` installs it).
set -euo pipefail
url=http://127.0.0.1:8000 dur=10 conns=8 threads=2 max_tokens=16 chat=0 stream=0 timeout=30 model=
api_key=${NANOINFER_API_KEY:-}
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -u) url=$2; shift 2 ;;
    -d) dur=$2; shift 2 ;;
    -c) conns=$2; shift 2 ;;
    -t) threads=$2; shift 2 ;;
    -m) max_tokens=$2; shift 2 ;;
    -k) api_key=$2; shift 2 ;;
    -M) model=$2; shift 2 ;;
    --chat) chat=1; shift ;;
    --stream) stream=1; shift ;;
    --timeout) timeout=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "loadtest: unknown argument $1" >&2; usage ;;
  esac
done
command -v wrk >/dev/null || { echo "loadtest: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[ "$threads" -le "$conns" ] || threads=$conns
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "loadtest: $url, ${dur}s, $conns connections, $threads threads, max_tokens $max_tokens," \
     "$([ "$chat" = 1 ] && echo chat || echo completions)$([ "$stream" = 1 ] && echo ', streaming')"
LOADTEST_MAX_TOKENS=$max_tokens LOADTEST_CHAT=$chat LOADTEST_STREAM=$stream LOADTEST_API_KEY=$api_key LOADTEST_MODEL=$model \
  wrk -t"$threads" -c"$conns" -d"${dur}s" --timeout "${timeout}s" --latency -s "$here/loadtest.lua" "$url" \
  | tee "$out"
line=$(grep '^LOADTEST ' "$out" || true)
[ -n "$line" ] || { echo "loadtest: no summary from wrk" >&2; exit 1; }
get() { echo "$line" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
ok=$(get ok) rej=$(get rejected) other=$(get other)
sock=$(( $(get connect) + $(get read) + $(get write) + $(get timeout) ))
echo "loadtest: $ok ok, $rej rejected (429/503), $other unexpected statuses, $sock socket errors"
[ "$other" -eq 0 ] && [ "$sock" -eq 0 ] && [ "$ok" -gt 0 ]
