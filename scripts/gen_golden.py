#!/usr/bin/env python3
"""gen_golden.py - golden outputs of SmolLM2-135M-Instruct (Q4_1 GGUF) from
Hugging Face transformers, for end-to-end checks of the C engine.

Reference: transformers AutoModelForCausalLM.from_pretrained(models/,
gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf, dtype=float32,
attn_implementation="eager"): transformers dequantizes every Q4_1/Q8_0 tensor
to FP32 (with gguf-py) and undoes llama.cpp's q/k row permutation, so the model
is exactly the GGUF's weights in FP32 with HF's half-split RoPE. The tokenizer
is AutoTokenizer.from_pretrained(models/, gguf_file=...), built from the GGUF's
tokenizer.ggml.* metadata. Generation is a manual greedy loop (argmax of the
fp32 logits, KV cache, batch 1) that never stops at EOS: every prompt gets
exactly 64 new tokens, EOS included wherever the model emits it.

Requires: torch, transformers>=5, gguf, accelerate (transformers refuses to
load GGUF without it: pip install accelerate), and the model file
(scripts/fetch-model.sh). Rerun from the repository root (~1-2 minutes on 2 cores):
    python3 scripts/gen_golden.py [path/to/model.gguf]

Writes:
    test/fixtures/golden_smollm2.json        prompts, ids, 64 greedy ids each,
                                             GGUF facts, chat template, versions
    test/fixtures/golden_smollm2_logits.bin  first-step logits of 3 prompts:
                                             little-endian float32
                                             [rows][vocab], rows listed in the
                                             JSON's "logits_bin" entry
Schema: see scripts/README.md. Deterministic: same inputs -> same bytes.

Checks done before anything is written (the script aborts if one fails):
  * layer-0 q/k/v weights and the Q8_0 token embedding from transformers equal
    gguf-py's own dequantization (q/k after llama.cpp's permutation);
  * "The capital of France is" continues with " Paris";
  * every prompt tokenizes identically with the GGUF-derived tokenizer and with
    the same tokenizer given llama.cpp's "smollm" pre-tokenizer (individual
    digits before the GPT-2 regex), which is what SmolLM2's own tokenizer.json
    does; the chat prompt ids equal apply_chat_template(tokenize=True).
"""
import hashlib
import inspect
import json
import os
import sys

import numpy as np
import torch

torch.set_num_threads(2)

import gguf  # noqa: E402
import transformers  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT_JSON = os.path.join(ROOT, "test", "fixtures", "golden_smollm2.json")
OUT_BIN = os.path.join(ROOT, "test", "fixtures", "golden_smollm2_logits.bin")
N_NEW = 64
STABLE_MARGIN = 1e-2  # n_stable = first step whose top1-top2 margin is below this

TEXT_PROMPTS = [
    ("capital_france", "The capital of France is"),
    ("planet", "The largest planet in the solar system is"),
    ("primary_colors", "The three primary colors are"),
    ("photosynthesis", "Photosynthesis is the process by which"),
    ("python_fib", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ("c_main", "#include <stdio.h>\n\nint main(void) {\n"),
    ("numpy", "import numpy as np\nx = np.arange(10)\nprint("),
    ("fruit_list", "Here is a list of fruits:\n1. Apple\n2."),
    ("arith_qa", "Q: What is 12 + 30?\nA:"),
    ("water_boils", "Water boils at 100 degrees Celsius, which is"),
    ("french", "La capitale de l'Allemagne est"),
    ("chinese", "中国的首都是"),
    ("leading_ws", "   \n\nOnce upon a time"),
    ("letter", "Dear Sir or Madam,\n\nI am writing to"),
    ("emoji", "I love pizza 🍕 because"),
    ("json", '{"name": "Alice", "age": 30, "city": "'),
]

CHAT_PROMPTS = [
    ("chat_capital", [{"role": "user", "content": "What is the capital of France?"}]),
    ("chat_system_colors", [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors."}]),
    ("chat_multiturn_joke", [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a joke about cats."}]),
    ("chat_code_reverse", [{"role": "user", "content": "Write a Python function that reverses a string."}]),
    ("chat_translate", [{"role": "user", "content": "Translate 'good morning' into French."}]),
    ("chat_pirate", [
        {"role": "system", "content": "You are a pirate. Always answer like a pirate."},
        {"role": "user", "content": "Where is the treasure?"}]),
    ("chat_math", [{"role": "user", "content": "What is 15 * 4?"}]),
    ("chat_haiku", [{"role": "user", "content": "Write a haiku about autumn."}]),
    ("chat_nn", [
        {"role": "system", "content": "You are a helpful teacher."},
        {"role": "user", "content": "Explain what a neural network is in one sentence."}]),
    ("chat_multiturn_math", [
        {"role": "system", "content": "You are a math tutor."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 3 + 5?"}]),
    ("chat_italian", [{"role": "user", "content": "Quelle est la capitale de l'Italie ?"}]),
    ("chat_planets", [{"role": "user", "content": "List the planets of the solar system."}]),
    ("chat_summarize", [{"role": "user", "content":
                         "Summarize in one line:\n\nThe cat sat on the mat. It was warm and happy.\n"}]),
    ("chat_hi", [{"role": "user", "content": "hi"}]),
]

# prompts whose first-step (prompt's last position) logits go into the .bin
LOGITS_PROMPTS = ["capital_france", "python_fib", "chat_capital"]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def gguf_facts(reader):
    names = [t.name for t in reader.tensors]
    types = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    keys = ["general.architecture", "general.name", "llama.block_count", "llama.context_length",
            "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
            "llama.attention.head_count_kv", "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
            "llama.rope.dimension_count", "general.file_type", "tokenizer.ggml.model",
            "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id"]
    facts = {k: field(reader, k) for k in keys}
    facts["llama.rope.scaling.type"] = field(reader, "llama.rope.scaling.type")
    facts["has_output_weight"] = "output.weight" in names
    facts["tensor_count"] = len(names)
    facts["tensor_types"] = dict(sorted(types.items()))
    facts["token_embd_type"] = emb.tensor_type.name
    facts["n_merges"] = len(reader.fields["tokenizer.ggml.merges"].data)
    tt = field(reader, "tokenizer.ggml.token_type")
    toks = field(reader, "tokenizer.ggml.tokens")
    facts["control_tokens"] = {str(i): toks[i] for i, t in enumerate(tt) if t == 3}
    return facts


def gguf_tensor_f32(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    a = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.array(a, dtype=np.float32))  # writable copy


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF half-split -> adjacent pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def check_weights(model, reader, facts):
    nh, nkv = facts["llama.attention.head_count"], facts["llama.attention.head_count_kv"]
    a0 = model.model.layers[0].self_attn
    pairs = [
        ("blk.0.attn_q.weight", llama_cpp_permute(a0.q_proj.weight.detach(), nh)),
        ("blk.0.attn_k.weight", llama_cpp_permute(a0.k_proj.weight.detach(), nkv)),
        ("blk.0.attn_v.weight", a0.v_proj.weight.detach()),
        ("token_embd.weight", model.model.embed_tokens.weight.detach()),
        ("output_norm.weight", model.model.norm.weight.detach()),
    ]
    for name, hf in pairs:
        ref = gguf_tensor_f32(reader, name)
        assert ref.shape == hf.shape, (name, ref.shape, hf.shape)
        assert torch.equal(ref, hf), f"{name}: transformers' weights differ from gguf-py's"


def f32(x):
    """A float32 value as the shortest decimal that round-trips through float32."""
    return float(str(np.float32(x)))


def _cache_kw(model):
    """transformers >= 5.2x renamed forward(past_key_values=) to cache=."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def greedy(model, ids, n):
    cache = DynamicCache()
    kw = _cache_kw(model)
    out = model(torch.tensor([ids]), use_cache=True, **{kw: cache})
    first = out.logits[0, -1].clone()
    logits = first
    new_ids, margins = [], []
    for step in range(n):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        new_ids.append(nxt)
        margins.append(round(float(top2.values[0] - top2.values[1]), 5))
        if step + 1 == n:
            break
        out = model(torch.tensor([[nxt]]), use_cache=True, **{kw: cache})
        logits = out.logits[0, -1]
    return first, new_ids, margins


def smollm_pretok_variant(tok):
    """A copy of the GGUF-derived tokenizer with llama.cpp's 'smollm'
    pre-tokenizer (Digits(individual) then the GPT-2 ByteLevel regex)."""
    import copy
    bt = copy.deepcopy(tok.backend_tokenizer)
    bt.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return bt


def main():
    gguf_path = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF)
    if not os.path.exists(gguf_path):
        sys.exit(f"error: {gguf_path} not found (run scripts/fetch-model.sh)")
    gdir, gfile = os.path.dirname(gguf_path), os.path.basename(gguf_path)

    reader = gguf.GGUFReader(gguf_path)
    facts = gguf_facts(reader)
    chat_template = field(reader, "tokenizer.chat_template")

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    assert vocab == facts["llama.vocab_size"] == len(tok)
    assert tok.chat_template == chat_template
    check_weights(model, reader, facts)
    del reader

    hf_adds_bos = tok("Hello").input_ids[0] == tok.bos_token_id
    alt = smollm_pretok_variant(tok)

    prompts = []
    for name, text in TEXT_PROMPTS:
        ids = tok(text).input_ids  # HF default add_special_tokens=True
        assert ids == alt.encode(text).ids, f"{name}: pre-tokenizer variants disagree"
        prompts.append({"name": name, "kind": "text", "text": text, "ids": ids})
    for name, messages in CHAT_PROMPTS:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        direct = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(direct, list):
            direct = direct["input_ids"]
        if direct and isinstance(direct[0], list):
            direct = direct[0]
        assert list(direct) == ids, f"{name}: apply_chat_template ids differ"
        assert ids == alt.encode(text, add_special_tokens=False).ids, name
        prompts.append({"name": name, "kind": "chat", "messages": messages, "text": text, "ids": ids})

    eos = tok.eos_token_id
    rows = []
    for p in prompts:
        first, new_ids, margins = greedy(model, p["ids"], N_NEW)
        p["new_ids"] = new_ids
        p["margins"] = margins
        p["n_stable"] = next((i for i, m in enumerate(margins) if m < STABLE_MARGIN), len(margins))
        p["eos_steps"] = [i for i, t in enumerate(new_ids) if t == eos]
        p["new_text"] = tok.decode(new_ids, skip_special_tokens=True)
        top = torch.topk(first, 5)
        p["first_top5"] = [[int(i), f32(v)] for v, i in zip(top.values, top.indices)]
        if p["name"] in LOGITS_PROMPTS:
            rows.append((p["name"], first.numpy().astype("<f4")))
        print(f'{p["name"]:22s} n={len(p["ids"]):3d} eos@{p["eos_steps"][:3]} '
              f'min_margin={min(margins):.4f} {p["new_text"][:60]!r}', flush=True)

    paris = next(p for p in prompts if p["name"] == "capital_france")
    assert paris["new_text"].lstrip().startswith("Paris"), paris["new_text"]

    rows.sort(key=lambda r: LOGITS_PROMPTS.index(r[0]))
    with open(OUT_BIN, "wb") as f:
        for _, r in rows:
            assert r.shape == (vocab,)
            f.write(r.tobytes())
    row_bytes = vocab * 4

    golden = {
        "format": "nanoinfer-golden-smollm2/1",
        "generator": "scripts/gen_golden.py",
        "model_file": os.path.relpath(gguf_path, ROOT),
        "gguf_sha256": sha256_file(gguf_path),
        "reference": ("transformers AutoModelForCausalLM.from_pretrained(gguf_file=..., "
                      "dtype=float32, attn_implementation='eager'); GGUF tensors dequantized "
                      "to fp32 by gguf-py; manual greedy loop (argmax, KV cache, batch 1), "
                      "no EOS stopping: exactly n_new tokens per prompt"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_py_version": getattr(gguf, "__version__", None) or _pkg_version("gguf"),
        "n_new": N_NEW,
        "vocab_size": vocab,
        "bos_id": tok.bos_token_id,
        "eos_id": eos,
        "hf_adds_bos": bool(hf_adds_bos),
        "notes": [
            "text prompts: ids = tokenizer(text) with HF defaults; for this GGUF HF adds no "
            "BOS (tokenizer.ggml.add_bos_token=false), so ids are exactly the text's tokens.",
            "chat prompts: text = apply_chat_template(messages, add_generation_prompt=True, "
            "tokenize=False); ids = tokenizer(text, add_special_tokens=False), special "
            "tokens (<|im_start|>, <|im_end|>) parsed as single ids. The template inserts "
            "a default system message when the first message is not a system one.",
            "new_ids continue past EOS (eos_steps lists the steps where id == eos_id); a "
            "server stopping at EOS should match new_ids up to the first eos step.",
            "margins[i] = top1 - top2 fp32 logit at step i; an engine whose greedy ids "
            "diverge at a step with a tiny margin (< ~1e-2) is within float noise.",
            "n_stable = index of the first step with margin < 1e-2 (n_new if none): new_ids "
            "before it should match exactly for any correct fp32 engine.",
            "new_text = decode(new_ids, skip_special_tokens=True); HF decodes an incomplete "
            "trailing UTF-8 sequence as U+FFFD.",
            "first_top5 = [id, logit] of the 5 largest logits at the prompt's last position.",
        ],
        "chat_template": chat_template,
        "gguf_facts": facts,
        "logits_bin": {
            "file": os.path.relpath(OUT_BIN, ROOT),
            "dtype": "float32", "byte_order": "little",
            "layout": "row-major [n_rows][vocab_size]; row r = logits at the last prompt "
                      "position (before the first new token) of prompts[rows[r].prompt_index]",
            "n_rows": len(rows), "vocab_size": vocab, "row_bytes": row_bytes,
            "total_bytes": row_bytes * len(rows),
            "rows": [{"name": n, "prompt_index": next(i for i, p in enumerate(prompts) if p["name"] == n),
                      "offset_bytes": k * row_bytes} for k, (n, _) in enumerate(rows)],
        },
        "prompts": prompts,
    }
    with open(OUT_JSON, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    size = os.path.getsize(OUT_JSON) + os.path.getsize(OUT_BIN)
    assert size < 1024 * 1024, size
    print(f"wrote {os.path.relpath(OUT_JSON, ROOT)} and {os.path.relpath(OUT_BIN, ROOT)} "
          f"({size} bytes)")


def _pkg_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
