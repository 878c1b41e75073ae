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
  Output execute(const StepPlan& plan, const Tensor& hidden_in);
  // Runs plans until a shutdown plan arrives (every rank but world rank 0).
  void loop();

  // Wall time spent in the parts of execute(), summed over its calls (seconds): building the step's
  // inputs, launching the forward pass, sampling (which waits for the forward pass on the device).
  struct Times {
    double inputs = 0, forward = 0, sample = 0;
  };
  const Times& times() const { return times_; }

 private:
  ModelRunner& runner_;
  Times times_;
  std::unique_ptr<Sampler> sampler_;
};

}  // namespace llmserve
