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

FAULT (argument 5) checks a server with an injected backend failure
(NI_DEBUG_FAULT, scripts/soak.sh's SOAK_FAULT); no abandoned or unread
streams then, and every socket has a 15 s timeout (a hang is a failure):
  fatal:PID   a lost device. Every request ends complete (before the fault)
              or with an OpenAI-shaped error: a 500 / 503 JSON body, or for a
              stream an SSE error event then [DONE]. After its first 503 a
              connection stops (later requests are answered; it has seen
              that). A refused or dropped connection counts only once the
              server (PID) has exited, within 2 s; a 200 cut short is a
              failure. A /health poller must see 503 before the exit. Ends
              when every connection has stopped (or at SECONDS).
  transient   a passing failure (enomem): failed requests end with the same
              errors, and the server must serve complete requests after the
              first one; socket errors, hangs and cut-short 200s fail.
The JSON adds errors_500, errors_503, error_events, after_exit, health_503,
health_other, timeouts, ok_after_fault, t_first_fault (epoch seconds).

Usage: soak_client.py BASE_URL SECONDS [CONNS] [SEED] [FAULT]
"""
import http.client
import json
import os
import random
import socket
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
                  "tokens": 0, "errors_500": 0, "errors_503": 0, "error_events": 0,
                  "after_exit": 0, "health_503": 0, "health_other": 0, "timeouts": 0,
                  "ok_after_fault": 0}
        self.examples = []
        self.t_first_fault = None

    def fault_seen(self):
        with self.lock:
            if self.t_first_fault is None:
                self.t_first_fault = time.time()

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


FAULT_TIMEOUT = 15  # seconds a fault-mode socket may wait: a hang is a failure


def server_gone(pid, within):
    """True once process pid has exited (gone, or a zombie its parent has not
    waited for yet), polling for up to within seconds."""
    end = time.monotonic() + within
    while True:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (OSError, IndexError):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)


def error_shaped(o):
    """An OpenAI error object: {"error": {"message": str, "type": str, ...}}."""
    e = o.get("error") if isinstance(o, dict) else None
    return isinstance(e, dict) and isinstance(e.get("message"), str) and \
        isinstance(e.get("type"), str)


def complete(finish, n_tokens, max_tokens):
    """Why a 200 answer is not a whole generation, or None: it must end with
    stop or length, and length means max_tokens tokens (a fault must never
    pass for a short, successful answer)."""
    if finish not in ("stop", "length"):
        return "finish_reason %r" % (finish,)
    if finish == "length" and n_tokens is not None and n_tokens != max_tokens:
        return "finish_reason length after %s of %d tokens" % (n_tokens, max_tokens)
    return None


def worker(host, port, deadline, seed, st, mode=None, pid=0):
    rng = random.Random(seed)
    kinds, weights = ["plain", "stream", "chat", "abort", "stall"], [4, 3, 2, 2, 1]
    if mode:  # every request must reach an outcome that can be checked
        kinds, weights = kinds[:3], weights[:3]
    conn = None
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        path, body = body_for(kind, rng)
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=FAULT_TIMEOUT if mode else 120)
        st.add("requests")
        answered = False  # a status line came: a drop after it is never excused
        try:
            conn.request("POST", path, json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answered = True
            status = resp.status
            fault_status = status == 500 or (status == 503 and mode == "fatal")
            if mode and fault_status:
                raw = resp.read()
                try:
                    o = json.loads(raw)
                except ValueError:
                    o = None
                if error_shaped(o):
                    st.add("errors_%d" % status)
                    st.fault_seen()
                else:
                    st.add("bad_body", example="%s %d not an error object: %r" %
                           (path, status, raw[:200]))
                if status == 503:
                    break  # the fatal server answers later requests: seen
                continue
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
                cut = None
                if o.get("choices") and "usage" in o:
                    cut = complete(o["choices"][0].get("finish_reason"),
                                   o["usage"].get("completion_tokens"), body["max_tokens"])
                if not o.get("choices") or "usage" not in o:
                    st.add("bad_body", example="no choices/usage: %r" % (o,))
                elif cut:
                    st.add("bad_body", example="%s 200 cut short: %s" % (path, cut))
                else:
                    st.add("ok")
                    st.add("tokens", o["usage"]["completion_tokens"])
                    if st.t_first_fault is not None:
                        st.add("ok_after_fault")
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
            error_event = None
            finish = None
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
                        if mode and error_shaped(o) and error_event is None:
                            error_event = o
                        else:
                            st.add("bad_body", example="error event: %r" % (o,))
                    for c in o.get("choices") or ():
                        finish = c.get("finish_reason") or finish
                    events += 1
            resp.read()
            if error_event is not None and done:
                st.add("error_events")
                st.fault_seen()
            elif error_event is not None:
                st.add("bad_body", example="%s error event without [DONE]" % path)
            elif done and events > 0 and complete(finish, None, body["max_tokens"]):
                st.add("bad_body", example="%s stream cut short: %s" %
                       (path, complete(finish, None, body["max_tokens"])))
            elif done and events > 0:
                st.add("ok")
                st.add("streamed")
                if st.t_first_fault is not None:
                    st.add("ok_after_fault")
            else:
                st.add("bad_body", example="%s stream ended without [DONE]" % path)
        except TimeoutError as e:
            st.add("timeouts", example="%s %s: no answer in %ds: %r" % (kind, path, FAULT_TIMEOUT, e))
            conn.close()
            conn = None
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            conn = None
            if mode == "fatal" and not answered and not isinstance(e, ValueError) and \
                    server_gone(pid, 2.0):
                st.add("after_exit")
                break
            st.add("socket_errors", example="%s %s: %r" % (kind, path, e))
    if conn is not None:
        conn.close()


def health_poller(host, port, deadline, st, mode, pid, stop):
    """Polls /health every 50 ms on a fresh connection until stop is set (or,
    for a fatal fault, the server has exited)."""
    while time.monotonic() < deadline and not stop.is_set():
        if mode == "fatal" and server_gone(pid, 0):
            return
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", "/health")
            r = conn.getresponse()
            r.read()
            if r.status == 503:
                st.add("health_503")
            elif r.status != 200:
                st.add("health_other", example="/health %d" % r.status)
        except TimeoutError:
            st.add("timeouts", example="/health: no answer in 5 s")
        except (OSError, http.client.HTTPException) as e:
            if not (mode == "fatal" and server_gone(pid, 2.0)):
                st.add("socket_errors", example="/health: %r" % (e,))
        finally:
            conn.close()
        time.sleep(0.05)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    u = urllib.parse.urlparse(sys.argv[1])
    seconds = float(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    fault = sys.argv[5] if len(sys.argv) > 5 else ""
    mode, _, pid = fault.partition(":")
    if mode not in ("", "fatal", "transient") or (mode == "fatal") != pid.isdigit():
        print("soak_client.py: FAULT must be fatal:PID or transient", file=sys.stderr)
        return 2
    pid = int(pid or 0)
    st = Stats()
    deadline = time.monotonic() + seconds
    ts = [threading.Thread(target=worker,
                           args=(u.hostname, u.port, deadline, seed * 1000 + i, st, mode, pid))
          for i in range(conns)]
    stop = threading.Event()
    hp = threading.Thread(target=health_poller,
                          args=(u.hostname, u.port, deadline, st, mode, pid, stop))
    t0 = time.monotonic()
    for t in ts:
        t.start()
    if mode:
        hp.start()
    for t in ts:
        t.join()
    if mode:
        if mode != "fatal":
            stop.set()
        hp.join()
    out = dict(st.c)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["connections"] = conns
    out["t_first_fault"] = st.t_first_fault
    out["examples"] = st.examples
    bad = out["socket_errors"] + out["bad_status"] + out["bad_body"] + out["timeouts"] + \
        out["health_other"]
    why = []
    if bad:
        why.append("%d bad outcomes" % bad)
    if out["ok"] == 0:
        why.append("no request completed")
    if mode and st.t_first_fault is None:
        why.append("the fault was never seen")
    if mode == "fatal" and out["health_503"] == 0:
        why.append("/health never answered 503")
    if mode == "transient" and out["ok_after_fault"] == 0:
        why.append("no request completed after the fault")
    out["failures"] = why
    print(json.dumps(out))
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
