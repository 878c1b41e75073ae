// A warp's dot products of one weight row with M input rows: the inner loop of the decode GEMVs
// (kernels/cuda/gemv.cu, fused.cu). Float32 accumulation; the result is summed over the warp.
#pragma once
#include "kernels/cuda/common.cuh"

namespace llmserve::cuda {

// acc[m] = x[m, :] . wr over K, lanes striding with 16-byte loads, then summed over the warp: every
// lane gets the totals. Loads go out in groups of U (weights and inputs of a group issued before any
// of them is used, predicated rather than left to a remainder loop), so a row of a few KB costs one
// or two memory round trips and a long row keeps U loads per lane in flight.
template <typename T, int M>
__device__ __forceinline__ void row_dot(const T* __restrict__ x, const T* __restrict__ wr, int64_t K, int lane,
                                        float (&acc)[M]) {
  constexpr int V = 16 / sizeof(T);
  constexpr int U = M == 1 ? 8 : 4;
  union Vec {
    uint4 u;
    T e[V];
  };
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  if (K % V == 0) {
    for (int64_t k0 = static_cast<int64_t>(lane) * V; k0 < K; k0 += 32 * V * U) {
      Vec wv[U], xv[U][M];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + static_cast<int64_t>(u) * 32 * V;
        const bool in = k < K;
        wv[u].u = in ? *reinterpret_cast<const uint4*>(wr + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int m = 0; m < M; ++m) xv[u][m].u = in ? *reinterpret_cast<const uint4*>(x + m * K + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (k0 + static_cast<int64_t>(u) * 32 * V >= K) break;
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int j = 0; j < V; ++j) acc[m] += to_f(wv[u].e[j]) * to_f(xv[u][m].e[j]);
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
