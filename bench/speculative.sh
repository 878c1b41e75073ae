#!/usr/bin/env bash
# n-gram speculative decoding against decoding a token a step: `llmserve generate` over chat requests that
# repeat their input (an edit / quote task: drafts match) and that write freely (drafts rarely match),
# greedy, one request and 8 at once. Prints output tokens/s of each run (the generate loop's own count,
# load excluded), the ratio, the drafts' acceptance, and on how many requests the outputs are the same
# (on the CPU backend in float32 all must be, and the script fails otherwise; on a GPU in 16 bits a fed
# row's GEMM is not the one-row GEMV, and a near-tie may go the other way).
#   bench/speculative.sh BUILD MODEL.h5 [RANKS] [SPEC_JSON]
# BACKEND=cpu (default) or cuda, DTYPE (default float32 on the CPU, bfloat16 on a GPU).
set -euo pipefail
build=$1 model=$2 ranks=${3:-1}
spec=${4:-'{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}'}
here=$(cd "$(dirname "$0")" && pwd)
backend=${BACKEND:-cpu}
dtype=${DTYPE:-$([ "$backend" = cpu ] && echo float32 || echo bfloat16)}
work=$build/test-out/speculative-bench
mkdir -p "$work"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
texts = [
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.",
    "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n\nprint(add(2, 3), mul(4, 5))",
    "Paris is the capital of France. Berlin is the capital of Germany. Madrid is the capital of Spain. Rome is the capital of Italy.",
    "To make tea, boil water, put a tea bag in a cup, pour the water over it, wait three minutes, then take the bag out.",
    "Monday: gym. Tuesday: swim. Wednesday: rest. Thursday: gym. Friday: swim. Saturday: long walk. Sunday: rest.",
    "Alice sent Bob a message. Bob read the message and sent Alice a reply. Alice read the reply and called Bob.",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i, 'even')\n    else:\n        print(i, 'odd')",
    "Water boils at 100 degrees Celsius at sea level and freezes at 0 degrees Celsius. At altitude it boils at a lower temperature.",
]
topics = ["a lighthouse", "a lost key", "the first snow", "a robot chef", "a quiet library", "a long train ride", "a garden", "a storm"]
for name, asks in (("repeat", [f"Repeat the following text exactly, word for word:\n\n{t}" for t in texts]),
                   ("free", [f"Write a short story about {t}." for t in topics])):
    for n in (1, 8):
        with open(f"{work}/{name}-{n}.jsonl", "w") as f:
            for a in asks[:n]:
                f.write(json.dumps({"messages": [{"role": "user", "content": a}], "max_tokens": 160, "temperature": 0}) + "\n")
PY
rate() { grep -oE "[0-9.]+ tokens/s" "$1" | tail -1 | cut -d' ' -f1; }
printf '%-8s %5s %12s %12s %7s %10s %s\n' workload reqs "base tok/s" "spec tok/s" ratio accepted same
fails=0
for name in repeat free; do
  for n in 1 8; do
    in=$work/$name-$n.jsonl
    "$here/../tests/mpirun.sh" "$ranks" "$build/llmserve" generate --model "$model" --backend "$backend" --dtype "$dtype" -tp "$ranks" --max-model-len 2048 \
      --input "$in" --output "$work/$name-$n-base.out" >"$work/$name-$n-base.log" 2>&1
    "$here/../tests/mpirun.sh" "$ranks" "$build/llmserve" generate --model "$model" --backend "$backend" --dtype "$dtype" -tp "$ranks" --max-model-len 2048 \
      --speculative-config "$spec" --input "$in" --output "$work/$name-$n-spec.out" >"$work/$name-$n-spec.log" 2>&1
    b=$(rate "$work/$name-$n-base.log") s=$(rate "$work/$name-$n-spec.log")
    acc=$(grep -oE "accepted \([0-9]+%\)" "$work/$name-$n-spec.log" | grep -oE "[0-9]+%" || echo "-")
    same=$(python3 - "$work/$name-$n-base.out" "$work/$name-$n-spec.out" <<'PY'
import json, sys
a, b = ([json.loads(l)["outputs"][0]["token_ids"] for l in open(f)] for f in sys.argv[1:])
print(f"{sum(x == y for x, y in zip(a, b))}/{len(a)}" if len(a) == len(b) else "NO")
PY
)
    [ "$backend" != cpu ] || [ "$dtype" != float32 ] || [ "$same" = "$n/$n" ] || fails=$((fails + 1))
    printf '%-8s %5s %12s %12s %7s %10s %s\n' "$name" "$n" "$b" "$s" "$(python3 -c "print(f'{$s / $b:.2f}x')")" "$acc" "$same"
  done
done
[ $fails -eq 0 ] || { echo "speculative: outputs differ from decoding a token a step"; exit 1; }
