#include "model/mixed_graphs.h"

#include <algorithm>

namespace llmserve {

std::vector<int64_t> MixedGraphs::bucket_sizes(int64_t max_tokens) {
  const int64_t top = std::min(kMaxTokens, max_tokens);
  std::vector<int64_t> b;
  for (int64_t t = 16; t < top; t += 16) b.push_back(t);
  if (top >= 1) b.push_back(top);
  return b;
}

MixedGraphs::MixedGraphs(Transformer& model, Backend& backend, const Topology& topo, std::vector<int64_t> buckets,
                         int64_t max_model_len, int64_t block_size)
    : StepGraphs(model, backend, topo, std::move(buckets), max_model_len, block_size, model.spec().hidden_size) {}

StepMeta pad_mixed_step(const StepMeta& real, int64_t B, int64_t max_blocks, int64_t max_context) {
  const int64_t T = real.num_tokens(), S = real.num_seqs();
  StepMeta m = pad_step_tokens(real, B, S + (B - T), max_blocks, max_context);  // (checks T <= B)
  m.q_start = real.q_start.empty() ? std::vector<int32_t>{0} : real.q_start;
  for (int64_t t = T + 1; t <= B; ++t) m.q_start.push_back(static_cast<int32_t>(t));  // padding: a sequence each
  m.logits_indices = real.logits_indices;
  m.prompt_rows = real.prompt_rows;
  m.max_new = static_cast<int32_t>(B);
  return m;
}

}  // namespace llmserve
