#!/usr/bin/env bash
# mpirun for the test suite: oversubscribed on a small machine, one OpenMP thread per rank, and
# root allowed (CI and the dev machines run as root; real clusters do not need this).
set -euo pipefail
np=$1
shift
extra=()
if [ "$(id -u)" -eq 0 ]; then extra+=(--allow-run-as-root); fi
# OMP_NUM_THREADS=default: left unset (llmserve's own default, for the test of it).
if [ "${OMP_NUM_THREADS:-}" = default ]; then unset OMP_NUM_THREADS; else export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# One node: shared memory between the ranks, without probing for network transports (UCX's probe adds
# ~0.2 s to each start).
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1} OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
exec mpirun --oversubscribe --bind-to none "${extra[@]}" -np "$np" "$@"
