#include "backend/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "kernels/cpu/ops.h"
#if LLMSERVE_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace llmserve {

namespace {
void need_f32(const Tensor& t, const char* op) {
  LLMSERVE_CHECK(t.dtype == DType::F32, "cpu backend: ", op, " needs float32 tensors, got ", dtype_name(t.dtype));
}
int64_t rows(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
int64_t cols(const Tensor& t) {
  int64_t c = 1;
  for (size_t i = 1; i < t.shape.size(); ++i) c *= t.shape[i];
  return t.shape.empty() ? 0 : c;
}
}  // namespace

Tensor CpuBackend::empty(const std::vector<int64_t>& shape, DType dtype) {
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  const size_t n = std::max<size_t>(t.bytes(), 64);
  // malloc leaves pages untouched until written, so a large KV cache costs nothing until used; large
  // blocks come from (and go back to) the backend's cache of freed ones.
  if (n >= HostBlockCache::kMinBytes) {
    const HostBlockCache::Block b = blocks_->get(n);
    if (!b.ptr) throw Error(cat("cpu backend: out of memory allocating ", t.bytes(), " bytes"));
    t.storage = std::shared_ptr<void>(b.ptr, [cache = blocks_, b](void*) { cache->put(b); });
    t.data = b.ptr;
    return t;
  }
  void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
  if (!p) throw Error(cat("cpu backend: out of memory allocating ", t.bytes(), " bytes"));
  t.storage = std::shared_ptr<void>(p, std::free);
  t.data = p;
  return t;
}

Tensor CpuBackend::upload(const float* host, const std::vector<int64_t>& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  from_f32(dtype, host, t.data, static_cast<size_t>(t.numel()));
  return t;
}

void CpuBackend::download(const Tensor& t, float* host) { to_f32(t.dtype, t.data, host, static_cast<size_t>(t.numel())); }

void CpuBackend::copy_to_host(const Tensor& src, size_t offset, size_t bytes, void* dst) {
  LLMSERVE_CHECK(offset + bytes <= src.bytes(), "cpu backend: copy out of range");
  std::memcpy(dst, static_cast<const char*>(src.data) + offset, bytes);
}

void CpuBackend::copy_from_host(Tensor& dst, size_t offset, size_t bytes, const void* src) {
  LLMSERVE_CHECK(offset + bytes <= dst.bytes(), "cpu backend: copy out of range");
  std::memcpy(static_cast<char*>(dst.data) + offset, src, bytes);
}

void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  LLMSERVE_CHECK(src.bytes() <= dst.bytes(), "cpu backend: copy into a smaller tensor");
  std::memcpy(dst.data, src.data, src.bytes());
}

void CpuBackend::copy_columns(const Tensor& src, int64_t width, Tensor& dst, int64_t col) {
  const size_t e = dtype_size(src.dtype);
  const ColumnCopy c = check_copy_columns(src, width, dst, col);
  for (int64_t r = 0; r < c.rows; ++r)
    std::memcpy(static_cast<char*>(dst.data) + (r * c.dst_cols + col) * e,
                static_cast<const char*>(src.data) + r * c.src_cols * e, static_cast<size_t>(width) * e);
}

const StepMeta& CpuBackend::meta() const {
  LLMSERVE_CHECK(meta_ != nullptr, "cpu backend: op called before begin_step");
  return *meta_;
}

const std::vector<int32_t>& CpuBackend::lora_rows() const {
  meta();  // (the check)
  return lora_rows_;
}

void CpuBackend::embedding(const Tensor& table, int64_t vocab_start, Tensor& out) {
  need_f32(table, "embedding");
  const auto& m = meta();
  cpu::embedding(table.as<float>(), vocab_start, rows(table), m.token_ids.data(), m.num_tokens(), cols(table),
                 out.as<float>());
}

void CpuBackend::rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  need_f32(x, "rmsnorm");
  cpu::rmsnorm(x.as<float>(), w.as<float>(), rows(x), cols(x), eps, out.as<float>());
}

void CpuBackend::head_rmsnorm(Tensor& x, const Tensor& w, float eps, int64_t D) {
  need_f32(x, "head_rmsnorm");
  LLMSERVE_CHECK(D > 0 && x.numel() % D == 0 && w.numel() == D, "cpu backend: head_rmsnorm shapes");
  cpu::rmsnorm(x.as<float>(), w.as<float>(), x.numel() / D, D, eps, x.as<float>());  // (in place: each row is read first)
}

void CpuBackend::add(Tensor& x, const Tensor& y) {
  LLMSERVE_CHECK(x.numel() == y.numel(), "cpu backend: add of different sizes");
  cpu::add(x.as<float>(), y.as<float>(), x.numel());
}

void CpuBackend::add_sigmoid_gated(Tensor& x, const Tensor& y, const Tensor& h, const Tensor& gate) {
  for (const Tensor* t : {static_cast<const Tensor*>(&x), &y, &h, &gate}) need_f32(*t, "add_sigmoid_gated");
  LLMSERVE_CHECK(rows(y) == rows(x) && cols(y) == cols(x) && rows(h) == rows(x) && gate.numel() == cols(h),
                 "cpu backend: add_sigmoid_gated shapes");
  cpu::add_sigmoid_gated(x.as<float>(), y.as<float>(), h.as<float>(), gate.as<float>(), rows(x), cols(x), cols(h));
}

void CpuBackend::linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  need_f32(x, "linear");
  need_f32(w, "linear");
  const int64_t T = rows(x), K = cols(x), N = rows(w);
  LLMSERVE_CHECK(cols(w) == K, "cpu backend: linear inner dimensions differ (", K, " vs ", cols(w), ")");
  cpu::linear(x.as<float>(), w.as<float>(), bias ? bias->as<float>() : nullptr, T, K, N, out.as<float>());
}

void CpuBackend::rope(Tensor& q, Tensor& k, const Tensor& inv_freq, int64_t D) {
  const auto& m = meta();
  const int64_t T = rows(q);
  cpu::rope(q.as<float>(), k.as<float>(), m.positions.data(), inv_freq.as<float>(), T, cols(q) / D, cols(k) / D, D);
}

void CpuBackend::kv_write(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache) {
  const auto& m = meta();
  const int64_t Hk = k_cache.dim(2), D = k_cache.dim(3);
  LLMSERVE_CHECK(k_cache.dtype == v_cache.dtype && (k_cache.dtype == DType::F32 || k_cache.dtype == DType::F8E4M3),
                 "cpu backend: a float32 or FP8 KV cache");
  if (k_cache.dtype == DType::F8E4M3)  // (kv_cache_dtype fp8)
    cpu::kv_write(k.as<float>(), v.as<float>(), m.slot_mapping.data(), rows(k), Hk, D, k_cache.as<uint8_t>(),
                  v_cache.as<uint8_t>());
  else
    cpu::kv_write(k.as<float>(), v.as<float>(), m.slot_mapping.data(), rows(k), Hk, D, k_cache.as<float>(),
                  v_cache.as<float>());
}

void CpuBackend::attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t D,
                           int64_t block_size, float scale, Tensor& out, int64_t window) {
  const auto& m = meta();
  const int64_t Hq = cols(q) / D, Hk = k_cache.dim(2);
  auto run = [&](const auto* kc, const auto* vc) {
    cpu::paged_attention(q.as<float>(), kc, vc, m.block_tables.data(), m.row_entries(), m.q_start.data(),
                         m.positions.data(), m.num_seqs(), Hq, Hk, D, block_size, scale, window, out.as<float>());
  };
  if (k_cache.dtype == DType::F8E4M3)
    run(k_cache.as<uint8_t>(), v_cache.as<uint8_t>());
  else
    run(k_cache.as<float>(), v_cache.as<float>());
}

void CpuBackend::silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  cpu::silu_mul(gate.as<float>(), up.as<float>(), gate.numel(), out.as<float>());
}

void CpuBackend::lora_shrink(const Tensor& in, const Tensor& a, Tensor& t) {
  need_f32(in, "lora_shrink");
  const std::vector<int32_t>& lr = lora_rows();
  const int64_t T = rows(in), K = cols(in);
  LLMSERVE_CHECK(T == static_cast<int64_t>(lr.size()) && a.shape.size() == 3 && a.dim(2) == K && t.dtype == DType::F32 &&
                     rows(t) == T && cols(t) == a.dim(1),
                 "cpu backend: lora_shrink shapes");
  for (int32_t r : lr) LLMSERVE_CHECK(r < a.dim(0), "cpu backend: lora_shrink: a row's adapter is past the stack");
  cpu::lora_shrink(in.as<float>(), a.as<float>(), lr.data(), T, K, a.dim(1), t.as<float>());
}

void CpuBackend::lora_expand(const Tensor& t, const LoraExpand* outs, int n) {
  const std::vector<int32_t>& lr = lora_rows();
  const int64_t T = rows(t);
  LLMSERVE_CHECK(T == static_cast<int64_t>(lr.size()) && t.dtype == DType::F32, "cpu backend: lora_expand shapes");
  for (int i = 0; i < n; ++i) {
    const Tensor& bt = *outs[i].bt;
    Tensor& out = *outs[i].out;
    LLMSERVE_CHECK(bt.shape.size() == 3 && out.dtype == DType::F32 && rows(out) == T && cols(out) == bt.dim(2) &&
                       outs[i].col >= 0 && outs[i].col + bt.dim(1) <= cols(t),
                   "cpu backend: lora_expand shapes");
    for (int32_t r : lr) LLMSERVE_CHECK(r < bt.dim(0), "cpu backend: lora_expand: a row's adapter is past the stack");
    cpu::lora_expand(t.as<float>(), cols(t), outs[i].col, bt.as<float>(), lr.data(), T, bt.dim(1), bt.dim(2), out.as<float>());
  }
}

void CpuBackend::begin_step(const StepMeta& meta) {
  meta_ = &meta;
  lora_rows_ = meta.lora_rows();
  if (std::none_of(meta.token_ids.begin(), meta.token_ids.end(), [](int32_t t) { return t < 0; })) return;
  resolved_ = meta;
  for (int32_t& t : resolved_.token_ids)
    if (t < 0) {
      const size_t r = static_cast<size_t>(-1 - static_cast<int64_t>(t));
      t = r < drawn_.size() ? drawn_[r] : -1;  // (an id outside the table embeds as zeros)
    }
  meta_ = &resolved_;
}

void CpuBackend::draw_rows(Tensor& logits, int64_t L, int64_t token_offset, const std::vector<RowDraw>& rows,
                           const std::vector<LogitEdit>& edits, const RowMasks& masks, float* best, int32_t* idx, float* keep) {
  cpu::draw_rows(logits.as<float>(), static_cast<int64_t>(rows.size()), logits.dim(1), L, token_offset, rows.data(),
                 edits.data(), static_cast<int64_t>(edits.size()), best, idx, keep, masks.rows.data(),
                 static_cast<int64_t>(masks.rows.size()), masks.bits.data());
  drawn_.assign(idx, idx + rows.size());
  if (wait_hook_) wait_hook_();
}

void CpuBackend::row_logprobs(const Tensor& logits, int64_t L, int64_t token_offset, const std::vector<int32_t>& rows,
                              const std::vector<int32_t>& chosen, int K, float* stats, float* top_v, int32_t* top_i,
                              const LogprobView* views) {
  LLMSERVE_CHECK(rows.size() == chosen.size() && K >= 0 && K <= kMaxTopLogprobs, "row_logprobs: bad arguments");
  cpu::row_logprobs(logits.as<float>(), logits.dim(1), L, token_offset, rows.data(), chosen.data(),
                    static_cast<int64_t>(rows.size()), K, stats, top_v, top_i, views);
  if (wait_hook_) wait_hook_();
}

void CpuBackend::count_at_least(const Tensor& logits, int64_t L, const std::vector<int32_t>& rows,
                                const std::vector<float>& thresholds, int32_t* counts) {
  LLMSERVE_CHECK(rows.size() == thresholds.size(), "count_at_least: bad arguments");
  cpu::count_at_least(logits.as<float>(), logits.dim(1), L, rows.data(), thresholds.data(),
                      static_cast<int64_t>(rows.size()), counts);
}

void CpuBackend::gather_rows(const Tensor& x, Tensor& out) {
  const auto& m = meta();
  const int64_t C = cols(x);
  for (size_t i = 0; i < m.logits_indices.size(); ++i)
    std::memcpy(out.as<float>() + i * C, x.as<float>() + m.logits_indices[i] * C, C * sizeof(float));
}

DType resolve_dtype(const std::string& c, const std::string& torch_dtype) {
  if (c == "half" || c == "float16") return DType::F16;
  if (c == "bfloat16") return DType::BF16;
  if (c == "float" || c == "float32") return DType::F32;
  // auto: the checkpoint's dtype, with float32 checkpoints served in bfloat16 as vLLM does.
  if (torch_dtype == "float16") return DType::F16;
  return DType::BF16;
}

std::unique_ptr<Backend> make_backend(const std::string& kind, int local_rank, DType dtype) {
#if LLMSERVE_WITH_CUDA
  if (kind == "cuda" || (kind == "auto" && cuda_device_available())) return make_cuda_backend(local_rank, dtype);
#else
  (void)local_rank;
  (void)dtype;
  if (kind == "cuda") throw Error("backend 'cuda': this llmserve was built without CUDA (nvcc was not found); use backend: cpu");
#endif
  if (kind == "cpu" || kind == "auto") return std::make_unique<CpuBackend>();
  throw Error(cat("unknown backend '", kind, "'"));
}

}  // namespace llmserve
