// All-reduce over the tensor group as the model runs it (dist/nccl: float32 sums in place on the
// legacy default stream), one GPU per rank: time per call and NCCL's bus bandwidth
// (algorithm bandwidth x 2 (n - 1) / n) for the sizes a Qwen2.5-1.5B step reduces (one hidden row per
// token: 1 token for batch-1 decode, 256 for a 256-sequence decode step, 2,048 for a prefill) and a
// large buffer for the link's bandwidth.
//   mpirun -np N build/bench/nccl_bench [hidden]
#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dist/nccl/nccl_comm.h"

namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "nccl_bench: CUDA %s: %s\n", what, cudaGetErrorString(e));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1, local = 0, gpus = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local);
  ck(cudaGetDeviceCount(&gpus), "device count");
  if (gpus < 1) {
    if (rank == 0) std::fprintf(stderr, "nccl_bench: no GPU\n");
    MPI_Finalize();
    return 1;
  }
  ck(cudaSetDevice(local % gpus), "set device");
  const long long hidden = argc > 1 ? std::atoll(argv[1]) : 1536;
  if (hidden < 1 || hidden > 65536) {
    if (rank == 0) std::fprintf(stderr, "nccl_bench: hidden size must be 1..65536, got '%s'\n", argv[1]);
    MPI_Finalize();
    return 1;
  }
  int exit_code = 0;
  try {
    auto comm = llmserve::make_nccl_comm(MPI_COMM_WORLD);
    const long long counts[] = {hidden, 256 * hidden, 2048 * hidden, 64ll << 20};
    const long long most = std::max(counts[2], counts[3]);  // the buffer holds every size
    float* buf = nullptr;
    ck(cudaMalloc(&buf, sizeof(float) * most), "allocation");
    ck(cudaMemset(buf, 0, sizeof(float) * most), "memset");
    cudaEvent_t a, b;
    ck(cudaEventCreate(&a), "event");
    ck(cudaEventCreate(&b), "event");
    if (rank == 0) {
      cudaDeviceProp p{};
      ck(cudaGetDeviceProperties(&p, local % gpus), "properties");
      std::printf("all-reduce (float32 sum, in place), %d ranks on %s\n", size, p.name);
      std::printf("%-34s %12s %12s %12s\n", "size", "us per call", "algbw GB/s", "busbw GB/s");
    }
    for (long long n : counts) {
      const int iters = n >= (1 << 20) ? 20 : 200;
      for (int i = 0; i < 5; ++i) comm->all_reduce_sum(buf, static_cast<size_t>(n));
      ck(cudaDeviceSynchronize(), "warm-up");
      MPI_Barrier(MPI_COMM_WORLD);
      ck(cudaEventRecord(a, nullptr), "record");
      for (int i = 0; i < iters; ++i) comm->all_reduce_sum(buf, static_cast<size_t>(n));
      ck(cudaEventRecord(b, nullptr), "record");
      ck(cudaEventSynchronize(b), "sync");
      float ms = 0.f;
      ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
      const double us = 1e3 * ms / iters, bytes = 4.0 * static_cast<double>(n);
      const double alg = bytes / (us * 1e-6) / 1e9, bus = alg * 2.0 * (size - 1) / size;
      char name[64];
      if (n % hidden == 0 && n / hidden <= 2048)
        std::snprintf(name, sizeof name, "%lld x %lld floats (%.1f KB)", n / hidden, hidden, bytes / 1024);
      else
        std::snprintf(name, sizeof name, "%lld floats (%.0f MB)", n, bytes / (1 << 20));
      if (rank == 0) std::printf("%-34s %12.1f %12.1f %12.1f\n", name, us, alg, bus);
    }
    ck(cudaFree(buf), "free");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nccl_bench: %s\n", e.what());
    exit_code = 1;
  }
  MPI_Finalize();
  return exit_code;
}
