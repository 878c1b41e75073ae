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
  // vLLM's score and rerank APIs on an embedding model: the prompts are the first texts (n1 of them: one
  // is paired with every second text) then the second texts, each pair scored by the cosine similarity
  // of their vectors. Rerank: the documents (the second texts, returned with their scores, best first,
  // the best top_n when > 0).
  // On a classifier (the classify task): Classify answers each prompt's label scores (`activation`:
  // after the head's activation, as vLLM's `activation` / `use_activation`); a one-label classifier
  // scores pairs as a cross-encoder (`cross`): each prompt is a pair's texts as one sequence and its
  // score the head's sigmoid (n1 stays 0).
  enum class Api { Embeddings, Score, Rerank, Classify } api = Api::Embeddings;
  size_t n1 = 0;
  std::vector<std::string> documents;
  int64_t top_n = 0;
  bool activation = true;
  bool cross = false;
  // vLLM's pooling API (POST /pooling): each prompt's pooler output as {"index", "object": "pooling",
  // "data"}: the embedding (as the embeddings API makes it) or a classifier's label scores.
  bool pooling_api = false;
};

// Parses and validates (throws HttpError 400/404 with a clear message); the result's prompts each become
// one pooling job (params.pooling as the server's pooler says).
GenerationRequest parse_embeddings(const nlohmann::ordered_json& body, const ApiContext& ctx);
// vLLM's score API (POST /score, /v1/score: text_1 and text_2, each a text or a list) and rerank API
// (POST /rerank, /v1/rerank, /v2/rerank: query, documents, top_n) on an embedding model (cosine
// similarities) or a one-label classifier (a cross-encoder); pairs 1:1, 1:N or N:N. Throws HttpError
// 400/404 with vLLM's messages.
GenerationRequest parse_score(const nlohmann::ordered_json& body, const ApiContext& ctx, bool rerank);
// vLLM's pooling API (POST /pooling) on a pooling model: the embeddings API's request on an embedding
// model, the classification API's on a classifier (and encoding_format on either). Throws HttpError.
GenerationRequest parse_pooling(const nlohmann::ordered_json& body, const ApiContext& ctx);
// vLLM's classification API (POST /classify) on a classifier: `input` (or `messages`) as the embeddings
// API takes it, `activation` / `use_activation`, truncate_prompt_tokens, priority. Throws HttpError.
GenerationRequest parse_classify(const nlohmann::ordered_json& body, const ApiContext& ctx);
// The cosine similarity of two vectors (torch's CosineSimilarity: the product of the norms clamped below
// at 1e-8).
double cosine_similarity(const std::vector<float>& a, const std::vector<float>& b);
// A pooled vector as the response gives it: the first `dimensions` values (all when none), divided by
// their L2 norm when `normalize` (a zero vector stays zero).
std::vector<float> finish_embedding(const std::vector<float>& pooled, std::optional<int64_t> dimensions, bool normalize);
// The response: {"id", "object": "list", "created", "model", "data": [{"index", "object": "embedding",
// "embedding"}], "usage"}; outputs[i] belongs to prompts[i]. Score, rerank, classify and pooling requests
// get their APIs' responses (classify: data [{"index", "label", "probs", "num_classes"}]; pooling: data
// [{"index", "object": "pooling", "data"}]).
nlohmann::json embedding_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                                  const std::vector<RequestOutput>& outputs);
// The prefix of a response id, as vLLM's: embd-, score-, rerank-, classify- or pool-.
const char* response_id_prefix(const EmbeddingOptions& o);
// Standard base64 (RFC 4648, padded) of bytes.
std::string base64_encode(const void* data, size_t bytes);

}  // namespace llmserve
