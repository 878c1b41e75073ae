// CUDA graphs for decode steps (as vLLM): the stage's forward pass is recorded once per batch-size
// bucket and replayed for every decode step that fits one, which turns a few hundred kernel launches
// per step into one. A decode step (one new token per sequence, every sequence sampling) of S
// sequences runs the graph of the smallest bucket B >= S over a batch padded to B rows (padding tokens
// write no KV: slot -1). Buckets are 1, 2, 4, then multiples of 8 below max_num_seqs, and
// max_num_seqs itself, unless vLLM's capture sizes name others (model/graph_sizes.h). Steps that do not fit (prefill, chunked prefill, more sequences than the
// largest bucket) run through the mixed-step graphs (model/mixed_graphs.h) or eagerly.
#pragma once
#include <cstdint>
#include <vector>

#include "model/step_graphs.h"

namespace llmserve {

// The metadata of a decode step `real` (one token per sequence, every sequence sampling) padded to
// `bucket` rows as a recorded graph runs it: padding tokens are id 0 at position 0 with slot -1 (they
// write no KV), block tables read `max_blocks` apart (pad_step_tokens), logits for rows 0..bucket-1, and
// kernels sized for `max_context`.
StepMeta pad_decode_step(const StepMeta& real, int64_t bucket, int64_t max_blocks, int64_t max_context);

class DecodeGraphs : public StepGraphs {
 public:
  // Allocates the static input/output tensors (call before the memory plan, so it counts them) for the
  // batch sizes `buckets` (ascending; bucket_sizes(max_num_seqs) unless vLLM's capture sizes say otherwise,
  // model/graph_sizes.h). The result of a replay (run) is the stage's result of Transformer::forward.
  DecodeGraphs(Transformer& model, Backend& backend, const Topology& topo, std::vector<int64_t> buckets,
               int64_t max_model_len, int64_t block_size);

  // 1, 2, 4, then multiples of 8 below max_num_seqs, and max_num_seqs.
  static std::vector<int64_t> bucket_sizes(int64_t max_num_seqs);

 private:
  StepMeta padded(const StepMeta& real, int64_t bucket) const override {
    return pad_decode_step(real, bucket, max_blocks_, max_model_len_);
  }
  bool accepts(const StepMeta& meta) const override;
  void record(const StepMeta& meta, const Tensor& hidden_in, KvCache& kv, Tensor& out) override {
    model_.forward(meta, hidden_in, kv, &out);
  }
};

}  // namespace llmserve
