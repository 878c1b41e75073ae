// Where a served model's text handling comes from: the tokenizer documents of an llmserve model file (its
// /tokenizer group, as llmserve-convert stored them), or of a Hugging Face directory (vLLM's --tokenizer:
// tokenizer.json, tokenizer_config.json, and the chat template of chat_template.jinja or else
// tokenizer_config.json's chat_template, as transformers reads them).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

namespace llmserve {

class ModelFile;

struct TokenizerDocs {
  std::string origin;  // for messages: "model file 'PATH'" or "'DIR'"
  std::optional<std::string> tokenizer_json, tokenizer_config_json, generation_config_json;
  std::optional<std::string> chat_template;
  std::string chat_template_file;  // where the chat template was read (a directory's file)

  static TokenizerDocs of_model_file(const ModelFile& file);
  // Throws Error when `dir` cannot be read or its tokenizer_config.json is not JSON.
  static TokenizerDocs of_hf_dir(const std::string& dir);
  // A directory's documents, else a model file's. Throws Error naming `path` when it is neither, or has no
  // tokenizer.json.
  static TokenizerDocs at(const std::string& path);
  // vLLM's GET /tokenizer_info: the tokenizer's configuration as transformers loads it (tokenizer_config.json's
  // keys in order, less its file paths vocab_file and merges_file), tokenizer_class the fast class
  // AutoTokenizer makes of it (tokenizer.json is there), and chat_template the served one:
  // `chat_template` (the configuration's, already loaded) when given, else the model's (none: left out).
  // JSON text. Throws Error for a tokenizer_config.json that is not a JSON object.
  std::string info(const std::string& chat_template = "") const;

 private:
  static TokenizerDocs checked(TokenizerDocs d);  // d, or Error when it has no tokenizer.json
};

}  // namespace llmserve
