// Reader for the safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the raw data. Tensors are read one at a time.
#pragma once
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace llmserve {

struct SafetensorsEntry {
  std::string dtype;  // BF16 | F16 | F32 | ... (as in the header)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

// The element type of a BF16, F16 or F32 tensor; any other dtype is an Error naming the file and tensor.
DType safetensors_dtype(const std::string& dtype, const std::string& file, const std::string& name);

class SafetensorsFile {
 public:
  // Parses the header and checks every entry against the file size. Throws Error naming the file.
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  // Raw bytes of one tensor. Throws Error naming the file and tensor.
  std::vector<char> read(const std::string& name);
  // One BF16, F16 or F32 tensor's values as float32 (another dtype is an Error naming the file and tensor).
  std::vector<float> read_f32(const std::string& name);

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
};

}  // namespace llmserve
