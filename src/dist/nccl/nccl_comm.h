// Comm over NCCL for device buffers (the CUDA backend's tensor-parallel all-reduces). Bootstrapped
// from MPI: rank 0 of the group makes the ncclUniqueId and MPI broadcasts it. Collectives are queued
// on the legacy default stream, where the CUDA backend's kernels run, so they are ordered with them
// without a host synchronisation. Built only with CUDA.
#pragma once
#include <mpi.h>

#include <memory>

#include "dist/comm.h"

namespace llmserve {

// A communicator over the ranks of `group` (each rank must have selected its CUDA device). Collective:
// every rank of the group calls it. Throws Error when NCCL fails.
std::unique_ptr<Comm> make_nccl_comm(MPI_Comm group);

}  // namespace llmserve
