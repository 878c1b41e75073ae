// vLLM's embeddings API (POST /v1/embeddings, the pooling runner): a request's inputs (a text, texts,
// token ids, lists of them, or chat `messages`) into engine jobs that pool their prompts, and the pooled
// vectors into OpenAI's response: each truncated to the request's `dimensions` (Matryoshka models) and
// then normalized (the pooler's default), as floats or as base64 of little-endian float32.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "server/openai_api.h"

namespace llmserve {

struct EmbeddingOptions {
  std::optional<int64_t> dimensions;
  bool normalize = true;
  bool base64 = false;  // encoding_format base64
};

// Parses and validates (throws HttpError 400/404 with a clear message); the result's prompts each become
// one pooling job (params.pooling as the server's pooler says).
GenerationRequest parse_embeddings(const nlohmann::ordered_json& body, const ApiContext& ctx);
// A pooled vector as the response gives it: the first `dimensions` values (all when none), divided by
// their L2 norm when `normalize` (a zero vector stays zero).
std::vector<float> finish_embedding(const std::vector<float>& pooled, std::optional<int64_t> dimensions, bool normalize);
// The response: {"id", "object": "list", "created", "model", "data": [{"index", "object": "embedding",
// "embedding"}], "usage"}; outputs[i] belongs to prompts[i].
nlohmann::json embedding_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                                  const std::vector<RequestOutput>& outputs);
// Standard base64 (RFC 4648, padded) of bytes.
std::string base64_encode(const void* data, size_t bytes);

}  // namespace llmserve
