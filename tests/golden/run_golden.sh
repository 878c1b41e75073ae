#!/usr/bin/env bash
# One golden test: convert nothing (the fixture setup did), run `llmserve logits` on a tp x pp
# layout under mpirun, compare with the transformers goldens.
# Extra arguments go to llmserve; MODEL_H5 names another model file than test-models/MODEL.h5.
#   run_golden.sh BUILD_DIR FIXTURES MODEL(tiny-qwen2|tiny-llama3|...) TP PP [llmserve options...]
set -euo pipefail
build=$1 fixtures=$2 model=$3 tp=$4 pp=$5
shift 5
here=$(cd "$(dirname "$0")" && pwd)
work="$build/test-out/golden-$model-tp$tp-pp$pp${MODEL_H5:+-$(basename "$MODEL_H5" .h5)}"
mkdir -p "$work"
golden="$fixtures/golden/$model.json"
"$build/tests/golden_check" prompts "$golden" "$work/prompts.jsonl"
"$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "${MODEL_H5:-$build/test-models/$model.h5}" \
  --backend cpu --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --block-size 8 \
  --prompts "$work/prompts.jsonl" --max-tokens 24 --output "$work/out.jsonl" --logits-output "$work/last.f32" "$@"
"$build/tests/golden_check" compare "$golden" "$fixtures/golden/$model.last_logits.f32" "$work/out.jsonl" "$work/last.f32"
