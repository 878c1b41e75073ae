// The fp32 CPU backend: the numerical reference, and what runs every distributed path in CI.
#pragma once
#include <memory>

#include "backend/backend.h"
#include "backend/host_block_cache.h"

namespace llmserve {

class CpuBackend : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  DType compute_dtype() const override { return DType::F32; }
  Tensor empty(const std::vector<int64_t>& shape, DType dtype) override;
  Tensor upload(const float* host, const std::vector<int64_t>& shape, DType dtype) override;
  void download(const Tensor& t, float* host) override;
  void copy_to_host(const Tensor& src, size_t offset, size_t bytes, void* dst) override;
  void copy_from_host(Tensor& dst, size_t offset, size_t bytes, const void* src) override;
  void begin_step(const StepMeta& meta) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void copy_columns(const Tensor& src, int64_t width, Tensor& dst, int64_t col) override;

  void embedding(const Tensor& table, int64_t vocab_start, Tensor& out) override;
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override;
  void head_rmsnorm(Tensor& x, const Tensor& w, float eps, int64_t head_dim) override;
  void add(Tensor& x, const Tensor& y) override;
  void add_sigmoid_gated(Tensor& x, const Tensor& y, const Tensor& h, const Tensor& gate) override;
  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override;
  void rope(Tensor& q, Tensor& k, const Tensor& inv_freq, int64_t head_dim) override;
  void kv_write(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache) override;
  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t head_dim, int64_t block_size,
                 float scale, Tensor& out, int64_t window = 0) override;
  void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void lora_shrink(const Tensor& in, const Tensor& a, Tensor& t) override;
  void lora_expand(const Tensor& t, const LoraExpand* outs, int n) override;
  void gather_rows(const Tensor& x, Tensor& out) override;
  void draw_rows(Tensor& logits, int64_t L, int64_t token_offset, const std::vector<RowDraw>& rows,
                 const std::vector<LogitEdit>& edits, const RowMasks& masks, float* best, int32_t* idx, float* keep) override;
  void row_logprobs(const Tensor& logits, int64_t L, int64_t token_offset, const std::vector<int32_t>& rows,
                    const std::vector<int32_t>& chosen, int K, float* stats, float* top_v, int32_t* top_i, const LogprobView* views) override;
  void count_at_least(const Tensor& logits, int64_t L, const std::vector<int32_t>& rows, const std::vector<float>& thresholds,
                      int32_t* counts) override;

  // Freed large blocks are kept for reuse (HostBlockCache); trim_memory gives them back.
  void trim_memory() override { blocks_->trim(); }
  size_t cached_block_bytes() const { return blocks_->cached_bytes(); }

 private:
  const StepMeta& meta() const;
  const StepMeta* meta_ = nullptr;
  StepMeta resolved_;               // a step with pending token ids, filled in from drawn_
  std::vector<int32_t> lora_rows_;  // the step's StepMeta::lora_rows, made once in begin_step
  const std::vector<int32_t>& lora_rows() const;
  std::vector<int32_t> drawn_;      // the last draw_rows call's tokens
  // Large tensors' memory, kept for reuse (shared with the tensors, which may outlive the backend).
  std::shared_ptr<HostBlockCache> blocks_ = std::make_shared<HostBlockCache>();
};

}  // namespace llmserve
