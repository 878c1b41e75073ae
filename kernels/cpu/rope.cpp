#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace llmserve::cpu {

void rope(float* q, float* k, const int32_t* positions, const float* inv_freq, int64_t T, int64_t Hq, int64_t Hk,
          int64_t D) {
  const int64_t half = D / 2;
  std::vector<float> cs(half), sn(half);
  for (int64_t t = 0; t < T; ++t) {
    const float p = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float a = p * inv_freq[i];
      cs[i] = std::cos(a);
      sn[i] = std::sin(a);
    }
    auto rotate = [&](float* v) {
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs[i] - x2 * sn[i];
        v[i + half] = x2 * cs[i] + x1 * sn[i];
      }
    };
    for (int64_t h = 0; h < Hq; ++h) rotate(q + (t * Hq + h) * D);
    for (int64_t h = 0; h < Hk; ++h) rotate(k + (t * Hk + h) * D);
  }
}

}  // namespace llmserve::cpu
