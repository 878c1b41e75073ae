// The pooling runner's configuration (model/pooler_config.h) and the embeddings API's vectors
// (server/embeddings_api.h): Sentence Transformers documents, vLLM's pooler_config and runner rule,
// truncation then normalization, base64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "config/config.h"
#include "model/model_spec.h"
#include "model/pooler_config.h"
#include "server/embeddings_api.h"

using namespace llmserve;

namespace {
const char* kModules = R"([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
  {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])";
}  // namespace

TEST(Pooler, SentenceTransformersDocuments) {
  EXPECT_FALSE(sentence_transformers_pooler("", "").has_value());
  EXPECT_EQ(sentence_transformers_pooling_path(kModules), "1_Pooling");
  auto p = sentence_transformers_pooler(kModules, R"({"word_embedding_dimension": 64, "pooling_mode_cls_token": false,
      "pooling_mode_mean_tokens": false, "pooling_mode_lasttoken": true, "include_prompt": true})");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->pooling_type, Pooling::Last);
  EXPECT_TRUE(p->normalize);
  // Mean pooling without a Normalize module (as all-MiniLM-style checkpoints without one).
  p = sentence_transformers_pooler(R"([{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}])",
                                   R"({"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true})");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->pooling_type, Pooling::Mean);
  EXPECT_FALSE(p->normalize);
  p = sentence_transformers_pooler(kModules, R"({"pooling_mode_cls_token": true})");
  EXPECT_EQ(p->pooling_type, Pooling::Cls);
  EXPECT_THROW(sentence_transformers_pooler(kModules, R"({"pooling_mode_max_tokens": true})"), Error);
  EXPECT_THROW(sentence_transformers_pooler("{", ""), Error);
  EXPECT_THROW(sentence_transformers_pooler("{}", ""), Error);  // not a list
}

TEST(Pooler, PoolerConfigAndMatryoshka) {
  PoolerConfig p;
  EXPECT_EQ(p.pooling_type, Pooling::Last);  // vLLM's embed default: LAST, normalized
  EXPECT_TRUE(p.normalize);
  apply_pooler_config(p, R"({"pooling_type": "MEAN", "normalize": false, "dimensions": 32})");
  EXPECT_EQ(p.pooling_type, Pooling::Mean);
  EXPECT_FALSE(p.normalize);
  EXPECT_EQ(p.dimensions.value_or(0), 32);
  for (const char* bad : {R"({"pooling_type": "ALL"})", R"({"pooling_type": "STEP"})", R"({"pooling_type": 3})",
                          R"({"normalize": "yes"})", R"({"dimensions": 0})", R"({"softmax": true})", "[1]", "{"}) {
    PoolerConfig q;
    EXPECT_THROW(apply_pooler_config(q, bad), Error) << bad;
  }
  PoolerConfig m;
  read_matryoshka(m, nlohmann::json::parse(R"({"hidden_size": 64})"));
  EXPECT_FALSE(m.matryoshka);
  read_matryoshka(m, nlohmann::json::parse(R"({"is_matryoshka": true})"));
  EXPECT_TRUE(m.matryoshka);
  EXPECT_TRUE(m.matryoshka_dimensions.empty());
  PoolerConfig d;
  read_matryoshka(d, nlohmann::json::parse(R"({"matryoshka_dimensions": [16, 32]})"));
  EXPECT_TRUE(d.matryoshka);
  EXPECT_EQ(d.matryoshka_dimensions, (std::vector<int64_t>{16, 32}));
  EXPECT_THROW(read_matryoshka(d, nlohmann::json::parse(R"({"matryoshka_dimensions": [0]})")), Error);
}

TEST(Pooler, RunnerAsVllmChoosesIt) {
  EXPECT_EQ(resolve_runner("auto", "auto", false, "Qwen3ForCausalLM"), "generate");
  EXPECT_EQ(resolve_runner("auto", "auto", true, "Qwen3ForCausalLM"), "pooling");  // a Sentence Transformers checkpoint
  EXPECT_EQ(resolve_runner("auto", "auto", false, "Qwen2Model"), "pooling");
  EXPECT_EQ(resolve_runner("generate", "auto", true, "Qwen3ForCausalLM"), "generate");
  EXPECT_EQ(resolve_runner("pooling", "auto", false, "LlamaForCausalLM"), "pooling");
  EXPECT_EQ(resolve_runner("auto", "embed", false, "LlamaForCausalLM"), "pooling");
  EXPECT_THROW(resolve_runner("generate", "embed", false, "LlamaForCausalLM"), Error);
  EXPECT_THROW(resolve_runner("auto", "classify", false, "LlamaForCausalLM"), Error);
  EXPECT_THROW(resolve_runner("draft", "auto", false, "LlamaForCausalLM"), Error);
  // A base model's config reads as its causal-LM family, its name kept.
  const ModelSpec s = model_spec_from_hf_config(nlohmann::json::parse(
      R"({"architectures": ["Qwen3Model"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000})"));
  EXPECT_EQ(s.architecture, "Qwen3Model");
  EXPECT_EQ(s.model_type, "qwen3");
  EXPECT_TRUE(s.qk_norm);
  // A sequence classifier: its family's transformer, the pooling runner, never generate.
  const ModelSpec c = model_spec_from_hf_config(nlohmann::json::parse(
      R"({"architectures": ["Qwen3ForSequenceClassification"], "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000})"));
  EXPECT_EQ(c.architecture, "Qwen3ForSequenceClassification");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_TRUE(is_sequence_classifier(c.architecture));
  EXPECT_FALSE(is_sequence_classifier("Qwen3ForCausalLM") || is_sequence_classifier("ForSequenceClassification"));
  EXPECT_EQ(resolve_runner("auto", "auto", false, c.architecture), "pooling");
  EXPECT_THROW(resolve_runner("generate", "auto", false, c.architecture), Error);
  EXPECT_THROW(model_spec_from_hf_config(nlohmann::json::parse(R"({"architectures": ["GPT2ForSequenceClassification"]})")), Error);
}

// The classify task's head: transformers' labels and the activation its loss implies.
TEST(Pooler, ClassifierHeadAsVllmActivatesIt) {
  const std::vector<float> w{1, 0, 0, 1, -1, 2};  // 3 labels over a hidden size of 2
  const Classifier c = make_classifier(nlohmann::json::parse(R"({"id2label": {"0": "neg", "1": "neu", "2": "pos"}})"), w, 3, 2);
  EXPECT_EQ(c.labels, (std::vector<std::string>{"neg", "neu", "pos"}));
  EXPECT_EQ(c.activation, Classifier::Activation::Softmax);
  const std::vector<double> z = c.scores({0.5f, 1.0f}, false);
  EXPECT_EQ(z, (std::vector<double>{0.5, 1.0, 1.5}));
  const std::vector<double> p = c.scores({0.5f, 1.0f});
  const double sum = std::exp(0.5) + std::exp(1.0) + std::exp(1.5);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i], std::exp(z[i]) / sum, 1e-12);
  // One label: sigmoid, transformers' default label name; multi-label: sigmoid; regression: none.
  const Classifier one = make_classifier(nlohmann::json::object(), {2, 0}, 1, 2);
  EXPECT_EQ(one.labels, (std::vector<std::string>{"LABEL_0"}));
  EXPECT_NEAR(one.scores({1.0f, 5.0f})[0], 1 / (1 + std::exp(-2.0)), 1e-12);
  EXPECT_EQ(make_classifier(nlohmann::json::parse(R"({"problem_type": "multi_label_classification"})"), w, 3, 2).activation,
            Classifier::Activation::Sigmoid);
  EXPECT_EQ(make_classifier(nlohmann::json::parse(R"({"problem_type": "regression"})"), w, 3, 2).activation,
            Classifier::Activation::Identity);
  // A causal LM's head rows as a classifier (Qwen3-Reranker): two tokens, one label of their difference.
  const nlohmann::json rr = nlohmann::json::parse(R"({"is_original_qwen3_reranker": true})");
  const Classifier r = classifier_from_token_rows(rr, {1, 2, 4, 3}, 2, 2);  // rows "no" (1, 2) and "yes" (4, 3)
  EXPECT_EQ(r.weight, (std::vector<float>{3, 1}));
  EXPECT_EQ(r.activation, Classifier::Activation::Sigmoid);
  EXPECT_EQ(classifier_from_token_rows(nlohmann::json::object(), {1, 2, 4, 3}, 2, 2).num_labels, 2);
  EXPECT_THROW(classifier_from_token_rows(nlohmann::json::parse(R"({"method": "mean"})"), {1, 2}, 1, 2), Error);
  EXPECT_THROW(classifier_from_token_rows(rr, {1, 2}, 1, 2), Error);
  // config.json's num_labels must be score.weight's rows; the weight must be [num_labels, hidden].
  EXPECT_THROW(make_classifier(nlohmann::json::parse(R"({"num_labels": 2})"), w, 3, 2), Error);
  EXPECT_THROW(make_classifier(nlohmann::json::object(), w, 2, 2), Error);
}

TEST(Pooler, ConfigOptions) {
  Config c;
  config_parse_args(c, {"--model", "m.h5", "--runner", "pooling", "--pooler-config", R"({"pooling_type": "CLS"})"});
  EXPECT_EQ(c.runner, "pooling");
  EXPECT_NO_THROW(config_validate(c));
  Config old;
  config_parse_args(old, {"--model", "m.h5", "--override-pooler-config", R"({"normalize": false})", "--convert", "embed"});
  EXPECT_EQ(old.pooler_config, R"({"normalize": false})");
  EXPECT_NO_THROW(config_validate(old));
  for (auto args : std::vector<std::vector<std::string>>{{"--runner", "transcription"},
                                                         {"--convert", "reward"},
                                                         {"--pooler-config", R"({"pooling_type": "MAX"})"},
                                                         {"--pooler-config", "MEAN"}}) {
    Config b;
    config_parse_args(b, {"--model", "m.h5"});
    config_parse_args(b, args);
    try {
      config_validate(b);
      ADD_FAILURE() << args[0] << " " << args[1] << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(args[0] == "--pooler-config" ? "pooler_config" : args[0].substr(2)), std::string::npos) << e.what();
    }
  }
}

TEST(Embeddings, TruncatedThenNormalized) {
  const std::vector<float> v = {3, 4, 12, 0};
  EXPECT_EQ(finish_embedding(v, std::nullopt, false), v);
  const auto n = finish_embedding(v, std::nullopt, true);
  EXPECT_FLOAT_EQ(n[0], 3.f / 13);
  EXPECT_FLOAT_EQ(n[2], 12.f / 13);
  const auto d = finish_embedding(v, 2, true);  // (vLLM: the first dimensions, then the norm of those)
  ASSERT_EQ(d.size(), 2u);
  EXPECT_FLOAT_EQ(d[0], 0.6f);
  EXPECT_FLOAT_EQ(d[1], 0.8f);
  EXPECT_EQ(finish_embedding({0, 0}, std::nullopt, true), (std::vector<float>{0, 0}));
  EXPECT_EQ(finish_embedding(v, 9, false).size(), 4u);
}

TEST(Embeddings, Base64) {
  EXPECT_EQ(base64_encode("", 0), "");
  EXPECT_EQ(base64_encode("f", 1), "Zg==");
  EXPECT_EQ(base64_encode("fo", 2), "Zm8=");
  EXPECT_EQ(base64_encode("foobar", 6), "Zm9vYmFy");
  const float one = 1.0f;  // 00 00 80 3f little-endian
  EXPECT_EQ(base64_encode(&one, 4), "AACAPw==");
}
