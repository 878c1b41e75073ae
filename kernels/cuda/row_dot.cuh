// A warp's dot products of weight rows with M input rows: the inner loop of the decode GEMVs
// (kernels/cuda/gemv.cu, fused.cu). Float32 accumulation; the result is summed over the warp.
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/ops.cuh"

#include <string>
#include <type_traits>

namespace llmserve::cuda {

// A warp's share of a GEMV: rows n = first, first + stride, ... below N of R matrices (row n of matrix r
// at w[r] + n * K), each dotted with the M input rows of x, lanes striding over K with 16-byte weight
// loads, float32 sums. Weights of type TW: the activations' type, or FP8 E4M3 codes (kernels/fp8.h),
// whose row sums are multiplied by the row's scale (scale[r][n]; scale is null for 16- and 32-bit
// weights). Weights go out in groups of U loads per row (inputs of a group issued with it, everything
// predicated rather than left to a remainder loop), and the groups of all the warp's rows form one
// stream with two groups in flight (the next requested before the current is used): a row of a few KB
// costs one memory round trip, a long row keeps 2U loads per lane in flight, and a warp with several
// rows goes on to the next without a round trip in between, so a grid of as many warps as stay resident
// streams the matrix at the memory bandwidth without a partial last wave. The first two groups
// (weights, which no kernel writes; a row's scale goes with each group of the row) are requested before
// pdl_enter(), so they stream in while the kernel before this one finishes; after_wait() runs right
// after it (a block-wide prologue that prepares x, say: every thread of the block gets there, rows or
// not). epilogue(n, acc) runs on every lane after row n with acc summed over the warp (and scaled).
template <typename T, int M, int R, typename TW, typename After, typename Epilogue>
__device__ __forceinline__ void row_stream(const T* x, const TW* const (&w)[R], const float* const* scale, int64_t K,
                                           int64_t first, int64_t stride, int64_t N, int lane, After after_wait,
                                           Epilogue epilogue) {
  constexpr bool kScaled = std::is_same_v<TW, __nv_fp8_e4m3>;
  constexpr int V = 16 / sizeof(TW);                  // weights per 16-byte load
  constexpr int XL = V * sizeof(T) / 16;               // 16-byte loads of an input row per weight load
  // Loads a lane keeps in a group, per matrix. FP8 codes of several input rows take their inputs load by
  // load (below), so their groups need not shrink for the inputs' registers; one FP8 matrix of one row
  // takes 3 (a 1,536-wide row in one group, none predicated off; 4 spilled under three blocks an SM).
  constexpr int U0 = (M == 1 ? 8 : 4) / R > 0 ? (M == 1 ? 8 : 4) / R : 1;
  constexpr int U = kScaled && M == 1 && R == 1 ? 3
                    : kScaled && M > 1       ? U0
                    : XL == 1                ? U0
                                             : (U0 / XL > 0 ? U0 / XL : 1);  // (the inputs' registers)
  static_assert(XL >= 1, "inputs at least as wide as the weights");
  union XVec {
    uint4 u[XL];
    T e[V];
  };
  float acc[R][M];
  auto reset = [&] {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  };
  auto finish = [&](int r, float s) {
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = warp_sum(acc[r][m]) * s;
  };
  reset();
  // (32-bit division: N and the warps' count are below 2^31, which the launchers check: check_row_extent)
  const int64_t rows = first < N ? static_cast<int>(N - 1 - first) / static_cast<int>(stride) + 1 : 0;
  if (K % V != 0) {  // element by element
    pdl_enter();
    after_wait();
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = first + i * stride;
      for (int64_t k = lane; k < K; k += 32) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float wk = to_f(w[r][n * K + k]);
#pragma unroll
          for (int m = 0; m < M; ++m) acc[r][m] += wk * to_f(x[m * K + k]);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) finish(r, kScaled ? scale[r][n] : 1.f);
      epilogue(n, acc);
      reset();
    }
    return;
  }
  // Cursors in 32-bit integers and pointers: a row's offsets, the group counts and the rows of a warp
  // fit (K, N < 2^31), and 64-bit index arithmetic per load (products, compares, divisions) cost the
  // one-token FP8 GEMV about as many instructions as its conversions and multiply-adds (ncu by opcode,
  // fortieth session). A group's loads sit at constant offsets from one pointer a lane, and a lane's
  // bounds check is one compare with a constant per load.
  constexpr int S = 32 * V * U;  // elements of a row per group
  const int Ki = static_cast<int>(K), per_row = (Ki + S - 1) / S, total = static_cast<int>(rows) * per_row;
  const int lane_k = lane * V;
  // Next group to load: columns from lk of row ln (the same row of every matrix); next to use: columns
  // from uk of the use_row-th row of the warp.
  int64_t ln = first;
  int loaded = 0, lk = 0, uk = 0, use_row = 0;
  struct Group {
    uint4 w[R][U];
    float s[R];  // the row's scales (FP8 weights)
  };
  Group ga, gb;
  auto load = [&](Group& g) {
    if (loaded == total) return;
    const int left = Ki - lk - lane_k;  // this lane's columns left in the row from its first of the group
    const int64_t at = ln * K + lk + lane_k;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const TW* p = w[r] + at;
#pragma unroll
      for (int u = 0; u < U; ++u)
        g.w[r][u] = u * 32 * V < left ? *reinterpret_cast<const uint4*>(p + u * 32 * V) : make_uint4(0, 0, 0, 0);
      if constexpr (kScaled) g.s[r] = scale[r][ln];
    }
    ++loaded;
    lk += S;
    if (lk >= Ki) lk = 0, ln += stride;
  };
  auto use = [&](const Group& g) {
    const int left = Ki - uk - lane_k;
    const T* xp = x + uk + lane_k;
    // The inputs of every load of the group requested together (one round trip, from L1 or shared
    // memory), but for several rows of FP8 codes, whose inputs are twice their bytes: load by load there,
    // within the registers of three blocks an SM.
    constexpr bool kEach = kScaled && M > 1;
    XVec xv[kEach ? 1 : U][M];
    auto fetch = [&](int u, XVec(&xu)[M]) {
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int q = 0; q < XL; ++q)
          xu[m].u[q] = u * 32 * V < left
                           ? *reinterpret_cast<const uint4*>(xp + m * K + u * 32 * V + q * (16 / sizeof(T)))
                           : make_uint4(0, 0, 0, 0);
    };
    if constexpr (!kEach) {
#pragma unroll
      for (int u = 0; u < U; ++u) fetch(u, xv[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (u * 32 * V >= Ki - uk) break;  // (no lane has columns there: the row's last group)
      if constexpr (kEach) fetch(u, xv[0]);
      const XVec(&xu)[M] = xv[kEach ? 0 : u];
      float xf[M][V];  // (the inputs as floats, once for all R matrices)
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int q = 0; q < XL; ++q) unpack_weights<T>(xu[m].u[q], *reinterpret_cast<float(*)[16 / sizeof(T)]>(xf[m] + q * (16 / sizeof(T))));
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float wf[V];
        unpack_weights<TW>(g.w[r][u], wf);
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
          for (int j = 0; j < V; ++j) acc[r][m] += wf[j] * xf[m][j];
      }
    }
    uk += S;
    if (uk >= Ki) {
#pragma unroll
      for (int r = 0; r < R; ++r) finish(r, kScaled ? g.s[r] : 1.f);
      epilogue(first + use_row * stride, acc);
      reset();
      uk = 0;
      ++use_row;
    }
  };
  stream_two_in_flight(total, ga, gb, load, use, after_wait);
}

// The launchers' check of a LoraFused they are given.
inline void check_fused_lora(const LoraFused& L, const char* what) {
  if (!L.rows || L.R < 1 || L.R > kMaxFusedLoraRank || L.tc < 0)
    check(cudaErrorInvalidValue, (std::string(what) + ": LoRA ranks up to 32 only, with the tokens' adapters").c_str());
}

// A LoRA update in a decode GEMV's epilogue (LoraFused) for M tokens and J of the launch's matrices from
// j0: lane i < R holds t's column i of each (read after the wait: the shrink before this kernel writes t)
// and, per output row, its tokens' adapters' row i of B^T (weights: requested ahead of the row's use, as
// the row's own weights are); the update of a row is then one warp sum per token and matrix.
template <typename T, int M, int J>
struct LoraLanes {
  int slot[M];
  float tv[J][M];
  // The tokens' adapters (uploaded before the step: readable before the wait).
  __device__ __forceinline__ void init(const LoraFused& L) {
#pragma unroll
    for (int m = 0; m < M; ++m) slot[m] = L.rows[m];
  }
  __device__ __forceinline__ void load_t(const LoraFused& L, int j0, int lane) {
#pragma unroll
    for (int jj = 0; jj < J; ++jj)
#pragma unroll
      for (int m = 0; m < M; ++m)
        tv[jj][m] = L.bt[j0 + jj] && slot[m] >= 0 && lane < L.R ? L.t[m * L.tc + L.col[j0 + jj] + lane] : 0.f;
  }
  // Row n of matrix j (N rows): its B^T entries for this lane's i.
  __device__ __forceinline__ void load_b(const LoraFused& L, int j, int64_t N, int64_t n, int lane, float (&b)[M]) const {
    const T* bt = static_cast<const T*>(L.bt[j]);
#pragma unroll
    for (int m = 0; m < M; ++m)
      b[m] = bt && slot[m] >= 0 && lane < L.R ? to_f(bt[(static_cast<int64_t>(slot[m]) * L.R + lane) * N + n]) : 0.f;
  }
  // Token m's update of the row whose entries load_b put in b (matrix j0 + jj); on every lane.
  __device__ __forceinline__ float delta(int jj, int m, const float (&b)[M]) const { return warp_sum(tv[jj][m] * b[m]); }
};

// The RMSNorm weights w (K elements) copied into shared memory ws by cp.async for rmsnorm_rows, by the
// whole block before pdl_enter() (weights: no kernel writes them), so that they arrive while the kernel
// before this one finishes instead of costing rmsnorm_rows a memory round trip after the wait. Returns
// what rmsnorm_rows should read: ws, or w itself where the rows are not whole 16-byte units.
template <typename T>
__device__ __forceinline__ const T* stage_norm_weights(const T* w, int64_t K, T* ws) {
  constexpr int V = 16 / sizeof(T);
  if (K % V != 0 || reinterpret_cast<uintptr_t>(w) % 16 != 0) return w;
  for (int64_t c = threadIdx.x; c < K / V; c += blockDim.x) cp_async16(ws + c * V, w + c * V, 16);
  cp_async_commit();
  return ws;
}

// h[m, :] = rmsnorm(x[m, :]) * w for M rows of K (float32 x; h in shared memory), by the whole block
// (thread i sums the squares of elements i, i + blockDim.x, ... of every row; then block_sums, one
// reduction for all M rows). All M rows' loads are issued together, PER elements per row and thread at a
// time, so rows of up to PER x blockDim.x elements cost one memory round trip and one reduction for all
// their squares (row after row, each with its own reduction, cost M of each), not one per row or per
// element a thread takes; the second pass finds x in L1, and w in shared memory when stage_norm_weights
// put it there.
template <typename T, int M>
__device__ __forceinline__ void rmsnorm_rows(const float* x, const T* w, int64_t K, float eps, T* h) {
  constexpr int PER = 8;
  const int64_t step = static_cast<int64_t>(PER) * blockDim.x;
  float inv[M];
#pragma unroll
  for (int m = 0; m < M; ++m) inv[m] = 0.f;
  for (int64_t k0 = threadIdx.x; k0 < K; k0 += step) {
    float v[M][PER];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < PER; ++r) {
        const int64_t k = k0 + static_cast<int64_t>(r) * blockDim.x;
        v[m][r] = k < K ? x[m * K + k] : 0.f;
      }
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < PER; ++r) inv[m] += v[m][r] * v[m][r];
  }
  // This thread's staged weights have landed (a no-op without them); block_sums' barrier then makes
  // every thread's visible.
  cp_async_wait_all();
  block_sums<M>(inv);
#pragma unroll
  for (int m = 0; m < M; ++m) inv[m] = rsqrtf(inv[m] / static_cast<float>(K) + eps);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    for (int64_t k0 = threadIdx.x; k0 < K; k0 += step) {
      float v[PER], wv[PER];
#pragma unroll
      for (int r = 0; r < PER; ++r) {
        const int64_t k = k0 + static_cast<int64_t>(r) * blockDim.x;
        v[r] = k < K ? xr[k] : 0.f;
        wv[r] = k < K ? to_f(w[k]) : 0.f;
      }
#pragma unroll
      for (int r = 0; r < PER; ++r) {
        const int64_t k = k0 + static_cast<int64_t>(r) * blockDim.x;
        if (k < K) h[m * K + k] = from_f<T>(wv[r] * (v[r] * inv[m]));
      }
    }
  }
  __syncthreads();
}

}  // namespace llmserve::cuda
