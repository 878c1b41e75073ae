// The OpenAI protocol: request bodies into engine jobs, engine outputs into responses and
// Server-Sent-Event chunks, and errors in OpenAI's shape {"error": {"message", "type", "param", "code"}}.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "model/lora.h"
#include "server/lora_registry.h"
#include "model/pooler_config.h"
#include "server/tool_parser.h"

namespace llmserve {

class ChatTemplate;
class Tokenizer;
struct ResponsesInfo;
struct EmbeddingOptions;

// An error that becomes an HTTP response.
struct HttpError : std::runtime_error {
  int status;
  std::string type, param;
  HttpError(int s, const std::string& msg, const std::string& t = "BadRequestError", const std::string& p = "")
      : std::runtime_error(msg), status(s), type(t), param(p) {}
};
std::string error_body(int status, const std::string& message, const std::string& type, const std::string& param = "");

struct ApiContext {
  const Tokenizer* tok = nullptr;
  const ChatTemplate* chat = nullptr;
  std::vector<std::string> model_names;  // served_model_name (first is the main one)
  std::string model_path;
  int64_t max_model_len = 0;
  int64_t vocab_size = 0;
  std::vector<int64_t> eos_ids;  // the model's (check_some_token_allowed)
  int64_t created = 0;
  ToolFormat tool_format = ToolFormat::None;
  bool reasoning = false;  // reasoning_parser qwen3 / deepseek_r1: <think>...</think> is a chat answer's reasoning
  bool prompt_tokens_details = false;  // usage.prompt_tokens_details.cached_tokens (enable_prompt_tokens_details)
  bool tokens_as_ids = false;          // return_tokens_as_token_ids: a request's default
  bool force_include_usage = false;    // enable_force_include_usage: streams end with usage whatever stream_options says
  bool guided_compact = false;         // structured_outputs_config disable_any_whitespace: a request's default
  std::string response_role = "assistant";  // a chat answer's role after a generation prompt
  int max_logprobs = 20;
  LogprobsMode logprobs_mode = LogprobsMode::RawLogprobs;  // logprobs_mode (vLLM's): every request's
  bool priority_scheduling = false;  // scheduling_policy priority: requests may set `priority`
  bool trust_request_chat_template = false;  // a request's own chat_template is rendered (vLLM's flag)
  // default_chat_template_kwargs (vLLM's): the chat template's keyword arguments under each request's own.
  nlohmann::ordered_json default_template_kwargs = nlohmann::ordered_json::object();
  nlohmann::json sampling_defaults = nlohmann::json::object();  // generation_config_defaults, or empty
  // The pooling runner (runner pooling): /v1/embeddings is served, the generation APIs are not.
  bool pooling = false;
  PoolerConfig pooler;
  // A sequence classifier (the classify task): /classify is served instead of /v1/embeddings, and score /
  // rerank run it as a cross-encoder when it has one label. Null for embedding models.
  std::shared_ptr<const Classifier> classifier;
  int64_t hidden_size = 0;
  std::shared_ptr<LoraRegistry> loras;  // enable_lora: the adapters served under their names too; else null
  int max_loras = 0;                          // (its max_loras, for /metrics)
  // enable_tokenizer_info_endpoint: GET /tokenizer_info is served, answering tokenizer_info (TokenizerDocs::info;
  // empty when the model has no tokenizer).
  bool tokenizer_info_route = false;
  // vLLM's development routes (VLLM_SERVER_DEV_MODE=1 in the server's environment): POST /reset_prefix_cache.
  bool dev_routes = false;
  std::string tokenizer_info;
};

// A parsed generation request: one or more prompts, each run with `params`.
struct GenerationRequest {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage: a usage chunk before [DONE]
  bool continuous_usage = false;  // and continuous_usage_stats: usage on every chunk (vLLM)
  bool echo = false;
  bool tokens_as_ids = false;  // vLLM's return_tokens_as_token_ids: log-probability entries name tokens "token_id:<id>"
  // vLLM's return_token_ids: responses carry the prompt's token ids (prompt_token_ids) and each choice's
  // (token_ids); streamed, the prompt's with a choice's first chunk and each chunk's new ones.
  bool return_token_ids = false;
  bool echo_only = false;  // completions with echo and max_tokens 0: the prompt alone (one token is generated and dropped, as vLLM)
  bool tools_active = false;  // chat with tools and tool_choice auto: tool calls are parsed from the output
  // A named tool_choice: the function whose arguments the whole output is (guided by its parameters'
  // JSON schema), returned as that one tool call.
  std::string forced_tool;
  // tool_choice "required": the output is a JSON array of calls {"name", "parameters"} of the tools
  // (guided by a schema made from them, as vLLM), returned as tool calls.
  bool tools_required = false;
  // reasoning_parser (chat, not guided): the answer's <think>...</think> is its reasoning (reasoning_parser.h);
  // reasoning_opened: the prompt ends with <think>, so the answer begins inside it.
  // reasoning_closed: it ends with </think> (the template closed an empty reasoning): guided from the start.
  bool reasoning = false, reasoning_opened = false, reasoning_closed = false;
  bool include_reasoning = true;  // vLLM's include_reasoning: false leaves the reasoning out (the content is still split)
  std::string model;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> prompt_texts;  // what echo prepends: each prompt's text; for a chat, the final message's
  std::string role = "assistant";         // a chat answer's role (response_role, or the final message's)
  SamplingParams params;
  std::shared_ptr<const ResponsesInfo> responses;  // a Responses API request (responses_api.h); else null
  std::shared_ptr<const EmbeddingOptions> embedding;  // an embeddings request (embeddings_api.h); else null
};

// A request's list of token ids (a prompt's or an input's, named by `field`); throws HttpError 400 for an
// entry that is not an integer in the vocabulary.
std::vector<int32_t> request_token_ids(const nlohmann::json& ids, const ApiContext& ctx, const std::string& field);
// A text API ("Completions", "Chat Completions", "Responses") on a model the pooling runner serves:
// throws HttpError 400 (vLLM's message).
void check_generation_api(const ApiContext& ctx, const char* api);
// The request's `model` (absent: the first served name) into `model`, and into params.lora / lora_uid the
// LoRA adapter it names (0 for the base model); throws HttpError 404 for a name not served.
void check_model(const nlohmann::json& body, const ApiContext& ctx, std::string& model, SamplingParams& params);

// Parse and validate (throws HttpError 400/404 with a clear message).
GenerationRequest parse_completion(const nlohmann::ordered_json& body, const ApiContext& ctx);
GenerationRequest parse_chat(const nlohmann::ordered_json& body, const ApiContext& ctx);

// Whole responses (non-streaming). outputs[i] belongs to prompts[i].
nlohmann::json completion_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                                   const std::vector<RequestOutput>& outputs);
nlohmann::json chat_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                             const std::vector<RequestOutput>& outputs);
// Streaming state of one choice.
struct ChoiceStream {
  bool started = false;
  size_t sent = 0;  // bytes of text already sent (of the content, with a reasoning parser)
  size_t reasoning_sent = 0;  // bytes of the reasoning already sent
  size_t logprobs_sent = 0;  // tokens whose log-probabilities were sent
  size_t text_offset = 0;    // completions: text_offset of the next token's log-probabilities
  bool call_named = false;   // a named tool choice's call has been sent its id and name
  size_t ids_sent = 0;       // return_token_ids: output token ids sent
  size_t calls_sent = 0;     // tool calls read from the text (Hermes) named so far
  size_t args_sent = 0;      // bytes of the last of them's arguments sent
  bool done = false;
};
// The stream's choice objects for what is new in `out` (prompt `prompt_index`; chat's delta shape for a
// chat request), each with its choice's tokens so far; `st` has one entry per choice of that prompt.
// Empty when nothing can be sent yet.
struct StreamChoice {
  nlohmann::json choice;
  int64_t tokens = 0;
  bool first = false;  // the choice's first chunk (return_token_ids: a chat chunk then carries prompt_token_ids)
};
std::vector<StreamChoice> stream_choices(const GenerationRequest& r, const ApiContext& ctx, size_t prompt_index,
                                         const RequestOutput& out, std::vector<ChoiceStream>& st);
// Those choices as SSE events ("data: ...\n\n").
std::string stream_chunks(const std::string& id, const GenerationRequest& r, const ApiContext& ctx, size_t prompt_index,
                          const RequestOutput& out, std::vector<ChoiceStream>& st);
// The stream's final usage chunk (stream_options.include_usage) for all of the request's outputs.
std::string usage_chunk(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                        const std::vector<RequestOutput>& outputs);

nlohmann::json models_response(const ApiContext& ctx);
std::string random_id(const char* prefix);

}  // namespace llmserve
