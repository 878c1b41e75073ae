// The host sampler (engine/sampler.cpp) on one step's rows: the path of rows the backend cannot draw
// (rows asking for logprobs; with the vocabulary split over a tensor group, rows with top-k / top-p /
// min-p). Vocabulary-parallel over the MPI world as in the server; milliseconds per step on rank 0.
//   mpirun -np TP build/bench/sampler_bench [rows] [vocab]
// Rows: temperature 0.8, top-k 50, top-p 0.9, repetition penalty 1.1 over a 768-token history
// (gpu_e2e.sh's sampled run), normal(0, 2) logits.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "dist/mpi_comm.h"
#include "dist/topology.h"
#include "engine/sampler.h"

using namespace llmserve;

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    MpiComm comm{MPI_COMM_WORLD, false};
    const size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
    const int64_t V = argc > 2 ? std::atoll(argv[2]) : 151936;
    const Range vocab = shard_range(V, comm.size(), comm.rank());
    const int64_t stride = (V + comm.size() - 1) / comm.size();
    std::mt19937 g(1);
    std::normal_distribution<float> d(0.f, 2.f);
    std::vector<float> rows(n * stride);
    for (auto& x : rows) x = d(g);
    SamplingParams p;
    p.temperature = 0.8;
    p.top_p = 0.9;
    p.top_k = 50;
    p.repetition_penalty = 1.1;
    std::vector<int32_t> history(768);
    for (auto& t : history) t = static_cast<int32_t>(g() % V);
    StepPlan plan;
    for (size_t i = 0; i < n; ++i) {
      SeqStep s;
      s.seq_id = i + 1;
      s.num_computed = static_cast<int32_t>(history.size()) - 1;
      s.tokens = {history.back()};
      s.sample = true;
      s.has_params = true;
      s.prompt_len = 512;
      s.seed = static_cast<int64_t>(i);
      s.params = p;
      s.prefix.assign(history.begin(), history.end() - 1);
      plan.seqs.push_back(s);
    }
    Sampler sampler(comm, V, vocab, stride);
    sampler.observe(plan);
    std::vector<double> ms;
    int32_t first = -1;
    for (int r = 0; r < 5; ++r) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = std::chrono::steady_clock::now();
      const auto out = sampler.sample(plan, rows.data());
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      first = out.front().token;
    }
    std::sort(ms.begin(), ms.end());
    if (comm.rank() == 0)
      std::printf("host sampler: %zu rows x %lld vocabulary over %d rank(s): %.1f ms per step (median of 5; first token %d)\n",
                  n, static_cast<long long>(V), comm.size(), ms[ms.size() / 2], first);
  }
  MPI_Finalize();
  return 0;
}
