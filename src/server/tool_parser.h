// Tool calls in model output: Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
// blocks (Qwen2.5), Llama 3.x JSON calls (`{"name": ..., "parameters": {...}}`, several separated
// by ';', optionally after <|python_tag|>) and Mistral's `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`
// (Mistral 7B Instruct v0.3's format; the text before it is content) or, for tokenizers with an [ARGS]
// token (Mistral's v11 and later: Mistral Small 3.x, Ministral, Devstral), `[TOOL_CALLS]name[ARGS]{...}`
// once per call. Output that does not parse as calls stays content.
#pragma once
#include <string>
#include <vector>

namespace llmserve {

enum class ToolFormat { None, Hermes, Llama3Json, Mistral, MistralV11 };
inline bool is_mistral(ToolFormat f) { return f == ToolFormat::Mistral || f == ToolFormat::MistralV11; }

// `parser`: auto | hermes | llama3_json | mistral | none; auto picks by model_type (qwen2 / qwen3: hermes,
// llama: llama3_json, mistral: mistral). Mistral's format is the v11 one when the tokenizer has an [ARGS]
// token (`args_token`), as vLLM's parser decides for Hugging Face tokenizers.
ToolFormat tool_format_for(const std::string& parser, const std::string& model_type, bool args_token = false);

struct ToolCall {
  std::string name;
  std::string arguments;  // a JSON string, as OpenAI sends it
};

struct ToolParse {
  std::string content;  // text outside the calls (may be empty)
  std::vector<ToolCall> calls;
};

ToolParse parse_tool_calls(ToolFormat f, const std::string& text);
// tool_choice "required": the output is a JSON array of {"name", "parameters"} objects (what its
// guided schema allows); anything else (a text cut by max_tokens) stays content.
ToolParse parse_required_calls(const std::string& text);
// How much of a partial output can be streamed as content now: everything before a tool call that
// has started or may be starting.
size_t tool_safe_prefix(ToolFormat f, const std::string& text);

// A Hermes call as far as a partial output shows it, for streaming its arguments as they are generated
// (as vLLM streams them): the call object's "name" once its string is whole, and where its "arguments"
// object begins in the text and, once it is whole, ends. A call whose arguments are not an object, or
// come before its name, is not streamed (`streamable` false): it goes whole at the end.
struct PartialCall {
  bool named = false;
  std::string name;
  size_t args_begin = std::string::npos, args_end = std::string::npos;  // positions in the text
  bool streamable = true;
  size_t block_end = std::string::npos;  // just past its </tool_call>, once there
  size_t args_safe = std::string::npos;  // an open call's arguments may be streamed up to here (v11 Mistral)
};
// The Hermes calls of `text` from its first <tool_call>, in order, as far as they have come.
std::vector<PartialCall> scan_hermes_calls(const std::string& text);
// The v11 Mistral calls of `text` from its first [TOOL_CALLS], as far as they have come: a call is named
// once its arguments' '{' is there; its arguments run to the next [TOOL_CALLS] (args_end), and while
// none has come, up to `args_safe` (short of what may be the start of one) or, once the output is
// `finished`, to its end.
std::vector<PartialCall> scan_mistral_calls(const std::string& text, bool finished);

}  // namespace llmserve
