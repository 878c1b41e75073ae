#include "engine/speculative.h"

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace llmserve {
namespace {

int positive_int(const nlohmann::json& j, const char* key) {
  const auto& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 1024)
    throw Error(cat("speculative_config: ", key, " must be an integer from 1 to 1024, got ", v.dump()));
  return v.get<int>();
}

}  // namespace

SpeculativeConfig parse_speculative_config(const std::string& text) {
  SpeculativeConfig c;
  if (text.empty()) return c;
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat("speculative_config must be a JSON object, got '", text, "'"));
  auto given = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  for (const auto& [key, v] : j.items()) {
    if (key != "method" && key != "num_speculative_tokens" && key != "prompt_lookup_max" && key != "prompt_lookup_min" &&
        key != "disable_by_batch_size" && key != "model" && key != "draft_tensor_parallel_size")
      throw Error(cat("speculative_config: '", key, "' is not supported (known: method, model, num_speculative_tokens, ",
                      "draft_tensor_parallel_size, prompt_lookup_max, prompt_lookup_min, disable_by_batch_size)"));
  }
  if (given("method") && !j["method"].is_string()) throw Error(cat("speculative_config: method must be a string, got ", j["method"].dump()));
  if (given("model") && !j["model"].is_string()) throw Error(cat("speculative_config: model must be a string, got ", j["model"].dump()));
  // vLLM infers draft_model when only a model is given.
  const std::string method = given("method") ? j["method"].get<std::string>() : given("model") ? "draft_model" : "";
  if (method.empty())
    throw Error("speculative_config: method is required: ngram (drafts by n-gram lookup) or draft_model (drafts from a smaller model, "
                "`model`)");
  if (method == "ngram" || method == "[ngram]") {
    c.method = SpecMethod::Ngram;
    if (given("model") || given("draft_tensor_parallel_size"))
      throw Error("speculative_config: method ngram takes no model (draft_model runs one)");
  } else if (method == "draft_model") {
    c.method = SpecMethod::DraftModel;
    if (!given("model")) throw Error("speculative_config: method draft_model needs `model`, the draft model's file");
    c.model = j["model"].get<std::string>();
    if (c.model.empty()) throw Error("speculative_config: model must not be empty");
    if (given("prompt_lookup_min") || given("prompt_lookup_max"))
      throw Error("speculative_config: prompt_lookup_min and prompt_lookup_max belong to method ngram");
    if (given("draft_tensor_parallel_size") && positive_int(j, "draft_tensor_parallel_size") != 1)
      throw Error(cat("speculative_config: draft_tensor_parallel_size must be 1, got ", j["draft_tensor_parallel_size"].dump(),
                      ": the draft model runs on world rank 0 alone"));
  } else {
    throw Error(cat("speculative_config: method '", method, "' is not supported: llmserve runs ngram and draft_model ",
                    "(EAGLE, Medusa, MTP and MLP speculators need heads it does not run)"));
  }
  if (!j.contains("num_speculative_tokens")) throw Error(cat("speculative_config: num_speculative_tokens is required with method ", method));
  c.num_speculative_tokens = positive_int(j, "num_speculative_tokens");
  if (given("disable_by_batch_size")) c.disable_by_batch_size = positive_int(j, "disable_by_batch_size");
  if (c.method != SpecMethod::Ngram) return c;
  const bool has_min = given("prompt_lookup_min");
  const bool has_max = given("prompt_lookup_max");
  // vLLM's defaults: both 5, or the one given for both.
  c.prompt_lookup_min = has_min ? positive_int(j, "prompt_lookup_min") : 0;
  c.prompt_lookup_max = has_max ? positive_int(j, "prompt_lookup_max") : 0;
  if (!has_min && !has_max) c.prompt_lookup_min = c.prompt_lookup_max = 5;
  if (!has_min) c.prompt_lookup_min = c.prompt_lookup_max;
  if (!has_max) c.prompt_lookup_max = c.prompt_lookup_min;
  if (c.prompt_lookup_min > c.prompt_lookup_max)
    throw Error(cat("speculative_config: prompt_lookup_min (", c.prompt_lookup_min, ") must be <= prompt_lookup_max (",
                    c.prompt_lookup_max, ")"));
  return c;
}

std::vector<int32_t> ngram_propose(const int32_t* t, size_t n, int min_n, int max_n, int k) {
  if (k < 1 || min_n < 1 || n < static_cast<size_t>(min_n) + 1) return {};
  // Each earlier position e (e < n - 1) where an occurrence could end: the length of the common suffix
  // of t[0, e] and t[0, n) (capped at max_n; it mismatches at once nearly everywhere, so this is one pass).
  size_t best_len = 0, best_end = 0;
  const size_t cap = static_cast<size_t>(max_n);
  for (size_t e = 0; e + 1 < n; ++e) {
    size_t len = 0;
    while (len < cap && len <= e && t[e - len] == t[n - 1 - len]) ++len;
    if (len > best_len) best_len = len, best_end = e;  // (strictly longer: the first occurrence of a length)
    if (best_len == cap) break;
  }
  if (best_len < static_cast<size_t>(min_n)) return {};
  const size_t from = best_end + 1, count = std::min(static_cast<size_t>(k), n - from);
  return std::vector<int32_t>(t + from, t + from + count);
}

}  // namespace llmserve
