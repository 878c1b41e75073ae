// Paged attention: one thread block per (token, query head); its kWarps warps take interleaved keys of
// the token's sequence, each with its own online softmax (each lane holds D/32 dimensions), and the
// block merges the warps' partial results at the end (split-KV within the block). Handles prefill,
// chunked prefill over cached blocks and decode alike (the token at position p attends to positions
// 0..p of its sequence). A decode step of a 12-head model thus keeps 96 warps busy instead of 12.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kMaxDimPerLane = 8;  // head_dim up to 256
constexpr int kWarps = 8;

template <typename TI, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                      const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                      int64_t bs, float scale, T* out) {
  const int64_t th = blockIdx.x;
  if (th >= n * Hq) return;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = th / Hq, h = th % Hq, kvh = h / (Hq / Hk);
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
  for (int64_t j = w; j < len; j += kWarps) {
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
  // Merge the warps: out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][32 * kMaxDimPerLane];
  if (lane == 0) {
    sm[w] = m;
    sl[w] = l;
  }
#pragma unroll
  for (int r = 0; r < kMaxDimPerLane; ++r)
    if (r < per) sacc[w][lane + 32 * r] = acc[r];
  __syncthreads();
  if (w != 0) return;
  float M = -INFINITY;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) M = fmaxf(M, sm[i]);
  float f[kWarps], L = 0.f;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) {
    f[i] = sl[i] > 0.f ? __expf(sm[i] - M) : 0.f;
    L += sl[i] * f[i];
  }
#pragma unroll
  for (int r = 0; r < kMaxDimPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (r < per && d < D) {
      float o = 0.f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) o += sacc[i][d] * f[i];
      out[(t * Hq + h) * D + d] = from_f<T>(o / L);
    }
  }
}

}  // namespace

template <typename TI, typename T>
void paged_attention(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, T* out, cudaStream_t s) {
  if (n == 0) return;
  if (D > 32 * kMaxDimPerLane) check(cudaErrorInvalidValue, "paged_attention: head_dim above 256");
  paged_attention_k<<<static_cast<unsigned>(n * Hq), kWarps * 32, 0, s>>>(q, k_cache, v_cache, block_tables, max_blocks,
                                                                        token_seq, positions, n, Hq, Hk, D, block_size,
                                                                        scale, out);
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
