// LoRA adapters (vLLM's enable_lora / lora_modules): PEFT checkpoints (adapter_config.json and
// adapter_model.safetensors) of low-rank updates to a decoder layer's projections. A request that names
// an adapter as its `model` computes every adapted projection as y = x W^T + s (x A^T) B^T, with
// s = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), A [r, in] and B [out, r].
#pragma once
#include <array>
#include <string>
#include <vector>

#include "model/model_spec.h"

namespace llmserve {

// One entry of lora_modules: "name=path", or a JSON object {"name", "path", "base_model_name"} (vLLM's two
// forms). Throws Error on anything else.
struct LoraModuleSpec {
  std::string name, path, base_model_name;
};
LoraModuleSpec parse_lora_module(const std::string& text);
// The slot of the adapter named `name` (1 + its index in `adapters`), 0 when none is.
int32_t lora_slot(const std::vector<LoraModuleSpec>& adapters, const std::string& name);
// An offline request's `model` (llmserve generate / logits lines): absent, null, the model's path or one of
// `served` names the base model (0); an adapter's name its slot; anything else is an Error.
int32_t request_lora(const std::vector<LoraModuleSpec>& adapters, const std::string* model, const std::string& path,
                     const std::vector<std::string>& served);

// The projections an adapter may update (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
enum LoraTarget : int { kLoraQ, kLoraK, kLoraV, kLoraO, kLoraGate, kLoraUp, kLoraDown, kLoraTargets };
// Its module name in a PEFT checkpoint ("q_proj", ...).
const char* lora_target_name(LoraTarget t);

// One projection's update, float32, row-major; both empty where the adapter leaves it alone.
struct LoraMatrices {
  std::vector<float> a;  // [rank, in]
  std::vector<float> b;  // [out, rank], multiplied by the adapter's scaling
};

struct LoraAdapter {
  std::string name, path, base_model_name;
  int rank = 0;
  double scaling = 0;
  std::vector<std::array<LoraMatrices, kLoraTargets>> layers;  // one per layer of the model
};

// Reads and checks the adapter of `spec` for `model`: rank at most max_rank; only the layers' q/k/v/o and
// gate/up/down projections adapted (embed_tokens, lm_head, modules_to_save, biases and DoRA are refused);
// every tensor's shape the model's. Throws Error naming the adapter.
LoraAdapter load_lora_adapter(const LoraModuleSpec& spec, const ModelSpec& model, int max_rank);

}  // namespace llmserve
