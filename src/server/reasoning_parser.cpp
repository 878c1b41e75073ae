#include "server/reasoning_parser.h"

#include <algorithm>
#include <string_view>

namespace llmserve {
namespace {

constexpr std::string_view kOpen = "<think>", kClose = "</think>";

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// Whether the prompt ends with `tag` and whitespace.
bool prompt_ends_with(const std::string& prompt, std::string_view tag) {
  size_t e = prompt.size();
  while (e > 0 && is_space(prompt[e - 1])) --e;
  return e >= tag.size() && std::string_view(prompt).substr(e - tag.size(), tag.size()) == tag;
}

// The longest suffix of text[from, ...) that is a proper prefix of tag (bytes that may still become it).
size_t partial_tag_suffix(std::string_view text, size_t from, std::string_view tag) {
  for (size_t n = std::min(tag.size() - 1, text.size() - from); n > 0; --n)
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

}  // namespace

bool prompt_opens_reasoning(const std::string& prompt) { return prompt_ends_with(prompt, kOpen); }
bool prompt_closes_reasoning(const std::string& prompt) { return prompt_ends_with(prompt, kClose); }

ReasoningSplit split_reasoning(const std::string& text, bool opened, bool finished, size_t known) {
  ReasoningSplit s;
  size_t begin = 0;
  if (!opened) {
    size_t i = 0;
    while (i < text.size() && is_space(text[i])) ++i;
    const std::string_view rest = std::string_view(text).substr(i);
    if (rest.substr(0, kOpen.size()) == kOpen) {
      begin = i + kOpen.size();
    } else if (!finished && rest.size() < kOpen.size() && kOpen.substr(0, rest.size()) == rest) {
      return s;  // only whitespace, or the start of <think>, so far: nothing is known yet
    } else {
      s.content_ready = true;  // no reasoning: all content
      return s;
    }
  }
  s.has_reasoning = true;
  s.begin = begin;
  const size_t close = text.find(kClose, std::min(begin + known, text.size()));
  if (close != std::string::npos) {
    s.end = close;
    s.content_ready = true;
    s.content = close + kClose.size();
    return s;
  }
  s.end = text.size() - (finished ? 0 : partial_tag_suffix(text, begin, kClose));
  s.content_ready = finished;  // (cut before </think>: no content)
  s.content = text.size();
  return s;
}

}  // namespace llmserve
