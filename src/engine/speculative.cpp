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
  for (const auto& [key, v] : j.items()) {
    if (key == "model" && !v.is_null())
      throw Error("speculative_config: draft models (model) are not supported: llmserve speculates by n-gram lookup only "
                  "(method ngram)");
    if (key != "method" && key != "num_speculative_tokens" && key != "prompt_lookup_max" && key != "prompt_lookup_min" &&
        key != "disable_by_batch_size" && key != "model")
      throw Error(cat("speculative_config: '", key, "' is not supported (known: method, num_speculative_tokens, ",
                      "prompt_lookup_max, prompt_lookup_min, disable_by_batch_size)"));
  }
  if (!j.contains("method") || !j["method"].is_string())
    throw Error("speculative_config: method is required; llmserve has method ngram (speculation by n-gram lookup)");
  const std::string method = j["method"].get<std::string>();
  if (method != "ngram" && method != "[ngram]")
    throw Error(cat("speculative_config: method '", method, "' is not supported: it needs a draft model or heads, which ",
                    "llmserve does not run; use ngram"));
  if (!j.contains("num_speculative_tokens")) throw Error("speculative_config: num_speculative_tokens is required with method ngram");
  c.num_speculative_tokens = positive_int(j, "num_speculative_tokens");
  const bool has_min = j.contains("prompt_lookup_min") && !j["prompt_lookup_min"].is_null();
  const bool has_max = j.contains("prompt_lookup_max") && !j["prompt_lookup_max"].is_null();
  // vLLM's defaults: both 5, or the one given for both.
  c.prompt_lookup_min = has_min ? positive_int(j, "prompt_lookup_min") : 0;
  c.prompt_lookup_max = has_max ? positive_int(j, "prompt_lookup_max") : 0;
  if (!has_min && !has_max) c.prompt_lookup_min = c.prompt_lookup_max = 5;
  if (!has_min) c.prompt_lookup_min = c.prompt_lookup_max;
  if (!has_max) c.prompt_lookup_max = c.prompt_lookup_min;
  if (j.contains("disable_by_batch_size") && !j["disable_by_batch_size"].is_null())
    c.disable_by_batch_size = positive_int(j, "disable_by_batch_size");
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
