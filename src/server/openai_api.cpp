#include "server/openai_api.h"

#include <random>

#include "chat/chat_template.h"
#include "common/error.h"
#include "common/json_text.h"
#include "engine/guided.h"
#include "server/reasoning_parser.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace llmserve {
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

std::string error_body(int status, const std::string& message, const std::string& type, const std::string& param) {
  json e = {{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)}, {"code", status}};
  return json_text(json{{"error", e}});
}

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += hex[rng() % 16];
  return s;
}

std::vector<int32_t> request_token_ids(const json& a, const ApiContext& ctx, const std::string& field) {
  std::vector<int32_t> ids;
  for (const auto& x : a) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= ctx.vocab_size)
      throw HttpError(400, cat(field, " token ids must be integers in [0, ", ctx.vocab_size, ")"), "BadRequestError", field);
    ids.push_back(x.get<int32_t>());
  }
  return ids;
}

void check_generation_api(const ApiContext& ctx, const char* api) {
  if (ctx.pooling)
    throw HttpError(400, cat("The model does not support ", api, " API (it is served with the pooling runner: use ",
                             ctx.classifier ? "/classify" : "/v1/embeddings", ")"));
}

void check_model(const json& body, const ApiContext& ctx, std::string& model, SamplingParams& params) {
  params.lora = 0;
  params.lora_uid = 0;
  if (!body.contains("model") || body["model"].is_null()) {
    model = ctx.model_names.front();
    return;
  }
  if (!body["model"].is_string()) throw HttpError(400, "'model' must be a string", "BadRequestError", "model");
  model = body["model"].get<std::string>();
  for (const auto& n : ctx.model_names)
    if (n == model) return;
  if (const auto a = ctx.loras ? ctx.loras->find(model) : std::nullopt) {
    params.lora_uid = a->uid;  // (its slot the engine's: SamplingParams::lora stays 0)
    return;
  }
  throw HttpError(404, "The model `" + model + "` does not exist.", "NotFoundError", "model");
}

namespace {

// A tool call's id: OpenAI's "call_..." form, or for Mistral's format the 9 letters and digits its chat
// template requires when the call comes back in a later request (as vLLM's MistralToolCall makes them).
std::string tool_call_id(ToolFormat f) {
  if (!is_mistral(f)) return random_id("call_");
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static const char kAlnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string id;
  for (int k = 0; k < 9; ++k) id.push_back(kAlnum[rng() % 62]);
  return id;
}

void beam_search_params(GenerationRequest& r);

void common_params(const json& body, GenerationRequest& r, const ApiContext& ctx, const ojson& as_sent) {
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) throw HttpError(400, "'stream' must be a boolean", "BadRequestError", "stream");
    r.stream = body["stream"].get<bool>();
  }
  auto given = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  if (given("stream_options")) {  // as vLLM: an object, and a non-empty one only with stream: true
    const json& so = body["stream_options"];
    if (!so.is_object()) throw HttpError(400, "'stream_options' must be an object", "BadRequestError", "stream_options");
    if (!so.empty() && !r.stream)
      throw HttpError(400, "Stream options can only be defined when `stream=True`.", "BadRequestError", "stream_options");
    auto flag = [&](const char* key) {
      if (!so.contains(key) || so[key].is_null()) return false;
      if (!so[key].is_boolean())
        throw HttpError(400, cat("'stream_options.", key, "' must be a boolean"), "BadRequestError", "stream_options");
      return so[key].get<bool>();
    };
    r.include_usage = flag("include_usage");
    r.continuous_usage = flag("continuous_usage_stats");
  }
  // enable_force_include_usage (vLLM's): every stream ends with usage; continuous_usage_stats then applies too.
  if (r.stream && ctx.force_include_usage) r.include_usage = true;
  r.continuous_usage = r.continuous_usage && r.include_usage;
  r.tokens_as_ids = ctx.tokens_as_ids;  // (the server's default; the request's own below)
  if (given("return_tokens_as_token_ids")) {
    if (!body["return_tokens_as_token_ids"].is_boolean())
      throw HttpError(400, "'return_tokens_as_token_ids' must be a boolean", "BadRequestError", "return_tokens_as_token_ids");
    r.tokens_as_ids = body["return_tokens_as_token_ids"].get<bool>();
  }
  if (given("return_token_ids")) {
    if (!body["return_token_ids"].is_boolean())
      throw HttpError(400, "'return_token_ids' must be a boolean", "BadRequestError", "return_token_ids");
    r.return_token_ids = body["return_token_ids"].get<bool>();
  }
  if (body.contains("cache_salt")) {  // vLLM's rule and message
    if (!body["cache_salt"].is_string() || body["cache_salt"].get<std::string>().empty())
      throw HttpError(400, "Parameter 'cache_salt' must be a non-empty string if provided.", "BadRequestError", "cache_salt");
    r.params.cache_salt = body["cache_salt"].get<std::string>();
  }
  if (given("user") && !body["user"].is_string())
    throw HttpError(400, "'user' must be a string", "BadRequestError", "user");
  try {
    r.params.guided_compact = ctx.guided_compact;  // (the server's default; structured_outputs may say otherwise)
    r.params.logprobs_mode = ctx.logprobs_mode;
    sampling_params_from_json(ctx.sampling_defaults, r.params);  // the model's, then the request's own
    sampling_params_from_json(body, r.params);
    if (r.params.guided == "json_schema") r.params.guided_schema = guided_schema_as_sent(as_sent);
    set_bad_words_ids(r.params, ctx.tok);
  } catch (const Error& e) {
    throw HttpError(400, e.what());
  }
  if (r.echo_only) r.params.max_tokens = 1;
  if (r.params.prompt_logprobs >= 0 && r.stream)  // vLLM's rule and message
    throw HttpError(400, "`prompt_logprobs` are not available when `stream=True`.", "BadRequestError", "prompt_logprobs");
  // vLLM's request priority: it orders the queue under scheduling_policy priority and is refused otherwise.
  try {
    check_priority(r.params, ctx.priority_scheduling);
  } catch (const Error& e) {
    throw HttpError(400, e.what(), "BadRequestError", "priority");
  }
  std::string param;
  try {
    check_tokenizer_needs(r.params, ctx.tok != nullptr, &param);
  } catch (const Error& e) {
    throw HttpError(400, e.what(), "BadRequestError", param);
  }
  // vLLM's and OpenAI's other options that change what is generated or returned, when set to anything
  // but their no-op value (false, empty, null).
  beam_search_params(r);
  if (given("truncate_prompt_tokens")) {  // as vLLM: the last k tokens of each prompt; -1: max_model_len
    const json& v = body["truncate_prompt_tokens"];
    if (!v.is_number_integer() || v.get<int64_t>() < -1 || v.get<int64_t>() == 0)
      throw HttpError(400, "'truncate_prompt_tokens' must be -1 (the model's context length) or a positive integer",
                      "BadRequestError", "truncate_prompt_tokens");
    const int64_t k = v.get<int64_t>() == -1 ? ctx.max_model_len : v.get<int64_t>();
    if (k > ctx.max_model_len)
      throw HttpError(400, cat("truncate_prompt_tokens value (", k, ") is greater than max_model_len (", ctx.max_model_len,
                               "). Please, select a smaller truncation size."), "BadRequestError", "truncate_prompt_tokens");
    for (size_t i = 0; i < r.prompts.size(); ++i) {
      auto& p = r.prompts[i];
      if (static_cast<int64_t>(p.size()) <= k) continue;
      p.erase(p.begin(), p.end() - k);
      if (!r.chat) r.prompt_texts[i] = ctx.tok ? ctx.tok->decode(p, false) : "";  // what echo returns
    }
  }
  const int64_t longest = [&] {
    size_t m = 0;
    for (const auto& p : r.prompts) m = std::max(m, p.size());
    return static_cast<int64_t>(m);
  }();
  if (longest > ctx.max_model_len)
    throw HttpError(400, cat("This model's maximum context length is ", ctx.max_model_len, " tokens. However, your ",
                             r.chat ? "messages resulted in " : "prompt has ", longest, " tokens. Please reduce the length of the ",
                             r.chat ? "messages." : "prompt."),
                    "BadRequestError", r.chat ? "messages" : "prompt");
  if (!given("max_tokens") && !given("max_completion_tokens")) {  // the rest of the context, as vLLM
    int64_t room = ctx.max_model_len - longest;
    if (ctx.sampling_defaults.contains("max_tokens")) room = std::min(room, ctx.sampling_defaults["max_tokens"].get<int64_t>());
    r.params.max_tokens = static_cast<int>(std::max<int64_t>(1, room));
  }
  try {
    sampling_params_validate(r.params, ctx.vocab_size, ctx.max_logprobs);
    check_some_token_allowed(r.params, ctx.eos_ids);
  } catch (const Error& e) {
    throw HttpError(400, e.what());
  }
  for (const auto& p : r.prompts)
    if (static_cast<int64_t>(p.size()) + r.params.max_tokens > ctx.max_model_len)
      throw HttpError(400, cat("This model's maximum context length is ", ctx.max_model_len, " tokens. However, you requested ",
                               static_cast<int64_t>(p.size()) + r.params.max_tokens, " tokens (", p.size(), " in the ",
                               r.chat ? "messages" : "prompt", ", ", r.params.max_tokens,
                               " in the completion). Please reduce the length of the ", r.chat ? "messages" : "prompt",
                               " or completion."),
                      "BadRequestError", "max_tokens");
}

// Beam search (SamplingParams::beam_search; sampling_params_validate checks the sampling side) also
// refuses echo and tools read from or forced on the text.
void beam_search_params(GenerationRequest& r) {
  if (!r.params.beam_search) return;
  const char* clash = r.echo ? "echo"
                      : !r.forced_tool.empty() || r.tools_required ? "guided decoding"
                      : r.tools_active ? "tools (with tool_choice auto)"
                      : nullptr;
  if (clash) throw HttpError(400, cat("beam search does not take ", clash), "BadRequestError", "use_beam_search");
}

void read_echo(const json& body, GenerationRequest& r) {
  if (!body.contains("echo") || body["echo"].is_null()) return;
  if (!body["echo"].is_boolean()) throw HttpError(400, "'echo' must be a boolean", "BadRequestError", "echo");
  r.echo = body["echo"].get<bool>();
}

json usage_json(int64_t prompt, int64_t completion) {
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

// A response's usage; with enable_prompt_tokens_details, the prompt tokens served from the prefix cache too.
json usage_json(const ApiContext& ctx, const std::vector<RequestOutput>& outputs) {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (const auto& o : outputs) {
    prompt += o.prompt_tokens;
    cached += o.num_cached_tokens;
    for (const auto& c : o.outputs) completion += static_cast<int64_t>(c.token_ids.size());
  }
  json u = usage_json(prompt, completion);
  if (ctx.prompt_tokens_details) u["prompt_tokens_details"] = {{"cached_tokens", cached}};
  return u;
}

// A token's text in log-probability entries (its id without a tokenizer).
std::string token_text(const ApiContext& ctx, int32_t id) {
  if (!ctx.tok) return std::to_string(id);
  return id >= 0 && id < ctx.tok->vocab_size() ? ctx.tok->token_string(id) : ctx.tok->decode({id}, false);
}

// How a request's log-probability entries name tokens: their text, or with vLLM's
// return_tokens_as_token_ids "token_id:<id>" (tokens whose text is not valid UTF-8 stay identifiable).
struct TokenNames {
  const ApiContext& ctx;
  bool as_ids = false;
  std::string operator()(int32_t id) const { return as_ids ? "token_id:" + std::to_string(id) : token_text(ctx, id); }
};

json chat_logprobs(const CompletionOutput& c, const TokenNames& name, size_t from = 0) {
  json content = json::array();
  auto bytes = [](const std::string& s) {
    json b = json::array();
    for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
    return b;
  };
  for (size_t i = from; i < c.logprobs.size(); ++i) {
    const auto& lp = c.logprobs[i];
    json top = json::array();
    for (const auto& [id, v] : lp.top) {
      const std::string t = name(id);
      top.push_back({{"token", t}, {"logprob", v}, {"bytes", bytes(t)}});
    }
    const std::string t = name(lp.token);
    content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", bytes(t)}, {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

// The completions API's log-probabilities object, a token at a time: its text, its log-probability
// and top alternatives (null for a token that has none: an echoed prompt's first), and its text offset
// from *off (left past the last token).
struct CompletionLogprobs {
  const TokenNames& name;
  size_t* off;
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  void add(int32_t token, const TokenLogprob* lp) {
    const std::string t = name(token);
    tokens.push_back(t);
    lps.push_back(lp ? json(lp->logprob) : json(nullptr));
    json top = lp ? json::object() : json(nullptr);
    if (lp)
      for (const auto& [id, v] : lp->top) top[name(id)] = v;
    tops.push_back(std::move(top));
    offsets.push_back(*off);
    *off += t.size();
  }
  // (moved out: an initializer list of lvalues would copy each array, entries and all)
  json take() {
    return {{"tokens", std::move(tokens)}, {"token_logprobs", std::move(lps)}, {"top_logprobs", std::move(tops)},
            {"text_offset", std::move(offsets)}};
  }
};

// A choice's completions log-probabilities: with echo, the prompt's first (on the first chunk of a
// stream, or the whole response; nothing but the tokens when the prompt's were not computed), then
// the generated tokens' from `from` (none for echo_only).
json choice_logprobs(const GenerationRequest& r, size_t prompt_index, const RequestOutput& out, const CompletionOutput& c,
                     const ApiContext& ctx, bool with_prompt, size_t from, size_t* off) {
  const TokenNames name{ctx, r.tokens_as_ids};
  CompletionLogprobs lp{name, off};
  if (with_prompt) {
    const auto& prompt = r.prompts.at(prompt_index);
    for (size_t i = 0; i < prompt.size(); ++i)
      lp.add(prompt[i], i > 0 && out.prompt_logprobs ? &(*out.prompt_logprobs)[i - 1] : nullptr);
  }
  for (size_t i = r.echo_only ? c.logprobs.size() : from; i < c.logprobs.size(); ++i) lp.add(c.logprobs[i].token, &c.logprobs[i]);
  return lp.take();
}

// vLLM's prompt_logprobs field: null for the first prompt token, then for each other one a map from
// token id to {logprob, rank, decoded_token}: the prompt token (its rank counted over the vocabulary)
// and the top alternatives (ranks 1..k).
json prompt_logprobs_json(const RequestOutput& out, const ApiContext& ctx) {
  if (!out.prompt_logprobs) return nullptr;
  json a = json::array({nullptr});
  for (const auto& lp : *out.prompt_logprobs) {
    json d = json::object();
    d[std::to_string(lp.token)] = {{"logprob", lp.logprob}, {"rank", lp.rank}, {"decoded_token", token_text(ctx, lp.token)}};
    for (size_t k = 0; k < lp.top.size(); ++k)
      d[std::to_string(lp.top[k].first)] = {{"logprob", lp.top[k].second}, {"rank", k + 1},
                                            {"decoded_token", token_text(ctx, lp.top[k].first)}};
    a.push_back(std::move(d));
  }
  return a;
}

}  // namespace

GenerationRequest parse_completion(const ojson& as_sent, const ApiContext& ctx) {
  if (!as_sent.is_object()) throw HttpError(400, "the request body must be a JSON object");
  const json body = json::parse(json_text(as_sent));
  GenerationRequest r;
  check_model(body, ctx, r.model, r.params);
  if (!body.contains("prompt")) throw HttpError(400, "'prompt' is required", "BadRequestError", "prompt");
  const json& p = body["prompt"];
  auto add_text = [&](const json& s) {
    if (!ctx.tok) throw HttpError(400, "this model has no tokenizer: send token ids", "BadRequestError", "prompt");
    r.prompts.push_back(ctx.tok->encode(s.get<std::string>(), true));
    r.prompt_texts.push_back(s.get<std::string>());
  };
  auto add_ids = [&](const json& a) {
    std::vector<int32_t> ids = request_token_ids(a, ctx, "prompt");
    r.prompts.push_back(ids);
    r.prompt_texts.push_back(ctx.tok ? ctx.tok->decode(ids, false) : "");
  };
  if (p.is_string()) {
    add_text(p);
  } else if (p.is_array() && !p.empty() && p[0].is_string()) {
    for (const auto& s : p) {
      if (!s.is_string()) throw HttpError(400, "'prompt' must be a string, a list of strings, or token ids", "BadRequestError", "prompt");
      add_text(s);
    }
  } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
    add_ids(p);
  } else if (p.is_array() && !p.empty() && p[0].is_array()) {
    for (const auto& a : p) add_ids(a);
  } else {
    throw HttpError(400, "'prompt' must be a non-empty string, list of strings, or token ids", "BadRequestError", "prompt");
  }
  for (const auto& q : r.prompts)
    if (q.empty()) throw HttpError(400, "the prompt is empty", "BadRequestError", "prompt");
  read_echo(body, r);
  // As vLLM: echo with max_tokens 0 returns the prompt alone (what evaluation harnesses send to score a
  // text); max_tokens 0 otherwise is refused as usual.
  r.echo_only = r.echo && body.contains("max_tokens") && body["max_tokens"].is_number_integer() && body["max_tokens"] == 0;
  common_params(body, r, ctx, as_sent);
  // With echo, the log-probabilities cover the prompt's tokens too (OpenAI's and vLLM's).
  if (r.echo && r.params.logprobs >= 0 && r.params.prompt_logprobs < 0) r.params.prompt_logprobs = r.params.logprobs;
  return r;
}

GenerationRequest parse_chat(const ojson& body, const ApiContext& ctx) {
  if (!body.is_object()) throw HttpError(400, "the request body must be a JSON object");
  GenerationRequest r;
  r.chat = true;
  const json plain = json::parse(json_text(body));
  check_model(plain, ctx, r.model, r.params);
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
    throw HttpError(400, "'messages' must be a non-empty list", "BadRequestError", "messages");
  for (const auto& m : body["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw HttpError(400, "each message needs a string 'role'", "BadRequestError", "messages");
    if (m.contains("content") && !m["content"].is_null() && !m["content"].is_string() && !m["content"].is_array())
      throw HttpError(400, "a message's 'content' must be a string or a list of parts", "BadRequestError", "messages");
  }
  if (!ctx.tok || !ctx.chat) throw HttpError(400, "this model has no tokenizer or chat template");
  read_echo(plain, r);
  ChatRenderOptions o;
  try {
    o = chat_render_options(body, ctx.trust_request_chat_template, ctx.default_template_kwargs);
  } catch (const Error& e) {
    throw HttpError(400, e.what());
  }
  std::string forced_schema;  // a named tool_choice: its function's parameters schema
  if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
    const auto& tc = body["tool_choice"];
    if (tc.is_object()) {  // {"type": "function", "function": {"name": ...}}: the output is that call's arguments
      if ((tc.contains("type") && tc["type"] != "function") || !tc.contains("function") || !tc["function"].is_object() ||
          !tc["function"].contains("name") || !tc["function"]["name"].is_string())
        throw HttpError(400, "a named tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        "BadRequestError", "tool_choice");
      r.forced_tool = tc["function"]["name"].get<std::string>();
      bool found = false;
      if (o.tools.is_array())
        for (const auto& t : o.tools) {
          if (t["function"]["name"] != r.forced_tool) continue;  // (named functions: chat_render_options checked them)
          found = true;
          const auto& f = t["function"];
          forced_schema = f.contains("parameters") && !f["parameters"].is_null() ? f["parameters"].dump()
                                                                                 : std::string(R"({"type": "object", "properties": {}})");
        }
      if (!found)  // vLLM's message
        throw HttpError(400, cat("Tool '", r.forced_tool, "' has not been passed in `tools`."), "BadRequestError", "tool_choice");
    } else if (tc == "required") {
      // At least one call of the tools: a JSON array of {"name", "parameters"} objects, told apart by
      // the name (vLLM's schema, its alternatives as llmserve's guide takes them).
      if (!o.tools.is_array() || o.tools.empty())
        throw HttpError(400, "tool_choice 'required' needs 'tools'", "BadRequestError", "tool_choice");
      ojson alts = ojson::array();
      for (const auto& t : o.tools) {  // (each a named function: chat_render_options checked them)
        const auto& f = t["function"];
        ojson params = f.contains("parameters") && !f["parameters"].is_null() ? f["parameters"]
                                                                            : ojson{{"type", "object"}, {"properties", ojson::object()}};
        alts.push_back({{"type", "object"},
                        {"properties", {{"name", {{"const", f["name"]}}}, {"parameters", params}}},
                        {"required", {"name", "parameters"}}});
      }
      forced_schema = ojson{{"type", "array"}, {"minItems", 1}, {"items", {{"anyOf", alts}}}}.dump();
      r.tools_required = true;
    } else if (!tc.is_string() || (tc != "auto" && tc != "none")) {
      throw HttpError(400, "tool_choice must be \"auto\", \"none\", \"required\" or a named function",
                      "BadRequestError", "tool_choice");
    }
  }
  const bool choice_none = body.contains("tool_choice") && body["tool_choice"] == "none";
  r.tools_active = !o.tools.is_null() && !o.tools.empty() && !choice_none && r.forced_tool.empty() && !r.tools_required &&
                   ctx.tool_format != ToolFormat::None;
  // Messages whose content is a list of text parts: join the texts, as vLLM does for text-only models.
  // Other parts (images, audio) are refused: the models served here read text only. A message without
  // content (or with null: an assistant's tool calls) has the empty string, as vLLM gives the template.
  ojson msgs = parse_tool_call_arguments(body["messages"]);
  for (auto& m : msgs)
    if (!m.contains("content") || m["content"].is_null()) {
      m["content"] = "";
    } else if (m["content"].is_array()) {
      std::string t;
      for (const auto& part : m["content"]) {
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
          throw HttpError(400, "a content part must be an object with a 'type'", "BadRequestError", "messages");
        const std::string type = part["type"].get<std::string>();
        if (type != "text")
          throw HttpError(400, cat("content parts of type '", type, "' are not supported: the model reads text only"),
                          "BadRequestError", "messages");
        if (!part.contains("text") || !part["text"].is_string())
          throw HttpError(400, "a text content part needs a string 'text'", "BadRequestError", "messages");
        t += (t.empty() ? "" : "\n") + part["text"].get<std::string>();
      }
      m["content"] = t;
    }
  std::unique_ptr<ChatTemplate> own;  // (a trusted request's template)
  if (!o.request_template.empty()) {
    try {
      own = ctx.chat->with_source(o.request_template);
    } catch (const Error& e) {
      throw HttpError(400, cat("the request's chat_template does not parse: ", e.what()), "BadRequestError", "chat_template");
    }
  }
  std::string prompt;
  try {
    prompt = (own ? *own : *ctx.chat).render(msgs, o);
  } catch (const Error& e) {
    throw HttpError(400, e.what(), "BadRequestError", "messages");
  }
  r.prompts.push_back(ctx.tok->encode(prompt, false));
  r.reasoning_opened = prompt_opens_reasoning(prompt);
  if (body.contains("include_reasoning") && !body["include_reasoning"].is_null()) {
    if (!body["include_reasoning"].is_boolean())
      throw HttpError(400, "'include_reasoning' must be a boolean", "BadRequestError", "include_reasoning");
    r.include_reasoning = body["include_reasoning"].get<bool>();
  }
  r.reasoning_closed = prompt_closes_reasoning(prompt);
  // As vLLM: the answer's role is the assistant's after a generation prompt, else the final message's
  // (which the model continues); echo prepends the final message's content when it has that role.
  r.role = o.add_generation_prompt ? ctx.response_role : msgs.back()["role"].get<std::string>();
  const ojson& last = msgs.back();
  r.prompt_texts.push_back(last["role"] == r.role && last.contains("content") && last["content"].is_string()
                               ? last["content"].get<std::string>() : std::string());
  common_params(plain, r, ctx, body);
  // vLLM's mistral parser reads the calls after the [TOOL_CALLS] special token: the text keeps special tokens.
  if (r.tools_active && is_mistral(ctx.tool_format)) r.params.skip_special_tokens = false;
  if (!forced_schema.empty()) {  // the call's arguments (or the calls), guided by a schema (as vLLM)
    if (!r.params.guided.empty())
      throw HttpError(400, "only one kind of guided decoding per request (a named or required tool_choice and a guided "
                           "format were both asked)", "BadRequestError", "tool_choice");
    try {
      Guide::schema(forced_schema);
    } catch (const Error& e) {
      throw HttpError(400, cat(r.forced_tool.empty() ? std::string("tools") : cat("tool '", r.forced_tool, "'"), ": ", e.what()),
                      "BadRequestError", "tool_choice");
    }
    r.params.guided = "json_schema";
    r.params.guided_schema = forced_schema;
  }
  // With a reasoning parser a guided format applies after the reasoning, as vLLM's structured outputs
  // do; a named or required tool choice too (the calls are read from what follows the reasoning).
  if (ctx.reasoning && !r.params.guided.empty() && !r.reasoning_closed)
    r.params.guided_after_think = r.reasoning_opened ? 2 : 1;
  r.reasoning = ctx.reasoning && (r.params.guided.empty() || r.params.guided_after_think != 0 || r.reasoning_closed);
  return r;
}

json completion_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                         const std::vector<RequestOutput>& outputs) {
  json choices = json::array();
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (const auto& c : outputs[i].outputs) {
      size_t off = 0;
      json choice = {{"index", static_cast<int64_t>(i) * r.params.n + c.index},
                     {"text", (r.echo ? r.prompt_texts[i] : "") + (r.echo_only ? "" : c.text)},
                     {"logprobs", r.params.logprobs >= 0 ? choice_logprobs(r, i, outputs[i], c, ctx, r.echo, 0, &off) : json(nullptr)},
                     {"finish_reason", c.finish_reason},
                     {"stop_reason", c.stop_reason.empty() ? json(nullptr) : json(c.stop_reason)}};
      if (r.params.prompt_logprobs >= 0) choice["prompt_logprobs"] = prompt_logprobs_json(outputs[i], ctx);
      if (r.return_token_ids) {
        choice["prompt_token_ids"] = r.prompts[i];
        choice["token_ids"] = c.token_ids;
      }
      choices.push_back(std::move(choice));
    }
  }
  return {{"id", id}, {"object", "text_completion"}, {"created", ctx.created}, {"model", r.model},
          {"choices", std::move(choices)}, {"usage", usage_json(ctx, outputs)}};
}

json chat_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                   const std::vector<RequestOutput>& outputs) {
  json choices = json::array();
  const RequestOutput& o = outputs.at(0);
  for (const auto& c : o.outputs) {
    const std::string echoed = r.echo ? r.prompt_texts.at(0) : "";
    std::string text = c.text;  // the content (with a reasoning parser, what follows the reasoning)
    json reasoning = nullptr;
    if (r.reasoning) {
      const ReasoningSplit sp = split_reasoning(c.text, r.reasoning_opened, true);
      if (sp.end > sp.begin) reasoning = c.text.substr(sp.begin, sp.end - sp.begin);  // (empty: none)
      text = c.text.substr(sp.content);
    }
    json message = {{"role", r.role}, {"content", echoed + text}};
    if (r.reasoning) {
      if (r.include_reasoning) {  // (vLLM's field, and the name it had before)
        message["reasoning"] = reasoning;
        message["reasoning_content"] = reasoning;
      }
      if (!reasoning.is_null() && echoed.empty() && text.empty()) message["content"] = nullptr;
    }
    std::string finish = c.finish_reason;
    if (!r.forced_tool.empty()) {  // the whole output (after any reasoning) is the named function's arguments
      message["content"] = echoed.empty() ? json(nullptr) : json(echoed);
      message["tool_calls"] = json::array({{{"id", tool_call_id(ctx.tool_format)}, {"type", "function"},
                                            {"function", {{"name", r.forced_tool}, {"arguments", text}}}}});
    } else if (r.tools_active || r.tools_required) {
      const ToolParse p = r.tools_required ? parse_required_calls(text) : parse_tool_calls(ctx.tool_format, text);
      if (!p.calls.empty()) {
        json tc = json::array();
        for (const auto& call : p.calls)
          tc.push_back({{"id", tool_call_id(ctx.tool_format)}, {"type", "function"},
                        {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
        message["content"] = echoed.empty() && p.content.empty() ? json(nullptr) : json(echoed + p.content);
        message["tool_calls"] = tc;
        finish = "tool_calls";
      }
    }
    json choice = {{"index", c.index},
                   {"message", message},
                   {"logprobs", r.params.logprobs >= 0 ? chat_logprobs(c, {ctx, r.tokens_as_ids}) : json(nullptr)},
                   {"finish_reason", finish},
                   {"stop_reason", c.stop_reason.empty() ? json(nullptr) : json(c.stop_reason)}};
    if (r.return_token_ids) choice["token_ids"] = c.token_ids;
    choices.push_back(std::move(choice));
  }
  json resp = {{"id", id}, {"object", "chat.completion"}, {"created", ctx.created}, {"model", r.model},
               {"choices", std::move(choices)}, {"usage", usage_json(ctx, outputs)}};
  if (r.params.prompt_logprobs >= 0) resp["prompt_logprobs"] = prompt_logprobs_json(o, ctx);
  if (r.return_token_ids) resp["prompt_token_ids"] = r.prompts.at(0);  // (vLLM's: the response's, not a choice's)
  return resp;
}

namespace {

// The deltas of the tool calls read from a chat answer's text (tool_choice auto) that this update adds.
// Hermes calls are streamed as vLLM streams them: a call is named (id, type, name, empty arguments) once
// its name and the start of its arguments object are out, then its arguments follow as the model writes
// them, one call after another. At the end (`final`: the whole text's calls) what was not streamed goes
// whole: a call whose arguments are not an object, and every call of other formats.
json tool_call_deltas(ToolFormat f, const std::string& text, const ToolParse* final, ChoiceStream& s) {
  json out = json::array();
  auto args_delta = [&](size_t k, const PartialCall& pc) {
    // (up to the last whole character while the arguments go on)
    const size_t end = pc.args_end != std::string::npos ? pc.args_end : std::min(unicode::utf8_stable_prefix(text), pc.args_safe);
    const size_t from = pc.args_begin + s.args_sent;
    if (end <= from) return;
    std::string piece = text.substr(from, end - from);
    s.args_sent += piece.size();
    if (!out.empty() && out.back()["index"] == k) {
      out.back()["function"]["arguments"] = out.back()["function"]["arguments"].get<std::string>() + piece;
    } else {
      out.push_back({{"index", k}, {"function", {{"arguments", std::move(piece)}}}});
    }
  };
  if (f == ToolFormat::Hermes || f == ToolFormat::MistralV11) {
    const std::vector<PartialCall> calls = f == ToolFormat::Hermes ? scan_hermes_calls(text) : scan_mistral_calls(text, final != nullptr);
    for (size_t k = s.calls_sent > 0 ? s.calls_sent - 1 : 0; k < calls.size(); ++k) {
      const PartialCall& pc = calls[k];
      if (k + 1 == s.calls_sent) {  // the call being streamed
        args_delta(k, pc);
        if (pc.args_end == std::string::npos) break;
        continue;
      }
      if (!pc.streamable || !pc.named || pc.args_begin == std::string::npos) break;
      out.push_back({{"index", k}, {"id", tool_call_id(f)}, {"type", "function"},
                     {"function", {{"name", pc.name}, {"arguments", ""}}}});
      s.calls_sent = k + 1;
      s.args_sent = 0;
      args_delta(k, pc);
      if (pc.args_end == std::string::npos) break;
    }
  }
  if (final)
    for (size_t k = s.calls_sent; k < final->calls.size(); ++k) {
      out.push_back({{"index", k}, {"id", tool_call_id(f)}, {"type", "function"},
                     {"function", {{"name", final->calls[k].name}, {"arguments", final->calls[k].arguments}}}});
      s.calls_sent = k + 1;
    }
  return out;
}

}  // namespace

std::vector<StreamChoice> stream_choices(const GenerationRequest& r, const ApiContext& ctx, size_t prompt_index,
                                         const RequestOutput& out, std::vector<ChoiceStream>& st) {
  std::vector<StreamChoice> choices;
  const CompletionOutput* current = nullptr;  // the choice being sent
  ChoiceStream* cur_stream = nullptr;
  bool cur_first = false;
  auto emit = [&](json choice) {
    // return_token_ids: the first chunk of this update carries the output tokens not sent yet (and, on a
    // choice's first chunk, a completion's prompt ids; a chat's go on the chunk itself: stream_chunks).
    if (r.return_token_ids) {
      if (cur_first && !r.chat) choice["prompt_token_ids"] = r.prompts.at(prompt_index);
      const size_t from = std::min(cur_stream->ids_sent, current->token_ids.size());
      choice["token_ids"] = std::vector<int32_t>(current->token_ids.begin() + static_cast<std::ptrdiff_t>(from), current->token_ids.end());
      cur_stream->ids_sent = current->token_ids.size();
    }
    choices.push_back({std::move(choice), static_cast<int64_t>(current->token_ids.size()), cur_first});
    cur_first = false;
  };
  for (const auto& c : out.outputs) {
    current = &c;
    ChoiceStream& s = st.at(static_cast<size_t>(c.index));
    if (s.done) continue;
    cur_stream = &s;
    const int64_t index = static_cast<int64_t>(prompt_index) * r.params.n + c.index;
    // With a reasoning parser: the reasoning's new bytes, and the content after it (`text` below).
    std::string reasoning_delta, content;
    if (r.reasoning) {
      const ReasoningSplit sp = split_reasoning(c.text, r.reasoning_opened, c.finished(), s.reasoning_sent);
      if (sp.has_reasoning && sp.end > sp.begin + s.reasoning_sent)
        reasoning_delta = c.text.substr(sp.begin + s.reasoning_sent, sp.end - sp.begin - s.reasoning_sent);
      if (sp.content_ready) content = c.text.substr(sp.content);
    }
    const std::string shown = r.include_reasoning ? reasoning_delta : std::string();  // (include_reasoning false: none shown)
    const std::string& text = r.reasoning ? content : c.text;
    size_t limit = text.size();
    ToolParse calls;
    json call_deltas = json::array();  // tool-call deltas of this update
    if (r.tools_active) {
      if (c.finished()) {
        calls = parse_tool_calls(ctx.tool_format, text);
        if (!calls.calls.empty()) limit = std::max(s.sent, tool_safe_prefix(ctx.tool_format, text));
      } else {
        limit = std::max(s.sent, tool_safe_prefix(ctx.tool_format, text));
      }
      if (r.chat) call_deltas = tool_call_deltas(ctx.tool_format, text, c.finished() ? &calls : nullptr, s);
    } else if (r.tools_required) {  // the calls whole at the end (the text as content if it is not one)
      if (c.finished()) calls = parse_required_calls(text);
      if (!c.finished() || !calls.calls.empty()) limit = s.sent;
    }
    const std::string delta = limit > s.sent && !r.echo_only ? text.substr(s.sent, limit - s.sent) : "";
    const bool first = !s.started;
    // A chunk for every step that produced tokens, even when their text is still empty (an incomplete
    // UTF-8 sequence, text held back for a stop string, a model without a tokenizer), as vLLM does:
    // clients time tokens by chunks.
    if (delta.empty() && shown.empty() && call_deltas.empty() && c.delta_tokens == 0 && !c.finished() && !(first && (r.chat || r.echo)))
      continue;
    s.sent = std::max(s.sent, limit);
    s.reasoning_sent += reasoning_delta.size();
    s.started = true;
    cur_first = first;
    // The log-probabilities of the tokens not sent yet ride on this chunk (null when not asked for).
    json lp = nullptr;
    if (r.params.logprobs >= 0) {
      const size_t from = s.logprobs_sent > c.logprobs_from ? s.logprobs_sent - c.logprobs_from : 0;
      lp = r.chat ? chat_logprobs(c, {ctx, r.tokens_as_ids}, from)
                  : choice_logprobs(r, prompt_index, out, c, ctx, first && r.echo, from, &s.text_offset);
      s.logprobs_sent = c.logprobs_from + c.logprobs.size();
    }
    json finish = c.finished() ? json(calls.calls.empty() ? c.finish_reason : std::string("tool_calls")) : json(nullptr);
    if (r.chat && !r.forced_tool.empty()) {
      // The named function's call, its arguments streamed as they come (as vLLM): the first chunk
      // names the call, the later ones add to its arguments. With a reasoning parser the reasoning
      // comes first, and the call is named with the first bytes after it (or at the end).
      json d = json::object();
      if (!r.reasoning || !delta.empty() || c.finished() || s.call_named) {
        json call = {{"index", 0}, {"function", {{"arguments", delta}}}};
        if (!s.call_named) call = {{"index", 0}, {"id", tool_call_id(ctx.tool_format)}, {"type", "function"},
                                   {"function", {{"name", r.forced_tool}, {"arguments", delta}}}};
        s.call_named = true;
        d["tool_calls"] = json::array({call});
      }
      if (!shown.empty()) {
        d["reasoning"] = shown;
        d["reasoning_content"] = shown;
      }
      if (first) d["role"] = r.role;
      if (first && r.echo) d["content"] = r.prompt_texts.at(0);
      json choice = {{"index", index}, {"delta", d}, {"logprobs", lp}, {"finish_reason", finish}};
      if (c.finished()) choice["stop_reason"] = c.stop_reason.empty() ? json(nullptr) : json(c.stop_reason);
      emit(choice);
    } else if (r.chat) {
      json d = json::object();
      if (first) d["role"] = r.role;
      const std::string content_delta = (first && r.echo ? r.prompt_texts.at(0) : "") + delta;
      if (!shown.empty()) {  // (vLLM's field, and the name it had before; no content beside it unless some is new)
        d["reasoning"] = shown;
        d["reasoning_content"] = shown;
      }
      if (!content_delta.empty() || shown.empty()) d["content"] = content_delta;
      if (r.tools_required && !calls.calls.empty())  // (the calls whole at the end)
        for (size_t k = 0; k < calls.calls.size(); ++k)
          call_deltas.push_back({{"index", k}, {"id", tool_call_id(ctx.tool_format)}, {"type", "function"},
                                 {"function", {{"name", calls.calls[k].name}, {"arguments", calls.calls[k].arguments}}}});
      if (!call_deltas.empty()) {
        // Content first, then the calls' deltas (with the finish reason at the end).
        const bool before = !content_delta.empty() || !shown.empty() || first;
        if (before) emit({{"index", index}, {"delta", d}, {"logprobs", lp}, {"finish_reason", nullptr}});
        emit({{"index", index}, {"delta", {{"tool_calls", call_deltas}}}, {"logprobs", before ? json(nullptr) : lp}, {"finish_reason", finish}});
      } else {
        json choice = {{"index", index}, {"delta", d}, {"logprobs", lp}, {"finish_reason", finish}};
        if (c.finished()) choice["stop_reason"] = c.stop_reason.empty() ? json(nullptr) : json(c.stop_reason);
        emit(choice);
      }
    } else {
      json choice = {{"index", index}, {"text", (first && r.echo ? r.prompt_texts[prompt_index] : "") + delta},
                     {"logprobs", lp}, {"finish_reason", finish}};
      if (c.finished()) choice["stop_reason"] = c.stop_reason.empty() ? json(nullptr) : json(c.stop_reason);
      emit(choice);
    }
    if (c.finished()) s.done = true;
  }
  return choices;
}

std::string stream_chunks(const std::string& id, const GenerationRequest& r, const ApiContext& ctx, size_t prompt_index,
                          const RequestOutput& out, std::vector<ChoiceStream>& st) {
  std::string events;
  for (auto& c : stream_choices(r, ctx, prompt_index, out, st)) {
    json chunk = {{"id", id}, {"object", r.chat ? "chat.completion.chunk" : "text_completion"}, {"created", ctx.created},
                  {"model", r.model}, {"choices", json::array({std::move(c.choice)})}};
    if (r.continuous_usage)  // as vLLM: the prompt's tokens and this choice's so far
      chunk["usage"] = usage_json(out.prompt_tokens, c.tokens);
    if (r.return_token_ids && r.chat && c.first) chunk["prompt_token_ids"] = r.prompts.at(prompt_index);
    events += "data: " + json_text(chunk) + "\n\n";
  }
  return events;
}

std::string usage_chunk(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                        const std::vector<RequestOutput>& outputs) {
  json chunk = {{"id", id}, {"object", r.chat ? "chat.completion.chunk" : "text_completion"}, {"created", ctx.created},
                {"model", r.model}, {"choices", json::array()}, {"usage", usage_json(ctx, outputs)}};
  return "data: " + json_text(chunk) + "\n\n";
}

json models_response(const ApiContext& ctx) {
  json data = json::array();
  for (const auto& n : ctx.model_names)
    data.push_back({{"id", n}, {"object", "model"}, {"created", ctx.created}, {"owned_by", "llmserve"},
                    {"root", ctx.model_path}, {"parent", nullptr}, {"max_model_len", ctx.max_model_len}});
  // LoRA adapters as vLLM lists them: root their path, parent the base model (base_model_name, or the first name).
  if (ctx.loras)
    for (const auto& e : ctx.loras->list()) {
      const LoraModuleSpec& a = e.spec;
      data.push_back({{"id", a.name}, {"object", "model"}, {"created", ctx.created}, {"owned_by", "llmserve"},
                      {"root", a.path}, {"parent", a.base_model_name.empty() ? ctx.model_names.front() : a.base_model_name},
                      {"max_model_len", ctx.max_model_len}});
    }
  return {{"object", "list"}, {"data", data}};
}

}  // namespace llmserve
