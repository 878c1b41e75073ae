#!/usr/bin/env bash
# Command-line behaviour and bad input: every case must exit with the right code, print one clear
# message (once, from rank 0, without MPI abort noise), finish well inside its timeout (no hang), and
# leave no partial output file.
#   cli_tests.sh BUILD_DIR FIXTURES
set -uo pipefail
build=$(cd "$1" && pwd) fixtures=$2
here=$(cd "$(dirname "$0")" && pwd)
mpirun="$here/../mpirun.sh"
work="$build/test-out/cli"
rm -rf "$work" && mkdir -p "$work"
qwen="$build/test-models/tiny-qwen2.h5"
llmserve="$build/llmserve"
convert="$build/llmserve-convert"
passed=0 failed=0
# A job whose ranks exit 1 is torn down by mpirun with a kill sequence that waits ~2 s even for ranks
# already gone; these cases exit on their own (no signal is tested here), so without the wait (2.8 s -> 0.4 s
# a case). Not for jobs stopped by a signal: their ranks need the time to shut down.
export OMPI_MCA_odls_base_sigkill_timeout=0

# check NAME RC PATTERN [--once] -- COMMAND...: the command exits RC and its output matches PATTERN
# (extended regex); with --once the pattern appears exactly once.
check() {
  local name=$1 want_rc=$2 pattern=$3 once=0
  shift 3
  if [ "$1" = "--once" ]; then once=1; shift; fi
  [ "$1" = "--" ] && shift
  local out rc
  out=$(timeout 120 "$@" 2>&1)
  rc=$?
  local ok=1 why=""
  if [ "$rc" -ne "$want_rc" ]; then ok=0; why="exit code $rc, expected $want_rc"; fi
  if ! grep -Eq -- "$pattern" <<<"$out"; then ok=0; why="$why; output does not match /$pattern/"; fi
  if [ "$once" = 1 ] && [ "$(grep -Ec -- "$pattern" <<<"$out")" -ne 1 ]; then ok=0; why="$why; message not printed exactly once"; fi
  if grep -Eq "MPI_ABORT|mpirun noticed|Segmentation|core dumped|terminate called" <<<"$out" && [ "$want_rc" -ne 0 ]; then
    ok=0; why="$why; crash or MPI abort noise"
  fi
  if [ "$ok" = 1 ]; then
    passed=$((passed + 1)); echo "PASS $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: $why"; echo "$out" | sed 's/^/    | /' | head -20
  fi
}

printf '{"ids": [9707, 11, 1879]}\n' >"$work/prompts.jsonl"
cat >"$work/good.yaml" <<EOY
model: $qwen
backend: cpu
max_model_len: 512
block_size: 16
EOY

# --- usage -------------------------------------------------------------------
check "no arguments prints usage" 2 "usage: llmserve" -- "$llmserve"
check "--help lists options" 0 "--tensor-parallel-size" -- "$llmserve" --help
check "unknown command" 2 "unknown command 'frobnicate'" -- "$llmserve" frobnicate
check "convert without arguments" 2 "usage: llmserve-convert" -- "$convert"

# --- a good run, for contrast ----------------------------------------------------
check "logits on a yaml config" 0 '"generated_ids":\[[0-9]+,[0-9]+\]' -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 2 --prompts "$work/prompts.jsonl" --max-tokens 2

# The model as the first positional argument, as `vllm serve MODEL` (overrides the config file's).
check "model as a positional argument" 0 '"generated_ids":\[[0-9]+,[0-9]+\]' -- \
  "$llmserve" logits "$qwen" --backend cpu --max-model-len 64 --prompts "$work/prompts.jsonl" --max-tokens 2
check "positional model overrides the file's" 0 "^model=$qwen\$" -- "$llmserve" config "$work/good.yaml" "$qwen"
check "positional model and --model" 1 "the model is given twice" --once -- "$llmserve" config "$qwen" --model "$qwen"

# OpenMP threads: the node's cores shared among its ranks unless OMP_NUM_THREADS is set.
threads=$(( $(nproc) / 2 )); [ "$threads" -ge 1 ] || threads=1
check "OpenMP threads: cores / ranks on the node by default" 0 "OpenMP: $threads threads per rank; 2 rank\\(s\\) on this node" -- \
  env OMP_NUM_THREADS=default "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 2 --prompt-ids 1,2 --max-tokens 1
check "OpenMP threads: OMP_NUM_THREADS wins" 0 "OpenMP: 1 threads per rank \\(OMP_NUM_THREADS\\)" -- \
  env OMP_NUM_THREADS=1 "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 2 --prompt-ids 1,2 --max-tokens 1

# Budgets far beyond any machine are clamped, not overflowed (1e30 GiB of swap once logged a negative
# block count): swap holds at most max_num_seqs sequences of max_model_len.
check "huge swap_space and kv_cache_memory_gb" 0 "KV cache 8 blocks x 16 tokens, swap space 8 blocks" -- \
  "$mpirun" 1 "$llmserve" logits "$work/good.yaml" --swap-space 1e30 --kv-cache-memory-gb 1e30 --max-num-seqs 2 \
  --max-model-len 64 --prompt-ids 1,2 --max-tokens 1
# vLLM's line: the cache's tokens over max_model_len (8 blocks of 16 = 128 tokens, 2 sequences of 64).
check "maximum concurrency logged" 0 "KV cache: 128 tokens; maximum concurrency for 64 tokens per request: 2.00x" -- \
  "$mpirun" 1 "$llmserve" logits "$work/good.yaml" --kv-cache-memory-gb 1 --max-num-seqs 2 --max-model-len 64 \
  --prompt-ids 1,2 --max-tokens 1

check "api_server_count 0" 1 "api_server_count must be between 1 and 64, got 0" --once -- \
  "$mpirun" 1 "$llmserve" logits "$work/good.yaml" -asc 0 --prompt-ids 1,2 --max-tokens 1

# --- layout errors (checked against the MPI world and the model) --------------
check "tp*pp != world size" 1 "tensor_parallel_size \(4\) x pipeline_parallel_size \(1\) = 4 but the MPI world has 2 ranks" --once -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 4 --prompt-ids 1,2
check "heads not divisible by tp" 1 "4 attention heads are not divisible by tensor_parallel_size 3" --once -- \
  "$mpirun" 3 "$llmserve" logits "$work/good.yaml" --tensor-parallel-size 3 --prompt-ids 1,2
check "more stages than layers" 1 "pipeline_parallel_size \(8\) is larger than the model's 4 layers" --once -- \
  "$mpirun" 8 "$llmserve" logits "$work/good.yaml" --pipeline-parallel-size 8 --prompt-ids 1,2
check "max_model_len beyond the model" 1 "max_model_len \(99999\) is larger than the model's context of 32768 positions \(max_position_embeddings 32768\)" -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -pp 2 --max-model-len 99999 --prompt-ids 1,2
# hf_overrides on a converted model: the RoPE settings and the context, nothing its weights fix. YaRN
# over the original 32,768 positions, factor 2, gives a context of 65,536 (vLLM's derived max_model_len).
check "hf_overrides: a weight shape on a converted model" 1 "hf_overrides on a converted model may set only rope_theta, rope_scaling \(or rope_parameters\), max_position_embeddings, is_matryoshka, matryoshka_dimensions, and architectures with classifier_from_token \(a classifier made of the language-model head's rows\): its weights fix the rest; got 'num_hidden_layers'" -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides '{"num_hidden_layers": 2}' --prompt-ids 1,2
yarn='{"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32768}}'
check "hf_overrides: yarn widens the context" 1 "max_model_len \(99999\) is larger than the model's context of 65536 positions \(max_position_embeddings 32768, with its rope_scaling\)" -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides "$yarn" --max-model-len 99999 --prompt-ids 1,2
check "hf_overrides: yarn serves to its context" 0 '"generated_ids":\[[0-9]+\]' -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides "$yarn" --max-model-len 65536 --prompt-ids 1,2 --max-tokens 1 --kv-cache-memory-gb 0.1
check "hf_overrides: yarn without its factor, the key named as hf_overrides'" 1 "error: hf_overrides: missing 'factor'\$" -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides '{"rope_scaling": {"rope_type": "yarn"}}' --prompt-ids 1,2
check "hf_overrides: a bad rope_scaling" 1 "hf_overrides: unsupported rope_scaling type 'longrope'" -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides '{"rope_scaling": {"rope_type": "longrope"}}' --prompt-ids 1,2
# Integer-quantized checkpoints: AWQ (GEMM) and GPTQ are dequantized (tests/model/make_tiny_quantized.py, ctest
# golden_tiny-qwen2-awq/gptq); other methods and settings are refused, naming them, with no output file.
qz="$work/tiny-qwen2-quant"
for qc in '{"quant_method": "bitsandbytes"}@quant_method .bitsandbytes. is not supported: llmserve-convert dequantizes awq and gptq' \
          '{"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"}@AWQ version .gemv. is not supported' \
          '{"quant_method": "gptq", "bits": 3, "group_size": 32}@GPTQ with 3 bits is not supported \(2, 4 or 8\)'; do
  rm -rf "$qz" && cp -r "$fixtures/models/tiny-qwen2" "$qz" && chmod -R u+w "$qz"
  python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["quantization_config"] = json.loads(sys.argv[2]); json.dump(c, open(sys.argv[1], "w"))' \
    "$qz/config.json" "${qc%@*}"
  check "convert: quantization_config ${qc%@*}" 1 "${qc#*@}" --once -- "$convert" "$qz" -o "$work/quant-bad.h5" --force
  [ -e "$work/quant-bad.h5" ] && { failed=$((failed + 1)); echo "FAIL convert left an output file for ${qc%@*}"; }
done
# Sliding-window attention: a copy of tiny-qwen2 whose config.json uses a 4-position window in layers 2 and 3
# (max_window_layers 2) converts and is served with it: past the window its logits differ from the
# model's without one, within it they are the same bits. With disable_sliding_window it is served with
# full attention up to the window (max_model_len at most the window), the model's own logits. With
# max_window_layers 4 no layer has the window: the model's own logits past 4 positions too.
sw="$work/tiny-qwen2-window"
cp -r "$fixtures/models/tiny-qwen2" "$sw" && chmod -R u+w "$sw" && python3 - "$sw/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(use_sliding_window=True, sliding_window=4, max_window_layers=2)
json.dump(c, open(sys.argv[1], "w"))
PY
"$convert" "$sw" -o "$work/window.h5" --force >/dev/null 2>&1 || echo "FAIL: the sliding-window copy did not convert"
sed -i 's/"max_window_layers": 2/"max_window_layers": 4/' "$sw/config.json"
"$convert" "$sw" -o "$work/window-none.h5" --force >/dev/null 2>&1 || echo "FAIL: the max_window_layers 4 copy did not convert"
check "sliding window: max_model_len at most the window with disable_sliding_window" 1 "max_model_len \(5\) is larger than the model's context of 4 positions \(its sliding window, with disable_sliding_window\)" -- \
  "$llmserve" logits --model "$work/window.h5" --disable-sliding-window --max-model-len 5 --prompt-ids 1,2
for ids in 5,6,7 5,6,7,8 5,6,7,8,9,10; do
  "$llmserve" logits --model "$qwen" --prompt-ids $ids --max-tokens 1 --logits-output "$work/plain-$ids.f32" >/dev/null 2>&1
done
same_logits() {  # same_logits NAME WANT(same|differ) IDS llmserve-options...: the model's logits against tiny-qwen2's
  local name=$1 want=$2 ids=$3; shift 3
  check "sliding window: $name" 0 "^$want\$" -- bash -c \
    "'$llmserve' logits $* --prompt-ids $ids --max-tokens 1 --logits-output '$work/w.f32' >/dev/null 2>&1 && [ -s '$work/plain-$ids.f32' ] &&
     { cmp -s '$work/plain-$ids.f32' '$work/w.f32' && echo same || echo differ; }"
}
same_logits "6 positions past a window of 4: not the full-attention logits" differ 5,6,7,8,9,10 --model "$work/window.h5"
same_logits "4 positions within the window: the full-attention logits" same 5,6,7,8 --model "$work/window.h5"
same_logits "disable_sliding_window (max_model_len 4): the model's own logits" same 5,6,7 --model "$work/window.h5" --disable-sliding-window
same_logits "no layer with the window (max_window_layers 4): the model's own logits" same 5,6,7,8,9,10 --model "$work/window-none.h5"

# --- config errors ---------------------------------------------------------------
printf 'model: %s\ntensor_paralel_size: 2\n' "$qwen" >"$work/typo.yaml"
check "unknown yaml key" 1 "unknown option 'tensor_paralel_size'" --once -- "$mpirun" 2 "$llmserve" logits "$work/typo.yaml" --prompt-ids 1
printf 'model: %s\nmax_num_seqs: many\n' "$qwen" >"$work/type.yaml"
check "wrong type" 1 "max_num_seqs must be an integer, got 'many'" -- "$llmserve" logits "$work/type.yaml" --prompt-ids 1
printf 'model: [unclosed\n' >"$work/broken.yaml"
check "invalid yaml" 1 "invalid YAML" -- "$llmserve" logits "$work/broken.yaml" --prompt-ids 1
check "bad block size" 1 "block_size must be one of" -- "$llmserve" logits "$work/good.yaml" --block-size 12 --prompt-ids 1
check "bad gpu_memory_utilization" 1 "gpu_memory_utilization must be in \(0, 1\]" -- \
  "$llmserve" logits "$work/good.yaml" --gpu-memory-utilization 1.5 --prompt-ids 1
check "bad reasoning_parser" 1 "reasoning_parser must be none, qwen3 or deepseek_r1; got 'r1'" -- \
  "$llmserve" logits "$work/good.yaml" --reasoning-parser r1 --prompt-ids 1
# The pooling runner's options (vLLM's runner, convert, pooler_config); embeddings are a server route.
check "bad runner" 1 "runner must be auto, generate or pooling; got 'draft'" -- \
  "$llmserve" logits "$work/good.yaml" --runner draft --prompt-ids 1
check "convert llmserve does not make" 1 "convert 'classify' is not supported: llmserve converts models for the embed task only" -- \
  "$llmserve" logits "$work/good.yaml" --convert classify --prompt-ids 1
check "bad pooler_config" 1 "pooler_config: pooling_type 'MAX' is not supported" -- \
  "$llmserve" logits "$work/good.yaml" --pooler-config '{"pooling_type": "MAX"}' --prompt-ids 1
# vLLM's data_parallel_size: generate shares its requests among the replicas (the same file as one replica
# gives, greedy and seeded requests alike; two replicas of 2-way tensor parallelism as one of it); a world of
# another size and the commands that serve one replica refuse it with the reason, leaving no output file.
python3 - "$work/gen-dp.jsonl" <<'PY'
import json, sys
rows = [{"ids": [9707 + i, 11, 1879], "max_tokens": 6, "temperature": 0 if i % 2 == 0 else 0.9, "seed": i} for i in range(7)]
rows[3]["logprobs"] = 2
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
for layout in "1 1" "2 1" "2 2"; do
  read -r dp tp <<<"$layout"
  "$mpirun" $((dp * tp)) "$llmserve" generate "$work/good.yaml" -dp "$dp" -tp "$tp" --input "$work/gen-dp.jsonl" \
    --output "$work/gen-dp-$dp-$tp.jsonl" >"$work/gen-dp-$dp-$tp.log" 2>&1
done
"$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/gen-dp.jsonl" --output "$work/gen-dp-1-2.jsonl" >/dev/null 2>&1
if [ "$(wc -l <"$work/gen-dp-2-1.jsonl" 2>/dev/null)" = 7 ] && cmp -s "$work/gen-dp-1-1.jsonl" "$work/gen-dp-2-1.jsonl" &&
   cmp -s "$work/gen-dp-1-2.jsonl" "$work/gen-dp-2-2.jsonl" && grep -q "2 replicas: 7 requests, 42 tokens" "$work/gen-dp-2-2.log"; then
  passed=$((passed + 1)); echo "PASS generate: data_parallel_size 2 (tp 1 and 2) gives one replica's file"
else failed=$((failed + 1)); echo "FAIL generate: data_parallel_size"; tail -3 "$work"/gen-dp-2-*.log; fi
check "data_parallel_size against the world's size" 1 "pipeline_parallel_size \\(1\\) = 2 but the MPI world has 3 ranks; start llmserve with mpirun -np 2" --once -- \
  "$mpirun" 3 "$llmserve" generate "$work/good.yaml" -dp 2 --input "$work/gen-dp.jsonl" --output "$work/gen-dp-bad.jsonl"
[ -e "$work/gen-dp-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL data_parallel_size error left an output file"; }
check "data_parallel_size past 1 for logits" 1 "data_parallel_size 2 is not supported by llmserve logits: it runs one replica" -- \
  "$llmserve" logits "$work/good.yaml" --data-parallel-size 2 --prompt-ids 1
check "data_parallel_external_lb with a Unix socket" 1 "uds serves one replica" --once -- \
  "$mpirun" 2 "$llmserve" serve "$work/good.yaml" -dp 2 --data-parallel-external-lb --uds "$work/dp.sock"
check "data_parallel_size 0" 1 "data_parallel_size must be >= 1, got 0" -- "$llmserve" config "$work/good.yaml" -dp 0
check "llmserve config: the world of dp x tp x pp" 0 "^world_size=8\$" -- "$llmserve" config "$work/good.yaml" -dp 2 -tp 2 -pp 2
# vLLM's CUDA-graph options: accepted on every backend (the CPU backend records no graphs), checked.
check "vLLM's -O0 and compilation_config on the CPU backend" 0 '"generated_ids":\[[0-9]+,[0-9]+\]' -- \
  "$llmserve" logits "$qwen" --backend cpu --max-model-len 64 -O0 --compilation-config '{"cudagraph_mode": "FULL_DECODE_ONLY", "level": 3}' \
  --cudagraph-capture-sizes 1 2 4 --prompts "$work/prompts.jsonl" --max-tokens 2
# vLLM's long_prefill_token_threshold: a 5-token prompt goes in steps of 2, 2 and 1 tokens (the debug log's
# step lines), and its greedy tokens are those of the whole prompt in one step.
printf '{"prompt_token_ids": [9707, 11, 1879, 5, 6], "max_tokens": 4, "temperature": 0, "ignore_eos": true}\n' >"$work/lp.jsonl"
"$llmserve" generate --model "$qwen" --backend cpu --max-model-len 64 --input "$work/lp.jsonl" --output "$work/lp-whole.jsonl" >/dev/null 2>&1
lp_steps=$(LLMSERVE_LOG_LEVEL=debug "$llmserve" generate --model "$qwen" --backend cpu --max-model-len 64 --input "$work/lp.jsonl" \
  --output "$work/lp-chunked.jsonl" --long-prefill-token-threshold 2 2>&1 | grep -oE "step [0-9]+: [0-9]+ tokens" | head -3 |
  sed -E 's/.*: ([0-9]+) tokens/\1/' | tr '\n' ' ')
check "long_prefill_token_threshold: the prompt in chunks of 2, 2 and 1, the same greedy tokens" 0 "^same 2 2 1 " -- \
  bash -c 'a=$(grep -o "\"token_ids\": *\[[0-9, ]*\]" "$1"); b=$(grep -o "\"token_ids\": *\[[0-9, ]*\]" "$2")
           [ -n "$a" ] && [ "$a" = "$b" ] && echo "same $3"' _ "$work/lp-whole.jsonl" "$work/lp-chunked.jsonl" "$lp_steps"
check "max_num_partial_prefills past 1" 1 "max_num_partial_prefills 2 is not supported" -- \
  "$llmserve" logits "$work/good.yaml" --max-num-partial-prefills 2 --prompt-ids 1
check "a cudagraph_mode vLLM does not have" 1 "cudagraph_mode must be NONE, PIECEWISE, FULL, FULL_DECODE_ONLY or FULL_AND_PIECEWISE, got 'SOMETIMES'" -- \
  "$llmserve" logits "$work/good.yaml" --compilation-config '{"cudagraph_mode": "SOMETIMES"}' --prompt-ids 1
check "a TLS key without its certificate" 1 "ssl_keyfile needs ssl_certfile" -- \
  "$llmserve" logits "$work/good.yaml" --ssl-keyfile key.pem --prompt-ids 1
check "chat_template_content_format openai" 1 "chat_template_content_format 'openai' is not supported" -- \
  "$llmserve" logits "$work/good.yaml" --chat-template-content-format openai --prompt-ids 1
check "a uvicorn_log_level uvicorn does not have" 1 "uvicorn_log_level must be critical, error, warning, info, debug or trace; got 'loud'" -- \
  "$llmserve" logits "$work/good.yaml" --uvicorn-log-level loud --prompt-ids 1
check "generate with the pooling runner" 1 "generate makes text: embeddings \(runner pooling, convert embed\) are served at /v1/embeddings by .llmserve serve., or .llmserve run-batch. with that url" -- \
  "$llmserve" generate "$work/good.yaml" --runner pooling --input "$work/prompts.jsonl" --output "$work/emb-out.jsonl"
check "serve: pooler_config dimensions past the hidden size" 1 "pooler_config: dimensions \(9999\) is more than the model's hidden size \(64\)" --once -- \
  "$mpirun" 2 "$llmserve" serve "$work/good.yaml" -tp 2 --runner pooling --pooler-config '{"dimensions": 9999}' --port 18731
mkdir -p "$work/st-bad" && cp "$fixtures"/models/tiny-qwen2/* "$work/st-bad/" && printf '{"not": "a list"}' >"$work/st-bad/modules.json"
check "convert: a Sentence Transformers modules.json that is not a list" 1 "st-bad': modules.json: not a list of modules" -- \
  "$convert" "$work/st-bad" -o "$work/st-bad.h5"
# Sequence classifiers (the classify task): tiny-qwen2 as Qwen2ForSequenceClassification; its score matrix in a
# second shard of its own.
mkdir -p "$work/cls" && cp "$fixtures"/models/tiny-qwen2/* "$work/cls/"
python3 - "$work/cls" <<'PY'
import json, sys
d = sys.argv[1]
cfg = json.load(open(f"{d}/config.json"))
cfg["architectures"] = ["Qwen2ForSequenceClassification"]
json.dump(cfg, open(f"{d}/config.json", "w"))
PY
check "convert: a classifier without its score matrix" 1 "Qwen2ForSequenceClassification without its 'score.weight'" -- \
  "$convert" "$work/cls" -o "$work/cls.h5"
# (score_shard DIR ROWS COLS: a score matrix of that shape in a shard of its own, listed by the index)
score_shard() {
  python3 - "$@" <<'PY'
import json, struct, sys
d, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = json.dumps({"score.weight": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, 4 * rows * cols]}}).encode()
h += b" " * (-len(h) % 8)
open(f"{d}/score.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + struct.pack(f"<{rows * cols}f", *[0.01 * i for i in range(rows * cols)]))
main = json.loads(open(f"{d}/model.safetensors", "rb").read()[8:8 + struct.unpack("<Q", open(f"{d}/model.safetensors", "rb").read(8))[0]])
wm = {k: "model.safetensors" for k in main if k != "__metadata__"}
wm["score.weight"] = "score.safetensors"
json.dump({"weight_map": wm}, open(f"{d}/model.safetensors.index.json", "w"))
PY
}
score_shard "$work/cls" 2 32
check "convert: a classifier's score matrix of the wrong width" 1 "'score.weight' must be \[num_labels, 64\]" -- \
  "$convert" "$work/cls" -o "$work/cls.h5"
score_shard "$work/cls" 2 64
check "convert: a classifier" 0 "Qwen2ForSequenceClassification" -- "$convert" "$work/cls" -o "$work/cls.h5" --force
check "logits on a classifier (2 ranks)" 1 "logits makes text: Qwen2ForSequenceClassification is a classifier without a language-model head" -- \
  "$mpirun" 2 "$llmserve" logits --model "$work/cls.h5" -tp 2 --prompt-ids 1
check "generate on a classifier (2 ranks)" 1 "generate makes text: Qwen2ForSequenceClassification is a classifier without a language-model head" -- \
  "$mpirun" 2 "$llmserve" generate --model "$work/cls.h5" -tp 2 --input "$work/prompts.jsonl" --output "$work/cls-out.jsonl"
[ -e "$work/cls-out.jsonl" ] && { failed=$((failed + 1)); echo "FAIL generate on a classifier left an output file"; }
check "a classifier refuses the generate runner" 1 "runner generate: Qwen2ForSequenceClassification is a classifier without a language-model head" --once -- \
  "$llmserve" serve --model "$work/cls.h5" --runner generate --port 18733
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["architectures"] = ["Qwen2ForSequenceClassification"]; json.dump(c, open(sys.argv[2], "w"))' \
  "$fixtures/models/tiny-qwen2/config.json" "$work/cls-config.json"
check "serve: classifier_from_token with dummy weights" 1 "hf_overrides: classifier_from_token reads a converted model's head rows \(not load_format dummy\)" --once -- \
  "$llmserve" serve "$work/cls-config.json" --load-format dummy --hf-overrides '{"classifier_from_token": ["no", "yes"]}' --port 18732
# A causal LM made a classifier by hf_overrides (Qwen3-Reranker as vLLM serves it).
check "hf_overrides: a classifier of another family" 1 "hf_overrides: architectures may only be \[\"Qwen2ForSequenceClassification\"\] on this model" -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides '{"architectures": ["LlamaForSequenceClassification"], "classifier_from_token": ["no", "yes"]}' --prompt-ids 1
check "hf_overrides: classifier_from_token alone" 1 "hf_overrides: classifier_from_token, method and is_original_qwen3_reranker go with architectures" -- \
  "$llmserve" logits "$work/good.yaml" --hf-overrides '{"classifier_from_token": ["no", "yes"]}' --prompt-ids 1
check "hf_overrides: a classifier token outside the vocabulary" 1 "hf_overrides: classifier_from_token \"no-such-token\" is not a token of the vocabulary" --once -- \
  "$llmserve" serve "$work/good.yaml" --hf-overrides '{"architectures": ["Qwen2ForSequenceClassification"], "classifier_from_token": ["no-such-token", "yes"]}' --port 18734
check "unknown flag" 1 "unknown option '--tensor-paralel-size'" -- "$llmserve" logits "$work/good.yaml" --tensor-paralel-size 2 --prompt-ids 1
check "quantization llmserve cannot honour" 1 "quantization 'awq' is not supported.*use none or fp8" --once -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 2 --quantization awq --prompt-ids 1
check "quantization fp8 on the CPU backend runs" 0 '"generated_ids":\[[0-9]+,[0-9]+\]' -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 2 --quantization fp8 --prompts "$work/prompts.jsonl" --max-tokens 2
check "missing config file" 1 "cannot read '/nonexistent.yaml'" -- "$llmserve" logits /nonexistent.yaml --prompt-ids 1
check "no model" 1 "model is required" -- "$llmserve" logits --prompt-ids 1

# --- model file errors --------------------------------------------------------------
check "missing model file" 1 "model file '/nonexistent/m.h5' is missing or not an HDF5 file" --once -- \
  "$mpirun" 2 "$llmserve" logits --model /nonexistent/m.h5 -tp 2 --prompt-ids 1
cp "$fixtures/models/tiny-qwen2/config.json" "$work/not-a-model.h5"
check "model file that is not HDF5" 1 "not-a-model.h5' is missing or not an HDF5 file" -- "$llmserve" logits --model "$work/not-a-model.h5" --prompt-ids 1
head -c 100000 "$qwen" >"$work/truncated.h5"
check "truncated model file" 1 "truncated.h5" -- "$llmserve" logits --model "$work/truncated.h5" --prompt-ids 1

# --- request errors ------------------------------------------------------------------
check "token id outside the vocabulary" 1 "token id 999999 is outside the vocabulary \(151936\)" -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -pp 2 --prompt-ids 1,999999
check "prompt longer than max_model_len" 1 "exceeds max_model_len 512" -- \
  "$llmserve" logits "$work/good.yaml" --prompt-ids 1,2,3 --max-tokens 600
printf '{"ids": [1, 2]}\nnot json\n' >"$work/bad-prompts.jsonl"
check "malformed prompts file" 1 "bad-prompts.jsonl line 2" -- "$llmserve" logits "$work/good.yaml" --prompts "$work/bad-prompts.jsonl"
check "no prompts" 1 "no prompts" -- "$llmserve" logits "$work/good.yaml"
check "unwritable output" 1 "cannot write '/nonexistent-dir/out.jsonl'" -- \
  "$llmserve" logits "$work/good.yaml" --prompt-ids 1,2 --output /nonexistent-dir/out.jsonl
if ls /nonexistent-dir 2>/dev/null; then failed=$((failed + 1)); echo "FAIL partial output left"; fi

# --- converter -----------------------------------------------------------------------
check "convert: missing input" 1 "input '/nonexistent' does not exist" -- "$convert" /nonexistent -o "$work/x.h5"
check "convert: existing output kept" 1 "exists \(use --force" -- "$convert" "$fixtures/models/tiny-qwen2" -o "$qwen"
check "convert: bad dtype" 1 "unknown --dtype 'int3' \(expected keep, bfloat16, float16 or float32\)" -- "$convert" "$fixtures/models/tiny-qwen2" -o "$work/x.h5" --dtype int3
[ -e "$work/x.h5" ] && { failed=$((failed + 1)); echo "FAIL convert left $work/x.h5"; }
check "convert: fp16 cast runs" 0 "converted" -- "$convert" "$fixtures/models/tiny-llama3" -o "$work/llama-f16.h5" --dtype float16
check "fp16 model still matches greedy" 0 '"generated_ids":\[' -- "$llmserve" logits --model "$work/llama-f16.h5" --prompt-ids 128000,791,6864 --max-tokens 3

# SmolLM2-style stop: the tiny fixture never emits EOS, so --stop-at-eos must not shorten its output.
check "--stop-at-eos keeps going without EOS" 0 '"generated_ids":\[[0-9]+,[0-9]+,[0-9]+\]' -- \
  "$llmserve" logits "$work/good.yaml" --prompt-ids 9707 --max-tokens 3 --stop-at-eos

# --- tokenize / detokenize ---------------------------------------------------------
check "tokenize" 0 '"ids":\[9707,1879\]' -- "$llmserve" tokenize --model "$qwen" "Hello world"
check "tokenize from stdin" 0 '"count":2' -- bash -c "printf 'Hello world' | '$llmserve' tokenize --model '$qwen' -"
check "tokenize with special tokens in text" 0 '"ids":\[151644,' -- "$llmserve" tokenize "$work/good.yaml" "<|im_start|>user"
check "detokenize" 0 "^Hello world$" -- "$llmserve" detokenize --model "$qwen" 9707,1879
# A SentencePiece-style tokenizer (Llama 2, Mistral: characters, byte fallback, the "▁" marker) converts
# with a checkpoint and tokenizes as HF tokenizers does (tests/tokenizer/spm/legacy/cases.json).
mkdir -p "$work/spm-llama"
cp "$fixtures"/models/tiny-llama3/*.json "$fixtures"/models/tiny-llama3/*.safetensors "$work/spm-llama/"
cp "$here/../tokenizer/spm/legacy/tokenizer.json" "$here/../tokenizer/spm/legacy/tokenizer_config.json" "$work/spm-llama/"
check "convert: a SentencePiece-style tokenizer" 0 "converted" -- "$convert" "$work/spm-llama" -o "$work/spm-llama.h5"
check "tokenize: SentencePiece-style, as HF" 0 '"ids":\[1,352,295,475,387,352,863,331,323\]' -- \
  "$llmserve" tokenize --model "$work/spm-llama.h5" --add-special-tokens "Hello world"
check "detokenize: SentencePiece-style, as HF (byte fallback)" 0 "^<s> Hello world café$" -- \
  "$llmserve" detokenize --model "$work/spm-llama.h5" 1,352,295,475,387,352,863,331,323,352,322,982,198,172
check "detokenize skips special tokens" 0 "^user$" -- "$llmserve" detokenize --model "$qwen" --skip-special-tokens "[151644, 872]"
check "detokenize: id outside the vocabulary" 1 "token id 999999 is outside the vocabulary" -- "$llmserve" detokenize --model "$qwen" 1,999999
check "detokenize: not ids" 1 "expected token ids" -- "$llmserve" detokenize --model "$qwen" "hello"
check "tokenize chat messages" 0 '"prompt":"<\|im_start\|>system\\nYou are Qwen' -- \
  "$llmserve" tokenize --model "$qwen" --messages '[{"role": "user", "content": "hi"}]'
check "tokenize: bad messages" 1 "expects a JSON list of messages" -- "$llmserve" tokenize --model "$qwen" --messages '[{"role"'
printf '{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": "Hello"}\n{"ids": [9707]}\n' >"$work/mixed.jsonl"
check "logits: messages, text and ids prompts" 0 '"prompt_ids":\[9707\]' -- \
  "$mpirun" 2 "$llmserve" logits "$work/good.yaml" -tp 2 --prompts "$work/mixed.jsonl" --max-tokens 1
printf '{"messages": [{"role": "user", "content": "hi"}], "x": 1}\n{"text": "no"}\n' >"$work/badreq.jsonl"
check "logits: prompt line without ids/messages/prompt" 1 'badreq.jsonl line 2' -- "$llmserve" logits "$work/good.yaml" --prompts "$work/badreq.jsonl"
check "tokenize: no model" 1 "a model is required" -- "$llmserve" tokenize "text"

# --- generate (offline batch) --------------------------------------------------------
printf '{"prompt": "Hello", "max_tokens": 3, "temperature": 0}\n{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 2, "seed": 5}\n{"prompt_token_ids": [9707, 11], "max_tokens": 4, "stop_token_ids": [11], "ignore_eos": true}\n' >"$work/gen.jsonl"
check "generate: mixed requests, in input order" 0 "3/3 requests" -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -pp 2 --input "$work/gen.jsonl" --output "$work/gen-out.jsonl"
if [ "$(wc -l <"$work/gen-out.jsonl")" -eq 3 ] && sed -n 2p "$work/gen-out.jsonl" | grep -q '"index":1' \
   && [ "$(sed -n 2p "$work/gen-out.jsonl" | grep -o '"finish_reason"' | wc -l)" -eq 2 ]; then
  passed=$((passed + 1)); echo "PASS generate output: 3 lines, n=2 gives two outputs"
else failed=$((failed + 1)); echo "FAIL generate output"; cat "$work/gen-out.jsonl"; fi
# The debug log's line per engine step: a 2-token prompt and 3 greedy tokens are 3 steps of 2, 1 and 1 tokens.
printf '{"prompt_token_ids": [9707, 11], "max_tokens": 3, "temperature": 0, "ignore_eos": true}\n' >"$work/gen-one.jsonl"
out=$(LLMSERVE_LOG_LEVEL=debug timeout 120 "$llmserve" generate "$work/good.yaml" --input "$work/gen-one.jsonl" --output "$work/gen-one-out.jsonl" 2>&1)
steps=$(grep -oE "step [0-9]+: [0-9]+ tokens, [0-9]+ us: scheduling [0-9]+, inputs [0-9]+, forward launch [0-9]+, sampling [0-9]+, outputs [0-9]+" <<<"$out" | sed -E 's/step ([0-9]+): ([0-9]+) tokens.*/\1:\2/' | tr '\n' ' ')
if [ "$steps" = "1:2 2:1 3:1 " ]; then
  passed=$((passed + 1)); echo "PASS generate: debug log, one line per step with its tokens"
else failed=$((failed + 1)); echo "FAIL generate: debug step lines '$steps'"; echo "$out" | tail -8; fi
# bad_words over a vocabulary split in two (greedy, this prompt's first token without it is "ICIENT").
printf '{"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "bad_words": ["ICIENT"]}\n{"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}\n' >"$work/gen-bw.jsonl"
check "generate: bad_words" 0 "2/2 requests" -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/gen-bw.jsonl" --output "$work/gen-bw-out.jsonl"
if sed -n 2p "$work/gen-bw-out.jsonl" | grep -q '"text":"ICIENT' && ! sed -n 1p "$work/gen-bw-out.jsonl" | grep -q ICIENT; then
  passed=$((passed + 1)); echo "PASS generate: the bad word is not generated (and is without bad_words)"
else failed=$((failed + 1)); echo "FAIL generate: bad_words"; cat "$work/gen-bw-out.jsonl"; fi
# logprobs_mode (vLLM's), on 2 ranks (the vocabulary split): raw_logits are the raw log-probabilities plus one
# constant a step; processed_logprobs are those of the drawn-from values (top_k 3 under temperature 0.8: at most
# 3 alternatives of the 5 asked for, whose probabilities sum to 1), processed_logits those values (the raw
# logits over the temperature: the request sets the model generation_config's repetition_penalty to 1); the tokens
# are the same in every mode.
printf '{"prompt": "one two one two one", "max_tokens": 6, "temperature": 0.8, "top_k": 3, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 4, "ignore_eos": true, "logprobs": 5}\n{"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "ignore_eos": true, "logprobs": 2, "repetition_penalty": 1.2}\n' >"$work/gen-lpm.jsonl"
for mode in raw_logprobs raw_logits processed_logprobs processed_logits; do
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/gen-lpm.jsonl" --output "$work/gen-lpm-$mode.jsonl" \
    --logprobs-mode "$mode" >/dev/null 2>&1
done
if python3 - "$work" <<'PY'
import json, math, sys
d = sys.argv[1]
def steps(mode):
    return [json.loads(l)["outputs"][0] for l in open(f"{d}/gen-lpm-{mode}.jsonl")]
rl, rv, pl, pv = (steps(m) for m in ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"))
ok = True
for r in range(2):
    ok &= rl[r]["token_ids"] == rv[r]["token_ids"] == pl[r]["token_ids"] == pv[r]["token_ids"]
    for a, b, c, e in zip(rl[r]["logprobs"], rv[r]["logprobs"], pl[r]["logprobs"], pv[r]["logprobs"]):
        shift = b["logprob"] - a["logprob"]
        ok &= shift > 0 and all(abs(x["logprob"] - y["logprob"] - shift) < 1e-3 and x["token_id"] == y["token_id"]
                               for x, y in zip(b["top_logprobs"], a["top_logprobs"]))
        if r == 0:  # sampled under top_k 3
            ok &= 1 <= len(c["top_logprobs"]) <= 3 and abs(sum(math.exp(x["logprob"]) for x in c["top_logprobs"]) - 1) < 1e-3
            t = 0.8  # processed logits: the temperature's scaling of the raw logits
            ok &= all(abs(x["logprob"] - y["logprob"] / t) < 1e-3 * max(1, abs(x["logprob"]))
                      for x, y in zip(e["top_logprobs"], b["top_logprobs"]))
        else:  # greedy: every token an alternative, no temperature
            ok &= len(c["top_logprobs"]) == 2 and c["logprob"] <= 0
ok &= len(rl[0]["logprobs"]) == 6
sys.exit(0 if ok else 1)
PY
then passed=$((passed + 1)); echo "PASS generate: logprobs_mode raw_logits / processed_logprobs / processed_logits"
else failed=$((failed + 1)); echo "FAIL generate: logprobs_mode"; head -c 600 "$work/gen-lpm-processed_logprobs.jsonl"; fi
check "logprobs_mode: an unknown mode" 1 "logprobs_mode must be raw_logprobs, raw_logits, processed_logprobs or processed_logits, got 'processed'" --once -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --logprobs-mode processed --input "$work/gen-lpm.jsonl" --output "$work/gen-lpm-bad.jsonl"
[ -e "$work/gen-lpm-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL logprobs_mode error left an output file"; }
# speculative_config (vLLM's, method ngram): on 2 ranks the output file is the one decoding a token a step gives
# (greedy, seeded sampling with a penalty, a stop string), in fewer steps; other methods stop the run.
printf '{"prompt": "Hello world, hello world, hello", "max_tokens": 40, "temperature": 0, "ignore_eos": true}\n{"prompt": "one two one two one", "max_tokens": 30, "temperature": 0.8, "seed": 4, "presence_penalty": 0.4, "ignore_eos": true, "logprobs": 1}\n{"prompt": "abc abc abc", "max_tokens": 30, "temperature": 0, "stop": [" abc abc"], "n": 2}\n' >"$work/gen-spec.jsonl"
"$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/gen-spec.jsonl" --output "$work/gen-spec-base.jsonl" >/dev/null 2>&1
check "generate: speculative_config ngram" 0 "speculative decoding: [0-9]+ steps fed [0-9]+ drafts, [0-9]+ accepted" -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/gen-spec.jsonl" --output "$work/gen-spec-out.jsonl" \
  --speculative-config '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}'
if [ -s "$work/gen-spec-base.jsonl" ] && cmp -s "$work/gen-spec-base.jsonl" "$work/gen-spec-out.jsonl"; then
  passed=$((passed + 1)); echo "PASS generate: speculative decoding gives the outputs of decoding a token a step"
else failed=$((failed + 1)); echo "FAIL generate: speculative decoding changed the outputs"; diff "$work/gen-spec-base.jsonl" "$work/gen-spec-out.jsonl" | head -5; fi
# The same on tp 2 x pp 2 (pipeline micro-batches in flight).
"$mpirun" 4 "$llmserve" generate "$work/good.yaml" -tp 2 -pp 2 --input "$work/gen-spec.jsonl" --output "$work/gen-spec-base4.jsonl" >/dev/null 2>&1
check "generate: speculative_config ngram on tp 2 x pp 2" 0 "speculative decoding: [0-9]+ steps fed [0-9]+ drafts, [1-9][0-9]* accepted" -- \
  "$mpirun" 4 "$llmserve" generate "$work/good.yaml" -tp 2 -pp 2 --input "$work/gen-spec.jsonl" --output "$work/gen-spec-out4.jsonl" \
  --speculative-config '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}'
if [ -s "$work/gen-spec-base4.jsonl" ] && cmp -s "$work/gen-spec-base4.jsonl" "$work/gen-spec-out4.jsonl"; then
  passed=$((passed + 1)); echo "PASS generate: speculative decoding on tp 2 x pp 2 gives the outputs of decoding a token a step"
else failed=$((failed + 1)); echo "FAIL generate: speculative decoding on tp 2 x pp 2 changed the outputs"; diff "$work/gen-spec-base4.jsonl" "$work/gen-spec-out4.jsonl" | head -5; fi
check "speculative_config: a method with heads" 1 "config: speculative_config: method 'eagle' is not supported: llmserve runs ngram and draft_model" --once -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --speculative-config '{"method": "eagle", "num_speculative_tokens": 2}' \
  --input "$work/gen-spec.jsonl" --output "$work/gen-spec-bad.jsonl"
[ -e "$work/gen-spec-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL speculative_config error left an output file"; }
# A draft model (method draft_model): tiny-qwen2 cut to its first 2 layers drafts for the whole model. It
# proposes tokens the model does not always take, and the output file is still the one decoding a token a
# step gives, on tp 2 and on tp 2 x pp 2 (the draft on rank 0 alone).
draft="$work/tiny-qwen2-2layers"
cp -r "$fixtures/models/tiny-qwen2" "$draft" && chmod -R u+w "$draft" && python3 - "$draft/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(num_hidden_layers=2)
json.dump(c, open(sys.argv[1], "w"))
PY
"$convert" "$draft" -o "$work/draft.h5" --force >/dev/null 2>&1 || echo "FAIL: the 2-layer draft did not convert"
for layout in "2 -tp 2" "4 -tp 2 -pp 2"; do
  set -- $layout
  n=$1; shift
  base="$work/gen-spec-base.jsonl"; [ "$n" = 4 ] && base="$work/gen-spec-base4.jsonl"
  rm -f "$work/gen-draft.jsonl"
  check "generate: speculative_config draft_model on $*" 0 "speculative decoding: [0-9]+ steps fed [0-9]+ drafts, [1-9][0-9]* accepted \(([0-9]|[1-8][0-9])%\)" -- \
    "$mpirun" "$n" "$llmserve" generate "$work/good.yaml" "$@" --input "$work/gen-spec.jsonl" --output "$work/gen-draft.jsonl" \
    --speculative-config "{\"model\": \"$work/draft.h5\", \"num_speculative_tokens\": 3}"
  if [ -s "$base" ] && cmp -s "$base" "$work/gen-draft.jsonl"; then
    passed=$((passed + 1)); echo "PASS generate: a draft model on $* gives the outputs of decoding a token a step"
  else failed=$((failed + 1)); echo "FAIL generate: a draft model on $* changed the outputs"; diff "$base" "$work/gen-draft.jsonl" | head -5; fi
done
set --
check "speculative_config: a draft model that cannot be read" 1 "speculative_config model '$work/missing.h5': .*missing.h5" --once -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --speculative-config "{\"model\": \"$work/missing.h5\", \"num_speculative_tokens\": 2}" \
  --input "$work/gen-spec.jsonl" --output "$work/gen-spec-bad.jsonl"
[ -e "$work/gen-spec-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL speculative_config draft error left an output file"; }
check "speculative_config: a draft model whose context is shorter than max_model_len" 1 "speculative_config model '$work/window.h5': .*max_model_len" --once -- \
  "$llmserve" generate "$work/good.yaml" --disable-sliding-window --max-model-len 128 --input "$work/gen-spec.jsonl" --output "$work/gen-spec-bad.jsonl" \
  --speculative-config "{\"model\": \"$work/window.h5\", \"num_speculative_tokens\": 2}"
# tokenizer (vLLM's --tokenizer): a Hugging Face tokenizer directory, or a model file, instead of the model's own
# gives the same output file; with it a dummy model (no file, no tokenizer) takes text and chat prompts.
printf '{"prompt": "Hello world", "max_tokens": 6, "temperature": 0}\n{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0}\n' >"$work/tok-in.jsonl"
"$llmserve" generate "$work/good.yaml" --input "$work/tok-in.jsonl" --output "$work/tok-own.jsonl" >/dev/null 2>&1
for t in "$fixtures/models/tiny-qwen2" "$qwen"; do
  rm -f "$work/tok-other.jsonl"
  "$llmserve" generate "$work/good.yaml" --tokenizer "$t" --input "$work/tok-in.jsonl" --output "$work/tok-other.jsonl" >/dev/null 2>&1
  if [ -s "$work/tok-own.jsonl" ] && cmp -s "$work/tok-own.jsonl" "$work/tok-other.jsonl"; then
    passed=$((passed + 1)); echo "PASS generate: --tokenizer $(basename "$t") gives the model's own tokenizer's outputs"
  else failed=$((failed + 1)); echo "FAIL generate: --tokenizer $(basename "$t") changed the outputs"; fi
done
check "generate: a dummy model without a tokenizer refuses text" 1 "has no tokenizer \(give one with the tokenizer option\)" -- \
  "$llmserve" generate --model "$fixtures/models/tiny-qwen2/config.json" --load-format dummy --backend cpu --input "$work/tok-in.jsonl" --output "$work/tok-dummy.jsonl"
check "generate: a dummy model with --tokenizer takes text and chats" 0 "tokenizer and chat template from '$fixtures/models/tiny-qwen2'" -- \
  "$llmserve" generate --model "$fixtures/models/tiny-qwen2/config.json" --load-format dummy --backend cpu --tokenizer "$fixtures/models/tiny-qwen2" \
  --input "$work/tok-in.jsonl" --output "$work/tok-dummy.jsonl"
if [ "$(grep -c '"text":"[^"]' "$work/tok-dummy.jsonl" 2>/dev/null)" = 2 ]; then passed=$((passed + 1)); echo "PASS generate: the dummy model's outputs have text"
else failed=$((failed + 1)); echo "FAIL generate: the dummy model's outputs have no text"; fi
# skip_tokenizer_init (vLLM's): no tokenizer is loaded; token-id prompts give the tokens they give with one, and
# empty text; text prompts and stop strings are refused.
printf '{"ids": [9707, 11, 1879], "max_tokens": 6, "temperature": 0, "ignore_eos": true}\n' >"$work/skip-in.jsonl"
"$llmserve" generate "$work/good.yaml" --input "$work/skip-in.jsonl" --output "$work/skip-tok.jsonl" >/dev/null 2>&1
check "generate: skip_tokenizer_init runs token ids" 0 "1/1 requests" -- \
  "$llmserve" generate "$work/good.yaml" --skip-tokenizer-init --input "$work/skip-in.jsonl" --output "$work/skip-none.jsonl"
if python3 -c 'import json,sys; a, b = (json.loads(open(f).read())["outputs"][0] for f in sys.argv[1:]); sys.exit(0 if a["token_ids"] == b["token_ids"] and len(a["token_ids"]) == 6 and a["text"] != "" and b["text"] == "" else 1)' \
  "$work/skip-tok.jsonl" "$work/skip-none.jsonl" 2>/dev/null; then
  passed=$((passed + 1)); echo "PASS generate: skip_tokenizer_init gives the same token ids and empty text"
else failed=$((failed + 1)); echo "FAIL generate: skip_tokenizer_init outputs"; cat "$work/skip-none.jsonl"; fi
check "generate: skip_tokenizer_init refuses text" 1 "has no tokenizer" -- \
  "$llmserve" generate "$work/good.yaml" --skip-tokenizer-init --input "$work/tok-in.jsonl" --output "$work/skip-bad.jsonl"
printf '{"ids": [9707, 11], "max_tokens": 4, "stop": ["x"]}\n' >"$work/skip-stop.jsonl"
check "generate: skip_tokenizer_init refuses stop strings" 1 "stop strings need the model's tokenizer, which this server lacks: use stop_token_ids" -- \
  "$llmserve" generate "$work/good.yaml" --skip-tokenizer-init --input "$work/skip-stop.jsonl" --output "$work/skip-bad.jsonl"
[ -e "$work/skip-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL skip_tokenizer_init errors left an output file"; }
check "tokenizer: a path that is no tokenizer" 1 "tokenizer '$work/nope' is neither a tokenizer directory nor an llmserve model file" --once -- \
  "$llmserve" generate "$work/good.yaml" --tokenizer "$work/nope" --input "$work/tok-in.jsonl" --output "$work/tok-bad.jsonl"
check "tokenizer: a directory without tokenizer.json" 1 "tokenizer '$fixtures' has no tokenizer.json" --once -- \
  "$llmserve" generate "$work/good.yaml" --tokenizer "$fixtures" --input "$work/tok-in.jsonl" --output "$work/tok-bad.jsonl"
check "tokenizer_mode mistral" 1 "tokenizer_mode 'mistral' is not supported: use auto, hf or slow" --once -- \
  "$llmserve" generate "$work/good.yaml" --tokenizer-mode mistral --input "$work/tok-in.jsonl" --output "$work/tok-bad.jsonl"
[ -e "$work/tok-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL a tokenizer error left an output file"; }
# structured_outputs_config (vLLM's) disable_any_whitespace, and the older guided_decoding_backend with its
# option: JSON guides write no whitespace outside strings (sampled, so that the model would otherwise).
printf '{"prompt": "JSON:", "max_tokens": 40, "temperature": 0.9, "seed": 3, "response_format": {"type": "json_object"}}\n{"prompt": "Data:", "max_tokens": 40, "temperature": 0.9, "seed": 5, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]}}}}\n' >"$work/so-in.jsonl"
for opt in "--structured-outputs-config={\"backend\": \"xgrammar\", \"disable_any_whitespace\": true}" "--guided-decoding-backend=xgrammar:disable-any-whitespace"; do
  rm -f "$work/so-out.jsonl"
  "$llmserve" generate "$work/good.yaml" "$opt" --input "$work/so-in.jsonl" --output "$work/so-out.jsonl" >/dev/null 2>&1
  if python3 - "$work/so-out.jsonl" "$here/.." <<'PY'
import json, sys
sys.path.insert(0, sys.argv[2])
from json_whitespace import spaced
texts = [json.loads(l)["outputs"][0]["text"] for l in open(sys.argv[1])]
sys.exit(0 if len(texts) == 2 and all(t.startswith("{") and not spaced(t) for t in texts) else 1)
PY
  then passed=$((passed + 1)); echo "PASS generate: ${opt%%=*}: JSON without whitespace"
  else failed=$((failed + 1)); echo "FAIL generate: ${opt%%=*}: whitespace in the JSON"; cat "$work/so-out.jsonl" 2>/dev/null | head -2; fi
done
check "structured_outputs_config: an unknown backend" 1 "structured_outputs_config: backend must be auto, xgrammar, guidance, outlines or lm-format-enforcer" --once -- \
  "$llmserve" generate "$work/good.yaml" --structured-outputs-config '{"backend": "regexp"}' --input "$work/so-in.jsonl" --output "$work/so-bad.jsonl"
check "structured_outputs_config: enable_in_reasoning" 1 "enable_in_reasoning true is not supported" --once -- \
  "$llmserve" generate "$work/good.yaml" --structured-outputs-config '{"enable_in_reasoning": true}' --input "$work/so-in.jsonl" --output "$work/so-bad.jsonl"
[ -e "$work/so-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL a structured_outputs_config error left an output file"; }
# task (vLLM's older option): classify and score want a sequence-classification checkpoint (a run-batch stops
# before reading its input, writing nothing).
check "task classify on a causal LM" 1 "task classify needs a sequence-classification checkpoint \(\*ForSequenceClassification\); Qwen2ForCausalLM is not one" --once -- \
  "$llmserve" run-batch "$work/good.yaml" --task classify -i "$work/tok-in.jsonl" -o "$work/task-out.jsonl"
[ -e "$work/task-out.jsonl" ] && { failed=$((failed + 1)); echo "FAIL a task error left an output file"; }
# LoRA adapters (enable_lora, lora_modules; tests/model/make_tiny_lora.py's two): requests of the base model and of
# both adapters (a line's `model`) in one batch each get the output they get alone, also when max_loras 1 makes
# the adapters take turns; an adapter's greedy answer is not the base model's. (run_lora.sh checks the logits.)
python3 "$here/../model/make_tiny_lora.py" "$fixtures" tiny-qwen2 "$work/lora" >/dev/null
lora=(--enable-lora --lora-modules "sql=$work/lora/sql" "terse=$work/lora/terse")
python3 - "$work" <<'PY'
import json, sys
lines = []
for prompt in ("The capital of France is", "def add(a, b):"):
    for model in (None, "sql", "terse"):
        lines.append({"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True, **({"model": model} if model else {})})
lines.append({"prompt": "Once upon", "max_tokens": 10, "temperature": 0.9, "seed": 3, "ignore_eos": True, "model": "terse", "logprobs": 1})
open(f"{sys.argv[1]}/gen-lora.jsonl", "w").write("".join(json.dumps(l) + "\n" for l in lines))
for i, l in enumerate(lines):
    open(f"{sys.argv[1]}/gen-lora-{i}.jsonl", "w").write(json.dumps(l) + "\n")
PY
check "generate: LoRA adapters and the base model in one batch" 0 "7/7 requests" -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 "${lora[@]}" --max-loras 2 --input "$work/gen-lora.jsonl" \
  --output "$work/gen-lora-out.jsonl"
"$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 "${lora[@]}" --max-loras 1 --input "$work/gen-lora.jsonl" \
  --output "$work/gen-lora-out1.jsonl" >/dev/null 2>&1
for i in 0 1 2 3 4 5 6; do
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 "${lora[@]}" --input "$work/gen-lora-$i.jsonl" \
    --output "$work/gen-lora-alone-$i.jsonl" >/dev/null 2>&1
done
if python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
mixed = [json.loads(l)["outputs"] for l in open(f"{w}/gen-lora-out.jsonl")]
turns = [json.loads(l)["outputs"] for l in open(f"{w}/gen-lora-out1.jsonl")]
alone = [json.loads(open(f"{w}/gen-lora-alone-{i}.jsonl").read())["outputs"] for i in range(7)]
ids = lambda o: o[0]["token_ids"]
ok = mixed == alone and turns == alone and ids(mixed[0]) != ids(mixed[1]) and ids(mixed[0]) != ids(mixed[2]) and ids(mixed[1]) != ids(mixed[2])
print([ids(m) for m in mixed])
sys.exit(0 if ok else 1)
PY
then passed=$((passed + 1)); echo "PASS generate: LoRA requests batched (max_loras 2, and 1 in turns) give their outputs alone; adapters change them"
else failed=$((failed + 1)); echo "FAIL generate: LoRA outputs batched differ from alone, or an adapter changes nothing"; fi
echo '{"prompt": "Hi", "model": "sqll"}' >"$work/gen-lora-bad-in.jsonl"
check "generate: a line's model that is neither the model nor an adapter" 1 "line 1: model 'sqll' is neither the model nor a LoRA adapter" --once -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 "${lora[@]}" --input "$work/gen-lora-bad-in.jsonl" \
  --output "$work/gen-lora-bad.jsonl"
[ -e "$work/gen-lora-bad.jsonl" ] && { failed=$((failed + 1)); echo "FAIL a LoRA error left an output file"; }
# override_generation_config (vLLM's): its max_new_tokens is the default max_tokens (a request's own wins);
# a key that is not a sampling default stops the run.
printf '{"prompt": "Hello", "ignore_eos": true}\n{"prompt": "Hello", "ignore_eos": true, "max_tokens": 5}\n' >"$work/gen-ov.jsonl"
check "generate: override_generation_config" 0 "2/2 requests" -- \
  "$llmserve" generate "$work/good.yaml" --override-generation-config '{"max_new_tokens": 3, "temperature": 0}' \
  --input "$work/gen-ov.jsonl" --output "$work/gen-ov-out.jsonl"
if [ "$(python3 -c 'import json,sys; print([len(json.loads(l)["outputs"][0]["token_ids"]) for l in open(sys.argv[1])])' "$work/gen-ov-out.jsonl")" = "[3, 5]" ]; then
  passed=$((passed + 1)); echo "PASS generate: override_generation_config's max_new_tokens is the default max_tokens"
else failed=$((failed + 1)); echo "FAIL generate: override_generation_config"; cat "$work/gen-ov-out.jsonl"; fi
check "override_generation_config: not a sampling default" 1 "override_generation_config: 'do_sample' is not a sampling default" -- \
  "$llmserve" generate "$work/good.yaml" --override-generation-config '{"do_sample": true}' --input "$work/gen-ov.jsonl" --output "$work/gen-ov2.jsonl"
printf '{"prompt": "a", "max_tokens": 2}\n{"prompt": "b", "temperature": "hot"}\n' >"$work/gen-bad.jsonl"
check "generate: bad parameter names its line" 1 "gen-bad.jsonl line 2: 'temperature' must be a number" -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/gen-bad.jsonl" --output "$work/gen-bad-out.jsonl"
[ -e "$work/gen-bad-out.jsonl" ] && { failed=$((failed + 1)); echo "FAIL generate left an output file"; }
# A request whose masks empty a later step (JSON mode allowing only "{", token 90) fails the run,
# naming its line, with no output file; it used to abort the job from the sampler.
printf '{"prompt": "a", "max_tokens": 2}\n{"prompt": "a b c", "max_tokens": 5, "allowed_token_ids": [90], "response_format": {"type": "json_object"}}\n' >"$work/gen-dead.jsonl"
check "generate: a request with no token to draw fails the run, naming its line" 1 "gen-dead.jsonl line 2: no token can be drawn" --once -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -pp 2 --input "$work/gen-dead.jsonl" --output "$work/gen-dead-out.jsonl"
[ -e "$work/gen-dead-out.jsonl" ] && { failed=$((failed + 1)); echo "FAIL generate left an output file for the failed request"; }
printf '{"prompt": "a", "max_tokens": 600}\n' >"$work/gen-long.jsonl"
check "generate: too long for max_model_len" 1 "exceeds max_model_len 512" -- \
  "$llmserve" generate "$work/good.yaml" --input "$work/gen-long.jsonl" --output "$work/x.jsonl"
# run-batch: vLLM's batch runner on OpenAI's batch lines, on 2 ranks. Answered lines carry the body the
# server would send (here the same greedy texts and beams as llmserve generate gives); refused ones their
# error, and the others still run.
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
chat = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0}
comp = {"prompt": ["Hello", "World"], "max_tokens": 3, "temperature": 0}
beam = {"prompt": "Hello", "max_tokens": 4, "use_beam_search": True, "n": 2, "length_penalty": 0.5}
batch = [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat},
         {"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": comp},
         {"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
         {"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {**chat, "max_tokens": -1}},
         {"custom_id": "e", "method": "POST", "url": "/v1/chat/completions", "body": {**chat, "stream": True}},
         {"custom_id": "f", "method": "POST", "url": "/v1/completions", "body": beam}]
open(f"{w}/batch.jsonl", "w").write("".join(json.dumps(b) + "\n" for b in batch) + "{not json\n")
gen = [chat, {"prompt": "Hello", "max_tokens": 3, "temperature": 0}, {"prompt": "World", "max_tokens": 3, "temperature": 0}, beam]
open(f"{w}/batch-gen.jsonl", "w").write("".join(json.dumps(g) + "\n" for g in gen))
PY
check "run-batch: OpenAI batch lines on 2 ranks" 0 "7 lines, 3 answered, 4 refused or failed" -- \
  "$mpirun" 2 "$llmserve" run-batch "$work/good.yaml" -tp 2 -i "$work/batch.jsonl" -o "$work/batch-out.jsonl"
check "run-batch: the same requests through generate" 0 "4/4 requests" -- \
  "$mpirun" 2 "$llmserve" generate "$work/good.yaml" -tp 2 --input "$work/batch-gen.jsonl" --output "$work/batch-gen-out.jsonl"
if python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
out = [json.loads(l) for l in open(f"{w}/batch-out.jsonl")]
gen_lines = [json.loads(l) for l in open(f"{w}/batch-gen-out.jsonl")]
gen = [g["outputs"][0]["text"] for g in gen_lines]
ok = [o["custom_id"] for o in out] == ["a", "b", "c", "d", "e", "f", None]
ok &= [o["response"]["status_code"] for o in out] == [200, 200, 400, 400, 400, 200, 400]
ok &= out[0]["response"]["body"]["object"] == "chat.completion" and out[0]["response"]["body"]["choices"][0]["message"]["content"] == gen[0]
ok &= [c["text"] for c in out[1]["response"]["body"]["choices"]] == gen[1:3]
ok &= all(o["response"]["body"] is None and o["error"]["error"]["code"] == 400 for o in out[2:5] + out[6:])
beams = out[5]["response"]["body"]["choices"]  # use_beam_search: two beams, best first, as generate's
ok &= [c["text"] for c in beams] == [o["text"] for o in gen_lines[3]["outputs"]] and len(beams) == 2
ok &= beams[0]["text"] != beams[1]["text"] and out[5]["error"] is None
ok &= "does not support Embeddings API" in out[2]["error"]["error"]["message"] and "stream mode" in out[4]["error"]["error"]["message"]
ok &= out[0]["error"] is None and out[0]["id"] != out[1]["id"]
sys.exit(0 if ok else 1)
PY
then passed=$((passed + 1)); echo "PASS run-batch: statuses, bodies equal to generate's greedy texts, errors as the server's"
else failed=$((failed + 1)); echo "FAIL run-batch output"; cat "$work/batch-out.jsonl" | head -c 2000; fi
# run-batch with data_parallel_size 2 (two replicas of the same 2-way layout): every line answered as one
# replica answers it, in input order (the generated ids and times aside), refusals included.
check "run-batch: data_parallel_size 2" 0 "7 lines, 3 answered, 4 refused or failed; [0-9]+ steps \\(replica 0's\\)" -- \
  "$mpirun" 4 "$llmserve" run-batch "$work/good.yaml" -dp 2 -tp 2 -i "$work/batch.jsonl" -o "$work/batch-dp-out.jsonl"
if python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
def plain(o):
    o = json.loads(o)
    o.pop("id"); o["response"].pop("request_id")
    if o["response"]["body"]:
        o["response"]["body"].pop("id"); o["response"]["body"].pop("created")
    return o
one = [plain(l) for l in open(f"{w}/batch-out.jsonl")]
two = [plain(l) for l in open(f"{w}/batch-dp-out.jsonl")]
sys.exit(0 if one == two and len(one) == 7 else 1)
PY
then passed=$((passed + 1)); echo "PASS run-batch: data_parallel_size 2 answers every line as one replica"
else failed=$((failed + 1)); echo "FAIL run-batch data_parallel_size 2 output"; head -c 2000 "$work/batch-dp-out.jsonl"; fi
# run-batch with the pooling runner (convert embed: tiny-qwen2's last position, normalized): embeddings
# lines answered (the text's vector equal to its token ids'), score and rerank lines answered with the
# cosine similarities of those vectors, text APIs, other URLs and a 2:3 score refused.
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
lines = [("e1", "/v1/embeddings", {"input": ["Hello", "World"]}),
         ("e2", "/v1/embeddings", {"input": [9707], "encoding_format": "base64"}),
         ("e3", "/v1/embeddings", {"input": "Hello", "dimensions": 8}),
         ("e4", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}]}),
         ("e5", "/v1/audio/transcriptions", {"input": "Hello"}),
         ("s1", "/v1/score", {"text_1": "Hello", "text_2": ["Hello", "World"]}),
         ("s2", "/rerank", {"query": "Hello", "documents": ["World", "Hello"], "top_n": 1}),
         ("s3", "/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})]
open(f"{w}/batch-emb.jsonl", "w").write("".join(json.dumps({"custom_id": c, "method": "POST", "url": u, "body": b}) + "\n" for c, u, b in lines))
PY
check "run-batch: embeddings with the pooling runner" 0 "8 lines, 4 answered, 4 refused or failed" -- \
  "$mpirun" 2 "$llmserve" run-batch "$work/good.yaml" -tp 2 --convert embed -i "$work/batch-emb.jsonl" -o "$work/batch-emb-out.jsonl"
if python3 - "$work" <<'PY'
import base64, json, struct, sys
out = [json.loads(l) for l in open(f"{sys.argv[1]}/batch-emb-out.jsonl")]
ok = [o["response"]["status_code"] for o in out] == [200, 200, 400, 400, 400, 200, 200, 400]
a = out[0]["response"]["body"]
ok &= a["object"] == "list" and [d["index"] for d in a["data"]] == [0, 1] and a["usage"]["prompt_tokens"] == 2
v = a["data"][0]["embedding"]
ok &= len(v) == 64 and abs(sum(x * x for x in v) - 1) < 1e-5 and v != a["data"][1]["embedding"]
b = list(struct.unpack("<64f", base64.b64decode(out[1]["response"]["body"]["data"][0]["embedding"])))
ok &= max(abs(x - y) for x, y in zip(v, b)) < 1e-6
msgs = [o["error"]["error"]["message"] for o in out[2:5] + out[7:]]
ok &= "does not support matryoshka" in msgs[0] and "does not support Chat Completions API" in msgs[1] and "Supported endpoints" in msgs[2]
ok &= "1:1, 1:N or N:N" in msgs[3]
# score: Hello with itself and with World (e1's two vectors, normalized: their dot product)
s = out[5]["response"]["body"]
dot = sum(x * y for x, y in zip(v, a["data"][1]["embedding"]))
ok &= s["object"] == "list" and [d["object"] for d in s["data"]] == ["score", "score"] and s["id"].startswith("score-")
ok &= abs(s["data"][0]["score"] - 1) < 1e-5 and abs(s["data"][1]["score"] - dot) < 1e-5 and dot < 0.99
r = out[6]["response"]["body"]  # rerank: the best of the two documents only (top_n 1): Hello, index 1
ok &= r["id"].startswith("rerank-") and len(r["results"]) == 1 and r["results"][0]["index"] == 1
ok &= r["results"][0]["document"]["text"] == "Hello" and abs(r["results"][0]["relevance_score"] - 1) < 1e-5
sys.exit(0 if ok else 1)
PY
then passed=$((passed + 1)); echo "PASS run-batch: embedding bodies (floats, base64 of the same vector), score and rerank bodies, refusals as the server's"
else failed=$((failed + 1)); echo "FAIL run-batch embeddings output"; head -c 2000 "$work/batch-emb-out.jsonl"; fi
check "run-batch: an input that cannot be read" 1 "run-batch: cannot read" -- \
  "$llmserve" run-batch "$work/good.yaml" -i "$work/nope.jsonl" -o "$work/x.jsonl"
printf '{"prompt": "a", "max_tokens": 2}\n{"prompt": "b", "suffix": "!"}\n' >"$work/gen-suffix.jsonl"
check "generate: an option llmserve cannot honour is refused, naming its line" 1 "gen-suffix.jsonl line 2: 'suffix' is not supported" -- \
  "$llmserve" generate "$work/good.yaml" --input "$work/gen-suffix.jsonl" --output "$work/x.jsonl"
printf '{"prompt": "a", "max_tokens": 2}\n{"prompt": "b", "priority": 2}\n' >"$work/gen-prio.jsonl"
check "generate: a priority without priority scheduling names its line" 1 "gen-prio.jsonl line 2: Got priority 2 but Priority scheduling is not enabled" -- \
  "$llmserve" generate "$work/good.yaml" --input "$work/gen-prio.jsonl" --output "$work/x.jsonl"
check "generate: priorities under --scheduling-policy priority" 0 "2/2 requests" -- \
  "$llmserve" generate "$work/good.yaml" --scheduling-policy priority --input "$work/gen-prio.jsonl" --output "$work/gen-prio-out.jsonl"
printf '{"prompt": "a", "top_p": 0}\n' >"$work/gen-topp.jsonl"
check "generate: out-of-range top_p" 1 "'top_p' must be in \(0, 1\]" -- \
  "$llmserve" generate "$work/good.yaml" --input "$work/gen-topp.jsonl" --output "$work/x.jsonl"
# A request line nested deeper than 256 levels is refused before parsing (it once overflowed the stack).
python3 -c 'print("{\"prompt\": \"x\", \"k\": " + "[" * 100000 + "]" * 100000 + "}")' > "$work/gen-deep.jsonl"
check "generate: JSON nested too deep" 1 "gen-deep.jsonl line 1: JSON nested deeper than 256 levels" --once -- \
  "$llmserve" generate "$work/good.yaml" --input "$work/gen-deep.jsonl" --output "$work/gen-deep-out.jsonl"
[ -e "$work/gen-deep-out.jsonl" ] && { failed=$((failed + 1)); echo "FAIL generate left an output file for the deep request"; }
check "generate: missing input" 1 "cannot read '/nonexistent.jsonl'" -- \
  "$llmserve" generate "$work/good.yaml" --input /nonexistent.jsonl --output "$work/x.jsonl"
check "generate: unwritable output" 1 "cannot write '/nonexistent-dir/out.jsonl'" -- \
  "$llmserve" generate "$work/good.yaml" --input "$work/gen.jsonl" --output /nonexistent-dir/out.jsonl
# The paths are checked before the model loads (which takes minutes on GPUs): no "loaded" line before the
# error, for generate's input and output and logits' output.
for args in "generate --input /nonexistent.jsonl --output $work/x.jsonl" "generate --input $work/gen.jsonl --output /nonexistent-dir/out.jsonl" \
            "logits --prompt-ids 1,2 --output /nonexistent-dir/out.jsonl" "logits --prompt-ids 1,2 --logits-output /nonexistent-dir/l.f32"; do
  set -- $args
  out=$(timeout 120 "$llmserve" "$1" "$work/good.yaml" "${@:2}" 2>&1)
  if grep -q "cannot \(read\|write\)" <<<"$out" && ! grep -q " loaded" <<<"$out"; then
    passed=$((passed + 1)); echo "PASS $1: bad paths refused before the model loads ($args)"
  else
    failed=$((failed + 1)); echo "FAIL $1: bad paths refused before the model loads ($args)"; echo "$out" | sed 's/^/    | /' | head -5
  fi
done
check "generate: chat_template file missing" 1 "chat_template '/nonexistent/t.jinja' looks like a file path, but it cannot be opened" -- \
  "$llmserve" generate "$work/good.yaml" --chat-template /nonexistent/t.jinja --input "$work/gen.jsonl" --output "$work/x.jsonl"
check "generate: chat_template that does not parse" 1 "chat_template cannot be used" -- \
  "$llmserve" generate "$work/good.yaml" --chat-template "{% for %}" --input "$work/gen.jsonl" --output "$work/x.jsonl"
check "generate: no --input" 1 "--input requests.jsonl and --output results.jsonl are required" -- "$llmserve" generate "$work/good.yaml"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
