#!/usr/bin/env python3
"""conn_limit.py PORT N - the listener survives --max-connections (issue 14).

Holds N idle TCP connections (the server's limit), sends a request on one
more while they are held (it waits in the kernel's accept queue), closes the
N, and then expects that queued request and a brand-new one to be answered
200 within 5 s each. Before the fix the listener stayed shut for good.
Exit 0 on success, 1 with the reason on stdout.
"""
import http.client
import socket
import sys
import time

port, n = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
time.sleep(0.5)
queued = socket.create_connection(("127.0.0.1", port), timeout=5)
queued.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
for s in held:
    s.close()
try:
    first = queued.recv(100).split(b"\r\n")[0].decode()
except socket.timeout:
    first = ""
if " 200 " not in first + " ":
    print("the request queued at the limit got %r within 5 s" % (first or "no answer"))
    sys.exit(1)
c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
try:
    c.request("GET", "/health")
    status = c.getresponse().status
except OSError as e:
    print("a new client got no answer (%s)" % type(e).__name__)
    sys.exit(1)
if status != 200:
    print("a new client got %d" % status)
    sys.exit(1)
print("ok")
