#!/usr/bin/env python3
"""LoRA adapters for a fixture model in PEFT's saved layout (adapter_config.json, adapter_model.safetensors
with base_model.model.<module>.lora_A / lora_B weights), and the last-position logits of the goldens'
public prompts with each adapter applied, from bench/reference/bf16_rounding.py's float64 forward of the
merged weights W + s B A (s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora): an independent
reference for llmserve's LoRA path (tests/model/run_lora.sh).

  make_tiny_lora.py FIXTURES MODEL OUT   writes OUT/<name>/ and OUT/<name>.last_logits.f32 for two adapters:
      sql:   rank 8, lora_alpha 16, every projection of every layer, BF16 tensors
      terse: rank 4, lora_alpha 8, use_rslora, q_proj, v_proj and down_proj of layers 1.. only, F32 tensors
Each update's entries are about a third of its base matrix's in size, so the adapters move the logits well
past float32 noise. Seeded: a rerun writes the same files.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "reference"))
import bf16_rounding as ref  # noqa: E402
from make_tiny_qwen3 import write_safetensors  # noqa: E402

ADAPTERS = {
    "sql": {"r": 8, "alpha": 16, "rslora": False, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                              "down_proj"], "first_layer": 0, "dtype": "BF16", "seed": 11},
    "terse": {"r": 4, "alpha": 8, "rslora": True, "targets": ["q_proj", "v_proj", "down_proj"], "first_layer": 1,
              "dtype": "F32", "seed": 12},
}


def module_of(target):
    return ("self_attn." if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp.") + target


def main():
    fixtures, model, out = sys.argv[1:4]
    mdir = f"{fixtures}/models/{model}"
    cfg = json.load(open(f"{mdir}/config.json"))
    W = ref.load_checkpoint(mdir)
    prompts = json.load(open(f"{fixtures}/golden/{model}.json"))["public"]
    for name, a in ADAPTERS.items():
        rng = np.random.default_rng(a["seed"])
        r = a["r"]
        s = a["alpha"] / (np.sqrt(r) if a["rslora"] else r)
        merged, tensors = dict(W), {}
        for layer in range(a["first_layer"], cfg["num_hidden_layers"]):
            for t in a["targets"]:
                base = f"model.layers.{layer}.{module_of(t)}"
                w = W[base + ".weight"]
                A = rng.normal(0, 1.0, (r, w.shape[1]))
                B = rng.normal(0, 0.3 * w.std() / (s * np.sqrt(r)), (w.shape[0], r))
                if a["dtype"] == "BF16":  # (the reference uses the values the file holds)
                    A, B = ref.bf16(A), ref.bf16(B)
                else:
                    A, B = A.astype(np.float32).astype(np.float64), B.astype(np.float32).astype(np.float64)
                tensors[f"base_model.model.{base}.lora_A.weight"] = (A, a["dtype"])
                tensors[f"base_model.model.{base}.lora_B.weight"] = (B, a["dtype"])
                merged[base + ".weight"] = w + s * (B @ A)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        json.dump({"peft_type": "LORA", "base_model_name_or_path": model, "r": r, "lora_alpha": a["alpha"],
                   "use_rslora": a["rslora"], "target_modules": a["targets"], "lora_dropout": 0.0, "bias": "none",
                   "task_type": "CAUSAL_LM", "modules_to_save": None, "use_dora": False,
                   "layers_to_transform": list(range(a["first_layer"], cfg["num_hidden_layers"]))},
                  open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), {k: v for k, (v, _) in tensors.items()},
                          f32=[k for k, (_, dt) in tensors.items() if dt == "F32"])
        forward = ref.make_forward(cfg, merged)
        np.array([forward(p["ids"], set()) for p in prompts], dtype="<f4").tofile(os.path.join(out, f"{name}.last_logits.f32"))
        print(f"{model}: adapter {name} (rank {r}, {len(tensors) // 2} projections) and its reference logits in {out}")


if __name__ == "__main__":
    main()
