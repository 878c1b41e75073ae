// CUDA graphs for small steps that are not decode steps (as vLLM's piecewise graphs): a new prompt or
// a chunk of one, alone or beside running decodes, up to a few hundred tokens. Such a step is launched
// eagerly otherwise, and on a GPU its ~150 kernel launches and ~200 cuBLASLt calls cost the host about
// 3 ms whatever the token count, which is the whole step for a short prompt. The stage's layers (not
// the final norm and logits, whose rows vary with the sequences that sample) are recorded once per
// token-count bucket and replayed for every step that fits one, the step padded to the bucket: its
// tokens first, then padding tokens that are one-token sequences of their own writing no KV. The
// recorded attention is the split-KV kernel sized for max_model_len and runs of up to the bucket's
// tokens per sequence; the head (Transformer::head) then runs eagerly on the replay's residual stream.
#pragma once
#include <cstdint>
#include <vector>

#include "model/step_graphs.h"

namespace llmserve {

// The metadata of a step `real` of at most `bucket` tokens as a recorded mixed graph runs it: its
// tokens and sequences first, then bucket - T padding tokens, each a sequence of its own (id 0,
// position 0, slot -1: they write no KV); block tables read `max_blocks` apart (pad_step_tokens); the
// logits rows unchanged; kernels sized for `max_context` and runs of up to `bucket` new tokens.
StepMeta pad_mixed_step(const StepMeta& real, int64_t bucket, int64_t max_blocks, int64_t max_context);

class MixedGraphs : public StepGraphs {
 public:
  // The largest bucket: steps of more tokens run eagerly (their device time hides the launches).
  static constexpr int64_t kMaxTokens = 256;

  // Allocates the static tensors (call before the memory plan, so it counts them) for the token counts
  // `buckets` (ascending, at most kMaxTokens; bucket_sizes(max_num_batched_tokens) unless vLLM's capture
  // sizes say otherwise, model/graph_sizes.h). The result of a replay (run) is the stage's residual
  // stream after its layers, [T, hidden] (Transformer::body).
  MixedGraphs(Transformer& model, Backend& backend, const Topology& topo, std::vector<int64_t> buckets, int64_t max_model_len,
              int64_t block_size);

  // Multiples of 16 below min(kMaxTokens, max_tokens), and that bound itself.
  static std::vector<int64_t> bucket_sizes(int64_t max_tokens);

 private:
  StepMeta padded(const StepMeta& real, int64_t bucket) const override {
    return pad_mixed_step(real, bucket, max_blocks_, max_model_len_);
  }
  bool accepts(const StepMeta&) const override { return true; }  // any step of a bucket's size
  void record(const StepMeta& meta, const Tensor& hidden_in, KvCache& kv, Tensor& out) override {
    model_.body(meta, hidden_in, kv, &out);
  }
};

}  // namespace llmserve
