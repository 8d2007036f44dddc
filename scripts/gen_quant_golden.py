#!/usr/bin/env python3
"""Writes the dequantization / float-conversion goldens test/test_quant.c checks.

Reference: the python `gguf` package (gguf-py, llama.cpp's own python
implementation of the ggml block formats: gguf.quants.quantize/dequantize) and
numpy for IEEE half conversions. Every float is stored as its uint32 bit
pattern (exact, and NaN/inf survive JSON).

Outputs (deterministic, seed 1234):
  test/fixtures/quant_blocks.json   raw blocks + expected floats for F16, BF16,
                                    Q8_0, Q4_0, Q4_1: gguf-py quantize() of random
                                    data at many scales plus edge blocks, and random
                                    raw bytes (arbitrary scales incl. subnormal/inf/NaN);
                                    block sizes from gguf.constants.GGML_QUANT_SIZES
  test/fixtures/quant_convert.json  f32 -> f16 (numpy astype, round-half-even) and
                                    f32 -> bf16 (gguf-py BF16, as ggml) on targeted
                                    inputs: every f16 rounding tie +-1 ulp, subnormals,
                                    overflow/underflow edges, inf, NaN payloads; plus
                                    wsum64 checksums of (a) f16 -> f32 for all 65536 halves
                                    and (b) f32 -> f16 over the full tie sweep
  test/fixtures/quant_model.json    first 64 values and a hash of all values of three
                                    tensors of models/SmolLM2-135M-Instruct.Q4_1.gguf
                                    (Q8_0 token_embd, a Q4_1 matrix, an F32 norm),
                                    dequantized by gguf-py

Usage: python3 scripts/gen_quant_golden.py [--model PATH] [--outdir test/fixtures]
"""
import argparse
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES

SEED = 1234
K_MUL = 0x9E3779B97F4A7C15


def wsum64(words):
    """Order-sensitive 64-bit checksum of an unsigned word array, vectorised (the C test
    computes the same): sum_i w_i * ((i * K) | 1) mod 2^64. Each multiplier is odd, so
    changing any single word (by less than 2^32) always changes the sum."""
    w = np.ascontiguousarray(words).ravel().astype(np.uint64)
    i = np.arange(w.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        m = (i * np.uint64(K_MUL)) | np.uint64(1)
        return int(np.sum(w * m, dtype=np.uint64))


def bits(f32):
    return [int(x) for x in np.ascontiguousarray(f32, dtype=np.float32).view(np.uint32).ravel()]


def case(qtype, name, raw, expected):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).ravel()
    expected = np.asarray(expected, dtype=np.float32).ravel()
    be, bb = GGML_QUANT_SIZES[qtype]
    assert raw.size % bb == 0 and expected.size == raw.size // bb * be, (name, raw.size, expected.size)
    return {"type": qtype.name, "name": name, "n": int(expected.size), "data_hex": raw.tobytes().hex(),
            "expected_bits": bits(expected)}


def quantized_cases(rng, qtype):
    """quantize() -> bytes, dequantize() -> expected, for rows of 4 blocks."""
    out = []
    be, bb = GGML_QUANT_SIZES[qtype]
    rows = {}
    for scale in (1e-6, 1e-3, 0.02, 1.0, 37.5, 1e3, 5e4):
        rows[f"normal_x{scale:g}"] = rng.standard_normal(4 * be).astype(np.float32) * np.float32(scale)
    rows["uniform_pos"] = rng.uniform(0.5, 3.0, 4 * be).astype(np.float32)
    rows["uniform_neg"] = rng.uniform(-3.0, -0.5, 4 * be).astype(np.float32)
    z = np.zeros(4 * be, np.float32)
    rows["zeros"] = z
    c = np.full(4 * be, -1.25, np.float32)
    rows["constant"] = c
    sp = np.zeros(4 * be, np.float32)
    sp[::7] = rng.standard_normal(sp[::7].size).astype(np.float32) * 10
    rows["sparse_outliers"] = sp
    ramp = np.linspace(-8, 7, 4 * be, dtype=np.float32)
    rows["ramp"] = ramp
    for name, x in rows.items():
        q = gguf.quants.quantize(x.reshape(1, -1), qtype)
        deq = gguf.quants.dequantize(q, qtype)
        out.append(case(qtype, name, q, deq))
    # arbitrary raw blocks: any f16 scale (subnormal, inf, NaN, negative), any quants
    raw = rng.integers(0, 256, size=(16 * bb,), dtype=np.uint8)
    if qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
        special = [0x0000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x8000, 0xfbff]
        for i, s in enumerate(special):
            raw[i * bb:i * bb + 2] = np.array([s], dtype="<u2").view(np.uint8)
    deq = gguf.quants.dequantize(raw.reshape(1, -1), qtype)
    out.append(case(qtype, "raw_random_bytes", raw, deq))
    return out


def half_cases(rng):
    out = []
    # every class of half: zero, subnormal, normal, max, inf, NaN (several payloads), both signs
    specials = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x0200, 0x03ff, 0x0400, 0x3c00, 0x3555, 0x7bff, 0xfbff,
                         0x7c00, 0xfc00, 0x7c01, 0x7e00, 0xfe00, 0x7fff, 0xffff, 0x7d55], dtype="<u2")
    rnd = rng.integers(0, 65536, size=237, dtype=np.uint16)
    h = np.concatenate([specials, rnd]).astype("<u2")
    out.append(case(QT.F16, "f16_specials_and_random", h.view(np.uint8), gguf.quants.dequantize(h.view(np.uint8), QT.F16)))
    b = np.concatenate([specials, rnd]).astype("<u2")
    out.append(case(QT.BF16, "bf16_specials_and_random", b.view(np.uint8),
                    gguf.quants.dequantize(b.view(np.uint8).reshape(1, -1), QT.BF16)))
    x = rng.standard_normal(64).astype(np.float32)
    out.append(case(QT.F32, "f32_random", x.view(np.uint8), x))
    return out


def tie_sweep_inputs():
    """For every finite non-negative half h < 0x7bff: the f32 midpoint between h and h+1,
    and that midpoint +-1 ulp; then the same negated. The midpoints need 12 significant
    bits, so they are exact f32 values: each is a round-half-even tie."""
    h = np.arange(0, 0x7bff, dtype=np.uint16)
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.all(mid.astype(np.float64) == (lo + hi) / 2)
    mb = mid.view(np.uint32)
    pos = np.stack([mb, mb - 1, mb + 1], axis=1).ravel()
    pos = pos[pos != 0xFFFFFFFF]  # 0 - 1 wraps for h = 0: drop it
    allb = np.concatenate([pos, pos | np.uint32(0x80000000)]).astype(np.uint32)
    return allb


def convert_doc(rng):
    # targeted f32 inputs
    t = []
    f = lambda v: int(np.array([v], np.float32).view(np.uint32)[0])
    for v in (0.0, -0.0, 1.0, -1.0, 0.1, 1 / 3, 65504.0, 65519.0, 65519.99, 65520.0, 65536.0, 1e10, -1e10,
              2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -26, 2.0 ** -24 * 1.5,
              2.0 ** -24 * 2.5, 6.1e-5, 5.96e-8, 3.14159265, 1e-45, 1.17549435e-38, 3.4028235e38):
        t.append(f(v))
        t.append(f(-v))
    t += [0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fbfffff, 0x7fffffff, 0xff800001,
          0x7f7fffff, 0x00000001, 0x007fffff, 0x00800000, 0x3f808000, 0x3f818000, 0x3f80ffff, 0x3f817fff,
          0x3f800001, 0x477fefff, 0x477ff000, 0x477fe000, 0x33000000, 0x33000001, 0x337fffff, 0x33800000,
          0x387fc000, 0x387fe000, 0x38800000]
    sweep = tie_sweep_inputs()
    # a readable sample of the sweep around the interesting places + random sample
    sample_idx = np.concatenate([np.arange(0, 60), np.arange(3 * 1020, 3 * 1030), np.arange(3 * 0x3bf0, 3 * 0x3c10),
                                 np.arange(3 * 0x7bf0, 3 * 0x7bfe), rng.integers(0, sweep.size, 600)])
    t += [int(x) for x in sweep[sample_idx]]
    t += [int(x) for x in rng.integers(0, 2 ** 32, 2000, dtype=np.uint64).astype(np.uint32)]
    t = np.array(t, dtype=np.uint32)
    with np.errstate(over="ignore"):
        f16 = t.view(np.float32).astype(np.float16).view(np.uint16)
    bf16 = gguf.quants.quantize(t.view(np.float32).reshape(1, -1), QT.BF16).view("<u2").ravel()
    # sanity: torch (round-half-even) agrees with gguf-py BF16 on non-NaN inputs
    try:
        import torch
        tb = torch.from_numpy(t.view(np.float32).copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        nn = ~np.isnan(t.view(np.float32))
        assert np.array_equal(tb[nn], bf16[nn]), "torch and gguf-py disagree on bf16 rounding"
    except ImportError:
        pass
    with np.errstate(over="ignore"):
        sweep_f16 = sweep.view(np.float32).astype(np.float16).view(np.uint16)
    all_h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    all_h_f32 = all_h.view(np.float16).astype(np.float32).view(np.uint32)
    return {
        "generator": "scripts/gen_quant_golden.py (numpy %s, gguf-py)" % np.__version__,
        "f32_bits": [int(x) for x in t],
        "f16_bits": [int(x) for x in f16],
        "bf16_bits": [int(x) for x in bf16],
        "tie_sweep": {"count": int(sweep.size), "f16_wsum64": "%016x" % wsum64(sweep_f16),
                      "inputs_wsum64": "%016x" % wsum64(sweep)},
        "f16_to_f32_all_wsum64": "%016x" % wsum64(all_h_f32),
    }


def model_doc(path):
    r = gguf.GGUFReader(path)
    names = ["token_embd.weight", "blk.0.ffn_down.weight", "blk.0.attn_norm.weight"]
    out = {"model": os.path.basename(path), "size": os.path.getsize(path), "tensors": []}
    for t in r.tensors:
        if t.name not in names:
            continue
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
        out["tensors"].append({"name": t.name, "type": t.tensor_type.name, "n": int(deq.size),
                               "first64_bits": bits(deq[:64]), "all_wsum64": "%016x" % wsum64(deq.view(np.uint32)),
                               "sum": float(deq.astype(np.float64).sum())})
    assert len(out["tensors"]) == 3
    return out


def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--outdir", default="test/fixtures")
    a = ap.parse_args()
    np.seterr(all="ignore")  # the edge cases overflow to inf / make NaN on purpose
    rng = np.random.default_rng(SEED)
    os.makedirs(a.outdir, exist_ok=True)
    cases = half_cases(rng)
    for qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
        cases += quantized_cases(rng, qt)
    sizes = {qt.name: list(GGML_QUANT_SIZES[qt]) for qt in (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1)}
    ids = {qt.name: int(qt) for qt in (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1)}
    dump({"generator": "scripts/gen_quant_golden.py (gguf-py quantize/dequantize, seed %d)" % SEED,
          "block_sizes": sizes, "type_ids": ids, "cases": cases}, os.path.join(a.outdir, "quant_blocks.json"))
    dump(convert_doc(rng), os.path.join(a.outdir, "quant_convert.json"))
    if os.path.exists(a.model):
        dump(model_doc(a.model), os.path.join(a.outdir, "quant_model.json"))
    else:
        print(f"{a.model}: not found, quant_model.json not written")


if __name__ == "__main__":
    main()
