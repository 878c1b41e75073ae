#!/usr/bin/env bash
# Guided decoding's cost per step: llmserve generate of N JSON-mode requests (response_format json_object,
# sampled, 64 tokens) against the same requests unguided, and guided with the bans as edits
# (LLMSERVE_GUIDED_EDITS=1, the way before the allowed-token bitmaps). Prints rank 0's per-step line of each.
#   bench/guided.sh [BUILD_DIR] [N] [extra generate args, e.g. --backend cuda]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
n=${2:-16}
shift $(($# > 2 ? 2 : $#))
model=${MODEL:-$build/test-models/tiny-qwen2.h5}
[ -f "$model" ] || "$build/llmserve-convert" "$root/../shared/fixtures/models/tiny-qwen2" -o "$model"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$n" <<'PY'
import json, sys
w, n = sys.argv[1], int(sys.argv[2])
rows = [{"prompt": f"Describe animal number {i} as JSON:", "max_tokens": 64, "temperature": 0.8, "seed": i} for i in range(n)]
open(f"{w}/plain.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
open(f"{w}/json.jsonl", "w").write("".join(json.dumps({**r, "response_format": {"type": "json_object"}}) + "\n" for r in rows))
PY
echo "model: $model; $n requests x 64 tokens, temperature 0.8; args: $*"
for run in plain json json-edits; do
  input=$work/${run%-edits}.jsonl
  env $([ "$run" = json-edits ] && echo LLMSERVE_GUIDED_EDITS=1) OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
    "$root/tests/mpirun.sh" 1 "$build/llmserve" generate "$model" --max-model-len 512 "$@" --input "$input" \
    --output "$work/$run.out" >"$work/$run.log" 2>&1 || { echo "$run failed:"; tail -5 "$work/$run.log"; exit 1; }
  echo "$run: $(grep -o '[0-9]* us per step on rank 0.*' "$work/$run.log")"
done
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
a = [json.loads(l)["outputs"][0]["text"] for l in open(f"{w}/json.out")]
b = [json.loads(l)["outputs"][0]["text"] for l in open(f"{w}/json-edits.out")]
print("guided texts, bitmaps against edits: " + ("the same" if a == b else "DIFFERENT"))
PY
