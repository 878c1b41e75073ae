#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

#include <cstdint>

namespace llmserve::cpu {

namespace {

// Every output element is the same sequence of operations wherever its token and row fall in the
// tiles below: kLanes partial sums over k (lane j takes k = j, j + kLanes, ...), then the lanes added
// in a fixed tree. So a token's result does not depend on the batch it came in (the engine's tests
// compare steps of different shapes), while a tile of TT tokens x NN rows loads each x and w chunk once
// for NN and TT products (the plain dot product loaded two values per multiply-add).
constexpr int kLanes = 8;

// (The helpers below are LLMSERVE_INLINE, compiled inside each target clone of rows(): vec_math.h.)

LLMSERVE_INLINE float lanes_sum(const float* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

template <int TT, int NN>
LLMSERVE_INLINE void tile(const float* x, const float* w, const float* bias, int64_t K, int64_t N, float* out) {
  float acc[TT][NN][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes)
    for (int t = 0; t < TT; ++t)
      for (int n = 0; n < NN; ++n) {
        const float* xa = x + t * K + k;
        const float* wa = w + n * K + k;
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) acc[t][n][j] += xa[j] * wa[j];
      }
  for (int j = 0; k + j < K; ++j)
    for (int t = 0; t < TT; ++t)
      for (int n = 0; n < NN; ++n) acc[t][n][j] += x[t * K + k + j] * w[n * K + k + j];
  for (int t = 0; t < TT; ++t)
    for (int n = 0; n < NN; ++n) out[t * N + n] = lanes_sum(acc[t][n]) + (bias ? bias[n] : 0.f);
}

template <int TT>
LLMSERVE_INLINE void row_block(const float* x, const float* w, const float* bias, int64_t K, int64_t N, int64_t n0,
                               int64_t n1, bool wide, float* out) {
  int64_t n = n0;
  // Several rows at a time only for whole tiles of tokens: with fewer tokens the weights stream from
  // memory, and one row at a time streams them faster (a single token: 22 against 10 GB/s on one core
  // here). Four rows (16 accumulators: half the loads per multiply-add of two rows) where the CPU has 32 vector
  // registers (AVX-512: 173 -> 224 GFLOP/s at 32 and 256 tokens, bench/cpu_linear_bench), two where it
  // has 16 (AVX2: four rows spill, 160 -> 113), and for inner dimensions of 256 and more (a tile's
  // sixteen sums and scattered stores outweigh a short k loop: tiny-qwen2's K = 64 vocabulary projection
  // ran slower with them).
  if (TT == 4 && wide)
    for (; n + 4 <= n1; n += 4) tile<TT, 4>(x, w + n * K, bias ? bias + n : nullptr, K, N, out + n);
  if (TT == 4)
    for (; n + 2 <= n1; n += 2) tile<TT, 2>(x, w + n * K, bias ? bias + n : nullptr, K, N, out + n);
  for (; n < n1; ++n) tile<TT, 1>(x, w + n * K, bias ? bias + n : nullptr, K, N, out + n);
}

// Rows [n0, n1) of every token: tiles of 4 tokens x 4 or 2 rows, the same arithmetic for the remainders
// (an output element's operations do not depend on its tile's shape, so neither does its value).
// Target clones (vec_math.h).
LLMSERVE_TARGET_CLONES void rows(const float* x, const float* w, const float* bias, int64_t T, int64_t K, int64_t N,
                                 int64_t n0, int64_t n1, bool wide, float* out) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) row_block<4>(x + t * K, w, bias, K, N, n0, n1, wide, out + t * N);
  const int64_t r = T - t;
  if (r == 3) row_block<3>(x + t * K, w, bias, K, N, n0, n1, wide, out + t * N);
  if (r == 2) row_block<2>(x + t * K, w, bias, K, N, n0, n1, wide, out + t * N);
  if (r == 1) row_block<1>(x + t * K, w, bias, K, N, n0, n1, wide, out + t * N);
}

// Whether the CPU runs the AVX-512 clone of rows() (32 vector registers).
bool wide_tiles() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const bool wide = __builtin_cpu_supports("x86-64-v4");
  return wide;
#else
  return false;
#endif
}

}  // namespace

void linear(const float* x, const float* w, const float* bias, int64_t T, int64_t K, int64_t N, float* out) {
  // Blocks of 64 output rows (their weights stay in cache while every token passes over them).
  constexpr int64_t NB = 64;
  const int64_t blocks = (N + NB - 1) / NB;
  const bool wide = K >= 256 && wide_tiles();
  // Threads from 100k multiply-adds (a single token's 400 KB of weights): a decode step streams its
  // weights from memory, which one core does at half the rate two do, so even a model's smaller
  // matrices pay for the team (SmolLM2-135M at batch 1 on the 2-core VM: 1M -> 100k, 15.5-16.2 ->
  // 11.9-12.2 ms a token, its q/k/v/o and MLP matrices having run on one core).
#pragma omp parallel for schedule(static) if (static_cast<double>(T) * N * K > 1e5)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * NB, n1 = n0 + NB < N ? n0 + NB : N;
    rows(x, w, bias, T, K, N, n0, n1, wide, out);
  }
}

// (Runs of rows of one adapter at a time: a prompt's rows share theirs.)
void lora_shrink(const float* x, const float* a, const int32_t* rows, int64_t T, int64_t K, int64_t C, float* t) {
  for (int64_t r0 = 0, r1; r0 < T; r0 = r1) {
    for (r1 = r0 + 1; r1 < T && rows[r1] == rows[r0];) ++r1;
    if (rows[r0] >= 0)
      linear(x + r0 * K, a + rows[r0] * C * K, nullptr, r1 - r0, K, C, t + r0 * C);
    else
      for (int64_t i = r0 * C; i < r1 * C; ++i) t[i] = 0.f;
  }
}

void lora_expand(const float* t, int64_t tc, int64_t col, const float* bt, const int32_t* rows, int64_t T, int64_t R,
                 int64_t N, float* out) {
#pragma omp parallel for schedule(static) if (static_cast<double>(T) * N * R > 1e5)
  for (int64_t r = 0; r < T; ++r) {
    if (rows[r] < 0) continue;
    const float* b = bt + rows[r] * R * N;
    float* o = out + r * N;
    for (int64_t i = 0; i < R; ++i) {
      const float c = t[r * tc + col + i];
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) o[n] += c * b[i * N + n];
    }
  }
}

}  // namespace llmserve::cpu
