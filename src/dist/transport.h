// Byte messages between ranks for the engine: step plans (rank 0 -> its tensor group -> each next
// stage), activations (stage -> next stage) and sampled tokens (last stage -> rank 0).
#pragma once
#include <mpi.h>

#include <list>
#include <string>

namespace llmserve {

enum Tag : int { kTagPlan = 101, kTagHidden = 102, kTagResult = 103 };

void send_bytes(MPI_Comm comm, int dst, int tag, const std::string& bytes);
std::string recv_bytes(MPI_Comm comm, int src, int tag);
// True when a message with `tag` from `src` is waiting.
bool probe_bytes(MPI_Comm comm, int src, int tag);
// Root's `bytes` to every rank of `comm` (size first, then the bytes).
void bcast_bytes(MPI_Comm comm, std::string& bytes, int root);

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
