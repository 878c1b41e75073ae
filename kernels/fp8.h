// FP8 E4M3 weights (`quantization: fp8`), shared by the host and the CUDA kernels so that both quantize
// to the same bits. E4M3 is the "fn" variant of the OCP FP8 formats (torch.float8_e4m3fn): 1 sign, 4
// exponent (bias 7) and 3 mantissa bits, no infinities, 0x7f / 0xff NaN, largest finite value 448.
//
// A matrix is quantized row by row (one scale per output feature): the scale of a row is the power of
// two 2^e with the smallest e for which max|row| / 2^e <= 448, and each value becomes the code of
// value / 2^e rounded to nearest, ties to even, saturating at +-448. The division by a power of two is
// exact, so host and device agree bit for bit, and a code times its scale (four significant bits) is
// exactly a bfloat16: a backend that expands the codes into 16-bit weights for a GEMM of many tokens
// computes with the same weights as its weight-streaming GEMVs, which multiply the row sums by the
// scale. (vLLM's dynamic `fp8` takes max|tensor| / 448 as one scale per tensor; a power of two per row
// gives up none of E4M3's relative precision, which is the same in every binade.)
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef __CUDACC__
#define LLMSERVE_FP8_HD __host__ __device__ __forceinline__
#else
#define LLMSERVE_FP8_HD inline
#endif

namespace llmserve {

constexpr float kFp8Max = 448.f;

// The same 32 bits as another type (float <-> uint32_t), on the host and the device.
template <typename To, typename From>
LLMSERVE_FP8_HD To fp8_bits_as(From v) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "32-bit values");
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<To, float>)
    return __uint_as_float(v);
  else
    return __float_as_uint(v);
#else
  To t;
  std::memcpy(&t, &v, 4);
  return t;
#endif
}

// The E4M3 code of f: round to nearest, ties to even; +-448 for larger magnitudes (and infinities);
// NaN stays NaN.
LLMSERVE_FP8_HD uint8_t f32_to_e4m3(float f) {
  uint32_t u = fp8_bits_as<uint32_t>(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7fu);
  if (u >= 0x43e00000u) return static_cast<uint8_t>(sign | 0x7eu);  // >= 448
  if (u < 0x3c800000u) {                                             // below 2^-6: subnormal codes k x 2^-9
    const float k = rintf(fp8_bits_as<float>(u) * 512.f);            // exact scaling; ties to even
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(k));     // 8 is 2^-6, the first normal code
  }
  // Normal: keep 3 of the 23 mantissa bits, ties to even (a carry moves into the exponent, as it should),
  // then rebias the exponent from 127 to 7.
  const uint32_t r = (u + 0x7ffffu + ((u >> 20) & 1u)) >> 20;
  const uint32_t code = r - (120u << 3);
  return static_cast<uint8_t>(sign | (code > 0x7eu ? 0x7eu : code));
}

LLMSERVE_FP8_HD float e4m3_to_f32(uint8_t c) {
  const uint32_t e = (c >> 3) & 0xfu, m = c & 7u;
  float v;
  if (e == 0)
    v = static_cast<float>(m) * (1.f / 512.f);
  else if (e == 15 && m == 7)
    v = NAN;
  else
    v = fp8_bits_as<float>(((e + 120u) << 23) | (m << 20));
  return (c & 0x80u) ? -v : v;
}

// The exponent e of a row's scale 2^e for max|row| = amax: the smallest with amax / 2^e <= 448, and at
// least -126 (a normal float; rows of zeros or of values below 2^-126 get it too).
LLMSERVE_FP8_HD int fp8_scale_exponent(float amax) {
  const uint32_t u = fp8_bits_as<uint32_t>(amax) & 0x7fffffffu;
  if (u < 0x00800000u) return -126;
  const int ea = static_cast<int>(u >> 23) - 127;
  // amax = 1.m x 2^ea is at most 1.75 x 2^(8 + e) for e = ea - 8 when 1.m <= 1.75, else for ea - 7.
  const int e = (u & 0x7fffffu) <= 0x600000u ? ea - 8 : ea - 7;
  return e < -126 ? -126 : e;
}

// 2^e for e in [-126, 127] (an exact normal float).
LLMSERVE_FP8_HD float fp8_pow2(int e) { return fp8_bits_as<float>(static_cast<uint32_t>(e + 127) << 23); }

// The code of value v of a row whose scale exponent is e (from fp8_scale_exponent: -126 <= e <= 120):
// v / 2^e, computed as v times 2^-e (exact unless the product falls below 2^-126, where E4M3 has only
// zero anyway).
LLMSERVE_FP8_HD uint8_t fp8_quantize(float v, int e) { return f32_to_e4m3(v * fp8_pow2(-e)); }

}  // namespace llmserve
