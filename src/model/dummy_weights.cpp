#include "model/dummy_weights.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "model/model_file.h"
#include "model/weight_names.h"

namespace llmserve {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Element scale (uniform in [-a, a] has standard deviation a / sqrt(3)) and offset per tensor kind, as
// transformers initialises a model: matrices, embeddings and biases with standard deviation 0.02
// (initializer_range), norms about 1.
void scale_for(const std::string& name, float& a, float& offset) {
  offset = 0.f;
  a = 0.02f * std::sqrt(3.f);
  if (ends_with(name, "norm.weight")) {
    a = 0.1f;
    offset = 1.f;
  }
}

}  // namespace

bool is_model_file_path(const std::string& model) { return ends_with(model, ".h5") || ends_with(model, ".hdf5"); }

bool model_has_file(const std::string& load_format, const std::string& model) {
  return load_format != "dummy" || is_model_file_path(model);
}

DummyWeights::DummyWeights(const ModelSpec& spec, std::string path, uint64_t seed)
    : spec_(spec), path_(std::move(path)), seed_(seed) {
  for (const auto& w : expected_weights(spec)) shapes_[w.name] = w.shape;
}

std::vector<int64_t> DummyWeights::weight_shape(const std::string& name) const {
  auto it = shapes_.find(name);
  if (it == shapes_.end()) throw Error(cat("dummy model: no tensor '", name, "'"));
  return it->second;
}

std::vector<float> DummyWeights::read_f32(const std::string& name, int64_t r0, int64_t nr, int64_t c0,
                                          int64_t nc) const {
  const std::vector<int64_t> shape = weight_shape(name);
  const int64_t cols = shape.size() > 1 ? shape[1] : 1;
  if (shape.size() == 1) c0 = 0, nc = 1;
  if (r0 < 0 || nr < 0 || r0 + nr > shape[0] || c0 < 0 || nc < 0 || c0 + nc > cols)
    throw Error(cat("dummy model: read outside tensor '", name, "'"));
  float a, offset;
  scale_for(name, a, offset);
  const uint64_t key = splitmix64(seed_ ^ fnv1a(name));
  std::vector<float> out(static_cast<size_t>(nr * nc));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = 0; j < nc; ++j) {
      const uint64_t idx = static_cast<uint64_t>((r0 + i) * cols + c0 + j);
      const uint64_t h = splitmix64(key + idx * 0xD1B54A32D192ED03ull);
      const float u = static_cast<float>(h >> 40) * (1.f / 16777216.f) * 2.f - 1.f;  // [-1, 1)
      out[static_cast<size_t>(i * nc + j)] = offset + a * u;
    }
  }
  return out;
}

nlohmann::json dummy_hf_config(const std::string& model, const std::string& hf_overrides) {
  const std::string path = ends_with(model, ".json") ? model : model + "/config.json";
  std::ifstream f(path);
  if (!f) throw Error(cat("load_format dummy: cannot read '", path, "' (give a config.json, its directory or an .h5 file)"));
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    nlohmann::json cfg = nlohmann::json::parse(ss.str());
    if (!hf_overrides.empty()) cfg.merge_patch(nlohmann::json::parse(hf_overrides));
    return cfg;
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("'", path, "': ", e.what()));
  }
}

ModelSpec dummy_model_spec(const std::string& model, const std::string& hf_overrides) {
  if (is_model_file_path(model)) {
    ModelSpec s = ModelFile(model).spec();
    if (!hf_overrides.empty()) apply_hf_overrides(s, hf_overrides);
    return s;
  }
  const nlohmann::json cfg = dummy_hf_config(model, hf_overrides);
  const std::string path = ends_with(model, ".json") ? model : model + "/config.json";
  try {
    ModelSpec s = model_spec_from_hf_config(cfg);
    model_spec_validate(s);
    return s;
  } catch (const Error& e) {
    throw Error(cat("'", path, "': ", e.what()));
  }
}

}  // namespace llmserve
