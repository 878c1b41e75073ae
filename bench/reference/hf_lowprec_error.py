#!/usr/bin/env python3
"""How far transformers' own low-precision forward lands from the fp32 goldens (a calibration for
the CUDA backend's tolerance): last-position logits relative L2 per prompt, and top-1 agreement.
Usage: hf_lowprec_error.py FIXTURES MODEL(tiny-qwen2|tiny-llama3) DTYPE(bfloat16|float16) [DEVICE]"""
import json, sys
import numpy as np
import torch
from transformers import AutoModelForCausalLM

fix, model, dtype = sys.argv[1:4]
device = sys.argv[4] if len(sys.argv) > 4 else "cuda"
g = json.load(open(f"{fix}/golden/{model}.json"))
V = g["vocab_size"]
gold = np.fromfile(f"{fix}/golden/{model}.last_logits.f32", dtype=np.float32).reshape(-1, V)
m = AutoModelForCausalLM.from_pretrained(f"{fix}/models/{model}", torch_dtype=getattr(torch, dtype)).to(device).eval()
worst = 0
for i, p in enumerate(g["public"]):
    with torch.no_grad():
        out = m(torch.tensor([p["ids"]], device=device)).logits[0, -1].float().cpu().numpy()
    rel = float(np.linalg.norm(out - gold[i]) / np.linalg.norm(gold[i]))
    worst = max(worst, rel)
    print(f"prompt {i}: relative L2 {rel:.4f}, top-1 {'same' if out.argmax() == gold[i].argmax() else 'DIFFERENT'}")
print(f"transformers {dtype} on {device}: worst last-logits relative L2 {worst:.4f}")
