#!/usr/bin/env python3
"""A random LoRA adapter in PEFT's saved layout for a model's config.json (every layer's q/k/v/o and
gate/up/down projections, F32), for timing LoRA steps against a `load_format: dummy` model of that shape.
  make_lora_adapter.py CONFIG_JSON OUT_DIR [RANK]      (RANK default 16)"""
import json
import os
import struct
import sys

import numpy as np

cfg_path, out = sys.argv[1], sys.argv[2]
r = int(sys.argv[3]) if len(sys.argv) > 3 else 16
cfg = json.load(open(cfg_path))
H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
D = cfg.get("head_dim") or H // cfg["num_attention_heads"]
q, kv = cfg["num_attention_heads"] * D, cfg["num_key_value_heads"] * D
shapes = {"self_attn.q_proj": (q, H), "self_attn.k_proj": (kv, H), "self_attn.v_proj": (kv, H), "self_attn.o_proj": (H, q),
          "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
rng = np.random.default_rng(0)
header, blobs, at = {}, [], 0
for layer in range(L):
    for m, (n_out, n_in) in shapes.items():
        for kind, shape in (("A", (r, n_in)), ("B", (n_out, r))):
            data = rng.normal(0, 0.01, shape).astype("<f4").tobytes()
            header[f"base_model.model.model.layers.{layer}.{m}.lora_{kind}.weight"] = {
                "dtype": "F32", "shape": list(shape), "data_offsets": [at, at + len(data)]}
            blobs.append(data)
            at += len(data)
os.makedirs(out, exist_ok=True)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "bias": "none", "target_modules": [m.split(".")[1] for m in shapes]},
          open(os.path.join(out, "adapter_config.json"), "w"))
print(f"rank-{r} adapter of {L} layers x 7 projections ({at / 2**20:.1f} MiB) in {out}")
