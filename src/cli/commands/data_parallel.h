// vLLM's data_parallel_size: the MPI world as data_parallel_size replicas of the model, each
// tensor_parallel_size x pipeline_parallel_size consecutive ranks (replica r: world ranks r x tp x pp and
// on), each with its own engine on its first rank (its leader). `generate` gives each replica a share of
// its requests, as run-batch does its lines; `serve` runs a server per replica, rank 0's routing requests to the
// others' (or each on port + r with data_parallel_external_lb). logits refuses it.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

#include "config/config.h"

namespace llmserve {

// This rank's replica; owns its communicators (freed with it).
struct Replicas {
  int index = 0, count = 1;
  MPI_Comm replica = MPI_COMM_NULL;  // this rank's replica: what its ModelRunner runs on
  MPI_Comm leaders = MPI_COMM_NULL;  // the replicas' first ranks (world rank 0 first); null on the others
  bool leader() const { return leaders != MPI_COMM_NULL; }

  Replicas() = default;
  Replicas(const Replicas&) = delete;
  Replicas& operator=(const Replicas&) = delete;
  Replicas& operator=(Replicas&& o) noexcept;
  ~Replicas();
};

// Splits `world` into dp (collective). Throws Error (on every rank) when its size is not
// data_parallel_size x tensor_parallel_size x pipeline_parallel_size.
void split_replicas(MPI_Comm world, const Config& cfg, Replicas& dp);

// A batch command's output lines, to rank 0 (collective over the replicas' first ranks): `mine` are this
// replica's, for requests index, index + count, ... of `total`; rank 0 gets all of them in request order
// (the others an empty list). Every leader throws the same Error when they would pass MPI's int counts
// (2 GiB in all).
std::vector<std::string> gather_replica_lines(const Replicas& dp, const std::vector<std::string>& mine, size_t total,
                                              const char* command);

// Throws Error when cfg asks for more than one replica: `command` serves one.
void refuse_data_parallel(const Config& cfg, const char* command);

}  // namespace llmserve
