#!/usr/bin/env python3
"""plot_peer.py - PNG of nanoinfer vs llama.cpp from peer_bench.py's peer.json.

Left panel: throughput (total tok/s, 128 in / 128 out) against batch size,
both engines, with the weight + KV bandwidth bound when peer.json has it;
batch size 1 is the single-stream decode row. Right panel: every row of the
table as grouped bars (log scale), so prefill and served rows are seen too.
Without matplotlib it prints a message and exits 0 (the table is the result;
the plot is a convenience).

Usage: python3 scripts/plot_peer.py peer.json out.png
"""
import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_peer.py peer.json out.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_peer.py: matplotlib not installed, no plot written")
        return
    doc = json.load(open(sys.argv[1]))
    rows = doc["rows"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    series = {"ours": ("nanoinfer", "o-"), "peer": ("llama.cpp", "s-"),
              "roofline": ("bandwidth bound", "k--")}
    for eng, (name, style) in series.items():
        pts = []
        if rows.get("decode1", {}).get(eng, {}).get("tok_s"):
            pts.append((1, rows["decode1"][eng]["tok_s"]))
        for rid, r in rows.items():
            if rid.startswith("batched") and r.get(eng, {}).get("tok_s"):
                pts.append((int(rid[len("batched"):]), r[eng]["tok_s"]))
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequences decoded together (B)")
    ax.set_ylabel("tok/s (B = 1: decode; B > 1: total, 128 in / 128 out)")
    ax.set_title("throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend()
    labels, ours, peer = [], [], []
    for rid, r in rows.items():
        labels.append(rid)
        ours.append(r.get("ours", {}).get("tok_s") or 0)
        peer.append(r.get("peer", {}).get("tok_s") or 0)
    x = range(len(labels))
    bx.bar([i - 0.2 for i in x], peer, 0.4, label="llama.cpp")
    bx.bar([i + 0.2 for i in x], ours, 0.4, label="nanoinfer")
    for i, (o, p) in enumerate(zip(ours, peer)):
        if o and p:
            bx.text(i, max(o, p), "%.2fx" % (o / p), ha="center", va="bottom", fontsize=8)
    bx.set_xticks(list(x))
    bx.set_xticklabels(labels, rotation=30, ha="right")
    bx.set_yscale("log")
    bx.set_ylabel("tok/s")
    bx.set_title("every row (ratio = nanoinfer / llama.cpp)")
    bx.legend()
    s = doc.get("settings", {})
    fig.suptitle("%s - %s" % (s.get("device_name", "?"), s.get("model", "?").split("/")[-1]),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print("plot_peer.py: wrote %s" % sys.argv[2])


if __name__ == "__main__":
    main()
