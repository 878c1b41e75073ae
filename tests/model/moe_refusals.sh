#!/usr/bin/env bash
# A mixture-of-experts model with what llmserve does not serve it with yet (quantization fp8, LoRA
# adapters): a message naming it and a non-zero exit, before any weight loads.
#   moe_refusals.sh BUILD_DIR MODEL_H5
set -uo pipefail
build=$1 model=$2
fail=0
refused() {  # refused WHAT PATTERN llmserve-arguments...
  local what=$1 pattern=$2
  shift 2
  local out rc
  out=$("$build/llmserve" logits --model "$model" --backend cpu --prompt-ids 1,2,3 "$@" 2>&1)
  rc=$?
  if [ "$rc" -ne 0 ] && grep -q -- "$pattern" <<<"$out"; then
    echo "ok: $what refused (exit $rc)"
  else
    echo "FAIL: $what: exit $rc, output:"; echo "$out" | tail -5; fail=1
  fi
}
refused "quantization fp8" "quantization fp8: not supported with a mixture-of-experts model (Qwen3MoeForCausalLM)" \
  --quantization fp8
refused "LoRA" "LoRA adapters (enable_lora): not supported with a mixture-of-experts model" \
  --enable-lora --lora-modules "a=$build/nowhere"
# and served without them (the same command, nothing refused)
if "$build/llmserve" logits --model "$model" --backend cpu --prompt-ids 1,2,3 --max-tokens 2 >/dev/null 2>&1; then
  echo "ok: served"
else
  echo "FAIL: the model without those options"; fail=1
fi
exit $fail
