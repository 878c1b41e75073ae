// A tensor: shape, element type and a pointer into memory owned by its backend (host memory for
// the CPU backend, device memory for CUDA). Copies share the storage. F8E4M3 tensors (`quantization:
// fp8`) hold codes, and their rows' scales at `scale`.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "common/dtype.h"

namespace llmserve {

struct Tensor {
  std::shared_ptr<void> storage;
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  // F8E4M3 matrices: the scales of their rows (float32 [rows], in the same storage); null otherwise.
  const float* scale = nullptr;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(size_t i) const { return shape.at(i); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool defined() const { return data != nullptr || numel() == 0; }
  template <typename T> T* as() const { return static_cast<T*>(data); }
};

}  // namespace llmserve
