#!/usr/bin/env bash
# The main job on this machine, for now: fetch and convert SmolLM2-135M-Instruct, then answer the
# demo chat prompts (inputs/prompts/smollm2-chat.jsonl) greedily on the CPU backend.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=$(bash scripts/fetch-smollm2.sh)
np=${NP:-1}
launcher=()
if [ "$np" -gt 1 ]; then launcher=(mpirun -np "$np"); fi
"${launcher[@]}" build/llmserve logits inputs/smollm2-cpu.yaml --model "$model" \
  --prompts inputs/prompts/smollm2-chat.jsonl --max-tokens 64 --stop-at-eos --top-k 1 --output -
