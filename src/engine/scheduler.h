// Continuous batching on rank 0 (vLLM's policy): every step, swapped-out sequences come back, running
// ones go on (one decode token each, or their next prefill chunk), then waiting requests are admitted
// first come first served, within max_num_seqs, max_num_batched_tokens and the KV blocks available.
// When blocks run out, the most recently arrived running sequence is preempted: swapped to host memory
// while swap space lasts, else recomputed from scratch later. With the priority policy (vLLM's
// scheduling_policy priority) every queue is ordered by (priority, arrival) instead: lower values
// are admitted, swapped in and given a step's budget first, a waiting request goes ahead of swapped-out
// ones of a higher value, and the sequence preempted is the running one of the highest (priority,
// arrival), never one that comes before the sequence needing the blocks. As vLLM's, a waiting request
// does not preempt running ones; it is the first admitted when room frees. The scheduler knows nothing
// of tensors; it produces StepPlans and consumes sampled tokens.
#pragma once
#include <cstdint>
#include <algorithm>
#include <cstddef>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "engine/speculative.h"
#include "engine/step_plan.h"
#include "kv/block_manager.h"

namespace llmserve {

struct SchedulerConfig {
  int max_num_seqs = 256;
  int64_t max_num_batched_tokens = 8192;
  int64_t max_model_len = 2048;
  int block_size = 16;
  bool chunked_prefill = true;
  // vLLM's long_prefill_token_threshold: with chunked prefill, a sequence's prompt (or recomputed tokens)
  // goes at most this many tokens a step, so long prompts share steps with others (0: no cap).
  int64_t long_prefill_token_threshold = 0;
  bool prefix_caching = true;
  PrefixHash prefix_hash = PrefixHash::Builtin;  // vLLM's prefix_caching_hash_algo
  int64_t num_blocks = 0;
  int64_t num_host_blocks = 0;
  // Plan a running sequence's next decode while the step that samples its input is still in flight
  // (vLLM's async scheduling): the plan carries a pending token for the worker to fill in.
  bool async_scheduling = false;
  // Order by (params.priority, arrival) rather than arrival (vLLM's scheduling_policy priority).
  bool priority = false;
  // Speculative decoding (engine/speculative.h; not with async_scheduling): a decode feeds drafts after its
  // token when the blocks for them are free (drafts never preempt) and the budget allows; n-gram drafts
  // are looked up here, a draft model's are proposed before the step (Sequence::proposed).
  SpeculativeConfig spec;
  // vLLM's max_loras: the most distinct LoRA adapters among the running sequences; a waiting (or swapped)
  // sequence of another adapter waits until one leaves (waiting ones behind it may go first).
  int max_loras = 1 << 30;
  // A sliding window in every layer (window_of_every_layer): a step whose first query is at position p reads
  // no key before p - sliding_window + 1, so the blocks wholly before that are given back as the sequence
  // goes (as vLLM's sliding-window KV manager): a sequence holds a window's and a step's blocks, not its
  // whole context's. 0: none.
  int64_t sliding_window = 0;
};

struct Sequence {
  enum class State { Waiting, Running, Swapped, Finished };
  // What every step reads first, together (a step walks hundreds of sequences whose state the forward
  // pass has evicted from the caches); the parameters, read when the sequence starts, last.
  uint64_t id = 0;
  State state = State::Waiting;
  int32_t in_flight = 0;     // steps in flight that sample a token for it (2 at most: asynchronous scheduling)
  int32_t sampled_row = 0;   // its row among the sampled tokens of the last step that samples it
  bool send_params = true;   // the next plan entry carries its parameters
  bool prompt_rows_done = false;  // prompt_logprobs: every prompt row computed (once; not on a recompute)
  bool wants_prompt_logprobs = false;  // params.prompt_logprobs >= 0
  int32_t prompt_len = 0;
  int32_t num_computed = 0;
  int32_t hashed_blocks = 0;
  BlockHash last_hash;
  BlockHash hash_seed;  // the hash its first block follows: its cache_salt's (BlockManager::salt_hash), or none
  std::vector<int32_t> tokens;  // prompt + generated
  std::vector<int32_t> blocks;  // a block id per block of positions; -1 for the first window_freed
  int32_t window_freed = 0;     // leading blocks given back, out of every later step's sliding window
  std::vector<int32_t> host_blocks;  // while swapped: the host copy of each block it held (it holds none on the device)
  int32_t num_cached_tokens = 0;  // prompt tokens found in the prefix cache when first admitted
  int32_t drafted = 0;   // drafts fed by its step in flight (speculative decoding)
  std::vector<int32_t> proposed;  // a draft model's proposal for its next decode (taken by the next plan)
  int32_t received = 0;  // tokens of that step handed back so far
  int64_t seed = 0;
  std::vector<int32_t> eos_ids;
  SamplingParams params;
  int32_t output_len() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
};

struct SchedulerStats {
  int64_t preempted_swap = 0, preempted_recompute = 0, swapped_in = 0;
  // Speculative decoding (vLLM's spec_decode metrics): steps with drafts, drafts fed, drafts accepted.
  int64_t spec_drafts = 0, spec_draft_tokens = 0, spec_accepted_tokens = 0;
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& cfg);
  const SchedulerConfig& config() const { return cfg_; }

  // Takes a new sequence (tokens = prompt). The caller has checked that it can ever fit.
  void add(std::unique_ptr<Sequence> seq);
  // The next step, with at most `max_seqs` sequences (pipeline parallelism splits the running set
  // over several micro-batches); empty (no seqs, no copies) when nothing can run now.
  StepPlan schedule(size_t max_seqs = SIZE_MAX);
  // Appends a sampled token to its sequence (one step fewer in flight for it). A step with drafts hands
  // back its tokens one call each, in order: each after the first is an accepted draft.
  Sequence* on_token(const SampledToken& t);
  // Speculative decoding with a draft model: the running sequences whose next decode may feed drafts,
  // each with the most drafts it may take (within num_speculative_tokens, max_tokens and max_model_len;
  // the step's token budget may take fewer). Empty when no step would feed drafts now.
  std::vector<std::pair<Sequence*, int>> draft_candidates();
  // Frees a sequence's blocks and forgets it (its id goes out with the next plan).
  void finish(uint64_t seq_id);
  Sequence* find(uint64_t seq_id);

  // Whether a sequence of this many tokens can ever be held.
  bool fits(int64_t total_tokens) const;
  // The most KV blocks a sequence of this many tokens holds at once: one per block of its positions, or
  // with a sliding window (SchedulerConfig::sliding_window) those of a window and of a step's tokens.
  int64_t peak_blocks(int64_t total_tokens) const;
  size_t num_running() const { return running_.size(); }
  // The LoRA adapter slots (SamplingParams::lora > 0) of the running sequences, and of the waiting and
  // swapped ones, each once, in the order first met.
  std::vector<int32_t> running_loras() const;
  std::vector<int32_t> waiting_loras() const;
  size_t num_waiting() const { return waiting_.size(); }
  size_t num_swapped() const { return swapped_.size(); }
  bool has_unfinished() const { return !seqs_.empty(); }
  const BlockManager& blocks() const { return bm_; }
  // BlockManager::reset_cache (vLLM's reset_prefix_cache); returns how many blocks were cached.
  int64_t reset_prefix_cache() { return bm_.reset_cache(); }
  const SchedulerStats& stats() const { return stats_; }

 private:
  bool schedule_chunk(Sequence& s, int64_t& budget, StepPlan& plan, bool may_preempt);
  // max_loras: whether s may run beside the running sequences without their distinct adapters passing it.
  bool lora_fits(const Sequence& s) const;
  // Asynchronous scheduling: whether s's next decode may be planned before the token it feeds is
  // back (one step in flight, and that token cannot be its last), and planning it.
  bool can_schedule_ahead(const Sequence& s) const;
  bool schedule_ahead(Sequence& s, int64_t& budget, StepPlan& plan);
  // Blocks of s that are now full of known, computed tokens become reusable prefix blocks.
  void register_full_blocks(Sequence& s);
  // Blocks for s's first `tokens` positions, preempting later arrivals when allowed; false if not now.
  // With a sliding window, first gives back the blocks no key of its next step lies in.
  bool reserve_blocks(Sequence& s, int64_t tokens, StepPlan& plan, bool may_preempt);
  // With a sliding window: the first block s's next step reads (the blocks before it may go back).
  int64_t window_start_block(const Sequence& s) const;
  // Gives back every block s holds and forgets its block list.
  void release_all(Sequence& s);
  // s's blocks as a step's block table: a block given back reads as s's first held block (never read for
  // a key, but a kernel may load a whole tile of positions around the window's start).
  std::vector<int32_t> block_table(const Sequence& s) const;
  // Whether s's next chunks compute prompt_logprobs rows.
  static bool wants_prompt_rows(const Sequence& s) { return s.wants_prompt_logprobs && !s.prompt_rows_done; }
  bool preempt_one(Sequence& keep, StepPlan& plan);
  // Whether a goes before b: (priority, arrival) with the priority policy, else arrival (ids grow with it).
  bool before(const Sequence* a, const Sequence* b) const {
    if (cfg_.priority && a->params.priority != b->params.priority) return a->params.priority < b->params.priority;
    return a->id < b->id;
  }
  // Puts s in q at its place in before() order, after its equals.
  template <typename Q>
  void insert_ordered(Q& q, Sequence* s) {
    q.insert(std::upper_bound(q.begin(), q.end(), s, [this](Sequence* a, Sequence* b) { return before(a, b); }), s);
  }
  // Puts s in a queue: at its place in before() order with the priority policy, else at the front or back.
  template <typename Q>
  void enqueue(Q& q, Sequence* s, bool front) {
    if (cfg_.priority) return insert_ordered(q, s);
    if (front) {
      q.insert(q.begin(), s);
    } else {
      q.push_back(s);
    }
  }
  void emit(Sequence& s, int32_t chunk, StepPlan& plan, std::vector<int32_t> drafts = {});
  // Speculative decoding: s's next decode with drafts, when there are any and room for them; false if not.
  bool schedule_drafts(Sequence& s, int64_t& budget, StepPlan& plan);
  // The most drafts s's next decode may feed (0: none), the step's token budget aside.
  int64_t draft_room(const Sequence& s) const;
  SchedulerConfig cfg_;
  BlockManager bm_;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
  std::vector<Sequence*> running_;  // arrival order (with the priority policy: before() order)
  std::deque<Sequence*> waiting_;
  std::deque<Sequence*> swapped_;
  std::vector<uint64_t> finished_;
  uint64_t step_id_ = 0;
  int32_t plan_sampled_ = 0;  // sampled entries in the plan being made
  SchedulerStats stats_;
};

}  // namespace llmserve
