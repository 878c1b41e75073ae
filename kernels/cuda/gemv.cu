// Linear layers for a handful of tokens (decode): out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for m < M
// (M <= 4). One warp per output feature streams its weight row once with 16-byte loads and applies it
// to every token, accumulating in float32; the weights dominate the bytes, so the kernel runs at the
// memory bandwidth where a GEMM library's tiles would leave most SMs idle. Counterpart of
// kernels/cpu/linear.cpp for small T.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/row_dot.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T, typename TO, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_k(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias, int64_t K, int64_t N,
           TO* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  float acc[1][M];
  const T* const rows[1] = {w + n * K};
  row_dot_enter<T, M, 1>(x, rows, K, lane, acc);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if (lane == 0) out[m * N + n] = from_f<TO>(acc[0][m] + (bias ? bias[n] : 0.f));
  }
}

}  // namespace

template <typename T, typename TO>
void gemv(const T* x, const T* w, const float* bias, int64_t M, int64_t K, int64_t N, TO* out, cudaStream_t s) {
  if (M == 0 || N == 0) return;
  const unsigned blocks = blocks_for(N, kWarpsPerBlock);
  const int threads = kWarpsPerBlock * 32;
  switch (M) {
    case 1: launch("gemv", gemv_k<T, TO, 1>, blocks, threads, 0, s, x, w, bias, K, N, out); break;
    case 2: launch("gemv", gemv_k<T, TO, 2>, blocks, threads, 0, s, x, w, bias, K, N, out); break;
    case 3: launch("gemv", gemv_k<T, TO, 3>, blocks, threads, 0, s, x, w, bias, K, N, out); break;
    case 4: launch("gemv", gemv_k<T, TO, 4>, blocks, threads, 0, s, x, w, bias, K, N, out); break;
    default: check(cudaErrorInvalidValue, "gemv: more than 4 rows");
  }
}

#define INSTANTIATE(T, TO) \
  template void gemv<T, TO>(const T*, const T*, const float*, int64_t, int64_t, int64_t, TO*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T)
#define TO_F32(T) INSTANTIATE(T, float)
LLMSERVE_FOR_EACH_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(TO_F32)

}  // namespace llmserve::cuda
