// Embedding lookup, residual add, SiLU-and-multiply, row gather and dtype conversions.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/fp8.h"

namespace llmserve::cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

bool hopper_feature(const char* env_name) {
  const char* env = std::getenv(env_name);
  if (env && std::string(env) == "0") return false;
  int dev = 0, major = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
}

bool pdl_enabled() {
  static const bool on = hopper_feature("LLMSERVE_CUDA_PDL");
  return on && pdl_held == 0;
}

thread_local int pdl_held = 0;
thread_local uint64_t launch_count = 0;
PdlHold::PdlHold() { ++pdl_held; }
PdlHold::~PdlHold() { --pdl_held; }

namespace {
template <typename TI, typename TO>
__global__ void embedding_k(const TI* table, int64_t vocab_start, int64_t rows, const int32_t* ids, int64_t n, int64_t H, TO* out) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * H) return;
  const int64_t t = i / H, h = i % H;
  const int64_t r = static_cast<int64_t>(ids[t]) - vocab_start;
  out[i] = from_f<TO>((r >= 0 && r < rows) ? to_f(table[r * H + h]) : 0.f);
}
__global__ void resolve_pending_k(int32_t* ids, int64_t n, const int32_t* drawn, int64_t drawn_n) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n || ids[i] >= 0) return;
  const int64_t r = -1 - static_cast<int64_t>(ids[i]);
  ids[i] = r < drawn_n ? drawn[r] : -1;  // (-1: no row; the embedding of an id outside the table is zero)
}
template <typename TX, typename TY>
__global__ void add_k(TX* x, const TY* y, int64_t n) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = from_f<TX>(to_f(x[i]) + to_f(y[i]));
}
// A block a row: the gate's dot product with h's row (block_sum), then the row's gated add.
template <typename T>
__global__ void add_sigmoid_gated_k(float* x, const float* y, const T* h, const T* gate, int64_t C, int64_t K) {
  pdl_enter();
  const int64_t t = blockIdx.x;
  float g = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) g += to_f(h[t * K + k]) * to_f(gate[k]);
  const float s = 1.f / (1.f + __expf(-block_sum(g)));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) x[t * C + c] += s * y[t * C + c];
}
// V elements per thread (vector loads and stores where the launcher found them aligned).
template <typename TI, typename T, int V>
__global__ void silu_mul_k(const TI* g, const TI* u, int64_t n, T* out) {
  pdl_enter();
  const int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * V;
  if (i >= n) return;
  float a[V], b[V];
  load_vec<V>(g + i, a);
  load_vec<V>(u + i, b);
#pragma unroll
  for (int j = 0; j < V; ++j) a[j] = a[j] / (1.f + __expf(-a[j])) * b[j];
  store_vec<V>(out + i, a);
}
// V consecutive elements of one row per thread.
template <typename T, int V>
__global__ void silu_mul_halves_k(const float* gu, int64_t rows, int64_t I, T* out) {
  pdl_enter();
  const int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * V;
  if (i >= rows * I) return;
  const int64_t r = i / I, c = i % I;
  float a[V], b[V];
  load_vec<V>(gu + r * 2 * I + c, a);
  load_vec<V>(gu + r * 2 * I + I + c, b);
#pragma unroll
  for (int j = 0; j < V; ++j) a[j] = a[j] / (1.f + __expf(-a[j])) * b[j];
  store_vec<V>(out + i, a);
}
template <typename T>
__global__ void gather_k(const T* x, const int32_t* rows, int64_t n, int64_t C, T* out) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * C) out[i] = x[static_cast<int64_t>(rows[i / C]) * C + i % C];
}
template <typename T>
__global__ void from_float_k(const float* in, int64_t n, T* out) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = from_f<T>(in[i]);
}
template <typename T>
__global__ void to_float_k(const T* in, int64_t n, float* out) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = to_f(in[i]);
}
// One block per row: the row's largest magnitude, its scale exponent, then the codes (kernels/fp8.h: the
// host's arithmetic, so the same bits).
template <typename TI>
__global__ void fp8_quantize_rows_k(const TI* in, int64_t cols, __nv_fp8_e4m3* codes, float* scales) {
  pdl_enter();
  const TI* row = in + blockIdx.x * cols;
  float amax = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(to_f(row[c])));
  amax = block_reduce(amax, [](float a, float b) { return fmaxf(a, b); }, 0.f);
  const int e = fp8_scale_exponent(amax);
  if (threadIdx.x == 0) scales[blockIdx.x] = fp8_pow2(e);
  unsigned char* out = reinterpret_cast<unsigned char*>(codes) + blockIdx.x * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = fp8_quantize(to_f(row[c]), e);
}
// One block per row, 16 codes a thread at a time where the row is whole 16-byte units.
template <typename T>
__global__ void fp8_dequantize_rows_k(const __nv_fp8_e4m3* codes, const float* scales, int64_t cols, T* out) {
  pdl_enter();
  const int64_t r = blockIdx.x;
  const float s = scales[r];
  const __nv_fp8_e4m3* in = codes + r * cols;
  T* o = out + r * cols;
  if (cols % 16 == 0) {
    for (int64_t c = threadIdx.x * 16; c < cols; c += blockDim.x * 16) {
      float f[16];
      unpack_weights<__nv_fp8_e4m3>(*reinterpret_cast<const uint4*>(in + c), f);
#pragma unroll
      for (int i = 0; i < 16; ++i) f[i] *= s;
      store_vec<8>(o + c, reinterpret_cast<const float(&)[8]>(f[0]));
      store_vec<8>(o + c + 8, reinterpret_cast<const float(&)[8]>(f[8]));
    }
    return;
  }
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = from_f<T>(to_f(in[c]) * s);
}
}  // namespace

template <typename TI>
void fp8_quantize_rows(const TI* in, int64_t rows, int64_t cols, __nv_fp8_e4m3* codes, float* scales, cudaStream_t s) {
  if (rows == 0) return;
  launch("fp8_quantize_rows", fp8_quantize_rows_k<TI>, static_cast<unsigned>(rows), 256, 0, s, in, cols, codes, scales);
}
template <typename T>
void fp8_dequantize_rows(const __nv_fp8_e4m3* codes, const float* scales, int64_t rows, int64_t cols, T* out,
                         cudaStream_t s) {
  if (rows * cols == 0) return;
  launch("fp8_dequantize_rows", fp8_dequantize_rows_k<T>, static_cast<unsigned>(rows), 128, 0, s, codes, scales, cols, out);
}

template <typename TI, typename TO>
void embedding(const TI* table, int64_t vocab_start, int64_t rows, const int32_t* ids, int64_t n, int64_t H, TO* out, cudaStream_t s) {
  if (n * H == 0) return;
  launch("embedding", embedding_k<TI, TO>, blocks_for(n * H, 256), 256, 0, s, table, vocab_start, rows, ids, n, H, out);
}
void resolve_pending(int32_t* ids, int64_t n, const int32_t* drawn, int64_t drawn_n, cudaStream_t s) {
  if (n == 0) return;
  launch("resolve_pending", resolve_pending_k, blocks_for(n, 256), 256, 0, s, ids, n, drawn, drawn_n);
}
template <typename TX, typename TY>
void add(TX* x, const TY* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  launch("add", add_k<TX, TY>, blocks_for(n, 256), 256, 0, s, x, y, n);
}
template <typename T>
void add_sigmoid_gated(float* x, const float* y, const T* h, const T* gate, int64_t rows, int64_t C, int64_t K,
                       cudaStream_t s) {
  if (rows * C == 0) return;
  launch("add_sigmoid_gated", add_sigmoid_gated_k<T>, static_cast<unsigned>(rows), 256, 0, s, x, y, h, gate, C, K);
}
template <typename TI, typename T>
void silu_mul(const TI* g, const TI* u, int64_t n, T* out, cudaStream_t s) {
  if (n == 0) return;
  constexpr int V = 16 / sizeof(TI);  // the prefill's float32 gate/up: 4 per thread
  if (n % V == 0 && vec_ok(g, V, sizeof(TI)) && vec_ok(u, V, sizeof(TI)) && vec_ok(out, V, sizeof(T)))
    return launch("silu_mul", silu_mul_k<TI, T, V>, blocks_for(n / V, 256), 256, 0, s, g, u, n, out);
  launch("silu_mul", silu_mul_k<TI, T, 1>, blocks_for(n, 256), 256, 0, s, g, u, n, out);
}
template <typename T>
void silu_mul_halves(const float* gu, int64_t rows, int64_t I, T* out, cudaStream_t s) {
  if (rows * I == 0) return;
  if (I % 4 == 0 && vec_ok(gu, 4, sizeof(float)) && vec_ok(out, 4, sizeof(T)))
    return launch("silu_mul_halves", silu_mul_halves_k<T, 4>, blocks_for(rows * I / 4, 256), 256, 0, s, gu, rows, I, out);
  launch("silu_mul_halves", silu_mul_halves_k<T, 1>, blocks_for(rows * I, 256), 256, 0, s, gu, rows, I, out);
}
template <typename T>
void gather_rows(const T* x, const int32_t* rows, int64_t n, int64_t C, T* out, cudaStream_t s) {
  if (n * C == 0) return;
  launch("gather_rows", gather_k<T>, blocks_for(n * C, 256), 256, 0, s, x, rows, n, C, out);
}
template <typename T>
void from_float(const float* in, int64_t n, T* out, cudaStream_t s) {
  if (n == 0) return;
  launch("from_float", from_float_k<T>, blocks_for(n, 256), 256, 0, s, in, n, out);
}
template <typename T>
void to_float(const T* in, int64_t n, float* out, cudaStream_t s) {
  if (n == 0) return;
  launch("to_float", to_float_k<T>, blocks_for(n, 256), 256, 0, s, in, n, out);
}

#define INSTANTIATE(T)                                                                                        \
  template void embedding<T, T>(const T*, int64_t, int64_t, const int32_t*, int64_t, int64_t, T*, cudaStream_t);     \
  template void add<T, T>(T*, const T*, int64_t, cudaStream_t);                                                      \
  template void silu_mul<T, T>(const T*, const T*, int64_t, T*, cudaStream_t);                                       \
  template void silu_mul_halves<T>(const float*, int64_t, int64_t, T*, cudaStream_t);                                 \
  template void add_sigmoid_gated<T>(float*, const float*, const T*, const T*, int64_t, int64_t, int64_t, cudaStream_t); \
  template void gather_rows<T>(const T*, const int32_t*, int64_t, int64_t, T*, cudaStream_t);                        \
  template void from_float<T>(const float*, int64_t, T*, cudaStream_t);                                              \
  template void to_float<T>(const T*, int64_t, float*, cudaStream_t);                                                  \
  template void fp8_dequantize_rows<T>(const __nv_fp8_e4m3*, const float*, int64_t, int64_t, T*, cudaStream_t);   \
  template void fp8_quantize_rows<T>(const T*, int64_t, int64_t, __nv_fp8_e4m3*, float*, cudaStream_t);
LLMSERVE_FOR_EACH_TYPE(INSTANTIATE)
#define INSTANTIATE_MIXED(T)                                                                                     \
  template void embedding<T, float>(const T*, int64_t, int64_t, const int32_t*, int64_t, int64_t, float*, cudaStream_t); \
  template void add<float, T>(float*, const T*, int64_t, cudaStream_t);                                          \
  template void silu_mul<float, T>(const float*, const float*, int64_t, T*, cudaStream_t);
LLMSERVE_FOR_EACH_HALF_TYPE(INSTANTIATE_MIXED)

}  // namespace llmserve::cuda
