#!/usr/bin/env bash
# End-to-end on GPUs with a dummy model of a real shape (default Qwen2.5-1.5B, bf16): serves it with
# llmserve and measures with llmserve-bench
#   - batch-1 decode: TPOT (ms/token) for 256 output tokens, against the bandwidth floor
#     (weight bytes / measured copy bandwidth);
#   - throughput: 256 requests of 512 prompt / 256 output tokens, all in flight, output tokens/s;
#   - TTFT of one 2048-token prompt;
#   - the same throughput run with sampling filters and a penalty (temperature 0.8, top-p 0.9,
#     top-k 50, repetition penalty 1.1: drawn on the device);
#   - the same throughput run asking for 5 log-probabilities per token;
#   - scoring a 2048-token text (echo + logprobs 1 + max_tokens 0: every prompt token's log-probability)
#     against a one-token completion of the same length (E2E_SCORE_ONLY=1 runs this alone);
# and runs transformers (bench/reference/hf_e2e.py) on the same GPU and shape as the baseline
# (E2E_BASELINE=0 leaves it out; E2E_DECODE_ONLY=1 stops after the batch-1 decode run and the
# E2E_CONCURRENCY="8 16 ..." runs; E2E_TTFT_ONLY=1 runs the TTFT measurement alone; E2E_TTFT_LEN sets its
# prompt length (or lengths, "300 400": ttft-*-300.json, ...), default 2048, and E2E_MAX_MODEL_LEN the
# server's --max-model-len, default 4096;
# E2E_THROUGHPUT_ONLY=1 runs the batch-1 decode, the TTFT and the greedy 256-request throughput alone;
# E2E_LONG_INPUT=N runs 128 requests of N-token prompts alone, below).
#   bench/gpu_e2e.sh BUILD_DIR OUT_DIR [CONFIG_JSON] [TP] [PP] [llmserve options...]
set -euo pipefail
build=$(cd "$1" && pwd) out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cfg=${3:-$root/inputs/models/qwen2.5-1.5b-instruct.json}
tp=${4:-1} pp=${5:-1}
shift $(( $# < 5 ? $# : 5 ))
mkdir -p "$out"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tag="tp${tp}-pp${pp}"
"$root/tests/mpirun.sh" $((tp * pp)) "$build/llmserve" --model "$cfg" --load-format dummy --backend cuda --dtype bfloat16 \
  -tp "$tp" -pp "$pp" --host 127.0.0.1 --port "$port" --max-model-len "${E2E_MAX_MODEL_LEN:-4096}" --max-num-seqs 256 "$@" >"$out/server-$tag.log" 2>&1 &
srv=$!
trap 'kill -TERM $srv 2>/dev/null; wait $srv 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; kill -0 $srv || { tail -20 "$out/server-$tag.log"; exit 1; }; sleep 0.5; done
# E2E_MODEL: the model name the requests send (a LoRA adapter of --lora-modules; default the served model)
b() { "$build/llmserve-bench" --base-url "http://127.0.0.1:$port" --disable-progress --timeout 400 ${E2E_MODEL:+--model "$E2E_MODEL"} "$@"; }
b --num-prompts 2 --random-input-len 32 --random-output-len 16 --max-concurrency 1 >/dev/null  # warm-up
ttft() {
  local seed=2 n lens=(${E2E_TTFT_LEN:-2048}) file
  for n in "${lens[@]}"; do  # a list: one server, each length with prompts of its own and a result file of its own
    file="$out/ttft-$tag.json"
    if [ ${#lens[@]} -gt 1 ]; then echo "TTFT, $n-token prompts:"; file="$out/ttft-$tag-$n.json"; fi
    b --num-prompts 3 --random-input-len "$n" --random-output-len 1 --max-concurrency 1 --seed $seed --result-file "$file" | grep -E "TTFT|Failed"
    seed=$((seed + 100))
  done
}
# Scoring a text (what evaluation harnesses send: echo, logprobs 1, max_tokens 0, i.e. every prompt
# token's log-probability) against a plain one-token completion of the same 2048 random token ids.
score() {
  python3 - "$port" <<'PY'
import http.client, json, random, sys, time
port = int(sys.argv[1])
def post(body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    data = json.dumps(body)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse(); raw = r.read(); t = (time.perf_counter() - t0) * 1e3  # the whole response received
    c.close()
    return t, r.status, json.loads(raw)
rng = random.Random(9)
for kind in ("plain", "score", "plain", "score"):
    ms = []
    for _ in range(3):
        ids = [rng.randrange(1000, 100000) for _ in range(2048)]
        body = {"prompt": ids, "max_tokens": 1, "temperature": 0} if kind == "plain" else \
               {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}
        t, st, out = post(body)
        ok = st == 200 and (kind == "plain" or len(out["choices"][0]["logprobs"]["token_logprobs"]) == 2048)
        ms.append(t if ok else float("nan"))
    print(f"2048-token prompt, {kind:5s} ({'echo + logprobs 1 + max_tokens 0' if kind == 'score' else 'max_tokens 1'}): "
          f"{sum(ms) / len(ms):.1f} ms per request (3 requests)")
PY
}
if [ "${E2E_TTFT_ONLY:-0}" = 1 ]; then ttft; exit 0; fi
# E2E_LONG_INPUT=N: 128 requests of N-token prompts and 256 output tokens at once (set E2E_MAX_MODEL_LEN
# above N + 256), alone: long contexts for kv_cache_dtype comparisons. Every request arrives at once, so
# the run is mostly prefill and its decode steps share their time with other prompts' chunks.
if [ -n "${E2E_LONG_INPUT:-}" ]; then
  b --num-prompts 128 --random-input-len "$E2E_LONG_INPUT" --random-output-len 256 --seed 6 \
    --result-file "$out/long-$tag.json" | grep -E "Output token|Failed|Mean TPOT|Mean TTFT"
  exit 0
fi
if [ "${E2E_SCORE_ONLY:-0}" = 1 ]; then score; exit 0; fi
# A seed per run: runs with the same seed send the same random prompts, which the later runs would
# find in the prefix cache (skipping their prefill).
b --num-prompts 3 --random-input-len 32 --random-output-len 256 --max-concurrency 1 --seed 1 --result-file "$out/decode-$tag.json" | grep -E "TPOT|Failed"
# E2E_CONCURRENCY="8 16 32": decode steps of a few sequences too (128-token prompts, 256 tokens out, two
# requests per slot), TPOT and output tokens/s at each concurrency.
for c in ${E2E_CONCURRENCY:-}; do
  echo "concurrency $c:"
  b --num-prompts $((2 * c)) --random-input-len 128 --random-output-len 256 --max-concurrency "$c" --seed $((10 + c)) \
    --result-file "$out/decode-c$c-$tag.json" | grep -E "TPOT|Output token|Failed"
done
# E2E_DECODE_ONLY=1: the batch-1 decode run (and E2E_CONCURRENCY's) alone (A/B comparisons of decode changes).
if [ "${E2E_DECODE_ONLY:-0}" = 1 ]; then exit 0; fi
ttft
[ "${E2E_THROUGHPUT_ONLY:-0}" = 1 ] || score
b --num-prompts 256 --random-input-len 512 --random-output-len 256 --seed 3 --result-file "$out/throughput-$tag.json" | grep -E "Output token|Failed|Mean TPOT|duration"
if [ "${E2E_THROUGHPUT_ONLY:-0}" = 1 ]; then exit 0; fi
echo "sampled (temperature 0.8, top-p 0.9, top-k 50, repetition penalty 1.1):"
b --num-prompts 256 --random-input-len 512 --random-output-len 256 --seed 4 --temperature 0.8 --top-p 0.9 --top-k 50 \
  --repetition-penalty 1.1 --result-file "$out/throughput-sampled-$tag.json" | grep -E "Output token|Failed|Mean TPOT"
echo "logprobs (5 alternatives per token, reduced on the GPU):"
b --num-prompts 256 --random-input-len 512 --random-output-len 256 --seed 5 --logprobs 5 \
  --result-file "$out/throughput-logprobs-$tag.json" | grep -E "Output token|Failed|Mean TPOT"
grep -E "KV cache|memory" "$out/server-$tag.log" | head -5 || true
# The baseline, after the server is gone (the GPU to itself): transformers on the same shape, one GPU
# (E2E_BASELINE=0 leaves it out, e.g. for a second layout of the same shape).
kill -TERM $srv 2>/dev/null; wait $srv 2>/dev/null || true
trap - EXIT
if [ "${E2E_BASELINE:-1}" = 0 ]; then
  :
elif python3 -c "import torch, transformers" 2>/dev/null; then
  echo "transformers (batch-1 greedy generate, one 2048-token forward):"
  python3 "$root/bench/reference/hf_e2e.py" "$cfg" 128 2048 | tee "$out/transformers.json"
else
  echo "transformers baseline skipped: python3 lacks torch or transformers"
fi
