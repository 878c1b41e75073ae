// Runs the model across the whole MPI world: each rank loads its shard, and step() moves
// activations stage to stage and gathers the last stage's vocabulary-parallel logits. Every rank
// calls step() with the same StepMeta.
#pragma once
#include <mpi.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "config/config.h"
#include "dist/mpi_comm.h"
#include "dist/topology.h"
#include "dist/transport.h"
#include "kv/kv_cache.h"
#include "model/decode_graphs.h"
#include "model/mixed_graphs.h"
#include "model/model_file.h"
#include "model/transformer.h"

namespace llmserve {

// Checks the config against the model (layout, max_model_len) and fills in derived values
// (max_model_len, max_num_batched_tokens). Throws Error.
void resolve_config_for_model(Config& cfg, const ModelSpec& spec);

class ModelRunner {
 public:
  // Collective over `world`. Failures on any rank throw AgreedError on every rank. With defer_kv (a draft
  // model's runner) it stops before the KV cache: allocate_kv makes it, warms up and records graphs.
  // `job`: the ranks sharing the node's GPUs and cores, by whose node-local index this rank takes its GPU
  // (world itself when null; the whole job where world is one replica of several: data_parallel_size).
  ModelRunner(Config& cfg, MPI_Comm world, bool defer_kv = false, MPI_Comm job = MPI_COMM_NULL);
  ~ModelRunner();

  const ModelSpec& spec() const { return spec_; }
  const Topology& topology() const { return topo_; }
  const Config& config() const { return cfg_; }
  int64_t num_blocks() const { return num_blocks_; }
  // The most KV blocks one request of max_model_len holds at once (peak_blocks: with a sliding window in every
  // layer, a window's and a step's, the scheduler giving back those before its window).
  int64_t request_blocks() const;
  int64_t num_host_blocks() const { return num_host_blocks_; }
  Backend& backend() { return *backend_; }
  KvCache& kv() { return *kv_; }
  Transformer& model() { return *model_; }
  // The LoRA adapters of lora_modules, in this order (a generate line's SamplingParams::lora is 1 + the
  // index; its uid in the engine too).
  const std::vector<LoraModuleSpec>& lora_modules() const { return lora_modules_; }
  // The slots of adapters the steps read (StepMeta::lora): lora_modules' all; with runtime LoRA updating
  // (VLLM_ALLOW_RUNTIME_LORA_UPDATING set for rank 0) max_cpu_loras of them (default max_loras), the first
  // of lora_modules in them at start-up, and load_lora puts any adapter into one between steps.
  bool runtime_lora() const { return runtime_lora_; }
  int lora_slots() const { return model_->lora_slots(); }
  // This rank's shard of the adapter at spec.path into slot `slot` (every rank, in step-plan order:
  // StepPlan::lora_loads). Throws Error when the adapter cannot be read or does not fit the model.
  void load_lora(int32_t slot, const LoraModuleSpec& spec);
  // Reads and checks the adapter as load_lora would (rank 0, before the load is planned).
  LoraAdapter read_lora(const LoraModuleSpec& spec) const;
  // Rank 0: the read of an adapter whose load is planned, for this rank's load_lora of it to take instead
  // of reading the files again (the engine's thread keeps it; the steps' thread takes it).
  void keep_checked_lora(const LoraModuleSpec& spec, LoraAdapter ad);
  // Speculative decoding with a draft model (speculative_config model): its runner on world rank 0, over
  // MPI_COMM_SELF, its KV cache as many blocks as this one's; null elsewhere and without one.
  ModelRunner* draft() { return draft_.get(); }
  MpiComm& tp_comm() { return *tp_comm_; }
  // The tensor group's communicator for GPU tensors (NCCL), or null (one rank per group, or the CPU
  // backend, whose tensors the MPI communicator serves).
  Comm* device_comm() { return device_comm_.get(); }
  // Activations to and from the neighbouring pipeline stages in device memory (NCCL), or null (one
  // stage, or the CPU backend: MPI carries host copies).
  DeviceStageLink* stage_link() { return stage_link_.get(); }
  int64_t block_size() const { return cfg_.block_size; }
  MpiComm& world() { return *world_; }
  // Sets up the calling thread to run this rank's steps (a thread other than the one that made the
  // runner: the server's engine thread, the asynchronous scheduler's step thread): OpenMP's thread
  // count is a per-thread setting that a new thread does not inherit.
  void enter_thread() const;

  // This stage's forward pass for one step (see Transformer::forward): through a recorded CUDA graph
  // when the step is a decode step that fits one, through a mixed-step graph of its layers (then the
  // head eagerly) when it is a small step of another kind, else eagerly.
  // (prompt_hidden: see Transformer::forward.)
  Tensor forward(const StepMeta& meta, const Tensor& hidden_in, Tensor* prompt_hidden = nullptr);
  // How this rank's forward passes ran so far: replaying a decode graph, replaying a mixed-step graph,
  // eagerly.
  struct ForwardKinds {
    int64_t decode_graph = 0, mixed_graph = 0, eager = 0;
  };
  const ForwardKinds& forward_kinds() const { return kinds_; }

  // A step's residual stream [T, hidden] (float32) to the next stage's rank of this tensor rank: over
  // the device link when there is one (queued; returns at once), else as bytes over MPI, through
  // `outbox` when given (non-blocking: rank 0 goes on scheduling), else by a blocking send.
  void send_hidden(const Tensor& hidden, Outbox* outbox = nullptr);
  // The previous stage's residual stream of a step of `tokens` tokens, as a tensor of this backend.
  Tensor recv_hidden(int64_t tokens);

  // Runs one step. Returns the logits [len(logits_indices) * vocab_size] on world rank 0, empty
  // elsewhere.
  std::vector<float> step(const StepMeta& meta);

 private:
  int omp_threads_ = 0;  // the OpenMP threads this rank's steps use (0: OpenMP's default)
  double kv_budget_gb(const KvCacheShape& shape);
  // The KV cache of `blocks` device blocks and `host_blocks` swap blocks (kv_shape_), the warm-up and the
  // graphs (collective over world_comm).
  void allocate_kv(MPI_Comm world_comm, long long blocks, long long host_blocks);
  Tensor max_batch_forward(KvCache& kv);
  void warm_up();
  Config& cfg_;
  Topology topo_;
  ModelSpec spec_;
  std::unique_ptr<MpiComm> world_, tp_comm_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Comm> device_comm_;  // NCCL over the tensor group when it runs on GPUs
  std::unique_ptr<DeviceStageLink> stage_link_;
  std::unique_ptr<Transformer> model_;
  std::vector<LoraModuleSpec> lora_modules_;
  bool runtime_lora_ = false;
  std::mutex checked_mu_;
  std::unordered_map<std::string, LoraAdapter> checked_lora_;  // keep_checked_lora's, by path
  std::unique_ptr<KvCache> kv_;
  KvCacheShape kv_shape_;
  std::unique_ptr<Config> draft_cfg_;
  std::unique_ptr<ModelRunner> draft_;
  std::unique_ptr<DecodeGraphs> graphs_;
  std::unique_ptr<MixedGraphs> mixed_graphs_;
  ForwardKinds kinds_;
  int64_t num_blocks_ = 0;
  int64_t num_host_blocks_ = 0;
};

}  // namespace llmserve
