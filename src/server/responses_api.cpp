#include "server/responses_api.h"

#include <chrono>

#include "common/error.h"
#include "common/json_text.h"

namespace llmserve {
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

[[noreturn]] void bad(const std::string& message, const char* param) {
  throw HttpError(400, message, "BadRequestError", param);
}

const std::string& str(const ojson& item, const char* key, const char* what) {
  if (!item.contains(key) || !item[key].is_string()) bad(cat(what, " needs a string '", key, "'"), "input");
  return item[key].get_ref<const std::string&>();
}

// Text parts (input_text, output_text; chat's text) as chat's text parts; others are refused.
ojson text_parts(const ojson& content) {
  ojson parts = ojson::array();
  for (const auto& p : content) {
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) bad("a content part must be an object with a 'type'", "input");
    const std::string& type = p["type"].get_ref<const std::string&>();
    if (type != "input_text" && type != "output_text" && type != "text")
      bad(cat("content parts of type '", type, "' are not supported: the model reads text only"), "input");
    parts.push_back({{"type", "text"}, {"text", str(p, "text", "a text content part")}});
  }
  return parts;
}

// Appends one input item (or output item of an earlier turn) to chat messages: a message (a
// developer's as the system's), a function call (joining the assistant message before it, as one
// turn's calls), a function call's output (a tool message); reasoning items are left out.
void append_item(const ojson& item, ojson& msgs) {
  if (!item.is_object()) bad("each input item must be an object", "input");
  std::string type = "message";
  if (item.contains("type")) {
    if (!item["type"].is_string()) bad("an input item's 'type' must be a string", "input");
    type = item["type"].get<std::string>();
  }
  if (type == "message") {
    const std::string& role = str(item, "role", "a message");
    if (role != "user" && role != "assistant" && role != "system" && role != "developer")
      bad(cat("a message's role must be user, assistant, system or developer, got '", role, "'"), "input");
    if (!item.contains("content") || !(item["content"].is_string() || item["content"].is_array()))
      bad("a message's 'content' must be a string or a list of parts", "input");
    msgs.push_back({{"role", role == "developer" ? "system" : role},
                    {"content", item["content"].is_string() ? item["content"] : text_parts(item["content"])}});
  } else if (type == "function_call") {
    ojson call = {{"id", str(item, "call_id", "a function_call item")},
                  {"type", "function"},
                  {"function", {{"name", str(item, "name", "a function_call item")},
                                {"arguments", str(item, "arguments", "a function_call item")}}}};
    if (msgs.empty() || msgs.back()["role"] != "assistant") msgs.push_back({{"role", "assistant"}, {"content", ""}});
    ojson& m = msgs.back();
    if (!m.contains("tool_calls")) m["tool_calls"] = ojson::array();
    m["tool_calls"].push_back(std::move(call));
  } else if (type == "function_call_output") {
    if (!item.contains("output") || !(item["output"].is_string() || item["output"].is_array()))
      bad("a function_call_output item's 'output' must be a string or a list of parts", "input");
    msgs.push_back({{"role", "tool"},
                    {"tool_call_id", str(item, "call_id", "a function_call_output item")},
                    {"content", item["output"].is_string() ? item["output"] : text_parts(item["output"])}});
  } else if (type != "reasoning") {
    bad(cat("input items of type '", type, "' are not supported (messages, function_call, function_call_output)"), "input");
  }
}

json output_text(const std::string& text, const json& logprobs) {
  return {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", logprobs}};
}

json message_item(const std::string& id, const std::string& status, json content) {
  return {{"type", "message"}, {"id", id}, {"status", status}, {"role", "assistant"}, {"content", std::move(content)}};
}

// A reasoning item (reasoning_parser): the model's thinking as one reasoning_text part.
json reasoning_item(const std::string& id, const std::string& status, const std::string& text) {
  json content = json::array();
  if (!text.empty()) content.push_back({{"type", "reasoning_text"}, {"text", text}});
  return {{"type", "reasoning"}, {"id", id}, {"summary", json::array()}, {"content", std::move(content)},
          {"encrypted_content", nullptr}, {"status", status}};
}

json call_item(const std::string& call_id, const std::string& name, const std::string& arguments, const std::string& status) {
  return {{"type", "function_call"}, {"id", random_id("fc_")}, {"call_id", call_id}, {"name", name},
          {"arguments", arguments}, {"status", status}};
}

json usage(const RequestOutput& out) {
  int64_t made = 0;
  for (const auto& c : out.outputs) made += static_cast<int64_t>(c.token_ids.size());
  return {{"input_tokens", out.prompt_tokens},
          {"input_tokens_details", {{"cached_tokens", out.num_cached_tokens}}},
          {"output_tokens", made},
          {"output_tokens_details", {{"reasoning_tokens", 0}}},
          {"total_tokens", out.prompt_tokens + made}};
}

// The response object around its output: the request's settings, the status and the usage.
json response_object(const std::string& id, const GenerationRequest& r, const std::string& status, json output,
                     json use, bool cut) {
  json o = r.responses->echo;
  o["id"] = id;
  o["object"] = "response";
  o["created_at"] = r.responses->created_at;
  o["status"] = status;
  o["model"] = r.model;
  o["output"] = std::move(output);
  o["usage"] = std::move(use);
  o["error"] = nullptr;
  o["incomplete_details"] = cut ? json{{"reason", "max_output_tokens"}} : json(nullptr);
  o["temperature"] = r.params.temperature;
  o["top_p"] = r.params.top_p;
  return o;
}

bool logprobs_wanted(const GenerationRequest& r) { return r.params.logprobs >= 0; }

// A chat choice's log-probability entries (token, logprob, bytes, top_logprobs: the Responses shape).
json entries(const json& choice) {
  return choice.contains("logprobs") && choice["logprobs"].is_object() && choice["logprobs"].contains("content")
             ? choice["logprobs"]["content"] : json::array();
}

}  // namespace

void ResponsesStore::put(const std::string& id, Entry e) {
  const size_t size = json_text(e.response).size() + e.conversation.dump().size();
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = map_.find(id); it != map_.end()) bytes_ -= it->second.second, map_.erase(it);
  map_[id] = {std::move(e), size};
  order_.push_back(id);
  bytes_ += size;
  while (!order_.empty() && (map_.size() > kMaxEntries || bytes_ > kMaxBytes)) {
    auto it = map_.find(order_.front());
    order_.pop_front();
    if (it == map_.end()) continue;  // erased before
    bytes_ -= it->second.second;
    map_.erase(it);
  }
}

std::optional<ResponsesStore::Entry> ResponsesStore::get(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(id);
  if (it == map_.end()) return std::nullopt;
  return it->second.first;
}

bool ResponsesStore::erase(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(id);
  if (it == map_.end()) return false;
  bytes_ -= it->second.second;
  map_.erase(it);
  return true;
}

GenerationRequest parse_responses(const ojson& body, const ApiContext& ctx, const ResponsesStore& store) {
  if (!body.is_object()) throw HttpError(400, "the request body must be a JSON object");
  auto given = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  auto flag = [&](const char* key, bool dflt) {
    if (!given(key)) return dflt;
    if (!body[key].is_boolean()) bad(cat("'", key, "' must be a boolean"), key);
    return body[key].get<bool>();
  };
  // What llmserve cannot do is refused, not ignored.
  if (flag("background", false)) bad("background responses are not supported: a response is made while its request waits", "background");
  if (given("conversation")) bad("'conversation' is not supported: chain responses with previous_response_id", "conversation");
  if (given("prompt")) bad("prompt templates ('prompt') are not supported", "prompt");
  if (given("max_tool_calls")) bad("'max_tool_calls' is not supported", "max_tool_calls");
  if (given("truncation") && body["truncation"] != "disabled")
    bad("truncation 'auto' is not supported: input longer than the context is refused", "truncation");
  if (given("reasoning")) {
    if (!body["reasoning"].is_object()) bad("'reasoning' must be an object", "reasoning");
    for (const auto& [k, v] : body["reasoning"].items())
      if (!v.is_null())
        bad(cat("reasoning.", k, " is not supported (a reasoning_parser puts a model's thinking in reasoning items)"), "reasoning");
  }
  if (!flag("parallel_tool_calls", true))
    bad("parallel_tool_calls false is not supported: an answer may hold several calls", "parallel_tool_calls");
  bool logprobs = false;
  if (given("include")) {
    if (!body["include"].is_array()) bad("'include' must be a list of strings", "include");
    for (const auto& v : body["include"]) {
      if (v == "message.output_text.logprobs") {
        logprobs = true;
      } else {
        bad(cat("include ", v.dump(), " is not supported (message.output_text.logprobs is)"), "include");
      }
    }
  }
  if (given("instructions") && !body["instructions"].is_string()) bad("'instructions' must be a string", "instructions");
  if (given("metadata") && !body["metadata"].is_object()) bad("'metadata' must be an object", "metadata");
  if (!given("input") || !(body["input"].is_string() || body["input"].is_array()))
    bad("'input' (a string or a list of items) is required", "input");
  if (body["input"].is_array() && body["input"].empty()) bad("'input' must not be an empty list", "input");

  // The conversation: the previous response's, then this input.
  ojson conversation = ojson::array();
  if (given("previous_response_id")) {
    if (!body["previous_response_id"].is_string()) bad("'previous_response_id' must be a string", "previous_response_id");
    const std::string prev = body["previous_response_id"].get<std::string>();
    auto e = store.get(prev);
    if (!e) throw HttpError(404, cat("Response with id '", prev, "' not found."), "NotFoundError", "previous_response_id");
    conversation = e->conversation;
  }
  if (body["input"].is_string()) {
    conversation.push_back({{"role", "user"}, {"content", body["input"]}});
  } else {
    for (const auto& item : body["input"]) conversation.push_back(item);
  }
  ojson msgs = ojson::array();
  if (given("instructions")) msgs.push_back({{"role", "system"}, {"content", body["instructions"]}});
  for (const auto& item : conversation) append_item(item, msgs);

  ojson chat = {{"messages", std::move(msgs)}};
  if (body.contains("model")) chat["model"] = body["model"];
  if (given("tools")) {
    if (!body["tools"].is_array()) bad("'tools' must be a list", "tools");
    ojson tools = ojson::array();
    for (const auto& t : body["tools"]) {
      if (!t.is_object() || !t.contains("type") || !t["type"].is_string()) bad("each tool must be an object with a 'type'", "tools");
      if (t["type"] != "function")
        bad(cat("tools of type '", t["type"].get<std::string>(), "' are not supported: function tools only"), "tools");
      if (!t.contains("name") || !t["name"].is_string()) bad("a function tool needs a string 'name'", "tools");
      ojson f = {{"name", t["name"]}};
      for (const char* k : {"description", "parameters", "strict"})
        if (t.contains(k) && !t[k].is_null()) f[k] = t[k];
      tools.push_back({{"type", "function"}, {"function", std::move(f)}});
    }
    chat["tools"] = std::move(tools);
  }
  if (given("tool_choice")) {
    const ojson& tc = body["tool_choice"];
    if (tc.is_object()) {
      if (!tc.contains("type") || tc["type"] != "function" || !tc.contains("name") || !tc["name"].is_string())
        bad("a named tool_choice must be {\"type\": \"function\", \"name\": ...}", "tool_choice");
      chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", tc["name"]}}}};
    } else {
      chat["tool_choice"] = tc;  // auto, none, required (the chat path checks)
    }
  }
  if (given("max_output_tokens")) chat["max_tokens"] = body["max_output_tokens"];
  if (given("text")) {
    const ojson& t = body["text"];
    if (!t.is_object()) bad("'text' must be an object", "text");
    if (t.contains("format") && !t["format"].is_null()) {
      const ojson& f = t["format"];
      const std::string type = f.is_object() && f.contains("type") && f["type"].is_string() ? f["type"].get<std::string>() : "";
      if (type == "json_object") {
        chat["response_format"] = {{"type", "json_object"}};
      } else if (type == "json_schema") {
        if (!f.contains("schema")) bad("text.format json_schema needs a 'schema'", "text");
        ojson js = {{"schema", f["schema"]}};
        if (f.contains("name")) js["name"] = f["name"];
        chat["response_format"] = {{"type", "json_schema"}, {"json_schema", std::move(js)}};
      } else if (type != "text") {
        bad("text.format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"schema\": ...}", "text");
      }
    }
  }
  if (logprobs) {
    chat["logprobs"] = true;
    if (given("top_logprobs")) chat["top_logprobs"] = body["top_logprobs"];
  }
  // OpenAI's sampling settings and vLLM's extra ones, as on the chat route.
  for (const char* k : {"temperature", "top_p", "stream", "user", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                        "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "logit_bias",
                        "priority", "skip_special_tokens", "bad_words", "allowed_token_ids", "structured_outputs",
                        "chat_template_kwargs"})
    if (body.contains(k)) chat[k] = body[k];
  GenerationRequest r = parse_chat(chat, ctx);
  auto info = std::make_shared<ResponsesInfo>();
  info->conversation = std::move(conversation);
  info->store = flag("store", true);
  info->created_at = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const json plain = json::parse(body.dump());
  auto echo = [&](const char* key, json dflt) { return plain.contains(key) && !plain[key].is_null() ? plain[key] : dflt; };
  info->echo = {{"background", false},
                {"instructions", echo("instructions", nullptr)},
                {"max_output_tokens", echo("max_output_tokens", nullptr)},
                {"max_tool_calls", nullptr},
                {"metadata", echo("metadata", json::object())},
                {"parallel_tool_calls", true},
                {"previous_response_id", echo("previous_response_id", nullptr)},
                {"reasoning", nullptr},
                {"service_tier", echo("service_tier", "auto")},
                {"store", info->store},
                {"text", echo("text", json{{"format", {{"type", "text"}}}})},
                {"tool_choice", echo("tool_choice", "auto")},
                {"tools", echo("tools", json::array())},
                {"top_logprobs", echo("top_logprobs", 0)},
                {"truncation", "disabled"},
                {"user", echo("user", nullptr)}};
  r.responses = std::move(info);
  return r;
}

json responses_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx, const RequestOutput& out) {
  const json choice = chat_response(id, r, ctx, {out})["choices"].at(0);
  const json& m = choice["message"];
  const bool cut = out.outputs.at(0).finish_reason == "length";
  json items = json::array();
  if (m.contains("reasoning") && m["reasoning"].is_string())
    items.push_back(reasoning_item(random_id("rs_"), cut ? "incomplete" : "completed", m["reasoning"]));
  if (m["content"].is_string() && !m["content"].get<std::string>().empty())
    items.push_back(message_item(random_id("msg_"), cut ? "incomplete" : "completed",
                                 json::array({output_text(m["content"], logprobs_wanted(r) ? entries(choice) : json::array())})));
  if (m.contains("tool_calls"))
    for (const auto& c : m["tool_calls"]) items.push_back(call_item(c["id"], c["function"]["name"], c["function"]["arguments"], "completed"));
  return response_object(id, r, cut ? "incomplete" : "completed", std::move(items), usage(out), cut);
}

ojson conversation_after(const GenerationRequest& r, const json& response) {
  ojson c = r.responses->conversation;
  for (const auto& item : response["output"]) c.push_back(ojson::parse(item.dump()));
  return c;
}

ResponsesStream::ResponsesStream(std::string id, const GenerationRequest& r, const ApiContext& ctx)
    : id_(std::move(id)), r_(r), ctx_(ctx), st_(1) {}

std::string ResponsesStream::event(const std::string& type, json fields) {
  fields["type"] = type;
  fields["sequence_number"] = seq_++;
  return "event: " + type + "\ndata: " + json_text(fields) + "\n\n";
}

std::string ResponsesStream::start() {
  // (Each event in its own statement: the sequence numbers follow the order of the calls.)
  const json r = response_object(id_, r_, "in_progress", json::array(), nullptr, false);
  std::string ev = event("response.created", {{"response", r}});
  ev += event("response.in_progress", {{"response", r}});
  return ev;
}

std::string ResponsesStream::open_message() {
  const std::string id = random_id("msg_");
  items_.push_back(message_item(id, "in_progress", json::array()));
  open_ = Open::Message;
  const int64_t at = static_cast<int64_t>(items_.size()) - 1;
  std::string ev = event("response.output_item.added", {{"output_index", at}, {"item", items_.back()}});
  ev += event("response.content_part.added", {{"item_id", id}, {"output_index", at}, {"content_index", 0},
                                              {"part", output_text("", json::array())}});
  return ev;
}

std::string ResponsesStream::close_open_item(const char* status) {
  if (open_ == Open::None) return "";
  json& item = items_.back();
  const int64_t at = static_cast<int64_t>(items_.size()) - 1;
  const std::string id = item["id"];
  std::string ev;
  if (open_ == Open::Message) {
    const json part = output_text(text_, logprobs_);
    ev += event("response.output_text.done", {{"item_id", id}, {"output_index", at}, {"content_index", 0}, {"text", text_},
                                              {"logprobs", logprobs_}});
    ev += event("response.content_part.done", {{"item_id", id}, {"output_index", at}, {"content_index", 0}, {"part", part}});
    item = message_item(id, status, json::array({part}));
    text_.clear();
    logprobs_ = json::array();
  } else if (open_ == Open::Reasoning) {
    ev += event("response.reasoning_text.done", {{"item_id", id}, {"output_index", at}, {"content_index", 0}, {"text", text_}});
    item = reasoning_item(id, status, text_);
    text_.clear();
  } else {
    item["status"] = status;
    ev += event("response.function_call_arguments.done", {{"item_id", id}, {"output_index", at}, {"name", item["name"]},
                                                           {"arguments", item["arguments"]}});
  }
  open_ = Open::None;
  ev += event("response.output_item.done", {{"output_index", at}, {"item", item}});
  return ev;
}

std::string ResponsesStream::update(const RequestOutput& out) {
  std::string ev;
  for (const auto& sc : stream_choices(r_, ctx_, 0, out, st_)) {
    const json& c = sc.choice;
    const json& d = c["delta"];
    const json lps = logprobs_wanted(r_) ? entries(c) : json::array();
    if (d.contains("reasoning") && d["reasoning"].is_string()) {  // (a reasoning parser's: before the content)
      if (open_ != Open::Reasoning) {
        ev += close_open_item();
        items_.push_back(reasoning_item(random_id("rs_"), "in_progress", ""));
        open_ = Open::Reasoning;
        ev += event("response.output_item.added", {{"output_index", static_cast<int64_t>(items_.size()) - 1}, {"item", items_.back()}});
      }
      const std::string delta = d["reasoning"];
      text_ += delta;
      ev += event("response.reasoning_text.delta", {{"item_id", items_.back()["id"]},
                                                    {"output_index", static_cast<int64_t>(items_.size()) - 1},
                                                    {"content_index", 0}, {"delta", delta}});
    }
    const std::string text = d.contains("content") && d["content"].is_string() ? d["content"].get<std::string>() : "";
    if (!text.empty()) {
      if (open_ != Open::Message) {
        ev += close_open_item();
        ev += open_message();
      }
      text_ += text;
      const int64_t at = static_cast<int64_t>(items_.size()) - 1;
      ev += event("response.output_text.delta", {{"item_id", items_.back()["id"]}, {"output_index", at}, {"content_index", 0},
                                                 {"delta", text}, {"logprobs", lps}});
    }
    // (Tokens whose text is not out yet keep theirs for the message they begin.)
    if (open_ != Open::Call && open_ != Open::Reasoning)
      for (const auto& e : lps) logprobs_.push_back(e);
    if (d.contains("tool_calls")) {
      for (const auto& tc : d["tool_calls"]) {
        if (tc.contains("id")) {  // a new call
          ev += close_open_item();
          items_.push_back(call_item(tc["id"], tc["function"]["name"], "", "in_progress"));
          open_ = Open::Call;
          ev += event("response.output_item.added", {{"output_index", static_cast<int64_t>(items_.size()) - 1}, {"item", items_.back()}});
        }
        const std::string args = tc["function"].value("arguments", "");
        if (args.empty() || open_ != Open::Call) continue;
        items_.back()["arguments"] = items_.back()["arguments"].get<std::string>() + args;
        ev += event("response.function_call_arguments.delta", {{"item_id", items_.back()["id"]},
                                                               {"output_index", static_cast<int64_t>(items_.size()) - 1},
                                                               {"delta", args}});
      }
    }
    if (!c["finish_reason"].is_null() && !finished_) {
      const bool cut = c["finish_reason"] == "length";
      ev += close_open_item(cut ? "incomplete" : "completed");
      response_ = response_object(id_, r_, cut ? "incomplete" : "completed", items_, usage(out), cut);
      // (response.completed whatever the status, as vLLM: the OpenAI SDK's stream helpers wait for it.)
      ev += event("response.completed", {{"response", response_}});
      finished_ = true;
    }
  }
  return ev;
}

std::string ResponsesStream::error(int status, const std::string& message) {
  return event("error", {{"code", status >= 500 ? "server_error" : "invalid_request_error"}, {"message", message}, {"param", nullptr}});
}

}  // namespace llmserve
