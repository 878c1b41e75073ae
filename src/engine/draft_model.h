// Speculative decoding with a draft model (vLLM's speculative_config method draft_model): before each
// step, world rank 0 runs a smaller model with the same tokenizer over the sequences whose next decode
// may feed drafts, and each proposes its next tokens one at a time. The step then verifies them in one
// forward pass of the served model (engine/speculative.h, Worker::accept_drafts), so the tokens are those
// decoding one at a time gives.
//
// The draft samples its tokens as the served model samples: the same temperature, top-k, top-p and
// min-p, and the same Gumbel noise (keyed by the sequence's seed and the position). Where the two
// models' distributions agree, the draws agree, so sampled requests keep their drafts about as often as
// greedy ones (a draft model identical to the served one would have every draft kept).
//
// The draft's KV cache is its own (ModelRunner::draft: as many blocks as the served model's), its blocks
// handed out here. Each sequence keeps the tokens whose keys and values its blocks hold; a proposal first
// feeds what the sequence gained since (the prompt, the tokens the last step kept), from the first token
// where the two differ, so drafts the step did not keep are overwritten.
#pragma once
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "engine/scheduler.h"
#include "engine/worker.h"
#include "kv/kv_cache.h"
#include "model/runner.h"

namespace llmserve {

class DraftModel {
 public:
  // `runner`: the draft's (ModelRunner::draft()); `target_vocab`: the served model's vocabulary size.
  DraftModel(ModelRunner& runner, int64_t target_vocab);
  // Sets each candidate's Sequence::proposed: up to its count of drafts (fewer when the draft's cache has
  // no room for it, or a draft is past the served model's vocabulary).
  void propose(const std::vector<std::pair<Sequence*, int>>& candidates);
  // The sequence ended: its blocks go back, its state on the draft's worker goes with the next step.
  void forget(uint64_t seq_id);

  // Draft forward passes run (each a step of the draft model) and tokens fed to them.
  int64_t steps() const { return steps_; }
  int64_t tokens_fed() const { return tokens_fed_; }
  // The draft's cache blocks no sequence holds.
  int64_t free_blocks() const { return blocks_.num_free(); }
  // Caches taken back from sequences not proposing, for a proposal short of blocks.
  int64_t evictions() const { return evictions_; }

 private:
  struct State {
    std::vector<int32_t> tokens;  // the tokens whose keys and values `blocks` hold, positions 0..
    std::vector<int32_t> blocks;
    bool started = false;  // the draft's worker has its sampling state
  };
  // Blocks for `positions` positions of st; false when the cache cannot give them (after taking back the
  // blocks of sequences that are not among `keep`).
  bool reserve(State& st, int64_t positions, const std::unordered_set<uint64_t>& keep);
  void release(State& st);
  std::vector<SampledToken> run(StepPlan& plan);
  ModelRunner& runner_;
  Worker worker_;
  int64_t target_vocab_ = 0;
  int block_size_ = 16;
  int64_t step_budget_ = 0;
  BlockAllocator blocks_;
  std::unordered_map<uint64_t, State> states_;
  std::vector<uint64_t> finished_;  // sequences whose sampling state the next draft step drops
  uint64_t step_id_ = 0;
  int64_t steps_ = 0, tokens_fed_ = 0, evictions_ = 0;
};

}  // namespace llmserve
