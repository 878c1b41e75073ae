#include "model/model_file.h"

#include "common/error.h"

namespace llmserve {

void write_model_spec(hid_t g, const ModelSpec& s) {
  using h5::write_attr;
  write_attr(g, "architecture", s.architecture);
  write_attr(g, "model_type", s.model_type);
  write_attr(g, "hidden_size", s.hidden_size);
  write_attr(g, "intermediate_size", s.intermediate_size);
  write_attr(g, "num_hidden_layers", static_cast<int64_t>(s.num_layers));
  write_attr(g, "num_attention_heads", static_cast<int64_t>(s.num_heads));
  write_attr(g, "num_key_value_heads", static_cast<int64_t>(s.num_kv_heads));
  write_attr(g, "head_dim", static_cast<int64_t>(s.head_dim));
  write_attr(g, "vocab_size", s.vocab_size);
  write_attr(g, "rms_norm_eps", s.rms_norm_eps);
  write_attr(g, "rope_theta", s.rope_theta);
  write_attr(g, "rope_scaling_type", s.rope_scaling.type);
  write_attr(g, "rope_scaling_factor", s.rope_scaling.factor);
  write_attr(g, "rope_scaling_low_freq_factor", s.rope_scaling.low_freq_factor);
  write_attr(g, "rope_scaling_high_freq_factor", s.rope_scaling.high_freq_factor);
  write_attr(g, "rope_scaling_original_max_position_embeddings", s.rope_scaling.original_max_position_embeddings);
  if (s.rope_scaling.type == "yarn") {  // (only there: files of other models stay as they were)
    write_attr(g, "rope_scaling_beta_fast", s.rope_scaling.beta_fast);
    write_attr(g, "rope_scaling_beta_slow", s.rope_scaling.beta_slow);
    write_attr(g, "rope_scaling_attention_factor", s.rope_scaling.attention_factor);
    write_attr(g, "rope_scaling_mscale", s.rope_scaling.mscale);
    write_attr(g, "rope_scaling_mscale_all_dim", s.rope_scaling.mscale_all_dim);
    write_attr(g, "rope_scaling_truncate", static_cast<int64_t>(s.rope_scaling.truncate));
  }
  write_attr(g, "max_position_embeddings", s.max_position_embeddings);
  if (s.sliding_window > 0) {  // (only there, as yarn's)
    write_attr(g, "sliding_window", s.sliding_window);
    write_attr(g, "sliding_window_layers", s.sliding_window_layers);
  }
  write_attr(g, "tie_word_embeddings", static_cast<int64_t>(s.tie_word_embeddings));
  write_attr(g, "attention_bias", static_cast<int64_t>(s.attention_bias));
  write_attr(g, "qk_norm", static_cast<int64_t>(s.qk_norm));
  if (s.num_experts > 0) {  // (only there, as yarn's)
    write_attr(g, "num_experts", static_cast<int64_t>(s.num_experts));
    write_attr(g, "num_experts_per_tok", static_cast<int64_t>(s.num_experts_per_tok));
    write_attr(g, "moe_intermediate_size", s.moe_intermediate_size);
    write_attr(g, "norm_topk_prob", static_cast<int64_t>(s.norm_topk_prob));
    write_attr(g, "decoder_sparse_step", static_cast<int64_t>(s.decoder_sparse_step));
    write_attr(g, "mlp_only_layers", s.mlp_only_layers);
    if (s.shared_expert_intermediate_size > 0) write_attr(g, "shared_expert_intermediate_size", s.shared_expert_intermediate_size);
  }
  write_attr(g, "torch_dtype", s.torch_dtype);
  write_attr(g, "bos_token_id", s.bos_token_id);
  write_attr(g, "eos_token_ids", s.eos_token_ids);
}

ModelSpec read_model_spec(hid_t g) {
  using namespace h5;
  ModelSpec s;
  s.architecture = read_attr_str(g, "architecture");
  s.model_type = read_attr_str(g, "model_type");
  s.hidden_size = read_attr_i64(g, "hidden_size");
  s.intermediate_size = read_attr_i64(g, "intermediate_size");
  s.num_layers = static_cast<int>(read_attr_i64(g, "num_hidden_layers"));
  s.num_heads = static_cast<int>(read_attr_i64(g, "num_attention_heads"));
  s.num_kv_heads = static_cast<int>(read_attr_i64(g, "num_key_value_heads"));
  s.head_dim = static_cast<int>(read_attr_i64(g, "head_dim"));
  s.vocab_size = read_attr_i64(g, "vocab_size");
  s.rms_norm_eps = read_attr_f64(g, "rms_norm_eps");
  s.rope_theta = read_attr_f64(g, "rope_theta");
  s.rope_scaling.type = read_attr_str(g, "rope_scaling_type");
  s.rope_scaling.factor = read_attr_f64(g, "rope_scaling_factor");
  s.rope_scaling.low_freq_factor = read_attr_f64(g, "rope_scaling_low_freq_factor");
  s.rope_scaling.high_freq_factor = read_attr_f64(g, "rope_scaling_high_freq_factor");
  s.rope_scaling.original_max_position_embeddings =
      read_attr_i64(g, "rope_scaling_original_max_position_embeddings");
  if (s.rope_scaling.type == "yarn") {
    s.rope_scaling.beta_fast = read_attr_f64(g, "rope_scaling_beta_fast");
    s.rope_scaling.beta_slow = read_attr_f64(g, "rope_scaling_beta_slow");
    s.rope_scaling.attention_factor = read_attr_f64(g, "rope_scaling_attention_factor");
    s.rope_scaling.mscale = read_attr_f64(g, "rope_scaling_mscale");
    s.rope_scaling.mscale_all_dim = read_attr_f64(g, "rope_scaling_mscale_all_dim");
    s.rope_scaling.truncate = read_attr_i64(g, "rope_scaling_truncate") != 0;
  }
  s.max_position_embeddings = read_attr_i64(g, "max_position_embeddings");
  if (h5::has_attr(g, "sliding_window")) {
    s.sliding_window = read_attr_i64(g, "sliding_window");
    if (h5::has_attr(g, "sliding_window_layers")) {
      s.sliding_window_layers = read_attr_i64_vec(g, "sliding_window_layers");
    } else if (s.model_type == "mistral" || s.model_type == "mixtral" || s.model_type == "qwen3_moe") {
      for (int l = 0; l < s.num_layers; ++l) s.sliding_window_layers.push_back(l);  // (every layer's, as converted)
    } else {  // (a Qwen2 / Qwen3 / Qwen2-MoE file converted before the window's layers were kept)
      throw Error(cat("a sliding window of ", s.sliding_window,
                      " without the layers that have it (converted by an older llmserve-convert); convert the model again"));
    }
  }
  s.tie_word_embeddings = read_attr_i64(g, "tie_word_embeddings") != 0;
  s.attention_bias = read_attr_i64(g, "attention_bias") != 0;
  s.qk_norm = h5::has_attr(g, "qk_norm") && read_attr_i64(g, "qk_norm") != 0;  // (files converted before it have none)
  if (h5::has_attr(g, "num_experts")) {
    s.num_experts = static_cast<int>(read_attr_i64(g, "num_experts"));
    s.num_experts_per_tok = static_cast<int>(read_attr_i64(g, "num_experts_per_tok"));
    s.moe_intermediate_size = read_attr_i64(g, "moe_intermediate_size");
    s.norm_topk_prob = read_attr_i64(g, "norm_topk_prob") != 0;
    s.decoder_sparse_step = static_cast<int>(read_attr_i64(g, "decoder_sparse_step"));
    s.mlp_only_layers = read_attr_i64_vec(g, "mlp_only_layers");
    if (h5::has_attr(g, "shared_expert_intermediate_size"))
      s.shared_expert_intermediate_size = read_attr_i64(g, "shared_expert_intermediate_size");
  }
  s.torch_dtype = read_attr_str(g, "torch_dtype");
  s.bos_token_id = read_attr_i64(g, "bos_token_id");
  s.eos_token_ids = read_attr_i64_vec(g, "eos_token_ids");
  model_spec_validate(s);
  return s;
}

ModelFile::ModelFile(const std::string& path) : path_(path), file_(h5::open_file(path)) {
  try {
    if (!h5::has_attr(file_.id(), "format") || h5::read_attr_str(file_.id(), "format") != kModelFormat)
      throw Error("not an llmserve model (convert checkpoints with llmserve-convert)");
    const int64_t v = h5::read_attr_i64(file_.id(), "format_version");
    if (v != kModelFormatVersion)
      throw Error(cat("format version ", v, " is not supported (expected ", kModelFormatVersion, ")"));
    h5::Handle g = h5::open_group(file_.id(), "config", "model file");
    spec_ = read_model_spec(g.id());
  } catch (const Error& e) {
    throw Error(cat("model file '", path, "': ", e.what()));
  }
}

bool ModelFile::has_weight(const std::string& name) const { return h5::exists(file_.id(), "weights/" + name); }

h5::Handle ModelFile::open_weight(const std::string& name) const {
  const std::string p = "weights/" + name;
  if (!h5::exists(file_.id(), "weights") || !h5::exists(file_.id(), p))
    throw Error(cat("model file '", path_, "': tensor '", name, "' missing"));
  hid_t d = H5Dopen2(file_.id(), p.c_str(), H5P_DEFAULT);
  if (d < 0) throw Error(cat("model file '", path_, "': cannot open tensor '", name, "'"));
  return h5::Handle(d, H5Dclose);
}

std::vector<int64_t> ModelFile::weight_shape(const std::string& name) const {
  h5::Handle d = open_weight(name);
  return h5::dataset_shape(d.id());
}

DType ModelFile::weight_dtype(const std::string& name) const {
  h5::Handle d = open_weight(name);
  return dtype_from_name(h5::read_attr_str(d.id(), "dtype"));
}

std::vector<float> ModelFile::read_f32(const std::string& name, int64_t r0, int64_t nr, int64_t c0,
                                       int64_t nc) const {
  h5::Handle d = open_weight(name);
  const auto shape = h5::dataset_shape(d.id());
  const DType dt = dtype_from_name(h5::read_attr_str(d.id(), "dtype"));
  if (shape.size() == 1) nc = 1, c0 = 0;
  const bool ok = r0 >= 0 && nr >= 0 && r0 + nr <= shape[0] &&
                  (shape.size() == 1 || (c0 >= 0 && nc >= 0 && c0 + nc <= shape[1]));
  if (!ok) throw Error(cat("model file '", path_, "': slice out of range for tensor '", name, "'"));
  const size_t n = static_cast<size_t>(nr * nc);
  std::vector<float> out(n);
  try {
    if (dt == DType::F32) {
      h5::read_slice(d.id(), H5T_NATIVE_FLOAT, r0, nr, c0, nc, out.data());
    } else {
      std::vector<uint16_t> raw(n);
      h5::read_slice(d.id(), H5T_NATIVE_UINT16, r0, nr, c0, nc, raw.data());
      to_f32(dt, raw.data(), out.data(), n);
    }
  } catch (const Error& e) {
    throw Error(cat("model file '", path_, "': reading tensor '", name, "': ", e.what()));
  }
  return out;
}

std::vector<float> ModelFile::read_all_f32(const std::string& name) const {
  const auto shape = weight_shape(name);
  return read_f32(name, 0, shape[0], 0, shape.size() > 1 ? shape[1] : 1);
}

std::optional<std::string> ModelFile::text(const std::string& group, const std::string& name) const {
  const std::string p = group + "/" + name;
  if (!h5::exists(file_.id(), group) || !h5::exists(file_.id(), p)) return std::nullopt;
  return h5::read_text(file_.id(), p);
}

}  // namespace llmserve
