#!/usr/bin/env python3
"""soak_client.py - mixed load for scripts/soak.sh (standard library only).

CONNS threads, each with its own keep-alive HTTP/1.1 connection, send
requests for SECONDS: non-streaming completions (with n = 2 or 3 as well in
fault mode), streamed completions read to
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
streams then, and a hang is a failure: a request still open FAULT_HANG_S
(15 s) after a fatal fault, or a socket silent for SOAK_CLIENT_TIMEOUT (env,
default 15 s) in a transient one:
  fatal:PID   a lost device. Every request ends complete (before the fault)
              or with an OpenAI-shaped error: a 500 / 503 JSON body, or for a
              stream an SSE error event then [DONE]. After its first 503 a
              connection stops (later requests are answered; it has seen
              that). A refused or dropped connection is excused only for a
              request sent after the fault and once the server (PID) has
              exited, within 2 s; a 200 cut short is a failure. A /health poller must see 503 before the exit. Ends
              when every connection has stopped (or at SECONDS).
  transient   a passing failure (enomem): failed requests end with the same
              errors, and the server must serve complete requests after the
              first one; socket errors, hangs and cut-short 200s fail.
The JSON adds errors_500, errors_503, error_events, after_exit, health_503,
health_other, timeouts, ok_after_fault, t_first_fault (epoch seconds).

--self-test runs the fault checks against a local fake server that
misbehaves (a 500 in HTML, a stream whose finish is "error" with no error
event, an error event with no [DONE], a 200 cut short, a hang) and passes
when each is counted as a failure and a well-behaved fake counts none.

Usage: soak_client.py BASE_URL SECONDS [CONNS] [SEED] [FAULT]
       soak_client.py --self-test
"""
import http.client
import http.server
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
        self.inflight = {}  # worker thread -> [time sent, connection, cut as hung]

    def track(self, conn):
        """A request goes out on conn (fatal mode's watchdog watches it)."""
        with self.lock:
            self.inflight[threading.get_ident()] = [time.time(), conn, False]

    def untrack(self):
        """The request has ended: True when the watchdog cut it as hung."""
        with self.lock:
            e = self.inflight.pop(threading.get_ident(), None)
        return bool(e and e[2])

    def cut_hung(self, hang_s):
        """A request still open hang_s after the later of its sending and the
        first failed request is hung: counted, and its socket shut so that
        its worker wakes up."""
        now = time.time()
        with self.lock:
            if self.t_first_fault is None:
                return
            for e in self.inflight.values():
                if not e[2] and now - max(e[0], self.t_first_fault) > hang_s:
                    e[2] = True
                    self.c["timeouts"] += 1
                    if len(self.examples) < 10:
                        self.examples.append("a request open %.0f s after the fault" % hang_s)
                    try:
                        e[1].sock.shutdown(socket.SHUT_RDWR)
                    except (AttributeError, OSError):
                        pass

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
    body = {"prompt": prompt(rng), "max_tokens": max_tokens,
            "stream": kind not in ("plain", "multi"), "temperature": rng.choice([0, 0.7])}
    if kind == "multi":  # n > 1: forked sequences sharing the prompt's KV blocks
        body["n"] = rng.choice([2, 3])
    return "/v1/completions", body


# a transient fault's socket timeout (a hang is a failure); a fatal fault's
# requests may be slow before it, but none may stay open FAULT_HANG_S after it
FAULT_TIMEOUT = float(os.environ.get("SOAK_CLIENT_TIMEOUT", 15))
FAULT_HANG_S = 15


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
        kinds, weights = kinds[:3] + ["multi"], weights[:3] + [2]
    conn = None
    watchdog_cut = False  # the watchdog cut the last request as hung: stop
    while time.monotonic() < deadline and not watchdog_cut:
        kind = rng.choices(kinds, weights)[0]
        path, body = body_for(kind, rng)
        if conn is None:
            conn = http.client.HTTPConnection(
                host, port, timeout=FAULT_TIMEOUT if mode == "transient" else 120)
        st.add("requests")
        answered = False  # a status line came: a drop after it is never excused
        t_sent = time.time()
        st.track(conn)
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
                n = body.get("n", 1)
                if o.get("choices") and "usage" in o:
                    cut = len(o["choices"]) != n and "%d of %d choices" % (len(o["choices"]), n)
                    for c in o["choices"]:  # completion_tokens sums the choices
                        cut = cut or complete(c.get("finish_reason"),
                                              o["usage"].get("completion_tokens") if n == 1
                                              else None, body["max_tokens"])
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
            st.add("timeouts", example="%s %s: no answer in %gs: %r" % (kind, path, FAULT_TIMEOUT, e))
            conn.close()
            conn = None
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            conn = None
            if st.untrack():
                watchdog_cut = True
                continue  # counted by the watchdog
            # only a request sent after the fault may meet a server gone: one
            # in flight at the fault must be answered
            if mode == "fatal" and not answered and not isinstance(e, ValueError) and \
                    st.t_first_fault is not None and t_sent >= st.t_first_fault and \
                    server_gone(pid, 2.0):
                st.add("after_exit")
                break
            st.add("socket_errors", example="%s %s: %r" % (kind, path, e))
        finally:
            watchdog_cut = st.untrack() or watchdog_cut
    if conn is not None:
        conn.close()


def health_poller(host, port, deadline, st, mode, pid, stop):
    """Polls /health every 50 ms on a fresh connection until stop is set (or,
    for a fatal fault, the server has exited); for a fatal fault also cuts
    the requests that hang after it (Stats.cut_hung)."""
    while time.monotonic() < deadline and not stop.is_set():
        if mode == "fatal" and server_gone(pid, 0):
            return
        if mode == "fatal":
            st.cut_hung(FAULT_HANG_S)
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


class FakeServer(http.server.BaseHTTPRequestHandler):
    """Answers every POST the way self.server.how says (self_test)."""

    def log_message(self, *args):
        pass

    def send(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # /health of a failed server
        self.send(503, "application/json", b'{"status": "failed"}')

    def do_POST(self):
        how = self.server.how
        self.server.count += 1
        if how == "hang_after_fault":  # a 500 error, then no answer
            how = "html_500" if self.server.count == 1 else "hang"
            if how == "html_500":
                return self.send(500, "application/json", json.dumps(
                    {"error": {"message": "failed", "type": "server_error"}}).encode())
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n, max_tokens = req.get("n", 1), req["max_tokens"]
        err = json.dumps({"error": {"message": "failed", "type": "server_error"}}).encode()
        if how == "hang":
            time.sleep(3)
            return
        if how == "html_500":
            return self.send(500, "text/html", b"<html>internal error</html>")
        if not req.get("stream"):
            if how == "cut":  # one choice, "length" before max_tokens
                return self.send(200, "application/json", json.dumps({
                    "choices": [{"text": "x", "finish_reason": "length"}],
                    "usage": {"completion_tokens": max_tokens - 1}}).encode())
            if how == "good":
                return self.send(200, "application/json", json.dumps({
                    "choices": [{"text": "x", "finish_reason": "stop"}] * n,
                    "usage": {"completion_tokens": n}}).encode())
            return self.send(500, "application/json", err)
        chunk = {"choices": [{"text": "x", "finish_reason": None}]}
        end = {"choices": [{"text": "", "finish_reason": "error" if how == "cut" else "stop"}]}
        sse = [chunk, end] + ([json.loads(err)] if how == "error_no_done" else [])
        body = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in sse)
        self.send(200, "text/event-stream", body + (b"" if how == "error_no_done" else
                                                    b"data: [DONE]\n\n"))


def self_test():
    """Each misbehaviour must be counted where expected; the good fake never."""
    global FAULT_TIMEOUT, FAULT_HANG_S
    FAULT_TIMEOUT = FAULT_HANG_S = 1
    expect = {"good": None, "html_500": "bad_body", "cut": "bad_body",
              "error_no_done": "bad_body", "hang": "timeouts", "hang_after_fault": "timeouts"}
    failed = 0
    for how, key in expect.items():
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
        srv.how, srv.count = how, 0
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        st = Stats()
        # hang_after_fault: a fatal fault's watchdog (in the /health poller)
        mode = "fatal" if how == "hang_after_fault" else "transient"
        stop = threading.Event()
        hp = threading.Thread(target=health_poller, args=("127.0.0.1", srv.server_address[1],
                              time.monotonic() + 5, st, mode, os.getpid(), stop))
        if mode == "fatal":
            hp.start()
        worker("127.0.0.1", srv.server_address[1], time.monotonic() + 1.5, 7, st, mode, os.getpid())
        stop.set()
        if mode == "fatal":
            hp.join()
        srv.shutdown()
        srv.server_close()
        c = st.c
        bad = c["socket_errors"] + c["bad_status"] + c["bad_body"] + c["timeouts"]
        ok = (bad == 0 and c["ok"] > 0) if key is None else c[key] > 0
        print("self-test %-14s %s: %s" % (how, "ok" if ok else "FAILED",
                                        {k: v for k, v in c.items() if v}))
        failed += not ok
    return 1 if failed else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
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
