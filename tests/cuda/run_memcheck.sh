#!/usr/bin/env bash
# compute-sanitizer memcheck (with leak check) over the CUDA kernel tests. Exits 77 (skipped) without a
# GPU or without compute-sanitizer.   run_memcheck.sh CUDA_TESTS_BINARY
set -uo pipefail
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU: skipped"; exit 77; }
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
[ -n "$cs" ] || { echo "compute-sanitizer not found: skipped"; exit 77; }
exec "$cs" --tool memcheck --leak-check full --error-exitcode 9 "$1"
