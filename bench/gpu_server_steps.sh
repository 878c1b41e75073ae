#!/usr/bin/env bash
# Where a GPU server's decode step goes: serves a dummy model of a real shape (default Qwen2.5-1.5B,
# bf16) with debug step lines and runs gpu_e2e.sh's throughput run (256 requests of 512 prompt / 256
# output tokens, all in flight) once greedy, once with 5 log-probabilities per token, and once sampled
# (temperature 0.8, top-p 0.9, top-k 50, repetition penalty 1.1); for each, the output tokens/s and the
# mean time per phase of the steps that decode all 256 sequences (bench/step_summary.py). STEPS_MODES
# picks some of the three (e.g. STEPS_MODES=greedy).
#   bench/gpu_server_steps.sh BUILD_DIR OUT_DIR [CONFIG_JSON] [llmserve options...]
set -euo pipefail
build=$(cd "$1" && pwd) out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cfg=${3:-$root/inputs/models/qwen2.5-1.5b-instruct.json}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log="$out/server-steps.log"
LLMSERVE_LOG_LEVEL=debug "$root/tests/mpirun.sh" 1 "$build/llmserve" --model "$cfg" --load-format dummy --backend cuda \
  --dtype bfloat16 --host 127.0.0.1 --port "$port" --max-model-len 4096 --max-num-seqs 256 "$@" >"$log" 2>&1 &
srv=$!
trap 'kill -TERM $srv 2>/dev/null; wait $srv 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; kill -0 $srv || { tail -20 "$log"; exit 1; }; sleep 0.5; done
b() { "$build/llmserve-bench" --base-url "http://127.0.0.1:$port" --disable-progress --timeout 400 "$@"; }
b --num-prompts 2 --random-input-len 32 --random-output-len 16 --max-concurrency 1 >/dev/null  # warm-up
seed=10
for mode in ${STEPS_MODES:-greedy logprobs sampled}; do
  case $mode in
    greedy) opts=() ;;
    logprobs) opts=(--logprobs 5) ;;
    sampled) opts=(--temperature 0.8 --top-p 0.9 --top-k 50 --repetition-penalty 1.1) ;;
  esac
  first=$(($(wc -l <"$log") + 1))
  seed=$((seed + 1))  # new prompts each run (the same ones would come from the prefix cache)
  echo "== $mode: $(b --num-prompts 256 --random-input-len 512 --random-output-len 256 --seed "$seed" "${opts[@]}" |
    grep -E "Output token|Failed" | tr -s ' ' | tr '\n' ' ')"
  python3 "$root/bench/step_summary.py" "$log" 256 "$first"
done
