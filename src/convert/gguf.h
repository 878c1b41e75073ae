// Reader for GGUF (llama.cpp's model format, version 2 and 3): metadata as JSON values, tensor
// directory, and dequantization of F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors to float32.
#pragma once
#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmserve {

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order: ne[0] is the fastest-varying dimension
  uint32_t type = 0;
  uint64_t offset = 0;  // relative to the data section
  // Row-major shape as Hugging Face writes it (ne reversed).
  std::vector<int64_t> hf_shape() const { return {ne.rbegin(), ne.rend()}; }
  int64_t numel() const;
};

class GgufFile {
 public:
  // Parses header, metadata and tensor directory; checks every tensor against the file size.
  explicit GgufFile(const std::string& path);
  const std::string& path() const { return path_; }
  const nlohmann::json& metadata() const { return meta_; }
  const std::map<std::string, GgufTensor>& tensors() const { return tensors_; }
  bool has(const std::string& key) const { return meta_.contains(key); }
  // Dequantized float32 values of one tensor, in row-major (hf_shape) order.
  std::vector<float> read_f32(const std::string& name);

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t data_start_ = 0;
  nlohmann::json meta_;
  std::map<std::string, GgufTensor> tensors_;
};

const char* gguf_type_name(uint32_t type);

// Undoes llama.cpp's reordering of Q/K rows for interleaved RoPE (w is [rows, cols], rows = heads *
// head_dim): within each head GGUF holds rows in (pair, 2) order where Hugging Face holds (2, half).
std::vector<float> gguf_unpermute_rows(const std::vector<float>& w, int64_t rows, int64_t cols, int heads);

}  // namespace llmserve
