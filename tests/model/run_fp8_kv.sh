#!/usr/bin/env bash
# `kv_cache_dtype: fp8` on the CPU backend against an independent forward: bench/reference/bf16_rounding.py
# --fp8-kv, a float64 numpy forward of the fixture checkpoint whose keys (after RoPE) and values it rounds
# to E4M3 (by a search over the format's values, scale 1) before attention. The last-position logits must
# agree to float32 precision on every layout (each rank of a tensor group stores its own heads), and
# differ from the goldens (the cache was rounded). Also: the cache holds four times the float32 blocks
# (a byte an element), swapped blocks come back unchanged, and fp8_e5m2 is refused.
#   run_fp8_kv.sh BUILD_DIR FIXTURES MODEL
set -euo pipefail
build=$1 fixtures=$2 model=$3
here=$(cd "$(dirname "$0")" && pwd)
golden="$fixtures/golden/$model.json"
work="$build/test-out/fp8-kv-$model"
mkdir -p "$work"
"$build/tests/golden_check" prompts "$golden" "$work/prompts.jsonl"
python3 "$here/../../bench/reference/bf16_rounding.py" "$fixtures" "$model" --fp8-kv "$work/reference.f32"
blocks() { grep -o "KV cache [0-9]* blocks" "$1" | grep -o "[0-9]*"; }
for layout in "1 1" "2 1" "2 2"; do
  read -r tp pp <<<"$layout"
  for kv in fp8 auto; do
    "$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "$build/test-models/$model.h5" \
      --backend cpu --kv-cache-dtype "$kv" --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --block-size 8 \
      --kv-cache-memory-gb 0.001 --max-model-len 512 \
      --prompts "$work/prompts.jsonl" --max-tokens 1 --output "$work/out-$kv.jsonl" --logits-output "$work/last-$kv.f32" \
      >"$work/$kv.log" 2>&1 || { tail -5 "$work/$kv.log"; exit 1; }
  done
  b8=$(blocks "$work/fp8.log") b32=$(blocks "$work/auto.log")
  [ "$b8" -ge $((4 * b32)) ] && [ "$b8" -lt $((4 * b32 + 4)) ] ||
    { echo "tp=$tp pp=$pp: $b8 fp8 blocks against $b32 float32 ones (expected 4x, the budget's whole blocks)"; exit 1; }
  python3 "$here/check_last_logits.py" "$golden" "$work/last-fp8.f32" "$work/reference.f32" \
    "$fixtures/golden/$model.last_logits.f32" "$model tp=$tp pp=$pp" "fp8 KV cache"
done
# Swapping preempted sequences' blocks out and back (byte copies of the codes) changes no token: every
# golden prompt at once through a cache of 48 blocks against one that holds them all.
"$build/tests/golden_check" requests "$golden" "$work/requests.jsonl"
for run in "all" "swap --num-gpu-blocks-override 48 --swap-space 0.001"; do
  read -r name opts <<<"$run"
  # shellcheck disable=SC2086
  "$build/llmserve" generate --model "$build/test-models/$model.h5" --backend cpu --kv-cache-dtype fp8 --block-size 8 \
    --max-model-len 384 --input "$work/requests.jsonl" --output "$work/gen-$name.jsonl" $opts 2>"$work/gen-$name.log" ||
    { tail -5 "$work/gen-$name.log"; exit 1; }
done
grep -Eq "preemptions: [1-9][0-9]* swap" "$work/gen-swap.log" || { echo "no swap preemption happened"; exit 1; }
cmp -s "$work/gen-all.jsonl" "$work/gen-swap.jsonl" || { echo "swapped fp8 blocks changed the output"; exit 1; }
echo "$model: $(grep -o "preemptions: [0-9]* swap" "$work/gen-swap.log" | tail -1), outputs unchanged"

# vLLM's other FP8 variant is refused with a message, not served in another format.
if out=$("$build/llmserve" logits --model "$build/test-models/$model.h5" --backend cpu --kv-cache-dtype fp8_e5m2 \
      --prompts "$work/prompts.jsonl" --output "$work/e5m2.jsonl" 2>&1); then
  echo "kv_cache_dtype fp8_e5m2 was accepted"; exit 1
fi
grep -q "fp8_e5m2' is not supported" <<<"$out" || { echo "unexpected message: $out"; exit 1; }
[ ! -e "$work/e5m2.jsonl" ] || { echo "an output file was written"; exit 1; }
echo "fp8_e5m2 refused: $(grep -o "kv_cache_dtype 'fp8_e5m2'.*" <<<"$out" | head -1)"
