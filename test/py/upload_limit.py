#!/usr/bin/env python3
"""upload_limit.py PORT MAX_BODY [API_KEY] - bodies over --max-body get a 413 the
client can read, and the connection ends with a clean close, never a reset.

Raw sockets (the server answers while the client may still be sending):
  - chunked, 2 x MAX_BODY: the 413 follows the body;
  - chunked, 24 x MAX_BODY (past the server's discard cap of 16 x) from a
    client that stops sending once a response arrives (as curl does): the
    413 comes mid-body, then EOF;
  - chunked, 24 x MAX_BODY from a client that sends everything before it
    reads: the server drains the rest, so the 413 still waits for it;
  - Content-Length 64 x MAX_BODY without Expect: answered at the first bytes;
  - Content-Length over the limit with Expect: 100-continue: answered at once,
    the client sends no body;
  - chunked 2 x MAX_BODY never ended, a chunk size of ffffffffffffffff with
    2 x MAX_BODY of it, Content-Length 2 x MAX_BODY with 1.5 x sent: the
    client then waits, and the 413 must come within 5 s (it is sent at the
    first byte past the limit, whatever the framing; issue 14).
Each: status 413, Connection: close, an OpenAI-style JSON error body
({"error": {"message", "type": "invalid_request_error", ...}}), then EOF
(ECONNRESET is a failure). Then /health must answer 200.
Exits 0 when every case passes; prints one line per case.
"""
import json
import socket
import sys
import threading
import time

PORT = int(sys.argv[1])
MAX_BODY = int(sys.argv[2])
KEY = sys.argv[3] if len(sys.argv) > 3 else ""
AUTH = b"Authorization: Bearer %s\r\n" % KEY.encode() if KEY else b""
PIECE = 64 * 1024


def parse(raw):
    """(status, headers dict, body) of one HTTP response, or None if incomplete."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = raw[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdr = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    n = int(hdr.get("content-length", "-1"))
    body = raw[end + 4:]
    if n < 0 or len(body) < n:
        return None
    return status, hdr, body[:n]


def run(name, head, total, chunked, polite, send_body=True, end=True, raw_body=None, wait=15):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(head)
    got = threading.Event()
    sent = [0, None]

    def sender():
        try:
            if raw_body is not None:  # sent as is, then the client waits
                s.sendall(raw_body)
                sent[0] = total
                return
            while send_body and sent[0] < total and not (polite and got.is_set()):
                n = min(PIECE, total - sent[0])
                data = b"x" * n
                s.sendall(b"%x\r\n%s\r\n" % (n, data) if chunked else data)
                sent[0] += n
            if send_body and chunked and end and sent[0] == total:
                s.sendall(b"0\r\n\r\n")
        except OSError as e:
            sent[1] = e

    t = threading.Thread(target=sender)
    t.start()
    if not polite:
        t.join()
    s.settimeout(wait)
    raw, how = b"", None
    try:
        while True:
            d = s.recv(65536)
            if not d:
                how = "eof"
                break
            raw += d
            if parse(raw):
                got.set()
    except ConnectionResetError:
        how = "reset"
    except socket.timeout:
        how = "timeout"
    got.set()
    t.join()
    s.close()
    r = parse(raw)
    why = []
    if not r:
        why.append("no complete response (%d bytes)" % len(raw))
    else:
        status, hdr, body = r
        if status != 413:
            why.append("status %d" % status)
        if hdr.get("connection", "").lower() != "close":
            why.append("no Connection: close")
        try:
            err = json.loads(body)["error"]
            if err.get("type") != "invalid_request_error" or "too large" not in err.get("message", ""):
                why.append("error body %r" % err)
        except (ValueError, KeyError, TypeError):
            why.append("body is not an OpenAI error: %r" % body[:200])
    if how != "eof":
        why.append("connection ended by %s, not a clean close" % how)
    print("%s %s (sent %d of %d body bytes%s)%s" % (
        "ok  " if not why else "FAIL", name, sent[0], total,
        ", send error %s" % sent[1].__class__.__name__ if sent[1] else "",
        "" if not why else ": " + "; ".join(why)))
    return not why


def post(extra):
    return (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + AUTH + extra + b"\r\n")


ok = True
ok &= run("chunked 2x max-body", post(b"Transfer-Encoding: chunked\r\n"), 2 * MAX_BODY, True, True)
ok &= run("chunked 24x max-body, client stops at the reply",
          post(b"Transfer-Encoding: chunked\r\n"), 24 * MAX_BODY, True, True)
ok &= run("chunked 24x max-body, client sends it all first",
          post(b"Transfer-Encoding: chunked\r\n"), 24 * MAX_BODY, True, False)
ok &= run("Content-Length 64x max-body, no Expect",
          post(b"Content-Length: %d\r\n" % (64 * MAX_BODY)), 64 * MAX_BODY, False, True)
ok &= run("Content-Length 2x max-body, Expect: 100-continue",
          post(b"Content-Length: %d\r\nExpect: 100-continue\r\n" % (2 * MAX_BODY)), 2 * MAX_BODY,
          False, True, send_body=False)
# the 413 must not wait for the end of the body (or for a timeout) whatever the framing
ok &= run("chunked 2x max-body, never ended: 413 at the limit",
          post(b"Transfer-Encoding: chunked\r\n"), 2 * MAX_BODY, True, True, end=False, wait=5)
ok &= run("chunk size ffffffffffffffff, 2x max-body of it: 413 at the limit",
          post(b"Transfer-Encoding: chunked\r\n"), 2 * MAX_BODY, True, True,
          raw_body=b"ffffffffffffffff\r\n" + b"x" * (2 * MAX_BODY), wait=5)
ok &= run("Content-Length 2x max-body, only 1.5x sent: 413 at the limit",
          post(b"Content-Length: %d\r\n" % (2 * MAX_BODY)), 2 * MAX_BODY, False, True,
          raw_body=b"x" * (3 * MAX_BODY // 2), wait=5)
s = socket.create_connection(("127.0.0.1", PORT))
s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
s.settimeout(5)
raw = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    raw += d
health = raw.split(b"\r\n", 1)[0]
print("%s /health after the uploads: %s" % ("ok  " if b" 200 " in health else "FAIL", health.decode()))
ok &= b" 200 " in health
sys.exit(0 if ok else 1)
