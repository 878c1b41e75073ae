// The tensors a model of a given spec has, with their Hugging Face names and full shapes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_spec.h"

namespace llmserve {

struct WeightInfo {
  std::string name;
  std::vector<int64_t> shape;
};

std::string layer_prefix(int layer);  // "model.layers.<i>."

// Every tensor the model needs (lm_head.weight only when embeddings are untied).
std::vector<WeightInfo> expected_weights(const ModelSpec& s);

}  // namespace llmserve
