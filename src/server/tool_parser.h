// Tool calls in model output: Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
// blocks (Qwen2.5), Llama 3.x JSON calls (`{"name": ..., "parameters": {...}}`, several separated
// by ';', optionally after <|python_tag|>) and Mistral's `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`
// (Mistral 7B Instruct v0.3's format; the text before it is content). Output that does not parse as
// calls stays content.
#pragma once
#include <string>
#include <vector>

namespace llmserve {

enum class ToolFormat { None, Hermes, Llama3Json, Mistral };

// `parser`: auto | hermes | llama3_json | mistral | none; auto picks by model_type (qwen2 / qwen3: hermes,
// llama: llama3_json, mistral: mistral).
ToolFormat tool_format_for(const std::string& parser, const std::string& model_type);

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
};
// The Hermes calls of `text` from its first <tool_call>, in order, as far as they have come.
std::vector<PartialCall> scan_hermes_calls(const std::string& text);

}  // namespace llmserve
