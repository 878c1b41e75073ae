#include "model/model_spec.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"

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

}  // namespace

ModelSpec model_spec_from_hf_config(const json& cfg) {
  if (!cfg.is_object()) throw Error("config.json: not a JSON object");
  ModelSpec s;
  std::string arch;
  if (cfg.contains("architectures") && cfg["architectures"].is_array() && !cfg["architectures"].empty())
    arch = cfg["architectures"][0].get<std::string>();
  if (arch.empty()) throw Error("config.json: missing 'architectures'");
  if (arch != "Qwen2ForCausalLM" && arch != "Qwen3ForCausalLM" && arch != "LlamaForCausalLM" && arch != "MistralForCausalLM")
    throw Error(cat("unsupported architecture ", arch,
                    " (supported: Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM, MistralForCausalLM)"));
  s.architecture = arch;
  s.model_type = get_opt<std::string>(cfg, "model_type",
                                      arch == "Qwen2ForCausalLM" ? "qwen2" : arch == "Qwen3ForCausalLM" ? "qwen3" : "llama");
  s.qk_norm = arch == "Qwen3ForCausalLM";
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
  s.rope_theta = get_opt<double>(cfg, "rope_theta", 10000.0);
  s.max_position_embeddings = get_opt<int64_t>(cfg, "max_position_embeddings", 4096);
  s.tie_word_embeddings = get_opt<bool>(cfg, "tie_word_embeddings", false);
  s.attention_bias = arch == "Qwen2ForCausalLM" ? true : get_opt<bool>(cfg, "attention_bias", false);
  s.torch_dtype = get_opt<std::string>(cfg, "torch_dtype", get_opt<std::string>(cfg, "dtype", "bfloat16"));
  if (get_opt<bool>(cfg, "mlp_bias", false)) throw Error("unsupported: mlp_bias = true");
  const std::string act = get_opt<std::string>(cfg, "hidden_act", "silu");
  if (act != "silu") throw Error(cat("unsupported hidden_act '", act, "' (only silu)"));
  if (arch == "MistralForCausalLM" || arch == "Qwen2ForCausalLM" || arch == "Qwen3ForCausalLM") {
    // A sliding window only matters when it is in use and shorter than the context.
    const bool use_sw = get_opt<bool>(cfg, "use_sliding_window", arch == "MistralForCausalLM");
    const int64_t sw = get_opt<int64_t>(cfg, "sliding_window", 0);
    if (use_sw && sw > 0 && sw < s.max_position_embeddings)
      throw Error(cat("unsupported: sliding-window attention (sliding_window = ", sw, ")"));
  }

  if (cfg.contains("rope_scaling") && !cfg["rope_scaling"].is_null()) {
    const json& rs = cfg["rope_scaling"];
    if (!rs.is_object()) throw Error("config.json: 'rope_scaling' must be an object");
    std::string type = get_opt<std::string>(rs, "rope_type", get_opt<std::string>(rs, "type", "default"));
    if (type == "default") {
      // no scaling
    } else if (type == "linear" || type == "llama3") {
      s.rope_scaling.type = type;
      s.rope_scaling.factor = get_req<double>(rs, "factor");
      if (type == "llama3") {
        s.rope_scaling.low_freq_factor = get_req<double>(rs, "low_freq_factor");
        s.rope_scaling.high_freq_factor = get_req<double>(rs, "high_freq_factor");
        s.rope_scaling.original_max_position_embeddings =
            get_req<int64_t>(rs, "original_max_position_embeddings");
      }
    } else {
      throw Error(cat("unsupported rope_scaling type '", type, "' (supported: linear, llama3)"));
    }
  }

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
  }
  return inv;
}

}  // namespace llmserve
