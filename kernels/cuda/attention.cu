// Paged attention: one thread block per (token, query head), kWarps warps taking interleaved tiles of
// 32 keys of the token's sequence. Within a tile each lane scores one key (the full q.k dot product
// with 16-byte loads of the key row), the warp updates its online softmax once per tile, and each lane
// then accumulates its D/32 output dimensions over the tile's 32 values (probabilities broadcast by
// shuffles, value rows read coalesced). The block merges its warps' partial results at the end
// (split-KV within the block). Handles prefill, chunked prefill over cached blocks and decode alike:
// the token at position p attends to positions 0..p of its sequence. Prefill steps with 16-bit caches
// use the tensor-core kernel in flash_prefill.cu instead (the backend chooses per step).
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kMaxDimPerLane = 8;  // head_dim up to 256
constexpr int kWarps = 4;

// Keys per split of a context of ctx positions cut into `splits` chunks: at least 128 (shorter chunks
// cost more in merging than they gain), a multiple of 32. Computed per token on the device, so one
// launch shape (splits sized for the longest possible context) serves any context: a recorded graph
// replays for any step of its batch size.
constexpr int64_t kMinChunk = 128;
__device__ __forceinline__ int64_t chunk_of(int64_t ctx, int64_t splits) {
  const int64_t c = ((ctx + splits - 1) / splits + 31) / 32 * 32;
  return c > kMinChunk ? c : kMinChunk;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// q (float, pre-scaled, in shared memory) . k row of D elements. The loads of a row are unrolled so
// they are in flight together: a decode step of a few sequences is bound by memory latency, not bytes.
template <typename T>
__device__ __forceinline__ float dot_row(const float* q, const T* k, int64_t D) {
  float s = 0.f;
  constexpr int V = 16 / sizeof(T);
  if (D % V == 0) {
#pragma unroll 16
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

// Asks for a row's cache lines ahead of its use: a lane fetches its key's value row while it scores
// the key, so the value pass that follows finds the rows near (decode of a few sequences is bound by
// these round trips, not by bytes).
template <typename T>
__device__ __forceinline__ void prefetch_row(const T* p, int64_t D) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < D * static_cast<int64_t>(sizeof(T)); off += 128)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(c + off));
}

// Value rows are read in batches of this many keys (loads first, then the multiply-adds), so a tile
// costs 32 / kVBatch memory round trips rather than 32.
constexpr int kVBatch = 8;

// acc[g][r] += p_g(key jj) * v(key jj)[lane + 32 r] over the `count` keys of a tile whose slots and
// probabilities lane jj holds; G query heads share the value rows.
template <typename T, int PER, int G>
__device__ __forceinline__ void accumulate_values(const T* vc, int64_t row_offset, int64_t row, int64_t slot,
                                                  const float (&p)[G], int count, int lane, int64_t D, int ng,
                                                  float (&acc)[G][PER]) {
  for (int jj0 = 0; jj0 < count; jj0 += kVBatch) {
    float vv[kVBatch][PER];
#pragma unroll
    for (int u = 0; u < kVBatch; ++u) {
      const int jj = jj0 + u;
      const int64_t sj = __shfl_sync(0xffffffffu, slot, jj & 31);
      const T* vr = vc + sj * row + row_offset;
#pragma unroll
      for (int r = 0; r < PER; ++r) vv[u][r] = (jj < count && lane + 32 * r < D) ? to_f(vr[lane + 32 * r]) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (g >= ng) break;
#pragma unroll
      for (int u = 0; u < kVBatch; ++u) {
        const float pj = __shfl_sync(0xffffffffu, p[g], (jj0 + u) & 31);
#pragma unroll
        for (int r = 0; r < PER; ++r) acc[g][r] += pj * vv[u][r];
      }
    }
  }
}

// PER = head dimensions per lane (D <= 32 * PER).
template <typename TI, typename T, int PER>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                      const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                      int64_t bs, float scale, float* part_ml, float* part_acc, T* out) {
  pdl_enter();
  const int64_t th = blockIdx.x;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  if (th >= n * Hq) return;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = th / Hq, h = th % Hq, kvh = h / (Hq / Hk);
  // This block's keys: [lo, len) of the token's context, cut into `splits` chunks. Chunks past the
  // context (trailing ones) hold nothing; the merge does not read them.
  const int64_t ctx = static_cast<int64_t>(positions[t]) + 1, chunk = chunk_of(ctx, splits);
  const int64_t lo = split * chunk;
  if (lo >= ctx) return;
  const int64_t len = min(ctx, lo + chunk);
  const int32_t* table = tables + static_cast<int64_t>(token_seq[t]) * max_blocks;
  const int64_t row = Hk * D;
  __shared__ float qs[32 * PER];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f(q[(t * Hq + h) * D + d]) * scale;
  __syncthreads();
  float acc[1][PER];
#pragma unroll
  for (int r = 0; r < PER; ++r) acc[0][r] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int64_t j0 = lo + static_cast<int64_t>(w) * 32; j0 < len; j0 += kWarps * 32) {
    const int64_t j = j0 + lane;
    int64_t slot = 0;
    float sc = -INFINITY;
    if (j < len) {
      slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
      prefetch_row(vc + slot * row + kvh * D, D);
      sc = dot_row(qs, kc + slot * row + kvh * D, D);
    }
    const float mn = fmaxf(m, warp_max(sc));
    const float corr = __expf(m - mn);
    const float p[1] = {j < len ? __expf(sc - mn) : 0.f};
    l = l * corr + warp_sum(p[0]);
    m = mn;
#pragma unroll
    for (int r = 0; r < PER; ++r) acc[0][r] *= corr;
    const int64_t rest = len - j0;
    accumulate_values<T, PER, 1>(vc, kvh * D, row, slot, p, rest < 32 ? static_cast<int>(rest) : 32, lane, D, 1, acc);
  }
  // Merge the warps: out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][32 * PER];
  if (lane == 0) {
    sm[w] = m;
    sl[w] = l;
  }
#pragma unroll
  for (int r = 0; r < PER; ++r) sacc[w][lane + 32 * r] = acc[0][r];
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
  for (int r = 0; r < PER; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < D) {
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

// Merges the chunks of a split context: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M) over the
// chunks that hold keys (the first ceil(ctx / chunk); the others were not written). Warp 0 reads the
// chunks' (m, l) in parallel and leaves their weights in shared memory.
constexpr int kMaxSplits = 64;

template <typename T>
__global__ void merge_splits_k(const float* part_ml, const float* part_acc, const int32_t* positions, int64_t Hq,
                               int64_t splits, int64_t D, T* out) {
  pdl_enter();
  const int64_t th = blockIdx.x;
  const int64_t ctx = static_cast<int64_t>(positions[th / Hq]) + 1, chunk = chunk_of(ctx, splits);
  const int nact = static_cast<int>(min(splits, (ctx + chunk - 1) / chunk));
  const float* ml = part_ml + th * splits * 2;
  __shared__ float wgt[kMaxSplits];
  __shared__ float inv_l;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float mv[kMaxSplits / 32], lv[kMaxSplits / 32], M = -INFINITY;
#pragma unroll
    for (int i = 0; i < kMaxSplits / 32; ++i) {
      const int sp = lane + 32 * i;
      mv[i] = sp < nact ? ml[2 * sp] : -INFINITY;
      lv[i] = sp < nact ? ml[2 * sp + 1] : 0.f;
      M = fmaxf(M, mv[i]);
    }
    M = warp_max(M);
    float L = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxSplits / 32; ++i) {
      const int sp = lane + 32 * i;
      const float f = sp < nact ? __expf(mv[i] - M) : 0.f;
      if (sp < kMaxSplits) wgt[sp] = f;
      L += lv[i] * f;
    }
    L = warp_sum(L);
    if (lane == 0) inv_l = 1.f / L;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
#pragma unroll 8
    for (int sp = 0; sp < nact; ++sp) o += part_acc[(th * splits + sp) * D + d] * wgt[sp];
    out[th * D + d] = from_f<T>(o * inv_l);
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
                          int64_t bs, float scale, float* part_ml, float* part_acc, T* out) {
  constexpr int kPer = 4;  // head_dim <= 128
  pdl_enter();
  const int64_t tk = blockIdx.x;
  if (tk >= n * Hk) return;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = tk / Hk, kh = tk % Hk;
  const int64_t ctx = static_cast<int64_t>(positions[t]) + 1, chunk = chunk_of(ctx, splits);
  const int64_t lo = split * chunk;
  if (lo >= ctx) return;  // a chunk past the context: nothing to do, the merge skips it
  const int64_t len = min(ctx, lo + chunk);
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
      prefetch_row(vc + slot * row + kh * D, D);
      const T* kr = kc + slot * row + kh * D;
#pragma unroll 8
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
    accumulate_values<T, kPer, kMaxGroup>(vc, kh * D, row, slot, p, rest < 32 ? static_cast<int>(rest) : 32, lane, D, G,
                                          acc);
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

}  // namespace

size_t paged_attention_scratch_bytes() {
  // Splits happen only while the (token, head) blocks of one split number under 4 per SM, so the
  // partial results never exceed 4 x SMs x kMaxGroup (query heads per block) rows of D + 2 floats.
  return sizeof(float) * 4 * static_cast<size_t>(sm_count()) * kMaxGroup * (32 * kMaxDimPerLane + 2);
}

template <typename TI, typename T>
void paged_attention(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, int64_t max_len, float* scratch, T* out, cudaStream_t s) {
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
  if (max_len > kMinChunk) {
    const int64_t want = (max_len + kMinChunk - 1) / kMinChunk, cap = std::max<int64_t>(1, 4 * sm_count() / units);
    splits = std::min<int64_t>(std::min(want, cap), kMaxSplits);
  }
  // Partial results go to the caller's scratch (paged_attention_scratch_bytes): no allocation here, so
  // a recorded graph holds only kernels.
  float* ml = scratch;
  float* acc = scratch + n * Hq * splits * 2;
  if (splits > 1 && sizeof(float) * n * Hq * splits * (D + 2) > paged_attention_scratch_bytes())
    check(cudaErrorInvalidValue, "paged_attention: split results exceed the scratch");
  const dim3 grid(static_cast<unsigned>(units), static_cast<unsigned>(splits));
  constexpr unsigned threads = kWarps * 32;
  if (grouped)
    launch("paged_attention", paged_attention_gqa_k<TI, T>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, ml, acc, out);
  else if (D <= 64)
    launch("paged_attention", paged_attention_k<TI, T, 2>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, ml, acc, out);
  else if (D <= 128)
    launch("paged_attention", paged_attention_k<TI, T, 4>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, ml, acc, out);
  else
    launch("paged_attention", paged_attention_k<TI, T, 8>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, ml, acc, out);
  if (splits > 1)
    launch("paged_attention merge", merge_splits_k<T>, static_cast<unsigned>(n * Hq), 128, 0, s, ml, acc, positions, Hq,
           splits, D, out);
}

#define INSTANTIATE(TI, T)                                                                                          \
  template void paged_attention<TI, T>(const TI*, const T*, const T*, const int32_t*, int64_t, const int32_t*, const int32_t*, \
                                       int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, float*, T*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T)
#define MIXED(T) INSTANTIATE(float, T)
LLMSERVE_FOR_EACH_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(MIXED)

}  // namespace llmserve::cuda
