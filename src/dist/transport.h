// Byte messages between ranks for the engine: step plans (rank 0 -> its tensor group -> each next
// stage), activations (stage -> next stage) and sampled tokens (last stage -> rank 0).
#pragma once
#include <mpi.h>

#include <functional>
#include <list>
#include <string>

namespace llmserve {

enum Tag : int { kTagPlan = 101, kTagHidden = 102, kTagResult = 103 };

void send_bytes(MPI_Comm comm, int dst, int tag, const std::string& bytes);
// With `idle`, a wait that may last while the server has nothing to do (a worker's next step plan):
// the rank polls as wait_until does instead of blocking in MPI, whose blocking calls poll without end
// and so keep a core busy on every rank for as long as the server is idle.
std::string recv_bytes(MPI_Comm comm, int src, int tag, bool idle = false);
// True when a message with `tag` from `src` is waiting.
bool probe_bytes(MPI_Comm comm, int src, int tag);
// Root's `bytes` to every rank of `comm` (size first, then the bytes). Every rank must pass the same
// `idle`; with it, the ranks other than root wait for the size as recv_bytes' idle wait does.
void bcast_bytes(MPI_Comm comm, std::string& bytes, int root, bool idle = false);
// Returns once ready() holds: tests it back to back (yielding the core between tests) for 20 ms, which
// covers the gap between a busy server's steps, then sleeps between tests, 50 us at first, doubling up
// to 1 ms, so that a long wait costs next to no CPU and at most about 1 ms of latency.
void wait_until(const std::function<bool()>& ready);

// Non-blocking sends whose buffers live until completed, so rank 0 can hand a micro-batch to the
// next stage and go on scheduling.
class Outbox {
 public:
  ~Outbox();
  void send(MPI_Comm comm, int dst, int tag, std::string bytes);
  void reap();  // frees completed sends
  void drain();  // waits for all

 private:
  struct Pending {
    std::string bytes;
    MPI_Request req;
  };
  std::list<Pending> pending_;
};

}  // namespace llmserve
