#include "tokenizer/tokenizer_docs.h"

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "model/model_file.h"

namespace llmserve {
namespace fs = std::filesystem;

std::string TokenizerDocs::info(const std::string& chat_template) const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (tokenizer_config_json) {
    j = nlohmann::ordered_json::parse(*tokenizer_config_json, nullptr, false);
    if (!j.is_object()) throw Error(cat(origin, ": tokenizer_config.json is not a JSON object"));
  }
  j.erase("vocab_file");
  j.erase("merges_file");
  // transformers' fast class of the configured one (Qwen2Tokenizer -> Qwen2TokenizerFast), as vLLM reports
  // type(tokenizer).__name__; PreTrainedTokenizerFast without a class.
  std::string cls = j.contains("tokenizer_class") && j["tokenizer_class"].is_string() ? j["tokenizer_class"].get<std::string>()
                                                                                      : "PreTrainedTokenizerFast";
  if (cls.size() < 4 || cls.compare(cls.size() - 4, 4, "Fast") != 0) cls += "Fast";
  j["tokenizer_class"] = cls;
  const std::optional<std::string> tmpl = chat_template.empty() ? this->chat_template : std::optional<std::string>(chat_template);
  if (tmpl) j["chat_template"] = *tmpl;
  return j.dump();
}

TokenizerDocs TokenizerDocs::of_model_file(const ModelFile& file) {
  TokenizerDocs d;
  d.origin = cat("model file '", file.path(), "'");
  d.tokenizer_json = file.text("tokenizer", "tokenizer.json");
  d.tokenizer_config_json = file.text("tokenizer", "tokenizer_config.json");
  d.generation_config_json = file.text("tokenizer", "generation_config.json");
  d.chat_template = file.text("tokenizer", "chat_template");
  return d;
}

TokenizerDocs TokenizerDocs::of_hf_dir(const std::string& dir_name) {
  const fs::path dir(dir_name);
  TokenizerDocs d;
  d.origin = cat("'", dir_name, "'");
  auto doc = [&](const char* name) -> std::optional<std::string> {
    if (!fs::exists(dir / name)) return std::nullopt;
    return read_file((dir / name).string());
  };
  d.tokenizer_json = doc("tokenizer.json");
  d.tokenizer_config_json = doc("tokenizer_config.json");
  d.generation_config_json = doc("generation_config.json");
  if (fs::exists(dir / "chat_template.jinja")) {
    d.chat_template_file = (dir / "chat_template.jinja").string();
    d.chat_template = read_file(d.chat_template_file);
  } else if (d.tokenizer_config_json) {
    const auto tc = nlohmann::json::parse(*d.tokenizer_config_json, nullptr, false);
    if (tc.is_discarded()) throw Error(cat("'", (dir / "tokenizer_config.json").string(), "' is not valid JSON"));
    if (tc.is_object() && tc.contains("chat_template") && tc["chat_template"].is_string()) {
      d.chat_template_file = (dir / "tokenizer_config.json").string();
      d.chat_template = tc["chat_template"].get<std::string>();
    }
  }
  return d;
}

TokenizerDocs TokenizerDocs::at(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return checked(of_hf_dir(path));
  std::unique_ptr<ModelFile> file;
  try {
    file = std::make_unique<ModelFile>(path);
  } catch (const Error& e) {
    throw Error(cat("tokenizer '", path, "' is neither a tokenizer directory nor an llmserve model file: ", e.what()));
  }
  return checked(of_model_file(*file));
}

TokenizerDocs TokenizerDocs::checked(TokenizerDocs d) {
  if (!d.tokenizer_json)
    throw Error(cat("tokenizer ", d.origin, " has no tokenizer.json (a Hugging Face tokenizer directory or an llmserve model file "
                    "converted with one)"));
  return d;
}

}  // namespace llmserve
