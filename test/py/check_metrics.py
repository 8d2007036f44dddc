#!/usr/bin/env python3
"""check_metrics.py FILE MODEL_NAME - the /metrics text: well-formed, and the vllm: series agree.

Parses the Prometheus text exposition (0.0.4) in FILE and checks:
  - every sample belongs to a metric declared by `# TYPE` (a histogram's _bucket/_sum/_count);
  - every histogram's buckets are cumulative (non-decreasing, ending in le="+Inf" == _count);
  - the vLLM-named series (docs/metrics.md) exist, carry model_name=MODEL_NAME and engine="0",
    and hold the same values as the nanoinfer_ series they mirror (gauges, counters, every bucket
    of the histograms); vllm:kv_cache_usage_perc is in [0, 1].
Prints the number of series checked; exits 1 naming the first disagreement.
"""
import re
import sys

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# vllm name -> nanoinfer name (gauges and counters, no labels on our side)
SCALARS = {
    "vllm:num_requests_running": "nanoinfer_num_seqs_running",
    "vllm:num_requests_waiting": "nanoinfer_num_seqs_waiting",
    "vllm:kv_cache_usage_perc": "nanoinfer_kv_cache_usage_ratio",
    "vllm:prefix_cache_queries_total": "nanoinfer_prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total": "nanoinfer_prefix_cache_hits_total",
    "vllm:num_preemptions_total": "nanoinfer_preemptions_total",
    "vllm:prompt_tokens_total": "nanoinfer_prompt_tokens_total",
    "vllm:generation_tokens_total": "nanoinfer_generation_tokens_total",
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "nanoinfer_time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "nanoinfer_inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds": "nanoinfer_inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds": "nanoinfer_e2e_request_latency_seconds",
}


def fail(msg):
    print("metrics: " + msg)
    sys.exit(1)


def main():
    text = open(sys.argv[1]).read()
    model = sys.argv[2]
    types = {}
    samples = {}  # (name, frozenset(labels except model_name/engine)) -> value
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            fail("bad sample line: %r" % line)
        name, labels, value = m.group(1), dict(LABEL.findall(m.group(3) or "")), float(m.group(4))
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in types and not (base in types and types[base] == "histogram"):
            fail("sample of an undeclared metric: %r" % line)
        if name.startswith("vllm:"):
            if labels.get("model_name") != model or labels.get("engine") != "0":
                fail("%s: labels %s, want model_name=%r engine=\"0\"" % (name, labels, model))
            labels.pop("model_name")
            labels.pop("engine")
        samples[(name, frozenset(labels.items()))] = value
    n = 0

    def get(name, **labels):
        key = (name, frozenset(labels.items()))
        if key not in samples:
            fail("missing series %s%s" % (name, labels or ""))
        return samples[key]

    for v, ours in SCALARS.items():
        if get(v) != get(ours):
            fail("%s = %g but %s = %g" % (v, get(v), ours, get(ours)))
        n += 1
    usage = get("vllm:kv_cache_usage_perc")
    if not 0 <= usage <= 1:
        fail("vllm:kv_cache_usage_perc = %g, not in [0, 1]" % usage)
    for reason in ("stop", "length", "abort", "error"):
        v = get("vllm:request_success_total", finished_reason=reason)
        ours = get("nanoinfer_sequences_finished_total", reason=reason)
        if v != ours:
            fail("request_success_total{%s} = %g, sequences_finished_total = %g" % (reason, v, ours))
        n += 1
    for v, ours in HISTOGRAMS.items():
        if types.get(v) != "histogram":
            fail("%s is not declared a histogram" % v)
        les = sorted((dict(k[1])["le"] for k in samples if k[0] == v + "_bucket"),
                     key=lambda s: float("inf") if s == "+Inf" else float(s))
        if not les or les[-1] != "+Inf":
            fail("%s has no le=\"+Inf\" bucket" % v)
        prev = 0
        for le in les:
            b = get(v + "_bucket", le=le)
            if b != get(ours + "_bucket", le=le):
                fail("%s_bucket{le=%s} = %g, %s has %g" % (v, le, b, ours,
                                                          get(ours + "_bucket", le=le)))
            if b < prev:
                fail("%s buckets are not cumulative at le=%s" % (v, le))
            prev = b
        if get(v + "_count") != prev or get(v + "_count") != get(ours + "_count"):
            fail("%s_count = %g, +Inf bucket %g, %s_count %g" % (v, get(v + "_count"), prev, ours,
                                                                get(ours + "_count")))
        if get(v + "_sum") != get(ours + "_sum"):
            fail("%s_sum differs from %s_sum" % (v, ours))
        n += 1
    print("%d vllm: series agree with the nanoinfer_ ones (%d samples)" % (n, len(samples)))


main()
