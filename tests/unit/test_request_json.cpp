// Request parameters read from JSON (engine/sampling_params) and JSON text written back
// (common/json_text): integers that do not fit are refused rather than wrapped, negative counts are
// refused, logit_bias is read as vLLM reads it, and bytes that are not UTF-8 become U+FFFD instead of
// an exception.
#include <gtest/gtest.h>

#include <map>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_text.h"
#include "engine/sampling_params.h"

using namespace llmserve;
using json = nlohmann::json;

namespace {
SamplingParams parse(const std::string& text) {
  SamplingParams p;
  sampling_params_from_json(json::parse(text), p);
  return p;
}
std::string error_of(const std::string& text) {
  try {
    SamplingParams p = parse(text);
    sampling_params_validate(p, 1000);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(RequestJson, IntegersThatDoNotFitAreRefused) {
  EXPECT_EQ(parse(R"({"max_tokens": 2147483647})").max_tokens, 2147483647);
  EXPECT_NE(error_of(R"({"max_tokens": 1000000000000})").find("'max_tokens' is out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"max_tokens": 18446744073709551615})").find("out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"n": -4294967295})").find("'n' is out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"stop_token_ids": [4294967296]})").find("'stop_token_ids' is out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"top_logprobs": 4294967297, "logprobs": true})").find("out of range"), std::string::npos);
  EXPECT_EQ(parse(R"({"seed": -9223372036854775808})").seed, INT64_MIN);
  EXPECT_NE(error_of(R"({"max_tokens": 1.5})").find("must be an integer"), std::string::npos);
  // Past 64 bits the JSON parser gives a float: still "out of range", not "must be an integer".
  EXPECT_NE(error_of(R"({"seed": 1180591620717411303424})").find("'seed' is out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"max_tokens": -1e30})").find("'max_tokens' is out of range"), std::string::npos);
  EXPECT_NE(error_of(R"({"max_tokens": 1e300})").find("'max_tokens' is out of range"), std::string::npos);
}

TEST(RequestJson, NegativeCountsAreRefused) {
  EXPECT_NE(error_of(R"({"max_tokens": -1})").find("'max_tokens' must be at least 1, got -1"), std::string::npos);
  EXPECT_NE(error_of(R"({"logprobs": -1})").find("'logprobs' must not be negative"), std::string::npos);
  EXPECT_NE(error_of(R"({"logprobs": true, "top_logprobs": -2})").find("'top_logprobs' must not be negative"), std::string::npos);
  EXPECT_EQ(parse(R"({"logprobs": false})").logprobs, -1);  // the chat API's "no log-probabilities"
  EXPECT_EQ(parse(R"({"logprobs": 0})").logprobs, 0);
  EXPECT_EQ(error_of(R"({"max_tokens": 5, "logprobs": 3})"), "");
}

TEST(RequestJson, LogitBias) {
  const SamplingParams p = parse(R"({"logit_bias": {"7": 250, "3": -1.5, "12": -1000, "0": 0.25}})");
  EXPECT_EQ(p.logit_bias_ids, (std::vector<int32_t>{0, 3, 7, 12}));  // ascending
  EXPECT_EQ(p.logit_bias, (std::vector<float>{0.25f, -1.5f, 100.f, -100.f}));  // clamped to [-100, 100] as vLLM
  EXPECT_EQ(error_of(R"({"logit_bias": {"999": 1}})"), "");
  EXPECT_NE(error_of(R"({"logit_bias": {"1000": 1}})").find("outside the vocabulary"), std::string::npos);
  for (const char* bad : {R"({"logit_bias": {"x": 1}})", R"({"logit_bias": {"-1": 1}})", R"({"logit_bias": {"1.5": 1}})",
                          R"({"logit_bias": {"": 1}})", R"({"logit_bias": {"99999999999": 1}})"})
    EXPECT_NE(error_of(bad).find("keys must be token ids"), std::string::npos) << bad;
  EXPECT_NE(error_of(R"({"logit_bias": {"5": "up"}})").find("values must be numbers"), std::string::npos);
  EXPECT_NE(error_of(R"({"logit_bias": [5]})").find("must be an object"), std::string::npos);
}

TEST(RequestJson, NestingDeeperThanTheLimitIsRefusedBeforeParsing) {
  auto nested = [](int n) { return std::string(n, '[') + std::string(n, ']'); };
  EXPECT_EQ(json_depth(nested(kMaxJsonDepth)), kMaxJsonDepth);
  EXPECT_EQ(parse_json(nested(kMaxJsonDepth)).size(), 1u);
  EXPECT_THROW(parse_json(nested(kMaxJsonDepth + 1)), JsonTooDeep);
  EXPECT_THROW(parse_json<nlohmann::ordered_json>("{\"a\": " + nested(100000) + "}"), JsonTooDeep);
  // Brackets inside strings (escaped quotes too) are text, not nesting.
  EXPECT_EQ(json_depth(R"({"s": "[[[{{{\"[[[", "t": ["]]]"]})"), 2);
  EXPECT_EQ(parse_json(R"({"s": ")" + std::string(100000, '[') + R"("})")["s"].get<std::string>().size(), 100000u);
  EXPECT_THROW(parse_json("{bad"), nlohmann::json::parse_error);  // other errors are the parser's
}

TEST(RequestJson, TextThatIsNotUtf8BecomesReplacementCharacters) {
  const json j = {{"message", std::string("bad \xff\xfe bytes")}};
  EXPECT_THROW((void)j.dump(), json::type_error);  // what answering such a request used to do
  const std::string text = json_text(j);
  EXPECT_EQ(json::parse(text)["message"].get<std::string>(), "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes");
  const nlohmann::ordered_json o = {{"b", 1}, {"a", std::string("\xe7\x93")}};  // a character cut short
  EXPECT_EQ(json_text(o), "{\"b\":1,\"a\":\"\xEF\xBF\xBD\"}");
  EXPECT_EQ(json_text(json{{"k", 1}}, 2), "{\n  \"k\": 1\n}");
}

// bad_words (vLLM): a list of strings; each word encoded alone and, where that gives another first
// token and as many tokens, with a leading space; leading spaces stripped, blank words refused.
TEST(RequestJson, BadWords) {
  EXPECT_EQ(parse(R"({"bad_words": ["red", " big dog"]})").bad_words, (std::vector<std::string>{"red", " big dog"}));
  EXPECT_NE(error_of(R"({"bad_words": "red"})").find("'bad_words' must be a list of strings"), std::string::npos);
  EXPECT_NE(error_of(R"({"bad_words": ["red", 5]})").find("'bad_words' must be a list of strings"), std::string::npos);
  EXPECT_NE(error_of(R"({"bad_words": ["  "]})").find("must not be empty or blank"), std::string::npos);
  const std::map<std::string, std::vector<int32_t>> vocab = {
      {"red", {10}}, {" red", {11}},                    // another first token, as many: both
      {"big dog", {20, 21}}, {" big dog", {22, 21}},    // both
      {"blue", {30}}, {" blue", {30}},                  // the same first token: alone only
      {"green", {40}}, {" green", {41, 42}}};           // more tokens with the space: alone only
  auto encode = [&](const std::string& w) { return vocab.at(w); };
  EXPECT_EQ(bad_words_token_ids({"red", "  big dog", "blue", "green"}, encode),
            (std::vector<std::vector<int32_t>>{{10}, {11}, {20, 21}, {22, 21}, {30}, {40}}));
}

// allowed_token_ids (vLLM): a non-empty list of token ids in the vocabulary, kept sorted and distinct.
TEST(RequestJson, AllowedTokenIds) {
  EXPECT_EQ(parse(R"({"allowed_token_ids": [9, 2, 9, 5]})").allowed_token_ids, (std::vector<int32_t>{2, 5, 9}));
  EXPECT_TRUE(parse(R"({"allowed_token_ids": null})").allowed_token_ids.empty());
  EXPECT_NE(error_of(R"({"allowed_token_ids": []})").find("'allowed_token_ids' must not be empty"), std::string::npos);
  EXPECT_NE(error_of(R"({"allowed_token_ids": 5})").find("must be a list of integers"), std::string::npos);
  EXPECT_NE(error_of(R"({"allowed_token_ids": [1.5]})").find("must be a list of integers"), std::string::npos);
  EXPECT_NE(error_of(R"({"allowed_token_ids": [1000]})").find("outside the vocabulary (1000)"), std::string::npos);
  EXPECT_NE(error_of(R"({"allowed_token_ids": [-1]})").find("outside the vocabulary"), std::string::npos);
}

// vLLM's max_logprobs: at most 20 (the kernels' limit), lower when the server says so.
TEST(RequestJson, MaxLogprobs) {
  EXPECT_EQ(error_of(R"({"logprobs": 20})"), "");
  EXPECT_NE(error_of(R"({"logprobs": 21})").find("Requested sample logprobs of 21, which is greater than max allowed: 20"),
            std::string::npos);
  SamplingParams p = parse(R"({"logprobs": true, "top_logprobs": 4})");
  EXPECT_NO_THROW(sampling_params_validate(p, 1000, 4));
  EXPECT_THROW(sampling_params_validate(p, 1000, 3), Error);
  EXPECT_THROW(sampling_params_validate(p, 1000, 0), Error);
}

// vLLM's generation_config auto: the sampling fields of a model's generation_config.json (max_new_tokens
// as max_tokens) become request defaults; other fields are left; bad values are named.
TEST(RequestJson, GenerationConfigDefaults) {
  const json d = generation_config_defaults(
      R"({"bos_token_id": 1, "do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
          "max_new_tokens": 64, "min_p": null})", 1000);
  EXPECT_EQ(d, json::parse(R"({"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_tokens": 64})"));
  EXPECT_EQ(generation_config_defaults(R"({"eos_token_id": [2, 3]})", 1000), json::object());
  EXPECT_THROW(generation_config_defaults(R"({"top_p": 0})", 1000), Error);
  EXPECT_THROW(generation_config_defaults(R"([1])", 1000), Error);
  EXPECT_THROW(generation_config_defaults("{", 1000), Error);
}

// vLLM's override_generation_config: its keys over the model's defaults (or alone, with generation_config
// vllm); other keys and values a request could not set are refused, naming the option.
TEST(RequestJson, OverrideGenerationConfig) {
  const json model = json::parse(R"({"temperature": 0.7, "top_p": 0.8, "max_tokens": 64})");
  EXPECT_EQ(override_generation_defaults(model, R"({"temperature": 0.2, "max_new_tokens": 3, "min_p": 0.05})", 1000),
            json::parse(R"({"temperature": 0.2, "top_p": 0.8, "max_tokens": 3, "min_p": 0.05})"));
  EXPECT_EQ(override_generation_defaults(json::object(), R"({"top_k": 20})", 1000), json::parse(R"({"top_k": 20})"));
  for (const char* bad : {R"({"temprature": 0.5})", R"({"max_tokens": 3})", R"({"top_p": 0})", R"({"temperature": "hot"})",
                          R"([1])", "{"}) {
    try {
      override_generation_defaults(model, bad, 1000);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("override_generation_config"), std::string::npos) << e.what();
    }
  }
}

// A JSON schema for guided decoding, in its three request forms: read as a schema, and its text as sent
// (properties in the request's order, which nlohmann::json would sort) for the recognizer.
TEST(RequestJson, GuidedJsonSchemaFormsKeepThePropertiesOrder) {
  const std::string schema = R"({"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "string"}}})";
  for (const std::string& body : {R"({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": )" + schema + "}}}",
                                 R"({"guided_json": )" + schema + "}",
                                 R"({"structured_outputs": {"json": )" + json(schema).dump() + "}}"}) {
    SamplingParams p = parse(body);
    EXPECT_EQ(p.guided, "json_schema") << body;
    const std::string sent = guided_schema_as_sent(nlohmann::ordered_json::parse(body));
    EXPECT_LT(sent.find("zeta"), sent.find("alpha")) << body << " -> " << sent;
    EXPECT_EQ(json::parse(sent), json::parse(schema)) << body;
  }
  EXPECT_EQ(guided_schema_as_sent(nlohmann::ordered_json::parse(R"({"response_format": {"type": "json_object"}})")), "");
  EXPECT_NE(error_of(R"({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})").find("needs a 'json_schema' object"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"guided_json": 5})").find("must be a JSON schema"), std::string::npos);
  EXPECT_NE(error_of(R"({"guided_json": {"type": "array", "not": {}}})").find("'not' is not supported"), std::string::npos);
  EXPECT_NE(error_of(R"({"guided_json": {"type": "string", "minLength": 2, "maxLength": 1}})").find("maxLength is below minLength"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"guided_json": {}, "guided_choice": ["a"]})").find("only one kind of guided decoding"), std::string::npos);
  EXPECT_NE(error_of(R"({"structured_outputs": {"json": {}, "disable_any_whitespace": 1}})").find("must be a boolean"), std::string::npos);
  EXPECT_TRUE(parse(R"({"structured_outputs": {"json": {}, "disable_any_whitespace": true}})").guided_compact);
}
