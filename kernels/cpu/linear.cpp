#include "kernels/cpu/ops.h"

namespace llmserve::cpu {

namespace {
inline float dot(const float* a, const float* b, int64_t K) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < K; ++k) acc += a[k] * b[k];
  return acc;
}
}  // namespace

void linear(const float* x, const float* w, const float* bias, int64_t T, int64_t K, int64_t N, float* out) {
  // Tiles of 4 tokens x 4 output rows reuse each loaded row of x and w four times.
  constexpr int64_t TB = 4, NB = 64;
#pragma omp parallel for schedule(static) if (static_cast<double>(T) * N * K > 1e6)
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t n1 = n0 + NB < N ? n0 + NB : N;
    for (int64_t t0 = 0; t0 < T; t0 += TB) {
      const int64_t t1 = t0 + TB < T ? t0 + TB : T;
      for (int64_t n = n0; n < n1; ++n) {
        const float* wr = w + n * K;
        const float b = bias ? bias[n] : 0.f;
        for (int64_t t = t0; t < t1; ++t) out[t * N + n] = dot(x + t * K, wr, K) + b;
      }
    }
  }
}

}  // namespace llmserve::cpu
