#include "chat/chat_template.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/json_text.h"
#include "common/log.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer_docs.h"

namespace llmserve {
using ojson = nlohmann::ordered_json;

const char* ChatTemplate::chatml() {
  return "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
}

ChatTemplate::ChatTemplate(const std::string& source, ojson special_tokens)
    : tmpl_(source), special_(std::move(special_tokens)) {}

std::string load_chat_template(const std::string& value) {
  std::ifstream in(value, std::ios::binary);
  if (in) {
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad() || text.str().empty()) throw Error(cat("chat_template: '", value, "' is empty or cannot be read"));
    return text.str();
  }
  if (value.find_first_of("{}\n") == std::string::npos)
    throw Error(cat("chat_template '", value, "' looks like a file path, but it cannot be opened: ", std::strerror(errno)));
  std::string out;
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (c != '\\' || i + 1 == value.size()) {
      out += c;
      continue;
    }
    switch (const char e = value[++i]) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': case '\'': case '"': out += e; break;
      default: out += '\\', out += e;
    }
  }
  return out;
}

std::unique_ptr<ChatTemplate> ChatTemplate::from_model_file(const ModelFile& file, const std::string& chat_template) {
  return from_docs(TokenizerDocs::of_model_file(file), chat_template);
}

std::unique_ptr<ChatTemplate> ChatTemplate::from_docs(const TokenizerDocs& docs, const std::string& chat_template) {
  ojson special = ojson::object();
  if (docs.tokenizer_config_json) {
    ojson cfg;
    try {
      cfg = ojson::parse(*docs.tokenizer_config_json);
    } catch (const ojson::exception& e) {
      throw Error(cat(docs.origin, ": tokenizer_config.json is not valid JSON: ", e.what()));
    }
    for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
      if (!cfg.contains(k) || cfg[k].is_null()) continue;
      if (cfg[k].is_string()) special[k] = cfg[k];
      if (cfg[k].is_object() && cfg[k].contains("content")) special[k] = cfg[k]["content"];
    }
  }
  std::unique_ptr<ChatTemplate> t;
  if (!chat_template.empty()) {
    const std::string source = load_chat_template(chat_template);
    try {
      t = std::make_unique<ChatTemplate>(source, special);
    } catch (const Error& e) {
      throw Error(cat("chat_template cannot be used: ", e.what()));
    }
    return t;
  }
  const auto& src = docs.chat_template;
  try {
    t = std::make_unique<ChatTemplate>(src ? *src : std::string(chatml()), special);
  } catch (const Error& e) {
    throw Error(cat(docs.origin, ": its chat template cannot be used: ", e.what()));
  }
  if (!src) {
    log_warn(docs.origin, " has no chat template; using ChatML");
    t->fallback_ = true;
  }
  return t;
}

std::unique_ptr<ChatTemplate> ChatTemplate::with_source(const std::string& source) const {
  return std::make_unique<ChatTemplate>(source, special_);
}

ChatRenderOptions chat_render_options(const ojson& j, bool trust_template, const ojson& default_kwargs) {
  ChatRenderOptions o;
  if (default_kwargs.is_object()) o.template_kwargs = default_kwargs;
  auto given = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  if (given("tools")) {
    if (!j["tools"].is_array()) throw Error("'tools' must be a list");
    // As vLLM's request schema: each a function tool ("type" defaults to "function") with a named function.
    for (const auto& t : j["tools"]) {
      if (!t.is_object() || (t.contains("type") && t["type"] != "function"))
        throw Error("each tool must be an object of type 'function'");
      if (!t.contains("function") || !t["function"].is_object() || !t["function"].contains("name") ||
          !t["function"]["name"].is_string())
        throw Error("each tool needs a 'function' with a 'name'");
      if (t["function"].contains("parameters") && !t["function"]["parameters"].is_null() &&
          !t["function"]["parameters"].is_object())
        throw Error(cat("tool '", t["function"]["name"].get<std::string>(), "': 'parameters' must be an object"));
    }
    o.tools = j["tools"];
  }
  if (given("chat_template_kwargs")) {
    if (!j["chat_template_kwargs"].is_object()) throw Error("'chat_template_kwargs' must be an object");
    for (const auto& [k, v] : j["chat_template_kwargs"].items()) o.template_kwargs[k] = v;
  }
  // A template of the request's own: refused (the server's is rendered) with vLLM's message unless the
  // server trusts them (--trust-request-chat-template); then the request's `chat_template`, else its
  // chat_template_kwargs' (as vLLM resolves it).
  const bool in_kwargs = o.template_kwargs.is_object() && o.template_kwargs.contains("chat_template");
  if ((given("chat_template") || in_kwargs) && !trust_template)
    throw Error("Chat template is passed with request, but --trust-request-chat-template is not set. Refused request "
                "with untrusted chat template.");
  const ojson& own = given("chat_template") ? j["chat_template"] : in_kwargs ? o.template_kwargs["chat_template"] : ojson();
  if (!own.is_null()) {
    if (!own.is_string()) throw Error("'chat_template' must be a string (the template itself)");
    o.request_template = own.get<std::string>();
    if (in_kwargs) o.template_kwargs.erase("chat_template");
  }
  for (auto [key, flag] : {std::pair<const char*, bool*>{"add_generation_prompt", &o.add_generation_prompt},
                           {"continue_final_message", &o.continue_final_message}})
    if (given(key)) {
      if (!j[key].is_boolean()) throw Error(cat("'", key, "' must be a boolean"));
      *flag = j[key].get<bool>();
    }
  // vLLM's default: a generation prompt unless the final message is being continued.
  if (o.continue_final_message && !given("add_generation_prompt")) o.add_generation_prompt = false;
  if (o.continue_final_message && o.add_generation_prompt)
    throw Error("continue_final_message and add_generation_prompt cannot both be true");
  return o;
}

std::string ChatTemplate::render(const ojson& messages, const ChatRenderOptions& opt) const {
  if (!messages.is_array()) throw Error("messages must be a list");
  std::string final_content;
  if (opt.continue_final_message) {
    if (opt.add_generation_prompt)
      throw Error("continue_final_message and add_generation_prompt cannot both be true");
    if (messages.empty() || !messages.back().is_object() || !messages.back().contains("content") ||
        !messages.back()["content"].is_string() || messages.back()["content"].get<std::string>().empty())
      throw Error("continue_final_message needs a final message with text content");
    final_content = messages.back()["content"].get<std::string>();
  }
  jinja::Dict vars;
  for (auto it = special_.begin(); it != special_.end(); ++it) vars.emplace_back(it.key(), jinja::Value::from_json(it.value()));
  vars.emplace_back("messages", jinja::Value::from_json(messages));
  vars.emplace_back("tools", jinja::Value::from_json(opt.tools));
  vars.emplace_back("add_generation_prompt", jinja::Value(opt.add_generation_prompt));
  if (opt.template_kwargs.is_object())
    for (auto it = opt.template_kwargs.begin(); it != opt.template_kwargs.end(); ++it) {
      bool replaced = false;
      for (auto& [k, v] : vars)
        if (k == it.key()) v = jinja::Value::from_json(it.value()), replaced = true;
      if (!replaced) vars.emplace_back(it.key(), jinja::Value::from_json(it.value()));
    }
  std::string out = tmpl_.render(vars);
  if (opt.continue_final_message) {
    // Cut after the final message's content, as transformers does: at the last place its stripped
    // text appears, keeping the trailing whitespace only where the rendering has the whole message as
    // given (so a template that trims content, like Llama 3's, ends at the stripped text; and a
    // message that starts with whitespace always does, as in transformers). Whatever the template
    // closes the turn with goes.
    const std::string stripped = jinja::strip_chars(final_content, "", true, true);
    const size_t at = out.rfind(stripped);
    if (at == std::string::npos)
      throw Error("continue_final_message: the chat template does not render the final message's content as given");
    const size_t lstripped = jinja::strip_chars(final_content, "", true, false).size();
    out.resize(out.compare(at, lstripped, final_content) == 0 ? at + lstripped : at + stripped.size());
  }
  return out;
}

ojson parse_tool_call_arguments(const ojson& messages) {
  ojson out = messages;
  if (!out.is_array()) return out;
  for (auto& m : out) {
    if (!m.is_object() || !m.contains("tool_calls") || !m["tool_calls"].is_array()) continue;
    for (auto& tc : m["tool_calls"]) {
      if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object()) continue;
      auto& f = tc["function"];
      if (f.contains("arguments") && f["arguments"].is_string()) {
        try {
          f["arguments"] = parse_json<ojson>(f["arguments"].get<std::string>());
        } catch (const ojson::exception&) {
          // Not JSON: leave the string (templates that test `is string` print it as is).
        }
      }
    }
  }
  return out;
}

}  // namespace llmserve
