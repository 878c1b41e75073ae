#include "dist/mpi_comm.h"

#include <climits>
#include <vector>

#include "common/error.h"

namespace llmserve {
namespace {

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error(cat("MPI ", what, " failed: ", std::string(msg, len)));
  }
}

// MPI counts are int: move large buffers in pieces.
constexpr size_t kMaxChunk = static_cast<size_t>(INT_MAX) / 2;

}  // namespace

MpiComm::MpiComm(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized) MPI_Comm_free(&comm_);
}

void MpiComm::all_reduce_sum(float* data, size_t count) {
  for (size_t off = 0; off < count; off += kMaxChunk) {
    const int n = static_cast<int>(std::min(kMaxChunk, count - off));
    check(MPI_Allreduce(MPI_IN_PLACE, data + off, n, MPI_FLOAT, MPI_SUM, comm_), "all-reduce");
  }
}

void MpiComm::all_reduce_max(float* data, size_t count) {
  LLMSERVE_CHECK(count <= kMaxChunk, "all_reduce_max of ", count, " floats is too large");
  check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_FLOAT, MPI_MAX, comm_), "all-reduce max");
}

void MpiComm::all_reduce_maxloc(float* values, int32_t* indices, size_t count) {
  struct Pair {
    float v;
    int i;
  };
  std::vector<Pair> buf(count);
  for (size_t k = 0; k < count; ++k) buf[k] = {values[k], indices[k]};
  check(MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(count), MPI_FLOAT_INT, MPI_MAXLOC, comm_),
        "all-reduce maxloc");
  for (size_t k = 0; k < count; ++k) values[k] = buf[k].v, indices[k] = buf[k].i;
}

void MpiComm::all_gather(const float* send, size_t count, float* recv) {
  LLMSERVE_CHECK(count <= kMaxChunk, "all_gather of ", count, " floats is too large for one MPI call");
  check(MPI_Allgather(send, static_cast<int>(count), MPI_FLOAT, recv, static_cast<int>(count), MPI_FLOAT, comm_),
        "all-gather");
}

void MpiComm::broadcast(void* data, size_t bytes, int root) {
  auto* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes || (bytes == 0 && off == 0); off += kMaxChunk) {
    const int n = static_cast<int>(std::min(kMaxChunk, bytes - off));
    check(MPI_Bcast(p + off, n, MPI_BYTE, root, comm_), "broadcast");
    if (bytes == 0) break;
  }
}

void MpiComm::send(const void* data, size_t bytes, int peer) {
  auto* p = static_cast<const char*>(data);
  for (size_t off = 0; off < bytes; off += kMaxChunk) {
    const int n = static_cast<int>(std::min(kMaxChunk, bytes - off));
    check(MPI_Send(p + off, n, MPI_BYTE, peer, 0, comm_), "send");
  }
}

void MpiComm::recv(void* data, size_t bytes, int peer) {
  auto* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes; off += kMaxChunk) {
    const int n = static_cast<int>(std::min(kMaxChunk, bytes - off));
    check(MPI_Recv(p + off, n, MPI_BYTE, peer, 0, comm_, MPI_STATUS_IGNORE), "recv");
  }
}

void MpiComm::barrier() { check(MPI_Barrier(comm_), "barrier"); }

std::unique_ptr<MpiComm> mpi_split(MPI_Comm parent, int color, int key) {
  MPI_Comm c;
  check(MPI_Comm_split(parent, color, key, &c), "comm split");
  return std::make_unique<MpiComm>(c, true);
}

}  // namespace llmserve
