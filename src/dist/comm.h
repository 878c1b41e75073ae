// Communicator interface: the collectives and point-to-point transfers the model needs. Buffers
// live where the backend keeps tensors (host memory for the CPU backend, device memory for CUDA).
// Implementations: MpiComm (here) and, with the CUDA backend, an NCCL one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace llmserve {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In-place sum over all ranks of the group.
  virtual void all_reduce_sum(float* data, size_t count) = 0;
  // In-place maximum over all ranks.
  virtual void all_reduce_max(float* data, size_t count) = 0;
  // In-place (value, index) maximum: the largest value wins, ties go to the smaller index.
  virtual void all_reduce_maxloc(float* values, int32_t* indices, size_t count) = 0;
  // Every rank contributes `count` floats; `recv` gets size() * count floats in rank order.
  virtual void all_gather(const float* send, size_t count, float* recv) = 0;
  // Bytes from `root` to every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Blocking point-to-point (peer is a rank of this group).
  virtual void send(const void* data, size_t bytes, int peer) = 0;
  virtual void recv(void* data, size_t bytes, int peer) = 0;
  virtual void barrier() = 0;
};

// Activations between neighbouring pipeline stages (the same tensor rank of each) in device memory:
// NCCL point-to-point on GPUs (dist/nccl/nccl_comm.h). The CPU backend has none; MPI carries host
// copies there.
class DeviceStageLink {
 public:
  virtual ~DeviceStageLink() = default;
  // Queues `bytes` at `data` for the next stage and returns at once: they are copied on the compute
  // stream (later work there may overwrite `data`) and sent from a stream of the link's own, so the
  // compute stream never waits for the next stage to take them.
  virtual void send_next(const void* data, size_t bytes) = 0;
  // Queues the receipt of `bytes` from the previous stage into `data` on the compute stream (work
  // queued after it there sees them).
  virtual void recv_prev(void* data, size_t bytes) = 0;
};

}  // namespace llmserve
