#!/usr/bin/env python3
"""soak_client.py - mixed load for scripts/soak.sh (standard library only).

CONNS threads, each with its own keep-alive HTTP/1.1 connection, send
requests for SECONDS: non-streaming completions, streamed completions read to
[DONE], streamed chat completions, streams the client abandons after the
first event (the socket is closed: the server must abort the request and free
its KV blocks), and streams left unread for 0.5-2 s before the hang-up (their
output piles up in the server's per-connection buffer, which must be freed). Every response is checked: 2xx, or 429 / 503 (deliberate
back-pressure, counted apart). Anything else is a bad status; a connect,
reset or read error on a request the client did not abandon is a socket
error. Prints one JSON object with the counts; exits 1 if there was any
socket error, bad status or malformed body, else 0.

Usage: soak_client.py BASE_URL SECONDS [CONNS] [SEED]
"""
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

WORDS = ("the quick brown fox jumps over a lazy dog while seven tiny models "
         "sing about caches blocks and tokens in the warm server room").split()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {"requests": 0, "ok": 0, "streamed": 0, "aborted": 0, "http_429": 0,
                  "http_503": 0, "stalled": 0, "bad_status": 0, "socket_errors": 0, "bad_body": 0,
                  "tokens": 0}
        self.examples = []

    def add(self, key, n=1, example=None):
        with self.lock:
            self.c[key] += n
            if example and len(self.examples) < 10:
                self.examples.append(example)


def prompt(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))


def body_for(kind, rng):
    max_tokens = rng.randint(16, 64) if kind == "stall" else rng.randint(1, 24)
    if kind == "chat":
        return "/v1/chat/completions", {
            "messages": [{"role": "user", "content": prompt(rng)}],
            "max_tokens": max_tokens, "stream": True, "temperature": 0.8}
    return "/v1/completions", {"prompt": prompt(rng), "max_tokens": max_tokens,
                               "stream": kind != "plain", "temperature": rng.choice([0, 0.7])}


def worker(host, port, deadline, seed, st):
    rng = random.Random(seed)
    conn = None
    while time.monotonic() < deadline:
        kind = rng.choices(["plain", "stream", "chat", "abort", "stall"], [4, 3, 2, 2, 1])[0]
        path, body = body_for(kind, rng)
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=120)
        st.add("requests")
        try:
            conn.request("POST", path, json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            status = resp.status
            if status in (429, 503):
                resp.read()
                st.add("http_%d" % status)
                time.sleep(0.05)
                continue
            if status // 100 != 2:
                st.add("bad_status", example="%s %d %s" % (path, status, resp.read()[:200]))
                conn.close()
                conn = None
                continue
            if not body["stream"]:
                o = json.loads(resp.read())
                if not o.get("choices") or "usage" not in o:
                    st.add("bad_body", example="no choices/usage: %r" % (o,))
                else:
                    st.add("ok")
                    st.add("tokens", o["usage"]["completion_tokens"])
                continue
            if kind == "stall":
                time.sleep(rng.uniform(0.5, 2.0))  # nothing read: the server buffers
                conn.close()
                conn = None
                st.add("stalled")
                continue
            if kind == "abort":
                resp.readline()  # the first SSE line, then hang up mid-stream
                conn.close()
                conn = None
                st.add("aborted")
                continue
            done = False
            events = 0
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    o = json.loads(line[6:])
                    if "error" in o:
                        st.add("bad_body", example="error event: %r" % (o,))
                    events += 1
            resp.read()
            if done and events > 0:
                st.add("ok")
                st.add("streamed")
            else:
                st.add("bad_body", example="%s stream ended without [DONE]" % path)
        except (OSError, http.client.HTTPException, ValueError) as e:
            st.add("socket_errors", example="%s %s: %r" % (kind, path, e))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    u = urllib.parse.urlparse(sys.argv[1])
    seconds = float(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    st = Stats()
    deadline = time.monotonic() + seconds
    ts = [threading.Thread(target=worker, args=(u.hostname, u.port, deadline, seed * 1000 + i, st))
          for i in range(conns)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out = dict(st.c)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["connections"] = conns
    out["examples"] = st.examples
    print(json.dumps(out))
    bad = out["socket_errors"] + out["bad_status"] + out["bad_body"]
    return 1 if bad or out["ok"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
