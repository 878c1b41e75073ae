// The HTTP thread's part of scoring a text (lm-eval's loglikelihood request: a completion with echo,
// logprobs 1, prompt_logprobs 1 and max_tokens 0): building the response object for a prompt of
// N tokens (every prompt token named twice, with one alternative each) and serializing it; the
// milliseconds of each (best of 7) after a first call that also makes the tokenizer's token-text table.
// Then a streamed request's per-token cost on the HTTP thread (delta output accumulated, SSE chunk
// made), with and without log-probabilities.
//   build/bench/response_bench MODEL.h5 [N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_file.h"
#include "server/openai_api.h"
#include "tokenizer/tokenizer.h"

using namespace llmserve;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: response_bench MODEL.h5 [prompt tokens]\n");
    return 2;
  }
  const int n = argc > 2 ? std::atoi(argv[2]) : 2048;
  if (n < 2) {
    std::fprintf(stderr, "response_bench: at least 2 prompt tokens\n");
    return 2;
  }
  try {
    ModelFile file(argv[1]);
    const auto tok = Tokenizer::from_model_file(file);
    ApiContext ctx;
    ctx.tok = tok.get();
    ctx.model_names = {"m"};
    ctx.vocab_size = tok->vocab_size();
    std::mt19937 g(1);
    auto id = [&] { return static_cast<int32_t>(g() % static_cast<uint32_t>(tok->vocab_size())); };
    GenerationRequest r;
    r.model = "m";
    r.echo = r.echo_only = true;
    r.params.logprobs = 1;
    r.params.prompt_logprobs = 1;
    std::vector<int32_t> prompt(static_cast<size_t>(n));
    for (auto& t : prompt) t = id();
    r.prompts = {prompt};
    r.prompt_texts = {tok->decode(prompt)};
    RequestOutput o;
    o.prompt_tokens = n;
    auto lps = std::make_shared<std::vector<TokenLogprob>>();
    for (int i = 1; i < n; ++i) {
      TokenLogprob lp;
      lp.token = prompt[static_cast<size_t>(i)];
      lp.logprob = -1.5f;
      lp.rank = 7;
      lp.top = {{id(), -0.3f}};
      lps->push_back(lp);
    }
    o.prompt_logprobs = lps;
    CompletionOutput c;
    c.token_ids = {prompt[0]};
    c.finish_reason = "length";
    o.outputs = {c};
    o.finished = true;
    double build = 1e30, dump = 1e30;
    size_t bytes = 0;
    for (int rep = 0; rep < 8; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      const nlohmann::json j = completion_response("cmpl", r, ctx, {o});
      const auto t1 = std::chrono::steady_clock::now();
      const std::string s = j.dump();
      const auto t2 = std::chrono::steady_clock::now();
      bytes = s.size();
      if (rep == 0) continue;  // (the first call also makes the token-text table)
      build = std::min(build, std::chrono::duration<double, std::milli>(t1 - t0).count());
      dump = std::min(dump, std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
    std::printf("scored response, %d prompt tokens: build %.2f ms, serialize %.2f ms, %zu bytes\n", n, build, dump, bytes);

    // A streamed request's part per step (the server's on_output): one new token as a delta output,
    // put together with the request's outputs so far, and its SSE chunk; us per chunk over 256 tokens
    // (best of 5 runs), for a completion and a chat, without log-probabilities and with 5 alternatives.
    for (const bool chat : {false, true})
      for (const int k : {-1, 5}) {
        GenerationRequest sr;
        sr.model = "m";
        sr.chat = chat;
        sr.stream = true;
        sr.params.logprobs = k;
        sr.prompts = {{prompt[0], prompt[1]}};
        sr.prompt_texts = {tok->decode(sr.prompts[0])};
        const int steps = 256;
        double best = 1e30;
        size_t sent = 0;
        for (int rep = 0; rep < 5; ++rep) {
          std::vector<ChoiceStream> st(1);
          RequestOutput acc;
          sent = 0;
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < steps; ++i) {
            RequestOutput d;
            d.prompt_tokens = 2;
            CompletionOutput& dc = d.outputs.emplace_back();
            const int32_t t = id();
            dc.token_ids = {t};
            dc.delta = dc.text = tok->decode({t});
            dc.delta_tokens = 1;
            dc.logprobs_from = static_cast<size_t>(i);
            if (k >= 0) {
              TokenLogprob lp{t, -0.7f, {}};
              for (int a = 0; a < k; ++a) lp.top.emplace_back(id(), -1.f - a);
              dc.logprobs.push_back(std::move(lp));
            }
            if (i == steps - 1) dc.finish_reason = "length", d.finished = true;
            accumulate_output(acc, std::move(d));
            sent += stream_chunks("cmpl", sr, ctx, 0, acc, st).size();
          }
          best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / steps);
        }
        std::printf("streamed %s, logprobs %s: %.2f us per token's chunk (%zu bytes a request)\n", chat ? "chat" : "completion",
                    k < 0 ? "none" : "5", best, sent);
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "response_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
