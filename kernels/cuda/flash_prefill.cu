// Prefill attention on tensor cores, flash-attention style (the CPU counterpart is the same
// kernels/cpu attention as for paged_attention: the token at position p attends to positions 0..p of
// its sequence, over the paged KV cache that already holds this step's keys and values).
//
// One thread block per (tile of up to 64 query tokens of one sequence, query head); 4 warps, each
// owning 16 query rows. Keys and values stream through shared memory in tiles of 64 rows gathered
// from the paged cache; S = Q K^T and O += P V run as 16x16x16 WMMA products with float32
// accumulation; the online softmax (running max and sum per row, causal mask by position) runs on the
// float32 scores in shared memory, and P is rounded to the cache type for the second product, as
// flash attention does. Query rows are scaled and rounded to the cache type once. Handles chunked
// prefill (queries at positions after cached keys) and variable-length batches; for 16-bit caches
// and head_dim a multiple of 16 up to 128 (the caller falls back to paged_attention otherwise).
#include <mma.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

using namespace nvcuda;

constexpr int kRows = 64;   // query rows per block
constexpr int kKeys = 64;   // keys per tile
constexpr int kWarps = 4;   // 16 rows each
constexpr int kThreads = kWarps * 32;

struct Layout {  // shared-memory layout for head_dim D (leading dimensions padded against bank conflicts)
  int64_t ldq, lds, ldp, ldo, bytes;
  explicit __host__ __device__ Layout(int64_t D)
      : ldq(D + 8), lds(kKeys + 4), ldp(kKeys + 8), ldo(D + 4),
        bytes((3 * kRows * (D + 8) + kRows * (kKeys + 8)) * 2 + (kRows * (kKeys + 4) + kRows * (D + 4) + 2 * kRows) * 4) {}
};

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// c += A B over `steps` 16-wide slices: A row-major 16 x 16 tiles at a + i * a_step (leading dimension
// lda), B tiles in layout LB at b + i * b_step (leading dimension ldb).
template <typename T, typename LB>
__device__ __forceinline__ void mma_steps(Acc& c, const T* a, int64_t lda, int64_t a_step, const T* b, int64_t ldb,
                                          int64_t b_step, int64_t steps) {
  for (int64_t i = 0; i < steps; ++i) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
    wmma::load_matrix_sync(fa, a + i * a_step, static_cast<unsigned>(lda));
    wmma::load_matrix_sync(fb, b + i * b_step, static_cast<unsigned>(ldb));
    wmma::mma_sync(c, fa, fb, c);
  }
}

template <typename TI, typename T>
__global__ void __launch_bounds__(kThreads)
    flash_prefill_k(const TI* q, const T* kc, const T* vc, const int32_t* tables, int64_t max_blocks,
                    const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t n, int64_t Hq,
                    int64_t Hk, int64_t D, int64_t bs, float scale, T* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout L(D);
  T* Qs = reinterpret_cast<T*>(smem);                       // [kRows][ldq]
  T* Ks = Qs + kRows * L.ldq;                                // [kKeys][ldq]
  T* Vs = Ks + kKeys * L.ldq;                                // [kKeys][ldq]
  T* Ps = Vs + kKeys * L.ldq;                                // [kRows][ldp]
  float* Ss = reinterpret_cast<float*>(Ps + kRows * L.ldp);  // [kRows][lds]
  float* Os = Ss + kRows * L.lds;                            // [kRows][ldo]
  float* row_m = Os + kRows * L.ldo;
  float* row_l = row_m + kRows;
  __shared__ int64_t kslot[kKeys];
  __shared__ int32_t qpos[kRows];
  __shared__ int32_t max_pos;

  pdl_enter();
  const int64_t t0 = tiles[blockIdx.x], h = blockIdx.y, kvh = h / (Hq / Hk);
  const int32_t seq = token_seq[t0];
  const int tid = threadIdx.x, w = tid / 32, lane = tid & 31;
  const int32_t* table = tables + static_cast<int64_t>(seq) * max_blocks;
  if (tid == 0) max_pos = -1;
  __syncthreads();
  for (int r = tid; r < kRows; r += kThreads) {
    const int64_t t = t0 + r;
    const int32_t p = (t < n && token_seq[t] == seq) ? positions[t] : -1;  // -1: not a row of this tile
    qpos[r] = p;
    row_m[r] = -INFINITY;
    row_l[r] = 0.f;
    atomicMax(&max_pos, p);
  }
  __syncthreads();
  for (int64_t i = tid; i < kRows * D; i += kThreads) {
    const int64_t r = i / D, d = i % D;
    Qs[r * L.ldq + d] = from_f<T>(qpos[r] >= 0 ? to_f(q[((t0 + r) * Hq + h) * D + d]) * scale : 0.f);
    Os[r * L.ldo + d] = 0.f;
  }
  const int64_t nkeys = static_cast<int64_t>(max_pos) + 1, chunks = D * static_cast<int64_t>(sizeof(T)) / 16;
  for (int64_t k0 = 0; k0 < nkeys; k0 += kKeys) {
    for (int j = tid; j < kKeys; j += kThreads) {
      const int64_t kp = k0 + j;
      kslot[j] = kp < nkeys ? static_cast<int64_t>(table[kp / bs]) * bs + kp % bs : -1;
    }
    __syncthreads();
    for (int64_t i = tid; i < kKeys * chunks; i += kThreads) {
      const int64_t j = i / chunks, c = i % chunks;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (kslot[j] >= 0) {
        const int64_t off = kslot[j] * Hk * D + kvh * D;
        kv = reinterpret_cast<const uint4*>(kc + off)[c];
        vv = reinterpret_cast<const uint4*>(vc + off)[c];
      }
      reinterpret_cast<uint4*>(Ks + j * L.ldq)[c] = kv;
      reinterpret_cast<uint4*>(Vs + j * L.ldq)[c] = vv;
    }
    __syncthreads();
    // S = Q K^T for this warp's 16 rows.
    for (int nt = 0; nt < kKeys / 16; ++nt) {
      Acc s;
      wmma::fill_fragment(s, 0.f);
      mma_steps<T, wmma::col_major>(s, Qs + (w * 16) * L.ldq, L.ldq, 16, Ks + (nt * 16) * L.ldq, L.ldq, 16, D / 16);
      wmma::store_matrix_sync(Ss + (w * 16) * L.lds + nt * 16, s, static_cast<unsigned>(L.lds), wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax: two lanes per row, 32 columns each.
    {
      const int r = w * 16 + lane / 2, half = lane & 1;
      const int32_t qp = qpos[r];
      float* srow = Ss + r * L.lds;
      float mx = -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const float v = (qp >= 0 && k0 + c <= qp) ? srow[c] : -INFINITY;
        srow[c] = v;
        mx = fmaxf(mx, v);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = row_m[r], m_new = fmaxf(m_old, mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
      const float corr = __expf(m_old - base);
      float sum = 0.f;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const float p = __expf(srow[c] - base);
        sum += p;
        Ps[r * L.ldp + c] = from_f<T>(p);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      float* orow = Os + r * L.ldo;
      for (int64_t d = half; d < D; d += 2) orow[d] *= corr;
      __syncwarp();
      if (half == 0) {
        row_m[r] = m_new;
        row_l[r] = row_l[r] * corr + sum;
      }
    }
    __syncwarp();
    // O += P V for this warp's rows.
    for (int64_t nt = 0; nt < D / 16; ++nt) {
      Acc o;
      wmma::load_matrix_sync(o, Os + (w * 16) * L.ldo + nt * 16, static_cast<unsigned>(L.ldo), wmma::mem_row_major);
      mma_steps<T, wmma::row_major>(o, Ps + (w * 16) * L.ldp, L.ldp, 16, Vs + nt * 16, L.ldq, 16 * L.ldq, kKeys / 16);
      wmma::store_matrix_sync(Os + (w * 16) * L.ldo + nt * 16, o, static_cast<unsigned>(L.ldo), wmma::mem_row_major);
    }
    __syncthreads();  // the next tile overwrites the keys, values and slots
  }
  for (int64_t i = tid; i < kRows * D; i += kThreads) {
    const int64_t r = i / D, d = i % D;
    if (qpos[r] >= 0) out[((t0 + r) * Hq + h) * D + d] = from_f<T>(Os[r * L.ldo + d] / row_l[r]);
  }
}

}  // namespace

bool flash_prefill_supported(int64_t D) { return D % 16 == 0 && D <= 128; }

template <typename TI, typename T>
void flash_prefill(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                   const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t num_tiles,
                   int64_t n, int64_t Hq, int64_t Hk, int64_t D, int64_t block_size, float scale, T* out, cudaStream_t s) {
  if (num_tiles == 0) return;
  if (!flash_prefill_supported(D)) check(cudaErrorInvalidValue, "flash_prefill: head_dim must be a multiple of 16, at most 128");
  const Layout L(D);
  // About 110 KB of shared memory at 128 head dimensions: above the default 48 KB, so opt in.
  check(cudaFuncSetAttribute(flash_prefill_k<TI, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(L.bytes)),
        "flash_prefill shared memory");
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(Hq));
  launch("flash_prefill", flash_prefill_k<TI, T>, grid, kThreads, static_cast<size_t>(L.bytes), s, q, k_cache, v_cache,
         block_tables, max_blocks, token_seq, positions, tiles, n, Hq, Hk, D, block_size, scale, out);
}

std::vector<int32_t> flash_prefill_tiles(const std::vector<int32_t>& q_start) {
  std::vector<int32_t> tiles;
  for (size_t s = 0; s + 1 < q_start.size(); ++s)
    for (int32_t t = q_start[s]; t < q_start[s + 1]; t += kRows) tiles.push_back(t);
  return tiles;
}

#define INSTANTIATE(TI, T)                                                                                        \
  template void flash_prefill<TI, T>(const TI*, const T*, const T*, const int32_t*, int64_t, const int32_t*,      \
                                     const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                     int64_t, float, T*, cudaStream_t);
#define SAME(T) INSTANTIATE(T, T)
#define MIXED(T) INSTANTIATE(float, T)
LLMSERVE_FOR_EACH_HALF_TYPE(SAME)
LLMSERVE_FOR_EACH_HALF_TYPE(MIXED)

}  // namespace llmserve::cuda
