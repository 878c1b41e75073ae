#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "config/config.h"
#include "engine/speculative.h"
#include "test_util.h"

using namespace llmserve;

namespace {
std::vector<int32_t> propose(const std::vector<int32_t>& t, int min_n, int max_n, int k) {
  return ngram_propose(t.data(), t.size(), min_n, max_n, k);
}
std::string error_of(const std::string& json) {
  try {
    parse_speculative_config(json);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

// The longest n-gram ending the sequence, its first earlier occurrence, the tokens after it.
TEST(NgramPropose, LongestMatchFirstOccurrence) {
  // The sequence ends "4 1 2 3"; "1 2 3" also ends at 2 and 8, "4 1 2 3" at 8 only.
  const std::vector<int32_t> t = {1, 2, 3, 7, 8, 4, 1, 2, 3, 9, 4, 1, 2, 3};
  // max_n 4: "4 1 2 3" at 5..8 is the longest (first occurrence), followed by 9 4 1 2.
  EXPECT_EQ(propose(t, 1, 4, 4), (std::vector<int32_t>{9, 4, 1, 2}));
  // max_n 3: "1 2 3" first occurs at 0..2, followed by 7 8 4.
  EXPECT_EQ(propose(t, 1, 3, 3), (std::vector<int32_t>{7, 8, 4}));
  // k caps the drafts; fewer when the occurrence is near the end.
  EXPECT_EQ(propose(t, 1, 3, 1), (std::vector<int32_t>{7}));
  const std::vector<int32_t> loop = {5, 6, 5, 6, 5};
  EXPECT_EQ(propose(loop, 1, 2, 8), (std::vector<int32_t>{6, 5}));  // "6 5" first at 1..2: the tokens up to the end
  // No recurring n-gram of min_n tokens: no drafts.
  EXPECT_TRUE(propose({1, 2, 3, 4}, 1, 3, 4).empty());
  EXPECT_TRUE(propose(t, 5, 5, 4).empty());  // "9 4 1 2 3" does not recur
  EXPECT_EQ(propose(t, 4, 5, 2), (std::vector<int32_t>{9, 4}));
  // Too short to match, and nothing asked.
  EXPECT_TRUE(propose({3}, 1, 1, 4).empty());
  EXPECT_TRUE(propose(t, 1, 3, 0).empty());
}

TEST(SpeculativeConfig, VllmKeysDefaultsAndErrors) {
  EXPECT_FALSE(parse_speculative_config("").enabled());
  auto c = parse_speculative_config(R"({"method": "ngram", "num_speculative_tokens": 3})");
  EXPECT_EQ(c.num_speculative_tokens, 3);
  EXPECT_EQ(c.prompt_lookup_min, 5);  // vLLM's defaults
  EXPECT_EQ(c.prompt_lookup_max, 5);
  c = parse_speculative_config(R"({"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4})");
  EXPECT_EQ(c.prompt_lookup_min, 4);
  EXPECT_EQ(c.prompt_lookup_max, 4);
  c = parse_speculative_config(R"({"method": "[ngram]", "num_speculative_tokens": 2, "prompt_lookup_min": 2})");
  EXPECT_EQ(c.prompt_lookup_min, 2);
  EXPECT_EQ(c.prompt_lookup_max, 2);
  c = parse_speculative_config(R"({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 1, "prompt_lookup_max": 3})");
  EXPECT_EQ(c.prompt_lookup_min, 1);
  EXPECT_EQ(c.prompt_lookup_max, 3);
  EXPECT_EQ(c.disable_by_batch_size, 0);
  c = parse_speculative_config(R"({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 4})");
  EXPECT_EQ(c.disable_by_batch_size, 4);
  EXPECT_EQ(parse_speculative_config(R"({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": null})").disable_by_batch_size, 0);
  EXPECT_NE(error_of(R"({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": -1})").find("disable_by_batch_size must be"), std::string::npos);
  EXPECT_NE(error_of(R"({"method": "eagle", "model": "x", "num_speculative_tokens": 2})").find("method 'eagle' is not supported"), std::string::npos);
  EXPECT_NE(error_of(R"({"method": "eagle3", "num_speculative_tokens": 2})").find("method 'eagle3' is not supported"), std::string::npos);
  EXPECT_NE(error_of(R"({"num_speculative_tokens": 2})").find("method is required"), std::string::npos);
  EXPECT_NE(error_of(R"({"method": "ngram"})").find("num_speculative_tokens is required"), std::string::npos);
  EXPECT_NE(error_of(R"({"method": "ngram", "num_speculative_tokens": 0})").find("from 1 to 1024"), std::string::npos);
  EXPECT_NE(error_of(R"({"method": "ngram", "num_speculative_tokens": 2.5})").find("integer"), std::string::npos);
  EXPECT_NE(error_of(R"({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2})")
                .find("prompt_lookup_min (4) must be <= prompt_lookup_max (2)"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"method": "ngram", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1})").find("method ngram takes no model"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"method": "ngram", "num_speculative_tokens": 2, "draft_tp": 1})").find("'draft_tp' is not supported"),
            std::string::npos);
  EXPECT_EQ(c.method, SpecMethod::Ngram);
  // A draft model: method draft_model, or inferred from `model` alone (as vLLM does).
  c = parse_speculative_config(R"({"model": "draft.h5", "num_speculative_tokens": 3})");
  EXPECT_EQ(c.method, SpecMethod::DraftModel);
  EXPECT_EQ(c.model, "draft.h5");
  EXPECT_EQ(c.num_speculative_tokens, 3);
  c = parse_speculative_config(
      R"({"method": "draft_model", "model": "d.h5", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1, "disable_by_batch_size": 8})");
  EXPECT_EQ(c.method, SpecMethod::DraftModel);
  EXPECT_EQ(c.disable_by_batch_size, 8);
  EXPECT_NE(error_of(R"({"method": "draft_model", "num_speculative_tokens": 2})").find("needs `model`"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": "d.h5"})").find("num_speculative_tokens is required with method draft_model"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": "d.h5", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2})").find("must be 1"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"model": "d.h5", "num_speculative_tokens": 2, "prompt_lookup_max": 2})").find("belong to method ngram"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"model": 3, "num_speculative_tokens": 2})").find("model must be a string"), std::string::npos);
  EXPECT_NE(error_of("[1]").find("must be a JSON object"), std::string::npos);
}

// The option as vLLM takes it: a JSON string on the command line, a mapping in YAML; checked with the
// configuration, and refused with async_scheduling.
TEST(SpeculativeConfig, ConfigOptionAndValidation) {
  Config c;
  config_parse_args(c, {"--model", "m.h5", "--speculative-config", R"({"method": "ngram", "num_speculative_tokens": 4})"});
  EXPECT_NO_THROW(config_validate(c));
  EXPECT_EQ(parse_speculative_config(c.speculative_config).num_speculative_tokens, 4);
  Config y;
  const auto p = llmserve::testing::temp_dir("speculative") / "spec.yaml";
  {
    std::FILE* f = std::fopen(p.string().c_str(), "w");
    std::fputs("model: m.h5\nspeculative_config:\n  method: ngram\n  num_speculative_tokens: 3\n  prompt_lookup_max: 2\n", f);
    std::fclose(f);
  }
  config_load_yaml(y, p.string());
  EXPECT_NO_THROW(config_validate(y));
  EXPECT_EQ(parse_speculative_config(y.speculative_config).prompt_lookup_max, 2);
  y.async_scheduling = true;
  try {
    config_validate(y);
    ADD_FAILURE() << "async_scheduling with speculative_config was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("speculative_config needs async_scheduling off"), std::string::npos) << e.what();
  }
  Config b = c;
  b.speculative_config = R"({"method": "medusa", "num_speculative_tokens": 4})";
  try {
    config_validate(b);
    ADD_FAILURE() << "method medusa was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("config: speculative_config: method 'medusa'", 0), 0u) << e.what();
  }
}
