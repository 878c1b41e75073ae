#!/usr/bin/env bash
# Deployment scripts under a fake Slurm and a fake ssh:
#  - every script passes bash -n and shellcheck;
#  - the sbatch scripts, run with SLURM_* set and `srun`/`scontrol` replaced by shims, build the expected
#    launch command (srun --mpi=pmix and mpirun variants, layout from the allocation, network settings);
#  - the multi-node serve script really serves (the srun shim starts the ranks with mpirun on this machine,
#    CPU backend, tp=2 pp=2), prints its endpoint, answers, and stops cleanly on SIGTERM;
#  - the batch-generate script writes its results;
#  - scripts/launch.sh's pre-flight reports each failure (unreachable host, other build, unreadable model,
#    missing GPUs, busy port) before anything starts, and launches when all is well.
# Usage: test_deploy.sh BUILD_DIR
set -uo pipefail
build=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
model="$build/test-models/tiny-qwen2.h5"
work=$(mktemp -d)
trap 'pkill -TERM -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
pass=0 fail=0
check() {  # check NAME CONDITION-STATUS [DETAIL]
  if [ "$2" -eq 0 ]; then pass=$((pass + 1)); echo "PASS $1"; else fail=$((fail + 1)); echo "FAIL $1${3:+: $3}"; fi
}
contains() { grep -qF -- "$2" <<<"$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- static checks --------------------------------------------------------------------------------------
scripts=("$root"/scripts/*.sh "$root"/scripts/slurm/*.sbatch "$root"/scripts/slurm/common.sh)
bad=""
for f in "${scripts[@]}"; do bash -n "$f" || bad+=" $f"; done
check "bash -n on every script" "$([ -z "$bad" ]; echo $?)" "$bad"
if command -v shellcheck >/dev/null; then
  out=$(cd "$root" && shellcheck -x "${scripts[@]}" 2>&1)
  check "shellcheck on every script" $? "$out"
else
  check "shellcheck is installed (scripts/install-deps.sh installs it)" 1
fi

# ---- shims ------------------------------------------------------------------------------------------------
shims="$work/bin"
mkdir -p "$shims" "$work/submit"
# scontrol: one host per line, a pause after each (as a slow controller writes them), so a reader
# that stops after the first line (`| head -n 1`) ends it with SIGPIPE every time, not only under load.
cat >"$shims/scontrol" <<'EOF'
#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || exit 0
for h in ${FAKE_NODES:-localhost}; do printf '%s\n' "$h"; sleep 0.1; done
EOF
# srun: records its arguments and the network environment, then starts the ranks on this machine.
cat >"$shims/srun" <<EOF
#!/usr/bin/env bash
{ printf '%s\n' "\$*"; env | grep -E '^(NCCL_|OMPI_MCA_)' | sort; } >"$work/srun.record"
n=1
while [ \$# -gt 0 ] && [ "\${1#--}" != "\$1" ]; do
  case "\$1" in --ntasks=*) n=\${1#--ntasks=} ;; esac
  shift
done
exec "$root/tests/mpirun.sh" "\$n" "\$@"
EOF
# ssh: "ssh [options] HOST COMMAND" runs COMMAND here; hosts named bad* do not answer, and the host
# named in FAKE_OTHER_BUILD reports another llmserve build.
cat >"$shims/ssh" <<'EOF'
#!/usr/bin/env bash
while [ "${1#-}" != "$1" ]; do [ "$1" = -o ] && shift; shift; done
host=$1; shift
case "$host" in bad*) echo "ssh: connect to host $host port 22: No route to host" >&2; exit 255 ;; esac
if [ "$host" = "${FAKE_OTHER_BUILD:-}" ] && [[ "$*" == *sha256sum* ]]; then echo 0123456789abcdef; exit 0; fi
exec bash -c "$*"
EOF
chmod +x "$shims"/*

slurm_env=(env PATH="$shims:$PATH" LLMSERVE_HOME="$root" LLMSERVE_BIN="$build/llmserve" LLMSERVE_LOG_DIR="$work/logs"
           SLURM_SUBMIT_DIR="$work/submit")

# ---- sbatch scripts: the generated launch commands -----------------------------------------------------------
out=$("${slurm_env[@]}" SLURM_JOB_ID=41 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS=8 SLURM_NTASKS_PER_NODE=4 \
      SLURM_JOB_NODELIST="gpu[01-02]" FAKE_NODES="gpu01 gpu02" NCCL_SOCKET_IFNAME=ib0 NCCL_IB_DISABLE=0 \
      OMPI_MCA_btl_tcp_if_include=ib0 LLMSERVE_DRY_RUN=1 \
      bash "$root/scripts/slurm/llmserve-multinode.sbatch" "$root/inputs/qwen2.5-1.5b-2node.yaml" 2>&1) || out="(exit $?) $out"
check "multinode sbatch: srun --mpi=pmix over 2 nodes x 4 tasks" "$(contains "$out" "launch: srun --mpi=pmix --kill-on-bad-exit=1 --nodes=2 --ntasks=8 --ntasks-per-node=4"; echo $?)" "$out"
check "multinode sbatch: tp=4 within a node, pp=2 across nodes, port 8000" "$(contains "$out" "qwen2.5-1.5b-2node.yaml --tensor-parallel-size 4 --pipeline-parallel-size 2 --port 8000"; echo $?)" "$out"
check "multinode sbatch: endpoint on the first node" "$(contains "$out" "endpoint http://gpu01:8000/v1"; echo $?)" "$out"
check "multinode sbatch: network settings exported and shown" "$(contains "$out" "NCCL_SOCKET_IFNAME=ib0" && contains "$out" "OMPI_MCA_oob_tcp_if_include=ib0" && contains "$out" "NCCL_DEBUG=WARN"; echo $?)" "$out"

out=$("${slurm_env[@]}" SLURM_JOB_ID=42 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=4 SLURM_JOB_NODELIST="gpu[01-02]" \
      FAKE_NODES="gpu01 gpu02" NCCL_SOCKET_IFNAME=eth0 LLMSERVE_LAUNCHER=mpirun LLMSERVE_PORT=9000 LLMSERVE_DRY_RUN=1 \
      bash "$root/scripts/slurm/llmserve-multinode.sbatch" cfg.yaml 2>&1) || out="(exit $?) $out"
check "multinode sbatch, mpirun launcher: ranks per node and exported variables" "$(contains "$out" "launch: mpirun -np 8 --map-by ppr:4:node --bind-to none -x NCCL_SOCKET_IFNAME -x NCCL_DEBUG"; echo $?)" "$out"
check "multinode sbatch, mpirun launcher: LLMSERVE_PORT" "$(contains "$out" "--port 9000" && contains "$out" "endpoint http://gpu01:9000/v1"; echo $?)" "$out"

out=$("${slurm_env[@]}" SLURM_JOB_ID=43 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE="8(x1)" LLMSERVE_TP=2 LLMSERVE_DRY_RUN=1 \
      bash "$root/scripts/slurm/llmserve-1node.sbatch" cfg.yaml 2>&1)
check "1-node sbatch: LLMSERVE_TP=2 on 8 tasks gives pp=4" "$(contains "$out" "--tensor-parallel-size 2 --pipeline-parallel-size 4"; echo $?)" "$out"

out=$("${slurm_env[@]}" SLURM_JOB_ID=44 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=4 LLMSERVE_TP=3 \
      bash "$root/scripts/slurm/llmserve-1node.sbatch" cfg.yaml 2>&1); rc=$?
check "1-node sbatch: a layout that does not fit the allocation is refused" "$([ $rc -ne 0 ] && contains "$out" "3 x pipeline_parallel_size 1 != 4 tasks"; echo $?)" "$out"
out=$("${slurm_env[@]}" SLURM_JOB_ID=46 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=4 SLURM_JOB_NODELIST="gpu[01-02]" \
      FAKE_NODES="gpu01 gpu02" LLMSERVE_DP=4 LLMSERVE_DRY_RUN=1 \
      bash "$root/scripts/slurm/llmserve-generate.sbatch" cfg.yaml --input in.jsonl --output out.jsonl 2>&1) || out="(exit $?) $out"
check "generate sbatch: LLMSERVE_DP=4 on 2 x 4 tasks gives dp=4 tp=2 pp=1" "$(contains "$out" "--data-parallel-size 4 --tensor-parallel-size 2 --pipeline-parallel-size 1"; echo $?)" "$out"
out=$("${slurm_env[@]}" SLURM_JOB_ID=47 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=4 LLMSERVE_DP=3 \
      bash "$root/scripts/slurm/llmserve-1node.sbatch" cfg.yaml 2>&1); rc=$?
check "1-node sbatch: LLMSERVE_DP that does not fit the allocation is refused" "$([ $rc -ne 0 ] && contains "$out" "data_parallel_size 3 x tensor_parallel_size 1 x pipeline_parallel_size 1 != 4 tasks"; echo $?)" "$out"
out=$(env -u SLURM_JOB_ID PATH="$shims:$PATH" LLMSERVE_HOME="$root" bash "$root/scripts/slurm/llmserve-1node.sbatch" 2>&1); rc=$?
check "sbatch script outside Slurm: clear error" "$([ $rc -ne 0 ] && contains "$out" "not inside a Slurm job"; echo $?)" "$out"
out=$(cd "$work" && env -u LLMSERVE_HOME SLURM_JOB_ID=45 SLURM_SUBMIT_DIR="$work" bash "$root/scripts/slurm/llmserve-1node.sbatch" 2>&1); rc=$?
check "sbatch script submitted from elsewhere: says where common.sh was looked for" "$([ $rc -ne 0 ] && contains "$out" "submit from the llmserve checkout or export LLMSERVE_HOME"; echo $?)" "$out"

# ---- the multi-node serve script, for real (4 ranks on this machine) ----------------------------------------
port=$(free_port)
"${slurm_env[@]}" SLURM_JOB_ID=50 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=2 SLURM_JOB_NODELIST=localhost FAKE_NODES=localhost \
  LLMSERVE_PORT=$port NCCL_SOCKET_IFNAME=lo \
  bash "$root/scripts/slurm/llmserve-multinode.sbatch" --model "$model" --backend cpu --host 127.0.0.1 --max-model-len 256 \
  >"$work/job50.out" 2>&1 &
job=$!
for _ in $(seq 1 300); do grep -q "ready:" "$work/job50.out" && break; kill -0 $job 2>/dev/null || break; sleep 0.1; done
check "serve sbatch: ready line with the endpoint" "$(grep -qF "ready: http://localhost:$port/v1" "$work/job50.out"; echo $?)" "$(cat "$work/job50.out")"
check "serve sbatch: endpoint file" "$([ "$(cat "$work/logs/llmserve-50.endpoint" 2>/dev/null)" = "http://localhost:$port" ]; echo $?)"
rec=$(cat "$work/srun.record" 2>/dev/null)
check "serve sbatch: srun got 4 tasks, tp=2 pp=2 and NCCL_SOCKET_IFNAME" "$(contains "$rec" "--ntasks=4 --ntasks-per-node=2" && contains "$rec" "--tensor-parallel-size 2 --pipeline-parallel-size 2" && contains "$rec" "NCCL_SOCKET_IFNAME=lo"; echo $?)" "$rec"
resp=$(curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
       -d '{"prompt": "Hello", "max_tokens": 4, "ignore_eos": true}')
check "serve sbatch: the server answers a completion" "$(python3 -c 'import json,sys; sys.exit(json.loads(sys.argv[1])["usage"]["completion_tokens"] != 4)' "$resp" 2>/dev/null; echo $?)" "$resp"
kill -TERM $job
rc=1
for _ in $(seq 1 300); do kill -0 $job 2>/dev/null || { wait $job; rc=$?; break; }; sleep 0.1; done
check "serve sbatch: SIGTERM (end of allocation) stops every rank, exit code 0" "$([ $rc -eq 0 ] && grep -q "server exited with code 0" "$work/job50.out"; echo $?)" "rc=$rc $(tail -3 "$work/job50.out")"
check "serve sbatch: per-job server log" "$(grep -q "\[rank 0\] stopped" "$work/logs/llmserve-50.log"; echo $?)"
sleep 0.5
check "serve sbatch: no llmserve process left" "$(! pgrep -f -- "--port $port" >/dev/null; echo $?)"

# ---- the batch-generate script, for real ----------------------------------------------------------------
printf '%s\n' '{"prompt": "Hello", "max_tokens": 3, "ignore_eos": true}' '{"prompt_token_ids": [1, 2, 3], "max_tokens": 2, "ignore_eos": true}' >"$work/in.jsonl"
out=$("${slurm_env[@]}" SLURM_JOB_ID=51 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=2 \
      bash "$root/scripts/slurm/llmserve-generate.sbatch" --model "$model" --backend cpu --input "$work/in.jsonl" \
      --output "$work/out.jsonl" 2>&1); rc=$?
lines=$(wc -l <"$work/out.jsonl" 2>/dev/null || echo 0)
check "generate sbatch: tp=2 run writes one result per request" "$([ $rc -eq 0 ] && [ "$lines" -eq 2 ] && contains "$out" "generate exited with code 0"; echo $?)" "rc=$rc lines=$lines $out"
printf '%s\n' '{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Hello", "max_tokens": 3}}' >"$work/batch.jsonl"
out=$("${slurm_env[@]}" SLURM_JOB_ID=52 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=2 LLMSERVE_BATCH=run-batch \
      bash "$root/scripts/slurm/llmserve-generate.sbatch" --model "$model" --backend cpu -i "$work/batch.jsonl" \
      -o "$work/batch-out.jsonl" 2>&1); rc=$?
check "generate sbatch with LLMSERVE_BATCH=run-batch: an OpenAI batch file answered" \
  "$([ $rc -eq 0 ] && grep -q '"status_code":200' "$work/batch-out.jsonl" && contains "$out" "run-batch exited with code 0"; echo $?)" "rc=$rc $out"

# ---- scripts/launch.sh ---------------------------------------------------------------------------------------
launch_env=(env PATH="$shims:$PATH" LLMSERVE_SSH=ssh LLMSERVE_BIN="$build/llmserve")
printf 'node1 slots=2\nnode2 slots=2   # second node\n' >"$work/hosts"
out=$("${launch_env[@]}" NCCL_SOCKET_IFNAME=eth0 bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --dry-run \
      --model "$model" --backend cpu -tp 2 -pp 2 --port "$(free_port)" 2>&1); rc=$?
check "launch.sh: pre-flight passes on two reachable hosts" "$([ $rc -eq 0 ] && contains "$out" "pre-flight passed on 2 host(s)"; echo $?)" "$out"
check "launch.sh: mpirun over the hostfile with the network variables" "$(contains "$out" "mpirun -np 4 --hostfile $work/hosts --map-by slot --bind-to none -x NCCL_SOCKET_IFNAME"; echo $?)" "$out"

printf 'node1 slots=2\nbadnode slots=2\n' >"$work/hosts-bad"
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --hostfile "$work/hosts-bad" --model "$model" --backend cpu -tp 2 -pp 2 2>&1); rc=$?
check "launch.sh: an unreachable host is named, nothing starts" "$([ $rc -ne 0 ] && contains "$out" "badnode: not reachable over ssh" && ! contains "$out" "mpirun -np"; echo $?)" "$out"
out=$("${launch_env[@]}" FAKE_OTHER_BUILD=node2 bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --model "$model" --backend cpu -tp 2 -pp 2 2>&1); rc=$?
check "launch.sh: another build on a host is reported" "$([ $rc -ne 0 ] && contains "$out" "node2: $build/llmserve differs from this host's build"; echo $?)" "$out"
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --model "$work/missing.h5" -tp 2 -pp 2 2>&1); rc=$?
check "launch.sh: an unreadable model file is reported per host" "$([ $rc -ne 0 ] && contains "$out" "node1: model file $work/missing.h5 is not readable"; echo $?)" "$out"
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --model "$model" --backend cuda -tp 2 -pp 2 2>&1); rc=$?
check "launch.sh: backend cuda on hosts without GPUs is reported" "$([ $rc -ne 0 ] && contains "$out" "node1: backend cuda needs 2 GPUs"; echo $?)" "$out"
busy=$(free_port)
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$busy)); s.listen(); time.sleep(30)" & listener=$!
sleep 0.3
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --model "$model" --backend cpu -tp 2 -pp 2 --port "$busy" 2>&1); rc=$?
kill $listener 2>/dev/null
check "launch.sh: a busy port is reported" "$([ $rc -ne 0 ] && contains "$out" "node1: port $busy is in use"; echo $?)" "$out"
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --model "$model" -tp 4 -pp 2 2>&1); rc=$?
check "launch.sh: more ranks than slots is refused" "$([ $rc -ne 0 ] && contains "$out" "has 4 slots; tensor_parallel_size x pipeline_parallel_size = 8 ranks"; echo $?)" "$out"
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --hostfile "$work/hosts" --model "$model" --max-num-seqs 0 2>&1); rc=$?
check "launch.sh: a bad configuration is refused before the checks" "$([ $rc -ne 0 ] && contains "$out" "bad configuration" && contains "$out" "max_num_seqs"; echo $?)" "$out"
out=$("${launch_env[@]}" bash "$root/scripts/launch.sh" --model "$model" 2>&1); rc=$?
check "launch.sh: no hostfile is a usage error" "$([ $rc -eq 2 ] && contains "$out" "--hostfile is required"; echo $?)" "$out"

# A real launch on this machine (root needs --allow-run-as-root; clusters do not).
printf 'localhost slots=4\n' >"$work/hosts-local"
extra="--oversubscribe"
[ "$(id -u)" -eq 0 ] && extra+=" --allow-run-as-root"
# Another test running beside this one (ctest -j) may take the free port between free_port and the
# server's bind: then the launch is tried again on another port (up to three times).
for attempt in 1 2 3; do
  port=$(free_port)
  "${launch_env[@]}" LLMSERVE_MPIRUN_ARGS="$extra" OMP_NUM_THREADS=1 bash "$root/scripts/launch.sh" --hostfile "$work/hosts-local" \
    --model "$model" --backend cpu -tp 2 -pp 2 --host 127.0.0.1 --port "$port" --max-model-len 256 >"$work/launch.out" 2>&1 &
  lpid=$!
  ok=1
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && { ok=0; break; }; kill -0 $lpid 2>/dev/null || break; sleep 0.1; done
  [ $ok -eq 0 ] && break
  kill -0 $lpid 2>/dev/null && break  # still starting after 30 s: not a port race
  wait $lpid 2>/dev/null
  grep -qE "cannot listen on|is in use" "$work/launch.out" || break
  echo "launch attempt $attempt: port $port was taken; again"
done
check "launch.sh: launches tp=2 pp=2 from a hostfile and serves" $ok "$(tail -15 "$work/launch.out")"
kill -TERM $lpid 2>/dev/null
for _ in $(seq 1 300); do kill -0 $lpid 2>/dev/null || break; sleep 0.1; done
check "launch.sh: the job ends on SIGTERM" "$(! kill -0 $lpid 2>/dev/null; echo $?)"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
