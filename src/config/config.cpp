#include "config/config.h"

#include <sys/un.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>

#include "common/dtype.h"
#include "common/error.h"
#include "common/json_text.h"
#include "common/text.h"
#include "engine/sampling_params.h"
#include "engine/speculative.h"
#include "kv/block_manager.h"
#include "model/graph_sizes.h"
#include "model/lora.h"
#include "model/pooler_config.h"

namespace llmserve {
namespace {

enum class Kind { Int, Float, Bool, String, StringList };

struct Option {
  const char* key;
  Kind kind;
  const char* help;
  std::function<void(Config&, const std::string&)> set;
  std::function<void(Config&)> clear = nullptr;  // lists: empties the list before a new source's values
};

// A list option given as a JSON list of strings ("[\"a\", \"b\"]") or one entry per flag.
void add_list_entries(std::vector<std::string>& out, const char* key, const std::string& v) {
  if (v.rfind("[", 0) != 0) return out.push_back(v);
  const Error bad(cat("config: ", key, " must be a JSON list of strings, got '", v, "'"));
  nlohmann::json j;
  try {
    j = parse_json(v);
  } catch (const std::exception&) {
    throw bad;
  }
  if (!j.is_array()) throw bad;
  for (const auto& x : j) {
    if (!x.is_string()) throw bad;
    out.push_back(x.get<std::string>());
  }
}

std::string kebab(const std::string& snake) {
  std::string s = snake;
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

int64_t parse_int(const std::string& key, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE)
    throw Error(cat("config: ", key, " must be an integer, got '", v, "'"));
  return x;
}

// vLLM's human_readable_int (max_model_len, max_num_batched_tokens): a plain integer, or one with a
// decimal suffix k, m, g, t (10^3 ..., decimals allowed: 25.6k = 25,600) or a binary one K, M, G, T
// (2^10 ..., whole numbers only: 128K = 131,072).
int64_t parse_human_int(const std::string& key, const std::string& v) {
  const size_t n = v.size();
  const char last = n ? v[n - 1] : '\0';
  const std::string decimal = "kmgt", binary = "KMGT";
  const size_t d = decimal.find(last), b = binary.find(last);
  if (n < 2 || (d == std::string::npos && b == std::string::npos)) return parse_int(key, v);
  const std::string number = v.substr(0, n - 1);
  const bool digits = !number.empty() && std::isdigit(static_cast<unsigned char>(number[0])) &&
                      std::all_of(number.begin(), number.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)) || ch == '.'; }) &&
                      std::count(number.begin(), number.end(), '.') <= 1 && number.back() != '.';
  if (!digits) throw Error(cat("config: ", key, " must be an integer (or one like 32k, 25.6k or 128K), got '", v, "'"));
  if (b != std::string::npos && number.find('.') != std::string::npos)
    throw Error(cat("config: ", key, ": decimals are not allowed with binary suffixes like ", last, " ('", v,
                    "'); did you mean ", number, static_cast<char>(std::tolower(last)), "?"));
  const double mult = d != std::string::npos ? std::pow(10.0, 3.0 * static_cast<double>(d + 1))
                                             : std::ldexp(1.0, 10 * static_cast<int>(b + 1));
  const double x = std::strtod(number.c_str(), nullptr) * mult;
  if (!(x < 9.2e18)) throw Error(cat("config: ", key, " is out of range: ", v));
  return static_cast<int64_t>(x);
}

int parse_int32(const std::string& key, const std::string& v) {
  int64_t x = parse_int(key, v);
  if (x < INT32_MIN || x > INT32_MAX) throw Error(cat("config: ", key, " is out of range: ", v));
  return static_cast<int>(x);
}

double parse_float(const std::string& key, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(x))
    throw Error(cat("config: ", key, " must be a number, got '", v, "'"));
  return x;
}

bool parse_bool(const std::string& key, const std::string& v) {
  const std::string s = ascii_lower(v);
  if (s == "true" || s == "yes" || s == "on" || s == "1") return true;
  if (s == "false" || s == "no" || s == "off" || s == "0") return false;
  throw Error(cat("config: ", key, " must be true or false, got '", v, "'"));
}

// A boolean option stored in Config's `field`.
Option bool_option(const char* key, bool Config::*field, const char* help) {
  return {key, Kind::Bool, help, [key, field](Config& c, const std::string& v) { c.*field = parse_bool(key, v); }};
}

// A list of positive sizes given as a JSON list ("[1, 2, 4]"), comma-separated, or one per flag.
void add_sizes(std::vector<int64_t>& out, const char* key, const std::string& v) {
  std::vector<std::string> items;
  if (v.rfind("[", 0) == 0) {
    nlohmann::json j;
    try {
      j = parse_json(v);
    } catch (const std::exception&) {
      j = nullptr;
    }
    if (!j.is_array()) throw Error(cat("config: ", key, " must be a list of positive integers, got '", v, "'"));
    for (const auto& x : j) items.push_back(x.dump());
  } else {
    std::stringstream ss(v);
    for (std::string x; std::getline(ss, x, ',');) items.push_back(trim(x));
  }
  for (const auto& x : items) {
    const int64_t n = parse_int(key, x);
    if (n < 1) throw Error(cat("config: ", key, " must be positive integers, got ", n));
    out.push_back(n);
  }
}

// Options vLLM gives several values after one flag (argparse's nargs "+"): whether the argument `next`
// after `key`'s flag is another of its values. --lora-modules: name=path or a JSON object;
// --cudagraph-capture-sizes and --cuda-graph-sizes: integers; --api-key: anything short of the next option
// and of a name that is a file, directory or .yaml / .yml / .h5 (the model or config positional; keys are none).
bool another_value(const std::string& key, const std::string& next) {
  if (next.empty() || next[0] == '-') return false;
  if (key == "lora_modules") return next.find('=') != std::string::npos || next[0] == '{';
  if (key == "cudagraph_capture_sizes" || key == "cuda_graph_sizes")
    return std::all_of(next.begin(), next.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); });
  if (key == "api_key")
    return !std::filesystem::exists(next) && !next.ends_with(".yaml") && !next.ends_with(".yml") && !next.ends_with(".h5");
  return false;
}

// A vLLM flag accepted so vLLM launch lines run, with no effect here (its help says why); its value
// must still be a boolean.
Option accepted_flag(const char* key, const char* help) {
  return {key, Kind::Bool, help, [key](Config&, const std::string& v) { parse_bool(key, v); }};
}

// The same for a vLLM count option: an integer of at least `least`, else an error.
Option accepted_count(const char* key, int least, const char* help) {
  return {key, Kind::Int, help, [key, least](Config&, const std::string& v) {
            if (parse_int32(key, v) < least) throw Error(cat("config: ", key, " must be at least ", least, ", got ", v));
          }};
}

// vLLM's structured-output backends; llmserve has its own (src/engine/guided.h) behind every name.
constexpr const char* kStructuredOutputsBackends = "auto, xgrammar, guidance, outlines or lm-format-enforcer";
bool structured_outputs_backend(const std::string& name) {
  return name == "auto" || name == "xgrammar" || name == "guidance" || name == "outlines" || name == "lm-format-enforcer";
}

// vLLM's structured_outputs_config, a JSON object: backend, disable_fallback, disable_any_whitespace,
// disable_additional_properties, reasoning_parser (as the reasoning_parser option), reasoning_parser_plugin
// (empty only), enable_in_reasoning (false only).
void set_structured_outputs_config(Config& c, const std::string& text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat("config: structured_outputs_config must be a JSON object, got '", text, "'"));
  auto boolean = [&](const std::string& key, const nlohmann::json& v) {
    if (!v.is_boolean()) throw Error(cat("config: structured_outputs_config: ", key, " must be true or false, got ", v.dump()));
    return v.get<bool>();
  };
  for (const auto& [key, v] : j.items()) {
    if (v.is_null()) continue;
    if (key == "backend") {
      if (!v.is_string() || !structured_outputs_backend(v.get<std::string>()))
        throw Error(cat("config: structured_outputs_config: backend must be ", kStructuredOutputsBackends, ", got ", v.dump()));
      c.structured_outputs_backend = v.get<std::string>();
    } else if (key == "disable_any_whitespace") {
      c.disable_any_whitespace = boolean(key, v);
    } else if (key == "disable_fallback" || key == "disable_additional_properties") {
      boolean(key, v);  // (one backend: nothing to fall back to; schemas are read as xgrammar reads them)
    } else if (key == "reasoning_parser") {
      if (!v.is_string()) throw Error(cat("config: structured_outputs_config: reasoning_parser must be a string, got ", v.dump()));
      if (!v.get<std::string>().empty()) c.reasoning_parser = v.get<std::string>();
    } else if (key == "reasoning_parser_plugin") {
      if (!v.is_string() || !v.get<std::string>().empty())
        throw Error("config: structured_outputs_config: reasoning_parser_plugin is not supported (llmserve loads no Python plugins)");
    } else if (key == "enable_in_reasoning") {
      if (boolean(key, v))
        throw Error("config: structured_outputs_config: enable_in_reasoning true is not supported: guided decoding applies after "
                    "the reasoning");
    } else {
      throw Error(cat("config: structured_outputs_config: '", key, "' is not supported (known: backend, disable_fallback, ",
                      "disable_any_whitespace, disable_additional_properties, reasoning_parser, enable_in_reasoning)"));
    }
  }
}

// vLLM's older guided_decoding_backend: a backend's name, with options after a colon (disable-any-whitespace,
// no-fallback, disable-additional-properties), as vLLM 0.8 took them.
void set_guided_decoding_backend(Config& c, const std::string& v) {
  const size_t colon = v.find(':');
  const std::string name = v.substr(0, colon);
  if (!structured_outputs_backend(name))
    throw Error(cat("config: guided_decoding_backend must be ", kStructuredOutputsBackends, ", got '", v, "'"));
  c.structured_outputs_backend = name;
  if (colon == std::string::npos) return;
  std::stringstream opts(v.substr(colon + 1));
  for (std::string o; std::getline(opts, o, ',');) {
    o = trim(o);
    if (o == "disable-any-whitespace") {
      c.disable_any_whitespace = true;
    } else if (o != "no-fallback" && o != "disable-additional-properties") {
      throw Error(cat("config: guided_decoding_backend option '", o, "' is not supported (disable-any-whitespace, no-fallback, "
                      "disable-additional-properties)"));
    }
  }
}

// The same for a vLLM text option (any value).
Option accepted_text(const char* key, const char* help) {
  return {key, Kind::String, help, [](Config&, const std::string&) {}};
}

// A vLLM option accepted at the values that mean what llmserve does (`ok`, separated by '|'), refused with
// `why` at any other.
Option accepted_choice(const char* key, const char* ok, const char* why, const char* help) {
  return {key, Kind::String, help, [key, ok, why](Config&, const std::string& v) {
            const std::string all = std::string("|") + ok + "|";
            if (all.find("|" + v + "|") == std::string::npos) throw Error(cat("config: ", key, " '", v, "' is not supported: ", why));
          }};
}

// A vLLM option llmserve has no counterpart for, refused with the reason (a flag only when true).
Option refused_option(const char* key, Kind kind, const char* why) {
  return {key, kind, why, [key, kind, why](Config&, const std::string& v) {
            if (kind != Kind::Bool || parse_bool(key, v)) throw Error(cat("config: ", key, " is not supported: ", why));
          }};
}

const std::vector<Option>& options() {
  static const std::vector<Option> opts = {
      {"model", Kind::String, "path to the model file (.h5, made by llmserve-convert)",
       [](Config& c, const std::string& v) { c.model = v; }},
      {"dtype", Kind::String, "auto | half | float16 | bfloat16 | float | float32",
       [](Config& c, const std::string& v) { c.dtype = v; }},
      {"backend", Kind::String, "auto | cpu | cuda",
       [](Config& c, const std::string& v) { c.backend = v; }},
      {"load_format", Kind::String, "auto | dummy",
       [](Config& c, const std::string& v) { c.load_format = v; }},
      {"hf_overrides", Kind::String, "JSON object replacing config.json fields: of a dummy model any (e.g. '{\"num_hidden_layers\": 2}'), of a converted model rope_theta, rope_scaling, max_position_embeddings, is_matryoshka / matryoshka_dimensions, and architectures *ForSequenceClassification with classifier_from_token (is_original_qwen3_reranker, method)",
       [](Config& c, const std::string& v) { c.hf_overrides = v; }},
      {"tensor_parallel_size", Kind::Int, "ranks per tensor-parallel group (-tp)",
       [](Config& c, const std::string& v) { c.tensor_parallel_size = parse_int32("tensor_parallel_size", v); }},
      {"pipeline_parallel_size", Kind::Int, "pipeline stages (-pp)",
       [](Config& c, const std::string& v) { c.pipeline_parallel_size = parse_int32("pipeline_parallel_size", v); }},
      {"max_model_len", Kind::Int, "context length (0: the model's); 32k = 32,000, 32K = 32,768 (as vLLM)",
       [](Config& c, const std::string& v) { c.max_model_len = parse_human_int("max_model_len", v); }},
      {"block_size", Kind::Int, "KV-cache block size in tokens: 1, 8, 16, 32, 64 or 128",
       [](Config& c, const std::string& v) { c.block_size = parse_int32("block_size", v); }},
      {"gpu_memory_utilization", Kind::Float, "fraction of GPU memory for weights, activations and KV cache",
       [](Config& c, const std::string& v) { c.gpu_memory_utilization = parse_float("gpu_memory_utilization", v); }},
      {"swap_space", Kind::Float, "GiB of host memory per rank for swapped-out KV blocks",
       [](Config& c, const std::string& v) { c.swap_space = parse_float("swap_space", v); }},
      {"quantization", Kind::String, "none, or fp8: the layers' matrices quantized to FP8 E4M3 at load, a power-of-two scale per row (vLLM's awq, gptq, ... are not supported; GGUF files are dequantized by llmserve-convert)",
       [](Config& c, const std::string& v) { c.quantization = v; }},
      {"kv_cache_dtype", Kind::String, "auto (the KV cache in the model's dtype), or fp8 / fp8_e4m3: keys and values stored as FP8 E4M3 with scale 1, as vLLM without calibrated scales (half the 16-bit cache's bytes on a GPU, a quarter of float32's on the CPU)",
       [](Config& c, const std::string& v) { c.kv_cache_dtype = v; }},
      {"cpu_offload_gb", Kind::Float, "GiB of weights per GPU kept in pinned host memory, read over the bus at every step (the first layers' matrices; no effect on the CPU backend)",
       [](Config& c, const std::string& v) { c.cpu_offload_gb = parse_float("cpu_offload_gb", v); }},
      {"kv_cache_memory_gb", Kind::Float, "GiB per rank for the KV cache (0: 1 GiB on the CPU backend, the gpu_memory_utilization plan on GPUs)",
       [](Config& c, const std::string& v) { c.kv_cache_memory_gb = parse_float("kv_cache_memory_gb", v); }},
      {"kv_cache_memory_bytes", Kind::Int,
       "vLLM's name for the KV cache's size per rank in bytes (a plain integer, or 512M, 16G, 1.5g as vLLM reads them): "
       "kv_cache_memory_gb in bytes (not both in one place; the command line's overrides the file's)",
       [](Config& c, const std::string& v) {
         const int64_t bytes = parse_human_int("kv_cache_memory_bytes", v);
         if (bytes <= 0) throw Error(cat("config: kv_cache_memory_bytes must be at least 1, got '", v, "'"));
         c.kv_cache_memory_gb = static_cast<double>(bytes) / static_cast<double>(int64_t{1} << 30);
       }},
      {"num_gpu_blocks_override", Kind::Int, "use exactly this many KV-cache blocks (0: from the memory budget)",
       [](Config& c, const std::string& v) { c.num_gpu_blocks_override = parse_int("num_gpu_blocks_override", v); }},
      {"max_num_seqs", Kind::Int, "maximum sequences in one step",
       [](Config& c, const std::string& v) { c.max_num_seqs = parse_int32("max_num_seqs", v); }},
      {"max_num_batched_tokens", Kind::Int, "maximum tokens in one step (0: automatic); 8k, 8K as max_model_len",
       [](Config& c, const std::string& v) { c.max_num_batched_tokens = parse_human_int("max_num_batched_tokens", v); }},
      bool_option("enable_chunked_prefill", &Config::enable_chunked_prefill, "split long prompts across steps"),
      {"long_prefill_token_threshold", Kind::Int,
       "with chunked prefill, a sequence's prompt goes at most this many tokens a step, so a long prompt shares steps "
       "with others' decodes and prompts (vLLM's; 0: no cap, the step's budget only)",
       [](Config& c, const std::string& v) { c.long_prefill_token_threshold = parse_human_int("long_prefill_token_threshold", v); }},
      {"max_num_partial_prefills", Kind::Int,
       "vLLM's limit on sequences partly prefilled at once; only 1 (as vLLM's V1 engine: any number of chunks share a "
       "step; long_prefill_token_threshold caps each)",
       [](Config&, const std::string& v) {
         if (parse_int("max_num_partial_prefills", v) != 1)
           throw Error(cat("config: max_num_partial_prefills ", v, " is not supported (as in vLLM's V1 engine): chunks of "
                           "any number of prompts share a step; cap each with long_prefill_token_threshold"));
       }},
      {"max_long_partial_prefills", Kind::Int, "vLLM's; only 1, as max_num_partial_prefills",
       [](Config&, const std::string& v) {
         if (parse_int("max_long_partial_prefills", v) != 1)
           throw Error(cat("config: max_long_partial_prefills ", v, " is not supported (as in vLLM's V1 engine); cap each "
                           "prompt's chunk with long_prefill_token_threshold"));
       }},
      bool_option("enable_prefix_caching", &Config::enable_prefix_caching, "reuse KV blocks of shared prompt prefixes"),
      bool_option("enforce_eager", &Config::enforce_eager,
                  "CUDA: run every step eagerly instead of replaying CUDA graphs of decode steps (recorded at start-up for batch sizes up to max_num_seqs; tp = 1)"),
      {"compilation_config", Kind::String,
       "JSON object (or YAML mapping) of vLLM's compilation config, or an optimization level 0-3: cudagraph_mode (NONE: no "
       "CUDA graphs; FULL_DECODE_ONLY: decode graphs only; FULL, FULL_AND_PIECEWISE (default), PIECEWISE: decode and "
       "mixed-step graphs, whole layers), cudagraph_capture_sizes, max_cudagraph_capture_size, use_cudagraph; "
       "torch.compile's keys are accepted without effect",
       [](Config& c, const std::string& v) { apply_compilation_config(c, v); }},
      {"cudagraph_mode", Kind::String, "compilation_config's cudagraph_mode as a flag of its own",
       [](Config& c, const std::string& v) { set_cudagraph_mode(c, v); }},
      {"cudagraph_capture_sizes", Kind::StringList,
       "the CUDA-graph sizes to record (vLLM's): batch sizes of decode graphs up to max_num_seqs and token counts of "
       "mixed-step graphs up to min(256, max_num_batched_tokens); several may follow one flag, or a JSON or YAML list",
       [](Config& c, const std::string& v) { add_sizes(c.cudagraph_capture_sizes, "cudagraph_capture_sizes", v); },
       [](Config& c) { c.cudagraph_capture_sizes.clear(); }},
      {"max_cudagraph_capture_size", Kind::Int,
       "the largest CUDA-graph size (vLLM's): the default sizes up to it (0: no graphs)",
       [](Config& c, const std::string& v) {
         c.max_cudagraph_capture_size = parse_int("max_cudagraph_capture_size", v);
         if (c.max_cudagraph_capture_size < 0) throw Error(cat("config: max_cudagraph_capture_size must be >= 0, got '", v, "'"));
       }},
      {"cuda_graph_sizes", Kind::StringList,
       "vLLM's older form: one value is max_cudagraph_capture_size, several are cudagraph_capture_sizes",
       [](Config& c, const std::string& v) { add_sizes(c.cuda_graph_sizes, "cuda_graph_sizes", v); },
       [](Config& c) { c.cuda_graph_sizes.clear(); }},
      {"optimization_level", Kind::Int, "vLLM's -O0 .. -O3 (also -O N): 0 records no CUDA graphs (unless cudagraph_mode says), 1-3 keep them",
       [](Config& c, const std::string& v) { apply_optimization_level(c, v); }},
      bool_option("disable_sliding_window", &Config::disable_sliding_window,
                  "serve a model with sliding-window attention (Mistral 7B v0.1) with full attention, max_model_len at most its window, "
                  "as vLLM (without it the sliding layers attend to their window)"),
      bool_option("async_scheduling", &Config::async_scheduling,
                  "plan each step while the one before it runs, its decodes fed the tokens that step samples (vLLM's; pipeline_parallel_size 1): the host's scheduling and output work no longer leaves the device idle; a finished sequence wastes one token"),
      {"speculative_config", Kind::String,
       "JSON object (or YAML mapping) of vLLM's speculative decoding: method ngram (drafts by n-gram lookup in the sequence; prompt_lookup_max, prompt_lookup_min, default 5) or draft_model (drafts from a smaller model with the same tokenizer, `model`: its llmserve model file, run on rank 0), num_speculative_tokens; each decode step verifies the drafts in one forward pass",
       [](Config& c, const std::string& v) { c.speculative_config = v; }},
      bool_option("enable_lora", &Config::enable_lora,
                  "serve the LoRA adapters of lora_modules (vLLM's): a request names one as its `model`"),
      {"lora_modules", Kind::StringList,
       "LoRA adapters (PEFT checkpoints: adapter_config.json and adapter_model.safetensors) as name=path, or a JSON object {\"name\", \"path\", \"base_model_name\"}; on the command line several may follow one flag, as vLLM's",
       [](Config& c, const std::string& v) { c.lora_modules.push_back(v); },
       [](Config& c) { c.lora_modules.clear(); }},
      {"max_loras", Kind::Int, "the most distinct LoRA adapters in one step (vLLM's; a request whose adapter would pass it waits)",
       [](Config& c, const std::string& v) { c.max_loras = parse_int32("max_loras", v); }},
      {"max_lora_rank", Kind::Int, "the largest LoRA rank served: 1, 8, 16, 32, 64, 128, 256, 320 or 512 (vLLM's)",
       [](Config& c, const std::string& v) { c.max_lora_rank = parse_int32("max_lora_rank", v); }},
      {"lora_dtype", Kind::String, "vLLM's: auto, or the model's dtype (llmserve holds adapters in the model's dtype)",
       [](Config& c, const std::string& v) { c.lora_dtype = v; }},
      bool_option("fully_sharded_loras", &Config::fully_sharded_loras,
                  "vLLM's; only false: a tensor group holds each adapter as vLLM does without it (A whole and B cut for q/k/v and gate/up, A cut and B whole for o and down)"),
      {"max_cpu_loras", Kind::Int, "vLLM's LoRA cache size (at least max_loras): with runtime LoRA updating the adapters held at once (default max_loras; others are loaded over the least recently used as requests need them); otherwise every adapter of lora_modules is held",
       [](Config& c, const std::string& v) { c.max_cpu_loras = parse_int32("max_cpu_loras", v); }},
      {"scheduling_policy", Kind::String,
       "fcfs (first come, first served) or priority (vLLM's: requests are admitted by their `priority`, lower first, then arrival; when KV blocks run out the running sequence of the highest value, latest arrival, is preempted)",
       [](Config& c, const std::string& v) { c.scheduling_policy = v; }},
      {"host", Kind::String, "address the HTTP server binds",
       [](Config& c, const std::string& v) { c.host = v; }},
      {"port", Kind::Int, "HTTP port",
       [](Config& c, const std::string& v) { c.port = parse_int32("port", v); }},
      {"uds", Kind::String, "a Unix domain socket path to serve on; host and port are then ignored (vLLM's)",
       [](Config& c, const std::string& v) { c.uds = v; }},
      {"api_key", Kind::StringList,
       "require 'Authorization: Bearer <key>' on /v1 routes, with any one of the keys given (vLLM's: several may "
       "follow one flag, or a YAML list); without it, LLMSERVE_API_KEY or VLLM_API_KEY",
       [](Config& c, const std::string& v) {
         if (v.empty()) throw Error("config: api_key must not be empty");
         c.api_key.push_back(v);
       },
       [](Config& c) { c.api_key.clear(); }},
      {"tool_call_parser", Kind::String, "auto | hermes | llama3_json | mistral | none: how tool calls are read from chat output (auto: by the model's type)",
       [](Config& c, const std::string& v) { c.tool_call_parser = v; }},
      {"structured_outputs_config", Kind::String,
       "JSON object (or YAML mapping) of vLLM's structured outputs: backend (auto, xgrammar, guidance, outlines, "
       "lm-format-enforcer: all llmserve's own), disable_any_whitespace (JSON guides without whitespace unless a request "
       "says otherwise), disable_fallback, disable_additional_properties (accepted), reasoning_parser",
       [](Config& c, const std::string& v) { set_structured_outputs_config(c, v); }},
      {"guided_decoding_backend", Kind::String,
       "vLLM's older name of structured_outputs_config's backend, with options after a colon: disable-any-whitespace, "
       "no-fallback, disable-additional-properties",
       [](Config& c, const std::string& v) { set_guided_decoding_backend(c, v); }},
      {"reasoning_parser", Kind::String,
       "none | qwen3 | deepseek_r1 (vLLM's): a chat answer's <think>...</think> goes to the message's `reasoning`, the rest is its content",
       [](Config& c, const std::string& v) { c.reasoning_parser = v; }},
      {"served_model_name", Kind::StringList, "model name(s) the API answers to",
       [](Config& c, const std::string& v) { c.served_model_name.push_back(v); },
       [](Config& c) { c.served_model_name.clear(); }},
      {"allowed_origins", Kind::StringList,
       "origins browsers may call the API from (CORS), as vLLM: default [\"*\"]; a JSON list or one origin per flag",
       [](Config& c, const std::string& v) { add_list_entries(c.allowed_origins, "allowed_origins", v); },
       [](Config& c) { c.allowed_origins.clear(); }},
      {"allowed_methods", Kind::StringList,
       "HTTP methods a CORS preflight may ask for, as vLLM: default [\"*\"] (all); a JSON list or one per flag",
       [](Config& c, const std::string& v) { add_list_entries(c.allowed_methods, "allowed_methods", v); },
       [](Config& c) { c.allowed_methods.clear(); }},
      {"allowed_headers", Kind::StringList,
       "request headers a CORS preflight may ask for, as vLLM: default [\"*\"] (any; the CORS-safelisted ones always); "
       "a JSON list or one per flag",
       [](Config& c, const std::string& v) { add_list_entries(c.allowed_headers, "allowed_headers", v); },
       [](Config& c) { c.allowed_headers.clear(); }},
      bool_option("allow_credentials", &Config::allow_credentials,
                  "CORS answers say Access-Control-Allow-Credentials: true, and name the caller's origin rather than \"*\" (vLLM's)"),
      {"generation_config", Kind::String,
       "auto (requests default to the sampling parameters of the model's generation_config.json, as vLLM) | vllm (to vLLM's own defaults)",
       [](Config& c, const std::string& v) { c.generation_config = v; }},
      {"override_generation_config", Kind::String,
       "JSON object of sampling defaults (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens) over the "
       "model's generation_config.json, or alone with generation_config vllm (as vLLM)",
       [](Config& c, const std::string& v) { c.override_generation_config = v; }},
      {"root_path", Kind::String,
       "the path prefix a path-based proxy puts before the server's routes (vLLM's, FastAPI's): /prefix/v1/models routes "
       "as /v1/models, and /v1/models still does",
       [](Config& c, const std::string& v) {
         if (!v.empty() && v[0] != '/') throw Error(cat("config: root_path must begin with '/', got '", v, "'"));
         c.root_path = v;
         while (c.root_path.size() > 1 && c.root_path.back() == '/') c.root_path.pop_back();
         if (c.root_path == "/") c.root_path.clear();
       }},
      {"stream_interval", Kind::Int,
       "tokens a streamed answer gathers before it sends them (vLLM's; default 1: each step's at once): the first token "
       "and the end go at once, others once this many are new",
       [](Config& c, const std::string& v) { c.stream_interval = parse_int32("stream_interval", v); }},
      {"max_logprobs", Kind::Int, "the most log-probabilities a request may ask for: 0 to 20 (vLLM's default 20)",
       [](Config& c, const std::string& v) { c.max_logprobs = parse_int32("max_logprobs", v); }},
      {"logprobs_mode", Kind::String,
       "what logprobs report (vLLM's): raw_logprobs (the default: the model's log-probabilities), raw_logits (its "
       "logits), processed_logprobs / processed_logits (those of the values a token is drawn from: after logit_bias, "
       "penalties, temperature and the top-k / top-p / min-p filters, whose dropped tokens are left out of the "
       "alternatives); prompt_logprobs stay raw log-probabilities",
       [](Config& c, const std::string& v) { c.logprobs_mode = v; }},
      {"tokenizer", Kind::String,
       "the tokenizer and chat template to serve text with instead of the model file's (vLLM's): a Hugging Face tokenizer "
       "directory (tokenizer.json, tokenizer_config.json, chat_template.jinja) or another llmserve model file; with "
       "load_format dummy, text for a model that has none",
       [](Config& c, const std::string& v) { c.tokenizer = v; }},
      {"tokenizer_mode", Kind::String,
       "auto | hf | slow (vLLM's): one tokenizer, tokenizer.json's (it gives HF's ids); mistral is refused",
       [](Config& c, const std::string& v) { c.tokenizer_mode = v; }},
      {"chat_template", Kind::String, "chat template replacing the model's: a file, or the template itself (as vLLM)",
       [](Config& c, const std::string& v) { c.chat_template = v; }},
      {"response_role", Kind::String, "role of chat answers after a generation prompt (vLLM's; default assistant)",
       [](Config& c, const std::string& v) { c.response_role = v; }},
      bool_option("enable_prompt_tokens_details", &Config::enable_prompt_tokens_details,
                  "usage carries prompt_tokens_details.cached_tokens (prompt tokens from the prefix cache)"),
      bool_option("enable_force_include_usage", &Config::enable_force_include_usage,
                  "streamed completions and chat answers end with a usage chunk as if stream_options.include_usage were true (vLLM's)"),
      bool_option("enable_request_id_headers", &Config::enable_request_id_headers,
                  "every response carries an X-Request-Id header: the request's own, else a generated one (vLLM's)"),
      bool_option("enable_server_load_tracking", &Config::enable_server_load_tracking,
                  "GET /load answers {\"server_load\": N}, the generation and pooling requests in flight (vLLM's; 0 without it)"),
      bool_option("enable_tokenizer_info_endpoint", &Config::enable_tokenizer_info_endpoint,
                  "GET /tokenizer_info answers the tokenizer's configuration (vLLM's): tokenizer_config.json's keys, "
                  "tokenizer_class, and the served chat_template"),
      bool_option("return_tokens_as_token_ids", &Config::return_tokens_as_token_ids,
                  "log-probability entries name tokens \"token_id:<id>\" unless a request's return_tokens_as_token_ids says otherwise"),
      {"runner", Kind::String,
       "auto | generate | pooling (vLLM's): pooling serves embeddings (/v1/embeddings) instead of text; auto picks pooling "
       "for Sentence Transformers checkpoints and *Model architectures",
       [](Config& c, const std::string& v) { c.runner = v; }},
      {"convert", Kind::String, "auto | embed (vLLM's): embed serves a generative model's hidden states as embeddings",
       [](Config& c, const std::string& v) { c.convert = v; }},
      {"pooler_config", Kind::String,
       "JSON object over the model's pooler (vLLM's): pooling_type LAST | MEAN | CLS, normalize, dimensions",
       [](Config& c, const std::string& v) { c.pooler_config = v; }},
      {"override_pooler_config", Kind::String, "the older name of pooler_config (vLLM's)",
       [](Config& c, const std::string& v) { c.pooler_config = v; }},
      bool_option("disable_uvicorn_access_log", &Config::disable_uvicorn_access_log, "no access-log line per request"),
      {"uvicorn_log_level", Kind::String,
       "critical | error | warning | info | debug | trace (vLLM's): above info, no access-log line per request (as uvicorn's)",
       [](Config& c, const std::string& v) { c.uvicorn_log_level = v; }},
      bool_option("trust_request_chat_template", &Config::trust_request_chat_template,
                  "requests may bring their own chat_template (vLLM's): rendered instead of the server's; refused otherwise"),
      {"default_chat_template_kwargs", Kind::String,
       "JSON object (or YAML mapping) of the chat template's keyword arguments for every chat request, under a request's "
       "own chat_template_kwargs (vLLM's), e.g. '{\"enable_thinking\": false}' for Qwen3",
       [](Config& c, const std::string& v) { c.default_chat_template_kwargs = v; }},
      {"chat_template_content_format", Kind::String,
       "auto | string (vLLM's): message content reaches the chat template as a string, its text parts joined",
       [](Config& c, const std::string& v) { c.chat_template_content_format = v; }},
      {"task", Kind::String,
       "vLLM's older choice of what to serve: auto, generate (runner generate), embed / embedding (runner pooling), "
       "classify / score (runner pooling, a sequence-classification checkpoint); reward, transcription and draft are refused",
       [](Config& c, const std::string& v) {
         if (v == "generate") {
           c.runner = "generate";
         } else if (v == "embed" || v == "embedding" || v == "classify" || v == "score") {
           c.runner = "pooling";
         } else if (v != "auto") {
           throw Error(cat("config: task '", v, "' is not supported: use auto, generate, embed, classify or score (or runner)"));
         }
         c.task = v;
       }},
      {"distributed_executor_backend", Kind::String,
       "vLLM's: mp, uni or external_launcher are accepted (llmserve's workers are the MPI ranks mpirun starts); ray is refused",
       [](Config&, const std::string& v) {
         if (v == "ray")
           throw Error("config: distributed_executor_backend ray is not supported: llmserve's workers are MPI ranks (launch with "
                       "mpirun, srun or the Slurm scripts in scripts/slurm/)");
         if (v != "mp" && v != "uni" && v != "external_launcher")
           throw Error(cat("config: distributed_executor_backend must be mp, uni or external_launcher, got '", v, "'"));
       }},
      {"data_parallel_size", Kind::Int,
       "vLLM's (-dp): replicas of the model, each tensor_parallel_size x pipeline_parallel_size ranks; llmserve generate "
       "shares its requests among them; the server on port routes each request to the replica with the fewest in flight",
       [](Config& c, const std::string& v) { c.data_parallel_size = parse_int32("data_parallel_size", v); }},
      bool_option("data_parallel_external_lb", &Config::data_parallel_external_lb,
                  "vLLM's: with data_parallel_size, each replica serves on port + its index, for a load balancer in front "
                  "(no one endpoint)"),
      {"ssl_keyfile", Kind::String, "PEM private key of ssl_certfile (vLLM's; may be left out when ssl_certfile holds it)",
       [](Config& c, const std::string& v) { c.ssl_keyfile = v; }},
      {"ssl_certfile", Kind::String, "PEM certificate chain: serve HTTPS (TLS 1.2 and 1.3) instead of HTTP (vLLM's)",
       [](Config& c, const std::string& v) { c.ssl_certfile = v; }},
      {"ssl_ca_certs", Kind::String, "PEM CA certificates that client certificates are verified against (vLLM's)",
       [](Config& c, const std::string& v) { c.ssl_ca_certs = v; }},
      bool_option("skip_tokenizer_init", &Config::skip_tokenizer_init,
                  "load no tokenizer or chat template (vLLM's): prompts are token ids, answers carry token ids (return_token_ids) "
                  "and empty text; text prompts, chat, stop strings, bad_words and guided decoding are refused"),
      {"api_server_count", Kind::Int,
       "vLLM's API server processes (-asc): here the HTTP front end's I/O threads on rank 0, which parse, tokenize and "
       "answer requests (one process holds the front end); 1 to 64, default 2",
       [](Config& c, const std::string& v) { c.api_server_count = parse_int32("api_server_count", v); }},
      {"ssl_cert_reqs", Kind::Int,
       "client certificates, as Python's ssl.CERT_* (vLLM's): 0 not asked for (default), 1 verified when sent, 2 required",
       [](Config& c, const std::string& v) { c.ssl_cert_reqs = parse_int32("ssl_cert_reqs", v); }},
      {"ssl_ciphers", Kind::String, "OpenSSL cipher list for TLS 1.2 connections (vLLM's; TLS 1.3 keeps its own)",
       [](Config& c, const std::string& v) { c.ssl_ciphers = v; }},
      bool_option("enable_ssl_refresh", &Config::enable_ssl_refresh,
                  "when the TLS files change (a renewed certificate), new connections use them (vLLM's; a set that fails to "
                  "load is logged and the one before kept)"),
      {"disable_access_log_for_endpoints", Kind::String,
       "comma-separated paths whose requests the access log leaves out, e.g. /health,/metrics,/ping (vLLM's)",
       [](Config& c, const std::string& v) { c.disable_access_log_for_endpoints = v; }},
      {"h11_max_incomplete_event_size", Kind::Int,
       "the most bytes of a request's header (vLLM's; default 4 MiB): a longer one is refused with 431 (llmserve holds "
       "at most 64 KiB, Beast's largest header field, whatever the value)",
       [](Config& c, const std::string& v) { c.h11_max_incomplete_event_size = parse_int("h11_max_incomplete_event_size", v); }},
      {"h11_max_header_count", Kind::Int, "the most header fields of a request (vLLM's; default 256): more are refused with 431",
       [](Config& c, const std::string& v) { c.h11_max_header_count = parse_int32("h11_max_header_count", v); }},
      accepted_flag("disable_fastapi_docs", "accepted as vLLM's; no effect: llmserve serves no /docs, /redoc or /openapi.json"),
      accepted_flag("disable_frontend_multiprocessing", "accepted as vLLM's; no effect: the HTTP front end runs in rank 0's process"),
      accepted_flag("disable_custom_all_reduce", "accepted as vLLM's; no effect: tensor groups all-reduce through NCCL"),
      accepted_flag("enable_log_requests", "accepted as vLLM's; no effect: llmserve does not log prompts or parameters"),
      accepted_flag("disable_log_requests", "accepted as vLLM's; no effect: llmserve does not log prompts or parameters"),
      accepted_flag("disable_log_stats", "accepted as vLLM's; no effect: llmserve logs no periodic statistics (see /metrics)"),
      accepted_flag("enable_log_outputs", "accepted as vLLM's; no effect: llmserve does not log outputs"),
      accepted_count("max_log_len", 0,
                     "vLLM's limit on the prompt characters a request log shows; accepted (at least 0), no effect: "
                     "llmserve does not log prompts"),
      accepted_count("max_seq_len_to_capture", 1,
                     "vLLM's longest context its CUDA graphs cover; accepted (at least 1), no effect: llmserve's decode "
                     "graphs cover every context length up to max_model_len"),
      accepted_count("max_parallel_loading_workers", 1,
                     "vLLM's cap on workers loading weights at once; accepted (at least 1), no effect: each rank reads its "
                     "own shard of the model file"),
      accepted_flag("disable_cascade_attn",
                    "accepted as vLLM's; no effect: llmserve's attention has no cascade (shared-prefix) form"),
      accepted_flag("trust_remote_code", "accepted as vLLM's; no effect: llmserve runs no code from model repositories"),
      accepted_text("revision", "vLLM's hub revision of the model; accepted, no effect: llmserve serves local files only "
                                "(vLLM ignores it for a local path too)"),
      accepted_text("code_revision", "vLLM's hub revision of the model's code; accepted, no effect: no code is fetched or run"),
      accepted_text("tokenizer_revision", "vLLM's hub revision of the tokenizer; accepted, no effect: local files only"),
      accepted_text("download_dir", "vLLM's directory for downloaded weights; accepted, no effect: llmserve downloads nothing"),
      accepted_choice("model_impl", "auto|vllm", "llmserve runs its own implementation of each architecture (auto, vllm)",
                      "vLLM's model implementation: auto or vllm (llmserve's own); transformers is refused"),
      accepted_choice("config_format", "auto|hf", "llmserve reads Hugging Face config.json files (auto, hf)",
                      "vLLM's config format: auto or hf; mistral is refused"),
      {"prefix_caching_hash_algo", Kind::String,
       "vLLM's prefix-cache hash: builtin (64 bits; a found block's own tokens are compared) or sha256 (SHA-256 "
       "chained over the prefix: no prefix can be made to pass for another's)",
       [](Config& c, const std::string& v) { c.prefix_caching_hash_algo = v; }},
      accepted_flag("enable_expert_parallel", "accepted as vLLM's; no effect: llmserve's models are dense (no experts)"),
      accepted_flag("enable_eplb", "accepted as vLLM's; no effect: llmserve's models are dense (no experts to balance)"),
      accepted_text("limit_mm_per_prompt", "vLLM's multimodal items a prompt may hold; accepted, no effect: llmserve serves text models"),
      accepted_text("mm_processor_kwargs", "vLLM's multimodal processor arguments; accepted, no effect: llmserve serves text models"),
      accepted_text("allowed_local_media_path", "vLLM's media directory; accepted, no effect: llmserve serves text models"),
      accepted_flag("disable_chunked_mm_input", "accepted as vLLM's; no effect: llmserve serves text models"),
      accepted_text("show_hidden_metrics_for_version", "vLLM's deprecated metrics; accepted, no effect: llmserve hides none"),
      refused_option("kv_transfer_config", Kind::String,
                     "llmserve has no disaggregated prefill (KV transfer between instances): one job prefills and decodes"),
      refused_option("otlp_traces_endpoint", Kind::String, "llmserve exports no OpenTelemetry traces (see /metrics and the access log)"),
      refused_option("collect_detailed_traces", Kind::String, "llmserve exports no OpenTelemetry traces (see /metrics and the access log)"),
      refused_option("worker_cls", Kind::String, "llmserve's workers are its MPI ranks; it loads no Python classes"),
      refused_option("worker_extension_cls", Kind::String, "llmserve's workers are its MPI ranks; it loads no Python classes"),
      refused_option("logits_processors", Kind::String, "llmserve loads no Python logits processors"),
      refused_option("enable_prompt_embeds", Kind::Bool, "requests carry token ids or text, not embeddings"),
      refused_option("calculate_kv_scales", Kind::Bool, "the FP8 KV cache uses scale 1, as vLLM without calibrated scales"),
      refused_option("enable_sleep_mode", Kind::Bool,
                     "llmserve cannot free and restore its weights and KV cache while serving (no /sleep or /wake_up)"),
      accepted_flag("enable_auto_tool_choice",
                    "accepted as vLLM's; no effect: tool calls are read from chat output unless tool_call_parser is none"),
      {"seed", Kind::Int, "random seed",
       [](Config& c, const std::string& v) { c.seed = parse_int("seed", v); }},
  };
  return opts;
}

const Option* find_option(const std::string& key) {
  for (const auto& o : options())
    if (key == o.key) return &o;
  return nullptr;
}

std::string known_keys() {
  std::string s;
  for (const auto& o : options()) s += std::string(s.empty() ? "" : ", ") + o.key;
  return s;
}

}  // namespace

void config_set(Config& cfg, const std::string& key, const std::string& value, const std::string& origin) {
  const Option* o = find_option(key);
  if (!o) throw Error(cat(origin, ": unknown option '", key, "' (known: ", known_keys(), ")"));
  o->set(cfg, value);
  cfg.given[key] = (origin.rfind("command line", 0) == 0 ? "cli:" : "yaml:") + value;
}

namespace {
// A YAML value as JSON (hf_overrides written as a YAML mapping): plain scalars that read as integers,
// numbers, booleans or null become those; quoted scalars and everything else stay strings.
nlohmann::json yaml_to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    nlohmann::json o = nlohmann::json::object();
    for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
    return o;
  }
  if (n.IsSequence()) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& x : n) a.push_back(yaml_to_json(x));
    return a;
  }
  if (n.IsNull()) return nullptr;
  const std::string& v = n.Scalar();
  if (n.Tag() == "!") return v;  // quoted
  if (v == "true" || v == "True" || v == "TRUE") return true;
  if (v == "false" || v == "False" || v == "FALSE") return false;
  if (!v.empty() && (std::isdigit(static_cast<unsigned char>(v[0])) || v[0] == '-')) {
    const auto parsed = nlohmann::json::parse(v, nullptr, false);
    if (!parsed.is_discarded() && parsed.is_number()) return parsed;
  }
  return v;
}
}  // namespace

void config_load_yaml(Config& cfg, const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(cat("config: cannot read '", path, "'"));
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw Error(cat("config: ", path, ": invalid YAML: ", e.what()));
  }
  if (root.IsNull()) return;  // an empty file sets nothing
  if (!root.IsMap()) throw Error(cat("config: ", path, ": the top level must be a mapping of option: value"));
  std::vector<std::string> seen;
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    const Option* o = find_option(key);
    const std::string origin = cat("config ", path);
    if (!o) throw Error(cat(origin, ": unknown option '", key, "' (known: ", known_keys(), ")"));
    // YAML forbids a key twice in one mapping; yaml-cpp keeps one silently, so which was meant is unclear.
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) throw Error(cat(origin, ": '", key, "' is given twice"));
    seen.push_back(key);
    if (v.IsNull()) continue;  // `api_key:` with no value leaves the default
    if ((key == "hf_overrides" || key == "override_generation_config" || key == "pooler_config" ||
         key == "override_pooler_config" || key == "speculative_config" || key == "structured_outputs_config" ||
         key == "compilation_config" || key == "default_chat_template_kwargs") &&
        v.IsMap()) {  // a mapping, as vLLM's YAML configs write it
      config_set(cfg, key, yaml_to_json(v).dump(), origin);
      continue;
    }
    if (o->kind == Kind::StringList && v.IsSequence()) {
      o->clear(cfg);
      for (const auto& item : v) {
        if (key == "lora_modules" && item.IsMap()) {  // ({name, path, base_model_name}, as the JSON form)
          config_set(cfg, key, yaml_to_json(item).dump(), origin);
          continue;
        }
        if (!item.IsScalar()) throw Error(cat(origin, ": ", key, " must be a string or a list of strings"));
        config_set(cfg, key, item.Scalar(), origin);
      }
      continue;
    }
    if (!v.IsScalar()) throw Error(cat(origin, ": ", key, " must be a single value, not a list or mapping"));
    if (o->kind == Kind::StringList) o->clear(cfg);
    config_set(cfg, key, v.Scalar(), origin);
  }
}

std::vector<std::string> config_parse_args(Config& cfg, const std::vector<std::string>& args) {
  std::vector<std::pair<std::string, std::string>> sets;
  std::vector<std::string> rest;
  std::string yaml_path;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("-", 0) != 0 || a == "-") {
      const bool is_yaml = a.size() > 5 && (a.ends_with(".yaml") || a.ends_with(".yml"));
      if (is_yaml && yaml_path.empty()) {
        yaml_path = a;
      } else {
        rest.push_back(a);
      }
      continue;
    }
    std::string name = a.substr(a.rfind("--", 0) == 0 ? 2 : 1), value;
    bool has_value = false;
    // vLLM's -O0 .. -O3 (and -O N, -O=N): the optimization level.
    if (name.size() == 2 && name[0] == 'O' && std::isdigit(static_cast<unsigned char>(name[1]))) {
      sets.emplace_back("optimization_level", name.substr(1));
      continue;
    }
    if (name == "O" || name.rfind("O=", 0) == 0) name = "optimization-level" + name.substr(1);
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "tp") name = "tensor-parallel-size";
    if (name == "pp") name = "pipeline-parallel-size";
    if (name == "asc") name = "api-server-count";
    if (name == "dp") name = "data-parallel-size";
    std::string key = name;
    std::replace(key.begin(), key.end(), '-', '_');
    if (key == "config") {
      if (!has_value) {
        if (i + 1 >= args.size()) throw Error("command line: --config needs a file name");
        value = args[++i];
      }
      yaml_path = value;
      continue;
    }
    bool negated = false;
    if (!find_option(key) && key.rfind("no_", 0) == 0 && find_option(key.substr(3))) {
      key = key.substr(3);
      negated = true;
    }
    const Option* o = find_option(key);
    if (!o) throw Error(cat("command line: unknown option '", a, "' (see --help)"));
    if (o->kind == Kind::Bool && !has_value) {
      // A bare flag is true; an explicit following true/false is accepted too.
      if (!negated && i + 1 < args.size()) {
        std::string next = args[i + 1];
        std::transform(next.begin(), next.end(), next.begin(), ::tolower);
        if (next == "true" || next == "false") {
          value = args[++i];
          has_value = true;
        }
      }
      if (!has_value) value = negated ? "false" : "true";
    } else if (negated) {
      throw Error(cat("command line: '", a, "' only applies to true/false options"));
    } else if (!has_value) {
      if (i + 1 >= args.size()) throw Error(cat("command line: ", a, " needs a value"));
      value = args[++i];
    }
    sets.emplace_back(key, value);
    while (!has_value && i + 1 < args.size() && another_value(key, args[i + 1])) sets.emplace_back(key, args[++i]);
  }
  if (!yaml_path.empty()) config_load_yaml(cfg, yaml_path);
  std::vector<std::string> cleared;  // lists given on the command line replace the file's (and the default)
  for (const auto& [k, v] : sets) {
    const Option* o = find_option(k);
    if (o->clear && std::find(cleared.begin(), cleared.end(), k) == cleared.end()) {
      o->clear(cfg);
      cleared.push_back(k);
    }
    config_set(cfg, k, v, "command line");
  }
  return rest;
}

void config_take_model_argument(Config& cfg, std::vector<std::string>& rest) {
  if (rest.empty()) return;
  const auto it = cfg.given.find("model");
  if (it != cfg.given.end() && it->second.rfind("cli:", 0) == 0)
    throw Error(cat("command line: the model is given twice ('", rest[0], "' and --model ", cfg.model, ")"));
  config_set(cfg, "model", rest[0], "command line");
  rest.erase(rest.begin());
}

void config_validate(const Config& c) {
  auto fail = [](const std::string& m) { throw Error("config: " + m); };
  if (c.model.empty()) fail("model is required (a .h5 file made by llmserve-convert)");
  static const char* dtypes[] = {"auto", "half", "float16", "bfloat16", "float", "float32"};
  if (std::find(std::begin(dtypes), std::end(dtypes), c.dtype) == std::end(dtypes))
    fail(cat("dtype must be one of auto, half, float16, bfloat16, float, float32; got '", c.dtype, "'"));
  if (c.backend != "auto" && c.backend != "cpu" && c.backend != "cuda")
    fail(cat("backend must be auto, cpu or cuda; got '", c.backend, "'"));
  if (c.load_format != "auto" && c.load_format != "dummy")
    fail(cat("load_format must be auto or dummy; got '", c.load_format, "'"));
  if (!c.hf_overrides.empty()) {
    const auto j = nlohmann::json::parse(c.hf_overrides, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(cat("hf_overrides must be a JSON object, got '", c.hf_overrides, "'"));
  }
  if (c.long_prefill_token_threshold < 0)
    fail(cat("long_prefill_token_threshold must be >= 0, got ", c.long_prefill_token_threshold));
  if (!c.default_chat_template_kwargs.empty()) {
    const auto j = nlohmann::json::parse(c.default_chat_template_kwargs, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      fail(cat("default_chat_template_kwargs must be a JSON object, got '", c.default_chat_template_kwargs, "'"));
  }
  if (!c.override_generation_config.empty()) {
    const auto j = nlohmann::json::parse(c.override_generation_config, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      fail(cat("override_generation_config must be a JSON object, got '", c.override_generation_config, "'"));
  }
  static const char* uvicorn_levels[] = {"critical", "error", "warning", "info", "debug", "trace"};
  if (std::find_if(std::begin(uvicorn_levels), std::end(uvicorn_levels), [&](const char* l) { return c.uvicorn_log_level == l; }) ==
      std::end(uvicorn_levels))
    fail(cat("uvicorn_log_level must be critical, error, warning, info, debug or trace; got '", c.uvicorn_log_level, "'"));
  if (c.chat_template_content_format == "openai")
    fail("chat_template_content_format 'openai' is not supported: llmserve gives the template each message's content as "
         "a string (its text parts joined), vLLM's 'string'; use auto or string");
  if (c.chat_template_content_format != "auto" && c.chat_template_content_format != "string")
    fail(cat("chat_template_content_format must be auto or string; got '", c.chat_template_content_format, "'"));
  if (c.data_parallel_size < 1) fail(cat("data_parallel_size must be >= 1, got ", c.data_parallel_size));
  if (!c.cuda_graph_sizes.empty() && (!c.cudagraph_capture_sizes.empty() || c.max_cudagraph_capture_size >= 0))
    fail("cuda_graph_sizes is the older form of cudagraph_capture_sizes / max_cudagraph_capture_size: give one of them");
  if (!c.cudagraph_capture_sizes.empty() && c.max_cudagraph_capture_size >= 0 &&
      c.max_cudagraph_capture_size != *std::max_element(c.cudagraph_capture_sizes.begin(), c.cudagraph_capture_sizes.end()))
    fail(cat("max_cudagraph_capture_size (", c.max_cudagraph_capture_size, ") must be the largest of cudagraph_capture_sizes (",
             *std::max_element(c.cudagraph_capture_sizes.begin(), c.cudagraph_capture_sizes.end()), "), as vLLM checks"));
  if (!c.ssl_keyfile.empty() && c.ssl_certfile.empty())
    fail("ssl_keyfile needs ssl_certfile (the certificate the key belongs to; a file that holds both is named as ssl_certfile)");
  if (c.ssl_certfile.empty() && (!c.ssl_ca_certs.empty() || !c.ssl_ciphers.empty() || c.ssl_cert_reqs != 0 || c.enable_ssl_refresh))
    fail("ssl_ca_certs, ssl_cert_reqs, ssl_ciphers and enable_ssl_refresh apply to HTTPS: they need ssl_certfile");
  if (c.ssl_cert_reqs < 0 || c.ssl_cert_reqs > 2)
    fail(cat("ssl_cert_reqs must be 0 (no client certificate), 1 (verified when sent) or 2 (required), as Python's ssl.CERT_*; got ",
             c.ssl_cert_reqs));
  if (c.ssl_cert_reqs > 0 && c.ssl_ca_certs.empty())
    fail("ssl_cert_reqs 1 or 2 needs ssl_ca_certs: the CA certificates that client certificates are verified against");
  if (c.h11_max_incomplete_event_size < 1024 || c.h11_max_incomplete_event_size > (int64_t{1} << 30))
    fail(cat("h11_max_incomplete_event_size must be 1024 to 1073741824 bytes, got ", c.h11_max_incomplete_event_size));
  if (c.h11_max_header_count < 1) fail(cat("h11_max_header_count must be at least 1, got ", c.h11_max_header_count));
  if (c.uds.size() >= sizeof(sockaddr_un::sun_path))
    fail(cat("uds '", c.uds, "' is ", c.uds.size(), " bytes long; a Unix socket path holds at most ", sizeof(sockaddr_un::sun_path) - 1));
  if (c.tokenizer_mode != "auto" && c.tokenizer_mode != "hf" && c.tokenizer_mode != "slow")
    fail(cat("tokenizer_mode '", c.tokenizer_mode, "' is not supported: use auto, hf or slow (llmserve reads tokenizer.json",
             c.tokenizer_mode == "mistral" ? "; Mistral's tekken tokenizer is not supported)" : ")"));
  if (c.runner != "auto" && c.runner != "generate" && c.runner != "pooling")
    fail(cat("runner must be auto, generate or pooling; got '", c.runner, "'"));
  try {
    resolve_runner(c.runner, c.convert, false, "");
    PoolerConfig pooler;
    apply_pooler_config(pooler, c.pooler_config);
  } catch (const Error& e) {
    fail(e.what());
  }
  if (c.tensor_parallel_size < 1) fail(cat("tensor_parallel_size must be >= 1, got ", c.tensor_parallel_size));
  if (c.pipeline_parallel_size < 1)
    fail(cat("pipeline_parallel_size must be >= 1, got ", c.pipeline_parallel_size));
  if (c.max_model_len < 0) fail(cat("max_model_len must be >= 0, got ", c.max_model_len));
  static const int blocks[] = {1, 8, 16, 32, 64, 128};
  if (std::find(std::begin(blocks), std::end(blocks), c.block_size) == std::end(blocks))
    fail(cat("block_size must be one of 1, 8, 16, 32, 64, 128; got ", c.block_size));
  if (!(c.gpu_memory_utilization > 0.0 && c.gpu_memory_utilization <= 1.0))
    fail(cat("gpu_memory_utilization must be in (0, 1], got ", c.gpu_memory_utilization));
  if (c.swap_space < 0) fail(cat("swap_space must be >= 0 GiB, got ", c.swap_space));
  if (c.cpu_offload_gb < 0) fail(cat("cpu_offload_gb must be >= 0, got ", c.cpu_offload_gb));
  // vLLM's options for quantized weights and KV cache: accepted with the values llmserve honours, refused
  // otherwise (serving full-precision weights when awq was asked for would silently use four times the
  // memory).
  if (!c.quantization.empty() && c.quantization != "none" && c.quantization != "fp8")
    fail(cat("quantization '", c.quantization, "' is not supported: llmserve serves 16- and 32-bit weights, or quantizes ",
             "them to fp8 as it loads them (llmserve-convert dequantizes GGUF, AWQ and GPTQ checkpoints); use none or fp8"));
  if (c.kv_cache_dtype == "fp8_e5m2")
    fail("kv_cache_dtype 'fp8_e5m2' is not supported: llmserve's FP8 KV cache is E4M3; use fp8 (fp8_e4m3) or auto");
  if (c.kv_cache_dtype != "auto" && c.kv_cache_dtype != "fp8" && c.kv_cache_dtype != "fp8_e4m3")
    fail(cat("kv_cache_dtype '", c.kv_cache_dtype, "' is not supported: use auto (the model's dtype) or fp8 (fp8_e4m3)"));
  if (c.kv_cache_memory_gb < 0) fail(cat("kv_cache_memory_gb must be >= 0, got ", c.kv_cache_memory_gb));
  {  // (both set kv_cache_memory_gb: the command line's wins over the file's, as for any key; one place giving
     // both is refused)
    const auto gb = c.given.find("kv_cache_memory_gb"), bytes = c.given.find("kv_cache_memory_bytes");
    auto from = [](const std::string& g) { return g.substr(0, g.find(':')); };
    if (gb != c.given.end() && bytes != c.given.end() && from(gb->second) == from(bytes->second))
      fail("kv_cache_memory_gb and kv_cache_memory_bytes both size the KV cache: give one of them");
  }
  if (c.num_gpu_blocks_override < 0) fail(cat("num_gpu_blocks_override must be >= 0, got ", c.num_gpu_blocks_override));
  if (c.max_num_seqs < 1) fail(cat("max_num_seqs must be >= 1, got ", c.max_num_seqs));
  try {
    parse_prefix_hash(c.prefix_caching_hash_algo);
  } catch (const Error& e) {
    fail(e.what());
  }
  if (c.scheduling_policy != "fcfs" && c.scheduling_policy != "priority")
    fail(cat("scheduling_policy '", c.scheduling_policy, "' is not supported: use fcfs or priority"));
  if (c.async_scheduling && c.pipeline_parallel_size > 1)
    fail(cat("async_scheduling needs pipeline_parallel_size 1, got ", c.pipeline_parallel_size,
             " (pipeline stages already keep that many micro-batches in flight)"));
  SpeculativeConfig spec;
  try {
    spec = parse_speculative_config(c.speculative_config);
  } catch (const Error& e) {
    fail(e.what());
  }
  if (spec.enabled() && c.async_scheduling)
    fail("speculative_config needs async_scheduling off (a step's tokens are known only once its drafts are verified)");
  if (c.max_num_batched_tokens < 0)
    fail(cat("max_num_batched_tokens must be >= 0, got ", c.max_num_batched_tokens));
  if (!c.lora_modules.empty() && !c.enable_lora) fail("lora_modules needs enable_lora (vLLM's --enable-lora)");
  if (c.max_loras < 1) fail(cat("max_loras must be >= 1, got ", c.max_loras));
  static const int ranks[] = {1, 8, 16, 32, 64, 128, 256, 320, 512};
  if (std::find(std::begin(ranks), std::end(ranks), c.max_lora_rank) == std::end(ranks))
    fail(cat("max_lora_rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (vLLM's), got ", c.max_lora_rank));
  if (std::find(std::begin(dtypes), std::end(dtypes), c.lora_dtype) == std::end(dtypes))
    fail(cat("lora_dtype must be auto or the model's dtype (float16, bfloat16, float32); got '", c.lora_dtype, "'"));
  if (c.lora_dtype != "auto" && c.dtype != "auto" && dtype_from_name(c.lora_dtype) != dtype_from_name(c.dtype))
    fail(cat("lora_dtype ", c.lora_dtype, " differs from dtype ", c.dtype, ": llmserve holds adapters in the model's dtype; use auto"));
  if (c.fully_sharded_loras)
    fail("fully_sharded_loras is not supported: a tensor group holds each adapter as vLLM does without it (A whole and B cut "
         "for q/k/v and gate/up, A cut and B whole for o and down); leave it false");
  if (c.max_cpu_loras != 0 && c.max_cpu_loras < c.max_loras)
    fail(cat("max_cpu_loras (", c.max_cpu_loras, ") must be >= max_loras (", c.max_loras, ")"));
  try {
    std::vector<std::string> names;
    for (const auto& m : c.lora_modules) {
      const LoraModuleSpec spec = parse_lora_module(m);
      if (std::find(names.begin(), names.end(), spec.name) != names.end())
        fail(cat("lora_modules: the name '", spec.name, "' is given twice"));
      if (std::find(c.served_model_name.begin(), c.served_model_name.end(), spec.name) != c.served_model_name.end())
        fail(cat("lora_modules: '", spec.name, "' is also a served_model_name"));
      names.push_back(spec.name);
    }
  } catch (const Error& e) {
    fail(e.what());
  }
  if (c.port < 1 || c.port > 65535) fail(cat("port must be in 1..65535, got ", c.port));
  if (c.host.empty()) fail("host must not be empty");
  static const char* parsers[] = {"auto", "hermes", "llama3_json", "mistral", "none"};
  if (c.response_role.empty()) fail("response_role must not be empty");
  if (c.generation_config != "auto" && c.generation_config != "vllm")
    fail(cat("generation_config must be auto or vllm (a folder of its own is not supported), got '", c.generation_config, "'"));
  if (c.stream_interval < 1) fail(cat("stream_interval must be >= 1, got ", c.stream_interval));
  try {
    parse_logprobs_mode(c.logprobs_mode);
  } catch (const Error& e) {
    fail(e.what());
  }
  if (c.api_server_count < 1 || c.api_server_count > 64)
    fail(cat("api_server_count must be between 1 and 64, got ", c.api_server_count, " (the front end's I/O threads)"));
  if (c.max_logprobs < 0 || c.max_logprobs > 20)
    fail(cat("max_logprobs must be between 0 and 20 (the GPU kernels' limit), got ", c.max_logprobs));
  if (std::find(std::begin(parsers), std::end(parsers), c.tool_call_parser) == std::end(parsers))
    fail(cat("tool_call_parser must be auto, hermes, llama3_json, mistral or none; got '", c.tool_call_parser, "'"));
  if (c.reasoning_parser != "none" && c.reasoning_parser != "qwen3" && c.reasoning_parser != "deepseek_r1")
    fail(cat("reasoning_parser must be none, qwen3 or deepseek_r1; got '", c.reasoning_parser, "'"));
  for (const auto& n : c.served_model_name)
    if (n.empty()) fail("served_model_name must not be empty");
  for (const auto& o : c.allowed_origins)
    if (o.empty()) fail("allowed_origins must not hold an empty origin");
  for (const auto& m : c.allowed_methods)
    if (m.empty()) fail("allowed_methods must not hold an empty method");
  for (const auto& h : c.allowed_headers)
    if (h.empty()) fail("allowed_headers must not hold an empty header");
}

std::string config_help() {
  std::ostringstream os;
  os << "Options (YAML key / command-line flag):\n";
  // Columns as wide as the longest key and flag, plus two spaces.
  size_t key_w = 0, flag_w = 0;
  for (const auto& o : options()) {
    key_w = std::max(key_w, std::string(o.key).size() + 2);
    flag_w = std::max(flag_w, ("--" + kebab(o.key)).size() + 2);
  }
  for (const auto& o : options()) {
    const std::string key = o.key, flag = "--" + kebab(o.key);
    os << "  " << key << std::string(key_w - key.size(), ' ') << flag << std::string(flag_w - flag.size(), ' ')
       << o.help << "\n";
  }
  os << "  (--config FILE or a first argument ending in .yaml names the config file;\n"
        "   command-line flags override it; -tp/-pp are short for the parallel sizes;\n"
        "   --no-<flag> sets a true/false option to false)\n";
  return os.str();
}

}  // namespace llmserve
