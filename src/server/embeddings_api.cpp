#include "server/embeddings_api.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "common/error.h"
#include "common/json_text.h"
#include "engine/sampling_params.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

HttpError bad(const std::string& msg, const std::string& param) { return HttpError(400, msg, "BadRequestError", param); }

// vLLM's truncate_prompt_tokens: keep the last k tokens (-1: max_model_len).
void truncate_prompts(const json& body, const ApiContext& ctx, GenerationRequest& r) {
  if (!body.contains("truncate_prompt_tokens") || body["truncate_prompt_tokens"].is_null()) return;
  const json& t = body["truncate_prompt_tokens"];
  if (!t.is_number_integer() || t.get<int64_t>() < -1 || t.get<int64_t>() == 0)
    throw bad("'truncate_prompt_tokens' must be -1 or a positive integer", "truncate_prompt_tokens");
  const int64_t k = t.get<int64_t>() == -1 ? ctx.max_model_len : t.get<int64_t>();
  if (k > ctx.max_model_len)
    throw bad(cat("truncate_prompt_tokens value (", k, ") is greater than max_model_len (", ctx.max_model_len,
                  "). Please, select a smaller truncation size."), "truncate_prompt_tokens");
  for (auto& q : r.prompts)
    if (static_cast<int64_t>(q.size()) > k) q.erase(q.begin(), q.end() - k);
}

// vLLM's priority, read as a generation request's (its scheduling policy is checked by the engine).
void read_priority(const json& body, GenerationRequest& r) {
  if (!body.contains("priority")) return;
  try {
    sampling_params_from_json(json{{"priority", body["priority"]}}, r.params);
  } catch (const Error& e) {
    throw bad(e.what(), "priority");
  }
}

// A score or rerank input: a text or a list of texts.
std::vector<std::string> score_texts(const json& body, const char* key) {
  if (!body.contains(key) || body[key].is_null()) throw bad(cat("'", key, "' is required"), key);
  const json& v = body[key];
  std::vector<std::string> out;
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) throw bad(cat("'", key, "' must be a string or a list of strings"), key);
  for (const auto& x : v) {
    if (!x.is_string()) throw bad(cat("'", key, "' must be a string or a list of strings (llmserve's models read text only)"), key);
    out.push_back(x.get<std::string>());
  }
  return out;
}

}  // namespace

double cosine_similarity(const std::vector<float>& a, const std::vector<float>& b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) dot += double{a[i]} * b[i], na += double{a[i]} * a[i], nb += double{b[i]} * b[i];
  return dot / std::max(std::sqrt(na) * std::sqrt(nb), 1e-8);
}

GenerationRequest parse_score(const ojson& as_sent, const ApiContext& ctx, bool rerank) {
  if (!as_sent.is_object()) throw HttpError(400, "the request body must be a JSON object");
  if (!ctx.pooling)
    throw bad(cat("The model does not support ", rerank ? "Rerank (Score)" : "Score", " API (scores are cosine similarities of ",
                  "embeddings: serve an embedding model, or give runner pooling)"), "");
  if (ctx.classifier && ctx.classifier->num_labels != 1)
    throw bad(cat("The model does not support ", rerank ? "Rerank (Score)" : "Score", " API (a classifier of ",
                  ctx.classifier->num_labels, " labels: scores come from embedding models or one-label classifiers)"), "");
  const json body = json::parse(json_text(as_sent));
  GenerationRequest r;
  check_model(body, ctx, r.model, r.params);
  if (!ctx.tok) throw bad("this model has no tokenizer", "");
  auto opt = std::make_shared<EmbeddingOptions>();
  opt->api = rerank ? EmbeddingOptions::Api::Rerank : EmbeddingOptions::Api::Score;
  const char* k1 = rerank ? "query" : body.contains("data_1") ? "data_1" : "text_1";
  const char* k2 = rerank ? "documents" : body.contains("data_2") ? "data_2" : "text_2";
  if (rerank && body.contains("query") && !body["query"].is_string()) throw bad("'query' must be a string", "query");
  const std::vector<std::string> t1 = score_texts(body, k1), t2 = score_texts(body, k2);
  // (vLLM's checks and messages)
  if (t1.size() > 1 && t1.size() != t2.size()) throw bad("Input lengths must be either 1:1, 1:N or N:N", k1);
  if (t1.empty()) throw bad("At least one text element must be given", k1);
  if (t2.empty()) throw bad("At least one text_pair element must be given", k2);
  if (ctx.classifier) {  // a cross-encoder: each pair's texts as one sequence
    opt->cross = true;
    for (size_t j = 0; j < t2.size(); ++j) r.prompts.push_back(ctx.tok->encode_pair(t1[t1.size() == 1 ? 0 : j], t2[j], true));
  } else {
    for (const auto* texts : {&t1, &t2})
      for (const auto& t : *texts) r.prompts.push_back(ctx.tok->encode(t, true));
  }
  for (const auto& q : r.prompts)
    if (q.empty()) throw bad("a text is empty (no tokens to embed)", k2);
  truncate_prompts(body, ctx, r);
  if (rerank && body.contains("top_n") && !body["top_n"].is_null()) {
    if (!body["top_n"].is_number_integer()) throw bad("'top_n' must be an integer", "top_n");
    opt->top_n = body["top_n"].get<int64_t>();
  }
  opt->n1 = opt->cross ? 0 : t1.size();
  if (rerank) opt->documents = t2;
  read_priority(body, r);
  r.params.pooling = ctx.pooler.pooling_type;
  r.params.n = 1;
  r.embedding = std::move(opt);
  return r;
}

const char* response_id_prefix(const EmbeddingOptions& o) {
  if (o.pooling_api) return "pool-";
  switch (o.api) {
    case EmbeddingOptions::Api::Score: return "score-";
    case EmbeddingOptions::Api::Rerank: return "rerank-";
    case EmbeddingOptions::Api::Classify: return "classify-";
    case EmbeddingOptions::Api::Embeddings: break;
  }
  return "embd-";
}

std::string base64_encode(const void* data, size_t n) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* b = static_cast<const unsigned char*>(data);
  std::string s;
  s.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t v = (uint32_t{b[i]} << 16) | (i + 1 < n ? uint32_t{b[i + 1]} << 8 : 0) | (i + 2 < n ? b[i + 2] : 0);
    s += abc[(v >> 18) & 63];
    s += abc[(v >> 12) & 63];
    s += i + 1 < n ? abc[(v >> 6) & 63] : '=';
    s += i + 2 < n ? abc[v & 63] : '=';
  }
  return s;
}

std::vector<float> finish_embedding(const std::vector<float>& pooled, std::optional<int64_t> dimensions, bool normalize) {
  std::vector<float> v = pooled;
  if (dimensions && *dimensions < static_cast<int64_t>(v.size())) v.resize(static_cast<size_t>(*dimensions));
  if (normalize) {
    double ss = 0;
    for (float x : v) ss += static_cast<double>(x) * x;
    // (torch's F.normalize: the norm clamped below at 1e-12)
    const double norm = std::max(std::sqrt(ss), 1e-12);
    for (float& x : v) x = static_cast<float>(x / norm);
  }
  return v;
}

namespace {

// encoding_format: float (the default) or base64 of little-endian float32.
void read_encoding_format(const json& body, EmbeddingOptions& opt) {
  if (!body.contains("encoding_format") || body["encoding_format"].is_null()) return;
  const json& f = body["encoding_format"];
  if (!f.is_string() || (f != "float" && f != "base64"))
    throw bad("'encoding_format' must be \"float\" or \"base64\"", "encoding_format");
  opt.base64 = f == "base64";
}

// A pooling request's prompts (the embeddings and classification APIs): `messages` rendered by the chat
// template (vLLM's chat form: without a generation prompt unless asked), or `input` (a text, texts,
// token ids or lists of them); truncate_prompt_tokens and priority. Sets r.model.
void read_pooling_inputs(const ojson& as_sent, const json& body, const ApiContext& ctx, GenerationRequest& r) {
  auto given = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  if (given("messages")) {
    if (given("input")) throw bad("give either 'input' or 'messages', not both", "messages");
    if (!ctx.chat || !ctx.tok) throw bad("this model has no chat template: send 'input'", "messages");
    ojson chat = ojson::object();
    for (const char* k : {"model", "messages", "add_generation_prompt", "continue_final_message", "chat_template",
                          "chat_template_kwargs", "add_special_tokens", "documents"})
      if (as_sent.contains(k)) chat[k] = as_sent[k];
    if (!chat.contains("add_generation_prompt")) chat["add_generation_prompt"] = false;
    GenerationRequest c = parse_chat(chat, ctx);
    r.model = c.model;
    r.params.lora = c.params.lora;
    r.params.lora_uid = c.params.lora_uid;
    r.prompts = std::move(c.prompts);
  } else {
    check_model(body, ctx, r.model, r.params);
    if (!body.contains("input")) throw bad("'input' is required", "input");
    bool add_special = true;
    if (given("add_special_tokens")) {
      if (!body["add_special_tokens"].is_boolean()) throw bad("'add_special_tokens' must be a boolean", "add_special_tokens");
      add_special = body["add_special_tokens"].get<bool>();
    }
    const json& in = body["input"];
    auto add_text = [&](const json& s) {
      if (!ctx.tok) throw bad("this model has no tokenizer: send token ids", "input");
      r.prompts.push_back(ctx.tok->encode(s.get<std::string>(), add_special));
    };
    const char* shape = "'input' must be a non-empty string, list of strings, token ids, or list of token-id lists";
    if (in.is_string()) {
      add_text(in);
    } else if (in.is_array() && !in.empty() && in[0].is_string()) {
      for (const auto& s : in) {
        if (!s.is_string()) throw bad(shape, "input");
        add_text(s);
      }
    } else if (in.is_array() && !in.empty() && in[0].is_number_integer()) {
      r.prompts.push_back(request_token_ids(in, ctx, "input"));
    } else if (in.is_array() && !in.empty() && in[0].is_array()) {
      for (const auto& a : in) {
        if (!a.is_array()) throw bad(shape, "input");
        r.prompts.push_back(request_token_ids(a, ctx, "input"));
      }
    } else {
      throw bad(shape, "input");
    }
  }
  for (const auto& q : r.prompts)
    if (q.empty()) throw bad("an input is empty (no tokens to embed)", "input");
  truncate_prompts(body, ctx, r);
  read_priority(body, r);
  r.params.pooling = ctx.pooler.pooling_type;
  r.params.n = 1;
}

}  // namespace

GenerationRequest parse_embeddings(const ojson& as_sent, const ApiContext& ctx) {
  if (!as_sent.is_object()) throw HttpError(400, "the request body must be a JSON object");
  if (!ctx.pooling || ctx.classifier)
    throw bad(cat("The model does not support Embeddings API (",
                  ctx.classifier ? "it is a classifier: use /classify" : "serve an embedding model, or give runner pooling",
                  ")"),
              "");
  const json body = json::parse(json_text(as_sent));
  auto given = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  GenerationRequest r;
  auto opt = std::make_shared<EmbeddingOptions>();
  read_pooling_inputs(as_sent, body, ctx, r);
  read_encoding_format(body, *opt);
  opt->normalize = ctx.pooler.normalize;
  if (given("normalize")) {
    if (!body["normalize"].is_boolean()) throw bad("'normalize' must be a boolean", "normalize");
    opt->normalize = body["normalize"].get<bool>();
  }
  opt->dimensions = ctx.pooler.dimensions;
  if (given("dimensions")) {
    // vLLM's checks (PoolingParams), in its order; and no more dimensions than the model has.
    const json& d = body["dimensions"];
    if (!d.is_number_integer()) throw bad("'dimensions' must be an integer", "dimensions");
    const int64_t n = d.get<int64_t>();
    const auto& mds = ctx.pooler.matryoshka_dimensions;
    if (!ctx.pooler.matryoshka)
      throw bad(cat("Model \"", r.model, "\" does not support matryoshka representation, changing output dimensions ",
                    "will lead to poor results."), "dimensions");
    if (!mds.empty() && std::find(mds.begin(), mds.end(), n) == mds.end()) {
      std::string list;
      for (int64_t x : mds) list += (list.empty() ? "" : ", ") + std::to_string(x);
      throw bad(cat("Model \"", r.model, "\" only supports [", list, "] matryoshka dimensions, use other output ",
                    "dimensions will lead to poor results."), "dimensions");
    }
    if (n < 1) throw bad("Dimensions must be greater than 0", "dimensions");
    if (n > ctx.hidden_size)
      throw bad(cat("'dimensions' (", n, ") is more than the model's embedding size (", ctx.hidden_size, ")"), "dimensions");
    opt->dimensions = n;
  }
  r.embedding = std::move(opt);
  return r;
}

GenerationRequest parse_pooling(const ojson& as_sent, const ApiContext& ctx) {
  if (!as_sent.is_object()) throw HttpError(400, "the request body must be a JSON object");
  if (!ctx.pooling) throw bad("The model does not support Pooling API (serve an embedding model or a classifier)", "");
  GenerationRequest r = ctx.classifier ? parse_classify(as_sent, ctx) : parse_embeddings(as_sent, ctx);
  auto opt = std::make_shared<EmbeddingOptions>(*r.embedding);
  opt->pooling_api = true;
  if (ctx.classifier) read_encoding_format(json::parse(json_text(as_sent)), *opt);
  r.embedding = std::move(opt);
  return r;
}

GenerationRequest parse_classify(const ojson& as_sent, const ApiContext& ctx) {
  if (!as_sent.is_object()) throw HttpError(400, "the request body must be a JSON object");
  if (!ctx.classifier)
    throw bad("The model does not support Classification API (serve a *ForSequenceClassification model)", "");
  const json body = json::parse(json_text(as_sent));
  GenerationRequest r;
  auto opt = std::make_shared<EmbeddingOptions>();
  opt->api = EmbeddingOptions::Api::Classify;
  read_pooling_inputs(as_sent, body, ctx, r);
  for (const char* k : {"activation", "use_activation"}) {  // (vLLM's name, and its later one)
    if (!body.contains(k) || body[k].is_null()) continue;
    if (!body[k].is_boolean()) throw bad(cat("'", k, "' must be a boolean"), k);
    opt->activation = body[k].get<bool>();
  }
  r.embedding = std::move(opt);
  return r;
}

json embedding_response(const std::string& id, const GenerationRequest& r, const ApiContext& ctx,
                        const std::vector<RequestOutput>& outputs) {
  const EmbeddingOptions& o = *r.embedding;
  if (o.api == EmbeddingOptions::Api::Classify && !o.pooling_api) {
    json data = json::array();
    int64_t prompt = 0;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::vector<double> p = ctx.classifier->scores(outputs[i].embedding, o.activation);
      const size_t best = static_cast<size_t>(std::max_element(p.begin(), p.end()) - p.begin());
      data.push_back({{"index", i}, {"label", ctx.classifier->labels[best]}, {"probs", p}, {"num_classes", p.size()}});
      prompt += outputs[i].prompt_tokens;
    }
    return {{"id", id}, {"object", "list"}, {"created", ctx.created}, {"model", r.model}, {"data", data},
            {"usage", {{"prompt_tokens", prompt}, {"total_tokens", prompt}, {"completion_tokens", 0}}}};
  }
  if (o.api == EmbeddingOptions::Api::Score || o.api == EmbeddingOptions::Api::Rerank) {
    // Each pair's cosine similarity (a cross-encoder: its sequence's score); its prompt tokens are both
    // texts' (vLLM counts a pair's tokens).
    const size_t pairs = outputs.size() - o.n1;
    json items = json::array();
    int64_t tokens = 0;
    for (size_t j = 0; j < pairs; ++j) {
      double score = 0;
      if (o.cross) {
        score = ctx.classifier->scores(outputs[j].embedding)[0];
        tokens += outputs[j].prompt_tokens;
      } else {
        const RequestOutput& a = outputs[o.n1 == 1 ? 0 : j];
        const RequestOutput& b = outputs[o.n1 + j];
        score = cosine_similarity(a.embedding, b.embedding);
        tokens += a.prompt_tokens + b.prompt_tokens;
      }
      if (o.api == EmbeddingOptions::Api::Score) {
        items.push_back({{"index", j}, {"object", "score"}, {"score", score}});
      } else {
        items.push_back({{"index", j}, {"document", {{"text", o.documents[j]}}}, {"relevance_score", score}});
      }
    }
    if (o.api == EmbeddingOptions::Api::Score)
      return {{"id", id}, {"object", "list"}, {"created", ctx.created}, {"model", r.model}, {"data", items},
              {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}, {"completion_tokens", 0}}}};
    std::stable_sort(items.begin(), items.end(), [](const json& x, const json& y) {
      return x["relevance_score"].get<double>() > y["relevance_score"].get<double>();
    });
    if (o.top_n > 0 && static_cast<size_t>(o.top_n) < items.size()) items.erase(items.begin() + o.top_n, items.end());
    return {{"id", id}, {"model", r.model}, {"usage", {{"total_tokens", tokens}}}, {"results", items}};
  }
  json data = json::array();
  int64_t prompt = 0;
  // (the embeddings API's list, and the pooling API's: a classifier's label scores there)
  const char* key = o.pooling_api ? "data" : "embedding";
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::vector<float> v;
    if (o.api == EmbeddingOptions::Api::Classify) {
      const std::vector<double> p = ctx.classifier->scores(outputs[i].embedding, o.activation);
      v.assign(p.begin(), p.end());
    } else {
      v = finish_embedding(outputs[i].embedding, o.dimensions, o.normalize);
    }
    json e = {{"index", i}, {"object", o.pooling_api ? "pooling" : "embedding"}};
    if (o.base64) {
      // (little-endian float32, as OpenAI's clients decode it: the hosts llmserve runs on are little-endian)
      e[key] = base64_encode(v.data(), v.size() * sizeof(float));
    } else {
      e[key] = v;
    }
    data.push_back(std::move(e));
    prompt += outputs[i].prompt_tokens;
  }
  json usage = {{"prompt_tokens", prompt}, {"total_tokens", prompt}, {"completion_tokens", 0}};
  return {{"id", id}, {"object", "list"}, {"created", ctx.created}, {"model", r.model}, {"data", data}, {"usage", usage}};
}

}  // namespace llmserve
