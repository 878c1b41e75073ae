// LoRA updates for a step whose rows may each have a different adapter (punica's shrink and expand):
// the adapters' A and B^T matrices stacked, each row reading its own adapter's by the step's per-row
// index, so one launch serves every adapter of the step and a CUDA graph records it once.
//
// Bytes: a decode step's rows read the stacks once per row from L2 after the first; a block of kRows
// rows reads a matrix row once per adapter among them (a prompt's rows share one), so prefill re-reads
// each stack T / kRows times from L2 rather than T times.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {

namespace {

constexpr int kMaxShrinkWarps = 32, kRows = 8, kExpandThreads = 256;

// Block (c, by) computes t[r, c] for its kRows rows: its warps split the K inputs, each lane taking V
// consecutive k of every blockDim.x * V (about one run each: a decode's shrink is as many blocks as
// columns, so the width is spread over a block's warps rather than walked by one), the A chunk loaded
// once per run of rows of one adapter; the warps' partial sums meet in shared memory.
template <typename T, int V>
__global__ void lora_shrink_k(const T* x, const T* a, const int32_t* rows, int64_t n_rows, int64_t K, int64_t C, float* t) {
  pdl_enter();
  __shared__ float part[kMaxShrinkWarps][kRows];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = blockIdx.x;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kRows);
  int slot[kRows];
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    slot[r] = r0 + r < n_rows ? rows[r0 + r] : -1;
    acc[r] = 0.f;
  }
  for (int64_t k = static_cast<int64_t>(threadIdx.x) * V; k < K; k += static_cast<int64_t>(blockDim.x) * V) {
    float av[V], xv[V];
    int loaded = -1;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (slot[r] < 0) continue;
      if (slot[r] != loaded) {
        load_vec<V>(a + (slot[r] * C + c) * K + k, av);
        loaded = slot[r];
      }
      load_vec<V>(x + (r0 + r) * K + k, xv);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[r] += av[j] * xv[j];
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) part[warp][r] = v;
  }
  __syncthreads();
  const int r = threadIdx.x;
  if (r < kRows && r0 + r < n_rows) {
    float sum = 0.f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) sum += part[w][r];
    t[(r0 + r) * C + c] = slot[r] >= 0 ? sum : 0.f;
  }
}

template <typename T>
struct ExpandArgs {
  LoraOut<T> out[kMaxLoraOuts];
  int first_block[kMaxLoraOuts + 1];  // blockIdx.x where each output's columns start
  int n;
};

// Thread j of an output's column block adds, for each of the block's rows with an adapter,
// t[r, col:col+R] . Bt[slot][:, j] to out[r, j] (Bt's rows read across the threads: coalesced).
template <typename T>
__global__ void lora_expand_k(const float* t, int64_t tc, const int32_t* rows, int64_t n_rows, int64_t R, ExpandArgs<T> args) {
  pdl_enter();
  int o = 0;
  while (o + 1 < args.n && static_cast<int>(blockIdx.x) >= args.first_block[o + 1]) ++o;
  const LoraOut<T>& p = args.out[o];
  const int64_t j = (blockIdx.x - args.first_block[o]) * static_cast<int64_t>(kExpandThreads) + threadIdx.x;
  if (j >= p.N) return;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kRows);
  for (int r = 0; r < kRows && r0 + r < n_rows; ++r) {
    const int s = rows[r0 + r];
    if (s < 0) continue;
    const float* tr = t + (r0 + r) * tc + p.col;
    const T* b = p.bt + s * R * p.N + j;
    float acc = 0.f;
#pragma unroll 4
    for (int64_t i = 0; i < R; ++i) acc += tr[i] * to_f(b[i * p.N]);
    p.out[(r0 + r) * p.N + j] += acc;
  }
}

void check_rows(int64_t n_rows, const char* what) {
  if ((n_rows + kRows - 1) / kRows > 65535) throw std::runtime_error(std::string(what) + ": too many rows for one launch");
}

}  // namespace

template <typename T>
void lora_shrink(const T* x, const T* a, const int32_t* rows, int64_t n_rows, int64_t K, int64_t C, float* t, cudaStream_t s) {
  if (n_rows == 0 || C == 0) return;
  check_rows(n_rows, "lora_shrink");
  if (C > 0x7fffffff) throw std::runtime_error("lora_shrink: too many columns for one launch");
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>((n_rows + kRows - 1) / kRows));
  // A warp for each 32 V of the width, up to kMaxShrinkWarps.
  const auto threads = [&](int v) {
    return static_cast<unsigned>(32 * std::min<int64_t>(kMaxShrinkWarps, std::max<int64_t>(1, (K + 32 * v - 1) / (32 * v))));
  };
  constexpr int V = 16 / sizeof(T);  // (16-byte loads: 8 halves, 4 floats)
  if (K % V == 0 && vec_ok(x, V, sizeof(T)) && vec_ok(a, V, sizeof(T)))
    return launch("lora_shrink", lora_shrink_k<T, V>, grid, threads(V), 0, s, x, a, rows, n_rows, K, C, t);
  launch("lora_shrink", lora_shrink_k<T, 1>, grid, threads(1), 0, s, x, a, rows, n_rows, K, C, t);
}

template <typename T>
void lora_expand(const float* t, int64_t tc, const int32_t* rows, int64_t n_rows, int64_t R, const LoraOut<T>* outs, int n,
                 cudaStream_t s) {
  if (n_rows == 0 || n == 0) return;
  if (n > kMaxLoraOuts) throw std::runtime_error("lora_expand: too many outputs for one launch");
  check_rows(n_rows, "lora_expand");
  ExpandArgs<T> args{};
  args.n = n;
  for (int i = 0; i < n; ++i) {
    args.out[i] = outs[i];
    args.first_block[i + 1] = args.first_block[i] + static_cast<int>(blocks_for(outs[i].N, kExpandThreads));
  }
  if (args.first_block[n] == 0) return;
  const dim3 grid(static_cast<unsigned>(args.first_block[n]), static_cast<unsigned>((n_rows + kRows - 1) / kRows));
  launch("lora_expand", lora_expand_k<T>, grid, kExpandThreads, 0, s, t, tc, rows, n_rows, R, args);
}

#define INSTANTIATE(T)                                                                                                \
  template void lora_shrink<T>(const T*, const T*, const int32_t*, int64_t, int64_t, int64_t, float*, cudaStream_t); \
  template void lora_expand<T>(const float*, int64_t, const int32_t*, int64_t, int64_t, const LoraOut<T>*, int, cudaStream_t);
LLMSERVE_FOR_EACH_TYPE(INSTANTIATE)
#undef INSTANTIATE

}  // namespace llmserve::cuda
