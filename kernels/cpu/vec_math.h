// Arithmetic the CPU kernels' loops vectorize (a libm call in a loop stays scalar, one value at a time).
#pragma once
#include <bit>
#include <cstdint>

namespace llmserve::cpu {

// e^x for x <= 0 within about 2 ulp (Cephes' expf polynomial after reducing by ln 2; 0 below -87.3, for
// -inf and for NaN, where std::exp would pass the NaN on), in plain arithmetic so that a loop over it
// vectorizes. Callers pass x - max(x), never above 0.
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
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
