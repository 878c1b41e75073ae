#include "model/decode_graphs.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace llmserve {

std::vector<int64_t> DecodeGraphs::bucket_sizes(int64_t max_num_seqs) {
  std::vector<int64_t> b;
  for (int64_t s : {1, 2, 4})
    if (s < max_num_seqs) b.push_back(s);
  for (int64_t s = 8; s < max_num_seqs; s += 8) b.push_back(s);
  if (max_num_seqs >= 1) b.push_back(max_num_seqs);
  return b;
}

DecodeGraphs::DecodeGraphs(Transformer& model, Backend& backend, const Topology& topo, int64_t max_num_seqs,
                           int64_t max_model_len, int64_t block_size)
    : model_(model),
      be_(backend),
      topo_(topo),
      max_blocks_((max_model_len + block_size - 1) / block_size),
      max_model_len_(max_model_len),
      buckets_(bucket_sizes(max_num_seqs)) {
  LLMSERVE_CHECK(be_.supports_graphs(), "decode graphs: the backend has no graphs");
  const int64_t B = buckets_.back(), H = model_.spec().hidden_size;
  if (!topo_.first_stage()) in_ = be_.empty({B, H}, DType::F32);
  out_ = be_.empty({B, topo_.last_stage() ? model_.shard().vocab_padded : H}, DType::F32);
}

StepMeta pad_decode_step(const StepMeta& real, int64_t B, int64_t max_blocks, int64_t max_context) {
  const int64_t S = real.num_seqs();
  LLMSERVE_CHECK(S <= B && real.max_blocks <= max_blocks, "decode graphs: step larger than the bucket");
  StepMeta m;
  m.token_ids = real.token_ids;
  m.token_ids.resize(static_cast<size_t>(B), 0);
  m.positions = real.positions;
  m.positions.resize(static_cast<size_t>(B), 0);
  m.slot_mapping = real.slot_mapping;
  m.slot_mapping.resize(static_cast<size_t>(B), -1);  // padding rows write no KV
  m.q_start.resize(static_cast<size_t>(B + 1));
  for (int64_t i = 0; i <= B; ++i) m.q_start[i] = static_cast<int32_t>(i);
  m.max_blocks = static_cast<int32_t>(max_blocks);
  m.block_tables.assign(static_cast<size_t>(B * max_blocks), 0);
  for (int64_t s = 0; s < S; ++s)
    std::copy_n(real.block_tables.begin() + s * real.max_blocks, real.max_blocks, m.block_tables.begin() + s * max_blocks);
  m.logits_indices.resize(static_cast<size_t>(B));
  for (int64_t i = 0; i < B; ++i) m.logits_indices[i] = static_cast<int32_t>(i);
  m.max_context = static_cast<int32_t>(max_context);
  return m;
}

double DecodeGraphs::capture(KvCache& kv) {
  const auto t0 = std::chrono::steady_clock::now();
  kv_ = &kv;
  graph_of_.assign(buckets_.size(), -1);
  for (size_t i = buckets_.size(); i-- > 0;) {  // largest first: the graphs' memory is sized once
    const int64_t B = buckets_[i];
    StepMeta none;
    none.q_start = {0};
    const StepMeta m = padded(none, B);
    const Tensor hin = topo_.first_stage() ? Tensor() : rows_view(in_, 0, B);
    model_.forward(m, hin, kv, &out_);  // warm-up: cuBLASLt's algorithms are chosen outside the capture
    be_.begin_step(m);
    be_.graph_capture_begin();
    try {
      model_.forward(m, hin, kv, &out_);
      graph_of_[i] = be_.graph_capture_end();
    } catch (...) {
      be_.graph_capture_abort();
      throw;
    }
  }
  // One replay of each (padding rows only: no KV writes) checks it runs and makes the graphs' memory
  // resident, so the log can report it.
  for (size_t i = 0; i < buckets_.size(); ++i) {
    StepMeta none;
    none.q_start = {0};
    be_.begin_step(padded(none, buckets_[i]));
    be_.graph_replay(graph_of_[i]);
  }
  be_.synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool DecodeGraphs::fits(const StepMeta& m) const {
  const int64_t S = m.num_seqs();
  if (dropped_ || !kv_ || S < 1 || S > buckets_.back() || m.num_tokens() != S || m.max_context != 0 || m.prompt_rows != 0)
    return false;
  if (m.max_blocks > max_blocks_) return false;
  for (int64_t s = 0; s <= S; ++s)
    if (m.q_start[s] != s) return false;
  for (int32_t p : m.positions)
    if (p >= max_model_len_) return false;
  if (topo_.last_stage()) {  // every sequence samples, in order
    if (static_cast<int64_t>(m.logits_indices.size()) != S) return false;
    for (int64_t s = 0; s < S; ++s)
      if (m.logits_indices[s] != s) return false;
  }
  return true;
}

bool DecodeGraphs::run(const StepMeta& meta, const Tensor& hidden_in, Tensor* result) {
  if (!fits(meta)) return false;
  const int64_t S = meta.num_seqs();
  const size_t i = static_cast<size_t>(std::lower_bound(buckets_.begin(), buckets_.end(), S) - buckets_.begin());
  if (!topo_.first_stage()) {
    Tensor dst = rows_view(in_, 0, S);
    be_.copy(hidden_in, dst);
  }
  be_.begin_step(padded(meta, buckets_[i]));
  if (!be_.graph_replay(graph_of_[i])) {
    dropped_ = true;
    return false;
  }
  *result = rows_view(out_, 0, S);
  return true;
}

}  // namespace llmserve
