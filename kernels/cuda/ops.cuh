// CUDA kernels, each the counterpart of the CPU kernel of the same name in kernels/cpu/ops.h (same
// contracts; T is float, __half or __nv_bfloat16; arithmetic in float). Launchers take a stream and
// check the launch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "kernels/draw.h"

#include <cstdint>
#include <initializer_list>
#include <vector>

namespace llmserve::cuda {

void check(cudaError_t e, const char* what);

// The residual stream may be float32 while activations are bf16/fp16: embedding writes TO from a TI
// table, rmsnorm reads TI and writes TO (weights in TO), add accumulates TY into TX.
template <typename TI, typename TO>
void embedding(const TI* table, int64_t vocab_start, int64_t rows, const int32_t* ids, int64_t n, int64_t H, TO* out,
               cudaStream_t s);
// Asynchronous scheduling: a step's token id -1 - r becomes drawn[r] (row r of the previous draw), or
// -1 when r >= drawn_n.
void resolve_pending(int32_t* ids, int64_t n, const int32_t* drawn, int64_t drawn_n, cudaStream_t s);
template <typename TI, typename TO>
void rmsnorm(const TI* x, const TO* w, int64_t n, int64_t H, float eps, TO* out, cudaStream_t s);
// x [n, H] float32 in place: each row RMS-normalized and scaled by w [H] (Qwen3's per-head q/k norm).
template <typename TW>
void head_rmsnorm(float* x, const TW* w, int64_t n, int64_t H, float eps, cudaStream_t s);
template <typename TX, typename TY>
void add(TX* x, const TY* y, int64_t n, cudaStream_t s);
// x[t, :] += sigmoid(h[t, :] . gate) * y[t, :] for float32 rows of C (x, y) and rows of K (h, gate).
template <typename T>
void add_sigmoid_gated(float* x, const float* y, const T* h, const T* gate, int64_t rows, int64_t C, int64_t K,
                       cudaStream_t s);
// LoRA (kernels/cpu/ops.h lora_shrink / lora_expand): rows[r] is row r's adapter in the stacks, -1 none.
// Shrink: t [n_rows, C] (float32) = x [n_rows, K] . a[rows[r]]^T (a [slots, C, K]); zero rows where none.
template <typename T>
void lora_shrink(const T* x, const T* a, const int32_t* rows, int64_t n_rows, int64_t K, int64_t C, float* t, cudaStream_t s);
// The same of the RMSNorm of float32 x (rmsnorm(x) * norm_w rounded to T, as rmsnorm writes it), for a few rows;
// h_out non-null: that RMSNorm [n_rows, K] written there too (every row's), as rmsnorm would.
template <typename T>
void lora_shrink_norm(const float* x, const T* norm_w, float eps, const T* a, const int32_t* rows, int64_t n_rows, int64_t K,
                      int64_t C, float* t, T* h_out, cudaStream_t s);
// The expand fused into a decode GEMV's epilogue: output row n of the launch's matrix j gains, for token
// m with an adapter (rows[m] >= 0), t[m, col[j] + i] . bt[j][rows[m]][i][n] summed over i < R (bt
// [slots, R, N_j] in the activation type; null: matrix j has no update). t null: no update at all.
// R <= kMaxFusedLoraRank (a lane per i).
constexpr int kMaxFusedLoraRank = 32;
struct LoraFused {
  const float* t = nullptr;
  int64_t tc = 0;
  const int32_t* rows = nullptr;
  int R = 0;
  const void* bt[3] = {};
  int64_t col[3] = {};
};
// Expand, up to kMaxLoraOuts outputs in one launch: out [n_rows, N] += t[r, col:col+R] . bt[rows[r]]
// (bt [slots, R, N]; t rows of tc columns; out rows ld apart: N, or wider rows of which out is columns).
constexpr int kMaxLoraOuts = 3;
template <typename T>
struct LoraOut {
  const T* bt;
  int64_t col, N;
  float* out;
  int64_t ld;
};
template <typename T>
void lora_expand(const float* t, int64_t tc, const int32_t* rows, int64_t n_rows, int64_t R, const LoraOut<T>* outs, int n,
                 cudaStream_t s);
template <typename T>
void rope(T* q, T* k, const int32_t* positions, const float* inv_freq, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
          cudaStream_t s);
// q/k/v and gate/up may arrive in float32 (GEMM outputs kept in float32); the cache and `out` are in
// the activation type T.
template <typename TI, typename T>
void kv_write(const TI* k, const TI* v, const int32_t* slot_mapping, int64_t n, int64_t Hk, int64_t D, T* k_cache,
              T* v_cache, cudaStream_t s);
// Attention as kernels/cpu's paged_attention: with window > 0 (a sliding-window layer) a token at position p
// attends to the keys of positions p - window + 1 .. p only.
// token_seq[t]: the sequence of token t (the CPU version derives it from q_start). max_len bounds every
// token's context (position + 1) and sizes the launch (how many splits); each token cuts its own context
// into those splits on the device, so one launch shape serves every context up to max_len. `fresh`
// bounds the new tokens of one sequence in the step: cache rows below position + 1 - fresh were written
// by earlier steps, and the kernel may read them while the kernel before it (the KV write) still runs.
// `scratch` holds the splits' partial results: paged_attention_scratch_bytes() of device memory,
// allocated once and zeroed.
size_t paged_attention_scratch_bytes();
// Kernel attributes the attention launches need; call once per device before any of them.
void prepare_attention_kernels();
// Warps a block of the tensor-core decode attention: 4 or 8, or 0 for the default (4 once a step has
// as many blocks as the GPU has SMs, else 8); anything else throws. The environment's
// LLMSERVE_DECODE_ATTN_WARPS (4 or 8) sets the initial value; benchmarks compare the two.
void set_decode_attention_warps(int warps);
// The least keys a split of the tensor-core decode attention takes (a multiple of 32; 0: the default,
// 256): benchmarks compare splits.
void set_decode_attention_min_chunk(int keys);
// Caches of type TC: TO, or E4M3 codes (kv_cache_dtype fp8: TI float32, TO any of the three types).
template <typename TI, typename TC, typename TO>
void paged_attention(const TI* q, const TC* k_cache, const TC* v_cache, const int32_t* block_tables, int64_t max_blocks,
                     const int32_t* token_seq, const int32_t* positions, int64_t n, int64_t Hq, int64_t Hk, int64_t D,
                     int64_t block_size, float scale, int64_t window, int64_t max_len, int64_t fresh, void* scratch, TO* out,
                     cudaStream_t s);
// Prefill attention on tensor cores (kernels/cuda/flash_prefill.cu): the same contract as
// paged_attention for 16-bit outputs and head_dim a multiple of 16 from 64 to 128 (flash_prefill_supported),
// caches of type TC: T, or E4M3 codes (kv_cache_dtype fp8: TI float32; the mma.sync kernel, which widens
// its tiles in shared memory);
// `tiles` lists the first token of each tile of up to 128 query tokens of one sequence, the tiles whose
// last row sees the most keys first (flash_prefill_tiles of the step's q_start and positions).
bool flash_prefill_supported(int64_t head_dim);
// Head sizes 64 and 128 run a warpgroup-MMA (wgmma) form of the kernel where this build's sm_90a code
// runs on the device, else the mma.sync one. prepare_flash_prefill (called by prepare_attention_kernels)
// probes for it; LLMSERVE_PREFILL_WGMMA=0 or set_prefill_attention_wgmma(false) keeps the mma.sync kernel
// (tests and benchmarks compare the two); prefill_attention_wgmma says which one head size D gets. The
// wgmma form stages 128 keys a tile, except at head size 64 on a grid of at least two blocks an SM
// whose sequences are at most 2,048 tokens long (64-key tiles then fit two blocks an SM);
// prefill_wgmma_keys says which for a grid of `blocks` and a longest sequence of `max_context`.
// LLMSERVE_PREFILL_KEYS=64|128 or set_prefill_wgmma_keys(64|128) fixes the size (0 chooses again;
// other values throw).
void prepare_flash_prefill();
void set_prefill_attention_wgmma(bool on);
bool prefill_attention_wgmma(int64_t head_dim);
void set_prefill_wgmma_keys(int keys);
int prefill_wgmma_keys(int64_t head_dim, int64_t blocks, int64_t max_context);
// With 128-key tiles and cache blocks of 16 positions or more, the wgmma form's tiles come by TMA from a
// producer warpgroup (flash_prefill_tma_k); LLMSERVE_PREFILL_TMA=0 or set_prefill_attention_tma(false)
// keeps the form whose threads copy them.
void set_prefill_attention_tma(bool on);
std::vector<int32_t> flash_prefill_tiles(const std::vector<int32_t>& q_start, const std::vector<int32_t>& positions);
// kv_cache_dtype fp8 ahead of a prefill: cache block blocks[i] (block_codes E4M3 codes in each cache, a
// multiple of 16; caches 16-byte aligned) widened to T into block i of k_out and v_out, as the kernels that
// widen tiles themselves read the codes (exact; the NaN codes as +-480). flash_prefill then reads those
// blocks through the step's tables renumbered into `blocks` (gather_step_blocks).
template <typename T>
void widen_kv_blocks(const __nv_fp8_e4m3* k_cache, const __nv_fp8_e4m3* v_cache, const int32_t* blocks, int64_t count,
                     int64_t block_codes, T* k_out, T* v_out, cudaStream_t s);
template <typename TI, typename TC, typename T>
void flash_prefill(const TI* q, const TC* k_cache, const TC* v_cache, const int32_t* block_tables, int64_t max_blocks,
                   const int32_t* token_seq, const int32_t* positions, const int32_t* tiles, int64_t num_tiles,
                   int64_t n, int64_t Hq, int64_t Hk, int64_t D, int64_t block_size, int64_t cache_blocks,
                   int64_t max_context, float scale, int64_t window, T* out, cudaStream_t s);
// A mixture-of-experts MLP (Backend::moe) of h [T, H] given its router logits [T, E] (float32): experts'
// gate_up [E * 2M, H] and down [E * H, M] in T's type, out [T, H] float32 (added to where `accumulate`).
// The (token, expert) pairs are at most kMoeMaxPairs (moe_on_device_fits); scratch holds moe_scratch_bytes.
constexpr int64_t kMoeMaxPairs = 4096;
bool moe_on_device_fits(int64_t T, int64_t E, int k, int64_t H, int64_t M);
size_t moe_scratch_bytes(int64_t T, int64_t E, int k, int64_t H, int64_t M, size_t elem);
// Steps of up to kMoeTokenMajorMax tokens of k <= 8 choices run token-major: each token's experts streamed
// for it alone by the decode GEMVs' loop (an expert two tokens chose is read twice), the routing inside the
// gate/up launch and the weighted sum inside the down projection's; larger ones grouped by expert (each
// active expert's rows read once, looped over its pairs). `path` forces one (kernel_bench --moe).
constexpr int64_t kMoeTokenMajorMax = 2;  // (H100, kernel_bench --moe: 4 tokens 6% faster grouped)
enum class MoePath { Auto, Tokens, Grouped };
bool moe_token_major(int64_t tokens, int k, MoePath path = MoePath::Auto);
template <typename T>
void moe(const T* h, const float* logits, const T* gate_up, const T* down, int64_t tokens, int64_t E, int k,
         bool renormalize, int64_t H, int64_t M, void* scratch, float* out, bool accumulate, cudaStream_t s,
         MoePath path = MoePath::Auto);
template <typename TI, typename T>
void silu_mul(const TI* gate, const TI* up, int64_t n, T* out, cudaStream_t s);
// out[r, i] = silu(gu[r, i]) * gu[r, I + i] for rows of (gate | up) [rows, 2I] (one GEMM over stacked
// weights).
template <typename T>
void silu_mul_halves(const float* gu, int64_t rows, int64_t I, T* out, cudaStream_t s);
template <typename T>
void gather_rows(const T* x, const int32_t* rows, int64_t n, int64_t C, T* out, cudaStream_t s);
// Element conversions (weights upload as float32 and convert on the device).
template <typename T>
void from_float(const float* in, int64_t n, T* out, cudaStream_t s);
template <typename T>
void to_float(const T* in, int64_t n, float* out, cudaStream_t s);

// out[M, N] = x[M, K] . w[N, K]^T (+ bias[N], float32) for M <= 4 tokens: bandwidth-bound linear layers.
// accumulate: out += instead (a residual add). Weights of type TW: T, or FP8 E4M3 codes (kernels/fp8.h)
// with w_scale[N] the rows' scales (null otherwise).
template <typename T, typename TO, typename TW>
void gemv(const T* x, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K, int64_t N, TO* out,
          cudaStream_t s, bool accumulate = false);
template <typename T, typename TO>
void gemv(const T* x, const T* w, const float* bias, int64_t M, int64_t K, int64_t N, TO* out, cudaStream_t s,
          bool accumulate = false) {
  gemv<T, TO, T>(x, w, nullptr, bias, M, K, N, out, s, accumulate);
}
// out += x . w^T plus a LoRA update (LoraFused, matrix 0) for M <= 2 tokens: an output projection with its
// adapters' expand and the residual add.
template <typename T>
void gemv_lora_residual(const T* x, const T* w, int64_t M, int64_t K, int64_t N, float* out, const LoraFused& lora,
                        cudaStream_t s);
// Kernels this thread has launched through launch() (the tests count what a fused op launches).
extern thread_local uint64_t launch_count;
// While one is held, this thread's launches ask for no programmatic dependent launch: each kernel starts
// only once the one before it has completed. For kernels that read, before their pdl_enter(), memory
// the kernel before them writes: the weight-streaming kernels request their weights early, which is
// wrong for a matrix just expanded into a buffer (fp8_dequantize_rows).
struct PdlHold {
  PdlHold();
  ~PdlHold();
  PdlHold(const PdlHold&) = delete;
  PdlHold& operator=(const PdlHold&) = delete;
};
// FP8 E4M3 matrices (`quantization: fp8`): codes [rows, cols] and a power-of-two scale per row from
// float32 values (kernels/fp8.h, the host's rounding), and back to the values they stand for (codes
// times scales) in T.
// (Also the activations of an FP8 GEMM, a scale per token: in of the activation type.)
template <typename TI>
void fp8_quantize_rows(const TI* in, int64_t rows, int64_t cols, __nv_fp8_e4m3* codes, float* scales, cudaStream_t s);
template <typename T>
void fp8_dequantize_rows(const __nv_fp8_e4m3* codes, const float* scales, int64_t rows, int64_t cols, T* out,
                         cudaStream_t s);

// The same, gate/up + SiLU-and-multiply (as gemv_gate_up_silu) and q/k/v + RoPE (skinny_qkv_rope, below)
// for kSkinnyMinTokens..kSkinnyMaxTokens tokens on tensor cores (16-bit operands;
// kernels/cuda/skinny_gemm.cu), where skinny_gemm_fits: K a multiple of 8, the operands 16-byte aligned.
// The backend takes them for matrices of at most kSkinnyMaxWeights elements (together), where cuBLASLt's
// ~5.5 us per GEMM dominates; on larger ones cuBLASLt streams faster (H200, kernel_bench --skinny at 8
// tokens: q/k/v 2048 x 1536 3.33 against 5.58 us, down 1536 x 8960 14.45 against 11.25 us), as it does
// above 16 tokens. (K split over blocks, a counter per tile, brought down to 13.03 us but cost the small
// matrices 1.1 us: branch wip/skinny-splitk, docs/performance.md.)
constexpr int64_t kSkinnyMinTokens = 5, kSkinnyMaxTokens = 16, kSkinnyMaxWeights = 4 << 20;
bool skinny_gemm_fits(int64_t M, int64_t K, std::initializer_list<const void*> operands);
// What the kernels themselves take (skinny_gemm_fits less its lower bound, kSkinnyMinTokens, which is the
// backend's choice for 5-16 tokens; below that CudaBackend::skinny_few / skinny_fp8 choose): 1-16 tokens.
// (kernel_bench --few-tokens times them at 1-4 tokens.)
bool skinny_gemm_supports(int64_t M, int64_t K, std::initializer_list<const void*> operands);
// Weights of type TW: T, or FP8 E4M3 codes with their rows' scales (w_scale, s_gate, s_up; null
// otherwise), as gemv's (any size: the alternative for FP8 is expanding the matrix first).
template <typename T, typename TO, typename TW>
void skinny_gemm(const T* x, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K, int64_t N,
                 TO* out, cudaStream_t s, bool accumulate = false);
template <typename T, typename TO>
void skinny_gemm(const T* x, const T* w, const float* bias, int64_t M, int64_t K, int64_t N, TO* out, cudaStream_t s,
                 bool accumulate = false) {
  skinny_gemm<T, TO, T>(x, w, nullptr, bias, M, K, N, out, s, accumulate);
}
template <typename T, typename TW>
void skinny_gate_up_silu(const T* x, const TW* w_gate, const TW* w_up, const float* s_gate, const float* s_up, int64_t M,
                         int64_t K, int64_t N, T* act, cudaStream_t s);
template <typename T>
void skinny_gate_up_silu(const T* x, const T* w_gate, const T* w_up, int64_t M, int64_t K, int64_t N, T* act,
                         cudaStream_t s) {
  skinny_gate_up_silu<T, T>(x, w_gate, w_up, nullptr, nullptr, M, K, N, act, s);
}
// Where q/k/v with RoPE go (skinny_qkv_rope, gemv_qkv_rope): the rotated queries (float32 [M, Hq D]) to q;
// the rotated keys and the values into the caches (the activation type, or E4M3 codes where fp8_cache:
// kv_cache_dtype fp8) at the step's slots (none below 0), at the step's positions with inv_freq [D / 2].
struct RopeCacheWrite {
  float* q;
  void* k_cache;
  void* v_cache;
  const int32_t* positions;
  const int32_t* slots;
  const float* inv_freq;
  int64_t Hq, Hk, D;
  bool fp8_cache = false;
};
// q, k, v = h . W^T (+ bias) for the stacked projections W [(Hq + 2 Hk) D, K] (bias [(Hq + 2 Hk) D] or
// null), RoPE and the cache write (rope_kv_write_rows after a GEMM), for 5-16 tokens, D % 16 == 0.
template <typename T, typename TW>
void skinny_qkv_rope(const T* h, const TW* w, const float* w_scale, const float* bias, int64_t M, int64_t K,
                     const RopeCacheWrite& a, cudaStream_t s);
template <typename T>
void skinny_qkv_rope(const T* h, const T* w, const float* bias, int64_t M, int64_t K, const RopeCacheWrite& a,
                     cudaStream_t s) {
  skinny_qkv_rope<T, T>(h, w, nullptr, bias, M, K, a, s);
}

// Fused decoder-layer kernels (compositions of the kernels above; see Backend's defaults). The
// few-token ones that begin with an RMSNorm of the float32 residual stream normalize it into shared
// memory in every block, next to a copy of the norm's weights: norm_smem_bytes() of dynamic shared
// memory, which with the kernel's own static shared memory must stay within kMaxNormSmem, the 48 KB a
// block gets without opting in (a launch over it fails: the Llama-3.1-8B shape's 4-row skinny gate/up,
// 40 KB of rows and weights and 9.25 KB of static shared memory, did).
constexpr size_t kMaxNormSmem = 48 << 10;
inline size_t norm_smem_bytes(int64_t M, int64_t K, size_t elem) { return static_cast<size_t>((M + 1) * K) * elem; }
// Whether gemv_qkv_rope and gemv_norm_gate_up_silu take M rows of K elements of elem bytes: 1-4 rows
// whose norm_smem_bytes fit next to both kernels' static shared memory.
bool gemv_norm_fits(int64_t M, int64_t K, size_t elem);
// Queries the normalizing kernels' static shared memory (gemv_norm_fits, skinny_norm_fits and the
// launchers' checks) now, not at a first launch inside a graph capture; call once per device.
void prepare_norm_launches();
// skinny_gate_up_silu and skinny_qkv_rope over float32 rows x that every block first normalizes into its
// shared memory (RMSNorm with weights norm_w), as the fused GEMVs do: the norm and the projections in one
// launch, for 1-4 rows (the backend's choice from skinny_min_tokens / skinny_fp8_min_tokens, 3; at 5-16 rows
// each block would read them all before its first product, so those take rmsnorm and then the skinny
// launch), where skinny_norm_fits (the rows and weights next to the static shared memory of both kernels).
bool skinny_norm_fits(int64_t M, int64_t K, size_t elem);
template <typename T, typename TW>
void skinny_norm_gate_up_silu(const float* x, const T* norm_w, float eps, const TW* w_gate, const TW* w_up,
                              const float* s_gate, const float* s_up, int64_t M, int64_t K, int64_t N, T* act,
                              cudaStream_t s);
template <typename T, typename TW>
void skinny_norm_qkv_rope(const float* x, const T* norm_w, float eps, const TW* w, const float* w_scale,
                          const float* bias, int64_t M, int64_t K, const RopeCacheWrite& a, cudaStream_t s);
// RoPE on q [n, Hq, D] in place; k rotated and v written into the caches at slots (k unchanged).
template <typename T>
void rope_kv_write(float* q, const float* k, const float* v, const int32_t* positions, const float* inv_freq,
                   const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* k_cache, T* v_cache,
                   cudaStream_t s);
// The same over rows of one GEMM's output (q | k | v per token: q rows q_stride apart, k and v rows
// kv_stride apart), the rotated q written to q_out [n, Hq*D].
template <typename T>
void rope_kv_write_rows(const float* q_in, int64_t q_stride, float* q_out, const float* k, const float* v,
                        int64_t kv_stride, const int32_t* positions, const float* inv_freq, const int32_t* slots,
                        int64_t n, int64_t Hq, int64_t Hk, int64_t D, T* k_cache, T* v_cache, cudaStream_t s);
// The same with each query and key head RMS-normalized first (weights q_norm, k_norm [D]; Qwen3): one
// warp per (token, head) of q, k and v.
template <typename T, typename TW>
void head_norm_rope_kv_write_rows(const float* q_in, int64_t q_stride, float* q_out, const float* k, const float* v,
                                  int64_t kv_stride, const int32_t* positions, const float* inv_freq,
                                  const int32_t* slots, int64_t n, int64_t Hq, int64_t Hk, int64_t D, const TW* q_norm,
                                  const TW* k_norm, float eps, T* k_cache, T* v_cache, cudaStream_t s);
// For M <= 4 rows: q, k, v = (rmsnorm(x) * norm_w) . W^T (+ float32 bias) for weights [Hq*D, K], [Hk*D, K], [Hk*D, K];
// RoPE on q and k at the step's positions; q (float32, [M, Hq*D]) out, k and v into the caches at the
// step's slots (rope_kv_write's result, without the unrotated k and v).
// The weights are of type TW (T, or FP8 E4M3 codes with their rows' scales in `scale`, as gemv's).
// With q_norm and k_norm (type T, [D] each; Qwen3; one row, M = 1) each query and key head is
// RMS-normalized (epsilon head_eps) before RoPE, as head_norm_rope_kv_write_rows after a GEMM; where
// qkv_head_norm_fits(D).
struct QkvRope : RopeCacheWrite {
  const void* w[3];
  const float* bias[3];
  const float* scale[3];
  const void* q_norm = nullptr;
  const void* k_norm = nullptr;
  float head_eps = 0.f;
  LoraFused lora = {};  // (matrices q, k, v; 1-2 tokens, no head norms, 16-bit or float32 weights)
};
// Whether gemv_qkv_rope takes head norms at head size D: D / 16 blocks a head (one thread block
// cluster), 1, 2, 4 or 8 of them, on compute capability 9.0 and up.
bool qkv_head_norm_fits(int64_t D);
template <typename T, typename TW = T>
void gemv_qkv_rope(const float* x, const T* norm_w, float eps, int64_t M, int64_t K, const QkvRope& a, cudaStream_t s);
// act[M, N] = silu(x . w_gate^T) * (x . w_up^T) for M <= 4 rows; the norm_ version takes the float32
// residual stream and normalizes it (rmsnorm(x) * norm_w) first. Weights of type TW with row scales
// s_gate, s_up as gemv's.
template <typename T, typename TW>
void gemv_gate_up_silu(const T* x, const TW* w_gate, const TW* w_up, const float* s_gate, const float* s_up, int64_t M,
                       int64_t K, int64_t N, T* act, cudaStream_t s);
// `lora` (matrices gate, up; 1-2 tokens, weights of type T): their LoRA update added before SiLU.
template <typename T, typename TW>
void gemv_norm_gate_up_silu(const float* x, const T* norm_w, float eps, const TW* w_gate, const TW* w_up,
                            const float* s_gate, const float* s_up, int64_t M, int64_t K, int64_t N, T* act,
                            cudaStream_t s, const LoraFused* lora = nullptr);

// The sampler's draw (see kernels/cpu/ops.h draw_rows); rows, edits, best and idx are device arrays;
// `filtered`: some row has filters (RowDraw::filtered); then thresholds (a device array of n, or null)
// gets each row's keep threshold (kernels/cpu/ops.h draw_rows' keep); without filters it is not written.
// mask_rows and mask_bits (device arrays; num_masks rows' allowed-token bitmaps, kernels/draw.h) mask
// after the edits.
void draw_rows(float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               const LogitEdit* edits, int64_t num_edits, bool filtered, float* best, int32_t* idx, cudaStream_t s,
               float* thresholds = nullptr, const int32_t* mask_rows = nullptr, int64_t num_masks = 0,
               const uint64_t* mask_bits = nullptr);
// kernels/cpu/ops.h count_at_least; rows, thresholds and counts are device arrays.
void count_at_least(const float* logits, int64_t stride, int64_t L, const int32_t* rows, const float* thresholds,
                    int64_t m, int32_t* counts, cudaStream_t s);
// Log-probability statistics (see kernels/cpu/ops.h row_logprobs); rows, chosen and the outputs are
// device arrays, and so are views (one per row, or null: the logits themselves).
void row_logprobs(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const int32_t* rows,
                  const int32_t* chosen, int64_t m, int K, float* stats, float* top_v, int32_t* top_i, cudaStream_t s,
                  const LogprobView* views = nullptr);

}  // namespace llmserve::cuda
