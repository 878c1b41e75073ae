// Start-up agreement across ranks. Each rank does its local work (parse the config, open its shard)
// inside agree(); if any rank fails, every rank throws the same Error carrying the first failing
// rank's message, so the program exits cleanly everywhere instead of hanging in the next collective
// or aborting with MPI noise. `fn` must not itself communicate.
#pragma once
#include <mpi.h>

#include <functional>

#include "common/error.h"

namespace llmserve {

// The error every rank throws when agree() finds a failure: the program can exit cleanly on all ranks.
class AgreedError : public Error {
 public:
  using Error::Error;
};

void agree(MPI_Comm comm, const std::function<void()>& fn);

}  // namespace llmserve
