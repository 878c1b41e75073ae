#!/usr/bin/env bash
# LoRA adapters (enable_lora, lora_modules) on the CPU backend against an independent reference:
# make_tiny_lora.py's two PEFT adapters (one over every projection in BF16, one rsLoRA over q/v/down of
# some layers in F32) and its float64 numpy forward of the merged weights W + s B A. One `llmserve logits`
# run per layout (tp 1, 2 and 4 (key/value heads replicated), tp 2 x pp 2) takes each golden prompt three
# times, as the base model and under each adapter (a line's `model`). Every last-position logits row must
# agree with its reference to float32 precision (relative L2 under 1e-4), and the adapters' rows must
# differ from the goldens (the adapter took effect). Then the refusals: an unknown `model`, a rank over
# max_lora_rank, lora_modules without enable_lora, an adapter of embed_tokens, each with its message and
# exit 1. On the CPU backend also (tiny-qwen2): speculative decoding (n-gram) with adapters gives the tokens
# of decoding one at a time (tp 1, tp 2 x pp 2). LLMSERVE_TEST_BACKEND=cuda runs the layouts' part on one GPU instead
# (tp = pp = 1, float32; DTYPE=bfloat16 or float16 for the 16-bit path, compared within MAX_REL, default
# 1e-4), and then generates with the adapters' steps in CUDA graphs against the same eagerly.
#   run_lora.sh BUILD_DIR FIXTURES MODEL
set -euo pipefail
build=$1 fixtures=$2 model=$3
here=$(cd "$(dirname "$0")" && pwd)
work="$build/test-out/lora-$model"
rm -rf "$work"
mkdir -p "$work"
golden="$fixtures/golden/$model.json"
python3 "$here/make_tiny_lora.py" "$fixtures" "$model" "$work"
"$build/tests/golden_check" prompts "$golden" "$work/prompts.jsonl"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
lines = [json.loads(l) for l in open(f"{work}/prompts.jsonl")]
with open(f"{work}/prompts3.jsonl", "w") as f:
    for l in lines:
        for m in (None, "sql", "terse"):
            f.write(json.dumps({**l, **({"model": m} if m else {})}) + "\n")
PY
backend=(--backend cpu) layouts=("1 1" "2 1" "4 1" "2 2")
if [ "${LLMSERVE_TEST_BACKEND:-cpu}" = cuda ]; then backend=(--backend cuda --dtype "${DTYPE:-float32}") layouts=("1 1"); fi
lora=(--enable-lora --lora-modules "sql=$work/sql" "{\"name\": \"terse\", \"path\": \"$work/terse\"}")
for layout in "${layouts[@]}"; do
  read -r tp pp <<<"$layout"
  "$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "$build/test-models/$model.h5" "${backend[@]}" \
    --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --block-size 8 "${lora[@]}" \
    --prompts "$work/prompts3.jsonl" --max-tokens 1 --output "$work/out.jsonl" --logits-output "$work/last-$tp-$pp.f32"
  python3 - "$golden" "$fixtures/golden/$model.last_logits.f32" "$work" "$tp" "$pp" "${MAX_REL:-1e-4}" <<'PY'
import json, sys
import numpy as np
golden_json, gold_f, work, tp, pp, max_rel = sys.argv[1:7]
n = len(json.load(open(golden_json))["public"])
gold = np.fromfile(gold_f, dtype="<f4").astype(np.float64).reshape(n, -1)
got = np.fromfile(f"{work}/last-{tp}-{pp}.f32", dtype="<f4").astype(np.float64).reshape(n, 3, -1)
refs = [gold] + [np.fromfile(f"{work}/{a}.last_logits.f32", dtype="<f4").astype(np.float64).reshape(n, -1) for a in ("sql", "terse")]
rel = lambda a, b: np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
ok = True
for k, name in enumerate(("base", "sql", "terse")):
    e_ref, e_gold = rel(got[:, k], refs[k]), rel(got[:, k], gold)
    print(f"tp={tp} pp={pp} {name}: worst relative L2 against its reference {e_ref.max():.2e}; against the goldens "
          f"{e_gold.min():.2e} - {e_gold.max():.2e}")
    ok = ok and e_ref.max() < float(max_rel) and (k == 0 or e_gold.min() > 1e-2)
sys.exit(0 if ok else 1)
PY
done

# On a GPU: decode steps (and chunked prompts beside them, --max-num-batched-tokens 16) of the base model and
# both adapters in one batch replay CUDA graphs recorded with the LoRA kernels; every request gets the tokens
# it gets with --enforce-eager, log-probabilities within 1e-3 (float32; 16-bit types report the agreement).
if [ "${LLMSERVE_TEST_BACKEND:-cpu}" = cuda ]; then
  python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
with open(f"{work}/gen.jsonl", "w") as f:
    for i, l in enumerate(json.loads(x) for x in open(f"{work}/prompts3.jsonl")):
        f.write(json.dumps({"prompt_token_ids": l["ids"], "max_tokens": 6 + i % 5, "temperature": 0, "ignore_eos": True,
                            "logprobs": 1, **({"model": l["model"]} if "model" in l else {})}) + "\n")
PY
  for mode in graphs eager; do
    extra=()
    [ $mode = eager ] && extra=(--enforce-eager)
    "$here/../mpirun.sh" 1 "$build/llmserve" generate --model "$build/test-models/$model.h5" "${backend[@]}" --block-size 8 \
      "${lora[@]}" --max-loras 2 --max-num-seqs 16 --max-num-batched-tokens 16 --max-model-len 512 --input "$work/gen.jsonl" --output "$work/gen-$mode.jsonl" \
      "${extra[@]}" >"$work/gen-$mode.log" 2>&1 || { echo "FAIL generate ($mode)"; tail -5 "$work/gen-$mode.log"; exit 1; }
  done
  grep -o "forward passes: .* eager" "$work/gen-graphs.log"
  python3 - "$work" "${DTYPE:-float32}" <<'PY'
import json, re, sys
work, dtype = sys.argv[1:]
g = [json.loads(l)["outputs"][0] for l in open(f"{work}/gen-graphs.jsonl")]
e = [json.loads(l)["outputs"][0] for l in open(f"{work}/gen-eager.jsonl")]
same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(g, e))
worst = max(abs(x["logprob"] - y["logprob"]) for a, b in zip(g, e) if a["token_ids"] == b["token_ids"]
            for x, y in zip(a["logprobs"], b["logprobs"]))
log = open(f"{work}/gen-graphs.log").read()
m = re.search(r"forward passes: (\d+) decode graphs, (\d+) mixed-step graphs", log)
print(f"LoRA generate, graphs vs eager ({dtype}): same tokens on {same}/{len(e)} requests, logprob max difference {worst:.2e}")
ok = m and int(m.group(1)) > 0 and int(m.group(2)) > 0 and (dtype != "float32" or (same == len(e) and worst < 1e-3))
sys.exit(0 if ok else 1)
PY
fi

# Speculative decoding (n-gram) with adapters on the CPU backend, tp 1 and tp 2 x pp 2: every request of the base
# model and of each adapter gets the greedy tokens of decoding one at a time (prompts that repeat themselves,
# so drafts are proposed and accepted), and the adapters' tokens differ from the base model's somewhere.
# tiny-qwen2 only: tiny-llama3's greedy continuations (a 128k vocabulary) never repeat an n-gram, so no draft
# is ever accepted there and the comparison would show nothing.
if [ "${LLMSERVE_TEST_BACKEND:-cpu}" = cpu ] && [ "$model" = tiny-qwen2 ]; then
  python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
with open(f"{work}/spec.jsonl", "w") as f:
    for l in (json.loads(x) for x in open(f"{work}/prompts3.jsonl")):
        ids = l["ids"]
        f.write(json.dumps({"prompt_token_ids": ids + ids[:8] + ids[:8], "max_tokens": 24, "temperature": 0,
                            "ignore_eos": True, **({"model": l["model"]} if "model" in l else {})}) + "\n")
PY
  for layout in "1 1" "2 2"; do
    read -r tp pp <<<"$layout"
    for mode in plain ngram; do
      spec=()
      [ $mode = ngram ] && spec=(--speculative-config '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}')
      "$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" generate --model "$build/test-models/$model.h5" --backend cpu \
        --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --block-size 8 "${lora[@]}" --max-loras 2 "${spec[@]}" \
        --input "$work/spec.jsonl" --output "$work/spec-$mode.jsonl" >"$work/spec-$mode.log" 2>&1 ||
        { echo "FAIL speculative decoding with adapters ($mode, tp=$tp pp=$pp)"; tail -5 "$work/spec-$mode.log"; exit 1; }
    done
    python3 - "$work" "$tp" "$pp" <<'PY'
import json, re, sys
work, tp, pp = sys.argv[1:]
req = [json.loads(l) for l in open(f"{work}/spec.jsonl")]
plain = [json.loads(l)["outputs"][0]["token_ids"] for l in open(f"{work}/spec-plain.jsonl")]
ngram = [json.loads(l)["outputs"][0]["token_ids"] for l in open(f"{work}/spec-ngram.jsonl")]
m = re.search(r"speculative decoding: \d+ steps fed (\d+) drafts, (\d+) accepted", open(f"{work}/spec-ngram.log").read())
same = sum(a == b for a, b in zip(plain, ngram))
by_prompt = {}
for r, t in zip(req, plain):
    by_prompt.setdefault(tuple(r["prompt_token_ids"]), {})[r.get("model", "base")] = t
differ = sum(any(v["base"] != v[a] for a in ("sql", "terse")) for v in by_prompt.values())
print(f"tp={tp} pp={pp} speculative decoding with adapters: same tokens on {same}/{len(plain)} requests; "
      f"{m.group(2) if m else '?'} of {m.group(1) if m else '?'} drafts accepted; adapters change {differ}/{len(by_prompt)} prompts' tokens")
ok = len(plain) == len(req) and same == len(plain) and m and int(m.group(2)) > 0 and differ > 0
sys.exit(0 if ok else 1)
PY
  done
fi

# Refusals: a clear message and exit 1, no output file.
refuse() {  # refuse WHAT EXPECTED-MESSAGE llmserve-args...
  local what=$1 want=$2
  shift 2
  rm -f "$work/refused.jsonl"
  if "$here/../mpirun.sh" 1 "$build/llmserve" logits --model "$build/test-models/$model.h5" --backend cpu "$@" \
    --max-tokens 1 --output "$work/refused.jsonl" >"$work/refused.log" 2>&1; then
    echo "FAIL $what: exit 0"; exit 1
  fi
  grep -qF -- "$want" "$work/refused.log" || { echo "FAIL $what: no '$want' in:"; cat "$work/refused.log"; exit 1; }
  [ ! -e "$work/refused.jsonl" ] || { echo "FAIL $what: an output file"; exit 1; }
  echo "PASS $what"
}
echo '{"ids": [1, 2, 3], "model": "nope"}' >"$work/unknown.jsonl"
refuse "unknown model" "model 'nope' is neither the model nor a LoRA adapter of lora_modules" \
  "${lora[@]}" --prompts "$work/unknown.jsonl"
refuse "rank over max_lora_rank" "LoRA rank 8 is greater than max_lora_rank 1" \
  --enable-lora --lora-modules "sql=$work/sql" --max-lora-rank 1 --prompt-ids 1,2,3
refuse "lora_modules without enable_lora" "lora_modules needs enable_lora" --lora-modules "sql=$work/sql" --prompt-ids 1,2,3
refuse "max_lora_rank not vLLM's" "max_lora_rank must be one of" --enable-lora --max-lora-rank 12 --prompt-ids 1,2,3
mkdir -p "$work/embed"
cp "$work/sql/adapter_config.json" "$work/embed/"
python3 - "$work" <<'PY'
import json, struct, sys
work = sys.argv[1]
h = json.dumps({"base_model.model.model.embed_tokens.lora_A.weight": {"dtype": "F32", "shape": [8, 1], "data_offsets": [0, 32]}}).encode()
open(f"{work}/embed/adapter_model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 32)
PY
refuse "an adapter of embed_tokens" "is not a LoRA update of a layer's q/k/v/o or gate/up/down projection" \
  --enable-lora --lora-modules "e=$work/embed" --prompt-ids 1,2,3
refuse "a second name" "lora_modules: the name 'sql' is given twice" \
  --enable-lora --lora-modules "sql=$work/sql" "sql=$work/terse" --prompt-ids 1,2,3
echo "lora $model: all layouts and refusals pass"
