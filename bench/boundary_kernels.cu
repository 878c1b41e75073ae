// A kernel boundary's cost on its own: a chain of small kernels, each block reading what another block of
// the previous kernel wrote and writing for the next, recorded in one CUDA graph, three ways:
//  - stream order (no programmatic dependent launch);
//  - programmatic dependent launch as the decode kernels use it (griddepcontrol.wait, then
//    launch_dependents: the next grid is resident and waiting while this one runs);
//  - programmatic dependent launch without griddepcontrol.wait: each block waits for a counter that the
//    previous kernel's blocks raise (a release after their stores, an acquire load polled by one thread).
// Used by kernel_bench --boundary.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "bench/boundary_kernels.h"

namespace {

template <int kMode>
__global__ void hop_k(const unsigned* in, unsigned* out, unsigned* counters, int idx, unsigned blocks) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (kMode == 1) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  }
  if (kMode == 2) {
    if (threadIdx.x == 0 && idx > 0) {
      unsigned v = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(counters + idx - 1) : "memory");
      } while (v < blocks);
    }
    __syncthreads();
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  }
#endif
  // Another block's value of the previous kernel: a dependent round trip after the wait.
  const unsigned n = gridDim.x * blockDim.x;
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = in[(i + blockDim.x) % n] + 1;
  if (kMode == 2) {
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(counters + idx, 1u);
    }
  }
}

}  // namespace

double boundary_chain_us(int mode, int kernels, int blocks, int threads, bool* ok) {
  const size_t n = static_cast<size_t>(blocks) * threads;
  unsigned *buf = nullptr, *counters = nullptr;
  cudaMalloc(&buf, 2 * n * sizeof(unsigned));
  cudaMalloc(&counters, kernels * sizeof(unsigned));
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  cudaGraph_t g;
  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  cudaMemsetAsync(buf, 0, n * sizeof(unsigned), s);
  if (mode == 2) cudaMemsetAsync(counters, 0, kernels * sizeof(unsigned), s);
  for (int k = 0; k < kernels; ++k) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t c{};
    c.gridDim = dim3(blocks);
    c.blockDim = dim3(threads);
    c.stream = s;
    c.attrs = attr;
    c.numAttrs = mode == 0 || k == 0 ? 0 : 1;
    const unsigned* in = buf + (k % 2) * n;
    unsigned* out = buf + ((k + 1) % 2) * n;
    auto kern = mode == 0 ? hop_k<0> : mode == 1 ? hop_k<1> : hop_k<2>;
    cudaLaunchKernelEx(&c, kern, in, out, counters, k, static_cast<unsigned>(blocks));
  }
  cudaStreamEndCapture(s, &g);
  cudaGraphExec_t e = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&e, g, 0);
  std::vector<float> t;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int r = 0; r < 13 && inst == cudaSuccess; ++r) {
    cudaEventRecord(a, s);
    cudaGraphLaunch(e, s);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    if (r >= 3) t.push_back(ms);
  }
  // Every element went through every kernel: kernels increments from zero.
  std::vector<unsigned> host(n);
  cudaMemcpy(host.data(), buf + (kernels % 2) * n, n * sizeof(unsigned), cudaMemcpyDeviceToHost);
  *ok = inst == cudaSuccess && cudaGetLastError() == cudaSuccess &&
        std::all_of(host.begin(), host.end(), [&](unsigned v) { return v == static_cast<unsigned>(kernels); });
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (e) cudaGraphExecDestroy(e);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
  cudaFree(buf);
  cudaFree(counters);
  if (t.empty()) return 0;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2] * 1e3 / kernels;
}
