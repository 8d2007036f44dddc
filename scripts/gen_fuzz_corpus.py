#!/usr/bin/env python3
"""gen_fuzz_corpus.py - writes the seed corpora of the libFuzzer targets
(test/fuzz/corpus/<target>/), committed so `make fuzz` starts from them.

fuzz_gguf: a minimal valid GGUF v3 (a few metadata keys, one F32 tensor) and
CVE-shaped variants of it: a string length of 2^64-1, huge tensor / kv
counts, n_dims 5, dimensions whose product overflows, a misaligned tensor
offset, an array of strings whose count overruns the file; and a tiny llama
model (tiny_model) with the probe's defects one at a time (model_*.gguf:
alignment, tensor types and offsets, NaN / Inf norms, metadata of the wrong
type, block_count, vocabulary, context length; test/e2e_model_errors.sh runs
`nanoinfer` on them). fuzz_safetensors: tiny valid files (one F32 tensor;
F16 + BF16 + metadata; an empty header) and broken ones (overlap, gap,
misaligned, header length past the end or one byte short, a shape that
disagrees with the offsets). fuzz_grammar: byte 0 picks the front end (0
GBNF, 1 regex, 2 JSON Schema, 3 choices split at newlines), then the
text, a NUL, and bytes that drive the matcher (a sentence of the grammar
where one is known). The others: a few request bodies, texts and chat
inputs. Standard library only; rerun to regenerate (the files are
deterministic).
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fuzz", "corpus")


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv_str(k, v):
    return s(k) + struct.pack("<I", 8) + s(v)


def kv_u32(k, v):
    return s(k) + struct.pack("<II", 4, v)


def gguf(n_dims=2, dims=(4, 2), offset=0, str_len=None, n_tensors=None, n_kv=None, arr_n=None):
    kvs = [kv_str("general.architecture", "llama"), kv_u32("general.alignment", 32)]
    if arr_n is not None:
        kvs.append(s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, arr_n) + s("a"))
    body = b"".join(kvs)
    if str_len is not None:
        body = struct.pack("<Q", str_len) + b"general.name" + body
    info = s("token_embd.weight") + struct.pack("<I", n_dims)
    info += b"".join(struct.pack("<Q", d) for d in dims[:n_dims]) + struct.pack("<IQ", 0, offset)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1 if n_tensors is None else n_tensors,
                                  len(kvs) if n_kv is None else n_kv)
    out = head + body + info
    out += b"\0" * (-len(out) % 32)
    return out + struct.pack("<8f", *range(8))


def f16(x):
    return struct.pack("<e", x)


def bf16(x):
    return struct.pack("<f", x)[2:]  # truncation: exact for the values written here


# The tiny llama model of the fuzz_gguf model seeds (and of test/e2e_model_errors.sh):
# 2 layers, dim 16, 2 heads of 8 (1 KV head), FFN 32, a 32-token gpt2 vocabulary of
# single letters and digits, F32 weights. Every keyword argument breaks (or
# legitimately varies) one thing; tiny_model() with none loads and generates.
TM_D, TM_FF, TM_NH, TM_NKV, TM_HD, TM_L = 16, 32, 2, 1, 8, 2
TM_VOCAB = list("abcdefghijklmnopqrstuvwxyz012345")
T_F32, T_F16, T_BF16 = 0, 1, 30


def tiny_model(align=None, data_align=32, embd_type=T_F32, embd_type_id=None, offsets="packed",
               norm_val=None, output_val=None, freq_base_str=False, block_count=TM_L,
               n_tokens=len(TM_VOCAB), ctx_u64=None):
    """align: general.alignment (None: no key, 32); data_align: the padding the
    writer really uses; embd_type: token_embd's storage; embd_type_id: the type
    id its info records (default: the truth); offsets: packed, zero, overlap or
    misaligned; norm_val / output_val: every value of output_norm / output.weight;
    ctx_u64: llama.context_length as a uint64."""
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", block_count),
           kv_u32("llama.embedding_length", TM_D), kv_u32("llama.feed_forward_length", TM_FF),
           kv_u32("llama.attention.head_count", TM_NH),
           kv_u32("llama.attention.head_count_kv", TM_NKV),
           s("llama.attention.layer_norm_rms_epsilon") + struct.pack("<If", 6, 1e-5)]
    if ctx_u64 is None:
        kvs.append(kv_u32("llama.context_length", 256))
    else:
        kvs.append(s("llama.context_length") + struct.pack("<IQ", 10, ctx_u64))
    if freq_base_str:
        kvs.append(kv_str("llama.rope.freq_base", "500000"))
    else:
        kvs.append(s("llama.rope.freq_base") + struct.pack("<If", 6, 10000.0))
    if align is not None:
        kvs.append(kv_u32("general.alignment", align))
    toks = TM_VOCAB[:n_tokens]
    kvs += [kv_str("tokenizer.ggml.model", "gpt2"),
            s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(toks)) + b"".join(map(s, toks)),
            s("tokenizer.ggml.merges") + struct.pack("<IIQ", 9, 8, 0)]
    V = len(TM_VOCAB)
    shapes = [("token_embd.weight", V, TM_D), ("output_norm.weight", TM_D, 0),
              ("output.weight", V, TM_D)]
    for l in range(TM_L):
        b = "blk.%d." % l
        shapes += [(b + "attn_norm.weight", TM_D, 0), (b + "attn_q.weight", TM_NH * TM_HD, TM_D),
                   (b + "attn_k.weight", TM_NKV * TM_HD, TM_D),
                   (b + "attn_v.weight", TM_NKV * TM_HD, TM_D),
                   (b + "attn_output.weight", TM_D, TM_NH * TM_HD),
                   (b + "ffn_norm.weight", TM_D, 0), (b + "ffn_gate.weight", TM_FF, TM_D),
                   (b + "ffn_up.weight", TM_FF, TM_D), (b + "ffn_down.weight", TM_D, TM_FF)]
    info, data = b"", b""
    for i, (name, rows, cols) in enumerate(shapes):
        n = rows * (cols or 1)
        if "norm" in name:
            vals = [1.0 if norm_val is None or name != "output_norm.weight" else norm_val] * n
        elif name == "output.weight" and output_val is not None:
            vals = [output_val] * n
        else:
            vals = [((k * 37 + i * 11) % 17 - 8) / 64.0 for k in range(n)]
        ty = embd_type if name == "token_embd.weight" else T_F32
        enc = {T_F32: lambda x: struct.pack("<f", x), T_F16: f16, T_BF16: bf16}[ty]
        data += b"\0" * (-len(data) % data_align)
        off = len(data)
        if offsets == "zero":
            off = 0
        elif offsets == "overlap" and i == 1:
            off = 32
        elif offsets == "misaligned" and i == 1:
            off += 4
            data += b"\0" * 4
        data += b"".join(map(enc, vals))
        ne = (cols, rows) if cols else (rows,)
        tid = embd_type_id if name == "token_embd.weight" and embd_type_id is not None else ty
        info += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        info += struct.pack("<IQ", tid, off)
    out = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(kvs)) + b"".join(kvs) + info
    out += b"\0" * (-len(out) % data_align)
    return out + data + b"\0" * (-len(data) % data_align)


# name -> tiny_model arguments: the probe's model-file findings (issue 14)
TINY_MODELS = {
    "valid": {}, "align1": dict(align=1, data_align=1), "align8": dict(align=8, data_align=8),
    "embd_f16": dict(embd_type=T_F16), "embd_bf16": dict(embd_type=T_BF16),
    "output_nan": dict(output_val=float("nan")),
    "align1_padded": dict(align=1), "embd_f32_as_f16": dict(embd_type_id=T_F16),
    "embd_f32_as_bf16": dict(embd_type_id=T_BF16), "offsets_zero": dict(offsets="zero"),
    "offsets_overlap": dict(offsets="overlap"), "offsets_misaligned": dict(offsets="misaligned"),
    "norm_nan": dict(norm_val=float("nan")), "norm_inf": dict(norm_val=float("inf")),
    "freq_base_str": dict(freq_base_str=True), "block_count_short": dict(block_count=TM_L - 1),
    "vocab_short": dict(n_tokens=20), "ctx_2p31": dict(ctx_u64=2**31),
}


def safetensors(tensors, metadata=None, data=None, hlen_delta=0):
    """tensors: [(name, dtype, shape, begin, end)]; data defaults to zeros up to
    the largest end."""
    h = {n: {"dtype": d, "shape": list(sh), "data_offsets": [b, e]} for n, d, sh, b, e in tensors}
    if metadata is not None:
        h["__metadata__"] = metadata
    hb = json.dumps(h, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    if data is None:
        data = bytes(range(256)) * 4
        data = data[:max([e for *_, e in tensors] or [0])]
    return struct.pack("<Q", len(hb) + hlen_delta) + hb + data


GBNF = [
    ('root ::= expr\nexpr ::= term ( [-+] term )*\nterm ::= factor | factor [*/] term\n'
     'factor ::= num | "(" expr ")" | "-" factor\nnum ::= [0-9]+ ("." [0-9]{1,3})?\n', "(1+2)*3"),
    ('root ::= "yes" | "no" # comment\n', "yes"),
    ('root ::= obj\nobj ::= "{" ws ( pair ( "," ws pair )* )? "}"\npair ::= str ws ":" ws val\n'
     'val ::= str | [0-9]+ | obj\nstr ::= "\\"" [^"\\\\]* "\\""\nws ::= [ \\t\\n]*\n',
     '{"a": 1,"b":{}}'),
    ('root ::= [a-z]{2,5} [^\\x00-\\x7f]? "\\u00e9"+\n', "abc\u00e9"),
    ('root ::= x{0,3} y\nx ::= "ab" | [c-e]\ny ::= "!"?\n', "abc!"),
]
REGEX = [
    ("\\d{1,3}(\\.\\d{1,3}){3}", "10.0.0.1"), ("[A-Z][a-z]*( [A-Z][a-z]*)*", "Hello World"),
    ("(?:ab|a)(?:bc|c)", "abc"), ("[^\\d\\s]+", "xyz"), ("[\\u4e00-\\u9fff]{1,2}", "\u4e00"),
    ("^(yes|no|maybe)$", "maybe"), ("\\w+@\\w+\\.com", "a@b.com"), ("(a|b){0,3}c", "abac"),
]
SCHEMA = [
    ({"type": "object", "properties": {"name": {"type": "string"},
      "age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["name", "age"]},
     '{"name":"x","age":7}'),
    ({"type": "array", "items": {"type": "integer", "minimum": -20, "exclusiveMaximum": 7},
      "minItems": 1, "maxItems": 4}, "[1,-3]"),
    ({"enum": ["red", "green", 1, None, {"x": [1, 2]}]}, '"red"'),
    ({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, '"AB-123"'),
    ({"type": "string", "format": "date-time"}, '"2024-01-02T03:04:05Z"'),
    ({"anyOf": [{"type": "integer", "minimum": 100, "maximum": 999},
                {"type": "string", "maxLength": 2}]}, "123"),
    ({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {
        "anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}, "required": ["v", "next"]}},
      "$ref": "#/$defs/node"}, '{"v":1,"next":null}'),
    ({"type": "object", "properties": {"x": {"type": "integer"}},
      "additionalProperties": {"type": "string"}}, '{"x":1,"y":"z"}'),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}, '["a",1]'),
    ({}, '{"k":[true,false,null,1.5e3]}'),
]
CHOICES = [(["red", "green", "blue"], "green"), (["a", "ab", "abc", ""], "ab"),
           (["caf\u00e9", "\u65e5\u672c"], "\u65e5\u672c")]


def grammar_seed(kind, text, drive):
    return bytes([kind]) + text.encode() + b"\0" + drive.encode()


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main():
    write("fuzz_gguf", "valid.gguf", gguf())
    write("fuzz_gguf", "strlen_max.gguf", gguf(str_len=2**64 - 1))
    write("fuzz_gguf", "n_tensors_huge.gguf", gguf(n_tensors=2**63))
    write("fuzz_gguf", "n_kv_huge.gguf", gguf(n_kv=2**40))
    write("fuzz_gguf", "n_dims_5.gguf", gguf(n_dims=5, dims=(1, 1, 1, 1, 1)))
    write("fuzz_gguf", "dims_overflow.gguf", gguf(dims=(2**33, 2**33)))
    write("fuzz_gguf", "misaligned.gguf", gguf(offset=3))
    write("fuzz_gguf", "arr_overrun.gguf", gguf(arr_n=2**62))
    for name, kw in TINY_MODELS.items():
        write("fuzz_gguf", "model_%s.gguf" % name, tiny_model(**kw))
    f32 = ("w", "F32", (2, 2), 0, 16)
    write("fuzz_safetensors", "valid.safetensors", safetensors([f32]))
    write("fuzz_safetensors", "mixed.safetensors", safetensors(
        [("a.weight", "F32", (3,), 0, 12), ("b.weight", "F16", (2, 3), 12, 24),
         ("c.bias", "BF16", (4,), 24, 32), ("d", "I8", (0,), 32, 32)],
        metadata={"format": "pt"}))
    write("fuzz_safetensors", "empty.safetensors", safetensors([], metadata={}))
    write("fuzz_safetensors", "overlap.safetensors", safetensors(
        [("a", "F32", (2,), 0, 8), ("b", "F32", (2,), 4, 12)]))
    write("fuzz_safetensors", "gap.safetensors", safetensors(
        [("a", "F32", (1,), 0, 4), ("b", "F32", (1,), 8, 12)]))
    write("fuzz_safetensors", "misaligned.safetensors", safetensors(
        [("a", "F16", (1,), 0, 2), ("b", "F32", (1,), 2, 6)]))
    write("fuzz_safetensors", "hlen_past_end.safetensors", safetensors([f32], hlen_delta=4096))
    write("fuzz_safetensors", "hlen_short.safetensors", safetensors([f32], hlen_delta=-1))
    write("fuzz_safetensors", "shape_mismatch.safetensors", safetensors(
        [("w", "F32", (3, 2**40), 0, 16)]))
    for i, (text, drive) in enumerate(GBNF):
        write("fuzz_grammar", "gbnf%d.bin" % i, grammar_seed(0, text, drive))
    for i, (text, drive) in enumerate(REGEX):
        write("fuzz_grammar", "regex%d.bin" % i, grammar_seed(1, text, drive))
    for i, (schema, drive) in enumerate(SCHEMA):
        write("fuzz_grammar", "schema%d.bin" % i,
              grammar_seed(2, json.dumps(schema, separators=(",", ":")), drive))
    for i, (choices, drive) in enumerate(CHOICES):
        write("fuzz_grammar", "choice%d.bin" % i, grammar_seed(3, "\n".join(choices), drive))
    reqs = [
        {"prompt": "Hello", "max_tokens": 8},
        {"prompt": [1, 2, 3], "n": 2, "logprobs": 3, "stop": ["\n", "x"], "echo": True},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hi"}], "temperature": 0.7, "top_p": 0.9,
         "stream": True, "stream_options": {"include_usage": True}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
         "logit_bias": {"5": -100}, "seed": 1, "max_completion_tokens": 4, "logprobs": True,
         "top_logprobs": 2},
        {"prompt": "x", "max_tokens": -1, "presence_penalty": 3, "stop_token_ids": [99999]},
    ]
    for i, r in enumerate(reqs):
        write("fuzz_request", "req%d.json" % i, json.dumps(r))
    for i, t in enumerate(["hello world", "  leading spaces\tand tabs\n", "naïve café 日本語 🎉",
                           "<|begin_of_text|>special<|eot_id|>", "12345 67.89 don't"]):
        write("fuzz_tok", "text%d.txt" % i, t)
    write("fuzz_chat", "user.bin", b"\x01user\0Hello there\0")
    write("fuzz_chat", "three.bin", b"\x83system\0Be kind\0user\0Hi\0assistant\0Hello!\0")


if __name__ == "__main__":
    main()
