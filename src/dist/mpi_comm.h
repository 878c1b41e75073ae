// Comm over an MPI communicator (host buffers).
#pragma once
#include <mpi.h>

#include "dist/comm.h"

namespace llmserve {

class MpiComm : public Comm {
 public:
  // Wraps `comm`; when `owned`, frees it on destruction.
  MpiComm(MPI_Comm comm, bool owned);
  ~MpiComm() override;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(float* data, size_t count) override;
  void all_reduce_max(float* data, size_t count) override;
  void all_reduce_maxloc(float* values, int32_t* indices, size_t count) override;
  void all_gather(const float* send, size_t count, float* recv) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void send(const void* data, size_t bytes, int peer) override;
  void recv(void* data, size_t bytes, int peer) override;
  void barrier() override;
  MPI_Comm handle() const { return comm_; }

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

// Splits `parent` into groups by `color`, ordered by `key`.
std::unique_ptr<MpiComm> mpi_split(MPI_Comm parent, int color, int key);

}  // namespace llmserve
