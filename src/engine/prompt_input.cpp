#include "engine/prompt_input.h"

#include "chat/chat_template.h"
#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {

std::vector<int32_t> prompt_from_json(const nlohmann::ordered_json& j, const Tokenizer* tok, const ChatTemplate* chat) {
  if (!j.is_object()) throw Error("a request must be a JSON object");
  for (const char* key : {"prompt_token_ids", "ids"}) {
    if (!j.contains(key)) continue;
    const auto& v = j[key];
    if (!v.is_array() || v.empty()) throw Error(cat("'", key, "' must be a non-empty list of token ids"));
    std::vector<int32_t> ids;
    for (const auto& x : v) {
      if (!x.is_number_integer()) throw Error(cat("'", key, "' must be a list of integers"));
      ids.push_back(x.get<int32_t>());
    }
    return ids;
  }
  if (j.contains("messages")) {
    if (!tok || !chat) throw Error("this model has no tokenizer (give one with the tokenizer option), so 'messages' cannot be used");
    if (!j["messages"].is_array() || j["messages"].empty()) throw Error("'messages' must be a non-empty list");
    for (const auto& m : j["messages"])
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        throw Error("each message must be an object with a string 'role'");
    return tok->encode(chat->render(parse_tool_call_arguments(j["messages"]), chat_render_options(j)), false);
  }
  if (j.contains("prompt")) {
    if (!tok) throw Error("this model has no tokenizer (give one with the tokenizer option), so 'prompt' text cannot be used");
    if (!j["prompt"].is_string()) throw Error("'prompt' must be a string");
    return tok->encode(j["prompt"].get<std::string>(), true);
  }
  throw Error("no prompt: give 'prompt', 'messages' or 'prompt_token_ids'");
}

}  // namespace llmserve
