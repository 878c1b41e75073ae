#!/usr/bin/env bash
# Tokenizer benchmark: llmserve vs Hugging Face tokenizers (PyPI), single thread, same corpus, same
# tokenizer.json; also checks that both produce the same ids. Usage: bench/tokenizer.sh [MODEL] [MB]
#   MODEL: qwen2 (default) or llama3 (the fixture tokenizers)
# LLMSERVE_BUILD_DIR (default build/) and LLMSERVE_FIXTURES (default ../shared/fixtures) say where the
# build and the fixtures are (ctest sets both).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-qwen2}
mb=${2:-3}
build=${LLMSERVE_BUILD_DIR:-$root/build}
fixtures=${LLMSERVE_FIXTURES:-$root/../shared/fixtures}
tj="$fixtures/models/tiny-$model/tokenizer.json"
work="$build/bench"
mkdir -p "$work"
python3 -c "import tokenizers" 2>/dev/null || python3 -m pip install --quiet tokenizers 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages tokenizers
python3 "$root/bench/make_corpus.py" "$fixtures/models/tiny-qwen2/tokenizer.json" "$work/corpus.txt" "$mb"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; tokenizer: tiny-$model"
taskset -c 0 "$build/bench/tokenizer_bench" "$tj" "$work/corpus.txt" "$work/ids-llmserve.txt"
taskset -c 0 python3 "$root/bench/hf_tokenizer_bench.py" "$tj" "$work/corpus.txt" "$work/ids-hf.txt"
if cmp -s "$work/ids-llmserve.txt" "$work/ids-hf.txt"; then echo "ids: identical"; else echo "ids: DIFFER"; exit 1; fi
