// The engine's own thread on rank 0. HTTP threads submit jobs and aborts through a queue and never
// block on a model step; the engine thread calls back with outputs as they are produced.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "server/histogram.h"

namespace llmserve {

struct EngineJob {
  std::vector<int32_t> prompt;
  SamplingParams params;
  // Called on the service's delivery thread, in order: each output as it changes, in the form
  // params.output_kind asks for (handed over: the callee may keep it), or the error that kept the job
  // out or ended it, with its HTTP status: 400 for the request's own fault (refused when it arrived, or
  // failed while it ran: RequestOutput::error), 500 when the engine failed under it, 503 when the
  // service no longer takes jobs. (Called directly, on the submitting thread, when the service
  // already stopped.)
  std::function<void(RequestOutput&&)> on_output;
  std::function<void(int status, const std::string&)> on_error;
  // Set by the caller to abort (client gone); read by the engine thread.
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
};

struct EngineCounters {
  // `max_model_len`: the top of the token-count histograms' buckets.
  explicit EngineCounters(int64_t max_model_len);
  std::atomic<int64_t> running{0}, waiting{0}, swapped{0}, kv_used{0}, kv_total{0};
  std::atomic<int64_t> prompt_tokens{0}, generation_tokens{0};
  // Finished requests by their (first sequence's) finish reason: stop, length, abort (vLLM's
  // request_success_total{finished_reason}; a request that failed counts as abort).
  std::atomic<int64_t> finished_stop{0}, finished_length{0}, finished_abort{0};
  // vLLM's request-level histograms (RequestStats) and iteration_tokens_total.
  Histogram queue_time, prefill_time, decode_time, inference_time;
  Histogram request_prompt_tokens, request_generation_tokens, request_max_generation_tokens, request_params_max_tokens;
  Histogram request_params_n, iteration_tokens;
  std::atomic<int64_t> prefix_queries{0}, prefix_hits{0}, preemptions{0};
  std::atomic<int64_t> spec_drafts{0}, spec_draft_tokens{0}, spec_accepted_tokens{0};
  // LoRA (enable_lora): the adapters' names of the running and of the waiting requests, comma-separated, and
  // when they were last set (seconds since the epoch), as vLLM's lora_requests_info gauge gives them.
  struct Loras {
    std::string running, waiting;
    double updated = 0;
  };
  Loras loras() const {
    std::lock_guard<std::mutex> lock(lora_mu);
    return lora_state;
  }
  mutable std::mutex lora_mu;
  Loras lora_state;
};

class EngineService {
 public:
  explicit EngineService(Engine& engine);
  ~EngineService();
  void submit(std::shared_ptr<EngineJob> job);
  // Runs `fn` on the engine thread between steps (runtime LoRA updates: it answers its client itself);
  // when the service no longer takes work (stopping, or the engine failed), `refused` is called instead
  // with the reason (a 503).
  void control(std::function<void(Engine&)> fn, std::function<void(const std::string&)> refused);
  // Aborts everything in flight and stops the thread (the engine's workers are shut down by the caller).
  void stop();
  const EngineCounters& counters() const { return counters_; }
  bool healthy() const { return !failed_.load(); }

 private:
  // One job's output or error, for the delivery thread.
  struct Delivery {
    std::shared_ptr<EngineJob> job;
    RequestOutput out;
    bool is_error = false;  // `error` (with `status`) instead of an output
    int status = 0;
    std::string error;
  };
  void run();
  // A finished request's counts and timeline into the counters.
  void count_finished(const EngineJob& job, const RequestOutput& out);
  // Hands a batch to the delivery thread (one wake-up for all of it).
  void deliver(std::vector<Delivery>&& batch);
  void deliver_loop();
  Engine& engine_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<EngineJob>> incoming_;
  struct Control {
    std::function<void(Engine&)> fn;
    std::function<void(const std::string&)> refused;
  };
  std::deque<Control> controls_;
  std::unordered_map<uint64_t, std::shared_ptr<EngineJob>> active_;
  bool stopping_ = false;
  std::atomic<bool> failed_{false};
  EngineCounters counters_;
  // The jobs' callbacks run on a thread of their own so that the engine thread goes back to the next
  // step at once: handing 256 outputs to the HTTP threads costs milliseconds of wake-ups.
  std::mutex deliver_mu_;
  std::condition_variable deliver_cv_;
  std::vector<Delivery> deliveries_;
  bool deliver_stop_ = false;
  std::thread deliver_thread_;
  std::thread thread_;
};

}  // namespace llmserve
