#include "engine/step_executor.h"

#include <utility>

namespace llmserve {

StepExecutor::StepExecutor(Run run, const std::function<void()>& enter) : run_(std::move(run)) {
  thread_ = std::thread([this, enter] {
    if (enter) enter();
    loop();
  });
}

StepExecutor::~StepExecutor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StepExecutor::submit(StepPlan plan) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    plans_.push_back(std::move(plan));
  }
  cv_.notify_all();
}

std::vector<SampledToken> StepExecutor::collect() {
  Result r;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !results_.empty(); });
    r = std::move(results_.front());
    results_.pop_front();
  }
  if (r.error) std::rethrow_exception(r.error);
  return std::move(r.tokens);
}

StepPlan* StepExecutor::next_plan() {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_ || plans_.empty() ? nullptr : &plans_.front();
}

void StepExecutor::loop() {
  for (;;) {
    StepPlan plan;
    std::exception_ptr failed;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !plans_.empty(); });
      if (plans_.empty()) return;  // stopping, and nothing left
      plan = std::move(plans_.front());
      plans_.pop_front();
      failed = failed_;
    }
    Result r;
    if (failed) {
      r.error = failed;  // its pending tokens would come from a step that did not finish
    } else {
      try {
        r.tokens = run_(plan);
      } catch (...) {
        r.error = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (r.error) failed_ = r.error;
      results_.push_back(std::move(r));
    }
    cv_.notify_all();
  }
}

}  // namespace llmserve
