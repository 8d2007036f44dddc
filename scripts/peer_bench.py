#!/usr/bin/env python3
"""peer_bench.py - nanoinfer and llama.cpp side by side on one GGUF, one run.

Driven by scripts/gpu_peer_bench.sh (which builds both engines and writes the
random-weight models); runnable alone. Every row runs both engines back to
back on the same file; every command has its own timeout, cut to what is left
of the deadline (--deadline, epoch seconds); a failing or skipped command is
logged and the table says so. peer.json and peer_table.md are rewritten after
every command, so a run killed at its limit still leaves what it measured.

Rows (tok/s; "ratio" = ours / llama.cpp):
  decode1      single stream, 128-token prompt, 256 generated; decode rate only.
               peer: llama-batched-bench -npp 128 -ntg 256 -npl 1 (S_TG).
               ours: bench, 2 requests one after the other (--max-num-seqs 1):
               255 tokens / (latency - TTFT) of the second (warm) request.
  prefill512, prefill4000
               one prompt of L tokens. peer: llama-bench -p L -n 0 (its own
               warm-up, mean of -r runs). ours: bench --output-len 1 with 1 and
               with 1+K requests one after the other: K*L / (difference of the
               two elapsed times), so start-up and warm-up cancel.
  batched64, batched256 (and ours-only batched512)
               B sequences, 128 in / 128 out, total (prompt + generated) tok/s
               as the issue reports it; the decode-only rate is in peer.json.
               peer: llama-batched-bench -npp 128 -ntg 128 -npl 64,256 (S t/s).
               ours: bench --num-requests B --max-num-seqs B.
  small1       decode1 on the default-135M shape (--small-model).
  served64     HTTP, c = 64: llama-server vs nanoinfer serve, both measured by
               the same client (nanoinfer bench --url), 128 in / 128 out,
               out tok/s (--served).
Roofline (with --bw-gbs, the measured copy bandwidth in GB/s): single stream:
bw / weight bytes read per token (small1: counted as BF16, what our CUDA
backend holds a Q4_1 file as; --small-roof-type q4_1 counts the file's bytes);
batched: B * bw / (weight bytes + KV bytes of
the B sequences at their mean context), KV at 2 bytes per element.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_gguf_random as gg  # noqa: E402  (presets and weight bytes)
from serve_util import free_port, stop, wait_health as wait_ready  # noqa: E402

LABELS = {
    "decode1": "single-stream decode (128-token prompt, 256 out)",
    "prefill512": "prefill, 512-token prompt",
    "prefill4000": "prefill, 4,000-token prompt",
    "batched64": "batched 128 in / 128 out, B = 64, total tok/s",
    "batched256": "batched 128 in / 128 out, B = 256, total tok/s",
    "batched512": "batched 128 in / 128 out, B = 512, total tok/s (ours only)",
    "small1": "default-135M shape (SmolLM2 Q4_1), single stream",
}


class Bench:
    def __init__(self, a):
        self.a = a
        self.rows = {}  # id -> {"ours": {...}, "peer": {...}, ...}
        self.log = open(os.path.join(a.out, "peer_log.txt"), "a")
        self.t_start = time.time()

    def left(self):
        return self.a.deadline - time.time()

    def note(self, msg):
        line = "[%6.1fs] %s" % (time.time() - self.t_start, msg)
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, cmd, limit, need=5):
        """Runs cmd (list) with timeout min(limit, time left - 5 s). Returns
        stdout or None (logged: failure, timeout or no time left)."""
        t = min(limit, self.left() - 5)
        if t < need:
            self.note("SKIP (budget: %.0f s left) %s" % (self.left(), shlex.join(cmd)))
            return None
        self.note("RUN (limit %.0f s) %s" % (t, shlex.join(cmd)))
        t0 = time.time()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=t, errors="replace")
        except subprocess.TimeoutExpired as e:
            self.note("TIMEOUT after %.0f s; stderr tail:\n%s" %
                      (t, (e.stderr or b"")[-1500:] if isinstance(e.stderr, str)
                       else (e.stderr or b"").decode("utf-8", "replace")[-1500:]))
            return None
        except OSError as e:
            self.note("FAILED to start: %s" % e)
            return None
        dt = time.time() - t0
        self.log.write(p.stdout[-4000:] + "\n--- stderr tail ---\n" + p.stderr[-2500:] + "\n")
        if p.returncode:
            self.note("FAILED rc %d after %.1f s" % (p.returncode, dt))
            return None
        self.note("ok, %.1f s" % dt)
        return p.stdout

    def put(self, row, engine, **kv):
        r = self.rows.setdefault(row, {"label": label(row)})
        r.setdefault(engine, {}).update(kv)
        self.save()

    # ---------------------------------------------------------------- peer
    def peer(self, tool):
        return [os.path.join(self.a.peer_bin, tool)]

    def peer_batched(self, model, npp, ntg, npl):
        ctx = max(npl) * (npp + ntg) + 64
        out = self.run(self.peer("llama-batched-bench") +
                       ["-m", model, "-ngl", "99", "-c", str(ctx), "-b", "2048", "-ub", "512",
                        "-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, npl)),
                        "--output-format", "jsonl"] + self.a.peer_arg, self.a.step_limit)
        res = {}
        for line in (out or "").splitlines():
            line = line.strip()
            if line.startswith("{") and '"speed_tg"' in line:
                try:
                    d = json.loads(line)
                    res[d["pl"]] = d
                except (ValueError, KeyError):
                    pass
        return res

    def peer_prefill(self, model, n):
        out = self.run(self.peer("llama-bench") +
                       ["-m", model, "-ngl", "99", "-p", str(n), "-n", "0", "-r", "3",
                        "-o", "json"] + self.a.peer_arg, self.a.step_limit)
        try:
            return json.loads(out)[0]["avg_ts"] if out else None
        except (ValueError, KeyError, IndexError):
            self.note("could not parse llama-bench output")
            return None

    # ---------------------------------------------------------------- ours
    def ours(self, model, args):
        out = self.run([self.a.ours, "bench", "--model", model, "--json"] + self.a.ours_arg + args,
                       self.a.step_limit)
        if not out:
            return None
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.note("could not parse our bench output")
            return None

    def ours_decode1(self, model, n_in, n_out):
        j = self.ours(model, ["--num-requests", "2", "--max-num-seqs", "1", "--input-len",
                              str(n_in), "--output-len", str(n_out)])
        if not j:
            return None
        dt = j["latency_p99_s"] - j["ttft_p99_s"]  # the second request: both are its (max)
        return {"tok_s": (n_out - 1) / dt if dt > 0 else None, "bench": j}

    def ours_prefill(self, model, n, k):
        j1 = self.ours(model, ["--num-requests", "1", "--input-len", str(n), "--output-len", "1"])
        jk = j1 and self.ours(model, ["--num-requests", str(k + 1), "--max-num-seqs", "1",
                                      "--input-len", str(n), "--output-len", "1"])
        if not jk:
            return None
        dt = jk["elapsed_s"] - j1["elapsed_s"]
        return {"tok_s": k * n / dt if dt > 0 else None, "bench_1": j1, "bench_k": jk}

    # ---------------------------------------------------------------- rows
    def roofline(self, preset, ttype, batch=1, ctx=0):
        if not self.a.bw_gbs or not preset:
            return None
        p = gg.PRESETS[preset]
        w = gg.weight_bytes(p, ttype)
        kv_tok = p["layers"] * 2 * p["kv"] * (p["dim"] // p["heads"]) * 2
        return batch * self.a.bw_gbs * 1e9 / (w + batch * ctx * kv_tok)

    def do_decode1(self, row, model, preset, ttype, roof_type=None):
        n_in, n_out = self.a.decode_in, self.a.decode_out
        self.put(row, "roofline", tok_s=self.roofline(preset, roof_type or ttype),
                 bytes_as=roof_type or ttype)
        p = self.peer_batched(model, n_in, n_out, [1]).get(1)
        self.put(row, "peer", tok_s=p["speed_tg"] if p else None, raw=p)
        o = self.ours_decode1(model, n_in, n_out)
        self.put(row, "ours", **(o or {"tok_s": None}))

    def do_prefill(self, row, model, n, k):
        self.put(row, "peer", tok_s=self.peer_prefill(model, n))
        o = self.ours_prefill(model, n, k)
        self.put(row, "ours", **(o or {"tok_s": None}))

    def do_batched(self, model, preset, ttype, sizes):
        n = self.a.batch_len
        peer_sizes = [b for b in sizes if b <= 256]
        res = self.peer_batched(model, n, n, peer_sizes) if peer_sizes else {}
        for b in sizes:
            row = "batched%d" % b
            self.put(row, "roofline", tok_s=self.roofline(preset, ttype, b, 1.5 * n))
            p = res.get(b)
            if b in peer_sizes:
                self.put(row, "peer", tok_s=p["speed"] if p else None,
                         decode_tok_s=p["speed_tg"] if p else None, raw=p)
            j = self.ours(model, ["--num-requests", str(b), "--max-num-seqs", str(b),
                                  "--input-len", str(n), "--output-len", str(n)])
            self.put(row, "ours", tok_s=j["total_tokens_per_s"] if j else None,
                     output_tok_s=j["output_tokens_per_s"] if j else None, bench=j)

    def do_served(self, model, conc):
        row = "served%d" % conc
        n = self.a.batch_len
        for engine in ("peer", "ours"):
            if self.left() < 60:
                self.note("SKIP served (%s): %.0f s left" % (engine, self.left()))
                self.put(row, engine, tok_s=None)
                continue
            port = free_port()
            if engine == "ours":
                cmd = [self.a.ours, "serve", "--model", model, "--host", "127.0.0.1", "--port",
                       str(port), "--no-webui", "--log-level", "warn"] + self.a.serve_arg
            else:
                cmd = self.peer("llama-server") + [
                    "-m", model, "-ngl", "99", "--host", "127.0.0.1", "--port", str(port),
                    "-np", str(conc), "-c", str(conc * (2 * n + 64)), "-cb"] + self.a.peer_arg
            self.note("START %s" % shlex.join(cmd))
            slog = os.path.join(self.a.scratch, "server_%s.log" % engine)
            logf = open(slog, "w")
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
            try:
                if not wait_ready(port, proc, min(120, self.left() - 30)):
                    self.note("server (%s) not ready" % engine)
                    self.put(row, engine, tok_s=None)
                    continue
                url = "http://127.0.0.1:%d" % port
                jf = os.path.join(self.a.scratch, "served_%s.json" % engine)
                if os.path.exists(jf):
                    os.remove(jf)
                base = [self.a.ours, "bench", "--url", url, "--input-len", str(n),
                        "--output-len", str(n), "-q"]
                self.run(base + ["--concurrency", "8", "--num-prompts", "8", "--seed", "1"], 60)
                ok = self.run(base + ["--concurrency", str(conc), "--num-prompts", str(2 * conc),
                                      "--seed", "2", "--json", jf], self.a.step_limit)
                try:
                    j = json.load(open(jf))[0] if ok else None
                except (OSError, ValueError, IndexError):
                    j = None
                self.put(row, engine, tok_s=j["output_throughput"] if j else None,
                         itl_p50_ms=j["itl_ms"]["p50"] if j else None,
                         ttft_p50_ms=j["ttft_ms"]["p50"] if j else None,
                         failed=j["failed"] if j else None)
            finally:
                stop(proc)
                logf.close()
                with open(slog, errors="replace") as f:
                    self.log.write("--- server (%s) log tail ---\n%s\n" % (engine, f.read()[-3000:]))

    # ---------------------------------------------------------------- output
    def save(self):
        a = self.a
        doc = {"settings": {k: v for k, v in vars(a).items()}, "rows": self.rows,
               "elapsed_s": time.time() - self.t_start}
        with open(os.path.join(a.out, "peer.json.tmp"), "w") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(os.path.join(a.out, "peer.json.tmp"), os.path.join(a.out, "peer.json"))
        lines = ["%s; model %s (%s); small model %s; copy bandwidth %s GB/s" %
                 (a.device_name, os.path.basename(a.model), a.preset,
                  os.path.basename(a.small_model or "-"), a.bw_gbs or "?"),
                 "", "| | llama.cpp | nanoinfer | ratio | roofline | ours / roofline |",
                 "|---|---|---|---|---|---|"]
        order = list(LABELS) + sorted((k for k in self.rows if k not in LABELS),
                                      key=lambda k: (len(k), k))
        for rid in order:
            r = self.rows.get(rid)
            if not r:
                continue
            o = r.get("ours", {}).get("tok_s")
            p = r.get("peer", {}).get("tok_s")
            rf = r.get("roofline", {}).get("tok_s")
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                r["label"], fmt(p), fmt(o), "%.2fx" % (o / p) if o and p else "-", fmt(rf),
                "%.0f %%" % (100 * o / rf) if o and rf else "-"))
        with open(os.path.join(a.out, "peer_table.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


def label(rid):
    if rid in LABELS:
        return LABELS[rid]
    if rid.startswith("batched"):
        return "batched 128 in / 128 out, B = %s, total tok/s" % rid[len("batched"):]
    if rid.startswith("served"):
        return "served HTTP, 128 in / 128 out, c = %s, out tok/s" % rid[len("served"):]
    return rid


def fmt(v):
    return "-" if not v else "%.0f" % v if v >= 100 else "%.1f" % v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", default="build/nanoinfer")
    ap.add_argument("--peer-bin", default="build-peer/bin")
    ap.add_argument("--model", required=True, help="main GGUF (e.g. tinyllama f16)")
    ap.add_argument("--preset", help="its gen_gguf_random preset (for the roofline)")
    ap.add_argument("--type", default="f16", help="its tensor type (for the roofline)")
    ap.add_argument("--small-model", help="default-135M-shaped GGUF (smollm2 q4_1)")
    ap.add_argument("--small-preset", default="smollm2")
    ap.add_argument("--small-type", default="q4_1")
    ap.add_argument("--small-roof-type", default="bf16",
                    help="weight type of the small model's roofline: the CUDA backend widens "
                         "Q4_1 to BF16 at load, so it reads BF16 bytes (default bf16)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scratch", default="/tmp/peer-scratch", help="server logs, client JSON")
    ap.add_argument("--deadline", type=float, default=time.time() + 400, help="epoch seconds")
    ap.add_argument("--step-limit", type=float, default=120, help="limit per command (s)")
    ap.add_argument("--bw-gbs", type=float, help="copy bandwidth, GB/s (read + write)")
    ap.add_argument("--device-name", default="?")
    ap.add_argument("--rows", default="decode1,prefill512,prefill4000,batched,small1,served")
    ap.add_argument("--batch-sizes", default="64,256,512")
    ap.add_argument("--decode-in", type=int, default=128)
    ap.add_argument("--decode-out", type=int, default=256)
    ap.add_argument("--batch-len", type=int, default=128, help="batched: in = out = this")
    ap.add_argument("--served-conc", type=int, default=64)
    ap.add_argument("--ours-arg", action="append", default=[], help="extra bench flag (repeat)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    ap.add_argument("--peer-arg", action="append", default=[], help="extra llama.cpp flag")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.scratch, exist_ok=True)
    b = Bench(a)
    rows = a.rows.split(",")
    b.note("deadline in %.0f s; rows %s" % (b.left(), rows))
    for rid in rows:
        try:
            if rid == "decode1":
                b.do_decode1("decode1", a.model, a.preset, a.type)
            elif rid.startswith("prefill"):
                n = int(rid[len("prefill"):])
                b.do_prefill(rid, a.model, n, 8 if n <= 1024 else 3)
            elif rid == "batched":
                b.do_batched(a.model, a.preset, a.type, [int(x) for x in a.batch_sizes.split(",")])
            elif rid == "small1":
                if a.small_model:
                    b.do_decode1("small1", a.small_model, a.small_preset, a.small_type, a.small_roof_type)
            elif rid == "served":
                b.do_served(a.model, a.served_conc)
            else:
                b.note("unknown row %s" % rid)
        except Exception as e:  # a broken row must not lose the others
            b.note("ERROR in row %s: %r" % (rid, e))
    b.save()
    b.note("done; %.0f s left" % b.left())
    sys.stdout.write(open(os.path.join(a.out, "peer_table.md")).read())


if __name__ == "__main__":
    main()
