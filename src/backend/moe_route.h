// Routing of a mixture-of-experts layer (Qwen3-MoE, Mixtral) as transformers' sparse MoE blocks do it:
// softmax of a token's router logits over all experts (float32), the top k by probability (ties to the
// lower expert index), their probabilities renormalized to sum 1 where asked.
#pragma once
#include <cstdint>
#include <vector>

namespace llmserve {

struct MoeChoice {
  int32_t expert;
  float weight;
};

// logits [T, E] (row-major) -> [T, k] choices, each token's in descending probability.
std::vector<MoeChoice> moe_route(const float* logits, int64_t T, int64_t E, int k, bool renormalize);

// The tokens each expert serves: for expert e, rows[e] lists (token, weight) in token order.
struct MoeRows {
  std::vector<std::vector<std::pair<int32_t, float>>> rows;
};
MoeRows moe_rows(const std::vector<MoeChoice>& choices, int64_t T, int64_t E, int k);

}  // namespace llmserve
