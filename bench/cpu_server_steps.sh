#!/usr/bin/env bash
# The engine's time per decode step in a CPU-backend server (tiny Qwen2 fixture model, one rank):
# N streamed requests of 16 prompt tokens and OUTLEN output tokens from llmserve-bench, the server's
# debug step lines summed over the steps that decode all N sequences (scheduling, forward, sampling,
# outputs; outputs also by quarter of the run, as the outputs grow), and the output tokens/s.
#   bench/cpu_server_steps.sh [N] [OUTLEN] [BINARY] [llmserve-bench options...]
#   (defaults 64, 512, build/llmserve; e.g. `--logprobs 5` after the binary)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-64} outlen=${2:-512} bin=${3:-$root/build/llmserve}
shift $(( $# < 3 ? $# : 3 ))
model="$root/build/test-models/tiny-qwen2.h5"
[ -f "$model" ] || "$root/build/llmserve-convert" "$root/../shared/fixtures/models/tiny-qwen2" -o "$model" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
# Passive OpenMP waits: the forward's idle threads would otherwise spin on the cores the engine's and
# the HTTP threads need.
OMP_WAIT_POLICY=passive LLMSERVE_LOG_LEVEL=debug "$bin" --model "$model" --backend cpu --host 127.0.0.1 --port "$port" \
  --max-model-len $((outlen + 64)) --max-num-seqs "$n" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(basename "$bin"), $n x $outlen output tokens"
"$root/build/llmserve-bench" --base-url "http://127.0.0.1:$port" --disable-progress --num-prompts "$n" \
  --random-input-len 16 --random-output-len "$outlen" --seed 1 "$@" | grep -E "Failed|Output token"
kill -TERM $pid; wait $pid 2>/dev/null || true
python3 "$root/bench/step_summary.py" "$log" "$n"
