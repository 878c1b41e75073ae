// LoRA updates for a step whose rows may each have a different adapter (punica's shrink and expand):
// the adapters' A and B^T matrices stacked, each row reading its own adapter's by the step's per-row
// index, so one launch serves every adapter of the step and a CUDA graph records it once.
//
// Bytes: a decode step's rows read the stacks once per row from L2 after the first; a block of kRows
// rows reads a matrix row once per adapter among them (a prompt's rows share one), so prefill re-reads
// each stack T / kRows times from L2 rather than T times.
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {

namespace {

constexpr int kMaxShrinkWarps = 32, kRows = 8, kExpandThreads = 256;

// Block (c, by) computes t[r, c] for its ROWS rows: its warps split the K inputs, each lane taking V
// consecutive k of every blockDim.x * V (about one run each: a decode's shrink is as many blocks as
// columns, so the width is spread over a block's warps rather than walked by one), the A chunk loaded
// once per run of rows of one adapter; the warps' partial sums meet in shared memory. ROWS is 1 for a
// decode's rows (the launcher's choice), else kRows: the loops over a block's rows are unrolled for all
// ROWS, and the normalizing shrink of one row in blocks of 8 issued 3.6 times the plain one's
// instructions, its blocks' few warps waiting on each one's latency (ncu, H100): 4.5 us a launch, 2.0
// with ROWS = 1.
// NORM: the input is the float32 residual stream, x [n_rows, K], and the rows shrunk are its RMSNorm
// rounded to T as rmsnorm writes it, h = T(w * (x * inv_rms)): each block first sums its rows' squares
// (a decode's few rows; lora_shrink_norm's launcher takes the unfused path for many). h_out (NORM only,
// may be null): the blocks of column 0 also write h there, every row's, those without an adapter too,
// so that a GEMM after the shrink reads it and no rmsnorm launch is needed.
template <typename T, int V, bool NORM, int ROWS>
__global__ void lora_shrink_k(const void* xin, const T* norm_w, float eps, const T* a, const int32_t* rows, int64_t n_rows,
                              int64_t K, int64_t C, float* t, T* h_out) {
  __shared__ float part[kMaxShrinkWarps][ROWS];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = static_cast<int>(blockDim.x / 32);
  const int64_t c = blockIdx.x;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(ROWS);
  const bool write_h = NORM && h_out != nullptr && c == 0;
  int slot[ROWS], first = -1;
  bool live[ROWS];  // (the row is read: it has an adapter, or this block writes its h)
  float acc[ROWS], inv[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    slot[r] = r0 + r < n_rows ? rows[r0 + r] : -1;
    live[r] = slot[r] >= 0 || (write_h && r0 + r < n_rows);
    if (first < 0) first = slot[r];
    acc[r] = 0.f;
    inv[r] = 1.f;
  }
  // The rows' adapters (uploaded before the step), the first A chunk of the first row's and the norm's
  // first weights (weights, which no kernel writes) are read before the wait: they arrive while the kernel
  // before this one finishes.
  const int64_t k0 = static_cast<int64_t>(threadIdx.x) * V;
  float a0[V], w0[V];
  if (first >= 0 && k0 < K) {
    load_vec<V>(a + (first * C + c) * K + k0, a0);
    if constexpr (NORM) load_vec<V>(norm_w + k0, w0);
  }
  pdl_enter();
  const T* x = static_cast<const T*>(xin);
  const float* xf = static_cast<const float*>(xin);
  // The block's sums of acc[r] (each warp's into shared memory, acc reset), then row r's over the warps.
  auto to_shared = [&] {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0) part[warp][r] = v;
      acc[r] = 0.f;
    }
    __syncthreads();
  };
  auto block_sum = [&](int r) {
    float sum = 0.f;
    for (int w = 0; w < warps; ++w) sum += part[w][r];
    return sum;
  };
  if constexpr (NORM) {  // inv[r] = 1 / rms(x[r0 + r]) for the rows with an adapter
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (!live[r]) continue;
      for (int64_t k = static_cast<int64_t>(threadIdx.x) * V; k < K; k += static_cast<int64_t>(blockDim.x) * V) {
        float xv[V];
        load_vec<V>(xf + (r0 + r) * K + k, xv);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[r] += xv[j] * xv[j];
      }
    }
    to_shared();
#pragma unroll
    for (int r = 0; r < ROWS; ++r) inv[r] = rsqrtf(block_sum(r) / static_cast<float>(K) + eps);
    __syncthreads();  // (part is written again below)
  }
  for (int64_t k = k0; k < K; k += static_cast<int64_t>(blockDim.x) * V) {
    float av[V], xv[V], wv[V];
    int loaded = -1;
    if (k == k0 && first >= 0) {  // (the chunks requested before the wait)
#pragma unroll
      for (int j = 0; j < V; ++j) av[j] = a0[j], wv[j] = w0[j];
      loaded = first;
    } else if constexpr (NORM) {
      load_vec<V>(norm_w + k, wv);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (!live[r]) continue;
      if (slot[r] >= 0 && slot[r] != loaded) {
        load_vec<V>(a + (slot[r] * C + c) * K + k, av);
        loaded = slot[r];
      }
      if constexpr (NORM) {
        load_vec<V>(xf + (r0 + r) * K + k, xv);
#pragma unroll
        for (int j = 0; j < V; ++j) xv[j] = to_f(from_f<T>(wv[j] * (xv[j] * inv[r])));
        if (write_h) store_vec<V>(h_out + (r0 + r) * K + k, xv);  // (exact: xv holds T values)
      } else {
        load_vec<V>(x + (r0 + r) * K + k, xv);
      }
      if (slot[r] < 0) continue;
#pragma unroll
      for (int j = 0; j < V; ++j) acc[r] += av[j] * xv[j];
    }
  }
  to_shared();
  const int r = threadIdx.x;
  if (r < ROWS && r0 + r < n_rows) t[(r0 + r) * C + c] = slot[r] >= 0 ? block_sum(r) : 0.f;
}

template <typename T>
struct ExpandArgs {
  LoraOut<T> out[kMaxLoraOuts];
  int first_block[kMaxLoraOuts + 1];  // blockIdx.x where each output's columns start
  int n;
};

// Thread j of an output's column block adds, for each of the block's `per_block` rows with an adapter,
// t[r, col:col+R] . Bt[slot][:, j] to out[r, j] (Bt's rows read across the threads: coalesced; kExpandChunk
// of them requested at once). A decode's few rows take a block each (expand_rows_per_block): a block's rows
// one after another are a chain of round trips to L2 (about 14 us at 8 rows, H100, kernel_bench --lora).
// The block's first row's adapter and up to kExpandEarly of its Bt entries (weights; the adapters were
// uploaded before the step) are requested before the wait, so that after it t and out are read at once.
// (Taking a block's rows together, their outputs read at once and Bt once per run of rows of an adapter,
// measured slower: 22 us, H200.)
constexpr int kExpandChunk = 8, kExpandEarly = 32;
template <typename T>
__global__ void lora_expand_k(const float* t, int64_t tc, const int32_t* rows, int64_t n_rows, int64_t R, int per_block,
                              ExpandArgs<T> args) {
  int o = 0;
  while (o + 1 < args.n && static_cast<int>(blockIdx.x) >= args.first_block[o + 1]) ++o;
  const LoraOut<T>& p = args.out[o];
  const int64_t j = (blockIdx.x - args.first_block[o]) * static_cast<int64_t>(kExpandThreads) + threadIdx.x;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(per_block);
  const bool early = j < p.N && R <= kExpandEarly;
  const int s0 = early ? rows[r0] : -1;
  float b0[kExpandEarly];
  if (s0 >= 0) {
    const T* b = p.bt + s0 * R * p.N + j;
#pragma unroll
    for (int u = 0; u < kExpandEarly; ++u) b0[u] = u < R ? to_f(b[u * p.N]) : 0.f;
  }
  pdl_enter();
  if (j >= p.N) return;
  for (int r = 0; r < per_block && r0 + r < n_rows; ++r) {
    const int s = r == 0 && early ? s0 : rows[r0 + r];
    if (s < 0) continue;
    const float* tr = t + (r0 + r) * tc + p.col;
    float* out = p.out + (r0 + r) * p.ld + j;
    float acc = 0.f;
    if (r == 0 && early) {
      const float prior = *out;
#pragma unroll
      for (int u = 0; u < kExpandEarly; ++u) acc += (u < R ? tr[u] : 0.f) * b0[u];
      *out = prior + acc;
      continue;
    }
    const T* b = p.bt + s * R * p.N + j;
    for (int64_t i0 = 0; i0 < R; i0 += kExpandChunk) {
      float bv[kExpandChunk], tv[kExpandChunk];
#pragma unroll
      for (int u = 0; u < kExpandChunk; ++u) {
        const bool in = i0 + u < R;
        bv[u] = in ? to_f(b[(i0 + u) * p.N]) : 0.f;
        tv[u] = in ? tr[i0 + u] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kExpandChunk; ++u) acc += tv[u] * bv[u];
    }
    *out += acc;
  }
}

// Rows a block of the expand takes: one up to 64 rows (a decode's), else kRows
// (LLMSERVE_LORA_EXPAND_ROWS=1..8 forces that many, for benchmarks; other values are ignored, as the CUDA
// backend's start-up warning says).
int expand_rows_per_block(int64_t n_rows) {
  static_assert(kRows == 8, "the switch takes 1 to kRows");
  static const int forced = [] {
    const char* e = std::getenv("LLMSERVE_LORA_EXPAND_ROWS");
    return e && e[0] >= '1' && e[0] <= '8' && e[1] == '\0' ? e[0] - '0' : 0;
  }();
  if (forced) return forced;
  return n_rows <= 64 ? 1 : kRows;
}

void check_rows(int64_t n_rows, int per_block, const char* what) {
  if ((n_rows + per_block - 1) / per_block > 65535) throw std::runtime_error(std::string(what) + ": too many rows for one launch");
}


// A warp for each 32 V of the width, up to kMaxShrinkWarps.
unsigned shrink_threads(int64_t K, int v) {
  return static_cast<unsigned>(32 * std::min<int64_t>(kMaxShrinkWarps, std::max<int64_t>(1, (K + 32 * v - 1) / (32 * v))));
}

template <typename T, bool NORM>
void shrink(const void* x, const T* norm_w, float eps, const T* a, const int32_t* rows, int64_t n_rows, int64_t K, int64_t C,
            float* t, T* h_out, cudaStream_t s) {
  if (n_rows == 0 || C == 0) return;
  if (C > 0x7fffffff) throw std::runtime_error("lora_shrink: too many columns for one launch");
  constexpr int V = 16 / sizeof(T);  // (16-byte loads of T: 8 halves, 4 floats)
  const bool vec = K % V == 0 && vec_ok(a, V, sizeof(T)) && (!h_out || vec_ok(h_out, V, sizeof(T))) &&
                   (NORM ? vec_ok(x, V, sizeof(float)) && vec_ok(norm_w, V, sizeof(T)) : vec_ok(x, V, sizeof(T)));
  auto go = [&](auto rows_tag) {
    constexpr int ROWS = decltype(rows_tag)::value;
    check_rows(n_rows, ROWS, "lora_shrink");
    const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>((n_rows + ROWS - 1) / ROWS));
    if (vec)
      return launch("lora_shrink", lora_shrink_k<T, V, NORM, ROWS>, grid, shrink_threads(K, V), 0, s, x, norm_w, eps, a, rows,
                    n_rows, K, C, t, h_out);
    launch("lora_shrink", lora_shrink_k<T, 1, NORM, ROWS>, grid, shrink_threads(K, 1), 0, s, x, norm_w, eps, a, rows, n_rows,
           K, C, t, h_out);
  };
  // A decode's rows (up to 16) one a block, so that its shrink has rows x columns blocks, not columns alone:
  // at 8 rows the down projection's 16 blocks each read all 8 rows of 8,960 (6.1 us, H100, kernel_bench
  // --lora). More rows: kRows a block, each A chunk read once for them.
  if (n_rows <= 16) return go(std::integral_constant<int, 1>{});
  go(std::integral_constant<int, kRows>{});
}

}  // namespace

template <typename T>
void lora_shrink(const T* x, const T* a, const int32_t* rows, int64_t n_rows, int64_t K, int64_t C, float* t, cudaStream_t s) {
  shrink<T, false>(x, nullptr, 0.f, a, rows, n_rows, K, C, t, nullptr, s);
}

template <typename T>
void lora_shrink_norm(const float* x, const T* norm_w, float eps, const T* a, const int32_t* rows, int64_t n_rows, int64_t K,
                      int64_t C, float* t, T* h_out, cudaStream_t s) {
  shrink<T, true>(x, norm_w, eps, a, rows, n_rows, K, C, t, h_out, s);
}

template <typename T>
void lora_expand(const float* t, int64_t tc, const int32_t* rows, int64_t n_rows, int64_t R, const LoraOut<T>* outs, int n,
                 cudaStream_t s) {
  if (n_rows == 0 || n == 0) return;
  if (n > kMaxLoraOuts) throw std::runtime_error("lora_expand: too many outputs for one launch");
  const int per_block = expand_rows_per_block(n_rows);
  check_rows(n_rows, per_block, "lora_expand");
  ExpandArgs<T> args{};
  args.n = n;
  for (int i = 0; i < n; ++i) {
    args.out[i] = outs[i];
    args.first_block[i + 1] = args.first_block[i] + static_cast<int>(blocks_for(outs[i].N, kExpandThreads));
  }
  if (args.first_block[n] == 0) return;
  const dim3 grid(static_cast<unsigned>(args.first_block[n]), static_cast<unsigned>((n_rows + per_block - 1) / per_block));
  launch("lora_expand", lora_expand_k<T>, grid, kExpandThreads, 0, s, t, tc, rows, n_rows, R, per_block, args);
}

#define INSTANTIATE(T)                                                                                                \
  template void lora_shrink<T>(const T*, const T*, const int32_t*, int64_t, int64_t, int64_t, float*, cudaStream_t); \
  template void lora_shrink_norm<T>(const float*, const T*, float, const T*, const int32_t*, int64_t, int64_t, int64_t,     \
                                    float*, T*, cudaStream_t);                                                              \
  template void lora_expand<T>(const float*, int64_t, const int32_t*, int64_t, int64_t, const LoraOut<T>*, int, cudaStream_t);
LLMSERVE_FOR_EACH_TYPE(INSTANTIATE)
#undef INSTANTIATE

}  // namespace llmserve::cuda
