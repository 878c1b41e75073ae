#include "dist/nccl/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <deque>

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

// An NCCL communicator over the ranks of `group` (collective over it): rank 0 makes the unique id,
// MPI broadcasts it.
ncclComm_t init_comm(MPI_Comm group, const char* what) {
  int rank = 0, size = 0;
  MPI_Comm_rank(group, &rank);
  MPI_Comm_size(group, &size);
  ncclUniqueId id{};
  if (rank == 0) check(ncclGetUniqueId(&id), "get unique id");
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, group);
  ncclComm_t c = nullptr;
  check(ncclCommInitRank(&c, size, id, rank), what);
  return c;
}

class NcclComm : public Comm {
 public:
  NcclComm(MPI_Comm group, cudaStream_t stream) : stream_(stream) {
    MPI_Comm_rank(group, &rank_);
    MPI_Comm_size(group, &size_);
    comm_ = init_comm(group, "communicator init");
    if (cudaMalloc(&scratch_, sizeof(float)) != cudaSuccess) throw Error("CUDA: cannot allocate 4 bytes");
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
    if (scratch_) cudaFree(scratch_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(float* data, size_t count) override {
    check(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_), "all-reduce");
  }
  void all_reduce_max(float* data, size_t count) override {
    check(ncclAllReduce(data, data, count, ncclFloat32, ncclMax, comm_, stream_), "all-reduce max");
  }
  void all_reduce_maxloc(float*, int32_t*, size_t) override {
    throw Error("NCCL has no (value, index) reduction; the sampler reduces on the host over MPI");
  }
  void all_gather(const float* send, size_t count, float* recv) override {
    check(ncclAllGather(send, recv, count, ncclFloat32, comm_, stream_), "all-gather");
  }
  void broadcast(void* data, size_t bytes, int root) override {
    check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "broadcast");
  }
  void send(const void* data, size_t bytes, int peer) override {
    check(ncclSend(data, bytes, ncclUint8, peer, comm_, stream_), "send");
  }
  void recv(void* data, size_t bytes, int peer) override {
    check(ncclRecv(data, bytes, ncclUint8, peer, comm_, stream_), "recv");
  }
  // Every rank has reached this point and its queued work is done.
  void barrier() override {
    all_reduce_sum(scratch_, 1);
    if (cudaStreamSynchronize(stream_) != cudaSuccess) throw Error("CUDA error at a barrier");
  }

 private:
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;
  int rank_ = 0, size_ = 1;
};

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("CUDA ", what, ": ", cudaGetErrorString(e)));
}

// A communicator over `group` when it has exactly two ranks (a pair of neighbouring stages), else null.
ncclComm_t pair_comm(MPI_Comm group) {
  int size = 0;
  MPI_Comm_size(group, &size);
  return size == 2 ? init_comm(group, "communicator init (pipeline stages)") : nullptr;
}

class NcclStageLink : public DeviceStageLink {
 public:
  NcclStageLink(MPI_Comm world, const Topology& t, cudaStream_t compute) : compute_(compute) {
    const StagePairColors colors = stage_pair_colors(t);
    MPI_Comm even = MPI_COMM_NULL, odd = MPI_COMM_NULL;
    MPI_Comm_split(world, colors.even, t.stage(), &even);
    MPI_Comm_split(world, colors.odd, t.stage(), &odd);
    // Every rank initializes its even pair first: both ranks of a pair do, so neither waits on a
    // partner busy with another pair.
    ncclComm_t ce = nullptr, co = nullptr;
    try {
      ce = pair_comm(even);
      co = pair_comm(odd);
    } catch (...) {
      if (ce) ncclCommDestroy(ce);
      MPI_Comm_free(&even);
      MPI_Comm_free(&odd);
      throw;
    }
    MPI_Comm_free(&even);
    MPI_Comm_free(&odd);
    const bool even_stage = t.stage() % 2 == 0;
    prev_ = even_stage ? co : ce;
    next_ = even_stage ? ce : co;
    cuda_check(cudaStreamCreateWithFlags(&send_stream_, cudaStreamNonBlocking), "stream (pipeline sends)");
  }
  ~NcclStageLink() override {
    for (Pending& p : pending_) {
      cudaEventSynchronize(p.sent);
      release(p);
    }
    if (send_stream_) cudaStreamDestroy(send_stream_);
    if (prev_) ncclCommDestroy(prev_);
    if (next_) ncclCommDestroy(next_);
  }
  void send_next(const void* data, size_t bytes) override {
    if (!next_) throw Error("pipeline: the last stage has no next stage to send to");
    reap();
    Pending p;
    cuda_check(cudaMallocAsync(&p.buf, bytes, compute_), "allocation (pipeline send)");
    pending_.push_back(p);
    Pending& q = pending_.back();
    cuda_check(cudaEventCreateWithFlags(&q.ready, cudaEventDisableTiming), "event");
    cuda_check(cudaEventCreateWithFlags(&q.sent, cudaEventDisableTiming), "event");
    cuda_check(cudaMemcpyAsync(q.buf, data, bytes, cudaMemcpyDeviceToDevice, compute_), "copy (pipeline send)");
    cuda_check(cudaEventRecord(q.ready, compute_), "event record");
    cuda_check(cudaStreamWaitEvent(send_stream_, q.ready, 0), "stream wait");
    check(ncclSend(q.buf, bytes, ncclUint8, 1, next_, send_stream_), "send (pipeline)");
    cuda_check(cudaEventRecord(q.sent, send_stream_), "event record");
  }
  void recv_prev(void* data, size_t bytes) override {
    if (!prev_) throw Error("pipeline: the first stage has no previous stage to receive from");
    check(ncclRecv(data, bytes, ncclUint8, 0, prev_, compute_), "recv (pipeline)");
  }

 private:
  struct Pending {
    void* buf = nullptr;
    cudaEvent_t ready = nullptr, sent = nullptr;
  };
  // Sends the next stage has taken: their buffers go back to the pool (the host saw the send finish,
  // so freeing in the compute stream's order is safe).
  void reap() {
    while (!pending_.empty() && cudaEventQuery(pending_.front().sent) == cudaSuccess) {
      release(pending_.front());
      pending_.pop_front();
    }
  }
  void release(Pending& p) {
    if (p.buf) cudaFreeAsync(p.buf, compute_);
    if (p.ready) cudaEventDestroy(p.ready);
    if (p.sent) cudaEventDestroy(p.sent);
    p = Pending{};
  }
  cudaStream_t compute_ = nullptr, send_stream_ = nullptr;
  ncclComm_t prev_ = nullptr, next_ = nullptr;
  std::deque<Pending> pending_;
};

}  // namespace

std::unique_ptr<DeviceStageLink> make_nccl_stage_link(MPI_Comm world, const Topology& topo, void* stream) {
  return std::make_unique<NcclStageLink>(world, topo, static_cast<cudaStream_t>(stream));
}

std::unique_ptr<Comm> make_nccl_comm(MPI_Comm group, void* stream) {
  return std::make_unique<NcclComm>(group, static_cast<cudaStream_t>(stream));
}

}  // namespace llmserve
