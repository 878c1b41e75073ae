#!/usr/bin/env bash
# The GPU checks a session runs on the device machine, in one call (device time is scarce): build with
# CUDA; cuda_tests; the GPU golden tests of the fixture models present under FIXTURES (the device tool's
# tree holds 64 MiB: tiny-qwen2 alone fits beside the code) and of tiny-qwen3 / tiny-qwen3-yarn, made
# there (with transformers' Qwen3ForCausalLM compared with their numpy goldens when torch is present),
# and tiny-qwen3-embed's /v1/embeddings on the CUDA backend (tests/server/test_embeddings.py), and the
# classifiers' /classify, /score and /rerank (tests/server/test_classify.py);
# the engine golden cases with tp = 1 on the CUDA backend; the server suite on the CUDA backend; and the
# batch-1 decode (TPOT at 1 and 2 sequences) of each CONFIG_JSON shape. Each part is skipped once
# DEADLINE seconds (default 540) are near, so the call ends inside the tool's limit; a summary line per
# part goes to stdout and OUT/summary.txt, the logs to OUT/logs.tgz (the tool returns a few files).
#   bench/device_checks.sh FIXTURES OUT [CONFIG_JSON...]    (PARTS="build cuda golden engine server decode")
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fixtures=$(cd "$1" && pwd) out=$2
shift 2
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=("$root/inputs/models/qwen2.5-1.5b-instruct.json")
parts=${PARTS:-build cuda golden engine server decode}
deadline=${DEADLINE:-540}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} LLMSERVE_FIXTURES="$fixtures"
cd "$root" || exit 1
say() { echo "$*" | tee -a "$out/summary.txt"; }
time_left() { [ $((deadline - SECONDS)) -gt "${1:-30}" ] || { say "skipped (deadline): $2"; return 1; }; }
want() { [[ " $parts " == *" $1 "* ]]; }
trap 'tar czf "$out/logs.tgz" -C "$out" logs; rm -rf "$out/logs"' EXIT
nvidia-smi -L 2>/dev/null | tee -a "$out/summary.txt" || { say "no GPU: nothing run"; exit 77; }

if want build; then
  t=$SECONDS
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLMSERVE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DLLMSERVE_FIXTURES="$fixtures" >"$out/logs/cmake.log" 2>&1 &&
    make -C build -j"$(nproc)" llmserve llmserve-convert llmserve-bench golden_check cuda_tests >"$out/logs/build.log" 2>&1
  rc=$?
  say "build rc=$rc $((SECONDS - t)) s"
  [ $rc -eq 0 ] || { grep -m10 -A3 "error" "$out/logs/build.log"; exit 1; }
fi
mkdir -p build/test-models build/test-out  # (the server suites' logs go to test-out)
qf=build/test-fixtures  # (where the ctest fixture setup writes tiny-qwen3's checkpoint and goldens)
models=()
for m in tiny-qwen2 tiny-llama3; do
  [ -d "$fixtures/models/$m" ] && build/llmserve-convert "$fixtures/models/$m" -o "build/test-models/$m.h5" --force \
    >>"$out/logs/convert.log" 2>&1 && models+=("$m")
done
for v in "" yarn embed classify; do
  made=("tiny-qwen3${v:+-$v}")
  [ "$v" = classify ] && made=(tiny-qwen3-classify tiny-qwen3-rerank)
  ok=1
  python3 tests/model/make_tiny_qwen3.py "$fixtures" "$qf" $v >>"$out/logs/convert.log" 2>&1 || ok=0
  for m in "${made[@]}"; do
    [ $ok = 1 ] && build/llmserve-convert "$qf/models/$m" -o "build/test-models/$m.h5" --force >>"$out/logs/convert.log" 2>&1 || ok=0
  done
  [ $ok = 1 ] || say "${made[*]}: not made (see convert.log)"
done

if want cuda && time_left 120 cuda_tests; then
  t=$SECONDS
  timeout $((deadline - SECONDS - 60)) build/tests/cuda_tests >"$out/logs/cuda_tests.log" 2>&1
  say "cuda_tests rc=$? $((SECONDS - t)) s: $(grep -E '^\[  (PASSED|FAILED) ' "$out/logs/cuda_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \] [A-Z]" "$out/logs/cuda_tests.log" | tee -a "$out/summary.txt"
fi

if want golden; then
  if python3 -c "import torch, transformers" 2>/dev/null; then
    for n in tiny-qwen3 tiny-qwen3-yarn tiny-qwen3-embed; do
      time_left 60 "transformers $n" || break
      timeout 120 python3 tests/model/check_qwen3_with_transformers.py "$qf" "$n" >"$out/logs/transformers-$n.log" 2>&1
      say "transformers $n rc=$?: $(tail -1 "$out/logs/transformers-$n.log")"
    done
  fi
  runs=()
  for m in "${models[@]}"; do runs+=("$fixtures $m bfloat16" "$fixtures $m float16"); done
  runs+=("$qf tiny-qwen3 bfloat16" "$qf tiny-qwen3 float16" "$qf tiny-qwen3 bfloat16 2" "$qf tiny-qwen3-yarn bfloat16")
  for r in "${runs[@]}"; do
    time_left 40 "golden $r" || break
    read -r fx m dt pp <<<"$r"
    log="$out/logs/golden-$m-$dt${pp:+-pp$pp}.log"
    timeout 120 tests/cuda/run_golden_gpu.sh build "$fx" "$m" "$dt" "${pp:-1}" >"$log" 2>&1
    say "golden $m $dt${pp:+ pp=$pp} rc=$?: $(tail -2 "$log" | tr '\n' ' ')"
  done
fi

if want engine; then
  # The engine golden cases of tests/CMakeLists.txt on one GPU (tp = 1), float32.
  python3 - "${models[@]}" >"$out/logs/cases.txt" <<'PY'
import re, sys
text = open("tests/CMakeLists.txt").read()
block = text[text.index("set(ENGINE_CASES"):]
block = block[:block.index("foreach(case")]
for m in re.finditer(r'^\s*"((?:[^"\\]|\\.)*)"', block, re.M):
    name, model, tp, pp, expect, opts = m.group(1).replace('\\"', '"').split("|")
    if model in sys.argv[1:] and tp == "1":
        print("|".join([name, model, pp, expect, "prompt-logprobs" if name.startswith("prompt-logprobs") else "", opts]))
PY
  while IFS='|' read -r name model pp expect kind opts; do
    read -r -a opts <<<"$opts"
    time_left 30 "engine $name" || break
    EXPECT="$expect" KIND="$kind" LLMSERVE_TEST_BACKEND=cuda timeout 120 tests/golden/run_engine.sh build "$fixtures" "$model" 1 "$pp" \
      "$name" "${opts[@]}" >"$out/logs/engine-$name.log" 2>&1 </dev/null
    say "engine $name rc=$?: $(tail -1 "$out/logs/engine-$name.log")"
  done <"$out/logs/cases.txt"
  if [ -f build/test-models/tiny-qwen3.h5 ] && time_left 30 "engine tiny-qwen3"; then
    LLMSERVE_TEST_BACKEND=cuda timeout 120 tests/golden/run_engine.sh build "$qf" tiny-qwen3 1 1 qwen3-async --block-size 8 \
      --async-scheduling >"$out/logs/engine-qwen3-async.log" 2>&1 </dev/null
    say "engine tiny-qwen3 async rc=$?: $(tail -1 "$out/logs/engine-qwen3-async.log")"
  fi
fi

if want server && [ -f build/test-models/tiny-qwen2.h5 ] && time_left 120 "server suite"; then
  t=$SECONDS
  LLMSERVE_TEST_BACKEND=cuda timeout $((deadline - SECONDS - 30)) python3 tests/server/test_server.py build >"$out/logs/server.log" 2>&1
  say "server suite (CUDA) rc=$? $((SECONDS - t)) s: $(tail -1 "$out/logs/server.log")"
  grep "^FAIL" "$out/logs/server.log" | head -5 | tee -a "$out/summary.txt"
fi

if want server && [ -f build/test-models/tiny-qwen3-embed.h5 ] && time_left 60 "embeddings"; then
  LLMSERVE_TEST_BACKEND=cuda timeout $((deadline - SECONDS - 20)) python3 tests/server/test_embeddings.py build "$qf" >"$out/logs/embeddings.log" 2>&1
  say "embeddings (CUDA) rc=$?: $(tail -1 "$out/logs/embeddings.log")"
  grep "^FAIL" "$out/logs/embeddings.log" | head -5 | tee -a "$out/summary.txt"
fi
if want server && [ -f build/test-models/tiny-qwen3-classify.h5 ] && time_left 60 "classify"; then
  LLMSERVE_TEST_BACKEND=cuda timeout $((deadline - SECONDS - 20)) python3 tests/server/test_classify.py build "$qf" >"$out/logs/classify.log" 2>&1
  say "classify (CUDA) rc=$?: $(tail -1 "$out/logs/classify.log")"
  grep "^FAIL" "$out/logs/classify.log" | head -5 | tee -a "$out/summary.txt"
fi

if want decode; then
  for cfg in "${configs[@]}"; do
    time_left 45 "decode $cfg" || break
    n=$(basename "$cfg" .json)
    E2E_CONCURRENCY="2" E2E_DECODE_ONLY=1 E2E_BASELINE=0 timeout 150 bench/gpu_e2e.sh build "$out/logs/e2e-$n" "$cfg" 1 1 \
      >"$out/logs/e2e-$n.log" 2>&1
    say "decode $n rc=$?: TPOT (1, 2 sequences) $(grep 'Mean TPOT' "$out/logs/e2e-$n.log" | awk '{print $NF}' | tr '\n' ' ')ms"
  done
fi
say "total $SECONDS s"
