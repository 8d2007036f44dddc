#!/usr/bin/env python3
"""slow_reader.py PORT - a streaming client that never reads.

Sends a large streaming request (n=16, top-20 logprobs per token) with a tiny
receive buffer and does not read; the server must cut it off once its
per-connection output buffer (--max-stream-buffer) is full. Exits 0 when the
server closed the connection (EOF or reset) within 20 s, 1 otherwise.
"""
import json
import socket
import sys
import time

port = int(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
body = json.dumps({"prompt": "slow", "max_tokens": 400, "ignore_eos": True, "stream": True, "n": 16,
                   "logprobs": 20}).encode()
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(body) + body)
time.sleep(2)  # do not read: the server's buffer fills up
s.settimeout(20)
deadline = time.time() + 20
try:
    while time.time() < deadline:
        if not s.recv(1 << 20):
            print("server closed the connection")
            sys.exit(0)
except ConnectionResetError:
    print("server reset the connection")
    sys.exit(0)
except socket.timeout:
    pass
print("the server kept the connection open")
sys.exit(1)
