// `load_format: dummy` (as vLLM): weights made up from the model's shape alone, so full-size models can
// be served and benchmarked without their checkpoint. Every element is a hash of (seed, tensor name,
// element index), so each rank generates exactly its own shard and every layout, backend and dtype
// sees the same full tensors: results can be compared across them. Scales follow transformers'
// initialisation (standard deviation 0.02; norms about 1), so logits are not dominated by the input
// token and greedy continuations vary.
#pragma once
#include <map>
#include <nlohmann/json.hpp>

#include "model/weight_source.h"

namespace llmserve {

class DummyWeights : public WeightSource {
 public:
  DummyWeights(const ModelSpec& spec, std::string path, uint64_t seed);
  const std::string& path() const override { return path_; }
  const ModelSpec& spec() const override { return spec_; }
  bool has_weight(const std::string& name) const override { return shapes_.count(name) > 0; }
  std::vector<int64_t> weight_shape(const std::string& name) const override;
  std::vector<float> read_f32(const std::string& name, int64_t r0, int64_t nr, int64_t c0 = 0,
                              int64_t nc = 1) const override;
  // A tensor beyond the model's own (a classifier's score.weight), made up the same way.
  void add(const std::string& name, std::vector<int64_t> shape) { shapes_[name] = std::move(shape); }

 private:
  ModelSpec spec_;
  std::string path_;
  uint64_t seed_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

// The model spec for a dummy model: `model` is a Hugging Face config.json, a directory holding one, or
// an llmserve .h5 file (its stored spec). `hf_overrides` (a JSON object, may be empty) replaces
// config.json fields first, e.g. {"num_hidden_layers": 2}. Throws Error naming the file.
ModelSpec dummy_model_spec(const std::string& model, const std::string& hf_overrides);
// The config.json object of a dummy model given by its config.json or a directory holding one, with
// `hf_overrides` merged in. Throws Error naming the file.
nlohmann::json dummy_hf_config(const std::string& model, const std::string& hf_overrides);

// True when `model` names an llmserve HDF5 file (by its .h5 / .hdf5 extension).
bool is_model_file_path(const std::string& model);
// False for a dummy model given by its config.json: there is no .h5 file (and no tokenizer) to open.
bool model_has_file(const std::string& load_format, const std::string& model);

}  // namespace llmserve
