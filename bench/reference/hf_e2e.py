#!/usr/bin/env python3
"""transformers baseline on the same GPU and shapes as bench/gpu_e2e.sh: a model built from a config.json
(random weights, bf16), batch-1 greedy decode ms/token, and the time of one prefill (TTFT) of N tokens;
plus the measured device copy bandwidth (the floor's denominator).
Usage: hf_e2e.py CONFIG_JSON [DECODE_TOKENS] [PREFILL_TOKENS]   (prints JSON)"""
import json, sys, time
import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path = sys.argv[1]
n_dec = int(sys.argv[2]) if len(sys.argv) > 2 else 128
n_pre = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
dev = "cuda"
# Copy bandwidth: read + write of a 2 GiB buffer, best of 10.
x = torch.empty(1 << 30, dtype=torch.bfloat16, device=dev)
y = torch.empty_like(x)
best = 1e9
for _ in range(10):
    torch.cuda.synchronize(); t = time.perf_counter(); y.copy_(x); torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t)
copy_gbs = 2 * x.numel() * 2 / best / 1e9
del x, y
config = AutoConfig.from_pretrained(cfg_path)
torch.manual_seed(0)
with torch.device(dev):
    m = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16).eval()
weight_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
ids = torch.randint(1000, 30000, (1, 32), device=dev)
with torch.no_grad():
    m.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
    torch.cuda.synchronize(); t = time.perf_counter()
    m.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False); torch.cuda.synchronize()
    t1 = time.perf_counter() - t
    torch.cuda.synchronize(); t = time.perf_counter()
    m.generate(ids, max_new_tokens=n_dec + 1, min_new_tokens=n_dec + 1, do_sample=False); torch.cuda.synchronize()
    tn = time.perf_counter() - t
    long_ids = torch.randint(1000, 30000, (1, n_pre), device=dev)
    m(long_ids)
    torch.cuda.synchronize(); t = time.perf_counter(); m(long_ids); torch.cuda.synchronize()
    ttft = time.perf_counter() - t
print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": round(copy_gbs, 1),
                  "weight_bytes": weight_bytes, "decode_ms_per_token": round((tn - t1) / n_dec * 1e3, 3),
                  "prefill_tokens": n_pre, "ttft_ms": round(ttft * 1e3, 2)}))
