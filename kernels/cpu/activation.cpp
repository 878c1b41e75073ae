#include <cmath>

#include "kernels/cpu/ops.h"

namespace llmserve::cpu {

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void scale_rows(const float* x, const float* f, int64_t T, int64_t C, float* out) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < C; ++j) out[t * C + j] = x[t * C + j] * f[t];
}

}  // namespace llmserve::cpu
