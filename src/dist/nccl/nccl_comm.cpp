#include "dist/nccl/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include "common/error.h"

namespace llmserve {
namespace {

void check(ncclResult_t r, const char* what) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = ncclGetLastError(nullptr);
  throw Error(cat("NCCL ", what, ": ", ncclGetErrorString(r), last && *last ? cat(" (", last, ")") : std::string(),
                  r == ncclSystemError || r == ncclRemoteError
                      ? "; check NCCL_SOCKET_IFNAME / NCCL_IB_DISABLE and run with NCCL_DEBUG=INFO"
                      : ""));
}

class NcclComm : public Comm {
 public:
  explicit NcclComm(MPI_Comm group) {
    MPI_Comm_rank(group, &rank_);
    MPI_Comm_size(group, &size_);
    ncclUniqueId id{};
    if (rank_ == 0) check(ncclGetUniqueId(&id), "get unique id");
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, group);
    check(ncclCommInitRank(&comm_, size_, id, rank_), "communicator init");
    if (cudaMalloc(&scratch_, sizeof(float)) != cudaSuccess) throw Error("CUDA: cannot allocate 4 bytes");
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
    if (scratch_) cudaFree(scratch_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(float* data, size_t count) override {
    check(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, nullptr), "all-reduce");
  }
  void all_reduce_max(float* data, size_t count) override {
    check(ncclAllReduce(data, data, count, ncclFloat32, ncclMax, comm_, nullptr), "all-reduce max");
  }
  void all_reduce_maxloc(float*, int32_t*, size_t) override {
    throw Error("NCCL has no (value, index) reduction; the sampler reduces on the host over MPI");
  }
  void all_gather(const float* send, size_t count, float* recv) override {
    check(ncclAllGather(send, recv, count, ncclFloat32, comm_, nullptr), "all-gather");
  }
  void broadcast(void* data, size_t bytes, int root) override {
    check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, nullptr), "broadcast");
  }
  void send(const void* data, size_t bytes, int peer) override {
    check(ncclSend(data, bytes, ncclUint8, peer, comm_, nullptr), "send");
  }
  void recv(void* data, size_t bytes, int peer) override {
    check(ncclRecv(data, bytes, ncclUint8, peer, comm_, nullptr), "recv");
  }
  // Every rank has reached this point and its queued work is done.
  void barrier() override {
    all_reduce_sum(scratch_, 1);
    if (cudaStreamSynchronize(nullptr) != cudaSuccess) throw Error("CUDA error at a barrier");
  }

 private:
  ncclComm_t comm_ = nullptr;
  float* scratch_ = nullptr;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(MPI_Comm group) { return std::make_unique<NcclComm>(group); }

}  // namespace llmserve
