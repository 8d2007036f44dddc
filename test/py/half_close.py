#!/usr/bin/env python3
"""half_close.py PORT MAX_TOKENS - clients that shut down their write side.

  - non-streaming: the whole request, then shutdown(SHUT_WR): the client must
    still get its full reply (200, MAX_TOKENS completion tokens); when it
    takes longer than the server's 200 ms disconnect sweep, the server sees
    the EOF and probes (the reply is then chunked with leading newlines);
  - streaming: the same, stream=true: every SSE event up to [DONE], the
    content tokens adding up to MAX_TOKENS (SSE comment lines, the probes,
    are allowed and counted);
  - half-closed mid-body (Content-Length 1000, 100 bytes sent): the server
    drops the request and closes; afterwards /health is 200, no request is
    in flight and nanoinfer_kv_blocks_used is 0 (within 10 s).
MAX_TOKENS should make a request last well over 0.2 s (the real model in
test/e2e_server.sh) so that the probe path is taken. Prints one line per
case; exits 0 when all pass.
"""
import json
import socket
import sys
import time

from rawhttp import read_to_eof

PORT = int(sys.argv[1])
MAX_TOKENS = int(sys.argv[2])


def exchange(req, half_close_after, timeout=120):
    """Sends req, shuts down writing, reads to EOF. Returns (raw, how, seconds)."""
    s = socket.create_connection(("127.0.0.1", PORT))
    t0 = time.time()
    s.sendall(req[:half_close_after])
    s.shutdown(socket.SHUT_WR)
    s.settimeout(timeout)
    raw, how = read_to_eof(s)
    s.close()
    return raw, how, time.time() - t0


def split(raw):
    """(status, headers, body with any chunked framing removed) or None."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = raw[:end].decode("latin-1").split("\r\n")
    hdr = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    body = raw[end + 4:]
    if hdr.get("transfer-encoding", "").lower() == "chunked":
        out, i = b"", 0
        while True:
            j = body.find(b"\r\n", i)
            if j < 0:
                return None  # unfinished
            n = int(body[i:j].split(b";")[0], 16)
            if n == 0:
                break
            out += body[j + 2:j + 2 + n]
            i = j + 2 + n + 2
        body = out
    elif "content-length" in hdr:
        body = body[:int(hdr["content-length"])]
    return int(lines[0].split()[1]), hdr, body


def post(obj):
    b = json.dumps(obj).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(b) + b)


def get(path):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
    s.settimeout(10)
    raw = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        raw += d
    return split(raw)


def metric(name):
    r = get("/metrics")
    for line in (r[2].decode().splitlines() if r else []):
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    return None


def report(name, why, extra):
    print("%s %s (%s)%s" % ("ok  " if not why else "FAIL", name, extra,
                           "" if not why else ": " + "; ".join(why)))
    return not why


ok = True
prompt = {"prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "ignore_eos": True,
          "temperature": 0}

# non-streaming
req = post(prompt)
raw, how, dt = exchange(req, len(req))
why, r = [], split(raw)
if how != "eof":
    why.append("ended by %s" % how)
probed = False
if not r:
    why.append("no complete reply (%d bytes)" % len(raw))
else:
    status, hdr, body = r
    probed = body[:1] == b"\n"
    if status != 200:
        why.append("status %d" % status)
    try:
        o = json.loads(body)
        if o["usage"]["completion_tokens"] != MAX_TOKENS or not o["choices"][0]["text"]:
            why.append("usage %r" % o["usage"])
    except (ValueError, KeyError, IndexError, TypeError):
        why.append("body is not a completion: %r" % body[:200])
ok &= report("non-streaming, half-closed after the request", why,
             "%.2fs, %s" % (dt, "probed" if probed else "not probed"))

# streaming
req = post(dict(prompt, stream=True))
raw, how, dt = exchange(req, len(req))
why, r = [], split(raw)
if how != "eof":
    why.append("ended by %s" % how)
n_tok = n_comments = 0
if not r:
    why.append("no complete reply (%d bytes)" % len(raw))
else:
    status, hdr, body = r
    if status != 200 or not hdr.get("content-type", "").startswith("text/event-stream"):
        why.append("status %d %s" % (status, hdr.get("content-type")))
    events = body.decode().split("\n\n")
    if events[-1] != "":
        why.append("stream does not end with a blank line")
    datas = []
    for ev in events[:-1]:
        for line in ev.split("\n"):
            if line.startswith(":"):
                n_comments += 1
            elif line.startswith("data: "):
                datas.append(line[6:])
            elif line:
                why.append("bad SSE line %r" % line[:80])
    if not datas or datas[-1] != "[DONE]":
        why.append("no [DONE] at the end")
    for d in datas[:-1]:
        try:
            o = json.loads(d)
            for c in o.get("choices", []):
                if c.get("text"):
                    n_tok += 1
        except ValueError:
            why.append("event is not JSON: %r" % d[:80])
    # a token may decode to no text: at most a few missing
    if not MAX_TOKENS - 4 <= n_tok <= MAX_TOKENS:
        why.append("%d content events for %d tokens" % (n_tok, MAX_TOKENS))
ok &= report("streaming, half-closed after the request", why,
             "%.2fs, %d events with text, %d probe comments" % (dt, n_tok, n_comments))

# half-closed mid-body
head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n")
raw, how, dt = exchange(head + json.dumps(prompt).encode()[:100], len(head) + 100, timeout=10)
why = [] if how in ("eof", "reset") else ["not closed: %s" % how]
if raw.startswith(b"HTTP/1.1 2"):
    why.append("a truncated request got a 2xx")
deadline = time.time() + 10
while time.time() < deadline:
    h = get("/health")
    if (h and h[0] == 200 and metric("nanoinfer_kv_blocks_used") == 0
            and metric("nanoinfer_requests_in_flight") == 0):
        break
    time.sleep(0.1)
h = get("/health")
if not h or h[0] != 200:
    why.append("/health %r" % (h[0] if h else None))
kv, inflight = metric("nanoinfer_kv_blocks_used"), metric("nanoinfer_requests_in_flight")
if kv != 0 or inflight != 0:
    why.append("kv blocks %r, in flight %r" % (kv, inflight))
ok &= report("half-closed mid-body", why, "closed by %s in %.2fs" % (how, dt))
sys.exit(0 if ok else 1)
