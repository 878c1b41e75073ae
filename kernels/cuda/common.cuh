#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "kernels/cuda/ops.cuh"  // (kMaxNormSmem)
#include "kernels/fp8.h"

namespace llmserve::cuda {

void check(cudaError_t e, const char* what);  // throws with `what` and CUDA's message unless e is cudaSuccess

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__nv_fp8_e4m3 x) { return static_cast<float>(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
// (kv_cache_dtype fp8: the host's rounding, kernels/fp8.h, so both backends store the same codes)
template <> __device__ __forceinline__ __nv_fp8_e4m3 from_f<__nv_fp8_e4m3>(float x) {
  __nv_fp8_e4m3 c;
  c.__x = f32_to_e4m3(x);
  return c;
}
// Element i of a KV cache of type T, or of E4M3 codes where fp8 (kv_cache_dtype fp8; the fused kernels
// that write the cache take its type at run time), set to v.
template <typename T>
__device__ __forceinline__ void cache_put(void* cache, int64_t i, float v, bool fp8) {
  if (fp8)
    static_cast<__nv_fp8_e4m3*>(cache)[i] = from_f<__nv_fp8_e4m3>(v);
  else
    static_cast<T*>(cache)[i] = from_f<T>(v);
}

// 16 bytes of weights as floats: 4, 8 or 16 of them (FP8 E4M3 codes by the hardware's conversion to
// half pairs, exact).
template <typename TW>
__device__ __forceinline__ void unpack_weights(const uint4& u, float (&f)[16 / sizeof(TW)]) {
  if constexpr (std::is_same_v<TW, __nv_fp8_e4m3>) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2(p[i], __NV_E4M3));
      const float2 v = __half22float2(h);
      f[2 * i] = v.x;
      f[2 * i + 1] = v.y;
    }
  } else if constexpr (std::is_same_v<TW, __nv_bfloat16>) {
    // By 32-bit words: a pair's low half shifted up and its high half masked, two instructions a pair
    // (widening each half on its own took three: the high half moved down first, then shifted back up).
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
    const TW* e = reinterpret_cast<const TW*>(&u);
#pragma unroll
    for (int i = 0; i < 16 / static_cast<int>(sizeof(TW)); ++i) f[i] = to_f(e[i]);
  }
}

// PTX's byte permute with its sign mode: byte i of the result is byte (sel >> 4i) & 7 of {a, b} (a's bytes
// 0-3, b's 4-7), or that byte's sign bit replicated where bit 3 of the nibble is set.
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel) {
  unsigned r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}
// The selector that makes bytes b of a and of b the two 16-bit halves widen_fp8_pair takes.
__host__ __device__ constexpr unsigned fp8_pair_sel(unsigned a_byte, unsigned b_byte) {
  return a_byte | (8 | a_byte) << 4 | b_byte << 8 | (8 | b_byte) << 12;
}

// Two E4M3 codes as the pair of T (16-bit) values they stand for, exact: u holds each code in the low
// byte of its 16-bit half with the code's sign bit replicated over the high byte (prmt with
// fp8_pair_sel). A shift and a mask and one 16-bit multiply instead of the hardware's conversions (E4M3
// pair to half pair, then to float and bfloat16): the shift puts each code's 4 exponent bits at the
// bottom of T's exponent field and its 3 mantissa bits at the top of T's mantissa, the high byte's copy
// of the sign in T's sign bit, which is the code's value times 2^(7 - bias(T)), normal or subnormal alike;
// the multiply by 2^(bias(T) - 7) is exact. The NaN codes 0x7f / 0xff (only a NaN written to the cache
// makes them) read as +-480.
template <typename T>
__device__ __forceinline__ unsigned widen_fp8_pair(unsigned u) {
  unsigned r;
  if constexpr (std::is_same_v<T, __half>)
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"((u << 7) & 0xbf80bf80u), "r"(0x5c005c00u));  // x 2^8
  else  // x 2^120
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"((u << 4) & 0x87f087f0u), "r"(0x7b807b80u), "r"(0x80008000u));
  return r;
}

// The 4 E4M3 codes of w (lowest byte first) as two pairs of T: lo holds codes 0 and 1, hi codes 2 and 3.
template <typename T>
__device__ __forceinline__ void widen_fp8x4(unsigned w, unsigned& lo, unsigned& hi) {
  lo = widen_fp8_pair<T>(prmt(w, 0u, fp8_pair_sel(0, 1)));
  hi = widen_fp8_pair<T>(prmt(w, 0u, fp8_pair_sel(2, 3)));
}

// 8 FP8 E4M3 codes as the 8 values of type T (16-bit) they stand for, exact, in a 16-byte vector (the
// layout of 8 consecutive T elements).
template <typename T>
__device__ __forceinline__ uint4 widen_fp8(const uint2& codes) {
  uint4 out;
  widen_fp8x4<T>(codes.x, out.x, out.y);
  widen_fp8x4<T>(codes.y, out.z, out.w);
  return out;
}

// `rows` rows of D E4M3 codes (src_stride codes apart) widened to T (dst_stride elements apart), 8
// elements at a time by threads thread, thread + threads, ... (kv_cache_dtype fp8: a staged tile of
// codes into the 16-bit layout the attention kernels' ldmatrix reads; rows 16-byte aligned).
template <typename T, int D>
__device__ __forceinline__ void widen_rows(const __nv_fp8_e4m3* src, int src_stride, T* dst, int dst_stride, int rows,
                                           int thread, int threads) {
  for (int c = thread; c < rows * (D / 8); c += threads) {
    const int r = c / (D / 8), e = c % (D / 8) * 8;
    *reinterpret_cast<uint4*>(dst + r * dst_stride + e) =
        widen_fp8<T>(*reinterpret_cast<const uint2*>(src + r * src_stride + e));
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Reduction of v over the thread block with op (identity: op's neutral element), as a shuffle tree in
// each warp and then over the warps' results; every thread gets the result. Call from all threads of
// the block; it may be called again right away (the shared slots are released before it returns).
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, Op op, V identity) {
  __shared__ V part[32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    V w = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : identity;
    for (int o = 16; o > 0; o >>= 1) w = op(w, __shfl_xor_sync(0xffffffffu, w, o));
    if (threadIdx.x == 0) part[0] = w;
  }
  __syncthreads();
  const V r = part[0];
  __syncthreads();
  return r;
}

// Sum of v over the thread block (every thread gets it). Call from all threads of the block.
__device__ __forceinline__ float block_sum(float v) {
  return block_reduce(v, [](float a, float b) { return a + b; }, 0.f);
}

// block_sum of each of N values at once, with one barrier for all N (every warp sums the warps' partial
// sums itself, in block_reduce's order, so each result is block_sum's to the bit). Call from all threads.
template <int N>
__device__ __forceinline__ void block_sums(float (&v)[N]) {
  __shared__ float part[N][32];
  const int lane = threadIdx.x & 31, warps = (blockDim.x + 31) / 32;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    v[n] = warp_sum(v[n]);
    if (lane == 0) part[n][threadIdx.x >> 5] = v[n];
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(lane < warps ? part[n][lane] : 0.f);
  __syncthreads();  // (the slots are free again when it returns)
}

// Streaming multiprocessors of the current device (queried once).
inline int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 1;
  }();
  return sms;
}

// V consecutive elements moved as one vector access (V * sizeof(T) bytes, which the address must be
// aligned to: vec_ok checks that on the host), converted to and from float.
template <typename T, int V>
struct alignas(V * sizeof(T)) Pack {
  T v[V];
};
template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&f)[V]) {
  const Pack<T, V> k = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) f[i] = to_f(k.v[i]);
}
template <int V, typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[V]) {
  Pack<T, V> k;
#pragma unroll
  for (int i = 0; i < V; ++i) k.v[i] = from_f<T>(f[i]);
  *reinterpret_cast<Pack<T, V>*>(p) = k;
}
// Whether pointer p (to elements of `bytes` bytes) may be read V elements at a time.
inline bool vec_ok(const void* p, int V, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % (V * bytes) == 0; }

// log2 of a KV-cache block size, which the paged kernels need to be a power of two (block-table
// lookups by shift and mask); `what` names the caller in the error otherwise.
inline int block_size_log2(int64_t block_size, const char* what) {
  if (block_size <= 0 || (block_size & (block_size - 1)) != 0)
    check(cudaErrorInvalidValue, (std::string(what) + ": the KV-cache block size must be a power of two").c_str());
  return __builtin_ctzll(static_cast<unsigned long long>(block_size));
}

inline unsigned blocks_for(long long n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// compute() for `key`, run once and remembered (thread-safe): the host-side queries about kernels that
// launchers make. One table per call site (the type of compute).
template <typename Key, typename F>
auto remembered(const Key& key, F compute) {
  using V = decltype(compute());
  static std::mutex mu;
  static std::map<Key, V> known;
  std::lock_guard<std::mutex> lock(mu);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  const V v = compute();  // (if it throws, nothing is remembered)
  known.emplace(key, v);
  return v;
}

// Blocks of `threads` threads and `smem` bytes of dynamic shared memory of kernel k that the device
// holds at once (per SM times SMs; at least one per SM). The occupancy query runs once per kernel and
// launch shape, not at every launch.
template <typename Kernel>
unsigned resident_blocks(Kernel k, int threads, size_t smem) {
  return remembered(std::make_tuple(reinterpret_cast<const void*>(k), threads, smem), [&] {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, threads, smem) != cudaSuccess || per_sm < 1) per_sm = 1;
    return static_cast<unsigned>(per_sm) * static_cast<unsigned>(sm_count());
  });
}

// A kernel's static shared memory (its __shared__ arrays, as the compiler laid them out): it counts with a
// launch's dynamic shared memory against the 48 KB a block gets without opting in (kMaxNormSmem).
// Queried once per kernel.
template <typename Kernel>
size_t static_smem(Kernel k) {
  return remembered(reinterpret_cast<const void*>(k), [&] {
    cudaFuncAttributes a{};
    check(cudaFuncGetAttributes(&a, k), "cudaFuncGetAttributes");
    return static_cast<size_t>(a.sharedSizeBytes);
  });
}
// Throws ("<what>: rows too long to normalize") unless `dynamic` bytes of dynamic shared memory fit next
// to the kernel's static shared memory in kMaxNormSmem (nothing to check without dynamic shared memory).
template <typename Kernel>
void check_norm_smem(Kernel k, size_t dynamic, const char* what) {
  if (dynamic > 0 && dynamic + static_smem(k) > kMaxNormSmem)
    check(cudaErrorInvalidValue, (std::string(what) + ": rows too long to normalize").c_str());
}

// Blocks of warps_per_block warps for a GEMV of N rows streamed by warps (row_stream): a warp per row up
// to the `resident` blocks' warps; beyond that, the fewest warps that give every warp the same number
// of rows, ceil(N / resident warps) (no warp streams a row more than the others at the end).
// (Measured on an H200 against all resident blocks: the decode layer 44.4 -> 44.0 us, q_proj 2.1 -> 2.0.)
inline unsigned stream_blocks(long long N, int warps_per_block, unsigned resident) {
  const long long max_warps = static_cast<long long>(resident) * warps_per_block;
  if (N <= max_warps)
    return std::min(blocks_for(N, warps_per_block), resident);
  const long long per = (N + max_warps - 1) / max_warps, warps = (N + per - 1) / per;
  return blocks_for(warps, warps_per_block);
}

// row_stream keeps its cursors in 32-bit integers: a GEMV's rows (N) and their length (K) must stay below
// 2^31, which its launchers check here (a clear error rather than wrapped offsets).
inline void check_row_extent(int64_t K, int64_t N, const char* what) {
  if (K > INT32_MAX || N > INT32_MAX) check(cudaErrorInvalidValue, what);
}

// The rows a GEMV's warp streams (row_stream's first and stride), warps_per_block warps a block:
// block-major (warp w of block b from row warps_per_block * b + w), or dealt to the blocks round-robin
// (from row b + gridDim.x * w), so that every block, and so every SM, has the same share of the rows:
// block-major, a grid of 192 blocks on 132 SMs (the 1.5B down projection) gives 60 SMs twice the rows of
// the others. FP8 weights are dealt round-robin (their GEMVs are bound by instructions as much as by
// bytes: 1.5B fp8 decode 2-4% faster); bf16 and fp16 stay block-major (round-robin, the gate/up and o_proj
// kernels lost more than the down projection gained). performance.md's forty-first section has the figures.
__device__ __forceinline__ void gemv_rows(bool interleave, int warps_per_block, int64_t* first, int64_t* stride) {
  const int64_t b = blockIdx.x, w = threadIdx.x / 32, g = gridDim.x;
  *first = interleave ? b + g * w : b * warps_per_block + w;
  *stride = g * warps_per_block;
}
// The kernels take the choice from their weight type at compile time (as a kernel argument it cost
// registers: 1-7 a thread in most instantiations, and an 8-byte spill in the FP8 gate/up of 1-2 rows).
template <typename TW>
constexpr bool kGemvInterleave = std::is_same_v<TW, __nv_fp8_e4m3>;
// A GEMV's grid: stream_blocks block-major; dealt round-robin, the block-major count rounded up to whole
// waves of SMs (at most all resident blocks).
inline unsigned gemv_blocks(bool interleave, long long N, int warps_per_block, unsigned resident) {
  const unsigned blocks = stream_blocks(N, warps_per_block, resident);
  if (!interleave) return blocks;
  const unsigned sms = static_cast<unsigned>(sm_count());
  return std::min(resident, (blocks + sms - 1) / sms * sms);
}

// Programmatic dependent launch (compute capability 9.0 and up). Every kernel here is launched with
// launch() below, which lets it start while the kernel before it in the stream is still running, and
// calls pdl_enter() before it touches anything another kernel writes: pdl_enter waits until the
// previous grid has completed and its writes are visible, then lets the next grid launch (its blocks
// run up to their own pdl_enter). Only reads of data no kernel writes (weights) may come before it; a
// decode step's small kernels so overlap their launch and their weight loads with the previous
// kernel's tail. No-ops on older GPUs and when a grid was launched without the attribute.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The weight-streaming loops' driver (row_stream, tile_stream): `total` groups, each requested into one of
// two buffers by load(buf) and consumed by use(buf), the next group requested before the current one is
// used; the first two (weights, which no kernel writes) before pdl_enter(), after_wait() right after it.
template <typename I, typename Buf, typename Load, typename Use, typename After>
__device__ __forceinline__ void stream_two_in_flight(I total, Buf& a, Buf& b, Load& load, Use& use, After& after_wait) {
  load(a);
  load(b);
  pdl_enter();
  after_wait();
  for (I i = 0; i < total; i += 2) {
    use(a);
    load(a);
    if (i + 1 >= total) break;
    use(b);
    load(b);
  }
}

// Whether a feature of compute capability 9.0 and up is to be used: the current device has it, and the
// environment does not set env_name to 0 (for measuring what the feature brings).
bool hopper_feature(const char* env_name);
// Whether launch() asks for programmatic dependent launch: on GPUs of compute capability 9.0 and up,
// unless the environment sets LLMSERVE_CUDA_PDL=0 (for measuring what it brings), and not while this
// thread holds a PdlHold.
bool pdl_enabled();
extern thread_local int pdl_held;

// Launches kernel k (which must call pdl_enter() as described above) and checks the launch; with
// cluster > 1, in thread block clusters of `cluster` blocks along x (compute capability 9.0 and up; the
// grid's x a multiple of it).
template <typename... P, typename... A>
void launch_clusters(const char* what, void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                     unsigned cluster, A... args) {
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n++].val.clusterDim = {cluster, 1, 1};
  }
  cudaLaunchConfig_t c{};
  c.gridDim = grid;
  c.blockDim = block;
  c.dynamicSmemBytes = smem;
  c.stream = s;
  c.attrs = attr;
  c.numAttrs = n;
  check(cudaLaunchKernelEx(&c, k, static_cast<P>(args)...), what);
  ++launch_count;
}
template <typename... P, typename... A>
void launch(const char* what, void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A... args) {
  launch_clusters(what, k, grid, block, smem, s, 1, args...);
}

}  // namespace llmserve::cuda

// Instantiates X(T) for the three element types.
#define LLMSERVE_FOR_EACH_TYPE(X) X(float) X(__half) X(__nv_bfloat16)
// The 16-bit types, for the instantiations that mix them with a float32 residual stream.
#define LLMSERVE_FOR_EACH_HALF_TYPE(X) X(__half) X(__nv_bfloat16)
