// The CUDA backend: device memory, the kernels of kernels/cuda, and GEMMs through cuBLASLt
// (bf16/fp16/fp32 operands, fp32 accumulation, bias epilogue, the heuristic's algorithm chosen once
// per shape and token-count bucket and cached). Built only when nvcc is found.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "backend/backend.h"

namespace llmserve {

class CudaBackend : public Backend {
 public:
  CudaBackend(int device, DType dtype);
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }
  DType compute_dtype() const override { return dtype_; }
  int device() const { return device_; }

  Tensor empty(const std::vector<int64_t>& shape, DType dtype) override;
  Tensor upload(const float* host, const std::vector<int64_t>& shape, DType dtype) override;
  Tensor upload_to_host_memory(const float* host, const std::vector<int64_t>& shape, DType dtype) override;
  // FP8 E4M3 codes and row scales (kernels/fp8.h), quantized on the device: the weight-streaming GEMVs of
  // 1-4 tokens read the codes (half the bytes); other token counts expand the matrix into a device
  // buffer of the activation type first (dequantized), and run as with 16-bit weights.
  Tensor upload_fp8(const float* host, const std::vector<int64_t>& shape, DType dtype, bool host_memory) override;
  DType fp8_matrix_dtype() const override { return DType::F8E4M3; }
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
  // Steps of up to kMoeMaxPairs (token, expert) pairs on the device (kernels/cuda/moe.cu); larger ones (a
  // long prefill) through Backend::moe's host routing, which groups each expert's tokens for cuBLASLt.
  void moe(const Tensor& h, const MoeWeights& w, Tensor& out, bool accumulate) override;
  bool moe_in_graphs(int64_t tokens, int64_t E, int k, int64_t H, int64_t M) const override;
  void lora_shrink(const Tensor& in, const Tensor& a, Tensor& t) override;
  void lora_expand(const Tensor& t, const LoraExpand* outs, int n) override;
  void gather_rows(const Tensor& x, Tensor& out) override;
  void linear_residual(const Tensor& a, const Tensor& w, Tensor& y, Tensor& x, const LoraDelta* lora = nullptr) override;
  void norm_qkv_rope_kv_write(const Tensor& x, const InputNorm& norm, const Tensor& wq, const Tensor* bq, Tensor& q,
                              const Tensor& wk, const Tensor* bk, Tensor& k, const Tensor& wv, const Tensor* bv,
                              Tensor& v, const HeadNorm* head_norm, const Tensor& inv_freq, int64_t head_dim,
                              Tensor& k_cache, Tensor& v_cache, const LoraDelta* lora = nullptr) override;
  void norm_gate_up_silu(const Tensor& x, const InputNorm& norm, const Tensor& w_gate, const Tensor& w_up,
                         Tensor& gate_up, Tensor& act, const LoraDelta* lora = nullptr) override;
  void rope_kv_write(Tensor& q, Tensor& k, const Tensor& v, const Tensor& inv_freq, int64_t head_dim, Tensor& k_cache,
                     Tensor& v_cache) override;
  void gate_up_silu(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up, Tensor& act) override;
  void draw_rows(Tensor& logits, int64_t L, int64_t token_offset, const std::vector<RowDraw>& rows,
                 const std::vector<LogitEdit>& edits, const RowMasks& masks, float* best, int32_t* idx, float* keep) override;
  void row_logprobs(const Tensor& logits, int64_t L, int64_t token_offset, const std::vector<int32_t>& rows,
                    const std::vector<int32_t>& chosen, int K, float* stats, float* top_v, int32_t* top_i, const LogprobView* views) override;
  void count_at_least(const Tensor& logits, int64_t L, const std::vector<int32_t>& rows, const std::vector<float>& thresholds,
                      int32_t* counts) override;
  bool device_memory(size_t* free_bytes, size_t* total_bytes) override;
  size_t tensor_memory() override;
  void reset_peak_memory() override;
  size_t peak_memory() override;
  void synchronize() override;
  void trim_memory() override;
  bool supports_graphs() const override { return true; }
  void reserve_step(int64_t tokens, int64_t seqs, int64_t table_entries) override;
  void graph_capture_begin() override;
  int graph_capture_end() override;
  void graph_capture_abort() override;
  bool graph_replay(int id) override;
  size_t graph_memory() override;
  // The stream every op of this backend runs on (a blocking stream: ordered with work on the legacy
  // default stream, where NCCL's collectives and synchronous copies go).
  cudaStream_t stream() const { return stream_->s; }
  // GEMM algorithms are chosen by cuBLASLt's heuristic once per weight shape and token-count bucket
  // (counts up to 256 each their own; above, the multiple of 64 at or above the count, where every
  // tile of 64, 128 or 256 tokens falls as for the count itself), asked at the bucket's top and checked
  // against each exact count with cublasLtMatmulAlgoCheck: a continuous batch's token count changes
  // nearly every step, and asking the heuristic costs ~0.1 ms of host time per shape. `exact` asks it
  // at every token count instead (kernel_bench compares the two).
  void set_gemm_heuristic_per_token_count(bool exact) { gemm_exact_ = exact; }
  // Whether a linear layer of T tokens over these 16-bit operands (the input first, then the weights) runs
  // on the skinny GEMMs (cuda::skinny_gemm: 5-16 tokens, weights of up to cuda::kSkinnyMaxWeights
  // elements) instead of cuBLASLt.
  bool skinny(int64_t T, std::initializer_list<const Tensor*> operands) const;
  // lora_shrink of the block's normalized input, h = rmsnorm(x) * w: up to 16 rows with the norm inside the
  // shrink's launch where lora_shrink_norm_inside() (norm.h written by it when write_h, else left alone),
  // else rmsnorm into norm.h first (so norm.h holds h after the call whenever write_h).
  void lora_shrink_norm(const Tensor& x, const InputNorm& norm, const Tensor& a, Tensor& t, bool write_h = false);
  // Whether lora_shrink_norm normalizes inside the shrink's launch (LLMSERVE_LORA_SHRINK_NORM=0|1 forces it,
  // for measuring).
  static bool lora_shrink_norm_inside();
  // lora_expand of `d` into columns at[j] .. of the rows of one GEMM over stacked projections (rows
  // [T, W], float32) rather than into tensors of their own.
  void lora_expand_columns(const LoraDelta& d, Tensor& rows, const std::array<int64_t, 3>& at);
  // The same for FP8 weights (their codes read by the skinny GEMMs, widened in registers): any size, the
  // alternative being to expand the matrix into 16 bits first (more than 16 tokens) or the CUDA-core GEMVs
  // (below skinny_fp8_min_tokens, which are faster there at 1-2 tokens and slower from three: H200,
  // kernel_bench --few-tokens, docs/performance.md).
  bool skinny_fp8(int64_t T, const Tensor& x, std::initializer_list<const Tensor*> weights) const;
  void set_skinny_gemms(bool on) { skinny_on_ = on; }
  // The fewest tokens of an FP8 linear layer that the skinny kernels take (1 to cuda::kSkinnyMinTokens;
  // LLMSERVE_SKINNY_FP8_MIN_TOKENS).
  void set_skinny_fp8_min_tokens(int64_t tokens) { skinny_fp8_min_tokens_ = tokens; }
  int64_t skinny_fp8_min_tokens() const { return skinny_fp8_min_tokens_; }
  // Whether a linear layer of T <= 4 tokens over these 16-bit operands (the input first) runs on the skinny
  // kernels rather than the CUDA-core GEMVs: from skinny_min_tokens (3 by default; 5 = never;
  // LLMSERVE_SKINNY_MIN_TOKENS), any size.
  bool skinny_few(int64_t T, std::initializer_list<const Tensor*> operands) const;
  // Whether the skinny q/k/v and gate/up launches normalize the float32 rows x themselves rather than run
  // after an rmsnorm launch: for rows of kSkinnyNormMinCols columns or more (H200, docs/performance.md,
  // thirty-eighth session: with the norm inside, the 1.5B shape's whole 4-sequence decode layer (1,536
  // columns) takes 3.2 us longer and its concurrency-4 decode 4-10% longer, the 7B shape's (3,584)
  // 2-4-sequence layers 8-14 us shorter), where they can: 1-4 rows whose 16-bit copies of type wt fit the
  // block's shared memory, 16-byte aligned. set_skinny_norm_inside / LLMSERVE_SKINNY_NORM_INSIDE=1 or 0
  // force either form at every width (for measuring).
  static constexpr int64_t kSkinnyNormMinCols = 2048;
  bool skinny_norm_inside(const Tensor& x, DType wt) const;
  void set_skinny_norm_inside(bool on) { skinny_norm_forced_ = on; }
  void set_skinny_min_tokens(int64_t tokens) { skinny_min_tokens_ = tokens; }
  int64_t skinny_min_tokens() const { return skinny_min_tokens_; }
  // Linear layers whose matrices hold kSkinnyBigWeights elements or more (together: the 7B shape's down
  // projection and gate/up, lm_head) go to the skinny kernels from skinny_big_min_tokens (2 by default;
  // LLMSERVE_SKINNY_BIG_MIN_TOKENS) where that is below the boundary above: few_token_boundary. One FP8
  // matrix of that size from skinny_fp8_big_min_tokens (1 by default: the 7B down projection;
  // LLMSERVE_SKINNY_FP8_BIG_MIN_TOKENS); not FP8 gate/up (two matrices), whose GEMV is ahead at 2 tokens.
  static constexpr int64_t kSkinnyBigWeights = int64_t(1) << 25;
  void set_skinny_big_min_tokens(int64_t tokens) { skinny_big_min_tokens_ = tokens; }
  int64_t skinny_big_min_tokens() const { return skinny_big_min_tokens_; }
  void set_skinny_fp8_big_min_tokens(int64_t tokens) { skinny_fp8_big_min_tokens_ = tokens; }
  int64_t skinny_fp8_big_min_tokens() const { return skinny_fp8_big_min_tokens_; }
  static int64_t few_token_boundary(int64_t boundary, int64_t weights, int64_t big_boundary);
  static constexpr int64_t kGemmExactUpTo = 256, kGemmBucket = 64;
  // Every bucket of every weight shape seen, up to the largest token count seen with it: the heuristic
  // asked and the GEMM run once on scratch operands (a cuBLASLt kernel's first launch costs ~2.5 ms).
  int64_t prepare_gemms() override;
  // kv_cache_dtype fp8: two buffers of ceil(tokens / block_size) blocks in the activation type (none for
  // float32, whose attention reads the codes on CUDA cores). In a prefill step (one that runs
  // cuda::flash_prefill) the blocks of the sequences that fit there (gather_step_blocks: runs of new
  // tokens first) are widened there (cuda::widen_kv_blocks) before each layer's attention, which reads
  // them as a 16-bit cache; the other sequences' tiles run on the kernel that widens tile by tile.
  size_t reserve_kv_widening(int64_t tokens, int64_t block_size, int64_t kv_heads, int64_t head_dim) override;
  // Off: every fp8 prefill widens tile by tile (tests and kernel_bench compare the two).
  void set_kv_widening(bool on) { widen_on_ = on; }
  // Attention calls that ran over widened blocks so far (a test's count).
  int64_t kv_widenings() const { return kv_widenings_; }
  // Whether a prefill step's decode rows (sequences of fewer than kFlashMinQueries new tokens, in up to
  // kMaxDecodeRuns runs of adjacent sequences anywhere in the step) take the split-KV decode kernel, a
  // launch a run, rather than the prefill kernel's tiles (on by default; tests and benchmarks compare).
  void set_split_decode_rows(bool on) { split_decode_rows_ = on; }
  // This step's runs of rows on the split-KV kernel in a prefill step: each its first row and how many
  // (a test's check; none: every row on the prefill kernel).
  const std::vector<std::pair<int64_t, int64_t>>& split_decode_rows() const { return decode_runs_; }
  static constexpr size_t kMaxDecodeRuns = 8;
  // Times cuBLASLt's heuristic was asked (tests check that prepared GEMMs need it no more).
  int64_t gemm_heuristic_calls() const { return heuristic_calls_; }
  // Copies of offloaded matrices queued for cuBLASLt GEMMs so far (gemm_weight; a test's count).
  int64_t offloaded_gemm_copies() const { return offloaded_copies_; }
  // FP8 matrices expanded to 16 bits so far (dequantized; a test's count).
  int64_t dequantized_matrices() const { return dequantized_; }
  // FP8 GEMMs run so far (fp8_gemm), and the switch between them and the expansion for many tokens.
  int64_t fp8_gemms() const { return fp8_gemms_; }
  void set_fp8_gemm(bool on) { fp8_gemm_on_ = on; }
  // The token count whose heuristic answer serves `n` tokens.
  static int64_t gemm_token_bucket(int64_t n);

 private:
  // An expand's output: B^T stack, its columns of t, and rows of float32 `out` ld apart.
  struct ExpandTarget {
    const Tensor* bt;
    int64_t col;
    float* out;
    int64_t ld;
  };
  void expand_targets(const Tensor& t, const ExpandTarget* e, int n);
  // Whether gate and up are consecutive rows of one matrix that stacked_gate_up_silu takes (scratch, act).
  bool stacked_gate_up(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& gate_up,
                       const Tensor& act) const;
  void stacked_gate_up_silu(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, Tensor& gate_up, Tensor& act,
                            const LoraDelta* lora);
  struct Stream {
    cudaStream_t s = nullptr;
    int device = 0;
    ~Stream();
  };
  struct IntBuffer {
    int32_t* ptr = nullptr;
    size_t cap = 0;
    bool graphs_read = true;  // whether recorded graphs may read it
  };
  // Reallocates b to `cap` entries (contents lost), dropping any recorded graphs where they may read it.
  void grow(IntBuffer& b, size_t cap);
  // Uploads each vector into its buffer (grown where needed) from pinned staging with asynchronous
  // copies on stream(): a step's metadata no longer costs a synchronous pageable copy per buffer. An
  // item of width w < pitch holds rows of w entries, each copied to `pitch` entries from the last (one
  // two-dimensional copy; the entries between rows keep what they held).
  struct Upload {
    IntBuffer* to;
    const std::vector<int32_t>* from;
    size_t width = 0, pitch = 0;
    bool strided() const { return width > 0 && width < pitch; }
    size_t device_entries() const { return strided() ? from->size() / width * pitch : from->size(); }
  };
  void put(const std::vector<Upload>& items);
  // The operation (transposes, epilogue) and the heuristic's algorithm of a weight shape and bucket.
  struct GemmAlgo {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatmulAlgo_t algo{};
    // The betas its GEMMs ran with (bit 0: zero, bit 1: not): cuBLASLt launches a different kernel for
    // an accumulating GEMM, and a kernel's first launch costs milliseconds, so prepare_gemms runs both.
    unsigned betas = 0;
  };
  // One exact shape: its layouts, the bucket's operation, and the algorithm that runs it.
  struct Gemm {
    cublasLtMatmulDesc_t op = nullptr;  // owned by the GemmAlgo
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    GemmAlgo* bucket = nullptr;
  };
  using GemmKey = std::tuple<int64_t, int64_t, int64_t, int, int, bool>;  // m, n, k, in, out, bias
  Gemm& gemm_for(int64_t m, int64_t n, int64_t k, DType in, DType out, bool bias);
  cublasLtMatmulAlgo_t gemm_heuristic(const Gemm& g, int64_t m, int64_t n, int64_t k, DType in);
  // out = alpha w . x + beta out (+ bias, where g has the bias epilogue), on stream(); w through
  // gemm_weight.
  void run_gemm(Gemm& g, const Tensor& w, const void* x, const void* bias, float beta, void* out,
                const float* x_scale = nullptr);
  // Whether a GEMM of T tokens over an FP8 matrix [N, K] (with a float32 bias: f32_bias) runs as an FP8
  // GEMM (quantized activations).
  bool fp8_gemm_takes(int64_t T, int64_t K, int64_t N, bool f32_bias) const;
  // y = beta y + (x . w^T) (+ bias) as an FP8 GEMM: x quantized per token to E4M3 (a power-of-two scale
  // each), cuBLASLt's E4M3 x E4M3 with the weights' row scales and the tokens' scales as outer vectors.
  // Returns false (nothing done) where it does not apply or cuBLASLt has no kernel for the types.
  bool fp8_gemm(int64_t T, const Tensor& x, const Tensor& w, DType out, bool bias, float beta, void* y,
                const void* bias_data);
  // The matrix a cuBLASLt GEMM reads: w itself, or, where w lies in offloaded host memory
  // (cpu_offload_gb), its copy in weight_stage_. A GEMM tiled over the tokens would read host memory
  // over the bus once per tile of tokens (a 2,048-token prefill about 8 times); the copy reads it once.
  // GEMVs and skinny GEMMs (a few tokens) read each weight once, in place.
  const void* gemm_weight(const Tensor& w);
  // Destroys the recorded graphs (they read a buffer about to be replaced), with a warning why.
  void drop_graphs(const char* why);
  // staged's first `size` bytes copied into pinned host memory mapped into the device's address space
  // (registered for gemm_weight); the tensor's scales, if any, moved along.
  Tensor to_host_memory(const Tensor& staged, size_t size);
  // weight_stage_ at least `bytes` large.
  void reserve_weight_stage(size_t bytes);
  // w itself, or where w holds FP8 codes, the matrix they stand for in the activation type, expanded
  // into weight_stage_ (valid until the next call: ops use it at once, in stream order, launching the
  // kernels that read it under a cuda::PdlHold).
  Tensor dequantized(const Tensor& w);

  int device_;
  DType dtype_;
  std::shared_ptr<Stream> stream_;  // shared with the tensors, which free themselves on it
  std::vector<cudaGraphExec_t> graphs_;
  bool capturing_ = false;
  cudaMemPool_t pool_ = nullptr;  // the device's default pool: tensors come and go without synchronising
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 32u << 20;
  void* attention_scratch_ = nullptr;  // split-KV partial results (cuda::paged_attention_scratch_bytes)
  std::map<GemmKey, GemmAlgo> gemm_algos_;  // n is the token-count bucket
  std::map<std::pair<GemmKey, bool>, Gemm> gemms_;  // exact n; whether the heuristic was asked at n
  bool gemm_exact_ = false;
  bool skinny_on_ = true;
  std::optional<bool> skinny_norm_forced_;  // (unset: by width, skinny_norm_inside)
  int64_t skinny_fp8_min_tokens_ = 3, skinny_min_tokens_ = 3, skinny_big_min_tokens_ = 2;  // (cuda::kSkinnyMinTokens, 5: never)
  int64_t skinny_fp8_big_min_tokens_ = 1;
  int64_t heuristic_calls_ = 0;
  IntBuffer ids_, positions_, slots_, tables_, token_seq_, logits_rows_, tiles_;
  IntBuffer lora_rows_;  // each token's LoRA adapter (StepMeta::lora_rows), uploaded every step
  int64_t num_tokens_ = 0, num_seqs_ = 0, max_blocks_ = 0, num_logits_ = 0, max_len_ = 0, num_tiles_ = 0;
  int64_t max_new_ = 0;  // the most new tokens of one sequence in the step
  static constexpr int64_t kFlashMinQueries = 16;  // new tokens of one sequence that make a step a prefill
  bool flash_ = false;
  // A prefill step's decode rows on the split-KV kernel: runs of rows (first, count), contexts up to
  // decode_len_, runs of new tokens up to decode_new_ (no runs: every row on the prefill kernel).
  std::vector<std::pair<int64_t, int64_t>> decode_runs_;
  int64_t decode_len_ = 0, decode_new_ = 0;
  bool split_decode_rows_ = true;
  // reserve_kv_widening's buffers (widen_cap_ blocks of widen_bs_ x widen_row_ elements each) and this
  // step's blocks to widen into them (0: none, the step widens tile by tile) with its renumbered tables;
  // the first widen_tiles_ of tiles_ are the tiles of the sequences they belong to.
  void* widen_k_ = nullptr;
  void* widen_v_ = nullptr;
  int64_t widen_cap_ = 0, widen_bs_ = 0, widen_row_ = 0, widen_count_ = 0, widen_tiles_ = 0, kv_widenings_ = 0;
  bool widen_on_ = true;
  IntBuffer widen_blocks_{nullptr, 0, false}, widen_tables_{nullptr, 0, false};
  // draw_rows' inputs (row draws, penalty edits): staged in pinned memory and copied on their own stream,
  // so the copy overlaps the forward pass still running on stream(); a device buffer of their own (a
  // pool allocation on stream() could still be in use by the queued forward pass).
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;
  unsigned char* draw_pinned_ = nullptr;
  void* draw_device_ = nullptr;
  size_t draw_cap_ = 0;
  // draw_rows' results (best scores, then tokens): a device buffer of their own, which a later step's
  // pending token ids are filled in from (begin_step), and their pinned copy.
  float* drawn_device_ = nullptr;
  float* drawn_pinned_ = nullptr;
  size_t drawn_cap_ = 0;      // floats
  int64_t drawn_rows_ = 0;    // rows of the last draw
  // row_logprobs' results, brought down into pinned memory; results_ follows the copy of either.
  float* lp_pinned_ = nullptr;
  size_t lp_cap_ = 0;         // floats
  cudaEvent_t results_ = nullptr;
  // Waits for results_, calling the wait hook meanwhile (asynchronous scheduling).
  void wait_for_results();
  // begin_step's staging for the step metadata; meta_copied_ follows the copies out of it on stream(),
  // so the next step rewrites it only when they are done.
  cudaEvent_t meta_copied_ = nullptr;
  int32_t* meta_pinned_ = nullptr;
  size_t meta_cap_ = 0;
  // upload_to_host_memory's allocations: device address of the first byte -> (one past the last, the
  // host address of the first). Shared with their deleters, which take them out.
  struct HostWeight {
    const char* end;
    const char* host;
  };
  std::shared_ptr<std::map<const char*, HostWeight>> host_weights_ = std::make_shared<std::map<const char*, HostWeight>>();
  // As large as the largest of them (gemm_weight), and as the largest FP8 matrix in 16 bits (dequantized).
  void* weight_stage_ = nullptr;
  size_t weight_stage_bytes_ = 0;
  int64_t offloaded_copies_ = 0;
  int64_t dequantized_ = 0;
  bool fp8_gemm_on_ = false;
  int64_t fp8_gemms_ = 0;
  std::set<GemmKey> fp8_gemm_refused_;  // (n = 0)
};

// The CUDA backend on this rank's GPU (local_rank modulo the GPUs visible); throws Error when there
// is none.
std::unique_ptr<Backend> make_cuda_backend(int local_rank, DType dtype);
bool cuda_device_available();
// CUDA devices visible to this process (0 when none, or the driver fails).
int cuda_device_count();

}  // namespace llmserve
