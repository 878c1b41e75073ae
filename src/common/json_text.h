// JSON in and out of llmserve where the text comes from outside (requests, request files, the model's
// tool calls) or goes out (responses, result files).
//  - json_text: invalid UTF-8 in a string (a request's bytes echoed in an error message, a token that
//    is part of a character, text cut inside one) becomes U+FFFD as Hugging Face's decode would make
//    it, instead of nlohmann::json's type_error 316 (which, thrown while answering a request, ended
//    the server).
//  - parse_json: refuses text nested deeper than kMaxJsonDepth before parsing it. nlohmann parses
//    iteratively but writes and copies values recursively, so a body of 50,000 nested objects
//    overflowed the stack of the thread that answered it.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"

namespace llmserve {

template <typename Json>
std::string json_text(const Json& j, int indent = -1) {
  return j.dump(indent, ' ', false, Json::error_handler_t::replace);
}

constexpr int kMaxJsonDepth = 256;

struct JsonTooDeep : Error {
  JsonTooDeep() : Error(cat("JSON nested deeper than ", kMaxJsonDepth, " levels")) {}
};

// Nesting depth of arrays and objects outside strings, stopping at the first level past `limit`.
inline int json_depth(const std::string& text, int limit = kMaxJsonDepth) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest && (deepest = depth) > limit) break;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

template <typename Json = nlohmann::json>
Json parse_json(const std::string& text) {
  if (json_depth(text) > kMaxJsonDepth) throw JsonTooDeep();
  return Json::parse(text);
}

}  // namespace llmserve
