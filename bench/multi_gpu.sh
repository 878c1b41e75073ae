#!/usr/bin/env bash
# Issue 8 on a machine with several GPUs, one part per call (each fits a 10-minute limit):
#   bench/multi_gpu.sh BUILD_DIR OUT_DIR PART
#   PART = tests    the CUDA ctest cases (cuda_tests, memcheck, the fixture goldens on every tp x pp
#                   layout up to 4 GPUs the fixtures' 4 heads allow, graphs) and the NCCL all-reduce
#                   bench at 2, 4 and 8 ranks (bus bandwidth against the link's)
#          dummy    the dummy 1.5B and 7B (and Llama-3.1-8B with 8 GPUs, the shipped config whose heads
#                   split 8 ways): the same greedy tokens on every layout as on one GPU
#          scaling  bench/gpu_e2e.sh per layout of the 1.5B shape (batch-1 TPOT, TTFT, 256-way
#                   throughput; the all-reduce time per step from the server's log when it prints it)
#          sweep    scripts/sweep over the layouts with its CSV and plot
# Needs a CUDA build (cmake -DLLMSERVE_CUDA=ON) and, for `tests`, LLMSERVE_FIXTURES configured. Keeps
# NCCL_NVLS_ENABLE=0 (this workplace's machines). Writes logs under OUT_DIR and prints a summary.
set -uo pipefail
build=$(cd "$1" && pwd) out=$2 part=$3
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
# The sweep's own mpirun, when this runs as root (as on the device machines; clusters do not need it).
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "${gpus:-0}" -ge 2 ] || { echo "multi_gpu.sh: $gpus GPU(s) visible, 2 or more needed"; exit 1; }
echo "$gpus GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
nvidia-smi topo -m >"$out/topology.txt" 2>&1 || true
models=$root/inputs/models
case $part in
  tests)
    (cd "$build" && timeout 540 ctest -R "cuda_ops|gpu_golden|gpu_graphs" --output-on-failure >"$out/ctest.log" 2>&1)
    grep -E "tests passed|Failed|Passed|Skipped" "$out/ctest.log" | tail -40
    for np in 2 4 8; do
      [ "$np" -le "$gpus" ] || continue
      echo "NCCL all-reduce, $np ranks:"
      timeout 120 "$root/tests/mpirun.sh" "$np" "$build/bench/nccl_bench" 1536 2>&1 | tee "$out/nccl-$np.txt"
    done
    ;;
  dummy)
    shapes=(qwen2.5-1.5b-instruct qwen2.5-7b-instruct)
    [ "$gpus" -ge 8 ] && shapes+=(llama-3.1-8b-instruct)
    for shape in "${shapes[@]}"; do
      echo "== $shape"
      timeout 280 "$root/tests/cuda/run_dummy_gpu.sh" "$build" "$models/$shape.json" 2>&1 | tee "$out/dummy-$shape.txt" | grep -E "PASS|FAIL|INFO"
    done
    ;;
  scaling)
    for l in "1 1" "2 1" "1 2" "4 1" "2 2" "8 1" "4 2"; do
      read -r tp pp <<<"$l"
      [ $((tp * pp)) -le "$gpus" ] || continue
      [ $((12 % tp)) -eq 0 ] || continue  # the 1.5B shape's 12 query heads
      echo "== tp=$tp pp=$pp"
      E2E_BASELINE=0 timeout 200 "$root/bench/gpu_e2e.sh" "$build" "$out/e2e-tp$tp-pp$pp" "$models/qwen2.5-1.5b-instruct.json" \
        "$tp" "$pp" 2>&1 | grep -E "TPOT|TTFT|Output token|Failed|duration"
    done
    ;;
  sweep)
    timeout 540 "$root/scripts/sweep" --gpus "$gpus" --model "$models/qwen2.5-1.5b-instruct.json" --concurrency 1,32,128 \
      --num-prompts 128 --input-len 512 --output-len 128 --out-dir "$out/sweep" -- --load-format dummy --backend cuda \
      --dtype bfloat16 --max-model-len 4096 --max-num-seqs 256 2>&1 | tail -30
    ;;
  *)
    echo "multi_gpu.sh: PART must be tests, dummy, scaling or sweep"; exit 2 ;;
esac
