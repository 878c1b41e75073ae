// Streamed responses carry the log-probabilities of the tokens each chunk delivers (as vLLM streams
// them): none twice, none lost across chunks, text offsets continuing; null when not asked for.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/openai_api.h"

using namespace llmserve;
using json = nlohmann::json;

namespace {

// The output after `n` tokens (ids 10, 11, ...; no tokenizer, so a token's text is its id), each with
// log-probability -0.5 * (i + 1) and one alternative.
RequestOutput after(int n, bool finished, int logprobs_from = 0) {
  RequestOutput o;
  o.request_id = 1;
  o.prompt_tokens = 4;
  CompletionOutput c;
  for (int i = 0; i < n; ++i) {
    c.token_ids.push_back(10 + i);
    c.text += std::to_string(10 + i);
    TokenLogprob lp;
    lp.token = 10 + i;
    lp.logprob = -0.5f * static_cast<float>(i + 1);
    lp.top = {{10 + i, lp.logprob}, {99, -7.f}};
    if (i >= logprobs_from) c.logprobs.push_back(lp);
  }
  c.logprobs_from = static_cast<size_t>(logprobs_from);
  c.delta_tokens = n;
  if (finished) c.finish_reason = "length";
  o.outputs.push_back(c);
  o.finished = finished;
  return o;
}

std::vector<json> events(const std::string& s) {
  std::vector<json> out;
  for (size_t p = 0; (p = s.find("data: ", p)) != std::string::npos; p += 6)
    out.push_back(json::parse(s.substr(p + 6, s.find("\n\n", p) - p - 6)));
  return out;
}

GenerationRequest request(bool chat, int logprobs) {
  GenerationRequest r;
  r.chat = chat;
  r.stream = true;
  r.model = "m";
  r.params.logprobs = logprobs;
  return r;
}

// The choices of a stream of two steps, 2 tokens then 1 more (finished): each step's one chunk.
std::pair<json, json> two_steps(bool chat, int logprobs) {
  ApiContext ctx;
  const GenerationRequest r = request(chat, logprobs);
  std::vector<ChoiceStream> st(1);
  const auto e1 = events(stream_chunks("id", r, ctx, 0, after(2, false), st));
  const auto e2 = events(stream_chunks("id", r, ctx, 0, after(3, true), st));
  EXPECT_EQ(e1.size(), 1u);
  EXPECT_EQ(e2.size(), 1u);
  if (e1.size() != 1 || e2.size() != 1) return {json::object(), json::object()};
  return {e1[0]["choices"][0], e2[0]["choices"][0]};
}

}  // namespace

TEST(StreamedLogprobs, CompletionChunksCarryTheirTokens) {
  auto [c1, c2] = two_steps(false, 1);
  const json& l1 = c1["logprobs"];
  EXPECT_EQ(l1["tokens"], json({"10", "11"}));
  EXPECT_EQ(l1["token_logprobs"], json({-0.5, -1.0}));
  EXPECT_EQ(l1["text_offset"], json({0, 2}));
  EXPECT_EQ(l1["top_logprobs"][1]["99"], -7.0);
  const json& l2 = c2["logprobs"];
  EXPECT_EQ(l2["tokens"], json({"12"}));
  EXPECT_EQ(l2["token_logprobs"], json({-1.5}));
  EXPECT_EQ(l2["text_offset"], json({4}));
  EXPECT_EQ(c2["text"], "12");
}

TEST(StreamedLogprobs, ChatChunksCarryTheirTokens) {
  auto [c1, c2] = two_steps(true, 2);
  const json& l1 = c1["logprobs"]["content"];
  ASSERT_EQ(l1.size(), 2u);
  EXPECT_EQ(l1[0]["token"], "10");
  EXPECT_EQ(l1[1]["logprob"], -1.0);
  EXPECT_EQ(l1[1]["top_logprobs"].size(), 2u);
  const json& l2 = c2["logprobs"]["content"];
  ASSERT_EQ(l2.size(), 1u);
  EXPECT_EQ(l2[0]["token"], "12");
  EXPECT_EQ(l2[0]["logprob"], -1.5);
}

// As the engine hands them out: each output carries the entries new since the previous one, the
// finished output all of them; each chunk carries its tokens' entries once.
TEST(StreamedLogprobs, DeltaOutputsThenTheWholeFinalOne) {
  ApiContext ctx;
  const GenerationRequest r = request(false, 1);
  std::vector<ChoiceStream> st(1);
  std::vector<json> chunks;
  for (const RequestOutput& o : {after(2, false, 0), after(3, false, 2), after(4, true, 0)})
    for (const json& e : events(stream_chunks("id", r, ctx, 0, o, st))) chunks.push_back(e["choices"][0]);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[1]["logprobs"]["tokens"], json({"12"}));
  EXPECT_EQ(chunks[1]["logprobs"]["text_offset"], json({4}));
  EXPECT_EQ(chunks[2]["logprobs"]["tokens"], json({"13"}));
  EXPECT_EQ(chunks[2]["logprobs"]["token_logprobs"], json({-2.0}));
  EXPECT_EQ(chunks[2]["logprobs"]["text_offset"], json({6}));
}

TEST(StreamedLogprobs, NullWhenNotAskedFor) {
  for (bool chat : {false, true}) {
    auto [c1, c2] = two_steps(chat, -1);
    EXPECT_TRUE(c1["logprobs"].is_null()) << (chat ? "chat" : "completion");
    EXPECT_TRUE(c2["logprobs"].is_null()) << (chat ? "chat" : "completion");
  }
}
