// The decoder (Qwen2 / Llama family) for one rank: the layers of its pipeline stage, holding its
// tensor-parallel shard of each weight. Written once against Backend and Comm.
//
// Sharding (Megatron style): q/k/v and gate/up are split by output rows (heads / intermediate),
// o_proj and down_proj by input columns, followed by an all-reduce in the tensor group; the
// embedding and lm_head are split by vocabulary rows. K/V heads are replicated when tp exceeds
// num_key_value_heads.
#pragma once
#include <array>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "dist/comm.h"
#include "dist/topology.h"
#include "kv/kv_cache.h"
#include "model/lora.h"
#include "model/weight_source.h"
#include "model/model_spec.h"

namespace llmserve {

struct LayerWeights {
  Tensor input_norm, post_norm;
  Tensor wq, wk, wv, bq, bk, bv, wo;
  Tensor q_norm, k_norm;  // per-head RMSNorm weights [head_dim] (ModelSpec::qk_norm)
  Tensor w_gate, w_up, w_down;
  // A mixture-of-experts layer (moe_layer) instead of w_gate / w_up / w_down: the router [E, H] (every rank
  // all of it) and the experts' matrices as Backend::moe takes them, each expert's intermediate split
  // over the tensor group as a dense MLP's is: gate_up [E * 2M, H], down [E * H, M] (M its share).
  Tensor router, experts_gate_up, experts_down;
  // Qwen2-MoE's shared expert (ModelSpec::shared_expert_intermediate_size) in w_gate / w_up / w_down, split as
  // a dense MLP's, and its gate [1, H] (every rank all of it).
  Tensor shared_gate;
};

// The LoRA adapters' updates to one group of a layer's projections that share an input (q/k/v; o;
// gate/up; down) as this rank holds them, stacked for Backend::lora_shrink / lora_expand in the compute
// type: `a` [adapters, n * R, in] holds the A matrices of the group's n adapted projections side by side,
// bt[j] [adapters, R, out] projection j's B^T (the adapter's scaling folded in), R the adapters' largest
// rank (zeros pad a smaller rank, and an adapter that leaves a projection alone). Cut as the projections
// are: a column-parallel projection's B by rows, a row-parallel one's A by columns. which[j]: the
// projection's place in its group (q 0, k 1, v 2; gate 0, up 1).
struct LoraGroup {
  int n = 0;  // adapted projections (0: no adapter touches the group)
  Tensor a;
  std::array<Tensor, 3> bt;
  std::array<int, 3> which{};
};
enum LoraGroupId : int { kLoraQkv, kLoraOut, kLoraGateUp, kLoraDownGroup, kLoraGroups };
using LoraLayer = std::array<LoraGroup, kLoraGroups>;

// What one rank holds of the model.
struct ShardInfo {
  int64_t q_heads = 0;         // local query heads
  int64_t kv_heads = 0;        // local key/value heads
  int64_t kv_head_begin = 0;   // first global kv head held
  int64_t intermediate = 0;    // local intermediate size
  int64_t moe_intermediate = 0;  // local share of each expert's intermediate size (mixtures of experts)
  int64_t shared_intermediate = 0;  // local share of the shared expert's (Qwen2-MoE)
  Range vocab;                 // vocabulary rows held (embedding and lm_head)
  int64_t vocab_padded = 0;    // rows per tp rank, for gathers (ceil(V / tp))
  LayerRange layers;           // layers of this stage
};

ShardInfo make_shard_info(const ModelSpec& s, const Topology& topo);

// Bytes of the weights a rank with shard `sh` holds once loaded with element type `dt` and the layers'
// matrices as `matrix_dt` (dt, or F8E4M3 where a backend holds `quantization: fp8` codes: a byte a
// weight and a float32 scale a row) (what the Transformer constructor allocates; the attention biases
// stay float32). O(1): checked before loading.
double shard_weight_bytes(const ModelSpec& s, const ShardInfo& sh, bool first_stage, bool last_stage, DType dt,
                          DType matrix_dt);
// The largest of a layer's matrices (q/k/v and gate/up stacked) held as `dt`: a GPU backend expands FP8
// matrices into a device buffer that large for GEMMs of many tokens.
double largest_matrix_bytes(const ModelSpec& s, const ShardInfo& sh, DType dt);
// What a model of spec `s` cannot be served with (mixtures of experts: quantization fp8, cpu_offload_gb on a
// GPU, LoRA adapters), as an Error naming it; nothing for a dense model.
void check_moe_options(const ModelSpec& s, bool fp8, bool offload, bool lora);

// vLLM's cpu_offload_gb: a layer's matrices (q/k/v, o_proj, gate/up, down), layer after layer from the
// stage's first, are kept in the host's pinned memory, which the GPU reads over its bus at every step,
// while fewer than `budget` bytes are offloaded (so the last one may pass the budget, as in vLLM). The
// norms, biases, embedding and lm_head stay on the device. Returns the bytes that rule offloads for
// shard `sh` (what the Transformer constructor puts in host memory when given that budget), and in
// `largest` (where given) the bytes of the largest matrix offloaded (a GPU backend keeps a device buffer
// that large to copy each into for a GEMM of many tokens). `dt`: how the matrices are held (F8E4M3 for
// FP8 codes, as shard_weight_bytes' matrix_dt).
double offloaded_weight_bytes(const ModelSpec& s, const ShardInfo& sh, DType dt, double budget, double* largest = nullptr);

class Transformer {
 public:
  // Reads this rank's shard from `file` (hyperslab reads: nothing else is touched). With
  // `offload_budget` > 0, matrices go to host memory by offloaded_weight_bytes' rule
  // (Backend::upload_to_host_memory). With `fp8` (`quantization: fp8`), the layers' matrices are
  // quantized to FP8 E4M3 with a scale per row as the shard is loaded (Backend::upload_fp8: a
  // row-parallel matrix's rows are this rank's columns of them); norms, biases, the embedding and
  // lm_head keep the activation type.
  Transformer(const ModelSpec& spec, const Topology& topo, Backend& backend, Comm& tp_comm, const WeightSource& file,
              double offload_budget = 0, bool fp8 = false);

  const ModelSpec& spec() const { return spec_; }
  const ShardInfo& shard() const { return shard_; }
  // Bytes of weights kept in host memory (cpu_offload_gb), and the number of layers with any there.
  double offloaded_bytes() const { return offloaded_bytes_; }
  int offloaded_layers() const { return offloaded_layers_; }

  // Runs this stage for one step. `hidden_in` is the float32 residual stream [T, hidden] from the
  // previous stage (ignored on the
  // first stage). Returns [T, hidden] for the next stage, or, on the last stage, this rank's logits
  // shard [len(logits_indices), vocab_padded]. With `out` (float32, at least as many rows) the result
  // is written into out's first rows and returned as a view of them, and nothing allocated by the
  // call outlives it (what a recorded graph needs).
  // With meta.prompt_rows > 0 (last stage), the logits cover the other rows only, and *prompt_hidden
  // gets the prompt rows' final-norm hidden states [prompt_rows, hidden] for logits().
  Tensor forward(const StepMeta& meta, const Tensor& hidden_in, KvCache& kv, Tensor* out = nullptr,
                 Tensor* prompt_hidden = nullptr);
  // forward() in two parts. body: begin_step, then the embedding (first stage) or hidden_in, then this
  // stage's layers; returns the float32 residual stream [T, hidden] after them, in x_out's first rows
  // when given (float32, at least T rows; then nothing the call allocates outlives it, as a recorded
  // graph needs). head (last stage, after body): the final norm and logits of meta.logits_indices'
  // rows of x, as forward() returns them.
  Tensor body(const StepMeta& meta, const Tensor& hidden_in, KvCache& kv, Tensor* x_out = nullptr);
  Tensor head(const StepMeta& meta, const Tensor& x, Tensor* out = nullptr, Tensor* prompt_hidden = nullptr);
  // This rank's logits shard [rows, vocab_padded] (float32) of final-norm hidden states (last stage).
  Tensor logits(const Tensor& normed);
  // Loads LoRA adapters as slots 1.. (StepMeta::lora): this rank's shard of their updates to this stage's
  // layers, stacked (LoraGroup). A step with StepMeta::lora (any sequence with an adapter; recorded graphs
  // are recorded with it) hands each group of projections' op a delta (Backend::LoraDelta): the op runs one
  // shrink for all the step's adapters and adds the expand (rows without an adapter are left alone), so
  // one recorded graph serves any mix of adapters.
  // (reserve_loras for the projections some adapter updates and their largest rank, then put_lora each.)
  void set_loras(const std::vector<LoraAdapter>& adapters);
  // Stacks of `slots` adapters of rank `rank` for the projections of `targets`, every slot zero (an
  // adapter that changes nothing), in place of any loaded. They stay where they are: put_lora writes into
  // them, so recorded graphs go on reading the adapters loaded later (runtime LoRA updating).
  void reserve_loras(int slots, int rank, const std::array<bool, kLoraTargets>& targets);
  // This rank's shard of `ad` into slot `slot` (1..lora_slots()), replacing what it held. Throws Error
  // when its rank passes the reserved one or it updates a projection the stacks were not reserved for.
  void put_lora(int slot, const LoraAdapter& ad);
  int lora_slots() const { return lora_slots_; }

 private:
  void all_reduce(Tensor& t);
  const ModelSpec spec_;
  const Topology topo_;
  Backend& be_;
  Comm& tp_comm_;
  ShardInfo shard_;
  Tensor embed_, final_norm_, lm_head_, inv_freq_;
  std::vector<LayerWeights> layers_;
  std::vector<LoraLayer> lora_;  // [layer of this stage]
  int lora_slots_ = 0;
  int64_t lora_rank_ = 0;         // R: the stacks' rank
  int64_t lora_width_ = 0;        // the most columns of a group's shrink (n * R)
  std::array<bool, kLoraTargets> lora_targets_{};  // the projections the stacks hold
  double offloaded_bytes_ = 0;
  int offloaded_layers_ = 0;
};

}  // namespace llmserve
