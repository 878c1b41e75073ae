#!/usr/bin/env bash
# GPU golden test: the fixture model on the CUDA backend in DTYPE (bfloat16 | float16) against the
# fp32 transformers goldens with issue 6's tolerances. Exits 77 (skipped) where no GPU is visible.
# With TP > 1 the tensor group's all-reduces go through NCCL (one GPU per rank; skipped when fewer GPUs).
#   run_golden_gpu.sh BUILD_DIR FIXTURES MODEL DTYPE [PP] [TP]
set -euo pipefail
build=$1 fixtures=$2 model=$3 dtype=$4 pp=${5:-1} tp=${6:-1}
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU: skipped"; exit 77; }
gpus=$(nvidia-smi -L | grep -c '^GPU')
# NCCL needs a GPU per rank of a tensor group; pipeline stages alone may share one.
[ "$tp" -eq 1 ] || [ "$gpus" -ge $((tp * pp)) ] || { echo "$((tp * pp)) GPUs needed, $gpus visible: skipped"; exit 77; }
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
here=$(cd "$(dirname "$0")" && pwd)
work="$build/test-out/gpu-golden-$model-$dtype-tp$tp-pp$pp"
mkdir -p "$work"
golden="$fixtures/golden/$model.json"
"$build/tests/golden_check" prompts "$golden" "$work/prompts.jsonl"
"$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "$build/test-models/$model.h5" --backend cuda --dtype "$dtype" \
  --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --block-size 16 --prompts "$work/prompts.jsonl" --max-tokens 24 \
  --output "$work/out.jsonl" --logits-output "$work/last.f32"
"$build/tests/golden_check" lowprec "$golden" "$fixtures/golden/$model.last_logits.f32" "$work/out.jsonl" "$work/last.f32"
