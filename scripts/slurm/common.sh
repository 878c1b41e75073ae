# shellcheck shell=bash
# Shared by the llmserve sbatch scripts: the layout from the allocation, the network settings, the
# launch command (srun --mpi=pmix, or mpirun from the allocation) and clean shutdown.
#
# Settings (export before sbatch; sbatch passes the environment on):
#   LLMSERVE_HOME         the llmserve checkout (default: the directory sbatch was run from)
#   LLMSERVE_BIN          the llmserve binary (default: $LLMSERVE_HOME/build/llmserve)
#   LLMSERVE_LAUNCHER     srun (default; needs Slurm built with PMIx) or mpirun (Open MPI inside the job)
#   LLMSERVE_TP / LLMSERVE_PP  layout (default: tp = tasks per node, pp = nodes); they override the config
#   LLMSERVE_DP           data-parallel replicas (default 1), each of tasks / dp ranks (tp defaults to as many
#                         of them as fit on a node): generate and run-batch share their input among them, the server on
#                         port routes requests to them
#   LLMSERVE_PORT         HTTP port (default 8000; overrides the config)
#   LLMSERVE_LOG_DIR      per-job logs (default: $LLMSERVE_HOME/logs)
#   LLMSERVE_DRY_RUN=1    print the launch command and exit
#   Network: NCCL_SOCKET_IFNAME (e.g. ib0), NCCL_IB_DISABLE (1 without InfiniBand), NCCL_DEBUG (default WARN;
#   INFO to debug), NCCL_NVLS_ENABLE, OMPI_MCA_btl_tcp_if_include (MPI's TCP interface, e.g. ib0 or
#   10.0.0.0/16; also used for Open MPI's out-of-band channel). Unset ones are left to NCCL / Open MPI.

llmserve_die() { echo "llmserve-slurm: error: $*" >&2; exit 1; }

llmserve_slurm_init() {
  [ -n "${SLURM_JOB_ID:-}" ] || llmserve_die "not inside a Slurm job (submit with sbatch, or use scripts/launch.sh)"
  LLMSERVE_HOME=${LLMSERVE_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
  LLMSERVE_BIN=${LLMSERVE_BIN:-$LLMSERVE_HOME/build/llmserve}
  [ -x "$LLMSERVE_BIN" ] || llmserve_die "$LLMSERVE_BIN is not an executable (set LLMSERVE_HOME or LLMSERVE_BIN)"
  LLMSERVE_LOG_DIR=${LLMSERVE_LOG_DIR:-$LLMSERVE_HOME/logs}
  mkdir -p "$LLMSERVE_LOG_DIR" || llmserve_die "cannot create $LLMSERVE_LOG_DIR"

  NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  local ntasks=${SLURM_NTASKS:-}
  if [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then
    PER_NODE=${SLURM_NTASKS_PER_NODE%%(*}  # "4(x2)" -> 4
  elif [ -n "$ntasks" ]; then
    PER_NODE=$((ntasks / NODES))
  else
    PER_NODE=${SLURM_GPUS_ON_NODE:-1}
  fi
  RANKS=${ntasks:-$((NODES * PER_NODE))}
  [ "$RANKS" -eq $((NODES * PER_NODE)) ] || llmserve_die "$RANKS tasks do not spread evenly over $NODES nodes"
  DP=${LLMSERVE_DP:-1}
  [[ "$DP" =~ ^[1-9][0-9]*$ ]] || llmserve_die "LLMSERVE_DP must be a positive integer, got '$DP'"
  local per_replica=$((RANKS / DP))
  [ "$per_replica" -ge 1 ] || per_replica=1
  TP=${LLMSERVE_TP:-$((per_replica < PER_NODE ? per_replica : PER_NODE))}
  PP=${LLMSERVE_PP:-$((per_replica / TP))}
  [ "$PP" -ge 1 ] || PP=1
  [ $((DP * TP * PP)) -eq "$RANKS" ] ||
    llmserve_die "$([ "$DP" -gt 1 ] && echo "data_parallel_size $DP x ")tensor_parallel_size $TP x pipeline_parallel_size $PP != $RANKS tasks of the allocation"
  DP_ARGS=()
  [ "$DP" -gt 1 ] && DP_ARGS=(--data-parallel-size "$DP")
  if [ "$NODES" -gt 1 ] && [ $((PER_NODE % TP)) -ne 0 ]; then
    echo "llmserve-slurm: warning: tp=$TP does not divide the $PER_NODE tasks per node: tensor groups span nodes" >&2
  fi
  if command -v scontrol >/dev/null 2>&1 && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    # The whole list, then its first line: `| head -n 1` can end scontrol with SIGPIPE, which
    # pipefail and set -e turn into a silent exit of the job script.
    local hosts
    hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
    HEAD_NODE=${hosts%%$'\n'*}
  fi
  HEAD_NODE=${HEAD_NODE:-$(hostname)}
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  if [ -n "${OMPI_MCA_btl_tcp_if_include:-}" ]; then
    export OMPI_MCA_oob_tcp_if_include=${OMPI_MCA_oob_tcp_if_include:-$OMPI_MCA_btl_tcp_if_include}
  fi
  NET_VARS=()
  local v
  for v in NCCL_SOCKET_IFNAME NCCL_IB_DISABLE NCCL_DEBUG NCCL_NVLS_ENABLE OMPI_MCA_btl_tcp_if_include \
           OMPI_MCA_oob_tcp_if_include; do
    if [ -n "${!v:-}" ]; then
      export "${v?}"
      NET_VARS+=("$v")
    fi
  done

  case "${LLMSERVE_LAUNCHER:-srun}" in
    srun)
      LAUNCH=(srun --mpi=pmix --kill-on-bad-exit=1 --nodes="$NODES" --ntasks="$RANKS"
              --ntasks-per-node="$PER_NODE" --cpu-bind=none) ;;
    mpirun)
      LAUNCH=(mpirun -np "$RANKS" --map-by "ppr:$PER_NODE:node" --bind-to none)
      for v in "${NET_VARS[@]}" LLMSERVE_API_KEY; do
        if [ -n "${!v:-}" ]; then LAUNCH+=(-x "$v"); fi
      done ;;
    *) llmserve_die "LLMSERVE_LAUNCHER must be srun or mpirun, got '$LLMSERVE_LAUNCHER'" ;;
  esac
  echo "llmserve-slurm: job $SLURM_JOB_ID: $NODES node(s) x $PER_NODE tasks, $([ "$DP" -gt 1 ] && echo "dp=$DP ")tp=$TP pp=$PP, head node $HEAD_NODE"
  for v in "${NET_VARS[@]}"; do echo "llmserve-slurm: $v=${!v}"; done
}

llmserve_print_cmd() { echo "llmserve-slurm: launch: $(printf '%q ' "$@")"; }

# llmserve_slurm_serve [config.yaml] [llmserve options]: serves until the allocation ends (sbatch
# --signal=B:TERM@<seconds> warns the script), scancel, or the server stops; returns its exit code.
llmserve_slurm_serve() {
  llmserve_slurm_init
  local port=${LLMSERVE_PORT:-8000}
  local log="$LLMSERVE_LOG_DIR/llmserve-$SLURM_JOB_ID.log"
  local endpoint="http://$HEAD_NODE:$port"
  local cmd=("${LAUNCH[@]}" "$LLMSERVE_BIN" "$@" ${DP_ARGS[@]+"${DP_ARGS[@]}"} --tensor-parallel-size "$TP" --pipeline-parallel-size "$PP"
             --port "$port")
  llmserve_print_cmd "${cmd[@]}"
  if [ "${LLMSERVE_DRY_RUN:-0}" = 1 ]; then echo "llmserve-slurm: endpoint $endpoint/v1"; return 0; fi
  echo "$endpoint" >"$LLMSERVE_LOG_DIR/llmserve-$SLURM_JOB_ID.endpoint"
  echo "llmserve-slurm: server log $log"
  "${cmd[@]}" >"$log" 2>&1 &
  LLMSERVE_PID=$!
  trap llmserve_slurm_stop TERM INT USR1
  local ready=0
  while kill -0 "$LLMSERVE_PID" 2>/dev/null; do
    if [ "$ready" -eq 0 ] && curl -sf -o /dev/null --max-time 2 "$endpoint/health"; then
      ready=1
      echo "llmserve-slurm: ready: $endpoint/v1 (OpenAI API; GET $endpoint/health)"
    fi
    sleep 2 &
    wait $! 2>/dev/null || true
  done
  local rc=0
  wait "$LLMSERVE_PID" || rc=$?
  # mpirun exits 1 after passing a SIGTERM on, even when every rank shut down cleanly: rank 0's last
  # line tells a clean stop from a failure.
  if [ "$rc" -ne 0 ] && [ "${LLMSERVE_STOPPING:-0}" = 1 ] && grep -q "\[rank 0\] stopped$" "$log"; then
    rc=0
  fi
  echo "llmserve-slurm: server exited with code $rc"
  return "$rc"
}

# Forwards the stop to the launcher (srun and mpirun pass SIGTERM on to every rank; rank 0 shuts the
# whole job down and every rank exits 0). After 60 s it is killed.
llmserve_slurm_stop() {
  echo "llmserve-slurm: stopping the server"
  LLMSERVE_STOPPING=1
  trap - TERM INT USR1
  kill -TERM "$LLMSERVE_PID" 2>/dev/null || return 0
  for _ in $(seq 1 60); do
    kill -0 "$LLMSERVE_PID" 2>/dev/null || return 0
    sleep 1
  done
  echo "llmserve-slurm: the server did not stop within 60 s: killing it" >&2
  kill -KILL "$LLMSERVE_PID" 2>/dev/null || true
}

# llmserve_slurm_generate [config.yaml] --input in.jsonl --output out.jsonl [options]: batch inference.
# LLMSERVE_BATCH=run-batch runs `llmserve run-batch` (OpenAI batch files: -i in.jsonl -o out.jsonl) instead.
llmserve_slurm_generate() {
  llmserve_slurm_init
  local what="${LLMSERVE_BATCH:-generate}"
  case "$what" in
    generate|run-batch) ;;
    *) echo "llmserve-slurm: error: LLMSERVE_BATCH must be generate or run-batch, got '$what'" >&2; return 2 ;;
  esac
  local log="$LLMSERVE_LOG_DIR/llmserve-$what-$SLURM_JOB_ID.log"
  local cmd=("${LAUNCH[@]}" "$LLMSERVE_BIN" "$what" "$@" ${DP_ARGS[@]+"${DP_ARGS[@]}"} --tensor-parallel-size "$TP"
             --pipeline-parallel-size "$PP")
  llmserve_print_cmd "${cmd[@]}"
  [ "${LLMSERVE_DRY_RUN:-0}" = 1 ] && return 0
  echo "llmserve-slurm: log $log"
  local rc=0
  "${cmd[@]}" >"$log" 2>&1 || rc=$?
  tail -n 5 "$log"
  echo "llmserve-slurm: $what exited with code $rc"
  return "$rc"
}
