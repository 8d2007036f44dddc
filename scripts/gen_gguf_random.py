#!/usr/bin/env python3
"""gen_gguf_random.py - random-weight LLaMA-architecture GGUF files for benchmarks.

The same file is given to nanoinfer and to llama.cpp (scripts/gpu_peer_bench.sh),
so that both engines move exactly the same bytes. Weights are N(0, 0.02) (norms
1): speed does not depend on the values, only on shapes and tensor types.

Own minimal GGUF v3 reader/writer (numpy only; GGUF spec: little-endian header
"GGUF", u32 version, u64 tensor count, u64 kv count; kv = string key, u32 value
type, value; tensor info = string name, u32 n_dims, u64 ne[n_dims] (ne[0] the
row length), u32 ggml type, u64 offset into the data section; the data section
starts at the next general.alignment (32) boundary, every tensor offset aligned).

Tensor types: f16, bf16 (2-D weights; norms stay f32) and q4_1 (2-D weights
including the token embedding; block of 32 weights = fp16 d, fp16 m, 16 bytes of
nibbles, weight j in the low nibble of byte j, weight j+16 in the high nibble;
value = q * d + m), as engine/format/quant.c and ggml's block_q4_1 read them.

Tokenizer: the tokenizer.ggml.* keys are copied from a vocab-only GGUF
(../shared/vocab or --vocab-dir): LLaMA-2 SentencePiece (32,000 tokens) for
tinyllama and tiny, GPT-2 byte-level BPE (50,257) for the others, resized to the
preset's vocabulary: truncated (the last kept id becomes <|endoftext|>, the
BOS/EOS; merges whose pieces left the vocabulary are dropped) or padded with
control tokens <|reserved_N|>. Weights are generated from one seeded pool of
random values re-used at random offsets (fast: the file is mostly I/O).

Usage:
  python3 scripts/gen_gguf_random.py --preset tinyllama --type f16 --out /tmp/tl.gguf
  python3 scripts/gen_gguf_random.py --info FILE      # print a GGUF's metadata
  python3 scripts/gen_gguf_random.py --list           # presets and their sizes
  python3 scripts/gen_gguf_random.py --selftest       # encoders and a written file checked
"""
import argparse
import os
import struct
import sys

import numpy as np

# value types of the GGUF spec
VT_U8, VT_I8, VT_U16, VT_I16, VT_U32, VT_I32, VT_F32, VT_BOOL, VT_STR, VT_ARR, VT_U64, VT_I64, \
    VT_F64 = range(13)
SCALAR = {VT_U8: "<B", VT_I8: "<b", VT_U16: "<H", VT_I16: "<h", VT_U32: "<I", VT_I32: "<i",
          VT_F32: "<f", VT_BOOL: "<?", VT_U64: "<Q", VT_I64: "<q", VT_F64: "<d"}
NPTYPE = {VT_U8: "<u1", VT_I8: "<i1", VT_U16: "<u2", VT_I16: "<i2", VT_U32: "<u4", VT_I32: "<i4",
          VT_F32: "<f4", VT_BOOL: "<u1", VT_U64: "<u8", VT_I64: "<i8", VT_F64: "<f8"}
# ggml tensor types: (id, elements per block, bytes per block)
TTYPES = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q4_1": (3, 32, 20), "bf16": (30, 1, 2)}
FILE_TYPE = {"f32": 0, "f16": 1, "q4_1": 3, "bf16": 32}  # general.file_type (llama_ftype)
ALIGN = 32
TOKEN_CONTROL = 3  # tokenizer.ggml.token_type

PRESETS = {
    # name: dim, layers, heads, kv heads, ffn, vocab, rope theta, tied, vocab file
    "tinyllama": dict(dim=2048, layers=22, heads=32, kv=4, ffn=5632, vocab=32000, theta=10000.0,
                      tied=False, tok="llama-spm"),
    "llama3-1b": dict(dim=2048, layers=16, heads=32, kv=8, ffn=8192, vocab=128256,
                      theta=500000.0, tied=True, tok="gpt-2"),
    "smollm2": dict(dim=576, layers=30, heads=9, kv=3, ffn=1536, vocab=49152, theta=100000.0,
                    tied=True, tok="gpt-2"),
    "tiny": dict(dim=128, layers=2, heads=4, kv=2, ffn=256, vocab=32000, theta=10000.0,
                 tied=False, tok="llama-spm"),
}


# ---------------------------------------------------------------- reading
class Reader:
    """GGUF reader: metadata (kv) and tensor infos (name -> (ne, type, offset))."""

    def __init__(self, path):
        self.b = open(path, "rb").read()
        self.o = 0
        magic, ver = struct.unpack_from("<4sI", self.b, 0)
        if magic != b"GGUF" or ver not in (2, 3):
            raise ValueError("%s: not a GGUF v2/v3 file" % path)
        self.o = 8
        self.n_tensors, n_kv = self.u("<Q"), self.u("<Q")
        self.kv = {}  # key -> (type, value); arrays: (VT_ARR, (elem type, list or ndarray))
        for _ in range(n_kv):
            k = self.s()
            t = self.u("<I")
            self.kv[k] = (t, self.val(t))
        self.tensors = {}
        for _ in range(self.n_tensors):
            name = self.s()
            nd = self.u("<I")
            ne = [self.u("<Q") for _ in range(nd)]
            self.tensors[name] = (ne, self.u("<I"), self.u("<Q"))
        al = self.kv.get("general.alignment", (VT_U32, ALIGN))[1]
        self.data_start = (self.o + al - 1) // al * al

    def u(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.o)[0]
        self.o += struct.calcsize(fmt)
        return v

    def s(self):
        n = self.u("<Q")
        v = self.b[self.o:self.o + n].decode("utf-8", "surrogateescape")
        self.o += n
        return v

    def val(self, t):
        if t == VT_STR:
            return self.s()
        if t == VT_ARR:
            et, n = self.u("<I"), self.u("<Q")
            if et == VT_STR:
                return et, [self.s() for _ in range(n)]
            if et == VT_ARR:
                raise ValueError("nested arrays are not supported")
            a = np.frombuffer(self.b, dtype=NPTYPE[et], count=n, offset=self.o).copy()
            self.o += a.nbytes
            return et, a
        return self.u(SCALAR[t])


# ---------------------------------------------------------------- writing
def enc_str(s):
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def enc_kv(key, t, v):
    out = [enc_str(key), struct.pack("<I", t)]
    if t == VT_STR:
        out.append(enc_str(v))
    elif t == VT_ARR:
        et, items = v
        out.append(struct.pack("<IQ", et, len(items)))
        if et == VT_STR:
            out.extend(enc_str(x) for x in items)
        else:
            out.append(np.asarray(items, dtype=NPTYPE[et]).tobytes())
    else:
        out.append(struct.pack(SCALAR[t], v))
    return b"".join(out)


def f32_to_bf16(x):
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def quant_q4_1(x):
    """x: float32 [n] (n % 32 == 0) -> uint8 [n/32, 20] q4_1 blocks."""
    b = x.reshape(-1, 32)
    lo, hi = b.min(axis=1), b.max(axis=1)
    d = (hi - lo) / 15.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0)
    q = np.clip(np.round((b - lo[:, None]) * inv[:, None]), 0, 15).astype(np.uint8)
    out = np.empty((b.shape[0], 20), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = lo.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q[:, :16] | (q[:, 16:] << 4)
    return out


class Pool:
    """Seeded random units (elements or blocks) of one tensor type, stored
    twice in a row so that any run of <= n units from any start is one slice."""

    def __init__(self, ttype, rng, n_values):
        x = (rng.standard_normal(n_values, dtype=np.float32) * 0.02)
        if ttype == "f16":
            u = x.astype(np.float16).view(np.uint8).reshape(-1, 2)
        elif ttype == "bf16":
            u = f32_to_bf16(x).view(np.uint8).reshape(-1, 2)
        elif ttype == "q4_1":
            u = quant_q4_1(x)
        else:
            u = x.view(np.uint8).reshape(-1, 4)
        self.n = u.shape[0]
        self.u = np.concatenate([u, u])
        self.rng = rng

    def write(self, f, units):
        while units > 0:
            k = min(units, self.n)
            s = int(self.rng.integers(0, self.n))
            f.write(self.u[s:s + k].tobytes())
            units -= k


def resize_vocab(kv, n):
    """Resizes the copied tokenizer.ggml.* metadata to n tokens (see header)."""
    toks = list(kv["tokenizer.ggml.tokens"][1][1])
    arrays = {k: kv[k] for k in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type") if k in kv}
    m = len(toks)
    if n == m:
        return
    if n > m:
        toks += ["<|reserved_%d|>" % i for i in range(n - m)]
        for k, (t, (et, a)) in arrays.items():
            pad = np.full(n - m, TOKEN_CONTROL if k.endswith("token_type") else 0, a.dtype)
            kv[k] = (t, (et, np.concatenate([a, pad])))
    else:
        eos = kv.get("tokenizer.ggml.eos_token_id", (VT_U32, m - 1))[1]
        eos_text = toks[eos] if eos < m else "<|endoftext|>"
        toks = toks[:n]
        toks[n - 1] = eos_text
        for k, (t, (et, a)) in arrays.items():
            a = a[:n].copy()
            if k.endswith("token_type"):
                a[n - 1] = TOKEN_CONTROL
            kv[k] = (t, (et, a))
        for k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.eot_token_id"):
            if k in kv and kv[k][1] >= n - 1:
                kv[k] = (kv[k][0], n - 1)
        if "tokenizer.ggml.merges" in kv:
            have = set(toks)
            t, (et, merges) = kv["tokenizer.ggml.merges"]
            keep = [mg for mg in merges
                    if all(p in have for p in mg.split(" ", 1)) and mg.replace(" ", "", 1) in have]
            kv["tokenizer.ggml.merges"] = (t, (et, keep))
    kv["tokenizer.ggml.tokens"] = (VT_ARR, (VT_STR, toks))


def find_vocab(name, vocab_dir):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = [vocab_dir] if vocab_dir else []
    dirs += [os.environ.get("NI_VOCAB_DIR", ""), os.path.join(here, ".vocab"),
             os.path.join(here, "shared", "vocab"), os.path.join(here, "..", "shared", "vocab"),
             "/work/shared/vocab"]
    for d in dirs:
        p = os.path.join(d, "ggml-vocab-%s.gguf" % name)
        if d and os.path.isfile(p):
            return p
    sys.exit("error: ggml-vocab-%s.gguf not found in any of: %s (set --vocab-dir)" %
             (name, ", ".join(d for d in dirs if d)))


def tensors(p, ttype):
    """(name, ne list, tensor type) in llama.cpp's order."""
    D, F, V = p["dim"], p["ffn"], p["vocab"]
    hd = D // p["heads"]
    Q, KV = p["heads"] * hd, p["kv"] * hd
    out = [("token_embd.weight", [D, V], ttype), ("output_norm.weight", [D], "f32")]
    if not p["tied"]:
        out.append(("output.weight", [D, V], ttype))
    for i in range(p["layers"]):
        b = "blk.%d." % i
        out += [(b + "attn_norm.weight", [D], "f32"), (b + "attn_q.weight", [D, Q], ttype),
                (b + "attn_k.weight", [D, KV], ttype), (b + "attn_v.weight", [D, KV], ttype),
                (b + "attn_output.weight", [Q, D], ttype), (b + "ffn_norm.weight", [D], "f32"),
                (b + "ffn_gate.weight", [D, F], ttype), (b + "ffn_up.weight", [D, F], ttype),
                (b + "ffn_down.weight", [F, D], ttype)]
    return out


def nbytes(ne, ttype):
    _, be, bb = TTYPES[ttype]
    n = int(np.prod(ne))
    if n % be:
        raise ValueError("%d elements are not a multiple of the %s block" % (n, ttype))
    return n // be * bb


def weight_bytes(p, ttype):
    """Bytes of weights one decode step reads (all but the embedding table,
    which is gathered: one row; tied models read it as the LM head)."""
    tot = 0
    for name, ne, t in tensors(p, ttype):
        if name == "token_embd.weight" and not p["tied"]:
            continue
        tot += nbytes(ne, t)
    return tot


def write(path, preset, ttype, seed, ctx, vocab_dir):
    p = PRESETS[preset]
    src = Reader(find_vocab(p["tok"], vocab_dir))
    kv_tok = {k: v for k, v in src.kv.items() if k.startswith("tokenizer.ggml.")}
    resize_vocab(kv_tok, p["vocab"])
    hd = p["dim"] // p["heads"]
    meta = [("general.architecture", VT_STR, "llama"),
            ("general.name", VT_STR, "random-%s-%s" % (preset, ttype)),
            ("general.file_type", VT_U32, FILE_TYPE[ttype]),
            ("general.alignment", VT_U32, ALIGN),
            ("llama.context_length", VT_U32, ctx),
            ("llama.embedding_length", VT_U32, p["dim"]),
            ("llama.block_count", VT_U32, p["layers"]),
            ("llama.feed_forward_length", VT_U32, p["ffn"]),
            ("llama.attention.head_count", VT_U32, p["heads"]),
            ("llama.attention.head_count_kv", VT_U32, p["kv"]),
            ("llama.attention.layer_norm_rms_epsilon", VT_F32, 1e-5),
            ("llama.rope.freq_base", VT_F32, p["theta"]),
            ("llama.rope.dimension_count", VT_U32, hd),
            ("llama.vocab_size", VT_U32, p["vocab"])]
    meta += [(k, t, v) for k, (t, v) in kv_tok.items()]
    ts = tensors(p, ttype)
    infos, off = [], 0
    for name, ne, t in ts:
        infos.append(enc_str(name) + struct.pack("<I", len(ne)) +
                     struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", TTYPES[t][0], off))
        off += (nbytes(ne, t) + ALIGN - 1) // ALIGN * ALIGN
    head = (struct.pack("<4sIQQ", b"GGUF", 3, len(ts), len(meta)) +
            b"".join(enc_kv(k, t, v) for k, t, v in meta) + b"".join(infos))
    rng = np.random.default_rng(seed)
    pools = {t: Pool(t, rng, 1 << 22) for t in {ttype, "f32"} if t != "f32"}
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head + b"\0" * (-len(head) % ALIGN))
        for name, ne, t in ts:
            n = nbytes(ne, t)
            if t == "f32":  # norms: ones
                f.write(np.ones(n // 4, dtype="<f4").tobytes())
            else:
                pools[t].write(f, n // TTYPES[t][2])
            f.write(b"\0" * (-n % ALIGN))
    os.replace(tmp, path)
    return off


def selftest():
    """Checks the encoders against their definitions and a written file
    against the reader; exits non-zero on the first mismatch."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(32 * 64, dtype=np.float32) * 0.02
    blk = quant_q4_1(x)
    d = blk[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0]
    m = blk[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    q = np.concatenate([blk[:, 4:] & 15, blk[:, 4:] >> 4], axis=1).astype(np.float32)
    err = np.abs(q * d[:, None] + m[:, None] - x.reshape(-1, 32)).max(axis=1)
    bound = d * 0.5 + np.abs(m) * 2e-3 + 1e-7  # half a step, plus fp16 rounding of m
    assert (err <= bound).all(), "q4_1 round trip error %g > %g" % (err.max(), bound.max())
    b = f32_to_bf16(x).astype(np.uint32) << 16
    rel = np.abs(b.view(np.float32) - x) / np.abs(x)
    assert rel.max() <= 2.0 ** -8, "bf16 rounding error %g" % rel.max()
    import tempfile
    for t in ("f16", "bf16", "q4_1"):
        with tempfile.TemporaryDirectory() as dd:
            f = os.path.join(dd, "t.gguf")
            write(f, "tiny", t, 0, 256, None)
            r = Reader(f)
            p = PRESETS["tiny"]
            assert len(r.kv["tokenizer.ggml.tokens"][1][1]) == p["vocab"]
            ts = tensors(p, t)
            assert list(r.tensors) == [n for n, _, _ in ts]
            end = 0
            for name, ne, tt in ts:
                ne2, id2, off = r.tensors[name]
                assert ne2 == ne and id2 == TTYPES[tt][0] and off % ALIGN == 0 and off >= end
                end = off + nbytes(ne, tt)
            size = os.path.getsize(f)
            assert r.data_start + end <= size < r.data_start + end + ALIGN, (size, end)
            ne, _, off = r.tensors["output_norm.weight"]
            with open(f, "rb") as fh:
                fh.seek(r.data_start + off)
                assert (np.frombuffer(fh.read(4 * ne[0]), "<f4") == 1).all()
    print("selftest: ok (q4_1 and bf16 encoders, f16/bf16/q4_1 tiny files read back)")


def info(path):
    r = Reader(path)
    print("%s: %d tensors, %d kv" % (path, r.n_tensors, len(r.kv)))
    for k, (t, v) in r.kv.items():
        if t == VT_ARR:
            et, a = v
            print("  %s: array[%d] of type %d, first %s" % (k, len(a), et, list(a[:4])))
        else:
            print("  %s = %r" % (k, v))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--type", default="f16", choices=["f16", "bf16", "q4_1"])
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=8192, help="llama.context_length (8192)")
    ap.add_argument("--vocab-dir", help="folder of ggml-vocab-*.gguf (default: search)")
    ap.add_argument("--info", metavar="FILE", help="print FILE's metadata and exit")
    ap.add_argument("--list", action="store_true", help="list the presets and exit")
    ap.add_argument("--selftest", action="store_true", help="check the writer and exit")
    ap.add_argument("--weight-bytes", action="store_true",
                    help="print the bytes of weights read per decode step and exit")
    a = ap.parse_args()
    if a.info:
        return info(a.info)
    if a.selftest:
        return selftest()
    if a.list:
        for n, p in sorted(PRESETS.items()):
            print("%-10s %s  f16 %.0f MB read per token" % (n, p, weight_bytes(p, "f16") / 1e6))
        return
    if not a.preset:
        ap.error("--preset is required")
    if a.weight_bytes:
        print(weight_bytes(PRESETS[a.preset], a.type))
        return
    if not a.out:
        ap.error("--out is required")
    n = write(a.out, a.preset, a.type, a.seed, a.ctx, a.vocab_dir)
    print("wrote %s: %s %s, %.1f MB of tensor data, %d bytes of weights per decode step" %
          (a.out, a.preset, a.type, n / 1e6, weight_bytes(PRESETS[a.preset], a.type)))


if __name__ == "__main__":
    main()
