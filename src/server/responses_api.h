// OpenAI's Responses API (POST /v1/responses; GET and DELETE /v1/responses/{id}; POST
// /v1/responses/{id}/cancel) on the chat path: a request's `instructions`, the stored conversation of its
// `previous_response_id` and its `input` items become chat messages rendered by the model's template;
// function tools, `tool_choice`, `text.format` (JSON object or schema), `max_output_tokens`, sampling
// and log-probabilities map onto the chat request's; the output comes back as Responses output items
// (an assistant message of output_text, function calls), whole or as the API's typed stream events.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/openai_api.h"

namespace llmserve {

// What a Responses request adds to its chat request (GenerationRequest::responses).
struct ResponsesInfo {
  nlohmann::json echo;                  // the request's settings that its response object repeats
  nlohmann::ordered_json conversation;  // the previous turns' items and this input's (no instructions)
  bool store = true;
  int64_t created_at = 0;
};

// Responses kept for previous_response_id and GET (store: true, OpenAI's default): each with its
// conversation (the items of every turn, its output included). The oldest go first past kMaxEntries
// responses or kMaxBytes of their text. Thread-safe.
class ResponsesStore {
 public:
  static constexpr size_t kMaxEntries = 1000;
  static constexpr size_t kMaxBytes = 64u << 20;
  struct Entry {
    nlohmann::json response;
    nlohmann::ordered_json conversation;
  };
  void put(const std::string& id, Entry e);
  std::optional<Entry> get(const std::string& id) const;
  bool erase(const std::string& id);

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::pair<Entry, size_t>> map_;  // entry and its bytes
  std::deque<std::string> order_;  // oldest first (erased ids are skipped)
  size_t bytes_ = 0;
};

// Parses and validates a POST /v1/responses body (HttpError 400, or 404 for an unknown model or
// previous_response_id).
GenerationRequest parse_responses(const nlohmann::ordered_json& body, const ApiContext& ctx, const ResponsesStore& store);

// The finished response object (status "completed", or "incomplete" when max_output_tokens or the
// context ended it), with its output items and usage.
nlohmann::json responses_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                                  const RequestOutput& out);

// The stored conversation after a response: the request's and the response's items.
nlohmann::ordered_json conversation_after(const GenerationRequest& r, const nlohmann::json& response);

// A streamed response's events ("event: <type>\ndata: {...}\n\n", sequence-numbered): created and
// in_progress first; an output item's added, content-part and delta events as text arrives (a function
// call's arguments as they come for a named tool_choice, else each call whole when the text is read
// for calls); at the end every item's done events and response.completed (also when the status is
// incomplete, as vLLM's: the OpenAI SDK's stream helpers wait for it).
class ResponsesStream {
 public:
  ResponsesStream(std::string id, const GenerationRequest& r, const ApiContext& ctx);
  std::string start();
  std::string update(const RequestOutput& out);
  // An error event (the stream then ends).
  std::string error(int status, const std::string& message);
  bool finished() const { return finished_; }
  // The final response object, once finished (what the last event carried).
  const nlohmann::json& response() const { return response_; }

 private:
  std::string event(const std::string& type, nlohmann::json fields);
  std::string open_message();
  // Ends the open item (if any) with this status, with its done events.
  std::string close_open_item(const char* status = "completed");
  std::string id_;
  const GenerationRequest& r_;
  const ApiContext& ctx_;
  std::vector<ChoiceStream> st_;
  int64_t seq_ = 0;
  nlohmann::json items_ = nlohmann::json::array();  // the output items so far
  enum class Open { None, Message, Call, Reasoning } open_ = Open::None;
  std::string text_;                                    // the open message's (or reasoning's) text
  nlohmann::json logprobs_ = nlohmann::json::array();  // and its tokens' log-probabilities
  bool finished_ = false;
  nlohmann::json response_;
};

}  // namespace llmserve
