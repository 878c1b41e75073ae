// Where a served model's text handling comes from: the tokenizer documents of an llmserve model file (its
// /tokenizer group, as llmserve-convert stored them), or of a Hugging Face directory (vLLM's --tokenizer:
// tokenizer.json, tokenizer_config.json, and the chat template of chat_template.jinja or else
// tokenizer_config.json's chat_template, as transformers reads them).
#pragma once
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

 private:
  static TokenizerDocs checked(TokenizerDocs d);  // d, or Error when it has no tokenizer.json
};

}  // namespace llmserve
