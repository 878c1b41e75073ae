// Paged attention, correctness-first: one warp per (token, query head) walks the token's keys with
// an online softmax; each lane holds D/32 dimensions. Handles prefill, chunked prefill over cached
// blocks and decode alike (token at position p attends to positions 0..p of its sequence).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kMaxDimPerLane = 8;  // head_dim up to 256

template <typename TI, typename T>
__global__ void paged_attention_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                                  const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk,
                                  int64_t D, int64_t bs, float scale, T* out) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= n * Hq) return;
  const int64_t t = warp / Hq, h = warp % Hq, kvh = h / (Hq / Hk);
  const int32_t* table = tables + static_cast<int64_t>(token_seq[t]) * max_blocks;
  const int64_t row = Hk * D;
  const int per = static_cast<int>((D + 31) / 32);
  float qv[kMaxDimPerLane], acc[kMaxDimPerLane];
#pragma unroll
  for (int r = 0; r < kMaxDimPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    qv[r] = (r < per && d < D) ? to_f(q[(t * Hq + h) * D + d]) * scale : 0.f;
    acc[r] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int64_t len = static_cast<int64_t>(positions[t]) + 1;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
    const T* kr = kc + slot * row + kvh * D;
    float dot = 0.f;
#pragma unroll
    for (int r = 0; r < kMaxDimPerLane; ++r) {
      const int64_t d = lane + 32 * r;
      if (r < per && d < D) dot += qv[r] * to_f(kr[d]);
    }
    const float sc = warp_sum(dot);
    const float mn = fmaxf(m, sc);
    const float corr = __expf(m - mn), p = __expf(sc - mn);
    l = l * corr + p;
    const T* vr = vc + slot * row + kvh * D;
#pragma unroll
    for (int r = 0; r < kMaxDimPerLane; ++r) {
      const int64_t d = lane + 32 * r;
      if (r < per && d < D) acc[r] = acc[r] * corr + p * to_f(vr[d]);
    }
    m = mn;
  }
#pragma unroll
  for (int r = 0; r < kMaxDimPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (r < per && d < D) out[(t * Hq + h) * D + d] = from_f<T>(acc[r] / l);
  }
}

}  // namespace

template <typename TI, typename T>
void paged_attention(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, T* out, cudaStream_t s) {
  if (n == 0) return;
  if (D > 32 * kMaxDimPerLane) check(cudaErrorInvalidValue, "paged_attention: head_dim above 256");
  const int64_t threads = n * Hq * 32;
  paged_attention_k<<<blocks_for(threads, 128), 128, 0, s>>>(q, k_cache, v_cache, block_tables, max_blocks, token_seq,
                                                             positions, n, Hq, Hk, D, block_size, scale, out);
  check(cudaGetLastError(), "paged_attention");
}

#define INSTANTIATE(TI, T)                                                                                          \
  template void paged_attention<TI, T>(const TI*, const T*, const T*, const int32_t*, int64_t, const int32_t*, const int32_t*, \
                                       int64_t, int64_t, int64_t, int64_t, int64_t, float, T*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T)
#define MIXED(T) INSTANTIATE(float, T)
LLMSERVE_FOR_EACH_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(MIXED)

}  // namespace llmserve::cuda
