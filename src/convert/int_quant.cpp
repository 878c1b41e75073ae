#include "convert/int_quant.h"

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace llmserve {

IntQuantConfig int_quant_config(const nlohmann::json& cfg) {
  IntQuantConfig q;
  if (!cfg.contains("quantization_config") || cfg["quantization_config"].is_null()) return q;
  const auto& qc = cfg["quantization_config"];
  if (!qc.is_object()) throw Error("quantization_config is not an object");
  const std::string method = qc.value("quant_method", std::string());
  auto number = [&](const char* key, int64_t dflt) -> int64_t {
    if (!qc.contains(key) || qc[key].is_null()) return dflt;
    if (!qc[key].is_number_integer()) throw Error(cat("quantization_config ", key, " must be an integer"));
    return qc[key].get<int64_t>();
  };
  if (method == "awq") {
    q.method = IntQuantConfig::Method::Awq;
    q.bits = static_cast<int>(number("bits", number("w_bit", 4)));
    q.group_size = number("group_size", number("q_group_size", 128));
    const std::string version = qc.value("version", std::string("gemm"));
    if (version != "gemm" && version != "GEMM")
      throw Error(cat("AWQ version '", version, "' is not supported: llmserve-convert reads AutoAWQ's GEMM layout"));
    if (!qc.value("zero_point", true)) throw Error("AWQ without zero points (zero_point false) is not supported");
    if (q.bits != 4) throw Error(cat("AWQ with ", q.bits, " bits is not supported (4 only)"));
  } else if (method == "gptq") {
    q.method = IntQuantConfig::Method::Gptq;
    q.bits = static_cast<int>(number("bits", 4));
    q.group_size = number("group_size", 128);
    const std::string format = qc.value("checkpoint_format", std::string("gptq"));
    if (format != "gptq" && format != "gptq_v2")
      throw Error(cat("GPTQ checkpoint_format '", format, "' is not supported (gptq or gptq_v2)"));
    q.gptq_v1 = format == "gptq";
    if (q.bits != 2 && q.bits != 4 && q.bits != 8) throw Error(cat("GPTQ with ", q.bits, " bits is not supported (2, 4 or 8)"));
  } else {
    throw Error(cat("quantization_config quant_method '", method,
                    "' is not supported: llmserve-convert dequantizes awq and gptq checkpoints (16-bit and float32 ones convert as they are)"));
  }
  if (q.group_size == 0 || q.group_size < -1) throw Error(cat("quantization_config group_size ", q.group_size, " is not valid"));
  return q;
}

std::vector<float> dequantize_awq(const int32_t* qweight, const int32_t* qzeros, const float* scales, int64_t K, int64_t N,
                                  int64_t group_size) {
  static constexpr int kNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // output n % 8's nibble in its word (AWQ's reverse order)
  const int64_t G = group_size < 0 ? K : group_size, words = N / 8;
  std::vector<float> w(static_cast<size_t>(N * K));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t g = k / G;
    for (int64_t n = 0; n < N; ++n) {
      const int shift = 4 * kNibble[n % 8];
      const auto q = static_cast<int>((static_cast<uint32_t>(qweight[k * words + n / 8]) >> shift) & 0xFu);
      const auto z = static_cast<int>((static_cast<uint32_t>(qzeros[g * words + n / 8]) >> shift) & 0xFu);
      w[static_cast<size_t>(n * K + k)] = static_cast<float>(q - z) * scales[g * N + n];
    }
  }
  return w;
}

std::vector<float> dequantize_gptq(const int32_t* qweight, const int32_t* qzeros, const float* scales, const int32_t* g_idx,
                                   int64_t K, int64_t N, int64_t group_size, int bits, bool v1, int64_t groups) {
  const int pack = 32 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t G = group_size < 0 ? K : group_size, zwords = N / pack;
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t k = 0; k < K; ++k) {
    const int64_t g = g_idx ? g_idx[k] : k / G;
    if (g < 0 || g >= groups) throw Error(cat("GPTQ g_idx names group ", g, " of ", groups));
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    const int64_t g = g_idx ? g_idx[k] : k / G;
    const int qshift = bits * static_cast<int>(k % pack);
    for (int64_t n = 0; n < N; ++n) {
      const auto q = static_cast<int>((static_cast<uint32_t>(qweight[(k / pack) * N + n]) >> qshift) & mask);
      const int zshift = bits * static_cast<int>(n % pack);
      const auto z = static_cast<int>((static_cast<uint32_t>(qzeros[g * zwords + n / pack]) >> zshift) & mask) + (v1 ? 1 : 0);
      w[static_cast<size_t>(n * K + k)] = static_cast<float>(q - z) * scales[g * N + n];
    }
  }
  return w;
}

}  // namespace llmserve
