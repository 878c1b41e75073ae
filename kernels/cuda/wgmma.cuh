// Hopper's warpgroup MMA (wgmma, sm_90a) for the attention kernels: products of a 64-row A, held in
// registers (each warp of the warpgroup its 16 rows, in mma.m16n8k16's A fragment layout) or read from
// shared memory, and a B read from shared memory, both through matrix descriptors, accumulated in
// float32 registers laid out as mma.m16n8's C fragments: d[j][e] is row lane / 4 (+ 8 for e >= 2) of
// the warp's 16, column 8 j + 2 (lane % 4) + (e & 1). So the FlashAttention-2 register code
// (online_softmax, P packed as the next A) serves both kinds of kernel.
//
// Shared-memory operands use the 128-byte swizzle: a 1,024-byte-aligned atom of 8 lines of 128 bytes,
// the 16-byte chunk c of line r stored at chunk c ^ (r % 8) (wgmma_swizzle). A tile of 64-element
// panels (64 elements = one 128-byte line) is read either K-major (each line one row of A or of B, i.e.
// one m or n, with 64 consecutive k; a step of 8 lines is 1,024 bytes) or N-major (each line one k with
// 64 consecutive n; the panels of further n are `panel` bytes apart).
//
// A loop-invariant register A operand is best avoided: CUDA 13.0's ptxas allocated the next product's
// register A fragments onto such registers (flash_prefill.cu), so A that lives across products goes
// through shared memory (wgmma_ss).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace llmserve::cuda {

// Byte offset of 16-byte chunk c (0-7) of line r in a 128-byte-swizzled atom run.
__host__ __device__ constexpr uint32_t wgmma_swizzle(uint32_t r, uint32_t c) { return r * 128 + ((c ^ (r & 7)) << 4); }

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LLMSERVE_HAVE_WGMMA 1

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Orders this thread's completed generic-proxy writes to shared memory (cp.async) before later
// async-proxy reads (wgmma) of them; a barrier after it makes every thread's visible.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Descriptor of a 128-byte-swizzled operand at shared address `addr`: K-major (lbo unused, sbo 1,024:
// the next 8 rows) or N-major (lbo: the next 64 n, sbo 1,024: the next 8 k).
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

// One wgmma: d (+)= A B for 64 rows and N ("64" or "128") columns of float32 accumulators, N / 2 a
// thread as operands %0 ..; TAIL the instruction's other operands (numbered after the accumulators),
// PRED the operand number of scale_d (0: d's previous contents are ignored); OUTS the accumulators'
// constraint list, the rest the inputs'.
#define LLMSERVE_WGMMA(TY, N, ACC, PRED, TAIL, OUTS, ...)                                                           \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\nwgmma.mma_async.sync.aligned.m64n" N "k16.f32." TY "." \
               TY " " ACC ", " TAIL ";\n}\n"                                                                      \
               : OUTS                                                                                              \
               : __VA_ARGS__)
#define LLMSERVE_WGMMA_ACC32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LLMSERVE_WGMMA_ACC64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LLMSERVE_WGMMA_OUT_N64 \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
  "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
  "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
  "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define LLMSERVE_WGMMA_OUT_N128 LLMSERVE_WGMMA_OUT_N64, \
  "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
  "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
  "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
  "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])

// BODY("bf16") or BODY("f16") by the element type T.
#define LLMSERVE_WGMMA_BY_TYPE(BODY)                         \
  if constexpr (std::is_same_v<T, __nv_bfloat16>) BODY("bf16"); \
  else BODY("f16")

// d (+)= A B for A in registers (a: this thread's fragment of its warp's 16 x 16 slice), B through
// `desc` (kTransB: N-major, else K-major).
template <typename T, bool kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[8][4], const unsigned (&a)[4], uint64_t desc, int scale_d) {
#define LLMSERVE_BODY(TY)                                                                                     \
  LLMSERVE_WGMMA(TY, "64", LLMSERVE_WGMMA_ACC32, "%37", "{%32, %33, %34, %35}, %36, p, 1, 1, %38",            \
                 LLMSERVE_WGMMA_OUT_N64, "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), \
                 "n"(kTransB))
  LLMSERVE_WGMMA_BY_TYPE(LLMSERVE_BODY);
#undef LLMSERVE_BODY
}
template <typename T, bool kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[16][4], const unsigned (&a)[4], uint64_t desc, int scale_d) {
#define LLMSERVE_BODY(TY)                                                                                      \
  LLMSERVE_WGMMA(TY, "128", LLMSERVE_WGMMA_ACC64, "%69", "{%64, %65, %66, %67}, %68, p, 1, 1, %70",            \
                 LLMSERVE_WGMMA_OUT_N128, "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), \
                 "n"(kTransB))
  LLMSERVE_WGMMA_BY_TYPE(LLMSERVE_BODY);
#undef LLMSERVE_BODY
}

// d (+)= A B with both operands in shared memory, both K-major (A through `adesc`: 64 rows of 16 k).
template <typename T>
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t adesc, uint64_t bdesc, int scale_d) {
#define LLMSERVE_BODY(TY)                                                                       \
  LLMSERVE_WGMMA(TY, "64", LLMSERVE_WGMMA_ACC32, "%34", "%32, %33, p, 1, 1, 0, 0", LLMSERVE_WGMMA_OUT_N64, \
                 "l"(adesc), "l"(bdesc), "r"(scale_d))
  LLMSERVE_WGMMA_BY_TYPE(LLMSERVE_BODY);
#undef LLMSERVE_BODY
}
template <typename T>
__device__ __forceinline__ void wgmma_ss(float (&d)[16][4], uint64_t adesc, uint64_t bdesc, int scale_d) {
#define LLMSERVE_BODY(TY)                                                                         \
  LLMSERVE_WGMMA(TY, "128", LLMSERVE_WGMMA_ACC64, "%66", "%64, %65, p, 1, 1, 0, 0", LLMSERVE_WGMMA_OUT_N128, \
                 "l"(adesc), "l"(bdesc), "r"(scale_d))
  LLMSERVE_WGMMA_BY_TYPE(LLMSERVE_BODY);
#undef LLMSERVE_BODY
}
#undef LLMSERVE_WGMMA
#undef LLMSERVE_WGMMA_BY_TYPE
#undef LLMSERVE_WGMMA_ACC32
#undef LLMSERVE_WGMMA_ACC64
#undef LLMSERVE_WGMMA_OUT_N64
#undef LLMSERVE_WGMMA_OUT_N128
#endif

}  // namespace llmserve::cuda
