// Helpers shared by the unit tests.
#pragma once
#include "model/model_spec.h"

namespace llmserve::testing {

// A small Llama-style spec.
inline ModelSpec small_spec(int heads, int kv_heads, int64_t intermediate, int layers, int64_t hidden = 64,
                            int head_dim = 16, int64_t vocab = 1000) {
  ModelSpec s;
  s.architecture = "LlamaForCausalLM";
  s.model_type = "llama";
  s.hidden_size = hidden;
  s.intermediate_size = intermediate;
  s.num_layers = layers;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.vocab_size = vocab;
  s.max_position_embeddings = 128;
  return s;
}

}  // namespace llmserve::testing
