#!/usr/bin/env bash
# `kv_cache_dtype: fp8` on the CUDA backend (bfloat16 | float16 activations) against an independent
# forward: bench/reference/bf16_rounding.py --points, a float64 numpy forward of the fixture checkpoint
# that rounds to the 16-bit type where the GPU path does (the norm outputs, the attention output, the
# SiLU product, the final norm) and the keys (after RoPE) and values to E4M3 (scale 1) as the cache
# stores them. The GPU's last-position logits must be within MAX_REF of it (what the kernels add beyond
# those roundings: accumulation order, the probabilities rounded to 16 bits in attention, a code a
# rounding flips), and differ from the goldens. The same for the 16-bit cache against its own
# reference (the bound's baseline). The cache holds twice the 16-bit one's blocks. Decode steps (one
# token each, CUDA graphs) agree with a prefill over the same tokens: each greedy token of a 16-token
# continuation is the top-1 of the prefill of prompt + continuation at its position, wherever that
# position's top-2 margin exceeds 0.1. Exits 77 (skipped) where no GPU is visible.
#   run_fp8_kv_gpu.sh BUILD_DIR FIXTURES MODEL DTYPE
set -euo pipefail
build=$1 fixtures=$2 model=$3 dtype=$4
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU: skipped"; exit 77; }
here=$(cd "$(dirname "$0")" && pwd)
work="$build/test-out/gpu-fp8-kv-$model-$dtype"
mkdir -p "$work"
golden="$fixtures/golden/$model.json"
max_ref=5e-3
half=()
[ "$dtype" = float16 ] && half=(--half)
"$build/tests/golden_check" prompts "$golden" "$work/prompts.jsonl"
ref="$here/../../bench/reference/bf16_rounding.py"
python3 "$ref" "$fixtures" "$model" --points h,attn,act,final,kv8 "$work/ref-fp8.f32" "${half[@]}"
python3 "$ref" "$fixtures" "$model" --points h,kv,attn,act,final "$work/ref-auto.f32" "${half[@]}"
blocks() { grep -o "KV cache [0-9]* blocks" "$1" | grep -o "[0-9]*"; }
for kv in auto fp8; do
  "$build/llmserve" logits --model "$build/test-models/$model.h5" --backend cuda --dtype "$dtype" --kv-cache-dtype "$kv" \
    --block-size 16 --kv-cache-memory-gb 0.002 --max-model-len 512 --prompts "$work/prompts.jsonl" --max-tokens 1 \
    --output "$work/out-$kv.jsonl" --logits-output "$work/last-$kv.f32" >"$work/$kv.log" 2>&1 ||
    { tail -5 "$work/$kv.log"; exit 1; }
  python3 "$here/../model/check_last_logits.py" "$golden" "$work/last-$kv.f32" "$work/ref-$kv.f32" \
    "$fixtures/golden/$model.last_logits.f32" "$model $dtype, kv_cache_dtype $kv" "rounded" "$max_ref"
done
b8=$(blocks "$work/fp8.log") b16=$(blocks "$work/auto.log")
[ "$b8" -ge $((2 * b16)) ] && [ "$b8" -lt $((2 * b16 + 2)) ] ||
  { echo "$b8 fp8 blocks against $b16 16-bit ones (expected 2x, the budget's whole blocks)"; exit 1; }
echo "$model $dtype: $b8 fp8 blocks against $b16 16-bit ones"

# Decode against prefill over the same tokens.
run() { "$build/llmserve" logits --model "$build/test-models/$model.h5" --backend cuda --dtype "$dtype" \
  --kv-cache-dtype fp8 --block-size 16 --max-model-len 512 "$@"; }
run --prompts "$work/prompts.jsonl" --max-tokens 16 --output "$work/gen.jsonl" >"$work/gen.log" 2>&1 ||
  { tail -5 "$work/gen.log"; exit 1; }
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(json.dumps({"ids": r["prompt_ids"] + r["generated_ids"][:-1]}))' "$work/gen.jsonl" >"$work/prompts2.jsonl"
run --prompts "$work/prompts2.jsonl" --max-tokens 1 --output "$work/re.jsonl" >"$work/re.log" 2>&1 ||
  { tail -5 "$work/re.log"; exit 1; }
python3 - "$work/gen.jsonl" "$work/re.jsonl" "$model $dtype" <<'PY'
import json, sys
gen = [json.loads(l) for l in open(sys.argv[1])]
re = [json.loads(l) for l in open(sys.argv[2])]
checked = bad = 0
for g, r in zip(gen, re):
    T = len(g["prompt_ids"])
    for k, tok in enumerate(g["generated_ids"]):
        ids, vals = r["top_ids"][T - 1 + k], r["top_logits"][T - 1 + k]
        if vals[0] - vals[1] <= 0.1:
            continue
        checked += 1
        bad += ids[0] != tok
print(f"{sys.argv[3]}, fp8 KV cache: decode steps against a prefill of the same tokens: "
      f"{checked - bad} of {checked} clear-margin positions agree")
sys.exit(1 if bad or checked < len(gen) * 8 else 0)
PY
