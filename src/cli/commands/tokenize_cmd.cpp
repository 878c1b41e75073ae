// `llmserve tokenize` and `llmserve detokenize`: the model's own tokenizer from the command line.
// Both run on one process (rank 0 does the work when started under mpirun).
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands/commands.h"
#include "common/error.h"
#include "common/json_text.h"
#include "config/config.h"
#include "dist/collective_check.h"
#include "chat/chat_template.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {
namespace {

using json = nlohmann::json;

// Splits off the flags of these commands, loads the model's tokenizer, returns the positionals.
std::vector<std::string> setup(const std::vector<std::string>& args, const char* flag, bool& flag_value,
                               std::unique_ptr<Tokenizer>& tok, std::string* model_path = nullptr) {
  std::vector<std::string> rest;
  for (const auto& a : args) {
    if (a == flag) {
      flag_value = true;
    } else {
      rest.push_back(a);
    }
  }
  Config cfg;
  std::vector<std::string> pos;
  // A lone "-" (read standard input) is positional, not an option.
  std::vector<std::string> cfg_args;
  for (const auto& a : rest) (a == "-" ? pos : cfg_args).push_back(a);
  for (auto& p : config_parse_args(cfg, cfg_args)) pos.push_back(p);
  if (cfg.model.empty()) throw Error("a model is required (--model m.h5 or a config file)");
  ModelFile file(cfg.model);
  tok = Tokenizer::from_model_file(file);
  if (model_path) *model_path = cfg.model;
  return pos;
}

std::string input_text(const std::vector<std::string>& pos, const char* what) {
  if (pos.size() > 1) throw Error(cat("expected one ", what, " argument (quote it), got ", pos.size()));
  if (pos.empty() || pos[0] == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  return pos[0];
}

}  // namespace

int cmd_tokenize(const std::vector<std::string>& args, MPI_Comm world) {
  int rank = 0;
  MPI_Comm_rank(world, &rank);
  agree(world, [&] {
    if (rank != 0) return;
    bool add_special = false, messages = false;
    std::unique_ptr<Tokenizer> tok;
    std::vector<std::string> rest;
    for (const auto& a : args) (a == "--messages" ? messages = true : (rest.push_back(a), false));
    std::string model;
    auto pos = setup(rest, "--add-special-tokens", add_special, tok, &model);
    std::string text = input_text(pos, messages ? "messages" : "text");
    json out;
    if (messages) {
      // A JSON list of chat messages, rendered with the model's chat template.
      nlohmann::ordered_json msgs;
      try {
        msgs = parse_json<nlohmann::ordered_json>(text);
      } catch (const std::exception& e) {
        throw Error(cat("tokenize: --messages expects a JSON list of messages: ", e.what()));
      }
      text = ChatTemplate::from_model_file(ModelFile(model))->render(parse_tool_call_arguments(msgs));
      out["prompt"] = text;
    }
    const auto ids = tok->encode(text, add_special && !messages);
    json tokens = json::array();
    for (int32_t id : ids) tokens.push_back(tok->id_to_token(id));
    out["ids"] = ids;
    out["count"] = ids.size();
    out["tokens"] = tokens;
    std::cout << json_text(out) << "\n";
  });
  return 0;
}

int cmd_detokenize(const std::vector<std::string>& args, MPI_Comm world) {
  int rank = 0;
  MPI_Comm_rank(world, &rank);
  agree(world, [&] {
    if (rank != 0) return;
    bool skip = false;
    std::unique_ptr<Tokenizer> tok;
    auto pos = setup(args, "--skip-special-tokens", skip, tok);
    const std::string text = input_text(pos, "id list");
    std::vector<int32_t> ids;
    try {
      const json j = parse_json(text.find('[') != std::string::npos ? text : "[" + text + "]");
      ids = j.get<std::vector<int32_t>>();
    } catch (const json::exception&) {
      throw Error(cat("detokenize: expected token ids like 1,2,3 or [1, 2, 3], got '", text, "'"));
    }
    for (int32_t id : ids)
      if (id < 0 || id >= tok->vocab_size())
        throw Error(cat("detokenize: token id ", id, " is outside the vocabulary (", tok->vocab_size(), ")"));
    std::cout << tok->decode(ids, skip) << std::flush;
  });
  return 0;
}

}  // namespace llmserve
