#!/usr/bin/env bash
# cpu_offload_gb on one GPU (dummy model of a real shape, default Qwen2.5-1.5B, bf16): what reading the
# offloaded matrices over the host bus costs, against that bus's measured rate.
#   1. The bus: a pinned host-to-device copy of 1 GiB (torch, same GPU), GB/s.
#   2. Batch-1 decode TPOT and 16-way output tokens/s, served (gpu_e2e.sh, E2E_DECODE_ONLY=1), and the
#      TTFT of a 2,048-token prompt (E2E_TTFT_ONLY=1: a prefill's GEMMs copy each offloaded matrix to
#      the device once), with cpu_offload_gb 0 and each of OFFLOAD_GB (default "0.5 1"), in turn,
#      OFFLOAD_ROUNDS times (default 2).
#   3. From the TPOT difference: the offloaded bytes' rate per step, GB/s, and its share of the bus rate;
#      from the TTFT difference: the time over cpu_offload_gb 0's against that of one bus copy of them.
#   bench/offload.sh BUILD_DIR OUT_DIR [CONFIG_JSON]
set -euo pipefail
build=$1 out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cfg=${3:-$root/inputs/models/qwen2.5-1.5b-instruct.json}
mkdir -p "$out"
python3 - <<'PY' | tee "$out/bus.txt"
import torch
n = 1 << 30
h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
d = torch.empty(n, dtype=torch.uint8, device="cuda")
for _ in range(2): d.copy_(h, non_blocking=True)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(5): d.copy_(h, non_blocking=True)
e.record(); e.synchronize()
print(f"bus: pinned host-to-device copy {5 * n / (s.elapsed_time(e) / 1e3) / 1e9:.1f} GB/s")
PY
for round in $(seq 1 "${OFFLOAD_ROUNDS:-2}"); do
  for gb in 0 ${OFFLOAD_GB:-0.5 1}; do
    d="$out/gb$gb-r$round"
    E2E_DECODE_ONLY=1 E2E_BASELINE=0 E2E_CONCURRENCY=16 "$root/bench/gpu_e2e.sh" "$build" "$d" "$cfg" 1 1 --cpu-offload-gb "$gb" >"$d.log" 2>&1 ||
      { echo "cpu_offload_gb $gb: FAILED"; tail -5 "$d.log"; continue; }
    E2E_TTFT_ONLY=1 E2E_BASELINE=0 "$root/bench/gpu_e2e.sh" "$build" "$d" "$cfg" 1 1 --cpu-offload-gb "$gb" >"$d-ttft.log" 2>&1 ||
      echo "cpu_offload_gb $gb: TTFT run FAILED"
    python3 - "$d" "$gb" "$out/bus.txt" <<'PY'
import glob, json, re, sys
d, gb, bus = sys.argv[1], float(sys.argv[2]), sys.argv[3]
one = json.load(open(f"{d}/decode-tp1-pp1.json"))
c16 = json.load(open(f"{d}/decode-c16-tp1-pp1.json"))
log = open(glob.glob(f"{d}/server-*.log")[0]).read()
m = re.search(r"cpu_offload_gb: ([0-9.]+) GiB", log)
off = float(m.group(1)) if m else 0.0
tpot = one["tpot_ms"]["mean"]
line = f"cpu_offload_gb {gb}: offloaded {off:.3f} GiB, batch-1 TPOT {tpot:.2f} ms, 16-way {c16['output_throughput']:.0f} tokens/s"
ttft = None
try:
    ttft = json.load(open(f'{d}/ttft-tp1-pp1.json'))['ttft_ms']['mean']
    line += f", TTFT (2,048 tokens) {ttft:.1f} ms"
except (FileNotFoundError, KeyError, TypeError):
    line += ", TTFT not measured"
base_file = f"{d.rsplit('/', 1)[0]}/base-{d.rsplit('-r', 1)[1]}.json"  # cpu_offload_gb 0's TPOT and TTFT
try:
    base = json.load(open(base_file))
except FileNotFoundError:
    base = None
b = float(re.search(r"([0-9.]+) GB/s", open(bus).read()).group(1))
if gb == 0:
    json.dump({"tpot": tpot, "ttft": ttft}, open(base_file, "w"))
elif base:
    rate = off * 2**30 / ((tpot - base["tpot"]) / 1e3) / 1e9
    line += f"; the offloaded bytes at {rate:.1f} GB/s over the bus ({100 * rate / b:.0f}% of the pinned copy's {b:.1f})"
    if ttft is not None and base["ttft"] is not None:
        # A prefill reads each offloaded matrix over the bus at least once: its floor is that much more.
        once = off * 2**30 / (b * 1e9) * 1e3
        line += f"; TTFT {ttft - base['ttft']:.1f} ms over cpu_offload_gb 0's, against {once:.1f} ms to bring the offloaded bytes over once"
print(line)
PY
  done
done
