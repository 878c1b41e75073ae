// A warp's dot products of R weight rows with M input rows: the inner loop of the decode GEMVs
// (kernels/cuda/gemv.cu, fused.cu). Float32 accumulation; the result is summed over the warp.
#pragma once
#include "kernels/cuda/common.cuh"

namespace llmserve::cuda {

// acc[r][m] = x[m, :] . w[r] over K, lanes striding with 16-byte loads, then summed over the warp: every
// lane gets the totals. Loads go out in groups of U per row (weights and inputs of a group issued before
// any of them is used, predicated rather than left to a remainder loop), so a row of a few KB costs one
// or two memory round trips and a long row keeps U loads per lane in flight. The first group's weights
// are requested before pdl_enter() (weights are written by no kernel), so they stream in while the
// kernel before this one finishes; the inputs are read after it.
template <typename T, int M, int R>
__device__ __forceinline__ void row_dot_enter(const T* __restrict__ x, const T* const (&w)[R], int64_t K, int lane,
                                              float (&acc)[R][M]) {
  constexpr int V = 16 / sizeof(T);
  constexpr int U = (M == 1 ? 8 : 4) / R > 0 ? (M == 1 ? 8 : 4) / R : 1;
  union Vec {
    uint4 u;
    T e[V];
  };
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  if (K % V == 0) {
    Vec wv[R][U];
    auto load_weights = [&](int64_t k0) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + static_cast<int64_t>(u) * 32 * V;
#pragma unroll
        for (int r = 0; r < R; ++r)
          wv[r][u].u = k < K ? *reinterpret_cast<const uint4*>(w[r] + k) : make_uint4(0, 0, 0, 0);
      }
    };
    int64_t k0 = static_cast<int64_t>(lane) * V;
    load_weights(k0);
    pdl_enter();
    while (k0 < K) {
      Vec xv[U][M];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t k = k0 + static_cast<int64_t>(u) * 32 * V;
#pragma unroll
        for (int m = 0; m < M; ++m)
          xv[u][m].u = k < K ? *reinterpret_cast<const uint4*>(x + m * K + k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (k0 + static_cast<int64_t>(u) * 32 * V >= K) break;
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int m = 0; m < M; ++m)
#pragma unroll
            for (int j = 0; j < V; ++j) acc[r][m] += to_f(wv[r][u].e[j]) * to_f(xv[u][m].e[j]);
      }
      k0 += 32 * V * U;
      if (k0 < K) load_weights(k0);
    }
  } else {
    pdl_enter();
    for (int64_t k = lane; k < K; k += 32) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float wk = to_f(w[r][k]);
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] += wk * to_f(x[m * K + k]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = warp_sum(acc[r][m]);
}

}  // namespace llmserve::cuda
