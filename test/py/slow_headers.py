#!/usr/bin/env python3
"""slow_headers.py PORT N LIMIT [headers|body] - clients that trickle a request are cut off (issue 14).

Opens N connections that each send one byte every 0.5 s (so the idle timeout
never fires): of the request headers (mode headers, the default), or, after
whole headers with a Content-Length, of the body (mode body). Checks that
/health still answers while they trickle, that every one of them is closed by
the server within LIMIT + 2 s, and that each got a 408 with an OpenAI-style
JSON error before the close (nothing else had been sent to it).
Exit 0 on success, 1 with the reason on stdout.
"""
import http.client
import json
import socket
import sys
import time

port, n, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "headers"
if mode == "headers":
    head, trickle = b"", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
else:
    head = (b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 400\r\n\r\n")
    trickle = b" " * 400
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.sendall(head)
    s.setblocking(False)
got = [b""] * n
t0, i, open_ = time.time(), 0, set(range(n))
health = None
while open_ and time.time() - t0 < limit + 2:
    for k in list(open_):
        try:  # read first: a byte sent to a closed socket draws a reset, which drops unread data
            while True:
                d = socks[k].recv(4096)
                if d == b"":
                    open_.discard(k)
                    break
                got[k] += d
        except BlockingIOError:
            pass
        except OSError:
            open_.discard(k)
        if k in open_:
            try:
                socks[k].send(trickle[i % len(trickle):i % len(trickle) + 1])
            except OSError:
                open_.discard(k)
    if health is None and time.time() - t0 > 1:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        health = c.getresponse().status
    i += 1
    time.sleep(0.5)
if health != 200:
    print("/health answered %s while clients trickled" % health)
    sys.exit(1)
if open_:
    print("%d of %d trickling clients still open after %.1f s" % (len(open_), n, time.time() - t0))
    sys.exit(1)
bad = 0
for g in got:
    head_, _, body = g.partition(b"\r\n\r\n")
    try:
        ok = head_.startswith(b"HTTP/1.1 408 ") and "not received" in json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        ok = False
    bad += not ok
if bad:
    print("%d of %d got no 408 JSON error before the close (e.g. %r)" % (bad, n, got[0][:200]))
    sys.exit(1)
print("ok: all %d got a 408 and were closed within %.1f s" % (n, time.time() - t0))
