#!/usr/bin/env python3
"""Last-position logits of a quantized run against an independent reference of the same quantization
(must agree to float32 precision: worst relative L2 under 1e-4, or MAX_REF) and against the unquantized
goldens (must differ: every prompt over 1e-3, or MIN_GOLD, the quantization shows). Exit 1 otherwise.
  check_last_logits.py GOLDEN_JSON GOT.f32 REFERENCE.f32 GOLDEN.f32 LABEL WHAT [MAX_REF [MIN_GOLD]]
"""
import json
import sys

import numpy as np

golden_json, got_f, ref_f, gold_f, label, what = sys.argv[1:7]
n = len(json.load(open(golden_json))["public"])
got, ref, gold = (np.fromfile(f, dtype="<f4").astype(np.float64).reshape(n, -1) for f in (got_f, ref_f, gold_f))
rel = lambda a, b: np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
e_ref, e_gold = rel(got, ref), rel(got, gold)
print(f"{label}: {what} logits against the {what} reference, worst relative L2 {e_ref.max():.2e}; "
      f"against the goldens {e_gold.min():.2e} - {e_gold.max():.2e}")
max_ref = float(sys.argv[7]) if len(sys.argv) > 7 else 1e-4
min_gold = float(sys.argv[8]) if len(sys.argv) > 8 else 1e-3
sys.exit(0 if e_ref.max() < max_ref and e_gold.min() > min_gold else 1)
