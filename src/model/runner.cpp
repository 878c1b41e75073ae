#include "model/runner.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "dist/collective_check.h"

namespace llmserve {

void resolve_config_for_model(Config& cfg, const ModelSpec& spec) {
  model_spec_check_layout(spec, cfg.tensor_parallel_size, cfg.pipeline_parallel_size);
  if (cfg.max_model_len == 0) cfg.max_model_len = spec.max_position_embeddings;
  if (cfg.max_model_len > spec.max_position_embeddings)
    throw Error(cat("config: max_model_len (", cfg.max_model_len, ") is larger than the model's max_position_embeddings (",
                    spec.max_position_embeddings, ")"));
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

ModelRunner::ModelRunner(Config& cfg, MPI_Comm world_comm) : cfg_(cfg) {
  world_ = std::make_unique<MpiComm>(world_comm, false);
  std::unique_ptr<ModelFile> file;
  // This rank's index among the ranks of its node picks its GPU.
  int local_rank = 0;
  {
    MPI_Comm node;
    MPI_Comm_split_type(world_comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
  }
  agree(world_comm, [&] {
    config_validate(cfg_);
    topo_ = make_topology(world_->rank(), world_->size(), cfg_.tensor_parallel_size, cfg_.pipeline_parallel_size);
    if (cfg_.load_format == "dummy")
      throw Error("load_format: dummy is not implemented yet (it comes with the CUDA backend); use auto");
    file = std::make_unique<ModelFile>(cfg_.model);
    spec_ = file->spec();
    resolve_config_for_model(cfg_, spec_);
    backend_ = make_backend(cfg_.backend, local_rank, resolve_dtype(cfg_.dtype, spec_.torch_dtype));
    if (backend_->name() == "cuda" && topo_.tp > 1)
      throw Error("tensor parallelism on the CUDA backend needs the NCCL communicator, which is not built yet; "
                  "use tensor_parallel_size 1 (pipeline parallelism works)");
  });
  log_set_rank(topo_.world_rank);
  if (backend_->name() == "cpu" && cfg_.dtype != "auto" && cfg_.dtype != "float" && cfg_.dtype != "float32")
    log_warn("dtype ", cfg_.dtype, " applies to the CUDA backend; the CPU backend computes in float32");
  tp_comm_ = mpi_split(world_comm, topo_.stage(), topo_.tp_rank());
  agree(world_comm, [&] { model_ = std::make_unique<Transformer>(spec_, topo_, *backend_, *tp_comm_, *file); });
  file.reset();

  // KV cache: as many blocks as the budget allows on the tightest rank (all ranks must agree, since
  // rank 0 hands out block ids for everyone).
  const ShardInfo& sh = model_->shard();
  KvCacheShape shape;
  shape.num_layers = sh.layers.end - sh.layers.begin;
  shape.block_size = cfg_.block_size;
  shape.kv_heads = sh.kv_heads;
  shape.head_dim = spec_.head_dim;
  shape.dtype = backend_->compute_dtype();
  const double budget_gb = cfg_.kv_cache_memory_gb > 0 ? cfg_.kv_cache_memory_gb : 1.0;
  long long blocks = static_cast<long long>(budget_gb * (1ull << 30) / static_cast<double>(shape.bytes_per_block()));
  const long long useful = static_cast<long long>(cfg_.max_num_seqs) * ((cfg_.max_model_len + cfg_.block_size - 1) / cfg_.block_size);
  blocks = std::min(blocks, useful);
  if (cfg_.num_gpu_blocks_override > 0) blocks = cfg_.num_gpu_blocks_override;
  long long host = static_cast<long long>(cfg_.swap_space * (1ull << 30) / static_cast<double>(shape.bytes_per_block()));
  long long counts[2] = {blocks, host};
  MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_LONG_LONG, MPI_MIN, world_comm);
  blocks = counts[0];
  num_blocks_ = blocks;
  num_host_blocks_ = counts[1];
  shape.num_blocks = blocks;
  agree(world_comm, [&] {
    if (blocks < (cfg_.max_model_len + cfg_.block_size - 1) / cfg_.block_size)
      throw Error(cat("KV cache: ", blocks, " blocks of ", cfg_.block_size, " tokens cannot hold one sequence of max_model_len ",
                      cfg_.max_model_len, "; raise kv_cache_memory_gb or lower max_model_len"));
    kv_ = std::make_unique<KvCache>(*backend_, shape, num_host_blocks_);
  });
  log_info("model ", spec_.architecture, " loaded: ", spec_.num_layers, " layers, hidden ", spec_.hidden_size,
           ", vocab ", spec_.vocab_size, "; layout tp=", topo_.tp, " pp=", topo_.pp, "; backend ", backend_->name(),
           "; KV cache ", num_blocks_, " blocks x ", cfg_.block_size, " tokens, swap space ", num_host_blocks_, " blocks");
}

ModelRunner::~ModelRunner() = default;

std::vector<float> ModelRunner::step(const StepMeta& meta) {
  const int64_t T = meta.num_tokens(), H = spec_.hidden_size;
  Tensor hidden;
  if (!topo_.first_stage()) {
    std::vector<float> buf(static_cast<size_t>(T * H));
    world_->recv(buf.data(), buf.size() * sizeof(float), topo_.rank_of(topo_.stage() - 1, topo_.tp_rank()));
    hidden = backend_->upload(buf.data(), {T, H}, DType::F32);  // the residual stream is float32
  }
  Tensor out = model_->forward(meta, hidden, *kv_);
  if (!topo_.last_stage()) {
    std::vector<float> buf(static_cast<size_t>(out.numel()));
    backend_->download(out, buf.data());
    world_->send(buf.data(), buf.size() * sizeof(float), topo_.rank_of(topo_.stage() + 1, topo_.tp_rank()));
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

}  // namespace llmserve
