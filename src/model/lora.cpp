#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/error.h"
#include "convert/safetensors.h"

namespace llmserve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
const char* const kTargetNames[kLoraTargets] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
}  // namespace

const char* lora_target_name(LoraTarget t) { return kTargetNames[t]; }

LoraModuleSpec parse_lora_module(const std::string& text) {
  LoraModuleSpec m;
  if (!text.empty() && text[0] == '{') {
    const json j = json::parse(text, nullptr, false);
    const auto str = [&](const char* k) { return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string(); };
    if (!j.is_object() || !j.contains("name") || !j.contains("path") || !j["name"].is_string() || !j["path"].is_string())
      throw Error(cat("lora_modules: '", text, "' is not an object with string \"name\" and \"path\""));
    for (const auto& [k, v] : j.items())
      if (k != "name" && k != "path" && k != "base_model_name")
        throw Error(cat("lora_modules: unknown key '", k, "' (known: name, path, base_model_name)"));
    m.name = str("name"), m.path = str("path"), m.base_model_name = str("base_model_name");
  } else {
    const size_t eq = text.find('=');
    if (eq == std::string::npos) throw Error(cat("lora_modules: '", text, "' is not name=path or a JSON object"));
    m.name = text.substr(0, eq), m.path = text.substr(eq + 1);
  }
  if (m.name.empty() || m.path.empty()) throw Error(cat("lora_modules: '", text, "' needs a name and a path"));
  if (m.name.find_first_of("\"\\,\n\r") != std::string::npos)  // (names go into /metrics labels, comma-separated)
    throw Error(cat("lora_modules: the name '", m.name, "' holds a quote, backslash, comma or line break"));
  return m;
}

int32_t lora_slot(const std::vector<LoraModuleSpec>& adapters, const std::string& name) {
  for (size_t i = 0; i < adapters.size(); ++i)
    if (adapters[i].name == name) return static_cast<int32_t>(i + 1);
  return 0;
}

int32_t request_lora(const std::vector<LoraModuleSpec>& adapters, const std::string* model, const std::string& path,
                     const std::vector<std::string>& served) {
  if (!model || *model == path || std::find(served.begin(), served.end(), *model) != served.end()) return 0;
  if (const int32_t slot = lora_slot(adapters, *model)) return slot;
  throw Error(cat("model '", *model, "' is neither the model nor a LoRA adapter of lora_modules"));
}

LoraAdapter load_lora_adapter(const LoraModuleSpec& spec, const ModelSpec& model, int max_rank) {
  const std::string who = cat("LoRA adapter '", spec.name, "' (", spec.path, ")");
  const fs::path dir(spec.path);
  std::ifstream cf(dir / "adapter_config.json");
  if (!cf) throw Error(cat(who, ": cannot read adapter_config.json"));
  const json cfg = json::parse(cf, nullptr, false);
  if (!cfg.is_object()) throw Error(cat(who, ": adapter_config.json is not a JSON object"));
  if (cfg.contains("peft_type") && cfg["peft_type"] != "LORA")
    throw Error(cat(who, ": peft_type ", cfg["peft_type"].dump(), " is not supported (LORA only)"));
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int>() < 1)
    throw Error(cat(who, ": adapter_config.json needs \"r\", a positive integer"));
  const int r = cfg["r"].get<int>();
  if (r > max_rank) throw Error(cat(who, ": LoRA rank ", r, " is greater than max_lora_rank ", max_rank));
  const double alpha = cfg.contains("lora_alpha") && cfg["lora_alpha"].is_number() ? cfg["lora_alpha"].get<double>() : 8.0;
  if (cfg.value("use_dora", false) == true) throw Error(cat(who, ": DoRA (use_dora) is not supported"));
  if (cfg.contains("bias") && cfg["bias"].is_string() && cfg["bias"] != "none")
    throw Error(cat(who, ": bias \"", cfg["bias"].get<std::string>(), "\" is not supported (none only)"));
  if (cfg.contains("modules_to_save") && !cfg["modules_to_save"].is_null() && !cfg["modules_to_save"].empty())
    throw Error(cat(who, ": modules_to_save (whole modules saved with the adapter) is not supported"));
  const bool rslora = cfg.value("use_rslora", false) == true;

  const fs::path weights = dir / "adapter_model.safetensors";
  if (!fs::exists(weights))
    throw Error(cat(who, ": no adapter_model.safetensors (adapters saved as PyTorch .bin files are not supported)"));
  SafetensorsFile file(weights.string());

  LoraAdapter a;
  a.name = spec.name, a.path = spec.path, a.base_model_name = spec.base_model_name;
  a.rank = r;
  a.scaling = rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r;
  a.layers.resize(static_cast<size_t>(model.num_layers));
  const int64_t H = model.hidden_size, I = model.intermediate_size;
  const int64_t qn = int64_t{model.num_heads} * model.head_dim, kn = int64_t{model.num_kv_heads} * model.head_dim;
  const int64_t in[kLoraTargets] = {H, H, H, qn, H, H, I}, out[kLoraTargets] = {qn, kn, kn, H, I, I, H};
  // base_model.model.model.layers.<l>.<self_attn|mlp>.<proj>.lora_<A|B>[.<adapter>].weight
  static const std::regex name_re(
      R"(^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$)");
  for (const auto& [name, e] : file.entries()) {
    std::smatch mt;
    if (!std::regex_match(name, mt, name_re))
      throw Error(cat(who, ": tensor '", name,
                      "' is not a LoRA update of a layer's q/k/v/o or gate/up/down projection (others are not supported)"));
    const long layer = std::stol(mt[1].str());
    int t = 0;
    while (t < kLoraTargets && mt[2].str() != kTargetNames[t]) ++t;
    if (t == kLoraTargets || layer >= model.num_layers)
      throw Error(cat(who, ": tensor '", name, "' names no projection of this model"));
    const bool is_a = mt[3].str() == "A";
    const std::vector<int64_t> want = is_a ? std::vector<int64_t>{r, in[t]} : std::vector<int64_t>{out[t], r};
    if (e.shape != want)
      throw Error(cat(who, ": tensor '", name, "' has shape [", e.shape.empty() ? 0 : e.shape[0], ", ...], not [", want[0], ", ",
                      want[1], "] (rank ", r, ")"));
    LoraMatrices& m = a.layers[static_cast<size_t>(layer)][static_cast<size_t>(t)];
    (is_a ? m.a : m.b) = file.read_f32(name);
    if (!is_a)
      for (float& v : m.b) v = static_cast<float>(v * a.scaling);
  }
  bool any = false;
  for (size_t l = 0; l < a.layers.size(); ++l)
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraMatrices& m = a.layers[l][static_cast<size_t>(t)];
      if (m.a.empty() != m.b.empty())
        throw Error(cat(who, ": layer ", l, "'s ", kTargetNames[t], " has lora_", m.a.empty() ? "B" : "A", " without lora_",
                        m.a.empty() ? "A" : "B"));
      any = any || !m.a.empty();
    }
  if (!any) throw Error(cat(who, ": adapter_model.safetensors holds no LoRA tensors"));
  return a;
}

}  // namespace llmserve
