#!/usr/bin/env python3
"""replicas.py - two `nanoinfer serve` replicas behind nginx (docs/scaling.md).

Starts two replicas of the tiny model (test/models/tiny-llama3, the same
--served-model-name) on 127.0.0.1 with --port 0 (the port from the "listening
on" log line) and nginx as the current user in a temporary prefix, with the
nginx.conf of docs/scaling.md: only the upstream `server` addresses, `listen`,
`user`/`pid`, the log and temporary paths and worker_processes are replaced,
and a log format naming each request (X-Client-Id) is added. Then, in order:
  mixed     40 requests from 8 sessions (X-Session-Id = the body's `user`; each
            session sequential, the sessions concurrent; completions and chat,
            streamed and not) + 8 without a session: all complete, both
            replicas serve some, every request of one session is in the access
            log of one replica (found by the X-Request-Id of its response)
  turns     a 3-turn chat, each turn resending the earlier ones:
            cached_tokens 0, then > 0 and growing, all on one replica; turn 3
            sent straight to the other replica has nothing cached
  kill      SIGKILL replica A with requests in flight on it: every client
            finishes within seconds (none reaches its timeout); failures are
            only streams that were on A (closed without [DONE]); non-streamed
            requests on A are regenerated on B (proxy_next_upstream ...
            non_idempotent); every request after the kill succeeds
  replace   replica C replaces A in the configuration; `nginx -s reload`
  drain     SIGTERM B with requests in flight on it: they finish with all their
            tokens, the requests sent meanwhile all succeed (on C), B exits 0
Without nginx (or when nginx cannot run here) it skips saying why, except with
CI=true, where it fails. NGINX=/path/to/nginx picks the binary (default: PATH,
then /usr/sbin/nginx). Prints one line per failure and a summary; exit 1 on
any failure. Run from the repository root: python3 test/py/replicas.py
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BUILD = os.environ.get("BUILD", "build")
BIN = os.path.join(BUILD, "nanoinfer")
TINY = "test/models/tiny-llama3"
DOC = "docs/scaling.md"
NAME = "tiny"
CLIENT_TIMEOUT = 20  # seconds per socket operation; no phase may come near it
T0 = time.time()

passed = failed = 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}" + (f" ({detail})" if detail else ""), flush=True)
    return ok


def note(msg):
    print(f"  {msg}", flush=True)


def section(name):
    print(f"-- {name} ({time.time() - T0:.1f}s)", flush=True)


def unavailable(why):
    if os.environ.get("CI") == "true":
        print(f"FAIL: {why} (CI=true: the replicas test must run; scripts/install-deps.sh installs nginx)")
        sys.exit(1)
    print(f"SKIP: {why}; the replicas test did not run (scripts/install-deps.sh installs nginx)")
    sys.exit(0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


TMP = tempfile.mkdtemp(prefix="ni_e2e_replicas.")
CHILDREN = []


class Server:
    """A `nanoinfer serve` child on 127.0.0.1 and a free port (--port 0)."""

    def __init__(self, name):
        self.name = name
        self.logpath = os.path.join(TMP, f"{name}.log")
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--model", TINY, "--served-model-name", NAME, "--port", "0",
                 "--threads", "1", "--kv-blocks", "1024", "--max-num-seqs", "2"],
                stdout=log, stderr=subprocess.STDOUT,
                # a slow device (1 ms per engine step): the tiny model would otherwise
                # finish a 400-token request in a few ms, so "in flight at the SIGKILL /
                # SIGTERM" depended on the poll catching a window of that size
                env=dict(os.environ, NI_DEBUG_STEP_US="1000"))
        CHILDREN.append(self.proc)
        deadline = time.time() + 30
        self.port = None
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {name} exited: {self.log()}")
            m = re.search(r"listening on http://[^\s]*:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.02)
        if self.port is None:
            raise RuntimeError(f"replica {name} did not start: {self.log()}")
        self.addr = f"127.0.0.1:{self.port}"
        while time.time() < deadline:
            if get(self.port, "/health")[0] == 200:
                return
            time.sleep(0.02)
        raise RuntimeError(f"replica {name} never became healthy: {self.log()}")

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def ids(self):
        """the request ids of this replica's access log lines"""
        return set(re.findall(r" access .* id=(\S+)", self.log()))

    def metric(self, name):
        st, body = get(self.port, "/metrics")
        m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M) if st == 200 else None
        return float(m.group(1)) if m else None


def get(port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        c.close()
        return r.status, body
    except OSError as e:
        return 0, str(e)


# ---------------------------------------------------------------- nginx

def doc_conf():
    text = open(DOC).read()
    blocks = [b for b in re.findall(r"```nginx\n(.*?)```", text, re.S) if "upstream nanoinfer_sessions" in b]
    if len(blocks) != 1:
        raise RuntimeError(f"{DOC}: expected one ```nginx block with the upstreams, found {len(blocks)}")
    return blocks[0]


def sub1(pattern, repl, s, flags=re.M):
    out, n = re.subn(pattern, repl, s, flags=flags)
    if n == 0:
        raise RuntimeError(f"{DOC}'s nginx.conf changed: no match for {pattern!r}")
    return out


def test_conf(replicas, listen_port):
    """docs/scaling.md's nginx.conf, pointed at `replicas` and moved into TMP"""
    conf = doc_conf()
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach TMP (mode 0700)
    conf = sub1(r"^user .*;$", lambda m: user, conf)
    conf = sub1(r"^pid .*;\n", "", conf)  # given with -g, as a service manager would
    conf = sub1(r"^worker_processes .*;$", "worker_processes 1;", conf)
    conf = sub1(r"^error_log .*;$", f"error_log {TMP}/nginx-error.log info;", conf)
    conf = sub1(r"^(\s*)access_log /\S+ replicas;$", rf"\1access_log {TMP}/nginx-access.log test;", conf)
    conf = sub1(r"^http \{$", "http {\n" + "\n".join([
        "    log_format test 'client=$http_x_client_id session=\"$http_x_session_id\" "
        "$request_method $uri $status upstream=\"$upstream_addr\" "
        "upstream_status=\"$upstream_status\" rt=$request_time id=$upstream_http_x_request_id';",
        *(f"    {d}_temp_path {TMP}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))]),
        conf)
    conf = sub1(r"^(\s*)listen 80;$", rf"\g<1>listen 127.0.0.1:{listen_port};", conf)

    def servers(m):
        lines = re.findall(r"^(\s*)server \S+:\d+(.*);$", m.group(2), re.M)
        if not lines:
            raise RuntimeError(f"{DOC}'s nginx.conf: upstream without server lines")
        indent, params = lines[0]
        new = "".join(f"{indent}server {r.addr}{params};\n" for r in replicas)
        first = [True]

        def one(_):  # the first server line becomes the replicas' lines, the others go
            out, first[0] = (new if first[0] else ""), False
            return out
        return m.group(1) + re.sub(r"^[ \t]*server \S+:\d+.*;\n", one, m.group(2), flags=re.M)
    conf = sub1(r"(upstream \w+ \{\n)(.*?\n)(?=\s*\})", servers, conf, flags=re.S)
    return conf


class Nginx:
    def __init__(self, nginx_bin):
        self.bin = nginx_bin
        self.conf = os.path.join(TMP, "nginx.conf")
        self.args = [self.bin, "-p", TMP + "/", "-c", self.conf, "-e", os.path.join(TMP, "nginx-startup.log"),
                     "-g", f"daemon off; pid {TMP}/nginx.pid;"]
        self.proc = None

    def write(self, text):
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self, text, port):
        self.write(text)
        self.port = port
        self.errlog = open(os.path.join(TMP, "nginx.stderr"), "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.errlog, stderr=subprocess.STDOUT)
        CHILDREN.append(self.proc)
        return wait_port(port, self.proc)

    def workers(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def reload(self, text):
        """-s reload, then wait until the old workers stop accepting: `-s reload` returns once
        the master has the signal, and the master lets old and new workers overlap ~100 ms"""
        old = self.workers()
        self.write(text)
        r = subprocess.run(self.args + ["-s", "reload"], capture_output=True, text=True, timeout=10)
        deadline = time.time() + 10
        while r.returncode == 0 and time.time() < deadline:
            log = self.log()
            if all(f"{p}#{p}: gracefully shutting down" in log or not os.path.exists(f"/proc/{p}")
                   for p in old):
                return True, ""
            time.sleep(0.02)
        return False, r.stdout + r.stderr + f" (old workers {old} still accepting)"

    def log(self, name="nginx-error.log"):
        p = os.path.join(TMP, name)
        return open(p, errors="replace").read() if os.path.exists(p) else ""

    def access(self):
        """client id -> the access log line's fields"""
        out = {}
        for line in self.log("nginx-access.log").splitlines():
            m = re.match(r'client=(\S*) session="([^"]*)" (\S+) (\S+) (\d+) upstream="([^"]*)" '
                         r'upstream_status="([^"]*)"', line)
            if m:
                out[m.group(1)] = {"session": m.group(2), "status": int(m.group(5)),
                                   "upstream": [a.strip() for a in m.group(6).split(",") if a.strip()],
                                   "upstream_status": m.group(7)}
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def nginx_runs(nginx_bin):
    """Can nginx run here at all (as this user, from a private prefix)? -> None or why not"""
    n = Nginx(nginx_bin)
    port = free_port()
    conf = (f"worker_processes 1;\nerror_log {TMP}/nginx-error.log info;\n"
            f"{'user root;' if os.geteuid() == 0 else ''}\nevents {{ worker_connections 64; }}\n"
            "http {\n" + "".join(f"    {d}_temp_path {TMP}/{d};\n" for d in
                                 ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")) +
            f"    access_log off;\n    server {{ listen 127.0.0.1:{port}; return 200 \"ok\\n\"; }}\n}}\n")
    try:
        up = n.start(conf, port)
        st = get(port, "/")[0] if up else 0
    finally:
        n.stop()
    if st == 200:
        return None
    rc = n.proc.poll() if n.proc else None
    return f"nginx ({nginx_bin}) cannot serve from a private prefix here" + \
        (f" (exit status {rc})" if rc is not None else "") + ": " + \
        (n.log() + open(os.path.join(TMP, "nginx.stderr"), errors="replace").read()).strip()[-400:]


# ---------------------------------------------------------------- clients

class Call(threading.Thread):
    """One request through nginx (or straight to a replica), in its own thread."""

    def __init__(self, cid, path, body, port, session=None, start=True):
        super().__init__(daemon=True)
        self.cid, self.path, self.body, self.port, self.session = cid, path, body, port, session
        self.stream = bool(body.get("stream"))
        self.status = 0
        self.error = None
        self.done = False  # streams: data: [DONE] seen
        self.usage = None
        self.text = ""
        self.request_id = None
        self.t_end = None
        if start:
            self.start()

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            headers = {"Content-Type": "application/json", "X-Client-Id": self.cid}
            if self.session:
                headers["X-Session-Id"] = self.session
            c.request("POST", self.path, body=json.dumps(self.body), headers=headers)
            r = c.getresponse()
            self.status = r.status
            self.request_id = r.getheader("X-Request-Id")
            if not self.stream or r.status != 200:
                raw = r.read()
                o = json.loads(raw) if raw else {}
                self.usage = o.get("usage")
                ch = (o.get("choices") or [{}])[0]
                self.text = ch.get("text") or (ch.get("message") or {}).get("content") or ""
            else:
                while True:
                    line = r.readline()
                    if not line:
                        break
                    line = line.decode().rstrip("\n")
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: "):
                        o = json.loads(line[6:])
                        if o.get("usage"):
                            self.usage = o["usage"]
                        for ch in o.get("choices") or []:
                            self.text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
            c.close()
        except Exception as e:  # a broken stream, a reset, a timeout: recorded, judged by the caller
            self.error = f"{type(e).__name__}: {e}"
        self.t_end = time.time()

    def complete(self, tokens=None):
        """200, a whole response (streams: [DONE]) and, given, that many completion tokens"""
        if self.status != 200 or self.error or (self.stream and not self.done) or not self.usage:
            return False
        return tokens is None or self.usage.get("completion_tokens") == tokens

    def describe(self):
        return (f"{self.cid}: status {self.status} stream={self.stream} done={self.done} "
                f"usage={self.usage} error={self.error}")


def gen_body(i, prompt, max_tokens, stream, user=None):
    """completions for even i, chat for odd i; ignore_eos so the token count is exact"""
    if i % 2 == 0:
        path, body = "/v1/completions", {"prompt": prompt}
    else:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}
    body.update({"model": NAME, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream})
    if stream:
        body["stream_options"] = {"include_usage": True}
    if user:
        body["user"] = user
    return path, body


def join_all(calls, secs):
    deadline = time.time() + secs
    for c in calls:
        c.join(max(0.0, deadline - time.time()))
    return [c for c in calls if c.is_alive()]


def owner(request_id, replicas):
    """the replicas whose access log has this request id (a replica writes the line just after
    the response, so wait a moment for it)"""
    deadline = time.time() + 2
    while True:
        found = [r.name for r in replicas if request_id and request_id in r.ids()]
        if found or not request_id or time.time() > deadline:
            return found
        time.sleep(0.01)


# ---------------------------------------------------------------- the test

def main():
    if "NGINX" in os.environ:  # NGINX=/path/to/nginx picks another binary
        nginx_bin = os.environ["NGINX"] if os.access(os.environ["NGINX"], os.X_OK) else None
    else:
        nginx_bin = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)
    if not nginx_bin:
        unavailable(f"nginx is not installed ({os.environ.get('NGINX') or 'Debian: nginx'})")
    if not os.access(BIN, os.X_OK):
        print(f"FAIL: {BIN} is not built")
        sys.exit(1)
    why = nginx_runs(nginx_bin)
    if why:
        unavailable(why)

    section("start: 2 replicas + nginx")
    a, b = Server("A"), Server("B")
    reps = [a, b]
    ngx = Nginx(nginx_bin)
    port = free_port()
    if not ngx.start(test_conf([a, b], port), port):
        check("nginx starts with the docs/scaling.md configuration", False,
              ngx.log()[-2000:] + open(os.path.join(TMP, "nginx.stderr"), errors="replace").read()[-1000:])
        return
    check("GET /health through nginx: 200", get(port, "/health")[0] == 200)
    st, body = get(port, "/v1/models")
    check("GET /v1/models through nginx: the served name", st == 200 and f'"{NAME}"' in body, body[:200])

    # ------------------------------------------------------------ mixed load
    section("mixed: 40 requests from 8 sessions + 8 without")
    sessions = [f"sess-{k}" for k in range(1, 9)]
    results = {s: [] for s in sessions}

    def session_worker(s):
        for i in range(5):
            k = i + int(s[-1])  # every session mixes completions and chat, streamed and not
            path, body = gen_body(k, f"{s} asks question {i}: what is {i} times {s[-1]}?",
                                  24, stream=(k // 2) % 2 == 0, user=s)
            c = Call(f"mixed-{s}-{i}", path, body, port, session=s, start=False)
            c.run()  # sequential within the session: turn after turn
            results[s].append(c)
    workers = [threading.Thread(target=session_worker, args=(s,), daemon=True) for s in sessions]
    for w in workers:
        w.start()
    anon = [Call(f"mixed-anon-{i}", *gen_body(i, f"an anonymous request number {i}", 24, stream=i % 3 == 0), port)
            for i in range(8)]
    hung = join_all(workers + anon, 60)
    check("mixed: every client finished", not hung, f"{len(hung)} still running")
    calls = [c for s in sessions for c in results[s]] + anon
    bad = [c for c in calls if not c.complete(24)]
    check(f"mixed: all {len(calls)} requests complete with 24 tokens", len(calls) == 48 and not bad,
          "; ".join(c.describe() for c in bad[:4]))
    owners = {c.cid: owner(c.request_id, reps) for c in calls}
    check("mixed: each request is in exactly one replica's access log (by X-Request-Id)",
          all(len(o) == 1 for o in owners.values()),
          "; ".join(f"{k}: {v}" for k, v in owners.items() if len(v) != 1)[:300])
    served = {r.name: sum(1 for o in owners.values() if o == [r.name]) for r in reps}
    check(f"mixed: both replicas served requests ({served})", all(served.values()))
    session_home = {}
    for s in sessions:
        homes = {owners[c.cid][0] for c in results[s] if len(owners[c.cid]) == 1}
        check(f"mixed: all requests of {s} on one replica", len(homes) == 1, str(homes))
        session_home[s] = homes.pop() if len(homes) == 1 else None
    log = ngx.access()
    check("mixed: nginx logged the same replica for each request",
          all(log.get(c.cid, {}).get("upstream") == [{"A": a.addr, "B": b.addr}[owners[c.cid][0]]]
              for c in calls if len(owners[c.cid]) == 1))
    note(f"sessions per replica: {{A: {list(session_home.values()).count('A')}, "
         f"B: {list(session_home.values()).count('B')}}} (consistent hash of the session ids)")

    # ------------------------------------------------------------ multi-turn
    section("turns: a 3-turn conversation")
    conv = "conv-calypso"
    messages = [{"role": "system", "content": "You are the ship computer of the research vessel Calypso."},
                {"role": "user", "content": "Plot a course to the harbour of Brest, avoiding the shipping lanes."}]
    follow = ["And how long will it take at twelve knots?", "Wake me when we are ten miles out."]
    cached, homes = [], set()
    for turn in range(3):
        body = {"model": NAME, "messages": messages, "max_tokens": 12, "temperature": 0, "user": conv,
                "stream": turn == 1, "stream_options": {"include_usage": True}}
        if turn != 1:
            del body["stream_options"]
        c = Call(f"turn-{turn + 1}", "/v1/chat/completions", body, port, session=conv, start=False)
        c.run()
        ok = check(f"turn {turn + 1}: complete", c.complete(), c.describe())
        cached.append(((c.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens"))
        homes.update(owner(c.request_id, reps))
        if not ok:
            break
        messages = messages + [{"role": "assistant", "content": c.text}]
        if turn < 2:
            messages.append({"role": "user", "content": follow[turn]})
    note(f"cached_tokens per turn: {cached} on replica {sorted(homes)}")
    if len(cached) == 3:
        check("turn 1: nothing cached", cached[0] == 0, str(cached))
        check("turn 2: cached_tokens > 0 (the same replica kept turn 1)", (cached[1] or 0) > 0, str(cached))
        check("turn 3: cached_tokens > 0 and not fewer than turn 2",
              (cached[2] or 0) > 0 and (cached[2] or 0) >= (cached[1] or 0), str(cached))
        check("turns: all on one replica", len(homes) == 1, str(homes))
        if len(homes) == 1:
            other = b if homes == {"A"} else a
            body = {"model": NAME, "messages": messages[:-1], "max_tokens": 1, "temperature": 0}
            c = Call("turn-3-other", "/v1/chat/completions", body, other.port, start=False)
            c.run()
            oc = ((c.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
            check(f"turn 3 on the other replica: nothing cached ({oc})", c.complete() and oc == 0, c.describe())

    # ------------------------------------------------------------ kill
    section("kill: SIGKILL replica A under load")
    kill_calls = []
    for i in range(16):
        s = sessions[i] if i < 8 else None
        path, body = gen_body(i, f"long story number {i}", 400, stream=(i // 2) % 2 == 0, user=s)
        kill_calls.append(Call(f"kill-{i}", path, body, port, session=s))
    in_flight = 0
    deadline = time.time() + 5
    while time.time() < deadline:
        in_flight = a.metric("nanoinfer_requests_in_flight") or 0
        if in_flight >= 2:
            break
        time.sleep(0.01)
    a.proc.kill()
    t_kill = time.time()
    a.proc.wait()
    check(f"kill: requests were in flight on A when it died ({in_flight:g})", in_flight >= 1)
    hung = join_all(kill_calls, CLIENT_TIMEOUT + 5)
    check("kill: every client finished", not hung, "; ".join(c.cid for c in hung))
    slow = [c for c in kill_calls if c.t_end and c.t_end - t_kill > 10]
    check("kill: every client finished within 10 s of the kill", not slow,
          "; ".join(f"{c.cid} {c.t_end - t_kill:.1f}s" for c in slow))
    log = ngx.access()
    lost = [c for c in kill_calls if not c.complete(400)]
    on_a = [c for c in kill_calls if a.addr in log.get(c.cid, {}).get("upstream", [])]
    replayed = [c for c in on_a if c.complete(400) and log[c.cid]["upstream"] == [a.addr, b.addr]]
    check("kill: nginx logged every request", all(c.cid in log for c in kill_calls),
          ", ".join(c.cid for c in kill_calls if c.cid not in log))
    check("kill: every failed request had been sent to A", all(c in on_a for c in lost),
          "; ".join(c.describe() + f" upstream={log.get(c.cid, {}).get('upstream')}" for c in lost if c not in on_a))
    check("kill: the failures are streams cut short (no [DONE]), no non-streamed request lost",
          all(c.stream and not c.done for c in lost), "; ".join(c.describe() for c in lost if not c.stream or c.done))
    check("kill: requests that never touched A all complete",
          all(c.complete(400) for c in kill_calls if c not in on_a))
    note(f"{len(on_a)} of 16 requests went to A: {len(lost)} streams cut, "
         f"{len(replayed)} non-streamed ones regenerated on B, {len(on_a) - len(lost) - len(replayed)} "
         "finished on A before the kill")
    after = []
    for i in range(16):
        s = sessions[i] if i < 8 else None
        path, body = gen_body(i, f"after the kill {i}", 16, stream=(i // 2) % 2 == 1, user=s)
        after.append(Call(f"after-{i}", path, body, port, session=s))
    hung = join_all(after, CLIENT_TIMEOUT + 5)
    bad = [c for c in after if not c.complete(16)]
    check("after the kill: all 16 requests complete (sessions of A moved to B)", not hung and not bad,
          "; ".join(c.describe() for c in bad[:4]))

    # ------------------------------------------------------------ replace
    section("replace: replica C instead of A, nginx -s reload")
    c_rep = Server("C")
    reps = [a, b, c_rep]
    ok, out = ngx.reload(test_conf([c_rep, b], port))
    check("nginx -s reload", ok, out)
    on_c = False
    deadline = time.time() + 5
    k = 0
    while ok and not on_c and time.time() < deadline:
        probe = Call(f"probe-{k}", *gen_body(0, "probe", 1, stream=False), port, start=False)
        probe.run()
        k += 1
        on_c = probe.complete() and owner(probe.request_id, [b, c_rep]) == ["C"]
    check("after the reload nginx sends requests to C", on_c)
    # C took A's points on the hash ring, and some of B's arcs with them: where is each session now?
    probes = [Call(f"where-{s}", *gen_body(0, "where am I", 1, stream=False), port, session=s, start=False)
              for s in sessions]
    for p in probes:
        p.run()
    now_home = {s: (owner(p.request_id, [b, c_rep]) or [None])[0] for s, p in zip(sessions, probes)}
    check("after the reload every session has a replica", all(now_home.values()), str(now_home))
    kept = [s for s in sessions if session_home.get(s) == "B"]
    note(f"sessions of B that stayed on B: {sum(now_home[s] == 'B' for s in kept)} of {len(kept)}; "
         f"sessions of A now on C: {sum(now_home[s] == 'C' for s in sessions if session_home.get(s) == 'A')}")

    # ------------------------------------------------------------ drain
    section("drain: SIGTERM replica B with requests in flight")
    b_sessions = [s for s in sessions if now_home.get(s) == "B"]
    held = []
    for i in range(4):
        path, body = gen_body(i, f"drain me {i}", 400, stream=(i // 2) % 2 == 0)
        if b_sessions:  # through nginx, by a session that lives on B
            held.append(Call(f"held-{i}", path, body, port, session=b_sessions[i % len(b_sessions)]))
        else:  # (no session hashed to B this run) straight to B
            held.append(Call(f"held-{i}", path, body, b.port))
    deadline = time.time() + 5
    in_flight = 0
    while time.time() < deadline and in_flight < len(held):
        in_flight = b.metric("nanoinfer_requests_in_flight") or 0
        time.sleep(0.01)
    b.proc.send_signal(signal.SIGTERM)
    check(f"drain: all {len(held)} requests in flight on B at SIGTERM ({in_flight:g})", in_flight == len(held))
    deadline = time.time() + 5  # the signal is handled by B's event loop: from then on it refuses
    while time.time() < deadline and "no longer accepting" not in b.log():
        time.sleep(0.01)
    during = []
    for i in range(12):
        s = sessions[i] if i < 8 else None
        path, body = gen_body(i, f"during the drain {i}", 16, stream=(i // 2) % 2 == 0, user=s)
        during.append(Call(f"during-{i}", path, body, port, session=s))
    check("drain: B logged that it stopped accepting", "no longer accepting" in b.log())
    try:
        rc = b.proc.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    check(f"drain: B exits 0 (exit status {rc})", rc == 0)
    hung = join_all(held + during, CLIENT_TIMEOUT + 5)
    check("drain: every client finished", not hung, "; ".join(c.cid for c in hung))
    bad = [c for c in held if not c.complete(400)]
    check("drain: the requests in flight on B finish with all 400 tokens", not bad,
          "; ".join(c.describe() for c in bad))
    check("drain: they were served by B", all(owner(c.request_id, reps) == ["B"] for c in held),
          "; ".join(f"{c.cid}: {owner(c.request_id, reps)}" for c in held))
    bad = [c for c in during if not c.complete(16)]
    check("drain: all 12 requests sent during the drain complete", not bad,
          "; ".join(c.describe() for c in bad[:4]))
    check("drain: ... all on C", all(owner(c.request_id, reps) == ["C"] for c in during if c.complete(16)),
          "; ".join(f"{c.cid}: {owner(c.request_id, reps)}" for c in during))
    log = ngx.access()
    tried_b = [log[c.cid]["upstream_status"] for c in during if c.cid in log and b.addr in log[c.cid]["upstream"]]
    note(f"{len(tried_b)} of 12 went to B first and were retried on C: "
         f"{sum('503' in u for u in tried_b)} answered 503 (a kept-alive connection), "
         f"{sum('503' not in u for u in tried_b)} connection refused or closed")

    c_rep.proc.send_signal(signal.SIGTERM)
    try:
        rc = c_rep.proc.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
    check(f"C exits 0 on SIGTERM ({rc})", rc == 0)
    ngx.stop()
    check("nginx: no [emerg] or [crit] in its error log", not re.search(r"\[(emerg|crit)\]", ngx.log()),
          "\n".join(line for line in ngx.log().splitlines() if "[emerg]" in line or "[crit]" in line)[:400])


def cleanup():
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()
    if failed and os.environ.get("KEEP_TMP"):
        print(f"logs kept in {TMP}")
    else:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    def overtime(*_):
        raise TimeoutError("the test ran over 150 s")
    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(150)
    try:
        main()
    except Exception as e:  # a crash of the test itself is a failure, with its reason
        import traceback
        traceback.print_exc()
        check(f"the test ran to its end ({type(e).__name__}: {e})", False)
    finally:
        signal.alarm(0)
        cleanup()
    print(f"replicas: {passed} passed, {failed} failed ({time.time() - T0:.1f}s)")
    sys.exit(1 if failed else 0)
