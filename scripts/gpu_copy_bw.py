"""gpu_copy_bw.py - device-to-device copy bandwidth with torch (read + write
of a 1 GiB buffer, the mean of 20 copies after 3 warm-ups): the
denominator of every memory roofline in docs/perf.md. Prints GB/s; with
--plain only the number (for scripts)."""
import sys
import time

import torch

n = 1 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda")
b = torch.empty_like(a)
for _ in range(3):
    b.copy_(a)
torch.cuda.synchronize()
t = time.time()
it = 20
for _ in range(it):
    b.copy_(a)
torch.cuda.synchronize()
gbs = 2 * n / ((time.time() - t) / it) / 1e9
if "--plain" in sys.argv[1:]:
    print("%.1f" % gbs)
else:
    print(f"copy bandwidth: {gbs:.1f} GB/s (read + write of 1 GiB, device to device)")
