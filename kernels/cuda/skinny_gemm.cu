// Linear layers for 5-16 tokens (decode steps of a few sequences): out[m, n] = x[m, :] . w[n, :] (+ bias[n]),
// the MLP's gate/up with SiLU-and-multiply, and the attention block's q/k/v with RoPE and the KV-cache
// write, on tensor cores (tile_stream.cuh). A warp streams 16
// weight rows at a time once at the memory bandwidth; cuBLASLt's kernels at these shapes cost about 5.5 us
// however small the matrix (H200, kernel_bench --splitk) and leave gate/up's SiLU to a float32 round trip.
// Counterparts: kernels/cpu/linear.cpp, activation.cpp and rope.cpp.
#include <algorithm>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/row_dot.cuh"
#include "kernels/cuda/tile_stream.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// Weight loads a lane keeps in flight per group: fewer for more matrices and more n-tiles (registers).
// FP8 codes are 8 bytes a load where 16-bit weights are 16, so the one-n-tile FP8 forms (1-8 tokens) take
// half again as many steps (6 and 3) to keep more bytes in flight.
template <int NT, int R, typename TW>
constexpr int kGroupSteps = std::is_same_v<TW, __nv_fp8_e4m3> && NT == 1 ? (R == 1 ? 6 : 3) : (R == 1 ? 4 : 2);

// A launch's input rows: M rows of the activation type at h, K apart; or, where x is set, M float32 rows
// that each block normalizes first (RMSNorm with weights norm_w and eps): the decode layer's input norms in
// the launch of the projections that read them.
template <typename T>
struct SkinnyIn {
  const T* h = nullptr;
  const float* x = nullptr;
  const T* norm_w = nullptr;
  float eps = 0.f;
};

struct PlainRows {
  __device__ void operator()(int64_t i, int64_t* r0, int64_t* r1) const { *r0 = 16 * i, *r1 = 16 * i + 8; }
};

// Calls f(row, token, e) for the 8 NT fragment elements a lane holds after a tile (tile_stream's layout).
template <int NT, typename F>
__device__ __forceinline__ void for_fragment(int64_t tile, int lane, F f) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) f(16 * tile + g + (e < 2 ? 0 : 8), 8 * j + 2 * t + (e & 1), j, e);
}

// rmsnorm_rows (row_dot.cuh) for the runtime row count M of a launch that normalizes, 1-4 (skinny_norm_fits).
template <typename T>
__device__ __forceinline__ void rmsnorm_few_rows(const float* x, const T* w, int64_t M, int64_t K, float eps, T* h) {
  switch (M) {
    case 1: return rmsnorm_rows<T, 1>(x, w, K, eps, h);
    case 2: return rmsnorm_rows<T, 2>(x, w, K, eps, h);
    case 3: return rmsnorm_rows<T, 3>(x, w, K, eps, h);
    default: return rmsnorm_rows<T, 4>(x, w, K, eps, h);
  }
}

// A block of kWarpsPerBlock warps takes a tile of 16 rows at a time (`tiles` of them, rows(tile, &row0,
// &row1) as tile_stream takes it), each warp a contiguous share of K (so that a matrix of few rows still
// has a warp per SM and more streaming it), and sums the warps' fragments in shared memory: fin(tile,
// sum) then runs on one warp, the tile's owner, with the tile's whole products in tile_stream's layout.
// The input rows: in.h, or with Norm, in.x normalized first into the block's dynamic shared memory
// (norm_smem_bytes of it; 1-4 rows, as the fused GEMVs do), after the kernel's wait on the previous grid
// and while the first weights stream in; the norm's weights are copied in before that wait. Norm is a
// template argument so that the launches without it are the kernels they were before the norm came in (one
// kernel for both, the norm skipped at run time, cost the 8-sequence decode layer 4.4 us of its 54 on an
// H200: the thirty-seventh session's bisect, the whole layer against its launches alone).
template <typename T, int NT, int R, typename TW, bool Norm, typename Fin, typename Rows = PlainRows>
__device__ __forceinline__ void tile_block(const SkinnyIn<T>& in, int64_t M, const TW* const (&w)[R],
                                           const float* const* scale, int64_t K, int64_t N, Fin fin, int64_t tiles = -1,
                                           Rows rows = {}) {
  if (tiles < 0) tiles = (N + 15) / 16;
  __shared__ float part[kWarpsPerBlock][R * NT * 4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int64_t steps = (K + 31) / 32, kn = (steps + kWarpsPerBlock - 1) / kWarpsPerBlock * 32;
  T* normed = nullptr;  // (with Norm: the normalized rows, then the norm's staged weights)
  const T* nw = nullptr;
  if constexpr (Norm) {
    extern __shared__ __align__(16) unsigned char norm_smem[];
    normed = reinterpret_cast<T*>(norm_smem);
    nw = stage_norm_weights(in.norm_w, K, normed + M * K);
  }
  tile_stream<T, NT, R, kGroupSteps<NT, R, TW>>(
      Norm ? normed : in.h, M, w, scale, K, warp * kn, kn, N, blockIdx.x, gridDim.x, tiles, lane, rows,
      [&] {
        if constexpr (Norm) rmsnorm_few_rows<T>(in.x, nw, M, K, in.eps, normed);
      },
      [&](int64_t tile, const float(&acc)[R][NT][4]) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) part[warp][(r * NT + j) * 4 + e][lane] = acc[r][j][e];
        __syncthreads();
        if (warp == tile % kWarpsPerBlock) {
          float sum[R][NT][4];
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                float v = 0.f;
#pragma unroll
                for (int q = 0; q < kWarpsPerBlock; ++q) v += part[q][(r * NT + j) * 4 + e][lane];
                sum[r][j][e] = v;
              }
          fin(tile, sum);
        }
        __syncthreads();
      });
}

// (The 16-token form takes 162-165 registers, one block an SM; bounded to two blocks an SM, i.e. 128
// registers, it ran slower: H200 o_proj 5.00 -> 5.46 us, q/k/v 3.85 -> 4.26 at 16 tokens.)
template <typename T, typename TO, typename TW, int NT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    skinny_gemm_k(const T* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ w_scale,
                  const float* __restrict__ bias, int64_t M, int64_t K, int64_t N, TO* __restrict__ out, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const TW* const mats[1] = {w};
  const float* const scales[1] = {w_scale};
  tile_block<T, NT, 1, TW, false>(SkinnyIn<T>{x}, M, mats, scales, K, N, [&](int64_t tile, const float(&acc)[1][NT][4]) {
    for_fragment<NT>(tile, lane, [&](int64_t n, int64_t m, int j, int e) {
      if (n >= N || m >= M) return;
      const float y = acc[0][j][e] + (bias ? bias[n] : 0.f);
      out[m * N + n] = from_f<TO>(accumulate ? to_f(out[m * N + n]) + y : y);
    });
  });
}

// With Norm (1-4 rows, one n-tile) bounded to two blocks an SM, 128 registers, as skinny_qkv_rope_k below.
template <typename T, typename TW, int NT, bool Norm>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, Norm ? 2 : 1)
    skinny_gate_up_k(SkinnyIn<T> in, const TW* __restrict__ wg, const TW* __restrict__ wu,
                     const float* __restrict__ sg, const float* __restrict__ su, int64_t M, int64_t K, int64_t N,
                     T* __restrict__ act) {
  const int lane = threadIdx.x & 31;
  const TW* const mats[2] = {wg, wu};
  const float* const scales[2] = {sg, su};
  tile_block<T, NT, 2, TW, Norm>(in, M, mats, scales, K, N, [&](int64_t tile, const float(&acc)[2][NT][4]) {
    for_fragment<NT>(tile, lane, [&](int64_t n, int64_t m, int j, int e) {
      if (n >= N || m >= M) return;
      const float gv = acc[0][j][e];
      act[m * N + n] = from_f<T>(gv / (1.f + __expf(-gv)) * acc[1][j][e]);
    });
  });
}

// q, k, v = h . W^T (+ bias) over the stacked projections W [(Hq + 2 Hk) D, K] with RoPE and the KV-cache
// write, as rope_kv_write_rows after a GEMM (kernels/cuda/fused.cu): a tile is 8 rotation pairs of one
// head, rows i0 .. i0 + 7 and i0 + D/2 .. i0 + D/2 + 7, so a lane holds both halves of its pairs and
// rotates them itself; q (float32) out, k and v into the caches at the tokens' slots (none below 0).
// With Norm (1-4 rows: one n-tile) bounded to two blocks an SM: 128 registers without spills where the
// 16-bit form took 164, so that the decode attention's blocks that launch during it (103 registers x 256
// threads each) fit beside it (H200, the 1.5B decode layer of 4 sequences with the norm forced inside:
// the q/k/v -> attention pair +2.02 -> +1.38 us over the two alone, the whole layer 64.71 -> 63.10).
template <typename T, typename TW, int NT, bool Norm>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, Norm ? 2 : 1)
    skinny_qkv_rope_k(SkinnyIn<T> in, const TW* __restrict__ w, const float* __restrict__ w_scale,
                      const float* __restrict__ bias, int64_t M, int64_t K, RopeCacheWrite a) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t half = a.D / 2, per_head = half / 8, heads = a.Hq + 2 * a.Hk;
  const TW* const mats[1] = {w};
  const float* const scales[1] = {w_scale};
  auto rows = [&](int64_t tile, int64_t* r0, int64_t* r1) {
    *r0 = tile / per_head * a.D + tile % per_head * 8;
    *r1 = *r0 + half;
  };
  tile_block<T, NT, 1, TW, Norm>(
      in, M, mats, scales, K, heads * a.D,
      [&](int64_t tile, const float(&acc)[1][NT][4]) {
        const int64_t head = tile / per_head, i = tile % per_head * 8 + g, r1 = head * a.D + i, r2 = r1 + half;
        const float b1 = bias ? bias[r1] : 0.f, b2 = bias ? bias[r2] : 0.f;
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int64_t m = 8 * j + 2 * t + e;
            if (m >= M) continue;
            const float x1 = acc[0][j][e] + b1, x2 = acc[0][j][e + 2] + b2;
            float sn = 0.f, cs = 1.f;
            if (head < a.Hq + a.Hk) sincosf(static_cast<float>(a.positions[m]) * a.inv_freq[i], &sn, &cs);
            if (head < a.Hq) {
              float* o = a.q + (m * a.Hq + head) * a.D;
              o[i] = x1 * cs - x2 * sn;
              o[i + half] = x2 * cs + x1 * sn;
              continue;
            }
            const int64_t slot = a.slots[m];
            if (slot < 0) continue;
            const bool is_k = head < a.Hq + a.Hk;
            const int64_t kh = head - a.Hq - (is_k ? 0 : a.Hk);
            void* cache = is_k ? a.k_cache : a.v_cache;
            const int64_t at = (slot * a.Hk + kh) * a.D + i;
            cache_put<T>(cache, at, is_k ? x1 * cs - x2 * sn : x1, a.fp8_cache);
            cache_put<T>(cache, at + half, is_k ? x2 * cs + x1 * sn : x2, a.fp8_cache);
          }
      },
      heads * per_head, rows);
}

// Launches the instance for the n-tiles of 8 tokens that M needs (make(std::integral_constant<int, NT>)
// gives it) as `what` with kernel arguments args: a block a tile of 16 rows, at most one wave of
// resident blocks (each takes tiles in turn). The kernels must take the shape (skinny_gemm_supports).
// With smem bytes of dynamic shared memory (the normalized rows of a launch that normalizes: with the
// kernel's static shared memory up to kMaxNormSmem, which needs no opt-in).
template <typename Make, typename... Args>
void launch_skinny(const char* what, int64_t M, int64_t K, std::initializer_list<const void*> operands, int64_t tiles,
                   size_t smem, cudaStream_t s, Make make, Args... args) {
  if (!skinny_gemm_supports(M, K, operands)) check(cudaErrorInvalidValue, (std::string(what) + ": unsupported shape").c_str());
  const int threads = kWarpsPerBlock * 32;
  auto go = [&](auto nt) {
    const auto kernel = make(nt);
    check_norm_smem(kernel, smem, what);
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(tiles, resident_blocks(kernel, threads, smem)));
    launch(what, kernel, blocks, threads, smem, s, args...);
  };
  if (M <= 8) go(std::integral_constant<int, 1>{});
  else go(std::integral_constant<int, 2>{});  // (M <= kSkinnyMaxTokens = 16: skinny_gemm_fits)
}

}  // namespace

bool skinny_gemm_supports(int64_t M, int64_t K, std::initializer_list<const void*> operands) {
  if (M < 1 || M > kSkinnyMaxTokens || K % 8 != 0) return false;
  for (const void* p : operands)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

bool skinny_gemm_fits(int64_t M, int64_t K, std::initializer_list<const void*> operands) {
  return M >= kSkinnyMinTokens && skinny_gemm_supports(M, K, operands);
}

// The most static shared memory of the normalizing skinny kernels over every type they are built for (the
// instances of one 8-token n-tile, NT = 1, which every launch of 1-4 rows uses): the gate/up kernel's, 9,472 bytes on sm_90a (8 KB of the warps' partial
// sums, 1,280 of the norm's reductions).
static size_t skinny_norm_static() {
  return std::max({static_smem(skinny_gate_up_k<__half, __half, 1, true>),
                   static_smem(skinny_gate_up_k<__nv_bfloat16, __nv_bfloat16, 1, true>),
                   static_smem(skinny_gate_up_k<__half, __nv_fp8_e4m3, 1, true>),
                   static_smem(skinny_gate_up_k<__nv_bfloat16, __nv_fp8_e4m3, 1, true>),
                   static_smem(skinny_qkv_rope_k<__half, __half, 1, true>),
                   static_smem(skinny_qkv_rope_k<__nv_bfloat16, __nv_bfloat16, 1, true>),
                   static_smem(skinny_qkv_rope_k<__half, __nv_fp8_e4m3, 1, true>),
                   static_smem(skinny_qkv_rope_k<__nv_bfloat16, __nv_fp8_e4m3, 1, true>)});
}

bool skinny_norm_fits(int64_t M, int64_t K, size_t elem) {
  if (M < 1 || M > 4 || K % 8 != 0) return false;
  static const size_t fixed = skinny_norm_static();
  return norm_smem_bytes(M, K, elem) + fixed <= kMaxNormSmem;
}

template <typename T, typename TO, typename TW>
void skinny_gemm(const T* x, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K, int64_t N,
                 TO* out, cudaStream_t s, bool accumulate) {
  if (M == 0 || N == 0) return;
  launch_skinny("skinny_gemm", M, K, {x, w}, (N + 15) / 16, 0, s,
                [](auto nt) { return skinny_gemm_k<T, TO, TW, decltype(nt)::value>; }, x, w, w_scale, bias, M, K, N,
                out, accumulate);
}

namespace {

// (With Norm the rows are 1-4, skinny_norm_fits, so one n-tile: no two-tile instance of those is built.)
template <bool Norm, typename T, typename TW>
void gate_up_launch(const SkinnyIn<T>& in, const TW* w_gate, const TW* w_up, const float* s_gate, const float* s_up,
                    int64_t M, int64_t K, int64_t N, T* act, cudaStream_t s) {
  if (M == 0 || N == 0) return;
  if (Norm && !skinny_norm_fits(M, K, sizeof(T))) check(cudaErrorInvalidValue, "skinny_norm_gate_up_silu: unsupported shape");
  launch_skinny(Norm ? "skinny_norm_gate_up_silu" : "skinny_gate_up_silu", M, K,
                {Norm ? static_cast<const void*>(in.x) : in.h, w_gate, w_up}, (N + 15) / 16,
                Norm ? norm_smem_bytes(M, K, sizeof(T)) : 0, s,
                [](auto nt) { return skinny_gate_up_k<T, TW, Norm ? 1 : decltype(nt)::value, Norm>; }, in, w_gate, w_up, s_gate, s_up, M,
                K, N, act);
}

template <bool Norm, typename T, typename TW>
void qkv_rope_launch(const SkinnyIn<T>& in, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K,
                     const RopeCacheWrite& a, cudaStream_t s) {
  if (M == 0) return;
  if (a.D % 16 != 0) check(cudaErrorInvalidValue, "skinny_qkv_rope: the head size must be a multiple of 16");
  if (Norm && !skinny_norm_fits(M, K, sizeof(T))) check(cudaErrorInvalidValue, "skinny_norm_qkv_rope: unsupported shape");
  launch_skinny(Norm ? "skinny_norm_qkv_rope" : "skinny_qkv_rope", M, K, {Norm ? static_cast<const void*>(in.x) : in.h, w},
                (a.Hq + 2 * a.Hk) * a.D / 16, Norm ? norm_smem_bytes(M, K, sizeof(T)) : 0, s,
                [](auto nt) { return skinny_qkv_rope_k<T, TW, Norm ? 1 : decltype(nt)::value, Norm>; }, in, w, w_scale, bias, M, K, a);
}

}  // namespace

template <typename T, typename TW>
void skinny_gate_up_silu(const T* x, const TW* w_gate, const TW* w_up, const float* s_gate, const float* s_up, int64_t M,
                         int64_t K, int64_t N, T* act, cudaStream_t s) {
  gate_up_launch<false, T, TW>(SkinnyIn<T>{x}, w_gate, w_up, s_gate, s_up, M, K, N, act, s);
}

template <typename T, typename TW>
void skinny_norm_gate_up_silu(const float* x, const T* norm_w, float eps, const TW* w_gate, const TW* w_up,
                              const float* s_gate, const float* s_up, int64_t M, int64_t K, int64_t N, T* act,
                              cudaStream_t s) {
  gate_up_launch<true, T, TW>(SkinnyIn<T>{nullptr, x, norm_w, eps}, w_gate, w_up, s_gate, s_up, M, K, N, act, s);
}

template <typename T, typename TW>
void skinny_qkv_rope(const T* h, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K,
                     const RopeCacheWrite& a, cudaStream_t s) {
  qkv_rope_launch<false, T, TW>(SkinnyIn<T>{h}, w, w_scale, bias, M, K, a, s);
}

template <typename T, typename TW>
void skinny_norm_qkv_rope(const float* x, const T* norm_w, float eps, const TW* w, const float* w_scale,
                          const float* bias, int64_t M, int64_t K, const RopeCacheWrite& a, cudaStream_t s) {
  qkv_rope_launch<true, T, TW>(SkinnyIn<T>{nullptr, x, norm_w, eps}, w, w_scale, bias, M, K, a, s);
}

#define INSTANTIATE_W(T, TW)                                                                                         \
  template void skinny_gemm<T, T, TW>(const T*, const TW*, const float*, const float*, int64_t, int64_t, int64_t,   \
                                      T*, cudaStream_t, bool);                                                       \
  template void skinny_gemm<T, float, TW>(const T*, const TW*, const float*, const float*, int64_t, int64_t,        \
                                          int64_t, float*, cudaStream_t, bool);                                      \
  template void skinny_gate_up_silu<T, TW>(const T*, const TW*, const TW*, const float*, const float*, int64_t,      \
                                           int64_t, int64_t, T*, cudaStream_t);                                      \
  template void skinny_qkv_rope<T, TW>(const T*, const TW*, const float*, const float*, int64_t, int64_t,           \
                                       const RopeCacheWrite&, cudaStream_t);                                         \
  template void skinny_norm_gate_up_silu<T, TW>(const float*, const T*, float, const TW*, const TW*, const float*,   \
                                                const float*, int64_t, int64_t, int64_t, T*, cudaStream_t);          \
  template void skinny_norm_qkv_rope<T, TW>(const float*, const T*, float, const TW*, const float*, const float*,    \
                                            int64_t, int64_t, const RopeCacheWrite&, cudaStream_t);
#define INSTANTIATE(T) INSTANTIATE_W(T, T) INSTANTIATE_W(T, __nv_fp8_e4m3)
LLMSERVE_FOR_EACH_HALF_TYPE(INSTANTIATE)

}  // namespace llmserve::cuda
