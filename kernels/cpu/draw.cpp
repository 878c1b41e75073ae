#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace llmserve::cpu {

float kth_largest(const float* v, int64_t n, int64_t k) {
  // A small k (top-k over a vocabulary): one pass keeping the k largest in a min-heap, about one
  // comparison per element, v untouched; otherwise selection over a copy.
  if (k <= 1024 && k * 8 <= n) {
    std::vector<float> heap(v, v + k);
    std::make_heap(heap.begin(), heap.end(), std::greater<float>());
    for (int64_t i = k; i < n; ++i)
      if (v[i] > heap.front()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
        heap.back() = v[i];
        std::push_heap(heap.begin(), heap.end(), std::greater<float>());
      }
    return heap.front();
  }
  std::vector<float> s(v, v + n);
  std::nth_element(s.begin(), s.begin() + (k - 1), s.end(), std::greater<float>());
  return s[k - 1];
}

float top_p_cut(const float* v, int64_t n, float mx, float z, double top_p) {
  double cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    cum += std::exp(static_cast<double>(v[i]) - mx) / z;
    if (cum >= top_p - 1e-7) return v[i];
  }
  return -std::numeric_limits<float>::infinity();
}

float draw_keep_threshold(const float* row, int64_t L, const RowDraw& r) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  if (!r.filtered()) return kNegInf;
  std::vector<float> x(row, row + L);
  for (float& v : x) v *= r.inv_temperature;
  const float mx = *std::max_element(x.begin(), x.end());
  if (mx == kNegInf) return kNegInf;
  float keep = kNegInf;
  if (r.top_k > 0 && r.top_k < L) keep = kth_largest(x.data(), L, r.top_k);
  keep = std::max(keep, mx + r.log_min_p);
  if (r.top_p >= 1.0) return keep;
  std::vector<float> kept;
  double sum = 0;
  for (float v : x)
    if (v >= keep && v != kNegInf) {
      kept.push_back(v);
      sum += std::exp(static_cast<double>(v) - mx);
    }
  std::sort(kept.begin(), kept.end(), std::greater<float>());
  // Rounding may keep the sum short of top_p: then every token the other filters keep.
  return std::max(keep, top_p_cut(kept.data(), static_cast<int64_t>(kept.size()), mx, static_cast<float>(sum), r.top_p));
}

namespace {

constexpr float kNegInfF = -std::numeric_limits<float>::infinity();

// The largest of v[0, n).
LLMSERVE_INLINE float max_of(const float* v, int64_t n) {
  float m = kNegInfF;
#pragma omp simd reduction(max : m)
  for (int64_t k = 0; k < n; ++k) m = std::max(m, v[k]);
  return m;
}

constexpr int64_t kScanBlock = 64;  // values whose maximum is taken before any of them is looked at alone

// One row's log-probability statistics (see row_logprobs). The top-K scan looks at a block of values
// one by one only when the block's largest beats the list's last entry (rarely, past the row's start).
LLMSERVE_TARGET_CLONES void row_stats(
    const float* row, int64_t L, int64_t token_offset, int K, float& mx, double& sum, float* v, int32_t* id) {
  std::fill(v, v + K, kNegInfF);
  std::fill(id, id + K, -1);
  mx = kNegInfF;
  for (int64_t k0 = 0; k0 < L; k0 += kScanBlock) {
    const int64_t e = std::min(L, k0 + kScanBlock);
    const float bm = max_of(row + k0, e - k0);
    mx = std::max(mx, bm);
    if (K > 0 && bm > v[K - 1])
      for (int64_t k = k0; k < e; ++k) keep_top(v, id, K, row[k], static_cast<int32_t>(token_offset + k));
  }
  sum = 0;  // float sums over chunks of 1,024 terms, added in double (a float running sum over 10^5 terms drifts by 1e-5)
  if (mx == kNegInfF) return;
  for (int64_t k0 = 0; k0 < L; k0 += 1024) {
    const int64_t e = std::min(L, k0 + 1024);
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t k = k0; k < e; ++k) s += exp_nonpositive(row[k] - mx);
    sum += s;
  }
}

// The index of the first of row's largest values, -1 when all are -inf: a block is looked into only
// when its largest beats the best so far.
LLMSERVE_TARGET_CLONES int64_t greedy_pick(const float* row, int64_t L) {
  float bv = kNegInfF;
  int64_t bi = -1;
  for (int64_t k0 = 0; k0 < L; k0 += kScanBlock) {
    const int64_t e = std::min(L, k0 + kScanBlock);
    const float bm = max_of(row + k0, e - k0);
    if (!(bm > bv)) continue;
    bv = bm;
    for (int64_t k = k0; k < e; ++k)
      if (row[k] == bm) {
        bi = k;
        break;
      }
  }
  return bi;
}

}  // namespace

void row_logprobs(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const int32_t* rows,
                  const int32_t* chosen, int64_t m, int K, float* stats, float* top_v, int32_t* top_i,
                  const LogprobView* views) {
#pragma omp parallel for schedule(dynamic) if (m > 1)
  for (int64_t j = 0; j < m; ++j) {
    const float* row = logits + rows[j] * stride;
    std::vector<float> seen;  // (a view's values)
    if (views) {
      seen.resize(static_cast<size_t>(L));
      for (int64_t k = 0; k < L; ++k) seen[k] = views[j](row[k], token_offset + k);
      row = seen.data();
    }
    float mx;
    double sum;
    row_stats(row, L, token_offset, K, mx, sum, top_v + j * K, top_i + j * K);
    const int64_t c = chosen[j] - token_offset;
    stats[3 * j] = mx;
    stats[3 * j + 1] = static_cast<float>(sum);
    stats[3 * j + 2] = c >= 0 && c < L ? row[c] : 0.f;
  }
}

void count_at_least(const float* logits, int64_t stride, int64_t L, const int32_t* rows, const float* thresholds,
                    int64_t m, int32_t* counts) {
#pragma omp parallel for schedule(dynamic) if (m > 1)
  for (int64_t j = 0; j < m; ++j) {
    const float* row = logits + rows[j] * stride;
    int32_t c = 0;
    for (int64_t k = 0; k < L; ++k) c += row[k] >= thresholds[j];
    counts[j] = c;
  }
}

void draw_rows(float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               const LogitEdit* edits, int64_t num_edits, float* best, int32_t* idx, float* keep, const int32_t* mask_rows,
               int64_t num_masks, const uint64_t* mask_bits) {
  for (int64_t e = 0; e < num_edits; ++e) {
    float& l = logits[edits[e].row * stride + edits[e].col];
    l = apply_logit_edit(l, edits[e]);
  }
  const int64_t words = mask_words(L);
  for (int64_t j = 0; j < num_masks; ++j) {
    float* row = logits + static_cast<int64_t>(mask_rows[j]) * stride;
    const uint64_t* bits = mask_bits + j * words;
    for (int64_t c = 0; c < L; ++c)
      if (!mask_allows(bits, c)) row[c] = -std::numeric_limits<float>::infinity();
  }
  // Rows are independent once the edits are in.
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * stride;
    const RowDraw& r = rows[i];
    if (keep) keep[i] = -std::numeric_limits<float>::infinity();
    if (r.greedy) {  // the first of the row's largest finite values
      const int64_t bi = greedy_pick(row, L);
      best[i] = bi >= 0 ? row[bi] : kNegInfF;
      idx[i] = bi >= 0 ? static_cast<int32_t>(token_offset + bi) : std::numeric_limits<int32_t>::max();
      continue;
    }
    const float kp = draw_keep_threshold(row, L, r);
    if (keep) keep[i] = kp;
    double bv = -std::numeric_limits<double>::infinity();
    int64_t bi = -1;
    for (int64_t k = 0; k < L; ++k) {
      const float x = r.greedy ? row[k] : row[k] * r.inv_temperature;
      if (x == -std::numeric_limits<float>::infinity() || x < kp) continue;
      const double score = r.greedy ? x : x + draw_gumbel(r.seed, r.position, token_offset + k);
      if (score > bv) bv = score, bi = k;
    }
    best[i] = bi >= 0 ? static_cast<float>(bv) : -std::numeric_limits<float>::infinity();
    idx[i] = bi >= 0 ? static_cast<int32_t>(token_offset + bi) : std::numeric_limits<int32_t>::max();
  }
}

}  // namespace llmserve::cpu
