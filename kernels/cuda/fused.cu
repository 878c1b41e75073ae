// Fused kernels of a decoder layer (each the composition of CPU kernels it replaces; see the defaults in
// src/backend/backend.h): residual add + RMSNorm, RoPE + KV-cache write, and for a few tokens the
// three attention projections in one launch and gate/up projections with SiLU-and-multiply.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/row_dot.cuh"

namespace llmserve::cuda {
namespace {

// x (float32 residual) += y; out = rmsnorm(x) * w, one block per row, the row and the weights held in
// registers (PER elements per thread): every load is issued up front, so a decode step's row costs one
// memory round trip instead of three.
constexpr int kNormThreads = 256;

template <typename T, int PER>
__global__ void __launch_bounds__(kNormThreads)
    add_rmsnorm_reg_k(float* x, const float* y, const T* w, int64_t H, float eps, T* out) {
  float* xr = x + blockIdx.x * H;
  const float* yr = y + blockIdx.x * H;
  float v[PER], wv[PER], ss = 0.f;
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(r) * kNormThreads;
    wv[r] = i < H ? to_f(w[i]) : 0.f;
  }
  pdl_enter();
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(r) * kNormThreads;
    v[r] = i < H ? xr[i] + yr[i] : 0.f;
  }
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(r) * kNormThreads;
    ss += v[r] * v[r];
    if (i < H) xr[i] = v[r];
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(H) + eps);
  T* o = out + blockIdx.x * H;
#pragma unroll
  for (int r = 0; r < PER; ++r) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(r) * kNormThreads;
    if (i < H) o[i] = from_f<T>(wv[r] * (v[r] * inv));
  }
}

// The same for rows too long for registers.
template <typename T>
__global__ void add_rmsnorm_k(float* x, const float* y, const T* w, int64_t H, float eps, T* out) {
  pdl_enter();
  float* xr = x + blockIdx.x * H;
  const float* yr = y + blockIdx.x * H;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) {
    const float v = xr[i] + yr[i];
    xr[i] = v;
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(H) + eps);
  T* o = out + blockIdx.x * H;
  for (int64_t i = threadIdx.x; i < H; i += blockDim.x) o[i] = from_f<T>(to_f(w[i]) * (xr[i] * inv));
}

// One thread per (token, head of q then k, rotation pair): q rotated in place; k rotated and, with v,
// written to the caches at the token's slot (k itself is left as it was).
template <typename T>
__global__ void rope_kv_k(float* q, const float* k, const float* v, const int32_t* positions, const float* inv_freq,
                          const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* kc, T* vc) {
  pdl_enter();
  const int64_t half = D / 2;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * (Hq + Hk) * half) return;
  const int64_t i = idx % half, h = (idx / half) % (Hq + Hk), t = idx / (half * (Hq + Hk));
  const float a = static_cast<float>(positions[t]) * inv_freq[i];
  float sn, cs;
  sincosf(a, &sn, &cs);
  if (h < Hq) {
    float* r = q + (t * Hq + h) * D;
    const float x1 = r[i], x2 = r[i + half];
    r[i] = x1 * cs - x2 * sn;
    r[i + half] = x2 * cs + x1 * sn;
    return;
  }
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const int64_t kh = h - Hq, src = (t * Hk + kh) * D, dst = (slot * Hk + kh) * D;
  const float x1 = k[src + i], x2 = k[src + i + half];
  kc[dst + i] = from_f<T>(x1 * cs - x2 * sn);
  kc[dst + i + half] = from_f<T>(x2 * cs + x1 * sn);
  vc[dst + i] = from_f<T>(v[src + i]);
  vc[dst + i + half] = from_f<T>(v[src + i + half]);
}

constexpr int kWarpsPerBlock = 8;

// Three projections of x in one grid: warps over the rows of wq, then wk, then wv; float32 outputs.
template <typename T, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    qkv_k(const T* x, int64_t K, Gemv3 g) {
  int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  int j = 0;
  while (j < 3 && r >= g.n[j]) r -= g.n[j++];
  if (j == 3) return;
  float acc[1][M];
  const T* const rows[1] = {static_cast<const T*>(g.w[j]) + r * K};
  row_dot_enter<T, M, 1>(x, rows, K, lane, acc);
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) g.out[j][m * g.n[j] + r] = acc[0][m] + (g.bias[j] ? g.bias[j][r] : 0.f);
  }
}

// act[m, n] = silu(x[m] . wg[n]) * (x[m] . wu[n]), one warp per n.
template <typename T, int M>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gate_up_silu_k(const T* x, const T* wg, const T* wu, int64_t K, int64_t N, T* act) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  float gu[2][M];
  const T* const rows[2] = {wg + n * K, wu + n * K};
  row_dot_enter<T, M, 2>(x, rows, K, lane, gu);
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) act[m * N + n] = from_f<T>(gu[0][m] / (1.f + __expf(-gu[0][m])) * gu[1][m]);
  }
}

}  // namespace

template <typename T>
void add_rmsnorm(float* x, const float* y, const T* w, int64_t n, int64_t H, float eps, T* out, cudaStream_t s) {
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(n);
  if (H <= 4 * kNormThreads)
    launch("add_rmsnorm", add_rmsnorm_reg_k<T, 4>, blocks, kNormThreads, 0, s, x, y, w, H, eps, out);
  else if (H <= 8 * kNormThreads)
    launch("add_rmsnorm", add_rmsnorm_reg_k<T, 8>, blocks, kNormThreads, 0, s, x, y, w, H, eps, out);
  else if (H <= 16 * kNormThreads)
    launch("add_rmsnorm", add_rmsnorm_reg_k<T, 16>, blocks, kNormThreads, 0, s, x, y, w, H, eps, out);
  else
    launch("add_rmsnorm", add_rmsnorm_k<T>, blocks, kNormThreads, 0, s, x, y, w, H, eps, out);
}

template <typename T>
void rope_kv_write(float* q, const float* k, const float* v, const int32_t* positions, const float* inv_freq,
                   const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* k_cache, T* v_cache,
                   cudaStream_t s) {
  const int64_t total = n * (Hq + Hk) * (D / 2);
  if (total == 0) return;
  launch("rope_kv_write", rope_kv_k<T>, blocks_for(total, 256), 256, 0, s, q, k, v, positions, inv_freq, slots, n, Hq, Hk,
         D, k_cache, v_cache);
}

template <typename T>
void gemv_qkv(const T* x, int64_t M, int64_t K, const Gemv3& g, cudaStream_t s) {
  const unsigned blocks = blocks_for(g.n[0] + g.n[1] + g.n[2], kWarpsPerBlock);
  const int threads = kWarpsPerBlock * 32;
  switch (M) {
    case 1: launch("gemv_qkv", qkv_k<T, 1>, blocks, threads, 0, s, x, K, g); break;
    case 2: launch("gemv_qkv", qkv_k<T, 2>, blocks, threads, 0, s, x, K, g); break;
    case 3: launch("gemv_qkv", qkv_k<T, 3>, blocks, threads, 0, s, x, K, g); break;
    case 4: launch("gemv_qkv", qkv_k<T, 4>, blocks, threads, 0, s, x, K, g); break;
    default: check(cudaErrorInvalidValue, "gemv_qkv: more than 4 rows");
  }
}

template <typename T>
void gemv_gate_up_silu(const T* x, const T* w_gate, const T* w_up, int64_t M, int64_t K, int64_t N, T* act,
                       cudaStream_t s) {
  const unsigned blocks = blocks_for(N, kWarpsPerBlock);
  const int threads = kWarpsPerBlock * 32;
  switch (M) {
    case 1: launch("gemv_gate_up_silu", gate_up_silu_k<T, 1>, blocks, threads, 0, s, x, w_gate, w_up, K, N, act); break;
    case 2: launch("gemv_gate_up_silu", gate_up_silu_k<T, 2>, blocks, threads, 0, s, x, w_gate, w_up, K, N, act); break;
    case 3: launch("gemv_gate_up_silu", gate_up_silu_k<T, 3>, blocks, threads, 0, s, x, w_gate, w_up, K, N, act); break;
    case 4: launch("gemv_gate_up_silu", gate_up_silu_k<T, 4>, blocks, threads, 0, s, x, w_gate, w_up, K, N, act); break;
    default: check(cudaErrorInvalidValue, "gemv_gate_up_silu: more than 4 rows");
  }
}

#define INSTANTIATE(T)                                                                                              \
  template void add_rmsnorm<T>(float*, const float*, const T*, int64_t, int64_t, float, T*, cudaStream_t);          \
  template void rope_kv_write<T>(float*, const float*, const float*, const int32_t*, const float*, const int32_t*, \
                                 int64_t, int64_t, int64_t, int64_t, T*, T*, cudaStream_t);                         \
  template void gemv_qkv<T>(const T*, int64_t, int64_t, const Gemv3&, cudaStream_t);                               \
  template void gemv_gate_up_silu<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T*, cudaStream_t);
LLMSERVE_FOR_EACH_TYPE(INSTANTIATE)

}  // namespace llmserve::cuda
