#!/usr/bin/env bash
# A dummy model of a real shape (load_format dummy; default inputs/models/qwen2.5-1.5b-instruct.json,
# also run for the other shapes of inputs/models/: Qwen2.5-0.5B and 7B, Llama-3.1-8B) on GPUs:
#  1. GPU float32 against the CPU backend on identical weights (4 of the layers, for CPU time):
#     same greedy tokens, last-position logits within 1e-3 relative L2;
#  2. all the layers in float32 on every layout the GPUs allow and the query heads split into (tp=1;
#     tp=2 and pp=2 with 2 GPUs; tp=4, tp=2 pp=2 with 4; tp=8, tp=4 pp=2 with 8): the same greedy
#     tokens as tp=1;
#  3. bfloat16 on the same layouts: agreement with float32 is printed (not asserted: bf16 flips near-ties);
#  4. cpu_offload_gb (bfloat16, 4 layers): the offloaded matrices read from host memory (in place, or
#     copied to the device for a GEMM of many tokens) give the same logits, bit for bit, as the model
#     held on the GPU, with CUDA graphs and eagerly;
#  5. quantization fp8 (bfloat16, 4 layers): the same bits with the matrices offloaded as without;
#     agreement with the CPU backend's fp8 reference (the same quantized weights in float32), between
#     CUDA graphs and eager steps, and with the unquantized model is printed.
# Exits 77 (skipped) where no GPU is visible.   run_dummy_gpu.sh BUILD_DIR [CONFIG_JSON]
set -uo pipefail
build=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU: skipped"; exit 77; }
gpus=$(nvidia-smi -L | grep -c '^GPU')
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
cfg=${2:-$root/inputs/models/qwen2.5-1.5b-instruct.json}
work="$build/test-out/gpu-dummy-$(basename "$cfg" .json)"
mkdir -p "$work"
layers=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$cfg")
# (Token ids below Llama 3's vocabulary of 128,256. Every run records the decode graphs of every batch
# size at start-up, so a shape whose few-row kernels cannot launch fails here.)
prompts=(--prompt-ids 1,2,3,4,5,6,7,8 --prompt-ids 9707,11,1879,0 --prompt-ids 128000,872,198,3838,374,279,6722,315,9625,30)
fail=0
run() {  # run NAME BACKEND DTYPE TP PP [extra...]
  local name=$1 be=$2 dt=$3 tp=$4 pp=$5; shift 5
  local t0=$SECONDS
  if ! "$root/tests/mpirun.sh" $((tp * pp)) "$build/llmserve" logits --model "$cfg" --load-format dummy --backend "$be" \
      --dtype "$dt" -tp "$tp" -pp "$pp" --max-model-len 128 "${prompts[@]}" --max-tokens 16 --top-k 2 \
      --output "$work/$name.jsonl" --logits-output "$work/$name.f32" "$@" >"$work/$name.log" 2>&1; then
    echo "FAIL $name did not run"; tail -5 "$work/$name.log"; fail=1; return 1
  fi
  echo "  $name: $((SECONDS - t0)) s"
}
compare() {  # compare REF GOT NAME MODE(exact|l2|report)
  python3 - "$work/$1" "$work/$2" "$3" "$4" <<'PY'
import json, math, struct, sys
ref, got, name, mode = sys.argv[1:]
r = [json.loads(l) for l in open(ref + ".jsonl")]
g = [json.loads(l) for l in open(got + ".jsonl")]
same = [a["generated_ids"] == b["generated_ids"] for a, b in zip(r, g)]
def floats(p):
    data = open(p + ".f32", "rb").read()
    return struct.unpack(f"{len(data)//4}f", data)
fr, fg = floats(ref), floats(got)
V = len(fr) // len(r)
errs = []
for i in range(len(r)):
    a, b = fr[i*V:(i+1)*V], fg[i*V:(i+1)*V]
    errs.append(math.sqrt(sum((x-y)**2 for x, y in zip(a, b)) / max(sum(x*x for x in a), 1e-30)))
first = [next((k for k, (x, y) in enumerate(zip(a["generated_ids"], b["generated_ids"])) if x != y), len(a["generated_ids"])) for a, b in zip(r, g)]
distinct = all(len(set(a["generated_ids"])) > 1 for a in r)
ok = all(same) and distinct and (mode != "l2" or max(errs) < 1e-3) and (mode != "bits" or fr == fg)
if mode == "report":
    print(f"INFO {name}: greedy equal on {sum(same)}/{len(same)} prompts (first difference at {first}), last-logit rel L2 max {max(errs):.2e}")
    sys.exit(0)
print(("PASS " if ok else "FAIL ") + f"{name}: greedy equal {sum(same)}/{len(same)}, last-logit rel L2 max {max(errs):.2e}"
      + ("" if distinct else " (degenerate output)"))
sys.exit(0 if ok else 1)
PY
}
ov=(--hf-overrides '{"num_hidden_layers": 4}')
run cpu-4l cpu float32 1 1 "${ov[@]}" && run gpu-4l-fp32 cuda float32 1 1 "${ov[@]}" &&
  { compare cpu-4l gpu-4l-fp32 "GPU float32 vs CPU, 4 layers" l2 || fail=1; }
# Offload about one and a half layers' matrices (the 1.5B shape's: 93 MB a layer; 7B's: 466 MB).
gb=$(python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); H, I = c["hidden_size"], c["intermediate_size"]
kv = c["num_key_value_heads"] * H // c["num_attention_heads"]; print(f"{1.5 * 2 * (H * (2 * H + 2 * kv) + 3 * H * I) / 2**30:.4f}")' "$cfg")
# A 100-token prompt besides: its prefill's GEMMs (cuBLASLt, 122 tokens) read the offloaded matrices
# from the device copy the backend makes of each.
long=(--prompt-ids "$(seq -s, 1000 1099)")
run gpu-4l-bf16 cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" &&
  run gpu-4l-bf16-offload cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" --cpu-offload-gb "$gb" &&
  run gpu-4l-bf16-eager cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" --enforce-eager &&
  run gpu-4l-bf16-offload-eager cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" --cpu-offload-gb "$gb" --enforce-eager && {
    grep -h "cpu_offload_gb:" "$work"/gpu-4l-bf16-offload.log
    grep -q "the matrices of 2 of this stage's 4 layers" "$work"/gpu-4l-bf16-offload.log || { echo "FAIL offload: not 2 layers offloaded"; fail=1; }
    compare gpu-4l-bf16 gpu-4l-bf16-offload "bfloat16 with cpu_offload_gb $gb (graphs) vs without" bits || fail=1
    compare gpu-4l-bf16-eager gpu-4l-bf16-offload-eager "bfloat16 with cpu_offload_gb $gb (eager) vs without" bits || fail=1
  }
run cpu-4l-fp8 cpu float32 1 1 "${ov[@]}" "${long[@]}" --quantization fp8 &&
  run gpu-4l-fp8 cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" --quantization fp8 &&
  run gpu-4l-fp8-eager cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" --quantization fp8 --enforce-eager &&
  run gpu-4l-fp8-offload cuda bfloat16 1 1 "${ov[@]}" "${long[@]}" --quantization fp8 --cpu-offload-gb "$gb" && {
    compare gpu-4l-fp8 gpu-4l-fp8-eager "fp8 graphs vs eager" report
    compare gpu-4l-fp8 gpu-4l-fp8-offload "fp8 with cpu_offload_gb $gb vs without" bits || fail=1
    compare cpu-4l-fp8 gpu-4l-fp8 "fp8 (bfloat16 activations) vs the CPU's fp8 reference" report
    [ -f "$work/gpu-4l-bf16.f32" ] && compare gpu-4l-bf16 gpu-4l-fp8 "fp8 vs bfloat16 weights" report
  }
heads=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_attention_heads"])' "$cfg")
layouts=("1 1")
for l in "2 1" "1 2" "4 1" "2 2" "8 1" "4 2"; do  # those the GPUs hold and the query heads split into
  read -r tp pp <<<"$l"
  if [ $((tp * pp)) -le "$gpus" ] && [ $((heads % tp)) -eq 0 ]; then layouts+=("$l"); fi
done
for dt in float32 bfloat16; do
  for l in "${layouts[@]}"; do
    read -r tp pp <<<"$l"
    run "full-$dt-tp$tp-pp$pp" cuda "$dt" "$tp" "$pp" || continue
    if [ "$dt" = float32 ] && [ "$l" != "1 1" ]; then
      compare full-float32-tp1-pp1 "full-float32-tp$tp-pp$pp" "$layers layers float32 tp=$tp pp=$pp vs tp=1" exact || fail=1
    fi
    [ "$dt" = bfloat16 ] && compare full-float32-tp1-pp1 "full-bfloat16-tp$tp-pp$pp" "$layers layers bfloat16 tp=$tp pp=$pp vs float32 tp=1" report
  done
done
exit $fail
