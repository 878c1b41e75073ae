#include "model/pooler_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace llmserve {

using nlohmann::json;

const char* pooling_name(Pooling p) {
  switch (p) {
    case Pooling::Last: return "LAST";
    case Pooling::Mean: return "MEAN";
    case Pooling::Cls: return "CLS";
    case Pooling::None: break;
  }
  return "NONE";
}

namespace {

json parse_doc(const std::string& text, const char* what) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(cat(what, ": not valid JSON"));
  return j;
}

Pooling pooling_from_name(const std::string& name, const std::string& where) {
  if (name == "LAST") return Pooling::Last;
  if (name == "MEAN") return Pooling::Mean;
  if (name == "CLS") return Pooling::Cls;
  throw Error(cat(where, " '", name, "' is not supported (llmserve pools LAST, MEAN or CLS for embeddings)"));
}

}  // namespace

std::string sentence_transformers_pooling_path(const std::string& modules_json) {
  const json m = parse_doc(modules_json, "modules.json");
  if (!m.is_array()) throw Error("modules.json: not a list of modules");
  for (const auto& item : m)
    if (item.is_object() && item.value("type", "") == "sentence_transformers.models.Pooling")
      return item.contains("path") && item["path"].is_string() ? item["path"].get<std::string>() : "";
  return "";
}

std::optional<PoolerConfig> sentence_transformers_pooler(const std::string& modules_json, const std::string& pooling_json) {
  if (modules_json.empty()) return std::nullopt;
  const json m = parse_doc(modules_json, "modules.json");
  if (!m.is_array()) throw Error("modules.json: not a list of modules");
  PoolerConfig p;
  p.normalize = false;
  for (const auto& item : m)
    if (item.is_object() && item.value("type", "") == "sentence_transformers.models.Normalize") p.normalize = true;
  if (!pooling_json.empty()) {
    const json c = parse_doc(pooling_json, "the Pooling module's config.json");
    if (!c.is_object()) throw Error("the Pooling module's config.json: not a JSON object");
    // (vLLM: the first mode set true; pooling_mode_lasttoken -> LAST, pooling_mode_mean_tokens -> MEAN, ...)
    for (const auto& [key, value] : c.items()) {
      if (!value.is_boolean() || !value.get<bool>()) continue;
      if (key == "pooling_mode_lasttoken") {
        p.pooling_type = Pooling::Last;
      } else if (key == "pooling_mode_mean_tokens") {
        p.pooling_type = Pooling::Mean;
      } else if (key == "pooling_mode_cls_token") {
        p.pooling_type = Pooling::Cls;
      } else if (key.rfind("pooling_mode_", 0) == 0) {
        throw Error(cat("the Pooling module's config.json: ", key, " is not supported (llmserve pools the last token, "
                        "the mean or the first token)"));
      } else {
        continue;
      }
      break;
    }
  }
  return p;
}

void apply_pooler_config(PoolerConfig& p, const std::string& text) {
  if (text.empty()) return;
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat("pooler_config must be a JSON object, got '", text, "'"));
  for (const auto& [key, v] : j.items()) {
    if (v.is_null()) continue;
    if (key == "pooling_type") {
      if (!v.is_string()) throw Error("pooler_config: pooling_type must be a string (LAST, MEAN or CLS)");
      p.pooling_type = pooling_from_name(v.get<std::string>(), "pooler_config: pooling_type");
    } else if (key == "normalize") {
      if (!v.is_boolean()) throw Error("pooler_config: normalize must be true or false");
      p.normalize = v.get<bool>();
    } else if (key == "dimensions") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1) throw Error("pooler_config: dimensions must be an integer >= 1");
      p.dimensions = v.get<int64_t>();
    } else {
      throw Error(cat("pooler_config: '", key, "' is not supported (llmserve's pooler takes pooling_type, normalize and "
                      "dimensions: it makes embeddings only)"));
    }
  }
}

void read_matryoshka(PoolerConfig& p, const json& c) {
  if (!c.is_object()) return;
  if (c.contains("is_matryoshka") && !c["is_matryoshka"].is_null()) {
    if (!c["is_matryoshka"].is_boolean()) throw Error("config.json: is_matryoshka must be true or false");
    p.matryoshka = c["is_matryoshka"].get<bool>();
  }
  if (c.contains("matryoshka_dimensions") && !c["matryoshka_dimensions"].is_null()) {
    const json& d = c["matryoshka_dimensions"];
    if (!d.is_array()) throw Error("config.json: matryoshka_dimensions must be a list of integers");
    p.matryoshka_dimensions.clear();
    for (const auto& x : d) {
      if (!x.is_number_integer() || x.get<int64_t>() < 1)
        throw Error("config.json: matryoshka_dimensions must be a list of integers >= 1");
      p.matryoshka_dimensions.push_back(x.get<int64_t>());
    }
    p.matryoshka = true;
  }
}

std::string resolve_runner(const std::string& runner, const std::string& convert, bool sentence_transformers,
                           const std::string& architecture) {
  if (convert != "auto" && convert != "embed")
    throw Error(cat("convert '", convert, "' is not supported: llmserve converts models for the embed task only (use auto or embed)"));
  if (runner != "auto" && runner != "generate" && runner != "pooling")
    throw Error(cat("runner must be auto, generate or pooling; got '", runner, "'"));
  if (convert == "embed") {
    if (runner == "generate") throw Error("convert embed makes a pooling model: it needs runner pooling (or auto)");
    return "pooling";
  }
  if (runner == "generate" && is_sequence_classifier(architecture))
    throw Error(cat("runner generate: ", architecture, " is a classifier without a language-model head (serve it with "
                    "the pooling runner: runner auto or pooling)"));
  if (runner != "auto") return runner;
  if (is_sequence_classifier(architecture)) return "pooling";
  const bool base_model = architecture.size() > 5 && architecture.compare(architecture.size() - 5, 5, "Model") == 0 &&
                          architecture.find("For") == std::string::npos;
  return sentence_transformers || base_model ? "pooling" : "generate";
}

bool is_sequence_classifier(const std::string& architecture) {
  static const std::string kCls = "ForSequenceClassification";
  return architecture.size() > kCls.size() && architecture.compare(architecture.size() - kCls.size(), kCls.size(), kCls) == 0;
}

void refuse_classifier_text(const char* command, const std::string& architecture) {
  if (is_sequence_classifier(architecture))
    throw Error(cat(command, " makes text: ", architecture, " is a classifier without a language-model head (`llmserve serve` "
                    "answers /classify with it)"));
}

Classifier classifier_from_token_rows(const json& o, std::vector<float> rows, int64_t n, int64_t hidden) {
  const std::string method = o.contains("method") && o["method"].is_string() ? o["method"].get<std::string>() : "";
  if (o.contains("method") && method != "from_2_way_softmax" && method != "no_post_processing")
    throw Error("hf_overrides: method must be from_2_way_softmax or no_post_processing");
  const bool two_way = method == "from_2_way_softmax" ||
                       (method.empty() && o.contains("is_original_qwen3_reranker") && o["is_original_qwen3_reranker"] == true);
  if (two_way) {
    if (n != 2) throw Error("hf_overrides: from_2_way_softmax (is_original_qwen3_reranker) takes two classifier_from_token");
    std::vector<float> w(static_cast<size_t>(hidden));
    for (int64_t k = 0; k < hidden; ++k) w[static_cast<size_t>(k)] = rows[static_cast<size_t>(hidden + k)] - rows[static_cast<size_t>(k)];
    return make_classifier(json::object(), std::move(w), 1, hidden);
  }
  return make_classifier(json::object(), std::move(rows), n, hidden);
}

Classifier make_classifier(const json& cfg, std::vector<float> weight, int64_t num_labels, int64_t hidden) {
  Classifier c;
  c.num_labels = num_labels;
  c.hidden = hidden;
  if (num_labels < 1 || static_cast<int64_t>(weight.size()) != num_labels * hidden)
    throw Error(cat("the classifier's score.weight is not [num_labels, ", hidden, "]"));
  c.weight = std::move(weight);
  if (cfg.is_object() && cfg.contains("num_labels") && cfg["num_labels"].is_number_integer() &&
      cfg["num_labels"].get<int64_t>() != num_labels)
    throw Error(cat("config.json num_labels (", cfg["num_labels"].get<int64_t>(), ") is not score.weight's ", num_labels, " rows"));
  for (int64_t i = 0; i < num_labels; ++i) {
    std::string label = cat("LABEL_", i);  // (transformers' default id2label)
    const std::string key = std::to_string(i);
    if (cfg.is_object() && cfg.contains("id2label") && cfg["id2label"].is_object() && cfg["id2label"].contains(key) &&
        cfg["id2label"][key].is_string())
      label = cfg["id2label"][key].get<std::string>();
    c.labels.push_back(label);
  }
  const std::string problem = cfg.is_object() && cfg.contains("problem_type") && cfg["problem_type"].is_string()
                                  ? cfg["problem_type"].get<std::string>()
                                  : "";
  c.activation = problem == "regression"                   ? Classifier::Activation::Identity
                 : problem == "multi_label_classification" ? Classifier::Activation::Sigmoid
                 : num_labels == 1                         ? Classifier::Activation::Sigmoid
                                                           : Classifier::Activation::Softmax;
  return c;
}

std::vector<double> Classifier::scores(const std::vector<float>& h, bool activate) const {
  std::vector<double> z(static_cast<size_t>(num_labels), 0.0);
  for (int64_t l = 0; l < num_labels; ++l)
    for (int64_t k = 0; k < hidden && k < static_cast<int64_t>(h.size()); ++k)
      z[static_cast<size_t>(l)] += double{weight[static_cast<size_t>(l * hidden + k)]} * h[static_cast<size_t>(k)];
  if (!activate || activation == Activation::Identity) return z;
  if (activation == Activation::Sigmoid) {
    for (double& x : z) x = 1.0 / (1.0 + std::exp(-x));
    return z;
  }
  const double m = *std::max_element(z.begin(), z.end());
  double sum = 0;
  for (double& x : z) sum += (x = std::exp(x - m));
  for (double& x : z) x /= sum;
  return z;
}

}  // namespace llmserve
