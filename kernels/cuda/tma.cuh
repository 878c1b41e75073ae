// Hopper's tensor memory accelerator (TMA, sm_90) and the shared-memory barriers (mbarrier) that
// track its copies: a producer thread asks for a box of a tensor (cp.async.bulk.tensor: the hardware
// walks the tensor map's strides and writes the box into shared memory, 128-byte swizzled as wgmma.cuh
// reads it) and the copy's bytes complete a phase of an mbarrier that the consumers wait on.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace llmserve::cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// A barrier at shared address `bar` whose phase completes after `count` arrivals (and the bytes that
// arrivals announced with mbar_arrive_expect_tx).
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialized barriers visible to the other threads' and the async proxy's use of them (a
// block barrier follows).
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` that copies will complete on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase of parity `parity` (0, 1, 0, ... for the barrier's 1st, 2nd, 3rd phase) completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nLLMSERVE_MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LLMSERVE_MBAR_WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Copies the box at coordinates (c0, c1, c2) of the 3-D tensor `map` describes to shared address
// `dst`; the bytes complete on barrier `bar`.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int32_t c0, int32_t c1, int32_t c2,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
// A warpgroup's registers a thread: all four warps execute it; the producer warpgroup of a
// warp-specialized kernel gives registers back (dec) for its consumers to take (inc).
template <uint32_t N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
}
template <uint32_t N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
}
#endif

// A tensor map over a paged cache [rows][heads][D] of 16-bit elements (rows = blocks x block size)
// whose box is `box_rows` rows of one head's 64 elements, 128-byte swizzled. Throws where the driver
// has no cuTensorMapEncodeTiled or refuses the shape.
CUtensorMap cache_rows_map(const void* base, int64_t rows, int64_t heads, int64_t D, uint32_t box_rows);

}  // namespace llmserve::cuda
