// The llmserve model file (HDF5). Schema (docs/model-format.md has the full description):
//   /                 attrs format="llmserve-model", format_version=1, source
//   /config           attrs: the ModelSpec fields; dataset hf_config.json (the checkpoint's config)
//   /tokenizer        text datasets: tokenizer.json, tokenizer_config.json, generation_config.json,
//                     chat_template (whichever the source had)
//   /weights/<name>   one dataset per tensor, Hugging Face names, checkpoint dtype (bf16/f16 as
//                     uint16 with attr dtype), chunked along both dimensions in 8ths so that any
//                     tensor-parallel slice for tp in {1,2,4,8} reads whole chunks only.
#pragma once
#include <hdf5.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/h5.h"
#include "model/model_spec.h"
#include "model/weight_source.h"

namespace llmserve {

constexpr const char* kModelFormat = "llmserve-model";
constexpr int64_t kModelFormatVersion = 1;

void write_model_spec(hid_t group, const ModelSpec& s);
ModelSpec read_model_spec(hid_t group);

class ModelFile : public WeightSource {
 public:
  // Opens and checks the format; throws Error naming the file.
  explicit ModelFile(const std::string& path);
  const std::string& path() const override { return path_; }
  const ModelSpec& spec() const override { return spec_; }

  bool has_weight(const std::string& name) const override;
  std::vector<int64_t> weight_shape(const std::string& name) const override;
  DType weight_dtype(const std::string& name) const;
  // Reads rows [r0, r0+nr) x cols [c0, c0+nc) (nc ignored for 1-D) converted to float32.
  std::vector<float> read_f32(const std::string& name, int64_t r0, int64_t nr, int64_t c0 = 0,
                              int64_t nc = 1) const override;
  // Whole tensor as float32.
  std::vector<float> read_all_f32(const std::string& name) const;

  // A text document of /tokenizer or /config, if present.
  std::optional<std::string> text(const std::string& group, const std::string& name) const;

 private:
  h5::Handle open_weight(const std::string& name) const;
  std::string path_;
  h5::Handle file_;
  ModelSpec spec_;
};

}  // namespace llmserve
