#include "model/step_graphs.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace llmserve {

StepMeta pad_step_tokens(const StepMeta& real, int64_t B, int64_t seqs, int64_t max_blocks, int64_t max_context) {
  const int64_t S = real.num_seqs();
  LLMSERVE_CHECK(real.num_tokens() <= B && S <= seqs && real.row_entries() <= max_blocks,
                 "CUDA graphs: step larger than the bucket");
  StepMeta m;
  m.token_ids = real.token_ids;
  m.token_ids.resize(static_cast<size_t>(B), 0);
  m.positions = real.positions;
  m.positions.resize(static_cast<size_t>(B), 0);
  m.slot_mapping = real.slot_mapping;
  m.slot_mapping.resize(static_cast<size_t>(B), -1);  // padding writes no KV
  // The real rows as they are (their width: the longest of them, at least one entry so that a padding
  // sequence's position 0 reads block 0), then zero rows for the padding sequences; the graph's kernels
  // read them max_blocks apart (StepMeta::table_width).
  const int64_t width = std::max<int64_t>(real.row_entries(), 1);
  m.max_blocks = static_cast<int32_t>(max_blocks);
  m.table_width = static_cast<int32_t>(width);
  m.block_tables.assign(static_cast<size_t>(seqs * width), 0);
  for (int64_t s = 0; s < S; ++s)
    std::copy_n(real.block_tables.begin() + s * real.row_entries(), real.row_entries(), m.block_tables.begin() + s * width);
  m.max_context = static_cast<int32_t>(max_context);
  if (!real.lora.empty()) {  // (the padding sequences have none)
    m.lora = real.lora;
    m.lora.resize(static_cast<size_t>(seqs), 0);
  }
  return m;
}

StepGraphs::StepGraphs(Transformer& model, Backend& backend, const Topology& topo, std::vector<int64_t> buckets,
                       int64_t max_model_len, int64_t block_size, int64_t out_cols)
    : model_(model),
      be_(backend),
      topo_(topo),
      max_blocks_((max_model_len + block_size - 1) / block_size),
      max_model_len_(max_model_len),
      buckets_(std::move(buckets)) {
  LLMSERVE_CHECK(be_.supports_graphs(), "CUDA graphs: the backend has no graphs");
  if (buckets_.empty()) return;
  const int64_t B = buckets_.back();
  if (!topo_.first_stage()) in_ = be_.empty({B, model_.spec().hidden_size}, DType::F32);
  out_ = be_.empty({B, out_cols}, DType::F32);
}

double StepGraphs::capture(KvCache& kv) {
  const auto t0 = std::chrono::steady_clock::now();
  kv_ = &kv;
  StepMeta none;
  none.q_start = {0};
  // The graph set without LoRA, then the one with (rows of slot 0 record the LoRA kernels).
  for (const bool with_lora : {false, true}) {
    std::vector<int>& ids = with_lora ? lora_graph_of_ : graph_of_;
    ids.assign(with_lora && model_.lora_slots() == 0 ? 0 : buckets_.size(), -1);
    for (size_t i = ids.size(); i-- > 0;) {  // largest first: the graphs' memory is sized once
      const int64_t B = buckets_[i];
      StepMeta m = padded(none, B);
      if (with_lora) m.lora.assign(static_cast<size_t>(m.num_seqs()), 0);
      const Tensor hin = topo_.first_stage() ? Tensor() : rows_view(in_, 0, B);
      record(m, hin, kv, out_);  // once eagerly: cuBLASLt's algorithms are chosen outside the capture
      be_.begin_step(m);
      be_.graph_capture_begin();
      try {
        record(m, hin, kv, out_);
        ids[i] = be_.graph_capture_end();
      } catch (...) {
        be_.graph_capture_abort();
        throw;
      }
    }
    // One replay of each (padding only: no KV writes) checks it runs and makes the graphs' memory
    // resident, so the log can report it.
    for (size_t i = 0; i < ids.size(); ++i) {
      be_.begin_step(padded(none, buckets_[i]));
      be_.graph_replay(ids[i]);
    }
  }
  be_.synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t StepGraphs::graphs() const { return static_cast<int64_t>(graph_of_.size() + lora_graph_of_.size()); }

bool StepGraphs::fits(const StepMeta& m) const {
  const int64_t T = m.num_tokens();
  if (dropped_ || !kv_ || buckets_.empty() || T < 1 || T > buckets_.back() || m.max_context != 0 ||
      m.max_blocks > max_blocks_)
    return false;
  for (int32_t p : m.positions)
    if (p >= max_model_len_) return false;
  return accepts(m);
}

bool StepGraphs::run(const StepMeta& meta, const Tensor& hidden_in, Tensor* result) {
  if (!fits(meta)) return false;
  const int64_t T = meta.num_tokens();
  const size_t i = static_cast<size_t>(std::lower_bound(buckets_.begin(), buckets_.end(), T) - buckets_.begin());
  if (!topo_.first_stage()) {
    Tensor dst = rows_view(in_, 0, T);
    be_.copy(hidden_in, dst);
  }
  const StepMeta m = padded(meta, buckets_[i]);
  const std::vector<int>& ids = m.lora.empty() ? graph_of_ : lora_graph_of_;
  LLMSERVE_CHECK(i < ids.size(), "CUDA graphs: a step names a LoRA adapter but none is loaded");
  be_.begin_step(m);
  if (!be_.graph_replay(ids[i])) {
    dropped_ = true;
    return false;
  }
  *result = rows_view(out_, 0, T);
  return true;
}

}  // namespace llmserve
