#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "common/error.h"
#include "common/text.h"
#include "kernels/cpu/ops.h"
#include "kernels/draw.h"

namespace llmserve {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Local top-m values of row[0..n) (descending), padded with -inf to m.
std::vector<float> top_values(const float* row, int64_t n, int64_t m) {
  std::vector<float> v(row, row + n);
  const int64_t k = std::min(m, n);
  std::partial_sort(v.begin(), v.begin() + k, v.end(), std::greater<float>());
  v.resize(k);
  v.resize(m, kNegInf);
  return v;
}

// f(i, e, j) for each run [i, e) of consecutive set entries of mask, j counting the set entries before it.
template <typename F>
void for_runs(const std::vector<char>& mask, F&& f) {
  for (size_t i = 0, j = 0; i < mask.size();) {
    if (!mask[i]) {
      ++i;
      continue;
    }
    size_t e = i;
    while (e < mask.size() && mask[e]) ++e;
    f(i, e, j);
    j += e - i;
    i = e;
  }
}

}  // namespace

double Sampler::gumbel(int64_t seed, int64_t position, int64_t token) { return draw_gumbel(seed, position, token); }

Sampler::Sampler(Comm& tp, int64_t vocab_size, Range vocab, int64_t row_stride, Comm* tensor_comm)
    : tp_(tp), tensor_comm_(tp.size() > 1 ? tensor_comm : nullptr), vocab_size_(vocab_size), vocab_(vocab),
      stride_(row_stride) {}

Sampler::SeqState& Sampler::state_of(const SeqStep& s) {
  if (!row_state_.empty()) {
    auto it = row_state_.find(&s);
    if (it != row_state_.end()) return *it->second;
  }
  return state_.at(s.seq_id);
}

const Sampler::SeqState& Sampler::state_of(const SeqStep& s) const { return const_cast<Sampler*>(this)->state_of(s); }

void Sampler::advance(SeqState& st) const {
  const SamplingParams& p = st.params;
  if (p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) index_history(st);
  if (st.guide) feed_guide(st);
}

void Sampler::observe(const StepPlan& plan) {
  row_state_.clear();
  for (uint64_t id : plan.finished) state_.erase(id), drafts_.erase(id);
  for (const auto& s : plan.seqs) {
    SeqState& st = state_[s.seq_id];
    auto prev = drafts_.find(s.seq_id);
    if (prev != drafts_.end()) {
      // Its step before fed drafts: unless all were accepted (st is then up to date), the copy of the
      // state that the accepted tokens reach takes over.
      if (!s.start)
        for (SeqState& c : prev->second.states)
          if (c.len == static_cast<size_t>(s.num_computed)) {
            c.history = std::move(st.history);  // (cut to its length below)
            c.base = nullptr;
            st = std::move(c);
            break;
          }
      drafts_.erase(prev);
    }
    if (s.start) {
      st.params = s.start->params;
      st.seed = s.start->seed;
      st.prompt_len = s.start->prompt_len;
      st.eos_ids = s.start->eos_ids;
      st.history = s.start->prefix;
      st.guide = make_guide(st.params);
      if (st.guide && !tokens_) throw Error("guided decoding needs the model's tokenizer, which this model file lacks");
      st.guided_fed = 0;
    }
    st.history.resize(static_cast<size_t>(s.num_computed));
    if (st.indexed > st.history.size()) {  // tokens taken back (recomputation): index them anew
      st.seen.clear();
      st.out_counts.clear();
      st.indexed = 0;
    }
    const auto drafts = s.tokens.end() - s.num_draft;
    st.history.insert(st.history.end(), s.tokens.begin(), drafts);
    advance(st);
    if (s.num_draft == 0) continue;
    // A row before each draft: a stand-in step and the state as it is before that draft.
    DraftRows& d = drafts_[s.seq_id];
    d.steps.resize(static_cast<size_t>(s.num_draft));
    d.states.reserve(static_cast<size_t>(s.num_draft));
    for (int32_t j = 0; j < s.num_draft; ++j) {
      std::vector<int32_t> h = std::move(st.history);  // (the copy takes everything but the history)
      d.states.push_back(st);
      st.history = std::move(h);
      d.states.back().base = &st.history;
      d.states.back().len = st.history.size();
      SeqStep& v = d.steps[static_cast<size_t>(j)];
      v.seq_id = s.seq_id;
      v.num_computed = s.num_computed;
      v.sample = true;
      st.history.push_back(drafts[j]);
      advance(st);
    }
    for (int32_t j = 0; j < s.num_draft; ++j) row_state_[&d.steps[static_cast<size_t>(j)]] = &d.states[static_cast<size_t>(j)];
  }
}

void Sampler::feed_guide(SeqState& st) const {
  const size_t from = static_cast<size_t>(std::max<int32_t>(st.prompt_len, 0));
  if (st.guided_fed < from || st.guided_fed > st.history.size()) {  // new, or taken back: anew
    st.guide_state = st.guide->start();
    st.guided_fed = from;
  }
  const auto& bytes = tokens_->bytes;
  for (; st.guided_fed < st.history.size(); ++st.guided_fed) {
    const int32_t t = st.history[st.guided_fed];
    st.guide->feed(st.guide_state, t >= 0 && static_cast<size_t>(t) < bytes.size() ? bytes[t] : std::string_view());
  }
}

std::shared_ptr<const std::vector<uint64_t>> Sampler::guided_allowed(const SeqState& st, Range vocab) const {
  std::string key = st.guide->key(st.guide_state);
  key.append(reinterpret_cast<const char*>(&vocab.begin), sizeof vocab.begin);
  key.append(reinterpret_cast<const char*>(&vocab.end), sizeof vocab.end);
  {
    std::lock_guard<std::mutex> lock(guided_mu_);
    auto it = guided_cache_.find(key);
    if (it != guided_cache_.end()) return it->second;
  }
  ++guided_walks_;
  const auto& bytes = tokens_->bytes;
  const auto& plain = tokens_->plain;
  const int64_t room = st.guide->plain_string_room(st.guide_state);  // (-1: not inside a string)
  const auto& chars = tokens_->chars;
  // Which first bytes the state takes: most tokens are settled by theirs alone.
  bool first_ok[256];
  for (int c = 0; c < 256; ++c) {
    GuideState s = st.guide_state;
    const char b = static_cast<char>(c);
    first_ok[c] = st.guide->feed(s, std::string_view(&b, 1));
  }
  std::vector<uint64_t> allowed(static_cast<size_t>((vocab.size() + 63) / 64), 0);
  for (int64_t t = vocab.begin; t < vocab.end; ++t) {
    if (static_cast<size_t>(t) >= bytes.size() || bytes[t].empty()) continue;  // special tokens: never
    const std::string& b = bytes[t];
    bool ok = plain[t] && chars[t] <= room;  // string content: allowed as it is, up to a maximum length
    if (!ok) {
      ok = first_ok[static_cast<unsigned char>(b[0])];
      if (ok && b.size() > 1) {
        GuideState s = st.guide_state;
        ok = st.guide->feed(s, b);
      }
    }
    if (ok) allowed[static_cast<size_t>((t - vocab.begin) / 64)] |= uint64_t{1} << ((t - vocab.begin) % 64);
  }
  auto made = std::make_shared<const std::vector<uint64_t>>(std::move(allowed));
  if (guided_cache_states_ == 0) return made;
  std::lock_guard<std::mutex> lock(guided_mu_);
  if (guided_cache_.size() >= guided_cache_states_) guided_cache_.clear();  // (holders keep their entries)
  return guided_cache_.emplace(std::move(key), std::move(made)).first->second;
}

void Sampler::guided_mask(const SeqState& st, Range vocab, uint64_t* out) const {
  const auto allowed = guided_allowed(st, vocab);
  std::copy(allowed->begin(), allowed->end(), out);
  // The end of sequence exactly when the text is whole (or when nothing can continue it), as guided_bans.
  const bool done = st.guide->complete(st.guide_state) || st.guide->stuck(st.guide_state);
  for (const int64_t t : st.eos_ids) {
    if (t < vocab.begin || t >= vocab.end) continue;
    const int64_t c = t - vocab.begin;
    const uint64_t bit = uint64_t{1} << (c % 64);
    out[c / 64] = done ? out[c / 64] | bit : out[c / 64] & ~bit;
  }
}

void Sampler::guided_bans(const SeqState& st, Range vocab, std::vector<int32_t>& out) const {
  std::vector<uint64_t> allowed(static_cast<size_t>(mask_words(vocab.size())));
  guided_mask(st, vocab, allowed.data());
  for (int64_t t = vocab.begin; t < vocab.end; ++t)
    if (!mask_allows(allowed.data(), t - vocab.begin)) out.push_back(static_cast<int32_t>(t));
}

void Sampler::index_history(SeqState& st) {
  const size_t n = st.history.size(), from = st.indexed;
  const size_t out_from = std::max(from, static_cast<size_t>(std::max<int32_t>(st.prompt_len, 0)));
  if (n <= from) return;
  const int32_t* h = st.history.data();
  // A few tokens (a decode step): inserted in place; many (a prompt): appended, then sorted.
  if (n - from <= 16) {
    for (size_t i = from; i < n; ++i) {
      const auto at = std::lower_bound(st.seen.begin(), st.seen.end(), h[i]);
      if (at == st.seen.end() || *at != h[i]) st.seen.insert(at, h[i]);
    }
    for (size_t i = out_from; i < n; ++i) {
      const auto at = std::lower_bound(st.out_counts.begin(), st.out_counts.end(), std::make_pair(h[i], 0));
      if (at != st.out_counts.end() && at->first == h[i])
        ++at->second;
      else
        st.out_counts.insert(at, {h[i], 1});
    }
  } else {
    st.seen.insert(st.seen.end(), h + from, h + n);
    std::sort(st.seen.begin(), st.seen.end());
    st.seen.erase(std::unique(st.seen.begin(), st.seen.end()), st.seen.end());
    if (out_from < n) {
      std::vector<int32_t> outs(h + out_from, h + n);
      std::sort(outs.begin(), outs.end());
      std::vector<std::pair<int32_t, int32_t>> merged;
      merged.reserve(st.out_counts.size() + outs.size());
      constexpr int32_t kEnd = std::numeric_limits<int32_t>::max();
      size_t a = 0, b = 0;
      while (a < st.out_counts.size() || b < outs.size()) {
        const int32_t t = std::min(a < st.out_counts.size() ? st.out_counts[a].first : kEnd, b < outs.size() ? outs[b] : kEnd);
        int32_t c = 0;
        if (a < st.out_counts.size() && st.out_counts[a].first == t) c += st.out_counts[a++].second;
        while (b < outs.size() && outs[b] == t) ++c, ++b;
        merged.emplace_back(t, c);
      }
      st.out_counts = std::move(merged);
    }
  }
  st.indexed = st.history.size();
}

namespace {

// The sorted lists' parts inside `vocab` (index_history keeps them sorted: no sorting per step).
std::pair<const int32_t*, size_t> seen_in(const std::vector<int32_t>& seen, Range vocab) {
  const auto lo = static_cast<int32_t>(vocab.begin), hi = static_cast<int32_t>(vocab.end);
  const auto b = std::lower_bound(seen.begin(), seen.end(), lo), e = std::lower_bound(b, seen.end(), hi);
  return {seen.data() + (b - seen.begin()), static_cast<size_t>(e - b)};
}
std::pair<const std::pair<int32_t, int32_t>*, size_t> counts_in(const std::vector<std::pair<int32_t, int32_t>>& counts,
                                                                Range vocab) {
  const auto lo = static_cast<int32_t>(vocab.begin), hi = static_cast<int32_t>(vocab.end);
  const auto b = std::lower_bound(counts.begin(), counts.end(), std::make_pair(lo, 0));
  const auto e = std::lower_bound(b, counts.end(), std::make_pair(hi, 0));
  return {counts.data() + (b - counts.begin()), static_cast<size_t>(e - b)};
}

// The request's logit_bias entries within `vocab`: (index of the first, count).
std::pair<size_t, size_t> bias_in(const SamplingParams& p, Range vocab) {
  const auto& ids = p.logit_bias_ids;
  const auto lo = static_cast<int32_t>(vocab.begin), hi = static_cast<int32_t>(vocab.end);
  const auto b = std::lower_bound(ids.begin(), ids.end(), lo), e = std::lower_bound(b, ids.end(), hi);
  return {static_cast<size_t>(b - ids.begin()), static_cast<size_t>(e - b)};
}

bool repetition_on(const SamplingParams& p) { return p.repetition_penalty != 1.0; }
bool counts_on(const SamplingParams& p) { return p.presence_penalty != 0.0 || p.frequency_penalty != 0.0; }
// Whether min_tokens still masks the stop tokens: fewer output tokens than it asks for so far.
template <typename State>
bool stops_masked(const State& st) {
  return static_cast<int64_t>(st.fed().size()) - st.prompt_len < st.params.min_tokens;
}

// vLLM's bad_words: the last token of each sequence whose other tokens end the output so far.
template <typename State>
void bad_word_bans(const State& st, std::vector<int32_t>& out) {
  const auto h = st.fed();
  const size_t produced = h.size() - std::min(h.size(), static_cast<size_t>(std::max(st.prompt_len, 0)));
  for (const auto& seq : st.params.bad_words_ids) {
    if (seq.empty() || seq.size() - 1 > produced) continue;
    if (std::equal(seq.begin(), seq.end() - 1, h.end() - static_cast<std::ptrdiff_t>(seq.size() - 1))) out.push_back(seq.back());
  }
}

}  // namespace

size_t Sampler::penalty_edit_bound(const SeqState& st, Range vocab, bool guide_as_edits) {
  const SamplingParams& p = st.params;
  size_t n = 0;
  if (repetition_on(p)) n += seen_in(st.seen, vocab).second;
  if (counts_on(p)) n += counts_in(st.out_counts, vocab).second;
  if (stops_masked(st)) n += st.eos_ids.size() + p.stop_token_ids.size();
  n += bias_in(p, vocab).second;
  n += p.bad_words_ids.size();
  if (!p.allowed_token_ids.empty()) n += static_cast<size_t>(vocab.size());  // the tokens not allowed, at most
  if (st.guide && guide_as_edits) n += static_cast<size_t>(vocab.size());
  return n;
}

size_t Sampler::penalty_edits(const SeqState& st, int32_t row, Range vocab, LogitEdit* out, bool guide_as_edits) const {
  const SamplingParams& p = st.params;
  auto local = [&](int32_t t) { return t >= vocab.begin && t < vocab.end; };
  const auto [rep, nrep] = repetition_on(p) ? seen_in(st.seen, vocab) : std::make_pair(nullptr, size_t{0});
  const auto [cnt, nout] = counts_on(p) ? counts_in(st.out_counts, vocab)
                                        : std::make_pair(static_cast<const std::pair<int32_t, int32_t>*>(nullptr), size_t{0});
  std::vector<int32_t> mask;
  if (stops_masked(st)) {
    if (!p.ignore_eos && !st.guide)  // (guided decoding decides the end of sequence itself)
      for (int32_t t : st.eos_ids)
        if (local(t)) mask.push_back(t);
    for (int32_t t : p.stop_token_ids)
      if (local(t)) mask.push_back(t);
  }
  if (!p.bad_words_ids.empty()) {
    std::vector<int32_t> bans;
    bad_word_bans(st, bans);
    for (int32_t t : bans)
      if (local(t)) mask.push_back(t);
  }
  std::sort(mask.begin(), mask.end());
  if (st.guide && guide_as_edits) {  // ascending already: merged in
    const auto mid = static_cast<std::ptrdiff_t>(mask.size());
    guided_bans(st, vocab, mask);
    std::inplace_merge(mask.begin(), mask.begin() + mid, mask.end());
  }
  mask.erase(std::unique(mask.begin(), mask.end()), mask.end());
  const auto [bias_at, nbias] = bias_in(p, vocab);
  constexpr int32_t kEnd = std::numeric_limits<int32_t>::max();
  // allowed_token_ids: every other token of the shard is masked, in order, without listing them.
  const auto& allowed = p.allowed_token_ids;
  size_t ai = 0;
  int32_t next_out = allowed.empty() ? kEnd : static_cast<int32_t>(vocab.begin);
  auto skip_allowed = [&] {  // next_out to the first token at or after it that is not allowed
    while (next_out < vocab.end) {
      while (ai < allowed.size() && allowed[ai] < next_out) ++ai;
      if (ai == allowed.size() || allowed[ai] != next_out) return;
      ++next_out;
    }
    next_out = kEnd;
  };
  skip_allowed();
  // Merge the five by token: one edit per token.
  size_t a = 0, b = 0, c = 0, d = 0, n = 0;
  for (;;) {
    const int32_t t = std::min({a < nrep ? rep[a] : kEnd, b < nout ? cnt[b].first : kEnd, c < mask.size() ? mask[c] : kEnd,
                                d < nbias ? p.logit_bias_ids[bias_at + d] : kEnd, next_out});
    if (t == kEnd) break;
    LogitEdit e;
    e.row = row;
    e.col = static_cast<int32_t>(t - vocab.begin);
    if (d < nbias && p.logit_bias_ids[bias_at + d] == t) e.bias = p.logit_bias[bias_at + d], ++d;
    if (a < nrep && rep[a] == t) e.rep = static_cast<float>(p.repetition_penalty), ++a;
    if (b < nout && cnt[b].first == t) e.sub = static_cast<float>(p.presence_penalty + p.frequency_penalty * cnt[b++].second);
    if (c < mask.size() && mask[c] == t) e.mask = 1, ++c;
    if (next_out == t) e.mask = 1, ++next_out, skip_allowed();
    out[n++] = e;
  }
  return n;
}

std::vector<LogitEdit> Sampler::penalty_edits(const SeqState& st, int32_t row, Range vocab) const {
  std::vector<LogitEdit> edits(penalty_edit_bound(st, vocab));
  edits.resize(penalty_edits(st, row, vocab, edits.data()));
  return edits;
}

RowDraw Sampler::row_draw(const SeqState& st) const {
  const SamplingParams& p = st.params;
  RowDraw r;
  r.greedy = p.greedy();
  r.inv_temperature = r.greedy ? 1.f : static_cast<float>(1.0 / p.temperature);
  r.seed = st.seed;
  r.position = static_cast<int64_t>(st.fed().size());
  if (!r.greedy) {
    if (p.top_k > 0 && p.top_k < vocab_size_) r.top_k = p.top_k;
    if (p.min_p > 0) r.log_min_p = static_cast<float>(std::log(p.min_p));
    r.top_p = p.top_p;
  }
  return r;
}

bool Sampler::row_drawable(const SeqState& st) const {
  // Filters need the whole row: on the backend only without a vocabulary split.
  return tp_.size() == 1 || !row_draw(st).filtered();
}

bool Sampler::edits_logits(const SeqState& st) {
  return repetition_on(st.params) || counts_on(st.params) || stops_masked(st) || !st.params.logit_bias_ids.empty() ||
         !st.params.bad_words_ids.empty() || !st.params.allowed_token_ids.empty() || st.guide != nullptr;
}

std::vector<const SeqStep*> Sampler::sampled(const StepPlan& plan) const {
  std::vector<const SeqStep*> seqs;
  for (const auto& s : plan.seqs) {
    if (!s.sample) continue;
    if (state_.find(s.seq_id) == state_.end()) throw Error(cat("sampler: no state for sequence ", s.seq_id));
    if (s.num_draft > 0) {
      auto d = drafts_.find(s.seq_id);
      if (d == drafts_.end() || d->second.steps.size() != static_cast<size_t>(s.num_draft))
        throw Error(cat("sampler: sequence ", s.seq_id, " has drafts this sampler did not observe"));
      for (const SeqStep& v : d->second.steps) seqs.push_back(&v);
    }
    seqs.push_back(&s);
  }
  return seqs;
}

bool Sampler::drawable_on_backend(const StepPlan& plan) const {
  for (const auto& s : plan.seqs) {
    if (!s.sample) continue;
    auto it = state_.find(s.seq_id);
    if (it == state_.end() || it->second.params.logprobs >= 0 || !row_drawable(it->second)) return false;
  }
  return true;
}

namespace {
// LLMSERVE_GUIDED_EDITS=1: backend draws take guided rows' bans as edits, as before the bitmaps (for
// measuring the two against each other: bench/guided.sh).
bool guided_as_edits() {
  static const bool on = env_flag("LLMSERVE_GUIDED_EDITS");
  return on;
}
}  // namespace

void Sampler::row_draws(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw, Range vocab,
                        std::vector<RowDraw>& rows, std::vector<LogitEdit>& edits, RowMasks& masks) const {
  const bool as_edits = guided_as_edits();
  const size_t n = seqs.size(), first_row = rows.size();
  std::vector<const SeqState*> st(n, nullptr);
  for (size_t i = 0; i < n; ++i)
    if (draw[i]) st[i] = &state_of(*seqs[i]);
  // Guided rows: their bitmaps (most often from the cache), in row order.
  const int64_t words = mask_words(vocab.size());
  for (size_t i = 0; i < n && !as_edits; ++i) {
    if (!st[i] || !st[i]->guide) continue;
    masks.rows.push_back(static_cast<int32_t>(i));  // (the row its edits name)
    masks.bits.resize(masks.bits.size() + static_cast<size_t>(words));
    guided_mask(*st[i], vocab, masks.bits.data() + masks.bits.size() - static_cast<size_t>(words));
  }
  // Rows in parallel, each writing its edits (a walk over its history's distinct tokens) into its
  // slot of `edits` (room for its bound); then the slots are closed up in row order.
  std::vector<size_t> at(n + 1, 0), got(n, 0);
  for (size_t i = 0; i < n; ++i) at[i + 1] = at[i] + (st[i] ? penalty_edit_bound(*st[i], vocab, as_edits) : 0);
  const size_t base = edits.size();
  edits.resize(base + at[n]);
  rows.resize(first_row + n);  // rows drawn elsewhere: a plain greedy draw whose result is not used
  const auto N = static_cast<long>(n);
  // A team only when there are edits enough to share: waking the threads costs more than plain rows
  // (greedy or filtered only, no penalties) take alone, and they spin on the host's cores afterwards.
  const bool team = N > 16 && at[n] > 16384;
#pragma omp parallel for schedule(dynamic, 8) if (team)
  for (long i = 0; i < N; ++i) {
    if (!st[i]) continue;
    got[i] = penalty_edits(*st[i], static_cast<int32_t>(i), vocab, edits.data() + base + at[i], as_edits);
    rows[first_row + i] = row_draw(*st[i]);
  }
  size_t w = base;
  for (size_t i = 0; i < n; ++i) {
    if (w != base + at[i]) std::copy_n(edits.begin() + static_cast<long>(base + at[i]), got[i], edits.begin() + static_cast<long>(w));
    w += got[i];
  }
  edits.resize(w);
}

bool Sampler::drawn_in_one_call(const StepPlan& plan) const {
  if (tp_.size() != 1) return false;  // (then every row is drawn on the backend)
  const auto seqs = sampled(plan);
  int calls = 0;
  for_edit_groups(seqs, std::vector<char>(seqs.size(), 1), [&](const std::vector<char>&) { ++calls; });
  return calls == 1;
}

void Sampler::for_edit_groups(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw,
                              const std::function<void(const std::vector<char>&)>& fn) const {
  std::vector<char> group(seqs.size(), 0);
  size_t used = 0;
  bool any = false;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (!draw[i]) continue;
    const size_t b = penalty_edit_bound(state_of(*seqs[i]), Range{0, vocab_size_}, guided_as_edits());
    if (any && used + b > edit_budget_) {
      fn(group);
      std::fill(group.begin(), group.end(), 0);
      used = 0;
    }
    group[i] = 1;
    used += b;
    any = true;
  }
  if (any) fn(group);
}

void Sampler::draw_rows_on_backend(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw,
                                   Backend& backend, Tensor& logits, std::vector<SampledToken>& out,
                                   std::vector<float>* keep) {
  for_edit_groups(seqs, draw, [&](const std::vector<char>& group) {
    std::vector<RowDraw> rows;
    std::vector<LogitEdit>& edits = edits_;
    edits.clear();
    RowMasks masks;
    row_draws(seqs, group, vocab_, rows, edits, masks);
    const size_t n = rows.size();
    std::vector<float> best(n), kp(keep ? n : 0);
    std::vector<int32_t> idx(n);
    backend.draw_rows(logits, vocab_.size(), vocab_.begin, rows, edits, masks, best.data(), idx.data(), keep ? kp.data() : nullptr);
    tp_.all_reduce_maxloc(best.data(), idx.data(), n);
    take_drawn(seqs, group, idx, out);
    for (size_t i = 0; keep && i < n; ++i)
      if (group[i]) (*keep)[i] = kp[i];
  });
}

void Sampler::take_drawn(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw,
                         const std::vector<int32_t>& idx, std::vector<SampledToken>& out) const {
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (!draw[i]) continue;
    out[i].seq_id = seqs[i]->seq_id;
    out[i].token = drawn_token(idx[i]);
  }
}

std::vector<SampledToken> Sampler::sample_on_backend(const StepPlan& plan, Backend& backend, Tensor& logits) {
  const auto seqs = sampled(plan);
  std::vector<SampledToken> out(seqs.size());
  if (!seqs.empty()) draw_rows_on_backend(seqs, std::vector<char>(seqs.size(), 1), backend, logits, out);
  return out;
}

std::vector<SampledToken> Sampler::sample_step(const StepPlan& plan, Backend& backend, Tensor& logits,
                                              const std::function<void()>& last_read) {
  const auto seqs = sampled(plan);
  const size_t n = seqs.size();
  std::vector<SampledToken> out(n);
  if (n == 0) return out;
  // Every rank of the tensor group takes the same branches: the split follows from the plan alone.
  std::vector<char> on_backend(n), gathered(n), on_host(n), lp(n), lp_edited(n), pp_backend(n), pp_gathered(n);
  size_t backend_rows = 0, gathered_rows = 0, host_rows = 0, lp_rows = 0, lp_edited_rows = 0, ppb_rows = 0, ppg_rows = 0;
  for (size_t i = 0; i < n; ++i) {
    const SeqState& st = state_of(*seqs[i]);
    on_backend[i] = row_drawable(st);
    gathered[i] = !on_backend[i] && tensor_comm_;  // filters over a split vocabulary
    on_host[i] = !on_backend[i] && !gathered[i];
    // Raw log-probabilities of rows drawn on the backend come from their raw logits there too; a row the
    // backend draw edits in place (penalties) is copied first. Processed ones come from the row the draw
    // edited (the logits in place, or the gathered whole rows) under the row's view.
    const bool proc = processed_logprobs(st);
    lp[i] = !on_host[i] && st.params.logprobs >= 0 && !proc;
    lp_edited[i] = lp[i] && on_backend[i] && edits_logits(st);
    pp_backend[i] = on_backend[i] && proc;
    pp_gathered[i] = gathered[i] && proc;
    backend_rows += on_backend[i] != 0;
    gathered_rows += gathered[i] != 0;
    host_rows += on_host[i] != 0;
    lp_rows += lp[i] != 0;
    lp_edited_rows += lp_edited[i] != 0;
    ppb_rows += pp_backend[i] != 0;
    ppg_rows += pp_gathered[i] != 0;
  }
  // The draws' keep thresholds, for the processed rows.
  std::vector<float> keep(ppb_rows + ppg_rows > 0 ? n : 0, kNegInf);
  // The gathered draw first: it reads the logits before the backend draw edits them in place.
  Tensor whole;
  if (gathered_rows > 0) whole = draw_gathered(seqs, gathered, backend, logits, out, keep);
  Tensor raw;  // the log-probability rows, when some of them are edited
  if (lp_edited_rows > 0) {
    raw = backend.empty({static_cast<int64_t>(lp_rows), stride_}, DType::F32);
    for_runs(lp, [&](size_t i, size_t e, size_t j) {
      Tensor dst = rows_view(raw, static_cast<int64_t>(j), static_cast<int64_t>(e - i));
      backend.copy(rows_view(logits, static_cast<int64_t>(i), static_cast<int64_t>(e - i)), dst);
    });
  }
  // The last backend call that reads the logits (no host rows to download): the processed
  // log-probabilities' when there are such rows, else the raw ones', else the draw.
  const bool arm = last_read && host_rows == 0;
  if (arm && lp_rows == 0 && ppb_rows == 0) last_read();
  if (backend_rows > 0) draw_rows_on_backend(seqs, on_backend, backend, logits, out, ppb_rows > 0 ? &keep : nullptr);
  if (arm && lp_rows > 0 && ppb_rows == 0) last_read();
  if (lp_rows > 0) {
    std::vector<int32_t> chosen(n);
    for (size_t i = 0; i < n; ++i) chosen[i] = out[i].token;
    const Tensor& src = lp_edited_rows > 0 ? raw : logits;  // raw holds the rows packed
    add_logprobs(seqs, lp, chosen, lp_edited_rows > 0, out,
                 [&](const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int K, float* stats,
                     float* top_v, int32_t* top_i) {
                   backend.row_logprobs(src, vocab_.size(), vocab_.begin, rows, tokens, K, stats, top_v, top_i, nullptr);
                 });
  }
  if (arm && ppb_rows > 0) last_read();
  if (ppb_rows > 0) add_processed_logprobs(seqs, pp_backend, keep, backend, logits, vocab_.size(), vocab_.begin, out);
  if (ppg_rows > 0) {
    // This rank's columns of the whole rows: each rank reduces its shard, as for the logits.
    Tensor shard = whole;
    shard.data = whole.as<float>() + vocab_.begin;
    add_processed_logprobs(seqs, pp_gathered, keep, backend, shard, vocab_.size(), vocab_.begin, out);
  }
  if (host_rows == 0) return out;
  std::vector<const SeqStep*> host;
  for (size_t i = 0; i < n; ++i)
    if (on_host[i]) host.push_back(seqs[i]);
  // The host rows' logits, one download per run of consecutive rows.
  std::vector<float> host_logits(host.size() * static_cast<size_t>(stride_));
  for_runs(on_host, [&](size_t i, size_t e, size_t j) {
    backend.download(rows_view(logits, static_cast<int64_t>(i), static_cast<int64_t>(e - i)),
                     host_logits.data() + j * stride_);
  });
  const auto drawn = sample_rows(host, host_logits.data());
  for (size_t i = 0, j = 0; i < n; ++i)
    if (on_host[i]) out[i] = drawn[j++];
  return out;
}

void Sampler::add_logprobs(const std::vector<const SeqStep*>& seqs, const std::vector<char>& lp,
                           const std::vector<int32_t>& chosen, bool packed, std::vector<SampledToken>& out,
                           const ShardLogprobs& reduce) {
  std::vector<int32_t> rows, tokens;
  std::vector<int> want;
  std::vector<char> as_logits;
  std::vector<SampledToken*> res;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (!lp[i]) continue;
    rows.push_back(static_cast<int32_t>(packed ? res.size() : i));
    tokens.push_back(chosen[i]);
    want.push_back(state_of(*seqs[i]).params.logprobs);
    as_logits.push_back(reports_logits(state_of(*seqs[i]).params.logprobs_mode));
    res.push_back(&out[i]);
  }
  reduce_logprobs(rows, tokens, want, res, reduce, nullptr, as_logits);
}

void Sampler::add_processed_logprobs(const std::vector<const SeqStep*>& seqs, const std::vector<char>& pp,
                                     const std::vector<float>& keep, Backend& backend, const Tensor& values, int64_t L,
                                     int64_t token_offset, std::vector<SampledToken>& out) {
  // The row's values as its draw saw them (the same products, so the same floats as the host sampler's):
  // a greedy row's edited logits; a sampled row's over its temperature, cut at its keep threshold; top_k
  // 1 under a temperature (drawn as greedy) its chosen token alone, over the temperature.
  std::vector<LogprobView> views;
  std::vector<int32_t> chosen(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    chosen[i] = out[i].token;
    if (!pp[i]) continue;
    const SeqState& st = state_of(*seqs[i]);
    const SamplingParams& p = st.params;
    LogprobView v;
    if (!p.greedy()) {
      v.scale = row_draw(st).inv_temperature;
      v.floor = keep[i];
    } else if (p.top_k == 1 && p.temperature >= 1e-5) {
      v.scale = static_cast<float>(1.0 / p.temperature);
      v.only = out[i].token;
    }
    views.push_back(v);
  }
  add_logprobs(seqs, pp, chosen, false, out,
               [&](const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int K, float* stats, float* top_v,
                   int32_t* top_i) {
                 backend.row_logprobs(values, L, token_offset, rows, tokens, K, stats, top_v, top_i, views.data());
               });
}

void Sampler::reduce_logprobs(const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens,
                              const std::vector<int>& want, const std::vector<SampledToken*>& res,
                              const ShardLogprobs& reduce, const ShardCounts* count, const std::vector<char>& as_logits) {
  const size_t m = rows.size();
  const int K = want.empty() ? 0 : *std::max_element(want.begin(), want.end());
  std::vector<float> stats(3 * m), top_v(m * K);
  std::vector<int32_t> top_i(m * K);
  reduce(rows, tokens, K, stats.data(), top_v.data(), top_i.data());
  // The group's largest logit; the shards' sums rescaled to it and the chosen token's logit (from the
  // one rank holding it) summed.
  std::vector<float> mx(m), sums(2 * m);
  for (size_t j = 0; j < m; ++j) mx[j] = stats[3 * j];
  tp_.all_reduce_max(mx.data(), m);
  for (size_t j = 0; j < m; ++j) {
    sums[2 * j] = stats[3 * j] == kNegInf ? 0.f : stats[3 * j + 1] * std::exp(stats[3 * j] - mx[j]);
    sums[2 * j + 1] = stats[3 * j + 2];
  }
  tp_.all_reduce_sum(sums.data(), 2 * m);
  // Every rank's top lists as (value, token) pairs of floats (token ids are exact below 2^24).
  std::vector<float> mine(m * K * 2), all(mine.size() * tp_.size());
  for (size_t q = 0; q < m * K; ++q) mine[2 * q] = top_v[q], mine[2 * q + 1] = static_cast<float>(top_i[q]);
  if (K > 0) tp_.all_gather(mine.data(), mine.size(), all.data());
  std::vector<std::pair<float, int32_t>> cand;
  cand.reserve(static_cast<size_t>(K) * tp_.size());
  for (size_t j = 0; j < m; ++j) {
    SampledToken& r = *res[j];
    // (the values themselves for a logits mode)
    const float lse = !as_logits.empty() && as_logits[j] ? 0.f : mx[j] + std::log(sums[2 * j]);
    r.logprob = sums[2 * j + 1] - lse;
    cand.clear();  // (one buffer for every row: a row's few entries were a handful of allocations each)
    for (int g = 0; g < tp_.size(); ++g)
      for (int k = 0; k < K; ++k) {
        const size_t at = ((g * m + j) * K + k) * 2;
        if (all[at] != kNegInf) cand.emplace_back(all[at], static_cast<int32_t>(all[at + 1]));
      }
    std::sort(cand.begin(), cand.end(),
              [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    r.top_ids.clear();
    r.top_logprobs.clear();
    r.top_ids.reserve(static_cast<size_t>(want[j]));
    r.top_logprobs.reserve(static_cast<size_t>(want[j]));
    for (int k = 0; k < want[j] && k < static_cast<int>(cand.size()); ++k) {
      r.top_ids.push_back(cand[k].second);
      r.top_logprobs.push_back(cand[k].first - lse);
    }
  }
  if (!count || m == 0) return;
  // Ranks: each shard's tokens at or above the chosen token's logit, summed over the group.
  std::vector<float> thresholds(m);
  for (size_t j = 0; j < m; ++j) thresholds[j] = sums[2 * j + 1];
  std::vector<int32_t> counts(m);
  (*count)(rows, thresholds, counts.data());
  std::vector<float> total(counts.begin(), counts.end());
  tp_.all_reduce_sum(total.data(), m);
  for (size_t j = 0; j < m; ++j) res[j]->rank = static_cast<int32_t>(total[j]);
}

std::vector<SampledToken> Sampler::prompt_logprobs(const StepPlan& plan, Backend& backend, const Tensor& logits,
                                                   int64_t first, int64_t count) {
  std::vector<SampledToken> out;
  std::vector<int32_t> rows, tokens;
  std::vector<int> want;
  int64_t index = 0;  // of the plan's prompt targets
  for (const auto& s : plan.seqs) {
    if (s.prompt_targets.empty()) continue;
    const int k = state_.at(s.seq_id).params.prompt_logprobs;
    LLMSERVE_CHECK(k >= 0, "step plan: prompt targets for a sequence without prompt_logprobs");
    for (size_t j = 0; j < s.prompt_targets.size(); ++j, ++index) {
      if (index < first || index >= first + count) continue;
      SampledToken t;
      t.seq_id = s.seq_id;
      t.token = s.prompt_targets[j];
      t.position = s.num_computed + static_cast<int32_t>(j) + 1;
      out.push_back(std::move(t));
      rows.push_back(static_cast<int32_t>(index - first));
      tokens.push_back(s.prompt_targets[j]);
      want.push_back(k);
    }
  }
  if (out.empty()) return out;
  std::vector<SampledToken*> res;
  for (auto& t : out) res.push_back(&t);
  const ShardCounts ranks = [&](const std::vector<int32_t>& r, const std::vector<float>& thresholds, int32_t* counts) {
    backend.count_at_least(logits, vocab_.size(), r, thresholds, counts);
  };
  reduce_logprobs(rows, tokens, want, res,
                  [&](const std::vector<int32_t>& r, const std::vector<int32_t>& t, int K, float* stats, float* top_v,
                      int32_t* top_i) { backend.row_logprobs(logits, vocab_.size(), vocab_.begin, r, t, K, stats, top_v, top_i, nullptr); },
                  &ranks);
  return out;
}

Tensor Sampler::draw_gathered(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw, Backend& backend,
                              const Tensor& logits, std::vector<SampledToken>& out, std::vector<float>& keep) {
  const int64_t n = static_cast<int64_t>(seqs.size());
  const int G = tp_.size();
  LLMSERVE_CHECK(tensor_comm_ && tensor_comm_->size() == G, "sampler: the tensor communicator is not the tensor group");
  // All of the step's rows (the shards are rank-major after the gather), then whole rows of the vocabulary.
  Tensor all = backend.empty({G * n, stride_}, DType::F32);
  tensor_comm_->all_gather(rows_view(logits, 0, n).as<float>(), static_cast<size_t>(n * stride_), all.as<float>());
  Tensor whole = backend.empty({n, vocab_size_}, DType::F32);
  for (int r = 0; r < G; ++r) {
    const Range shard = shard_range(vocab_size_, G, r);
    backend.copy_columns(rows_view(all, r * n, n), shard.size(), whole, shard.begin);
  }
  for_edit_groups(seqs, draw, [&](const std::vector<char>& group) {
    std::vector<RowDraw> rows;
    std::vector<LogitEdit>& edits = edits_;
    edits.clear();
    RowMasks masks;
    row_draws(seqs, group, Range{0, vocab_size_}, rows, edits, masks);
    std::vector<float> best(static_cast<size_t>(n)), kp(keep.empty() ? 0 : static_cast<size_t>(n));
    std::vector<int32_t> idx(static_cast<size_t>(n));
    backend.draw_rows(whole, vocab_size_, 0, rows, edits, masks, best.data(), idx.data(), keep.empty() ? nullptr : kp.data());
    take_drawn(seqs, group, idx, out);
    for (size_t i = 0; i < kp.size(); ++i)
      if (group[i]) keep[i] = kp[i];
  });
  return whole;
}

std::vector<SampledToken> Sampler::sample(const StepPlan& plan, const float* logits) {
  return sample_rows(sampled(plan), logits);
}

std::vector<SampledToken> Sampler::sample_rows(const std::vector<const SeqStep*>& seqs, const float* logits) {
  const size_t n = seqs.size();
  std::vector<SampledToken> out(n);
  if (n == 0) return out;
  const int64_t L = vocab_.size();
  std::vector<SeqState*> st(n);
  for (size_t i = 0; i < n; ++i) {
    st[i] = &state_of(*seqs[i]);
    out[i].seq_id = seqs[i]->seq_id;
  }
  auto raw = [&](size_t i) { return logits + static_cast<int64_t>(i) * stride_; };

  const bool want_logprobs = std::any_of(st.begin(), st.end(), [](SeqState* s) { return s->params.logprobs >= 0; });

  // Processed logits (penalties, then temperature), one row of `work` per sequence, and each row's
  // survivors of the filters so far: every column until a threshold cuts the row down to a list of
  // columns, which the later passes walk instead of the whole row (after top-k, a few dozen of
  // ~10^5). Between the collectives the rows are independent: their passes run in parallel.
  const auto Ls = static_cast<size_t>(L);
  const auto N = static_cast<long>(n);
  std::unique_ptr<float[]> work(new float[n * Ls]);  // (uninitialized: every element is written first)
  std::vector<std::vector<int32_t>> keep(n);
  std::vector<char> dense(n, 1);
  auto w = [&](size_t i) { return work.get() + i * Ls; };
  auto each = [&](size_t i, auto&& f) {  // f(column, value) over row i's survivors
    const float* r = w(i);
    if (dense[i]) {
      for (int64_t k = 0; k < L; ++k) f(k, r[k]);
    } else {
      for (int32_t k : keep[i]) f(k, r[k]);
    }
  };
  auto cut = [&](size_t i, float thr) {  // keeps row i's survivors with value >= thr
    std::vector<int32_t> kept;
    each(i, [&](int64_t k, float x) {
      if (!(x < thr)) kept.push_back(static_cast<int32_t>(k));
    });
    keep[i] = std::move(kept);
    dense[i] = 0;
  };
  auto top = [&](size_t i, int64_t m) {  // row i's m largest survivors, padded with -inf
    if (dense[i]) return top_values(w(i), L, m);
    std::vector<float> v;
    v.reserve(keep[i].size());
    each(i, [&](int64_t, float x) { v.push_back(x); });
    return top_values(v.data(), static_cast<int64_t>(v.size()), m);
  };
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < N; ++i) {
    const SamplingParams& p = st[i]->params;
    const float* s = raw(i);
    float* r = w(i);
    // One edit per token (penalty_edits), so an edited column is its edit of the raw logit.
    if (p.greedy()) {
      std::copy(s, s + L, r);
      for (const LogitEdit& e : penalty_edits(*st[i], 0, vocab_)) r[e.col] = apply_logit_edit(s[e.col], e);
    } else {
      const float inv_t = static_cast<float>(1.0 / p.temperature);
      for (int64_t k = 0; k < L; ++k) r[k] = s[k] * inv_t;
      for (const LogitEdit& e : penalty_edits(*st[i], 0, vocab_)) r[e.col] = apply_logit_edit(s[e.col], e) * inv_t;
    }
  }

  // top-k: the k-th largest value over the group is the threshold.
  int64_t kmax = 0;
  for (size_t i = 0; i < n; ++i)
    if (!st[i]->params.greedy() && st[i]->params.top_k > 0 && st[i]->params.top_k < vocab_size_)
      kmax = std::max<int64_t>(kmax, st[i]->params.top_k);
  if (kmax > 0) {
    std::vector<float> mine(n * kmax), all(n * kmax * tp_.size());
#pragma omp parallel for schedule(dynamic)
    for (long i = 0; i < N; ++i) {
      auto v = top(i, kmax);
      std::copy(v.begin(), v.end(), mine.begin() + i * kmax);
    }
    tp_.all_gather(mine.data(), mine.size(), all.data());
#pragma omp parallel for schedule(dynamic)
    for (long i = 0; i < N; ++i) {
      const int k = st[i]->params.top_k;
      if (st[i]->params.greedy() || k <= 0 || k >= vocab_size_) continue;
      std::vector<float> cand;
      for (int r = 0; r < tp_.size(); ++r)
        cand.insert(cand.end(), all.begin() + static_cast<long>((r * n + i) * kmax),
                    all.begin() + static_cast<long>((r * n + i) * kmax + kmax));
      cut(i, cpu::kth_largest(cand.data(), static_cast<int64_t>(cand.size()), k));
    }
  }

  // min-p: keep tokens with probability >= min_p * max probability.
  {
    std::vector<float> mx(n, kNegInf);
#pragma omp parallel for schedule(dynamic)
    for (long i = 0; i < N; ++i) each(i, [&](int64_t, float x) { mx[i] = std::max(mx[i], x); });
    tp_.all_reduce_max(mx.data(), n);
#pragma omp parallel for schedule(dynamic)
    for (long i = 0; i < N; ++i) {
      const double mp = st[i]->params.min_p;
      if (!st[i]->params.greedy() && mp > 0) cut(i, mx[i] + static_cast<float>(std::log(mp)));
    }

    // top-p: the smallest set of most likely tokens whose probability reaches top_p.
    std::vector<size_t> tp_rows;
    for (size_t i = 0; i < n; ++i)
      if (!st[i]->params.greedy() && st[i]->params.top_p < 1.0) tp_rows.push_back(i);
    if (!tp_rows.empty()) {
      const size_t m = tp_rows.size();
      const auto Mrows = static_cast<long>(m);
      // Normalizers summed in double, rounded to float for the all-reduce (as the backend's draw does).
      std::vector<float> sum(m, 0.f);
#pragma omp parallel for schedule(dynamic)
      for (long j = 0; j < Mrows; ++j) {
        const size_t i = tp_rows[j];
        double z = 0;
        each(i, [&](int64_t, float x) {
          if (x != kNegInf) z += std::exp(static_cast<double>(x) - mx[i]);
        });
        sum[j] = static_cast<float>(z);
      }
      tp_.all_reduce_sum(sum.data(), m);
      std::vector<float> thr(m, kNegInf);
      std::vector<char> done(m, 0);
      for (int64_t M = 64;; M *= 4) {
        std::vector<float> mine(m * M), all(m * M * tp_.size());
#pragma omp parallel for schedule(dynamic)
        for (long j = 0; j < Mrows; ++j) {
          auto v = top(tp_rows[j], M);
          std::copy(v.begin(), v.end(), mine.begin() + j * M);
        }
        tp_.all_gather(mine.data(), mine.size(), all.data());
        bool all_done = true;
        for (size_t j = 0; j < m; ++j) {
          if (done[j]) continue;
          std::vector<float> cand;
          bool exhausted = true;  // every rank sent fewer than M survivors: the candidates are all of them
          for (int r = 0; r < tp_.size(); ++r) {
            const auto first = all.begin() + static_cast<long>((r * m + j) * M);
            cand.insert(cand.end(), first, first + M);
            exhausted = exhausted && *(first + M - 1) == kNegInf;
          }
          std::sort(cand.begin(), cand.end(), std::greater<float>());
          const size_t i = tp_rows[j];
          const auto finite = std::find(cand.begin(), cand.end(), kNegInf) - cand.begin();
          thr[j] = cpu::top_p_cut(cand.data(), finite, mx[i], sum[j], st[i]->params.top_p);
          done[j] = thr[j] != kNegInf;
          if (exhausted) done[j] = 1;  // rounding kept the sum short of top_p: keep every survivor
          all_done = all_done && done[j];
        }
        float flag = static_cast<float>(all_done ? 0 : 1);
        tp_.all_reduce_max(&flag, 1);
        if (flag == 0 || M >= L) break;
      }
#pragma omp parallel for schedule(dynamic)
      for (long j = 0; j < Mrows; ++j) cut(tp_rows[j], thr[j]);
    }
  }

  // Choose: greedy argmax, or the Gumbel-max draw; one (value, index) all-reduce for all rows.
  std::vector<float> best(n, kNegInf);
  std::vector<int32_t> idx(n, std::numeric_limits<int32_t>::max());
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < N; ++i) {
    const bool greedy = st[i]->params.greedy();
    const int64_t pos = static_cast<int64_t>(st[i]->fed().size());
    double bv = -std::numeric_limits<double>::infinity();
    int64_t bi = -1;
    each(i, [&](int64_t k, float x) {
      if (x == kNegInf) return;
      const double score = greedy ? x : x + gumbel(st[i]->seed, pos, vocab_.begin + k);
      if (score > bv) bv = score, bi = k;
    });
    if (bi >= 0) {
      best[i] = static_cast<float>(bv);
      idx[i] = static_cast<int32_t>(vocab_.begin + bi);
    }
  }
  tp_.all_reduce_maxloc(best.data(), idx.data(), n);

  // Log-probabilities of the chosen tokens and the top alternatives, from the raw logits, or for a
  // processed mode from the values drawn from (`work`), the tokens the filters dropped at -inf.
  if (want_logprobs) {
    std::vector<char> lp(n), proc(n);  // proc: a processed mode's row, reduced from `work` (no longer needed)
    for (size_t i = 0; i < n; ++i) {
      lp[i] = st[i]->params.logprobs >= 0;
      proc[i] = lp[i] && processed(st[i]->params.logprobs_mode);
    }
    // The processed values in place: a filtered row's dropped tokens at -inf (its survivors are in column
    // order); a row that top_k 1 made greedy under a temperature (drawn as greedy, without it) its chosen
    // token alone, at its value over the temperature, as vLLM's top-k leaves it.
#pragma omp parallel for schedule(dynamic)
    for (long i = 0; i < N; ++i) {
      if (!proc[i]) continue;
      const SamplingParams& p = st[i]->params;
      float* r = w(i);
      if (!dense[i]) {
        size_t at = 0;
        for (int64_t k = 0; k < L; ++k) {
          if (at < keep[i].size() && keep[i][at] == k) {
            ++at;
            continue;
          }
          r[k] = kNegInf;
        }
      }
      if (p.top_k == 1 && p.temperature >= 1e-5) {  // (the product add_processed_logprobs' view takes)
        const int64_t c = static_cast<int64_t>(idx[i]) - vocab_.begin;
        const float v = c >= 0 && c < L ? r[c] : kNegInf;
        std::fill(r, r + L, kNegInf);
        if (c >= 0 && c < L) r[c] = v * static_cast<float>(1.0 / p.temperature);
      }
    }
    add_logprobs(seqs, lp, idx, false, out,
                 [&](const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int K, float* stats,
                     float* top_v, int32_t* top_i) {
#pragma omp parallel for schedule(dynamic)
                   for (size_t j = 0; j < rows.size(); ++j) {
                     const auto i = static_cast<size_t>(rows[j]);
                     const int32_t r0 = 0;
                     cpu::row_logprobs(proc[i] ? w(i) : raw(i), stride_, L, vocab_.begin, &r0, &tokens[j], 1, K, stats + 3 * j,
                                       top_v + static_cast<size_t>(K) * j, top_i + static_cast<size_t>(K) * j);
                   }
                 });
  }
  for (size_t i = 0; i < n; ++i) out[i].token = drawn_token(idx[i]);
  return out;
}

}  // namespace llmserve
