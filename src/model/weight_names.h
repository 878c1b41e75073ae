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

std::string expert_prefix(int layer, int64_t expert);  // "model.layers.<i>.mlp.experts.<e>."
// A mixture of experts' tensor named as expected_weights names it (Qwen3-MoE's names), as Mixtral's
// checkpoints name it: mlp.gate -> block_sparse_moe.gate, mlp.experts.<e>.gate_proj / up_proj / down_proj ->
// block_sparse_moe.experts.<e>.w1 / w3 / w2. Other names come back as they are.
std::string mixtral_weight_name(const std::string& name);

// Every tensor the model needs (lm_head.weight only when embeddings are untied).
std::vector<WeightInfo> expected_weights(const ModelSpec& s);

}  // namespace llmserve
