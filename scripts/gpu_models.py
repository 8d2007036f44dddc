"""gpu_models.py - the random-init BF16 benchmark models of the one-call GPU
scripts (gpu_all.sh, gpu_att_lat.sh), built with transformers on the GPU
machine: /tmp/l1b (Llama-3.2-1B shape, gpu_reference.make_config("llama3"),
8192 positions) and /tmp/smol (SmolLM2-135M shape: 576 x 30 layers, 9/3
heads, vocab 49152, tied embeddings), both with tiny-llama3's tokenizer
files. Seeded (torch.manual_seed(0)): the same weights every run.
Usage: python3 scripts/gpu_models.py"""
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_reference import make_config  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def save(cfg, d):
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg)
    m = m.to(torch.bfloat16)
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join("test/models/tiny-llama3", f), d)
    print(d, "params", sum(p.numel() for p in m.parameters()), flush=True)


def main():
    cfg = make_config("llama3")
    cfg.max_position_embeddings = 8192
    save(cfg, "/tmp/l1b")
    smol = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                       tie_word_embeddings=True, rope_theta=100000.0,
                       max_position_embeddings=8192, rms_norm_eps=1e-5)
    save(smol, "/tmp/smol")


if __name__ == "__main__":
    main()
