#!/usr/bin/env python3
"""Every CUDA kernel launched with launch() runs under programmatic dependent launch: it may start while the
kernel before it in the stream is still writing, so it must call pdl_enter() (kernels/cuda/common.cuh)
before it reads or writes what another kernel touches, itself or through the weight-streaming drivers
that call it (stream_two_in_flight, row_stream, tile_stream, tile_block). This check fails for a
__global__ kernel whose body reaches none of them (the masks kernel of the sixty-first session did, and
drew from half-written logits on an H200); kernels started with <<<...>>> instead are listed by name.
  check_pdl.py SOURCE_DIR"""
import glob
import os
import re
import sys

WAITS = ("pdl_enter", "stream_two_in_flight", "row_stream", "tile_stream", "tile_block")
NOT_LAUNCHED = {"wgmma_probe_k"}  # (a one-thread probe started with <<<1, 1>>> at start-up)


def kernels(text):
    for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", text):
        i = text.index("{", m.end())
        depth, j = 0, i
        while True:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        yield m.group(1), text[i:j]


root = sys.argv[1]
found, missing = 0, []
for path in sorted(glob.glob(os.path.join(root, "kernels", "cuda", "*.cu*")) + glob.glob(os.path.join(root, "src", "**", "*.cu"), recursive=True)):
    for name, body in kernels(open(path).read()):
        found += 1
        if name not in NOT_LAUNCHED and not any(w in body for w in WAITS):
            missing.append(f"{os.path.relpath(path, root)}: {name}")
if found < 20:
    sys.exit(f"only {found} kernels found under {root}: the scan is broken")
if missing:
    sys.exit("kernels that never wait for the kernel before them (pdl_enter):\n  " + "\n  ".join(missing))
print(f"{found} kernels, each waits for the one before it")
