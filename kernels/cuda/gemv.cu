// Linear layers for a handful of tokens (decode): out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for m < M
// (M <= 4). A warp per output feature (or several, one after the other, when there are more features
// than resident warps) streams its weight rows once with 16-byte loads and applies them to every
// token, accumulating in float32; the weights dominate the bytes, so the kernel runs at the
// memory bandwidth where a GEMM library's tiles would leave most SMs idle. The weights may also be FP8
// E4M3 codes with a scale per row (`quantization: fp8`; kernels/fp8.h): half the bytes. Counterpart of
// kernels/cpu/linear.cpp for small T.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/row_dot.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// Blocks an SM the registers must allow. FP8 rows are half the bytes of 16-bit ones, so a warp has half
// the bytes in flight: the one-token FP8 form took 163 registers (one block an SM; its weight groups
// since halved: 93, two blocks) and streamed at 37% of the copy bandwidth; bounded to three blocks it
// takes 72 (78 before row_stream's 32-bit cursors), without spills (H200, kernel_bench --fp8). The
// 16-bit forms stay at two (96-126); a bound of one block let them grow past that.
template <typename TW, int M>
constexpr int kGemvMinBlocks = std::is_same_v<TW, __nv_fp8_e4m3> && M <= 3 ? 3 : 2;

// LORA: the adapters' update (lora: matrix 0) added to each output (gemv_lora_residual).
template <typename T, typename TO, typename TW, int M, bool LORA = false>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kGemvMinBlocks<TW, M>)
    gemv_k(const T* __restrict__ x, const TW* __restrict__ w, const float* __restrict__ w_scale,
           const float* __restrict__ bias, int64_t K, int64_t N, TO* __restrict__ out, bool accumulate, LoraFused lora) {
  const int lane = threadIdx.x & 31;
  const TW* const mats[1] = {w};
  const float* const scales[1] = {w_scale};
  int64_t first, stride;
  gemv_rows(kGemvInterleave<TW>, kWarpsPerBlock, &first, &stride);
  // What a row's epilogue adds (its bias; with accumulate, the output it adds to, which the kernel before
  // this one wrote) is read by lane 0 ahead for 1-2 rows (the decode steps' GEMVs): the first row's right
  // after the wait, the next row's at each epilogue, so that the reads overlap the row's weights instead
  // of following its sums. (3-4 rows read them in the epilogue: the FP8 form of 3 spilled with them.)
  constexpr bool kAhead = M <= 2;
  float pb = 0.f, po[M];
  int64_t next = first;
  auto fetch = [&] {
    if (!kAhead || lane != 0 || next >= N) return;
    pb = bias ? bias[next] : 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m) po[m] = accumulate ? to_f(out[m * N + next]) : 0.f;
  };
  LoraLanes<T, M, 1> lo;
  float lb[M];  // (LORA: the row's entries of B^T, the next row's requested at each epilogue)
  if constexpr (LORA) {
    lo.init(lora);
    if (first < N) lo.load_b(lora, 0, N, first, lane, lb);
  }
  auto after_wait = [&] {
    fetch();
    if constexpr (LORA) lo.load_t(lora, 0, lane);
  };
  row_stream<T, M, 1>(x, mats, scales, K, first, stride, N, lane, after_wait, [&](int64_t n, const float(&sums)[1][M]) {
    float acc[1][M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[0][m] = sums[0][m] + (LORA ? lo.delta(0, m, lb) : 0.f);
    if constexpr (LORA) {
      if (n + stride < N) lo.load_b(lora, 0, N, n + stride, lane, lb);
    }
    if (lane != 0) return;
    if constexpr (!kAhead) {
      pb = bias ? bias[n] : 0.f;
#pragma unroll
      for (int m = 0; m < M; ++m) po[m] = accumulate ? to_f(out[m * N + n]) : 0.f;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float y = acc[0][m] + pb;
      out[m * N + n] = from_f<TO>(accumulate ? po[m] + y : y);
    }
    next = n + stride;
    fetch();
  });
}

}  // namespace

template <typename T, typename TO, typename TW>
void gemv(const T* x, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K, int64_t N, TO* out,
          cudaStream_t s, bool accumulate) {
  if (M == 0 || N == 0) return;
  check_row_extent(K, N, "gemv: 2^31 rows or row length or more");
  // A warp per output feature up to the warps the device holds at once; beyond that each warp streams
  // several (row_stream).
  const int threads = kWarpsPerBlock * 32;
  auto go = [&](auto kernel) {
    const unsigned blocks = gemv_blocks(kGemvInterleave<TW>, N, kWarpsPerBlock, resident_blocks(kernel, threads, 0));
    launch("gemv", kernel, blocks, threads, 0, s, x, w, w_scale, bias, K, N, out, accumulate, LoraFused{});
  };
  switch (M) {
    case 1: go(gemv_k<T, TO, TW, 1>); break;
    case 2: go(gemv_k<T, TO, TW, 2>); break;
    case 3: go(gemv_k<T, TO, TW, 3>); break;
    case 4: go(gemv_k<T, TO, TW, 4>); break;
    default: check(cudaErrorInvalidValue, "gemv: more than 4 rows");
  }
}

template <typename T>
void gemv_lora_residual(const T* x, const T* w, int64_t M, int64_t K, int64_t N, float* out, const LoraFused& lora,
                        cudaStream_t s) {
  if (M == 0 || N == 0) return;
  check_row_extent(K, N, "gemv_lora_residual: 2^31 rows or row length or more");
  check_fused_lora(lora, "gemv_lora_residual");
  const int threads = kWarpsPerBlock * 32;
  auto go = [&](auto kernel) {
    const unsigned blocks = gemv_blocks(kGemvInterleave<T>, N, kWarpsPerBlock, resident_blocks(kernel, threads, 0));
    launch("gemv_lora_residual", kernel, blocks, threads, 0, s, x, w, nullptr, nullptr, K, N, out, true, lora);
  };
  switch (M) {
    case 1: go(gemv_k<T, float, T, 1, true>); break;
    case 2: go(gemv_k<T, float, T, 2, true>); break;
    default: check(cudaErrorInvalidValue, "gemv_lora_residual: more than 2 rows");
  }
}

#define INSTANTIATE(T, TO, TW)                                                                                  \
  template void gemv<T, TO, TW>(const T*, const TW*, const float*, const float*, int64_t, int64_t, int64_t, TO*, \
                                cudaStream_t, bool);
#define SAME(T) INSTANTIATE(T, T, T)
#define TO_F32(T) INSTANTIATE(T, float, T) INSTANTIATE(T, float, __nv_fp8_e4m3) INSTANTIATE(T, T, __nv_fp8_e4m3)
#define LORA(T) template void gemv_lora_residual<T>(const T*, const T*, int64_t, int64_t, int64_t, float*, const LoraFused&, cudaStream_t);
LLMSERVE_FOR_EACH_TYPE(SAME)
LLMSERVE_FOR_EACH_TYPE(LORA)
LLMSERVE_FOR_EACH_HALF_TYPE(TO_F32)

}  // namespace llmserve::cuda
