// Paged attention: one thread block per (token, query head), kWarps warps taking interleaved tiles of
// 32 keys of the token's sequence. Within a tile each lane scores one key (the full q.k dot product
// with 16-byte loads of the key row), the warp updates its online softmax once per tile, and each lane
// then accumulates its D/32 output dimensions over the tile's 32 values (probabilities broadcast by
// shuffles, value rows read coalesced). The block merges its warps' partial results at the end
// (split-KV within the block). Handles prefill, chunked prefill over cached blocks and decode alike:
// the token at position p attends to positions 0..p of its sequence.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kMaxDimPerLane = 8;  // head_dim up to 256
constexpr int kWarps = 4;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// q (float, pre-scaled, in shared memory) . k row of D elements.
template <typename T>
__device__ __forceinline__ float dot_row(const float* q, const T* k, int64_t D) {
  float s = 0.f;
  constexpr int V = 16 / sizeof(T);
  if (D % V == 0) {
    for (int64_t d = 0; d < D; d += V) {
      union {
        uint4 u;
        T e[V];
      } kv;
      kv.u = *reinterpret_cast<const uint4*>(k + d);
#pragma unroll
      for (int j = 0; j < V; ++j) s += q[d + j] * to_f(kv.e[j]);
    }
  } else {
    for (int64_t d = 0; d < D; ++d) s += q[d] * to_f(k[d]);
  }
  return s;
}

template <typename TI, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                      const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                      int64_t bs, float scale, int64_t chunk, float* part_ml, float* part_acc, T* out) {
  const int64_t th = blockIdx.x;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  if (th >= n * Hq) return;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = th / Hq, h = th % Hq, kvh = h / (Hq / Hk);
  const int32_t* table = tables + static_cast<int64_t>(token_seq[t]) * max_blocks;
  const int64_t row = Hk * D;
  const int per = static_cast<int>((D + 31) / 32);
  __shared__ float qs[32 * kMaxDimPerLane];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f(q[(t * Hq + h) * D + d]) * scale;
  __syncthreads();
  float acc[kMaxDimPerLane];
#pragma unroll
  for (int r = 0; r < kMaxDimPerLane; ++r) acc[r] = 0.f;
  float m = -INFINITY, l = 0.f;
  // This block's keys: [lo, len) of the token's context, cut into `splits` chunks.
  const int64_t lo = split * chunk;
  const int64_t len = min(static_cast<int64_t>(positions[t]) + 1, lo + chunk);
  for (int64_t j0 = lo + static_cast<int64_t>(w) * 32; j0 < len; j0 += kWarps * 32) {
    const int64_t j = j0 + lane;
    int64_t slot = 0;
    float sc = -INFINITY;
    if (j < len) {
      slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
      sc = dot_row(qs, kc + slot * row + kvh * D, D);
    }
    const float mn = fmaxf(m, warp_max(sc));
    const float corr = __expf(m - mn);
    const float p = j < len ? __expf(sc - mn) : 0.f;
    l = l * corr + warp_sum(p);
    m = mn;
#pragma unroll
    for (int r = 0; r < kMaxDimPerLane; ++r) acc[r] *= corr;
    const int64_t rest = len - j0;
    const int count = rest < 32 ? static_cast<int>(rest) : 32;
    for (int jj = 0; jj < count; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const int64_t sj = __shfl_sync(0xffffffffu, slot, jj);
      const T* vr = vc + sj * row + kvh * D;
#pragma unroll
      for (int r = 0; r < kMaxDimPerLane; ++r) {
        const int64_t d = lane + 32 * r;
        if (r < per && d < D) acc[r] += pj * to_f(vr[d]);
      }
    }
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
  if (splits > 1 && lane == 0) {
    part_ml[(th * splits + split) * 2] = M;
    part_ml[(th * splits + split) * 2 + 1] = L;
  }
#pragma unroll
  for (int r = 0; r < kMaxDimPerLane; ++r) {
    const int64_t d = lane + 32 * r;
    if (r < per && d < D) {
      float o = 0.f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) o += sacc[i][d] * f[i];
      if (splits == 1)
        out[(t * Hq + h) * D + d] = from_f<T>(o / L);
      else
        part_acc[(th * splits + split) * D + d] = o;
    }
  }
}

// Merges the chunks of a split context: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
template <typename T>
__global__ void merge_splits_k(const float* part_ml, const float* part_acc, int64_t splits, int64_t D, T* out) {
  const int64_t th = blockIdx.x;
  const float* ml = part_ml + th * splits * 2;
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0.f) M = fmaxf(M, ml[2 * s]);
  float L = 0.f;
  for (int64_t s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0.f) L += ml[2 * s + 1] * __expf(ml[2 * s] - M);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int64_t s = 0; s < splits; ++s)
      if (ml[2 * s + 1] > 0.f) o += part_acc[(th * splits + s) * D + d] * __expf(ml[2 * s] - M);
    out[th * D + d] = from_f<T>(o / L);
  }
}

// Grouped-query attention with one block per (token, KV head): the G = Hq / Hk query heads that share a
// KV head are scored together, so each key and value row is read once per group instead of once per
// query head (decode is bound by these reads). Same tiling, online softmax, split and merge as above;
// for G <= kMaxGroup and head_dim <= 128.
constexpr int kMaxGroup = 8;

template <typename TI, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_gqa_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                          const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                          int64_t bs, float scale, int64_t chunk, float* part_ml, float* part_acc, T* out) {
  constexpr int kPer = 4;  // head_dim <= 128
  const int64_t tk = blockIdx.x;
  if (tk >= n * Hk) return;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = tk / Hk, kh = tk % Hk;
  const int G = static_cast<int>(Hq / Hk);
  const int32_t* table = tables + static_cast<int64_t>(token_seq[t]) * max_blocks;
  const int64_t row = Hk * D;
  const int per = static_cast<int>((D + 31) / 32);
  __shared__ float qs[kMaxGroup][32 * kPer];
  for (int64_t i = threadIdx.x; i < G * D; i += blockDim.x)
    qs[i / D][i % D] = to_f(q[(t * Hq + kh * G + i / D) * D + i % D]) * scale;
  __syncthreads();
  float acc[kMaxGroup][kPer], m[kMaxGroup], l[kMaxGroup];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int r = 0; r < kPer; ++r) acc[g][r] = 0.f;
  }
  const int64_t lo = split * chunk;
  const int64_t len = min(static_cast<int64_t>(positions[t]) + 1, lo + chunk);
  constexpr int V = 16 / sizeof(T);
  for (int64_t j0 = lo + static_cast<int64_t>(w) * 32; j0 < len; j0 += kWarps * 32) {
    const int64_t j = j0 + lane;
    const bool valid = j < len;
    int64_t slot = 0;
    float sc[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) sc[g] = 0.f;
    if (valid) {
      slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
      const T* kr = kc + slot * row + kh * D;
      for (int64_t d = 0; d < D; d += V) {
        union {
          uint4 u;
          T e[V];
        } kv;
        kv.u = *reinterpret_cast<const uint4*>(kr + d);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float kf = to_f(kv.e[e]);
#pragma unroll
          for (int g = 0; g < kMaxGroup; ++g)
            if (g < G) sc[g] += qs[g][d + e] * kf;
        }
      }
    }
    float p[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= G) break;
      const float s = valid ? sc[g] : -INFINITY;
      const float mn = fmaxf(m[g], warp_max(s));
      const float corr = __expf(m[g] - mn);
      p[g] = valid ? __expf(s - mn) : 0.f;
      l[g] = l[g] * corr + warp_sum(p[g]);
      m[g] = mn;
#pragma unroll
      for (int r = 0; r < kPer; ++r) acc[g][r] *= corr;
    }
    const int64_t rest = len - j0;
    const int count = rest < 32 ? static_cast<int>(rest) : 32;
    for (int jj = 0; jj < count; ++jj) {
      const int64_t sj = __shfl_sync(0xffffffffu, slot, jj);
      const T* vr = vc + sj * row + kh * D;
      float vv[kPer];
#pragma unroll
      for (int r = 0; r < kPer; ++r) vv[r] = (r < per && lane + 32 * r < D) ? to_f(vr[lane + 32 * r]) : 0.f;
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= G) break;
        const float pj = __shfl_sync(0xffffffffu, p[g], jj);
#pragma unroll
        for (int r = 0; r < kPer; ++r) acc[g][r] += pj * vv[r];
      }
    }
  }
  __shared__ float sm[kWarps][kMaxGroup], sl[kWarps][kMaxGroup];
  __shared__ float sacc[kWarps][kMaxGroup][32 * kPer];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= G) break;
    if (lane == 0) {
      sm[w][g] = m[g];
      sl[w][g] = l[g];
    }
#pragma unroll
    for (int r = 0; r < kPer; ++r)
      if (r < per) sacc[w][g][lane + 32 * r] = acc[g][r];
  }
  __syncthreads();
  // Warp g' merges query head g' (and g' + kWarps, ...).
  for (int g = w; g < G; g += kWarps) {
    float M = -INFINITY;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) M = fmaxf(M, sm[i][g]);
    float f[kWarps], L = 0.f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) {
      f[i] = sl[i][g] > 0.f ? __expf(sm[i][g] - M) : 0.f;
      L += sl[i][g] * f[i];
    }
    const int64_t th = t * Hq + kh * G + g;
    if (splits > 1 && lane == 0) {
      part_ml[(th * splits + split) * 2] = M;
      part_ml[(th * splits + split) * 2 + 1] = L;
    }
    for (int r = 0; r < per; ++r) {
      const int64_t d = lane + 32 * r;
      if (d >= D) continue;
      float o = 0.f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) o += sacc[i][g][d] * f[i];
      if (splits == 1)
        out[th * D + d] = from_f<T>(o / L);
      else
        part_acc[(th * splits + split) * D + d] = o;
    }
  }
}

int sm_count() {
  static int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 1;
  }();
  return sms;
}

}  // namespace

template <typename TI, typename T>
void paged_attention(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, int64_t max_len, T* out, cudaStream_t s) {
  if (n == 0) return;
  if (D > 32 * kMaxDimPerLane) check(cudaErrorInvalidValue, "paged_attention: head_dim above 256");
  // Grouped queries share each K/V row read when the group and head size allow it and there are
  // enough (token, KV head) blocks to spread; a decode of one or two sequences does better with a
  // block per query head (measured: 1 x 1024 context 33 us per head, 43 us grouped).
  const int64_t G = Hq / Hk;
  const bool grouped = G >= 2 && G <= kMaxGroup && D <= 128 && D % (16 / static_cast<int64_t>(sizeof(T))) == 0 &&
                       n * Hk >= 16;
  const int64_t units = n * (grouped ? Hk : Hq);  // blocks per split
  // Split long contexts over several blocks when those blocks alone would leave SMs idle (decode of a
  // few sequences): chunks of at least 128 keys, up to about 4 blocks per SM in all.
  int64_t splits = 1;
  if (max_len > 128) {
    const int64_t want = (max_len + 127) / 128, cap = std::max<int64_t>(1, 4 * sm_count() / units);
    splits = std::min<int64_t>(std::min(want, cap), 64);
  }
  const int64_t chunk = ((max_len + splits - 1) / splits + 31) / 32 * 32;
  float *ml = nullptr, *acc = nullptr;
  if (splits > 1) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&ml), sizeof(float) * n * Hq * splits * 2, s), "attention scratch");
    check(cudaMallocAsync(reinterpret_cast<void**>(&acc), sizeof(float) * n * Hq * splits * D, s), "attention scratch");
  }
  const dim3 grid(static_cast<unsigned>(units), static_cast<unsigned>(splits));
  if (grouped)
    paged_attention_gqa_k<<<grid, kWarps * 32, 0, s>>>(q, k_cache, v_cache, block_tables, max_blocks, token_seq, positions,
                                                        n, Hq, Hk, D, block_size, scale, chunk, ml, acc, out);
  else
    paged_attention_k<<<grid, kWarps * 32, 0, s>>>(q, k_cache, v_cache, block_tables, max_blocks, token_seq, positions, n,
                                                    Hq, Hk, D, block_size, scale, chunk, ml, acc, out);
  check(cudaGetLastError(), "paged_attention");
  if (splits > 1) {
    merge_splits_k<T><<<static_cast<unsigned>(n * Hq), 128, 0, s>>>(ml, acc, splits, D, out);
    check(cudaGetLastError(), "paged_attention merge");
    cudaFreeAsync(ml, s);
    cudaFreeAsync(acc, s);
  }
}

#define INSTANTIATE(TI, T)                                                                                          \
  template void paged_attention<TI, T>(const TI*, const T*, const T*, const int32_t*, int64_t, const int32_t*, const int32_t*, \
                                       int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, T*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T)
#define MIXED(T) INSTANTIATE(float, T)
LLMSERVE_FOR_EACH_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(MIXED)

}  // namespace llmserve::cuda
