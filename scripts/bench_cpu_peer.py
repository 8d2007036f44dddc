#!/usr/bin/env python3
"""bench_cpu_peer.py - nanoinfer against llama.cpp on the CPU, same GGUF, same run.

Prints one side-by-side table (medians over --repeat runs, ratio ours/peer):
  decode      single stream, 64 tokens after a 1-token prompt, 1 and 2 threads
              (llama-bench -p 0 -n 64 | nanoinfer bench --num-requests 1)
  prefill     a 512-token prompt (llama-bench -p 512 -n 0 | bench --input-len 512)
  batched     B = 4/16/32 sequences decoding 64 tokens each
              (llama-batched-bench -npp 1 -ntg 64 -npl B | bench --num-requests B)
  serving     HTTP, OpenAI /v1/completions, a 100-word prompt, 64 tokens out,
              c = 1/4/16 concurrent clients, 4*c requests (nanoinfer serve |
              llama-server), default settings on both sides, ignore_eos
Both sides use their defaults (ours: --quant auto, every core; llama.cpp: its
default thread count unless -t is part of the measurement).

llama.cpp is not part of this project: build it from a public copy beside the
project (never committed), e.g. .peer/ holding its CMakeLists.txt, cmake,
common, ggml, include, src, examples, pocs, gguf-py, scripts/xxd.cmake:
  cmake -S .peer -B .peer/build-cpu -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF && cmake --build .peer/build-cpu -j --target \\
        llama-bench llama-batched-bench llama-server
then: scripts/bench_cpu_peer.py --peer-bin .peer/build-cpu/bin [--repeat 3]
Standard library only. Benchmarks on a shared machine are noisy: peers run
back to back for every row, and the table reports the spread.
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import free_port, wait_health  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
         "judge the boxing match near an old river bank under grey winter skies ").split()


def run(cmd, timeout=900):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if p.returncode:
        sys.exit("error: %s failed (%d):\n%s" % (" ".join(cmd), p.returncode, p.stderr[-2000:]))
    return p.stdout


def peer_bench(a, extra):
    out = run([os.path.join(a.peer_bin, "llama-bench"), "-m", a.model, "-r", "1", "-o", "json"]
              + extra)
    return json.loads(out)[0]["avg_ts"]


def peer_batched(a, b):
    out = run([os.path.join(a.peer_bin, "llama-batched-bench"), "-m", a.model, "-c", "4096",
               "-npp", "1", "-ntg", "64", "-npl", str(b)])
    # table row: |  PP |  TG |  B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in out.splitlines():
        f = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(f) >= 8 and f[0] == "1" and f[1] == "64" and f[2] == str(b):
            return float(f[7])
    sys.exit("error: no llama-batched-bench row for B=%d:\n%s" % (b, out))


def ours_bench(a, extra):
    out = run([a.bin, "bench", "--model", a.model, "--json"] + extra)
    return json.loads(out.strip().splitlines()[-1])


def wait_ready(port, proc, timeout=300):
    if not wait_health(port, proc, timeout):
        if proc.poll() is not None:
            sys.exit("error: server exited (%d)" % proc.returncode)
        sys.exit("error: server not ready after %ds" % timeout)


def serve_rate(port, conc, n_req, prompt):
    """Output tokens per second of n_req completions over conc client threads."""
    body = json.dumps({"prompt": prompt, "max_tokens": 64, "temperature": 0,
                       "ignore_eos": True}).encode()
    lock, tokens, left = threading.Lock(), [0], [n_req]

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            d = json.loads(r.read())
            if r.status != 200:
                sys.exit("error: HTTP %d: %s" % (r.status, d))
            with lock:
                tokens[0] += d["usage"]["completion_tokens"]

    t0 = time.time()
    th = [threading.Thread(target=worker) for _ in range(conc)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return tokens[0] / (time.time() - t0)


def serving(a, ours):
    port = free_port()
    if ours:
        cmd = [a.bin, "serve", "--model", a.model, "--host", "127.0.0.1", "--port", str(port)]
    else:
        cmd = [os.path.join(a.peer_bin, "llama-server"), "-m", a.model, "--host", "127.0.0.1",
               "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        prompt = " ".join(WORDS[i % len(WORDS)] for i in range(100))
        serve_rate(port, 1, 1, prompt)  # warm-up
        return {c: serve_rate(port, c, 4 * c, prompt) for c in a.concurrency}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def med(v):
    return statistics.median(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="build/nanoinfer")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--peer-bin", default=".peer/build-cpu/bin")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="decode,prefill,batched,serving")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 4, 16])
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args()
    only = set(a.only.split(","))
    rows = []  # (label, ours[], peer[])
    for _ in range(a.repeat):
        got = []
        if "decode" in only:
            for t in (1, 2):
                o = ours_bench(a, ["--num-requests", "1", "--input-len", "1", "--output-len", "64",
                                   "--threads", str(t)])["output_tokens_per_s"]
                p = peer_bench(a, ["-t", str(t), "-p", "0", "-n", "64"])
                got.append(("decode, 1 stream, %d thread%s" % (t, "s" if t > 1 else ""), o, p))
        if "prefill" in only:
            o = ours_bench(a, ["--num-requests", "1", "--input-len", "512", "--output-len", "1"])
            p = peer_bench(a, ["-p", "512", "-n", "0"])
            got.append(("prefill, 512-token prompt", o["total_tokens_per_s"], p))
        if "batched" in only:
            for b in (4, 16, 32):
                o = ours_bench(a, ["--num-requests", str(b), "--max-num-seqs", str(b),
                                   "--input-len", "1", "--output-len", "64"])
                got.append(("batched decode, B = %d" % b, o["output_tokens_per_s"],
                            peer_batched(a, b)))
        if "serving" in only:
            o, p = serving(a, True), serving(a, False)
            for c in a.concurrency:
                got.append(("serving HTTP, c = %d (out tok/s)" % c, o[c], p[c]))
        for label, o, p in got:
            r = next((r for r in rows if r[0] == label), None)
            if not r:
                r = (label, [], [])
                rows.append(r)
            r[1].append(o)
            r[2].append(p)
    cpu = re.sub(r"\s+", " ", next((l.split(":", 1)[1] for l in open("/proc/cpuinfo")
                                    if l.startswith("model name")), "?")).strip()
    print("model %s; %d cores (%s); medians of %d runs, tok/s" %
          (os.path.basename(a.model), os.cpu_count(), cpu, a.repeat))
    print("| | llama.cpp | nanoinfer | ratio |")
    print("|---|---|---|---|")
    for label, o, p in rows:
        print("| %s | %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | %.2fx |" %
              (label, med(p), min(p), max(p), med(o), min(o), max(o), med(o) / med(p)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"row": l, "ours": o, "peer": p} for l, o, p in rows], f, indent=1)


if __name__ == "__main__":
    main()
