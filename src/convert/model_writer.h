// Writes an llmserve model file atomically: everything goes to a temporary file beside the target,
// which is renamed over the target only by commit(). A writer destroyed without commit() (an error,
// an exception, Ctrl-C handled by the caller) removes its temporary file, so no half-written model
// is ever left under the target name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/h5.h"
#include "model/model_spec.h"

namespace llmserve {

class ModelWriter {
 public:
  ModelWriter(const std::string& path, const ModelSpec& spec, const std::string& source);
  ~ModelWriter();
  ModelWriter(const ModelWriter&) = delete;
  ModelWriter& operator=(const ModelWriter&) = delete;

  // A text document under /config or /tokenizer.
  void add_text(const std::string& group, const std::string& name, const std::string& text);
  // One tensor, `data` holding prod(shape) elements of `dtype` (bf16/f16 as uint16 bits).
  void add_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data);
  // Closes the file and renames it to the target path.
  void commit();

  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  h5::Handle file_, config_, tokenizer_, weights_;
  bool committed_ = false;
};

// Chunk shape for a tensor: each dimension split into 8 (when divisible) and halved further while a
// chunk exceeds ~2 MiB, so tensor-parallel slices for tp in {1,2,4,8} fall on chunk boundaries.
std::vector<uint64_t> chunk_shape(const std::vector<int64_t>& shape, size_t elem_bytes);

}  // namespace llmserve
