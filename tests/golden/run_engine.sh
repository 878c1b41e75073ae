#!/usr/bin/env bash
# Engine golden test: all golden prompts submitted at once to `llmserve generate` (continuous
# batching, paged KV, greedy sampling on the last stage) under a tp x pp layout and engine options;
# the greedy continuations must equal transformers'. Extra arguments go to llmserve (e.g. a tiny KV
# cache to force preemption). Prints the prefix-cache and preemption counts. With KIND=prompt-logprobs
# the requests ask for prompt_logprobs of each prompt and its greedy continuation instead, checked
# against the goldens' log-probabilities and ranks. Cases named priority* give the requests mixed
# priorities (run them with --scheduling-policy priority). LLMSERVE_TEST_BACKEND=cuda runs it on the CUDA backend
# in float32 (tp > 1 needs a GPU per rank: skipped, exit 77, where fewer are visible).
#   run_engine.sh BUILD_DIR FIXTURES MODEL TP PP NAME [llmserve options...]
set -euo pipefail
build=$1 fixtures=$2 model=$3 tp=$4 pp=$5 name=$6
shift 6
here=$(cd "$(dirname "$0")" && pwd)
work="$build/test-out/engine-$model-tp$tp-pp$pp-$name"
mkdir -p "$work"
golden="$fixtures/golden/$model.json"
backend=(--backend "${LLMSERVE_TEST_BACKEND:-cpu}")
if [ "${LLMSERVE_TEST_BACKEND:-cpu}" = cuda ]; then
  backend+=(--dtype float32)
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "$tp" -eq 1 ] || [ "$gpus" -ge $((tp * pp)) ] || { echo "$((tp * pp)) GPUs needed, $gpus visible: skipped"; exit 77; }
fi
if [ "${KIND:-}" = prompt-logprobs ]; then make=prompt-requests check=prompt-logprobs; else make=requests check=generated; fi
"$build/tests/golden_check" $make "$golden" "$work/requests.jsonl"
if [[ $name == priority* ]]; then  # request i gets priority (3 i mod 5) - 2: later ones go first in turn
  python3 - "$work/requests.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[1], "w") as f:
    for i, r in enumerate(lines):
        r["priority"] = (3 * i) % 5 - 2
        f.write(json.dumps(r) + "\n")
PY
fi
"$here/../mpirun.sh" $((tp * pp)) "$build/llmserve" generate --model "$build/test-models/$model.h5" \
  "${backend[@]}" --tensor-parallel-size "$tp" --pipeline-parallel-size "$pp" --max-model-len 512 \
  --input "$work/requests.jsonl" --output "$work/out.jsonl" "$@" 2>"$work/stderr.log" || { cat "$work/stderr.log"; exit 1; }
grep -E "preemptions|prefix cache" "$work/stderr.log" || true
"$build/tests/golden_check" $check "$golden" "$work/out.jsonl"
if [ -n "${EXPECT:-}" ] && ! grep -Eq "$EXPECT" "$work/stderr.log" "$work/out.jsonl"; then
  echo "expected /$EXPECT/ in the log or output"; exit 1
fi
