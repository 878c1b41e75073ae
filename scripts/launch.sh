#!/usr/bin/env bash
# Launches llmserve over an Open MPI hostfile (no Slurm), after a pre-flight check of every host:
#
#   scripts/launch.sh --hostfile hosts [--dry-run] [--skip-checks] config.yaml [llmserve options]
#
# The ranks are (tensor_parallel_size x pipeline_parallel_size) from the config and options; Open MPI
# fills each host's slots in hostfile order, so with `slots=<GPUs per node>` and tp = GPUs per node the
# tensor groups stay inside a node and the pipeline runs across nodes (the seed layout:
# inputs/hosts.example + inputs/qwen2.5-1.5b-2node.yaml).
#
# Pre-flight (each failure is reported with the host it concerns, and nothing is started):
#   every host answers over ssh; the llmserve binary is the same build on every host (sha256);
#   each host sees as many GPUs as it has slots (backend cuda, or auto with GPUs present);
#   the model file is readable on every host; the port is free on the first host (rank 0's).
#
# Environment:
#   LLMSERVE_BIN          the llmserve binary, same path on every host (default: build/llmserve here)
#   LLMSERVE_SSH          remote shell (default: ssh -o BatchMode=yes -o ConnectTimeout=5)
#   LLMSERVE_MPIRUN       mpirun command (default: mpirun)
#   LLMSERVE_MPIRUN_ARGS  extra mpirun arguments, split on spaces (e.g. "--mca btl_tcp_if_include ib0")
#   NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE, NCCL_DEBUG, NCCL_NVLS_ENABLE, LLMSERVE_API_KEY: passed to every
#   rank when set. OMPI_MCA_btl_tcp_if_include / OMPI_MCA_oob_tcp_if_include are read by mpirun itself.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "launch: error: $*" >&2; exit 1; }
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

hostfile="" dry_run=0 checks=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) [ $# -ge 2 ] || usage; hostfile=$2; shift 2 ;;
    --hostfile=*) hostfile=${1#--hostfile=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --skip-checks) checks=0; shift ;;
    -h|--help) usage ;;
    *) args+=("$1"); shift ;;
  esac
done
[ -n "$hostfile" ] || { echo "launch: error: --hostfile is required" >&2; usage; }
[ ${#args[@]} -gt 0 ] || { echo "launch: error: give a config file and/or llmserve options" >&2; usage; }
[ -r "$hostfile" ] || die "cannot read hostfile $hostfile"

bin=${LLMSERVE_BIN:-$root/build/llmserve}
[ -x "$bin" ] || die "$bin is not an executable (build first: make build, or set LLMSERVE_BIN)"
read -r -a ssh_cmd <<<"${LLMSERVE_SSH:-ssh -o BatchMode=yes -o ConnectTimeout=5}"
read -r -a mpirun_cmd <<<"${LLMSERVE_MPIRUN:-mpirun}"
read -r -a mpirun_extra <<<"${LLMSERVE_MPIRUN_ARGS:-}"

# ---- the configuration, resolved by llmserve itself -------------------------------------------------
if ! cfg_out=$("$bin" config "${args[@]}" 2>&1); then
  die "bad configuration: ${cfg_out#llmserve: }"
fi
declare -A cfg
while IFS='=' read -r k v; do [ -n "$k" ] && cfg[$k]=$v; done <<<"$cfg_out"
ranks=${cfg[world_size]}
tp=${cfg[tensor_parallel_size]}
model=${cfg[model]}
port=${cfg[port]}
case "$model" in /*) ;; *) model="$PWD/$model" ;; esac

# ---- the hostfile: "host [slots=N] ..." lines, # comments --------------------------------------------
hosts=() slots=()
while read -r line; do
  line=${line%%#*}
  read -r -a f <<<"$line"
  [ ${#f[@]} -gt 0 ] || continue
  n=1
  for x in "${f[@]:1}"; do
    case "$x" in slots=*) n=${x#slots=} ;; esac
  done
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "$hostfile: bad slot count for ${f[0]}: '$n'"
  hosts+=("${f[0]}")
  slots+=("$n")
done <"$hostfile"
[ ${#hosts[@]} -gt 0 ] || die "$hostfile lists no hosts"
total=0
for n in "${slots[@]}"; do total=$((total + n)); done
[ "$total" -ge "$ranks" ] || die "$hostfile has $total slots; tensor_parallel_size x pipeline_parallel_size = $ranks ranks"
if [ "${#hosts[@]}" -gt 1 ] && [ $((slots[0] % tp)) -ne 0 ]; then
  echo "launch: warning: ${slots[0]} slots on ${hosts[0]} is not a multiple of tensor_parallel_size $tp:" \
    "a tensor group will span two hosts (slow all-reduces)" >&2
fi

is_local() {
  case "$1" in localhost|127.0.0.1|"$(hostname)"|"$(hostname -s 2>/dev/null)") return 0 ;; esac
  return 1
}
on_host() {  # on_host HOST COMMAND: runs a shell command on HOST, locally when HOST is this machine
  local h=$1; shift
  if is_local "$h"; then bash -c "$1"; else "${ssh_cmd[@]}" "$h" "$1"; fi
}

# ---- pre-flight ---------------------------------------------------------------------------------------
if [ "$checks" -eq 1 ]; then
  failures=()
  want_sha=$(sha256sum "$bin" | cut -d' ' -f1)
  q_bin=$(printf '%q' "$bin")
  q_model=$(printf '%q' "$model")
  used=0
  for i in "${!hosts[@]}"; do
    h=${hosts[$i]}
    [ "$used" -lt "$ranks" ] || break
    need=$(( ranks - used < slots[i] ? ranks - used : slots[i] ))
    used=$((used + need))
    if ! out=$(on_host "$h" true 2>&1); then
      failures+=("$h: not reachable over ssh (${out:-no output}); check the name, keys (BatchMode) and firewall")
      continue
    fi
    sha=$(on_host "$h" "sha256sum $q_bin 2>/dev/null | cut -d' ' -f1" 2>/dev/null || true)
    if [ -z "$sha" ]; then
      failures+=("$h: $bin is missing (the same path must exist on every host)")
    elif [ "$sha" != "$want_sha" ]; then
      failures+=("$h: $bin differs from this host's build (sha256 ${sha:0:12} vs ${want_sha:0:12}); rebuild or sync it")
    fi
    if ! on_host "$h" "test -r $q_model" >/dev/null 2>&1; then
      failures+=("$h: model file $model is not readable (every rank reads its own shard from it)")
    fi
    gpus=$(on_host "$h" "if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; else echo none; fi" 2>/dev/null || echo none)
    case "${cfg[backend]}" in
      cuda)
        if [ "$gpus" = none ] || [ "$gpus" -lt "$need" ]; then
          failures+=("$h: backend cuda needs $need GPUs, the host shows ${gpus/none/no} GPUs (nvidia-smi -L)")
        fi ;;
      auto)
        if [ "$gpus" != none ] && [ "$gpus" -gt 0 ] && [ "$gpus" -lt "$need" ]; then
          failures+=("$h: $need ranks but only $gpus GPUs visible")
        fi ;;
    esac
    echo "launch: $h ok ($need ranks; GPUs: ${gpus/none/0})" >&2
  done
  if on_host "${hosts[0]}" "exec 3<>/dev/tcp/127.0.0.1/$port" >/dev/null 2>&1; then
    failures+=("${hosts[0]}: port $port is in use (another server?); pass --port")
  fi
  if [ ${#failures[@]} -gt 0 ]; then
    echo "launch: pre-flight failed:" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
  fi
  echo "launch: pre-flight passed on ${#hosts[@]} host(s)" >&2
fi

# ---- mpirun -------------------------------------------------------------------------------------------
env_args=()
for v in NCCL_SOCKET_IFNAME NCCL_IB_DISABLE NCCL_DEBUG NCCL_NVLS_ENABLE LLMSERVE_API_KEY OMP_NUM_THREADS; do
  if [ -n "${!v:-}" ]; then env_args+=(-x "$v"); fi
done
cmd=("${mpirun_cmd[@]}" -np "$ranks" --hostfile "$hostfile" --map-by slot --bind-to none "${env_args[@]}"
     "${mpirun_extra[@]}" "$bin" "${args[@]}")
endpoint_host=${hosts[0]}
is_local "$endpoint_host" && endpoint_host=127.0.0.1
echo "launch: endpoint http://$endpoint_host:$port/v1 (model ${cfg[served_model_name]})" >&2
echo "launch: $(printf '%q ' "${cmd[@]}")" >&2
[ "$dry_run" -eq 1 ] && exit 0
exec "${cmd[@]}"
