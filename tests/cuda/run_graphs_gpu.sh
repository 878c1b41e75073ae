#!/usr/bin/env bash
# CUDA graphs of decode steps against eager steps, through the engine (`llmserve generate`): 20 requests
# of different prompt and output lengths, so decode batches shrink through several graph buckets
# (max_num_seqs 32: buckets 1, 2, 4, 8, 16, 24, 32, batches padded up to them), on a
# Qwen2.5-1.5B-shaped dummy model:
#  1. float32, graphs vs --enforce-eager: the same tokens for every request, and the log-probability
#     of every generated token within 1e-3;
#  2. float32, pipeline parallel (pp=2, both stages on this GPU, graphs on each) vs eager tp=1: same;
#  3. bfloat16, graphs vs eager: agreement printed (not asserted: bf16 may flip near-ties);
#  4. bfloat16 with kernels launched as programmatic dependents (the default on Hopper) vs without
#     (LLMSERVE_CUDA_PDL=0): bit-identical tokens and log-probabilities (the same kernels in the same
#     order; a missing wait in a kernel would show here as a race);
#  5. the server log says the graphs were recorded (and nothing about graphs with --enforce-eager);
#  6. mixed-step graphs: with --max-num-batched-tokens 48 every prompt is prefilled in chunks beside
#     the running decodes, so steps of 2-48 tokens replay the graphs of the 16-, 32- and 48-token
#     buckets (layers only, the head eager): float32 against eager with the same budget, on one stage
#     and on two (pp=2), as in 1 (and the log counts the mixed-step graph replays); bfloat16 reported;
#  7. asynchronous scheduling with each step's forward pass queued behind the previous draw (bf16, decode
#     and mixed steps): bit-identical tokens and log-probabilities to stepping in turn, steps queued;
#  8. vLLM's cudagraph_mode, capture sizes and -O0 pick the graphs recorded, tokens as the eager steps';
#  9. with two GPUs or more: tp=2 graphs (the all-reduces recorded with the kernels) against eager
#     tp=1, decode and mixed, as in 1; and the pp=2 runs' activations went by NCCL (one GPU: by MPI).
# Exits 77 (skipped) where no GPU is visible.   run_graphs_gpu.sh BUILD_DIR
set -uo pipefail
build=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU: skipped"; exit 77; }
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
work="$build/test-out/gpu-graphs"
mkdir -p "$work"
cfg="$root/inputs/models/qwen2.5-1.5b-instruct.json"
python3 - "$work/requests.jsonl" <<'PY'
import json, random, sys
rng = random.Random(7)
with open(sys.argv[1], "w") as f:
    for i in range(20):
        n = 3 + 3 * i
        ids = [rng.randrange(100, 150000) for _ in range(n)]
        f.write(json.dumps({"prompt_token_ids": ids, "max_tokens": 6 + 3 * (i % 11), "temperature": 0,
                            "ignore_eos": True, "logprobs": 1}) + "\n")
PY
fail=0
run() {  # [TP=n] run NAME DTYPE PP [extra...]
  local name=$1 dt=$2 pp=$3 tp=${TP:-1}; shift 3
  local t0=$SECONDS
  if ! "$root/tests/mpirun.sh" $((tp * pp)) "$build/llmserve" generate --model "$cfg" --load-format dummy --backend cuda \
      --dtype "$dt" -tp "$tp" -pp "$pp" --max-model-len 512 --max-num-seqs 32 --input "$work/requests.jsonl" \
      --output "$work/$name.jsonl" "$@" >"$work/$name.log" 2>&1; then
    echo "FAIL $name did not run"; tail -5 "$work/$name.log"; fail=1; return 1
  fi
  echo "  $name: $((SECONDS - t0)) s; $(grep -o 'CUDA graphs: [^;]*' "$work/$name.log" | head -1)"
}
compare() {  # compare REF GOT MODE(assert: within 1e-3 | exact | report)
  python3 - "$work/$1.jsonl" "$work/$2.jsonl" "$2 vs $1" "$3" <<'PY'
import json, sys
ref, got, name, mode = sys.argv[1:]
r = [json.loads(l) for l in open(ref)]
g = [json.loads(l) for l in open(got)]
assert len(r) == len(g) == 20, (len(r), len(g))
same, worst, tokens = 0, 0.0, 0
for a, b in zip(r, g):
    ta, tb = a["outputs"][0]["token_ids"], b["outputs"][0]["token_ids"]
    same += ta == tb
    tokens += len(ta)
    for x, y, la, lb in zip(ta, tb, a["outputs"][0]["logprobs"], b["outputs"][0]["logprobs"]):
        if x != y:
            break
        worst = max(worst, abs(la["logprob"] - lb["logprob"]))
distinct = all(len(set(a["outputs"][0]["token_ids"])) > 1 for a in r)
msg = f"{name}: same tokens on {same}/20 requests ({tokens} tokens), logprob max difference {worst:.2e}"
if mode == "report":
    print("INFO", msg)
elif same == 20 and worst < (1e-3 if mode == "assert" else 1e-30) and distinct:
    print("ok  ", msg)
else:
    print("FAIL", msg, "" if distinct else "(a continuation repeats one token: the check would be vacuous)")
    sys.exit(1)
PY
}
run eager-f32 float32 1 --enforce-eager && run graphs-f32 float32 1 && { compare eager-f32 graphs-f32 assert || fail=1; }
run graphs-f32-pp2 float32 2 && { compare eager-f32 graphs-f32-pp2 assert || fail=1; }
run eager-bf16 bfloat16 1 --enforce-eager && run graphs-bf16 bfloat16 1 && compare eager-bf16 graphs-bf16 report
LLMSERVE_CUDA_PDL=0 run graphs-bf16-nopdl bfloat16 1 && { compare graphs-bf16-nopdl graphs-bf16 exact || fail=1; }
if grep -q "CUDA graphs: 7 decode batch sizes recorded" "$work/graphs-f32.log" && ! grep -q "CUDA graphs:" "$work/eager-f32.log"; then
  echo "ok   graphs recorded for 7 batch sizes; none with --enforce-eager"
else
  echo "FAIL graph log lines"; grep "CUDA graphs" "$work/graphs-f32.log" "$work/eager-f32.log"; fail=1
fi
run eager-f32-mixed float32 1 --enforce-eager --max-num-batched-tokens 48 &&
  run graphs-f32-mixed float32 1 --max-num-batched-tokens 48 && { compare eager-f32-mixed graphs-f32-mixed assert || fail=1; }
run graphs-f32-mixed-pp2 float32 2 --max-num-batched-tokens 48 && { compare eager-f32-mixed graphs-f32-mixed-pp2 assert || fail=1; }
run eager-bf16-mixed bfloat16 1 --enforce-eager --max-num-batched-tokens 48 &&
  run graphs-bf16-mixed bfloat16 1 --max-num-batched-tokens 48 && compare eager-bf16-mixed graphs-bf16-mixed report
for name in graphs-f32-mixed graphs-f32-mixed-pp2; do
  line=$(grep -o "forward passes: .* eager" "$work/$name.log" | head -1)
  if grep -q "3 mixed-step token counts recorded (16..48" "$work/$name.log" &&
     [ "$(echo "$line" | sed -E 's/.* ([0-9]+) mixed-step graphs.*/\1/')" -gt 10 ]; then
    echo "ok   $name: $line"
  else
    echo "FAIL $name: mixed-step graphs not recorded or not replayed ($line)"; fail=1
  fi
done
# vLLM's CUDA-graph options (model/graph_sizes.h) pick the graphs, which give the eager steps' tokens:
# -O0 none (bit-identical to --enforce-eager); FULL_DECODE_ONLY decode graphs only; capture sizes 3, 5
# and 20 (decode batches of 1-2 padded to 3, of 21-32 eager; mixed steps of up to 20 tokens on graphs);
# max_cudagraph_capture_size 16 the default sizes up to 16.
graph_option() {  # graph_option NAME REF WANT_LOG NOT_IN_LOG [extra...]
  local name=$1 ref=$2 want=$3 unwanted=$4; shift 4
  run "$name" float32 1 "$@" || return
  if [ "$ref" = eager-f32 ] && [ "$name" = opt-O0 ]; then compare "$ref" "$name" exact || fail=1; else compare "$ref" "$name" assert || fail=1; fi
  if grep -q "$want" "$work/$name.log" && { [ -z "$unwanted" ] || ! grep -q "$unwanted" "$work/$name.log"; }; then
    echo "ok   $name: log has: $want${unwanted:+ (and not: $unwanted)}"
  else
    echo "FAIL $name: log lacks: $want${unwanted:+ (or has: $unwanted)}"; grep -i "graphs" "$work/$name.log"; fail=1
  fi
}
graph_option opt-O0 eager-f32 "no CUDA graphs" "CUDA graphs:" -O0
graph_option opt-decode-only eager-f32-mixed "7 decode batch sizes recorded" "mixed-step token counts recorded" \
  --max-num-batched-tokens 48 --compilation-config '{"cudagraph_mode": "FULL_DECODE_ONLY"}'
graph_option opt-sizes eager-f32 "3 decode batch sizes recorded (3..20" "" --cudagraph-capture-sizes 3 5 20
grep -q "3 mixed-step token counts recorded (3..20" "$work/opt-sizes.log" || { echo "FAIL opt-sizes: mixed-step sizes"; fail=1; }
graph_option opt-max16 eager-f32 "5 decode batch sizes recorded (1..16" "" --compilation-config '{"max_cudagraph_capture_size": 16}'
# Asynchronous scheduling (one rank): each step's forward pass queued behind the previous step's draw and
# log-probabilities, its pending tokens filled in on the device: bit-identical to stepping in turn, on
# decode graphs and on mixed steps, and the log says steps were queued.
run async-bf16 bfloat16 1 --async-scheduling && { compare graphs-bf16 async-bf16 exact || fail=1; }
run async-bf16-mixed bfloat16 1 --async-scheduling --max-num-batched-tokens 48 && { compare graphs-bf16-mixed async-bf16-mixed exact || fail=1; }
for name in async-bf16 async-bf16-mixed; do
  q=$(grep -o "async scheduling; [0-9]* forward passes queued" "$work/$name.log" | grep -o "[0-9]* forward" | grep -o "[0-9]*")
  if [ "${q:-0}" -gt 10 ]; then echo "ok   $name: $q forward passes queued"; else echo "FAIL $name: ${q:-no} forward passes queued"; fail=1; fi
done
# With two GPUs or more: the tensor group's all-reduces recorded into the graphs (NCCL in the captured
# stream) against eager tp=1, and the pp=2 runs above passed their activations by NCCL point-to-point
# (one GPU: over MPI, the ranks sharing it).
gpus=$(nvidia-smi -L | grep -c '^GPU')
if [ "$gpus" -ge 2 ]; then
  TP=2 run graphs-f32-tp2 float32 1 && { compare eager-f32 graphs-f32-tp2 assert || fail=1; }
  TP=2 run graphs-f32-mixed-tp2 float32 1 --max-num-batched-tokens 48 && { compare eager-f32-mixed graphs-f32-mixed-tp2 assert || fail=1; }
  for name in graphs-f32-tp2 graphs-f32-mixed-tp2; do
    grep -q "decode batch sizes recorded" "$work/$name.log" || { echo "FAIL $name: no graphs recorded with tp=2"; fail=1; }
  done
  want="NCCL point-to-point"
else
  want="MPI"
fi
for name in graphs-f32-pp2 graphs-f32-mixed-pp2; do
  if grep -q "pipeline stages pass activations over $want" "$work/$name.log"; then  # the MPI line says why
    echo "ok   $name: activations over $want"
  else
    echo "FAIL $name: expected activations over $want"; grep "activations over" "$work/$name.log"; fail=1
  fi
done
exit $fail
