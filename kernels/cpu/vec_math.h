// Arithmetic the CPU kernels' loops vectorize (a libm call in a loop stays scalar, one value at a time),
// and the attributes their vectorized functions share.
#pragma once
#include <bit>
#include <cstdint>

// A kernel built for AVX-512, AVX2 + FMA and the baseline, the loader picking the one the CPU has (so a
// result can differ in its last bits between machines, contracted multiply-adds, never between runs);
// a plain function where GCC's function multiversioning is not available.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLMSERVE_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLMSERVE_TARGET_CLONES
#endif

// Forced inline: a helper's arithmetic is compiled inside each target clone that calls it (one left out
// of line would be the baseline build for every clone, and a result could then depend on whether the
// call was inlined).
#if defined(__GNUC__)
#define LLMSERVE_INLINE inline __attribute__((always_inline))
#else
#define LLMSERVE_INLINE inline
#endif

namespace llmserve::cpu {

// e^x for x <= 0 within about 2 ulp (Cephes' expf polynomial after reducing by ln 2; 0 below -87.3, for
// -inf and for NaN, where std::exp would pass the NaN on), in plain arithmetic so that a loop over it
// vectorizes. Callers pass x - max(x), never above 0.
LLMSERVE_INLINE float exp_nonpositive(float x) {
  const bool under = !(x >= -87.3f);
  x = under ? -87.3f : x;
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  const float p =
      ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r + 1.6666665459e-1f) *
          r +
      5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);  // 2^n, n >= -126
  return under ? 0.f : y * scale;
}

}  // namespace llmserve::cpu
