// CPU (fp32) reference kernels. Every CUDA kernel in kernels/cuda/ has its counterpart here and is
// tested against it. Plain row-major float arrays; T = tokens in the step, H = hidden size,
// D = head dim, Hq/Hk = query/key-value heads held by this rank.
#pragma once
#include <cstdint>

#include "kernels/draw.h"

namespace llmserve::cpu {

// out[t] = table[ids[t] - vocab_start] if that row is in this shard [vocab_start, vocab_start+rows),
// else zeros (the tensor group's all-reduce then completes the lookup).
void embedding(const float* table, int64_t vocab_start, int64_t rows, const int32_t* ids, int64_t T, int64_t H,
               float* out);

// out = x / sqrt(mean(x^2) + eps) * w, row by row.
void rmsnorm(const float* x, const float* w, int64_t T, int64_t H, float eps, float* out);

// x += y.
void add(float* x, const float* y, int64_t n);
// x[t, :] += sigmoid(h[t, :] . gate) * y[t, :] for rows of C (x, y) and of K (h, gate).
void add_sigmoid_gated(float* x, const float* y, const float* h, const float* gate, int64_t T, int64_t C, int64_t K);

// LoRA (Backend::lora_shrink / lora_expand), row r by its adapter index rows[r] (-1: none). Shrink:
// t[r, c] = x[r, :] . a[rows[r], c, :] (a [slots, C, K]; 0 where rows[r] < 0). Expand: out[r, :] +=
// t[r, col:col+R] . bt[rows[r]] (bt [slots, R, N], t rows of tc columns; rows without an adapter untouched).
void lora_shrink(const float* x, const float* a, const int32_t* rows, int64_t T, int64_t K, int64_t C, float* t);
void lora_expand(const float* t, int64_t tc, int64_t col, const float* bt, const int32_t* rows, int64_t T, int64_t R,
                 int64_t N, float* out);

// out[T, N] = x[T, K] . w[N, K]^T (+ bias[N]).
void linear(const float* x, const float* w, const float* bias, int64_t T, int64_t K, int64_t N, float* out);

// Rotary embedding, neox layout (rotate halves), in place on q [T, Hq, D] and k [T, Hk, D];
// angle = positions[t] * inv_freq[i], computed in float32 as transformers does.
void rope(float* q, float* k, const int32_t* positions, const float* inv_freq, int64_t T, int64_t Hq, int64_t Hk,
          int64_t D);

// Writes k, v [T, Hk, D] into the paged caches [num_blocks * block_size, Hk, D] at slot_mapping[t].
void kv_write(const float* k, const float* v, const int32_t* slot_mapping, int64_t T, int64_t Hk, int64_t D,
              float* k_cache, float* v_cache);
// The same into a cache of FP8 E4M3 codes (kv_cache_dtype fp8): each value's code with scale 1
// (kernels/fp8.h: round to nearest, ties to even, saturating at +-448).
void kv_write(const float* k, const float* v, const int32_t* slot_mapping, int64_t T, int64_t Hk, int64_t D,
              uint8_t* k_cache, uint8_t* v_cache);

// Causal attention through block tables. Sequence s owns tokens [q_start[s], q_start[s+1]); token t
// at position p attends to cached positions 0..p of its sequence, or with window > 0 (sliding-window
// attention) to positions p - window + 1 .. p of them. block_tables is [S, max_blocks].
// q and out are [T, Hq, D]; query head h uses key/value head h / (Hq / Hk).
void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, int64_t window, float* out);
// The same over caches of FP8 E4M3 codes with scale 1: the blocks the step reads decoded to float32
// copies once, then the float32 form over them (what it gives over the decoded values), for groups of
// sequences whose copies stay within max_floats floats each for K and V (a longer sequence alone).
void paged_attention(const float* q, const uint8_t* k_cache, const uint8_t* v_cache, const int32_t* block_tables,
                     int64_t max_blocks, const int32_t* q_start, const int32_t* positions, int64_t S, int64_t Hq,
                     int64_t Hk, int64_t D, int64_t block_size, float scale, int64_t window, float* out,
                     int64_t max_floats = int64_t(1) << 25);

// out = silu(gate) * up.
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// The sampler's draw for n rows of logits [n, stride] (the first L columns are this rank's tokens, the
// first one token_offset): first the penalty edits are applied to the logits in place, then per row the
// best score and its token (greedy: the largest logit; else logit * inv_temperature + Gumbel noise of
// (seed, position, token) over the tokens the row's filters keep, see RowDraw); ties go to the smaller
// token. A row with every logit -inf gets best -inf and token INT32_MAX. keep (null: not asked for) gets
// each row's draw_keep_threshold (-inf for a greedy or unfiltered row). After the edits, num_masks rows'
// allowed-token bitmaps (kernels/draw.h mask_words) mask the columns they do not allow.
void draw_rows(float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               const LogitEdit* edits, int64_t num_edits, float* best, int32_t* idx, float* keep = nullptr,
               const int32_t* mask_rows = nullptr, int64_t num_masks = 0, const uint64_t* mask_bits = nullptr);
// Log-probability statistics (see kernels/draw.h) of rows rows[0..m) of logits [., stride] whose first L
// columns are tokens token_offset..: stats [m, 3], top_v and top_i [m, K]; with views (m of them), of
// row rows[j]'s values under views[j] (LogprobView) instead of its logits.
void row_logprobs(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const int32_t* rows,
                  const int32_t* chosen, int64_t m, int K, float* stats, float* top_v, int32_t* top_i,
                  const LogprobView* views = nullptr);
// counts[j] = how many of the first L logits of row rows[j] of logits [., stride] are >= thresholds[j]
// (a token's rank, as vLLM counts it, when the threshold is its logit).
void count_at_least(const float* logits, int64_t stride, int64_t L, const int32_t* rows, const float* thresholds,
                    int64_t m, int32_t* counts);
// The smallest x = logit * inv_temperature a filtered row keeps (-inf when it keeps everything).
float draw_keep_threshold(const float* row, int64_t L, const RowDraw& r);
// The two filter steps that see the kept values themselves, shared with the sampler's version for a
// vocabulary split over ranks (src/engine/sampler.cpp), which gathers candidates before calling them:
// the k-th largest of v[0..n) (1 <= k <= n);
float kth_largest(const float* v, int64_t n, int64_t k);
// top-p over the values top-k and min-p kept, largest first in v[0..n) (finite): the largest v[i] with
// sum_{j <= i} e^(v[j] - mx) / z >= top_p - 1e-7 (mx their maximum, z their normalizer: summed in
// double, rounded to float), or -inf when rounding keeps the running sum short of top_p.
float top_p_cut(const float* v, int64_t n, float mx, float z, double top_p);

}  // namespace llmserve::cpu
