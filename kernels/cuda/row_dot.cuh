// A warp's dot products of one weight row with M input rows: the inner loop of the decode GEMVs
// (kernels/cuda/gemv.cu, fused.cu). Float32 accumulation; the result is summed over the warp.
#pragma once
#include "kernels/cuda/common.cuh"

namespace llmserve::cuda {

// acc[m] = x[m, :] . wr over K, lanes striding with 16-byte loads (several in flight per lane), then
// summed over the warp: every lane gets the totals.
template <typename T, int M>
__device__ __forceinline__ void row_dot(const T* __restrict__ x, const T* __restrict__ wr, int64_t K, int lane,
                                        float (&acc)[M]) {
  constexpr int V = 16 / sizeof(T);
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  if (K % V == 0) {
#pragma unroll 4
    for (int64_t k = static_cast<int64_t>(lane) * V; k < K; k += 32 * V) {
      union {
        uint4 u;
        T e[V];
      } wv, xv;
      wv.u = *reinterpret_cast<const uint4*>(wr + k);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        xv.u = *reinterpret_cast<const uint4*>(x + m * K + k);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[m] += to_f(wv.e[j]) * to_f(xv.e[j]);
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wk = to_f(wr[k]);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] += wk * to_f(x[m * K + k]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = warp_sum(acc[m]);
}

}  // namespace llmserve::cuda
