// Fused kernels of a decoder layer (each the composition of CPU kernels it replaces; see the defaults in
// src/backend/backend.h): RoPE + KV-cache write, and for a few tokens the input RMSNorm, the three
// attention projections, RoPE and the KV-cache write in one launch, and the gate/up projections with
// SiLU-and-multiply (after the MLP's input RMSNorm, or on a normalized input).
#include <algorithm>

#include <cooperative_groups.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/row_dot.cuh"

namespace llmserve::cuda {
namespace {

// One thread per (token, rotation pair), looping over the heads: q rotated (from q_in, rows qs apart,
// into q_out, rows Hq*D apart; the same array when in place); k rotated and, with v, written to the
// caches at the token's slot (k and v rows kvs apart; k itself is left as it was). The angle's sine and
// cosine are computed once per (token, pair), not once per head.
template <typename T>
__global__ void rope_kv_k(const float* q_in, int64_t qs, float* q_out, const float* k, const float* v, int64_t kvs,
                          const int32_t* positions, const float* inv_freq, const int32_t* slots, int64_t n, int64_t Hq,
                          int64_t Hk, int64_t D, T* kc, T* vc) {
  pdl_enter();
  const int64_t half = D / 2;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * half) return;
  const int64_t i = idx % half, t = idx / half;
  const float a = static_cast<float>(positions[t]) * inv_freq[i];
  float sn, cs;
  sincosf(a, &sn, &cs);
  for (int64_t h = 0; h < Hq; ++h) {
    const float* r = q_in + t * qs + h * D;
    float* o = q_out + (t * Hq + h) * D;
    const float x1 = r[i], x2 = r[i + half];
    o[i] = x1 * cs - x2 * sn;
    o[i + half] = x2 * cs + x1 * sn;
  }
  const int64_t slot = slots[t];
  if (slot < 0) return;
  for (int64_t kh = 0; kh < Hk; ++kh) {
    const int64_t src = t * kvs + kh * D, dst = (slot * Hk + kh) * D;
    const float x1 = k[src + i], x2 = k[src + i + half];
    kc[dst + i] = from_f<T>(x1 * cs - x2 * sn);
    kc[dst + i + half] = from_f<T>(x2 * cs + x1 * sn);
    vc[dst + i] = from_f<T>(v[src + i]);
    vc[dst + i + half] = from_f<T>(v[src + i + half]);
  }
}

constexpr int kWarpsPerBlock = 8;

// rope_kv_k with each query and key head RMS-normalized first (weights q_norm, k_norm [D]), as
// head_rmsnorm then RoPE: one warp per (token, head) of q, k and v (the value heads copied into the
// cache). Each lane reads and writes the same elements (i and i + D/2), so q may be rotated in place.
template <typename T, typename TW>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    head_norm_rope_kv_k(const float* q_in, int64_t qs, float* q_out, const float* k, const float* v, int64_t kvs,
                        const int32_t* positions, const float* inv_freq, const int32_t* slots, int64_t n, int64_t Hq,
                        int64_t Hk, int64_t D, const TW* q_norm, const TW* k_norm, float eps, T* kc, T* vc) {
  pdl_enter();
  const int64_t heads = Hq + 2 * Hk;
  const int64_t u = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  if (u >= n * heads) return;
  const int lane = threadIdx.x & 31;
  const int64_t t = u / heads, hh = u % heads, half = D / 2, slot = slots[t];
  if (hh >= Hq + Hk) {  // a value head
    if (slot < 0) return;
    const int64_t h = hh - Hq - Hk;
    const float* r = v + t * kvs + h * D;
    T* o = vc + (slot * Hk + h) * D;
    for (int64_t i = lane; i < D; i += 32) o[i] = from_f<T>(r[i]);
    return;
  }
  const bool query = hh < Hq;
  const int64_t h = query ? hh : hh - Hq;
  if (!query && slot < 0) return;
  const float* r = query ? q_in + t * qs + h * D : k + t * kvs + h * D;
  const TW* w = query ? q_norm : k_norm;
  float ss = 0.f;
  for (int64_t i = lane; i < D; i += 32) ss += r[i] * r[i];
  const float inv = rsqrtf(warp_sum(ss) / static_cast<float>(D) + eps);
  const float pos = static_cast<float>(positions[t]);
  for (int64_t i = lane; i < half; i += 32) {
    const float x1 = to_f(w[i]) * (r[i] * inv), x2 = to_f(w[i + half]) * (r[i + half] * inv);
    float sn, cs;
    sincosf(pos * inv_freq[i], &sn, &cs);
    const float y1 = x1 * cs - x2 * sn, y2 = x2 * cs + x1 * sn;
    if (query) {
      float* o = q_out + (t * Hq + h) * D;
      o[i] = y1;
      o[i + half] = y2;
    } else {
      T* o = kc + (slot * Hk + h) * D;
      o[i] = from_f<T>(y1);
      o[i + half] = from_f<T>(y2);
    }
  }
}

// q, k, v = rmsnorm(x) . W^T (+ bias) with RoPE and the KV-cache write in one grid: each block
// normalizes the input rows into shared memory, then a warp per rotation pair (rows i and i + D/2 of
// one head of q, k or v) computes both dot products, rotates q and k pairs by the token's position, and
// writes q (float32) and k, v (into the caches at the token's slot).
// HN (Qwen3's q_norm / k_norm; one token, M = 1): each query and key head is RMS-normalized before
// RoPE, as head_norm_rope_kv_k does after a GEMM. A head's D/2 pairs are D/16 consecutive blocks,
// launched as one thread block cluster: each block sums its pairs' squares, the cluster's blocks read
// each other's sums from distributed shared memory (two cluster barriers, hardware ones), and every
// pair then finishes with the head's norm. Value heads take part in the barriers and are written
// unnormalized.
// LORA: the adapters' update (a.lora: matrices q, k, v) added to each pair's projections before RoPE.
template <typename T, typename TW, int M, bool HN, bool LORA = false>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    qkv_rope_k(const float* x, const T* norm_w, float eps, int64_t K, QkvRope a) {
  static_assert(!(HN && LORA), "LoRA with head norms takes the composed ops");
  extern __shared__ __align__(16) unsigned char smem[];
  T* h = reinterpret_cast<T*>(smem);  // [M, K] normalized rows, then the norm weights [K]
  const int64_t half = a.D / 2;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  const int64_t pairs = (a.Hq + 2 * a.Hk) * half;
  if (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock >= pairs) return;  // (the launch covers pairs exactly)
  // Warps past the last pair take its indices (every warp takes part in the block's norm) but stream
  // no rows and write nothing. (With HN there are none: D/2 is a multiple of the block's warps.)
  const bool writes = u < pairs;
  const int64_t i = (writes ? u : pairs - 1) % half;
  int64_t hd = (writes ? u : pairs - 1) / half;
  const int j = hd < a.Hq ? 0 : hd < a.Hq + a.Hk ? 1 : 2;  // q, k or v
  hd -= j == 0 ? 0 : j == 1 ? a.Hq : a.Hq + a.Hk;
  const int64_t r1 = hd * a.D + i, r2 = r1 + half;
  const TW* w = static_cast<const TW*>(a.w[j]);
  const TW* const rows[2] = {w + r1 * K, w + r2 * K};
  const float* const scales[2] = {a.scale[j] ? a.scale[j] + r1 : nullptr, a.scale[j] ? a.scale[j] + r2 : nullptr};
  // What the epilogue needs is read up front: biases and frequencies (weights), and the step's
  // positions and slots (uploaded before the step; no kernel writes them). Lane m writes token m.
  const float b1 = a.bias[j] ? a.bias[j][r1] : 0.f, b2 = a.bias[j] ? a.bias[j][r2] : 0.f, freq = a.inv_freq[i];
  const int32_t pos = lane < M ? a.positions[lane] : 0, slot = lane < M ? a.slots[lane] : -1;
  LoraLanes<T, M, 1> lo;
  float lb1[M], lb2[M];  // (LORA: the pair's rows of B^T)
  if constexpr (LORA) {
    lo.init(a.lora);
    const int64_t rows_j = (j == 0 ? a.Hq : a.Hk) * a.D;
    lo.load_b(a.lora, j, rows_j, r1, lane, lb1);
    lo.load_b(a.lora, j, rows_j, r2, lane, lb2);
  }
  // Token m's rotated pair (q) or its cache write (k, v), on lane m.
  auto put = [&](int m, float x1, float x2) {
    if (j == 0) {
      float sn, cs;
      sincosf(static_cast<float>(pos) * freq, &sn, &cs);
      a.q[m * a.Hq * a.D + r1] = x1 * cs - x2 * sn;
      a.q[m * a.Hq * a.D + r2] = x2 * cs + x1 * sn;
      return;
    }
    if (slot < 0) return;
    void* cache = j == 1 ? a.k_cache : a.v_cache;
    const int64_t at = (static_cast<int64_t>(slot) * a.Hk + hd) * a.D + i;
    if (j == 1) {
      float sn, cs;
      sincosf(static_cast<float>(pos) * freq, &sn, &cs);
      cache_put<T>(cache, at, x1 * cs - x2 * sn, a.fp8_cache);
      cache_put<T>(cache, at + half, x2 * cs + x1 * sn, a.fp8_cache);
    } else {
      cache_put<T>(cache, at, x1, a.fp8_cache);
      cache_put<T>(cache, at + half, x2, a.fp8_cache);
    }
  };
  float y1[M], y2[M];  // (HN: the pair's projections, kept for the head's norm)
  auto epilogue = [&](int64_t, const float(&acc)[2][M]) {
    float d1[M], d2[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      d1[m] = LORA ? lo.delta(0, m, lb1) : 0.f;
      d2[m] = LORA ? lo.delta(0, m, lb2) : 0.f;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane != m) continue;
      if constexpr (HN) {
        y1[m] = acc[0][m] + b1;
        y2[m] = acc[1][m] + b2;
      } else {
        put(m, acc[0][m] + b1 + d1[m], acc[1][m] + b2 + d2[m]);
      }
    }
  };
  const T* nw = stage_norm_weights(norm_w, K, h + M * K);
  // The pair's two rows, as a stream of one row (none for the warps past the last pair).
  row_stream<T, M, 2>(h, rows, scales, K, 0, 1, writes ? 1 : 0, lane,
                      [&] {
                        rmsnorm_rows<T, M>(x, nw, K, eps, h);
                        if constexpr (LORA) lo.load_t(a.lora, j, lane);
                      },
                      epilogue);
  if constexpr (HN) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    __shared__ float warp_ss[kWarpsPerBlock][M], block_ss[M];
    const int wi = threadIdx.x / 32;
#pragma unroll
    for (int m = 0; m < M; ++m)
      if (lane == m) warp_ss[wi][m] = y1[m] * y1[m] + y2[m] * y2[m];
    __syncthreads();
    if (threadIdx.x < M) {
      float ss = 0.f;
#pragma unroll
      for (int v = 0; v < kWarpsPerBlock; ++v) ss += warp_ss[v][threadIdx.x];
      block_ss[threadIdx.x] = ss;
    }
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    cluster.sync();  // every block's sums written
    float head_ss[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      head_ss[m] = 0.f;
      if (lane != m) continue;
      for (unsigned r = 0; r < cluster.num_blocks(); ++r) head_ss[m] += *cluster.map_shared_rank(&block_ss[m], r);
    }
    cluster.sync();  // every block's reads done before any block exits
    const T* hw = j == 0 ? static_cast<const T*>(a.q_norm) : static_cast<const T*>(a.k_norm);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane != m) continue;
      if (j == 2) {
        put(m, y1[m], y2[m]);
        continue;
      }
      const float inv = rsqrtf(head_ss[m] / static_cast<float>(a.D) + a.head_eps);
      put(m, to_f(hw[i]) * (y1[m] * inv), to_f(hw[i + half]) * (y2[m] * inv));
    }
#else
    __trap();  // launched only on compute capability 9.0 and up (qkv_head_norm_fits)
#endif
  }
}

// act[m, n] = silu(x[m] . wg[n]) * (x[m] . wu[n]), one warp per n (several when n outnumbers the
// resident warps; row_stream). NORM: x is the float32 residual stream, normalized (weights norm_w,
// staged in shared memory before the wait) into shared memory by each block first.
// The FP8 forms of 1-2 rows are held to three blocks an SM (80 registers, 8 bytes of spill with the norm),
// which they had unbounded before row_stream's 32-bit cursors: with those they took 86-87 registers, two
// blocks an SM, and 1.5B fp8 decode was 2-4% slower end to end than with three (H200, fortieth session).
template <typename TW, int M>
constexpr int kGateUpMinBlocks = std::is_same_v<TW, __nv_fp8_e4m3> && M <= 2 ? 3 : 1;

// LORA (with NORM): the adapters' update (lora: matrices gate, up) added to gate and up before SiLU, held
// to two blocks an SM, which the 16-bit forms without it reach (122 registers, ninth session): unbounded,
// the 1.5B shape's gate/up with the update took 25.96 us, bounded 22.32, against 20.19 without it (H100,
// kernel_bench --lora).
template <typename T, typename TW, int M, bool NORM, bool LORA = false>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, LORA ? 2 : kGateUpMinBlocks<TW, M>)
    gate_up_silu_k(const void* xin, const T* norm_w, float eps, const TW* wg, const TW* wu, const float* sg,
                   const float* su, int64_t K, int64_t N, T* act, LoraFused lora) {
  static_assert(NORM || !LORA, "LoRA takes the normalizing form");
  extern __shared__ __align__(16) unsigned char smem[];
  T* h = reinterpret_cast<T*>(smem);
  const int lane = threadIdx.x & 31;
  const TW* const mats[2] = {wg, wu};
  const float* const scales[2] = {sg, su};
  int64_t first, stride;
  gemv_rows(kGemvInterleave<TW>, kWarpsPerBlock, &first, &stride);
  LoraLanes<T, M, 2> lo;
  float lg[M], lu[M];  // (LORA: the row's entries of gate's and up's B^T, the next row's requested at each epilogue)
  if constexpr (LORA) {
    lo.init(lora);
    if (first < N) {
      lo.load_b(lora, 0, N, first, lane, lg);
      lo.load_b(lora, 1, N, first, lane, lu);
    }
  }
  auto epilogue = [&](int64_t n, const float(&gu)[2][M]) {
    float g[M], u[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      g[m] = gu[0][m] + (LORA ? lo.delta(0, m, lg) : 0.f);
      u[m] = gu[1][m] + (LORA ? lo.delta(1, m, lu) : 0.f);
    }
    if constexpr (LORA) {
      if (n + stride < N) {
        lo.load_b(lora, 0, N, n + stride, lane, lg);
        lo.load_b(lora, 1, N, n + stride, lane, lu);
      }
    }
    if (lane != 0) return;
#pragma unroll
    for (int m = 0; m < M; ++m) act[m * N + n] = from_f<T>(g[m] / (1.f + __expf(-g[m])) * u[m]);
  };
  if constexpr (NORM) {
    const T* nw = stage_norm_weights(norm_w, K, h + M * K);
    row_stream<T, M, 2>(h, mats, scales, K, first, stride, N, lane,
                        [&] {
                          rmsnorm_rows<T, M>(static_cast<const float*>(xin), nw, K, eps, h);
                          if constexpr (LORA) lo.load_t(lora, 0, lane);
                        },
                        epilogue);
  }
  else
    row_stream<T, M, 2>(static_cast<const T*>(xin), mats, scales, K, first, stride, N, lane, [] {}, epilogue);
}

}  // namespace

template <typename T>
void rope_kv_write(float* q, const float* k, const float* v, const int32_t* positions, const float* inv_freq,
                   const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* k_cache, T* v_cache,
                   cudaStream_t s) {
  rope_kv_write_rows<T>(q, Hq * D, q, k, v, Hk * D, positions, inv_freq, slots, n, Hq, Hk, D, k_cache, v_cache, s);
}

template <typename T>
void rope_kv_write_rows(const float* q_in, int64_t q_stride, float* q_out, const float* k, const float* v,
                        int64_t kv_stride, const int32_t* positions, const float* inv_freq, const int32_t* slots,
                        int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* k_cache, T* v_cache, cudaStream_t s) {
  const int64_t total = n * (D / 2);
  if (total == 0) return;
  launch("rope_kv_write", rope_kv_k<T>, blocks_for(total, 256), 256, 0, s, q_in, q_stride, q_out, k, v, kv_stride,
         positions, inv_freq, slots, n, Hq, Hk, D, k_cache, v_cache);
}

template <typename T, typename TW>
void head_norm_rope_kv_write_rows(const float* q_in, int64_t q_stride, float* q_out, const float* k, const float* v,
                                  int64_t kv_stride, const int32_t* positions, const float* inv_freq,
                                  const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, const TW* q_norm,
                                  const TW* k_norm, float eps, T* k_cache, T* v_cache, cudaStream_t s) {
  const int64_t warps = n * (Hq + 2 * Hk);
  if (warps == 0) return;
  if (D % 2 != 0) check(cudaErrorInvalidValue, "head_norm_rope_kv_write: odd head size");
  launch("head_norm_rope_kv_write", head_norm_rope_kv_k<T, TW>, blocks_for(warps, kWarpsPerBlock), kWarpsPerBlock * 32, 0,
         s, q_in, q_stride, q_out, k, v, kv_stride, positions, inv_freq, slots, n, Hq, Hk, D, q_norm, k_norm, eps, k_cache,
         v_cache);
}

bool qkv_head_norm_fits(int64_t D) {
  static const bool clusters = hopper_feature("LLMSERVE_QKV_HEAD_NORM");  // (=0: the three launches)
  // A head's D/2 pairs in whole blocks: 1, 2, 4 or 8 of them (8: the portable cluster size), head sizes
  // 16 to 128 in powers of two (32, 64 and 128 run on a GPU: tiny-qwen3, the CudaOps test, Qwen3-1.7B).
  const int64_t blocks = D / (2 * kWarpsPerBlock);
  return clusters && D % (2 * kWarpsPerBlock) == 0 && (blocks == 1 || blocks == 2 || blocks == 4 || blocks == 8);
}

template <typename T, typename TW>
void gemv_qkv_rope(const float* x, const T* norm_w, float eps, int64_t M, int64_t K, const QkvRope& a, cudaStream_t s) {
  const unsigned blocks = blocks_for((a.Hq + 2 * a.Hk) * (a.D / 2), kWarpsPerBlock);
  const int threads = kWarpsPerBlock * 32;
  const size_t smem = norm_smem_bytes(M, K, sizeof(T));
  if (a.D % 2 != 0) check(cudaErrorInvalidValue, "gemv_qkv_rope: unsupported shape");
  const bool hn = a.q_norm || a.k_norm;
  if (hn && !(a.q_norm && a.k_norm && qkv_head_norm_fits(a.D)))
    check(cudaErrorInvalidValue, "gemv_qkv_rope: head norms need both weights and a head size qkv_head_norm_fits");
  const unsigned cluster = hn ? static_cast<unsigned>(a.D / (2 * kWarpsPerBlock)) : 1;
  auto go = [&](auto kernel) {
    check_norm_smem(kernel, smem, "gemv_qkv_rope");
    launch_clusters("gemv_qkv_rope", kernel, blocks, threads, smem, s, cluster, x, norm_w, eps, K, a);
  };
  if (hn) {  // (one token: what the backend uses it for; at two it was slower than the three launches)
    if (M != 1 || a.lora.t) check(cudaErrorInvalidValue, "gemv_qkv_rope: head norms take one row and no LoRA");
    return go(qkv_rope_k<T, TW, 1, true>);
  }
  if (a.lora.t) {
    if constexpr (std::is_same_v<T, TW>) {
      check_fused_lora(a.lora, "gemv_qkv_rope");
      if (M == 1) return go(qkv_rope_k<T, TW, 1, false, true>);
      if (M == 2) return go(qkv_rope_k<T, TW, 2, false, true>);
    }
    check(cudaErrorInvalidValue, "gemv_qkv_rope: LoRA takes 1-2 rows of 16- or 32-bit weights");
  }
  switch (M) {
    case 1: return go(qkv_rope_k<T, TW, 1, false>);
    case 2: return go(qkv_rope_k<T, TW, 2, false>);
    case 3: return go(qkv_rope_k<T, TW, 3, false>);
    case 4: return go(qkv_rope_k<T, TW, 4, false>);
    default: check(cudaErrorInvalidValue, "gemv_qkv_rope: more than 4 rows");
  }
}

template <typename T, typename TW, bool NORM>
static void gate_up(const void* x, const T* norm_w, float eps, const TW* w_gate, const TW* w_up, const float* s_gate,
                    const float* s_up, int64_t M, int64_t K, int64_t N, T* act, cudaStream_t s, const LoraFused* lora) {
  const int threads = kWarpsPerBlock * 32;
  const size_t smem = NORM ? norm_smem_bytes(M, K, sizeof(T)) : 0;
  check_row_extent(K, N, "gemv_gate_up_silu: 2^31 rows or row length or more");
  const LoraFused none{};
  auto go = [&](auto kernel) {
    check_norm_smem(kernel, smem, "gemv_gate_up_silu");
    const unsigned blocks = gemv_blocks(kGemvInterleave<TW>, N, kWarpsPerBlock, resident_blocks(kernel, threads, smem));
    launch("gemv_gate_up_silu", kernel, blocks, threads, smem, s, x, norm_w, eps, w_gate, w_up, s_gate, s_up, K, N, act,
           lora ? *lora : none);
  };
  if (lora && lora->t) {
    if constexpr (NORM && std::is_same_v<T, TW>) {
      check_fused_lora(*lora, "gemv_gate_up_silu");
      if (M == 1) return go(gate_up_silu_k<T, TW, 1, true, true>);
      if (M == 2) return go(gate_up_silu_k<T, TW, 2, true, true>);
    }
    check(cudaErrorInvalidValue, "gemv_gate_up_silu: LoRA takes 1-2 normalized rows of 16- or 32-bit weights");
  }
  switch (M) {
    case 1: go(gate_up_silu_k<T, TW, 1, NORM>); break;
    case 2: go(gate_up_silu_k<T, TW, 2, NORM>); break;
    case 3: go(gate_up_silu_k<T, TW, 3, NORM>); break;
    case 4: go(gate_up_silu_k<T, TW, 4, NORM>); break;
    default: check(cudaErrorInvalidValue, "gemv_gate_up_silu: more than 4 rows");
  }
}

template <typename T, typename TW>
void gemv_gate_up_silu(const T* x, const TW* w_gate, const TW* w_up, const float* s_gate, const float* s_up, int64_t M,
                       int64_t K, int64_t N, T* act, cudaStream_t s) {
  gate_up<T, TW, false>(x, nullptr, 0.f, w_gate, w_up, s_gate, s_up, M, K, N, act, s, nullptr);
}

template <typename T, typename TW>
void gemv_norm_gate_up_silu(const float* x, const T* norm_w, float eps, const TW* w_gate, const TW* w_up,
                            const float* s_gate, const float* s_up, int64_t M, int64_t K, int64_t N, T* act,
                            cudaStream_t s, const LoraFused* lora) {
  gate_up<T, TW, true>(x, norm_w, eps, w_gate, w_up, s_gate, s_up, M, K, N, act, s, lora);
}

// The most static shared memory of the normalizing GEMVs of M rows over every type they are built for.
template <int M>
size_t gemv_norm_static() {
  return std::max({static_smem(qkv_rope_k<float, float, M, false>), static_smem(qkv_rope_k<float, float, 1, true>),
                   static_smem(gate_up_silu_k<float, float, M, true>),
                   static_smem(qkv_rope_k<__half, __half, M, false>), static_smem(qkv_rope_k<__half, __half, 1, true>),
                   static_smem(gate_up_silu_k<__half, __half, M, true>),
                   static_smem(qkv_rope_k<__nv_bfloat16, __nv_bfloat16, M, false>),
                   static_smem(qkv_rope_k<__nv_bfloat16, __nv_bfloat16, 1, true>),
                   static_smem(gate_up_silu_k<__nv_bfloat16, __nv_bfloat16, M, true>),
                   static_smem(qkv_rope_k<__half, __nv_fp8_e4m3, M, false>),
                   static_smem(qkv_rope_k<__half, __nv_fp8_e4m3, 1, true>),
                   static_smem(gate_up_silu_k<__half, __nv_fp8_e4m3, M, true>),
                   static_smem(qkv_rope_k<__nv_bfloat16, __nv_fp8_e4m3, M, false>),
                   static_smem(qkv_rope_k<__nv_bfloat16, __nv_fp8_e4m3, 1, true>),
                   static_smem(gate_up_silu_k<__nv_bfloat16, __nv_fp8_e4m3, M, true>)});
}

bool gemv_norm_fits(int64_t M, int64_t K, size_t elem) {
  if (M < 1 || M > 4) return false;
  static const size_t fixed[4] = {gemv_norm_static<1>(), gemv_norm_static<2>(), gemv_norm_static<3>(),
                                  gemv_norm_static<4>()};
  return norm_smem_bytes(M, K, elem) + fixed[M - 1] <= kMaxNormSmem;
}

void prepare_norm_launches() {
  gemv_norm_fits(1, 0, 2);
  skinny_norm_fits(1, 0, 2);
}

#define INSTANTIATE_ROPE_KV(T)                                                                                      \
  template void rope_kv_write<T>(float*, const float*, const float*, const int32_t*, const float*, const int32_t*, \
                                 int64_t, int64_t, int64_t, int64_t, T*, T*, cudaStream_t);                         \
  template void rope_kv_write_rows<T>(const float*, int64_t, float*, const float*, const float*, int64_t,           \
                                      const int32_t*, const float*, const int32_t*, int64_t, int64_t, int64_t,       \
                                      int64_t, T*, T*, cudaStream_t);
#define INSTANTIATE_HEAD_NORM(T, TW)                                                                                \
  template void head_norm_rope_kv_write_rows<T, TW>(const float*, int64_t, float*, const float*, const float*, int64_t, \
                                                    const int32_t*, const float*, const int32_t*, int64_t, int64_t,      \
                                                    int64_t, int64_t, const TW*, const TW*, float, T*, T*, cudaStream_t);
#define INSTANTIATE_HEAD_NORMS(T) \
  INSTANTIATE_HEAD_NORM(T, float) INSTANTIATE_HEAD_NORM(T, __half) INSTANTIATE_HEAD_NORM(T, __nv_bfloat16)
#define INSTANTIATE(T) INSTANTIATE_ROPE_KV(T) INSTANTIATE_HEAD_NORMS(T) INSTANTIATE_GEMVS(T, T)
#define INSTANTIATE_GEMVS(T, TW)                                                                                   \
  template void gemv_qkv_rope<T, TW>(const float*, const T*, float, int64_t, int64_t, const QkvRope&, cudaStream_t); \
  template void gemv_norm_gate_up_silu<T, TW>(const float*, const T*, float, const TW*, const TW*, const float*,    \
                                              const float*, int64_t, int64_t, int64_t, T*, cudaStream_t,            \
                                              const LoraFused*);                                                    \
  template void gemv_gate_up_silu<T, TW>(const T*, const TW*, const TW*, const float*, const float*, int64_t,       \
                                         int64_t, int64_t, T*, cudaStream_t);
#define INSTANTIATE_FP8(T) INSTANTIATE_GEMVS(T, __nv_fp8_e4m3)
LLMSERVE_FOR_EACH_TYPE(INSTANTIATE)
LLMSERVE_FOR_EACH_HALF_TYPE(INSTANTIATE_FP8)
INSTANTIATE_ROPE_KV(__nv_fp8_e4m3)  // (kv_cache_dtype fp8)
INSTANTIATE_HEAD_NORMS(__nv_fp8_e4m3)

}  // namespace llmserve::cuda
