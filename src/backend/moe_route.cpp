#include "backend/moe_route.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace llmserve {

std::vector<MoeChoice> moe_route(const float* logits, int64_t T, int64_t E, int k, bool renormalize) {
  if (k < 1 || k > E) throw std::invalid_argument("moe_route: k must be between 1 and the number of experts");
  std::vector<MoeChoice> out(static_cast<size_t>(T * k));
  std::vector<float> p(static_cast<size_t>(E));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    const float m = *std::max_element(l, l + E);
    float sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += p[static_cast<size_t>(e)] = std::exp(l[e] - m);
    for (auto& v : p) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)] || (p[static_cast<size_t>(a)] == p[static_cast<size_t>(b)] && a < b);
    });
    float chosen = 0;
    for (int j = 0; j < k; ++j) chosen += p[static_cast<size_t>(order[static_cast<size_t>(j)])];
    for (int j = 0; j < k; ++j) {
      const int32_t e = order[static_cast<size_t>(j)];
      out[static_cast<size_t>(t * k + j)] = {e, renormalize ? p[static_cast<size_t>(e)] / chosen : p[static_cast<size_t>(e)]};
    }
  }
  return out;
}

MoeRows moe_rows(const std::vector<MoeChoice>& choices, int64_t T, int64_t E, int k) {
  MoeRows r;
  r.rows.resize(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) {
      const MoeChoice& c = choices[static_cast<size_t>(t * k + j)];
      r.rows[static_cast<size_t>(c.expert)].emplace_back(static_cast<int32_t>(t), c.weight);
    }
  return r;
}

}  // namespace llmserve
