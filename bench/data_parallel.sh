#!/usr/bin/env bash
# data_parallel_size behind one endpoint (internal load balancing) against one replica, and against the same
# replicas each on its own port with the client sharing the requests itself (data_parallel_external_lb: no
# relay through rank 0). CPU backend, one core a rank (OMP_NUM_THREADS=1), the tiny Qwen2 fixture model
# unless MODEL is given; BACKEND=cuda with EXTRA="--gpu-memory-utilization 0.4" runs the replicas on GPUs
# (on one GPU they share it). Prints output tokens/s of each and the ratios.
#   bench/data_parallel.sh [BUILD_DIR] [REQUESTS] [MAX_TOKENS] [CONCURRENCY]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
requests=${2:-128}
max_tokens=${3:-64}
concurrency=${4:-32}
model=${MODEL:-$build/test-models/tiny-qwen2.h5}
[ -f "$model" ] || "$build/llmserve-convert" "$root/../shared/fixtures/models/tiny-qwen2" -o "$model"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores (server ranks and the client share them)"
export OMP_NUM_THREADS=1
echo "model: $model; $requests requests x $max_tokens tokens (ignore_eos), $concurrency at a time"

run() {  # name np extra-args...
  local name=$1 np=$2
  shift 2
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$root/tests/mpirun.sh" "$np" "$build/llmserve" --model "$model" --backend "${BACKEND:-cpu}" --host 127.0.0.1 --port "$port" \
    --max-model-len 512 --max-num-seqs 256 ${EXTRA:-} "$@" >"/tmp/llmserve-dp-$name.log" 2>&1 &
  local pid=$!
  python3 - "$name" "$port" "$np" "$requests" "$max_tokens" "$concurrency" "$*" <<'PY'
import concurrent.futures, http.client, json, sys, time
name, port, np_, n, max_tokens, conc, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
external = "--data-parallel-external-lb" in args
ports = [port + r for r in range(np_)] if external else [port]
def get(p, path):
    c = http.client.HTTPConnection("127.0.0.1", p, timeout=5)
    c.request("GET", path)
    r = c.getresponse(); r.read(); c.close()
    return r.status
for p in ports:
    for _ in range(600):
        try:
            if get(p, "/health") == 200: break
        except OSError: pass
        time.sleep(0.1)
    else: sys.exit(f"{name}: no server on port {p}")
def one(i):
    c = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": f"Request {i} says", "max_tokens": max_tokens, "ignore_eos": True,
              "temperature": 0}), headers={"Content-Type": "application/json"})
    r = c.getresponse(); body = json.loads(r.read()); c.close()
    assert r.status == 200, body
    return body["usage"]["completion_tokens"]
with concurrent.futures.ThreadPoolExecutor(conc) as pool:  # (warm-up)
    list(pool.map(one, range(conc)))
t = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(conc) as pool:
    tokens = sum(pool.map(one, range(n)))
dt = time.perf_counter() - t
print(f"{name}: {tokens} tokens in {dt:.2f} s: {tokens / dt:.0f} output tokens/s")
open(f"/tmp/llmserve-dp-{name}.rate", "w").write(f"{tokens / dt}\n")
PY
  kill -TERM $(pgrep -f "llmserve --model $model --backend ${BACKEND:-cpu} --host 127.0.0.1 --port $port") 2>/dev/null || true
  wait $pid 2>/dev/null || true
}

run one 1
run internal 2 -dp 2
run external 2 -dp 2 --data-parallel-external-lb
python3 - <<'PY'
r = {k: float(open(f"/tmp/llmserve-dp-{k}.rate").read()) for k in ("one", "internal", "external")}
print(f"two replicas behind one endpoint / one replica: {r['internal'] / r['one']:.2f}x")
print(f"one endpoint / the client sharing requests over the two ports itself: {r['internal'] / r['external']:.2f}x")
PY
