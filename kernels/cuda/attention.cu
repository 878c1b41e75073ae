// Paged attention: one thread block per (token, query head), kWarps warps taking interleaved tiles of
// 32 keys of the token's sequence. Within a tile each lane scores one key (the full q.k dot product
// with 16-byte loads of the key row), the warp updates its online softmax once per tile, and each lane
// then accumulates its D/32 output dimensions over the tile's 32 values (probabilities broadcast by
// shuffles, value rows read coalesced). The block merges its warps' partial results at the end
// (split-KV within the block). Handles prefill, chunked prefill over cached blocks and decode alike:
// the token at position p attends to positions 0..p of its sequence. Prefill steps with 16-bit caches
// use the tensor-core kernel in flash_prefill.cu instead (the backend chooses per step).
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
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
__device__ __forceinline__ int64_t chunk_of(int64_t ctx, int64_t splits, int64_t min_chunk = kMinChunk) {
  const int64_t c = ((ctx + splits - 1) / splits + 31) / 32 * 32;
  return c > min_chunk ? c : min_chunk;
}

// The first key a token whose context is ctx positions (its position + 1) attends to: 0, or with a
// sliding window (window > 0) the window's first, ctx - window. Its keys are [first_key, ctx), which the
// kernels below split into chunks as they would a context of ctx - first_key positions.
__device__ __forceinline__ int64_t first_key(int64_t ctx, int64_t window) {
  return window > 0 && ctx > window ? ctx - window : 0;
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

// PER = head dimensions per lane (D <= 32 * PER). Caches of type TC (the activation type, or E4M3 codes:
// kv_cache_dtype fp8), the output in TO.
template <typename TI, typename TC, typename TO, int PER>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_k(const TI* q, const TC* kc, const TC* vc, const int32_t* tables, int64_t max_blocks,
                      const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                      int64_t bs, float scale, int64_t window, float* part_ml, float* part_acc, TO* out) {
  pdl_enter();
  const int64_t th = blockIdx.x;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  if (th >= n * Hq) return;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = th / Hq, h = th % Hq, kvh = h / (Hq / Hk);
  // This block's keys: [lo, len) of the token's keys [first, ctx), cut into `splits` chunks. Chunks past
  // the context (trailing ones) hold nothing; the merge does not read them.
  const int64_t ctx = static_cast<int64_t>(positions[t]) + 1, first = first_key(ctx, window);
  const int64_t chunk = chunk_of(ctx - first, splits), lo = first + split * chunk;
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
    accumulate_values<TC, PER, 1>(vc, kvh * D, row, slot, p, rest < 32 ? static_cast<int>(rest) : 32, lane, D, 1, acc);
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
        out[(t * Hq + h) * D + d] = from_f<TO>(o / L);
      else
        part_acc[(th * splits + split) * D + d] = o;
    }
  }
}

// Merges the chunks of a split context: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M) over the
// chunks that hold keys (the first ceil(ctx / chunk); the others were not written). Warp 0 reads the
// chunks' (m, l) in parallel and leaves their weights in shared memory.
constexpr int kMaxSplits = 64;

// Warp-wide, for the nact chunks of a split context whose (m, l) pairs `ml` holds: their weights
// e^(m_s - M) into wgt[0..nact) and, on every lane, 1 / sum_s l_s e^(m_s - M).
__device__ __forceinline__ float split_weights(const float* ml, int nact, int lane, float* wgt) {
  float mv[kMaxSplits / 32], lv[kMaxSplits / 32], M = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxSplits / 32; ++i) {
    const int sp = lane + 32 * i;
    mv[i] = sp < nact ? __ldcg(&ml[2 * sp]) : -INFINITY;
    lv[i] = sp < nact ? __ldcg(&ml[2 * sp + 1]) : 0.f;
    M = fmaxf(M, mv[i]);
  }
  M = warp_max(M);
  float L = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxSplits / 32; ++i) {
    const int sp = lane + 32 * i;
    const float f = sp < nact ? __expf(mv[i] - M) : 0.f;
    wgt[sp] = f;
    L += lv[i] * f;
  }
  return 1.f / warp_sum(L);
}

// Lane 0 leaves a warp's running maxima and sums of its first ng query heads in shared memory (for the
// block's merge of its warps).
template <int G>
__device__ __forceinline__ void stash_ml(const float (&m)[G], const float (&l)[G], int ng, int lane, float* sm, float* sl) {
  if (lane != 0) return;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (g >= ng) break;
    sm[g] = m[g];
    sl[g] = l[g];
  }
}

// The online-softmax state of G query heads: running max, sum and output accumulators.
template <int G, int P>
__device__ __forceinline__ void softmax_init(float (&acc)[G][P], float (&m)[G], float (&l)[G]) {
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int r = 0; r < P; ++r) acc[g][r] = 0.f;
  }
}

template <typename T>
__global__ void merge_splits_k(const float* part_ml, const float* part_acc, const int32_t* positions, int64_t Hq,
                               int64_t splits, int64_t D, int64_t window, T* out) {
  pdl_enter();
  const int64_t th = blockIdx.x;
  const int64_t ctx = static_cast<int64_t>(positions[th / Hq]) + 1, span = ctx - first_key(ctx, window);
  const int64_t chunk = chunk_of(span, splits);
  const int nact = static_cast<int>(min(splits, (span + chunk - 1) / chunk));
  const float* ml = part_ml + th * splits * 2;
  __shared__ float wgt[kMaxSplits];
  __shared__ float inv_l;
  if (threadIdx.x < 32) {
    const float inv = split_weights(ml, nact, threadIdx.x, wgt);
    if (threadIdx.x == 0) inv_l = inv;
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

template <typename TI, typename TC, typename TO>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_gqa_k(const TI* q, const TC* kc, const TC* vc, const int32_t* tables, int64_t max_blocks,
                          const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                          int64_t bs, float scale, int64_t window, float* part_ml, float* part_acc, TO* out) {
  constexpr int kPer = 4;  // head_dim <= 128
  pdl_enter();
  const int64_t tk = blockIdx.x;
  if (tk >= n * Hk) return;
  const int64_t split = blockIdx.y, splits = gridDim.y;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = tk / Hk, kh = tk % Hk;
  const int64_t ctx = static_cast<int64_t>(positions[t]) + 1, first = first_key(ctx, window);
  const int64_t chunk = chunk_of(ctx - first, splits), lo = first + split * chunk;
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
  softmax_init(acc, m, l);
  constexpr int V = 16 / sizeof(TC);
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
      const TC* kr = kc + slot * row + kh * D;
#pragma unroll 8
      for (int64_t d = 0; d < D; d += V) {
        union {
          uint4 u;
          TC e[V];
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
    accumulate_values<TC, kPer, kMaxGroup>(vc, kh * D, row, slot, p, rest < 32 ? static_cast<int>(rest) : 32, lane, D, G,
                                           acc);
  }
  __shared__ float sm[kWarps][kMaxGroup], sl[kWarps][kMaxGroup];
  __shared__ float sacc[kWarps][kMaxGroup][32 * kPer];
  stash_ml(m, l, G, lane, sm[w], sl[w]);
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= G) break;
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
        out[th * D + d] = from_f<TO>(o / L);
      else
        part_acc[(th * splits + split) * D + d] = o;
    }
  }
}

// Grouped-query decode attention over 16-bit caches with head_dim 64 or 128, on tensor cores: one block
// of W = 8 or 4 warps (mma_warps) per (token, KV head, split), the G = Hq / Hk
// query heads sharing the KV head scored together, so each key and value row is read once per group.
// Built for decode, where a step of a few sequences is a chain of dependent memory round trips rather
// than a stream of bytes (and a step of many is a stream of context rows):
//   - a warp takes 16 keys, stages their key and value rows in shared memory (cp.async, 16 bytes per
//     lane per copy; its next one or two tiles of 16 keys are copied while these are used:
//     mma_stages), then S = Q K^T and O += P V are mma.sync m16n8k16 products (the group's query heads
//     are the top 8 rows, padded with zeros; the bottom 8 are left out, mma16816_top; fp32
//     accumulation), with the online softmax on S's
//     fragments in registers and P rounded to the cache type as the A operand of the second product
//     (FlashAttention-2's register layout, no round trip through shared memory): about 40 tensor-core
//     and ldmatrix instructions per tile where scoring on CUDA cores took some 2,000 (measured on an
//     H200: 1 x 1,024 context 13.3 -> 9.1 us, 1 x 8,192 19.3 -> 15.7 us);
//   - the step's inputs (positions, block tables) and the context rows no kernel of this step writes
//     (positions below ctx - fresh, `fresh` bounding the new tokens of one sequence in the step) are
//     staged before pdl_enter(), i.e. while the kernel before this one (the q/k/v projection) still
//     runs; only the queries and the step's own rows wait for it;
//   - a context split over blocks is merged by the last of its blocks to finish (a counter per (token,
//     KV head) in the scratch, reset by that block), not by a second kernel.

// The end of a grouped decode block, once every warp has left its softmax state in shared memory
// (sm, sl: running max and sum per warp and query head; sacc: its unnormalized output): merges the
// warps, then writes the output when the token's `span` keys were one chunk, else the chunk's partial result,
// which the last block of the (token, KV head) to finish merges over the chunks (its counter in the
// scratch, reset by that block).
template <typename T, int D, int W>
__device__ __forceinline__ void finish_group(const float (&sm)[W][kMaxGroup], const float (&sl)[W][kMaxGroup],
                                             const float (&sacc)[W][kMaxGroup][D], int G, int64_t t,
                                             int64_t Hq, int64_t kh, int64_t tk, int64_t span, int64_t chunk,
                                             int64_t split, int64_t splits, float* part_ml, float* part_acc,
                                             unsigned* counters, T* out) {
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int nact = static_cast<int>((span + chunk - 1) / chunk);
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int x = 0; x < W; ++x) M = fmaxf(M, sm[x][g]);
    float o = 0.f, L = 0.f;
#pragma unroll
    for (int x = 0; x < W; ++x) {
      const float f = sl[x][g] > 0.f ? __expf(sm[x][g] - M) : 0.f;
      o += sacc[x][g][d] * f;
      L += sl[x][g] * f;
    }
    const int64_t th = t * Hq + kh * G + g;
    if (nact == 1) {
      out[th * D + d] = from_f<T>(o / L);
    } else {
      part_acc[(th * splits + split) * D + d] = o;
      if (d == 0) {
        part_ml[(th * splits + split) * 2] = M;
        part_ml[(th * splits + split) * 2 + 1] = L;
      }
    }
  }
  if (nact == 1) return;
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&counters[tk], 1u) == static_cast<unsigned>(nact - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) counters[tk] = 0;  // ready for the next launch
  __shared__ float wgt[kMaxGroup][kMaxSplits];
  __shared__ float inv_l[kMaxGroup];
  for (int g = w; g < G; g += W) {
    const float inv = split_weights(part_ml + (t * Hq + kh * G + g) * splits * 2, nact, lane, wgt[g]);
    if (lane == 0) inv_l[g] = inv;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    const int64_t th = t * Hq + kh * G + g;
    float o = 0.f;
#pragma unroll 8
    for (int sp = 0; sp < nact; ++sp) o += __ldcg(&part_acc[(th * splits + sp) * D + d]) * wgt[g][sp];
    out[th * D + d] = from_f<T>(o * inv_l[g]);
  }
}

constexpr int kMmaKeys = 16;
constexpr int64_t kMmaMinChunk = 256;
constexpr int kRowPad = 8;  // elements after each staged row: ldmatrix's 8 rows fall on different banks


// Tiles a warp has in flight (cp.async stages): the one in use and the next (8-warp blocks: a few
// sequences) or the next two (4-warp blocks: full batches). Measured on an H200, two stages against one
// tile at a time: 64 x 1,024 context 24.4 -> 21.9 us, 256 x 768 73.6 -> 68.1 us, context 160 in the
// decode layer 5.70 -> 5.38 us; three against two (kernel_bench --attention, 4-warp blocks): 128 x 640
// 30.4 -> 25.7 us, 256 x 640 52.2 -> 49.5 us, 256 x 2,048 149.7 -> 138.5 us; 8-warp blocks gained
// nothing from a third stage and their 104 KB of shared memory cost the batch-1 decode layer 1.6 us.
__host__ __device__ constexpr int mma_stages(int W) { return W == 4 ? 3 : 2; }

// Staged rows of E4M3 codes (kv_cache_dtype fp8) are D + kRowPad8 bytes apart (16-byte copies; the lanes'
// 16-byte fragment reads, fp8_scores and fp8_values_times, fall on distinct banks at D = 128).
constexpr int kRowPad8 = 16;

// Shared memory of a block: its warps' staged tiles (key and value rows of kMmaKeys keys, mma_stages
// of them).
template <typename TC, int D, int W>
__host__ __device__ constexpr size_t mma_stage_bytes() {
  return sizeof(TC) * mma_stages(W) * W * 2 * kMmaKeys * (sizeof(TC) == 1 ? D + kRowPad8 : D + kRowPad);
}

// kv_cache_dtype fp8: S = Q K^T of a warp's tile of kMmaKeys keys (two n-tiles of 8) straight from its
// staged E4M3 rows (`stride` bytes apart), each lane widening the codes of its own B fragments in
// registers. The head dimension is permuted in the products' k dimension (the same permutation on both
// operands leaves every dot product as it is): lane l's k-slots of k-step k (2c, 2c + 1, 2c + 8, 2c + 9
// with c = l % 4) are dims cD/4 + 4k .. cD/4 + 4k + 3, so a lane reads its key's D/4 codes as whole
// 16-byte vectors (conflict-free at D = 128), and the queries, staged in that order (qf), as one
// 8-byte word a k-step.
template <typename T, int D>
__device__ __forceinline__ void fp8_scores(const __nv_fp8_e4m3* ks, int stride, const uint2* qf, int lane,
                                           float (&sc)[2][2]) {
  constexpr int KS = D / 16, VEC = D / 64;  // k-steps (a word of codes each); 16-byte vectors of a key
  const unsigned char* base =
      reinterpret_cast<const unsigned char*>(ks) + (lane / 4) * stride + (lane % 4) * (D / 4);
  unsigned kw[2][KS];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      *reinterpret_cast<uint4*>(&kw[h][4 * v]) = *reinterpret_cast<const uint4*>(base + h * 8 * stride + 16 * v);
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    const uint2 a = qf[k * 32 + lane];
    const unsigned qa[2] = {a.x, a.y};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      unsigned b0, b1;
      widen_fp8x4<T>(kw[h][k], b0, b1);
      mma16816_top<T>(sc[h], qa, b0, b1);
    }
  }
}

// kv_cache_dtype fp8: O += P V from a warp's staged E4M3 value rows, widened in registers. Here the
// output columns are permuted (n-tile n's column j is dim jD/8 + n), so lane l's B fragments of every
// n-tile come from dims (l / 4) D/8 .. (l / 4) D/8 + D/8 - 1 of its four keys (2c, 2c + 1, 2c + 8,
// 2c + 9): one 16-byte (D = 128) or 8-byte (D = 64) read a key, conflict-free; the caller writes o[n][e]
// to dim (2c + e) D/8 + n.
template <typename T, int D>
__device__ __forceinline__ void fp8_values_times(const __nv_fp8_e4m3* vs, int stride, const unsigned (&pa)[2],
                                                 int lane, float (&o)[D / 8][2]) {
  constexpr int NT = D / 8, WK = NT / 4;  // n-tiles; words of a key's codes a lane reads
  const unsigned char* base =
      reinterpret_cast<const unsigned char*>(vs) + (lane % 4) * 2 * stride + (lane / 4) * NT;
  unsigned v[4][WK];  // keys 2c, 2c + 1, 2c + 8, 2c + 9
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const unsigned char* p = base + ((i & 1) + (i >> 1) * 8) * stride;
    if constexpr (WK == 4)
      *reinterpret_cast<uint4*>(v[i]) = *reinterpret_cast<const uint4*>(p);
    else
      *reinterpret_cast<uint2*>(v[i]) = *reinterpret_cast<const uint2*>(p);
  }
#pragma unroll
  for (int w = 0; w < WK; ++w)
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      // n-tile 4w + b: byte b of keys 2c and 2c + 1 (b0), of keys 2c + 8 and 2c + 9 (b1).
      const unsigned sel = fp8_pair_sel(b, 4 + b);
      mma16816_top<T>(o[4 * w + b], pa, widen_fp8_pair<T>(prmt(v[0][w], v[1][w], sel)),
                      widen_fp8_pair<T>(prmt(v[2][w], v[3][w], sel)));
    }
}

// Positions, slots and key indices are 32-bit here (contexts and KV caches of fewer than 2^31 tokens;
// element offsets into the caches stay 64-bit), and the block size is a power of two given by its
// log2: fewer registers a thread, so more blocks resident per SM (101 with 8 warps, 106 with 4).
// T: the products' (and the output's) 16-bit type; TC: the caches', T or E4M3 codes (kv_cache_dtype
// fp8: the rows are staged as codes, and each lane reads the codes of its fragments from the staged tile
// and widens them to T in registers, exactly: fp8_scores, fp8_values_times).
template <typename TI, typename T, typename TC, int D, int W>
__global__ void __launch_bounds__(W * 32)
    paged_attention_mma_k(const TI* q, const TC* kc, const TC* vc, const int32_t* tables, int64_t max_blocks,
                          const int32_t* token_seq, const int32_t* positions, int64_t Hq, int64_t Hk, int bs_log2,
                          float scale, int window, int fresh, int min_chunk, float* part_ml, float* part_acc,
                          unsigned* counters, T* out) {
  constexpr bool kFp8 = sizeof(TC) == 1;
  static_assert(kFp8 || std::is_same_v<T, TC>, "16-bit caches are of the products' type");
  constexpr int KS = D / 16, NT = D / 8, RS = D + kRowPad;
  constexpr int EPC = 16 / sizeof(TC), CH = D / EPC;  // elements per 16-byte copy; copies per row
  constexpr int RC = kFp8 ? D + kRowPad8 : RS;        // a staged row's stride (TC elements)
  constexpr int kStep = W * kMmaKeys;                 // keys between a warp's tiles
  constexpr int kMmaStages = mma_stages(W);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t tk = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t t = tk / Hk, kh = tk % Hk;
  const int G = static_cast<int>(Hq / Hk);
  const int ctx = positions[t] + 1, first = static_cast<int>(first_key(ctx, window));
  const int chunk = static_cast<int>(chunk_of(ctx - first, splits, min_chunk));
  const int lo = first + static_cast<int>(split) * chunk;
  if (lo >= ctx) {
    pdl_enter();
    return;
  }
  const int len = min(ctx, lo + chunk), old = ctx - fresh;
  const int32_t* table = tables + static_cast<int64_t>(token_seq[t]) * max_blocks;
  const int bs_mask = (1 << bs_log2) - 1;
  const TC* kbase = kc + kh * D;
  const TC* vbase = vc + kh * D;
  const int64_t row = Hk * D;
  // This warp's keys and values of stage b (kMmaKeys key rows, then as many value rows).
  auto ks_of = [&](int b) {
    return reinterpret_cast<TC*>(smem_raw) + (b * W + w) * 2 * kMmaKeys * RC;
  };

  int j0 = lo + w * kMmaKeys;
  // Lane k (and k + 16) returns the slot of key k of the tile at j.
  auto find_slot = [&](int j) -> int {
    j += lane & (kMmaKeys - 1);
    return j < len ? (table[j >> bs_log2] << bs_log2) + (j & bs_mask) : 0;
  };
  // Stages the keys in [a, b) of the tile at j into stage buf; with zero_tail, the rows of keys past the
  // context get zeros.
  auto stage = [&](int buf, int j, int slot, int a, int b, bool zero_tail) {
    TC* ks = ks_of(buf);
    TC* vs = ks + kMmaKeys * RC;
#pragma unroll
    for (int i = 0; i < kMmaKeys * CH / 32; ++i) {
      const int c = lane + 32 * i, key = c / CH, ch = c % CH;
      const int sj = __shfl_sync(0xffffffffu, slot, key);
      const int jk = j + key;
      const bool load = jk >= a && jk < b, zero = zero_tail && jk >= len;
      if (!load && !zero) continue;
      const int64_t off = load ? sj * row + ch * EPC : 0;
      cp_async16(ks + key * RC + ch * EPC, kbase + off, load ? 16 : 0);
      cp_async16(vs + key * RC + ch * EPC, vbase + off, load ? 16 : 0);
    }
  };
  const bool busy = j0 < len;
  int slot0 = 0;
  if (busy) {
    slot0 = find_slot(j0);
    stage(0, j0, slot0, lo, min(len, old), true);
  }
  pdl_enter();
  // This step's rows of the first tile, then the next tiles (after pdl_enter: any of their keys may be
  // this step's), requested before the queries so that the round trips overlap.
  if (busy) stage(0, j0, slot0, max(lo, old), len, false);
  cp_async_commit();
#pragma unroll
  for (int b = 1; b < kMmaStages; ++b) {
    const int jb = j0 + b * kStep;
    if (jb < len) stage(b, jb, find_slot(jb), jb, len, true);
    cp_async_commit();
  }
  // The group's queries, scaled and rounded to T, in shared memory as the top 8 rows of an m16 A tile
  // (rows past G are zeros); each k-step's fragments are read from there by ldmatrix (keeping them in
  // registers would take the kernel past 128 registers, i.e. one block per SM). The group never
  // reaches row 8 (G <= kMaxGroup = 8), so the products run on the top rows alone (mma16816_top: the
  // bottom rows' fragments, scores and accumulators take no registers, and their softmax is not
  // computed).
  static_assert(kMaxGroup <= 8, "the group's query heads fit the top 8 rows of an m16 tile");
  __shared__ __align__(16) T qs[8][D + kRowPad];
  if constexpr (kFp8) {
    // In fragment order instead (fp8_scores' permutation of the head dimension): k-step k's A
    // fragment of lane l (its row l / 4, 4 dims) at qf[k * 32 + l], one conflict-free 8-byte read.
    static_assert(sizeof(uint2) * KS * 32 <= sizeof(qs), "the fragments fit the queries' tile");
    uint2* const qf = reinterpret_cast<uint2*>(&qs[0][0]);
    for (int i = threadIdx.x; i < 8 * D / 4; i += W * 32) {
      const int r = i / (D / 4), d = (i % (D / 4)) * 4, c = d / (D / 4), k = d % (D / 4) / 4;
      const TI* qr = q + (t * Hq + kh * G + r) * D + d;
      float f[4] = {0.f, 0.f, 0.f, 0.f};
      if (r < G)
#pragma unroll
        for (int e = 0; e < 4; ++e) f[e] = to_f(qr[e]) * scale;
      qf[k * 32 + r * 4 + c] = make_uint2(pack2<T>(f[0], f[1]), pack2<T>(f[2], f[3]));
    }
  } else {
    for (int i = threadIdx.x; i < 8 * D / 2; i += W * 32) {
      const int r = i / (D / 2), d = (i % (D / 2)) * 2;
      const TI* qr = q + (t * Hq + kh * G + r) * D + d;
      *reinterpret_cast<unsigned*>(&qs[r][d]) =
          pack2<T>(r < G ? to_f(qr[0]) * scale : 0.f, r < G ? to_f(qr[1]) * scale : 0.f);
    }
  }
  __syncthreads();
  const int r0 = lane / 4, c0 = (lane % 4) * 2;

  float o[NT][2] = {}, m = -INFINITY, l = 0.f;
  int buf = 0;
  while (j0 < len) {
    cp_async_wait_group<kMmaStages - 1>();  // this tile's group (the next ones may stay in flight)
    __syncwarp();
    // S = Q K^T: two n-tiles of 8 keys.
    float sc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    if constexpr (kFp8) {
      fp8_scores<T, D>(ks_of(buf), RC, reinterpret_cast<const uint2*>(&qs[0][0]), lane, sc);
    } else {
      // The query fragments of two k-steps per ldmatrix.
      const T* ks = ks_of(buf);
#pragma unroll
      for (int k = 0; k < KS; k += 2) {
        unsigned a[4];
        ldmatrix_x4<false>(a, &qs[lane & 7][k * 16 + (lane >> 3) * 8]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const unsigned qa[2] = {a[2 * h], a[2 * h + 1]};
          unsigned b[4];
          ldmatrix_x4<false>(b, ks + ((lane & 7) + (lane >> 4) * 8) * RS + (k + h) * 16 + ((lane >> 3) & 1) * 8);
          mma16816_top<T>(sc[0], qa, b[0], b[1]);
          mma16816_top<T>(sc[1], qa, b[2], b[3]);
        }
      }
    }
    // Keys past the context masked, then the online softmax of row r0 (sc becomes P).
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e)
        if (j0 + n * 8 + c0 + e >= len) sc[n][e] = -INFINITY;
    online_softmax(sc, 0, m, l, o);
    // O += P V: P's C fragments are the A fragment of the second product.
    const unsigned pa[2] = {pack2<T>(sc[0][0], sc[0][1]), pack2<T>(sc[1][0], sc[1][1])};
    if constexpr (kFp8) {
      fp8_values_times<T, D>(ks_of(buf) + kMmaKeys * RC, RC, pa, lane, o);
    } else {
      const T* vs = ks_of(buf) + kMmaKeys * RS;
#pragma unroll
      for (int n = 0; n < NT; n += 2) {
        unsigned b[4];
        ldmatrix_x4<true>(b, vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + n * 8 + (lane >> 4) * 8);
        mma16816_top<T>(o[n], pa, b[0], b[1]);
        mma16816_top<T>(o[n + 1], pa, b[2], b[3]);
      }
    }
    __syncwarp();  // every lane done with the staged tile before it is staged again
    const int jn = j0 + kMmaStages * kStep;  // the tile that goes into this stage next
    if (jn < len) stage(buf, jn, find_slot(jn), jn, len, true);
    cp_async_commit();
    j0 += kStep;
    buf = buf + 1 == kMmaStages ? 0 : buf + 1;
  }
  cp_async_wait_all();
  // The warps' states for the merge (the staging area is free once every warp is past its loop).
  __shared__ float sm[W][kMaxGroup], sl[W][kMaxGroup];
  static_assert(sizeof(float) * W * kMaxGroup * D <= mma_stage_bytes<TC, D, W>(), "the merge fits the staging area");
  __syncthreads();
  auto& sacc = *reinterpret_cast<float(*)[W][kMaxGroup][D]>(smem_raw);
  if (r0 < G) {
    if ((lane & 3) == 0) {
      sm[w][r0] = m;
      sl[w][r0] = l;
    }
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e)  // (fp8: fp8_values_times' permutation of the output columns)
        sacc[w][r0][kFp8 ? (c0 + e) * NT + n : n * 8 + c0 + e] = o[n][e];
  }
  // Warps without keys (busy false) hold m = -inf, l = 0: finish_group gives them weight 0.
  __syncthreads();
  finish_group<T, D, W>(sm, sl, sacc, G, t, Hq, kh, tk, ctx - first, chunk, split, splits, part_ml, part_acc, counters,
                        out);
}

// The tensor-core decode kernel for head size D (64 or 128) with W warps (4 or 8) a block, output type
// T and caches of type TC, and its shared memory.
template <typename TI, typename T, typename TC>
auto mma_kernel(int64_t D, int W) {
  if (W == 4) return D == 64 ? paged_attention_mma_k<TI, T, TC, 64, 4> : paged_attention_mma_k<TI, T, TC, 128, 4>;
  return D == 64 ? paged_attention_mma_k<TI, T, TC, 64, 8> : paged_attention_mma_k<TI, T, TC, 128, 8>;
}
template <typename TC>
size_t mma_smem(int64_t D, int W) {
  if (W == 4) return D == 64 ? mma_stage_bytes<TC, 64, 4>() : mma_stage_bytes<TC, 128, 4>();
  return D == 64 ? mma_stage_bytes<TC, 64, 8>() : mma_stage_bytes<TC, 128, 8>();
}

std::atomic<int> g_decode_warps{[] {
  const char* e = std::getenv("LLMSERVE_DECODE_ATTN_WARPS");
  return e && (std::string(e) == "4" || std::string(e) == "8") ? std::atoi(e) : 0;
}()};

// Warps a block of the tensor-core decode kernel, for `units` blocks a split: 4 (with three tiles in
// flight a warp) once there are as many blocks as SMs, else 8. A 4-warp block does twice the tiles per
// warp and merges fewer warps, and four of them fit an SM, so one block's prologue and merge overlap the
// others' loads; with fewer blocks than SMs, 8-warp blocks keep more loads in flight. Measured on an
// H200 (kernel_bench --attention, us, 8 warps / 4 warps): 64 seqs x 160 / 640 / 2,048 context 7.7 /
// 15.3 / 39.4 against 8.3 / 18.9 / 42.9; 128 seqs 15.1 / 30.3 / 75.6 against 10.8 / 25.7 / 72.2; 256
// seqs 30.4 / 59.5 / 145.3 against 21.4 / 49.5 / 138.5 (2 KV heads: 128 and more sequences are at
// least 256 blocks). set_decode_attention_warps overrides the choice.
// The tensor-core kernel's least keys a split (kMmaMinChunk unless set_decode_attention_min_chunk).
std::atomic<int> g_mma_min_chunk{0};
int64_t mma_min_chunk() {
  const int c = g_mma_min_chunk.load(std::memory_order_relaxed);
  return c ? c : kMmaMinChunk;
}

int mma_warps(int64_t units) {
  const int forced = g_decode_warps.load(std::memory_order_relaxed);
  if (forced) return forced;
  return units >= sm_count() ? 4 : 8;
}

}  // namespace

void set_decode_attention_warps(int warps) {
  if (warps != 0 && warps != 4 && warps != 8) check(cudaErrorInvalidValue, "set_decode_attention_warps: 0, 4 or 8");
  g_decode_warps.store(warps, std::memory_order_relaxed);
}

void set_decode_attention_min_chunk(int keys) {
  if (keys < 0 || keys % 32 != 0) check(cudaErrorInvalidValue, "set_decode_attention_min_chunk: a multiple of 32, or 0");
  g_mma_min_chunk.store(keys, std::memory_order_relaxed);
}

void prepare_attention_kernels() {
  // The tensor-core kernel stages its tiles in more than the 48 KB of shared memory a launch gets by
  // default.
  auto allow = [](auto kernel, size_t bytes) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "attention kernel attributes");
  };
#define ALLOW(TI, T, TC)                                                                \
  allow(paged_attention_mma_k<TI, T, TC, 64, 4>, mma_stage_bytes<TC, 64, 4>());         \
  allow(paged_attention_mma_k<TI, T, TC, 128, 4>, mma_stage_bytes<TC, 128, 4>());       \
  allow(paged_attention_mma_k<TI, T, TC, 64, 8>, mma_stage_bytes<TC, 64, 8>());         \
  allow(paged_attention_mma_k<TI, T, TC, 128, 8>, mma_stage_bytes<TC, 128, 8>());
  ALLOW(float, __half, __half)
  ALLOW(float, __nv_bfloat16, __nv_bfloat16)
  ALLOW(__half, __half, __half)
  ALLOW(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)
  ALLOW(float, __half, __nv_fp8_e4m3)
  ALLOW(float, __nv_bfloat16, __nv_fp8_e4m3)
#undef ALLOW
  prepare_flash_prefill();
}

// The scratch: a counter per (token, KV head) for the grouped kernel's merge (zero between launches),
// then the splits' partial results. Splits happen only while the blocks of one split number under 4
// per SM, so at most 4 x SMs blocks merge and the partial results never exceed 4 x SMs x kMaxGroup
// (query heads per block) rows of D + 2 floats.
static size_t scratch_counters() { return 4 * static_cast<size_t>(sm_count()); }

size_t paged_attention_scratch_bytes() {
  return sizeof(unsigned) * scratch_counters() +
         sizeof(float) * 4 * static_cast<size_t>(sm_count()) * kMaxGroup * (32 * kMaxDimPerLane + 2);
}

template <typename TI, typename TC, typename TO>
void paged_attention(const TI* q, const TC* k_cache, const TC* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, int64_t window, int64_t max_len, int64_t fresh, void* scratch, TO* out,
                     cudaStream_t s) {
  if (n == 0) return;
  if (window > 0) max_len = std::min(max_len, window);  // (the most keys a token attends to)
  if (D > 32 * kMaxDimPerLane) check(cudaErrorInvalidValue, "paged_attention: head_dim above 256");
  // Grouped queries, one block per (token, KV head): on tensor cores for 16-bit caches with head_dim 64
  // or 128 at any batch (measured on an H200 against the CUDA-core grouped kernel: 64 x 1,024 context
  // 71.7 -> 43.6 us, 256 x 768 179 -> 72 us), and for E4M3 caches with a 16-bit output; on CUDA cores for
  // the other types and sizes when the batch fills the GPU; a block per query head where neither applies.
  const int64_t G = Hq / Hk;
  const bool mma = sizeof(TO) == 2 && G <= kMaxGroup && (D == 64 || D == 128);
  const bool many = !mma && G >= 2 && G <= kMaxGroup && D <= 128 && D % (16 / static_cast<int64_t>(sizeof(TC))) == 0 &&
                    n * Hk >= 16;
  const bool grouped = mma || many;
  const int64_t units = n * (grouped ? Hk : Hq);  // blocks per split
  // Split long contexts over several blocks when those blocks alone would leave SMs idle (decode of a
  // few sequences). CUDA-core kernels: chunks of at least 128 keys, up to about 4 blocks per SM in all.
  // Tensor-core kernel: chunks of at least kMmaMinChunk keys (two 16-key tiles per warp: a second tile
  // costs less than the merge of one more split), up to one wave of resident blocks (measured on an
  // H200 with 128-key chunks and 4 blocks per SM: context 160 in the decode layer 7.2 -> 5.6 us,
  // 1 x 8,192 17.0 -> 12.6 us, 1 x 1,024 8.2 -> 10.8 us).
  const int64_t min_chunk = mma ? mma_min_chunk() : kMinChunk;
  int mw = 8;  // the tensor-core kernel's warps a block
  int64_t wave = 4 * sm_count();
  if constexpr (sizeof(TO) == 2)
    if (mma) {
      mw = mma_warps(units);
      wave = std::min<int64_t>(wave, resident_blocks(mma_kernel<TI, TO, TC>(D, mw), mw * 32, mma_smem<TC>(D, mw)));
    }
  int64_t splits = 1;
  if (max_len > min_chunk) {
    const int64_t want = (max_len + min_chunk - 1) / min_chunk, cap = std::max<int64_t>(1, wave / units);
    splits = std::min<int64_t>(std::min(want, cap), kMaxSplits);
  }
  // Partial results go to the caller's scratch (paged_attention_scratch_bytes): no allocation here, so
  // a recorded graph holds only kernels.
  unsigned* counters = static_cast<unsigned*>(scratch);
  float* ml = reinterpret_cast<float*>(counters + scratch_counters());
  float* acc = ml + n * Hq * splits * 2;
  if (splits > 1 && (sizeof(float) * n * Hq * splits * (D + 2) + sizeof(unsigned) * scratch_counters() >
                         paged_attention_scratch_bytes() ||
                     static_cast<size_t>(units) > scratch_counters()))
    check(cudaErrorInvalidValue, "paged_attention: split results exceed the scratch");
  const dim3 grid(static_cast<unsigned>(units), static_cast<unsigned>(splits));
  constexpr unsigned threads = kWarps * 32;
  if (mma) {
    if constexpr (sizeof(TO) == 2) {
      const int bs_log2 = block_size_log2(block_size, "paged_attention");
      launch("paged_attention", mma_kernel<TI, TO, TC>(D, mw), grid, mw * 32, mma_smem<TC>(D, mw), s, q, k_cache, v_cache, block_tables,
             max_blocks, token_seq, positions, Hq, Hk, bs_log2, scale, static_cast<int>(std::min<int64_t>(window, INT_MAX)),
             static_cast<int>(std::max<int64_t>(fresh, 1)), static_cast<int>(min_chunk), ml, acc, counters, out);
    }
    return;
  }
  if (many)
    launch("paged_attention", paged_attention_gqa_k<TI, TC, TO>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, window, ml, acc, out);
  else if (D <= 64)
    launch("paged_attention", paged_attention_k<TI, TC, TO, 2>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, window, ml, acc, out);
  else if (D <= 128)
    launch("paged_attention", paged_attention_k<TI, TC, TO, 4>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, window, ml, acc, out);
  else
    launch("paged_attention", paged_attention_k<TI, TC, TO, 8>, grid, threads, 0, s, q, k_cache, v_cache, block_tables,
           max_blocks, token_seq, positions, n, Hq, Hk, D, block_size, scale, window, ml, acc, out);
  if (splits > 1)
    launch("paged_attention merge", merge_splits_k<TO>, static_cast<unsigned>(n * Hq), 128, 0, s, ml, acc, positions, Hq,
           splits, D, window, out);
}

#define INSTANTIATE(TI, TC, TO)                                                                                   \
  template void paged_attention<TI, TC, TO>(const TI*, const TC*, const TC*, const int32_t*, int64_t, const int32_t*,  \
                                            const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, float, int64_t, \
                                            int64_t, int64_t, void*, TO*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T, T)
#define MIXED(T) INSTANTIATE(float, T, T)
#define FP8_CACHE(T) INSTANTIATE(float, __nv_fp8_e4m3, T)  // kv_cache_dtype fp8
LLMSERVE_FOR_EACH_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(MIXED)
LLMSERVE_FOR_EACH_TYPE(FP8_CACHE)

}  // namespace llmserve::cuda
