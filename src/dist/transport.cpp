#include "dist/transport.h"

#include <climits>
#include <cstdint>

#include "common/error.h"

namespace llmserve {

void send_bytes(MPI_Comm comm, int dst, int tag, const std::string& bytes) {
  LLMSERVE_CHECK(bytes.size() < static_cast<size_t>(INT_MAX), "message too large");
  MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, dst, tag, comm);
}

std::string recv_bytes(MPI_Comm comm, int src, int tag) {
  MPI_Status st;
  MPI_Probe(src, tag, comm, &st);
  int n = 0;
  MPI_Get_count(&st, MPI_BYTE, &n);
  std::string b(static_cast<size_t>(n), '\0');
  MPI_Recv(b.data(), n, MPI_BYTE, src, tag, comm, MPI_STATUS_IGNORE);
  return b;
}

bool probe_bytes(MPI_Comm comm, int src, int tag) {
  int flag = 0;
  MPI_Iprobe(src, tag, comm, &flag, MPI_STATUS_IGNORE);
  return flag != 0;
}

void bcast_bytes(MPI_Comm comm, std::string& bytes, int root) {
  uint64_t n = bytes.size();
  MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm);
  LLMSERVE_CHECK(n < static_cast<uint64_t>(INT_MAX), "message too large");
  bytes.resize(n);
  MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_BYTE, root, comm);
}

Outbox::~Outbox() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) drain();
}

void Outbox::send(MPI_Comm comm, int dst, int tag, std::string bytes) {
  LLMSERVE_CHECK(bytes.size() < static_cast<size_t>(INT_MAX), "message too large");
  pending_.push_back({std::move(bytes), MPI_REQUEST_NULL});
  Pending& p = pending_.back();
  MPI_Isend(p.bytes.data(), static_cast<int>(p.bytes.size()), MPI_BYTE, dst, tag, comm, &p.req);
  reap();
}

void Outbox::reap() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    int done = 0;
    MPI_Test(&it->req, &done, MPI_STATUS_IGNORE);
    it = done ? pending_.erase(it) : std::next(it);
  }
}

void Outbox::drain() {
  for (auto& p : pending_) MPI_Wait(&p.req, MPI_STATUS_IGNORE);
  pending_.clear();
}

}  // namespace llmserve
