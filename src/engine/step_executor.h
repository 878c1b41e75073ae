// Rank 0's part of each step on a thread of its own (asynchronous scheduling): plans go in, their
// sampled tokens come out in the same order, while the engine thread plans the next step and turns
// the last step's tokens into outputs. One step runs at a time, in submission order, so the device
// work of consecutive steps keeps its stream order.
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/step_plan.h"

namespace llmserve {

class StepExecutor {
 public:
  // `run` executes one plan (filling in its pending tokens) and returns its sampled tokens; `enter`
  // sets up the thread before its first step.
  using Run = std::function<std::vector<SampledToken>(StepPlan&)>;
  StepExecutor(Run run, const std::function<void()>& enter);
  // Runs what was submitted and not yet run (the other ranks of a tensor group take part in each
  // step), then stops.
  ~StepExecutor();
  StepExecutor(const StepExecutor&) = delete;
  StepExecutor& operator=(const StepExecutor&) = delete;

  void submit(StepPlan plan);
  // The tokens of the oldest step not yet collected, waiting for it; rethrows what it threw. After a
  // step throws, the steps after it do not run and throw the same.
  std::vector<SampledToken> collect();
  // For the thread running the steps: the plan it runs next, or null (none submitted yet, or a step
  // failed). Stays valid until that plan is run (later submissions do not move it).
  StepPlan* next_plan();

 private:
  struct Result {
    std::vector<SampledToken> tokens;
    std::exception_ptr error;
  };
  void loop();
  Run run_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StepPlan> plans_;
  std::deque<Result> results_;
  bool stop_ = false;
  std::exception_ptr failed_;
  std::thread thread_;
};

}  // namespace llmserve
