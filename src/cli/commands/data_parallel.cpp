#include "cli/commands/data_parallel.h"

#include <cstdint>
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

std::vector<std::string> gather_replica_lines(const Replicas& dp, const std::vector<std::string>& mine, size_t total,
                                              const char* command) {
  std::string text;
  for (const auto& l : mine) text += l + "\n";
  int me = 0;
  MPI_Comm_rank(dp.leaders, &me);
  const int64_t len = static_cast<int64_t>(text.size());
  std::vector<int64_t> lens(me == 0 ? dp.count : 0);
  MPI_Gather(&len, 1, MPI_INT64_T, lens.data(), 1, MPI_INT64_T, 0, dp.leaders);
  int64_t sum = 0;
  for (int64_t l : lens) sum += l;
  MPI_Bcast(&sum, 1, MPI_INT64_T, 0, dp.leaders);
  if (sum > INT32_MAX) throw Error(cat(command, ": the replicas' outputs pass 2 GiB together; split the input"));
  std::vector<int> counts(lens.begin(), lens.end()), at(lens.size());
  for (size_t r = 1; r < at.size(); ++r) at[r] = at[r - 1] + counts[r - 1];
  std::string all(static_cast<size_t>(me == 0 ? sum : 0), '\0');
  MPI_Gatherv(text.data(), static_cast<int>(len), MPI_CHAR, all.data(), counts.data(), at.data(), MPI_CHAR, 0, dp.leaders);
  std::vector<std::string> out(me == 0 ? total : 0);
  for (size_t r = 0; r < counts.size(); ++r) {
    size_t pos = static_cast<size_t>(at[r]), i = r;
    const size_t end = pos + static_cast<size_t>(counts[r]);
    for (; pos < end; i += static_cast<size_t>(dp.count)) {
      const size_t nl = all.find('\n', pos);
      out.at(i) = all.substr(pos, nl - pos);
      pos = nl + 1;
    }
  }
  return out;
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
                    ": it runs one replica (tensor x pipeline parallel); llmserve generate, run-batch and serve run replicas"));
}

}  // namespace llmserve
