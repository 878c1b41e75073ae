#include <cstring>

#include "kernels/cpu/ops.h"

namespace llmserve::cpu {

void embedding(const float* table, int64_t vocab_start, int64_t rows, const int32_t* ids, int64_t T, int64_t H,
               float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const int64_t r = static_cast<int64_t>(ids[t]) - vocab_start;
    if (r >= 0 && r < rows) {
      std::memcpy(out + t * H, table + r * H, H * sizeof(float));
    } else {
      std::memset(out + t * H, 0, H * sizeof(float));
    }
  }
}

}  // namespace llmserve::cpu
