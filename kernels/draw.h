// The token draw shared by the sampler (host) and the backends' row-draw kernels (host and device):
// Gumbel-max with noise that depends only on (seed, position, token), so a seeded request draws the
// same token whatever else is in the batch and however the vocabulary is split across ranks.
#pragma once
#include <cmath>
#include <cstdint>

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

// One row's draw: greedy takes the largest logit; otherwise the largest logit * inv_temperature + noise.
struct RowDraw {
  float inv_temperature = 1.f;
  int64_t seed = 0;
  int64_t position = 0;
  bool greedy = true;
};

}  // namespace llmserve
