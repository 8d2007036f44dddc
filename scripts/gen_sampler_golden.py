#!/usr/bin/env python3
"""Writes test/fixtures/sampler_golden.json: final sampling distributions for
fixed logits / prompt / output tokens / params, computed with torch by the
code order of vLLM v0 (vllm/model_executor/layers/sampler.py, Sampler.forward,
and the OpenAI server's logit_bias logits processor):

  logit_bias (logits processor) -> _apply_penalties (repetition on prompt|output,
  then frequency, then presence) -> logits / temperature -> _apply_top_k_top_p
  -> _apply_min_p -> softmax

test/test_sampler.c feeds each case to smp_distribution() and compares the
support exactly and the probabilities to 1e-5. Cases whose top_p or min_p
decision lies within 1e-4 of its threshold are rejected here (float32 vs
double rounding would make them ambiguous), so the comparison is exact.

Usage: python3 scripts/gen_sampler_golden.py [--out PATH]
"""
import argparse
import json
import os

import numpy as np
import torch


def bin_counts_and_mask(tokens, vocab):
    counts = torch.zeros(vocab, dtype=torch.long)
    if tokens:
        counts.scatter_add_(0, torch.tensor(tokens, dtype=torch.long),
                            torch.ones(len(tokens), dtype=torch.long))
    return counts, counts > 0


def vllm_v0_distribution(logits, prompt, output, prm):
    """Returns (probs float32 tensor, ambiguity margin)."""
    vocab = logits.numel()
    logits = logits.clone().float()
    # logits processor: logit_bias (vllm/entrypoints/openai/logits_processors.py)
    for tok, bias in prm.get("logit_bias", []):
        logits[tok] += bias
    # _apply_penalties
    _, prompt_mask = bin_counts_and_mask(prompt, vocab)
    out_counts, out_mask = bin_counts_and_mask(output, vocab)
    rep = torch.full((vocab,), prm["repetition_penalty"], dtype=torch.float32)
    rep[~(prompt_mask | out_mask)] = 1.0
    logits = torch.where(logits > 0, logits / rep, logits * rep)
    logits -= prm["frequency_penalty"] * out_counts
    logits -= prm["presence_penalty"] * out_mask
    if prm["temperature"] < 1e-5:
        probs = torch.zeros(vocab)
        probs[int(torch.argmax(logits))] = 1.0
        return probs, 1.0
    logits = logits / prm["temperature"]
    margin = 1.0
    # _apply_top_k_top_p
    k = prm["top_k"] if prm["top_k"] > 0 else vocab
    k = min(k, vocab)
    p = prm["top_p"]
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    kth = logits_sort[vocab - k]
    logits_sort = logits_sort.masked_fill(logits_sort < kth, -float("inf"))
    probs_sort = logits_sort.softmax(dim=-1)
    probs_sum = probs_sort.cumsum(dim=-1)
    if p < 1.0:
        alive = probs_sort > 0
        margin = min(margin, float((probs_sum[alive] - (1 - p)).abs().min()))
    top_p_mask = probs_sum <= 1 - p
    top_p_mask[-1] = False
    logits_sort = logits_sort.masked_fill(top_p_mask, -float("inf"))
    logits = torch.empty_like(logits_sort).scatter_(0, logits_idx, logits_sort)
    # _apply_min_p
    if prm["min_p"] > 0:
        probs = torch.softmax(logits, dim=-1)
        top = probs.max()
        alive = probs > 0
        ratio = probs[alive] / top
        margin = min(margin, float((ratio - prm["min_p"]).abs().min()))
        logits = logits.masked_fill(probs < prm["min_p"] * top, -float("inf"))
    return torch.softmax(logits, dim=-1), margin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..",
                                                  "test", "fixtures", "sampler_golden.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(20240611)

    base = dict(temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                presence_penalty=0.0, frequency_penalty=0.0, logit_bias=[])
    variants = [
        ("plain_t1", {}),
        ("temp_0.6", dict(temperature=0.6)),
        ("temp_1.7", dict(temperature=1.7)),
        ("greedy_penalised", dict(temperature=0.0, repetition_penalty=1.8, presence_penalty=1.0,
                                  frequency_penalty=0.7)),
        ("top_k_7", dict(top_k=7, temperature=0.9)),
        ("top_p_0.8", dict(top_p=0.8)),
        ("min_p_0.1", dict(min_p=0.1, temperature=1.3)),
        ("penalties", dict(repetition_penalty=1.3, presence_penalty=0.4,
                           frequency_penalty=0.3)),
        ("neg_penalties", dict(repetition_penalty=0.8, presence_penalty=-0.5,
                               frequency_penalty=-0.2)),
        ("bias", dict(logit_bias="auto")),
        ("combined", dict(logit_bias="auto", repetition_penalty=1.2, presence_penalty=0.3,
                          frequency_penalty=0.2, temperature=0.8, top_k=20, top_p=0.9,
                          min_p=0.05)),
        ("combined_hot", dict(logit_bias="auto", repetition_penalty=1.5, frequency_penalty=0.5,
                              temperature=1.9, top_k=40, top_p=0.95, min_p=0.02)),
    ]
    cases = []
    for vocab in (64, 1000):
        for name, over in variants:
            for attempt in range(100):
                logits = torch.tensor(rng.normal(0.0, 2.5, vocab), dtype=torch.float32)
                prompt = [int(x) for x in rng.integers(0, vocab, 12)]
                output = [int(x) for x in rng.integers(0, vocab, 9)]
                output += output[:3]  # repeats, so frequency differs from presence
                prm = dict(base)
                prm.update(over)
                if prm["logit_bias"] == "auto":
                    ids = rng.choice(vocab, 4, replace=False)
                    prm["logit_bias"] = [[int(ids[0]), 5.0], [int(ids[1]), -100.0],
                                         [int(ids[2]), 2.5], [int(ids[3]), -3.25]]
                probs, margin = vllm_v0_distribution(logits, prompt, output, prm)
                if margin > 1e-4:
                    break
            else:
                raise SystemExit(f"{name}: no unambiguous case found")
            cases.append(dict(name=f"{name}_v{vocab}", vocab=vocab,
                              logits=[float(x) for x in logits], prompt=prompt, output=output,
                              params=prm, probs=[float(x) for x in probs]))
    with open(args.out, "w") as f:
        json.dump(dict(generator="scripts/gen_sampler_golden.py",
                       reference="vLLM v0 sampler order, torch " + torch.__version__,
                       cases=cases), f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
