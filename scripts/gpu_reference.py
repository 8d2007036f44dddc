#!/usr/bin/env python3
"""gpu_reference.py - compare NanoInfer's CUDA backend with Hugging Face
transformers on real-size model shapes, on the same GPU.

Runs on the GPU host (torch + transformers installed, NanoInfer built with
USE_CUDA=1 so build/test/test_cuda_ref exists). For each shape it
  1. builds a random-init model with transformers (seeded) in BF16 on the GPU:
       llama3: Llama-3.2-1B shape (2048 x 16 layers, 32/8 heads, head_dim 64,
               vocab 128256, llama3 RoPE scaling, tied embeddings);
       qwen3:  Qwen3-0.6B shape (1024 x 28 layers, 16/8 heads, head_dim 128,
               qk-norm, vocab 151936, tied embeddings);
  2. saves it as safetensors + config.json, with test/models/tiny-llama3's
     tokenizer files next to it (mdl_load needs a tokenizer; one smaller than
     the model's vocabulary is accepted, and the token ids fed here are drawn
     from the whole vocabulary, so the tokenizer never matters);
  3. computes HF logits for positions P-1 .. N-1 of random tokens in FP32
     (the BF16 weights upcast; TF32 off) and in BF16;
  4. runs build/test/test_cuda_ref (NI_CUDA_REF_DIR) for our FP32 and BF16
     logits (prefill of P tokens, then one decode call per token), and prints
     relative errors (max |ours - ref| / max |ref| per row, worst row) and
     top-1 agreement.
The references are made from the saved files with from_pretrained (dtype
float32, then bfloat16), as a user would load them. Pass criteria (exit
status 1 otherwise): ours FP32 vs HF FP32 max rel err < 1e-3 and top-1
agreement 100% (barring near ties); ours BF16 vs HF FP32 L2 rel err below
max(1.5 x HF BF16's own, 1e-2) and top-1 agreement >= 90%.

Usage: python3 scripts/gpu_reference.py [--out DIR] [--shapes llama3,qwen3]
                                        [--prefix 64] [--tokens 96]
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(shape):
    from transformers import LlamaConfig, Qwen3Config
    if shape == "llama3":
        return LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192,
            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
            head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
            tie_word_embeddings=True, bos_token_id=400, eos_token_id=404,
            initializer_range=0.02)
    if shape == "qwen3":
        return Qwen3Config(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072,
            num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
            head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=None,
            eos_token_id=402, initializer_range=0.02)
    raise SystemExit(f"unknown shape {shape}")


def rel_err_rows(ours, ref):
    """max |ours - ref| / max |ref| per row"""
    d = np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max(axis=1)
    return d / np.abs(ref.astype(np.float64)).max(axis=1)


def rel_l2_rows(ours, ref):
    """||ours - ref|| / ||ref|| per row"""
    d = np.linalg.norm(ours.astype(np.float64) - ref.astype(np.float64), axis=1)
    return d / np.linalg.norm(ref.astype(np.float64), axis=1)


def run_shape(shape, out_dir, P, N, seed):
    from transformers import LlamaForCausalLM, Qwen3ForCausalLM
    d = os.path.join(out_dir, shape)
    mdir = os.path.join(d, "model")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(mdir)
    cfg = make_config(shape)
    torch.manual_seed(seed)
    t0 = time.time()
    cls = LlamaForCausalLM if shape == "llama3" else Qwen3ForCausalLM
    with torch.device("cuda"):
        model = cls(cfg)  # random init on the GPU (fast), then BF16
    model = model.to(torch.bfloat16).eval()
    # random RMSNorm weights too (HF initialises them to 1, which would hide a
    # missing or misplaced norm weight)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(mdir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "test/models/tiny-llama3", f), mdir)
    print(f"[{shape}] built and saved in {time.time() - t0:.1f} s -> {mdir}", flush=True)

    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, cfg.vocab_size, (N,), generator=g)
    with open(os.path.join(d, "tokens.txt"), "w") as f:
        f.write(f"{P} {N}\n" + " ".join(str(int(t)) for t in tokens) + "\n")

    del model
    torch.cuda.empty_cache()
    # References from the saved files, as a user would load them (a model cast
    # with .to() would also cast the RoPE inv_freq buffer to BF16)
    ids = tokens.view(1, -1).cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    refs = {}
    for name, dt in (("hf_fp32", torch.float32), ("hf_bf16", torch.bfloat16)):
        try:
            m = cls.from_pretrained(mdir, dtype=dt)
        except TypeError:
            m = cls.from_pretrained(mdir, torch_dtype=dt)
        m = m.cuda().eval()
        with torch.no_grad():
            refs[name] = m(ids).logits[0, P - 1:N].float().cpu().numpy()
        del m
        torch.cuda.empty_cache()

    env = dict(os.environ, NI_CUDA_REF_DIR=d, NI_CUDA_REF_DTYPES="fp32 bf16")
    exe = os.path.join(ROOT, "build/test/test_cuda_ref")
    t0 = time.time()
    r = subprocess.run([exe], env=env, cwd=ROOT)
    if r.returncode != 0:
        print(f"[{shape}] test_cuda_ref failed ({r.returncode})")
        return False
    print(f"[{shape}] test_cuda_ref ran in {time.time() - t0:.1f} s", flush=True)
    V = cfg.vocab_size
    ours = {dt: np.fromfile(os.path.join(d, f"ours_{dt}.bin"), dtype=np.float32).reshape(-1, V)
            for dt in ("fp32", "bf16")}
    ok = True
    ref32 = refs["hf_fp32"]
    top_ref = ref32.argmax(axis=1)
    rows = {"ours fp32": ours["fp32"], "ours bf16": ours["bf16"], "hf bf16": refs["hf_bf16"]}
    print(f"[{shape}] {'logits':>9} vs hf fp32: {'max rel err':>11} {'L2 rel err':>11}"
          f" {'top-1 agree':>12}   ({N - P + 1} positions, vocab {V})")
    errs = {}
    for name, o in rows.items():
        em, e2 = rel_err_rows(o, ref32), rel_l2_rows(o, ref32)
        agree = (o.argmax(axis=1) == top_ref).mean()
        errs[name] = (em.max(), e2.max(), agree)
        print(f"[{shape}] {name:>9} vs hf fp32: {em.max():11.3g} {e2.max():11.3g}"
              f" {100 * agree:11.1f}%")
    # FP32: a top-1 miss is only excused by a near tie in the reference
    srt = np.sort(ref32, axis=1)
    gap = (srt[:, -1] - srt[:, -2]) / np.abs(ref32).max(axis=1)
    a32 = ours["fp32"].argmax(axis=1) == top_ref
    if errs["ours fp32"][0] >= 1e-3 or np.any(~a32 & (gap > 1e-4)):
        ok = False
    # BF16: no worse than HF's own BF16 error (x1.5, or 1e-2 L2), top-1 >= 90%
    if errs["ours bf16"][1] >= max(1.5 * errs["hf bf16"][1], 1e-2) or errs["ours bf16"][2] < 0.9:
        ok = False
    print(f"[{shape}] {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/ni_ref")
    ap.add_argument("--shapes", default="llama3,qwen3")
    ap.add_argument("--prefix", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("SKIP: no GPU visible to torch")
        return 0
    os.makedirs(a.out, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    ok = True
    for s in a.shapes.split(","):
        ok &= run_shape(s, a.out, a.prefix, a.tokens, a.seed)
    print("gpu_reference:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
