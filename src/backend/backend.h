// The compute backend interface. The transformer is written once against it; the CPU backend
// (fp32 reference, here) and the CUDA backend implement it. Per-step metadata (token ids, positions,
// KV slots, block tables) is handed over once per forward pass in begin_step(), so a device backend
// uploads it once.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/tensor.h"
#include "kernels/draw.h"

namespace llmserve {

// Host-side description of one forward pass over a batch of sequences. Built by the scheduler (or
// the logits tool) and identical on every rank.
struct StepMeta {
  std::vector<int32_t> token_ids;     // [T] input tokens (used by the first pipeline stage)
  std::vector<int32_t> positions;     // [T] position of each token in its sequence
  std::vector<int32_t> slot_mapping;  // [T] KV-cache slot: block * block_size + offset
  std::vector<int32_t> q_start;       // [S+1] token offsets of each sequence in the batch
  std::vector<int32_t> block_tables;  // [S * row_entries()] physical block ids of each sequence
  int32_t max_blocks = 0;             // entries a sequence's row has where kernels read it (their stride)
  // When > 0, the entries of each sequence that block_tables holds, fewer than max_blocks: a step padded
  // for a CUDA graph (recorded with rows of max_blocks entries) whose every token's context ends within
  // its row's first table_width entries. The entries past them are never read, so they are neither
  // built nor uploaded (a row is 2,048 entries at a 32k max_model_len and blocks of 16).
  int32_t table_width = 0;
  int32_t row_entries() const { return table_width > 0 ? table_width : max_blocks; }
  std::vector<int32_t> logits_indices;  // token rows whose logits are wanted
  // The last prompt_rows of logits_indices are prompt_logprobs rows: the last stage returns their
  // final-norm hidden states, whose logits are then made a slice at a time (Transformer::logits).
  int32_t prompt_rows = 0;
  // When > 0, a bound on every position + 1 that kernels size their launches for instead of the
  // step's own longest context (a captured CUDA graph serves steps of any context up to it).
  int32_t max_context = 0;
  // With max_context: a bound on the new tokens of any one sequence (0: one each, a decode step). Such
  // graph-shaped steps run the split-KV attention kernel whatever their runs of new tokens.
  int32_t max_new = 0;
  // LoRA: each sequence's adapter slot (0: none; Transformer::set_loras), or empty when no sequence has one.
  std::vector<int32_t> lora;
  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  // Each token's adapter as a 0-based index into the backend's LoRA stacks (slot - 1), or -1 (no adapter,
  // or no sequence: a graph's padding): what Backend::lora_shrink / lora_expand read per row.
  std::vector<int32_t> lora_rows() const;
  int64_t num_seqs() const { return q_start.empty() ? 0 : static_cast<int64_t>(q_start.size()) - 1; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Element type of activations and weights on this backend.
  virtual DType compute_dtype() const = 0;

  virtual Tensor empty(const std::vector<int64_t>& shape, DType dtype) = 0;
  // A tensor holding `host` (float32) converted to `dtype`.
  virtual Tensor upload(const float* host, const std::vector<int64_t>& shape, DType dtype) = 0;
  // The same, kept in host memory that the backend's kernels read in place (cpu_offload_gb: pinned
  // memory mapped into a GPU's address space). Where all memory is the host's, upload().
  virtual Tensor upload_to_host_memory(const float* host, const std::vector<int64_t>& shape, DType dtype) {
    return upload(host, shape, dtype);
  }
  // A matrix [rows, cols] of `quantization: fp8`: FP8 E4M3 codes with one power-of-two scale per row
  // (kernels/fp8.h), in host memory as upload_to_host_memory does where `host_memory`. A backend that
  // computes on the codes holds them (dtype F8E4M3, the scales at Tensor::scale, in the same storage);
  // this default holds the values they stand for (codes times scales) in `dtype`: the CPU backend's
  // float32 reference of a quantized model.
  virtual Tensor upload_fp8(const float* host, const std::vector<int64_t>& shape, DType dtype, bool host_memory);
  // The type upload_fp8's tensors have: F8E4M3 where the backend holds codes, else compute_dtype().
  virtual DType fp8_matrix_dtype() const { return compute_dtype(); }
  // Copies a tensor back as float32 (F8E4M3: codes times scales).
  virtual void download(const Tensor& t, float* host) = 0;
  // Raw byte copies between a tensor and host memory (KV swapping).
  virtual void copy_to_host(const Tensor& src, size_t offset, size_t bytes, void* dst) = 0;
  virtual void copy_from_host(Tensor& dst, size_t offset, size_t bytes, const void* src) = 0;

  // A step's token id -1 - r (asynchronous scheduling) stands for row r of the tokens the last
  // draw_rows call drew (by row of its `rows`, before any tensor-group reduction), which the backend
  // fills in on its side: the step can be queued before those tokens reach the host.
  virtual void begin_step(const StepMeta& meta) = 0;
  // dst's first src.bytes() bytes = src (same backend; no conversion).
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  // dst[r, col .. col + width) = src[r, 0 .. width) for every row r of src (2-D tensors of one element
  // type; dst has at least src's rows).
  virtual void copy_columns(const Tensor& src, int64_t width, Tensor& dst, int64_t col) = 0;

  // Ops (see kernels/cpu/ops.h for the exact contracts).
  virtual void embedding(const Tensor& table, int64_t vocab_start, Tensor& out) = 0;
  virtual void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // x [T, heads * head_dim] (float32) in place: each head's head_dim values RMS-normalized and scaled by
  // w [head_dim] (Qwen3's q_norm / k_norm).
  virtual void head_rmsnorm(Tensor& x, const Tensor& w, float eps, int64_t head_dim) = 0;
  virtual void add(Tensor& x, const Tensor& y) = 0;
  // x[t, :] += sigmoid(h[t, :] . gate) * y[t, :] for x, y [T, C] (float32), h [T, K] and the gate's weights
  // [1, K] or [K] (the activation type): Qwen2-MoE's shared expert, its output gated per token.
  virtual void add_sigmoid_gated(Tensor& x, const Tensor& y, const Tensor& h, const Tensor& gate) = 0;
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) = 0;
  virtual void rope(Tensor& q, Tensor& k, const Tensor& inv_freq, int64_t head_dim) = 0;
  virtual void kv_write(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache) = 0;
  // Causal attention of the step's queries over the paged caches: a token at position p attends to its
  // sequence's keys at positions 0..p, or with window > 0 (a sliding-window layer) p - window + 1 .. p.
  virtual void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t head_dim,
                         int64_t block_size, float scale, Tensor& out, int64_t window = 0) = 0;
  virtual void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // LoRA (punica's shrink and expand), over the rows of the step's sequences that have an adapter
  // (StepMeta::lora: slot s > 0); the other rows are left alone. Shrink: t [T, C] (float32) gets row r of
  // `in` [T, K] (the activation type) times A[s - 1]^T, where `a` [slots, C, K] (the activation type) stacks
  // the adapters' A matrices (several projections' side by side, each of R rows); rows without an
  // adapter get zeros.
  virtual void lora_shrink(const Tensor& in, const Tensor& a, Tensor& t) = 0;
  // Expand: each out [T, N] (float32) += t's columns [col, col + R) of the row times Bt[s - 1], where
  // bt [slots, R, N] (the activation type) stacks the adapters' B^T.
  struct LoraExpand {
    const Tensor* bt;
    int64_t col;
    Tensor* out;
  };
  static constexpr int kMaxLoraExpands = 3;
  virtual void lora_expand(const Tensor& t, const LoraExpand* outs, int n) = 0;
  // A LoRA group's update to the projections of one fused op below (q, k, v / gate, up / the output
  // projection, in that order): the group's A stack (lora_shrink's `a`), t its float32 scratch [T, C] for the
  // shrink's output, and for each projection the B^T stack and t's first column of its R, or bt null where
  // the group has no adapter for it. The op shrinks its own input (the block's normalized input for the norm
  // ops) into t and adds the expand to its projections. The defaults compose lora_shrink and lora_expand
  // with the op (the expand right after the projections: before RoPE, SiLU or the residual add); an
  // override may fuse them (the norm into the shrink, the expand into the projections' own launch).
  struct LoraDelta {
    const Tensor* a = nullptr;
    Tensor* t = nullptr;
    const Tensor* bt[kMaxLoraExpands] = {};
    int64_t col[kMaxLoraExpands] = {};
  };
  // lora_expand of `d` into the op's projections' outputs outs[j] (those with a B^T stack).
  void lora_expand_into(const LoraDelta& d, Tensor* const (&outs)[kMaxLoraExpands]) {
    LoraExpand e[kMaxLoraExpands];
    int n = 0;
    for (int j = 0; j < kMaxLoraExpands; ++j)
      if (d.bt[j]) e[n++] = {d.bt[j], d.col[j], outs[j]};
    if (n > 0) lora_expand(*d.t, e, n);
  }
  // `d`'s update of input `in` into outs: lora_shrink, then lora_expand_into.
  void lora_update(const Tensor& in, const LoraDelta& d, Tensor* const (&outs)[kMaxLoraExpands]) {
    lora_shrink(in, *d.a, *d.t);
    lora_expand_into(d, outs);
  }
  // out = rows of x named by the step's logits_indices.
  virtual void gather_rows(const Tensor& x, Tensor& out) = 0;
  // Fused ops of a decoder layer. The defaults compose the ops above (the CPU backend uses them, so
  // they are the reference); a device backend overrides them to save launches and memory passes.
  // x (float32 residual stream) += a . w^T: an output projection with its residual add; y is scratch of
  // x's shape (an override may not touch it).
  // With `lora`, the projection's LoRA update of `a` (LoraDelta, one projection) joins y before the add.
  virtual void linear_residual(const Tensor& a, const Tensor& w, Tensor& y, Tensor& x, const LoraDelta* lora = nullptr) {
    linear(a, w, nullptr, y);
    if (lora) lora_update(a, *lora, {&y, nullptr, nullptr});
    add(x, y);
  }
  // The three attention projections of one input.
  virtual void linear_qkv(const Tensor& x, const Tensor& wq, const Tensor* bq, Tensor& q, const Tensor& wk,
                          const Tensor* bk, Tensor& k, const Tensor& wv, const Tensor* bv, Tensor& v) {
    linear(x, wq, bq, q);
    linear(x, wk, bk, k);
    linear(x, wv, bv, v);
  }
  // RoPE on q (in place) and k, then k and v into the caches at the step's slots (k may be left
  // unrotated by an override that writes the rotated values to the cache only).
  virtual void rope_kv_write(Tensor& q, Tensor& k, const Tensor& v, const Tensor& inv_freq, int64_t head_dim,
                             Tensor& k_cache, Tensor& v_cache) {
    rope(q, k, inv_freq, head_dim);
    kv_write(k, v, k_cache, v_cache);
  }
  // act = silu(x . w_gate^T) * (x . w_up^T). gate_up: float32 scratch of twice the projections' size
  // (T x 2I): the default computes gate into its first half and up into its second; an override may lay
  // it out as rows (gate | up) of one GEMM over stacked weights, or not touch it.
  virtual void gate_up_silu(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up, Tensor& act) {
    gate_up_silu_composed(x, w_gate, w_up, gate_up, act, nullptr);
  }
  // The RMSNorm in front of a decoder block: h = rmsnorm(x) * w, x the float32 residual stream. The
  // defaults below write h and run the block's first op on it; an override that normalizes inside
  // that op may leave h alone.
  struct InputNorm {
    const Tensor& w;
    float eps;
    Tensor& h;
  };
  // Each query and key head RMS-normalized between the projections and RoPE (Qwen3's q_norm / k_norm:
  // weights [head_dim] in the activation type).
  struct HeadNorm {
    const Tensor& q_w;
    const Tensor& k_w;
    float eps;
  };
  // The attention block's input: norm, linear_qkv, the LoRA update of the normalized input where `lora` is
  // given, head_rmsnorm of q and k where head_norm is given, rope_kv_write (q rotated; k and v as
  // rope_kv_write leaves them, or untouched by an override).
  virtual void norm_qkv_rope_kv_write(const Tensor& x, const InputNorm& norm, const Tensor& wq, const Tensor* bq,
                                      Tensor& q, const Tensor& wk, const Tensor* bk, Tensor& k, const Tensor& wv,
                                      const Tensor* bv, Tensor& v, const HeadNorm* head_norm, const Tensor& inv_freq,
                                      int64_t head_dim, Tensor& k_cache, Tensor& v_cache,
                                      const LoraDelta* lora = nullptr) {
    rmsnorm(x, norm.w, norm.eps, norm.h);
    linear_qkv(norm.h, wq, bq, q, wk, bk, k, wv, bv, v);
    if (lora) lora_update(norm.h, *lora, {&q, &k, &v});
    if (head_norm) {
      head_rmsnorm(q, head_norm->q_w, head_norm->eps, head_dim);
      head_rmsnorm(k, head_norm->k_w, head_norm->eps, head_dim);
    }
    rope_kv_write(q, k, v, inv_freq, head_dim, k_cache, v_cache);
  }
  // The MLP's input: norm, then gate_up_silu; with `lora`, gate and up each into their half of gate_up,
  // the LoRA update of the normalized input added to them, then silu_mul.
  virtual void norm_gate_up_silu(const Tensor& x, const InputNorm& norm, const Tensor& w_gate, const Tensor& w_up,
                                 Tensor& gate_up, Tensor& act, const LoraDelta* lora = nullptr) {
    rmsnorm(x, norm.w, norm.eps, norm.h);
    if (lora) return gate_up_silu_composed(norm.h, w_gate, w_up, gate_up, act, lora);
    gate_up_silu(norm.h, w_gate, w_up, gate_up, act);
  }

  // A mixture-of-experts MLP (ModelSpec::num_experts) of the normalized input h [T, H] (activation type):
  // router [E, H]; gate_up [E * 2M, H], expert e's gate rows then its up rows; down [E * H, M], expert e's
  // down projection [H, M]. out [T, H] (float32) = (with `accumulate`: out +) for each token, over its top_k
  // experts (moe_route: the softmax of h . router^T over all E), the sum of each's weight times
  // (silu(h . gate^T) * (h . up^T)) . down^T. The default routes on the host (the router logits and h are
  // downloaded: a device backend cannot record it in a graph) and runs each chosen expert over its tokens'
  // rows with linear and gate_up_silu.
  struct MoeWeights {
    const Tensor& router;
    const Tensor& gate_up;
    const Tensor& down;
    int top_k;
    bool renormalize;
  };
  virtual void moe(const Tensor& h, const MoeWeights& w, Tensor& out, bool accumulate);
  // Whether moe() runs steps of up to `tokens` tokens without the host (so a recorded graph may hold it),
  // for E experts of intermediate M (k a token) over rows of H.
  virtual bool moe_in_graphs(int64_t tokens, int64_t E, int k, int64_t H, int64_t M) const {
    (void)tokens, (void)E, (void)k, (void)H, (void)M;
    return false;
  }

  // Asynchronous scheduling: draw_rows and row_logprobs call the hook after queuing their work and
  // before they return (on a GPU while they wait for the results, until the hook returns true; on the
  // host once, when done), so the next step's forward pass can be queued behind them. Cleared with an
  // empty one.
  void set_wait_hook(std::function<bool()> hook) { wait_hook_ = std::move(hook); }
  // The sampler's draw over float32 logits [n, stride] whose first L columns are tokens token_offset..
  // (kernels/cpu/ops.h draw_rows): the penalty edits applied to the logits in place, then the masks'
  // bitmaps (kernels/draw.h RowMasks: guided decoding's allowed tokens), then the rows' filters and draws; best score and token per row, into host arrays of n, and when keep is not null
  // each row's keep threshold (the smallest value its filters keep, -inf for a greedy or unfiltered row).
  virtual void draw_rows(Tensor& logits, int64_t L, int64_t token_offset, const std::vector<RowDraw>& rows,
                         const std::vector<LogitEdit>& edits, const RowMasks& masks, float* best, int32_t* idx, float* keep) = 0;
  // Log-probability statistics of rows `rows` of float32 logits [n, stride] whose first L columns are
  // tokens token_offset.. (kernels/cpu/ops.h row_logprobs): host arrays stats [m, 3], top_v and top_i
  // [m, K], m = rows.size() = chosen.size(), K <= kMaxTopLogprobs; with views (a host array of m, or
  // null), of the values each row's LogprobView makes of its logits.
  virtual void row_logprobs(const Tensor& logits, int64_t L, int64_t token_offset, const std::vector<int32_t>& rows,
                            const std::vector<int32_t>& chosen, int K, float* stats, float* top_v, int32_t* top_i,
                            const LogprobView* views) = 0;
  // counts[j] = how many of the first L columns of row rows[j] of float32 logits [n, stride] are >=
  // thresholds[j] (kernels/cpu/ops.h count_at_least); counts is a host array of rows.size().
  virtual void count_at_least(const Tensor& logits, int64_t L, const std::vector<int32_t>& rows,
                              const std::vector<float>& thresholds, int32_t* counts) = 0;

  // Device memory, for the memory plan (backends without a device memory of their own return false).
  virtual bool device_memory(size_t* free_bytes, size_t* total_bytes) { (void)free_bytes, (void)total_bytes; return false; }
  // Bytes of the backend's tensors in use now, and their high-water mark since the last reset (both 0
  // where not tracked).
  virtual size_t tensor_memory() { return 0; }
  virtual void reset_peak_memory() {}
  virtual size_t peak_memory() { return 0; }
  // Waits for queued device work.
  virtual void synchronize() {}
  // Hands memory cached for reuse back to the device.
  virtual void trim_memory() {}
  // Prepares every matrix product seen so far (their weight shapes) for each token count up to the
  // largest seen with it, so later steps pay no one-time cost (algorithm choice, a kernel's first
  // launch) when their token count is new. Returns the number of products prepared.
  virtual int64_t prepare_gemms() { return 0; }
  // kv_cache_dtype fp8 where attention reads 16-bit tiles (a GPU's prefill): room, allocated now (before
  // the memory plan measures what is free), for the cache blocks of up to `tokens` positions in the
  // activation type, so that a prefill step's blocks are widened once per layer (gather_step_blocks)
  // rather than tile by tile by every query tile that reads them; sequences whose blocks do not fit are
  // widened tile by tile. Returns the bytes taken (0: this backend reads the codes as they are, or had no
  // room for them).
  virtual size_t reserve_kv_widening(int64_t tokens, int64_t block_size, int64_t kv_heads, int64_t head_dim) {
    (void)tokens, (void)block_size, (void)kv_heads, (void)head_dim;
    return 0;
  }

  // Graphs of recorded steps (CUDA graphs; backends without them keep the defaults). A capture records
  // the ops between graph_capture_begin() and graph_capture_end(), which returns the graph's id; while
  // capturing, begin_step() takes only the step's shape, so the step's metadata must have been uploaded
  // by a begin_step() just before the capture. graph_replay(id) runs the graph again over the metadata
  // of the latest begin_step(), which must have that shape (token and sequence counts, max_blocks,
  // max_context). reserve_step() sizes the metadata buffers once, so their addresses stay those the
  // graphs were recorded with; should a later step need larger buffers, every graph is dropped and
  // graph_replay() returns false (the caller runs the step eagerly).
  virtual bool supports_graphs() const { return false; }
  virtual void reserve_step(int64_t tokens, int64_t seqs, int64_t table_entries) { (void)tokens, (void)seqs, (void)table_entries; }
  virtual void graph_capture_begin() { throw std::logic_error("this backend has no graphs"); }
  virtual int graph_capture_end() { throw std::logic_error("this backend has no graphs"); }
  // Ends a capture that failed midway, discarding it (no-op when not capturing).
  virtual void graph_capture_abort() {}
  virtual bool graph_replay(int id) { (void)id; return false; }
  // Device memory the graphs hold for their own temporaries.
  virtual size_t graph_memory() { return 0; }

 protected:
  // gate_up_silu's default, with `lora`'s update of x (LoraDelta: gate, up) added to gate and up before SiLU.
  void gate_up_silu_composed(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up, Tensor& act,
                             const LoraDelta* lora);
  std::function<bool()> wait_hook_;
};

// Whether the tensors are rows of one matrix, one after another in memory (one type, one column count):
// then stacked_view(parts) is that matrix (the model loads q/k/v and gate/up that way, so a backend may
// run each group as one GEMM).
bool stacked_rows(const std::vector<const Tensor*>& parts);
Tensor stacked_view(const std::vector<const Tensor*>& parts);

// Rows [r0, r0 + n) of t (shares t's storage).
inline Tensor rows_view(const Tensor& t, int64_t r0, int64_t n) {
  Tensor v = t;
  const int64_t row_bytes = t.shape.empty() || t.shape[0] == 0 ? 0 : static_cast<int64_t>(t.bytes()) / t.shape[0];
  v.data = static_cast<char*>(t.data) + r0 * row_bytes;
  if (v.scale) v.scale += r0;
  v.shape[0] = n;
  return v;
}

// copy_columns' contract, checked by each backend before it copies: one element type, 2-D, the rows
// and columns in range. Returns (rows of src, columns of src, columns of dst).
struct ColumnCopy {
  int64_t rows, src_cols, dst_cols;
};
inline ColumnCopy check_copy_columns(const Tensor& src, int64_t width, const Tensor& dst, int64_t col) {
  auto rows = [](const Tensor& t) { return t.shape.empty() ? int64_t{1} : t.shape[0]; };
  auto cols = [&](const Tensor& t) { return rows(t) == 0 ? int64_t{0} : t.numel() / rows(t); };
  const ColumnCopy c{rows(src), cols(src), cols(dst)};
  if (src.dtype != dst.dtype || rows(dst) < c.rows || width < 0 || width > c.src_cols || col < 0 ||
      col + width > c.dst_cols)
    throw std::invalid_argument("copy_columns: types, rows or columns out of range");
  return c;
}

// "cpu", "cuda" (built with CUDA, a GPU visible; this rank uses GPU local_rank modulo the GPUs), or
// "auto" (cuda when possible, else cpu). `dtype` is the CUDA backend's element type; the CPU backend
// computes in float32.
std::unique_ptr<Backend> make_backend(const std::string& kind, int local_rank, DType dtype);
// The element type for a config dtype ("auto" takes the checkpoint's torch_dtype).
DType resolve_dtype(const std::string& config_dtype, const std::string& torch_dtype);

}  // namespace llmserve
