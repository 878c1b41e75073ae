#include "kernels/cpu/ops.h"

#include <limits>

namespace llmserve::cpu {

void draw_rows(const float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               float* best, int32_t* idx) {
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * stride;
    const RowDraw& r = rows[i];
    double bv = -std::numeric_limits<double>::infinity();
    int64_t bi = -1;
    for (int64_t k = 0; k < L; ++k) {
      const float x = r.greedy ? row[k] : row[k] * r.inv_temperature;
      if (x == -std::numeric_limits<float>::infinity()) continue;
      const double score = r.greedy ? x : x + draw_gumbel(r.seed, r.position, token_offset + k);
      if (score > bv) bv = score, bi = k;
    }
    best[i] = bi >= 0 ? static_cast<float>(bv) : -std::numeric_limits<float>::infinity();
    idx[i] = bi >= 0 ? static_cast<int32_t>(token_offset + bi) : std::numeric_limits<int32_t>::max();
  }
}

}  // namespace llmserve::cpu
