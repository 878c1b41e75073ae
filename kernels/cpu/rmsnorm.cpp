#include <cmath>

#include "kernels/cpu/ops.h"

namespace llmserve::cpu {

void rmsnorm(const float* x, const float* w, int64_t T, int64_t H, float eps, float* out) {
#pragma omp parallel for if (T > 16)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * H;
    float ss = 0.f;
    for (int64_t i = 0; i < H; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
    float* o = out + t * H;
    for (int64_t i = 0; i < H; ++i) o[i] = w[i] * (xr[i] * inv);
  }
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void add_sigmoid_gated(float* x, const float* y, const float* h, const float* gate, int64_t T, int64_t C, int64_t K) {
  for (int64_t t = 0; t < T; ++t) {
    float g = 0.f;
    for (int64_t k = 0; k < K; ++k) g += h[t * K + k] * gate[k];
    const float s = 1.f / (1.f + std::exp(-g));
    for (int64_t c = 0; c < C; ++c) x[t * C + c] += s * y[t * C + c];
  }
}

}  // namespace llmserve::cpu
