#!/usr/bin/env bash
# The main job on this machine: serve SmolLM2-135M-Instruct (fetched and converted on first use) with
# the OpenAI-compatible API on the CPU backend, at http://127.0.0.1:8000 (override with PORT, or any
# llmserve option as arguments). Ctrl-C stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=$(bash scripts/fetch-smollm2.sh)
port=${PORT:-8000}
cat >&2 <<EOM
llmserve: serving SmolLM2-135M-Instruct on http://127.0.0.1:$port (Ctrl-C to stop). Try:
  curl http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
EOM
exec build/llmserve inputs/smollm2-cpu.yaml --model "$model" --port "$port" "$@"
