#!/usr/bin/env python3
"""http_loss.py - what serving through HTTP costs against the offline engine
at the same concurrency, measured by the C client: issue 10's "HTTP loss
<= 3 % against offline at the same concurrency" and "ITL p50 <= 15 ms at
c = 256".

For each concurrency C (--conc, default 64,128,256), back to back:
  offline  `nanoinfer bench --model M --num-requests R --max-num-seqs C
           --warmup C` (R = --waves x C requests of --input-len prompt and
           --output-len output tokens, greedy, ignore_eos: continuous
           batching of at most C sequences, like C closed-loop connections;
           the warm-up's C untimed requests have outputs of 1..C tokens);
  served   a fresh `nanoinfer serve --model M --max-num-seqs C` (fresh, so
           no earlier prompt is in its prefix cache) driven by `nanoinfer
           bench --url --concurrency C --num-prompts R` (same lengths, after
           the same kind of warm-up: C requests of 1..C output tokens at C
           connections, another seed);
and reports output tokens/s of both, served / offline, and the served run's
TTFT / ITL / TPOT p50 and p99, with how many requests produced text at all
(the client times text: a model whose tokens mostly have none, like the
random HF models with a borrowed small tokenizer, leaves TTFT / ITL
meaningless and is flagged). --repeat N runs the whole sweep N times
(medians are the caller's). Works with either backend (--device cpu on the
development machine with a tiny model as a dry run, --device cuda on the GPU
machine). Writes one JSON object per line to --out and a markdown table to
stdout.

Usage: python3 scripts/http_loss.py --model M [--device cuda] [--conc 64,128,256]
           [--input-len 128] [--output-len 128] [--waves 2] [--repeat 1]
           [--bin build/nanoinfer] [--out build/http_loss.jsonl]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import free_port, stop, wait_health  # noqa: E402


def offline(a, conc):
    cmd = [a.bin, "bench", "--model", a.model, "--device", a.device, "--json",
           "--num-requests", str(a.waves * conc), "--max-num-seqs", str(conc),
           "--input-len", str(a.input_len), "--output-len", str(a.output_len),
           "--warmup", str(conc)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if out.returncode != 0:
        raise RuntimeError("offline bench failed: " + out.stderr[-500:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def served(a, conc, seed):
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([a.bin, "serve", "--model", a.model, "--device", a.device,
                             "--port", str(port), "--max-num-seqs", str(conc),
                             "--max-queue", str(a.waves * conc)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_health(port, proc, a.timeout):
            log.seek(0)
            raise RuntimeError("server not ready: " + log.read()[-500:])
        url = "http://127.0.0.1:%d" % port
        base = [a.bin, "bench", "--url", url, "-q", "--input-len", str(a.input_len),
                "--output-len", str(a.output_len)]
        # the served twin of the offline --warmup: conc requests at conc
        # connections, outputs of 1..conc tokens (every decode batch size)
        warm = [a.bin, "bench", "--url", url, "-q", "--input-len", str(a.input_len),
                "--output-len", "1:%d" % max(1, min(conc, a.output_len))]
        subprocess.run(warm + ["--concurrency", str(conc), "--num-prompts", str(conc),
                               "--seed", str(seed + 1000)],
                       capture_output=True, timeout=a.timeout, check=True)
        jf = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        r = subprocess.run(base + ["--concurrency", str(conc), "--num-prompts",
                                   str(a.waves * conc), "--seed", str(seed), "--json", jf],
                           capture_output=True, text=True, timeout=a.timeout)
        if r.returncode != 0:
            raise RuntimeError("bench --url failed: " + r.stderr[-500:])
        with open(jf) as f:
            j = json.load(f)[0]
        os.remove(jf)
        return j
    finally:
        stop(proc)
        os.remove(log.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--conc", default="64,128,256")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--waves", type=int, default=2, help="requests per run = waves x concurrency")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--bin", default="build/nanoinfer")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per command")
    ap.add_argument("--out", default="build/http_loss.jsonl")
    a = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    rows = []
    with open(a.out, "a") as out:
        for rep in range(a.repeat):
            for conc in [int(c) for c in a.conc.split(",")]:
                off = offline(a, conc)
                srv = served(a, conc, seed=rep)
                row = {"rep": rep, "concurrency": conc, "device": a.device, "model": a.model,
                       "input_len": a.input_len, "output_len": a.output_len,
                       "requests": a.waves * conc,
                       "offline_out_tok_s": off["output_tokens_per_s"],
                       "offline_output_tokens": off["output_tokens"],
                       "served_out_tok_s": srv["output_throughput"],
                       "served_output_tokens": srv["output_tokens"],
                       "served_failed": srv["failed"],
                       "ratio": srv["output_throughput"] / off["output_tokens_per_s"],
                       "ttft_ms": srv["ttft_ms"], "itl_ms": srv["itl_ms"],
                       "tpot_ms": srv["tpot_ms"],
                       # the client times text: requests whose tokens had none (a
                       # random model whose vocabulary outgrows its tokenizer) have
                       # no TTFT, and their ITL is not measured
                       "text_requests": srv["ttft_ms"]["n"]}
                out.write(json.dumps(row) + "\n")
                out.flush()
                rows.append(row)
                print("c=%d rep %d: offline %.0f, served %.0f out tok/s (%.3f), ITL p50 %.1f ms"
                      % (conc, rep, row["offline_out_tok_s"], row["served_out_tok_s"],
                         row["ratio"], row["itl_ms"]["p50"]), file=sys.stderr, flush=True)
    print("| c | offline out tok/s | served out tok/s | served / offline | TTFT p50 / p99 ms "
          "| ITL p50 / p99 ms | TPOT p50 ms | failed | requests with text |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %.0f | %.0f | %.3f | %.1f / %.1f | %.1f / %.1f | %.2f | %d | %d of %d |"
              % (r["concurrency"], r["offline_out_tok_s"], r["served_out_tok_s"], r["ratio"],
                 r["ttft_ms"]["p50"], r["ttft_ms"]["p99"], r["itl_ms"]["p50"],
                 r["itl_ms"]["p99"], r["tpot_ms"]["p50"], r["served_failed"],
                 r["text_requests"], r["requests"]))
    if any(r["text_requests"] < r["requests"] for r in rows):
        print("WARNING: some requests produced no text: TTFT / ITL describe only the others "
              "(a model whose vocabulary outgrows its tokenizer?); throughput is unaffected "
              "(usage counts)", file=sys.stderr)
    return 0 if all(r["served_failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
