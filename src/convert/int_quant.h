// Integer-quantized checkpoints (vLLM's awq and gptq): llmserve-convert dequantizes their linear layers'
// matrices to 16-bit (or float32) weights. llmserve has no int4 kernels, so such a model is served at the
// memory of its 16-bit form (or at half of it with quantization fp8).
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace llmserve {

struct IntQuantConfig {
  enum class Method { None, Awq, Gptq } method = Method::None;
  int bits = 4;
  int64_t group_size = 128;  // -1: one group over the whole input dimension
  bool gptq_v1 = true;       // GPTQ's checkpoint format "gptq" stores zero points less one ("gptq_v2" does not)
  std::string name() const { return method == Method::Awq ? "awq" : method == Method::Gptq ? "gptq" : "none"; }
};

// The checkpoint's quantization_config (config.json) as one llmserve dequantizes: none without one; AWQ
// (GEMM layout, 4 bits, zero points) and GPTQ (2, 4 or 8 bits; act-order's g_idx) are read; any other
// method or setting is an Error naming it.
IntQuantConfig int_quant_config(const nlohmann::json& hf_config);

// AutoAWQ's GEMM layout for a linear of K inputs and N outputs: qweight int32 [K, N/8] (8 outputs a word,
// in the nibble order 0, 2, 4, 6, 1, 3, 5, 7), qzeros int32 [K/G, N/8] (the same packing), scales
// [K/G, N]. Returns the linear's weight [N, K]: (q - zero) x scale.
std::vector<float> dequantize_awq(const int32_t* qweight, const int32_t* qzeros, const float* scales, int64_t K, int64_t N,
                                  int64_t group_size);
// GPTQ (AutoGPTQ / GPTQModel) with `bits` bits: qweight int32 [K x bits / 32, N] (consecutive inputs in a
// word, lowest bits first), qzeros int32 [groups, N x bits / 32], scales [groups, N], g_idx int32 [K] (each
// input's group; null: input / group_size). Zero points are stored less one in the v1 format.
std::vector<float> dequantize_gptq(const int32_t* qweight, const int32_t* qzeros, const float* scales, const int32_t* g_idx,
                                   int64_t K, int64_t N, int64_t group_size, int bits, bool v1, int64_t groups);

}  // namespace llmserve
