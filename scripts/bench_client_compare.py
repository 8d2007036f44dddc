#!/usr/bin/env python3
"""bench_client_compare.py - the C serving benchmark client (`nanoinfer bench --url`)
against the Python one of scripts/http_bench.py, on the same server in the same run.

Sections (Python 3 standard library only):
  compare  one `nanoinfer serve` on --model (default: the real SmolLM2 model); for each
           --concurrency value, back to back (the order alternates between values), the C
           client and the Python client each send --requests-per-conn x C requests of
           --input-len prompt tokens and --output-len output tokens (ignore_eos, greedy,
           streamed, include_usage) to /v1/completions over C keep-alive connections,
           closed loop. The C client sends random-word prompts sized with /tokenize, the
           Python one random token ids (its own workload generator); both report the
           server's usage.prompt_tokens. Every prompt differs, so the prefix cache only
           helps neither.
  ceiling  the client's own cost: a server on --tiny-model (tiny-llama3, ~25 us of compute
           a token) and --ceiling-output-len 256 tokens at concurrency 64: SSE events
           parsed per second, the client's CPU seconds (the C client: its thread; Python:
           its process) and so events per client CPU second (the rate one core of client
           could parse). Both clients again, one after the other.
Prints one table per section and writes everything to --out (JSON).

  python3 scripts/bench_client_compare.py --bin build/nanoinfer --concurrency 1,4,16
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import http_bench  # noqa: E402  (the Python client: Req, http_run, analyze, Server)


def server_args(a, model, port_log):
    ns = argparse.Namespace(bin=a.bin, model=model, host="127.0.0.1", port=0, max_num_seqs=None,
                            max_batched_tokens=None, prefill_chunk=None, kv_blocks=None,
                            threads=a.threads, dtype=None, gpu_memory_utilization=None, device=None,
                            no_prefix_cache=False, engine_arg=[], serve_arg=a.serve_arg, bench_arg=[])
    return http_bench.Server(ns, port_log)


def run_c(a, base, conc, n, in_len, out_len, seed):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [a.bin, "bench", "--url", base, "--num-prompts", str(n), "--input-len", str(in_len),
           "--output-len", str(out_len), "--concurrency", str(conc), "--seed", str(seed), "-q",
           "--json", path]
    p = subprocess.run(cmd, capture_output=True, text=True)
    try:
        r = json.load(open(path))[0]
    except (OSError, ValueError, IndexError):
        sys.exit(f"error: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    finally:
        os.unlink(path)
    return {
        "client": "C (nanoinfer bench --url)", "cmd": " ".join(cmd), "exit": p.returncode,
        "requests": n, "failed": r["failed"], "elapsed_s": round(r["duration_s"], 3),
        "prompt_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
        "requests_per_s": round(r["request_throughput"], 4),
        "output_tokens_per_s": round(r["output_throughput"], 2),
        "ttft_p50_ms": round(r["ttft_ms"]["p50"], 2), "ttft_p99_ms": round(r["ttft_ms"]["p99"], 2),
        "tpot_p50_ms": round(r["tpot_ms"]["p50"], 2), "itl_p50_ms": round(r["itl_ms"]["p50"], 2),
        "itl_p99_ms": round(r["itl_ms"]["p99"], 2), "e2e_p50_ms": round(r["e2e_ms"]["p50"], 1),
        "sse_events": r["sse_events"], "client_cpu_s": round(r["client_cpu_s"], 3),
    }


def run_py(a, host, port, conc, n, in_len, out_len, seed, vocab):
    work = http_bench.make_workload(n, (in_len, in_len), (out_len, out_len), seed, vocab, 1 << 30)
    reqs = [http_bench.Req(i, p, o, host) for i, (p, o) in enumerate(work)]
    ns = argparse.Namespace(concurrency=conc, timeout=3600)
    wall, cpu = asyncio.run(http_bench.http_run(ns, host, port, reqs))
    s, problems = http_bench.analyze(reqs)
    events = sum(len(r.events) for r in reqs)
    return {
        "client": "Python (scripts/http_bench.py)", "requests": n, "failed": s["failed"],
        "problems": problems[:5], "elapsed_s": s["elapsed_s"],
        "prompt_tokens": sum(r.n_prompt for r in reqs), "output_tokens": s["output_tokens"],
        "requests_per_s": s["requests_per_s"], "output_tokens_per_s": s["output_tokens_per_s"],
        "ttft_p50_ms": s["ttft_p50_ms"], "ttft_p99_ms": s["ttft_p99_ms"], "tpot_p50_ms": s["tpot_p50_ms"],
        "itl_p50_ms": s["itl_p50_ms"], "itl_p99_ms": s["itl_p99_ms"],
        "e2e_p50_ms": round(1000 * s["latency_p50_s"], 1) if s["latency_p50_s"] is not None else None,
        "sse_events": events, "client_cpu_s": round(cpu, 3),
    }


def table(rows, title):
    print(f"\n{title}")
    hdr = ("conc", "client", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "ITL p50", "ITL p99",
           "E2E p50", "events/s", "client CPU s", "events/CPU-s", "failed")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for c, r in rows:
        ev_s = r["sse_events"] / r["elapsed_s"] if r["elapsed_s"] else 0
        ev_cpu = r["sse_events"] / r["client_cpu_s"] if r["client_cpu_s"] else 0
        print(f"| {c} | {r['client'].split()[0]} | {r['requests_per_s']:.3f} | {r['output_tokens_per_s']:.1f} | "
              f"{r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['tpot_p50_ms']} | {r['itl_p50_ms']} | "
              f"{r['itl_p99_ms']} | {r['e2e_p50_ms']} | {ev_s:.0f} | {r['client_cpu_s']:.2f} "
              f"({100 * r['client_cpu_s'] / r['elapsed_s']:.0f} %) | {ev_cpu:.0f} | {r['failed']} |")
    sys.stdout.flush()


def section(a, model, concs, per_conn, n_min, in_len, out_len, label, seed0):
    vocab, _, name = http_bench.model_info(a.bin, model)
    log = os.path.join(tempfile.gettempdir(), f"bench_client_compare_{label}.log")
    srv = server_args(a, model, log)
    rows = []
    try:
        srv.wait_ready(900)
        base = f"http://{srv.host}:{srv.port}"
        http_bench.say(f"{label}: server {base} on {name}")
        for i, c in enumerate(concs):
            n = max(n_min, per_conn * c)
            order = ["c", "py"] if i % 2 == 0 else ["py", "c"]
            for who in order:
                http_bench.say(f"  concurrency {c}, {n} requests, {who} client ...")
                seed = seed0 + 1000 * i + (0 if who == "c" else 500)  # every prompt differs
                r = run_c(a, base, c, n, in_len, out_len, seed) if who == "c" else \
                    run_py(a, srv.host, srv.port, c, n, in_len, out_len, seed, vocab)
                http_bench.say(f"    {r['output_tokens_per_s']} out tok/s, TTFT p50 {r['ttft_p50_ms']} ms, "
                               f"{r['failed']} failed, client CPU {r['client_cpu_s']} s")
                rows.append((c, r))
    finally:
        srv.stop()
    rows.sort(key=lambda x: (x[0], x[1]["client"]))
    return name, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--bin", default="build/nanoinfer")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tiny-model", default="test/models/tiny-llama3")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-conn", type=int, default=4, help="requests = this x concurrency")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--ceiling-concurrency", type=int, default=64)
    ap.add_argument("--ceiling-output-len", type=int, default=256)
    ap.add_argument("--ceiling-requests", type=int, default=256)
    ap.add_argument("--threads", type=int, help="server compute threads")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG")
    ap.add_argument("--section", choices=["all", "compare", "ceiling"], default="all")
    ap.add_argument("--out", help="write the results here (JSON)")
    a = ap.parse_args()
    res = {"machine": http_bench.machine_info("cpu"), "binary": http_bench.binary_info(a.bin),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if a.section in ("all", "compare"):
        concs = [int(x) for x in a.concurrency.split(",")]
        name, rows = section(a, a.model, concs, a.requests_per_conn, a.min_requests, a.input_len,
                             a.output_len, "compare", 0)
        res["compare"] = {"model": name, "input_len": a.input_len, "output_len": a.output_len,
                          "runs": [dict(r, concurrency=c) for c, r in rows]}
        table(rows, f"{name}: {a.input_len} prompt / {a.output_len} output tokens, closed loop")
    if a.section in ("all", "ceiling"):
        c = a.ceiling_concurrency
        name, rows = section(a, a.tiny_model, [c], a.ceiling_requests // c, a.ceiling_requests, 32,
                             a.ceiling_output_len, "ceiling", 77)
        res["ceiling"] = {"model": name, "output_len": a.ceiling_output_len,
                          "runs": [dict(r, concurrency=c) for c, r in rows]}
        table(rows, f"client ceiling: {name}, 32 prompt / {a.ceiling_output_len} output tokens, concurrency {c}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
