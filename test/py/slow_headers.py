#!/usr/bin/env python3
"""slow_headers.py PORT N LIMIT - clients that trickle a request are cut off (issue 14).

Opens N connections that each send one byte of a request line every 0.5 s
(so the idle timeout never fires), checks that /health still answers while
they trickle, and that every one of them is closed by the server within
LIMIT + 2 s. Exit 0 on success, 1 with the reason on stdout.
"""
import http.client
import socket
import sys
import time

port, n, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
req = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.setblocking(False)
t0, i, open_ = time.time(), 0, set(range(n))
health = None
while open_ and time.time() - t0 < limit + 2:
    for k in list(open_):
        try:
            socks[k].send(req[i % len(req):i % len(req) + 1])
            if socks[k].recv(1) == b"":
                open_.discard(k)
        except BlockingIOError:
            pass
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
print("ok: all %d closed within %.1f s" % (n, time.time() - t0))
