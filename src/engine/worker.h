// Executes step plans on one rank: KV swaps, this stage's layers, and on the last stage the
// vocabulary-parallel sampling.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "engine/sampler.h"
#include "engine/step_plan.h"
#include "model/runner.h"

namespace llmserve {

// The forward-pass description of a plan.
StepMeta step_meta_from_plan(const StepPlan& plan, int block_size);

class Worker {
 public:
  explicit Worker(ModelRunner& runner);
  struct Output {
    Tensor hidden;                      // for the next stage
    std::vector<SampledToken> tokens;   // last stage
  };
  // Fills in the plan's pending tokens (asynchronous scheduling) from the tokens the previous
  // execute() sampled, then runs it. Throws Error when a pending token names no sampled row of
  // that sequence.
  Output execute(StepPlan& plan, const Tensor& hidden_in);
  // Runs plans until a shutdown plan arrives (every rank but world rank 0).
  void loop();
  // Asynchronous scheduling on one rank (tp = pp = 1): where the plan after the one executing can be
  // found (null while there is none). When a step's draw is one backend call (Sampler::drawn_in_one_call),
  // the next plan's forward pass is queued while that draw runs, its pending tokens filled in on the
  // backend from the draw's results; its execute() then goes straight to sampling.
  void set_next_plan(std::function<StepPlan*()> next) { next_plan_ = std::move(next); }

  // Wall time spent in the parts of execute(), summed over its calls (seconds): building the step's
  // inputs, launching the forward pass, sampling (which waits for the forward pass on the device).
  struct Times {
    double inputs = 0, forward = 0, sample = 0;
    int64_t queued = 0;  // steps whose forward pass was queued during the draw before (set_next_plan)
  };
  const Times& times() const { return times_; }

 private:
  void fill_pending(StepPlan& plan) const;
  // Speculative decoding: of a sequence's sampled rows (one after its last fed token and after each of
  // its drafts), keeps those up to and including the first sample that differs from its draft (or the
  // last row when every draft was drawn): the tokens decoding one at a time would have given.
  static void accept_drafts(const StepPlan& plan, std::vector<SampledToken>& tokens);
  // Pooling (last stage): adds the step's pooled rows (rows [from, from + rows) of prompt_hidden, in plan
  // order) to their sequences' sums, and appends a kPooled entry to `out` for each sequence whose prompt
  // the step completes.
  void pool(const StepPlan& plan, const Tensor& prompt_hidden, int64_t from, int64_t rows, std::vector<SampledToken>& out);
  struct Pooled {
    std::vector<double> sum;
    int32_t count = 0;
  };
  std::unordered_map<uint64_t, Pooled> pooled_;  // pooling sequences with rows summed and more to come
  // The draw-wait hook: queues the next plan's forward pass behind the draw of a step that sampled
  // `drawn` rows, when the next plan is there and needs nothing else first. True once settled (queued,
  // or not to be); false to be asked again.
  bool queue_next(size_t drawn);
  // The forward pass of a plan, run (queued, on a GPU) ahead of its execute().
  struct Ahead {
    uint64_t step_id = 0;
    StepMeta meta;
    Tensor result, prompt_hidden;
  };
  std::function<StepPlan*()> next_plan_;
  std::optional<Ahead> ahead_;
  double queued_seconds_ = 0;  // spent in queue_next during the current draw
  ModelRunner& runner_;
  Times times_;
  // The last step's sampled tokens, in plan order, and their sequences.
  std::vector<uint64_t> sampled_ids_;
  std::vector<int32_t> sampled_tokens_;
  std::unique_ptr<Sampler> sampler_;
};

}  // namespace llmserve
