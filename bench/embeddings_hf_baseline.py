#!/usr/bin/env python3
"""transformers' baseline for bench/embeddings_bench.py: the same shape's base model (AutoModel from a
config.json, random bf16 weights, sdpa attention) embedding N prompts of L random token ids in batches of
B on one GPU (last-token pooling, normalized); prints prompt tokens/s.
  embeddings_hf_baseline.py CONFIG_JSON [--requests 256] [--prompt-len 512] [--batch 64]"""
import argparse
import time

import torch
import transformers

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("--requests", type=int, default=256)
ap.add_argument("--prompt-len", type=int, default=512)
ap.add_argument("--batch", type=int, default=64)
a = ap.parse_args()
cfg = transformers.AutoConfig.from_pretrained(a.config)
with torch.device("cuda"):
    model = transformers.AutoModel.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
g = torch.Generator(device="cuda").manual_seed(0)
ids = torch.randint(1000, cfg.vocab_size, (a.requests, a.prompt_len), device="cuda", generator=g)


def run():
    out = []
    with torch.no_grad():
        for b in range(0, a.requests, a.batch):
            h = model(ids[b:b + a.batch]).last_hidden_state[:, -1].float()
            out.append(torch.nn.functional.normalize(h, dim=-1).cpu())
    torch.cuda.synchronize()
    return out


run()  # (warm-up)
t0 = time.time()
run()
dt = time.time() - t0
print(f"transformers {transformers.__version__} {type(model).__name__} bf16: {a.requests} x {a.prompt_len} tokens in batches of "
      f"{a.batch}: {dt:.3f} s, {a.requests * a.prompt_len / dt:.0f} prompt tokens/s")
