#include "model/weight_names.h"

namespace llmserve {

std::string layer_prefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

std::vector<WeightInfo> expected_weights(const ModelSpec& s) {
  const int64_t H = s.hidden_size, I = s.intermediate_size, V = s.vocab_size;
  const int64_t Q = static_cast<int64_t>(s.num_heads) * s.head_dim;
  const int64_t KV = static_cast<int64_t>(s.num_kv_heads) * s.head_dim;
  std::vector<WeightInfo> w;
  w.push_back({"model.embed_tokens.weight", {V, H}});
  for (int l = 0; l < s.num_layers; ++l) {
    const std::string p = layer_prefix(l);
    w.push_back({p + "input_layernorm.weight", {H}});
    w.push_back({p + "self_attn.q_proj.weight", {Q, H}});
    w.push_back({p + "self_attn.k_proj.weight", {KV, H}});
    w.push_back({p + "self_attn.v_proj.weight", {KV, H}});
    if (s.attention_bias) {
      w.push_back({p + "self_attn.q_proj.bias", {Q}});
      w.push_back({p + "self_attn.k_proj.bias", {KV}});
      w.push_back({p + "self_attn.v_proj.bias", {KV}});
    }
    if (s.qk_norm) {
      w.push_back({p + "self_attn.q_norm.weight", {s.head_dim}});
      w.push_back({p + "self_attn.k_norm.weight", {s.head_dim}});
    }
    w.push_back({p + "self_attn.o_proj.weight", {H, Q}});
    w.push_back({p + "post_attention_layernorm.weight", {H}});
    w.push_back({p + "mlp.gate_proj.weight", {I, H}});
    w.push_back({p + "mlp.up_proj.weight", {I, H}});
    w.push_back({p + "mlp.down_proj.weight", {H, I}});
  }
  w.push_back({"model.norm.weight", {H}});
  if (!s.tie_word_embeddings) w.push_back({"lm_head.weight", {V, H}});
  return w;
}

}  // namespace llmserve
