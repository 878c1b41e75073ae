// Comm over NCCL for device buffers (the CUDA backend's tensor-parallel all-reduces). Bootstrapped
// from MPI: rank 0 of the group makes the ncclUniqueId and MPI broadcasts it. Every operation is queued
// on one CUDA stream, the one the CUDA backend's kernels run on, so they are ordered with them without
// a host synchronisation and a stream capture records them into a CUDA graph with the kernels (NCCL
// supports graph capture). Built only with CUDA.
#pragma once
#include <mpi.h>

#include <memory>

#include "dist/comm.h"
#include "dist/topology.h"

namespace llmserve {

// A communicator over the ranks of `group` (each rank must have selected its CUDA device). Collective:
// every rank of the group calls it. `stream`: a cudaStream_t (null: the legacy default stream). Throws
// Error when NCCL fails.
std::unique_ptr<Comm> make_nccl_comm(MPI_Comm group, void* stream = nullptr);

// The pipeline's activation link for this rank over NCCL: a two-rank communicator with the previous
// stage's rank of the same tensor rank and one with the next's (split by stage_pair_colors), so what a
// stage receives and what it sends are never serialized behind each other. `stream`: the compute
// stream (a cudaStream_t). Collective over `world`: every rank calls it, pp = 1 included (no
// communicator is made then).
std::unique_ptr<DeviceStageLink> make_nccl_stage_link(MPI_Comm world, const Topology& topo, void* stream);

}  // namespace llmserve
