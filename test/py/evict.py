#!/usr/bin/env python3
"""evict.py PORT N - a new client gets in while slow clients fill --max-connections (issue 14).

Opens N connections that each trickle one byte of a request's headers every
0.5 s (far more than the server's limit: the rest wait in the accept queue),
and, while they trickle, expects /health to answer 200 within 5 s: at the
limit the server closes the connection that has waited longest for its
headers instead of leaving the newcomer queued until a timeout.
Exit 0 on success, 1 with the reason on stdout.
"""
import socket
import sys
import time

port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks.append(s)


def tick(i):
    for s in socks:
        try:
            s.recv(4096)
            s.send(req[i % len(req):i % len(req) + 1])
        except OSError:
            pass


for i in range(4):  # 2 s of trickling: every slot is taken
    tick(i)
    time.sleep(0.5)
t0 = time.time()
c = socket.create_connection(("127.0.0.1", port), timeout=5)
c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
c.setblocking(False)
first, i = b"", 4
while time.time() - t0 < 5 and b"\r\n" not in first:
    try:
        d = c.recv(100)
        if not d:
            break
        first += d
    except BlockingIOError:
        pass
    tick(i)
    i += 1
    time.sleep(0.1)
line = first.split(b"\r\n")[0].decode("latin-1")
if " 200 " not in line + " ":
    print("a new client's /health got %r within 5 s while %d clients trickled" % (line or "no answer", n))
    sys.exit(1)
print("ok: /health answered in %.1f s while %d clients trickled" % (time.time() - t0, n))
