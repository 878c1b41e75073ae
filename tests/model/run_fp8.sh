#!/usr/bin/env bash
# `quantization: fp8` on the CPU backend (the float32 reference of a quantized model) against an
# independent one: bench/reference/bf16_rounding.py --fp8, a float64 numpy forward of the fixture
# checkpoint whose layer matrices it quantizes itself (E4M3 by a search over the format's values, a
# power-of-two scale per row; with tp > 1 the row-parallel matrices per rank's block of columns, as each
# rank quantizes its own shard). The last-position logits must agree to float32 precision on every
# layout, and differ from the unquantized goldens (the weights were quantized).
#   run_fp8.sh BUILD_DIR FIXTURES MODEL
set -euo pipefail
build=$1 fixtures=$2 model=$3
here=$(cd "$(dirname "$0")" && pwd)
golden="$fixtures/golden/$model.json"
for layout in "1 1" "2 1" "2 2"; do
  read -r tp pp <<<"$layout"
  work="$build/test-out/fp8-$model-tp$tp-pp$pp"
  mkdir -p "$work"
  "$build/tests/golden_check" prompts "$golden" "$work/prompts.jsonl"
  python3 "$here/../../bench/reference/bf16_rounding.py" "$fixtures" "$model" --fp8 "$work/reference.f32" --tp "$tp"
  "$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "$build/test-models/$model.h5" \
    --backend cpu --quantization fp8 --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --block-size 8 \
    --prompts "$work/prompts.jsonl" --max-tokens 1 --output "$work/out.jsonl" --logits-output "$work/last.f32"
  python3 "$here/check_last_logits.py" "$golden" "$work/last.f32" "$work/reference.f32" \
    "$fixtures/golden/$model.last_logits.f32" "$model tp=$tp pp=$pp" "fp8"
done
