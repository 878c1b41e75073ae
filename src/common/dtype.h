// Element types of weights and activations, and the bit conversions between them.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace llmserve {

// F8E4M3: FP8 E4M3 codes (kernels/fp8.h), the weights of `quantization: fp8` on a GPU, whose rows'
// scales a tensor carries beside them (Tensor::scale); never an activation type.
enum class DType { F32, F16, BF16, F8E4M3 };

const char* dtype_name(DType t);                 // "float32", "float16", "bfloat16", "float8_e4m3fn"
DType dtype_from_name(const std::string& name);  // accepts the names above and f32/fp32/f16/fp16/bf16/half/float
size_t dtype_size(DType t);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of type `src_type` at `src` to float32 (F8E4M3: the codes' values, unscaled).
void to_f32(DType src_type, const void* src, float* dst, size_t n);
// Converts n float32 values to `dst_type`.
void from_f32(DType dst_type, const float* src, void* dst, size_t n);

}  // namespace llmserve
