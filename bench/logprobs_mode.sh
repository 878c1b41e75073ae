#!/usr/bin/env bash
# What logprobs_mode costs a decode step on a GPU (docs/performance.md, "logprobs_mode on a GPU"):
# llmserve generate on the dummy Qwen2.5-1.5B shape in bf16, 256 requests of 128 random prompt tokens and
# 256 output tokens (ignore_eos, temperature 0.8, top_k 50, seeded), max_num_seqs 256, with no logprobs and
# with 5 under raw_logprobs and processed_logprobs. Each run's engine line (rank 0's mean time a step, 256
# decode steps and 4 prefill steps, and the part of it spent waiting for the device in sampling), and its
# wall time less that of the same requests with max_tokens 1 (start-up, graphs and prefills) over the 256
# decode steps (a difference of two runs' start-ups: noisy by a few ms a step); and whether the modes give
# the same tokens.
#   bench/logprobs_mode.sh BUILD OUT
set -euo pipefail
build=$1 out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
python3 - "$out" <<'PY'
import json, random, sys
d = sys.argv[1]
r = random.Random(7)
rows = [{"ids": [r.randrange(1000, 100000) for _ in range(128)], "max_tokens": 256, "ignore_eos": True,
         "temperature": 0.8, "top_k": 50, "seed": i, "logprobs": 5} for i in range(256)]
open(f"{d}/lpm.jsonl", "w").write("".join(json.dumps(x) + "\n" for x in rows))
open(f"{d}/lpm-none.jsonl", "w").write("".join(json.dumps({k: v for k, v in x.items() if k != "logprobs"}) + "\n" for x in rows))
open(f"{d}/lpm-one.jsonl", "w").write("".join(json.dumps({**{k: v for k, v in x.items() if k != "logprobs"}, "max_tokens": 1}) + "\n" for x in rows))
PY
run() {  # run NAME INPUT MODE: prints the wall seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$build/llmserve" generate --model "$root/inputs/models/qwen2.5-1.5b-instruct.json" --load-format dummy --backend cuda \
    --dtype bfloat16 --max-model-len 1024 --max-num-seqs 256 --logprobs-mode "$3" --input "$2" --output "$out/out-$1.jsonl" \
    >"$out/gen-$1.log" 2>&1
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
base=$(run startup "$out/lpm-one.jsonl" raw_logprobs)
printf 'start-up and prefills: %.2f s\n' "$base"
for m in none raw_logprobs processed_logprobs; do
  in=$out/lpm.jsonl mode=$m
  [ "$m" = none ] && in=$out/lpm-none.jsonl mode=raw_logprobs
  w=$(run "$m" "$in" "$mode")
  python3 -c "print(f'$m: wall {$w:.2f} s, {($w - $base) / 256 * 1000:.1f} ms a decode step of 256 rows')"
  grep -o 'generate: [0-9]* us per step.*' "$out/gen-$m.log" || true
done
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
tok = lambda m: [json.loads(l)["outputs"][0]["token_ids"] for l in open(f"{d}/out-{m}.jsonl")]
print("same tokens in every mode:", tok("none") == tok("raw_logprobs") == tok("processed_logprobs"))
PY
