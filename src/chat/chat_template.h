// Renders a model's chat template the way transformers' apply_chat_template does: variables
// messages, tools, add_generation_prompt, the special tokens (bos_token, eos_token, unk_token,
// pad_token) and any extra template kwargs (e.g. enable_thinking).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "chat/jinja.h"

namespace llmserve {

class ModelFile;
struct TokenizerDocs;

struct ChatRenderOptions {
  bool add_generation_prompt = true;
  // vLLM's and transformers' continue_final_message: the prompt ends with the final message's content,
  // open (no end-of-turn after it), so the model continues that message. Not with add_generation_prompt.
  bool continue_final_message = false;
  nlohmann::ordered_json tools = nullptr;                              // a list, or null
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();
  // A template of the request's own (its `chat_template`, or chat_template_kwargs' `chat_template`), taken
  // only where the server trusts them (vLLM's --trust-request-chat-template); empty: the server's.
  std::string request_template;
};

// The rendering options a chat request names (tools, chat_template_kwargs, add_generation_prompt,
// continue_final_message, with vLLM's names), for the server and `llmserve generate` alike. Throws
// Error naming a field of the wrong type, and, unless `trust_template`, for a template of the request's
// own (vLLM's message). `default_kwargs` (vLLM's default_chat_template_kwargs, an object) are the
// template's keyword arguments under the request's chat_template_kwargs, which win key by key.
ChatRenderOptions chat_render_options(const nlohmann::ordered_json& request, bool trust_template = false,
                                      const nlohmann::ordered_json& default_kwargs = nlohmann::ordered_json::object());

class ChatTemplate {
 public:
  // Parses `source`; throws Error when the template cannot be parsed. `special_tokens` maps
  // bos_token etc. to their text.
  ChatTemplate(const std::string& source, nlohmann::ordered_json special_tokens);
  // The model's template (or ChatML, with a warning, when it has none); `chat_template`, when not
  // empty, replaces it (the configuration's value: a file or the template, read by load_chat_template).
  static std::unique_ptr<ChatTemplate> from_model_file(const ModelFile& file, const std::string& chat_template = "");
  // The same from tokenizer documents (tokenizer/tokenizer_docs.h: a model file's or a directory's).
  static std::unique_ptr<ChatTemplate> from_docs(const TokenizerDocs& docs, const std::string& chat_template = "");
  // Throws Error (a 400 for the server) when rendering fails, e.g. raise_exception in the template.
  std::string render(const nlohmann::ordered_json& messages, const ChatRenderOptions& opt = {}) const;
  // A template of other source with this one's special tokens (a request's own template). Throws Error
  // when it cannot be parsed.
  std::unique_ptr<ChatTemplate> with_source(const std::string& source) const;
  bool is_fallback() const { return fallback_; }

  static const char* chatml();

 private:
  jinja::Template tmpl_;
  nlohmann::ordered_json special_;
  bool fallback_ = false;
};

// vLLM's --chat-template value: the text of the file it names, or, when no file opens and it has a
// '{', '}' or newline, the template itself with its backslash escapes (\n, \t, \r, \\, \', \")
// decoded. Throws Error for a value that looks like a path and cannot be read.
std::string load_chat_template(const std::string& value);

// OpenAI messages carry tool-call arguments as JSON strings; templates expect objects. Returns a copy
// with every parseable `tool_calls[].function.arguments` string replaced by its JSON value.
nlohmann::ordered_json parse_tool_call_arguments(const nlohmann::ordered_json& messages);

}  // namespace llmserve
