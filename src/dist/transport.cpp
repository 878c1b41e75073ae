#include "dist/transport.h"

#include <chrono>
#include <climits>
#include <cstdint>
#include <thread>

#include "common/error.h"

namespace llmserve {

void send_bytes(MPI_Comm comm, int dst, int tag, const std::string& bytes) {
  LLMSERVE_CHECK(bytes.size() < static_cast<size_t>(INT_MAX), "message too large");
  MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, dst, tag, comm);
}

void wait_until(const std::function<bool()>& ready) {
  using clock = std::chrono::steady_clock;
  const auto spin_until = clock::now() + std::chrono::milliseconds(20);
  while (clock::now() < spin_until) {
    if (ready()) return;
    std::this_thread::yield();
  }
  for (auto nap = std::chrono::microseconds(50);; nap = std::min(2 * nap, std::chrono::microseconds(1000))) {
    if (ready()) return;
    std::this_thread::sleep_for(nap);
  }
}

std::string recv_bytes(MPI_Comm comm, int src, int tag, bool idle) {
  MPI_Status st;
  if (idle) {
    wait_until([&] {
      int flag = 0;
      MPI_Iprobe(src, tag, comm, &flag, &st);
      return flag != 0;
    });
  } else {
    MPI_Probe(src, tag, comm, &st);
  }
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

void bcast_bytes(MPI_Comm comm, std::string& bytes, int root, bool idle) {
  uint64_t n = bytes.size();
  if (idle) {  // (every rank of comm the same way: a non-blocking collective matches only non-blocking ones)
    MPI_Request req;
    MPI_Ibcast(&n, 1, MPI_UINT64_T, root, comm, &req);
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    if (rank == root) {
      MPI_Wait(&req, MPI_STATUS_IGNORE);
    } else {
      wait_until([&] {
        int done = 0;
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        return done != 0;
      });
    }
  } else {
    MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm);
  }
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
