#!/usr/bin/env python3
"""check_ttft.py PORT [WORDS] - honest streaming: the first SSE chunk arrives with the first token.

Sends a streaming chat request whose prompt is WORDS words long (default 600, so that prefill takes
a while), reads the body as it arrives (http.client read1: one HTTP chunk or socket read at a time)
and timestamps every `data:` event. Meanwhile another thread asks GET /health every 10 ms, so the
server's loop keeps running MHD while the stream waits for prefill (a chunk queued ahead of the
first token is then free to leave early; with libmicrohttpd 0.9.75 it happened not to, since a
stream's buffered output is only written once its connection is resumed). Checks:
  - the first event carries the assistant role;
  - the first event that carries content (or a finish_reason) arrives in the same read as the first
    event, or within 20 ms of it: the role delta is not sent ahead of prefill;
  - the stream ends with [DONE].
Prints one line with the times (request -> first event, first event -> first content); exits 1 on a
violation.
"""
import http.client
import json
import sys
import threading
import time


def main():
    port = int(sys.argv[1])
    words = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    prompt = " ".join("word%d" % (i % 50) for i in range(words)) + "\nSummarise."
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
                       "stream": True, "temperature": 0})
    done = threading.Event()

    def poll_health():
        h = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not done.is_set():
            h.request("GET", "/health")
            h.getresponse().read()
            time.sleep(0.01)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        return stream(port, body)
    finally:
        done.set()
        poller.join()


def stream(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        print("FAIL: status %d: %s" % (resp.status, resp.read()[:200]))
        return 1
    events = []  # (time, read number, payload)
    buf = b""
    reads = 0
    while True:
        data = resp.read1(65536)
        if not data:
            break
        t = time.monotonic()
        reads += 1
        buf += data
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: "):
                print("FAIL: bad event framing: %r" % ev[:80])
                return 1
            events.append((t, reads, ev[6:].decode()))
    if not events or events[-1][2] != "[DONE]":
        print("FAIL: the stream does not end with [DONE]")
        return 1
    first = events[0]
    o = json.loads(first[2])
    if o["choices"][0]["delta"].get("role") != "assistant":
        print("FAIL: the first event carries no role: %s" % first[2][:200])
        return 1
    firstc = None
    for ev in events[:-1]:
        c = json.loads(ev[2])["choices"]
        if c and (c[0]["delta"].get("content") or c[0]["finish_reason"]):
            firstc = ev
            break
    if firstc is None:
        print("FAIL: no event with content or a finish_reason")
        return 1
    gap = firstc[0] - first[0]
    line = ("request -> first event %.1f ms, first event -> first content %.1f ms (read %d vs %d), "
            "%d events" % ((first[0] - t0) * 1e3, gap * 1e3, first[1], firstc[1], len(events)))
    if firstc[1] != first[1] and gap > 0.02:
        print("FAIL: the role chunk came ahead of the first token: " + line)
        return 1
    print(line)
    return 0


sys.exit(main())
