#!/usr/bin/env python3
"""http_bench.py - HTTP overhead of `nanoinfer serve` against `nanoinfer bench`.

The server issue: "the same workload through 64 concurrent SSE streams vs
`nanoinfer bench` offline must lose <= 5 % throughput; report TTFT and
inter-token latency p50/p99 under that load."

What it does (Python 3 standard library only, no pip):
  1. builds the workload of server/cli/bench.c bit for bit: splitmix64 seeded with
     --seed; per request, in this order: prompt length uniform in --input-len,
     output length uniform in --output-len (clipped to the context as bench
     does), then the prompt's token ids uniform in [0, vocab). bench --json
     reports total input/output tokens; they must equal ours (checked).
  2. offline: `nanoinfer bench --json` on that workload, once with bench's
     default --max-num-seqs (all N requests run together) and once with
     --max-num-seqs = --concurrency (at most C sequences, like C streams).
  3. HTTP: a fresh `nanoinfer serve` (same engine flags), waits for /health
     200, then C client workers (asyncio, one keep-alive connection each) each
     take the next request when their previous stream ends: POST
     /v1/completions {prompt: token ids, max_tokens: output length,
     ignore_eos, temperature 0, stream, include_usage}. Every read from the
     socket is time-stamped; SSE events are decoded after the run (the
     client does no JSON work while streaming). TTFT = first text chunk -
     request sent; ITL = gaps between successive text chunks of a request.
     Every request must end with finish_reason "length" and
     usage.completion_tokens == its output length.
  4. prints a summary and writes one JSON object (--out): offline and HTTP
     output tokens/s, loss % against both offline runs, TTFT / ITL / latency
     percentiles, CPU seconds of bench, the server (per thread) and this
     client, the server's engine step count, the machine.
Each repetition (--repeat) runs the offline runs and the HTTP run back to back
(odd repetitions HTTP first), the HTTP run on a fresh server (a reused server
would serve the repeated prompts from its prefix cache); figures are medians
over repetitions, the headline ratio the median of the per-repetition ratios.
On a shared machine, the CPU time other processes used during each run is
recorded ("other load", in cores); --max-other-load discards and redoes
repetitions that saw more.

Example (see scripts/http_bench.sh for the defaults used in docs/perf.md):
  python3 scripts/http_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --num-requests 128 --input-len 32:128 --output-len 32:128 --repeat 2
"""
import argparse
import asyncio
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

MASK = (1 << 64) - 1


# ---------------------------------------------------------------- workload

class SplitMix64:
    """server/cli/bench.c rng_next, bit for bit."""

    def __init__(self, seed):
        self.s = seed & MASK

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def rand_in(self, lo, hi):
        return lo + self.next() % (hi - lo + 1)


def make_workload(n, in_rng, out_rng, seed, vocab, max_ctx):
    """[(prompt token ids, output length)], exactly as bench.c throughput()."""
    r = SplitMix64(seed)
    reqs = []
    for _ in range(n):
        n_in = r.rand_in(*in_rng)
        n_out = r.rand_in(*out_rng)
        if n_in + n_out > max_ctx:
            n_out = max(1, max_ctx - n_in)
        prompt = [r.rand_in(0, vocab - 1) for _ in range(n_in)]
        reqs.append((prompt, n_out))
    return reqs


def parse_range(s):
    a, _, b = s.partition(":")
    lo, hi = int(a), int(b or a)
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"bad range {s!r} (want A or A:B, 1 <= A <= B)")
    return lo, hi


# ---------------------------------------------------------------- helpers

def pct(v, p):
    """bench.c pct(): nearest rank on the sorted values."""
    if not v:
        return None
    v = sorted(v)
    i = int(p * (len(v) - 1) + 0.5)
    return v[min(max(i, 0), len(v) - 1)]


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def model_info(binary, model):
    out = subprocess.run([binary, "info", "--model", model], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: {binary} info --model {model} failed:\n{out.stderr}")
    info = dict(re.findall(r"^([a-z ]+): (.*)$", out.stdout, re.M))
    return int(info["vocab"]), int(info["context"]), info.get("name", os.path.basename(model))


def machine_info(device):
    m = {"host": platform.node(), "os": platform.platform(), "cpus": os.cpu_count(),
         "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.*)$", f.read(), re.M)
        if names:
            m["cpu"] = names[0]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            m["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if device and device != "cpu":
        try:
            g = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            if g.returncode == 0:
                m["gpu"] = g.stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            pass
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never write the index
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             env=env, timeout=30)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "engine", "server", "cuda",
                                "tokenizer"], capture_output=True, env=env, timeout=60)
        if rev.returncode == 0:
            m["git"] = rev.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return m


def binary_info(binary):
    """Identifies the binary measured (the tree's git state may have moved on since it was built)."""
    import hashlib
    h = hashlib.sha256()
    with open(binary, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    v = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return {"path": binary, "version": v.stdout.strip(), "sha256": h.hexdigest()[:16],
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(binary)))}


def engine_flags(a, serve):
    """Engine settings shared by bench and serve (bench's defaults unless given)."""
    f = []
    for name in ("max_batched_tokens", "prefill_chunk", "kv_blocks", "threads", "dtype",
                 "gpu_memory_utilization"):
        v = getattr(a, name)
        if v is not None:
            f += ["--" + name.replace("_", "-"), str(v)]
    if a.device:
        f += ["--backend" if serve else "--device", a.device]
    if a.no_prefix_cache:
        f.append("--no-prefix-cache")
    return f + a.engine_arg + (a.serve_arg if serve else a.bench_arg)


def system_busy_s():
    """CPU seconds all processes of the machine have used (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def proc_threads(pid):
    """{tid: (name, cpu seconds)} of a live process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    res = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return res
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        res[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return res


# ---------------------------------------------------------------- offline

def run_offline(a, max_num_seqs):
    cmd = [a.bin, "bench", "--model", a.model, "--num-requests", str(a.num_requests),
           "--input-len", "%d:%d" % a.input_len, "--output-len", "%d:%d" % a.output_len,
           "--seed", str(a.seed), "--json"] + engine_flags(a, serve=False)
    if max_num_seqs:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0 = system_busy_s()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    b1 = system_busy_s()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    res = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    res["cmd"] = " ".join(cmd)
    res["process_wall_s"] = round(wall, 3)  # model load included
    res["process_cpu_s"] = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 3)
    # other processes' load on the machine meanwhile, in cores (noise indicator)
    if b0 is not None and b1 is not None:
        res["foreign_load_cores"] = round(max(0.0, b1 - b0 - res["process_cpu_s"]) / wall, 2)
    if p.stderr.strip():
        res["stderr"] = p.stderr.strip()[-2000:]
    return res


# ---------------------------------------------------------------- server

class Server:
    def __init__(self, a, log_path):
        self.cmd = [a.bin, "serve", "--model", a.model, "--host", a.host, "--port", str(a.port)]
        self.cmd += engine_flags(a, serve=True)
        if a.max_num_seqs:
            self.cmd += ["--max-num-seqs", str(a.max_num_seqs)]
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.p = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.host = a.host
        self.port = None

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout):
        t_end = time.time() + timeout
        while self.port is None:
            if self.p.poll() is not None or time.time() > t_end:
                self.stop()
                sys.exit(f"error: the server did not start:\n{self.log_tail()}")
            try:
                with open(self.log_path, errors="replace") as f:
                    m = re.search(r"listening on http://\S*:(\d+)", f.read())
                if m:
                    self.port = int(m.group(1))
            except OSError:
                pass
            time.sleep(0.05)
        while True:
            if self.p.poll() is not None or time.time() > t_end:
                self.stop()
                sys.exit(f"error: the server never answered /health 200:\n{self.log_tail()}")
            try:
                if http_get(self.host, self.port, "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def http_get(host, port, path, timeout=10):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():
        body = dechunk_all(body)
    return status, body


def dechunk_all(b):
    d = Dechunker()
    out = d.feed(b)
    return bytes(out)


def metrics(host, port):
    """{name: value} of the unlabeled lines of /metrics (plus _sum/_count)."""
    try:
        st, body = http_get(host, port, "/metrics")
    except OSError:
        return {}
    res = {}
    for line in body.decode(errors="replace").splitlines():
        m = re.match(r"^nanoinfer_([a-z_]+) ([-0-9.e+]+)$", line)
        if m:
            res[m.group(1)] = float(m.group(2))
    return res


# ---------------------------------------------------------------- HTTP client

class Dechunker:
    """Incremental HTTP/1.1 chunked transfer decoding."""

    def __init__(self):
        self.buf = bytearray()
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer
        self.rem = 0
        self.done = False

    def feed(self, data):
        self.buf += data
        out = bytearray()
        buf = self.buf
        while not self.done:
            if self.state == 0:
                j = buf.find(b"\r\n")
                if j < 0:
                    break
                size = int(bytes(buf[:j]).split(b";")[0].strip(), 16)
                del buf[:j + 2]
                if size:
                    self.rem, self.state = size, 1
                else:
                    self.state = 3
            elif self.state == 1:
                take = min(self.rem, len(buf))
                out += buf[:take]
                del buf[:take]
                self.rem -= take
                if self.rem:
                    break
                self.state = 2
            elif self.state == 2:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise ValueError("bad chunk framing")
                del buf[:2]
                self.state = 0
            else:
                j = buf.find(b"\r\n")
                if j < 0:
                    break
                del buf[:j + 2]
                if j == 0:
                    self.done = True
        return out


class Req:
    __slots__ = ("i", "n_prompt", "n_out", "wire", "t_send", "t_head", "events", "status",
                 "error", "retries", "body")

    def __init__(self, i, prompt, n_out, host):
        self.i, self.n_prompt, self.n_out = i, len(prompt), n_out
        body = json.dumps({"prompt": prompt, "max_tokens": n_out, "temperature": 0,
                           "ignore_eos": True, "stream": True,
                           "stream_options": {"include_usage": True}},
                          separators=(",", ":")).encode()
        self.wire = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.t_send = self.t_head = None
        self.events = []  # (arrival time, raw SSE event bytes)
        self.status = None
        self.error = None
        self.retries = 0
        self.body = b""


async def read_response(reader, r, clock):
    head = await reader.readuntil(b"\r\n\r\n")
    r.t_head = clock()
    lines = head.decode("latin-1").split("\r\n")
    r.status = int(lines[0].split(" ", 2)[1])
    hdr = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdr[k.strip().lower()] = v.strip().lower()
    chunked = "chunked" in hdr.get("transfer-encoding", "")
    clen = int(hdr["content-length"]) if "content-length" in hdr else None
    keep = hdr.get("connection") != "close"
    dec = Dechunker() if chunked else None
    sse = bytearray()
    got = 0
    while True:
        if clen is not None and got >= clen:
            break
        data = await reader.read(1 << 18)
        t = clock()
        if not data:
            if chunked or clen is not None:
                raise ConnectionError("connection closed mid-response")
            keep = False
            break
        got += len(data)
        sse += dec.feed(data) if dec else data
        # complete SSE events (the server ends each with a blank line)
        start = 0
        while True:
            j = sse.find(b"\n\n", start)
            if j < 0:
                break
            r.events.append((t, bytes(sse[start:j])))
            start = j + 2
        if start:
            del sse[:start]
        if dec and dec.done:
            break
    if r.status != 200:
        r.body = bytes(sse)
    return keep


async def http_run(a, host, port, reqs):
    clock = time.perf_counter
    nxt = [0]

    async def worker():
        reader = writer = None
        try:
            while nxt[0] < len(reqs):
                r = reqs[nxt[0]]
                nxt[0] += 1
                while True:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
                        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                                   socket.TCP_NODELAY, 1)
                    r.t_send = clock()
                    writer.write(r.wire)
                    try:
                        keep = await read_response(reader, r, clock)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                        writer.close()
                        reader = writer = None
                        # a kept-alive connection closed before any reply byte: resend once
                        if r.t_head is None and not r.events and r.retries == 0:
                            r.retries += 1
                            continue
                        r.error = repr(e)
                        break
                if r.error or not keep:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = clock()
    await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(a.concurrency)]), a.timeout)
    t1 = clock()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
    return t1 - t0, cpu


def analyze(reqs):
    """Decodes every request's SSE events; returns (summary, problems)."""
    ttft, itl, lat, tpot = [], [], [], []
    out_tokens = chunks = 0
    problems = []
    t_start = min(r.t_send for r in reqs if r.t_send is not None)
    t_end = t_start
    for r in reqs:
        if r.error or r.status != 200:
            problems.append(f"request {r.i}: status {r.status} {r.error or ''} "
                            f"{r.body[:300].decode(errors='replace')}")
            continue
        times, usage, finish, done_t, err = [], None, None, None, None
        for t, ev in r.events:
            if not ev.startswith(b"data: "):
                continue
            d = ev[6:]
            if d == b"[DONE]":
                done_t = t
                continue
            o = json.loads(d)
            if "error" in o:
                err = o["error"]
            if o.get("usage"):
                usage = o["usage"]
            for c in o.get("choices") or []:
                if c.get("text"):
                    times.append(t)
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
        n = usage.get("completion_tokens") if usage else None
        if err or done_t is None or finish != "length" or n != r.n_out or \
                usage.get("prompt_tokens") != r.n_prompt:
            problems.append(f"request {r.i}: finish {finish}, completion_tokens {n} (want {r.n_out}), "
                            f"prompt_tokens {usage and usage.get('prompt_tokens')} (want {r.n_prompt}), "
                            f"[DONE] {'yes' if done_t else 'no'}, error {err}")
        out_tokens += n or 0
        chunks += len(times)
        t_end = max(t_end, done_t or t_end)
        if times:
            ttft.append(times[0] - r.t_send)
            itl += [b - a for a, b in zip(times, times[1:])]
            if len(times) > 1 and n and n > 1:
                tpot.append((times[-1] - times[0]) / (n - 1))
        if done_t:
            lat.append(done_t - r.t_send)
    el = t_end - t_start
    ms = lambda v: None if v is None else round(v * 1000, 2)
    s = {
        "requests": len(reqs), "failed": len(problems), "output_tokens": out_tokens,
        "text_chunks": chunks, "elapsed_s": round(el, 3),
        "output_tokens_per_s": round(out_tokens / el, 2) if el > 0 else None,
        "requests_per_s": round(len(reqs) / el, 4) if el > 0 else None,
        "ttft_p50_ms": ms(pct(ttft, 0.5)), "ttft_p99_ms": ms(pct(ttft, 0.99)),
        "ttft_mean_ms": ms(statistics.fmean(ttft)) if ttft else None,
        "itl_p50_ms": ms(pct(itl, 0.5)), "itl_p99_ms": ms(pct(itl, 0.99)),
        "itl_mean_ms": ms(statistics.fmean(itl)) if itl else None,
        "tpot_p50_ms": ms(pct(tpot, 0.5)), "tpot_p99_ms": ms(pct(tpot, 0.99)),
        "latency_p50_s": round(pct(lat, 0.5), 3) if lat else None,
        "latency_p99_s": round(pct(lat, 0.99), 3) if lat else None,
        "retries": sum(r.retries for r in reqs),
    }
    return s, problems


def run_http(a, workload, log_path):
    srv = Server(a, log_path)
    try:
        srv.wait_ready(a.ready_timeout)
        reqs = [Req(i, p, n, srv.host) for i, (p, n) in enumerate(workload)]
        th0 = proc_threads(srv.p.pid)
        m0 = metrics(srv.host, srv.port)
        b0 = system_busy_s()
        wall, client_cpu = asyncio.run(http_run(a, srv.host, srv.port, reqs))
        b1 = system_busy_s()
        th1 = proc_threads(srv.p.pid)
        m1 = metrics(srv.host, srv.port)
    finally:
        srv.stop()
    s, problems = analyze(reqs)
    threads = []
    for tid, (name, cpu) in sorted(th1.items()):
        d = cpu - th0.get(tid, (name, 0.0))[1]
        threads.append({"tid": tid, "name": name, "loop_thread": tid == srv.p.pid,
                        "cpu_s": round(d, 2)})
    dm = lambda k: (m1.get(k, 0) - m0.get(k, 0)) if k in m1 else None
    s.update({
        "cmd": " ".join(srv.cmd), "client_wall_s": round(wall, 3), "client_cpu_s": round(client_cpu, 2),
        "server_cpu_s": round(sum(t["cpu_s"] for t in threads), 2),
        "server_loop_thread_cpu_s": round(sum(t["cpu_s"] for t in threads if t["loop_thread"]), 2),
        "server_threads": threads,
        "foreign_load_cores": round(max(0.0, b1 - b0 - client_cpu - sum(t["cpu_s"] for t in threads))
                                    / wall, 2) if b0 is not None and b1 is not None else None,
        "server_engine_steps": dm("engine_steps_total"),
        "server_preemptions": dm("preemptions_total"),
        "server_prefix_cache_hit_tokens": dm("prefix_cache_hits_total"),
        "server_ttft_mean_ms": round(1000 * dm("time_to_first_token_seconds_sum") /
                                     dm("time_to_first_token_seconds_count"), 2)
        if dm("time_to_first_token_seconds_count") else None,
        "server_itl_mean_ms": round(1000 * dm("inter_token_latency_seconds_sum") /
                                    dm("inter_token_latency_seconds_count"), 2)
        if dm("inter_token_latency_seconds_count") else None,
        "problems": problems[:20],
    })
    return s


def http_step(a, workload, log_dir, rep):
    say(f"[{rep + 1}] HTTP, {a.concurrency} SSE streams ...")
    h = run_http(a, workload, os.path.join(log_dir, f"http_bench_serve_{rep + 1}.log"))
    say(f"    {h['output_tokens_per_s']} output tok/s, {h['elapsed_s']} s, "
        f"{h['server_engine_steps']} steps, TTFT p50 {h['ttft_p50_ms']} ms, "
        f"ITL p50 {h['itl_p50_ms']} ms, other load {h['foreign_load_cores']} cores, "
        f"{h['failed']} failed")
    for p in h["problems"][:5]:
        say("    " + p)
    return h


def say(*x):
    print(*x, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Engine flags are passed to both bench and serve "
                                        "(--device D is serve's --backend D).")
    ap.add_argument("--bin", default="build/nanoinfer")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--input-len", type=parse_range, default=(32, 128), metavar="A:B")
    ap.add_argument("--output-len", type=parse_range, default=(32, 128), metavar="A:B")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=64, help="client streams (default 64)")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; medians reported")
    ap.add_argument("--max-other-load", type=float, default=None, metavar="CORES",
                    help="discard (and redo) a repetition during which other processes on the "
                         "machine used more than CORES cores on average (shared machines)")
    ap.add_argument("--max-retries", type=int, default=4,
                    help="extra repetitions allowed by --max-other-load (default 4)")
    ap.add_argument("--vocab", type=int, help="default: from `nanoinfer info`")
    ap.add_argument("--max-ctx", type=int, help="context used to clip output lengths (default: model's)")
    g = ap.add_argument_group("engine (both sides)")
    g.add_argument("--device", help="cpu, cuda, auto (bench --device, serve --backend)")
    g.add_argument("--dtype")
    g.add_argument("--threads", type=int)
    g.add_argument("--max-batched-tokens", type=int)
    g.add_argument("--prefill-chunk", type=int)
    g.add_argument("--kv-blocks", type=int)
    g.add_argument("--gpu-memory-utilization", type=float)
    g.add_argument("--no-prefix-cache", action="store_true")
    g.add_argument("--max-num-seqs", type=int,
                   help="serve's --max-num-seqs (default: bench's default, 256)")
    ap.add_argument("--offline", default="default,C",
                    help="bench runs: comma list of max-num-seqs values, 'default' = bench's own, "
                         "'C' = --concurrency, 'none' = skip (default: default,C)")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                    help="extra flag for both bench and serve (repeatable; a value is its own "
                         "--engine-arg, e.g. --engine-arg=--quant --engine-arg=int8)")
    ap.add_argument("--bench-arg", action="append", default=[], metavar="ARG",
                    help="extra flag for bench only (repeatable)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra flag for serve only (repeatable)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="server port (0: any free port)")
    ap.add_argument("--ready-timeout", type=float, default=900)
    ap.add_argument("--timeout", type=float, default=7200, help="limit for one HTTP run (s)")
    ap.add_argument("--out", help="write the JSON result here")
    ap.add_argument("--log-dir", default=None, help="server logs (default: next to --out, or /tmp)")
    a = ap.parse_args()

    # SIGTERM / SIGHUP unwind like Ctrl-C, so that a running server is stopped
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    if not os.path.exists(a.bin):
        sys.exit(f"error: {a.bin} not found (make)")
    if not os.path.exists(a.model):
        sys.exit(f"error: model {a.model} not found (make model, or --model)")
    vocab, ctx, name = model_info(a.bin, a.model)
    vocab = a.vocab or vocab
    max_ctx = a.max_ctx or ctx
    workload = make_workload(a.num_requests, a.input_len, a.output_len, a.seed, vocab, max_ctx)
    in_total = sum(len(p) for p, _ in workload)
    out_total = sum(n for _, n in workload)
    log_dir = a.log_dir or (os.path.dirname(os.path.abspath(a.out)) if a.out else "/tmp")
    os.makedirs(log_dir, exist_ok=True)
    offline_modes = []
    for m in a.offline.split(","):
        m = m.strip()
        if m == "none" or not m:
            continue
        offline_modes.append(None if m == "default" else a.concurrency if m == "C" else int(m))

    say(f"model {name}: vocab {vocab}, context {max_ctx}; {a.num_requests} requests, "
        f"{in_total} prompt + {out_total} output tokens; {a.concurrency} streams; "
        f"{a.repeat} repetition(s)")
    # CPU cost of loading the model + engine init, subtracted from bench's process CPU time
    load_cpu = 0.0
    if offline_modes:
        saved = a.num_requests, a.input_len, a.output_len
        a.num_requests, a.input_len, a.output_len = 1, (1, 1), (1, 1)
        load_cpu = run_offline(a, None)["process_cpu_s"]
        a.num_requests, a.input_len, a.output_len = saved
    reps, discarded = [], []
    rep = -1
    while len(reps) < a.repeat and rep + 1 < a.repeat + a.max_retries:
        rep += 1
        r = {"offline": {}}
        # odd repetitions run HTTP first, so that drift in the machine's load hits both sides
        http_first = rep % 2 == 1
        if http_first:
            h = http_step(a, workload, log_dir, rep)
        for mns in offline_modes:
            key = "max_num_seqs_default" if mns is None else f"max_num_seqs_{mns}"
            say(f"[{rep + 1}] offline bench ({key}) ...")
            b = run_offline(a, mns)
            if b["input_tokens"] != in_total or b["output_tokens"] != out_total:
                sys.exit(f"error: bench's workload differs from ours: bench {b['input_tokens']} + "
                         f"{b['output_tokens']} tokens, ours {in_total} + {out_total}")
            r["offline"][key] = b
            say(f"    {b['output_tokens_per_s']:.1f} output tok/s, {b['elapsed_s']:.2f} s, "
                f"{b['steps']} steps, TTFT p50 {b['ttft_p50_s']:.3f} s, "
                f"other load {b.get('foreign_load_cores')} cores")
        if not http_first:
            h = http_step(a, workload, log_dir, rep)
        r["http"] = h
        for k, b in r["offline"].items():
            r[f"ratio_vs_{k}"] = round(h["output_tokens_per_s"] / b["output_tokens_per_s"], 4) \
                if h["output_tokens_per_s"] else None
        loads = [b.get("foreign_load_cores") for b in r["offline"].values()] + [h["foreign_load_cores"]]
        worst = max([x for x in loads if x is not None], default=0.0)
        if a.max_other_load is not None and worst > a.max_other_load:
            say(f"    repetition discarded: other processes used up to {worst} cores "
                f"(--max-other-load {a.max_other_load})")
            discarded.append(r)
            continue
        reps.append(r)
    if not reps:
        say("warning: every repetition saw more than --max-other-load; reporting them anyway")
        reps, discarded = discarded, []

    summary = {"offline": {}, "http": {}}
    for k in reps[0]["offline"]:
        summary["offline"][k] = {
            "output_tokens_per_s": med([r["offline"][k]["output_tokens_per_s"] for r in reps]),
            "elapsed_s": med([r["offline"][k]["elapsed_s"] for r in reps]),
            "steps": med([r["offline"][k]["steps"] for r in reps]),
            "ttft_p50_ms": med([1000 * r["offline"][k]["ttft_p50_s"] for r in reps]),
            "ttft_p99_ms": med([1000 * r["offline"][k]["ttft_p99_s"] for r in reps]),
            "cpu_s": med([r["offline"][k]["process_cpu_s"] - load_cpu for r in reps]),
            "foreign_load_cores": med([r["offline"][k].get("foreign_load_cores") for r in reps]),
        }
    for k in ("output_tokens_per_s", "elapsed_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms",
              "itl_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "latency_p50_s", "latency_p99_s",
              "server_engine_steps", "server_cpu_s", "server_loop_thread_cpu_s", "client_cpu_s",
              "server_ttft_mean_ms", "server_itl_mean_ms", "foreign_load_cores"):
        summary["http"][k] = med([r["http"][k] for r in reps])
    for k, b in summary["offline"].items():
        # each repetition pairs an offline and an HTTP run made back to back: the headline is
        # the median of the per-repetition ratios (the ratio of the medians is also given)
        ratio = med([r[f"ratio_vs_{k}"] for r in reps])
        summary[f"ratio_vs_{k}"] = None if ratio is None else round(ratio, 4)
        summary[f"loss_pct_vs_{k}"] = None if ratio is None else round(100 * (1 - ratio), 2)
        summary[f"ratio_vs_{k}_per_rep"] = [r[f"ratio_vs_{k}"] for r in reps]
        hm = summary["http"]["output_tokens_per_s"]
        summary[f"ratio_of_medians_vs_{k}"] = round(hm / b["output_tokens_per_s"], 4) if hm else None
        # CPU seconds HTTP (server + client) / offline (model load excluded): robust to other
        # jobs on a shared machine, where wall-clock throughput is not
        summary[f"cpu_ratio_vs_{k}"] = round(
            (summary["http"]["server_cpu_s"] + summary["http"]["client_cpu_s"]) / b["cpu_s"], 4) \
            if b["cpu_s"] and b["cpu_s"] > 0 else None
    failed = sum(r["http"]["failed"] for r in reps)
    result = {
        "model": name, "model_path": a.model, "requests": a.num_requests,
        "input_len": "%d:%d" % a.input_len, "output_len": "%d:%d" % a.output_len, "seed": a.seed,
        "vocab": vocab, "input_tokens": in_total, "output_tokens": out_total,
        "concurrency": a.concurrency, "repeat": a.repeat, "device": a.device or "auto",
        "machine": machine_info(a.device), "binary": binary_info(a.bin), "failed_requests": failed,
        "offline_load_cpu_s": round(load_cpu, 3),
        "max_other_load": a.max_other_load, "summary": summary, "repetitions": reps,
        "discarded_repetitions": discarded,
    }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")

    hs = summary["http"]
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"
    print(f"model {name}, {a.num_requests} requests ({in_total} prompt + {out_total} output tokens), "
          f"{a.concurrency} streams, median of {a.repeat}")
    for k, b in summary["offline"].items():
        print(f"offline bench {k:<22} {b['output_tokens_per_s']:9.1f} output tok/s  "
              f"(HTTP/offline {fmt(summary[f'ratio_vs_{k}'], 3)}, "
              f"loss {fmt(summary[f'loss_pct_vs_{k}'])} %, "
              f"per rep {summary[f'ratio_vs_{k}_per_rep']}; CPU s HTTP/offline "
              f"{fmt(summary[f'cpu_ratio_vs_{k}'], 3)})")
    print(f"HTTP {a.concurrency} SSE streams {'':<16} {fmt(hs['output_tokens_per_s']):>9} output tok/s")
    print(f"TTFT p50 {fmt(hs['ttft_p50_ms'])} ms, p99 {fmt(hs['ttft_p99_ms'])} ms; "
          f"ITL p50 {fmt(hs['itl_p50_ms'])} ms, p99 {fmt(hs['itl_p99_ms'])} ms; "
          f"TPOT p50 {fmt(hs['tpot_p50_ms'])} ms")
    print(f"engine steps: HTTP {fmt(hs['server_engine_steps'], 0)}, offline "
          + ", ".join(f"{k} {fmt(b['steps'], 0)}" for k, b in summary["offline"].items()))
    print(f"CPU s: server {fmt(hs['server_cpu_s'], 2)} (loop thread {fmt(hs['server_loop_thread_cpu_s'], 2)}), "
          f"client {fmt(hs['client_cpu_s'], 2)}; offline (model load excluded) "
          + ", ".join(f"{k} {fmt(b['cpu_s'], 2)}" for k, b in summary["offline"].items()))
    print(f"other processes' load (cores): HTTP {fmt(hs['foreign_load_cores'], 2)}, offline "
          + ", ".join(f"{k} {fmt(b['foreign_load_cores'], 2)}" for k, b in summary["offline"].items()))
    if failed:
        print(f"FAILED: {failed} HTTP requests did not complete as expected (see the JSON)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
