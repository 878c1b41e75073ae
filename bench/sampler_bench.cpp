// The sampler on one step's rows, vocabulary-parallel over the MPI world as in the server:
//   - the host sampler (on GPUs the path of filtered rows of a split vocabulary without NCCL), and
//   - sample_step() on a backend (cpu or cuda) with the tensor group's communicator: rows with
//     top-k / top-p / min-p are all-gathered into whole rows and drawn on the backend when the
//     vocabulary is split, drawn in place otherwise;
// milliseconds per step (median of 5) on rank 0, and whether both give the same tokens (and, with
// LOGPROBS >= 0, the largest difference of their log-probabilities and whether their top lists agree).
//   mpirun -np TP build/bench/sampler_bench [rows] [vocab] [cpu|cuda] [LOGPROBS]
// Rows: temperature 0.8, top-k 50, top-p 0.9, repetition penalty 1.1 over a 768-token history
// (gpu_e2e.sh's sampled run), normal(0, 2) logits.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/error.h"
#include "dist/mpi_comm.h"
#include "dist/topology.h"
#include "engine/sampler.h"
#if LLMSERVE_WITH_CUDA
#include "dist/nccl/nccl_comm.h"
#endif

using namespace llmserve;

namespace {

double median_ms(const std::function<void()>& f) {
  std::vector<double> ms;
  for (int r = 0; r < 5; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    MpiComm comm{MPI_COMM_WORLD, false};
    const size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
    const int64_t V = argc > 2 ? std::atoll(argv[2]) : 151936;
    const std::string kind = argc > 3 ? argv[3] : "cpu";
    const int logprobs = argc > 4 ? std::atoi(argv[4]) : -1;
    if (n == 0 || V < comm.size()) throw Error("sampler_bench: rows must be positive and vocab at least the ranks");
    const Range vocab = shard_range(V, comm.size(), comm.rank());
    const int64_t stride = (V + comm.size() - 1) / comm.size();
    std::mt19937 g(1);
    std::normal_distribution<float> d(0.f, 2.f);
    std::vector<float> full(n * V);
    for (auto& x : full) x = d(g);
    std::vector<float> rows(n * stride, 0.f);
    for (size_t i = 0; i < n; ++i)
      std::copy(full.begin() + static_cast<long>(i * V + vocab.begin), full.begin() + static_cast<long>(i * V + vocab.end),
                rows.begin() + static_cast<long>(i * stride));
    SamplingParams p;
    p.temperature = 0.8;
    p.top_p = 0.9;
    p.top_k = 50;
    p.repetition_penalty = 1.1;
    p.logprobs = logprobs;
    std::vector<int32_t> history(768);
    for (auto& t : history) t = static_cast<int32_t>(g() % V);
    StepPlan plan;
    for (size_t i = 0; i < n; ++i) {
      SeqStep s;
      s.seq_id = i + 1;
      s.num_computed = static_cast<int32_t>(history.size()) - 1;
      s.tokens = {history.back()};
      s.sample = true;
      s.start = std::make_shared<SeqStart>();
      s.start->prompt_len = 512;
      s.start->seed = static_cast<int64_t>(i);
      s.start->params = p;
      s.start->prefix.assign(history.begin(), history.end() - 1);
      plan.seqs.push_back(s);
    }
    // The host sampler.
    Sampler host(comm, V, vocab, stride);
    host.observe(plan);
    std::vector<SampledToken> want;
    const double host_ms = median_ms([&] { want = host.sample(plan, rows.data()); });
    // sample_step() on the backend, with the tensor communicator the server gives it.
    MPI_Comm node;
    int local = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, comm.rank(), MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    std::unique_ptr<Backend> be = make_backend(kind, local, DType::F32);
    std::unique_ptr<Comm> device_comm;
#if LLMSERVE_WITH_CUDA
    if (be->name() == "cuda" && comm.size() > 1) device_comm = make_nccl_comm(MPI_COMM_WORLD);
#endif
    Comm* tensor_comm = device_comm ? device_comm.get() : static_cast<Comm*>(&comm);
    Sampler on_backend(comm, V, vocab, stride, tensor_comm);
    on_backend.observe(plan);
    std::vector<SampledToken> got;
    // The logits go up once; each timed step starts from a device copy of them (draws edit in place).
    const Tensor pristine = be->upload(rows.data(), {static_cast<int64_t>(n), stride}, DType::F32);
    Tensor t = be->empty({static_cast<int64_t>(n), stride}, DType::F32);
    const double backend_ms = median_ms([&] {
      be->copy(pristine, t);
      got = on_backend.sample_step(plan, *be, t);
    });
    size_t same = 0, same_top = 0;
    double lp_diff = 0;
    for (size_t i = 0; i < n; ++i) {
      same += want[i].token == got[i].token;
      same_top += want[i].top_ids == got[i].top_ids;
      lp_diff = std::max<double>(lp_diff, std::fabs(want[i].logprob - got[i].logprob));
      for (size_t k = 0; k < want[i].top_logprobs.size() && k < got[i].top_logprobs.size(); ++k)
        lp_diff = std::max<double>(lp_diff, std::fabs(want[i].top_logprobs[k] - got[i].top_logprobs[k]));
    }
    if (comm.rank() == 0) {
      std::printf("sampler: %zu rows x %lld vocabulary over %d rank(s)\n", n, static_cast<long long>(V), comm.size());
      std::printf("  host sampler                 %8.1f ms per step (median of 5)\n", host_ms);
      std::printf("  sample_step on %-4s backend  %8.1f ms per step (from logits on the backend); same tokens on %zu/%zu rows\n",
                  be->name().c_str(), backend_ms, same, n);
      if (logprobs >= 0)
        std::printf("  logprobs (%d alternatives): top lists equal on %zu/%zu rows, largest difference %.2e\n", logprobs,
                    same_top, n, lp_diff);
    }
    if (same != n || (logprobs >= 0 && (same_top != n || lp_diff > 1e-4))) rc = 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sampler_bench: %s\n", e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
