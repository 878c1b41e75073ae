// Sampling on the last pipeline stage, vocabulary-parallel across its tensor group: each rank holds
// the logits of its vocabulary shard and no rank ever gathers a full row.
//
// Sampling uses the Gumbel-max trick: token = argmax(logit / T + g), where the Gumbel noise g of a
// token depends only on (the sequence's seed, the position being generated, the token id). Each rank
// finds its local maximum and one (value, index) all-reduce picks the winner. That is an exact draw
// from softmax(logit / T) over the tokens that survive top-k, min-p and top-p, and the same seed
// gives the same tokens whatever the batch composition or tensor-parallel layout. Thresholds for
// top-k / top-p come from small gathers of candidate values; log-probabilities from all-reduced
// normalizers. Penalties use each sequence's token history, kept per rank from the step plans.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "dist/comm.h"
#include "dist/topology.h"
#include "engine/guided.h"
#include "engine/step_plan.h"

namespace llmserve {

class Sampler {
 public:
  // `vocab` is this rank's shard [begin, end) of `vocab_size` (shard_range of the tensor group); rows of
  // logits are `row_stride` long. `tensor_comm`, when given, is the tensor group's communicator for
  // backend tensors (the server passes NCCL's on GPUs): with it, rows whose filters need the whole
  // vocabulary are gathered into whole rows on the backend and drawn there instead of on the host.
  Sampler(Comm& tp, int64_t vocab_size, Range vocab, int64_t row_stride, Comm* tensor_comm = nullptr);
  // Records new sequences' parameters and the tokens each sequence is fed; forgets finished ones.
  void observe(const StepPlan& plan);
  // One token for each sequence of the plan with sample = true, in plan order; `logits` holds one
  // row per such sequence. Collective over the tensor group; every rank returns the same tokens.
  // A sequence whose masks leave no token (or whose logits are NaN) gets kNoToken (step_plan.h).
  std::vector<SampledToken> sample(const StepPlan& plan, const float* logits);
  // True when no row of the plan asks for logprobs, and, with the vocabulary split over a tensor group,
  // none filters (top-k/top-p/min-p need the whole row): then sample_on_backend() gives the same tokens
  // as sample() without bringing the logits to the host.
  bool drawable_on_backend(const StepPlan& plan) const;
  // True when sample_step() draws the plan in one Backend::draw_rows call over all its sampled rows, in
  // order: one rank (no tensor group) and the penalty edits within one call's budget. Then row r of that
  // draw is the plan's r-th sampled token, and the next step may be queued during the last backend call
  // that reads the logits (asynchronous scheduling; sample_step's `last_read`).
  bool drawn_in_one_call(const StepPlan& plan) const;
  // sample() for such plans: penalties, filters and the draw on the backend holding `logits`
  // [rows, row_stride] (penalties are applied to it in place), then one (value, index) all-reduce over
  // the tensor group.
  std::vector<SampledToken> sample_on_backend(const StepPlan& plan, Backend& backend, Tensor& logits);
  // sample() for any plan, row by row where the logits are: rows without filters over a split
  // vocabulary are drawn on the backend; with a tensor communicator, filtered rows of a split
  // vocabulary are gathered into whole rows on the backend and drawn there; log-probabilities of those
  // rows are reduced there too (row_logprobs), so only the few numbers asked for come over. Only the
  // remaining rows (filters over a split vocabulary without a tensor communicator: the CPU backend)
  // bring their logits to the host sampler.
  // `last_read`, when given, is called just before the last backend call that reads `logits` (the draw,
  // or the log-probabilities after it).
  std::vector<SampledToken> sample_step(const StepPlan& plan, Backend& backend, Tensor& logits,
                                        const std::function<void()>& last_read = {});
  // The prompt_logprobs entries first..first + count - 1 of the plan (one per prompt target, in plan
  // order; position and rank set), whose logits are the rows of `logits` in that order. Computed from
  // the raw logits where they are; collective over the tensor group.
  std::vector<SampledToken> prompt_logprobs(const StepPlan& plan, Backend& backend, const Tensor& logits, int64_t first,
                                            int64_t count);
  size_t num_sequences() const { return state_.size(); }
  // Each token's bytes (guided_tokens), which guided decoding needs; without them a guided
  // request is refused when it arrives.
  void set_guided_tokens(std::shared_ptr<const GuidedTokens> tokens) { tokens_ = std::move(tokens); }
  // The most penalty edits one backend draw stages (rows are drawn in groups within it, counted over
  // the whole vocabulary, so every rank groups alike): allowed_token_ids masks nearly every token of
  // its row, ~150,000 edits of 24 bytes for a Qwen vocabulary. Default 4M (96 MB).
  void set_edit_budget(size_t edits) { edit_budget_ = edits; }
  // Guided decoding: how many recognizer states the cache of allowed tokens keeps (0: none, every
  // step walks the vocabulary), and how many times the vocabulary was walked so far.
  void set_guided_cache_states(size_t n) { guided_cache_states_ = n, guided_cache_.clear(); }
  int64_t guided_walks() const { return guided_walks_; }

  // The Gumbel noise used for (seed, position, token): exposed for tests.
  static double gumbel(int64_t seed, int64_t position, int64_t token);

 private:
  struct SeqState {
    SamplingParams params;
    int64_t seed = 0;
    int32_t prompt_len = 0;
    std::vector<int32_t> eos_ids;
    std::vector<int32_t> history;  // every token fed so far, by position
    // A draft row's stand-in state (below) keeps no history of its own: its history is the first `len`
    // tokens of `*base`, its sequence's, so that a row costs no copy of a long context.
    const std::vector<int32_t>* base = nullptr;
    size_t len = 0;
    // The tokens fed so far, as the draw reads them.
    std::span<const int32_t> fed() const { return base ? std::span<const int32_t>(base->data(), len) : std::span<const int32_t>(history); }
    // For the penalties, kept up to date as history grows (rebuilt when it shrinks): the distinct
    // tokens of history[0, indexed) in order, and the output tokens' (positions from prompt_len on)
    // counts by token. Only for sequences with a repetition, presence or frequency penalty.
    std::vector<int32_t> seen;
    std::vector<std::pair<int32_t, int32_t>> out_counts;
    size_t indexed = 0;
    // Guided decoding: the recognizer and its state after the output tokens history[prompt_len, guided_fed).
    std::shared_ptr<const Guide> guide;
    GuideState guide_state;
    size_t guided_fed = 0;
  };
  // Speculative decoding (SeqStep::num_draft): the rows before a sequence's last, one per draft, are
  // drawn from stand-in steps with copies of its state as it was before each draft (penalty counts,
  // guide state; the history as a length of the sequence's), kept until the sequence's next step takes
  // up the copy its accepted tokens reach. The rows so draw exactly as decoding one token at a time would.
  struct DraftRows {
    std::vector<SeqStep> steps;
    std::vector<SeqState> states;
  };
  std::unordered_map<uint64_t, DraftRows> drafts_;
  std::unordered_map<const SeqStep*, SeqState*> row_state_;  // this plan's stand-in steps
  // The state a sampled row draws with: a stand-in step's copy, else its sequence's.
  SeqState& state_of(const SeqStep& s);
  const SeqState& state_of(const SeqStep& s) const;
  // st's history grown by its new tokens: penalty counts and guide state brought up to it.
  void advance(SeqState& st) const;
  // Brings st.guide_state up to st.history (anew when the history was taken back).
  void feed_guide(SeqState& st) const;
  // The tokens of `vocab` a guided sequence may not draw now, ascending.
  void guided_bans(const SeqState& st, Range vocab, std::vector<int32_t>& out) const;
  // The same as a bitmap of the tokens it may draw (kernels/draw.h mask_words(vocab.size()) words at out).
  void guided_mask(const SeqState& st, Range vocab, uint64_t* out) const;
  // Which tokens of `vocab` (bit t - vocab.begin) the guide's state takes by their bytes (the end of
  // sequence aside), from a cache keyed by the state: a JSON answer meets few distinct states (inside
  // a string, after a key, ...), and walking the ~150,000 tokens of a state costs about a millisecond.
  // (Called by several threads of a row loop at once: the cache under a lock, its entries shared.)
  std::shared_ptr<const std::vector<uint64_t>> guided_allowed(const SeqState& st, Range vocab) const;
  size_t guided_cache_states_ = 1024;  // then the cache starts anew (~19 KB a state for a Qwen vocabulary)
  mutable std::mutex guided_mu_;
  mutable std::unordered_map<std::string, std::shared_ptr<const std::vector<uint64_t>>> guided_cache_;
  mutable std::atomic<int64_t> guided_walks_{0};
  // Brings st.seen and st.out_counts up to st.history (whose first st.indexed tokens they hold).
  static void index_history(SeqState& st);
  // The request's logit_bias and the sequence's penalties (repetition, presence/frequency, min_tokens
  // masking, bad_words bans) on the logits of the
  // tokens in `vocab` (this rank's shard, or the whole vocabulary for a gathered row), as edits of row
  // `row`, one per token in column order: penalty_edits writes them to out (room for
  // penalty_edit_bound of them) and returns how many.
  // With guide_as_edits false a guided row's bans are left out (its draw masks them by guided_mask).
  static size_t penalty_edit_bound(const SeqState& st, Range vocab, bool guide_as_edits = true);
  size_t penalty_edits(const SeqState& st, int32_t row, Range vocab, LogitEdit* out, bool guide_as_edits = true) const;
  std::vector<LogitEdit> penalty_edits(const SeqState& st, int32_t row, Range vocab) const;
  // The backend draw of the sequence's next token (temperature, seed, filters).
  RowDraw row_draw(const SeqState& st) const;
  // Whether the backend can draw the sequence's token (filters only on a whole row).
  bool row_drawable(const SeqState& st) const;
  // Whether the sequence wants log-probabilities of the values its token is drawn from (LogprobsMode):
  // they are then reduced from its row after the draw's edits, under the row's LogprobView.
  static bool processed_logprobs(const SeqState& st) { return st.params.logprobs >= 0 && processed(st.params.logprobs_mode); }
  // Whether the sequence's logit_bias or penalties may edit its logits this step.
  static bool edits_logits(const SeqState& st);
  // This rank's log-probability statistics of its shard of the given logits rows, chosen tokens and K
  // (row_logprobs' contract: stats [m, 3], top_v / top_i [m, K]).
  using ShardLogprobs = std::function<void(const std::vector<int32_t>& rows, const std::vector<int32_t>& chosen, int K,
                                           float* stats, float* top_v, int32_t* top_i)>;
  // This rank's counts of the logits at or above thresholds[j] in rows[j] (count_at_least's contract).
  using ShardCounts = std::function<void(const std::vector<int32_t>& rows, const std::vector<float>& thresholds, int32_t* counts)>;
  // For j < rows.size(): the log-probability of token chosen[j] in this rank's logits row rows[j] and
  // its top want[j] alternatives, over the tensor group, into *out[j] (statistics from `reduce`); with
  // `count`, also out[j]->rank. Collective.
  // With as_logits[j] set, row j's values themselves instead (a logits mode of LogprobsMode).
  void reduce_logprobs(const std::vector<int32_t>& rows, const std::vector<int32_t>& chosen, const std::vector<int>& want,
                       const std::vector<SampledToken*>& out, const ShardLogprobs& reduce, const ShardCounts* count,
                       const std::vector<char>& as_logits = {});
  // out[i]'s logprob and top alternatives for the rows i with lp[i] set, whose tokens are chosen[i]:
  // `reduce` gives this rank's statistics (of logits row i, or with `packed` of the lp rows packed in
  // order), combined here over the tensor group. Collective.
  void add_logprobs(const std::vector<const SeqStep*>& seqs, const std::vector<char>& lp,
                    const std::vector<int32_t>& chosen, bool packed, std::vector<SampledToken>& out,
                    const ShardLogprobs& reduce);
  // The processed log-probabilities (a processed LogprobsMode) of rows i with pp[i] set, drawn (tokens in
  // out) from row i of `values`, this rank's L columns from token token_offset after the draw's edits;
  // keep[i] is the row's keep threshold from the draw. Collective over the tensor group.
  void add_processed_logprobs(const std::vector<const SeqStep*>& seqs, const std::vector<char>& pp,
                              const std::vector<float>& keep, Backend& backend, const Tensor& values, int64_t L,
                              int64_t token_offset, std::vector<SampledToken>& out);
  // The plan's sampled sequences in order, and their states.
  std::vector<const SeqStep*> sampled(const StepPlan& plan) const;
  // The backend draws of seqs (row_draw) and their penalty edits over `vocab` for rows i with draw[i]
  // set; the other rows get a plain greedy draw and no edits. `edits` is the caller's reused buffer
  // (edits_): a 256-row step with penalties has some 200,000 of them, and fresh memory each step cost
  // more in page faults than writing them. A guided row's allowed tokens go into `masks` as its bitmap
  // (some 19 KB for a Qwen vocabulary) rather than an edit per banned token (up to ~150,000 of 24 bytes).
  void row_draws(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw, Range vocab,
                 std::vector<RowDraw>& rows, std::vector<LogitEdit>& edits, RowMasks& masks) const;
  // The backend draw of the rows i of `logits` with draw[i] set (the others get a plain greedy draw
  // whose result is not used, and no penalty edits); tokens into out[i], and with keep, the rows' keep
  // thresholds into (*keep)[i].
  void draw_rows_on_backend(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw, Backend& backend,
                            Tensor& logits, std::vector<SampledToken>& out, std::vector<float>* keep = nullptr);
  // out[i] = the drawn token idx[i] of seqs[i] for rows with draw[i] set; kNoToken where nothing was
  // left to draw.
  void take_drawn(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw, const std::vector<int32_t>& idx,
                  std::vector<SampledToken>& out) const;
  // A draw's index as a sampled token: the draw's "nothing survived" (INT32_MAX) is kNoToken, and the
  // engine fails that request alone.
  int32_t drawn_token(int32_t idx) const { return idx >= 0 && idx < vocab_size_ ? idx : kNoToken; }
  // The backend draw of rows i with draw[i] set over whole rows: every rank all-gathers the rows' shards
  // over the tensor communicator, lays them out as whole vocabulary rows and draws as with one rank
  // (the draw is deterministic: every rank gets the same tokens). Tokens into out[i], the keep
  // thresholds into keep[i]; returns the whole rows [n, vocabulary] after the draw's edits.
  Tensor draw_gathered(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw, Backend& backend,
                       const Tensor& logits, std::vector<SampledToken>& out, std::vector<float>& keep);
  // fn(group) for groups of the rows with draw[i] set, in order, each within edit_budget_ (a row over
  // it alone).
  void for_edit_groups(const std::vector<const SeqStep*>& seqs, const std::vector<char>& draw,
                       const std::function<void(const std::vector<char>&)>& fn) const;
  // The host sampler over seqs, one row of `logits` (row_stride apart) each.
  std::vector<SampledToken> sample_rows(const std::vector<const SeqStep*>& seqs, const float* logits);
  Comm& tp_;
  Comm* tensor_comm_;
  int64_t vocab_size_;
  Range vocab_;
  int64_t stride_;
  std::unordered_map<uint64_t, SeqState> state_;
  std::vector<LogitEdit> edits_;  // row_draws' output, kept between steps
  size_t edit_budget_ = size_t{1} << 22;
  std::shared_ptr<const GuidedTokens> tokens_;
};

}  // namespace llmserve
