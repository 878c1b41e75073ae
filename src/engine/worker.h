// Executes step plans on one rank: KV swaps, this stage's layers, and on the last stage the
// vocabulary-parallel sampling.
#pragma once
#include <memory>
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

  // Wall time spent in the parts of execute(), summed over its calls (seconds): building the step's
  // inputs, launching the forward pass, sampling (which waits for the forward pass on the device).
  struct Times {
    double inputs = 0, forward = 0, sample = 0;
  };
  const Times& times() const { return times_; }

 private:
  void fill_pending(StepPlan& plan) const;
  ModelRunner& runner_;
  Times times_;
  // The last step's sampled tokens, in plan order, and their sequences.
  std::vector<uint64_t> sampled_ids_;
  std::vector<int32_t> sampled_tokens_;
  std::unique_ptr<Sampler> sampler_;
};

}  // namespace llmserve
