#!/usr/bin/env python3
"""bad_heads.py PORT - malformed request heads get one JSON error from the server
itself (issue 14): libmicrohttpd 0.9.75 answered these with HTML, a doubled header
block (bad Content-Length) or not at all until a timeout.

Each case is sent on a fresh connection, in one write; the reply must be exactly
one response: the expected status line, Connection: close, Content-Length that
matches, an OpenAI-style error body ({"error": {"message", "type", ...}}), then a
clean EOF (no reset, nothing after the body), within 2 s. Then sanity: a request
split byte by byte, pipelined requests, a chunked upload with Expect and a
HTTP/1.0 request still work, and /health answers 200.
Exits 0 when every case passes; prints one line per case.
"""
import json
import socket
import sys
import time

from rawhttp import read_to_eof

PORT = int(sys.argv[1])


def exchange(chunks, wait=4.0, gap=0.0):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.settimeout(wait)
    t = time.time()
    for c in chunks:
        s.sendall(c)
        if gap:
            time.sleep(gap)
    raw, how = read_to_eof(s)
    s.close()
    return raw, how, time.time() - t


def split_response(raw):
    """(status, headers, body, rest) of the first response in raw, or None."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = raw[:end].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
        hdr = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            hdr[k.strip().lower()] = v.strip()
    except (IndexError, ValueError):
        return None
    n = int(hdr.get("content-length", "-1"))
    body = raw[end + 4:]
    if n < 0 or len(body) < n:
        return None
    return status, hdr, body[:n], body[n:]


def bad(name, data, want):
    raw, how, dt = exchange([data])
    why = []
    r = split_response(raw)
    if not r:
        why.append("no complete response: %r" % raw[:200])
    else:
        status, hdr, body, rest = r
        if status != want:
            why.append("status %d, want %d" % (status, want))
        if hdr.get("connection", "").lower() != "close":
            why.append("no Connection: close")
        if not hdr.get("content-type", "").startswith("application/json"):
            why.append("Content-Type %r" % hdr.get("content-type"))
        try:
            err = json.loads(body)["error"]
            if not err.get("message") or not err.get("type"):
                why.append("error body %r" % err)
        except (ValueError, KeyError, TypeError):
            why.append("body is not an OpenAI error: %r" % body[:200])
        if rest:
            why.append("%d bytes after the response: %r" % (len(rest), rest[:80]))
    if how != "eof":
        why.append("ended by %s, not a clean close" % how)
    if dt > 2:
        why.append("took %.1fs" % dt)
    print("%s %s -> %s%s" % ("ok  " if not why else "FAIL", name, r[0] if r else "-",
                             "" if not why else ": " + "; ".join(why)))
    return not why


H = b"Host: t\r\n"
POST = b"POST /v1/completions HTTP/1.1\r\n" + H
ok = True
cases = [
    ("Content-Length: -1", POST + b"Content-Length: -1\r\n\r\n", 400),
    ("Content-Length: abc", POST + b"Content-Length: abc\r\n\r\n", 400),
    ("Content-Length of 23 digits", POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 413),
    ("Content-Length over max-body", POST + b"Content-Length: 99999999\r\n\r\n", 413),
    ("two different Content-Lengths", POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nx", 400),
    ("Content-Length and Transfer-Encoding",
     POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: gzip", POST + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    ("chunk size ffffffffffffffff, no data", POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", 413),
    ("chunk size not hex", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("garbage request line", b"\x00\xff\xfe GARBAGE\r\n\r\n", 400),
    ("garbage, no line end", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    ("no HTTP version", b"GET /health\r\n\r\n", 400),
    ("HTTP/2.0", b"GET /health HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/0.9", b"GET /health HTTP/0.9\r\n\r\n", 505),
    ("request line of 9000 bytes", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("headers of 17000 bytes", b"GET /health HTTP/1.1\r\n" + H + b"X-A: " + b"a" * 17000 + b"\r\n\r\n", 431),
    ("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET /health HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("header without a colon", b"GET /health HTTP/1.1\r\n" + H + b"Oops\r\n\r\n", 400),
    ("space before the colon", b"GET /health HTTP/1.1\r\n" + H + b"X-A : 1\r\n\r\n", 400),
    ("obsolete line folding", b"GET /health HTTP/1.1\r\n" + H + b"X-A: 1\r\n 2\r\n\r\n", 400),
    ("NUL in a header value", b"GET /health HTTP/1.1\r\n" + H + b"Authorization: Bearer k\x00x\r\n\r\n", 400),
    ("bare CR", b"GET /health HTTP/1.1\r\n" + H + b"X-A: 1\r2\r\n\r\n", 400),
]
for name, data, want in cases:
    ok &= bad(name, data, want)

# what must still work
raw, how, dt = exchange([bytes([c]) for c in b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"],
                        gap=0.005)
r = split_response(raw)
good = r and r[0] == 200 and how == "eof"
print("%s a head sent byte by byte -> %s" % ("ok  " if good else "FAIL", r[0] if r else raw[:100]))
ok &= bool(good)
raw, how, dt = exchange([b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: t\r\n"
                         b"Connection: close\r\n\r\n"])
r1 = split_response(raw)
r2 = split_response(r1[3]) if r1 else None
good = r1 and r2 and r1[0] == 200 and r2[0] == 200 and b'"data"' in r2[2]
print("%s two pipelined requests -> %s, %s" % ("ok  " if good else "FAIL", r1 and r1[0], r2 and r2[0]))
ok &= bool(good)
body = b'{"prompt":"hi","max_tokens":2}'
raw, how, dt = exchange([POST + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)],
                        gap=0.05)
r = split_response(raw) if b"Content-Length" in raw else None
good = (r and r[0] == 200) or raw.startswith(b"HTTP/1.1 200")
print("%s a chunked upload, size line in a later packet -> %s" % ("ok  " if good else "FAIL", raw[:40]))
ok &= bool(good)
raw, how, dt = exchange([b"GET /health HTTP/1.0\r\n\r\n"])
r = split_response(raw)
good = r and r[0] == 200 and how == "eof"
print("%s HTTP/1.0 without Host -> %s" % ("ok  " if good else "FAIL", r[0] if r else raw[:100]))
ok &= bool(good)
sys.exit(0 if ok else 1)
