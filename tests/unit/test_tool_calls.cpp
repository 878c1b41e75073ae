#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>

#include <map>
#include <nlohmann/json.hpp>

#include "server/openai_api.h"
#include "server/reasoning_parser.h"
#include "server/responses_api.h"
#include "server/tool_parser.h"

using namespace llmserve;
using json = nlohmann::json;

TEST(ToolParser, Hermes) {
  auto p = parse_tool_calls(ToolFormat::Hermes,
                            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
                            "<tool_call>{\"name\": \"time\", \"arguments\": \"{}\"}</tool_call>");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.content, "Let me check.\n");  // untrimmed, as vLLM (and as streaming sends it)
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(p.calls[0].arguments), json({{"city", "Paris"}}));
  EXPECT_EQ(p.calls[1].arguments, "{}");
  auto bad = parse_tool_calls(ToolFormat::Hermes, "<tool_call>{not json}</tool_call>");
  EXPECT_TRUE(bad.calls.empty());
  EXPECT_EQ(bad.content, "<tool_call>{not json}</tool_call>");
  EXPECT_TRUE(parse_tool_calls(ToolFormat::Hermes, "just words").calls.empty());
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Hermes, "Hello <tool"), 6u);
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Hermes, "Hello <tool_call>{"), 6u);
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Hermes, "Hello <b>"), 9u);
}

TEST(ToolParser, Llama3Json) {
  auto p = parse_tool_calls(ToolFormat::Llama3Json, " {\"name\": \"f\", \"parameters\": {\"x\": \"a;b}\"}}; {\"name\": \"g\", \"parameters\": {}}");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "f");
  EXPECT_EQ(json::parse(p.calls[0].arguments), json({{"x", "a;b}"}}));
  EXPECT_EQ(p.calls[1].name, "g");
  EXPECT_TRUE(p.content.empty());
  EXPECT_EQ(parse_tool_calls(ToolFormat::Llama3Json, "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}").calls.size(), 1u);
  EXPECT_TRUE(parse_tool_calls(ToolFormat::Llama3Json, "The answer is {42}").calls.empty());
  EXPECT_TRUE(parse_tool_calls(ToolFormat::Llama3Json, "{\"no_name\": 1}").calls.empty());
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Llama3Json, "{\"na"), 0u);
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Llama3Json, "Hi"), 2u);
  EXPECT_EQ(tool_format_for("auto", "qwen2"), ToolFormat::Hermes);
  EXPECT_EQ(tool_format_for("auto", "llama"), ToolFormat::Llama3Json);
}

namespace {
RequestOutput output(const std::string& text, bool finished) {
  RequestOutput o;
  o.request_id = 1;
  o.prompt_tokens = 5;
  CompletionOutput c;
  c.text = text;
  c.token_ids = {1, 2, 3};
  if (finished) c.finish_reason = "stop";
  o.outputs.push_back(c);
  o.finished = finished;
  return o;
}
}  // namespace

TEST(ToolCallsInResponses, ChatResponseAndStream) {
  ApiContext ctx;
  ctx.model_names = {"m"};
  ctx.tool_format = ToolFormat::Hermes;
  GenerationRequest r;
  r.chat = true;
  r.stream = true;
  r.tools_active = true;
  r.model = "m";
  const std::string full = "Sure.<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
  const json whole = chat_response("id", r, ctx, {output(full, true)});
  const json& msg = whole["choices"][0]["message"];
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(msg["content"], "Sure.");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "f");
  EXPECT_EQ(json::parse(msg["tool_calls"][0]["function"]["arguments"].get<std::string>()), json({{"a", 1}}));
  // Streaming: the partial tag is held back; the call arrives whole with the finish reason.
  std::vector<ChoiceStream> st(1);
  auto events = [](const std::string& s) {
    std::vector<json> out;
    for (size_t p = 0; (p = s.find("data: ", p)) != std::string::npos; p += 6) out.push_back(json::parse(s.substr(p + 6, s.find("\n\n", p) - p - 6)));
    return out;
  };
  auto e1 = events(stream_chunks("id", r, ctx, 0, output("Sure.<tool_ca", false), st));
  ASSERT_EQ(e1.size(), 1u);
  EXPECT_EQ(e1[0]["choices"][0]["delta"]["content"], "Sure.");
  EXPECT_EQ(e1[0]["choices"][0]["delta"]["role"], "assistant");
  auto e2 = events(stream_chunks("id", r, ctx, 0, output(full, true), st));
  ASSERT_EQ(e2.size(), 1u);
  EXPECT_EQ(e2[0]["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(e2[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "f");
  EXPECT_TRUE(stream_chunks("id", r, ctx, 0, output(full, true), st).empty());  // nothing twice
}

namespace {
std::vector<json> sse(const std::string& s) {
  std::vector<json> out;
  for (size_t p = 0; (p = s.find("data: ", p)) != std::string::npos; p += 6) out.push_back(json::parse(s.substr(p + 6, s.find("\n\n", p) - p - 6)));
  return out;
}
}  // namespace

namespace {
// The tool calls of a chat stream as its deltas add up: each call named once (with its id) before its
// arguments, which follow in pieces.
struct StreamedCalls {
  json names = json::array(), args = json::array();
  size_t pieces = 0;  // non-empty argument deltas
  void add(const json& delta) {
    if (!delta.contains("tool_calls")) return;
    for (const json& tc : delta["tool_calls"]) {
      const size_t k = tc["index"].get<size_t>();
      if (tc["function"].contains("name")) {
        ASSERT_EQ(k, names.size());
        EXPECT_TRUE(tc.contains("id"));
        names.push_back(tc["function"]["name"]);
        args.push_back("");
      }
      ASSERT_LT(k, args.size());
      const std::string piece = tc["function"]["arguments"].get<std::string>();
      args[k] = args[k].get<std::string>() + piece;
      pieces += !piece.empty();
    }
  }
  // The whole answer's message has the same calls.
  void expect_as(const json& msg) const {
    json n = json::array(), a = json::array();
    if (msg.contains("tool_calls"))
      for (const json& tc : msg["tool_calls"]) n.push_back(tc["function"]["name"]), a.push_back(tc["function"]["arguments"]);
    EXPECT_EQ(names, n);
    EXPECT_EQ(args, a);
  }
};

// A streamed chat request to model "m" and its context: tool calls read in `format`; with `reasoning`, a
// reasoning parser on.
struct ChatSetup {
  ApiContext ctx;
  GenerationRequest r;
};
ChatSetup streamed_chat(ToolFormat format, bool reasoning = false) {
  ChatSetup c;
  c.ctx.model_names = {"m"};
  c.ctx.tool_format = format;
  c.ctx.reasoning = c.r.reasoning = reasoning;
  c.r.chat = c.r.stream = true;
  c.r.tools_active = format != ToolFormat::None;
  c.r.model = "m";
  return c;
}
}  // namespace

// Mistral 7B Instruct v0.3's format (vLLM's mistral parser): a JSON array of calls after [TOOL_CALLS], the
// text before it content; one object too; the first [{...}] run when more follows; else all content.
TEST(ToolParser, Mistral) {
  auto p = parse_tool_calls(ToolFormat::Mistral,
                            "Let me look. [TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, "
                            "{\"name\": \"search\", \"arguments\": {\"q\": \"[a]\"}}]");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(p.calls[0].arguments), json({{"city", "Paris"}}));
  EXPECT_EQ(p.calls[1].name, "search");
  EXPECT_EQ(json::parse(p.calls[1].arguments), json({{"q", "[a]"}}));
  EXPECT_EQ(p.content, "Let me look. ");
  p = parse_tool_calls(ToolFormat::Mistral, "[TOOL_CALLS]{\"name\": \"f\", \"arguments\": {}}");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.content, "");
  p = parse_tool_calls(ToolFormat::Mistral, "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"x\": 1}}] and more");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(json::parse(p.calls[0].arguments), json({{"x", 1}}));
  EXPECT_TRUE(parse_tool_calls(ToolFormat::Mistral, "[TOOL_CALLS] [{\"name\": ").calls.empty());  // (cut by max_tokens)
  EXPECT_TRUE(parse_tool_calls(ToolFormat::Mistral, "[TOOL_CALLS] [{\"no_name\": 1}]").calls.empty());
  EXPECT_EQ(parse_tool_calls(ToolFormat::Mistral, "No calls [here]").content, "No calls [here]");
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Mistral, "Hi [TOOL_"), 3u);
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Mistral, "Hi [TOOL_CALLS] [{"), 3u);
  EXPECT_EQ(tool_safe_prefix(ToolFormat::Mistral, "Hi [x]"), 6u);
  EXPECT_EQ(tool_format_for("auto", "mistral"), ToolFormat::Mistral);
  EXPECT_EQ(tool_format_for("mistral", "qwen2"), ToolFormat::Mistral);
  // Its calls' ids are the 9 letters and digits Mistral's chat template requires when they come back.
  const ChatSetup c = streamed_chat(ToolFormat::Mistral);
  const json whole = chat_response("id", c.r, c.ctx, {output("[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": 1}}]", true)});
  const std::string id = whole["choices"][0]["message"]["tool_calls"][0]["id"].get<std::string>();
  EXPECT_EQ(id.size(), 9u);
  EXPECT_TRUE(std::all_of(id.begin(), id.end(), [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) != 0; })) << id;
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "tool_calls");
}

// Mistral's v11 format (tokenizers with an [ARGS] token; vLLM's parser): each [TOOL_CALLS] starts a call,
// its name up to [ARGS] or the arguments' '{', the arguments as written up to the next [TOOL_CALLS]; the
// text before the first is content; a marker without arguments is no call.
TEST(ToolParser, MistralV11) {
  const std::string two = "Let me look. [TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]search[ARGS]{\"q\": \"{[a]}\"}";
  auto p = parse_tool_calls(ToolFormat::MistralV11, two);
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.content, "Let me look. ");
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(p.calls[1].name, "search");
  EXPECT_EQ(json::parse(p.calls[1].arguments), json({{"q", "{[a]}"}}));
  // Without [ARGS] in the text (a tokenizer that skips it), and a call id the model wrote.
  p = parse_tool_calls(ToolFormat::MistralV11, "[TOOL_CALLS]f{\"x\": 1}[TOOL_CALLS]g[CALL_ID]a1b2c3d4e[ARGS]{}");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "f");
  EXPECT_EQ(p.calls[0].arguments, "{\"x\": 1}");
  EXPECT_EQ(p.calls[1].name, "g");
  EXPECT_EQ(p.content, "");
  // A marker with no arguments, or no name, is no call; with none at all the text is content.
  p = parse_tool_calls(ToolFormat::MistralV11, "Hi [TOOL_CALLS]get_weather");
  EXPECT_TRUE(p.calls.empty());
  EXPECT_EQ(p.content, "Hi [TOOL_CALLS]get_weather");
  EXPECT_TRUE(parse_tool_calls(ToolFormat::MistralV11, "[TOOL_CALLS][ARGS]{}").calls.empty());
  EXPECT_EQ(parse_tool_calls(ToolFormat::MistralV11, "[TOOL_CALLS]f[ARGS]{}[TOOL_CALLS]no_args").calls.size(), 1u);
  // The pre-v11 form read by the v11 parser is no call (its name would be empty).
  EXPECT_TRUE(parse_tool_calls(ToolFormat::MistralV11, "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]").calls.empty());
  EXPECT_EQ(tool_safe_prefix(ToolFormat::MistralV11, "Hi [TOOL_"), 3u);
  EXPECT_EQ(tool_format_for("auto", "mistral", true), ToolFormat::MistralV11);
  EXPECT_EQ(tool_format_for("mistral", "llama", true), ToolFormat::MistralV11);
  EXPECT_EQ(tool_format_for("auto", "mistral", false), ToolFormat::Mistral);
  EXPECT_EQ(tool_format_for("hermes", "mistral", true), ToolFormat::Hermes);
  // While the output goes on, an open call's arguments stop short of what may be the next marker.
  const auto open = scan_mistral_calls("[TOOL_CALLS]f[ARGS]{\"a\": 1}[TOOL", false);
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].args_end, std::string::npos);
  EXPECT_EQ(open[0].args_safe, std::string("[TOOL_CALLS]f[ARGS]{\"a\": 1}").size());
  const ChatSetup c = streamed_chat(ToolFormat::MistralV11);
  const json whole = chat_response("id", c.r, c.ctx, {output(two, true)});
  const json& calls = whole["choices"][0]["message"]["tool_calls"];
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1]["id"].get<std::string>().size(), 9u);
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "tool_calls");
}

// A streamed chat response (the output growing a byte at a time) says what the whole response says:
// the same content, to the whitespace, and the same calls. The whole content used to be trimmed.
TEST(ToolCallsInResponses, StreamedContentEqualsTheWholeContent) {
  const std::pair<ToolFormat, std::string> cases[] = {
      {ToolFormat::Hermes, "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>"},
      {ToolFormat::Hermes, " \n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>"},
      // Two calls, arguments with braces and escaped quotes in strings, one call's arguments a JSON string
      // (sent whole at the end), and arguments before the name (likewise).
      {ToolFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"a}\\\"{\", \"n\": [1, {\"b\": 2}]}}\n</tool_call>\n"
                           "<tool_call>\n{\"name\": \"g\", \"arguments\": {\"x\": \"\u00e9\"}}\n</tool_call>"},
      {ToolFormat::Hermes, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call><tool_call>{\"name\": \"t\", \"arguments\": \"{}\"}</tool_call>"},
      {ToolFormat::Hermes, "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}</tool_call>"},
      {ToolFormat::Hermes, "  no call, <tool_ at the end is text  "},
      {ToolFormat::Llama3Json, " {\"name\": \"f\", \"parameters\": {\"x\": [1]}}; {\"name\": \"g\", \"parameters\": {}}"},
      {ToolFormat::Llama3Json, " {not a call} "},
      // v11 Mistral calls: arguments streamed, none of a marker's bytes among them; a marker at the very end.
      {ToolFormat::MistralV11, "Checking. [TOOL_CALLS]get_weather[ARGS]{\"city\": \"[TOOL\"}[TOOL_CALLS]t[ARGS]{}"},
      {ToolFormat::MistralV11, "[TOOL_CALLS]f[ARGS]{\"a\": \"\u00e9\"} [TOOL_"},
      {ToolFormat::MistralV11, "no call [TOOL_ here"}};
  for (const auto& [format, full] : cases) {
    SCOPED_TRACE(full);
    auto [ctx, r] = streamed_chat(format);
    const json whole = chat_response("id", r, ctx, {output(full, true)})["choices"][0];
    std::vector<ChoiceStream> st(1);
    std::string content;
    StreamedCalls calls;
    std::string finish;
    for (size_t n = 1; n <= full.size(); ++n)
      for (const json& e : sse(stream_chunks("id", r, ctx, 0, output(full.substr(0, n), n == full.size()), st))) {
        const json& c = e["choices"][0];
        if (c["delta"].contains("content") && c["delta"]["content"].is_string()) content += c["delta"]["content"].get<std::string>();
        calls.add(c["delta"]);
        if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
      }
    const json& msg = whole["message"];
    EXPECT_EQ(content, msg["content"].is_string() ? msg["content"].get<std::string>() : "");
    calls.expect_as(msg);
    // Hermes calls' arguments arrive as they are written (a byte at a time here, whole characters), other
    // formats' whole, and so do calls whose arguments are not an object or come before the name.
    const bool whole_only = (format != ToolFormat::Hermes && format != ToolFormat::MistralV11) ||
                            full.find("{\"arguments\"") != std::string::npos;
    if (!calls.names.empty()) EXPECT_EQ(calls.pieces > calls.names.size(), !whole_only) << calls.pieces;
    EXPECT_EQ(finish, whole["finish_reason"]);
  }
}

// tool_choice "required": the guided output (a JSON array of {"name", "parameters"}) becomes the calls;
// a text cut before it is whole stays content.
TEST(ToolCallsInResponses, RequiredToolChoice) {
  const auto p = parse_required_calls(R"([{"name": "add", "parameters": {"a": 1, "b": 2}}, {"name": "now", "parameters": {}}])");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.content, "");
  EXPECT_EQ(json::parse(p.calls[0].arguments), json({{"a", 1}, {"b", 2}}));
  EXPECT_EQ(p.calls[1].name, "now");
  for (const std::string cut : {R"([{"name": "add", "parame)", "[]", "{}", R"([{"parameters": {}}])"}) {
    const auto q = parse_required_calls(cut);
    EXPECT_TRUE(q.calls.empty()) << cut;
    EXPECT_EQ(q.content, cut);
  }
  ApiContext ctx;
  ctx.model_names = {"m"};
  GenerationRequest r;
  r.chat = true;
  r.tools_required = true;
  r.model = "m";
  const std::string calls = R"([{"name": "add", "parameters": {"a": 1, "b": 2}}])";
  json whole = chat_response("id", r, ctx, {output(calls, true)});
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(whole["choices"][0]["message"]["content"].is_null());
  EXPECT_EQ(whole["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "add");
  RequestOutput cut = output(R"([{"name": "ad)", true);
  cut.outputs[0].finish_reason = "length";
  whole = chat_response("id", r, ctx, {cut});
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(whole["choices"][0]["message"]["content"], R"([{"name": "ad)");
  EXPECT_FALSE(whole["choices"][0]["message"].contains("tool_calls"));
  // Streamed: nothing of the array as content; the calls whole with the finish reason.
  r.stream = true;
  std::vector<ChoiceStream> st(1);
  const auto e1 = sse(stream_chunks("id", r, ctx, 0, output(R"([{"name": "add")", false), st));
  ASSERT_EQ(e1.size(), 1u);
  EXPECT_EQ(e1[0]["choices"][0]["delta"]["content"], "");
  const auto e2 = sse(stream_chunks("id", r, ctx, 0, output(calls, true), st));
  ASSERT_EQ(e2.size(), 1u);
  EXPECT_EQ(e2[0]["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(e2[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "add");
}

// A named tool_choice: the whole output is the function's arguments, returned as its one call; streamed,
// the first chunk names the call and the arguments follow in pieces.
TEST(ToolCallsInResponses, NamedToolChoice) {
  ApiContext ctx;
  ctx.model_names = {"m"};
  GenerationRequest r;
  r.chat = true;
  r.forced_tool = "get_weather";
  r.model = "m";
  const std::string args = R"({"city": "Paris"})";
  const json whole = chat_response("id", r, ctx, {output(args, true)});
  const json& msg = whole["choices"][0]["message"];
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(msg["content"].is_null());
  ASSERT_EQ(msg["tool_calls"].size(), 1u);
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["arguments"], args);
  r.stream = true;
  std::vector<ChoiceStream> st(1);
  const auto e1 = sse(stream_chunks("id", r, ctx, 0, output(R"({"city": )", false), st));
  const auto e2 = sse(stream_chunks("id", r, ctx, 0, output(args, true), st));
  ASSERT_EQ(e1.size(), 1u);
  ASSERT_EQ(e2.size(), 1u);
  const json& first = e1[0]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(first["function"]["name"], "get_weather");
  EXPECT_EQ(first["id"].get<std::string>().rfind("call_", 0), 0u);
  const json& rest = e2[0]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_FALSE(rest["function"].contains("name"));
  EXPECT_EQ(first["function"]["arguments"].get<std::string>() + rest["function"]["arguments"].get<std::string>(), args);
  EXPECT_EQ(e2[0]["choices"][0]["finish_reason"], "stop");
}

// The Responses API's stream, fed the output a byte at a time, ends with the response the whole output
// gives (the same items: message text to the whitespace, calls with their names and arguments), its
// events numbered in order, every item added once and done once, a message's deltas making its text
// and a call's argument deltas its arguments.
TEST(ToolCallsInResponses, ResponsesStreamEndsWithTheWholeResponse) {
  struct Case {
    ToolFormat format;
    std::string mode;  // auto (calls read from the text), named, required
    std::string text;
    size_t message_items, call_items;
  };
  const Case cases[] = {
      {ToolFormat::Hermes, "auto", "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>", 1, 1},
      {ToolFormat::Hermes, "auto", "<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", 0, 2},
      {ToolFormat::Hermes, "auto", "  no call, <tool_ at the end is text  ", 1, 0},
      {ToolFormat::Llama3Json, "auto", " {\"name\": \"f\", \"parameters\": {\"x\": [1]}}; {\"name\": \"g\", \"parameters\": {}}", 0, 2},
      {ToolFormat::None, "named", R"({"city": "Paris"})", 0, 1},
      {ToolFormat::None, "required", R"([{"name": "f", "parameters": {"a": 2}}])", 0, 1},
      {ToolFormat::None, "auto", "", 0, 0}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    ApiContext ctx;
    ctx.model_names = {"m"};
    ctx.tool_format = c.format;
    GenerationRequest r;
    r.chat = true;
    r.stream = true;
    r.model = "m";
    r.tools_active = c.mode == "auto" && c.format != ToolFormat::None;
    if (c.mode == "named") r.forced_tool = "get_weather";
    r.tools_required = c.mode == "required";
    auto info = std::make_shared<ResponsesInfo>();
    info->echo = json::object();
    r.responses = info;
    const json whole = responses_response("resp_1", r, ctx, output(c.text, true));
    ResponsesStream stream("resp_1", r, ctx);
    std::string text = stream.start();
    for (size_t n = 1; n <= c.text.size(); ++n) text += stream.update(output(c.text.substr(0, n), n == c.text.size()));
    if (c.text.empty()) text += stream.update(output("", true));
    ASSERT_TRUE(stream.finished());
    std::vector<json> events;
    for (size_t p = 0; (p = text.find("data: ", p)) != std::string::npos; p += 6)
      events.push_back(json::parse(text.substr(p + 6, text.find("\n\n", p) - p - 6)));
    std::map<std::string, std::string> pieces;  // item id -> its deltas
    std::map<std::string, int> added, done;
    for (size_t i = 0; i < events.size(); ++i) {
      const json& e = events[i];
      EXPECT_EQ(e["sequence_number"], static_cast<int64_t>(i));
      const std::string type = e["type"];
      if (type == "response.output_item.added") ++added[e["item"]["id"]];
      if (type == "response.output_item.done") ++done[e["item"]["id"]];
      if (type == "response.output_text.delta" || type == "response.function_call_arguments.delta")
        pieces[e["item_id"]] += e["delta"].get<std::string>();
    }
    EXPECT_EQ(events.front()["type"], "response.created");
    EXPECT_EQ(events.back()["type"], "response.completed");
    const json& got = stream.response();
    EXPECT_EQ(got, events.back()["response"]);
    auto shape = [](const json& items) {
      json s = json::array();
      for (const json& it : items)
        s.push_back(it["type"] == "message" ? json{"message", it["content"][0]["text"], it["status"]}
                                            : json{"function_call", it["name"], json::parse(it["arguments"].get<std::string>()), it["status"]});
      return s;
    };
    EXPECT_EQ(shape(got["output"]), shape(whole["output"]));
    size_t messages = 0, calls = 0;
    for (const json& it : got["output"]) {
      const std::string id = it["id"];
      EXPECT_EQ(added[id], 1);
      EXPECT_EQ(done[id], 1);
      if (it["type"] == "message") {
        ++messages;
        EXPECT_EQ(pieces[id], it["content"][0]["text"]);
      } else {
        ++calls;
        EXPECT_EQ(pieces[id], it["arguments"]);
        EXPECT_EQ(it["call_id"].get<std::string>().rfind("call_", 0), 0u);
      }
    }
    EXPECT_EQ(messages, c.message_items);
    EXPECT_EQ(calls, c.call_items);
    EXPECT_EQ(got["status"], "completed");
    EXPECT_EQ(got["usage"]["output_tokens"], 3);
  }
}

// Stored responses are bounded: past kMaxEntries the oldest go, and so do old ones past kMaxBytes;
// erased ids are skipped by the eviction order.
TEST(ResponsesStore, KeepsTheNewestWithinItsBounds) {
  ResponsesStore store;
  for (size_t i = 0; i <= ResponsesStore::kMaxEntries; ++i) store.put("r" + std::to_string(i), {json{{"n", i}}, nlohmann::ordered_json::array()});
  EXPECT_FALSE(store.get("r0"));
  ASSERT_TRUE(store.get("r1"));
  EXPECT_EQ(store.get("r1")->response["n"], 1);
  EXPECT_TRUE(store.erase("r2"));
  EXPECT_FALSE(store.erase("r2"));
  store.put("big", {json{{"text", std::string(ResponsesStore::kMaxBytes / 2, 'x')}}, nlohmann::ordered_json::array()});
  EXPECT_TRUE(store.get("r3"));
  store.put("big2", {json{{"text", std::string(ResponsesStore::kMaxBytes / 2, 'y')}}, nlohmann::ordered_json::array()});
  EXPECT_FALSE(store.get("r3"));   // the oldest went to make room
  EXPECT_FALSE(store.get("big"));  // and, the two halves not fitting together, the first big one
  EXPECT_TRUE(store.get("big2"));
}

// Reasoning outputs (reasoning_parser qwen3 / deepseek_r1): <think>...</think> at the start of the
// answer, or after a prompt that ends with <think>, is the reasoning; the rest is the content.
TEST(ReasoningParser, SplitsTheThinkingFromTheAnswer) {
  struct Case {
    std::string text;
    bool opened, finished;
    bool has;
    std::string reasoning;
    bool ready;
    std::string content;
  };
  const Case cases[] = {
      {"<think>\nplan\n</think>\n\nAnswer.", false, true, true, "\nplan\n", true, "\n\nAnswer."},
      {"  <think>a</think>b", false, true, true, "a", true, "b"},
      {"No thinking here.", false, true, false, "", true, "No thinking here."},
      {"Text with </think> later", false, true, false, "", true, "Text with </think> later"},
      {"<think>cut off before its end", false, true, true, "cut off before its end", true, ""},
      {"plan</think>Answer", true, true, true, "plan", true, "Answer"},  // the prompt opened it (DeepSeek-R1)
      {"all of it thinking", true, true, true, "all of it thinking", true, ""},
      // Not finished: what may still become a tag is held back.
      {" <thi", false, false, false, "", false, ""},
      {"<think>abc</th", false, false, true, "abc", false, ""},
      {"<think>abc<", false, false, true, "abc", false, ""},
      {"<think>a</think>b", false, false, true, "a", true, "b"},
      {"<thank you", false, false, false, "", true, "<thank you"},
      {"", false, false, false, "", false, ""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const ReasoningSplit s = split_reasoning(c.text, c.opened, c.finished);
    EXPECT_EQ(s.has_reasoning, c.has);
    EXPECT_EQ(s.has_reasoning ? c.text.substr(s.begin, s.end - s.begin) : "", c.reasoning);
    EXPECT_EQ(s.content_ready, c.ready);
    EXPECT_EQ(s.content_ready ? c.text.substr(s.content) : "", c.content);
  }
  // What a stream already sent of the reasoning is skipped by the search, with the same split.
  const ReasoningSplit skipped = split_reasoning("<think>abc</think>x", false, true, 3);
  EXPECT_EQ(skipped.end, 10u);
  EXPECT_EQ(skipped.content, 18u);
  EXPECT_TRUE(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));  // (Qwen3 with thinking off)
  EXPECT_TRUE(prompt_closes_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(prompt_closes_reasoning("<|im_start|>assistant\n"));
}

// The reasoning and the content streamed (the answer growing a byte at a time) are the whole answer's,
// with tool calls read from the content only.
TEST(ReasoningParser, StreamedReasoningAndContentEqualTheWholeAnswer) {
  const std::pair<bool, std::string> cases[] = {
      {false, "<think>\nThe user wants a greeting.\n</think>\n\nHello there!"},
      {false, "<think>Call the tool.</think>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>"},
      {false, "<think>never closed"},
      {false, "Plain answer, <think> later is text."},
      {true, "thinking first</think>then the answer"},
      {true, "</think>"},
  };
  for (const auto& [opened, full] : cases) {
    SCOPED_TRACE(full);
    auto [ctx, r] = streamed_chat(ToolFormat::Hermes, true);
    r.reasoning_opened = opened;
    const json whole = chat_response("id", r, ctx, {output(full, true)})["choices"][0];
    std::vector<ChoiceStream> st(1);
    std::string reasoning, content;
    StreamedCalls calls;
    bool any_reasoning = false;
    for (size_t n = 1; n <= full.size(); ++n)
      for (const json& e : sse(stream_chunks("id", r, ctx, 0, output(full.substr(0, n), n == full.size()), st))) {
        const json& d = e["choices"][0]["delta"];
        if (d.contains("reasoning")) {
          EXPECT_EQ(d["reasoning"], d["reasoning_content"]);
          reasoning += d["reasoning"].get<std::string>();
          any_reasoning = true;
        }
        if (d.contains("content") && d["content"].is_string()) content += d["content"].get<std::string>();
        calls.add(d);
      }
    const json& msg = whole["message"];
    EXPECT_EQ(msg["reasoning"], msg["reasoning_content"]);
    EXPECT_EQ(any_reasoning, msg["reasoning"].is_string());
    EXPECT_EQ(reasoning, msg["reasoning"].is_string() ? msg["reasoning"].get<std::string>() : "");
    EXPECT_EQ(content, msg["content"].is_string() ? msg["content"].get<std::string>() : "");
    calls.expect_as(msg);
  }
  // The whole answers' parts.
  auto [ctx, r] = streamed_chat(ToolFormat::None, true);
  json m = chat_response("id", r, ctx, {output("<think>\nx\n</think>\n\nHi", true)})["choices"][0]["message"];
  EXPECT_EQ(m["reasoning"], "\nx\n");
  EXPECT_EQ(m["content"], "\n\nHi");
  m = chat_response("id", r, ctx, {output("<think>cut", true)})["choices"][0]["message"];
  EXPECT_EQ(m["reasoning"], "cut");
  EXPECT_TRUE(m["content"].is_null());
  m = chat_response("id", r, ctx, {output("Hi", true)})["choices"][0]["message"];
  EXPECT_TRUE(m["reasoning"].is_null());
  EXPECT_EQ(m["content"], "Hi");
  // include_reasoning false (vLLM's): the reasoning left out, whole or streamed; the content is still split.
  r.include_reasoning = false;
  m = chat_response("id", r, ctx, {output("<think>x</think>Hi", true)})["choices"][0]["message"];
  EXPECT_FALSE(m.contains("reasoning"));
  EXPECT_EQ(m["content"], "Hi");
  std::vector<ChoiceStream> st(1);
  std::string streamed;
  for (const std::string part : {"<think>", "<think>x</th", "<think>x</think>H", "<think>x</think>Hi"})
    for (const json& e : sse(stream_chunks("id", r, ctx, 0, output(part, part.size() == 18), st))) {
      EXPECT_FALSE(e["choices"][0]["delta"].contains("reasoning"));
      streamed += e["choices"][0]["delta"].value("content", "");
    }
  EXPECT_EQ(streamed, "Hi");
  r.include_reasoning = true;
  r.reasoning = false;  // (no parser: the tags are text)
  m = chat_response("id", r, ctx, {output("<think>x</think>Hi", true)})["choices"][0]["message"];
  EXPECT_FALSE(m.contains("reasoning"));
  EXPECT_EQ(m["content"], "<think>x</think>Hi");
}

// The Responses API: a reasoning item (its reasoning_text) before the message, streamed or whole.
TEST(ReasoningParser, ResponsesReasoningItems) {
  const std::string full = "<think>\nCheck the city.\n</think>\n\nParis.";
  auto [ctx, r] = streamed_chat(ToolFormat::None, true);
  auto info = std::make_shared<ResponsesInfo>();
  info->echo = json::object();
  r.responses = info;
  const json whole = responses_response("resp_1", r, ctx, output(full, true));
  ASSERT_EQ(whole["output"].size(), 2u);
  EXPECT_EQ(whole["output"][0]["type"], "reasoning");
  EXPECT_EQ(whole["output"][0]["content"][0], json({{"type", "reasoning_text"}, {"text", "\nCheck the city.\n"}}));
  EXPECT_EQ(whole["output"][1]["content"][0]["text"], "\n\nParis.");
  ResponsesStream stream("resp_1", r, ctx);
  std::string text = stream.start();
  for (size_t n = 1; n <= full.size(); ++n) text += stream.update(output(full.substr(0, n), n == full.size()));
  ASSERT_TRUE(stream.finished());
  std::string reasoning_deltas;
  for (size_t p = 0; (p = text.find("data: ", p)) != std::string::npos; p += 6) {
    const json e = json::parse(text.substr(p + 6, text.find("\n\n", p) - p - 6));
    if (e["type"] == "response.reasoning_text.delta") reasoning_deltas += e["delta"].get<std::string>();
    if (e["type"] == "response.reasoning_text.done") EXPECT_EQ(e["text"], "\nCheck the city.\n");
  }
  EXPECT_EQ(reasoning_deltas, "\nCheck the city.\n");
  const json& got = stream.response()["output"];
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0]["type"], "reasoning");
  EXPECT_EQ(got[0]["content"], whole["output"][0]["content"]);
  EXPECT_EQ(got[1]["content"][0]["text"], whole["output"][1]["content"][0]["text"]);
}
