#!/usr/bin/env python3
"""gen_fuzz_corpus.py - writes the seed corpora of the libFuzzer targets
(test/fuzz/corpus/<target>/), committed so `make fuzz` starts from them.

fuzz_gguf: a minimal valid GGUF v3 (a few metadata keys, one F32 tensor) and
CVE-shaped variants of it: a string length of 2^64-1, huge tensor / kv
counts, n_dims 5, dimensions whose product overflows, a misaligned tensor
offset, an array of strings whose count overruns the file. The others: a few
request bodies, texts and chat inputs. Standard library only; rerun to
regenerate (the files are deterministic).
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
