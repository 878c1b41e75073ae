// CUDA kernels, each the counterpart of the CPU kernel of the same name in kernels/cpu/ops.h (same
// contracts; T is float, __half or __nv_bfloat16; arithmetic in float). Launchers take a stream and
// check the launch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/draw.h"

#include <cstdint>
#include <vector>

namespace llmserve::cuda {

void check(cudaError_t e, const char* what);

// The residual stream may be float32 while activations are bf16/fp16: embedding writes TO from a TI
// table, rmsnorm reads TI and writes TO (weights in TO), add accumulates TY into TX.
template <typename TI, typename TO>
void embedding(const TI* table, int64_t vocab_start, int64_t rows, const int32_t* ids, int64_t n, int64_t H, TO* out,
               cudaStream_t s);
template <typename TI, typename TO>
void rmsnorm(const TI* x, const TO* w, int64_t n, int64_t H, float eps, TO* out, cudaStream_t s);
template <typename TX, typename TY>
void add(TX* x, const TY* y, int64_t n, cudaStream_t s);
template <typename T>
void rope(T* q, T* k, const int32_t* positions, const float* inv_freq, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
          cudaStream_t s);
// q/k/v and gate/up may arrive in float32 (GEMM outputs kept in float32); the cache and `out` are in
// the activation type T.
template <typename TI, typename T>
void kv_write(const TI* k, const TI* v, const int32_t* slot_mapping, int64_t n, int64_t Hk, int64_t D, T* k_cache,
              T* v_cache, cudaStream_t s);
// token_seq[t]: the sequence of token t (the CPU version derives it from q_start). max_len bounds every
// token's context (position + 1) and sizes the launch (how many splits); each token cuts its own context
// into those splits on the device, so one launch shape serves every context up to max_len. `scratch`
// holds the splits' partial results: paged_attention_scratch_bytes() of device memory, allocated once.
size_t paged_attention_scratch_bytes();
template <typename TI, typename T>
void paged_attention(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, int64_t max_len, float* scratch, T* out, cudaStream_t s);
// Prefill attention on tensor cores (kernels/cuda/flash_prefill.cu): the same contract as
// paged_attention for 16-bit caches and head_dim a multiple of 16 up to 128 (flash_prefill_supported);
// `tiles` lists the first token of each tile of up to 64 query tokens of one sequence
// (flash_prefill_tiles of the step's q_start).
bool flash_prefill_supported(int64_t head_dim);
std::vector<int32_t> flash_prefill_tiles(const std::vector<int32_t>& q_start);
template <typename TI, typename T>
void flash_prefill(const TI* q, const T* k_cache, const T* v_cache, const int32_t* block_tables, int64_t max_blocks,
                   const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t num_tiles,
                   int64_t n, int64_t Hq, int64_t Hk, int64_t D, int64_t block_size, float scale, T* out, cudaStream_t s);
template <typename TI, typename T>
void silu_mul(const TI* gate, const TI* up, int64_t n, T* out, cudaStream_t s);
template <typename T>
void gather_rows(const T* x, const int32_t* rows, int64_t n, int64_t C, T* out, cudaStream_t s);
// Element conversions (weights upload as float32 and convert on the device).
template <typename T>
void from_float(const float* in, int64_t n, T* out, cudaStream_t s);
template <typename T>
void to_float(const T* in, int64_t n, float* out, cudaStream_t s);

// out[M, N] = x[M, K] . w[N, K]^T (+ bias[N], float32) for M <= 4 tokens: bandwidth-bound linear layers.
template <typename T, typename TO>
void gemv(const T* x, const T* w, const float* bias, int64_t M, int64_t K, int64_t N, TO* out, cudaStream_t s);

// Fused decoder-layer kernels (compositions of the kernels above; see Backend's defaults).
// x (float32) += y; out = rmsnorm(x) * w.
template <typename T>
void add_rmsnorm(float* x, const float* y, const T* w, int64_t n, int64_t H, float eps, T* out, cudaStream_t s);
// RoPE on q [n, Hq, D] in place; k rotated and v written into the caches at slots (k unchanged).
template <typename T>
void rope_kv_write(float* q, const float* k, const float* v, const int32_t* positions, const float* inv_freq,
                   const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* k_cache, T* v_cache,
                   cudaStream_t s);
// Up to three projections of the same M <= 4 rows in one launch (float32 outputs, optional float32 bias).
struct Gemv3 {
  const void* w[3];
  const float* bias[3];
  float* out[3];
  int64_t n[3];
};
template <typename T>
void gemv_qkv(const T* x, int64_t M, int64_t K, const Gemv3& g, cudaStream_t s);
// act[M, N] = silu(x . w_gate^T) * (x . w_up^T) for M <= 4 rows.
template <typename T>
void gemv_gate_up_silu(const T* x, const T* w_gate, const T* w_up, int64_t M, int64_t K, int64_t N, T* act,
                       cudaStream_t s);

// The sampler's draw (see kernels/cpu/ops.h draw_rows); rows, edits, best and idx are device arrays;
// `filtered`: some row has filters (RowDraw::filtered).
void draw_rows(float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               const LogitEdit* edits, int64_t num_edits, bool filtered, float* best, int32_t* idx, cudaStream_t s);

}  // namespace llmserve::cuda
