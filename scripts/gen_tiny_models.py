#!/usr/bin/env python3
"""gen_tiny_models.py - tiny random-init reference models + golden outputs.

Reference: Hugging Face transformers (LlamaForCausalLM / Qwen3ForCausalLM,
torch float32, attn_implementation="eager"), tokenizers and sentencepiece.
Everything is seeded; rerunning rewrites byte-identical files.

Rerun from the repository root (CPU only, ~1 minute on 2 cores):
    python3 scripts/gen_tiny_models.py

Writes, for NAME in tiny-llama2, tiny-llama3, tiny-qwen3:
    test/models/NAME/config.json
    test/models/NAME/model.safetensors      (llama2: F32, llama3: BF16, qwen3: F16)
    test/models/NAME/tokenizer.model        (tiny-llama2 only: SentencePiece BPE)
    test/models/NAME/tokenizer.json         (tiny-llama3 / tiny-qwen3: byte-level BPE)
    test/models/NAME/tokenizer_config.json
    test/fixtures/golden_tiny_NAME.json

The three models and what each one exercises:
  tiny-llama2  LlamaForCausalLM, LLaMA-2 style: rope_theta 10000, no scaling,
               MHA (4/4 heads), untied lm_head, F32 weights, SentencePiece
               tokenizer.model (bpe, byte_fallback, <unk>=0 <s>=1 </s>=2,
               add_dummy_prefix, split_digits), BOS added. config.json in the
               classic layout ("rope_theta", "rope_scaling": null, "torch_dtype").
  tiny-llama3  LlamaForCausalLM, LLaMA-3.1 style: rope_theta 500000 with
               rope_scaling llama3 (factor 8, low 1, high 4, original_max 64),
               GQA 4/2 heads, tied embeddings (no lm_head.weight stored), BF16
               weights, tokenizer.json like Meta's: Split(llama3 regex) +
               ByteLevel(use_regex=false), ignore_merges=true, merges stored as
               "a b" strings, specials appended after the BPE vocab, BOS added by
               a TemplateProcessing post-processor (no add_bos_token key).
               config.json in the classic layout ("rope_theta", "rope_scaling").
  tiny-qwen3   Qwen3ForCausalLM: q_norm/k_norm, head_dim 32 != hidden/heads (16),
               GQA 4/2, untied, F16 weights, rope_theta 1e6, tokenizer.json like
               Qwen's: NFC normalizer, Split(qwen2 regex) + ByteLevel, merges
               stored as ["a","b"] pairs, ChatML specials, no BOS.
               config.json exactly as transformers 5 writes it: rope settings in
               "rope_parameters" (no top-level "rope_theta"), "dtype".
All RMSNorm weights (layer norms, final norm, q/k norms) are 1 + 0.1*randn and
initializer_range is 0.1 so that norm or scaling bugs change the logits.

Reference logits are computed from the model RE-LOADED from disk
(from_pretrained(dir, dtype=float32)), i.e. the BF16/F16 weights upcast to
FP32 - exactly what a loader that upcasts to FP32 sees.

Golden JSON schema (golden_tiny_NAME.json): see scripts/README.md.
"""
import hashlib
import io
import json
import os
import sys

import numpy as np
import torch

torch.set_num_threads(2)

import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,  # noqa: E402
                        normalizers, pre_tokenizers, processors, trainers)
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig,  # noqa: E402
                          LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM)

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(ROOT, "test", "models")
FIXTURES_DIR = os.path.join(ROOT, "test", "fixtures")
N_GREEDY = 16

# --------------------------------------------------------------------------
# Training text for the tokenizers (inline so the script is self-contained).
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog was not amused.
Once upon a time there was a little model that wanted to learn to speak.
It read every book in the library, one token at a time, and it was happy.
Hello, world! How are you today? I am fine, thank you, and you?
The capital of France is Paris. The capital of Germany is Berlin.
The capital of Italy is Rome, and the capital of Spain is Madrid.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024 3.14159 42.
def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))
int main(void) { printf("hello %d\\n", 42); return 0; }
She sells sea shells by the sea shore, and the shells she sells are sea shells.
A language model predicts the next token given all the previous tokens.
Attention is all you need, said the paper, and the transformer was born.
The weather today is sunny with a light breeze from the west.
We're going to the market; they've said it's open until nine o'clock.
Don't worry, be happy. I'll be there soon. You'd better hurry!
Machine learning, deep learning, and reinforcement learning are related fields.
Water boils at one hundred degrees Celsius at sea level.
The cat sat on the mat. The hat was on the cat. The bat flew at night.
In the beginning the universe was created. This has made a lot of people very angry.
Alice was beginning to get very tired of sitting by her sister on the bank.
There is no place like home, there is no place like home, there is no place like home.
Café, naïve, résumé, and jalapeño are words with accents.
Lists:
- apples
- oranges
- bananas
1. first
2. second
3. third
"""

TOK_TEXTS = {
    # 3 short texts whose ids are recorded (HF default add_special_tokens=True)
    "tiny-llama2": ["Hello world", "The capital of France is Paris.\n", "naïve café 123 ü€"],
    "tiny-llama3": ["Hello world", "  The capital of France is 12345!\n\n", "naïve café ü€ don't"],
    "tiny-qwen3": ["Hello world", "  The capital of France is 12345!\n\n", "naïve café ü€ don't"],
}
SPM_DIVERGENT = [" The capital", "  two spaces"]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a tiny test model."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
]


def corpus_lines():
    return [ln for ln in CORPUS.split("\n") if ln.strip()]


# --------------------------------------------------------------------------
# Tokenizers

def make_spm_tokenizer(vocab_size):
    """SentencePiece BPE like LLaMA-2's tokenizer.model; returns the model bytes."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=buf,
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, num_threads=1,
        shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
    return buf.getvalue()


def make_bpe_tokenizer(kind, n_merges_vocab):
    """Byte-level BPE trained with HF tokenizers, laid out like the real files."""
    if kind == "llama3":
        pattern, norm = LLAMA3_PATTERN, None
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"]
    else:
        pattern, norm = QWEN2_PATTERN, normalizers.NFC()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_merges_vocab, min_frequency=2, show_progress=False,
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()), special_tokens=[])
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    # specials after the BPE vocab, as in Llama-3 / Qwen
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if kind == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    j = json.loads(tok.to_str())
    if kind == "llama3":
        j["model"]["ignore_merges"] = True
        j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    else:
        j["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    return json.dumps(j, ensure_ascii=False, indent=1)


# --------------------------------------------------------------------------
# Model construction

def perturb_norms(model, gen):
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            with torch.no_grad():
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def write_json(path, obj, indent=1):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def classic_config(path, dtype_name, rope_scaling):
    """Rewrites a transformers-5 config.json into the classic layout that most
    published checkpoints use (top-level rope_theta/rope_scaling, torch_dtype)."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    c.pop("dtype", None)
    c["rope_theta"] = rp["rope_theta"]
    c["rope_scaling"] = rope_scaling
    c["torch_dtype"] = dtype_name
    write_json(path, dict(sorted(c.items())), indent=2)


def f32list(t):
    """Float32 values as the shortest decimal that round-trips through float32."""
    return [float(str(np.float32(x))) for x in t.detach().cpu().numpy().astype(np.float32).ravel()]


def greedy(model, ids, n):
    """Greedy continuation by full recompute (no KV cache), fp32 eager."""
    seq = list(ids)
    out, margins = [], []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        out.append(nxt)
        margins.append(round(float(top2.values[0] - top2.values[1]), 6))
        seq.append(nxt)
    return out, margins


# --------------------------------------------------------------------------

SPECS = [
    dict(name="tiny-llama2", seed=1002, dtype=torch.float32, dtype_name="float32",
         tokenizer="spm", spm_vocab=384),
    dict(name="tiny-llama3", seed=1003, dtype=torch.bfloat16, dtype_name="bfloat16",
         tokenizer="llama3", bpe_vocab=400),
    dict(name="tiny-qwen3", seed=1004, dtype=torch.float16, dtype_name="float16",
         tokenizer="qwen3", bpe_vocab=400),
]


def build(spec):
    name = spec["name"]
    d = os.path.join(MODELS_DIR, name)
    os.makedirs(d, exist_ok=True)
    for fn in os.listdir(d):
        os.remove(os.path.join(d, fn))

    # ---- tokenizer files
    if spec["tokenizer"] == "spm":
        blob = make_spm_tokenizer(spec["spm_vocab"])
        with open(os.path.join(d, "tokenizer.model"), "wb") as f:
            f.write(blob)
        sp = spm.SentencePieceProcessor(model_proto=blob)
        vocab = sp.get_piece_size()
        bos_id, eos_id = 1, 2
        write_json(os.path.join(d, "tokenizer_config.json"), {
            "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
            "clean_up_tokenization_spaces": False, "legacy": False,
            "model_max_length": 512, "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer"}, indent=2)
    else:
        tj = make_bpe_tokenizer(spec["tokenizer"], spec["bpe_vocab"])
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tj + "\n")
        raw = Tokenizer.from_str(tj)
        vocab = raw.get_vocab_size(with_added_tokens=True)
        if spec["tokenizer"] == "llama3":
            bos_id = raw.token_to_id("<|begin_of_text|>")
            eos_id = raw.token_to_id("<|eot_id|>")
            write_json(os.path.join(d, "tokenizer_config.json"), {
                "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                "chat_template": LLAMA3_CHAT_TEMPLATE,
                "clean_up_tokenization_spaces": False, "model_max_length": 512,
                "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2)
        else:
            bos_id = None
            eos_id = raw.token_to_id("<|im_end|>")
            write_json(os.path.join(d, "tokenizer_config.json"), {
                "add_bos_token": False, "add_prefix_space": False,
                "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False,
                "errors": "replace", "model_max_length": 512,
                "tokenizer_class": "Qwen2Tokenizer"}, indent=2)

    # ---- model
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  initializer_range=0.1, max_position_embeddings=512,
                  bos_token_id=bos_id, eos_token_id=eos_id)
    if name == "tiny-llama2":
        cfg = LlamaConfig(**common, intermediate_size=128, num_key_value_heads=4,
                          rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
        cls, rope_scaling = LlamaForCausalLM, None
    elif name == "tiny-llama3":
        rope_scaling = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                        "original_max_position_embeddings": 64, "rope_type": "llama3"}
        cfg = LlamaConfig(**common, intermediate_size=192, num_key_value_heads=2,
                          rope_theta=500000.0, rope_scaling=dict(rope_scaling),
                          rms_norm_eps=1e-5, tie_word_embeddings=True)
        cls = LlamaForCausalLM
    else:
        cfg = Qwen3Config(**common, intermediate_size=192, num_key_value_heads=2, head_dim=32,
                          rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                          use_sliding_window=False)
        cls, rope_scaling = Qwen3ForCausalLM, None
    torch.manual_seed(spec["seed"])
    model = cls(cfg).eval()
    gen = torch.Generator().manual_seed(spec["seed"] + 7)
    perturb_norms(model, gen)
    round_to(model, spec["dtype"])
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(spec["dtype"]).save_pretrained(d)
    cfg_path = os.path.join(d, "config.json")
    if name != "tiny-qwen3":
        classic_config(cfg_path, spec["dtype_name"], rope_scaling)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)

    # ---- reload exactly as stored; check weights and config round-trip
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, expected[k]), f"{name}: {k} differs after reload"
    assert ref.config.rope_parameters["rope_theta"] == cfg.rope_parameters["rope_theta"]
    assert ref.config.rope_parameters.get("rope_type") == cfg.rope_parameters.get("rope_type")
    if name == "tiny-llama3":
        assert ref.model.embed_tokens.weight.data_ptr() == ref.lm_head.weight.data_ptr()

    tok = AutoTokenizer.from_pretrained(d)
    assert len(tok) == vocab, (name, len(tok), vocab)

    # ---- tokenizer goldens; cross-check HF against the raw libraries
    tok_cases = []
    for text in TOK_TEXTS[name]:
        ids = tok(text).input_ids
        if spec["tokenizer"] == "spm":
            alt = [1] + sp.encode(text)
        else:
            alt = raw.encode(text).ids
        assert ids == alt, (name, text, ids, alt)
        tok_cases.append({"text": text, "ids": ids,
                          "tokens": tok.convert_ids_to_tokens(ids),
                          "decoded": tok.decode(ids, skip_special_tokens=True)})
    add_bos = tok("a").input_ids[0] == bos_id if bos_id is not None else False
    divergent = []
    if spec["tokenizer"] == "spm":
        # transformers 5 converts a bare tokenizer.model with a Metaspace
        # pre-tokenizer that drops one leading space; sentencepiece itself (and
        # llama.cpp, and the tokenizer.json of real Llama-2 repos) keeps it.
        for text in SPM_DIVERGENT:
            hf_ids, sp_ids = tok(text).input_ids, [1] + sp.encode(text)
            assert hf_ids != sp_ids, "transformers now agrees with sentencepiece; update the script"
            divergent.append({"text": text, "sentencepiece_ids": sp_ids, "hf_ids": hf_ids})

    # ---- prompts
    g = torch.Generator().manual_seed(spec["seed"] + 11)
    text_ids = tok(CORPUS[:400]).input_ids
    if spec["tokenizer"] == "spm":
        assert text_ids == [1] + sp.encode(CORPUS[:400])
    prompts = [
        ("one_token", text_ids[:1]),
        ("text_7", text_ids[:7]),
        ("random_40", torch.randint(0, vocab, (40,), generator=g).tolist()),
        ("random_100", torch.randint(0, vocab, (100,), generator=g).tolist()),
    ]
    out_prompts = []
    for pname, ids in prompts:
        with torch.no_grad():
            logits = ref(torch.tensor([ids])).logits[0]
        gids, margins = greedy(ref, ids, N_GREEDY)
        e = {"name": pname, "n": len(ids), "ids": ids,
             "last_logits": f32list(logits[-1]),
             "greedy_ids": gids, "greedy_margins": margins,
             "greedy_n_stable": next((i for i, m in enumerate(margins) if m < 1e-2), len(margins)),
             "greedy_text": tok.decode(gids, skip_special_tokens=True)}
        if len(ids) <= 7:
            e["all_logits"] = [f32list(row) for row in logits]
        out_prompts.append(e)

    chat = None
    if tok.chat_template:
        text = tok.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True, tokenize=False)
        cids = tok(text, add_special_tokens=False).input_ids
        chat = {"messages": CHAT_MESSAGES, "add_generation_prompt": True,
                "prompt_text": text, "prompt_ids": cids}

    files = {}
    for fn in sorted(os.listdir(d)):
        with open(os.path.join(d, fn), "rb") as f:
            data = f.read()
        files[fn] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    total = sum(v["bytes"] for v in files.values())
    assert total < 2 * 1024 * 1024, (name, total)

    c = ref.config
    golden = {
        "format": "nanoinfer-golden-tiny/1",
        "model": name,
        "model_dir": f"test/models/{name}",
        "reference": (f"transformers {cls.__name__} re-loaded from model_dir with "
                      "from_pretrained(dtype=float32, attn_implementation='eager'); "
                      "greedy = argmax of fp32 logits, full recompute each step, no EOS stop"),
        "generator": "scripts/gen_tiny_models.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "weights_dtype": spec["dtype_name"],
        "files": files,
        "config": {
            "arch": "qwen3" if name == "tiny-qwen3" else "llama",
            "n_layers": c.num_hidden_layers, "dim": c.hidden_size,
            "hidden_dim": c.intermediate_size, "n_heads": c.num_attention_heads,
            "n_kv_heads": c.num_key_value_heads,
            "head_dim": getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
            "vocab_size": c.vocab_size, "max_seq_len": c.max_position_embeddings,
            "norm_eps": c.rms_norm_eps, "rope_parameters": dict(c.rope_parameters),
            "tied_embeddings": bool(c.tie_word_embeddings),
            "has_qk_norm": name == "tiny-qwen3",
        },
        "tokenizer": {"kind": "spm" if spec["tokenizer"] == "spm" else "bpe",
                      "bos_id": bos_id, "eos_id": eos_id, "add_bos": bool(add_bos),
                      "cases": tok_cases},

        "notes": [
            "logits are fp32 from the weights as stored (BF16/F16 upcast exactly to fp32).",
            "last_logits = logits at the last prompt position (full vocab); all_logits "
            "(prompts with n <= 7 only) = [n][vocab], one row per position.",
            "greedy_ids: 16 argmax steps, no EOS stop; greedy_margins[i] = top1 - top2 "
            "logit at step i; greedy_n_stable = first step with margin < 1e-2.",
            "greedy_text / tokenizer.cases[].decoded = decode(ids, skip_special_tokens=True).",
            "tokenizer.cases[].ids = tokenizer(text) with HF defaults (BOS added iff add_bos).",
        ],
        "n_greedy": N_GREEDY,
        "prompts": out_prompts,
    }
    if divergent:
        golden["tokenizer"]["hf_vs_sentencepiece_divergent"] = divergent
    if chat:
        golden["chat"] = chat
    write_json(os.path.join(FIXTURES_DIR, f"golden_tiny_{name[len('tiny-'):]}.json"), golden, indent=None)
    print(f"{name}: vocab {vocab}, dir {total} bytes, greedy[2] {out_prompts[2]['greedy_ids']}")


def main():
    os.makedirs(MODELS_DIR, exist_ok=True)
    os.makedirs(FIXTURES_DIR, exist_ok=True)
    for spec in SPECS:
        build(spec)


if __name__ == "__main__":
    sys.exit(main())
