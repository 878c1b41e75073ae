// RMSNorm (one block per row) and rotary embedding (neox layout) with the KV-cache write.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

// One block per row; V elements per thread access (vector loads and stores where aligned).
template <typename TI, typename T, int V>
__global__ void rmsnorm_k(const TI* x, const T* w, int64_t H, float eps, T* out) {
  pdl_enter();
  const TI* xr = x + blockIdx.x * H;
  float ss = 0.f;
  for (int64_t i = threadIdx.x * V; i < H; i += blockDim.x * V) {
    float v[V];
    load_vec<V>(xr + i, v);
#pragma unroll
    for (int j = 0; j < V; ++j) ss += v[j] * v[j];
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(H) + eps);
  T* o = out + blockIdx.x * H;
  for (int64_t i = threadIdx.x * V; i < H; i += blockDim.x * V) {
    float v[V], wv[V];
    load_vec<V>(xr + i, v);
    load_vec<V>(w + i, wv);
    // As transformers: normalize in float, round to the input's type, then scale by the weight.
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = wv[j] * to_f(from_f<TI>(v[j] * inv));
    store_vec<V>(o + i, v);
  }
}

// One warp per row of x (float32, in place).
template <typename TW>
__global__ void head_rmsnorm_k(float* x, const TW* w, int64_t n, int64_t H, float eps) {
  pdl_enter();
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= n) return;
  const int lane = threadIdx.x % 32;
  float* xr = x + row * H;
  float ss = 0.f;
  for (int64_t i = lane; i < H; i += 32) ss += xr[i] * xr[i];
  const float inv = rsqrtf(warp_sum(ss) / static_cast<float>(H) + eps);
  for (int64_t i = lane; i < H; i += 32) xr[i] = to_f(w[i]) * (xr[i] * inv);
}

// One thread per (token, head, pair i < D/2).
template <typename T>
__global__ void rope_k(T* q, T* k, const int32_t* positions, const float* inv_freq, int64_t n, int64_t Hq, int64_t Hk,
                       int64_t D) {
  pdl_enter();
  const int64_t half = D / 2;
  const int64_t total = n * (Hq + Hk) * half;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int64_t i = idx % half;
  const int64_t h = (idx / half) % (Hq + Hk);
  const int64_t t = idx / (half * (Hq + Hk));
  const float a = static_cast<float>(positions[t]) * inv_freq[i];
  float sn, cs;
  sincosf(a, &sn, &cs);
  T* v = h < Hq ? q + (t * Hq + h) * D : k + (t * Hk + (h - Hq)) * D;
  const float x1 = to_f(v[i]), x2 = to_f(v[i + half]);
  v[i] = from_f<T>(x1 * cs - x2 * sn);
  v[i + half] = from_f<T>(x2 * cs + x1 * sn);
}

template <typename TI, typename T>
__global__ void kv_write_k(const TI* k, const TI* v, const int32_t* slots, int64_t n, int64_t row, T* kc, T* vc) {
  pdl_enter();
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * row) return;
  const int64_t t = idx / row, c = idx % row;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  kc[slot * row + c] = from_f<T>(to_f(k[idx]));
  vc[slot * row + c] = from_f<T>(to_f(v[idx]));
}

}  // namespace

template <typename TI, typename T>
void rmsnorm(const TI* x, const T* w, int64_t n, int64_t H, float eps, T* out, cudaStream_t s) {
  if (n == 0) return;
  if (H % 4 == 0 && vec_ok(x, 4, sizeof(TI)) && vec_ok(w, 4, sizeof(T)) && vec_ok(out, 4, sizeof(T)))
    return launch("rmsnorm", rmsnorm_k<TI, T, 4>, static_cast<unsigned>(n), 256, 0, s, x, w, H, eps, out);
  launch("rmsnorm", rmsnorm_k<TI, T, 1>, static_cast<unsigned>(n), 256, 0, s, x, w, H, eps, out);
}

template <typename TW>
void head_rmsnorm(float* x, const TW* w, int64_t n, int64_t H, float eps, cudaStream_t s) {
  if (n == 0) return;
  launch("head_rmsnorm", head_rmsnorm_k<TW>, blocks_for(n, 8), 256, 0, s, x, w, n, H, eps);
}

template <typename T>
void rope(T* q, T* k, const int32_t* positions, const float* inv_freq, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
          cudaStream_t s) {
  const int64_t total = n * (Hq + Hk) * (D / 2);
  if (total == 0) return;
  launch("rope", rope_k<T>, blocks_for(total, 256), 256, 0, s, q, k, positions, inv_freq, n, Hq, Hk, D);
}

template <typename TI, typename T>
void kv_write(const TI* k, const TI* v, const int32_t* slot_mapping, int64_t n, int64_t Hk, int64_t D, T* k_cache,
              T* v_cache, cudaStream_t s) {
  if (n == 0) return;
  launch("kv_write", kv_write_k<TI, T>, blocks_for(n * Hk * D, 256), 256, 0, s, k, v, slot_mapping, n, Hk * D, k_cache,
         v_cache);
}

#define INSTANTIATE(T)                                                                                          \
  template void head_rmsnorm<T>(float*, const T*, int64_t, int64_t, float, cudaStream_t);                       \
  template void rmsnorm<T, T>(const T*, const T*, int64_t, int64_t, float, T*, cudaStream_t);                   \
  template void rope<T>(T*, T*, const int32_t*, const float*, int64_t, int64_t, int64_t, int64_t, cudaStream_t); \
  template void kv_write<T, T>(const T*, const T*, const int32_t*, int64_t, int64_t, int64_t, T*, T*, cudaStream_t);
LLMSERVE_FOR_EACH_TYPE(INSTANTIATE)
#define INSTANTIATE_MIXED(T)                                                                                  \
  template void rmsnorm<float, T>(const float*, const T*, int64_t, int64_t, float, T*, cudaStream_t);          \
  template void kv_write<float, T>(const float*, const float*, const int32_t*, int64_t, int64_t, int64_t, T*, T*, cudaStream_t);
LLMSERVE_FOR_EACH_HALF_TYPE(INSTANTIATE_MIXED)
// kv_cache_dtype fp8: float32 keys and values into E4M3 codes.
template void kv_write<float, __nv_fp8_e4m3>(const float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                             __nv_fp8_e4m3*, __nv_fp8_e4m3*, cudaStream_t);

}  // namespace llmserve::cuda
