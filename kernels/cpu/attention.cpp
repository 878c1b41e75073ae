#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"

namespace llmserve::cpu {

void kv_write(const float* k, const float* v, const int32_t* slot_mapping, int64_t T, int64_t Hk, int64_t D,
              float* k_cache, float* v_cache) {
  const int64_t row = Hk * D;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;  // padding token
    std::memcpy(k_cache + slot * row, k + t * row, row * sizeof(float));
    std::memcpy(v_cache + slot * row, v + t * row, row * sizeof(float));
  }
}

void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, float* out) {
  const int64_t group = Hq / Hk, row = Hk * D;
  for (int64_t s = 0; s < S; ++s) {
    const int32_t* table = block_tables + s * max_blocks;
    const int64_t t0 = q_start[s], t1 = q_start[s + 1];
#pragma omp parallel for collapse(2) schedule(dynamic) if ((t1 - t0) * Hq > 8)
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t n = static_cast<int64_t>(positions[t]) + 1;  // keys 0..pos
        const int64_t kvh = h / group;
        const float* qv = q + (t * Hq + h) * D;
        std::vector<float> score(n);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
          const float* kv = k_cache + slot * row + kvh * D;
          float acc = 0.f;
          for (int64_t d = 0; d < D; ++d) acc += qv[d] * kv[d];
          score[j] = acc * scale;
          mx = score[j] > mx ? score[j] : mx;
        }
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          score[j] = std::exp(score[j] - mx);
          sum += score[j];
        }
        float* o = out + (t * Hq + h) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
          const float* vv = v_cache + slot * row + kvh * D;
          const float p = score[j] / sum;
          for (int64_t d = 0; d < D; ++d) o[d] += p * vv[d];
        }
      }
    }
  }
}

}  // namespace llmserve::cpu
