// The engine in one process (world of one rank) on the tiny Qwen2 fixture model.
#include <gtest/gtest.h>
#include <mpi.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_util.h"
#include "engine/engine.h"
#include "engine/scheduler.h"
#include "engine/step_executor.h"
#include "server/engine_service.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include "model/model_file.h"
#include "model/pooler_config.h"
#include "model/runner.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using namespace llmserve;
using json = nlohmann::json;

namespace {

const std::string kModel = LLMSERVE_TEST_MODEL;
const std::string kGolden = std::string(LLMSERVE_FIXTURES) + "/golden/tiny-qwen2.json";

struct Fixture {
  Config cfg;
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<Tokenizer> tok;
  explicit Fixture(int64_t blocks = 0, bool async = false, double swap_gib = 4.0, const char* policy = "fcfs",
                   int max_num_seqs = 256, const char* speculative = "", const char* prefix_hash = "builtin") {
    cfg.model = kModel;
    cfg.prefix_caching_hash_algo = prefix_hash;
    cfg.speculative_config = speculative;
    cfg.scheduling_policy = policy;
    cfg.max_num_seqs = max_num_seqs;
    cfg.backend = "cpu";
    cfg.max_model_len = 384;
    cfg.block_size = 8;
    cfg.num_gpu_blocks_override = blocks;
    cfg.async_scheduling = async;
    cfg.swap_space = swap_gib;
    runner = std::make_unique<ModelRunner>(cfg, MPI_COMM_WORLD);
    tok = Tokenizer::from_model_file(ModelFile(kModel));
  }
};

json golden() { return json::parse(read_file(kGolden)); }

std::map<uint64_t, RequestOutput> run_all(Engine& e) {
  std::map<uint64_t, RequestOutput> done;
  for (int guard = 0; e.has_unfinished() && guard < 10000; ++guard)
    for (auto& r : e.step())
      if (r.finished) done[r.request_id] = r;
  return done;
}

SampledToken sampled_token(uint64_t seq_id, int32_t token) {
  SampledToken t;
  t.seq_id = seq_id;
  t.token = token;
  return t;
}

SamplingParams greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

// Two runs of one request gave the same: tokens, text, finish and stop reasons, log-probabilities.
void expect_same_outputs(const RequestOutput& a, const RequestOutput& b) {
  ASSERT_TRUE(a.finished && b.finished);
  ASSERT_EQ(a.outputs.size(), b.outputs.size());
  for (size_t j = 0; j < a.outputs.size(); ++j) {
    EXPECT_EQ(a.outputs[j].token_ids, b.outputs[j].token_ids);
    EXPECT_EQ(a.outputs[j].text, b.outputs[j].text);
    EXPECT_EQ(a.outputs[j].finish_reason, b.outputs[j].finish_reason);
    EXPECT_EQ(a.outputs[j].stop_reason, b.outputs[j].stop_reason);
    ASSERT_EQ(a.outputs[j].logprobs.size(), b.outputs[j].logprobs.size());
    for (size_t t = 0; t < a.outputs[j].logprobs.size(); ++t) {
      EXPECT_EQ(a.outputs[j].logprobs[t].logprob, b.outputs[j].logprobs[t].logprob);
      EXPECT_EQ(a.outputs[j].logprobs[t].top, b.outputs[j].logprobs[t].top);
    }
  }
  ASSERT_EQ(a.prompt_logprobs == nullptr, b.prompt_logprobs == nullptr);
  if (a.prompt_logprobs) {
    ASSERT_EQ(a.prompt_logprobs->size(), b.prompt_logprobs->size());
    for (size_t t = 0; t < a.prompt_logprobs->size(); ++t)
      EXPECT_EQ((*a.prompt_logprobs)[t].logprob, (*b.prompt_logprobs)[t].logprob);
  }
}

// The scheduler tests' setting: 4 sequences and 12 tokens a step, blocks of 4 tokens, room for 200 blocks.
SchedulerConfig small_scheduler() {
  SchedulerConfig c;
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 12;
  c.max_model_len = 128;
  c.block_size = 4;
  c.num_blocks = 200;
  return c;
}

// A waiting sequence whose prompt is the n tokens base, base + 1, ...
std::unique_ptr<Sequence> prompt_sequence(uint64_t id, int n, int32_t base) {
  auto s = std::make_unique<Sequence>();
  s->id = id;
  for (int i = 0; i < n; ++i) s->tokens.push_back(base + i);
  s->prompt_len = n;
  return s;
}

// Runs the requests in order on a cache of 48 blocks (tight: with `swap_gib` of swap space, it preempts)
// or on a roomy one (which must not), with `max_batched` tokens a step (0: the default); appends their
// outputs to `outs` and returns the scheduler's counts. Every block is free at the end.
SchedulerStats run_on_cache(const std::vector<std::pair<std::vector<int32_t>, SamplingParams>>& reqs, bool tight,
                            double swap_gib, int64_t max_batched, std::vector<RequestOutput>& outs) {
  Fixture s(tight ? 48 : 0, false, tight ? swap_gib : 4.0);
  if (max_batched > 0) s.cfg.max_num_batched_tokens = max_batched;  // (read by the engine's scheduler)
  Engine e(*s.runner, s.tok.get(), 0);
  std::vector<uint64_t> ids;
  for (auto& [prompt, p] : reqs) ids.push_back(e.add_request(prompt, p));
  auto done = run_all(e);
  for (uint64_t id : ids) outs.push_back(done[id]);
  const SchedulerStats st = e.scheduler().stats();
  std::printf("%s cache: %lld swaps, %lld recomputes\n", tight ? "tight" : "roomy", static_cast<long long>(st.preempted_swap),
              static_cast<long long>(st.preempted_recompute));
  if (!tight) EXPECT_EQ(st.preempted_swap + st.preempted_recompute, 0);
  EXPECT_EQ(e.scheduler().blocks().num_used(), 0);
  e.shutdown();
  return st;
}

}  // namespace

TEST(Engine, StopStringCutsTheTextAndTokenIdsStopToo) {
  Fixture s;
  Engine e(*s.runner, s.tok.get(), 0);
  const json g = golden()["public"][1];
  const auto ids = g["ids"].get<std::vector<int32_t>>();
  const auto gold = g["greedy"]["ids"].get<std::vector<int32_t>>();
  const std::string full = s.tok->decode(gold, true);
  // A stop string taken from the middle of transformers' greedy continuation.
  const std::string upto = s.tok->decode(std::vector<int32_t>(gold.begin(), gold.begin() + 8), true);
  const std::string stop = full.substr(upto.size(), 3);
  SamplingParams p = greedy(24);
  p.stop = {stop};
  const uint64_t a = e.add_request(ids, p);
  SamplingParams q = greedy(24);
  q.stop_token_ids = {gold[5]};
  const uint64_t b = e.add_request(ids, q);
  auto done = run_all(e);
  EXPECT_EQ(done[a].outputs[0].finish_reason, "stop");
  EXPECT_EQ(done[a].outputs[0].stop_reason, stop);
  EXPECT_EQ(done[a].outputs[0].text, full.substr(0, full.find(stop)));
  EXPECT_EQ(done[b].outputs[0].finish_reason, "stop");
  const auto& tb = done[b].outputs[0].token_ids;
  EXPECT_EQ(tb.back(), gold[5]);
  EXPECT_EQ(std::find(tb.begin(), tb.end(), gold[5]) - tb.begin(), std::find(gold.begin(), gold.end(), gold[5]) - gold.begin());
}

TEST(Engine, SeededSamplingDoesNotDependOnTheBatchAndNGivesDistinctSamples) {
  Fixture s;
  const auto pub = golden()["public"];
  SamplingParams p;
  p.temperature = 1.0;
  p.max_tokens = 12;
  p.seed = 1234;
  p.ignore_eos = true;
  std::vector<int32_t> alone;
  {
    Engine e(*s.runner, s.tok.get(), 0);
    const uint64_t id = e.add_request(pub[3]["ids"].get<std::vector<int32_t>>(), p);
    alone = run_all(e)[id].outputs[0].token_ids;
  }
  {
    Engine e(*s.runner, s.tok.get(), 99);
    for (int i = 0; i < 5; ++i) {
      SamplingParams o = p;
      o.seed.reset();
      e.add_request(pub[i]["ids"].get<std::vector<int32_t>>(), o);
    }
    const uint64_t id = e.add_request(pub[3]["ids"].get<std::vector<int32_t>>(), p);
    auto done = run_all(e);
    EXPECT_EQ(done[id].outputs[0].token_ids, alone);
  }
  {
    Engine e(*s.runner, s.tok.get(), 0);
    SamplingParams n2 = p;
    n2.n = 3;
    n2.logprobs = 2;
    const uint64_t id = e.add_request(pub[3]["ids"].get<std::vector<int32_t>>(), n2);
    // Each output carries the log-probabilities new since the previous one; the finished one all.
    std::vector<std::vector<TokenLogprob>> streamed(3);
    RequestOutput r;
    for (int guard = 0; e.has_unfinished() && guard < 10000; ++guard) {
      std::set<uint64_t> listed;  // a request appears once per step, whichever of its sequences moved
      for (auto& o : e.step()) {
        EXPECT_TRUE(listed.insert(o.request_id).second) << "request " << o.request_id << " twice in one step";
        for (const auto& c : o.outputs) {
          auto& got = streamed[static_cast<size_t>(c.index)];
          if (!o.finished) {
            EXPECT_EQ(c.logprobs_from, got.size());
            got.insert(got.end(), c.logprobs.begin(), c.logprobs.end());
          } else {
            EXPECT_EQ(c.logprobs_from, 0u);
          }
        }
        if (o.finished && o.request_id == id) r = o;
      }
    }
    ASSERT_EQ(r.outputs.size(), 3u);
    for (const auto& o : r.outputs) {
      const auto& got = streamed[static_cast<size_t>(o.index)];
      ASSERT_LE(got.size(), o.logprobs.size());
      for (size_t k = 0; k < got.size(); ++k) EXPECT_EQ(got[k].token, o.logprobs[k].token);
    }
    EXPECT_NE(r.outputs[0].token_ids, r.outputs[1].token_ids);
    for (const auto& o : r.outputs) {
      ASSERT_EQ(o.logprobs.size(), o.token_ids.size());
      EXPECT_LE(o.logprobs[0].logprob, 0.f);
      EXPECT_EQ(o.logprobs[0].top.size(), 2u);
    }
  }
}

// The three output kinds of the same requests (same seeds, so the same steps): Delta outputs hold
// only what is new and, put back together by accumulate_output, equal the Cumulative outputs of every
// step; FinalOnly gives each request once, equal to Cumulative's last. Sampled n = 2 with logprobs, a
// stop string (text held back, then cut), prompt log-probabilities.
TEST(Engine, DeltaAndFinalOnlyOutputsRebuildTheCumulativeOnes) {
  Fixture s;
  const auto pub = golden()["public"];
  const auto gold = pub[1]["greedy"]["ids"].get<std::vector<int32_t>>();
  const std::string full = s.tok->decode(gold, true);
  const std::string upto = s.tok->decode(std::vector<int32_t>(gold.begin(), gold.begin() + 8), true);
  using Steps = std::vector<std::map<uint64_t, RequestOutput>>;
  auto run = [&](OutputKind kind) {
    Engine e(*s.runner, s.tok.get(), 0);
    SamplingParams a;
    a.n = 2, a.temperature = 1.0, a.seed = 7, a.max_tokens = 14, a.logprobs = 2, a.ignore_eos = true;
    SamplingParams b = greedy(24);
    b.stop = {full.substr(upto.size(), 3)};
    b.logprobs = 1;
    SamplingParams c = greedy(10);
    c.prompt_logprobs = 1;
    for (SamplingParams* p : {&a, &b, &c}) p->output_kind = kind;
    e.add_request(pub[3]["ids"].get<std::vector<int32_t>>(), a);
    e.add_request(pub[1]["ids"].get<std::vector<int32_t>>(), b);
    e.add_request(pub[2]["ids"].get<std::vector<int32_t>>(), c);
    Steps steps;
    for (int guard = 0; e.has_unfinished() && guard < 10000; ++guard) {
      steps.emplace_back();
      for (auto& o : e.step()) steps.back()[o.request_id] = std::move(o);
    }
    return steps;
  };
  const Steps cum = run(OutputKind::Cumulative), del = run(OutputKind::Delta), fin = run(OutputKind::FinalOnly);
  ASSERT_EQ(cum.size(), del.size());
  ASSERT_EQ(cum.size(), fin.size());
  auto same_logprobs = [](const std::vector<TokenLogprob>& x, const std::vector<TokenLogprob>& y) {
    if (x.size() != y.size()) return false;
    for (size_t k = 0; k < x.size(); ++k)
      if (x[k].token != y[k].token || x[k].logprob != y[k].logprob || x[k].top != y[k].top) return false;
    return true;
  };
  std::map<uint64_t, RequestOutput> acc;
  std::map<uint64_t, int> finals;
  for (size_t i = 0; i < cum.size(); ++i) {
    ASSERT_EQ(cum[i].size(), del[i].size()) << "step " << i;
    for (const auto& [id, d] : del[i]) {
      ASSERT_TRUE(cum[i].count(id)) << "step " << i;
      const RequestOutput& want = cum[i].at(id);
      for (const auto& c : d.outputs) {
        EXPECT_EQ(c.token_ids.size(), c.delta_tokens) << "a delta holds only the new tokens";
        EXPECT_EQ(c.text, c.delta);
      }
      accumulate_output(acc[id], RequestOutput(d));
      const RequestOutput& got = acc[id];
      EXPECT_EQ(got.finished, want.finished);
      EXPECT_EQ(got.prompt_tokens, want.prompt_tokens);
      EXPECT_EQ(static_cast<bool>(got.prompt_logprobs), static_cast<bool>(want.prompt_logprobs)) << "step " << i;
      ASSERT_EQ(got.outputs.size(), want.outputs.size());
      for (size_t k = 0; k < want.outputs.size(); ++k) {
        const CompletionOutput &g = got.outputs[k], &w = want.outputs[k];
        EXPECT_EQ(g.index, w.index);
        EXPECT_EQ(g.token_ids, w.token_ids) << "step " << i << " request " << id;
        EXPECT_EQ(g.text, w.text) << "step " << i << " request " << id;
        EXPECT_EQ(g.delta, w.delta);
        EXPECT_EQ(g.delta_tokens, w.delta_tokens);
        EXPECT_EQ(g.finish_reason, w.finish_reason);
        EXPECT_EQ(g.stop_reason, w.stop_reason);
        // Cumulative outputs carry logprobs from logprobs_from on (all of them once finished).
        ASSERT_EQ(w.logprobs_from + w.logprobs.size(), g.logprobs.size());
        EXPECT_TRUE(same_logprobs(std::vector<TokenLogprob>(g.logprobs.begin() + static_cast<std::ptrdiff_t>(w.logprobs_from),
                                                            g.logprobs.end()),
                                  w.logprobs))
            << "step " << i << " request " << id;
      }
    }
    for (const auto& [id, f] : fin[i]) {
      EXPECT_TRUE(f.finished) << "FinalOnly gives finished outputs alone";
      ++finals[id];
      const RequestOutput& want = cum[i].at(id);
      ASSERT_EQ(f.outputs.size(), want.outputs.size());
      for (size_t k = 0; k < want.outputs.size(); ++k) {
        EXPECT_EQ(f.outputs[k].token_ids, want.outputs[k].token_ids);
        EXPECT_EQ(f.outputs[k].text, want.outputs[k].text);
        EXPECT_EQ(f.outputs[k].finish_reason, want.outputs[k].finish_reason);
        EXPECT_TRUE(same_logprobs(f.outputs[k].logprobs, want.outputs[k].logprobs));
      }
    }
  }
  EXPECT_EQ(finals.size(), 3u);
  for (const auto& [id, n] : finals) EXPECT_EQ(n, 1) << "request " << id;
  ASSERT_EQ(acc.size(), 3u);
  for (const auto& [id, o] : acc) EXPECT_TRUE(o.finished);
  // What the requests were for: two samples with log-probabilities, a stop string that cut the text,
  // prompt log-probabilities.
  const auto& sampled = acc.begin()->second;
  ASSERT_EQ(sampled.outputs.size(), 2u);
  EXPECT_EQ(sampled.outputs[1].logprobs.size(), sampled.outputs[1].token_ids.size());
  const auto& stopped = std::next(acc.begin())->second.outputs[0];
  EXPECT_EQ(stopped.stop_reason, full.substr(upto.size(), 3));
  EXPECT_EQ(stopped.text, full.substr(0, full.find(stopped.stop_reason)));
  EXPECT_TRUE(std::prev(acc.end())->second.prompt_logprobs);
}

// vLLM's stream_interval: streamed (Delta) outputs go out with a sequence's first tokens, a finish, or once
// a sequence has that many new tokens; put together they are the whole answer, as without it.
TEST(Engine, StreamIntervalGathersDeltas) {
  Fixture s;
  const auto pub = golden()["public"];
  auto run = [&](int interval, OutputKind kind) {
    s.cfg.stream_interval = interval;  // (read by the engine)
    Engine e(*s.runner, s.tok.get(), 0);
    SamplingParams a;
    a.n = 2, a.temperature = 1.0, a.seed = 7, a.max_tokens = 14, a.logprobs = 2, a.ignore_eos = true;
    SamplingParams b = greedy(23);
    for (SamplingParams* p : {&a, &b}) p->output_kind = kind;
    e.add_request(pub[3]["ids"].get<std::vector<int32_t>>(), a);
    e.add_request(pub[1]["ids"].get<std::vector<int32_t>>(), b);
    std::map<uint64_t, std::vector<RequestOutput>> outs;
    for (int guard = 0; e.has_unfinished() && guard < 10000; ++guard)
      for (auto& o : e.step()) outs[o.request_id].push_back(std::move(o));
    return outs;
  };
  const auto want = run(1, OutputKind::Cumulative);
  const auto every = run(1, OutputKind::Delta);
  const auto gathered = run(4, OutputKind::Delta);
  s.cfg.stream_interval = 1;
  ASSERT_EQ(gathered.size(), 2u);
  for (const auto& [id, list] : gathered) {
    SCOPED_TRACE(cat("request ", id));
    EXPECT_LT(list.size(), every.at(id).size());
    RequestOutput acc;
    for (size_t i = 0; i < list.size(); ++i) {
      const RequestOutput& d = list[i];
      bool due = i == 0 || d.finished;
      for (const auto& c : d.outputs) due = due || c.delta_tokens >= 4 || c.finished();
      EXPECT_TRUE(due) << "output " << i;
      accumulate_output(acc, RequestOutput(d));
    }
    const RequestOutput& w = want.at(id).back();
    ASSERT_TRUE(acc.finished && w.finished);
    ASSERT_EQ(acc.outputs.size(), w.outputs.size());
    for (size_t k = 0; k < w.outputs.size(); ++k) {
      EXPECT_EQ(acc.outputs[k].token_ids, w.outputs[k].token_ids);
      EXPECT_EQ(acc.outputs[k].text, w.outputs[k].text);
      EXPECT_EQ(acc.outputs[k].logprobs.size(), w.outputs[k].logprobs.size());
      EXPECT_EQ(acc.outputs[k].finish_reason, w.outputs[k].finish_reason);
    }
  }
}

namespace {

// Greedy and sampled requests of the golden prompts with every sampling setting that reads a
// sequence's history or position: penalties, min_tokens, seeds, logprobs, prompt_logprobs, stop tokens
// and strings, n = 2, the end of sequence.
std::vector<std::pair<std::vector<int32_t>, SamplingParams>> varied_requests(const Tokenizer& tok) {
  const auto pub = golden()["public"];
  std::vector<std::pair<std::vector<int32_t>, SamplingParams>> r;
  for (int i = 0; i < 8; ++i) {
    const auto ids = pub[i]["ids"].get<std::vector<int32_t>>();
    r.emplace_back(ids, greedy(i == 0 ? 1 : i == 1 ? 2 : 9 + 3 * i));
    SamplingParams p;
    p.temperature = 0.9;
    p.top_p = 0.95;
    p.top_k = 40;
    p.seed = 100 + i;
    p.max_tokens = 14 + 2 * i;
    p.repetition_penalty = i % 2 ? 1.3 : 1.0;
    p.presence_penalty = i % 3 == 0 ? 0.5 : 0.0;
    p.frequency_penalty = i % 3 == 1 ? 0.4 : 0.0;
    p.logprobs = i % 4 == 0 ? 3 : -1;
    p.n = i == 2 ? 2 : 1;
    p.min_tokens = i == 5 ? 6 : 0;
    if (i == 3) p.prompt_logprobs = 2;
    if (i == 4) p.stop_token_ids = {ids[1], ids[2]};
    r.emplace_back(ids, p);
  }
  // A stop string from the middle of a greedy continuation.
  const auto gold = pub[1]["greedy"]["ids"].get<std::vector<int32_t>>();
  const std::string full = tok.decode(gold, true), upto = tok.decode(std::vector<int32_t>(gold.begin(), gold.begin() + 6), true);
  SamplingParams st = greedy(24);
  st.stop = {full.substr(upto.size(), 3)};
  r.emplace_back(pub[1]["ids"].get<std::vector<int32_t>>(), st);
  SamplingParams eos = greedy(40);
  eos.ignore_eos = false;
  r.emplace_back(pub[6]["ids"].get<std::vector<int32_t>>(), eos);
  return r;
}

}  // namespace

// Asynchronous scheduling plans each decode before its input token is back; the outputs must be
// exactly those of stepping in turn: greedy and seeded sampled requests with penalties, filters,
// logprobs and prompt log-probabilities, n = 2, stop strings, stop token ids, EOS with min_tokens,
// max_tokens of 1 and 2 (nothing to plan ahead), and with a cache small enough to preempt.
TEST(Engine, AsyncSchedulingGivesTheOutputsOfSteppingInTurn) {
  const auto requests = varied_requests;
  for (int64_t blocks : {0, 48}) {
    std::vector<RequestOutput> outs[2];
    for (int async = 0; async < 2; ++async) {
      Fixture s(blocks, async == 1);
      Engine e(*s.runner, s.tok.get(), 7);
      EXPECT_EQ(e.async_scheduling(), async == 1);
      std::vector<uint64_t> ids;
      for (auto& [prompt, p] : requests(*s.tok)) ids.push_back(e.add_request(prompt, p));
      auto done = run_all(e);
      for (uint64_t id : ids) outs[async].push_back(done[id]);
      EXPECT_EQ(e.max_in_flight(), async ? 2 : 0);
      // On one rank most steps' forward passes were queued behind the previous step's draw (or its
      // log-probabilities); not those after a step with prompt_logprobs or swaps.
      const int64_t queued = e.step_times().worker.queued;
      std::printf("async %d, blocks %lld: %lld of %lld steps queued\n", async, static_cast<long long>(blocks),
                  static_cast<long long>(queued), static_cast<long long>(e.steps()));
      if (async) {
        EXPECT_GT(queued, e.steps() / 2);
      } else {
        EXPECT_EQ(queued, 0);
      }
      EXPECT_EQ(e.scheduler().blocks().num_used(), 0);
      if (blocks > 0) {
        EXPECT_GT(e.scheduler().stats().preempted_swap + e.scheduler().stats().preempted_recompute, 0);
      }
      e.shutdown();
    }
    ASSERT_EQ(outs[0].size(), outs[1].size());
    for (size_t k = 0; k < outs[0].size(); ++k) {
      SCOPED_TRACE(cat("blocks ", blocks, ", request ", k));
      expect_same_outputs(outs[0][k], outs[1][k]);
    }
    // The cases meant something: lengths 1 and 2, a stop string, a stop token, n = 2.
    EXPECT_EQ(outs[0][0].outputs[0].token_ids.size(), 1u);
    EXPECT_EQ(outs[0][2].outputs[0].token_ids.size(), 2u);
    EXPECT_EQ(outs[0][16].outputs[0].finish_reason, "stop");
    EXPECT_EQ(outs[0][5].outputs.size(), 2u);
  }
}

// Speculative decoding feeds n-gram drafts and samples a row after each; every row draws as decoding one
// token at a time would (the seed's noise at its position; penalties, min_tokens, bad words and the guide
// over the tokens before it), so on the CPU backend the outputs are exactly those of one token a step:
// the varied requests above, guided decoding (a regex, JSON) and a two-token bad word, on a roomy cache
// and on one small enough to preempt. Most drafts of the tiny model's repetitive text are accepted.
void speculative_decoding_case(const char* spec, bool draft_model) {
  SCOPED_TRACE(spec);
  const auto gold = golden()["public"][2]["greedy"]["ids"].get<std::vector<int32_t>>();
  for (int64_t blocks : {0, 48}) {
    std::vector<RequestOutput> outs[2];
    int64_t steps[2] = {0, 0};
    for (int sp = 0; sp < 2; ++sp) {
      Fixture s(blocks, false, 4.0, "fcfs", 256, sp ? spec : "");
      Engine e(*s.runner, s.tok.get(), 7);
      auto reqs = varied_requests(*s.tok);
      const std::vector<int32_t> prompt = golden()["public"][2]["ids"].get<std::vector<int32_t>>();
      SamplingParams re;
      re.temperature = 0.8;
      re.seed = 5;
      re.max_tokens = 24;
      re.guided = "regex";
      re.guided_schema = "( ab| cd)+ e";
      reqs.emplace_back(prompt, re);
      SamplingParams js = greedy(30);
      js.guided = "json";
      reqs.emplace_back(prompt, js);
      SamplingParams bad = greedy(20);
      bad.bad_words_ids = {{gold[3], gold[4]}};
      reqs.emplace_back(prompt, bad);
      std::vector<uint64_t> ids;
      for (auto& [pr, p] : reqs) ids.push_back(e.add_request(pr, p));
      auto done = run_all(e);
      for (uint64_t id : ids) outs[sp].push_back(done[id]);
      steps[sp] = e.steps();
      const SchedulerStats& st = e.scheduler().stats();
      std::printf("blocks %lld, speculative %d: %lld steps, %lld drafts, %lld accepted, %lld preemptions\n",
                  static_cast<long long>(blocks), sp, static_cast<long long>(e.steps()),
                  static_cast<long long>(st.spec_draft_tokens), static_cast<long long>(st.spec_accepted_tokens),
                  static_cast<long long>(st.preempted_swap + st.preempted_recompute));
      if (sp) {
        EXPECT_GT(st.spec_accepted_tokens, st.spec_draft_tokens / 2);
        EXPECT_LE(st.spec_accepted_tokens, st.spec_draft_tokens);
        ASSERT_EQ(e.draft_model() != nullptr, draft_model);
        if (draft_model) {
          // Every sequence's draft cache went back when it ended.
          std::printf("draft model: %lld steps, %lld tokens fed\n", static_cast<long long>(e.draft_model()->steps()),
                      static_cast<long long>(e.draft_model()->tokens_fed()));
          EXPECT_EQ(e.draft_model()->free_blocks(), s.runner->draft()->num_blocks());
          EXPECT_EQ(s.runner->draft()->num_blocks(), s.runner->num_blocks());
          // On the tight cache the draft's too runs short: caches of sequences not proposing are taken back.
          if (blocks > 0) EXPECT_GT(e.draft_model()->evictions(), 0);
        }
      } else {
        EXPECT_EQ(st.spec_draft_tokens, 0);
      }
      if (blocks > 0) EXPECT_GT(st.preempted_swap + st.preempted_recompute, 0);
      EXPECT_EQ(e.scheduler().blocks().num_used(), 0);
      e.shutdown();
    }
    EXPECT_LT(steps[1], steps[0]);
    ASSERT_EQ(outs[0].size(), outs[1].size());
    for (size_t k = 0; k < outs[0].size(); ++k) {
      SCOPED_TRACE(cat("blocks ", blocks, ", request ", k));
      expect_same_outputs(outs[0][k], outs[1][k]);
    }
    // The guided and bad-word cases meant something: text under the regex, and the greedy
    // continuation turned aside where the bad word would have been.
    const auto& rx = outs[0][outs[0].size() - 3].outputs[0];
    EXPECT_FALSE(rx.token_ids.empty());
    EXPECT_EQ(rx.text.rfind(" ab", 0) == 0 || rx.text.rfind(" cd", 0) == 0, true) << rx.text;
    const auto& bw = outs[0].back().outputs[0].token_ids;
    ASSERT_GE(bw.size(), 5u);
    EXPECT_EQ(std::vector<int32_t>(bw.begin(), bw.begin() + 4), std::vector<int32_t>(gold.begin(), gold.begin() + 4));
    EXPECT_NE(bw[4], gold[4]);
  }
}

// n-gram drafts, and a draft model (the served model itself: its draws, with the same noise, match the
// served model's but for the requests' masks and guides, which the draft does not apply).
TEST(Engine, SpeculativeDecodingGivesTheOutputsOfDecodingOneTokenAtATime) {
  const std::string draft = cat(R"({"model": ")", kModel, R"(", "num_speculative_tokens": 3})");
  for (const std::string spec : {std::string(R"({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3})"), draft})
    speculative_decoding_case(spec.c_str(), spec == draft);
}
// A draft model identical to the served one draws what the served model draws (the same distribution and
// the same noise; greedy, sampled, penalized, masked, with min_tokens): nearly every draft is kept
// (rounding between a one-token step and a verifying step may flip a near tie), where drafts drawn on
// their own would match a sampled token only as often as its probability.
TEST(Engine, DraftModelIdenticalToTheServedOneHasItsDraftsKept) {
  const std::string spec = cat(R"({"model": ")", kModel, R"(", "num_speculative_tokens": 4})");
  Fixture s(0, false, 4.0, "fcfs", 256, spec.c_str());
  Engine e(*s.runner, s.tok.get(), 11);
  auto reqs = varied_requests(*s.tok);
  SamplingParams bad = greedy(20);
  const auto gold = golden()["public"][2]["greedy"]["ids"].get<std::vector<int32_t>>();
  bad.bad_words_ids = {{gold[3], gold[4]}};
  reqs.emplace_back(golden()["public"][2]["ids"].get<std::vector<int32_t>>(), bad);
  for (auto& [pr, p] : reqs) e.add_request(pr, p);
  run_all(e);
  const SchedulerStats& st = e.scheduler().stats();
  std::printf("%lld drafts, %lld accepted\n", static_cast<long long>(st.spec_draft_tokens), static_cast<long long>(st.spec_accepted_tokens));
  EXPECT_GT(st.spec_draft_tokens, 100);
  EXPECT_GE(st.spec_accepted_tokens * 100, st.spec_draft_tokens * 97);
  e.shutdown();
}

// vLLM's cache_salt: a prompt's blocks are found in the prefix cache only by requests with the same salt
// (no salt is a salt of its own), and the outputs do not change; under either prefix_caching_hash_algo.
void check_cache_salt(const char* prefix_hash) {
  SCOPED_TRACE(prefix_hash);
  Fixture s(0, false, 4.0, "fcfs", 256, "", prefix_hash);
  Engine e(*s.runner, s.tok.get(), 0);
  const auto prompt = golden()["public"][3]["ids"].get<std::vector<int32_t>>();
  ASSERT_GE(prompt.size(), 17u);  // (two blocks of 8 to reuse)
  auto run = [&](const char* salt) {
    SamplingParams p = greedy(4);
    p.cache_salt = salt;
    const uint64_t id = e.add_request(prompt, p);
    return run_all(e).at(id);
  };
  const RequestOutput first = run("tenant-a");
  EXPECT_EQ(first.num_cached_tokens, 0);
  const RequestOutput other = run("tenant-b");
  EXPECT_EQ(other.num_cached_tokens, 0);
  const RequestOutput none = run("");
  EXPECT_EQ(none.num_cached_tokens, 0);
  const RequestOutput same = run("tenant-a");
  EXPECT_EQ(same.num_cached_tokens, static_cast<int64_t>((prompt.size() - 1) / 8 * 8));
  const RequestOutput none_again = run("");
  EXPECT_EQ(none_again.num_cached_tokens, same.num_cached_tokens);
  for (const RequestOutput* o : {&other, &none, &same, &none_again}) EXPECT_EQ(o->outputs[0].token_ids, first.outputs[0].token_ids);
  e.shutdown();
}
TEST(Engine, CacheSaltKeepsPrefixCacheHitsWithinTheSalt) { check_cache_salt("builtin"); }
#ifdef LLMSERVE_TLS
TEST(Engine, CacheSaltKeepsPrefixCacheHitsWithinTheSaltUnderSha256) { check_cache_salt("sha256"); }
#endif

// Text held back for a stop string ends on a character boundary: every streamed delta is whole UTF-8
// and the deltas add up to the final text. The greedy continuations of golden prompts 0, 2, 3, 6 and 7
// mix 2-4-byte characters with ASCII; a held-back length of 1-3 bytes cut their characters before.
TEST(Engine, HeldBackTextEndsOnACharacterBoundary) {
  Fixture s;
  const auto pub = golden()["public"];
  Engine e(*s.runner, s.tok.get(), 0);
  struct Case {
    uint64_t id;
    int prompt;
    std::string streamed;
    int deltas = 0;
  };
  std::vector<Case> cases;
  for (const std::string stop : {"zz", "zzz", "zzzz", "\xc3\xa9"})
    for (int i : {0, 2, 3, 6, 7}) {
      SamplingParams p = greedy(24);
      p.stop = {stop};
      p.output_kind = OutputKind::Delta;
      cases.push_back({e.add_request(pub[i]["ids"].get<std::vector<int32_t>>(), p), i, ""});
    }
  for (int guard = 0; e.has_unfinished() && guard < 10000; ++guard)
    for (auto& r : e.step())
      for (auto& c : cases)
        if (c.id == r.request_id) {
          const std::string& d = r.outputs.at(0).delta;
          EXPECT_EQ(unicode::utf8_lossy(d), d) << "prompt " << c.prompt << ": a delta that is not whole UTF-8";
          c.streamed += d;
          c.deltas += !d.empty();
        }
  for (const auto& c : cases) {
    // No stop string occurs in these continuations: the deltas add up to the whole decoded text.
    const std::string whole = s.tok->decode(pub[c.prompt]["greedy"]["ids"].get<std::vector<int32_t>>(), true);
    EXPECT_EQ(c.streamed, whole) << "prompt " << c.prompt;
    EXPECT_TRUE(std::any_of(whole.begin(), whole.end(), [](char ch) { return static_cast<unsigned char>(ch) >= 0x80; }));
    EXPECT_GT(c.deltas, 1);
  }
}

// Preemption changes when a request's steps run, never what it gets (the draw's noise depends on seed,
// position and token; the linears are batch-invariant): thirty mixed requests on a cache of 48 blocks
// with a little swap space (swaps in and out in the same steps, host blocks reused at once) give what
// they give on a cache that never preempts. Found by a randomized comparison like this one: a swap-out
// that reused the host block of a swap-in planned in the same step ran first and overwrote it (this
// seed's workload fails with the copies in that order).
TEST(Engine, PreemptionGivesTheOutputsOfACacheThatNeverPreempts) {
  std::mt19937 rng(8);
  auto pick = [&](std::initializer_list<double> v) { return *(v.begin() + rng() % v.size()); };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  std::vector<int32_t> shared(40);
  for (auto& t : shared) t = 1000 + static_cast<int32_t>(rng() % 149000);
  std::vector<std::pair<std::vector<int32_t>, SamplingParams>> reqs;
  for (int i = 0; i < 30; ++i) {
    std::vector<int32_t> ids;
    if (chance(0.3)) ids.assign(shared.begin(), shared.begin() + 8 + rng() % 32);
    const int len = static_cast<int>(pick({1, 2, 5, 17, 33, 64, 100, 150}));
    for (int k = 0; k < len; ++k) ids.push_back(1000 + static_cast<int32_t>(rng() % 149000));
    SamplingParams p;
    p.max_tokens = static_cast<int>(pick({1, 2, 8, 20, 40}));
    p.temperature = pick({0, 0, 0.7, 1.0, 1.5});
    p.seed = rng() % (1 << 30);
    if (p.temperature > 0) {
      if (chance(0.4)) p.top_p = pick({0.5, 0.9, 0.99});
      if (chance(0.4)) p.top_k = static_cast<int>(pick({5, 50}));
      if (chance(0.3)) p.min_p = pick({0.05, 0.2});
      if (chance(0.3)) p.n = static_cast<int>(pick({2, 3}));
    }
    if (chance(0.3)) p.repetition_penalty = pick({1.1, 1.5, 0.9});
    if (chance(0.2)) p.presence_penalty = pick({0.5, -0.5, 1.5});
    if (chance(0.2)) p.frequency_penalty = pick({0.5, 1.0});
    if (chance(0.3)) p.logprobs = static_cast<int>(pick({0, 1, 5}));
    if (chance(0.15)) p.prompt_logprobs = static_cast<int>(pick({0, 2}));
    p.ignore_eos = chance(0.5);
    reqs.emplace_back(std::move(ids), p);
  }
  std::vector<RequestOutput> outs[2];
  for (int tight = 0; tight < 2; ++tight) {
    const SchedulerStats st = run_on_cache(reqs, tight, 0.001, 0, outs[tight]);
    if (tight) EXPECT_GT(st.preempted_swap, 1);
  }
  for (size_t k = 0; k < reqs.size(); ++k) {
    SCOPED_TRACE(cat("request ", k));
    expect_same_outputs(outs[0][k], outs[1][k]);
  }
}

// Embedding requests (the pooling runner) among generation requests: a cache so small that sequences are
// preempted and recomputed, their prompts in chunks, gives the vectors (and the generations) of a cache
// that never preempts. And the pooling types agree with each other as a causal model makes them: the
// MEAN of a prompt is the mean of the LAST vectors of its prefixes, CLS is the LAST of its first token.
TEST(Engine, PoolingRequestsGiveTheVectorsOfACacheThatNeverPreempts) {
  std::mt19937 rng(11);
  std::vector<std::pair<std::vector<int32_t>, SamplingParams>> reqs;
  // Long generations first (the running sequences that grow and preempt the latest arrivals), then
  // pooling requests of long prompts (in chunks of 64 tokens a step) among more generations.
  for (int i = 0; i < 28; ++i) {
    std::vector<int32_t> ids(static_cast<size_t>(std::vector<int>{3, 17, 40, 90, 150}[rng() % 5]));
    for (auto& t : ids) t = 1000 + static_cast<int32_t>(rng() % 149000);
    SamplingParams p = greedy(static_cast<int>(i < 6 ? 80 + rng() % 60 : 8 + rng() % 40));
    if (i >= 6 && i % 2 == 0) p.pooling = std::vector<Pooling>{Pooling::Last, Pooling::Mean, Pooling::Cls}[rng() % 3];
    reqs.emplace_back(std::move(ids), p);
  }
  // (prompts in chunks of 64; the tight caches recompute, or swap while their host blocks last)
  std::vector<RequestOutput> outs[3];
  run_on_cache(reqs, false, 0, 64, outs[0]);
  EXPECT_GT(run_on_cache(reqs, true, 0.0, 64, outs[1]).preempted_recompute, 2);
  EXPECT_GT(run_on_cache(reqs, true, 0.001, 64, outs[2]).preempted_swap, 2);
  for (size_t k = 0; k < 2 * reqs.size(); ++k) {
    SCOPED_TRACE(cat("request ", k % reqs.size(), k < reqs.size() ? ", recomputed" : ", swapped"));
    const RequestOutput &a = outs[0][k % reqs.size()], &b = outs[1 + k / reqs.size()][k % reqs.size()];
    if (reqs[k % reqs.size()].second.pooling == Pooling::None) {
      EXPECT_TRUE(a.embedding.empty());
      expect_same_outputs(a, b);
      continue;
    }
    ASSERT_TRUE(a.finished && b.finished);
    ASSERT_EQ(a.embedding.size(), 64u);  // tiny-qwen2's hidden size
    EXPECT_EQ(a.prompt_tokens, static_cast<int64_t>(reqs[k % reqs.size()].first.size()));
    ASSERT_EQ(a.outputs.size(), 1u);
    EXPECT_TRUE(a.outputs[0].token_ids.empty());
    EXPECT_EQ(a.outputs[0].finish_reason, "stop");
    for (size_t h = 0; h < a.embedding.size(); ++h) EXPECT_NEAR(a.embedding[h], b.embedding[h], 1e-5f * (1 + std::fabs(a.embedding[h])));
  }

  Fixture s;
  Engine e(*s.runner, s.tok.get(), 0);
  std::vector<int32_t> prompt(17);
  for (auto& t : prompt) t = 1000 + static_cast<int32_t>(rng() % 149000);
  SamplingParams last, mean, cls;
  last.pooling = Pooling::Last, mean.pooling = Pooling::Mean, cls.pooling = Pooling::Cls;
  std::vector<uint64_t> prefix_ids;
  for (size_t n = 1; n <= prompt.size(); ++n) prefix_ids.push_back(e.add_request({prompt.begin(), prompt.begin() + n}, last));
  const uint64_t mean_id = e.add_request(prompt, mean), cls_id = e.add_request(prompt, cls);
  auto done = run_all(e);
  std::vector<double> avg(64, 0.0);
  for (uint64_t id : prefix_ids)
    for (size_t h = 0; h < 64; ++h) avg[h] += done[id].embedding.at(h) / static_cast<double>(prompt.size());
  for (size_t h = 0; h < 64; ++h) {
    EXPECT_NEAR(done[mean_id].embedding.at(h), avg[h], 1e-4 * (1 + std::fabs(avg[h])));
    EXPECT_NEAR(done[cls_id].embedding.at(h), done[prefix_ids[0]].embedding.at(h), 1e-4 * (1 + std::fabs(avg[h])));
  }
  // Longer than max_model_len: vLLM's message for embeddings.
  try {
    e.add_request(std::vector<int32_t>(400, 1000), last);
    ADD_FAILURE() << "a 400-token prompt was taken";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("tokens in the input for embedding generation"), std::string::npos) << err.what();
  }
  e.shutdown();
}

// A swapped-out sequence keeps no cache blocks, shared ones included. Before, a preempted sequence
// left the blocks it shared (a prompt its n forks share, a cached prefix) in the cache: with both
// forks of a 256-token prompt swapped out, 32 of 48 blocks stayed taken, and the older request that
// had preempted them could neither grow past the other 16 nor preempt anyone, so nothing ran again.
TEST(Engine, SwappedSequencesHoldNoBlocks) {
  Fixture s(48, false, 0.001);
  Engine e(*s.runner, s.tok.get(), 0);
  std::mt19937 rng(3);
  auto prompt = [&](int n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& t : ids) t = 1000 + static_cast<int32_t>(rng() % 149000);
    return ids;
  };
  const uint64_t older = e.add_request(prompt(100), greedy(150));
  SamplingParams forks = greedy(20);
  forks.n = 2;
  forks.temperature = 1.0;
  forks.seed = 5;
  const uint64_t younger = e.add_request(prompt(256), forks);
  auto done = run_all(e);
  EXPECT_FALSE(e.has_unfinished());
  ASSERT_TRUE(done.count(older) && done.count(younger));
  EXPECT_EQ(done[older].outputs.at(0).token_ids.size(), 150u);
  EXPECT_EQ(done[younger].outputs.at(1).token_ids.size(), 20u);
  EXPECT_GT(e.scheduler().stats().preempted_swap, 1);
  EXPECT_EQ(e.scheduler().blocks().num_used(), 0);
}

// The worker fills a pending token in from the tokens it sampled in the previous step (the step then
// samples what it would with that token given outright), and refuses a row that is not the sequence's.
TEST(Worker, FillsPendingTokensFromTheStepBefore) {
  Fixture s;
  auto step = [](uint64_t seq, int32_t computed, std::vector<int32_t> tokens, bool start) {
    StepPlan p;
    SeqStep st;
    st.seq_id = seq;
    st.num_computed = computed;
    st.tokens = std::move(tokens);
    st.block_table = {static_cast<int32_t>(seq)};
    st.sample = true;
    if (start) {
      st.start = std::make_shared<SeqStart>();
      st.start->prompt_len = 2;
      st.start->params = greedy(8);
    }
    p.seqs.push_back(std::move(st));
    return p;
  };
  Worker w(*s.runner);
  StepPlan first = step(1, 0, {9707, 11}, true);
  const auto t1 = w.execute(first, Tensor()).tokens;
  ASSERT_EQ(t1.size(), 1u);
  StepPlan ahead = step(1, 2, {pending_token(0)}, false);
  const auto t2 = w.execute(ahead, Tensor()).tokens;
  EXPECT_EQ(ahead.seqs[0].tokens[0], t1[0].token);  // filled in place
  // The same three tokens given outright, on another sequence's block.
  Worker v(*s.runner);
  StepPlan a = step(2, 0, {9707, 11}, true);
  v.execute(a, Tensor());
  StepPlan b = step(2, 2, {t1[0].token}, false);
  EXPECT_EQ(v.execute(b, Tensor()).tokens.at(0).token, t2.at(0).token);
  // Row 0 of the step before is sequence 2's, not 1's; row 3 does not exist.
  StepPlan wrong = step(1, 3, {pending_token(0)}, false);
  EXPECT_THROW(v.execute(wrong, Tensor()), Error);
  StepPlan past = step(2, 3, {pending_token(3)}, false);
  EXPECT_THROW(v.execute(past, Tensor()), Error);
}

TEST(Engine, AbortFreesBlocksAndRejectsWhatCanNeverFit) {
 for (bool async : {false, true}) {
  SCOPED_TRACE(async ? "async scheduling" : "in turn");
  Fixture s(48, async);
  Engine e(*s.runner, s.tok.get(), 0);
  const auto pub = golden()["public"];
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(e.add_request(pub[i]["ids"].get<std::vector<int32_t>>(), greedy(30)));
  std::map<uint64_t, RequestOutput> done;
  for (int k = 0; k < 3; ++k)
    for (auto& r : e.step())
      if (r.finished) done[r.request_id] = r;
  EXPECT_GT(e.scheduler().blocks().num_used(), 0);
  e.abort(ids[1]);
  for (auto& [id, r] : run_all(e)) done[id] = r;
  EXPECT_EQ(done[ids[1]].outputs[0].finish_reason, "abort");
  EXPECT_LT(done[ids[1]].outputs[0].token_ids.size(), 30u);
  EXPECT_EQ(done[ids[0]].outputs[0].finish_reason, "length");
  EXPECT_EQ(e.scheduler().blocks().num_used(), 0);  // everything released (cached blocks stay evictable)
  // Longer than max_model_len (the runner refuses caches smaller than one such sequence).
  std::vector<int32_t> long_prompt(380, 9707);
  try {
    e.add_request(long_prompt, greedy(10));
    FAIL();
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("maximum context length is 384 tokens"), std::string::npos) << err.what();
  }
  EXPECT_THROW(e.add_request({}, greedy(5)), Error);
  EXPECT_THROW(e.add_request({999999}, greedy(5)), Error);
  SamplingParams bad = greedy(5);
  bad.top_p = 0;
  EXPECT_THROW(e.add_request({1, 2}, bad), Error);
 }
}

// Priority scheduling in the engine: with one sequence at a time, requests finish in (priority,
// arrival) order, each with what it gets first come, first served (the order changes when a request
// runs, never what it gets); without the policy a non-zero priority is refused with vLLM's message.
TEST(Engine, PriorityPolicyOrdersRequestsAndKeepsTheirOutputs) {
  const auto pub = golden()["public"];
  const int prio[] = {3, 0, 3, -2, 1};
  std::vector<std::vector<uint64_t>> finish_order(2);
  std::vector<std::vector<RequestOutput>> outs(2);
  for (int priority = 0; priority < 2; ++priority) {
    Fixture s(0, false, 4.0, priority ? "priority" : "fcfs", 1);
    Engine e(*s.runner, s.tok.get(), 0);
    std::vector<uint64_t> ids;
    for (int i = 0; i < 5; ++i) {
      SamplingParams p = greedy(6);
      p.priority = priority ? prio[i] : 0;
      ids.push_back(e.add_request(pub[i]["ids"].get<std::vector<int32_t>>(), p));
    }
    std::map<uint64_t, RequestOutput> done;
    for (int guard = 0; e.has_unfinished() && guard < 1000; ++guard)
      for (auto& r : e.step())
        if (r.finished) finish_order[priority].push_back(r.request_id), done[r.request_id] = r;
    for (uint64_t id : ids) outs[priority].push_back(done[id]);
    if (!priority) {
      SamplingParams p = greedy(6);
      p.priority = 1;
      try {
        e.add_request({1, 2}, p);
        ADD_FAILURE() << "a priority was taken without priority scheduling";
      } catch (const Error& err) {
        EXPECT_STREQ(err.what(), "Got priority 1 but Priority scheduling is not enabled.");
      }
    }
    e.shutdown();
  }
  EXPECT_EQ(finish_order[0], std::vector<uint64_t>({1, 2, 3, 4, 5}));
  EXPECT_EQ(finish_order[1], std::vector<uint64_t>({4, 2, 5, 1, 3}));
  for (size_t k = 0; k < 5; ++k) {
    SCOPED_TRACE(cat("request ", k));
    expect_same_outputs(outs[0][k], outs[1][k]);
    EXPECT_EQ(outs[1][k].outputs.at(0).token_ids.size(), 6u);
  }
}

// A request whose masks leave no token to draw fails alone: it finishes with an error, its other
// sequences end, and the engine and the other requests go on (it used to take the whole engine down,
// and with it the server). allowed_token_ids {A} with the bad word "A A" empties the second step;
// the same masks at the first step are refused when the request arrives.
TEST(Engine, ARequestWithNoTokenToDrawFailsAlone) {
 for (bool async : {false, true}) {
  SCOPED_TRACE(async ? "async scheduling" : "in turn");
  Fixture s(48, async);
  Engine e(*s.runner, s.tok.get(), 0);
  const auto pub = golden()["public"];
  const auto good_prompt = pub[0]["ids"].get<std::vector<int32_t>>();
  const int32_t A = 9707;
  SamplingParams dead = greedy(8);
  dead.n = 2;
  dead.allowed_token_ids = {A};
  dead.bad_words_ids = {{A, A}};
  const uint64_t good = e.add_request(good_prompt, greedy(12));
  const uint64_t bad = e.add_request({A, 11}, dead);
  auto done = run_all(e);
  ASSERT_TRUE(done.count(bad) && done.count(good));
  EXPECT_NE(done[bad].error.find("no token can be drawn"), std::string::npos) << done[bad].error;
  for (const auto& c : done[bad].outputs) EXPECT_EQ(c.token_ids, std::vector<int32_t>{A});
  EXPECT_TRUE(done[good].error.empty());
  EXPECT_FALSE(e.has_unfinished());
  EXPECT_EQ(e.scheduler().blocks().num_used(), 0);
  // The good request's output is what it gives alone, and the engine still serves.
  const uint64_t again = e.add_request(good_prompt, greedy(12));
  auto after = run_all(e);
  expect_same_outputs(done[good], after[again]);
  // At the first step the same masks are a refusal, not a failure.
  SamplingParams first = greedy(4);
  first.allowed_token_ids = {A};
  first.bad_words_ids = {{A}};
  EXPECT_THROW(e.add_request({A, 11}, first), Error);
  first.bad_words_ids.clear();
  first.min_tokens = 2;
  first.stop_token_ids = {A};
  EXPECT_THROW(e.add_request({A, 11}, first), Error);
  first.stop_token_ids = {A + 1};
  EXPECT_NO_THROW(e.add_request({A, 11}, first));
  run_all(e);
 }
}

TEST(EngineService, JobsCompleteAndNoJobIsLeftUnansweredAfterStop) {
  Fixture s;
  Engine e(*s.runner, s.tok.get(), 0);
  EngineService svc(e);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::string error;
  RequestOutput last;
  auto job = std::make_shared<EngineJob>();
  job->prompt = {9707, 11};
  job->params = greedy(4);
  job->on_output = [&](RequestOutput&& o) {
    std::lock_guard<std::mutex> l(mu);
    last = o;
    done = o.finished;
    cv.notify_all();
  };
  job->on_error = [&](int, const std::string& m) {
    std::lock_guard<std::mutex> l(mu);
    error = m;
    done = true;
    cv.notify_all();
  };
  svc.submit(job);
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(60), [&] { return done; }));
  }
  EXPECT_TRUE(error.empty()) << error;
  EXPECT_EQ(last.outputs.at(0).token_ids.size(), 4u);
  svc.stop();
  // After stop, a submitted job is answered at once with an error (it used to wait forever).
  bool answered = false;
  auto late = std::make_shared<EngineJob>();
  late->prompt = {9707};
  late->params = greedy(2);
  late->on_output = [&](RequestOutput&&) { answered = true; };
  int status = 0;
  late->on_error = [&](int st, const std::string& m) {
    answered = true;
    status = st;
    error = m;
  };
  svc.submit(late);
  EXPECT_TRUE(answered);
  EXPECT_NE(error.find("shutting down"), std::string::npos) << error;
  EXPECT_EQ(status, 503);  // (the server no longer takes jobs: Service Unavailable)
}

// Outputs reach the jobs from one delivery thread (not the submitter's), each job's in order (tokens
// only growing, the finished one last and once); a job the engine refuses gets its error the same way;
// stop() with requests still running returns only when every job has had its last word.
TEST(EngineService, DeliveryKeepsEachJobsOrderAndStopDrainsIt) {
  Fixture s;
  Engine e(*s.runner, s.tok.get(), 0);
  EngineService svc(e);
  struct Seen {
    size_t outputs = 0, tokens = 0;
    bool final = false, disorder = false, after_final = false;
    std::string error, reason;
    int status = 0;
  };
  const size_t n = 10;
  std::vector<Seen> seen(n + 1);
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::thread::id> threads;
  size_t first_outputs = 0;
  for (size_t i = 0; i <= n; ++i) {
    auto job = std::make_shared<EngineJob>();
    job->prompt = i < n ? std::vector<int32_t>{9707, static_cast<int32_t>(11 + i)} : std::vector<int32_t>{};  // the last: refused
    job->params = greedy(i % 2 ? 300 : 3);  // odd jobs still run at stop()
    job->on_output = [&, i](RequestOutput&& o) {
      // A slow client's callback: the delivery thread falls behind, so stop() finds outputs queued.
      if (i == 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      std::lock_guard<std::mutex> l(mu);
      threads.insert(std::this_thread::get_id());
      Seen& x = seen[i];
      if (x.final) x.after_final = true;
      const size_t t = o.outputs.at(0).token_ids.size();
      if (t < x.tokens) x.disorder = true;
      x.tokens = t;
      if (x.outputs++ == 0) ++first_outputs;
      x.final = o.finished;
      x.reason = o.outputs.at(0).finish_reason;
      cv.notify_all();
    };
    job->on_error = [&, i](int st, const std::string& m) {
      std::lock_guard<std::mutex> l(mu);
      threads.insert(std::this_thread::get_id());
      if (seen[i].final) seen[i].after_final = true;
      seen[i].error = m;
      seen[i].status = st;
      seen[i].final = true;
      cv.notify_all();
    };
    svc.submit(job);
  }
  {
    // Every valid job has produced something, and the short ones and the refused one are done.
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(120), [&] {
      if (first_outputs < n) return false;
      for (size_t i = 0; i <= n; i += 2) if (!seen[i].final) return false;
      return true;
    }));
  }
  svc.stop();
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(threads.size(), 1u);
  EXPECT_EQ(threads.count(std::this_thread::get_id()), 0u);
  for (size_t i = 0; i <= n; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(seen[i].final);
    EXPECT_FALSE(seen[i].disorder);
    EXPECT_FALSE(seen[i].after_final);
    if (i == n) {
      EXPECT_NE(seen[i].error.find("empty"), std::string::npos) << seen[i].error;
      EXPECT_EQ(seen[i].status, 400);  // refused: the request's own fault
    } else {
      EXPECT_TRUE(seen[i].error.empty()) << seen[i].error;
      if (i % 2 == 0) {
        EXPECT_EQ(seen[i].tokens, 3u);
        EXPECT_EQ(seen[i].reason, "length");
      } else {  // aborted by stop() (or, on a very slow machine, done before it)
        EXPECT_TRUE(seen[i].reason == "abort" || (seen[i].reason == "length" && seen[i].tokens == 300u)) << seen[i].reason;
      }
    }
  }
}

// Asynchronous scheduling in the scheduler alone: a sequence whose sampling step is in flight gets its
// next decode planned with a pending token naming its row in that step; not a third step; not when
// the pending token is its last; and a block is offered to the prefix cache only once its tokens are
// known.
TEST(Scheduler, AsyncSchedulingPlansDecodesAhead) {
  SchedulerConfig c;
  c.max_num_batched_tokens = 64;
  c.max_model_len = 64;
  c.block_size = 4;
  c.num_blocks = 100;
  c.async_scheduling = true;
  Scheduler sched(c);
  auto seq = [](uint64_t id, std::vector<int32_t> prompt, int max_tokens) {
    auto s = std::make_unique<Sequence>();
    s->id = id;
    s->tokens = prompt;
    s->prompt_len = static_cast<int32_t>(prompt.size());
    s->params.max_tokens = max_tokens;
    return s;
  };
  sched.add(seq(1, {100, 101, 102}, 50));
  sched.add(seq(2, {200, 201}, 3));
  StepPlan p1 = sched.schedule();
  ASSERT_EQ(p1.seqs.size(), 2u);
  StepPlan p2 = sched.schedule();  // nothing collected yet
  ASSERT_EQ(p2.seqs.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const SeqStep& st = p2.seqs[static_cast<size_t>(i)];
    EXPECT_EQ(st.seq_id, static_cast<uint64_t>(i + 1));
    EXPECT_EQ(st.tokens, std::vector<int32_t>{pending_token(i)});  // row i of p1's sampled tokens
    EXPECT_EQ(st.num_computed, i == 0 ? 3 : 2);
    EXPECT_TRUE(st.sample);
  }
  EXPECT_EQ(p2.seqs[0].block_table.size(), 1u);  // position 3 is still in block 0
  EXPECT_TRUE(sched.schedule().seqs.empty());     // two steps in flight each: nothing more
  // Sequence 1's block 0 now holds positions 0-3, the last one's token unknown: no prefix hit.
  sched.add(seq(3, {100, 101, 102, 50, 9}, 5));
  StepPlan p3 = sched.schedule();
  ASSERT_EQ(p3.seqs.size(), 1u);
  EXPECT_EQ(p3.seqs[0].num_computed, 0);
  sched.on_token(sampled_token(1, 50));  // p1's tokens
  sched.on_token(sampled_token(2, 60));
  sched.on_token(sampled_token(3, 70));  // p3's
  // Now block 0 is known and offered: the same prompt again starts from it.
  sched.add(seq(4, {100, 101, 102, 50, 9}, 5));
  StepPlan p4 = sched.schedule();
  std::map<uint64_t, const SeqStep*> by_id;
  for (const auto& st : p4.seqs) by_id[st.seq_id] = &st;
  ASSERT_EQ(by_id.size(), 4u);
  EXPECT_EQ(by_id[1]->tokens, std::vector<int32_t>{pending_token(0)});  // its row in p2
  EXPECT_EQ(by_id[2]->tokens, std::vector<int32_t>{pending_token(1)});  // its third token, its last: still planned
  EXPECT_EQ(by_id[3]->tokens, std::vector<int32_t>{70});               // nothing in flight: the known token
  EXPECT_EQ(by_id[4]->num_computed, 4);
  sched.on_token(sampled_token(1, 51));  // p2's tokens
  sched.on_token(sampled_token(2, 61));
  // Sequence 2's token in flight (p4) is its third and last: no decode planned behind it.
  StepPlan p5 = sched.schedule();
  for (const auto& st : p5.seqs) EXPECT_NE(st.seq_id, 2u);
}

// The priority policy (vLLM's scheduling_policy priority) in the scheduler alone, each case beside
// first come, first served: waiting requests are admitted by (priority, arrival); the sequence
// preempted for blocks is the running one of the highest (priority, arrival), not the latest arrival;
// a waiting request goes ahead of swapped-out sequences of a higher value, and not of lower ones.
TEST(Scheduler, PriorityPolicyOrdersAdmissionPreemptionAndSwappedSequences) {
  auto seq = [](uint64_t id, int n, int priority) {
    auto s = std::make_unique<Sequence>();
    s->id = id;
    for (int i = 0; i < n; ++i) s->tokens.push_back(static_cast<int32_t>(100 * id + i));
    s->prompt_len = n;
    s->params.max_tokens = 50;
    s->params.priority = priority;
    return s;
  };
  auto ids = [](const StepPlan& p) {
    std::vector<uint64_t> v;
    for (const auto& st : p.seqs) v.push_back(st.seq_id);
    return v;
  };
  for (bool priority : {false, true}) {
    SCOPED_TRACE(priority ? "priority" : "fcfs");
    auto config = [priority](int max_num_seqs, int64_t blocks, int64_t host_blocks) {
      SchedulerConfig c;
      c.max_num_seqs = max_num_seqs;
      c.block_size = 4;
      c.num_blocks = blocks;
      c.num_host_blocks = host_blocks;
      c.priority = priority;
      return c;
    };
    {  // Admission, one sequence at a time.
      Scheduler sched(config(1, 100, 0));
      const int prio[] = {5, 0, 5, -1, 2};
      for (uint64_t id = 1; id <= 5; ++id) sched.add(seq(id, 3, prio[id - 1]));
      std::vector<uint64_t> order;
      for (int i = 0; i < 5; ++i) {
        StepPlan p = sched.schedule();
        ASSERT_EQ(p.seqs.size(), 1u);
        order.push_back(p.seqs[0].seq_id);
        sched.finish(p.seqs[0].seq_id);
      }
      EXPECT_EQ(order, priority ? std::vector<uint64_t>({4, 2, 5, 1, 3}) : std::vector<uint64_t>({1, 2, 3, 4, 5}));
    }
    {  // Preemption for blocks: 6 blocks of 4, three 8-token prompts that each need a third block.
      Scheduler sched(config(256, 6, 0));
      sched.add(seq(1, 8, 2));
      sched.add(seq(2, 8, 0));
      sched.add(seq(3, 8, 1));
      ASSERT_EQ(sched.schedule().seqs.size(), 3u);
      for (uint64_t id = 1; id <= 3; ++id) sched.on_token(sampled_token(id, 7));
      StepPlan p = sched.schedule();
      EXPECT_EQ(sched.stats().preempted_recompute, 1);
      // First come, first served: the latest arrival (3) goes; by priority, the highest value (1).
      EXPECT_EQ(ids(p), priority ? std::vector<uint64_t>({2, 3}) : std::vector<uint64_t>({1, 2}));
      const uint64_t victim = priority ? 1 : 3;
      EXPECT_EQ(sched.find(victim)->state, Sequence::State::Waiting);
      EXPECT_EQ(sched.find(victim)->num_computed, 0);
    }
    {  // Swapped-out sequences and waiting requests: 8 blocks of 4 and swap space.
      Scheduler sched(config(256, 8, 16));
      sched.add(seq(1, 8, 0));
      sched.add(seq(2, 8, 1));
      sched.add(seq(3, 12, 2));
      ASSERT_EQ(sched.schedule().seqs.size(), 3u);  // 7 of 8 blocks
      for (uint64_t id = 1; id <= 3; ++id) sched.on_token(sampled_token(id, 7));
      StepPlan p = sched.schedule();  // 1 takes the free block, 2 swaps 3 out for its own
      EXPECT_EQ(ids(p), std::vector<uint64_t>({1, 2}));
      EXPECT_EQ(p.swap_out.size(), 3u);
      EXPECT_EQ(sched.num_swapped(), 1u);
      sched.on_token(sampled_token(1, 7));
      sched.on_token(sampled_token(2, 7));
      // Two blocks free: too few for 3 to come back (4). Requests of priority 0 and 3 arrive.
      sched.add(seq(4, 4, 0));
      sched.add(seq(5, 4, 3));
      p = sched.schedule();
      EXPECT_TRUE(p.swap_in.empty());
      // By priority 4 comes before 3 and is admitted; 5 comes after 3 and waits. First come, first
      // served admits nothing while a sequence is swapped out.
      EXPECT_EQ(ids(p), priority ? std::vector<uint64_t>({1, 2, 4}) : std::vector<uint64_t>({1, 2}));
      EXPECT_EQ(sched.num_waiting(), priority ? 1u : 2u);
    }
  }
}

// The scheduler alone: a sequence with prompt_logprobs gets, with each chunk, the prompt tokens its
// tokens predict (across chunk boundaries; none for the prompt's last token, which samples), and it is
// never served from the prefix cache (its rows are wanted) while a plain one is.
TEST(Scheduler, PromptLogprobsTargetsAndNoPrefixCache) {
  Scheduler sched(small_scheduler());
  auto seq = [](uint64_t id, int n, int prompt_logprobs) {
    auto s = prompt_sequence(id, n, 100);
    s->params.max_tokens = 50;
    s->params.prompt_logprobs = prompt_logprobs;
    return s;
  };
  auto token_for = [](uint64_t id) { return sampled_token(id, 7); };
  sched.add(seq(1, 8, -1));
  StepPlan p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_TRUE(p.seqs[0].prompt_targets.empty());
  sched.on_token(token_for(1));
  // A 20-token prompt in chunks of 11 and 9 (the decode takes one token of the 12 a step).
  sched.add(seq(3, 20, 1));
  int32_t fed = 0;
  for (int32_t want : {11, 9}) {
    p = sched.schedule();
    ASSERT_EQ(p.seqs.size(), 2u);
    const SeqStep& st = p.seqs[1];
    ASSERT_EQ(st.seq_id, 3u);
    EXPECT_EQ(st.num_computed, fed);
    ASSERT_EQ(st.tokens.size(), static_cast<size_t>(want));
    const int32_t n = static_cast<int32_t>(st.tokens.size());
    const int32_t targets = std::min(fed + n, 19) - fed;  // the last prompt token predicts nothing
    ASSERT_EQ(st.prompt_targets.size(), static_cast<size_t>(targets));
    for (int32_t i = 0; i < targets; ++i) EXPECT_EQ(st.prompt_targets[i], 100 + fed + i + 1);
    EXPECT_EQ(st.sample, fed + n == 20);
    fed += n;
    sched.on_token(token_for(1));
    if (st.sample) sched.on_token(token_for(3));
  }
  EXPECT_EQ(fed, 20);
  // Its decode steps carry no targets.
  p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_TRUE(p.seqs[1].prompt_targets.empty());
  sched.on_token(token_for(1));
  sched.on_token(token_for(3));
  // The same 8-token prompt as sequence 1 (its blocks registered): a plain sequence starts from the
  // cache, one with prompt_logprobs from position 0.
  sched.finish(3);
  sched.add(seq(4, 8, -1));
  p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[1].num_computed, 4);  // one whole block of 4 from the cache (the last token is recomputed)
  sched.on_token(token_for(1));
  sched.on_token(token_for(4));
  sched.add(seq(5, 8, 0));
  p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 3u);
  EXPECT_EQ(p.seqs[2].num_computed, 0);
  EXPECT_EQ(p.seqs[2].tokens.size(), 8u);
  EXPECT_EQ(p.seqs[2].prompt_targets.size(), 7u);
}

// vLLM's long_prefill_token_threshold: a prompt goes at most that many tokens a step (with chunked
// prefill), leaving the rest of the step's budget to others: a 12-token prompt in chunks of 5, 5 and 2
// beside a second prompt admitted in the first step; without chunked prefill, no cap.
TEST(Scheduler, LongPrefillTokenThresholdCapsEachPromptsChunk) {
  SchedulerConfig cfg = small_scheduler();
  cfg.long_prefill_token_threshold = 5;
  Scheduler sched(cfg);
  auto seq = [](uint64_t id, int n) {
    auto s = prompt_sequence(id, n, 100);
    s->params.max_tokens = 20;
    return s;
  };
  sched.add(seq(1, 12));
  sched.add(seq(2, 4));
  std::vector<std::vector<size_t>> chunks;
  for (int step = 0; step < 3; ++step) {
    const StepPlan p = sched.schedule();
    std::vector<size_t> sizes;
    for (const auto& st : p.seqs) sizes.push_back(st.tokens.size());
    chunks.push_back(sizes);
    for (const auto& st : p.seqs)
      if (st.sample) sched.on_token(sampled_token(st.seq_id, 7));
  }
  EXPECT_EQ(chunks, (std::vector<std::vector<size_t>>{{5, 4}, {5, 1}, {2, 1}}));
  SchedulerConfig whole = small_scheduler();
  whole.long_prefill_token_threshold = 5;
  whole.chunked_prefill = false;
  Scheduler plain(whole);
  plain.add(seq(3, 12));
  const StepPlan p = plain.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].tokens.size(), 12u);
}

// A sliding window in every layer: the blocks wholly before a step's window (of its first query, or of
// the step in flight before a decode planned ahead) go back to the cache, the block table keeps every
// position of the step's windows on the block first given for it and fills the gaps with a held block; a
// sequence holds at most peak_blocks, so one longer than the whole cache fits; and with a cache of just
// that, sequences that preempt each other (swapped out mid-prompt, or recomputed) all finish.
TEST(Scheduler, SlidingWindowGivesBackTheBlocksBeforeTheWindow) {
  for (bool async : {false, true}) {
    SCOPED_TRACE(async ? "async scheduling" : "in turn");
    SchedulerConfig cfg = small_scheduler();  // blocks of 4, 12 tokens a step, 200 blocks
    cfg.sliding_window = 10;
    cfg.async_scheduling = async;
    Scheduler sched(cfg);
    auto s = prompt_sequence(1, 30, 100);
    s->params.max_tokens = 40;
    sched.add(std::move(s));
    std::map<int64_t, int32_t> first_block;  // block index -> the block id first given for it
    std::vector<int32_t> pending;            // sampled rows of the step in flight (async)
    int steps = 0, given_back = 0;
    for (; sched.has_unfinished() && steps < 200; ++steps) {
      const StepPlan p = sched.schedule();
      if (p.seqs.empty()) {  // (async: both steps in flight) collect the oldest
        ASSERT_FALSE(pending.empty());
      } else {
        const SeqStep& st = p.seqs.at(0);
        const int64_t in_flight_before = async && !pending.empty() ? 1 : 0;
        const int64_t first = std::max<int64_t>(0, st.num_computed - in_flight_before - cfg.sliding_window + 1);
        const int64_t end = st.num_computed + static_cast<int64_t>(st.tokens.size());
        ASSERT_EQ(static_cast<int64_t>(st.block_table.size()), (end + 3) / 4);
        for (int32_t b : st.block_table) ASSERT_TRUE(b >= 0 && b < cfg.num_blocks) << b;
        for (int64_t pos = first; pos < end; ++pos) {
          const int64_t i = pos / 4;
          auto [it, fresh] = first_block.emplace(i, st.block_table[static_cast<size_t>(i)]);
          EXPECT_EQ(st.block_table[static_cast<size_t>(i)], it->second) << "position " << pos;
          EXPECT_GT(sched.blocks().refcount(it->second), 0) << "position " << pos;
        }
        const Sequence* q = sched.find(1);
        given_back = q->window_freed;
        EXPECT_EQ(q->window_freed, std::max<int64_t>(0, first / 4));
        EXPECT_LE(sched.blocks().num_used(), sched.peak_blocks(70));
        if (st.sample) pending.push_back(1);
      }
      if (!pending.empty() && (!async || p.seqs.empty() || pending.size() == 2)) {
        sched.on_token(sampled_token(1, 7));
        pending.erase(pending.begin());
        if (sched.find(1)->output_len() >= 40) sched.finish(1);
      }
    }
    EXPECT_FALSE(sched.has_unfinished());
    EXPECT_GE(given_back, 14);  // 69 positions, a window of 10: blocks 0-13 given back by the last decode
    EXPECT_EQ(sched.blocks().num_used(), 0);
  }

  SchedulerConfig cfg = small_scheduler();
  cfg.sliding_window = 10;
  cfg.num_blocks = 7;  // (10 + 12 - 2) / 4 + 2 = 7 blocks: a window's and a step's
  Scheduler fits(cfg);
  EXPECT_EQ(fits.peak_blocks(128), 7);
  EXPECT_TRUE(fits.fits(128));
  cfg.sliding_window = 0;
  EXPECT_FALSE(Scheduler(cfg).fits(128));
  for (int64_t host : {100, 0}) {  // swapped out, or recomputed
    SCOPED_TRACE(host ? "swap" : "recompute");
    cfg.sliding_window = 10;
    cfg.num_host_blocks = host;
    Scheduler sched(cfg);
    for (uint64_t id = 1; id <= 3; ++id) {  // (short prompts: admitted at once, then growing past the cache)
      auto s = prompt_sequence(id, id == 3 ? 90 : 4, static_cast<int32_t>(100 * id));
      s->params.max_tokens = 30;
      sched.add(std::move(s));
    }
    int steps = 0, empty = 0;
    for (; sched.has_unfinished() && steps < 2000; ++steps) {
      const StepPlan p = sched.schedule();
      empty += p.seqs.empty();
      ASSERT_LE(sched.blocks().num_used(), 7);
      for (const auto& st : p.seqs) {
        if (!st.sample) continue;
        Sequence* q = sched.on_token(sampled_token(st.seq_id, 7));
        if (q->output_len() >= 30) sched.finish(st.seq_id);
      }
    }
    EXPECT_FALSE(sched.has_unfinished()) << steps << " steps";
    EXPECT_EQ(empty, 0);
    EXPECT_GT(sched.stats().preempted_swap + sched.stats().preempted_recompute, 0);
    EXPECT_EQ(sched.blocks().num_used(), 0);
  }
}

// LoRA: each step entry carries its sequence's adapter slot; with max_loras 1 a waiting sequence of a second
// adapter waits (while base-model and same-adapter ones behind it are admitted) until the first adapter's
// sequences are gone; and the same prompt under another adapter (or none) finds none of its blocks cached.
TEST(Scheduler, MaxLorasAndPrefixCacheByAdapter) {
  SchedulerConfig cfg = small_scheduler();
  cfg.max_num_batched_tokens = 64;
  cfg.max_loras = 1;
  Scheduler sched(cfg);
  auto seq = [](uint64_t id, int32_t lora) {
    auto s = prompt_sequence(id, 8, 100);
    s->params.max_tokens = 50;
    s->params.lora = lora;
    return s;
  };
  sched.add(seq(1, 1));
  sched.add(seq(2, 2));
  sched.add(seq(3, 0));
  sched.add(seq(4, 1));
  StepPlan p = sched.schedule();
  std::vector<std::pair<uint64_t, int32_t>> got;
  for (const SeqStep& s : p.seqs) got.emplace_back(s.seq_id, s.lora);
  EXPECT_EQ(got, (std::vector<std::pair<uint64_t, int32_t>>{{1, 1}, {3, 0}, {4, 1}}));
  EXPECT_EQ(sched.running_loras(), std::vector<int32_t>{1});  // (what /metrics' lora_requests_info names)
  EXPECT_EQ(sched.waiting_loras(), std::vector<int32_t>{2});
  for (uint64_t id : {1, 3, 4}) sched.on_token(sampled_token(id, 7));
  // (sequence 4 has sequence 1's prompt and adapter: its first block came from the cache)
  EXPECT_EQ(p.seqs[2].num_computed, 4);
  p = sched.schedule();
  EXPECT_EQ(p.seqs.size(), 3u);  // still no sequence 2
  for (uint64_t id : {1, 3, 4}) sched.on_token(sampled_token(id, 7));
  sched.finish(1);
  p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);  // sequence 4 keeps adapter 1 running: still no sequence 2
  EXPECT_EQ(p.seqs[1].seq_id, 4u);
  for (uint64_t id : {3, 4}) sched.on_token(sampled_token(id, 7));
  sched.finish(4);
  p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[1].seq_id, 2u);
  EXPECT_EQ(p.seqs[1].lora, 2);
  EXPECT_EQ(p.seqs[1].num_computed, 0);  // adapter 1's and the base model's blocks of this prompt are not its
  EXPECT_EQ(p.seqs[0].lora, 0);
}

// A pooling sequence samples nothing: its chunks carry the rows its pooling wants (MEAN every row, LAST
// the prompt's last, CLS its first), the last chunk says the prompt is done, and it is not planned again
// while its vector is on the way; MEAN and CLS read no prefix cache (every row is wanted), LAST does.
TEST(Scheduler, PoolingRowsAndTheirPrefixCache) {
  Scheduler sched(small_scheduler());
  auto seq = [](uint64_t id, int n, Pooling pooling, int32_t base) {
    auto s = prompt_sequence(id, n, base);
    s->params.pooling = pooling;
    return s;
  };
  for (Pooling pooling : {Pooling::Mean, Pooling::Last, Pooling::Cls}) {
    const uint64_t id = 10 + static_cast<uint64_t>(pooling);
    SCOPED_TRACE(pooling_name(pooling));
    sched.add(seq(id, 20, pooling, 1000 * static_cast<int32_t>(id)));  // (prompts of their own: no cache hits)
    int32_t fed = 0;
    for (int32_t want : {12, 8}) {
      StepPlan p = sched.schedule();
      ASSERT_EQ(p.seqs.size(), 1u);
      const SeqStep& st = p.seqs[0];
      ASSERT_EQ(st.tokens.size(), static_cast<size_t>(want));
      EXPECT_FALSE(st.sample);
      EXPECT_EQ(st.pool_done, fed + want == 20);
      const int32_t from = pooling == Pooling::Last ? want - 1 : 0;
      const int32_t count = pooling == Pooling::Mean ? want : pooling == Pooling::Cls ? (fed == 0) : st.pool_done;
      EXPECT_EQ(st.pool_count, count);
      if (count) EXPECT_EQ(st.pool_from, from);
      const StepPlan q = StepPlan::deserialize(p.serialize());
      EXPECT_EQ(q.seqs[0].pool_from, st.pool_from);
      EXPECT_EQ(q.seqs[0].pool_count, st.pool_count);
      EXPECT_EQ(q.seqs[0].pool_done, st.pool_done);
      fed += want;
    }
    EXPECT_TRUE(sched.schedule().seqs.empty());  // its vector is on the way: nothing to plan
    sched.finish(id);
  }
  // A prompt seen before: LAST starts from the cached blocks, MEAN from position 0.
  const int32_t seen = 1000 * (10 + static_cast<int32_t>(Pooling::Mean));
  sched.add(seq(20, 20, Pooling::Last, seen));
  StepPlan p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].num_computed, 16);
  sched.finish(20);
  sched.add(seq(21, 20, Pooling::Mean, seen));
  p = sched.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].num_computed, 0);
  // Rows outside the step's tokens are refused.
  p.seqs[0].pool_from = 10, p.seqs[0].pool_count = 5;
  EXPECT_THROW(StepPlan::deserialize(p.serialize()), Error);
}

// The step plan carries prompt_logprobs and a guided JSON schema (in the parameters) and each chunk's
// prompt targets; a message with more targets than tokens is refused.
TEST(StepPlan, PromptTargetsRoundTrip) {
  StepPlan p;
  SeqStep s;
  s.seq_id = 3;
  s.tokens = {5, 6, 7};
  s.block_table = {0};
  s.start = std::make_shared<SeqStart>();
  s.start->prompt_len = 9;
  s.start->params.prompt_logprobs = 4;
  s.start->params.guided = "json_schema";
  s.start->params.guided_schema = R"({"properties": {"b": {}, "a": {}}})";
  s.start->params.guided_compact = true;
  s.start->params.guided_after_think = 2;
  s.start->params.logprobs_mode = LogprobsMode::ProcessedLogits;
  s.prompt_targets = {6, 7, 8};
  p.seqs.push_back(s);
  const StepPlan q = StepPlan::deserialize(p.serialize());
  ASSERT_EQ(q.seqs.size(), 1u);
  ASSERT_TRUE(q.seqs[0].start);
  EXPECT_EQ(q.seqs[0].start->prompt_len, 9);
  EXPECT_EQ(q.seqs[0].start->params.prompt_logprobs, 4);
  EXPECT_EQ(q.seqs[0].start->params.guided, "json_schema");
  EXPECT_EQ(q.seqs[0].start->params.guided_schema, s.start->params.guided_schema);  // as sent: the properties' order kept
  EXPECT_TRUE(q.seqs[0].start->params.guided_compact);
  EXPECT_EQ(q.seqs[0].start->params.guided_after_think, 2);
  EXPECT_EQ(q.seqs[0].start->params.logprobs_mode, LogprobsMode::ProcessedLogits);
  EXPECT_EQ(q.seqs[0].prompt_targets, s.prompt_targets);
  p.seqs[0].prompt_targets.push_back(9);
  EXPECT_THROW(StepPlan::deserialize(p.serialize()), Error);
}

// Speculative decoding: a decode feeds n-gram drafts after its token (within max_tokens, and only in
// free blocks: drafts never preempt); the tokens handed back are the accepted drafts and one more, and
// the sequence's computed positions end after the last accepted one.
TEST(Scheduler, SpeculativeDecodingPlansDraftsAndKeepsWhatIsAccepted) {
  SchedulerConfig c = small_scheduler();
  c.spec.num_speculative_tokens = 3;
  c.spec.prompt_lookup_min = 1;
  c.spec.prompt_lookup_max = 2;
  Scheduler sch(c);
  auto a = prompt_sequence(1, 6, 10);  // 10 .. 15
  a->params.max_tokens = 20;
  auto b = prompt_sequence(2, 3, 40);  // 40 41 42
  b->params.max_tokens = 3;
  sch.add(std::move(a));
  sch.add(std::move(b));
  StepPlan p = sch.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].num_draft, 0);  // (prompts: no drafts)
  sch.on_token(sampled_token(1, 12));  // "12" recurs: 13 14 15 followed it
  sch.on_token(sampled_token(2, 40));  // "40" recurs: 41 42; max_tokens 3 leaves room for one draft
  p = sch.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].tokens, (std::vector<int32_t>{12, 13, 14, 15}));
  EXPECT_EQ(p.seqs[0].num_draft, 3);
  EXPECT_EQ(p.seqs[0].num_computed, 6);
  EXPECT_GE(p.seqs[0].block_table.size() * 4, 10u);  // positions 6 .. 9
  EXPECT_EQ(p.seqs[1].tokens, (std::vector<int32_t>{40, 41}));
  EXPECT_EQ(p.seqs[1].num_draft, 1);
  EXPECT_EQ(p.num_tokens(), 6);
  // The step drew 13 after 12 (accepted), then 99 where 14 was proposed: two tokens back.
  sch.on_token(sampled_token(1, 13));
  sch.on_token(sampled_token(1, 99));
  // Every draft of sequence 2 accepted: 41, then the token after it.
  sch.on_token(sampled_token(2, 41));
  sch.on_token(sampled_token(2, 7));
  const Sequence* s1 = sch.find(1);
  EXPECT_EQ(s1->tokens, (std::vector<int32_t>{10, 11, 12, 13, 14, 15, 12, 13, 99}));
  EXPECT_EQ(s1->num_computed, 8);  // 10 .. 15, 12, 13: not the rejected 14, 15
  EXPECT_EQ(s1->in_flight, 0);
  EXPECT_EQ(sch.find(2)->num_computed, 5);
  EXPECT_EQ(sch.stats().spec_drafts, 2);
  EXPECT_EQ(sch.stats().spec_draft_tokens, 4);
  EXPECT_EQ(sch.stats().spec_accepted_tokens, 2);
  // "99" never occurred: a plain decode from position 8.
  p = sch.schedule();
  ASSERT_GE(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].tokens, (std::vector<int32_t>{99}));
  EXPECT_EQ(p.seqs[0].num_draft, 0);
  EXPECT_EQ(p.seqs[0].num_computed, 8);

  // Two blocks of 4 hold the 6-token prompt and its next position, not 3 drafts: a plain decode, nothing preempted.
  SchedulerConfig tight = c;
  tight.num_blocks = 2;
  Scheduler t(tight);
  t.add(prompt_sequence(1, 6, 10));
  t.find(1)->params.max_tokens = 20;
  t.schedule();
  t.on_token(sampled_token(1, 12));
  p = t.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].num_draft, 0);
  EXPECT_EQ(t.stats().preempted_swap + t.stats().preempted_recompute, 0);

  // disable_by_batch_size 1: no drafts while two sequences run, drafts again once one is left.
  SchedulerConfig busy = c;
  busy.spec.disable_by_batch_size = 1;
  Scheduler u(busy);
  for (uint64_t id : {1, 2}) {
    u.add(prompt_sequence(id, 6, 10));
    u.find(id)->params.max_tokens = 20;
  }
  u.schedule();
  u.on_token(sampled_token(1, 12));
  u.on_token(sampled_token(2, 12));
  p = u.schedule();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].num_draft + p.seqs[1].num_draft, 0);
  u.on_token(sampled_token(1, 13));
  u.on_token(sampled_token(2, 13));
  u.finish(2);
  p = u.schedule();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].tokens, (std::vector<int32_t>{13, 14, 15, 12}));  // "12 13" recurred: 14 15 12 followed it
  EXPECT_EQ(p.seqs[0].num_draft, 3);
}

TEST(StepPlan, DraftsRoundTrip) {
  StepPlan p;
  SeqStep s;
  s.seq_id = 3;
  s.num_computed = 4;
  s.tokens = {5, 6, 7};
  s.block_table = {0, 1};
  s.sample = true;
  s.num_draft = 2;
  p.seqs.push_back(s);
  const StepPlan q = StepPlan::deserialize(p.serialize());
  EXPECT_EQ(q.seqs[0].num_draft, 2);
  EXPECT_EQ(q.seqs[0].sampled_rows(), 3);
  // Each of the step's three tokens (positions 4 .. 6) has a sampled row.
  EXPECT_EQ(step_meta_from_plan(q, 4).logits_indices, (std::vector<int32_t>{0, 1, 2}));
  p.seqs[0].num_draft = 3;  // no token before the drafts
  EXPECT_THROW(StepPlan::deserialize(p.serialize()), Error);
  p.seqs[0].num_draft = 1;
  p.seqs[0].sample = false;  // drafts of a step that samples nothing
  EXPECT_THROW(StepPlan::deserialize(p.serialize()), Error);
}

// Runtime LoRA loads travel with a step: slot, name and path each; a load into slot 0 is refused.
TEST(StepPlan, LoraLoadsRoundTrip) {
  StepPlan p;
  p.lora_loads.push_back({2, "terse", "/adapters/terse"});
  p.lora_loads.push_back({1, "sql", "/a b/sql"});
  const StepPlan q = StepPlan::deserialize(p.serialize());
  ASSERT_EQ(q.lora_loads.size(), 2u);
  EXPECT_EQ(q.lora_loads[0].slot, 2);
  EXPECT_EQ(q.lora_loads[0].name, "terse");
  EXPECT_EQ(q.lora_loads[1].path, "/a b/sql");
  p.lora_loads[1].slot = 0;
  EXPECT_THROW(StepPlan::deserialize(p.serialize()), Error);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  MPI_Finalize();
  return rc;
}

// The executor of asynchronous scheduling: `enter` runs on its own thread before the first step (the
// OpenMP thread count is set there), steps run in submission order on that thread, next_plan() shows
// the plan that runs next (a pointer later submissions leave in place), and after a failed step the
// later ones throw its error and next_plan() shows none.
TEST(StepExecutor, EntersItsThreadFirstRunsInOrderAndStopsAfterAFailure) {
  std::mutex mu;
  std::vector<std::string> events;
  std::thread::id entered, ran;
  std::vector<uint64_t> next_seen;
  StepExecutor* self = nullptr;
  std::mutex gate;
  gate.lock();  // holds the first step until everything is submitted
  StepExecutor ex(
      [&](StepPlan& p) {
        if (p.step_id == 1) {
          std::lock_guard<std::mutex> hold(gate);
          const StepPlan* next = self->next_plan();
          next_seen.push_back(next ? next->step_id : 0);
        }
        std::lock_guard<std::mutex> lock(mu);
        events.push_back(cat("run ", p.step_id));
        ran = std::this_thread::get_id();
        if (p.step_id == 3) throw Error("step 3 failed");
        SampledToken t;
        t.seq_id = p.step_id;
        t.token = static_cast<int32_t>(10 * p.step_id);
        return std::vector<SampledToken>{t};
      },
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        events.push_back("enter");
        entered = std::this_thread::get_id();
      });
  self = &ex;
  for (uint64_t id = 1; id <= 5; ++id) {
    StepPlan p;
    p.step_id = id;
    ex.submit(std::move(p));
  }
  gate.unlock();
  EXPECT_EQ(ex.collect().at(0).token, 10);
  EXPECT_EQ(ex.collect().at(0).token, 20);
  for (int k = 0; k < 3; ++k) {
    try {
      ex.collect();
      ADD_FAILURE() << "step " << 3 + k << " returned tokens after step 3 failed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("step 3 failed"), std::string::npos);
    }
  }
  EXPECT_EQ(ex.next_plan(), nullptr);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(events, (std::vector<std::string>{"enter", "run 1", "run 2", "run 3"}));
  EXPECT_EQ(entered, ran);
  EXPECT_NE(entered, std::this_thread::get_id());
  EXPECT_EQ(next_seen, std::vector<uint64_t>{2});
}

// vLLM's request-level metrics come from each finished output's timeline: only the finished one carries it,
// its phases add up (prefill + decode = inference), and its sizes are the outputs' (n 2: all the tokens and
// the longest sequence's); a request aborted before it ran has only its queued time.
TEST(Engine, FinishedOutputsCarryTheRequestsTimeline) {
  Fixture f;
  Engine e(*f.runner, f.tok.get(), 1);
  SamplingParams two = greedy(6);
  two.n = 2, two.temperature = 1.0, two.seed = 3;
  two.output_kind = OutputKind::Delta;
  const uint64_t a = e.add_request({9707, 11, 1879}, two);
  const uint64_t b = e.add_request({9707, 11}, greedy(3));
  std::map<uint64_t, RequestOutput> done;
  int unfinished_with_stats = 0;
  for (int guard = 0; e.has_unfinished() && guard < 1000; ++guard)
    for (auto& r : e.step()) {
      if (!r.finished && r.stats) ++unfinished_with_stats;
      if (r.finished) done[r.request_id] = r;
    }
  EXPECT_EQ(unfinished_with_stats, 0);
  ASSERT_TRUE(done[a].stats && done[b].stats);
  for (uint64_t id : {a, b}) {
    const RequestStats& s = *done[id].stats;
    EXPECT_GE(s.queued, 0);
    EXPECT_GT(s.prefill, 0);
    EXPECT_GT(s.decode, 0);
    EXPECT_NEAR(s.prefill + s.decode, s.inference, 1e-9);
  }
  EXPECT_EQ(done[a].stats->generation_tokens, 12);  // 6 + 6 (ignore_eos)
  EXPECT_EQ(done[a].stats->max_sequence_tokens, 6);
  EXPECT_EQ(done[b].stats->generation_tokens, 3);
  EXPECT_GT(e.last_step_tokens(), 0);

  const uint64_t c = e.add_request({9707}, greedy(4));
  e.abort(c);
  done = run_all(e);
  ASSERT_TRUE(done.count(c) && done[c].stats);
  EXPECT_EQ(done[c].outputs[0].finish_reason, "abort");
  EXPECT_EQ(done[c].stats->generation_tokens, 0);
  EXPECT_EQ(done[c].stats->inference, 0);
  EXPECT_GE(done[c].stats->queued, 0);
}
