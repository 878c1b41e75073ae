// Where a rank's weights come from: the HDF5 model file (ModelFile) or, with `load_format: dummy`,
// deterministic pseudo-random values generated from the model's shape (DummyWeights).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_spec.h"

namespace llmserve {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const std::string& path() const = 0;
  virtual const ModelSpec& spec() const = 0;
  virtual bool has_weight(const std::string& name) const = 0;
  virtual std::vector<int64_t> weight_shape(const std::string& name) const = 0;
  // Rows [r0, r0+nr) x cols [c0, c0+nc) (nc ignored for 1-D) as float32.
  virtual std::vector<float> read_f32(const std::string& name, int64_t r0, int64_t nr, int64_t c0 = 0,
                                      int64_t nc = 1) const = 0;
};

}  // namespace llmserve
