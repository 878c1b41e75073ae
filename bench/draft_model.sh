#!/usr/bin/env bash
# A draft model (speculative_config method draft_model) against decoding a token a step, on dummy weights:
# the served model is CONFIG's (load_format dummy), the draft the same config cut to its first DRAFT_LAYERS
# layers, whose dummy weights are the served model's own (each tensor's are seeded by its name): a
# layer-skipping draft of the served model (all its layers: the model itself). `llmserve generate` over 1 and 8 requests of 64 random prompt
# tokens and 256 greedy output tokens; prints output tokens/s (the generate loop's count, load excluded),
# the ratio, the drafts' acceptance, and on how many requests the tokens are those of decoding a token a
# step. Random weights say nothing of a real draft's acceptance; this measures what a step with drafts
# costs at a given acceptance.
#   bench/draft_model.sh BUILD CONFIG.json [DRAFT_LAYERS] [K]
# BACKEND=cuda (default) or cpu, DTYPE (default bfloat16 on a GPU, float32 on the CPU).
set -euo pipefail
build=$1 config=$2 layers=${3:-4} k=${4:-3}
here=$(cd "$(dirname "$0")" && pwd)
backend=${BACKEND:-cuda}
dtype=${DTYPE:-$([ "$backend" = cpu ] && echo float32 || echo bfloat16)}
work=$build/test-out/draft-model-bench
mkdir -p "$work"
python3 - "$config" "$layers" "$work" <<'PY'
import json, random, sys
config, layers, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = json.load(open(config))
if not 1 <= layers <= c["num_hidden_layers"]:
    sys.exit(f"draft_model.sh: the draft's layers must be 1 to the model's {c['num_hidden_layers']}, got {layers}")
c["num_hidden_layers"] = layers
json.dump(c, open(f"{work}/draft.json", "w"))
rng = random.Random(5)
for n in (1, 8):
    with open(f"{work}/in-{n}.jsonl", "w") as f:
        for _ in range(n):
            ids = [rng.randrange(100, 20000) for _ in range(64)]
            f.write(json.dumps({"prompt_token_ids": ids, "max_tokens": 256, "temperature": 0, "ignore_eos": True}) + "\n")
PY
spec="{\"model\": \"$work/draft.json\", \"num_speculative_tokens\": $k}"
rate() { grep -oE "[0-9.]+ tokens/s" "$1" | tail -1 | cut -d' ' -f1; }
run() {  # run NAME INPUT [ARGS...]
  local name=$1 in=$2
  shift 2
  "$build/llmserve" generate --model "$config" --load-format dummy --backend "$backend" --dtype "$dtype" --max-model-len 2048 \
    --input "$in" --output "$work/$name.out" "$@" >"$work/$name.log" 2>&1 || { tail -5 "$work/$name.log"; exit 1; }
}
echo "served: $(basename "$config") (dummy), draft: its first $layers layers, $k drafts a step, $backend $dtype"
printf '%5s %12s %12s %7s %10s %s\n' reqs "base tok/s" "spec tok/s" ratio accepted same
for n in 1 8; do
  run "base-$n" "$work/in-$n.jsonl"
  run "spec-$n" "$work/in-$n.jsonl" --speculative-config "$spec"
  b=$(rate "$work/base-$n.log") s=$(rate "$work/spec-$n.log")
  acc=$(grep -oE "accepted \([0-9]+%\)" "$work/spec-$n.log" | grep -oE "[0-9]+%" || echo "-")
  same=$(python3 - "$work/base-$n.out" "$work/spec-$n.out" <<'PY'
import json, sys
a, b = ([json.loads(l)["outputs"][0]["token_ids"] for l in open(f)] for f in sys.argv[1:])
print(f"{sum(x == y for x, y in zip(a, b))}/{len(a)}" if len(a) == len(b) else "NO")
PY
)
  printf '%5s %12s %12s %7s %10s %s\n' "$n" "$b" "$s" "$(python3 -c "print(f'{$s / $b:.2f}x')")" "$acc" "$same"
done
