// FP8 E4M3 (kernels/fp8.h, `quantization: fp8`): the code conversions against a brute-force nearest
// search over the format's values, the row-scale rule, and the CPU backend's quantized matrices.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cpu_backend.h"
#include "kernels/fp8.h"

namespace llmserve {
namespace {

// The format's non-negative finite values by code (0 .. 126), computed from its definition.
std::vector<double> e4m3_values() {
  std::vector<double> v;
  for (int c = 0; c < 127; ++c) {
    const int e = c >> 3, m = c & 7;
    v.push_back(e == 0 ? m / 512.0 : (1 + m / 8.0) * std::ldexp(1.0, e - 7));
  }
  return v;
}

// Nearest value's code, ties to the even code, saturating at 448.
uint8_t nearest_code(double x) {
  static const std::vector<double> values = e4m3_values();
  const double a = std::min(std::fabs(x), 448.0);
  int best = 0;
  for (int c = 1; c < 127; ++c) {
    const double d = std::fabs(values[c] - a), db = std::fabs(values[best] - a);
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  return static_cast<uint8_t>((std::signbit(x) ? 0x80 : 0) | best);
}

TEST(Fp8, CodesRoundTrip) {
  const auto values = e4m3_values();
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3_to_f32(static_cast<uint8_t>(c))));
      continue;
    }
    const float v = e4m3_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(static_cast<double>(std::fabs(v)), values[c & 0x7f]) << c;
    EXPECT_EQ(f32_to_e4m3(v), c) << c;
  }
}

TEST(Fp8, RoundsToNearestEvenAndSaturates) {
  const auto values = e4m3_values();
  for (int c = 0; c + 1 < 127; ++c) {
    const float mid = static_cast<float>((values[c] + values[c + 1]) / 2);  // exact in float
    EXPECT_EQ(f32_to_e4m3(mid), c % 2 == 0 ? c : c + 1) << "tie between codes " << c << " and " << c + 1;
    EXPECT_EQ(f32_to_e4m3(std::nextafter(mid, 0.f)), c) << c;
    EXPECT_EQ(f32_to_e4m3(std::nextafter(mid, 1e9f)), c + 1) << c;
    EXPECT_EQ(f32_to_e4m3(-mid), 0x80 | (c % 2 == 0 ? c : c + 1)) << c;
  }
  EXPECT_EQ(f32_to_e4m3(448.f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(464.f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(1e30f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()) & 0x7f, 0x7f);
  EXPECT_EQ(f32_to_e4m3(1e-30f), 0x00);
  EXPECT_EQ(f32_to_e4m3(-0.f), 0x80);

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mant(-1.f, 1.f);
  std::uniform_int_distribution<int> exp(-14, 10);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mant(rng), exp(rng));
    ASSERT_EQ(f32_to_e4m3(x), nearest_code(x)) << x;
  }
}

TEST(Fp8, RowScaleIsTheSmallestPowerOfTwoWithinRange) {
  EXPECT_EQ(fp8_scale_exponent(448.f), 0);
  EXPECT_EQ(fp8_scale_exponent(std::nextafter(448.f, 1e9f)), 1);
  EXPECT_EQ(fp8_scale_exponent(224.f), -1);
  EXPECT_EQ(fp8_scale_exponent(256.f), 0);
  EXPECT_EQ(fp8_scale_exponent(0.f), -126);
  EXPECT_EQ(fp8_scale_exponent(1e-40f), -126);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> mant(0.5f, 1.f);
  std::uniform_int_distribution<int> exp(-100, 100);
  for (int i = 0; i < 10000; ++i) {
    const float amax = std::ldexp(mant(rng), exp(rng));
    const int e = fp8_scale_exponent(amax);
    ASSERT_LE(static_cast<double>(amax) / std::ldexp(1.0, e), 448.0) << amax;
    ASSERT_GT(static_cast<double>(amax) / std::ldexp(1.0, e - 1), 448.0) << amax;
    ASSERT_EQ(fp8_pow2(e), std::ldexp(1.f, e));
  }
}

// The CPU backend holds a quantized matrix as the values its codes stand for: each row's values are
// E4M3 values times the row's power-of-two scale, within 2^-4 relative of the input (normal range),
// the row's largest magnitude kept in range.
TEST(Fp8, CpuBackendHoldsTheQuantizedValues) {
  CpuBackend be;
  const int64_t rows = 5, cols = 300;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = nd(rng) * std::ldexp(1.f, static_cast<int>(r * 7 - 14));
  w[cols + 3] = 0.f;
  const Tensor t = be.upload_fp8(w.data(), {rows, cols}, DType::F32, false);
  ASSERT_EQ(t.dtype, DType::F32);
  std::vector<float> q(rows * cols);
  be.download(t, q.data());
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0.f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
    const int e = fp8_scale_exponent(amax);
    const double scale = std::ldexp(1.0, e);
    for (int64_t c = 0; c < cols; ++c) {
      const double x = w[r * cols + c], y = q[r * cols + c];
      ASSERT_EQ(y, e4m3_to_f32(nearest_code(x / scale)) * scale) << r << ", " << c;
      if (std::fabs(x) / scale >= 1.0 / 64) {
        ASSERT_LE(std::fabs(y - x), std::fabs(x) / 16) << r << ", " << c;
      }
    }
  }
  EXPECT_EQ(q[cols + 3], 0.f);
  EXPECT_THROW(be.upload_fp8(w.data(), {rows * cols}, DType::F32, false), std::exception);
}

}  // namespace
}  // namespace llmserve
