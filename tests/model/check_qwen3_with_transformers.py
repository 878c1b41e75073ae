#!/usr/bin/env python3
"""The tiny Qwen3 goldens (make_tiny_qwen3.py: numpy float64) against transformers' own Qwen3ForCausalLM
in float32 on the same checkpoint: the worst relative L2 of the last-position logits over the prompts,
and whether transformers' greedy tokens equal the goldens'. Needs torch and a transformers with Qwen3
(the GPU machine has them; CI does not run this).

  check_qwen3_with_transformers.py OUT [NAME]    (OUT as make_tiny_qwen3.py wrote it; NAME tiny-qwen3,
                                                 tiny-qwen3-yarn, tiny-qwen3-embed, tiny-qwen3-moe, tiny-mixtral or
                                                 tiny-qwen2-moe,
                                                 default tiny-qwen3)
"""
import json
import sys

import numpy as np
import torch
import transformers

out = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else "tiny-qwen3"
golden = json.load(open(f"{out}/golden/{name}.json"))
if name.endswith("-embed"):
    # The Sentence Transformers checkpoint as transformers loads it (Qwen3Model: tensors without the
    # "model." prefix, no head): its last hidden state (after the final norm), pooled and normalized.
    model = transformers.AutoModel.from_pretrained(f"{out}/models/{name}", dtype=torch.float32)
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for p in golden["public"]:
            h = model(torch.tensor([p["ids"]])).last_hidden_state[0].double().numpy()
            for key, v in (("last", h[-1]), ("mean", h.mean(0)), ("cls", h[0])):
                worst = max(worst, float(np.abs(v / np.linalg.norm(v) - np.array(p[key])).max()))
    print(f"{name}: transformers {transformers.__version__} {type(model).__name__} (float32) against the numpy goldens: "
          f"worst component of the normalized LAST / MEAN / CLS vectors off by {worst:.3e}")
    sys.exit(0 if worst < 1e-5 else 1)
last = np.fromfile(f"{out}/golden/{name}.last_logits.f32", dtype="<f4").reshape(len(golden["public"]), -1)
model = transformers.AutoModelForCausalLM.from_pretrained(f"{out}/models/{name}", dtype=torch.float32)
model.eval()
worst, greedy_equal = 0.0, 0
with torch.no_grad():
    for i, p in enumerate(golden["public"]):
        ids = torch.tensor([p["ids"]])
        got = model(ids).logits[0, -1].double().numpy()
        worst = max(worst, float(np.linalg.norm(got - last[i]) / np.linalg.norm(last[i])))
        gen = model.generate(ids, max_new_tokens=24, do_sample=False, min_new_tokens=24)[0, len(p["ids"]):].tolist()
        greedy_equal += gen == p["greedy"]["ids"]
print(f"{name}: transformers {transformers.__version__} {type(model).__name__} (float32) against the numpy goldens: worst last-logits "
      f"relative L2 {worst:.3e}; greedy 24 tokens equal on {greedy_equal} of {len(golden['public'])} prompts")
sys.exit(0 if worst < 1e-5 and greedy_equal == len(golden["public"]) else 1)
