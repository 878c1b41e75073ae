// What CUDA graphs of steps share (model/decode_graphs.h, model/mixed_graphs.h): one graph per bucket
// of token counts, recorded at start-up over the KV cache and replayed for every step that fits a
// bucket, the step padded to it; inputs and outputs in tensors allocated once, the graphs' temporaries
// in the graphs' own memory.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "dist/topology.h"
#include "kv/kv_cache.h"
#include "model/transformer.h"

namespace llmserve {

// A step `real` padded to `bucket` tokens (ids 0, positions 0, slots -1: padding writes no KV), its
// block tables read `max_blocks` apart for `seqs` sequences (only the real rows' entries held:
// StepMeta::table_width), kernels sized for `max_context`; sequences and logits rows left to the
// caller (pad_decode_step, pad_mixed_step).
StepMeta pad_step_tokens(const StepMeta& real, int64_t bucket, int64_t seqs, int64_t max_blocks, int64_t max_context);

class StepGraphs {
 public:
  virtual ~StepGraphs() = default;

  // Records one graph per bucket over the KV cache `kv` (which must stay where it is); with LoRA
  // adapters loaded, two (as vLLM's cudagraph_specialize_lora): one with the LoRA kernels for steps
  // with an adapter, one with the base model's fused ops for steps without. Returns the seconds it took.
  double capture(KvCache& kv);

  // Runs `meta` through the graph of the smallest bucket that holds its tokens when it fits one (the
  // LoRA graph when a sequence of the step has an adapter): true, with the recorded pass's result for
  // its T tokens in *result, a view of a static tensor valid until the next step.
  bool run(const StepMeta& meta, const Tensor& hidden_in, Tensor* result);

  const std::vector<int64_t>& buckets() const { return buckets_; }
  // How many graphs were recorded (a bucket's two with LoRA adapters loaded).
  int64_t graphs() const;

 protected:
  // `out_cols`: columns of the static result tensor (rows: the largest bucket).
  StepGraphs(Transformer& model, Backend& backend, const Topology& topo, std::vector<int64_t> buckets,
             int64_t max_model_len, int64_t block_size, int64_t out_cols);
  // The step as the graph of `bucket` runs it.
  virtual StepMeta padded(const StepMeta& real, int64_t bucket) const = 0;
  // Whether a step of at most the largest bucket's tokens, with positions and block tables inside
  // what was recorded, is of this kind.
  virtual bool accepts(const StepMeta& meta) const = 0;
  // The pass a graph records: over `meta`, from `hidden_in` (later stages), into `out`.
  virtual void record(const StepMeta& meta, const Tensor& hidden_in, KvCache& kv, Tensor& out) = 0;

  Transformer& model_;
  Backend& be_;
  Topology topo_;
  int64_t max_blocks_, max_model_len_;

 private:
  bool fits(const StepMeta& meta) const;
  std::vector<int64_t> buckets_;
  std::vector<int> graph_of_;       // graph id per bucket
  std::vector<int> lora_graph_of_;  // per bucket, recorded with the LoRA kernels (adapters loaded)
  Tensor in_, out_;            // [largest bucket, hidden] residual stream in (later stages); result out
  KvCache* kv_ = nullptr;
  bool dropped_ = false;
};

}  // namespace llmserve
