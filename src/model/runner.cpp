#include "model/runner.h"

#include <cmath>

#ifdef LLMSERVE_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#include "dist/nccl/nccl_comm.h"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/text.h"
#include "dist/collective_check.h"
#include "engine/speculative.h"
#include "kv/block_manager.h"
#include "model/dummy_weights.h"
#include "model/graph_sizes.h"
#include "model/memory_plan.h"

namespace llmserve {

void resolve_config_for_model(Config& cfg, const ModelSpec& spec) {
  model_spec_check_layout(spec, cfg.tensor_parallel_size, cfg.pipeline_parallel_size);
  int64_t limit = model_context_length(spec);
  // Sliding-window attention: served with its window (each sliding layer's positions attend to the last
  // sliding_window keys), or with disable_sliding_window as vLLM serves it then: full attention, which is
  // the same up to the window, and max_model_len at most the window.
  const bool window = spec.sliding_window > 0 && spec.sliding_window < limit && cfg.disable_sliding_window;
  if (window) limit = spec.sliding_window;
  if (cfg.max_model_len == 0) cfg.max_model_len = limit;
  if (cfg.max_model_len > limit) {
    const bool scaled = spec.rope_scaling.type != "none" && spec.rope_scaling.type != "llama3";
    const std::string why = window ? "its sliding window, with disable_sliding_window"
                                   : cat("max_position_embeddings ", spec.max_position_embeddings, scaled ? ", with its rope_scaling" : "");
    throw Error(cat("config: max_model_len (", cfg.max_model_len, ") is larger than the model's context of ", limit,
                    " positions (", why, ")"));
  }
  if (cfg.max_num_batched_tokens == 0)
    cfg.max_num_batched_tokens = cfg.enable_chunked_prefill ? std::max<int64_t>(8192, cfg.max_num_seqs)
                                                            : std::max<int64_t>(cfg.max_model_len, cfg.max_num_seqs);
  if (!cfg.enable_chunked_prefill && cfg.max_num_batched_tokens < cfg.max_model_len)
    throw Error(cat("config: max_num_batched_tokens (", cfg.max_num_batched_tokens, ") is smaller than max_model_len (",
                    cfg.max_model_len, "); enable chunked prefill or raise max_num_batched_tokens"));
  if (cfg.max_num_batched_tokens < cfg.max_num_seqs)
    throw Error(cat("config: max_num_batched_tokens (", cfg.max_num_batched_tokens, ") must be >= max_num_seqs (",
                    cfg.max_num_seqs, ")"));
}

namespace {

// Refuses a model whose weights cannot fit before any is allocated: a dummy model of 10^8 layers spent
// minutes listing its tensors, a 10^12-row vocabulary died of std::bad_alloc. `need` is this rank's
// weight bytes on its device, `node_need` the sum over the ranks of its node of what they keep in host
// memory. On a GPU the room is the device's free memory, and the offloaded weights (cpu_offload_gb)
// need pinned host memory; on the CPU backend every weight is in host memory, which the node's ranks
// share (cgroup limits included).
void check_weights_fit(Backend& be, const Topology& topo, double need, double node_need, int local_size,
                       double offloaded) {
  size_t free_b = 0, total_b = 0;
  const std::string layout = cat(dtype_name(be.compute_dtype()), ", tp=", topo.tp, " pp=", topo.pp);
  const bool device = be.device_memory(&free_b, &total_b);
  if (device && need > static_cast<double>(free_b))
    throw Error(cat("model weights: this rank's shard needs ", gib(need), " GiB on its GPU (", layout,
                    offloaded > 0 ? cat(", ", gib(offloaded), " GiB more offloaded by cpu_offload_gb") : std::string(),
                    "), more than the ", gib(static_cast<double>(free_b)),
                    " GiB free on its GPU; spread the model over more GPUs (tensor_parallel_size, pipeline_parallel_size), raise cpu_offload_gb or use a smaller one"));
  size_t avail = 0;
  std::string source;
  if (node_need <= 0 || !host_memory_available(&avail, &source) || node_need <= static_cast<double>(avail)) return;
  const std::string room = cat("more than the ", gib(static_cast<double>(avail)), " GiB of host memory available (", source, ")");
  if (device)
    throw Error(cat("cpu_offload_gb: the offloaded weights need ", gib(node_need), " GiB of pinned host memory",
                    local_size > 1 ? cat(" for the ", local_size, " ranks of this node (this rank ", gib(offloaded), " GiB)") : std::string(),
                    ", ", room, "; lower cpu_offload_gb"));
  throw Error(cat("model weights: ",
                  local_size > 1 ? cat("the ", local_size, " ranks of this node need ", gib(node_need), " GiB in all (this rank ", gib(need), " GiB, ")
                                 : cat("this rank's shard needs ", gib(need), " GiB ("),
                  layout, "), ", room,
                  "; spread the ranks (tensor_parallel_size, pipeline_parallel_size) over more nodes or use a smaller model"));
}

// A draft model's configuration (speculative_config model): the target's backend, dtype, block size and
// scheduling limits (max_model_len and max_num_batched_tokens as resolved for the target), its own file,
// one rank, and none of the target's adapters, offloading, quantization, swap space or speculation.
Config draft_config(const Config& target, const SpeculativeConfig& sc) {
  Config d = target;
  d.model = sc.model;
  d.hf_overrides.clear();
  d.tensor_parallel_size = d.pipeline_parallel_size = 1;
  d.swap_space = 0;
  d.cpu_offload_gb = 0;
  d.quantization.clear();
  d.kv_cache_memory_gb = 0;
  d.num_gpu_blocks_override = 0;
  d.enable_lora = false;
  d.lora_modules.clear();
  d.speculative_config.clear();
  d.runner = "generate";
  d.convert = "auto";
  d.pooler_config.clear();
  d.given.clear();
  return d;
}

// The graph log's note when each bucket was recorded twice, with and without the LoRA kernels.
std::string lora_twice(const StepGraphs& g) {
  return g.graphs() > static_cast<int64_t>(g.buckets().size()) ? ", each with and without LoRA" : "";
}

}  // namespace

ModelRunner::ModelRunner(Config& cfg, MPI_Comm world_comm, bool defer_kv, MPI_Comm job) : cfg_(cfg) {
  world_ = std::make_unique<MpiComm>(world_comm, false);
  std::unique_ptr<WeightSource> file;
  // This rank's index among the ranks of its node picks its GPU.
  int local_rank = 0, local_size = 1;
  MPI_Comm node;
  MPI_Comm_split_type(job != MPI_COMM_NULL ? job : world_comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
#ifdef _OPENMP
  // OpenMP threads (the CPU backend's kernels, the sampler's host passes): the node's cores shared among
  // its ranks, unless OMP_NUM_THREADS says otherwise (eight ranks of a node each taking every core would
  // run eight times as many threads as cores).
  if (!std::getenv("OMP_NUM_THREADS")) omp_threads_ = std::max(1, omp_get_num_procs() / local_size);
  enter_thread();
#endif
  double need = 0;       // this rank's weight bytes
  double offloaded = 0;  // of which cpu_offload_gb keeps in host memory (GPUs only)
  double offload_stage = 0;  // the device buffer a GEMM of many tokens copies an offloaded matrix into
  const double offload_budget = cfg_.cpu_offload_gb * static_cast<double>(1ull << 30);  // GiB, as vLLM's
  agree(world_comm, [&] {
    config_validate(cfg_);
    topo_ = make_topology(world_->rank(), world_->size(), cfg_.tensor_parallel_size, cfg_.pipeline_parallel_size);
    std::unique_ptr<ModelFile> h5;  // null for a dummy model, whose tensors are listed once it is known to fit
    if (cfg_.load_format == "dummy") {
      spec_ = dummy_model_spec(cfg_.model, cfg_.hf_overrides);
    } else {
      h5 = std::make_unique<ModelFile>(cfg_.model);
      spec_ = h5->spec();
      if (!cfg_.hf_overrides.empty()) apply_hf_overrides(spec_, cfg_.hf_overrides);
    }
    resolve_config_for_model(cfg_, spec_);
    if (cfg_.disable_sliding_window) {  // (full attention in every layer)
      spec_.sliding_window = 0;
      spec_.sliding_window_layers.clear();
    }
    backend_ = make_backend(cfg_.backend, local_rank, resolve_dtype(cfg_.dtype, spec_.torch_dtype));
    const ShardInfo shard = make_shard_info(spec_, topo_);
    const DType dt = backend_->compute_dtype();
    const bool fp8 = cfg_.quantization == "fp8";
    if (fp8 && backend_->name() != "cpu" && dt == DType::F32)
      throw Error("quantization fp8 computes with 16-bit activations on a GPU: set dtype to bfloat16 or float16 (or auto)");
    check_moe_options(spec_, fp8, cfg_.cpu_offload_gb > 0 && backend_->name() != "cpu", cfg_.enable_lora);
    const DType matrix_dt = fp8 ? backend_->fp8_matrix_dtype() : dt;
    need = shard_weight_bytes(spec_, shard, topo_.first_stage(), topo_.last_stage(), dt, matrix_dt);
    if (cfg_.cpu_offload_gb > 0 && backend_->name() != "cpu")
      offloaded = offloaded_weight_bytes(spec_, shard, matrix_dt, offload_budget, &offload_stage);
    // FP8 matrices are expanded to 16 bits in that buffer for GEMMs of many tokens (offloaded ones too).
    if (matrix_dt == DType::F8E4M3) offload_stage = largest_matrix_bytes(spec_, shard, dt);
    file = std::move(h5);
  });
  // Every rank gets here (the block above agrees on errors), so the node's sum cannot hang.
  double host_need = backend_->name() == "cpu" ? need : offloaded, node_need = 0;
  MPI_Allreduce(&host_need, &node_need, 1, MPI_DOUBLE, MPI_SUM, node);
  MPI_Comm_free(&node);
  agree(world_comm, [&] {
    check_weights_fit(*backend_, topo_, need - offloaded + offload_stage, node_need, local_size, offloaded);
    if (!file) file = std::make_unique<DummyWeights>(spec_, cfg_.model, static_cast<uint64_t>(cfg_.seed));
  });
  if (job == MPI_COMM_NULL) log_set_rank(topo_.world_rank);  // (one replica of several: the job's rank, set by main)
  if (backend_->name() == "cpu" && cfg_.dtype != "auto" && cfg_.dtype != "float" && cfg_.dtype != "float32")
    log_warn("dtype ", cfg_.dtype, " applies to the CUDA backend; the CPU backend computes in float32");
  if (backend_->name() == "cpu" && cfg_.cpu_offload_gb > 0)
    log_warn("cpu_offload_gb has no effect on the CPU backend (its weights are in host memory already)");
  tp_comm_ = mpi_split(world_comm, topo_.stage(), topo_.tp_rank());
  // The model's all-reduces work on backend tensors: MPI for host memory, NCCL for GPU memory.
  Comm* model_comm = tp_comm_.get();
#ifdef LLMSERVE_WITH_CUDA
  // NCCL queues on the backend's stream: ordered with the kernels, and recorded with them into graphs.
  if (backend_->name() == "cuda") {
    void* stream = static_cast<CudaBackend&>(*backend_).stream();
    if (topo_.tp > 1) {
      agree(world_comm, [&] { device_comm_ = make_nccl_comm(tp_comm_->handle(), stream); });
      model_comm = device_comm_.get();
    }
    // NCCL needs a GPU per rank; ranks sharing GPUs (more ranks on a node than it has GPUs, as in
    // single-GPU tests of a pipeline) pass activations over MPI.
    int shared = local_size > cuda_device_count() ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &shared, 1, MPI_INT, MPI_MAX, world_comm);
    if (topo_.pp > 1 && !shared) agree(world_comm, [&] { stage_link_ = make_nccl_stage_link(world_comm, topo_, stream); });
    if (topo_.pp > 1)
      log_info("pipeline stages pass activations over ", shared ? "MPI (ranks share GPUs: no NCCL)" : "NCCL point-to-point");
  }
#endif
  agree(world_comm, [&] {
    model_ = std::make_unique<Transformer>(spec_, topo_, *backend_, *model_comm, *file, offloaded > 0 ? offload_budget : 0,
                                           cfg_.quantization == "fp8");
  });
  file.reset();
  // LoRA adapters (lora_modules), slot 1.. in their order, every rank its shard of each. With runtime
  // LoRA updating (VLLM_ALLOW_RUNTIME_LORA_UPDATING on rank 0, as vLLM's), the stacks hold
  // max_cpu_loras adapters (vLLM's default max_loras) of max_lora_rank on every projection, so that
  // adapters loaded later go into place: lora_modules' first, the rest as requests need them (Engine).
  int runtime = 0;
  if (topo_.world_rank == 0 && cfg_.enable_lora) runtime = env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING") ? 1 : 0;
  MPI_Bcast(&runtime, 1, MPI_INT, 0, world_comm);
  runtime_lora_ = runtime != 0;
  agree(world_comm, [&] {
    if (cfg_.enable_lora && cfg_.lora_dtype != "auto" && dtype_from_name(cfg_.lora_dtype) != backend_->compute_dtype())
      throw Error(cat("lora_dtype ", cfg_.lora_dtype, " differs from the model's dtype (", dtype_name(backend_->compute_dtype()),
                      "): llmserve holds adapters in the model's dtype; use auto"));
    std::vector<LoraAdapter> adapters;
    for (const auto& text : cfg_.lora_modules) {
      const LoraModuleSpec m = parse_lora_module(text);
      adapters.push_back(load_lora_adapter(m, spec_, cfg_.max_lora_rank));
      lora_modules_.push_back(m);
      log_info("LoRA adapter ", m.name, " (", m.path, "): rank ", adapters.back().rank, ", scaling ", adapters.back().scaling);
    }
    if (!runtime_lora_) return model_->set_loras(adapters);
    const int slots = cfg_.max_cpu_loras > 0 ? cfg_.max_cpu_loras : cfg_.max_loras;
    std::array<bool, kLoraTargets> all;
    all.fill(true);
    model_->reserve_loras(slots, cfg_.max_lora_rank, all);
    for (size_t i = 0; i < adapters.size() && static_cast<int>(i) < slots; ++i) model_->put_lora(static_cast<int>(i) + 1, adapters[i]);
    log_info("runtime LoRA updating: ", slots, " adapter slots of rank ", cfg_.max_lora_rank,
             " (max_cpu_loras) on every projection, adapters loaded into them as requests need them; POST /v1/load_lora_adapter, "
             "/v1/unload_lora_adapter");
  });
  if (model_->offloaded_bytes() > 0)
    log_info("cpu_offload_gb: ", gib(model_->offloaded_bytes()), " GiB of weights (the matrices of ", model_->offloaded_layers(),
             " of this stage's ", model_->shard().layers.end - model_->shard().layers.begin, " layers) in pinned host memory, read by the GPU over its bus at every step");
  // CUDA graphs for decode steps; their static tensors exist before the memory plan, which counts them.
  // (vLLM's cudagraph_mode and capture sizes pick which: model/graph_sizes.h)
  const GraphPlan plan = graph_plan(cfg_);
  // (A mixture of experts in graphs only where the backend routes every graph's tokens on the device.)
  int64_t graph_tokens = 0;
  for (const auto* sizes : {&plan.decode, &plan.mixed})
    for (int64_t n : *sizes) graph_tokens = std::max(graph_tokens, n);
  const bool moe_eager = spec_.num_experts > 0 &&
                         !backend_->moe_in_graphs(graph_tokens, spec_.num_experts, spec_.num_experts_per_tok, spec_.hidden_size,
                                                  spec_.moe_intermediate_size / topo_.tp);
  const bool graphs = backend_->supports_graphs() && !(plan.decode.empty() && plan.mixed.empty()) && !moe_eager;
  if (backend_->supports_graphs() && moe_eager && graph_tokens > 0)
    log_info("no CUDA graphs: this mixture of experts' steps of up to ", graph_tokens, " tokens are routed on the host, so every step runs eagerly");
  else if (backend_->supports_graphs() && !graphs)
    log_info("no CUDA graphs (enforce_eager, cudagraph_mode NONE, -O0 or no capture size in range): every step runs eagerly");
  if (graphs) {
    agree(world_comm, [&] {
      if (!plan.decode.empty())
        graphs_ = std::make_unique<DecodeGraphs>(*model_, *backend_, topo_, plan.decode, cfg_.max_model_len, cfg_.block_size);
      if (!plan.mixed.empty())
        mixed_graphs_ = std::make_unique<MixedGraphs>(*model_, *backend_, topo_, plan.mixed, cfg_.max_model_len, cfg_.block_size);
      // Room for the largest graph's metadata (a mixed step's padding tokens are sequences of their own).
      const int64_t seqs = std::max<int64_t>(cfg_.max_num_seqs, plan.mixed.empty() ? 0 : plan.mixed.back());
      backend_->reserve_step(std::max<int64_t>(cfg_.max_num_batched_tokens, cfg_.max_num_seqs), seqs,
                             seqs * ((cfg_.max_model_len + cfg_.block_size - 1) / cfg_.block_size));
    });
  }

  // KV cache: as many blocks as the budget allows on the tightest rank (all ranks must agree, since
  // rank 0 hands out block ids for everyone).
  const ShardInfo& sh = model_->shard();
  KvCacheShape& shape = kv_shape_;
  shape.num_layers = sh.layers.end - sh.layers.begin;
  shape.block_size = cfg_.block_size;
  shape.kv_heads = sh.kv_heads;
  shape.head_dim = spec_.head_dim;
  // kv_cache_dtype fp8: E4M3 codes with scale 1 (vLLM's default scales), a byte an element.
  shape.dtype = cfg_.kv_cache_dtype == "auto" ? backend_->compute_dtype() : DType::F8E4M3;
  if (shape.dtype == DType::F8E4M3) {
    // Room to widen a prefill's cache blocks to 16 bits once per layer (GPUs): the blocks of a sequence of
    // max_model_len plus a step's worth of other tokens; taken before the memory plan, which so counts it.
    const size_t widen = backend_->reserve_kv_widening(cfg_.max_model_len + cfg_.max_num_batched_tokens, shape.block_size,
                                                       shape.kv_heads, shape.head_dim);
    if (widen > 0)
      log_info("kv_cache_dtype fp8: ", gib(static_cast<double>(widen)), " GiB to widen a prefill's cache blocks (up to ",
               cfg_.max_model_len + cfg_.max_num_batched_tokens, " positions) to ", dtype_name(backend_->compute_dtype()),
               " once per layer");
  }
  if (defer_kv) return;  // a draft model: the runner it drafts for sizes its cache (allocate_kv)
  // Speculative decoding with a draft model (vLLM's speculative_config model): world rank 0 runs it alone,
  // loaded before this model's memory plan so that its weights count as memory in use, and its cache
  // takes as many blocks as this model's from the same budget (as vLLM sizes a draft's cache).
  agree(world_comm, [&] {
    if (topo_.world_rank != 0) return;
    const SpeculativeConfig sc = parse_speculative_config(cfg_.speculative_config);
    if (sc.method != SpecMethod::DraftModel) return;
    draft_cfg_ = std::make_unique<Config>(draft_config(cfg_, sc));
    try {
      draft_.reset(new ModelRunner(*draft_cfg_, MPI_COMM_SELF, true));
    } catch (const Error& e) {
      throw Error(cat("speculative_config model '", sc.model, "': ", e.what()));
    }
    draft_->omp_threads_ = omp_threads_;
    enter_thread();  // (the draft's runner set its own thread count)
    if (draft_->spec().vocab_size > spec_.vocab_size)
      log_warn("speculative_config: the draft model's vocabulary (", draft_->spec().vocab_size, " tokens) is larger than this model's (",
               spec_.vocab_size, "): a proposal ends before a token this model does not have");
    log_info("speculative decoding: draft model ", sc.model, " (", draft_->spec().architecture, ", ", draft_->spec().num_layers,
             " layers, hidden ", draft_->spec().hidden_size, ") on this rank, ", sc.num_speculative_tokens, " tokens a step");
  });
  const double draft_block_bytes = draft_ ? static_cast<double>(draft_->kv_shape_.bytes_per_block()) : 0.0;
  // GiB to whole blocks, saturating (a budget of 1e30 GiB overflowed the conversion to a negative count).
  auto blocks_in = [&](double gib, double extra) {
    const double b = std::floor(gib * static_cast<double>(1ull << 30) / (static_cast<double>(shape.bytes_per_block()) + extra));
    return b >= 1e15 ? static_cast<long long>(1e15) : static_cast<long long>(b);
  };
  long long blocks = blocks_in(kv_budget_gb(shape), draft_block_bytes);
  const long long useful = static_cast<long long>(cfg_.max_num_seqs) * ((cfg_.max_model_len + cfg_.block_size - 1) / cfg_.block_size);
  blocks = std::min(blocks, useful);
  if (cfg_.num_gpu_blocks_override > 0) blocks = cfg_.num_gpu_blocks_override;
  // Swapped blocks belong to preempted sequences, of which there are never more than max_num_seqs.
  long long host = std::min(blocks_in(cfg_.swap_space, 0), useful);
  long long counts[2] = {blocks, host};
  MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_LONG_LONG, MPI_MIN, world_comm);
  allocate_kv(world_comm, counts[0], counts[1]);
  agree(world_comm, [&] {
    if (draft_) draft_->allocate_kv(MPI_COMM_SELF, counts[0], 0);
  });
#ifdef _OPENMP
  log_info("OpenMP: ", omp_get_max_threads(), " threads per rank", std::getenv("OMP_NUM_THREADS") ? " (OMP_NUM_THREADS)" : "",
           "; ", local_size, " rank(s) on this node");
#endif
}

void ModelRunner::allocate_kv(MPI_Comm world_comm, long long blocks, long long host_blocks) {
  KvCacheShape& shape = kv_shape_;
  num_blocks_ = blocks;
  num_host_blocks_ = host_blocks;
  shape.num_blocks = blocks;
  agree(world_comm, [&] {
    if (blocks < request_blocks())
      throw Error(cat("KV cache: ", blocks, " blocks of ", cfg_.block_size, " tokens cannot hold one sequence of max_model_len ",
                      cfg_.max_model_len, "; raise kv_cache_memory_gb or lower max_model_len"));
    kv_ = std::make_unique<KvCache>(*backend_, shape, num_host_blocks_);
  });
  warm_up();
  if (graphs_) {
    double secs = 0;
    agree(world_comm, [&] { secs = graphs_->capture(*kv_); });
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f s, %.1f MiB", secs, static_cast<double>(backend_->graph_memory()) / (1 << 20));
    log_info("CUDA graphs: ", graphs_->buckets().size(), " decode batch sizes recorded (", graphs_->buckets().front(), "..",
             graphs_->buckets().back(),
             lora_twice(*graphs_), ") in ", buf, " of graph memory");
  }
  if (mixed_graphs_ && !mixed_graphs_->buckets().empty()) {
    const size_t before = backend_->graph_memory();
    double secs = 0;
    agree(world_comm, [&] { secs = mixed_graphs_->capture(*kv_); });
    const size_t after = backend_->graph_memory();
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f s, %.1f MiB", secs, static_cast<double>(after - std::min(before, after)) / (1 << 20));
    log_info("CUDA graphs: ", mixed_graphs_->buckets().size(), " mixed-step token counts recorded (",
             mixed_graphs_->buckets().front(), "..", mixed_graphs_->buckets().back(), ", layers only",
             lora_twice(*mixed_graphs_), ") in ", buf,
             " of graph memory more");
  }
  log_info("model ", spec_.architecture, " loaded: ", spec_.num_layers, " layers, hidden ", spec_.hidden_size,
           ", vocab ", spec_.vocab_size, "; layout tp=", topo_.tp, " pp=", topo_.pp, "; backend ", backend_->name(),
           "; KV cache ", num_blocks_, " blocks x ", cfg_.block_size, " tokens, swap space ", num_host_blocks_, " blocks");
  if (spec_.rope_scaling.type != "none")
    log_info("rope_scaling ", spec_.rope_scaling.type, ", factor ", spec_.rope_scaling.factor,
             spec_.rope_scaling.type == "yarn" ? cat(" over ", spec_.rope_scaling.original_max_position_embeddings,
                                                     " positions, attention factor ", rope_attention_factor(spec_))
                                               : std::string(),
             "; context ", model_context_length(spec_), " positions, max_model_len ", cfg_.max_model_len);
  {  // vLLM's "maximum concurrency" line: how many sequences of max_model_len the KV cache holds at once
    char x[32];
    const long long tokens = num_blocks_ * static_cast<long long>(cfg_.block_size);
    if (const int64_t w = window_of_every_layer(spec_); w > 0) {
      // (a request holds a window's and a step's blocks: the scheduler gives back those before its window)
      std::snprintf(x, sizeof x, "%.2fx", static_cast<double>(num_blocks_) / static_cast<double>(request_blocks()));
      log_info("KV cache: ", tokens, " tokens; a sliding window of ", w, " positions in every layer: blocks before a ",
               "sequence's window are given back, so a request holds at most ", request_blocks(),
               " blocks; maximum concurrency for ", cfg_.max_model_len, " tokens per request: ", x);
    } else {
      std::snprintf(x, sizeof x, "%.2fx", static_cast<double>(tokens) / static_cast<double>(cfg_.max_model_len));
      log_info("KV cache: ", tokens, " tokens; maximum concurrency for ", cfg_.max_model_len, " tokens per request: ", x);
    }
    if (shape.dtype == DType::F8E4M3)
      log_info("KV cache dtype ", cfg_.kv_cache_dtype, ": keys and values stored as FP8 E4M3 with scale 1 (values past +-448 saturate)");
  }
}

int64_t ModelRunner::request_blocks() const {
  // (a step's tokens: a chunk, or without chunked prefill a whole prompt, as the scheduler plans them)
  return peak_blocks(cfg_.max_model_len, cfg_.block_size, window_of_every_layer(spec_),
                     cfg_.enable_chunked_prefill ? cfg_.max_num_batched_tokens : cfg_.max_model_len);
}

ModelRunner::~ModelRunner() = default;

// One forward pass of the largest step the scheduler can plan: max_num_batched_tokens tokens of one
// sequence over blocks 0.. of `kv` (block ids wrap around when the cache has fewer), with the logits of
// its last min(T, max_num_seqs x (1 + num_speculative_tokens)) rows and the other rows as prompt_logprobs rows; zero activations from
// the previous stage. Returns this stage's output (the sampled rows' logits shard on the last stage).
Tensor ModelRunner::max_batch_forward(KvCache& kv) {
  const int64_t T = cfg_.max_num_batched_tokens, H = spec_.hidden_size, bs = cfg_.block_size;
  const int64_t blocks = (T + bs - 1) / bs, have = kv.shape().num_blocks;
  StepMeta m;
  m.token_ids.assign(static_cast<size_t>(T), 0);
  m.positions.resize(static_cast<size_t>(T));
  m.slot_mapping.resize(static_cast<size_t>(T));
  m.block_tables.resize(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) m.block_tables[b] = static_cast<int32_t>(b % have);
  for (int64_t i = 0; i < T; ++i) {
    m.positions[i] = static_cast<int32_t>(i);
    m.slot_mapping[i] = static_cast<int32_t>(m.block_tables[i / bs] * bs + i % bs);
  }
  m.q_start = {0, static_cast<int32_t>(T)};
  m.max_blocks = static_cast<int32_t>(blocks);
  // The last rows sample; every other token is a prompt_logprobs row (the most final hidden states a
  // step keeps), of which one slice of logits is made, as the worker does.
  // (With speculative decoding a sequence samples after each of its drafts too.)
  const int64_t rows = std::min<int64_t>(T, int64_t{cfg_.max_num_seqs} * (1 + parse_speculative_config(cfg_.speculative_config).num_speculative_tokens));
  for (int64_t i = T - rows; i < T; ++i) m.logits_indices.push_back(static_cast<int32_t>(i));
  for (int64_t i = 0; i < T - rows; ++i) m.logits_indices.push_back(static_cast<int32_t>(i));
  m.prompt_rows = static_cast<int32_t>(T - rows);
  // With LoRA slots the step runs with an adapter (slot 1, whatever it holds: the outputs are not used),
  // so that the profile counts the LoRA path's scratch and the warm-up launches its kernels.
  if (model_->lora_slots() > 0) m.lora = {1};
  Tensor hidden, prompt_hidden;
  if (!topo_.first_stage()) {
    std::vector<float> zeros(static_cast<size_t>(T * H), 0.f);
    hidden = backend_->upload(zeros.data(), {T, H}, DType::F32);
  }
  Tensor out = model_->forward(m, hidden, kv, nullptr, &prompt_hidden);
  if (topo_.last_stage() && m.prompt_rows > 0) {
    Tensor slice = model_->logits(rows_view(prompt_hidden, 0, std::min<int64_t>(rows, m.prompt_rows)));
  }
  return out;
}

// On a GPU, what the first requests would otherwise pay once each, paid at start-up (as vLLM's warm-up
// and dummy sampler runs), also when kv_cache_memory_gb skips the profiling forward: the activations'
// memory of the largest step taken into the memory pool (which keeps it; the memory plan left room
// for it), its matrix products prepared for every token count up to it (CudaBackend::prepare_gemms),
// and the draw and log-probability kernels loaded (each cuBLASLt and llmserve kernel launched once, so
// that no request pays a kernel's first launch, milliseconds of host time; docs/performance.md).
void ModelRunner::warm_up() {
  size_t free_b = 0, total_b = 0;
  if (!backend_->device_memory(&free_b, &total_b)) return;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t gemms = 0;
  agree(world_->handle(), [&] {
    Tensor out = max_batch_forward(*kv_);
    if (topo_.last_stage()) {
      // Each kind of draw (greedy, sampled, filtered) and the largest log-probability request, over
      // every logits row.
      const int64_t n = out.dim(0);
      const Range vr = model_->shard().vocab;
      std::vector<RowDraw> draws(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        RowDraw& d = draws[i];
        d.position = i;
        d.greedy = i % 3 == 0;
        if (i % 3 == 2) d.top_k = 50, d.top_p = 0.9, d.log_min_p = std::log(0.05f);
      }
      std::vector<float> best(static_cast<size_t>(n));
      std::vector<int32_t> idx(static_cast<size_t>(n));
      backend_->draw_rows(out, vr.size(), vr.begin, draws, {}, {}, best.data(), idx.data(), nullptr);
      const int K = std::min(cfg_.max_logprobs, kMaxTopLogprobs);
      std::vector<int32_t> rows(static_cast<size_t>(n)), chosen(static_cast<size_t>(n), 0);
      for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<int32_t>(i);
      std::vector<float> stats(static_cast<size_t>(n * 3)), top_v(static_cast<size_t>(n * K));
      std::vector<int32_t> top_i(static_cast<size_t>(n * K));
      backend_->row_logprobs(out, vr.size(), vr.begin, rows, chosen, K, stats.data(), top_v.data(), top_i.data(), nullptr);
    }
    out = Tensor();
    gemms = backend_->prepare_gemms();
    backend_->synchronize();
  });
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  log_info("warm-up: a forward pass of ", cfg_.max_num_batched_tokens, " tokens, the draw kernels and ", gemms,
           " matrix products (every token count up to it) in ", buf);
}

// The KV-cache budget of this rank in GiB. kv_cache_memory_gb when given; on the CPU backend 1 GiB by
// default; on a GPU vLLM's plan: gpu_memory_utilization x the device's memory, less what is in use once
// the weights are loaded (CUDA context, workspaces, weights, other processes) and less the activation
// peak of a profiling forward over max_num_batched_tokens tokens (max_batch_forward: the logits of up
// to max_num_seqs rows, every other token's final hidden state kept for prompt_logprobs).
double ModelRunner::kv_budget_gb(const KvCacheShape& shape) {
  if (cfg_.kv_cache_memory_gb > 0) return cfg_.kv_cache_memory_gb;
  size_t free_b = 0, total_b = 0;
  if (!backend_->device_memory(&free_b, &total_b)) return 1.0;
  const int64_t T = cfg_.max_num_batched_tokens;
  double peak = 0;
  agree(world_->handle(), [&] {
    KvCacheShape ps = shape;
    ps.num_blocks = (T + cfg_.block_size - 1) / cfg_.block_size;
    KvCache scratch(*backend_, ps, 0);
    const size_t base = backend_->tensor_memory();
    backend_->reset_peak_memory();
    { Tensor out = max_batch_forward(scratch); }
    const size_t high = backend_->peak_memory();
    peak = high > base ? static_cast<double>(high - base) : 0.0;
  });
  backend_->trim_memory();  // the profiling run's memory goes back before the KV cache is allocated
  const MemoryPlan plan = plan_memory(total_b, free_b, peak, cfg_.gpu_memory_utilization);
  log_info(plan.describe(T));
  agree(world_->handle(), [&] {
    if (plan.kv <= 0) throw Error(plan.no_room());
  });
  return plan.kv / double(1ull << 30);
}

Tensor ModelRunner::forward(const StepMeta& meta, const Tensor& hidden_in, Tensor* prompt_hidden) {
  Tensor out;
  if (graphs_ && graphs_->run(meta, hidden_in, &out)) {
    ++kinds_.decode_graph;
    return out;
  }
  if (mixed_graphs_ && mixed_graphs_->run(meta, hidden_in, &out)) {
    ++kinds_.mixed_graph;
    return topo_.last_stage() ? model_->head(meta, out, nullptr, prompt_hidden) : out;
  }
  ++kinds_.eager;
  return model_->forward(meta, hidden_in, *kv_, nullptr, prompt_hidden);
}

void ModelRunner::send_hidden(const Tensor& hidden, Outbox* outbox) {
  LLMSERVE_CHECK(hidden.dtype == DType::F32 && hidden.numel() % spec_.hidden_size == 0,
                 "activations for the next stage must be float32 rows of the hidden size");
  if (stage_link_) {
    stage_link_->send_next(hidden.data, hidden.bytes());
    return;
  }
  std::string b(hidden.bytes(), '\0');
  backend_->download(hidden, reinterpret_cast<float*>(b.data()));
  const int next = topo_.rank_of(topo_.stage() + 1, topo_.tp_rank());
  if (outbox)
    outbox->send(world_->handle(), next, kTagHidden, std::move(b));
  else
    send_bytes(world_->handle(), next, kTagHidden, b);
}

Tensor ModelRunner::recv_hidden(int64_t tokens) {
  const int64_t H = spec_.hidden_size;
  if (stage_link_) {
    Tensor h = backend_->empty({tokens, H}, DType::F32);  // the residual stream is float32
    stage_link_->recv_prev(h.data, h.bytes());
    return h;
  }
  const std::string b = recv_bytes(world_->handle(), topo_.rank_of(topo_.stage() - 1, topo_.tp_rank()), kTagHidden);
  LLMSERVE_CHECK(b.size() == static_cast<size_t>(tokens * H) * sizeof(float), "activation message of the wrong size");
  return backend_->upload(reinterpret_cast<const float*>(b.data()), {tokens, H}, DType::F32);  // (string storage is aligned for float)
}

std::vector<float> ModelRunner::step(const StepMeta& meta) {
  Tensor hidden;
  if (!topo_.first_stage()) hidden = recv_hidden(meta.num_tokens());
  Tensor out = forward(meta, hidden);
  if (!topo_.last_stage()) {
    send_hidden(out);
    if (topo_.world_rank != 0) return {};
    std::vector<float> full(meta.logits_indices.size() * static_cast<size_t>(spec_.vocab_size));
    world_->recv(full.data(), full.size() * sizeof(float), topo_.rank_of(topo_.pp - 1, 0));
    return full;
  }
  // Last stage: gather the vocabulary shards, deliver to world rank 0.
  const int64_t n = static_cast<int64_t>(meta.logits_indices.size()), V = spec_.vocab_size;
  const int64_t Vp = model_->shard().vocab_padded;
  std::vector<float> local(static_cast<size_t>(n * Vp));
  backend_->download(out, local.data());
  std::vector<float> full;
  const int root = topo_.rank_of(topo_.stage(), 0);
  if (topo_.tp > 1) {
    std::vector<float> all(static_cast<size_t>(n * Vp * topo_.tp));
    tp_comm_->all_gather(local.data(), local.size(), all.data());
    if (topo_.tp_rank() == 0) {
      full.resize(static_cast<size_t>(n * V));
      for (int r = 0; r < topo_.tp; ++r) {
        const Range vr = shard_range(V, topo_.tp, r);
        for (int64_t i = 0; i < n; ++i)
          std::memcpy(&full[i * V + vr.begin], &all[(r * n + i) * Vp], vr.size() * sizeof(float));
      }
    }
  } else {
    full.resize(static_cast<size_t>(n * V));
    for (int64_t i = 0; i < n; ++i) std::memcpy(&full[i * V], &local[i * Vp], V * sizeof(float));
  }
  if (topo_.world_rank == root && root != 0) {
    world_->send(full.data(), full.size() * sizeof(float), 0);
    return {};
  }
  return topo_.world_rank == 0 ? full : std::vector<float>();
}

void ModelRunner::enter_thread() const {
#ifdef _OPENMP
  if (omp_threads_ > 0) omp_set_num_threads(omp_threads_);
#endif
}

LoraAdapter ModelRunner::read_lora(const LoraModuleSpec& spec) const {
  return load_lora_adapter(spec, spec_, cfg_.max_lora_rank);
}

void ModelRunner::keep_checked_lora(const LoraModuleSpec& spec, LoraAdapter ad) {
  std::lock_guard<std::mutex> lock(checked_mu_);
  checked_lora_[spec.path] = std::move(ad);
}

void ModelRunner::load_lora(int32_t slot, const LoraModuleSpec& spec) {
  LLMSERVE_CHECK(runtime_lora_, "load_lora: runtime LoRA updating is off");
  std::optional<LoraAdapter> kept;
  {
    std::lock_guard<std::mutex> lock(checked_mu_);
    auto it = checked_lora_.find(spec.path);
    if (it != checked_lora_.end()) {
      kept = std::move(it->second);
      checked_lora_.erase(it);
    }
  }
  const LoraAdapter ad = kept ? std::move(*kept) : read_lora(spec);
  model_->put_lora(slot, ad);
  log_info("LoRA adapter ", spec.name, " (", spec.path, ") loaded into slot ", slot, ": rank ", ad.rank, ", scaling ", ad.scaling);
}

}  // namespace llmserve
