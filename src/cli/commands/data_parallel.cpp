#include "cli/commands/data_parallel.h"

#include <utility>

#include "common/error.h"

namespace llmserve {

Replicas& Replicas::operator=(Replicas&& o) noexcept {
  std::swap(index, o.index);
  std::swap(count, o.count);
  std::swap(replica, o.replica);
  std::swap(leaders, o.leaders);
  return *this;
}

Replicas::~Replicas() {
  if (replica != MPI_COMM_NULL) MPI_Comm_free(&replica);
  if (leaders != MPI_COMM_NULL) MPI_Comm_free(&leaders);
}

void split_replicas(MPI_Comm world, const Config& cfg, Replicas& out) {
  int rank = 0, size = 1;
  MPI_Comm_rank(world, &rank);
  MPI_Comm_size(world, &size);
  const int64_t dp = cfg.data_parallel_size, per = static_cast<int64_t>(cfg.tensor_parallel_size) * cfg.pipeline_parallel_size;
  if (dp < 1 || per < 1) throw Error("config: data_parallel_size, tensor_parallel_size and pipeline_parallel_size must be >= 1");
  if (dp * per != size)
    throw Error(cat("config: data_parallel_size (", dp, ") x tensor_parallel_size (", cfg.tensor_parallel_size,
                    ") x pipeline_parallel_size (", cfg.pipeline_parallel_size, ") = ", dp * per, " but the MPI world has ", size,
                    " ranks; start llmserve with mpirun -np ", dp * per, " or change the layout"));
  Replicas r;
  r.count = static_cast<int>(dp);
  r.index = static_cast<int>(rank / per);
  MPI_Comm_split(world, r.index, rank, &r.replica);
  const bool first = rank % per == 0;
  MPI_Comm_split(world, first ? 0 : MPI_UNDEFINED, rank, &r.leaders);
  out = std::move(r);
}

void refuse_data_parallel(const Config& cfg, const char* command) {
  if (cfg.data_parallel_size > 1)
    throw Error(cat("config: data_parallel_size ", cfg.data_parallel_size, " is not supported by llmserve ", command,
                    ": it runs one replica (tensor x pipeline parallel); llmserve generate and serve run replicas"));
}

}  // namespace llmserve
