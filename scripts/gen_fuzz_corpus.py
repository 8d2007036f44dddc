#!/usr/bin/env python3
"""gen_fuzz_corpus.py - writes the seed corpora of the libFuzzer targets
(test/fuzz/corpus/<target>/), committed so `make fuzz` starts from them.

fuzz_gguf: a minimal valid GGUF v3 (a few metadata keys, one F32 tensor) and
CVE-shaped variants of it: a string length of 2^64-1, huge tensor / kv
counts, n_dims 5, dimensions whose product overflows, a misaligned tensor
offset, an array of strings whose count overruns the file. fuzz_safetensors:
tiny valid files (one F32 tensor; F16 + BF16 + metadata; an empty header)
and broken ones (overlap, gap, misaligned, header length past the end, a
shape that disagrees with the offsets). fuzz_grammar: byte 0 picks the front
end (0 GBNF, 1 regex, 2 JSON Schema, 3 choices split at newlines), then the
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
