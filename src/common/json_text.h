// JSON text for what llmserve sends or writes: invalid UTF-8 in a string (a request's bytes echoed in
// an error message, a token that is part of a character, text cut inside one) becomes U+FFFD as
// Hugging Face's decode would make it, instead of nlohmann::json's type_error 316 (which, thrown while
// answering a request, ended the server).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace llmserve {

template <typename Json>
std::string json_text(const Json& j, int indent = -1) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

}  // namespace llmserve
