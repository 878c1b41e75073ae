#!/usr/bin/env bash
# The main job on this machine, for now: fetch and convert SmolLM2-135M-Instruct, then answer the
# demo chat prompts (inputs/prompts/demo-chat.jsonl: chat template + tokenizer + model) greedily on
# the CPU backend, printing the answers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=$(bash scripts/fetch-smollm2.sh)
np=${NP:-1}
launcher=()
if [ "$np" -gt 1 ]; then launcher=(mpirun -np "$np"); fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"${launcher[@]}" build/llmserve logits inputs/smollm2-cpu.yaml --model "$model" \
  --prompts inputs/prompts/demo-chat.jsonl --max-tokens 96 --stop-at-eos --top-k 1 --output "$out"
python3 - "$out" <<'EOP'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    print("---\n" + json.loads(line)["generated_text"].strip())
EOP
