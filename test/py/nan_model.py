#!/usr/bin/env python3
"""nan_model.py SRC DST - a copy of the HF model directory SRC whose first
layer's q projection is all NaN (norm weights stay finite, so the file loads;
every forward then gives NaN logits). For the server's engine-error path."""
import json
import os
import shutil
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
path = os.path.join(dst, "model.safetensors")
b = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
hdr = json.loads(b[8:8 + n])
name = next(k for k in hdr if k.endswith("layers.0.self_attn.q_proj.weight"))
t = hdr[name]
nan = {"F32": b"\x00\x00\xc0\x7f", "BF16": b"\xc0\x7f", "F16": b"\x00\x7e"}[t["dtype"]]
lo, hi = t["data_offsets"]
base = 8 + n
b[base + lo:base + hi] = nan * ((hi - lo) // len(nan))
open(path, "wb").write(bytes(b))
print(name, t["dtype"], (hi - lo) // len(nan), "values set to NaN")
