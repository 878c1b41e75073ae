// A warp's share of a linear layer over 5-16 tokens on tensor cores: the inner loop of the skinny GEMMs
// (kernels/cuda/skinny_gemm.cu). Like row_stream (row_dot.cuh) it streams weight rows once at the memory
// bandwidth, but 16 rows at a time through mma.m16n8k16 with the tokens as the product's n dimension
// (8 per n-tile), where row_stream's CUDA-core dot products would be bound by their multiply-adds.
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"

#include <type_traits>

namespace llmserve::cuda {

// Tiles i = first, first + stride, ... below `tiles` of 16 weight rows of R matrices (row n of matrix r at
// w[r] + n * K), each multiplied by the M (<= 8 NT) input rows of x [M, K] (16-bit, 16-byte aligned rows,
// K % 8 == 0) over the warp's columns k0 .. k0 + kn (kn a multiple of 32; columns past K read as zeros),
// float32 accumulation. Lane l (g = l / 4, t = l % 4) loads 16 bytes of rows row0(i) + g and row1(i) + g
// (rows(i, &row0, &row1); a row >= N reads zeros) at k = k0 + 32 s + 8 t for every 32-wide step s, and
// the 16 bytes of input row g (and g + 8, ...) at the same k: the two products of a
// step take elements 0-3 and 4-7 of them as the fragment's k pairs (2t, 2t+1) and (2t+8, 2t+9), a
// permutation of k that A and B share, so it leaves the sums as they are. Weights go out U steps at a
// time, two groups in flight as in row_stream, the first two before pdl_enter(); after_wait() runs
// right after it. epilogue(i, acc) runs on every lane after tile i: acc[r][j] holds C's fragment of
// n-tile j: elements 0, 1 for row row0(i) + g, tokens 8j + 2t and 8j + 2t + 1; elements 2, 3 for row
// row1(i) + g, the same tokens. Weights of type TW: T, or FP8 E4M3 codes (kernels/fp8.h; 8 bytes a lane
// and row per step, widened to T exactly before the products) whose rows' sums are multiplied by the
// row's scale (scale[r][n]; null for 16-bit weights) before the epilogue.
template <typename T, int NT, int R, int U, typename TW, typename Rows, typename After, typename Epilogue>
__device__ __forceinline__ void tile_stream(const T* x, int64_t M, const TW* const (&w)[R], const float* const* scale,
                                            int64_t K, int64_t k0, int64_t kn, int64_t N, int64_t first, int64_t stride,
                                            int64_t tiles, int lane, Rows rows, After after_wait, Epilogue epilogue) {
  constexpr bool kScaled = std::is_same_v<TW, __nv_fp8_e4m3>;
  using Raw = std::conditional_t<kScaled, uint2, uint4>;  // 8 weights
  const int g = lane >> 2, t = lane & 3;
  float acc[R][NT][4];
  auto reset = [&] {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[r][j][e] = 0.f;
  };
  reset();
  const int64_t mine = first < tiles ? (tiles - 1 - first) / stride + 1 : 0;
  const int64_t per_tile = (kn + 32 * U - 1) / (32 * U), total = mine * per_tile;
  int64_t load_tile = 0, load_group = 0, use_tile = 0, use_group = 0;
  struct Group {
    Raw w[R][U][2];
    float s[R][2];  // the rows' scales (FP8 weights)
  };
  Group ga, gb;
  auto load = [&](Group& gr) {
    if (load_tile >= mine) return;
    int64_t r0, r1;
    rows(first + load_tile * stride, &r0, &r1);
    const int64_t n[2] = {r0 + g, r1 + g};
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = (load_group * U + u) * 32 + 8 * t, k = k0 + c;
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          gr.w[r][u][h] = c < kn && k < K && n[h] < N ? *reinterpret_cast<const Raw*>(w[r] + n[h] * K + k) : Raw{};
    }
    if constexpr (kScaled) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) gr.s[r][h] = n[h] < N ? scale[r][n[h]] : 0.f;
    }
    if (++load_group == per_tile) load_group = 0, ++load_tile;
  };
  auto use = [&](const Group& gr) {
    uint4 xv[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = (use_group * U + u) * 32 + 8 * t, k = k0 + c;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int64_t m = 8 * j + g;
        xv[u][j] = c < kn && k < K && m < M ? *reinterpret_cast<const uint4*>(x + m * K + k) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if ((use_group * U + u) * 32 >= kn) break;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        uint4 wv[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if constexpr (kScaled)
            wv[h] = widen_fp8<T>(gr.w[r][u][h]);
          else
            wv[h] = gr.w[r][u][h];
        }
        const unsigned a0[4] = {wv[0].x, wv[1].x, wv[0].y, wv[1].y};
        const unsigned a1[4] = {wv[0].z, wv[1].z, wv[0].w, wv[1].w};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          mma16816<T>(acc[r][j], a0, xv[u][j].x, xv[u][j].y);
          mma16816<T>(acc[r][j], a1, xv[u][j].z, xv[u][j].w);
        }
      }
    }
    if (++use_group == per_tile) {
      if constexpr (kScaled) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][j][e] *= gr.s[r][e >> 1];
      }
      epilogue(first + use_tile * stride, acc);
      reset();
      use_group = 0;
      ++use_tile;
    }
  };
  stream_two_in_flight(total, ga, gb, load, use, after_wait);
}

}  // namespace llmserve::cuda
