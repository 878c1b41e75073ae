#include "engine/scheduler.h"

#include <algorithm>

#include "common/error.h"

namespace llmserve {

Scheduler::Scheduler(const SchedulerConfig& cfg)
    : cfg_(cfg), bm_(cfg.num_blocks, cfg.num_host_blocks, cfg.block_size, cfg.prefix_caching, cfg.prefix_hash) {}

bool Scheduler::fits(int64_t total) const { return total <= cfg_.max_model_len && peak_blocks(total) <= cfg_.num_blocks; }

int64_t Scheduler::peak_blocks(int64_t total) const {
  // (a step's tokens: a chunk, or without chunked prefill a whole prompt)
  return llmserve::peak_blocks(total, cfg_.block_size, cfg_.sliding_window,
                               cfg_.chunked_prefill ? cfg_.max_num_batched_tokens : total);
}

int64_t Scheduler::window_start_block(const Sequence& s) const {
  // The step's first query: its first new position, or (a decode planned ahead) the one of the step in
  // flight before it. Only blocks registered (full of known tokens) go back, and one is always kept for
  // the table's gaps.
  const int64_t first_key = std::max<int64_t>(0, s.num_computed - s.in_flight - cfg_.sliding_window + 1);
  return std::max<int64_t>(0, std::min<int64_t>({first_key / cfg_.block_size, s.hashed_blocks,
                                                 static_cast<int64_t>(s.blocks.size()) - 1}));
}

std::vector<int32_t> Scheduler::block_table(const Sequence& s) const {
  std::vector<int32_t> t = s.blocks;
  if (s.window_freed > 0 && static_cast<size_t>(s.window_freed) < t.size())
    std::fill(t.begin(), t.begin() + s.window_freed, t[static_cast<size_t>(s.window_freed)]);
  return t;
}

void Scheduler::release_all(Sequence& s) {
  std::vector<int32_t> held;  // (none while swapped out: every entry -1)
  for (int32_t b : s.blocks)
    if (b >= 0) held.push_back(b);
  bm_.release(held);
  s.blocks.clear();
  s.window_freed = 0;
}

void Scheduler::add(std::unique_ptr<Sequence> seq) {
  seq->state = Sequence::State::Waiting;
  seq->wants_prompt_logprobs = seq->params.prompt_logprobs >= 0;
  seq->hash_seed = bm_.salt_hash(seq->params.cache_salt);
  if (seq->params.lora > 0) {  // (an adapter's KV differs from the base model's: its blocks chain apart)
    // Keyed by the adapter's load (SamplingParams::lora_uid; its slot where unset), not only its slot: a
    // slot that runtime LoRA updating reuses holds another adapter.
    const uint64_t uid = seq->params.lora_uid != 0 ? seq->params.lora_uid : static_cast<uint64_t>(seq->params.lora);
    seq->hash_seed = bm_.adapter_hash(seq->hash_seed, uid);
  }
  seq->last_hash = seq->hash_seed;
  enqueue(waiting_, seq.get(), false);
  seqs_[seq->id] = std::move(seq);
}

Sequence* Scheduler::find(uint64_t id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

void Scheduler::emit(Sequence& s, int32_t chunk, StepPlan& plan, std::vector<int32_t> drafts) {
  SeqStep st;
  st.seq_id = s.id;
  st.num_computed = s.num_computed;
  st.tokens.assign(s.tokens.begin() + s.num_computed, s.tokens.begin() + s.num_computed + chunk);
  // Drafts go in the plan only: the sequence's tokens and num_computed grow by what the step accepts.
  st.tokens.insert(st.tokens.end(), drafts.begin(), drafts.end());
  st.num_draft = static_cast<int32_t>(drafts.size());
  s.drafted = st.num_draft;
  s.received = 0;
  if (!drafts.empty()) ++stats_.spec_drafts, stats_.spec_draft_tokens += st.num_draft;
  st.block_table = block_table(s);
  st.lora = s.params.lora;
  st.sample = s.num_computed + chunk == static_cast<int32_t>(s.tokens.size());
  if (s.params.pooling != Pooling::None) {
    // Nothing is sampled: the rows the pooling wants go back summed, the vector once the prompt is done
    // (one step in flight for it then, so that it is neither planned again nor preempted meanwhile).
    st.pool_done = st.sample;
    st.sample = false;
    switch (s.params.pooling) {
      case Pooling::Last:
        if (st.pool_done) st.pool_from = chunk - 1, st.pool_count = 1;
        break;
      case Pooling::Mean:
        st.pool_count = chunk;
        break;
      case Pooling::Cls:
        if (s.num_computed == 0) st.pool_count = 1;
        break;
      case Pooling::None:
        break;
    }
    if (st.pool_done) ++s.in_flight;
  }
  if (wants_prompt_rows(s)) {
    const int32_t end = std::min(s.num_computed + chunk, s.prompt_len - 1);
    if (end > s.num_computed) st.prompt_targets.assign(s.tokens.begin() + s.num_computed + 1, s.tokens.begin() + end + 1);
    if (st.sample) s.prompt_rows_done = true;
  }
  if (s.send_params) {
    st.start = std::make_shared<SeqStart>();
    st.start->prompt_len = s.prompt_len;
    st.start->seed = s.seed;
    st.start->params = s.params;
    st.start->eos_ids = s.eos_ids;
    st.start->prefix.assign(s.tokens.begin(), s.tokens.begin() + s.num_computed);
    s.send_params = false;
  }
  s.num_computed += chunk;
  register_full_blocks(s);
  if (st.sample) ++s.in_flight, s.sampled_row = plan_sampled_++;
  plan.seqs.push_back(std::move(st));
}

void Scheduler::register_full_blocks(Sequence& s) {
  // (A block is registered once its tokens are known: a decode planned ahead has computed a position
  // whose token is still pending.)
  const int bs = cfg_.block_size;
  const int64_t known = std::min<int64_t>(s.num_computed, static_cast<int64_t>(s.tokens.size()));
  while ((s.hashed_blocks + 1) * static_cast<int64_t>(bs) <= known) {
    const int32_t* t = s.tokens.data() + static_cast<size_t>(s.hashed_blocks) * bs;
    s.last_hash = bm_.chain(s.last_hash, t, bs);
    bm_.register_full(s.blocks[s.hashed_blocks], s.last_hash, t);
    ++s.hashed_blocks;
  }
}

namespace {
template <typename Seqs>
void add_loras(const Seqs& seqs, std::vector<int32_t>& out) {
  for (const Sequence* s : seqs)
    if (s->params.lora > 0 && std::find(out.begin(), out.end(), s->params.lora) == out.end()) out.push_back(s->params.lora);
}
}  // namespace

std::vector<int32_t> Scheduler::running_loras() const {
  std::vector<int32_t> out;
  add_loras(running_, out);
  return out;
}

std::vector<int32_t> Scheduler::waiting_loras() const {
  std::vector<int32_t> out;
  add_loras(waiting_, out);
  add_loras(swapped_, out);
  return out;
}

bool Scheduler::lora_fits(const Sequence& s) const {
  if (s.params.lora <= 0) return true;
  std::vector<int32_t> seen;
  for (const Sequence* r : running_) {
    if (r->params.lora <= 0 || std::find(seen.begin(), seen.end(), r->params.lora) != seen.end()) continue;
    if (r->params.lora == s.params.lora) return true;
    seen.push_back(r->params.lora);
  }
  return static_cast<int>(seen.size()) < cfg_.max_loras;
}

bool Scheduler::can_schedule_ahead(const Sequence& s) const {
  // Its one step in flight samples the token at position tokens.size(); planned now, the decode feeds
  // that token and samples the one after it, which must still be within max_tokens and max_model_len.
  return cfg_.async_scheduling && s.params.pooling == Pooling::None && s.in_flight == 1 && s.num_computed == static_cast<int32_t>(s.tokens.size()) &&
         s.output_len() + 2 <= s.params.max_tokens && static_cast<int64_t>(s.tokens.size()) + 2 <= cfg_.max_model_len;
}

bool Scheduler::schedule_ahead(Sequence& s, int64_t& budget, StepPlan& plan) {
  if (budget < 1 || !reserve_blocks(s, s.num_computed + 1, plan, true)) return false;
  SeqStep st;
  st.seq_id = s.id;
  st.num_computed = s.num_computed;
  st.tokens.push_back(pending_token(s.sampled_row));
  st.block_table = block_table(s);
  st.lora = s.params.lora;
  st.sample = true;
  s.num_computed += 1;
  ++s.in_flight;
  s.sampled_row = plan_sampled_++;
  plan.seqs.push_back(std::move(st));
  budget -= 1;
  return true;
}

bool Scheduler::reserve_blocks(Sequence& s, int64_t tokens, StepPlan& plan, bool may_preempt) {
  if (cfg_.sliding_window > 0) {
    const int64_t upto = window_start_block(s);
    if (upto > s.window_freed) {
      std::vector<int32_t> gone(s.blocks.begin() + s.window_freed, s.blocks.begin() + upto);
      std::fill(s.blocks.begin() + s.window_freed, s.blocks.begin() + upto, -1);
      s.window_freed = static_cast<int32_t>(upto);
      bm_.release(gone);
    }
  }
  const int64_t need = (tokens + cfg_.block_size - 1) / cfg_.block_size - static_cast<int64_t>(s.blocks.size());
  while (need > bm_.num_available()) {
    if (!may_preempt || !preempt_one(s, plan)) return false;
  }
  if (need > 0) {
    auto nb = bm_.allocate(need);
    s.blocks.insert(s.blocks.end(), nb.begin(), nb.end());
  }
  return true;
}

bool Scheduler::preempt_one(Sequence& keep, StepPlan& plan) {
  // The most recently arrived running sequence that is not in flight and not `keep` (with the priority
  // policy: the last in before() order, and only one after `keep`).
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* v = *it;
    if (v == &keep && cfg_.priority) return false;
    if (v == &keep || v->in_flight) continue;
    if (std::any_of(plan.seqs.begin(), plan.seqs.end(), [&](const SeqStep& x) { return x.seq_id == v->id; })) continue;
    running_.erase(std::next(it).base());
    const int64_t n = static_cast<int64_t>(v->blocks.size()) - v->window_freed;  // (the blocks it holds)
    if (cfg_.num_host_blocks > 0 && n <= bm_.num_host_available()) {
      // Swap: copy all its blocks to host memory and give every one back, those it shares (its n
      // forks' prompt, a cached prefix) too: a swapped-out sequence that kept them could pin most of
      // the cache, leaving a running one room to neither grow nor preempt (and nothing ran again).
      v->host_blocks = bm_.allocate_host(n);
      for (int64_t i = 0; i < n; ++i)
        plan.swap_out.push_back({v->blocks[static_cast<size_t>(v->window_freed + i)], v->host_blocks[static_cast<size_t>(i)]});
      const int32_t freed = v->window_freed;
      const size_t total = v->blocks.size();
      release_all(*v);
      v->blocks.assign(total, -1);
      v->window_freed = freed;
      v->state = Sequence::State::Swapped;
      enqueue(swapped_, v, true);
      ++stats_.preempted_swap;
    } else {
      // Recompute: drop the KV; the sequence restarts from its tokens (its prefix may still be cached).
      release_all(*v);
      v->num_computed = 0;
      v->hashed_blocks = 0;
      v->last_hash = v->hash_seed;
      v->send_params = true;
      v->state = Sequence::State::Waiting;
      enqueue(waiting_, v, true);
      ++stats_.preempted_recompute;
    }
    return true;
  }
  return false;
}

int64_t Scheduler::draft_room(const Sequence& s) const {
  const SpeculativeConfig& sc = cfg_.spec;
  // A decode (its prompt done), sampling at most max_tokens and max_model_len tokens in all.
  if (!sc.enabled() || cfg_.async_scheduling || s.params.pooling != Pooling::None || s.output_len() < 1 ||
      static_cast<int32_t>(s.tokens.size()) - s.num_computed != 1)
    return 0;
  // vLLM's disable_by_batch_size: a large batch already keeps the device busy (and on CPUs drafts cost
  // their arithmetic), so no drafts then.
  if (sc.disable_by_batch_size > 0 && running_.size() > static_cast<size_t>(sc.disable_by_batch_size)) return 0;
  return std::max<int64_t>(0, std::min<int64_t>({sc.num_speculative_tokens, s.params.max_tokens - s.output_len() - 1,
                                                 cfg_.max_model_len - static_cast<int64_t>(s.tokens.size()) - 1}));
}

std::vector<std::pair<Sequence*, int>> Scheduler::draft_candidates() {
  std::vector<std::pair<Sequence*, int>> out;
  if (cfg_.spec.method != SpecMethod::DraftModel) return out;
  for (Sequence* s : running_) {
    if (s->in_flight || s->state != Sequence::State::Running) continue;
    const int64_t room = draft_room(*s);
    if (room > 0) out.emplace_back(s, static_cast<int>(room));
  }
  return out;
}

bool Scheduler::schedule_drafts(Sequence& s, int64_t& budget, StepPlan& plan) {
  std::vector<int32_t> proposed = std::move(s.proposed);  // (a proposal serves one plan)
  s.proposed.clear();
  const int64_t room = std::min<int64_t>(draft_room(s), budget - 1);
  if (room < 1) return false;
  std::vector<int32_t> drafts;
  if (cfg_.spec.method == SpecMethod::DraftModel) {
    drafts = std::move(proposed);
    if (static_cast<int64_t>(drafts.size()) > room) drafts.resize(static_cast<size_t>(room));
  } else {
    drafts = ngram_propose(s.tokens.data(), s.tokens.size(), cfg_.spec.prompt_lookup_min, cfg_.spec.prompt_lookup_max,
                           static_cast<int>(room));
  }
  if (drafts.empty() || !reserve_blocks(s, s.num_computed + 1 + static_cast<int64_t>(drafts.size()), plan, false)) return false;
  budget -= 1 + static_cast<int64_t>(drafts.size());
  emit(s, 1, plan, std::move(drafts));
  return true;
}

bool Scheduler::schedule_chunk(Sequence& s, int64_t& budget, StepPlan& plan, bool may_preempt) {
  if (schedule_drafts(s, budget, plan)) return true;
  const int32_t remaining = static_cast<int32_t>(s.tokens.size()) - s.num_computed;
  int32_t chunk = remaining;
  if (cfg_.chunked_prefill && cfg_.long_prefill_token_threshold > 0 && chunk > cfg_.long_prefill_token_threshold)
    chunk = static_cast<int32_t>(cfg_.long_prefill_token_threshold);
  if (chunk > budget) {
    if (!cfg_.chunked_prefill) return false;
    chunk = static_cast<int32_t>(budget);
  }
  if (chunk <= 0) return false;
  if (!reserve_blocks(s, s.num_computed + chunk, plan, may_preempt)) return false;
  emit(s, chunk, plan);
  budget -= chunk;
  return true;
}

StepPlan Scheduler::schedule(size_t max_seqs) {
  StepPlan plan;
  plan.step_id = ++step_id_;
  plan_sampled_ = 0;
  plan.seqs.reserve(std::min({max_seqs, static_cast<size_t>(cfg_.max_num_seqs), running_.size() + waiting_.size()}));
  int64_t budget = cfg_.max_num_batched_tokens;
  const int64_t preempted_before = stats_.preempted_swap + stats_.preempted_recompute;

  // 1. Swapped sequences come back first, in queue order, while blocks last.
  while (!swapped_.empty()) {
    Sequence* s = swapped_.front();
    // Room for its blocks and for what its next step fills (the tokens it has).
    const int64_t need = static_cast<int64_t>(s->host_blocks.size());
    int64_t next = (static_cast<int64_t>(s->tokens.size()) + cfg_.block_size - 1) / cfg_.block_size;
    if (cfg_.sliding_window > 0) {
      // With the window, what its next step holds: to that step's end (a chunk of its prompt at most), from
      // the block of that step's window start (peak_blocks at most, so a sequence alone always comes back).
      const int64_t bs = cfg_.block_size, n = static_cast<int64_t>(s->tokens.size());
      const int64_t end = cfg_.chunked_prefill ? std::min(n, s->num_computed + cfg_.max_num_batched_tokens) : n;
      next = (end + bs - 1) / bs - std::max<int64_t>(s->window_freed, window_start_block(*s));
    }
    if (std::max(need, next) > bm_.num_available() || running_.size() >= static_cast<size_t>(cfg_.max_num_seqs) || !lora_fits(*s))
      break;
    auto dev = bm_.allocate(need);
    for (size_t i = 0; i < dev.size(); ++i) {
      plan.swap_in.push_back({s->host_blocks[i], dev[i]});
      s->blocks[s->window_freed + i] = dev[i];
    }
    bm_.release_host(s->host_blocks);
    s->host_blocks.clear();
    s->state = Sequence::State::Running;
    swapped_.pop_front();
    // Back in arrival (before()) order.
    insert_ordered(running_, s);
    ++stats_.swapped_in;
  }

  // 2. Running sequences: decodes and prefill chunks, preempting later arrivals when blocks run out.
  const std::vector<Sequence*> snapshot = running_;
  for (Sequence* s : snapshot) {
    if (budget <= 0 || plan.seqs.size() >= max_seqs) break;
    if (s->state != Sequence::State::Running) continue;  // preempted above
    if (s->in_flight) {  // busy, unless its next decode can be planned ahead
      if (can_schedule_ahead(*s)) schedule_ahead(*s, budget, plan);
      continue;
    }
    if (static_cast<int32_t>(s->tokens.size()) == s->num_computed) continue;  // nothing to feed yet
    schedule_chunk(*s, budget, plan, true);
  }

  // 3. Waiting sequences in queue order, unless this step had to preempt, and while none is swapped
  // out that comes before them.
  const bool preempted = stats_.preempted_swap + stats_.preempted_recompute != preempted_before;
  size_t wi = 0;  // (the first waiting sequence not passed over for max_loras)
  while (wi < waiting_.size() && !preempted && budget > 0 && plan.seqs.size() < max_seqs &&
         running_.size() < static_cast<size_t>(cfg_.max_num_seqs)) {
    Sequence* s = waiting_[wi];
    if (!swapped_.empty() && !(cfg_.priority && before(s, swapped_.front()))) break;
    if (!lora_fits(*s)) {  // its adapter would pass max_loras: it waits, the ones behind it may go (as vLLM)
      ++wi;
      continue;
    }
    std::vector<BlockHash> hashes;
    if (s->num_computed == 0 && s->blocks.empty() && !wants_prompt_rows(*s) &&
        (s->params.pooling == Pooling::None || s->params.pooling == Pooling::Last)) {
      // (A sequence with prompt_logprobs computes its whole prompt: each position's logits are wanted;
      // so does one pooling more than its last position.)
      // Reuse cached full blocks of the prefix; at least the last token is always recomputed.
      const int64_t max_blocks = (static_cast<int64_t>(s->tokens.size()) - 1) / cfg_.block_size;
      s->blocks = bm_.match_prefix(s->tokens, max_blocks, hashes, s->hash_seed);
      s->num_computed = static_cast<int32_t>(s->blocks.size()) * cfg_.block_size;
      s->hashed_blocks = static_cast<int32_t>(s->blocks.size());
      s->last_hash = hashes.empty() ? s->hash_seed : hashes.back();
      if (s->send_params && s->num_cached_tokens == 0) s->num_cached_tokens = s->num_computed;
    }
    if (!schedule_chunk(*s, budget, plan, false)) {
      // Not now: give the prefix blocks back so they do not sit idle.
      release_all(*s);
      s->num_computed = 0;
      s->hashed_blocks = 0;
      s->last_hash = s->hash_seed;
      break;
    }
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(wi));
    s->state = Sequence::State::Running;
    enqueue(running_, s, false);
  }
  if (!plan.seqs.empty() || !plan.swap_out.empty() || !plan.swap_in.empty()) {
    plan.finished.swap(finished_);
  }
  return plan;
}

Sequence* Scheduler::on_token(const SampledToken& t) {
  Sequence* s = find(t.seq_id);
  if (!s) return nullptr;
  if (s->in_flight > 0 && s->received == 0) --s->in_flight;
  s->tokens.push_back(t.token);
  if (s->drafted > 0) {
    // Every token before this one was computed by the step (the last token fed and accepted drafts).
    if (s->received > 0) ++stats_.spec_accepted_tokens;
    s->num_computed = static_cast<int32_t>(s->tokens.size()) - 1;
    ++s->received;
  }
  register_full_blocks(*s);  // a block that a decode planned ahead filled
  return s;
}

void Scheduler::finish(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  Sequence* s = it->second.get();
  release_all(*s);
  if (!s->host_blocks.empty()) bm_.release_host(s->host_blocks);
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
  swapped_.erase(std::remove(swapped_.begin(), swapped_.end(), s), swapped_.end());
  finished_.push_back(id);
  seqs_.erase(it);
}

}  // namespace llmserve
