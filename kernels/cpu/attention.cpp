#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/fp8.h"

namespace llmserve::cpu {

namespace {

// put(t, slot) for each token t of the step with a cache slot (padding tokens have slot -1).
template <typename Put>
void each_slot(const int32_t* slot_mapping, int64_t T, Put put) {
  for (int64_t t = 0; t < T; ++t)
    if (slot_mapping[t] >= 0) put(t, static_cast<int64_t>(slot_mapping[t]));
}

}  // namespace

void kv_write(const float* k, const float* v, const int32_t* slot_mapping, int64_t T, int64_t Hk, int64_t D,
              float* k_cache, float* v_cache) {
  const int64_t row = Hk * D;
  each_slot(slot_mapping, T, [&](int64_t t, int64_t slot) {
    std::memcpy(k_cache + slot * row, k + t * row, row * sizeof(float));
    std::memcpy(v_cache + slot * row, v + t * row, row * sizeof(float));
  });
}

void kv_write(const float* k, const float* v, const int32_t* slot_mapping, int64_t T, int64_t Hk, int64_t D,
              uint8_t* k_cache, uint8_t* v_cache) {
  const int64_t row = Hk * D;
  each_slot(slot_mapping, T, [&](int64_t t, int64_t slot) {
    for (int64_t i = 0; i < row; ++i) {
      k_cache[slot * row + i] = f32_to_e4m3(k[t * row + i]);
      v_cache[slot * row + i] = f32_to_e4m3(v[t * row + i]);
    }
  });
}

namespace {

// A cache's rows as float32: a float32 cache's own, or FP8 codes decoded (scale 1) into buf.
struct CacheRows {
  const float* f32 = nullptr;
  const uint8_t* codes = nullptr;
  const float* at(int64_t offset, int64_t D, float* buf) const {
    if (f32) return f32 + offset;
    static const auto table = [] {
      std::array<float, 256> t{};
      for (int c = 0; c < 256; ++c) t[static_cast<size_t>(c)] = e4m3_to_f32(static_cast<uint8_t>(c));
      return t;
    }();
    for (int64_t d = 0; d < D; ++d) buf[d] = table[codes[offset + d]];
    return buf;
  }
};

// One query row's attention over keys 0..n-1 of its sequence: scores, softmax, the weighted values.
// Target clones (as the linear kernel's): the dot products and the exponentials vectorize. buf holds
// a decoded row (D floats) for FP8 caches.
LLMSERVE_TARGET_CLONES void attend(
    const float* qv, const CacheRows& k_cache, const CacheRows& v_cache, const int32_t* table, int64_t n, int64_t row,
    int64_t kv_off, int64_t D, int64_t block_size, float scale, float* score, float* buf, float* o) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    const float* kv = k_cache.at(slot * row + kv_off, D, buf);
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += qv[d] * kv[d];
    score[j] = acc * scale;
    mx = score[j] > mx ? score[j] : mx;
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    score[j] = exp_nonpositive(score[j] - mx);
    sum += score[j];
  }
  for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
  const float inv = 1.f / sum;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    const float* vv = v_cache.at(slot * row + kv_off, D, buf);
    const float p = score[j] * inv;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] += p * vv[d];
  }
}


void attention_over(const float* q, const CacheRows& k_cache, const CacheRows& v_cache, const int32_t* block_tables,
                    int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                    int64_t Hk, int64_t D, int64_t block_size, float scale, float* out) {
  const int64_t group = Hq / Hk, row = Hk * D, T = q_start[S];
  // Every (token, head) of the step in one parallel loop (a loop per sequence was a team's start and
  // end per sequence and layer: a decode step of 32 sequences woke the threads 32 times a layer).
  std::vector<int32_t> seq_of(static_cast<size_t>(T));
  for (int64_t s = 0; s < S; ++s)
    for (int32_t t = q_start[s]; t < q_start[s + 1]; ++t) seq_of[static_cast<size_t>(t)] = static_cast<int32_t>(s);
  int64_t longest = 0;
  for (int64_t t = 0; t < T; ++t) longest = std::max<int64_t>(longest, positions[t] + 1);
#pragma omp parallel if (T * Hq > 8)
  {
    std::vector<float> score(static_cast<size_t>(longest)), buf(static_cast<size_t>(D));
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < T * Hq; ++i) {
      const int64_t t = i / Hq, h = i % Hq;
      attend(q + (t * Hq + h) * D, k_cache, v_cache, block_tables + seq_of[static_cast<size_t>(t)] * max_blocks,
             static_cast<int64_t>(positions[t]) + 1, row, (h / group) * D, D, block_size, scale, score.data(), buf.data(),
             out + (t * Hq + h) * D);
    }
  }
}

}  // namespace

void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, float* out) {
  attention_over(q, CacheRows{k_cache, nullptr}, CacheRows{v_cache, nullptr}, block_tables, max_blocks, q_start,
                 positions, S, Hq, Hk, D, block_size, scale, out);
}

void paged_attention(const float* q, const uint8_t* k_cache, const uint8_t* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, float* out) {
  attention_over(q, CacheRows{nullptr, k_cache}, CacheRows{nullptr, v_cache}, block_tables, max_blocks, q_start,
                 positions, S, Hq, Hk, D, block_size, scale, out);
}

}  // namespace llmserve::cpu
