// Warp-level tensor-core building blocks shared by the attention kernels (sm_80+ PTX): m16n8k16
// products with float32 accumulation, ldmatrix fragment loads from shared memory, cp.async copies,
// and packing two floats into a 16-bit pair. Fragment layouts are PTX's: for mma.m16n8k16, lane l
// holds rows l/4 and l/4 + 8, columns 2 (l % 4) and 2 (l % 4) + 1 of C/D (elements 0, 1 and 2, 3).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace llmserve::cuda {

template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}

// d += a . b for one m16n8k16 tile (row-major A, column-major B, fp32 C/D).
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same product when only the top 8 rows of A (and so of C/D) hold data, the bottom 8 being zero
// (a decode block's group of at most 8 query heads): a holds the top rows' fragments (A elements 0 and
// 2), d the top rows of C/D (elements 0 and 1). The bottom halves are zero registers going in and a
// discarded pair coming out, so they take no registers across calls.
template <typename T>
__device__ __forceinline__ void mma16816_top(float (&d)[2], const unsigned (&a)[2], unsigned b0, unsigned b1) {
  float x0, x1;
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%5}, {%7,%8}, "
                 "{%0,%1,%9,%9};"
                 : "+f"(d[0]), "+f"(d[1]), "=f"(x0), "=f"(x1)
                 : "r"(a[0]), "r"(0u), "r"(a[1]), "r"(b0), "r"(b1), "f"(0.f));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%5}, {%7,%8}, "
                 "{%0,%1,%9,%9};"
                 : "+f"(d[0]), "+f"(d[1]), "=f"(x0), "=f"(x1)
                 : "r"(a[0]), "r"(0u), "r"(a[1]), "r"(b0), "r"(b1), "f"(0.f));
}

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// 16 bytes global -> shared, asynchronously; bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// A warp's A fragments of a 16-row block of queries for every 16-wide k-step (KS of them): q(r, d)
// gives row r's element d (r < 16; scaled as the caller wants), rounded to T here. Lane l holds rows
// l/4 and l/4 + 8, columns 2 (l % 4) and 2 (l % 4) + 1 of each 8-wide half of the k-step.
template <typename T, int KS, typename Q>
__device__ __forceinline__ void q_fragments(unsigned (&qa)[KS][4], int lane, Q q) {
  const int r0 = lane / 4, c0 = (lane % 4) * 2;
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    const int d = k * 16 + c0;
    qa[k][0] = pack2<T>(q(r0, d), q(r0, d + 1));
    qa[k][1] = pack2<T>(q(r0 + 8, d), q(r0 + 8, d + 1));
    qa[k][2] = pack2<T>(q(r0, d + 8), q(r0, d + 9));
    qa[k][3] = pack2<T>(q(r0 + 8, d + 8), q(r0 + 8, d + 9));
  }
}

// 2^x by the SFU's one instruction (exp2f without fast math adds range handling around it); 2^-inf = 0.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// FlashAttention's online-softmax step for one half of a warp's m16 rows (hh = 0: row lane/4, C
// elements 0 and 1 of each n-tile; hh = 1: row lane/4 + 8, elements 2 and 3), over the n-tiles of
// scores sc[NS][4] already masked with -inf: the running max m and sum l advance, sc becomes the
// probabilities exp(s - m) (P, the A operand of P V), and the output accumulators o[NT][4] of those rows
// are rescaled (with OW = 2, sc and o hold the top rows' elements alone, as mma16816_top's C/D, and hh
// is 0). A row with nothing visible so far keeps m = -inf and gets zeros.
// kBase2 (FlashAttention-2's form): the scores are in base-2 units (the caller folded log2(e) into the
// query scale), so P = 2^(s - m) costs one ex2 per element; l is this lane's share of the row sum (the
// caller adds the quad's four shares once, at the end); and the rescale of o is skipped when no row of
// the warp changed its max (the common case once a row has seen its largest scores).
template <int NS, int NT, int OW, bool kBase2 = false>
__device__ __forceinline__ void online_softmax(float (&sc)[NS][OW], int hh, float& m, float& l, float (&o)[NT][OW]) {
  static_assert(OW == 4 || OW == 2, "both halves of the rows, or the top rows alone (hh = 0)");
  const int e0 = OW == 4 ? 2 * hh : 0;
  float mx = -INFINITY;
#pragma unroll
  for (int n = 0; n < NS; ++n) mx = fmaxf(mx, fmaxf(sc[n][e0], sc[n][e0 + 1]));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float mn = fmaxf(m, mx);
  const float base = mn == -INFINITY ? 0.f : mn;
  const float corr = kBase2 ? ex2_approx(m - base) : __expf(m - base);
  float sum = 0.f;
#pragma unroll
  for (int n = 0; n < NS; ++n)
#pragma unroll
    for (int e = e0; e < e0 + 2; ++e) {
      sc[n][e] = kBase2 ? ex2_approx(sc[n][e] - base) : __expf(sc[n][e] - base);
      sum += sc[n][e];
    }
  if constexpr (!kBase2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  }
  l = l * corr + sum;
  m = mn;
  if (kBase2 && !__any_sync(0xffffffffu, corr != 1.f)) return;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    o[n][e0] *= corr;
    o[n][e0 + 1] *= corr;
  }
}

}  // namespace llmserve::cuda
