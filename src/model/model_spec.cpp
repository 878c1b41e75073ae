#include "model/model_spec.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/pooler_config.h"

namespace llmserve {
namespace {

using json = nlohmann::json;

template <typename T>
T get_req(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) throw Error(cat("config.json: missing '", key, "'"));
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    throw Error(cat("config.json: '", key, "' has the wrong type: ", j[key].dump()));
  }
}

template <typename T>
T get_opt(const json& j, const char* key, T def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    throw Error(cat("config.json: '", key, "' has the wrong type: ", j[key].dump()));
  }
}

// rope_theta and rope_scaling (transformers 4's keys), or rope_parameters (transformers 5's: the two in
// one object), into s; max_position_embeddings already read.
void read_rope(const json& cfg, ModelSpec& s) {
  s.rope_theta = get_opt<double>(cfg, "rope_theta", s.rope_theta);
  const char* key = cfg.contains("rope_scaling") && !cfg["rope_scaling"].is_null() ? "rope_scaling" : "rope_parameters";
  if (!cfg.contains(key) || cfg[key].is_null()) return;
  const json& rs = cfg[key];
  if (!rs.is_object()) throw Error(cat("config.json: '", key, "' must be an object"));
  if (std::string(key) == "rope_parameters") s.rope_theta = get_opt<double>(rs, "rope_theta", s.rope_theta);
  s.rope_scaling = RopeScaling{};
  std::string type = get_opt<std::string>(rs, "rope_type", get_opt<std::string>(rs, "type", "default"));
  if (type == "default") {
    // no scaling
  } else if (type == "linear" || type == "llama3") {
    s.rope_scaling.type = type;
    s.rope_scaling.factor = get_req<double>(rs, "factor");
    if (type == "llama3") {
      s.rope_scaling.low_freq_factor = get_req<double>(rs, "low_freq_factor");
      s.rope_scaling.high_freq_factor = get_req<double>(rs, "high_freq_factor");
      s.rope_scaling.original_max_position_embeddings = get_req<int64_t>(rs, "original_max_position_embeddings");
    }
  } else if (type == "yarn") {
    // As transformers 5 and vLLM: the given factor; original_max_position_embeddings defaults to the
    // model's.
    RopeScaling& r = s.rope_scaling;
    r.type = type;
    r.factor = get_req<double>(rs, "factor");
    r.original_max_position_embeddings = get_opt<int64_t>(rs, "original_max_position_embeddings", s.max_position_embeddings);
    auto number = [&](const char* k, double fallback) { return get_opt<double>(rs, k, fallback); };  // (null: absent)
    r.beta_fast = number("beta_fast", 32.0);
    r.beta_slow = number("beta_slow", 1.0);
    r.attention_factor = number("attention_factor", 0.0);
    r.mscale = number("mscale", 0.0);
    r.mscale_all_dim = number("mscale_all_dim", 0.0);
    r.truncate = get_opt<bool>(rs, "truncate", true);
    if (r.original_max_position_embeddings <= 0 || r.beta_fast <= 0 || r.beta_slow <= 0 || r.attention_factor < 0)
      throw Error("config.json: rope_scaling yarn needs positive original_max_position_embeddings, beta_fast and "
                  "beta_slow, and a non-negative attention_factor");
  } else {
    throw Error(cat("unsupported ", key, " type '", type, "' (supported: linear, llama3, yarn)"));
  }
}

}  // namespace

ModelSpec model_spec_from_hf_config(const json& cfg) {
  if (!cfg.is_object()) throw Error("config.json: not a JSON object");
  ModelSpec s;
  std::string arch;
  if (cfg.contains("architectures") && cfg["architectures"].is_array() && !cfg["architectures"].empty())
    arch = cfg["architectures"][0].get<std::string>();
  if (arch.empty()) throw Error("config.json: missing 'architectures'");
  // A base model (Qwen3Model: its transformer without the language-model head, as embedding checkpoints
  // name it) or a sequence classifier (Qwen2ForSequenceClassification: the transformer and a `score`
  // matrix) is read as its causal-LM family; the pooling runner serves it (model/pooler_config.h).
  const std::string given = arch;
  if (arch == "Qwen2Model" || arch == "Qwen3Model" || arch == "LlamaModel" || arch == "MistralModel")
    arch = arch.substr(0, arch.size() - 5) + "ForCausalLM";
  else if (is_sequence_classifier(arch))
    arch = arch.substr(0, arch.find("ForSequenceClassification")) + "ForCausalLM";
  const bool qwen3_moe = arch == "Qwen3MoeForCausalLM", mixtral = arch == "MixtralForCausalLM";
  const bool qwen2_moe = arch == "Qwen2MoeForCausalLM";
  if (arch != "Qwen2ForCausalLM" && arch != "Qwen3ForCausalLM" && arch != "LlamaForCausalLM" && arch != "MistralForCausalLM" &&
      !qwen2_moe && !qwen3_moe && !mixtral)
    throw Error(cat("unsupported architecture ", given,
                    " (supported: Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM, MistralForCausalLM, "
                    "Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, MixtralForCausalLM, their "
                    "*Model base models for embeddings and *ForSequenceClassification classifiers)"));
  s.architecture = given;
  s.model_type = get_opt<std::string>(cfg, "model_type",
                                      arch == "Qwen2ForCausalLM" ? "qwen2" : arch == "Qwen3ForCausalLM" ? "qwen3"
                                      : qwen2_moe ? "qwen2_moe" : qwen3_moe ? "qwen3_moe" : mixtral ? "mixtral" : "llama");
  s.qk_norm = arch == "Qwen3ForCausalLM" || qwen3_moe;
  s.hidden_size = get_req<int64_t>(cfg, "hidden_size");
  s.intermediate_size = get_req<int64_t>(cfg, "intermediate_size");
  s.num_layers = get_req<int>(cfg, "num_hidden_layers");
  s.num_heads = get_req<int>(cfg, "num_attention_heads");
  s.num_kv_heads = get_opt<int>(cfg, "num_key_value_heads", s.num_heads);
  const int64_t default_head_dim = s.num_heads > 0 ? s.hidden_size / s.num_heads : 0;
  if ((!cfg.contains("head_dim") || cfg["head_dim"].is_null()) && s.num_heads > 0 && s.hidden_size % s.num_heads != 0)
    throw Error(cat("model: hidden_size (", s.hidden_size, ") is not divisible by num_attention_heads (", s.num_heads,
                    ") and config.json gives no head_dim"));
  s.head_dim = static_cast<int>(get_opt<int64_t>(cfg, "head_dim", default_head_dim));
  s.vocab_size = get_req<int64_t>(cfg, "vocab_size");
  s.rms_norm_eps = get_opt<double>(cfg, "rms_norm_eps", 1e-6);
  s.max_position_embeddings = get_opt<int64_t>(cfg, "max_position_embeddings", 4096);
  s.tie_word_embeddings = get_opt<bool>(cfg, "tie_word_embeddings", false);
  s.attention_bias = arch == "Qwen2ForCausalLM" ? true
                     : qwen2_moe           ? get_opt<bool>(cfg, "qkv_bias", true)
                                           : get_opt<bool>(cfg, "attention_bias", false);
  s.torch_dtype = get_opt<std::string>(cfg, "torch_dtype", get_opt<std::string>(cfg, "dtype", "bfloat16"));
  if (get_opt<bool>(cfg, "mlp_bias", false)) throw Error("unsupported: mlp_bias = true");
  const std::string act = get_opt<std::string>(cfg, "hidden_act", "silu");
  if (act != "silu") throw Error(cat("unsupported hidden_act '", act, "' (only silu)"));
  if (qwen3_moe || qwen2_moe) {  // (transformers' Qwen3MoeConfig / Qwen2MoeConfig defaults)
    s.num_experts = get_opt<int>(cfg, "num_experts", qwen2_moe ? 60 : 128);
    s.num_experts_per_tok = get_opt<int>(cfg, "num_experts_per_tok", qwen2_moe ? 4 : 8);
    s.moe_intermediate_size = get_opt<int64_t>(cfg, "moe_intermediate_size", qwen2_moe ? 1408 : 768);
    s.norm_topk_prob = get_opt<bool>(cfg, "norm_topk_prob", false);
    s.decoder_sparse_step = get_opt<int>(cfg, "decoder_sparse_step", 1);
    s.mlp_only_layers = get_opt<std::vector<int64_t>>(cfg, "mlp_only_layers", {});
    if (qwen2_moe) s.shared_expert_intermediate_size = get_opt<int64_t>(cfg, "shared_expert_intermediate_size", 5632);
  } else if (mixtral) {  // every layer sparse, experts of intermediate_size, the chosen weights renormalized
    s.num_experts = get_opt<int>(cfg, "num_local_experts", 8);
    s.num_experts_per_tok = get_opt<int>(cfg, "num_experts_per_tok", 2);
    s.moe_intermediate_size = s.intermediate_size;
    s.norm_topk_prob = true;
  }
  if (arch == "MistralForCausalLM" || arch == "Qwen2ForCausalLM" || arch == "Qwen3ForCausalLM" || qwen2_moe || qwen3_moe ||
      mixtral) {
    // A sliding window only matters when it is in use and shorter than the context (a null one is none).
    // Which layers have it: as transformers' configs and attention modules decide (ModelSpec).
    const bool every_layer = arch == "MistralForCausalLM" || mixtral || qwen3_moe;
    const bool use_sw = get_opt<bool>(cfg, "use_sliding_window", arch == "MistralForCausalLM" || mixtral);
    const int64_t sw = cfg.contains("sliding_window") && cfg["sliding_window"].is_number_integer()
                           ? cfg["sliding_window"].get<int64_t>() : 0;
    if (use_sw && sw > 0 && sw < s.max_position_embeddings) {
      const int64_t below = get_opt<int64_t>(cfg, "max_window_layers", 28);
      const bool typed = !every_layer && cfg.contains("layer_types") && cfg["layer_types"].is_array();
      if (typed && cfg["layer_types"].size() != static_cast<size_t>(s.num_layers))
        throw Error(cat("config: layer_types has ", cfg["layer_types"].size(), " entries for ", s.num_layers, " layers"));
      for (int l = 0; l < s.num_layers; ++l) {
        bool sliding = every_layer;
        if (typed) {
          const json& t = cfg["layer_types"][static_cast<size_t>(l)];
          if (!t.is_string() || (t != "sliding_attention" && t != "full_attention"))
            throw Error(cat("unsupported: layer_types entry ", t.dump(), " (sliding_attention or full_attention)"));
          sliding = t == "sliding_attention";
        } else if (qwen2_moe) {
          sliding = (l + 1) % 2 != 0 && l < below;
        } else if (!every_layer) {
          sliding = l >= below;
        }
        if (sliding) s.sliding_window_layers.push_back(l);
      }
      if (!s.sliding_window_layers.empty()) s.sliding_window = sw;
    }
  }

  read_rope(cfg, s);

  if (cfg.contains("bos_token_id") && cfg["bos_token_id"].is_number_integer())
    s.bos_token_id = cfg["bos_token_id"].get<int64_t>();
  if (cfg.contains("eos_token_id")) {
    const json& e = cfg["eos_token_id"];
    if (e.is_number_integer()) s.eos_token_ids.push_back(e.get<int64_t>());
    if (e.is_array())
      for (const auto& x : e)
        if (x.is_number_integer()) s.eos_token_ids.push_back(x.get<int64_t>());
  }
  model_spec_validate(s);
  return s;
}

void model_spec_validate(const ModelSpec& s) {
  auto need = [](bool ok, const std::string& m) {
    if (!ok) throw Error("model: " + m);
  };
  need(s.hidden_size > 0, cat("hidden_size must be positive, got ", s.hidden_size));
  need(s.intermediate_size > 0, cat("intermediate_size must be positive, got ", s.intermediate_size));
  need(s.num_layers > 0, cat("num_hidden_layers must be positive, got ", s.num_layers));
  need(s.num_heads > 0, cat("num_attention_heads must be positive, got ", s.num_heads));
  need(s.num_kv_heads > 0 && s.num_heads % s.num_kv_heads == 0,
       cat("num_key_value_heads (", s.num_kv_heads, ") must divide num_attention_heads (", s.num_heads, ")"));
  need(s.head_dim > 0 && s.head_dim % 2 == 0, cat("head_dim must be positive and even, got ", s.head_dim));
  need(s.vocab_size > 0, cat("vocab_size must be positive, got ", s.vocab_size));
  need(s.rms_norm_eps > 0, "rms_norm_eps must be positive");
  need(s.rope_theta > 0, "rope_theta must be positive");
  need(s.max_position_embeddings > 0, "max_position_embeddings must be positive");
  need(s.rope_scaling.factor > 0, "rope_scaling.factor must be positive");
  need(s.rope_scaling.type != "yarn" || s.rope_theta > 1, "rope_scaling yarn needs rope_theta > 1");
  need(s.sliding_window >= 0, cat("sliding_window must not be negative, got ", s.sliding_window));
  need((s.sliding_window > 0) == !s.sliding_window_layers.empty(), "sliding_window and sliding_window_layers must be given together");
  for (int64_t l : s.sliding_window_layers)
    need(l >= 0 && l < s.num_layers, cat("sliding-window layer ", l, " is not a layer of ", s.num_layers));
  if (s.num_experts != 0) {
    need(s.num_experts > 0, cat("num_experts must be positive, got ", s.num_experts));
    need(s.num_experts_per_tok >= 1 && s.num_experts_per_tok <= s.num_experts,
         cat("num_experts_per_tok (", s.num_experts_per_tok, ") must be between 1 and num_experts (", s.num_experts, ")"));
    need(s.moe_intermediate_size > 0, cat("moe_intermediate_size must be positive, got ", s.moe_intermediate_size));
    need(s.decoder_sparse_step >= 1, cat("decoder_sparse_step must be at least 1, got ", s.decoder_sparse_step));
    need(s.shared_expert_intermediate_size >= 0,
         cat("shared_expert_intermediate_size must not be negative, got ", s.shared_expert_intermediate_size));
  }
}

bool moe_layer(const ModelSpec& s, int layer) {
  return s.num_experts > 0 && (layer + 1) % s.decoder_sparse_step == 0 &&
         std::find(s.mlp_only_layers.begin(), s.mlp_only_layers.end(), layer) == s.mlp_only_layers.end();
}

int64_t attention_window(const ModelSpec& s, int layer) {
  return std::find(s.sliding_window_layers.begin(), s.sliding_window_layers.end(), layer) != s.sliding_window_layers.end()
             ? s.sliding_window : 0;
}

int64_t window_of_every_layer(const ModelSpec& s) {
  for (int l = 0; l < s.num_layers; ++l)
    if (attention_window(s, l) == 0) return 0;
  return s.num_layers > 0 ? s.sliding_window : 0;
}

void model_spec_check_layout(const ModelSpec& s, int tp, int pp) {
  if (s.num_heads % tp != 0)
    throw Error(cat("config: the model's ", s.num_heads, " attention heads are not divisible by tensor_parallel_size ",
                    tp));
  if (s.num_kv_heads % tp != 0 && tp % s.num_kv_heads != 0)
    throw Error(cat("config: the model's ", s.num_kv_heads,
                    " key/value heads cannot be split or replicated over tensor_parallel_size ", tp,
                    " (one must divide the other)"));
  if (s.intermediate_size % tp != 0)
    throw Error(cat("config: the model's intermediate_size ", s.intermediate_size,
                    " is not divisible by tensor_parallel_size ", tp));
  if (s.num_experts > 0 && s.moe_intermediate_size % tp != 0)
    throw Error(cat("config: the model's experts' intermediate size ", s.moe_intermediate_size,
                    " is not divisible by tensor_parallel_size ", tp));
  if (s.num_experts > 0 && s.shared_expert_intermediate_size % tp != 0)
    throw Error(cat("config: the model's shared expert's intermediate size ", s.shared_expert_intermediate_size,
                    " is not divisible by tensor_parallel_size ", tp));
  if (pp > s.num_layers)
    throw Error(cat("config: pipeline_parallel_size (", pp, ") is larger than the model's ", s.num_layers,
                    " layers"));
}

std::vector<float> rope_inv_freq(const ModelSpec& s) {
  const int half = s.head_dim / 2;
  std::vector<float> inv(half);
  const float base = static_cast<float>(s.rope_theta);
  for (int i = 0; i < half; ++i) {
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in float32
    const float expo = static_cast<float>(2 * i) / static_cast<float>(s.head_dim);
    inv[i] = 1.0f / std::pow(base, expo);
  }
  const RopeScaling& r = s.rope_scaling;
  if (r.type == "linear") {
    for (auto& f : inv) f = f / static_cast<float>(r.factor);
  } else if (r.type == "llama3") {
    const float factor = static_cast<float>(r.factor);
    const float low = static_cast<float>(r.low_freq_factor), high = static_cast<float>(r.high_freq_factor);
    const float old_ctx = static_cast<float>(r.original_max_position_embeddings);
    const float low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
    const float pi = 3.14159265358979323846f;
    for (auto& f : inv) {
      const float wavelen = 2.0f * pi / f;
      float scaled = wavelen > low_wavelen ? f / factor : f;
      const float smooth = (old_ctx / wavelen - low) / (high - low);
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
      f = scaled;
    }
  } else if (r.type == "yarn") {
    // Frequencies below the ramp interpolated (divided by the factor), above it kept, between them
    // mixed linearly over the dimension index (transformers' _compute_yarn_parameters, in double here
    // where it uses Python floats, float32 where it uses tensors).
    const double dim = s.head_dim, theta = s.rope_theta, ctx = static_cast<double>(r.original_max_position_embeddings);
    const double pi = 3.14159265358979323846;
    auto correction_dim = [&](double rotations) { return dim * std::log(ctx / (rotations * 2 * pi)) / (2 * std::log(theta)); };
    double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
    if (r.truncate) low = std::floor(low), high = std::ceil(high);
    low = std::max(low, 0.0), high = std::min(high, dim - 1);
    if (low == high) high += 0.001;
    const float factor = static_cast<float>(r.factor);
    for (int i = 0; i < half; ++i) {
      const float pos = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(s.head_dim));
      const float ramp = std::clamp((static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low), 0.f, 1.f);
      const float extrapolation = 1.f - ramp;  // (transformers' inv_freq_extrapolation_factor)
      inv[i] = 1.f / (factor * pos) * (1.f - extrapolation) + 1.f / pos * extrapolation;
    }
  }
  return inv;
}

void apply_hf_overrides(ModelSpec& s, const std::string& overrides) {
  json o;
  try {
    o = json::parse(overrides);
  } catch (const json::exception& e) {
    throw Error(cat("hf_overrides: ", e.what()));
  }
  if (!o.is_object()) throw Error("hf_overrides must be a JSON object");
  for (const auto& [key, value] : o.items())
    if (key != "rope_theta" && key != "rope_scaling" && key != "rope_parameters" && key != "max_position_embeddings" &&
        key != "is_matryoshka" && key != "matryoshka_dimensions" && key != "architectures" &&
        key != "classifier_from_token" && key != "is_original_qwen3_reranker" && key != "method")
      throw Error(cat("hf_overrides on a converted model may set only rope_theta, rope_scaling (or rope_parameters), "
                      "max_position_embeddings, is_matryoshka, matryoshka_dimensions, and architectures with "
                      "classifier_from_token (a classifier made of the language-model head's rows): its weights fix the "
                      "rest; got '", key, "'"));
  // vLLM's conversion of a causal LM into a sequence classifier (Qwen3-Reranker): architectures names the
  // *ForSequenceClassification of the model's family, classifier_from_token the head rows it is made of
  // (model/pooler_config.h, classifier_from_tokens).
  if (o.contains("architectures")) {
    const json& a = o["architectures"];
    const std::string family = s.architecture.substr(0, s.architecture.find("For"));
    if (!a.is_array() || a.size() != 1 || !a[0].is_string() || a[0].get<std::string>() != family + "ForSequenceClassification")
      throw Error(cat("hf_overrides: architectures may only be [\"", family, "ForSequenceClassification\"] on this model "
                      "(with classifier_from_token)"));
    if (!o.contains("classifier_from_token"))
      throw Error("hf_overrides: architectures ...ForSequenceClassification needs classifier_from_token on a converted causal LM");
    s.architecture = a[0].get<std::string>();
  } else if (o.contains("classifier_from_token") || o.contains("is_original_qwen3_reranker") || o.contains("method")) {
    throw Error("hf_overrides: classifier_from_token, method and is_original_qwen3_reranker go with architectures "
                "[\"...ForSequenceClassification\"]");
  }
  try {
    s.max_position_embeddings = get_opt<int64_t>(o, "max_position_embeddings", s.max_position_embeddings);
    if (o.contains("rope_scaling") && o["rope_scaling"].is_null()) s.rope_scaling = RopeScaling{};  // (null removes it)
    read_rope(o, s);
  } catch (const Error& e) {
    // (the reader names its source config.json; here the keys are hf_overrides')
    std::string m = e.what();
    if (m.rfind("config.json: ", 0) == 0) m = m.substr(13);
    throw Error(cat("hf_overrides: ", m));
  }
  model_spec_validate(s);
}

int64_t model_context_length(const ModelSpec& s) {
  const RopeScaling& r = s.rope_scaling;
  if (r.type == "linear") return static_cast<int64_t>(static_cast<double>(s.max_position_embeddings) * r.factor);
  if (r.type == "yarn") return static_cast<int64_t>(static_cast<double>(r.original_max_position_embeddings) * r.factor);
  return s.max_position_embeddings;
}

double rope_attention_factor(const ModelSpec& s) {
  const RopeScaling& r = s.rope_scaling;
  if (r.type != "yarn") return 1.0;
  if (r.attention_factor > 0) return r.attention_factor;
  auto mscale = [&](double m) { return r.factor <= 1 ? 1.0 : 0.1 * m * std::log(r.factor) + 1.0; };
  if (r.mscale > 0 && r.mscale_all_dim > 0) return mscale(r.mscale) / mscale(r.mscale_all_dim);
  return mscale(1.0);
}

}  // namespace llmserve
