#!/usr/bin/env python3
"""bench_grammar.py - what structured outputs cost: grammar mask time per token
and generation throughput with and without the grammar, same prompts, same
token counts.

What it does (Python 3 standard library only):
  1. starts `nanoinfer serve` on loopback (--port 0, the port read from the
     "listening on" log line) with the real model, --no-prefix-cache (the
     passes repeat the same prompts) and --max-num-seqs = the largest
     concurrency;
  2. takes --subset schemas spread evenly over test/data/schemas.json;
  3. per repetition and per concurrency C (--concurrency, e.g. 1,16; C = 1
     runs only the first --single entries), two passes over the same chat
     prompts, C requests in flight (a closed loop):
       grammar        response_format json_schema (strict), temperature
                      --temperature, seed --seed, max_tokens --max-tokens;
       unconstrained  no response_format, ignore_eos, max_tokens = the tokens
                      the grammar pass produced for that prompt (from the first
                      repetition), so both passes generate exactly the same
                      number of tokens from the same prompts;
     the order of the two passes alternates between repetitions. From
     /metrics deltas: masks and mask seconds (-> mean us per masked token,
     the mask's share of the pass's wall time), engine steps; client side:
     wall time and completion tokens/s; the server's CPU seconds per token
     (from /proc: less sensitive than wall time to other jobs on a shared
     machine). The CPU other processes used during each pass ("other load",
     in cores) is recorded; --max-other-load redoes a pass that saw more (at
     most --retries times).
  4. prints medians over repetitions (and min-max), the ratios grammar /
     unconstrained of tokens/s and of server CPU per token (medians of the
     per-repetition ratios), and writes all figures to --out as JSON.

Example (the run in docs/perf.md):
  python3 scripts/bench_grammar.py --repeat 3 --subset 24 --single 6 --max-other-load 0.3
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def system_busy_s():
    """CPU seconds all processes of the machine have used (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """CPU seconds (user + system) of process pid, or 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0.0
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, binary, args):
        self.log = tempfile.NamedTemporaryFile(prefix="ni_bench_grammar_", suffix=".log", delete=False)
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        port = None
        while time.time() < deadline and port is None:
            if self.proc.poll() is not None:
                sys.exit("server exited:\n" + self.read_log())
            m = re.search(r"listening on http://[^\s]*:(\d+)\s", self.read_log())
            port = int(m.group(1)) if m else time.sleep(0.05)
        if port is None:
            sys.exit("server did not start:\n" + self.read_log())
        self.url = f"http://127.0.0.1:{port}"
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.1)
        sys.exit("server never became healthy:\n" + self.read_log())

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=1200) as r:
            return json.loads(r.read())

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1])
                for l in text.splitlines() if l and not l.startswith("#")}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


def run_pass(srv, a, entries, conc, grammar, counts):
    """One pass; returns its figures and {name: completion tokens}."""
    def one(e):
        body = {"model": "bench", "messages": [{"role": "user", "content": e["prompt"]}],
                "temperature": a.temperature, "seed": a.seed}
        if grammar:
            body["max_tokens"] = a.max_tokens
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": e["name"], "schema": e["schema"], "strict": True}}
        else:
            body["max_tokens"] = counts[e["name"]]
            body["ignore_eos"] = True
        r = srv.post("/v1/chat/completions", body)
        return e["name"], r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]

    m0, b0, s0, c0 = srv.metrics(), system_busy_s(), proc_cpu_s(srv.proc.pid), time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        res = list(pool.map(one, entries))
    wall = time.perf_counter() - t0
    m1, b1, s1, c1 = srv.metrics(), system_busy_s(), proc_cpu_s(srv.proc.pid), time.process_time()
    d = {k: m1[k] - m0.get(k, 0.0) for k in m1}
    tokens = sum(r[1] for r in res)
    masks = d.get("nanoinfer_grammar_masks_total", 0.0)
    mask_s = d.get("nanoinfer_grammar_mask_seconds_total", 0.0)
    other = None
    if b0 is not None and b1 is not None:
        other = max(0.0, (b1 - b0) - (s1 - s0) - (c1 - c0)) / wall
    return {
        "grammar": grammar, "concurrency": conc, "requests": len(res), "tokens": tokens,
        "wall_s": wall, "tok_per_s": tokens / wall, "masks": masks, "mask_s": mask_s,
        "mask_us_per_token": 1e6 * mask_s / masks if masks else None,
        "mask_share_of_wall": mask_s / wall, "steps": d.get("nanoinfer_engine_steps_total"),
        "server_cpu_s": s1 - s0, "server_cpu_ms_per_token": 1e3 * (s1 - s0) / max(tokens, 1),
        "other_load_cores": other,
        "finish": {f: sum(r[2] == f for r in res) for f in {r[2] for r in res}},
    }, {r[0]: r[1] for r in res}


def med(xs):
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else (None, None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, os.environ.get("BUILD", "build"), "nanoinfer"))
    ap.add_argument("--model", default=os.environ.get("NI_MODEL") or
                    os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--corpus", default=os.path.join(ROOT, "test/data/schemas.json"))
    ap.add_argument("--subset", type=int, default=34, help="schemas, spread evenly over the corpus (0: all)")
    ap.add_argument("--single", type=int, default=8, help="entries of the subset the C = 1 passes use")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated client concurrencies")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-other-load", type=float, default=None,
                    help="redo a pass during which other processes used more cores than this")
    ap.add_argument("--retries", type=int, default=2, help="redos per pass for --max-other-load")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra serve argument (repeatable)")
    ap.add_argument("--out", default=os.path.join(ROOT, os.environ.get("BUILD", "build"), "bench_grammar.json"))
    a = ap.parse_args()

    with open(a.corpus) as f:
        corpus = json.load(f)["entries"]
    n = len(corpus) if a.subset <= 0 else min(a.subset, len(corpus))
    entries = [corpus[i * len(corpus) // n] for i in range(n)]
    concs = [int(c) for c in a.concurrency.split(",")]
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    serve = ["--model", a.model, "--served-model-name", "bench", "--no-prefix-cache",
             "--max-num-seqs", str(max(concs))] + a.serve_arg
    print(f"model {os.path.basename(a.model)}; {len(entries)} schemas; concurrency {concs}; "
          f"max_tokens {a.max_tokens}; {a.repeat} repetitions; {os.cpu_count()} cores ({cpu}); "
          f"commit {commit}{'+dirty' if dirty else ''}", flush=True)
    srv = Server(a.bin, serve)
    reps = []
    try:
        counts = {}
        for rep in range(a.repeat):
            for conc in concs:
                es = entries[:a.single] if conc == 1 else entries
                # the first repetition's grammar pass gives the token counts
                order = [True, False] if rep % 2 == 0 else [False, True]
                pair = {}
                for g in order:
                    for attempt in range(a.retries + 1):
                        fig, got = run_pass(srv, a, es, conc, g, counts)
                        load = fig["other_load_cores"] or 0.0
                        if a.max_other_load is None or load <= a.max_other_load or attempt == a.retries:
                            break
                        print(f"  (other load {load:.2f} cores > {a.max_other_load}: pass redone)", flush=True)
                    if g:
                        for k, v in got.items():
                            counts.setdefault(k, v)
                    pair["grammar" if g else "unconstrained"] = fig
                    print(f"  rep {rep + 1} c={conc} {'grammar      ' if g else 'unconstrained'}: "
                          f"{fig['tokens']} tok in {fig['wall_s']:.1f} s = {fig['tok_per_s']:.1f} tok/s"
                          + (f", mask {fig['mask_us_per_token']:.0f} us/token "
                             f"({100 * fig['mask_share_of_wall']:.1f} % of wall)" if g else "")
                          + f", server CPU {fig['server_cpu_ms_per_token']:.1f} ms/token"
                          + f", other load {fig['other_load_cores'] or 0:.2f} cores, finish {fig['finish']}",
                          flush=True)
                pair["ratio"] = pair["grammar"]["tok_per_s"] / pair["unconstrained"]["tok_per_s"]
                pair["cpu_ratio"] = (pair["grammar"]["server_cpu_ms_per_token"]
                                     / pair["unconstrained"]["server_cpu_ms_per_token"])
                pair["concurrency"] = conc
                pair["repetition"] = rep + 1
                reps.append(pair)
    finally:
        srv.stop()

    summary = {}
    print(f"\nmedians of {a.repeat} (min-max)")
    print("| C | mask us / masked token | mask share of wall | grammar tok/s | unconstrained tok/s | ratio "
          "| server CPU ms/token, grammar / unconstrained | CPU ratio | other load (cores) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for conc in concs:
        rs = [r for r in reps if r["concurrency"] == conc]
        mu = med([r["grammar"]["mask_us_per_token"] for r in rs])
        sh = med([r["grammar"]["mask_share_of_wall"] for r in rs])
        g = med([r["grammar"]["tok_per_s"] for r in rs])
        u = med([r["unconstrained"]["tok_per_s"] for r in rs])
        ra = med([r["ratio"] for r in rs])
        cg = med([r["grammar"]["server_cpu_ms_per_token"] for r in rs])
        cu = med([r["unconstrained"]["server_cpu_ms_per_token"] for r in rs])
        cr = med([r["cpu_ratio"] for r in rs])
        ol = med([x["other_load_cores"] for r in rs for x in (r["grammar"], r["unconstrained"])])
        summary[conc] = {"mask_us_per_token": mu, "mask_share_of_wall": sh, "grammar_tok_per_s": g,
                         "unconstrained_tok_per_s": u, "ratio": ra, "grammar_cpu_ms_per_token": cg,
                         "unconstrained_cpu_ms_per_token": cu, "cpu_ratio": cr, "other_load_cores": ol,
                         "tokens_per_pass": rs[0]["grammar"]["tokens"], "requests": rs[0]["grammar"]["requests"]}
        print(f"| {conc} | {mu[0]:.0f} ({mu[1]:.0f}-{mu[2]:.0f}) | {100 * sh[0]:.1f} % | "
              f"{g[0]:.1f} ({g[1]:.1f}-{g[2]:.1f}) | {u[0]:.1f} ({u[1]:.1f}-{u[2]:.1f}) | "
              f"{ra[0]:.3f} ({ra[1]:.3f}-{ra[2]:.3f}) | {cg[0]:.1f} / {cu[0]:.1f} | {cr[0]:.3f} ({cr[1]:.3f}-{cr[2]:.3f}) | "
              f"{ol[0] or 0:.2f} ({ol[1] or 0:.2f}-{ol[2] or 0:.2f}) |")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "commit": commit, "dirty": dirty, "cpu": cpu, "cores": os.cpu_count(),
                   "machine": platform.platform(), "schemas": [e["name"] for e in entries],
                   "summary": summary, "repetitions": reps}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
