// A model's architecture and hyper-parameters, as llmserve uses them. Built from a Hugging Face
// config.json (or GGUF metadata by the converter), stored as attributes in the HDF5 model file.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace llmserve {

struct RopeScaling {
  std::string type = "none";  // none | linear | llama3 | yarn
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  // yarn (transformers' _compute_yarn_parameters): the ramp between rotation counts beta_fast and
  // beta_slow (its ends rounded outwards unless !truncate), and the factor applied to RoPE's cosines and
  // sines (attention_factor; 0: from mscale / mscale_all_dim, or 0.1 ln(factor) + 1).
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  bool truncate = true;
};

struct ModelSpec {
  // Qwen2ForCausalLM | Qwen3ForCausalLM | LlamaForCausalLM | MistralForCausalLM | Qwen2MoeForCausalLM |
  // Qwen3MoeForCausalLM | MixtralForCausalLM
  std::string architecture;
  std::string model_type;    // qwen2 | qwen3 | llama | mistral | qwen2_moe | qwen3_moe | mixtral
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t vocab_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  // Sliding-window attention in use (a sliding_window shorter than the context, and for the Qwen family
  // use_sliding_window): a position p of layer l in sliding_window_layers attends to the keys of positions
  // p - sliding_window + 1 .. p only (transformers' sliding_window_overlay), the other layers to the whole
  // context. The layers follow transformers' configs: config.json's layer_types where the architecture reads
  // it, else Qwen2 / Qwen3 layers from max_window_layers on, Qwen2-MoE's layers 0, 2, 4, ...
  // below max_window_layers, every layer of Mistral, Mixtral and Qwen3-MoE. 0: none (and no layers).
  int64_t sliding_window = 0;
  std::vector<int64_t> sliding_window_layers;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections have a bias (Qwen2: always; Qwen2-MoE: qkv_bias, default on)
  bool qk_norm = false;         // each query and key head is RMS-normalized before RoPE (Qwen3: always)
  // Mixture of experts (Qwen2-MoE, Qwen3-MoE, Mixtral): a sparse layer's MLP is num_experts experts of
  // moe_intermediate_size, of which each token takes the num_experts_per_tok whose router probabilities
  // (softmax over all experts) are highest, their outputs weighted by those probabilities (renormalized to
  // sum 1 over the chosen where norm_topk_prob). Layer l is sparse unless it is in mlp_only_layers or
  // (l + 1) is not a multiple of decoder_sparse_step (Qwen3-MoE's rule; a dense layer's MLP has
  // intermediate_size). num_experts 0: a dense model.
  int num_experts = 0;
  int num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  int decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  // Qwen2-MoE's shared expert: every sparse layer also runs a SwiGLU MLP of this intermediate size on every
  // token, its output scaled by sigmoid(h . shared_expert_gate) and added to the chosen experts'. 0: none.
  int64_t shared_expert_intermediate_size = 0;
  std::string torch_dtype = "bfloat16";
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
};

// Whether layer `layer`'s MLP is a mixture of experts (ModelSpec::num_experts).
bool moe_layer(const ModelSpec& s, int layer);
// The sliding window of layer `layer`'s attention (ModelSpec::sliding_window_layers), or 0: the whole context.
int64_t attention_window(const ModelSpec& s, int layer);
// The sliding window when every layer has it (Mistral's, Mixtral's), else 0: only then may the KV blocks
// before a sequence's window be given back (one block table serves every layer).
int64_t window_of_every_layer(const ModelSpec& s);

// Parses a Hugging Face config.json. Throws Error("unsupported architecture X") for anything but
// Qwen2/Qwen3/Llama/Mistral-style decoders and the Qwen2-MoE / Qwen3-MoE / Mixtral mixtures of experts, and Error naming the field for missing or bad values.
ModelSpec model_spec_from_hf_config(const nlohmann::json& cfg);

// Checks internal consistency (positive sizes, heads divide hidden, ...). Throws Error.
void model_spec_validate(const ModelSpec& s);

// Checks that the model can be split as asked. Throws Error with the numbers.
void model_spec_check_layout(const ModelSpec& s, int tp, int pp);

// RoPE inverse frequencies (head_dim / 2 values), with the model's scaling applied, computed in
// float32 the way transformers does.
std::vector<float> rope_inv_freq(const ModelSpec& s);
// The factor RoPE's cosines and sines are multiplied by (yarn; 1 otherwise). Both rotated queries and
// keys carry it, so the model applies its square to the attention scores' scale instead.
double rope_attention_factor(const ModelSpec& s);
// hf_overrides (a JSON object) on a converted model: rope_theta, rope_scaling / rope_parameters and
// max_position_embeddings, what its weights do not fix (anything else is refused). Validates the result.
void apply_hf_overrides(ModelSpec& s, const std::string& overrides);
// The longest context the model serves (max_model_len's default and bound), as vLLM derives it:
// max_position_embeddings, times the factor of linear scaling, or yarn's original context times its factor.
int64_t model_context_length(const ModelSpec& s);

}  // namespace llmserve
