#include "engine/draft_model.h"

#include <algorithm>

#include "common/error.h"

namespace llmserve {
namespace {

// What the draft samples with: the served request's draw (temperature, filters, penalties, biases and
// masks, which the draft's worker applies from the same token history), less what only the served
// model's answer needs (log-probabilities) and guided decoding, whose state cannot step back over
// drafts the step did not keep.
SamplingParams draft_params(const SamplingParams& p) {
  SamplingParams d = p;
  d.logprobs = -1;
  d.prompt_logprobs = -1;
  d.guided.clear();
  d.guided_choice.clear();
  d.guided_schema.clear();
  d.stop.clear();
  return d;
}

}  // namespace

DraftModel::DraftModel(ModelRunner& runner, int64_t target_vocab)
    : runner_(runner),
      worker_(runner),
      target_vocab_(target_vocab),
      block_size_(static_cast<int>(runner.block_size())),
      step_budget_(std::max<int64_t>(1, runner.config().max_num_batched_tokens)),
      blocks_(runner.num_blocks()) {}

void DraftModel::release(State& st) {
  blocks_.release(st.blocks);
  st.blocks.clear();
  st.tokens.clear();
}

void DraftModel::forget(uint64_t seq_id) {
  auto it = states_.find(seq_id);
  if (it == states_.end()) return;
  release(it->second);
  if (it->second.started) finished_.push_back(seq_id);
  states_.erase(it);
  if (finished_.size() >= 1024) {  // (while no proposal runs, an empty step drops their sampling state)
    StepPlan plan;
    run(plan);
  }
}

bool DraftModel::reserve(State& st, int64_t positions, const std::unordered_set<uint64_t>& keep) {
  const int64_t need = (positions + block_size_ - 1) / block_size_ - static_cast<int64_t>(st.blocks.size());
  if (need <= 0) return true;
  // Short of blocks: the caches of sequences that propose nothing now (preempted, or past their drafts)
  // go first; they are fed again from their start when they next propose.
  for (auto it = states_.begin(); it != states_.end() && blocks_.num_free() < need; ++it)
    if (&it->second != &st && !keep.count(it->first) && !it->second.blocks.empty()) {
      release(it->second);
      ++evictions_;
    }
  if (blocks_.num_free() < need) return false;
  const auto got = blocks_.allocate(need);
  st.blocks.insert(st.blocks.end(), got.begin(), got.end());
  return true;
}

std::vector<SampledToken> DraftModel::run(StepPlan& plan) {
  plan.step_id = ++step_id_;
  plan.finished.swap(finished_);
  finished_.clear();
  size_t sampled = 0;
  for (const auto& s : plan.seqs) sampled += s.sample ? 1 : 0;
  tokens_fed_ += plan.num_tokens();
  if (!plan.seqs.empty()) ++steps_;
  Worker::Output out = worker_.execute(plan, Tensor());
  if (out.tokens.size() != sampled) throw Error(cat("draft model: ", out.tokens.size(), " tokens for ", sampled, " sampled rows"));
  return std::move(out.tokens);
}

void DraftModel::propose(const std::vector<std::pair<Sequence*, int>>& candidates) {
  struct Job {
    Sequence* s;
    State* st;
    int room;
    std::vector<int32_t> out;
  };
  std::unordered_set<uint64_t> keep;
  for (const auto& c : candidates) keep.insert(c.first->id);
  std::vector<Job> jobs;
  jobs.reserve(candidates.size());
  for (const auto& [s, room] : candidates) {
    s->proposed.clear();
    State& st = states_[s->id];
    // The cached tokens that are still the sequence's (drafts the last step did not keep are not), and
    // at least its last token fed again: its logits give the first draft.
    const size_t n = s->tokens.size();
    size_t same = 0;
    const size_t upto = std::min(st.tokens.size(), n - 1);
    while (same < upto && st.tokens[same] == s->tokens[same]) ++same;
    st.tokens.resize(same);
    // Positions up to the last draft fed: the sequence's n, then room - 1 drafts.
    if (!reserve(st, static_cast<int64_t>(n) + room - 1, keep)) continue;
    jobs.push_back({s, &st, room, {}});
  }
  auto step_of = [&](Job& j, size_t from, size_t count, bool sample) {
    SeqStep step;
    step.seq_id = j.s->id;
    step.num_computed = static_cast<int32_t>(j.st->tokens.size());
    step.block_table = j.st->blocks;
    step.sample = sample;
    if (!j.st->started) {
      step.start = std::make_shared<SeqStart>();
      step.start->prompt_len = j.s->prompt_len;
      step.start->seed = j.s->seed;
      step.start->params = draft_params(j.s->params);
      step.start->eos_ids = j.s->eos_ids;
      step.start->prefix = j.st->tokens;
      j.st->started = true;
    }
    const std::vector<int32_t>& src = from < j.s->tokens.size() ? j.s->tokens : j.out;
    const size_t at = from < j.s->tokens.size() ? from : from - j.s->tokens.size();
    step.tokens.assign(src.begin() + static_cast<std::ptrdiff_t>(at), src.begin() + static_cast<std::ptrdiff_t>(at + count));
    j.st->tokens.insert(j.st->tokens.end(), step.tokens.begin(), step.tokens.end());
    return step;
  };
  // 1. What each sequence gained since its last proposal, in steps of at most max_num_batched_tokens
  // tokens; the chunk that ends it samples the first draft.
  for (;;) {
    StepPlan plan;
    std::vector<Job*> sampled;
    int64_t budget = step_budget_;
    for (Job& j : jobs) {
      const size_t n = j.s->tokens.size(), have = j.st->tokens.size();
      if (have >= n || budget <= 0) continue;
      const size_t chunk = std::min<size_t>(n - have, static_cast<size_t>(budget));
      plan.seqs.push_back(step_of(j, have, chunk, have + chunk == n));
      budget -= static_cast<int64_t>(chunk);
      if (plan.seqs.back().sample) sampled.push_back(&j);
    }
    if (plan.seqs.empty()) break;
    const auto tokens = run(plan);
    for (size_t i = 0; i < sampled.size(); ++i) sampled[i]->out.push_back(tokens[i].token);
  }
  // 2. The other drafts, one a step: each fed back to sample the next.
  auto usable = [&](int32_t t) { return t >= 0 && t < target_vocab_; };
  for (;;) {
    StepPlan plan;
    std::vector<Job*> sampled;
    for (Job& j : jobs) {
      if (j.out.empty() || static_cast<int>(j.out.size()) >= j.room || !usable(j.out.back())) continue;
      plan.seqs.push_back(step_of(j, j.s->tokens.size() + j.out.size() - 1, 1, true));
      sampled.push_back(&j);
    }
    if (plan.seqs.empty()) break;
    const auto tokens = run(plan);
    for (size_t i = 0; i < sampled.size(); ++i) sampled[i]->out.push_back(tokens[i].token);
  }
  for (Job& j : jobs) {
    // (a token the served model does not have, or none drawn (kNoToken), ends the proposal)
    const auto end = std::find_if(j.out.begin(), j.out.end(), [&](int32_t t) { return !usable(t); });
    j.s->proposed.assign(j.out.begin(), end);
  }
}

}  // namespace llmserve
