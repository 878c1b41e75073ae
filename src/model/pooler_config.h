// The pooling runner (vLLM's `runner: pooling`, task embed): which runner a model gets, and how an
// embedding is made of its final-norm hidden states (vLLM's PoolerConfig): the pooling type, whether the
// vector is normalized, the default output dimensions, and whether the model allows fewer (Matryoshka).
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/sampling_params.h"

namespace llmserve {

struct PoolerConfig {
  Pooling pooling_type = Pooling::Last;  // vLLM's default for the embed task
  bool normalize = true;
  std::optional<int64_t> dimensions;     // the output dimensions when a request gives none
  bool matryoshka = false;               // config.json is_matryoshka (or matryoshka_dimensions given)
  std::vector<int64_t> matryoshka_dimensions;  // when given, the only dimensions a request may ask for
};

// A sequence classifier's head (vLLM's classify task: Qwen2ForSequenceClassification and its kin): the
// `score` matrix over the pooled (LAST) final-norm hidden state, then the activation transformers'
// loss implies (vLLM's get_classification_activation_function): problem_type regression none,
// multi_label_classification sigmoid, otherwise softmax, or sigmoid for a single label.
struct Classifier {
  enum class Activation { Softmax, Sigmoid, Identity };
  int64_t num_labels = 0, hidden = 0;
  std::vector<float> weight;        // [num_labels, hidden]
  std::vector<std::string> labels;  // config.json id2label by index (LABEL_<i> where it names none)
  Activation activation = Activation::Softmax;
  // The label scores of a pooled hidden state (hidden values): score . h, then the activation unless
  // `activate` is false.
  std::vector<double> scores(const std::vector<float>& h, bool activate = true) const;
};
// Whether an architecture is a sequence classifier (*ForSequenceClassification).
bool is_sequence_classifier(const std::string& architecture);
// vLLM's classifier made of a causal LM's head (hf_overrides architectures *ForSequenceClassification with
// classifier_from_token, as Qwen3-Reranker is served): `rows` [n, hidden] are the language-model head's
// rows of the n tokens. Two tokens with is_original_qwen3_reranker true or method from_2_way_softmax: one
// label, the second row minus the first (the logit difference, whose sigmoid is the two tokens' softmax);
// otherwise a label a token. Throws Error for other methods.
Classifier classifier_from_token_rows(const nlohmann::json& overrides, std::vector<float> rows, int64_t n, int64_t hidden);
// Throws Error for a command that makes text (generate, logits) on a sequence classifier, which has no
// language-model head.
void refuse_classifier_text(const char* command, const std::string& architecture);
// The head from config.json (num_labels, id2label, problem_type) and the converted `score.weight`
// ([num_labels, hidden], row-major). Throws Error where they disagree.
Classifier make_classifier(const nlohmann::json& hf_config, std::vector<float> weight, int64_t num_labels, int64_t hidden);

// The name vLLM gives a pooling type (LAST, MEAN, CLS).
const char* pooling_name(Pooling p);

// A Sentence Transformers checkpoint's pooler (vLLM's get_pooling_config): `modules_json` its
// modules.json, `pooling_json` the config.json of its Pooling module (empty when it has none). The
// pooling is the mode set true there (pooling_mode_lasttoken, _mean_tokens, _cls_token); normalized when a
// Normalize module is listed. Returns nothing for an empty modules_json. Throws Error for documents
// that are not valid or a pooling mode llmserve does not make.
std::optional<PoolerConfig> sentence_transformers_pooler(const std::string& modules_json, const std::string& pooling_json);
// The path of the Pooling module's folder named by modules.json ("" when none). Throws Error.
std::string sentence_transformers_pooling_path(const std::string& modules_json);

// vLLM's pooler_config (a JSON object: pooling_type LAST | MEAN | CLS, normalize, dimensions) over `p`;
// other keys and values are refused with the reason. Throws Error.
void apply_pooler_config(PoolerConfig& p, const std::string& json_text);
// is_matryoshka / matryoshka_dimensions of a config.json (or hf_overrides) object into `p`.
void read_matryoshka(PoolerConfig& p, const nlohmann::json& hf_config);

// The runner a model is served with, vLLM's rule: `runner` generate or pooling as given; auto is pooling
// for a Sentence Transformers checkpoint (`sentence_transformers`), an architecture named *Model (a
// base model without its language-model head, such as Qwen3Model) or a *ForSequenceClassification
// classifier, else generate. `convert` (vLLM's) must be auto or embed (the only conversion llmserve
// makes), and embed means the pooling runner. A classifier is refused the generate runner (it has no
// language-model head). Throws Error for other values.
std::string resolve_runner(const std::string& runner, const std::string& convert, bool sentence_transformers,
                           const std::string& architecture);

}  // namespace llmserve
