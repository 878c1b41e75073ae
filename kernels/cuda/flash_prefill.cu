// Prefill attention on tensor cores, FlashAttention-2 style (the CPU counterpart is the same
// kernels/cpu attention as for paged_attention: the token at position p attends to positions 0..p of
// its sequence, over the paged KV cache that already holds this step's keys and values). Handles
// chunked prefill (queries at positions after cached keys) and variable-length batches; for 16-bit
// caches and head_dim a multiple of 16 up to 128 (the caller falls back to paged_attention otherwise).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/tma.cuh"
#include "kernels/cuda/wgmma.cuh"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>
#include <numeric>

namespace llmserve::cuda {
namespace {

constexpr int kWarps = 8;             // per block, 16 query rows each
constexpr int kRows = kWarps * 16;    // query rows per block (128: each staged key/value tile serves
                                      // twice the rows of 64-row tiles; 2,048 causal tokens 120 -> 103 us)
constexpr int kThreads = kWarps * 32;

// mma.sync in FlashAttention-2's register layout: one block of 8 warps per (query head, tile of up to
// 128 query tokens of one sequence), a warp owning 16 query rows whose Q fragments (scaled, rounded to
// T) stay in registers; key/value tiles of 64 rows are gathered from the paged cache into shared memory
// by cp.async, two tiles in flight (the next is copied while this one is used); S = Q K^T and O += P V
// are m16n8k16 products with the scores, the online softmax (causal mask by position) and the output
// accumulators in registers, P fed back as the A operand. A warp whose rows all precede a key tile
// skips its products.
constexpr int kMKeys = 64;    // keys per tile
constexpr int kMRowPad = 8;   // elements after each staged row (ldmatrix rows on different banks)

// kv_cache_dtype fp8: staged rows of E4M3 codes are D + kMRowPad8 bytes apart (16-byte copies), and the
// block widens each tile to the 16-bit type in one more tile of shared memory before its products.
constexpr int kMRowPad8 = 16;
template <typename TC, int D>
constexpr size_t prefill_smem() {
  if constexpr (sizeof(TC) == 1)
    return 2 /* stages */ * 2 /* K, V */ * kMKeys * (D + kMRowPad8) + sizeof(uint16_t) * 2 * kMKeys * (D + kMRowPad);
  else
    return sizeof(uint16_t) * 2 /* stages */ * 2 /* K, V */ * kMKeys * (D + kMRowPad);
}

// A warp's 16 query rows of the tile at t0 (its rows t0 + 16 w ..): the positions of this lane's rows r0
// and r0 + 8 (-1: not a token of this sequence), and the warp's last and first positions (key tiles past
// the last are skipped; only tiles past the first need the causal mask).
struct WarpRows {
  int32_t p_lo, p_hi, last, first;
};
__device__ __forceinline__ WarpRows warp_rows(int64_t row0, int r0, int64_t n, int32_t seq, const int32_t* token_seq,
                                              const int32_t* positions) {
  auto pos_of = [&](int r) {
    const int64_t t = row0 + r;
    return (t < n && token_seq[t] == seq) ? positions[t] : -1;
  };
  WarpRows w;
  w.p_lo = pos_of(r0);
  w.p_hi = pos_of(r0 + 8);
  w.last = max(w.p_lo, w.p_hi);
  w.first = min(w.p_lo < 0 ? INT_MAX : w.p_lo, w.p_hi < 0 ? INT_MAX : w.p_hi);
  for (int o = 16; o > 0; o >>= 1) {
    w.last = max(w.last, __shfl_xor_sync(0xffffffffu, w.last, o));
    w.first = min(w.first, __shfl_xor_sync(0xffffffffu, w.first, o));
  }
  return w;
}

// The warp's Q fragments of every k-step (head h of rows row0 ..), scaled and rounded once; rows that
// are not this sequence's tokens are zeros. log2(e) goes into the scale: the softmax works in base 2.
template <typename T, int D, typename TI>
__device__ __forceinline__ void query_fragments(unsigned (&qa)[D / 16][4], int lane, const TI* q, int64_t row0,
                                                int64_t Hq, int64_t h, float scale, const WarpRows& rows) {
  const float qscale = scale * 1.4426950408889634f;
  q_fragments<T>(qa, lane, [&](int r, int d) {
    return (r < 8 ? rows.p_lo : rows.p_hi) >= 0 ? to_f(q[((row0 + r) * Hq + h) * D + d]) * qscale : 0.f;
  });
}

// The causal mask on a key tile's scores (key k0 + 8 nn + c0 + (e & 1) visible from positions at or
// after it), applied where the tile reaches past the warp's first position.
template <int NS>
__device__ __forceinline__ void causal_mask(float (&sc)[NS][4], int64_t k0, int c0, const WarpRows& rows) {
  if (k0 + NS * 8 - 1 <= rows.first) return;
  const int32_t kb = static_cast<int32_t>(k0) + c0;
#pragma unroll
  for (int nn = 0; nn < NS; ++nn)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (kb + nn * 8 + (e & 1) > (e < 2 ? rows.p_lo : rows.p_hi)) sc[nn][e] = -INFINITY;
}

// With a sliding window (window > 0) the keys before a row's window too (key k is not seen from position p
// when k <= p - window), applied where the tile starts before the window of the warp's last row.
template <int NS>
__device__ __forceinline__ void attention_mask(float (&sc)[NS][4], int64_t k0, int c0, const WarpRows& rows, int window) {
  causal_mask(sc, k0, c0, rows);
  if (window <= 0 || k0 > static_cast<int64_t>(rows.last) - window) return;
  const int32_t kb = static_cast<int32_t>(k0) + c0;
#pragma unroll
  for (int nn = 0; nn < NS; ++nn)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (kb + nn * 8 + (e & 1) <= (e < 2 ? rows.p_lo : rows.p_hi) - window) sc[nn][e] = -INFINITY;
}

// Whether rows from position `first` to `last` see any key of the tile of `keys` keys at k0: it does not
// start past the last row, nor (with a sliding window) end before the first row's window.
__device__ __forceinline__ bool tile_seen(int64_t k0, int keys, int32_t last, int32_t first, int window) {
  return k0 <= last && (window <= 0 || k0 + keys - 1 > static_cast<int64_t>(first) - window);
}

// The block's first key tile of `keys` keys: 0, or with a sliding window the one that holds the window's
// first key of the block's first row (at position `first`); the tiles before it are seen by no row.
__device__ __forceinline__ int64_t first_tile(int32_t first, int window, int keys) {
  const int64_t key = static_cast<int64_t>(first) - window + 1;
  return window > 0 && first != INT_MAX && key > 0 ? key / keys : 0;
}

// P's A fragment for keys 16 kk .. 16 kk + 15: the C fragments of n-tiles 2 kk and 2 kk + 1, rounded to T.
template <typename T, int NS>
__device__ __forceinline__ void p_fragment(const float (&sc)[NS][4], int kk, unsigned (&pa)[4]) {
  pa[0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
  pa[1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
  pa[2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
  pa[3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
}

// The end of a warp's 16 rows: rows r0 and r0 + 8 (`orow`: row r0's output, rows `stride` elements
// apart) normalized by their sums (l: this lane's shares; the quad's four make the row's), as T; rows of
// no token (position -1) are not written.
template <typename T, int NT>
__device__ __forceinline__ void write_rows(const float (&o)[NT][4], const float (&l)[2], const WarpRows& rows, T* orow,
                                           int64_t stride, int c0) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float sum = l[hh];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if ((hh ? rows.p_hi : rows.p_lo) < 0) continue;
    const float inv = 1.f / sum;
    T* r = orow + hh * 8 * stride;
#pragma unroll
    for (int nn = 0; nn < NT; ++nn)
      *reinterpret_cast<unsigned*>(r + nn * 8 + c0) = pack2<T>(o[nn][2 * hh] * inv, o[nn][2 * hh + 1] * inv);
  }
}

// Caches of type TC: T, or E4M3 codes (kv_cache_dtype fp8), which the block widens to T exactly.
template <typename TI, typename T, typename TC, int D>
__global__ void __launch_bounds__(kThreads)
    flash_prefill_k(const TI* q, const TC* kc, const TC* vc, const int32_t* tables, int64_t max_blocks,
                    const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t n, int64_t Hq,
                    int64_t Hk, int bs_log2, float scale, int window, T* out) {
  constexpr bool kFp8 = sizeof(TC) == 1;
  static_assert(kFp8 || std::is_same_v<T, TC>, "16-bit caches are of the products' type");
  constexpr int KS = D / 16, NT = D / 8, RS = D + kMRowPad, NS = kMKeys / 8;
  constexpr int EPC = 16 / sizeof(TC), CH = D / EPC;  // elements per 16-byte copy; copies per row
  constexpr int RC = kFp8 ? D + kMRowPad8 : RS;       // a staged row's stride (TC elements)
  extern __shared__ __align__(128) unsigned char smem[];
  TC* stage_base = reinterpret_cast<TC*>(smem);  // [stage][K, V][kMKeys][RC]
  __shared__ int32_t tile_max, tile_min;

  pdl_enter();
  const int64_t t0 = tiles[blockIdx.y], h = blockIdx.x, kvh = h / (Hq / Hk);
  const int32_t seq = token_seq[t0];
  const int tid = threadIdx.x, w = tid / 32, lane = tid & 31;
  const int32_t* table = tables + static_cast<int64_t>(seq) * max_blocks;
  const int r0 = lane / 4, c0 = (lane % 4) * 2;
  const WarpRows rows = warp_rows(t0 + w * 16, r0, n, seq, token_seq, positions);
  if (tid == 0) {
    tile_max = -1;
    tile_min = INT_MAX;
  }
  __syncthreads();
  if (lane == 0) {
    atomicMax(&tile_max, rows.last);
    atomicMin(&tile_min, rows.first);
  }
  unsigned qa[KS][4];
  query_fragments<T, D>(qa, lane, q, t0 + w * 16, Hq, h, scale, rows);
  __syncthreads();
  const int64_t nkeys = static_cast<int64_t>(tile_max) + 1, ntiles = (nkeys + kMKeys - 1) / kMKeys;
  const int64_t i0 = first_tile(tile_min, window, kMKeys);
  const int64_t row = Hk * D;
  const uint32_t bs_mask = (1u << bs_log2) - 1;  // block sizes are powers of two (the host checks)
  // Copies key tile i into stage i % 2 (rows past the keys: zeros), as one cp.async group.
  auto stage = [&](int64_t i) {
    TC* ks = stage_base + (i & 1) * 2 * kMKeys * RC;
    TC* vs = ks + kMKeys * RC;
    for (int c = tid; c < kMKeys * CH; c += kThreads) {
      const int key = c / CH, ch = c % CH;
      const uint32_t j = static_cast<uint32_t>(i * kMKeys + key);  // 32-bit: 64-bit division is slow
      const bool load = j < nkeys;
      const int64_t off =
          load ? ((static_cast<int64_t>(table[j >> bs_log2]) << bs_log2) + (j & bs_mask)) * row + kvh * D + ch * EPC
               : 0;
      cp_async16(ks + key * RC + ch * EPC, kc + off, load ? 16 : 0);
      cp_async16(vs + key * RC + ch * EPC, vc + off, load ? 16 : 0);
    }
    cp_async_commit();
  };
  float o[NT][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  if (ntiles > i0) stage(i0);
  for (int64_t i = i0; i < ntiles; ++i) {
    if (i + 1 < ntiles) {
      stage(i + 1);
      cp_async_wait_group<1>();
    } else {
      cp_async_wait_group<0>();
    }
    __syncthreads();
    const int64_t k0 = i * kMKeys;
    const T* ks;
    if constexpr (kFp8) {
      // The tile's key and value rows of codes to T into the widened tile after the stages (the layout
      // of a 16-bit stage).
      T* const widened = reinterpret_cast<T*>(smem + sizeof(TC) * 2 * 2 * kMKeys * RC);
      widen_rows<T, D>(stage_base + (i & 1) * 2 * kMKeys * RC, RC, widened, RS, 2 * kMKeys, tid, kThreads);
      __syncthreads();
      ks = widened;
    } else {
      ks = stage_base + (i & 1) * 2 * kMKeys * RS;
    }
    const T* vs = ks + kMKeys * RS;
    if (tile_seen(k0, kMKeys, rows.last, rows.first, window)) {
      // S = Q K^T over the tile's 8 n-tiles of 8 keys.
      float sc[NS][4];
#pragma unroll
      for (int nn = 0; nn < NS; ++nn)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[nn][e] = 0.f;
#pragma unroll
      for (int k = 0; k < KS; ++k)
#pragma unroll
        for (int nb = 0; nb < NS; nb += 2) {
          unsigned b[4];
          ldmatrix_x4<false>(b, ks + (nb * 8 + (lane & 7) + (lane >> 4) * 8) * RS + k * 16 + ((lane >> 3) & 1) * 8);
          mma16816<T>(sc[nb], qa[k], b[0], b[1]);
          mma16816<T>(sc[nb + 1], qa[k], b[2], b[3]);
        }
      // The causal (and window) mask, then the online softmax of rows r0 and r0 + 8 (sc becomes P).
      attention_mask(sc, k0, c0, rows, window);
      online_softmax<NS, NT, 4, true>(sc, 0, m[0], l[0], o);
      online_softmax<NS, NT, 4, true>(sc, 1, m[1], l[1], o);
      // O += P V, 16 keys per k-step: P's C fragments of n-tiles 2kk, 2kk+1 are the A fragment.
#pragma unroll
      for (int kk = 0; kk < kMKeys / 16; ++kk) {
        unsigned pa[4];
        p_fragment<T>(sc, kk, pa);
#pragma unroll
        for (int nn = 0; nn < NT; nn += 2) {
          unsigned b[4];
          ldmatrix_x4<true>(b, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * RS + nn * 8 + (lane >> 4) * 8);
          mma16816<T>(o[nn], pa, b[0], b[1]);
          mma16816<T>(o[nn + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp done with this stage (and the widened tile) before tile i + 2 goes into it
  }
  write_rows<T, NT>(o, l, rows, out + ((t0 + w * 16 + r0) * Hq + h) * D, Hq * D, c0);
}

// The same computation on Hopper's warpgroup MMA (head sizes 64 and 128, sm_90a): a block of two
// warpgroups per (query head, tile of up to 128 query tokens), each warpgroup 64 of the rows (a warp the
// same 16 rows as above). The queries are staged once into shared memory; key and value tiles of KT
// rows (128 or 64) by cp.async, three in flight (or by TMA: flash_prefill_tma_k below). All are
// 128-byte-swizzled panels of 64 elements (wgmma.cuh), one layout: S = Q K^T reads query and key panels
// K-major (m64nKTk16, both from shared memory), O += P V the value panels N-major (m64nDk16, P from
// registers), so nothing is transposed on the way in. The mma.sync kernel issues about 1,150 instructions a warp per 64 keys (128
// of them MMAs, 64 ldmatrix); here a warpgroup issues D / 16 + KT / 16 wgmma per tile. The scores'
// accumulators have mma.m16n8's C layout, so the mask, online softmax and epilogue are the register
// code above; the skip of tiles past the rows' last position is per warpgroup (wgmma is issued by all
// four warps together).
constexpr int kWgStages = 3;

// Shared memory of the warpgroup kernel with KT-key tiles: the block's queries (two warpgroups' 64 rows,
// D / 64 panels each), then the stages of key and value tiles.
template <int D>
__host__ __device__ constexpr uint32_t prefill_wgmma_q_bytes() {
  return 2 * (D / 64) * 64 * 128;
}
template <int D, int KT>
__host__ __device__ constexpr size_t prefill_wgmma_smem() {
  return prefill_wgmma_q_bytes<D>() + static_cast<size_t>(kWgStages) * 2 /* K, V */ * KT * D * 2 +
         1024 /* alignment slack */;
}

// The warpgroup kernels' shared memory at 1,024-byte alignment (the swizzle's atom): the queries
// ([warpgroup][panel][row][128 bytes]), then the stages of key and value tiles ([stage][K, V][panel][key]
// [128 bytes]), all swizzled; pointers and shared-space addresses.
template <int D>
struct WgmmaSmem {
  unsigned char* qs;
  unsigned char* stages;
  uint32_t qs_addr, stages_addr;
  __device__ explicit WgmmaSmem(unsigned char* smem) {
    const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t pad = ((raw + 1023u) & ~1023u) - raw;
    qs = smem + pad;
    stages = qs + prefill_wgmma_q_bytes<D>();
    qs_addr = raw + pad;
    stages_addr = qs_addr + prefill_wgmma_q_bytes<D>();
  }
};

// A warpgroup kernel's block: the tile of query tokens from t0 (one sequence's, seq), query head h and
// its KV head, the sequence's block table.
struct WgmmaBlock {
  int64_t t0, h, kvh;
  int32_t seq;
  const int32_t* table;
  __device__ WgmmaBlock(const int32_t* tiles, const int32_t* token_seq, const int32_t* tables, int64_t max_blocks,
                        int64_t Hq, int64_t Hk)
      : t0(tiles[blockIdx.y]), h(blockIdx.x), kvh(h / (Hq / Hk)), seq(token_seq[t0]),
        table(tables + static_cast<int64_t>(seq) * max_blocks) {}
  // The cache row (block x block size + offset) of the sequence's key j.
  __device__ int64_t cache_row(int64_t j, int bs_log2) const {
    return (static_cast<int64_t>(table[j >> bs_log2]) << bs_log2) + (j & ((int64_t{1} << bs_log2) - 1));
  }
};

// The block's 128 query rows of head h, scaled (log2(e) included: the softmax works in base 2) and
// rounded to T once, into the K-major panels at qs that S = Q K^T reads as its A operand (warpgroup g's
// 64 rows at g x D / 64 panels); rows that are not this sequence's tokens are zeros. Threads tid < 256 take
// part. (The queries are not held in registers as wgmma's register A operand: CUDA 13.0's ptxas gave
// those registers to the P fragments inside the key loop, so every tile after the first multiplied P by
// the keys; seen in the SASS at head size 64 and with 128-key tiles.)
template <typename TI, typename T, int D>
__device__ __forceinline__ void stage_queries(unsigned char* qs, const TI* q, int64_t t0, int64_t n, int64_t Hq, int64_t h,
                                              float scale, const int32_t* token_seq, int32_t seq, int tid) {
  // A thread takes chunk ch (8 elements) of rows tid / CH + i * kRowStep: all its loads are issued
  // before any store (rows of other sequences below n are read and zeroed, so the row's sequence id
  // and its queries come in one round trip).
  constexpr int CH = D / 8, kRowStep = kThreads / CH, kPer = kRows / kRowStep;
  constexpr uint32_t kQPanel = 64 * 128;
  static_assert(kThreads % CH == 0 && kRows % kRowStep == 0, "whole rows per pass");
  const float qscale = scale * 1.4426950408889634f;
  const int ch = tid % CH;
  float x[kPer][8];
  bool mine[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t t = t0 + tid / CH + i * kRowStep;
    mine[i] = t < n;
    load_vec<8>(q + (min(t, n - 1) * Hq + h) * D + ch * 8, x[i]);
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) mine[i] = mine[i] && token_seq[t0 + tid / CH + i * kRowStep] == seq;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int r = tid / CH + i * kRowStep;
    const float f = mine[i] ? qscale : 0.f;
    const uint4 v = make_uint4(pack2<T>(x[i][0] * f, x[i][1] * f), pack2<T>(x[i][2] * f, x[i][3] * f),
                               pack2<T>(x[i][4] * f, x[i][5] * f), pack2<T>(x[i][6] * f, x[i][7] * f));
    *reinterpret_cast<uint4*>(qs + ((r / 64) * (D / 64) + ch / 8) * kQPanel + wgmma_swizzle(r % 64, ch % 8)) = v;
  }
}

#if defined(LLMSERVE_HAVE_WGMMA)
// A warpgroup's share of one key tile at k0: S = Q K^T from the query panels at qa and the key panels
// at ka (m64nKTk16, both K-major in shared memory), the mask and online softmax in registers, O += P V
// from the value panels at va (m64nDk16, N-major, P from registers).
template <typename T, int D, int KT>
__device__ __forceinline__ void wgmma_key_tile(float (&sc)[KT / 8][4], float (&o)[D / 8][4], float (&m)[2], float (&l)[2],
                                               uint32_t qa, uint32_t ka, uint32_t va, int64_t k0, int c0,
                                               const WarpRows& rows, int window) {
  constexpr int KS = D / 16, NT = D / 8;
  constexpr uint32_t kPanel = KT * 128, kQPanel = 64 * 128;
  // S = Q K^T: 16 of the head's elements a step, the panel's k-th 32 bytes.
  wgmma_fence();
#pragma unroll
  for (int k = 0; k < KS; ++k)
    wgmma_ss<T>(sc, wgmma_desc(qa + (k / 4) * kQPanel + (k % 4) * 32, 16, 1024),
                wgmma_desc(ka + (k / 4) * kPanel + (k % 4) * 32, 16, 1024), k > 0);
  wgmma_commit();
  wgmma_wait_all();
  attention_mask(sc, k0, c0, rows, window);
  online_softmax<KT / 8, NT, 4, true>(sc, 0, m[0], l[0], o);
  online_softmax<KT / 8, NT, 4, true>(sc, 1, m[1], l[1], o);
  // O += P V, 16 keys a step: P's C fragments of n-tiles 2kk, 2kk + 1 are the A fragment; the value
  // rows of those keys start 16 lines (2,048 bytes) further each step.
  unsigned pa[KT / 16][4];
#pragma unroll
  for (int kk = 0; kk < KT / 16; ++kk) p_fragment<T>(sc, kk, pa[kk]);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < KT / 16; ++kk) wgmma_rs<T, true>(o, pa[kk], wgmma_desc(va + kk * 2048, kPanel, 1024), 1);
  wgmma_commit();
  wgmma_wait_all();
}
#endif

// Head size 64 with 64-key tiles is held to 127 registers so that two blocks share an SM (no spills;
// without the bound ptxas takes 129, one block); the others take one block an SM.
template <typename TI, typename T, int D, int KT>
__global__ void __launch_bounds__(kThreads, (D == 64 && KT == 64) ? 2 : 1)
    flash_prefill_wgmma_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                          const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t n,
                          int64_t Hq, int64_t Hk, int bs_log2, float scale, int window, T* out) {
#if defined(LLMSERVE_HAVE_WGMMA)
  static_assert(D == 128 || D == 64, "64-element panels");
  static_assert(KT == 64 || KT == 128, "m64n64k16 or m64n128k16 for the scores");
  static_assert(prefill_wgmma_smem<D, KT>() + 1024 <= 227 * 1024, "an SM's shared memory");
  constexpr int NT = D / 8, NS = KT / 8, CH = D / 8;
  constexpr uint32_t kPanel = KT * 128;          // bytes: KT keys x 64 elements
  constexpr uint32_t kTile = (D / 64) * kPanel;  // the keys (or values) of one tile
  constexpr uint32_t kQPanel = 64 * 128;         // a warpgroup's 64 query rows x 64 elements
  extern __shared__ __align__(1024) unsigned char smem[];
  const WgmmaSmem<D> sm(smem);
  __shared__ int32_t wg_last[2], wg_first[2];

  pdl_enter();
  const WgmmaBlock b(tiles, token_seq, tables, max_blocks, Hq, Hk);
  const int64_t t0 = b.t0, h = b.h;
  const int tid = threadIdx.x, w = tid / 32, lane = tid & 31, wg = w / 4;
  const int r0 = lane / 4, c0 = (lane % 4) * 2;
  const WarpRows rows = warp_rows(t0 + w * 16, r0, n, b.seq, token_seq, positions);
  if (tid < 2) {
    wg_last[tid] = -1;
    wg_first[tid] = INT_MAX;
  }
  stage_queries<TI, T, D>(sm.qs, q, t0, n, Hq, h, scale, token_seq, b.seq, tid);
  fence_proxy_async();  // the generic-proxy stores above before wgmma's reads of them
  __syncthreads();
  if (lane == 0) {
    atomicMax(&wg_last[wg], rows.last);
    atomicMin(&wg_first[wg], rows.first);
  }
  __syncthreads();
  const int32_t my_last = wg_last[wg], my_first = wg_first[wg];
  const uint32_t qa = sm.qs_addr + wg * (D / 64) * kQPanel;
  const int64_t nkeys = static_cast<int64_t>(max(wg_last[0], wg_last[1])) + 1, ntiles = (nkeys + KT - 1) / KT;
  const int64_t i0 = first_tile(min(wg_first[0], wg_first[1]), window, KT);
  const int64_t row = Hk * D;
  // Copies key tile i into stage i % kWgStages (rows past the keys: zeros).
  auto stage = [&](int64_t i) {
    unsigned char* ks = sm.stages + (i % kWgStages) * 2 * kTile;
    unsigned char* vs = ks + kTile;
    for (int c = tid; c < KT * CH; c += kThreads) {
      const int key = c / CH, ch = c % CH;
      const uint32_t j = static_cast<uint32_t>(i * KT + key);
      const bool load = j < nkeys;
      const int64_t off =
          load ? b.cache_row(j, bs_log2) * row + b.kvh * D + ch * 8 : 0;
      const uint32_t at = (ch / 8) * kPanel + wgmma_swizzle(key, ch % 8);
      cp_async16(ks + at, kc + off, load ? 16 : 0);
      cp_async16(vs + at, vc + off, load ? 16 : 0);
    }
  };
  float o[NT][4] = {}, sc[NS][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int s = 0; s < kWgStages - 1; ++s) {
    if (i0 + s < ntiles) stage(i0 + s);
    cp_async_commit();
  }
  for (int64_t i = i0; i < ntiles; ++i) {
    // Tile i has landed (this thread's copies; the barrier makes everyone's visible to wgmma), and
    // every warpgroup is done with tile i - 1, whose stage takes tile i + 2.
    cp_async_wait_group<kWgStages - 2>();
    fence_proxy_async();
    __syncthreads();
    if (i + kWgStages - 1 < ntiles) stage(i + kWgStages - 1);
    cp_async_commit();
    const int64_t k0 = i * KT;
    if (!tile_seen(k0, KT, my_last, my_first, window)) continue;  // the same for the whole warpgroup
    const uint32_t ka = sm.stages_addr + static_cast<uint32_t>(i % kWgStages) * 2 * kTile;
    wgmma_key_tile<T, D, KT>(sc, o, m, l, qa, ka, ka + kTile, k0, c0, rows, window);
  }
  write_rows<T, NT>(o, l, rows, out + ((t0 + w * 16 + r0) * Hq + h) * D, Hq * D, c0);
#else
  __trap();  // launched only where the probe found this build's sm_90a code
#endif
}

// The warpgroup kernel with its key and value tiles brought by TMA (head sizes 64 and 128, 128-key
// tiles, cache blocks of 16 positions or more): the two consumer warpgroups above plus a producer
// warpgroup (its registers given to the consumers: 40 a thread against their 232) of which warp 8's
// lane 0 asks for each 16-key group of a tile as one box per 64-element panel (cache_rows_map's maps
// over the K and V caches), three tiles in flight, each stage's arrival counted
// by a "full" mbarrier (the producer's 32 arrivals and the boxes' bytes) and its release by an "empty"
// one (the 8 consumer warps' arrivals after their last product of the tile). In the last tile the
// producer's lanes copy the keys of a partial 16-key group themselves and zero the rows past the keys
// (a value row the probabilities weigh by zero must still not be NaN). No block-wide barrier in the
// key loop, so the warpgroups are not in lockstep: one's softmax runs while the other's products do.
// (FlashAttention-3's ping-pong, the warpgroups taking turns at issuing their products by named
// barriers, was measured on top of this and not kept: 12% faster at 512 tokens, 3% slower at 16,384.)
//
// kv_cache_dtype fp8 (TC E4M3): the consumers are the same, the producer differs. Its four warps copy
// each tile's codes by cp.async (16 codes a copy, any block size) into one of two code stages, then
// widen them to T (exact) into the swizzled panels of a stage the consumers read as above, one "full"
// arrival per producer thread; the codes of tile i + 2 are requested once tile i's are widened. Two
// stages of widened tiles instead of three make room for the code stages (224 KB at head size 128).
constexpr int kTmaThreads = kThreads + 128;
constexpr int kTmaKeys = 128;  // keys a tile
template <typename TC>
__host__ __device__ constexpr int tma_stages() { return sizeof(TC) == 1 ? 2 : kWgStages; }
template <typename TC, int D>
__host__ __device__ constexpr size_t prefill_tma_smem() {
  return prefill_wgmma_q_bytes<D>() + static_cast<size_t>(tma_stages<TC>()) * 2 * kTmaKeys * D * 2 +
         (sizeof(TC) == 1 ? 2 /* code stages */ * 2 * kTmaKeys * D : 0) + 1024 /* alignment slack */;
}
__device__ __forceinline__ void producer_sync() { asm volatile("bar.sync 1, 128;" ::: "memory"); }

template <typename TI, typename T, typename TC, int D>
__global__ void __launch_bounds__(kTmaThreads, 1)
    flash_prefill_tma_k(const __grid_constant__ CUtensorMap kmap, const __grid_constant__ CUtensorMap vmap, const TC* kc,
                        const TC* vc, const TI* q, const int32_t* tables, int64_t max_blocks, const int32_t* token_seq,
                        const int32_t* positions, const int32_t* tiles, int64_t n, int64_t Hq, int64_t Hk, int bs_log2,
                        float scale, int window, T* out) {
#if defined(LLMSERVE_HAVE_WGMMA)
  constexpr int KT = kTmaKeys, NT = D / 8, NS = KT / 8, CH = D / 8;
  constexpr bool kFp8 = sizeof(TC) == 1;
  constexpr int kStages = tma_stages<TC>();
  static_assert(kFp8 || std::is_same_v<T, TC>, "16-bit caches are of the products' type");
  static_assert(D == 128 || D == 64, "64-element panels");
  static_assert(prefill_tma_smem<TC, D>() + 1024 <= 227 * 1024, "an SM's shared memory");
  constexpr uint32_t kPanel = KT * 128, kTile = (D / 64) * kPanel, kQPanel = 64 * 128;
  extern __shared__ __align__(1024) unsigned char smem[];
  const WgmmaSmem<D> sm(smem);
  __shared__ int32_t wg_last[2], wg_first[2];
  __shared__ __align__(8) uint64_t bars[2 * kWgStages];  // full[stage], then empty[stage]
  const uint32_t full0 = static_cast<uint32_t>(__cvta_generic_to_shared(bars)), empty0 = full0 + 8 * kWgStages;

  pdl_enter();
  const WgmmaBlock b(tiles, token_seq, tables, max_blocks, Hq, Hk);
  const int64_t t0 = b.t0, h = b.h;
  const int tid = threadIdx.x, w = tid / 32, lane = tid & 31, wg = w / 4;
  const int r0 = lane / 4, c0 = (lane % 4) * 2;
  const bool consumer = w < kWarps;
  const WarpRows rows = consumer ? warp_rows(t0 + w * 16, r0, n, b.seq, token_seq, positions) : WarpRows{-1, -1, -1, INT_MAX};
  if (tid < 2) {
    wg_last[tid] = -1;
    wg_first[tid] = INT_MAX;
  }
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, kFp8 ? 128 : 32);
      mbar_init(empty0 + 8 * s, kWarps);
    }
    mbar_init_fence();
  }
  if (consumer) stage_queries<TI, T, D>(sm.qs, q, t0, n, Hq, h, scale, token_seq, b.seq, tid);
  fence_proxy_async();
  __syncthreads();
  if (consumer && lane == 0) {
    atomicMax(&wg_last[wg], rows.last);
    atomicMin(&wg_first[wg], rows.first);
  }
  __syncthreads();
  // Tiles i0 .. ntiles - 1; the stages and the barriers' phases count from i0 (ii = i - i0).
  const int64_t nkeys = static_cast<int64_t>(max(wg_last[0], wg_last[1])) + 1, ntiles = (nkeys + KT - 1) / KT;
  const int64_t i0 = first_tile(min(wg_first[0], wg_first[1]), window, KT);
  if (!consumer) {  // the producer warpgroup: warp 8 works (fp8: all four)
    setmaxnreg_dec<40>();
    if constexpr (kFp8) {
      const int pt = tid - kThreads;
      const int64_t row = Hk * D;
      constexpr int kCodes = 2 * KT * D;  // a code stage: the tile's key rows, then its value rows
      static_assert(KT * (D / 16) % 128 == 0 && 2 * KT * CH % 128 == 0, "whole passes of the producer's threads");
      unsigned char* const codes = sm.stages + kStages * 2 * kTile;
      auto fetch = [&](int64_t i) {  // tile i's codes into code stage i % 2 (zeros past the keys)
        if (i < ntiles) {
          unsigned char* ks = codes + (i & 1) * kCodes;
#pragma unroll 4
          for (int it = 0; it < KT * (D / 16) / 128; ++it) {  // (a fixed count: unrolled, the loads overlap)
            const int c = pt + 128 * it, key = c / (D / 16), ch = c % (D / 16);
            const int64_t j = i * KT + key;
            const bool load = j < nkeys;
            const int64_t off = load ? b.cache_row(j, bs_log2) * row + b.kvh * D + ch * 16 : 0;
            cp_async16(ks + key * D + ch * 16, kc + off, load ? 16 : 0);
            cp_async16(ks + KT * D + key * D + ch * 16, vc + off, load ? 16 : 0);
          }
        }
        cp_async_commit();
      };
      fetch(i0);
      fetch(i0 + 1);
      for (int64_t i = i0; i < ntiles; ++i) {
        const int64_t ii = i - i0;
        const int s = static_cast<int>(ii % kStages);
        cp_async_wait_group<1>();  // this thread's copies of tile i (tile i + 1's may be in flight)
        producer_sync();           // everyone's
        if (ii >= kStages) mbar_wait(empty0 + 8 * s, static_cast<uint32_t>((ii / kStages - 1) & 1));
        const unsigned char* src = codes + (i & 1) * kCodes;
        unsigned char* dst = sm.stages + s * 2 * kTile;
        // 8 codes a thread at a time: consecutive threads read consecutive 8 bytes and write consecutive
        // 16-byte units of a swizzled row.
#pragma unroll 4
        for (int it = 0; it < 2 * KT * CH / 128; ++it) {
          const int c = pt + 128 * it, kv = c / (KT * CH), key = c / CH % KT, ch = c % CH;
          const uint2 w8 = *reinterpret_cast<const uint2*>(src + kv * KT * D + key * D + ch * 8);
          *reinterpret_cast<uint4*>(dst + kv * kTile + (ch / 8) * kPanel + wgmma_swizzle(key, ch % 8)) = widen_fp8<T>(w8);
        }
        fence_proxy_async();  // these generic stores before wgmma's reads
        mbar_arrive(full0 + 8 * s);
        producer_sync();  // code stage i % 2 read by everyone: tile i + 2 may go into it
        fetch(i + 2);
      }
      return;
    } else {  // (16-bit caches: warp 8's lane 0 issues the boxes)
      if (w != kWarps) return;
      const int64_t row = Hk * D;
      for (int64_t i = i0; i < ntiles; ++i) {
        const int64_t ii = i - i0;
        const int s = static_cast<int>(ii % kStages);
        if (ii >= kStages) mbar_wait(empty0 + 8 * s, static_cast<uint32_t>((ii / kStages - 1) & 1));
        const int64_t k0 = i * KT;
        const int valid = static_cast<int>(min(static_cast<int64_t>(KT), nkeys - k0)), boxed = valid & ~15;
        unsigned char* ks = sm.stages + s * 2 * kTile;
        const uint32_t ka = sm.stages_addr + s * 2 * kTile;
        if (boxed < KT) {  // rows boxed.. of the last tile: the keys' rows copied here, zeros past them
          for (int c = lane; c < (KT - boxed) * CH; c += 32) {
            const int key = boxed + c / CH, ch = c % CH;
            const uint32_t at = (ch / 8) * kPanel + wgmma_swizzle(key, ch % 8);
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (key < valid) {
              const int64_t j = k0 + key;
              const int64_t off = b.cache_row(j, bs_log2) * row + b.kvh * D + ch * 8;
              kv = *reinterpret_cast<const uint4*>(kc + off);
              vv = *reinterpret_cast<const uint4*>(vc + off);
            }
            *reinterpret_cast<uint4*>(ks + at) = kv;
            *reinterpret_cast<uint4*>(ks + kTile + at) = vv;
          }
          fence_proxy_async();  // these generic stores before wgmma's reads
        }
        if (lane == 0) {
          mbar_arrive_expect_tx(full0 + 8 * s, static_cast<uint32_t>(boxed) * 128 * (D / 64) * 2);
          for (int g = 0; g < boxed; g += 16) {
            const int64_t j = k0 + g;
            const int32_t r = static_cast<int32_t>(b.cache_row(j, bs_log2));
#pragma unroll
            for (int c = 0; c < D / 64; ++c) {
              tma_load_3d(ka + c * kPanel + g * 128, &kmap, c * 64, static_cast<int32_t>(b.kvh), r, full0 + 8 * s);
              tma_load_3d(ka + kTile + c * kPanel + g * 128, &vmap, c * 64, static_cast<int32_t>(b.kvh), r, full0 + 8 * s);
            }
          }
        } else {
          mbar_arrive(full0 + 8 * s);
        }
      }
      return;
    }
  }
  setmaxnreg_inc<232>();
  const int32_t my_last = wg_last[wg], my_first = wg_first[wg];
  const uint32_t qa = sm.qs_addr + wg * (D / 64) * kQPanel;
  float o[NT][4] = {}, sc[NS][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  for (int64_t i = i0; i < ntiles; ++i) {
    const int64_t ii = i - i0;
    const int s = static_cast<int>(ii % kStages);
    mbar_wait(full0 + 8 * s, static_cast<uint32_t>((ii / kStages) & 1));
    const int64_t k0 = i * KT;
    const uint32_t ka = sm.stages_addr + s * 2 * kTile;
    if (tile_seen(k0, KT, my_last, my_first, window))  // (per warpgroup)
      wgmma_key_tile<T, D, KT>(sc, o, m, l, qa, ka, ka + kTile, k0, c0, rows, window);
    if (lane == 0) mbar_arrive(empty0 + 8 * s);
  }
  write_rows<T, NT>(o, l, rows, out + ((t0 + w * 16 + r0) * Hq + h) * D, Hq * D, c0);
#else
  __trap();  // launched only where the probe found this build's sm_90a code
#endif
}
}  // namespace

// From 64 up: the kernel rounds the scaled queries and the probabilities to the cache type (as
// FlashAttention does), which on the 16-dimension fixtures cost accuracy against the fp32 goldens
// (tiny-llama3 bf16 worst relative L2 9.39e-3 with the split-KV kernel, 1.27e-2 with this one, on an
// H200) for no speed that matters; real models' heads are 64 to 128.
bool flash_prefill_supported(int64_t D) { return D % 16 == 0 && D >= 64 && D <= 128; }

namespace {
// Whether this build's sm_90a code runs on the device (prepare_flash_prefill's probe), and whether the
// warpgroup kernel is wanted (LLMSERVE_PREFILL_WGMMA=0 or set_prefill_attention_wgmma(false): not).
std::atomic<bool> g_wgmma_runs{false};
std::atomic<bool> g_wgmma_wanted{true};
std::atomic<int> g_wgmma_keys{0};  // keys a tile; 0: prefill_wgmma_keys chooses
std::atomic<int> g_sms{0};         // the device's SMs (prepare_flash_prefill)
constexpr int64_t kShortContext = 2048;  // prefill_wgmma_keys: sequences this long or shorter are short
std::atomic<bool> g_tma_wanted{true};  // LLMSERVE_PREFILL_TMA=0 or set_prefill_attention_tma(false): not

__global__ void wgmma_probe_k(int* runs) {
#if defined(LLMSERVE_HAVE_WGMMA)
  *runs = 1;
#else
  *runs = 0;
#endif
}
}  // namespace

void prepare_flash_prefill() {
  int* d = nullptr;
  int runs = 0;
  check(cudaMalloc(&d, sizeof(int)), "flash_prefill probe");
  wgmma_probe_k<<<1, 1>>>(d);
  const cudaError_t e = cudaGetLastError();
  check(e == cudaSuccess ? cudaMemcpy(&runs, d, sizeof(int), cudaMemcpyDeviceToHost) : e, "flash_prefill probe");
  check(cudaFree(d), "flash_prefill probe");
  if (runs) {
#define ALLOW1(TI, T, D, KT)                                                                                \
  check(cudaFuncSetAttribute(flash_prefill_wgmma_k<TI, T, D, KT>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                             static_cast<int>(prefill_wgmma_smem<D, KT>())),                                  \
        "flash_prefill shared memory");
#define ALLOW_TMA(TI, T, TC, D)                                                                                \
  check(cudaFuncSetAttribute(flash_prefill_tma_k<TI, T, TC, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                             static_cast<int>(prefill_tma_smem<TC, D>())),                                   \
        "flash_prefill shared memory");
#define ALLOW(TI, T, TC) ALLOW1(TI, T, 128, 64) ALLOW1(TI, T, 128, 128) ALLOW1(TI, T, 64, 64) ALLOW1(TI, T, 64, 128) \
  ALLOW_TMA(TI, T, TC, 64) ALLOW_TMA(TI, T, TC, 128)
    ALLOW(float, __half, __half)
    ALLOW(float, __nv_bfloat16, __nv_bfloat16)
    ALLOW(__half, __half, __half)
    ALLOW(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16)
    ALLOW_TMA(float, __half, __nv_fp8_e4m3, 64)
    ALLOW_TMA(float, __half, __nv_fp8_e4m3, 128)
    ALLOW_TMA(float, __nv_bfloat16, __nv_fp8_e4m3, 64)
    ALLOW_TMA(float, __nv_bfloat16, __nv_fp8_e4m3, 128)
#undef ALLOW
#undef ALLOW1
#undef ALLOW_TMA
  }
  g_wgmma_runs.store(runs != 0);
  const char* env = std::getenv("LLMSERVE_PREFILL_WGMMA");
  if (env && std::string(env) == "0") g_wgmma_wanted.store(false);
  if (const char* e = std::getenv("LLMSERVE_PREFILL_TMA"); e && std::string(e) == "0") g_tma_wanted.store(false);
  const char* keys = std::getenv("LLMSERVE_PREFILL_KEYS");
  if (keys && (std::string(keys) == "64" || std::string(keys) == "128")) g_wgmma_keys.store(std::atoi(keys));
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "flash_prefill SMs");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "flash_prefill SMs");
  g_sms.store(sms);
}

void set_prefill_wgmma_keys(int keys) {
  if (keys != 0 && keys != 64 && keys != 128)
    check(cudaErrorInvalidValue, "set_prefill_wgmma_keys: 64 or 128 keys a tile, or 0 to choose by size");
  g_wgmma_keys.store(keys);
}

int prefill_wgmma_keys(int64_t D, int64_t blocks, int64_t max_context) {
  if (const int keys = g_wgmma_keys.load()) return keys;
  // Head size 64 with 64-key tiles fits two blocks an SM (127 registers, 65 KB of shared memory each),
  // which pays where a grid that fills both has short sequences (each block few tiles, its start and
  // end the larger share). SmolLM2's heads on an H200 (docs/performance.md), us against 128-key tiles by
  // TMA: 16 prompts of 512 tokens 32.0 / 45.6, 8 of 1,024 47.9 / 58.7, 4 of 2,048 80.2 / 87.1, but one
  // of 4,096 110.5 / 77.8 and one of 8,192 269.1 / 252.6.
  return D == 64 && blocks >= 2 * static_cast<int64_t>(g_sms.load()) && max_context <= kShortContext ? 64 : 128;
}

void set_prefill_attention_wgmma(bool on) { g_wgmma_wanted.store(on); }
void set_prefill_attention_tma(bool on) { g_tma_wanted.store(on); }

bool prefill_attention_wgmma(int64_t D) {
  return (D == 128 || D == 64) && g_wgmma_runs.load() && g_wgmma_wanted.load();
}

template <typename TI, typename TC, typename T>
void flash_prefill(const TI* q, const TC* k_cache, const TC* v_cache, const int32_t* block_tables, int64_t max_blocks,
                   const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t num_tiles,
                   int64_t n, int64_t Hq, int64_t Hk, int64_t D, int64_t block_size, int64_t cache_blocks,
                   int64_t max_context, float scale, int64_t window64, T* out, cudaStream_t s) {
  if (num_tiles == 0) return;
  const int window = static_cast<int>(std::min<int64_t>(window64, INT_MAX));
  if (!flash_prefill_supported(D)) check(cudaErrorInvalidValue, "flash_prefill: head_dim must be a multiple of 16, 64 to 128");
  const int bs_log2 = block_size_log2(block_size, "flash_prefill");
  // Heads along x: the blocks of one tile start together (a KV head's tiles are read by its query
  // heads at about the same time) and the tiles go out heaviest first (flash_prefill_tiles).
  const dim3 grid(static_cast<unsigned>(Hq), static_cast<unsigned>(num_tiles));
  // The warpgroup kernel reads the queries 8 elements at a time (rows are D elements, a multiple of 8,
  // so only the base can be misaligned; the mma.sync kernel takes such a view).
  if constexpr (sizeof(TC) == 1) {
    // E4M3 caches: the warp-specialized kernel whose producer widens the tiles (any block size; no
    // tensor maps: it copies by cp.async), else the mma.sync kernel, which widens its tiles in shared
    // memory too.
    if (prefill_attention_wgmma(D) && g_tma_wanted.load() && vec_ok(q, 8, sizeof(TI))) {
      auto fp8 = [&](auto d) {
        constexpr int Dc = decltype(d)::value;
        const CUtensorMap none{};
        launch("flash_prefill (fp8, warp-specialized)", flash_prefill_tma_k<TI, T, TC, Dc>, grid, kTmaThreads,
               prefill_tma_smem<TC, Dc>(), s, none, none, k_cache, v_cache, q, block_tables, max_blocks, token_seq,
               positions, tiles, n, Hq, Hk, bs_log2, scale, window, out);
      };
      return D == 64 ? fp8(std::integral_constant<int, 64>{}) : fp8(std::integral_constant<int, 128>{});
    }
  } else {
    if (prefill_attention_wgmma(D) && vec_ok(q, 8, sizeof(TI))) {
      auto run = [&](auto d, auto kt) {
        constexpr int Dc = decltype(d)::value, KT = decltype(kt)::value;
        launch("flash_prefill (wgmma)", flash_prefill_wgmma_k<TI, T, Dc, KT>, grid, kThreads,
               prefill_wgmma_smem<Dc, KT>(), s, q, k_cache, v_cache, block_tables, max_blocks, token_seq, positions,
               tiles, n, Hq, Hk, bs_log2, scale, window, out);
      };
      using I64 = std::integral_constant<int, 64>;
      using I128 = std::integral_constant<int, 128>;
      const bool k128 = prefill_wgmma_keys(D, Hq * num_tiles, max_context) == 128;
      // (A box's row coordinate is a signed 32-bit number.)
      if (k128 && block_size >= 16 && cache_blocks * block_size <= INT_MAX && g_tma_wanted.load()) {
        const CUtensorMap km = cache_rows_map(k_cache, cache_blocks * block_size, Hk, D, 16);
        const CUtensorMap vm = cache_rows_map(v_cache, cache_blocks * block_size, Hk, D, 16);
        auto tma = [&](auto d) {
          constexpr int Dc = decltype(d)::value;
          launch("flash_prefill (TMA)", flash_prefill_tma_k<TI, T, TC, Dc>, grid, kTmaThreads, prefill_tma_smem<TC, Dc>(),
                 s, km, vm, k_cache, v_cache, q, block_tables, max_blocks, token_seq, positions, tiles, n, Hq, Hk,
                 bs_log2, scale, window, out);
        };
        return D == 64 ? tma(std::integral_constant<int, 64>{}) : tma(std::integral_constant<int, 128>{});
      }
      if (D == 64) return k128 ? run(I64{}, I128{}) : run(I64{}, I64{});
      return k128 ? run(I128{}, I128{}) : run(I128{}, I64{});
    }
  }
  auto run = [&](auto d) {
    constexpr int Dc = decltype(d)::value;
    auto k = flash_prefill_k<TI, T, TC, Dc>;
    constexpr size_t smem = prefill_smem<TC, Dc>();
    static const bool opted = [&] {  // above the default 48 KB at 128 head dimensions
      check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "flash_prefill shared memory");
      return true;
    }();
    (void)opted;
    launch("flash_prefill", k, grid, kThreads, smem, s, q, k_cache, v_cache, block_tables, max_blocks, token_seq,
           positions, tiles, n, Hq, Hk, bs_log2, scale, window, out);
  };
  switch (D) {
    case 64: return run(std::integral_constant<int, 64>{});
    case 80: return run(std::integral_constant<int, 80>{});
    case 96: return run(std::integral_constant<int, 96>{});
    case 112: return run(std::integral_constant<int, 112>{});
    default: return run(std::integral_constant<int, 128>{});
  }
}

std::vector<int32_t> flash_prefill_tiles(const std::vector<int32_t>& q_start, const std::vector<int32_t>& positions) {
  std::vector<int32_t> tiles, keys;  // a tile's work: the keys its last row sees
  for (size_t s = 0; s + 1 < q_start.size(); ++s)
    for (int32_t t = q_start[s]; t < q_start[s + 1]; t += kRows) {
      tiles.push_back(t);
      keys.push_back(positions[std::min(t + kRows, q_start[s + 1]) - 1] + 1);
    }
  std::vector<size_t> order(tiles.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] > keys[b]; });
  std::vector<int32_t> sorted(tiles.size());
  for (size_t i = 0; i < order.size(); ++i) sorted[i] = tiles[order[i]];
  return sorted;
}

// 16 codes a thread at a time, grid-striding over the blocks' units of 16.
template <typename T>
__global__ void widen_kv_blocks_k(const uint4* kc, const uint4* vc, const int32_t* blocks, int64_t total, int64_t per_block,
                                  uint4* ko, uint4* vo) {
  pdl_enter();
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < total;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t src = static_cast<int64_t>(blocks[u / per_block]) * per_block + u % per_block;
    const uint4 k = kc[src], v = vc[src];
    ko[2 * u] = widen_fp8<T>(make_uint2(k.x, k.y));
    ko[2 * u + 1] = widen_fp8<T>(make_uint2(k.z, k.w));
    vo[2 * u] = widen_fp8<T>(make_uint2(v.x, v.y));
    vo[2 * u + 1] = widen_fp8<T>(make_uint2(v.z, v.w));
  }
}

template <typename T>
void widen_kv_blocks(const __nv_fp8_e4m3* k_cache, const __nv_fp8_e4m3* v_cache, const int32_t* blocks, int64_t count,
                     int64_t block_codes, T* k_out, T* v_out, cudaStream_t s) {
  if (count == 0) return;
  if (block_codes % 16 != 0) check(cudaErrorInvalidValue, "widen_kv_blocks: blocks of whole 16-code units");
  const int64_t per_block = block_codes / 16, total = count * per_block;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 8192));
  launch("widen_kv_blocks", widen_kv_blocks_k<T>, dim3(grid), dim3(256), 0, s, reinterpret_cast<const uint4*>(k_cache),
         reinterpret_cast<const uint4*>(v_cache), blocks, total, per_block, reinterpret_cast<uint4*>(k_out),
         reinterpret_cast<uint4*>(v_out));
}
#define WIDEN(T)                                                                                                   \
  template void widen_kv_blocks<T>(const __nv_fp8_e4m3*, const __nv_fp8_e4m3*, const int32_t*, int64_t, int64_t, T*, \
                                   T*, cudaStream_t);
LLMSERVE_FOR_EACH_HALF_TYPE(WIDEN)

#define INSTANTIATE(TI, TC, T)                                                                                    \
  template void flash_prefill<TI, TC, T>(const TI*, const TC*, const TC*, const int32_t*, int64_t, const int32_t*,  \
                                         const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                         int64_t, int64_t, int64_t, float, int64_t, T*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T, T)
#define MIXED(T) INSTANTIATE(float, T, T)
#define FP8_CACHE(T) INSTANTIATE(float, __nv_fp8_e4m3, T)  // kv_cache_dtype fp8
LLMSERVE_FOR_EACH_HALF_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(MIXED)
LLMSERVE_FOR_EACH_HALF_TYPE(FP8_CACHE)

}  // namespace llmserve::cuda
