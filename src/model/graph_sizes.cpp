#include "model/graph_sizes.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>

#include "common/error.h"
#include "common/json_text.h"
#include "config/config.h"
#include "model/decode_graphs.h"
#include "model/mixed_graphs.h"

namespace llmserve {

const char* const kCudagraphModes = "NONE, PIECEWISE, FULL, FULL_DECODE_ONLY or FULL_AND_PIECEWISE";

namespace {

std::vector<int64_t> at_most(const std::vector<int64_t>& sizes, int64_t top) {
  std::vector<int64_t> out;
  for (int64_t s : sizes)
    if (s <= top) out.push_back(s);
  return out;
}

// vLLM's older cuda_graph_sizes: one value is the largest size, several are the sizes.
void resolve_older_sizes(const Config& cfg, std::vector<int64_t>& sizes, int64_t& max) {
  if (cfg.cuda_graph_sizes.size() == 1) max = cfg.cuda_graph_sizes[0];
  if (cfg.cuda_graph_sizes.size() > 1) sizes = cfg.cuda_graph_sizes;
}

}  // namespace

GraphPlan graph_plan(const Config& cfg) {
  const std::string mode = !cfg.cudagraph_mode.empty() ? cfg.cudagraph_mode : cfg.optimization_level == 0 ? "NONE" : "FULL_AND_PIECEWISE";
  GraphPlan plan;
  if (cfg.enforce_eager || mode == "NONE") return plan;
  std::vector<int64_t> sizes = cfg.cudagraph_capture_sizes;
  int64_t max = cfg.max_cudagraph_capture_size;
  resolve_older_sizes(cfg, sizes, max);
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  const int64_t mixed_top = std::min(MixedGraphs::kMaxTokens, cfg.max_num_batched_tokens);
  if (!sizes.empty()) {
    plan.decode = at_most(sizes, cfg.max_num_seqs);
    plan.mixed = at_most(sizes, mixed_top);
  } else {
    plan.decode = DecodeGraphs::bucket_sizes(cfg.max_num_seqs);
    plan.mixed = MixedGraphs::bucket_sizes(cfg.max_num_batched_tokens);
    if (max >= 0) {
      plan.decode = at_most(plan.decode, max);
      plan.mixed = at_most(plan.mixed, max);
    }
  }
  if (mode == "FULL_DECODE_ONLY") plan.mixed.clear();
  return plan;
}

void apply_optimization_level(Config& cfg, const std::string& level) {
  if (level.size() != 1 || level[0] < '0' || level[0] > '3')
    throw Error(cat("config: the optimization level (-O) must be 0, 1, 2 or 3, got '", level, "'"));
  cfg.optimization_level = level[0] - '0';
}

void apply_compilation_config(Config& cfg, const std::string& text) {
  if (text.size() == 1 && std::isdigit(static_cast<unsigned char>(text[0]))) return apply_optimization_level(cfg, text);
  nlohmann::json j;
  try {
    j = parse_json(text);
  } catch (const std::exception&) {
    throw Error(cat("config: compilation_config must be a JSON object (or an optimization level 0-3), got '", text, "'"));
  }
  if (!j.is_object()) throw Error(cat("config: compilation_config must be a JSON object, got '", text, "'"));
  // torch.compile's settings: llmserve compiles nothing at run time, so they change nothing here.
  static const char* const no_effect[] = {
      "level", "mode", "backend", "custom_ops", "splitting_ops", "use_inductor", "compile_sizes", "inductor_compile_config",
      "inductor_passes", "pass_config", "cudagraph_num_of_warmups", "cudagraph_copy_inputs", "cudagraph_specialize_lora",
      "use_inductor_graph_partition", "debug_dump_path", "cache_dir", "compile_cache_save_format", "compile_mm_encoder",
      "dynamic_shapes_config", "full_cuda_graph"};
  auto sizes_of = [](const nlohmann::json& v, const char* key) {
    if (!v.is_array()) throw Error(cat("config: compilation_config.", key, " must be a list of positive integers"));
    std::vector<int64_t> out;
    for (const auto& x : v) {
      if (!x.is_number_integer() || x.get<int64_t>() < 1)
        throw Error(cat("config: compilation_config.", key, " must be a list of positive integers, got ", x.dump()));
      out.push_back(x.get<int64_t>());
    }
    return out;
  };
  for (const auto& [key, v] : j.items()) {
    if (v.is_null()) continue;
    if (key == "cudagraph_mode") {
      if (!v.is_string()) throw Error(cat("config: compilation_config.cudagraph_mode must be ", kCudagraphModes));
      set_cudagraph_mode(cfg, v.get<std::string>());
    } else if (key == "cudagraph_capture_sizes") {
      cfg.cudagraph_capture_sizes = sizes_of(v, "cudagraph_capture_sizes");
    } else if (key == "max_cudagraph_capture_size") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0)
        throw Error(cat("config: compilation_config.max_cudagraph_capture_size must be an integer >= 0, got ", v.dump()));
      cfg.max_cudagraph_capture_size = v.get<int64_t>();
    } else if (key == "use_cudagraph") {  // (vLLM's older switch)
      if (!v.is_boolean()) throw Error("config: compilation_config.use_cudagraph must be true or false");
      if (!v.get<bool>()) cfg.cudagraph_mode = "NONE";
    } else if (std::find(std::begin(no_effect), std::end(no_effect), key) == std::end(no_effect)) {
      throw Error(cat("config: compilation_config key '", key, "' is not known (llmserve reads cudagraph_mode, "
                      "cudagraph_capture_sizes, max_cudagraph_capture_size and use_cudagraph; torch.compile's keys are "
                      "accepted without effect)"));
    }
  }
}

void set_cudagraph_mode(Config& cfg, const std::string& mode) {
  std::string m = mode;
  std::transform(m.begin(), m.end(), m.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  if (m != "NONE" && m != "PIECEWISE" && m != "FULL" && m != "FULL_DECODE_ONLY" && m != "FULL_AND_PIECEWISE")
    throw Error(cat("config: cudagraph_mode must be ", kCudagraphModes, ", got '", mode, "'"));
  cfg.cudagraph_mode = m;
}

}  // namespace llmserve
