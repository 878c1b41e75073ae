// `llmserve logits`: the offline debug path. Runs prompts given as token ids through the full
// distributed model (any tp x pp layout), and writes the top-k logits at every prompt position, a
// greedy continuation, and optionally the full last-position logits (float32, one row per prompt).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "cli/commands/batch_loop.h"
#include "cli/commands/commands.h"
#include "cli/commands/data_parallel.h"
#include "common/error.h"
#include "common/json_text.h"
#include "common/log.h"
#include "config/config.h"
#include "dist/collective_check.h"
#include "model/pooler_config.h"
#include "model/runner.h"
#include "chat/chat_template.h"
#include "engine/prompt_input.h"
#include "model/dummy_weights.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {
namespace {

using json = nlohmann::json;

struct LogitsArgs {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<nlohmann::ordered_json> requests;  // from --prompts, turned into prompts once the model is known
  std::vector<int32_t> lora;                     // each prompt's LoRA adapter slot (a --prompts line's `model`)
  int max_tokens = 0;
  int top_k = 5;
  bool stop_at_eos = false;
  std::string output;
  std::string logits_output;
};

std::vector<int32_t> parse_ids(const std::string& s, const std::string& where) {
  std::vector<int32_t> ids;
  std::string tok;
  std::istringstream is(s);
  while (std::getline(is, tok, ',')) {
    tok.erase(0, tok.find_first_not_of(" \t"));
    tok.erase(tok.find_last_not_of(" \t") + 1);
    if (tok.empty()) continue;
    char* end = nullptr;
    long v = std::strtol(tok.c_str(), &end, 10);
    if (*end != '\0' || v < 0 || v > INT32_MAX) throw Error(cat(where, ": '", tok, "' is not a token id"));
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

// Subcommand options; everything else is configuration.
std::vector<std::string> take_logits_args(const std::vector<std::string>& args, LogitsArgs& la) {
  std::vector<std::string> rest;
  auto value = [&](size_t& i, const std::string& name) {
    const std::string& a = args[i];
    if (auto eq = a.find('='); eq != std::string::npos) return a.substr(eq + 1);
    if (i + 1 >= args.size()) throw Error(cat("logits: ", name, " needs a value"));
    return args[++i];
  };
  auto is = [](const std::string& a, const std::string& n) { return a == n || a.rfind(n + "=", 0) == 0; };
  auto to_int = [](const std::string& v, const std::string& n) {
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || x < 0 || x > 1000000) throw Error(cat("logits: ", n, " must be an integer from 0 to 1000000"));
    return static_cast<int>(x);
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (is(a, "--prompt-ids")) {
      la.prompts.push_back(parse_ids(value(i, "--prompt-ids"), "--prompt-ids"));
    } else if (is(a, "--prompts")) {
      const std::string path = value(i, "--prompts");
      std::ifstream f(path);
      if (!f) throw Error(cat("logits: cannot read '", path, "'"));
      std::string line;
      int n = 0;
      while (std::getline(f, line)) {
        ++n;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
          la.requests.push_back(parse_json<nlohmann::ordered_json>(line));
          const auto& j = la.requests.back();
          if (!j.is_object() || !(j.contains("ids") || j.contains("messages") || j.contains("prompt")))
            throw Error("no \"ids\", \"messages\" or \"prompt\"");
        } catch (const std::exception& e) {
          throw Error(cat("logits: ", path, " line ", n,
                          ": expected {\"ids\": [...]}, {\"messages\": [...]} or {\"prompt\": \"...\"}: ", e.what()));
        }
      }
    } else if (is(a, "--max-tokens")) {
      la.max_tokens = to_int(value(i, "--max-tokens"), "--max-tokens");
    } else if (is(a, "--top-k")) {
      la.top_k = to_int(value(i, "--top-k"), "--top-k");
    } else if (a == "--stop-at-eos") {
      la.stop_at_eos = true;
    } else if (is(a, "--output")) {
      la.output = value(i, "--output");
    } else if (is(a, "--logits-output")) {
      la.logits_output = value(i, "--logits-output");
    } else {
      rest.push_back(a);
    }
  }
  return rest;
}

std::vector<int32_t> top_k_ids(const float* row, int64_t V, int k) {
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  k = static_cast<int>(std::min<int64_t>(k, V));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return row[a] > row[b] || (row[a] == row[b] && a < b);
  });
  idx.resize(k);
  return idx;
}

// Builds the step for `tokens` at positions [start, start+len) of one sequence with `blocks` (and LoRA
// adapter slot `lora`).
StepMeta one_sequence_step(const std::vector<int32_t>& tokens, int32_t start, const std::vector<int32_t>& blocks,
                           int32_t block_size, bool all_logits, int32_t lora) {
  StepMeta m;
  const int32_t T = static_cast<int32_t>(tokens.size());
  m.token_ids = tokens;
  for (int32_t i = 0; i < T; ++i) {
    const int32_t p = start + i;
    m.positions.push_back(p);
    m.slot_mapping.push_back(blocks[p / block_size] * block_size + p % block_size);
  }
  m.q_start = {0, T};
  m.block_tables = blocks;
  m.max_blocks = static_cast<int32_t>(blocks.size());
  if (lora > 0) m.lora = {lora};
  if (all_logits) {
    for (int32_t i = 0; i < T; ++i) m.logits_indices.push_back(i);
  } else {
    m.logits_indices = {T - 1};
  }
  return m;
}

}  // namespace

bool model_has_file(const Config& cfg) { return model_has_file(cfg.load_format, cfg.model); }

std::optional<TokenizerDocs> served_tokenizer_docs(const Config& cfg) {
  if (cfg.skip_tokenizer_init) return std::nullopt;
  if (!cfg.tokenizer.empty()) return TokenizerDocs::at(cfg.tokenizer);
  if (!model_has_file(cfg)) return std::nullopt;
  return TokenizerDocs::of_model_file(ModelFile(cfg.model));
}

void parse_batch_args(const std::vector<std::string>& args, const char* command, const std::vector<std::string>& input_names,
                      const std::vector<std::string>& output_names, bool rank0, Config& cfg, std::string& input,
                      std::string& output) {
  std::vector<std::string> rest;
  // Whether a is one of names, alone (its value next) or as "--name=value" (value set).
  auto named = [](const std::string& a, const std::vector<std::string>& names, std::string& value) {
    for (const auto& n : names) {
      if (a == n) return true;
      if (n.rfind("--", 0) == 0 && a.rfind(n + "=", 0) == 0) return value = a.substr(n.size() + 1), true;
    }
    return false;
  };
  for (size_t i = 0; i < args.size(); ++i) {
    std::string value;
    std::string* target = named(args[i], input_names, value) ? &input : named(args[i], output_names, value) ? &output : nullptr;
    if (!target) {
      rest.push_back(args[i]);
      continue;
    }
    if (value.empty() && args[i].find('=') == std::string::npos) {
      if (i + 1 >= args.size()) throw Error(cat(command, ": ", args[i], " needs a value"));
      value = args[++i];
    }
    *target = value;
  }
  auto extra = config_parse_args(cfg, rest);
  config_take_model_argument(cfg, extra);
  if (!extra.empty()) throw Error(cat(command, ": unexpected argument '", extra[0], "'"));
  if (std::string(command) == "generate" && (cfg.runner == "pooling" || cfg.convert == "embed"))
    throw Error(cat(command, " makes text: embeddings (runner pooling, convert embed) are served at /v1/embeddings by "
                    "`llmserve serve`, or `llmserve run-batch` with that url"));
  if (input.empty() || output.empty())
    throw Error(cat(command, ": ", input_names.front(), " requests.jsonl and ", output_names.front(), " results.jsonl are required"));
  if (!rank0) return;
  if (!std::ifstream(input)) throw Error(cat(command, ": cannot read '", input, "'"));
  check_writable(output, command);
}

void check_writable(const std::string& path, const char* command) {
  const std::string tmp = path + ".tmp";
  if (!std::ofstream(tmp, std::ios::binary)) throw Error(cat(command, ": cannot write '", path, "'"));
  std::remove(tmp.c_str());
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw Error(cat("cannot write '", path, "'"));
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!f) {
      std::remove(tmp.c_str());
      throw Error(cat("cannot write '", path, "' (disk full?)"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(cat("cannot rename '", tmp, "' to '", path, "'"));
  }
}

int cmd_logits(const std::vector<std::string>& args, MPI_Comm world) {
  Config cfg;
  LogitsArgs la;
  int rank = 0;
  MPI_Comm_rank(world, &rank);
  agree(world, [&] {
    std::vector<std::string> rest = config_parse_args(cfg, take_logits_args(args, la));
    config_take_model_argument(cfg, rest);
    if (!rest.empty()) throw Error(cat("logits: unexpected argument '", rest[0], "'"));
    refuse_data_parallel(cfg, "logits");
    if (la.prompts.empty() && la.requests.empty())
      throw Error("logits: no prompts (--prompt-ids 1,2,3 or --prompts file.jsonl)");
    // Prompts given as chat messages or text go through the model's chat template and tokenizer.
    std::unique_ptr<Tokenizer> tok;
    std::unique_ptr<ChatTemplate> chat;
    for (size_t i = 0; i < la.requests.size(); ++i) {
      const auto& r = la.requests[i];
      if (!tok && !r.contains("ids") && !r.contains("prompt_token_ids")) {
        if (cfg.model.empty()) throw Error("config: model is required (a .h5 file made by llmserve-convert)");
        const auto docs = served_tokenizer_docs(cfg);
        if (!docs) throw Error("logits: a text prompt needs a tokenizer, which a dummy model has none of (give --tokenizer, or prompt ids)");
        tok = Tokenizer::from_docs(*docs);
        chat = ChatTemplate::from_docs(*docs, cfg.chat_template);
      }
      try {
        la.prompts.push_back(prompt_from_json(r, tok.get(), chat.get()));
      } catch (const Error& e) {
        throw Error(cat("logits: prompt ", i, ": ", e.what()));
      }
    }
    for (size_t i = 0; i < la.prompts.size(); ++i)
      if (la.prompts[i].empty()) throw Error(cat("logits: prompt ", i, " is empty"));
    if (rank != 0) return;  // (rank 0 writes the outputs)
    if (!la.output.empty() && la.output != "-") check_writable(la.output, "logits");
    if (!la.logits_output.empty()) check_writable(la.logits_output, "logits");
  });
  ModelRunner runner(cfg, world);
  agree(world, [&] {
    refuse_classifier_text("logits", runner.spec().architecture);
    la.lora.assign(la.prompts.size(), 0);  // (--prompt-ids first, then the --prompts lines)
    const size_t first = la.prompts.size() - la.requests.size();
    for (size_t i = 0; i < la.requests.size(); ++i) {
      try {
        la.lora[first + i] = line_lora(la.requests[i], runner, cfg);
      } catch (const Error& e) {
        throw Error(cat("logits: prompt ", first + i, ": ", e.what()));
      }
    }
  });
  const int64_t V = runner.spec().vocab_size;
  const int32_t bs = static_cast<int32_t>(runner.block_size());
  agree(world, [&] {
    for (size_t i = 0; i < la.prompts.size(); ++i) {
      for (int32_t id : la.prompts[i])
        if (id >= V) throw Error(cat("logits: prompt ", i, ": token id ", id, " is outside the vocabulary (", V, ")"));
      const int64_t need = static_cast<int64_t>(la.prompts[i].size()) + la.max_tokens;
      if (need > cfg.max_model_len)
        throw Error(cat("logits: prompt ", i, " (", la.prompts[i].size(), " tokens) + --max-tokens ", la.max_tokens,
                        " exceeds max_model_len ", cfg.max_model_len));
    }
  });

  const std::vector<int64_t> eos = runner.spec().eos_token_ids;
  // Decoded text in the output when the model carries a tokenizer.
  std::unique_ptr<Tokenizer> tok;
  if (rank == 0 && (model_has_file(cfg) || !cfg.tokenizer.empty())) {
    try {
      tok = Tokenizer::from_docs(*served_tokenizer_docs(cfg));
    } catch (const Error& e) {
      log_warn("no generated_text in the output: ", e.what());
    }
  }
  BlockAllocator blocks(runner.num_blocks());
  std::string jsonl;
  std::string last_logits;
  for (size_t pi = 0; pi < la.prompts.size(); ++pi) {
    const auto& prompt = la.prompts[pi];
    const int32_t total = static_cast<int32_t>(prompt.size()) + la.max_tokens;
    std::vector<int32_t> table = blocks.allocate((total + bs - 1) / bs);
    std::vector<float> logits = runner.step(one_sequence_step(prompt, 0, table, bs, true, la.lora[pi]));
    json rec = {{"prompt_ids", prompt}};
    int32_t next = 0;
    if (rank == 0) {
      const int64_t T = static_cast<int64_t>(prompt.size());
      json top_ids = json::array(), top_logits = json::array();
      for (int64_t t = 0; t < T; ++t) {
        const float* row = &logits[t * V];
        auto ids = top_k_ids(row, V, la.top_k);
        json vals = json::array();
        for (int32_t id : ids) vals.push_back(row[id]);
        top_ids.push_back(ids);
        top_logits.push_back(vals);
      }
      rec["top_ids"] = top_ids;
      rec["top_logits"] = top_logits;
      const float* last = &logits[(T - 1) * V];
      last_logits.append(reinterpret_cast<const char*>(last), V * sizeof(float));
      next = top_k_ids(last, V, 1)[0];
    }
    std::vector<int32_t> generated;
    for (int step = 0; step < la.max_tokens; ++step) {
      runner.world().broadcast(&next, sizeof next, 0);
      generated.push_back(next);
      if (step + 1 == la.max_tokens) break;
      if (la.stop_at_eos && std::count(eos.begin(), eos.end(), next)) break;
      const int32_t pos = static_cast<int32_t>(prompt.size()) + step;
      std::vector<float> l = runner.step(one_sequence_step({next}, pos, table, bs, false, la.lora[pi]));
      if (rank == 0) next = top_k_ids(l.data(), V, 1)[0];
    }
    blocks.release(table);
    if (rank == 0) {
      rec["generated_ids"] = generated;
      if (tok) rec["generated_text"] = tok->decode(generated, true);
      jsonl += json_text(rec) + "\n";
    }
  }
  int rc = 0;
  agree(world, [&] {
    if (rank != 0) return;
    if (la.output.empty() || la.output == "-") {
      std::cout << jsonl << std::flush;
    } else {
      write_file_atomic(la.output, jsonl);
    }
    if (!la.logits_output.empty()) write_file_atomic(la.logits_output, last_logits);
  });
  return rc;
}

}  // namespace llmserve
