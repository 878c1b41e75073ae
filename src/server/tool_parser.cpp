#include "server/tool_parser.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <string_view>

#include "common/error.h"
#include "common/json_text.h"
#include "common/text.h"

namespace llmserve {
using json = nlohmann::json;

namespace {
const std::string kToolOpen = "<tool_call>", kToolClose = "</tool_call>", kPython = "<|python_tag|>", kMistral = "[TOOL_CALLS]";

// A call object with a string name and object (or JSON-string) arguments under `key`.
bool to_call(const json& j, const char* key, ToolCall& out) {
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return false;
  out.name = j["name"].get<std::string>();
  const char* k = j.contains(key) ? key : (j.contains("arguments") ? "arguments" : nullptr);
  if (!k) {
    out.arguments = "{}";
  } else if (j[k].is_string()) {
    out.arguments = j[k].get<std::string>();
  } else {
    out.arguments = json_text(j[k]);
  }
  return true;
}

// The calls of a non-empty JSON array of call objects (arguments under `key`, or "arguments"); false
// when it is not one.
bool calls_of(const json& j, const char* key, std::vector<ToolCall>& out) {
  if (!j.is_array() || j.empty()) return false;
  std::vector<ToolCall> calls;
  for (const auto& x : j) {
    ToolCall c;
    if (!to_call(x, key, c)) return false;
    calls.push_back(std::move(c));
  }
  out = std::move(calls);
  return true;
}

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
size_t partial_tag(const std::string& text, const std::string& tag) {
  for (size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n)
    if (text.compare(text.size() - n, n, tag, 0, n) == 0) return n;
  return 0;
}
}  // namespace

namespace {

// Past the JSON string starting at text[i] (a '"'), or npos when it does not end in the text.
size_t skip_string(std::string_view t, size_t i) {
  for (++i; i < t.size(); ++i) {
    if (t[i] == '\\') {
      ++i;
    } else if (t[i] == '"') {
      return i + 1;
    }
  }
  return std::string::npos;
}

// Past the JSON value starting at text[i] (an object, array, string or scalar), or npos when it does
// not end in the text. A scalar ends at the next ',', '}' or ']' (or whitespace).
size_t skip_value(std::string_view t, size_t i) {
  if (i >= t.size()) return std::string::npos;
  if (t[i] == '"') return skip_string(t, i);
  if (t[i] == '{' || t[i] == '[') {
    int depth = 0;
    for (; i < t.size(); ++i) {
      const char c = t[i];
      if (c == '"') {
        i = skip_string(t, i);
        if (i == std::string::npos) return i;
        --i;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        return i + 1;
      }
    }
    return std::string::npos;
  }
  const size_t e = t.find_first_of(",}] \t\r\n", i);
  return e;
}

size_t skip_ws(std::string_view t, size_t i) {
  while (i < t.size() && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r' || t[i] == '\n')) ++i;
  return i;
}

// One call object from text[i] (just past <tool_call>); `c` as far as the text goes.
void scan_call(std::string_view t, size_t i, PartialCall& c) {
  i = skip_ws(t, i);
  if (i >= t.size()) return;
  if (t[i] != '{') {
    c.streamable = false;
    return;
  }
  i = skip_ws(t, i + 1);
  while (i < t.size() && t[i] == '"') {
    const size_t key_end = skip_string(t, i);
    if (key_end == std::string::npos) return;
    const std::string_view key = t.substr(i + 1, key_end - i - 2);
    i = skip_ws(t, key_end);
    if (i >= t.size()) return;
    if (t[i] != ':') {
      c.streamable = false;
      return;
    }
    i = skip_ws(t, i + 1);
    if (i >= t.size()) return;
    if (key == "arguments") {
      if (t[i] != '{' || !c.named) c.streamable = false;
      c.args_begin = i;
    }
    const size_t end = skip_value(t, i);
    if (end == std::string::npos) return;
    if (key == "name") {
      try {
        const json v = json::parse(std::string(t.substr(i, end - i)));
        if (v.is_string()) c.named = true, c.name = v.get<std::string>();
      } catch (const json::exception&) {
        c.streamable = false;
        return;
      }
    }
    if (key == "arguments") c.args_end = end;
    i = skip_ws(t, end);
    if (i < t.size() && t[i] == ',') i = skip_ws(t, i + 1);
  }
}

}  // namespace

ToolFormat tool_format_for(const std::string& parser, const std::string& model_type, bool args_token) {
  const ToolFormat mistral = args_token ? ToolFormat::MistralV11 : ToolFormat::Mistral;
  if (parser == "hermes") return ToolFormat::Hermes;
  if (parser == "llama3_json") return ToolFormat::Llama3Json;
  if (parser == "mistral") return mistral;
  if (parser == "none") return ToolFormat::None;
  if (parser != "auto")
    throw Error(cat("config: tool_call_parser must be auto, hermes, llama3_json, mistral or none; got '", parser, "'"));
  if (model_type == "qwen2" || model_type == "qwen3") return ToolFormat::Hermes;
  if (model_type == "llama") return ToolFormat::Llama3Json;
  if (model_type == "mistral") return mistral;
  return ToolFormat::None;
}

std::vector<PartialCall> scan_mistral_calls(const std::string& text, bool finished) {
  std::vector<PartialCall> calls;
  for (size_t pos = text.find(kMistral); pos != std::string::npos;) {
    const size_t body = pos + kMistral.size();
    const size_t next = text.find(kMistral, body);
    const size_t brace = text.find('{', body);
    pos = next;
    if (brace == std::string::npos || brace >= next) continue;  // no arguments (yet): not a call (yet)
    // The name: up to [ARGS] (which a Hugging Face tokenizer's text keeps) or, failing that, the '{'.
    std::string_view head = std::string_view(text).substr(body, brace - body);
    head = head.substr(0, std::min(head.find("[ARGS]"), head.find("[CALL_ID]")));
    PartialCall c;
    c.name = trim(std::string(head));
    // (a function name: letters, digits, '_', '-', '.'; anything else, such as the pre-v11 form's "[", is no call)
    const bool word = !c.name.empty() && std::all_of(c.name.begin(), c.name.end(), [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.';
    });
    if (!word) continue;
    c.named = true;
    c.args_begin = brace;
    if (next != std::string::npos) c.args_end = next;
    else if (finished) c.args_end = text.size();
    else c.args_safe = text.size() - partial_tag(text, kMistral);
    calls.push_back(std::move(c));
  }
  return calls;
}

ToolParse parse_tool_calls(ToolFormat f, const std::string& text) {
  ToolParse r;
  r.content = text;
  if (f == ToolFormat::Hermes) {
    const size_t first = text.find(kToolOpen);
    if (first == std::string::npos) return r;
    std::vector<ToolCall> calls;
    for (size_t pos = first; pos != std::string::npos; pos = text.find(kToolOpen, pos)) {
      const size_t body = pos + kToolOpen.size();
      const size_t end = text.find(kToolClose, body);
      const std::string inner = trim(text.substr(body, end == std::string::npos ? std::string::npos : end - body));
      ToolCall c;
      json j;
      try {
        j = parse_json(inner);
      } catch (const std::exception&) {  // json::exception or JsonTooDeep
        return r;  // not a well-formed call: plain content
      }
      if (!to_call(j, "arguments", c)) return r;
      // An object's arguments as the model wrote them (what a stream sends piece by piece; JSON all the same).
      PartialCall pc;
      scan_call(inner, 0, pc);
      if (pc.streamable && pc.args_begin != std::string::npos && pc.args_end != std::string::npos)
        c.arguments = inner.substr(pc.args_begin, pc.args_end - pc.args_begin);
      calls.push_back(c);
      if (end == std::string::npos) break;
      pos = end + kToolClose.size();
    }
    r.calls = calls;
    r.content = text.substr(0, first);  // as vLLM: untrimmed (what streaming sends before the call)
    return r;
  }
  if (f == ToolFormat::MistralV11) {
    // As vLLM's mistral parser for v11 tokenizers: each [TOOL_CALLS] starts a call, its name up to the
    // arguments' '{', the arguments (as the model wrote them) up to the next one; the text before the first
    // is content.
    const std::vector<PartialCall> pcs = scan_mistral_calls(text, true);
    if (pcs.empty()) return r;
    for (const PartialCall& pc : pcs) r.calls.push_back({pc.name, text.substr(pc.args_begin, pc.args_end - pc.args_begin)});
    r.content = text.substr(0, text.find(kMistral));
    return r;
  }
  if (f == ToolFormat::Mistral) {
    // As vLLM's mistral parser: the calls are the JSON array (or one object) after the marker, else the
    // first [{...}] run in it; the text before the marker is content.
    const size_t at = text.find(kMistral);
    if (at == std::string::npos) return r;
    const std::string t = trim(text.substr(at + kMistral.size()));
    json j;
    try {
      j = parse_json(t);
    } catch (const std::exception&) {
      const size_t b = t.find("[{"), e = t.rfind("}]");
      if (b == std::string::npos || e == std::string::npos || e < b) return r;
      try {
        j = parse_json(t.substr(b, e + 2 - b));
      } catch (const std::exception&) {
        return r;
      }
    }
    if (j.is_object()) j = json::array({j});
    if (!calls_of(j, "arguments", r.calls)) return r;
    r.content = text.substr(0, at);
    return r;
  }
  if (f == ToolFormat::Llama3Json) {
    std::string t = trim(text);
    if (t.rfind(kPython, 0) == 0) t = trim(t.substr(kPython.size()));
    if (t.empty() || t[0] != '{') return r;
    std::vector<ToolCall> calls;
    // One object, or several separated by ';'.
    size_t pos = 0;
    while (pos < t.size()) {
      size_t depth = 0, i = pos;
      bool in_str = false, esc = false;
      for (; i < t.size(); ++i) {
        const char ch = t[i];
        if (in_str) {
          if (esc) esc = false;
          else if (ch == '\\') esc = true;
          else if (ch == '"') in_str = false;
          continue;
        }
        if (ch == '"') in_str = true;
        else if (ch == '{') ++depth;
        else if (ch == '}' && --depth == 0) break;
      }
      if (i >= t.size()) return r;
      ToolCall c;
      try {
        if (!to_call(parse_json(t.substr(pos, i - pos + 1)), "parameters", c)) return r;
      } catch (const std::exception&) {  // json::exception or JsonTooDeep
        return r;
      }
      calls.push_back(c);
      pos = t.find_first_not_of(" \t\r\n;", i + 1);
      if (pos == std::string::npos) break;
      if (t[pos] != '{') return r;
    }
    r.calls = calls;
    r.content.clear();
    return r;
  }
  return r;
}

size_t tool_safe_prefix(ToolFormat f, const std::string& text) {
  if (f == ToolFormat::Hermes || is_mistral(f)) {
    const std::string& tag = f == ToolFormat::Hermes ? kToolOpen : kMistral;
    const size_t k = text.find(tag);
    if (k != std::string::npos) return k;
    return text.size() - partial_tag(text, tag);
  }
  if (f == ToolFormat::Llama3Json) {
    const std::string t = trim(text);
    // A call starts the output: hold everything while it may still be one.
    if (t.empty() || t[0] == '{' || kPython.rfind(t.substr(0, kPython.size()), 0) == 0 || t.rfind(kPython, 0) == 0) return 0;
    return text.size();
  }
  return text.size();
}


std::vector<PartialCall> scan_hermes_calls(const std::string& text) {
  std::vector<PartialCall> calls;
  for (size_t pos = text.find(kToolOpen); pos != std::string::npos; pos = text.find(kToolOpen, pos)) {
    const size_t body = pos + kToolOpen.size();
    const size_t end = text.find(kToolClose, body);
    PartialCall c;
    scan_call(std::string_view(text).substr(0, end), body, c);  // (npos: all of it)
    if (end != std::string::npos) c.block_end = end + kToolClose.size();
    calls.push_back(std::move(c));
    if (end == std::string::npos) break;
    pos = end + kToolClose.size();
  }
  return calls;
}

ToolParse parse_required_calls(const std::string& text) {
  ToolParse r;
  r.content = text;
  json j;
  try {
    j = parse_json(text);
  } catch (const std::exception&) {
    return r;
  }
  if (!calls_of(j, "parameters", r.calls)) return r;
  r.content.clear();
  return r;
}

}  // namespace llmserve
