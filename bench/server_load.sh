#!/usr/bin/env bash
# Front-end load on loopback with wrk: /health and 1-token completions against a CPU-backend llmserve
# (tiny Qwen2 fixture model, one rank). Prints requests/s and latency percentiles.
#   bench/server_load.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -q wrk >/dev/null; }
model="$root/build/test-models/tiny-qwen2.h5"
[ -f "$model" ] || "$root/build/llmserve-convert" "$root/../shared/fixtures/models/tiny-qwen2" -o "$model"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
OMP_NUM_THREADS=1 "$root/build/llmserve" --model "$model" --backend cpu --host 127.0.0.1 --port "$port" \
  --max-model-len 256 --max-num-seqs 256 >/tmp/llmserve-load.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores (server and wrk share them)"
echo "== GET /health, $conns connections, ${secs}s"
wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/health" | grep -E "Requests/sec|50%|90%|99%|requests in|Non-2xx"
lua=$(mktemp)
cat >"$lua" <<'EOL'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"prompt": "Hello", "max_tokens": 1, "temperature": 0}'
EOL
echo "== POST /v1/completions (1 token), $conns connections, ${secs}s"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port/v1/completions" | grep -E "Requests/sec|50%|90%|99%|requests in|Non-2xx"
rm -f "$lua"
