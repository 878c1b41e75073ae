// Helpers shared by the unit tests.
#pragma once
#include <algorithm>

#include "common/error.h"
#include "dist/comm.h"
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

// A one-rank communicator: collectives are identities.
class SelfComm : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_max(float*, size_t) override {}
  void all_reduce_maxloc(float*, int32_t*, size_t) override {}
  void all_gather(const float* s, size_t n, float* r) override { std::copy(s, s + n, r); }
  void broadcast(void*, size_t, int) override {}
  void send(const void*, size_t, int) override { throw Error("SelfComm: no peers"); }
  void recv(void*, size_t, int) override { throw Error("SelfComm: no peers"); }
  void barrier() override {}
};

}  // namespace llmserve::testing
