#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
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

// One query row's attention over keys first..n-1 of its sequence: scores, softmax, the weighted values.
// Target clones (as the linear kernel's): the dot products and the exponentials vectorize.
LLMSERVE_TARGET_CLONES void attend(
    const float* qv, const float* k_cache, const float* v_cache, const int32_t* table, int64_t first, int64_t n,
    int64_t row, int64_t kv_off, int64_t D, int64_t block_size, float scale, float* score, float* o) {
  float mx = -INFINITY;
  for (int64_t j = first; j < n; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    const float* kv = k_cache + slot * row + kv_off;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += qv[d] * kv[d];
    score[j] = acc * scale;
    mx = score[j] > mx ? score[j] : mx;
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = first; j < n; ++j) {
    score[j] = exp_nonpositive(score[j] - mx);
    sum += score[j];
  }
  for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
  const float inv = 1.f / sum;
  for (int64_t j = first; j < n; ++j) {
    const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    const float* vv = v_cache + slot * row + kv_off;
    const float p = score[j] * inv;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] += p * vv[d];
  }
}

}  // namespace

void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, int64_t window, float* out) {
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
    std::vector<float> score(static_cast<size_t>(longest));
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < T * Hq; ++i) {
      const int64_t t = i / Hq, h = i % Hq, n = static_cast<int64_t>(positions[t]) + 1;
      attend(q + (t * Hq + h) * D, k_cache, v_cache, block_tables + seq_of[static_cast<size_t>(t)] * max_blocks,
             window > 0 ? std::max<int64_t>(0, n - window) : 0, n, row, (h / group) * D, D, block_size, scale,
             score.data(), out + (t * Hq + h) * D);
    }
  }
}

namespace {

// A float32 buffer aligned to 64 bytes (as the backend's caches are, so that the copies' rows vectorize
// as the cache's own do), grown as needed and kept.
class AlignedFloats {
 public:
  ~AlignedFloats() { std::free(p_); }
  float* get(size_t n) {
    if (n > n_) {
      std::free(p_);
      n_ = (n + 15) / 16 * 16;
      p_ = static_cast<float*>(std::aligned_alloc(64, n_ * sizeof(float)));
      if (!p_) throw std::bad_alloc();
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
};

// out[i] = value of E4M3 code c[i] (scale 1), through a table of the 256 codes' values.
LLMSERVE_TARGET_CLONES void decode_e4m3(const uint8_t* c, int64_t n, float* out) {
  static const auto table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[static_cast<size_t>(i)] = e4m3_to_f32(static_cast<uint8_t>(i));
    return t;
  }();
  const float* tv = table.data();
  for (int64_t i = 0; i < n; ++i) out[i] = tv[c[i]];
}

}  // namespace

void paged_attention(const float* q, const uint8_t* k_cache, const uint8_t* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, int64_t window, float* out,
                     int64_t max_floats) {
  // The blocks the step reads, decoded once into float32 copies with tables of their own, then the
  // float32 kernel over them (decoding a key row per query row and head made a prefill's attention
  // quadratic in decodes: a 4 x 1,500-token SmolLM2 run 40% slower than float32). Sequences go in
  // groups whose copies stay within max_floats floats each for K and V (default 128 MiB each).
  const int64_t row = Hk * D, block_floats = block_size * row;
  std::vector<int64_t> blocks_of(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    int64_t len = 0;
    for (int32_t t = q_start[s]; t < q_start[s + 1]; ++t) len = std::max<int64_t>(len, positions[t] + 1);
    blocks_of[static_cast<size_t>(s)] = (len + block_size - 1) / block_size;
  }
  // (kept from call to call: fresh copies cost their pages' faults at every layer of every step)
  thread_local AlignedFloats kf, vf;
  std::vector<int32_t> tables, starts, sources;
  for (int64_t s0 = 0; s0 < S;) {
    int64_t s1 = s0, blocks = 0;
    while (s1 < S && (s1 == s0 || (blocks + blocks_of[static_cast<size_t>(s1)]) * block_floats <= max_floats))
      blocks += blocks_of[static_cast<size_t>(s1++)];
    // Group [s0, s1): copy c of the group is block `sources[c]` of the cache.
    tables.assign(static_cast<size_t>((s1 - s0) * max_blocks), 0);
    sources.clear();
    for (int64_t s = s0; s < s1; ++s)
      for (int64_t b = 0; b < blocks_of[static_cast<size_t>(s)]; ++b) {
        tables[static_cast<size_t>((s - s0) * max_blocks + b)] = static_cast<int32_t>(sources.size());
        sources.push_back(block_tables[s * max_blocks + b]);
      }
    float* const kfp = kf.get(static_cast<size_t>(blocks * block_floats));  // (the calling thread's buffers:
    float* const vfp = vf.get(static_cast<size_t>(blocks * block_floats));  // the team's have their own)
    const int32_t* const src = sources.data();
#pragma omp parallel for schedule(static) if (blocks * block_floats > (1 << 16))
    for (int64_t c = 0; c < blocks; ++c) {
      decode_e4m3(k_cache + static_cast<int64_t>(src[c]) * block_floats, block_floats, kfp + c * block_floats);
      decode_e4m3(v_cache + static_cast<int64_t>(src[c]) * block_floats, block_floats, vfp + c * block_floats);
    }
    starts.resize(static_cast<size_t>(s1 - s0 + 1));
    for (int64_t s = s0; s <= s1; ++s) starts[static_cast<size_t>(s - s0)] = q_start[s] - q_start[s0];
    const int64_t t0 = q_start[s0];
    paged_attention(q + t0 * Hq * D, kfp, vfp, tables.data(), max_blocks, starts.data(), positions + t0, s1 - s0,
                    Hq, Hk, D, block_size, scale, window, out + t0 * Hq * D);
    s0 = s1;
  }
}

}  // namespace llmserve::cpu
