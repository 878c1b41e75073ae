#!/usr/bin/env bash
# load_format dummy on the CPU backend: a Qwen2.5-0.5B-shaped model from inputs/models (2 layers and a
# smaller vocabulary through hf_overrides, for CPU time) gives the same greedy tokens and the same
# logits on every layout, since each rank generates exactly its own shard of the same weights; and
# bad dummy inputs are refused with a message.
#   run_dummy_layouts.sh BUILD_DIR
set -uo pipefail
build=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$build/test-out/dummy-layouts"
mkdir -p "$work"
cfg="$root/inputs/models/qwen2.5-0.5b-instruct.json"
ov='{"num_hidden_layers": 2, "vocab_size": 8192}'
fail=0
run() {  # run TP PP OUT [extra...]
  local tp=$1 pp=$2 out=$3; shift 3
  "$root/tests/mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "$cfg" --load-format dummy --hf-overrides "$ov" \
    --backend cpu -tp "$tp" -pp "$pp" --max-model-len 64 --prompt-ids 1,2,3,4,5 --prompt-ids 700,42,4000 \
    --max-tokens 8 --top-k 3 --output "$out" "$@" >"$out.log" 2>&1
}
same_as_ref() {  # same_as_ref REF OUT NAME
  python3 - "$1" "$2" "$3" <<'PY2'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
ok = len(ref) == len(got) == 2
for r, g in zip(ref, got):
    ok &= r["generated_ids"] == g["generated_ids"] and r["top_ids"] == g["top_ids"]
    ok &= all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for ra, ga in zip(r["top_logits"], g["top_logits"]) for a, b in zip(ra, ga))
distinct = len(set(ref[0]["generated_ids"])) > 1
print(("PASS " if ok and distinct else "FAIL ") + sys.argv[3] + ": same greedy tokens and logits as tp=1 pp=1"
      + ("" if distinct else " (degenerate: one token repeated)"))
sys.exit(0 if ok and distinct else 1)
PY2
}
run 1 1 "$work/ref.jsonl" || { echo "FAIL reference run"; cat "$work/ref.jsonl.log"; exit 1; }
for layout in "2 1" "1 2" "2 2"; do
  read -r tp pp <<<"$layout"
  out="$work/tp$tp-pp$pp.jsonl"
  if ! run "$tp" "$pp" "$out"; then echo "FAIL tp=$tp pp=$pp did not run"; cat "$out.log"; fail=1; continue; fi
  same_as_ref "$work/ref.jsonl" "$out" "tp=$tp pp=$pp" || fail=1
done
# The Qwen3-1.7B shape (per-head q/k norms, head_dim 128 beside hidden 2048 / 16 heads) the same way
# (in a subshell: cfg changes for it alone).
(
  cfg="$root/inputs/models/qwen3-1.7b.json"
  run 1 1 "$work/qwen3-ref.jsonl" && run 2 2 "$work/qwen3-tp2-pp2.jsonl" ||
    { echo "FAIL the Qwen3-1.7B shape did not run"; tail -3 "$work"/qwen3-*.log; exit 1; }
  same_as_ref "$work/qwen3-ref.jsonl" "$work/qwen3-tp2-pp2.jsonl" "Qwen3-1.7B shape, tp=2 pp=2"
) || fail=1
# Another seed gives other weights.
run 1 1 "$work/seed.jsonl" --seed 7 && ! cmp -s <(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["generated_ids"])' "$work/ref.jsonl") \
  <(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["generated_ids"])' "$work/seed.jsonl") \
  && echo "PASS another seed, other weights" || { echo "FAIL --seed does not change the dummy weights"; fail=1; }
# cpu_offload_gb (GPUs only) is accepted on the CPU backend with a warning, and changes nothing.
run 1 1 "$work/offload.jsonl" --cpu-offload-gb 1 && cmp -s "$work/ref.jsonl" "$work/offload.jsonl" &&
  grep -q "cpu_offload_gb has no effect on the CPU backend" "$work/offload.jsonl.log" \
  && echo "PASS cpu_offload_gb on the CPU backend: warned, same output" || { echo "FAIL cpu_offload_gb on the CPU backend"; fail=1; }

expect_error() {  # expect_error NAME PATTERN args...
  local name=$1 pat=$2; shift 2
  local out rc
  out=$(timeout 60 "$build/llmserve" logits --backend cpu --prompt-ids 1,2 --max-model-len 64 "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && grep -q -- "$pat" <<<"$out"; then echo "PASS $name"; else echo "FAIL $name: rc=$rc $out"; fail=1; fi
}
expect_error "cpu_offload_gb below 0" "cpu_offload_gb must be >= 0, got -1" --model "$cfg" --load-format dummy --cpu-offload-gb -1
expect_error "dummy: missing config.json" "cannot read '$work/none/config.json'" --model "$work/none" --load-format dummy
expect_error "dummy: hf_overrides not JSON" "hf_overrides must be a JSON object" --model "$cfg" --load-format dummy --hf-overrides '{nope'
expect_error "dummy: an impossible override" "num_attention_heads" --model "$cfg" --load-format dummy --hf-overrides '{"num_attention_heads": 5}'
expect_error "dummy: hidden size not divisible by the heads" "hidden_size (900) is not divisible by num_attention_heads (14)" \
  --model "$cfg" --load-format dummy --hf-overrides '{"hidden_size": 900}'
# Weights that cannot fit are refused before anything is allocated (these died of std::bad_alloc or
# spent minutes listing 10^9 tensors); timeout makes a regression fail instead of hanging the suite.
expect_error "dummy: a vocabulary too large for memory" "model weights: this rank's shard needs .* GiB of host memory available" \
  --model "$cfg" --load-format dummy --hf-overrides '{"vocab_size": 1000000000000}'
expect_error "dummy: 10^8 layers" "model weights: this rank's shard needs" \
  --model "$cfg" --load-format dummy --hf-overrides '{"num_hidden_layers": 100000000}'
out=$(timeout 60 "$root/tests/mpirun.sh" 2 "$build/llmserve" logits --backend cpu -tp 2 --prompt-ids 1,2 --max-model-len 64 \
  --model "$cfg" --load-format dummy --hf-overrides '{"vocab_size": 10000000000}' 2>&1); rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "the 2 ranks of this node need .* GiB in all" <<<"$out"; then echo "PASS dummy: the node's ranks' weights summed"
else echo "FAIL dummy: two ranks too large: rc=$rc $out"; fail=1; fi
exit $fail
