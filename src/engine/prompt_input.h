// Turns one request object into prompt token ids: {"prompt_token_ids"|"ids": [...]},
// {"messages": [...], "tools"?, "chat_template_kwargs"?, "add_generation_prompt"?} through the model's
// chat template, or {"prompt": "text"} (tokenized with the tokenizer's special tokens).
#pragma once
#include <nlohmann/json.hpp>
#include <vector>

namespace llmserve {

class Tokenizer;
class ChatTemplate;

// Throws Error saying what is wrong with the object.
std::vector<int32_t> prompt_from_json(const nlohmann::ordered_json& j, const Tokenizer* tok, const ChatTemplate* chat);

}  // namespace llmserve
