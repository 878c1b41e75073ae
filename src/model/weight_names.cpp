#include "model/weight_names.h"

namespace llmserve {

std::string layer_prefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

std::string expert_prefix(int layer, int64_t expert) {
  return layer_prefix(layer) + "mlp.experts." + std::to_string(expert) + ".";
}

std::string mixtral_weight_name(const std::string& name) {
  static const std::pair<std::string, std::string> kParts[] = {
      {"mlp.gate.weight", "block_sparse_moe.gate.weight"}, {"gate_proj.weight", "w1.weight"},
      {"up_proj.weight", "w3.weight"}, {"down_proj.weight", "w2.weight"}};
  const size_t at = name.find(".mlp.");
  if (at == std::string::npos) return name;
  std::string m = name;
  if (name.compare(at + 1, 15, "mlp.gate.weight") == 0) return m.replace(at + 1, 15, kParts[0].second);
  if (name.compare(at + 1, 12, "mlp.experts.") != 0) return name;
  m.replace(at + 1, 4, "block_sparse_moe.");
  for (size_t i = 1; i < 4; ++i) {
    const std::string& tail = kParts[i].first;
    if (m.size() > tail.size() && m.compare(m.size() - tail.size(), tail.size(), tail) == 0)
      return m.replace(m.size() - tail.size(), tail.size(), kParts[i].second);
  }
  return name;
}

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
    if (moe_layer(s, l)) {  // (Qwen3-MoE's names; the converter reads Mixtral's block_sparse_moe.* as them)
      const int64_t E = s.num_experts, M = s.moe_intermediate_size;
      w.push_back({p + "mlp.gate.weight", {E, H}});
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = expert_prefix(l, e);
        w.push_back({x + "gate_proj.weight", {M, H}});
        w.push_back({x + "up_proj.weight", {M, H}});
        w.push_back({x + "down_proj.weight", {H, M}});
      }
      if (const int64_t S = s.shared_expert_intermediate_size; S > 0) {  // (Qwen2-MoE)
        w.push_back({p + "mlp.shared_expert.gate_proj.weight", {S, H}});
        w.push_back({p + "mlp.shared_expert.up_proj.weight", {S, H}});
        w.push_back({p + "mlp.shared_expert.down_proj.weight", {H, S}});
        w.push_back({p + "mlp.shared_expert_gate.weight", {1, H}});
      }
      continue;
    }
    w.push_back({p + "mlp.gate_proj.weight", {I, H}});
    w.push_back({p + "mlp.up_proj.weight", {I, H}});
    w.push_back({p + "mlp.down_proj.weight", {H, I}});
  }
  w.push_back({"model.norm.weight", {H}});
  if (!s.tie_word_embeddings) w.push_back({"lm_head.weight", {V, H}});
  return w;
}

}  // namespace llmserve
