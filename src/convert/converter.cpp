#include "convert/converter.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>
#include <algorithm>
#include <cstring>

#include "chat/chat_template.h"
#include "common/dtype.h"
#include "common/error.h"
#include "common/file_util.h"
#include "common/log.h"
#include "convert/gguf.h"
#include "convert/int_quant.h"
#include "convert/model_writer.h"
#include "convert/safetensors.h"
#include "model/pooler_config.h"
#include "model/weight_names.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_docs.h"

namespace llmserve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {


json parse_json_file(const fs::path& p) {
  try {
    return json::parse(read_file(p.string()));
  } catch (const json::exception& e) {
    throw Error(cat("'", p.string(), "': invalid JSON: ", e.what()));
  }
}

// Casts `n` values between dtypes through float32 when they differ.
std::vector<char> cast(DType from, DType to, const void* src, size_t n) {
  std::vector<char> out(n * dtype_size(to));
  if (from == to) {
    std::memcpy(out.data(), src, out.size());
    return out;
  }
  std::vector<float> f(n);
  to_f32(from, src, f.data(), n);
  from_f32(to, f.data(), out.data(), n);
  return out;
}

void check_output(const ConvertOptions& opt) {
  if (opt.output.empty()) throw Error("no output file given (-o model.h5)");
  if (fs::exists(opt.output) && !opt.force)
    throw Error(cat("'", opt.output, "' exists (use --force to overwrite)"));
  const fs::path parent = fs::path(opt.output).parent_path();
  if (!parent.empty() && !fs::is_directory(parent))
    throw Error(cat("output directory '", parent.string(), "' does not exist"));
}

void convert_hf(const ConvertOptions& opt) {
  const fs::path dir(opt.input);
  const fs::path cfg_path = dir / "config.json";
  if (!fs::exists(cfg_path)) throw Error(cat("'", dir.string(), "': no config.json (not a Hugging Face checkpoint)"));
  const std::string cfg_text = read_file(cfg_path.string());
  json cfg;
  try {
    cfg = json::parse(cfg_text);
  } catch (const json::exception& e) {
    throw Error(cat("'", cfg_path.string(), "': invalid JSON: ", e.what()));
  }
  ModelSpec spec;
  try {
    spec = model_spec_from_hf_config(cfg);
  } catch (const Error& e) {
    throw Error(cat("'", cfg_path.string(), "': ", e.what()));
  }

  IntQuantConfig iq;  // an AWQ / GPTQ checkpoint: its linear layers' matrices are dequantized
  try {
    iq = int_quant_config(cfg);
  } catch (const Error& e) {
    throw Error(cat("'", cfg_path.string(), "': ", e.what()));
  }
  // Shards: the index names them; otherwise model.safetensors or every *.safetensors.
  std::vector<std::string> shard_names;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json idx = parse_json_file(index);
    if (!idx.contains("weight_map") || !idx["weight_map"].is_object())
      throw Error(cat("'", index.string(), "': no weight_map"));
    std::set<std::string> files;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it)
      files.insert(it.value().get<std::string>());
    shard_names.assign(files.begin(), files.end());
  } else if (fs::exists(dir / "model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") shard_names.push_back(e.path().filename().string());
    std::sort(shard_names.begin(), shard_names.end());
  }
  if (shard_names.empty()) throw Error(cat("'", dir.string(), "': no *.safetensors files"));
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  std::map<std::string, SafetensorsFile*> where;
  for (const auto& n : shard_names) {
    const fs::path p = dir / n;
    if (!fs::exists(p)) throw Error(cat("'", p.string(), "' is listed in the index but missing"));
    shards.push_back(std::make_unique<SafetensorsFile>(p.string()));
    for (const auto& [name, e] : shards.back()->entries()) where[name] = shards.back().get();
  }

  // A Sentence Transformers checkpoint (an embedding model, such as Qwen3-Embedding): its modules.json
  // and Pooling module's config are kept for the pooling runner (model/pooler_config.h).
  std::string st_modules, st_pooling;
  if (fs::exists(dir / "modules.json")) {
    st_modules = read_file((dir / "modules.json").string());
    try {
      const std::string path = sentence_transformers_pooling_path(st_modules);
      if (!path.empty() && fs::exists(dir / path / "config.json")) st_pooling = read_file((dir / path / "config.json").string());
      sentence_transformers_pooler(st_modules, st_pooling);
    } catch (const Error& e) {
      throw Error(cat("'", dir.string(), "': ", e.what()));
    }
  }
  // Base-model checkpoints (Qwen3Model, as embedding models are saved) name their tensors without the
  // "model." prefix; Mixtral's experts have names of their own (mixtral_weight_name).
  auto source_name = [&](const std::string& name) {
    if (where.count(name)) return name;
    if (const std::string m = mixtral_weight_name(name); m != name && where.count(m)) return m;
    if (name.rfind("model.", 0) != 0) return name;
    const std::string bare = name.substr(6);
    return where.count(bare) ? bare : name;
  };
  // An embedding checkpoint has no language-model head: the pooling runner does not read one, and the
  // converted file shares the embedding's rows (as a tied model) so that it loads.
  // A sequence classifier's head is its `score` matrix [num_labels, hidden_size], kept as float32.
  const bool classifier = is_sequence_classifier(spec.architecture);
  const bool embedding_model = !st_modules.empty() || spec.architecture.find("For") == std::string::npos || classifier;
  if (!spec.tie_word_embeddings && embedding_model && !where.count("lm_head.weight")) {
    spec.tie_word_embeddings = true;
    log_info("'", dir.string(), "' has no lm_head.weight (", classifier ? "a classifier" : "an embedding model",
             "): the converted file ties it to the embedding; serve it with the pooling runner");
  }
  if (classifier) {
    const auto it = where.find(source_name("score.weight"));
    if (it == where.end()) throw Error(cat("'", dir.string(), "': ", spec.architecture, " without its 'score.weight'"));
    const auto& e = it->second->entries().at(source_name("score.weight"));
    if (e.shape.size() != 2 || e.shape[1] != spec.hidden_size || e.shape[0] < 1)
      throw Error(cat("'", it->second->path(), "': 'score.weight' must be [num_labels, ", spec.hidden_size, "]"));
  }
  const auto expected = expected_weights(spec);
  // An integer-quantized matrix: NAME.weight stored as NAME.qweight, .qzeros, .scales (and GPTQ's .g_idx).
  auto quantized = [&](const std::string& name) {
    const std::string stem = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 ? name.substr(0, name.size() - 7) : "";
    if (iq.method == IntQuantConfig::Method::None || stem.empty() || where.count(source_name(name))) return std::string();
    const std::string q = source_name(stem + ".qweight");  // (with the checkpoint's prefix, or without)
    return where.count(q) ? q.substr(0, q.size() - 7) : std::string();
  };
  // Checks the shape and dtype of a quantized matrix's tensors against its [N, K] weight.
  auto check_quantized = [&](const std::string& stem, const std::vector<int64_t>& wshape) {
    const int64_t N = wshape.at(0), K = wshape.at(1), pack = 32 / iq.bits;
    const int64_t groups = iq.group_size < 0 ? 1 : (K + iq.group_size - 1) / iq.group_size;
    const bool awq = iq.method == IntQuantConfig::Method::Awq;
    auto want = [&](const std::string& part, const std::vector<int64_t>& shape, bool is_int) {
      const auto it = where.find(stem + part);
      if (it == where.end()) throw Error(cat("'", dir.string(), "': ", iq.name(), " tensor '", stem, part, "' missing from the checkpoint"));
      const auto& e = it->second->entries().at(stem + part);
      if (e.shape != shape || (is_int ? e.dtype != "I32" : e.dtype != "F16" && e.dtype != "BF16" && e.dtype != "F32")) {
        std::ostringstream s;
        for (auto d : shape) s << d << ' ';
        throw Error(cat("'", it->second->path(), "': ", iq.name(), " tensor '", stem, part, "' must be ", is_int ? "I32" : "F16/BF16/F32",
                        " [ ", s.str(), "] for a ", N, " x ", K, " matrix in groups of ", iq.group_size, ", got ", e.dtype));
      }
    };
    if (N % pack != 0 || (awq && K % iq.group_size != 0) || (!awq && K % pack != 0))
      throw Error(cat("'", dir.string(), "': the ", N, " x ", K, " matrix '", stem, "weight' does not divide into ", iq.name(), "'s packing"));
    want("qweight", awq ? std::vector<int64_t>{K, N / pack} : std::vector<int64_t>{K / pack, N}, true);
    want("qzeros", {groups, N / pack}, true);
    want("scales", {groups, N}, false);
    if (!awq && where.count(stem + "g_idx")) want("g_idx", {K}, true);
  };
  for (const auto& w : expected) {
    if (const std::string stem = quantized(w.name); !stem.empty()) {
      check_quantized(stem, w.shape);
      continue;
    }
    auto it = where.find(source_name(w.name));
    if (it == where.end()) {
      const std::string m = mixtral_weight_name(w.name);  // (a mixture's tensors have Mixtral's names too)
      throw Error(cat("'", dir.string(), "': tensor '", w.name, "'", m != w.name ? cat(" (or Mixtral's '", m, "')") : std::string(),
                      " missing from the checkpoint"));
    }
    const auto& e = it->second->entries().at(source_name(w.name));
    if (e.shape != w.shape) {
      std::ostringstream got, want;
      for (auto d : e.shape) got << d << ' ';
      for (auto d : w.shape) want << d << ' ';
      throw Error(cat("'", it->second->path(), "': tensor '", w.name, "' has shape [ ", got.str(), "], expected [ ",
                      want.str(), "] from config.json"));
    }
  }

  const TokenizerDocs td = TokenizerDocs::of_hf_dir(dir.string());
  std::map<std::string, std::string> docs;
  if (td.tokenizer_json) docs["tokenizer.json"] = *td.tokenizer_json;
  if (td.tokenizer_config_json) docs["tokenizer_config.json"] = *td.tokenizer_config_json;
  if (td.generation_config_json) docs["generation_config.json"] = *td.generation_config_json;
  const std::string chat_template = td.chat_template.value_or(""), chat_template_file = td.chat_template_file;
  // A tokenizer or chat template that would not load is refused now rather than when the converted
  // file is served.
  if (docs.count("tokenizer.json")) {
    try {
      Tokenizer check(docs["tokenizer.json"], docs.count("tokenizer_config.json") ? docs["tokenizer_config.json"] : "");
    } catch (const std::exception& e) {
      throw Error(cat("'", (dir / "tokenizer.json").string(), "': ", e.what()));
    }
  }
  if (!chat_template.empty()) {
    try {
      ChatTemplate check(chat_template, nlohmann::ordered_json::object());
    } catch (const std::exception& e) {
      throw Error(cat("'", chat_template_file, "': the chat template does not parse: ", e.what()));
    }
  }

  ModelWriter writer(opt.output, spec, "huggingface:" + fs::absolute(dir).string());
  writer.add_text("config", "hf_config.json", cfg_text);
  if (!st_modules.empty()) writer.add_text("config", "st_modules.json", st_modules);
  if (!st_pooling.empty()) writer.add_text("config", "st_pooling_config.json", st_pooling);
  for (const auto& [name, text] : docs) writer.add_text("tokenizer", name, text);
  if (!chat_template.empty()) writer.add_text("tokenizer", "chat_template", chat_template);

  int64_t dequantized = 0;
  for (const auto& w : expected) {
    if (const std::string stem = quantized(w.name); !stem.empty()) {
      auto ints = [&](const std::string& part) {
        const std::vector<char> raw = where.at(stem + part)->read(stem + part);
        std::vector<int32_t> v(raw.size() / 4);
        std::memcpy(v.data(), raw.data(), raw.size());
        return v;
      };
      const int64_t N = w.shape[0], K = w.shape[1];
      const std::vector<int32_t> qweight = ints("qweight"), qzeros = ints("qzeros");
      SafetensorsFile* sf = where.at(stem + "scales");
      const std::vector<float> scales = sf->read_f32(stem + "scales");
      const int64_t groups = static_cast<int64_t>(scales.size()) / N;
      std::vector<float> m;
      if (iq.method == IntQuantConfig::Method::Awq) {
        m = dequantize_awq(qweight.data(), qzeros.data(), scales.data(), K, N, iq.group_size);
      } else {
        const std::vector<int32_t> g_idx = where.count(stem + "g_idx") ? ints("g_idx") : std::vector<int32_t>();
        try {
          m = dequantize_gptq(qweight.data(), qzeros.data(), scales.data(), g_idx.empty() ? nullptr : g_idx.data(), K, N,
                              iq.group_size, iq.bits, iq.gptq_v1, groups);
        } catch (const Error& e) {
          throw Error(cat("'", sf->path(), "': '", stem, "g_idx': ", e.what()));
        }
      }
      // (keep: the scales' dtype, the checkpoint's 16-bit type)
      const DType dst = opt.dtype == "keep" ? safetensors_dtype(sf->entries().at(stem + "scales").dtype, sf->path(), stem + "scales")
                                            : dtype_from_name(opt.dtype);
      std::vector<char> data = cast(DType::F32, dst, m.data(), m.size());
      writer.add_tensor(w.name, dst, w.shape, data.data());
      ++dequantized;
      continue;
    }
    const std::string name = source_name(w.name);
    SafetensorsFile* f = where.at(name);
    const auto& e = f->entries().at(name);
    const DType src = safetensors_dtype(e.dtype, f->path(), w.name);
    const DType dst = opt.dtype == "keep" ? src : dtype_from_name(opt.dtype);
    std::vector<char> raw = f->read(name);
    size_t n = 1;
    for (auto d : w.shape) n *= static_cast<size_t>(d);
    std::vector<char> data = cast(src, dst, raw.data(), n);
    writer.add_tensor(w.name, dst, w.shape, data.data());
  }
  if (classifier) {
    const std::string name = source_name("score.weight");
    SafetensorsFile* f = where.at(name);
    const std::vector<float> data = f->read_f32(name);
    writer.add_tensor("score.weight", DType::F32, f->entries().at(name).shape, data.data());
  }
  writer.commit();
  if (dequantized > 0)
    log_info(iq.name(), ": ", dequantized, " matrices (", iq.bits, "-bit, groups of ", iq.group_size,
             ") dequantized; llmserve serves them at 16 bits (or FP8 with quantization fp8)");
  log_info("converted ", dir.string(), " (", spec.architecture, ", ", expected.size(), " tensors) -> ", opt.output);
}

// ---- GGUF ------------------------------------------------------------------

template <typename T>
T meta(const GgufFile& g, const std::string& key) {
  if (!g.has(key)) throw Error(cat("'", g.path(), "': GGUF metadata '", key, "' missing"));
  try {
    return g.metadata()[key].get<T>();
  } catch (const json::exception&) {
    throw Error(cat("'", g.path(), "': GGUF metadata '", key, "' has the wrong type"));
  }
}

// The merges of a SentencePiece BPE vocabulary (GGUF tokenizer model "llama": pieces with scores, no
// merges), as transformers' SentencePieceExtractor derives them for Llama 2's tokenizer.json: every split
// of a piece into two pieces of the vocabulary (at character boundaries), ordered by the piece's score,
// highest first (ties by piece id, then by the halves' ids).
json sentencepiece_merges(const std::vector<std::string>& tokens, const std::vector<double>& scores) {
  std::unordered_map<std::string, int64_t> id;
  for (size_t i = 0; i < tokens.size(); ++i) id.emplace(tokens[i], static_cast<int64_t>(i));
  struct M {
    double score;
    size_t piece;
    int64_t l, r;
  };
  std::vector<M> ms;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& p = tokens[i];
    for (size_t k = 1; k < p.size(); ++k) {
      if ((static_cast<unsigned char>(p[k]) & 0xC0) == 0x80) continue;  // (inside a character)
      auto l = id.find(p.substr(0, k)), r = id.find(p.substr(k));
      if (l != id.end() && r != id.end()) ms.push_back({scores[i], i, l->second, r->second});
    }
  }
  std::stable_sort(ms.begin(), ms.end(), [](const M& a, const M& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.piece != b.piece) return a.piece < b.piece;
    return a.l != b.l ? a.l < b.l : a.r < b.r;
  });
  json out = json::array();
  for (const M& m : ms) out.push_back(json::array({tokens[static_cast<size_t>(m.l)], tokens[static_cast<size_t>(m.r)]}));
  return out;
}

json gguf_pre_tokenizer(const std::string& pre, const std::string& path) {
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  auto split = [&](const std::string& re) {
    json bl = byte_level;
    bl["use_regex"] = false;
    return json{{"type", "Sequence"},
                {"pretokenizers",
                 json::array({json{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"},
                                   {"invert", false}},
                              bl})}};
  };
  if (pre == "gpt2" || pre == "default" || pre.empty()) return byte_level;
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell")
    return json{{"type", "Sequence"},
                {"pretokenizers", json::array({json{{"type", "Digits"}, {"individual_digits", true}}, byte_level})}};
  if (pre == "llama-bpe" || pre == "llama3")
    return split(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
  if (pre == "qwen2")
    return split(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
  throw Error(cat("'", path, "': GGUF tokenizer pre-tokenizer '", pre,
                  "' is not supported (supported: gpt2, smollm, starcoder, llama-bpe, qwen2)"));
}

void convert_gguf(const ConvertOptions& opt) {
  GgufFile g(opt.input);
  const std::string arch = meta<std::string>(g, "general.architecture");
  ModelSpec s;
  if (arch == "llama") {
    s.architecture = "LlamaForCausalLM", s.model_type = "llama";
  } else if (arch == "qwen2") {
    s.architecture = "Qwen2ForCausalLM", s.model_type = "qwen2";
  } else if (arch == "qwen3") {
    s.architecture = "Qwen3ForCausalLM", s.model_type = "qwen3";
    s.qk_norm = true;
  } else {
    throw Error(cat("'", opt.input, "': unsupported architecture ", arch, " (supported GGUF: llama, qwen2, qwen3)"));
  }
  auto k = [&](const char* key) { return arch + "." + key; };
  s.hidden_size = meta<int64_t>(g, k("embedding_length"));
  s.intermediate_size = meta<int64_t>(g, k("feed_forward_length"));
  s.num_layers = meta<int>(g, k("block_count"));
  s.num_heads = meta<int>(g, k("attention.head_count"));
  s.num_kv_heads = g.has(k("attention.head_count_kv")) ? meta<int>(g, k("attention.head_count_kv")) : s.num_heads;
  s.head_dim = g.has(k("attention.key_length")) ? meta<int>(g, k("attention.key_length"))
                                                  : static_cast<int>(s.hidden_size / s.num_heads);
  s.rms_norm_eps = meta<double>(g, k("attention.layer_norm_rms_epsilon"));
  s.rope_theta = g.has(k("rope.freq_base")) ? meta<double>(g, k("rope.freq_base")) : 10000.0;
  s.max_position_embeddings = meta<int64_t>(g, k("context_length"));
  if (g.has(k("rope.scaling.type"))) {
    const std::string t = meta<std::string>(g, k("rope.scaling.type"));
    if (t == "linear") {
      s.rope_scaling.type = "linear";
      s.rope_scaling.factor = meta<double>(g, k("rope.scaling.factor"));
    } else if (t == "yarn") {
      // As llama.cpp writes Qwen's YaRN (factor and original context; transformers' defaults for the
      // rest). Its ramp's ends (yarn_beta_fast / _slow: transformers' beta_fast / beta_slow) are read; its
      // other keys are taken at their defaults (no change: attn_factor and yarn_attn_factor 1,
      // yarn_ext_factor 1 or -1 (which llama.cpp reads as 1 for YaRN), yarn_log_multiplier 0) and refused
      // with any other value rather than ignored.
      const std::pair<const char*, std::vector<double>> neutral[] = {{"rope.scaling.attn_factor", {1.0}},
                                                                     {"rope.scaling.yarn_attn_factor", {1.0}},
                                                                     {"rope.scaling.yarn_ext_factor", {1.0, -1.0}},
                                                                     {"rope.scaling.yarn_log_multiplier", {0.0}}};
      for (const auto& [key, ok] : neutral) {
        if (!g.has(k(key))) continue;
        const double v = meta<double>(g, k(key));
        if (std::find(ok.begin(), ok.end(), v) == ok.end())
          throw Error(cat("'", opt.input, "': GGUF yarn rope scaling with '", k(key), "' = ", v,
                          " is not supported (only its default, which changes nothing)"));
      }
      if (g.has(k("rope.scaling.yarn_beta_fast"))) s.rope_scaling.beta_fast = meta<double>(g, k("rope.scaling.yarn_beta_fast"));
      if (g.has(k("rope.scaling.yarn_beta_slow"))) s.rope_scaling.beta_slow = meta<double>(g, k("rope.scaling.yarn_beta_slow"));
      s.rope_scaling.type = "yarn";
      s.rope_scaling.factor = meta<double>(g, k("rope.scaling.factor"));
      s.rope_scaling.original_max_position_embeddings = g.has(k("rope.scaling.original_context_length"))
                                                            ? meta<int64_t>(g, k("rope.scaling.original_context_length"))
                                                            : s.max_position_embeddings;
    } else if (t != "none") {
      throw Error(cat("'", opt.input, "': unsupported GGUF rope scaling '", t, "'"));
    }
  }
  if (g.tensors().count("rope_freqs.weight"))
    throw Error(cat("'", opt.input, "': GGUF rope_freqs (llama3 rope scaling) is not supported; convert the "
                    "Hugging Face checkpoint instead"));
  s.attention_bias = arch == "qwen2";
  s.tie_word_embeddings = g.tensors().count("output.weight") == 0;
  s.torch_dtype = "float32";

  const std::string tok_model = g.has("tokenizer.ggml.model") ? meta<std::string>(g, "tokenizer.ggml.model") : "";
  if (tok_model != "gpt2" && tok_model != "llama")
    throw Error(cat("'", opt.input, "': GGUF tokenizer model '", tok_model,
                    "' is not supported (gpt2: byte-level BPE; llama: SentencePiece BPE)"));
  const bool spm = tok_model == "llama";
  const auto tokens = meta<std::vector<std::string>>(g, "tokenizer.ggml.tokens");
  s.vocab_size = g.has(k("vocab_size")) ? meta<int64_t>(g, k("vocab_size")) : static_cast<int64_t>(tokens.size());
  std::vector<int> types = g.has("tokenizer.ggml.token_type") ? meta<std::vector<int>>(g, "tokenizer.ggml.token_type")
                                                              : std::vector<int>(tokens.size(), 1);
  if (types.size() != tokens.size()) throw Error(cat("'", opt.input, "': GGUF token_type does not list every token"));
  json merges;
  if (spm) {
    const auto scores = meta<std::vector<double>>(g, "tokenizer.ggml.scores");
    if (scores.size() != tokens.size()) throw Error(cat("'", opt.input, "': GGUF scores do not list every token"));
    merges = sentencepiece_merges(tokens, scores);
  } else {
    merges = meta<std::vector<std::string>>(g, "tokenizer.ggml.merges");
  }
  if (g.has("tokenizer.ggml.bos_token_id")) s.bos_token_id = meta<int64_t>(g, "tokenizer.ggml.bos_token_id");
  if (g.has("tokenizer.ggml.eos_token_id")) s.eos_token_ids = {meta<int64_t>(g, "tokenizer.ggml.eos_token_id")};
  try {
    model_spec_validate(s);
  } catch (const Error& e) {
    throw Error(cat("'", opt.input, "': ", e.what()));
  }

  // Hugging Face documents built from the GGUF metadata.
  json vocab = json::object(), added = json::array(), unk = nullptr;
  for (size_t i = 0; i < tokens.size(); ++i) {
    vocab[tokens[i]] = i;
    const int t = types[i];
    if (spm && t == 2 && unk.is_null()) unk = tokens[i];
    if ((spm && t == 2) || t == 3 || t == 4)  // unknown (SentencePiece's <unk>, special in Llama 2's tokenizer.json), control, user-defined
      added.push_back({{"id", i}, {"content", tokens[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", t == 4}, {"special", t != 4}});
  }
  json tokenizer = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
                    {"post_processor", nullptr},
                    {"model",
                     {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                      {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                      {"vocab", vocab}, {"merges", merges}}}};
  if (spm) {
    // As transformers' LlamaConverter writes a SentencePiece BPE model (Llama 2's tokenizer.json): "▁" for
    // spaces and before the text (llama.cpp's add_space_prefix, default on), characters with byte fallback.
    const bool space_prefix = !g.has("tokenizer.ggml.add_space_prefix") || meta<bool>(g, "tokenizer.ggml.add_space_prefix");
    json norm = json::array();
    if (space_prefix) norm.push_back({{"type", "Prepend"}, {"prepend", "\u2581"}});
    norm.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}});
    json dec = json::array({json{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                            json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}}});
    if (space_prefix) dec.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    tokenizer["normalizer"] = {{"type", "Sequence"}, {"normalizers", norm}};
    tokenizer["pre_tokenizer"] = nullptr;
    tokenizer["decoder"] = {{"type", "Sequence"}, {"decoders", dec}};
    tokenizer["model"]["unk_token"] = unk;
    tokenizer["model"]["fuse_unk"] = true;
    tokenizer["model"]["byte_fallback"] = std::find(types.begin(), types.end(), 6) != types.end();
  } else {
    const std::string pre = g.has("tokenizer.ggml.pre") ? meta<std::string>(g, "tokenizer.ggml.pre") : "";
    tokenizer["normalizer"] = nullptr;
    tokenizer["pre_tokenizer"] = gguf_pre_tokenizer(pre, opt.input);
    tokenizer["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  }
  auto tok_at = [&](int64_t id) -> json {
    return id >= 0 && id < static_cast<int64_t>(tokens.size()) ? json(tokens[id]) : json(nullptr);
  };
  // (llama.cpp adds BOS by default for SentencePiece vocabularies, not for gpt2 ones)
  const bool add_bos = g.has("tokenizer.ggml.add_bos_token") ? meta<bool>(g, "tokenizer.ggml.add_bos_token") : spm;
  json tok_cfg = {{"add_bos_token", add_bos},
                  {"bos_token", tok_at(s.bos_token_id)},
                  {"eos_token", s.eos_token_ids.empty() ? json(nullptr) : tok_at(s.eos_token_ids[0])}};
  if (g.has("tokenizer.ggml.padding_token_id")) tok_cfg["pad_token"] = tok_at(meta<int64_t>(g, "tokenizer.ggml.padding_token_id"));
  if (g.has("tokenizer.ggml.unknown_token_id")) tok_cfg["unk_token"] = tok_at(meta<int64_t>(g, "tokenizer.ggml.unknown_token_id"));
  std::string chat_template;
  if (g.has("tokenizer.chat_template")) {
    chat_template = meta<std::string>(g, "tokenizer.chat_template");
    tok_cfg["chat_template"] = chat_template;
  }
  json gen_cfg = {{"bos_token_id", s.bos_token_id}, {"eos_token_id", s.eos_token_ids}};
  json hf_cfg = {{"architectures", {s.architecture}}, {"model_type", s.model_type}, {"hidden_size", s.hidden_size},
                 {"intermediate_size", s.intermediate_size}, {"num_hidden_layers", s.num_layers},
                 {"num_attention_heads", s.num_heads}, {"num_key_value_heads", s.num_kv_heads},
                 {"head_dim", s.head_dim}, {"vocab_size", s.vocab_size}, {"rms_norm_eps", s.rms_norm_eps},
                 {"rope_theta", s.rope_theta}, {"max_position_embeddings", s.max_position_embeddings},
                 {"tie_word_embeddings", s.tie_word_embeddings}, {"hidden_act", "silu"},
                 {"bos_token_id", s.bos_token_id}, {"eos_token_id", s.eos_token_ids}, {"torch_dtype", "float32"}};
  if (s.rope_scaling.type == "linear") hf_cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", s.rope_scaling.factor}};
  if (s.rope_scaling.type == "yarn")
    hf_cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", s.rope_scaling.factor},
                              {"original_max_position_embeddings", s.rope_scaling.original_max_position_embeddings},
                              {"beta_fast", s.rope_scaling.beta_fast}, {"beta_slow", s.rope_scaling.beta_slow}};

  // Name map GGUF -> Hugging Face.
  std::map<std::string, std::string> hf_to_gguf = {{"model.embed_tokens.weight", "token_embd.weight"},
                                                   {"model.norm.weight", "output_norm.weight"},
                                                   {"lm_head.weight", "output.weight"}};
  const std::vector<std::pair<std::string, std::string>> per_layer = {
      {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},       {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},       {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},        {"mlp.down_proj.weight", "ffn_down.weight"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"}, {"self_attn.k_norm.weight", "attn_k_norm.weight"}};
  for (int l = 0; l < s.num_layers; ++l)
    for (const auto& [hf, gg] : per_layer) hf_to_gguf[layer_prefix(l) + hf] = "blk." + std::to_string(l) + "." + gg;

  const auto expected = expected_weights(s);
  for (const auto& w : expected) {
    const std::string& gname = hf_to_gguf.at(w.name);
    auto it = g.tensors().find(gname);
    if (it == g.tensors().end()) throw Error(cat("'", opt.input, "': tensor '", gname, "' missing"));
    if (it->second.hf_shape() != w.shape)
      throw Error(cat("'", opt.input, "': tensor '", gname, "' has a shape that does not match the metadata"));
  }

  const DType dst = opt.dtype == "keep" ? DType::F32 : dtype_from_name(opt.dtype);
  ModelWriter writer(opt.output, s, "gguf:" + fs::absolute(opt.input).string());
  writer.add_text("config", "hf_config.json", hf_cfg.dump(2));
  writer.add_text("tokenizer", "tokenizer.json", tokenizer.dump());
  writer.add_text("tokenizer", "tokenizer_config.json", tok_cfg.dump(2));
  writer.add_text("tokenizer", "generation_config.json", gen_cfg.dump(2));
  if (!chat_template.empty()) writer.add_text("tokenizer", "chat_template", chat_template);
  for (const auto& w : expected) {
    std::vector<float> v = g.read_f32(hf_to_gguf.at(w.name));
    if (arch == "llama" && w.name.ends_with("q_proj.weight")) v = gguf_unpermute_rows(v, w.shape[0], w.shape[1], s.num_heads);
    if (arch == "llama" && w.name.ends_with("k_proj.weight")) v = gguf_unpermute_rows(v, w.shape[0], w.shape[1], s.num_kv_heads);
    std::vector<char> data = cast(DType::F32, dst, v.data(), v.size());
    writer.add_tensor(w.name, dst, w.shape, data.data());
  }
  writer.commit();
  log_info("converted ", opt.input, " (GGUF ", arch, ", ", expected.size(), " tensors, ", dtype_name(dst), ") -> ",
           opt.output);
}

}  // namespace

void convert_model(const ConvertOptions& opt) {
  if (opt.dtype != "keep") {  // validates, naming keep too
    try {
      dtype_from_name(opt.dtype);
    } catch (const Error&) {
      throw Error(cat("unknown --dtype '", opt.dtype, "' (expected keep, bfloat16, float16 or float32)"));
    }
  }
  if (!fs::exists(opt.input)) throw Error(cat("input '", opt.input, "' does not exist"));
  check_output(opt);
  if (fs::is_directory(opt.input)) {
    convert_hf(opt);
  } else if (opt.input.ends_with(".gguf")) {
    convert_gguf(opt);
  } else {
    throw Error(cat("input '", opt.input, "' is neither a Hugging Face checkpoint directory nor a .gguf file"));
  }
}

}  // namespace llmserve
