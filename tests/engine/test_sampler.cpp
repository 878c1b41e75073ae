// The vocabulary-parallel sampler against exact probabilities computed here, under MPI with the
// vocabulary split over every rank of the world (run with mpirun -np 1, 2 and 3).
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "backend/cpu_backend.h"
#include "dist/mpi_comm.h"
#include "dist/topology.h"
#include "engine/sampler.h"

using namespace llmserve;

namespace {

constexpr int64_t V = 50;

std::vector<float> fixed_logits() {
  std::mt19937 g(3);
  std::normal_distribution<float> d(0.f, 2.f);
  std::vector<float> l(V);
  for (auto& x : l) x = d(g);
  return l;
}

// The distribution the sampler must draw from, computed directly in double precision.
std::vector<double> expected(std::vector<float> lf, const SamplingParams& p, const std::vector<int32_t>& history,
                             int prompt_len) {
  std::vector<double> l(lf.begin(), lf.end());
  if (!p.allowed_token_ids.empty())
    for (int64_t t = 0; t < V; ++t)
      if (!std::binary_search(p.allowed_token_ids.begin(), p.allowed_token_ids.end(), static_cast<int32_t>(t))) l[t] = -INFINITY;
  for (size_t i = 0; i < p.logit_bias_ids.size(); ++i) l[p.logit_bias_ids[i]] += p.logit_bias[i];  // first, as vLLM
  if (p.repetition_penalty != 1.0) {
    std::vector<bool> seen(V, false);
    for (int32_t t : history) seen[t] = true;
    for (int64_t t = 0; t < V; ++t)
      if (seen[t]) l[t] = l[t] > 0 ? l[t] / p.repetition_penalty : l[t] * p.repetition_penalty;
  }
  std::vector<int> count(V, 0);
  for (size_t i = prompt_len; i < history.size(); ++i) ++count[history[i]];
  for (int64_t t = 0; t < V; ++t)
    if (count[t]) l[t] -= p.presence_penalty + p.frequency_penalty * count[t];
  for (auto& x : l) x /= p.temperature;
  std::vector<bool> keep(V, true);
  std::vector<double> sorted = l;
  std::sort(sorted.rbegin(), sorted.rend());
  if (p.top_k > 0)
    for (int64_t t = 0; t < V; ++t) keep[t] = keep[t] && l[t] >= sorted[p.top_k - 1];
  const double mx = sorted[0];
  if (p.min_p > 0)
    for (int64_t t = 0; t < V; ++t) keep[t] = keep[t] && l[t] >= mx + std::log(p.min_p);
  if (p.top_p < 1) {
    double z = 0;
    for (int64_t t = 0; t < V; ++t)
      if (keep[t]) z += std::exp(l[t] - mx);
    std::vector<double> kept;
    for (int64_t t = 0; t < V; ++t)
      if (keep[t]) kept.push_back(l[t]);
    std::sort(kept.rbegin(), kept.rend());
    double cum = 0, thr = kept.back();
    for (double v : kept) {
      cum += std::exp(v - mx) / z;
      if (cum >= p.top_p) {
        thr = v;
        break;
      }
    }
    for (int64_t t = 0; t < V; ++t) keep[t] = keep[t] && l[t] >= thr;
  }
  std::vector<double> prob(V, 0);
  double z = 0;
  for (int64_t t = 0; t < V; ++t)
    if (keep[t]) z += std::exp(l[t] - mx);
  for (int64_t t = 0; t < V; ++t)
    if (keep[t]) prob[t] = std::exp(l[t] - mx) / z;
  return prob;
}

struct World {
  MpiComm comm{MPI_COMM_WORLD, false};
  Range vocab = shard_range(V, comm.size(), comm.rank());
  int64_t stride = (V + comm.size() - 1) / comm.size();
  // This rank's rows for `n` copies of the full logits row.
  std::vector<float> rows(const std::vector<float>& full, size_t n) const {
    std::vector<float> out(n * stride, 0.f);
    for (size_t i = 0; i < n; ++i)
      std::copy(full.begin() + vocab.begin, full.begin() + vocab.end, out.begin() + static_cast<long>(i * stride));
    return out;
  }
};

StepPlan plan_for(size_t n, const SamplingParams& p, const std::vector<int32_t>& history, int prompt_len, int64_t seed0,
                  uint64_t id0 = 1) {
  StepPlan plan;
  for (size_t i = 0; i < n; ++i) {
    SeqStep s;
    s.seq_id = id0 + i;
    s.num_computed = static_cast<int32_t>(history.size()) - 1;
    s.tokens = {history.back()};
    s.sample = true;
    s.start = std::make_shared<SeqStart>();
    s.start->prompt_len = prompt_len;
    s.start->seed = seed0 + static_cast<int64_t>(i) * 7919;
    s.start->params = p;
    s.start->eos_ids = {3};
    s.start->prefix.assign(history.begin(), history.end() - 1);
    plan.seqs.push_back(s);
  }
  return plan;
}

void check_distribution(const SamplingParams& p, const std::vector<int32_t>& history, int prompt_len) {
  World w;
  const auto logits = fixed_logits();
  const auto want = expected(logits, p, history, prompt_len);
  constexpr size_t N = 4000, ROUNDS = 5;
  std::vector<double> freq(V, 0);
  for (size_t r = 0; r < ROUNDS; ++r) {
    Sampler s(w.comm, V, w.vocab, w.stride);
    StepPlan plan = plan_for(N, p, history, prompt_len, static_cast<int64_t>(r) * 1000003);
    s.observe(plan);
    auto rows = w.rows(logits, N);
    for (const auto& t : s.sample(plan, rows.data())) freq[t.token] += 1.0 / (N * ROUNDS);
  }
  const double n = N * ROUNDS;
  for (int64_t t = 0; t < V; ++t) {
    if (want[t] == 0) {
      EXPECT_EQ(freq[t], 0) << "token " << t << " was filtered out but sampled";
    } else {
      const double tol = 5 * std::sqrt(want[t] * (1 - want[t]) / n) + 1e-3;
      EXPECT_NEAR(freq[t], want[t], tol) << "token " << t;
    }
  }
}

}  // namespace

TEST(Sampler, PlainTemperature) {
  SamplingParams p;
  p.temperature = 0.8;
  check_distribution(p, {1, 2}, 2);
}

TEST(Sampler, TopK) {
  SamplingParams p;
  p.top_k = 5;
  check_distribution(p, {1, 2}, 2);
}

TEST(Sampler, TopP) {
  SamplingParams p;
  p.top_p = 0.7;
  p.temperature = 1.3;
  check_distribution(p, {1, 2}, 2);
}

TEST(Sampler, MinP) {
  SamplingParams p;
  p.min_p = 0.05;
  check_distribution(p, {1, 2}, 2);
}

TEST(Sampler, AllFiltersTogether) {
  SamplingParams p;
  p.top_k = 12;
  p.top_p = 0.9;
  p.min_p = 0.01;
  p.temperature = 0.7;
  check_distribution(p, {1, 2}, 2);
}

namespace {
// The tokens of fixed_logits() from the most likely down, and a history of a 3-token prompt then
// outputs that repeat the two most likely tokens.
std::vector<int> by_likelihood() {
  const auto l = fixed_logits();
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  return order;
}
std::vector<int32_t> repeating_history(const std::vector<int>& order) {
  return {order[5], order[6], order[0], order[0], order[1], order[0]};
}
}  // namespace

TEST(Sampler, Penalties) {
  SamplingParams p;
  p.repetition_penalty = 1.3;
  p.presence_penalty = 0.5;
  p.frequency_penalty = 0.4;
  check_distribution(p, repeating_history(by_likelihood()), 3);
}

// logit_bias: added to the raw logits before the penalties, on tokens that are also penalized (the
// order shows: (l + b) / rep is not l / rep + b), on both sides of a split vocabulary.
TEST(Sampler, LogitBiasBeforePenalties) {
  const std::vector<int> order = by_likelihood();
  SamplingParams p;
  p.repetition_penalty = 1.3;
  p.presence_penalty = 0.5;
  // A penalized token pushed down, a penalized one and an unlikely one pulled up, the lowest token of
  // the vocabulary and the highest (different ranks' shards when it is split).
  std::vector<std::pair<int32_t, float>> bias = {{order[0], -2.5f}, {order[1], 1.5f}, {order[30], 4.f}, {0, 1.f},
                                                 {static_cast<int32_t>(V - 1), 2.f}};
  std::sort(bias.begin(), bias.end());
  for (const auto& [t, b] : bias) p.logit_bias_ids.push_back(t), p.logit_bias.push_back(b);
  check_distribution(p, repeating_history(order), 3);
}

TEST(Sampler, GreedyAndLogprobs) {
  World w;
  const auto logits = fixed_logits();
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 3;
  Sampler s(w.comm, V, w.vocab, w.stride);
  StepPlan plan = plan_for(1, p, {4}, 1, 0);
  s.observe(plan);
  auto rows = w.rows(logits, 1);
  const auto r = s.sample(plan, rows.data());
  const int64_t best = std::max_element(logits.begin(), logits.end()) - logits.begin();
  EXPECT_EQ(r[0].token, best);
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  EXPECT_NEAR(r[0].logprob, logits[best] - std::log(z), 1e-4);
  ASSERT_EQ(r[0].top_ids.size(), 3u);
  EXPECT_EQ(r[0].top_ids[0], best);
  EXPECT_GE(r[0].top_logprobs[0], r[0].top_logprobs[1]);
  EXPECT_GE(r[0].top_logprobs[1], r[0].top_logprobs[2]);
}

// vLLM's logprobs_mode: the chosen token's value and the alternatives from the raw logits or from the
// processed values it is drawn from (penalties, temperature, filters; a greedy row without temperature),
// as log-probabilities or as the values themselves; tokens the filters drop are no alternatives.
TEST(Sampler, LogprobsModes) {
  World w;
  const auto logits = fixed_logits();
  const std::vector<int32_t> history = {5, 11, 11, 20};  // prompt {5}, output 11, 11, 20
  auto run = [&](SamplingParams p) {
    Sampler s(w.comm, V, w.vocab, w.stride);
    StepPlan plan = plan_for(1, p, history, 1, 42);
    s.observe(plan);
    auto rows = w.rows(logits, 1);
    return s.sample(plan, rows.data())[0];
  };
  // The penalized logits (presence 0.5: tokens 11 and 20), over a temperature.
  auto processed_values = [&](double temperature) {
    std::vector<double> l(logits.begin(), logits.end());
    l[11] -= 0.5, l[20] -= 0.5;
    for (auto& x : l) x /= temperature;
    return l;
  };
  auto lse = [](const std::vector<double>& l, const std::vector<double>& keep_prob) {
    double mx = -INFINITY, z = 0;
    for (size_t t = 0; t < l.size(); ++t)
      if (keep_prob.empty() || keep_prob[t] > 0) mx = std::max(mx, l[t]);
    for (size_t t = 0; t < l.size(); ++t)
      if (keep_prob.empty() || keep_prob[t] > 0) z += std::exp(l[t] - mx);
    return mx + std::log(z);
  };
  SamplingParams p;
  p.temperature = 0.7, p.top_k = 4, p.presence_penalty = 0.5, p.logprobs = 6;
  const auto prob = expected(logits, p, history, 1);  // the draw's distribution: 4 tokens kept
  const auto l = processed_values(0.7);
  std::vector<double> raw(logits.begin(), logits.end());
  std::vector<int32_t> by_raw(V), kept;
  std::iota(by_raw.begin(), by_raw.end(), 0);
  std::stable_sort(by_raw.begin(), by_raw.end(), [&](int32_t a, int32_t b) { return raw[a] > raw[b]; });
  for (int32_t t : by_raw)  // (the presence penalty changes no order among the top 4 here: checked below)
    if (prob[t] > 0) kept.push_back(t);
  ASSERT_EQ(kept.size(), 4u);
  for (size_t k = 1; k < kept.size(); ++k) ASSERT_GE(l[kept[k - 1]], l[kept[k]]);

  p.logprobs_mode = LogprobsMode::RawLogprobs;
  const auto rl = run(p);
  const auto token = rl.token;
  ASSERT_GT(prob[token], 0);
  EXPECT_NEAR(rl.logprob, raw[token] - lse(raw, {}), 1e-4);
  ASSERT_EQ(rl.top_ids.size(), 6u);
  for (size_t k = 0; k < 6; ++k) EXPECT_EQ(rl.top_ids[k], by_raw[k]);

  p.logprobs_mode = LogprobsMode::RawLogits;
  const auto rv = run(p);
  EXPECT_EQ(rv.token, token);
  EXPECT_EQ(rv.logprob, logits[token]);
  ASSERT_EQ(rv.top_ids.size(), 6u);
  for (size_t k = 0; k < 6; ++k) EXPECT_EQ(rv.top_logprobs[k], logits[by_raw[k]]) << k;

  p.logprobs_mode = LogprobsMode::ProcessedLogprobs;
  const auto pl = run(p);
  EXPECT_EQ(pl.token, token);
  EXPECT_NEAR(pl.logprob, std::log(prob[token]), 1e-4);
  ASSERT_EQ(pl.top_ids, kept);  // only the 4 the filter keeps, of the 6 asked for
  double sum = 0;
  for (size_t k = 0; k < kept.size(); ++k) {
    EXPECT_NEAR(pl.top_logprobs[k], std::log(prob[kept[k]]), 1e-4);
    sum += std::exp(pl.top_logprobs[k]);
  }
  EXPECT_NEAR(sum, 1.0, 1e-4);

  p.logprobs_mode = LogprobsMode::ProcessedLogits;
  const auto pv = run(p);
  EXPECT_EQ(pv.token, token);
  EXPECT_NEAR(pv.logprob, l[token], 1e-5);
  ASSERT_EQ(pv.top_ids, kept);
  for (size_t k = 0; k < kept.size(); ++k) EXPECT_NEAR(pv.top_logprobs[k], l[kept[k]], 1e-5);

  // Greedy: the penalized logits without a temperature, every token an alternative.
  SamplingParams g;
  g.temperature = 0, g.presence_penalty = 0.5, g.logprobs = 3, g.logprobs_mode = LogprobsMode::ProcessedLogprobs;
  const auto gl = run(g);
  const auto lg = processed_values(1.0);
  const auto best = std::max_element(lg.begin(), lg.end()) - lg.begin();
  EXPECT_EQ(gl.token, best);
  EXPECT_NEAR(gl.logprob, lg[best] - lse(lg, {}), 1e-4);
  EXPECT_EQ(gl.top_ids.size(), 3u);
  // top_k 1 under a temperature: greedy, the chosen token alone survives (log-probability 0).
  SamplingParams k1 = p;
  k1.top_k = 1, k1.temperature = 0.5, k1.logprobs_mode = LogprobsMode::ProcessedLogprobs;
  const auto one = run(k1);
  EXPECT_EQ(one.token, best);
  EXPECT_EQ(one.logprob, 0.f);
  EXPECT_EQ(one.top_ids, std::vector<int32_t>{static_cast<int32_t>(best)});
  k1.logprobs_mode = LogprobsMode::ProcessedLogits;
  EXPECT_NEAR(run(k1).logprob, lg[best] / 0.5, 1e-5);
}

TEST(Sampler, SeededDrawDoesNotDependOnTheBatch) {
  World w;
  const auto logits = fixed_logits();
  SamplingParams p;
  p.temperature = 1.0;
  auto draw = [&](size_t batch) {
    Sampler s(w.comm, V, w.vocab, w.stride);
    // The sequence under test (seed 42) sits last among `batch - 1` others with other seeds.
    StepPlan plan = plan_for(batch, p, {7, 8}, 2, 1000);
    plan.seqs.back().start->seed = 42;
    s.observe(plan);
    auto rows = w.rows(logits, batch);
    return s.sample(plan, rows.data()).back().token;
  };
  const int32_t alone = draw(1);
  EXPECT_EQ(draw(5), alone);
  EXPECT_EQ(draw(33), alone);
}

TEST(Sampler, MinTokensSuppressesEos) {
  World w;
  std::vector<float> logits(V, 0.f);
  logits[3] = 50.f;  // EOS (id 3 in plan_for) dominates
  SamplingParams p;
  p.temperature = 0;
  p.min_tokens = 2;
  Sampler s(w.comm, V, w.vocab, w.stride);
  StepPlan plan = plan_for(1, p, {9}, 1, 0);  // no output yet
  s.observe(plan);
  auto rows = w.rows(logits, 1);
  EXPECT_NE(s.sample(plan, rows.data())[0].token, 3);
}

// allowed_token_ids (vLLM): only the listed tokens can be drawn, in the proportions of their logits
// (after the penalties), on every vocabulary split.
TEST(Sampler, AllowedTokenIds) {
  SamplingParams p;
  p.temperature = 1.5;
  p.presence_penalty = 0.5;
  p.allowed_token_ids = {0, 3, 7, 8, 24, 25, 49};
  check_distribution(p, {7, 8, 9, 8}, 2);
}

// bad_words (vLLM): a sequence's last token is banned where the output so far ends with the tokens
// before it; tokens of the prompt do not count. Greedy over logits where 9 leads, then 8, then 20.
TEST(Sampler, BadWordsBanTheirLastToken) {
  World w;
  std::vector<float> logits(V, 0.f);
  logits[9] = 30.f, logits[8] = 20.f, logits[20] = 10.f;
  auto next = [&](std::vector<std::vector<int32_t>> bad, std::vector<int32_t> history, int prompt_len) {
    SamplingParams p;
    p.temperature = 0;
    p.bad_words_ids = std::move(bad);
    Sampler s(w.comm, V, w.vocab, w.stride);
    StepPlan plan = plan_for(1, p, history, prompt_len, 0);
    s.observe(plan);
    auto rows = w.rows(logits, 1);
    return s.sample(plan, rows.data())[0].token;
  };
  EXPECT_EQ(next({}, {5, 6}, 1), 9);
  EXPECT_EQ(next({{9}}, {5, 6}, 1), 8);                  // one token: always banned
  EXPECT_EQ(next({{9}, {8}}, {5, 6}, 1), 20);
  EXPECT_EQ(next({{6, 9}}, {5, 6}, 1), 8);               // output {6} ends with 6
  EXPECT_EQ(next({{6, 9}}, {5, 6}, 2), 9);               // 6 is the prompt's: not output
  EXPECT_EQ(next({{4, 6, 9}}, {5, 4, 6}, 1), 8);
  EXPECT_EQ(next({{5, 6, 9}}, {5, 4, 6}, 1), 9);         // the output ends with 4, 6, not 5, 6
  EXPECT_EQ(next({{1, 2, 3, 9}}, {5, 6}, 1), 9);         // longer than the output + 1
}

// The backend draw (the fast path: every plan without logprobs, and without filters where the
// vocabulary is split) gives exactly the host sampler's tokens: greedy and seeded, with penalties,
// min_tokens masking and (one rank) top-k / top-p / min-p, on every vocabulary split. Rows with
// penalties see the history {7, 8, 9, 9} (prompt {7, 8}) so every penalty has tokens to act on.
// Penalties over a sequence's whole life: a 40-token prompt (indexed in bulk), decode steps of one
// token (indexed in place), a recomputation (every token fed again after the history was taken back),
// more decode steps. Greedy with strong penalties, so the best token moves as the counts grow; each
// step's token must be the argmax of the logits penalized here from the full history, on the host
// sampler and on the backend draw alike.
TEST(Sampler, PenaltiesFollowTheHistoryAcrossSteps) {
  World w;
  CpuBackend cpu;
  const auto logits = fixed_logits();
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 1.3;
  p.presence_penalty = 0.2;
  p.frequency_penalty = 0.9;
  std::mt19937 g(11);
  std::vector<int32_t> history;
  for (int i = 0; i < 40; ++i) history.push_back(static_cast<int32_t>(g() % V));
  const int prompt_len = 40;
  Sampler host(w.comm, V, w.vocab, w.stride), fast(w.comm, V, w.vocab, w.stride);
  auto best = [&] {  // the argmax of the logits penalized from the whole history
    std::vector<double> l(logits.begin(), logits.end());
    std::vector<int> count(V, 0);
    std::vector<bool> seen(V, false);
    for (size_t i = 0; i < history.size(); ++i) {
      seen[history[i]] = true;
      if (static_cast<int>(i) >= prompt_len) ++count[history[i]];
    }
    for (int64_t t = 0; t < V; ++t) {
      if (seen[t]) l[t] = l[t] > 0 ? l[t] / p.repetition_penalty : l[t] * p.repetition_penalty;
      if (count[t]) l[t] -= p.presence_penalty + p.frequency_penalty * count[t];
    }
    return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  };
  std::set<int32_t> drawn;
  for (int step = 0; step < 40; ++step) {
    StepPlan plan;
    SeqStep s;
    s.seq_id = 1;
    s.sample = true;
    if (step == 0 || step == 20) {  // the prompt; later every token again after a recomputation
      s.num_computed = 0;
      s.tokens = history;
      if (step == 0) {
        s.start = std::make_shared<SeqStart>();
        s.start->prompt_len = prompt_len;
        s.start->params = p;
        s.start->eos_ids = {3};
      }
    } else {
      s.num_computed = static_cast<int32_t>(history.size()) - 1;
      s.tokens = {history.back()};
    }
    plan.seqs.push_back(s);
    host.observe(plan);
    fast.observe(plan);
    auto rows = w.rows(logits, 1);
    Tensor t = cpu.upload(rows.data(), {1, w.stride}, DType::F32);
    const int32_t want = best();
    const auto a = host.sample(plan, rows.data());
    const auto b = fast.sample_on_backend(plan, cpu, t);
    ASSERT_EQ(a[0].token, want) << "host sampler, step " << step;
    ASSERT_EQ(b[0].token, want) << "backend draw, step " << step;
    drawn.insert(want);
    history.push_back(want);
  }
  EXPECT_GT(drawn.size(), 3u);  // the penalties moved the best token around
}

TEST(Sampler, BackendDrawEqualsTheHostSampler) {
  World w;
  CpuBackend cpu;
  std::mt19937 g(5 + w.comm.size());
  std::normal_distribution<float> d(0.f, 2.f);
  const size_t N = 64;
  std::vector<float> full(N * V);
  for (auto& x : full) x = d(g);
  for (size_t i = 0; i < N; ++i) {  // penalized and masked tokens (8, 9; EOS 3 on odd rows) are contenders
    full[i * V + 9] = full[i * V + 8] = 6.f;
    if (i % 2) full[i * V + 3] = 6.f;
  }
  std::vector<SamplingParams> cases;
  for (double temperature : {0.0, 0.7, 1.3}) {
    SamplingParams p;
    p.temperature = temperature;
    cases.push_back(p);
  }
  {
    SamplingParams p;
    p.temperature = 0;
    p.repetition_penalty = 1.5;
    cases.push_back(p);
    p.temperature = 0.9;
    p.presence_penalty = 0.5;
    p.frequency_penalty = 0.3;
    cases.push_back(p);
    p = SamplingParams();
    p.min_tokens = 5;
    p.stop_token_ids = {11};
    cases.push_back(p);
    p = SamplingParams();  // logit_bias on a penalized token and an unlikely one, greedy and drawn
    p.temperature = 0;
    p.repetition_penalty = 1.5;
    p.logit_bias_ids = {9, 20}, p.logit_bias = {-1.f, 7.f};
    cases.push_back(p);
    p.temperature = 0.9;
    cases.push_back(p);
    p = SamplingParams();  // bad_words: 9 alone, and 8 after 9 (the history's output is {9, 9})
    p.temperature = 0;
    p.bad_words_ids = {{9}, {9, 8}, {7, 8}};
    cases.push_back(p);
    p = SamplingParams();  // allowed_token_ids (the penalized 9 among them), greedy and drawn
    p.temperature = 0;
    p.repetition_penalty = 1.5;
    p.allowed_token_ids = {2, 9, 20, 33, 49};
    cases.push_back(p);
    p.temperature = 1.2;
    cases.push_back(p);
  }
  for (int top_k : {0, 4})
    for (double top_p : {1.0, 0.6})
      for (double min_p : {0.0, 0.1}) {
        SamplingParams p;
        p.temperature = 0.8;
        p.top_k = top_k, p.top_p = top_p, p.min_p = min_p;
        if (top_k == 0 && top_p == 1.0 && min_p == 0.0) p.repetition_penalty = 1.2;
        cases.push_back(p);
      }
  for (size_t c = 0; c < cases.size(); ++c) {
    const SamplingParams& p = cases[c];
    StepPlan plan = plan_for(N, p, {7, 8, 9, 9}, 2, 321);
    Sampler host(w.comm, V, w.vocab, w.stride), fast(w.comm, V, w.vocab, w.stride);
    host.observe(plan);
    fast.observe(plan);
    const bool drawable = fast.drawable_on_backend(plan);
    const bool filters = !p.greedy() && (p.top_k > 0 || p.top_p < 1.0 || p.min_p > 0.0);
    ASSERT_EQ(drawable, !filters || w.comm.size() == 1) << "case " << c;
    if (!drawable) continue;
    std::vector<float> rows(N * w.stride, 0.f);
    for (size_t i = 0; i < N; ++i)
      std::copy(full.begin() + static_cast<long>(i * V + w.vocab.begin), full.begin() + static_cast<long>(i * V + w.vocab.end),
                rows.begin() + static_cast<long>(i * w.stride));
    Tensor t = cpu.upload(rows.data(), {static_cast<int64_t>(N), w.stride}, DType::F32);
    const auto a = host.sample(plan, rows.data()), b = fast.sample_on_backend(plan, cpu, t);
    ASSERT_EQ(a.size(), b.size());
    std::set<int32_t> distinct;
    for (size_t i = 0; i < N; ++i) {
      EXPECT_EQ(a[i].token, b[i].token) << "row " << i << " case " << c;
      distinct.insert(a[i].token);
    }
    if (!p.greedy()) {
      EXPECT_GT(distinct.size(), 1u) << "case " << c;  // the draws differ by row: seeds are live
    }
  }
}

TEST(Sampler, BackendDrawUnlessLogprobsOrSplitFilters) {
  World w;
  const bool one = w.comm.size() == 1;
  auto drawable = [&](const SamplingParams& p, std::vector<int32_t> history = {7, 8}) {
    Sampler s(w.comm, V, w.vocab, w.stride);
    StepPlan plan = plan_for(2, p, history, 1, 0);
    s.observe(plan);
    return s.drawable_on_backend(plan);
  };
  SamplingParams p;
  EXPECT_TRUE(drawable(p));
  p.temperature = 0;
  EXPECT_TRUE(drawable(p));
  p.temperature = 0.8;
  p.top_k = 5;
  EXPECT_EQ(drawable(p), one);
  p.top_k = 1;  // greedy
  EXPECT_TRUE(drawable(p));
  p = SamplingParams();
  p.top_p = 0.9;
  EXPECT_EQ(drawable(p), one);
  p = SamplingParams();
  p.min_p = 0.1;
  EXPECT_EQ(drawable(p), one);
  p.temperature = 0;  // greedy: the filters do not apply
  EXPECT_TRUE(drawable(p));
  p = SamplingParams();
  p.repetition_penalty = 1.1;
  EXPECT_TRUE(drawable(p));
  p = SamplingParams();
  p.logprobs = 0;
  EXPECT_FALSE(drawable(p));
  p = SamplingParams();
  p.min_tokens = 3;
  EXPECT_TRUE(drawable(p, {7, 8}));
  p = SamplingParams();
  p.logit_bias_ids = {4}, p.logit_bias = {3.f};
  EXPECT_TRUE(drawable(p));
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int any = rc;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}

// A step mixing rows the backend draws (log-probabilities reduced there as well, from the raw logits
// even where penalties edit a row in place) with rows that need the host sampler (filters when the
// vocabulary is split): sample_step() gives exactly the host sampler's tokens and log-probabilities,
// and the backend rows' penalty edits never reach the host rows' logits.
// With a tensor communicator (as the server passes for its tensor group), the filtered rows of a split
// vocabulary are gathered into whole rows on the backend and drawn there: the same tokens again.
void check_mixed_step(bool gather, size_t edit_budget = size_t{1} << 22) {
  World w;
  CpuBackend cpu;
  std::mt19937 g(11 + w.comm.size());
  std::normal_distribution<float> d(0.f, 2.f);
  std::vector<SamplingParams> kinds(12);
  kinds[0].temperature = 0;                                    // greedy: backend
  kinds[1].temperature = 0.8, kinds[1].repetition_penalty = 1.4;  // penalty: backend
  kinds[2].temperature = 0, kinds[2].logprobs = 3;             // logprobs: backend
  kinds[3].temperature = 0.9, kinds[3].top_k = 4, kinds[3].top_p = 0.8;  // filters: host when split
  kinds[4].temperature = 0.7, kinds[4].logprobs = 5, kinds[4].presence_penalty = 0.5;  // edited, then logprobs
  kinds[5].temperature = 1.1, kinds[5].min_p = 0.05;           // filter
  kinds[6].temperature = 0, kinds[6].allowed_token_ids = {1, 8, 30, 44};  // ~46 edits: backend
  kinds[7].temperature = 0.9, kinds[7].top_k = 3, kinds[7].allowed_token_ids = {2, 9, 20, 31, 40};  // and a filter
  // processed log-probabilities: filtered (backend; gathered or host when split), greedy with a penalty
  // (backend), top_k 1 under a temperature (backend, the chosen token alone)
  kinds[8].temperature = 0.8, kinds[8].top_k = 5, kinds[8].presence_penalty = 0.3, kinds[8].logprobs = 4;
  kinds[8].logprobs_mode = LogprobsMode::ProcessedLogprobs;
  kinds[10].temperature = 0, kinds[10].repetition_penalty = 1.2, kinds[10].logprobs = 3;
  kinds[10].logprobs_mode = LogprobsMode::ProcessedLogits;
  kinds[11].temperature = 0.6, kinds[11].top_k = 1, kinds[11].logprobs = 2;
  kinds[11].logprobs_mode = LogprobsMode::ProcessedLogits;
  kinds[9].temperature = 0, kinds[9].repetition_penalty = 1.3, kinds[9].logprobs = 2;  // edited, then raw logits
  kinds[9].logprobs_mode = LogprobsMode::RawLogits;
  const size_t N = 24;
  StepPlan plan;
  for (size_t i = 0; i < N; ++i) {
    StepPlan one = plan_for(1, kinds[i % kinds.size()], {7, 8, 9, 9}, 2, 77 + static_cast<int64_t>(i), 1 + i);
    plan.seqs.push_back(one.seqs[0]);
  }
  std::vector<float> full(N * V);
  for (auto& x : full) x = d(g);
  for (size_t i = 0; i < N; ++i) full[i * V + 9] = full[i * V + 8] = 5.f;  // penalized tokens contend
  std::vector<float> rows(N * w.stride, 0.f);
  for (size_t i = 0; i < N; ++i)
    std::copy(full.begin() + static_cast<long>(i * V + w.vocab.begin), full.begin() + static_cast<long>(i * V + w.vocab.end),
              rows.begin() + static_cast<long>(i * w.stride));
  Sampler host(w.comm, V, w.vocab, w.stride), mixed(w.comm, V, w.vocab, w.stride, gather ? &w.comm : nullptr);
  mixed.set_edit_budget(edit_budget);
  host.observe(plan);
  mixed.observe(plan);
  EXPECT_FALSE(mixed.drawable_on_backend(plan));
  Tensor t = cpu.upload(rows.data(), {static_cast<int64_t>(N), w.stride}, DType::F32);
  const auto a = host.sample(plan, rows.data()), b = mixed.sample_step(plan, cpu, t);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < N; ++i) {
    EXPECT_EQ(a[i].seq_id, b[i].seq_id) << "row " << i;
    EXPECT_EQ(a[i].token, b[i].token) << "row " << i;
    EXPECT_EQ(a[i].logprob, b[i].logprob) << "row " << i;
    EXPECT_EQ(a[i].top_ids, b[i].top_ids) << "row " << i;
    EXPECT_EQ(a[i].top_logprobs, b[i].top_logprobs) << "row " << i;
  }
  // Rows left to the host kept their logits; backend rows with penalties had them applied in place.
  std::vector<float> after(N * w.stride);
  cpu.download(t, after.data());
  bool edited = false;
  for (size_t i = 0; i < N; ++i) {
    const SamplingParams& k = kinds[i % kinds.size()];
    const bool to_host = w.comm.size() > 1 && (k.top_k > 0 || k.min_p > 0);
    const bool same = std::equal(after.begin() + static_cast<long>(i * w.stride),
                                 after.begin() + static_cast<long>((i + 1) * w.stride),
                                 rows.begin() + static_cast<long>(i * w.stride));
    if (to_host) {
      EXPECT_TRUE(same) << "host row " << i << " was edited";
    }
    edited = edited || !same;
  }
  // The penalty rows' edits (tokens 7, 8, 9 are in the history) land on the rank holding those tokens.
  if (w.vocab.begin <= 8 && 8 < w.vocab.end) {
    EXPECT_TRUE(edited);
  }
}

TEST(Sampler, MixedStepDrawsEachRowWhereItCan) { check_mixed_step(false); }
TEST(Sampler, MixedStepGathersSplitFilteredRows) { check_mixed_step(true); }
// The same with the draws' edits staged in groups of a row or two (allowed_token_ids rows need about
// a vocabulary of edits each).
TEST(Sampler, MixedStepInEditGroups) {
  check_mixed_step(false, 60);
  check_mixed_step(true, 60);
}

// prompt_logprobs rows (after the sampled rows): each target's log-probability, its rank counted over
// the whole vocabulary split across the ranks (ties count, as vLLM's), and the top alternatives,
// against direct computation; a sequence with prompt targets and a sampled last row in one step.
TEST(Sampler, PromptLogprobsAndRanks) {
  World w;
  CpuBackend cpu;
  std::mt19937 g(11);
  std::normal_distribution<float> d(0.f, 2.f);
  const std::vector<int32_t> prompt1 = {5, 10, 20, 40, 1, 49, 7}, prompt2 = {30, 31, 32, 33};
  StepPlan plan;
  SeqStep a;  // prompt1's tokens at positions 2..6: targets at positions 3..6, the last row samples
  a.seq_id = 1;
  a.num_computed = 2;
  a.tokens.assign(prompt1.begin() + 2, prompt1.end());
  a.sample = true;
  a.start = std::make_shared<SeqStart>();
  a.start->prompt_len = static_cast<int32_t>(prompt1.size());
  a.start->params.temperature = 0;
  a.start->params.prompt_logprobs = 3;
  a.start->prefix.assign(prompt1.begin(), prompt1.begin() + 2);
  a.prompt_targets.assign(prompt1.begin() + 3, prompt1.end());
  SeqStep b;  // prompt2's tokens at positions 0..1: targets at positions 1..2, no sample
  b.seq_id = 2;
  b.tokens = {prompt2[0], prompt2[1]};
  b.start = std::make_shared<SeqStart>();
  b.start->prompt_len = static_cast<int32_t>(prompt2.size());
  b.start->params.prompt_logprobs = 0;
  b.prompt_targets = {prompt2[1], prompt2[2]};
  plan.seqs = {a, b};
  // Logits rows: 0 = sequence 1's sampled row; 1..4 its prompt rows; 5..6 sequence 2's.
  const size_t R = 7;
  std::vector<float> full(R * V);
  for (auto& x : full) x = d(g);
  full[2 * V + 1] = full[2 * V + 10] = full[2 * V + 45] = 9.f;  // row 2 (target token 1): a three-way tie at the top
  Sampler s(w.comm, V, w.vocab, w.stride);
  s.observe(plan);
  std::vector<float> rows(R * w.stride, 0.f);
  for (size_t i = 0; i < R; ++i)
    std::copy(full.begin() + static_cast<long>(i * V + w.vocab.begin), full.begin() + static_cast<long>(i * V + w.vocab.end),
              rows.begin() + static_cast<long>(i * w.stride));
  Tensor t = cpu.upload(rows.data(), {static_cast<int64_t>(R), w.stride}, DType::F32);
  ASSERT_EQ(s.sample_step(plan, cpu, t).size(), 1u);
  // The prompt rows in two slices (3 + 3), as the worker makes their logits a slice at a time.
  auto got = s.prompt_logprobs(plan, cpu, rows_view(t, 1, 3), 0, 3);
  const auto rest = s.prompt_logprobs(plan, cpu, rows_view(t, 4, 3), 3, 3);
  got.insert(got.end(), rest.begin(), rest.end());
  ASSERT_EQ(got.size(), R - 1);
  for (size_t j = 0; j < got.size(); ++j) {
    const float* row = &full[(j + 1) * V];
    const bool first = j < 4;
    const int32_t position = first ? 3 + static_cast<int32_t>(j) : 1 + static_cast<int32_t>(j - 4);
    const int want = first ? 3 : 0;
    EXPECT_EQ(got[j].seq_id, first ? 1u : 2u);
    EXPECT_EQ(got[j].position, position) << "row " << j + 1;
    ASSERT_EQ(got[j].token, first ? prompt1[position] : prompt2[position]) << "row " << j + 1;
    double z = 0;
    for (int64_t k = 0; k < V; ++k) z += std::exp(static_cast<double>(row[k]));
    EXPECT_NEAR(got[j].logprob, row[got[j].token] - std::log(z), 1e-4) << "row " << j + 1;
    int rank = 0;
    for (int64_t k = 0; k < V; ++k) rank += row[k] >= row[got[j].token];
    EXPECT_EQ(got[j].rank, rank) << "row " << j + 1;
    std::vector<int32_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return row[x] > row[y]; });
    ASSERT_EQ(got[j].top_ids.size(), static_cast<size_t>(want)) << "row " << j + 1;
    for (int k = 0; k < want; ++k) {
      EXPECT_EQ(got[j].top_ids[k], order[k]) << "row " << j + 1;
      EXPECT_NEAR(got[j].top_logprobs[k], row[order[k]] - std::log(z), 1e-4) << "row " << j + 1;
    }
  }
  EXPECT_EQ(got[1].rank, 3);  // row 2's token ties with two others at the top
  // Through the results message, as the last stage sends them.
  uint64_t step = 0;
  const auto back = deserialize_results(serialize_results(9, got), &step);
  ASSERT_EQ(back.size(), got.size());
  EXPECT_EQ(back[1].position, got[1].position);
  EXPECT_EQ(back[1].rank, 3);
}

// Guided decoding over a toy vocabulary split across the ranks: every draw (greedy or sampled, on the
// host sampler and the backend draw) keeps the output an accepted prefix, the end of sequence comes
// exactly when it is whole (also for an EOS token that has bytes of its own, as a tokenizer that does
// not mark it special gives it), and min_tokens does not hold a whole text open.
TEST(Sampler, GuidedDecodingKeepsTheTextAccepted) {
  World w;
  CpuBackend cpu;
  // V = 50 tokens: 3 is EOS (special, no bytes), 47 a second EOS with bytes ("}" : never text); the
  // rest JSON pieces, words and junk.
  const std::vector<std::string> pieces = {
      "{", "}", "[", "]", ":", ",", "\"", " ", "\n", "a", "b", "1", "2", ".", "-", "e", "true", "null", "\"a\"", "\":",
      "{\"", "\"}", "},", "yes", "no", "y", "es", "maybe", "may", "be", "x", "'", "\\", "\\n", "0", "9", "fa", "lse",
      "{}", "[]", "\"b\": ", ", \"", "nope", "ye", "s", "m", "aybe", "!", "\t"};
  auto bytes = std::make_shared<std::vector<std::string>>(V);
  for (int64_t t = 0, k = 0; t < V; ++t)
    if (t != 3) (*bytes)[t] = pieces[k++ % pieces.size()];
  (*bytes)[47] = "}";
  std::mt19937 g(21);
  std::normal_distribution<float> d(0.f, 2.f);
  for (const std::string kind : {"json", "choice", "json_schema"})
    for (bool backend : {false, true})
      for (double temperature : {0.0, 1.0}) {
        SamplingParams p;
        p.guided = kind;
        if (kind == "choice") p.guided_choice = {"yes", "no", "maybe"};
        if (kind == "json_schema")
          p.guided_schema = R"({"properties": {"a": {"type": "integer"}, "b": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
                                "e": {"type": "array", "items": {"enum": ["a", "yes"]}}}, "required": ["a"]})";
        p.temperature = temperature;
        p.min_tokens = 40;  // would mask EOS; a whole text still ends
        const auto guide = make_guide(p);
        for (int rep = 0; rep < (temperature > 0 ? 6 : 1); ++rep) {
          Sampler s(w.comm, V, w.vocab, w.stride);
          s.set_guided_tokens(guided_tokens(*bytes));
          std::vector<int32_t> history = {7, 8};
          GuideState gs = guide->start();
          std::string text;
          bool ended = false;
          for (int step = 0; step < 60 && !ended; ++step) {
            StepPlan plan = plan_for(1, p, history, 2, 100 + rep, 1);
            plan.seqs[0].start->eos_ids = {3, 47};
            if (step > 0) plan.seqs[0].start.reset();  // later steps as the scheduler sends them
            s.observe(plan);
            std::vector<float> full(V);
            for (auto& x : full) x = d(g);
            auto rows = w.rows(full, 1);
            Tensor t = cpu.upload(rows.data(), {1, w.stride}, DType::F32);
            const int32_t tok = backend ? s.sample_on_backend(plan, cpu, t)[0].token : s.sample(plan, rows.data())[0].token;
            if (tok == 3 || tok == 47) {
              EXPECT_TRUE(guide->complete(gs)) << kind << ": EOS before the text is whole: " << text;
              ended = true;
              break;
            }
            ASSERT_TRUE(guide->feed(gs, (*bytes)[tok])) << kind << ": token " << tok << " after '" << text << "'";
            text += (*bytes)[tok];
            history.push_back(tok);
          }
          if (kind == "choice") {
            EXPECT_TRUE(ended) << text;
            EXPECT_TRUE(text == "yes" || text == "no" || text == "maybe") << text;
          }
        }
      }
}

// Token bytes of JSON pieces, words and junk (token 3, the EOS, has none), for the guided tests.
std::shared_ptr<std::vector<std::string>> json_piece_bytes() {
  const std::vector<std::string> pieces = {"{", "}", "[", "]", ":", ",", "\"", " ", "a", "b", "1", "2", "true", "\"a\"",
                                           "\":", "{\"", "\"}", "yes", "no", "y", "es", "x", "\\", "0"};
  auto bytes = std::make_shared<std::vector<std::string>>(V);
  for (int64_t t = 0; t < V; ++t)
    if (t != 3) (*bytes)[t] = pieces[static_cast<size_t>(t) % pieces.size()];
  return bytes;
}

// The allowed-token cache of guided decoding: the same tokens as walking the vocabulary every step, for
// JSON and choices, sampled, over the ranks' vocabulary shards; and for JSON far fewer walks.
TEST(Sampler, GuidedCacheDrawsAsTheWalk) {
  World w;
  const auto bytes = json_piece_bytes();
  for (const std::string kind : {"json", "choice", "json_schema"}) {
    SamplingParams p;
    p.guided = kind;
    if (kind == "choice") p.guided_choice = {"yes", "no", "yesno", "aaaa"};
    if (kind == "json_schema") p.guided_schema = R"({"properties": {"a": {"type": "array", "items": {"type": "integer"}}}})";
    p.temperature = 1.0;
    p.ignore_eos = true;
    std::vector<int32_t> drawn[2];
    int64_t walks[2] = {0, 0};
    for (int cached = 0; cached < 2; ++cached) {
      Sampler s(w.comm, V, w.vocab, w.stride);
      s.set_guided_tokens(guided_tokens(*bytes));
      if (!cached) s.set_guided_cache_states(0);
      std::mt19937 g(4);
      std::normal_distribution<float> d(0.f, 2.f);
      std::vector<int32_t> history = {7, 8};
      for (int step = 0; step < 40; ++step) {
        StepPlan plan = plan_for(1, p, history, 2, 77, 1);
        plan.seqs[0].start->eos_ids = {3};
        s.observe(plan);
        std::vector<float> full(V);
        for (auto& x : full) x = d(g);
        auto rows = w.rows(full, 1);
        const int32_t tok = s.sample(plan, rows.data())[0].token;
        drawn[cached].push_back(tok);
        if (tok == 3) break;
        history.push_back(tok);
      }
      walks[cached] = s.guided_walks();
    }
    EXPECT_EQ(drawn[1], drawn[0]) << kind;
    EXPECT_EQ(walks[0], static_cast<int64_t>(drawn[0].size())) << kind;
    if (kind == "json") {  // (a choice's states all differ: each step feeds more of the candidates)
      EXPECT_LT(walks[1], walks[0] / 2) << "states met again in " << drawn[0].size() << " steps: " << walks[1];
    }
  }
}

// Guided rows drawn on the backend (their allowed tokens as bitmaps, RowMasks) draw the tokens the host
// sampler draws with their bans as edits: JSON and a schema, greedy and sampled, with a repetition penalty
// on top, over the ranks' vocabulary shards, step by step as each text grows.
TEST(Sampler, GuidedBitmapsDrawAsTheHostSampler) {
  World w;
  CpuBackend cpu;
  const auto bytes = json_piece_bytes();
  for (const std::string kind : {"json", "json_schema"})
    for (double temperature : {0.0, 1.0}) {
      SamplingParams p;
      p.guided = kind;
      if (kind == "json_schema") p.guided_schema = R"({"properties": {"a": {"type": "array", "items": {"type": "integer"}}}})";
      p.temperature = temperature;
      p.repetition_penalty = 1.4;
      Sampler host(w.comm, V, w.vocab, w.stride), device(w.comm, V, w.vocab, w.stride);
      host.set_guided_tokens(guided_tokens(*bytes));
      device.set_guided_tokens(guided_tokens(*bytes));
      std::mt19937 g(9);
      std::normal_distribution<float> d(0.f, 2.f);
      std::vector<int32_t> history = {7, 8};
      int steps = 0;
      for (; steps < 40; ++steps) {
        StepPlan plan = plan_for(2, p, history, 2, 31, 1);  // two rows of the same text: seeds differ
        host.observe(plan);
        device.observe(plan);
        std::vector<float> full(V);
        for (auto& x : full) x = d(g);
        auto rows = w.rows(full, 2);
        Tensor t = cpu.upload(rows.data(), {2, w.stride}, DType::F32);
        const auto a = host.sample(plan, rows.data());
        const auto b = device.sample_on_backend(plan, cpu, t);
        ASSERT_EQ(a.size(), b.size());
        for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i].token, b[i].token) << kind << " step " << steps << " row " << i;
        if (a[0].token == 3) break;
        history.push_back(a[0].token);
      }
      EXPECT_GT(steps, 3) << kind;
    }
}
