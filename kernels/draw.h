// The token draw shared by the sampler (host) and the backends' row-draw kernels (host and device):
// Gumbel-max with noise that depends only on (seed, position, token), so a seeded request draws the
// same token whatever else is in the batch and however the vocabulary is split across ranks.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __CUDACC__
#define LLMSERVE_HD __host__ __device__ __forceinline__
#else
#define LLMSERVE_HD inline
#endif

namespace llmserve {

LLMSERVE_HD uint64_t draw_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Standard Gumbel noise for (seed, position, token).
LLMSERVE_HD double draw_gumbel(int64_t seed, int64_t position, int64_t token) {
  const uint64_t h = draw_mix64(static_cast<uint64_t>(seed) ^
                                draw_mix64(static_cast<uint64_t>(position) * 0x100000001b3ull ^
                                           draw_mix64(static_cast<uint64_t>(token))));
  const double u = (static_cast<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);  // (0, 1)
  return -log(-log(u));
}

// One row's draw: greedy takes the largest logit; otherwise the largest x + noise over the tokens the
// filters keep, x = logit * inv_temperature. The filters (the sampler's, for a row holding the whole
// vocabulary; off by default) keep x >= the top_k-th largest x (top_k > 0), x >= max x + log_min_p,
// and the smallest set of largest x whose probabilities (softmax over the tokens the first two keep)
// reach top_p: every x >= the largest value v with sum_{x >= v} e^(x - max) / sum >= top_p - 1e-7,
// sum taken in double and rounded to float as the host sampler does.
struct RowDraw {
  float inv_temperature = 1.f;
  int64_t seed = 0;
  int64_t position = 0;
  bool greedy = true;
  int32_t top_k = 0;
  float log_min_p = -INFINITY;
  double top_p = 1.0;
  LLMSERVE_HD bool filtered() const { return !greedy && (top_k > 0 || log_min_p > -INFINITY || top_p < 1.0); }
};

// An edit of one logit of a row (the sampler's, from the request's logit_bias and the sequence's
// history): l += bias, then l = l > 0 ? l / rep : l * rep, then l -= sub, then -inf where mask is set.
// bias = 0, rep = 1, sub = 0, mask = 0 leave l as it is.
struct LogitEdit {
  int32_t row = 0;
  int32_t col = 0;  // column in the row (token - the row's first token)
  float bias = 0.f;  // logit_bias, added first
  float rep = 1.f;
  float sub = 0.f;
  int32_t mask = 0;
};

// Allowed-token bitmaps of some of a draw's rows (guided decoding), applied after the edits: column c of
// row mask_rows[j] becomes -inf unless bit c % 64 of word mask_bits[j * mask_words(L) + c / 64] is set.
LLMSERVE_HD int64_t mask_words(int64_t L) { return (L + 63) / 64; }
LLMSERVE_HD bool mask_allows(const uint64_t* bits, int64_t c) { return (bits[c / 64] >> (c % 64)) & 1u; }
// A backend draw's masks (Backend::draw_rows): the rows with one, and their bitmaps, mask_words(L) words
// each, in that order.
struct RowMasks {
  std::vector<int32_t> rows;
  std::vector<uint64_t> bits;
};

LLMSERVE_HD float apply_logit_edit(float l, const LogitEdit& e) {
  l += e.bias;
  l = l > 0 ? l / e.rep : l * e.rep;
  l -= e.sub;
  return e.mask ? -INFINITY : l;
}

// The values a processed row's log-probabilities are taken from (logprobs_mode processed_logprobs /
// processed_logits): x = logit * scale (the row's inverse temperature; 1 for a greedy row), -inf where
// x < floor (the smallest value the row's filters keep: draw_rows' keep) and, when only >= 0, for every
// token but `only` (top_k 1 under a temperature: the chosen token alone survives). The default view
// leaves every logit as it is.
struct LogprobView {
  float scale = 1.f;
  float floor = -INFINITY;
  int32_t only = -1;
  LLMSERVE_HD float operator()(float logit, int64_t token) const {
    const float x = logit * scale;
    return x < floor || (only >= 0 && token != only) ? -INFINITY : x;
  }
};

// Log-probabilities are taken from the raw logits (before penalties and temperature, as vLLM's
// default): each rank reduces its shard of a row to these statistics and the sampler combines the
// shards'. For row j: stats[3j] = the largest logit mx, stats[3j + 1] = sum of e^(l - mx) (0 when every
// logit is -inf), stats[3j + 2] = the logit of token chosen[j] (0 when it is not in the shard); then
// the K largest logits with their token ids, largest first, ties to the smaller id, padded with
// (-inf, -1). K is at most kMaxTopLogprobs (OpenAI's top_logprobs limit).
constexpr int kMaxTopLogprobs = 20;

// Keeps (x, token) in the list v/id of the K largest seen so far (largest first) when x beats its last
// entry; an equal value keeps the earlier entry, i.e. with tokens visited in increasing order, the
// smaller token.
LLMSERVE_HD void keep_top(float* v, int32_t* id, int K, float x, int32_t token) {
  if (K <= 0 || !(x > v[K - 1])) return;
  int p = K - 1;
  for (; p > 0 && v[p - 1] < x; --p) v[p] = v[p - 1], id[p] = id[p - 1];
  v[p] = x;
  id[p] = token;
}

}  // namespace llmserve
