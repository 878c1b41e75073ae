#include "model/decode_graphs.h"

namespace llmserve {

std::vector<int64_t> DecodeGraphs::bucket_sizes(int64_t max_num_seqs) {
  std::vector<int64_t> b;
  for (int64_t s : {1, 2, 4})
    if (s < max_num_seqs) b.push_back(s);
  for (int64_t s = 8; s < max_num_seqs; s += 8) b.push_back(s);
  if (max_num_seqs >= 1) b.push_back(max_num_seqs);
  return b;
}

DecodeGraphs::DecodeGraphs(Transformer& model, Backend& backend, const Topology& topo, std::vector<int64_t> buckets,
                           int64_t max_model_len, int64_t block_size)
    : StepGraphs(model, backend, topo, std::move(buckets), max_model_len, block_size,
                 topo.last_stage() ? model.shard().vocab_padded : model.spec().hidden_size) {}

StepMeta pad_decode_step(const StepMeta& real, int64_t B, int64_t max_blocks, int64_t max_context) {
  StepMeta m = pad_step_tokens(real, B, B, max_blocks, max_context);
  m.q_start.resize(static_cast<size_t>(B + 1));
  for (int64_t i = 0; i <= B; ++i) m.q_start[i] = static_cast<int32_t>(i);
  m.logits_indices.resize(static_cast<size_t>(B));
  for (int64_t i = 0; i < B; ++i) m.logits_indices[i] = static_cast<int32_t>(i);
  return m;
}

bool DecodeGraphs::accepts(const StepMeta& m) const {
  const int64_t S = m.num_seqs();
  if (m.num_tokens() != S || m.prompt_rows != 0) return false;
  for (int64_t s = 0; s <= S; ++s)
    if (m.q_start[s] != s) return false;
  if (topo_.last_stage()) {  // every sequence samples, in order
    if (static_cast<int64_t>(m.logits_indices.size()) != S) return false;
    for (int64_t s = 0; s < S; ++s)
      if (m.logits_indices[s] != s) return false;
  }
  return true;
}

}  // namespace llmserve
