#include "server/engine_service.h"

#include <algorithm>
#include <chrono>

#include "common/log.h"

namespace llmserve {

namespace {
// vLLM's buckets of a request's phases (request_latency_buckets), in seconds.
std::vector<double> phase_buckets() {
  return {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}
}  // namespace

EngineCounters::EngineCounters(int64_t max_model_len)
    : queue_time(phase_buckets()),
      prefill_time(phase_buckets()),
      decode_time(phase_buckets()),
      inference_time(phase_buckets()),
      request_prompt_tokens(buckets_1_2_5(max_model_len)),
      request_generation_tokens(buckets_1_2_5(max_model_len)),
      request_max_generation_tokens(buckets_1_2_5(max_model_len)),
      request_params_max_tokens(buckets_1_2_5(max_model_len)),
      request_params_n({1, 2, 5, 10, 20}),
      iteration_tokens({1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}) {}

void EngineService::count_finished(const EngineJob& job, const RequestOutput& out) {
  const std::string reason = out.outputs.empty() ? std::string("abort") : out.outputs[0].finish_reason;
  (reason == "stop" ? counters_.finished_stop : reason == "length" ? counters_.finished_length : counters_.finished_abort)++;
  if (!out.stats) return;
  const RequestStats& s = *out.stats;
  counters_.queue_time.observe(s.queued);
  counters_.prefill_time.observe(s.prefill);
  counters_.decode_time.observe(s.decode);
  counters_.inference_time.observe(s.inference);
  counters_.request_prompt_tokens.observe(static_cast<double>(job.prompt.size()));
  counters_.request_generation_tokens.observe(static_cast<double>(s.generation_tokens));
  counters_.request_max_generation_tokens.observe(static_cast<double>(s.max_sequence_tokens));
  counters_.request_params_n.observe(job.params.n);
  if (job.params.pooling == Pooling::None) counters_.request_params_max_tokens.observe(job.params.max_tokens);
}

EngineService::EngineService(Engine& engine) : engine_(engine), counters_(engine.scheduler().config().max_model_len) {
  counters_.kv_total = engine.scheduler().blocks().num_blocks();
  deliver_thread_ = std::thread([this] { deliver_loop(); });
  thread_ = std::thread([this] { run(); });
}

EngineService::~EngineService() { stop(); }

void EngineService::submit(std::shared_ptr<EngineJob> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // After a stop or a failure nothing would take the job: answer it now instead of leaving the
    // client waiting.
    if (!stopping_ && !failed_.load()) {
      incoming_.push_back(std::move(job));
      job = nullptr;
    }
  }
  if (job) {
    job->on_error(503, failed_.load() ? "the engine failed; the server cannot take requests" : "the server is shutting down");
    return;
  }
  cv_.notify_one();
}

void EngineService::control(std::function<void(Engine&)> fn, std::function<void(const std::string&)> refused) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_ && !failed_.load()) {
      controls_.push_back({std::move(fn), std::move(refused)});
      fn = nullptr;
    }
  }
  if (fn) return refused(failed_.load() ? "the engine failed; the server cannot take requests" : "the server is shutting down");
  cv_.notify_one();
}

void EngineService::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  // What the engine thread handed over is delivered before the delivery thread ends.
  {
    std::lock_guard<std::mutex> lock(deliver_mu_);
    deliver_stop_ = true;
  }
  deliver_cv_.notify_one();
  if (deliver_thread_.joinable()) deliver_thread_.join();
}

void EngineService::deliver(std::vector<Delivery>&& batch) {
  if (batch.empty()) return;
  {
    std::lock_guard<std::mutex> lock(deliver_mu_);
    if (deliveries_.empty()) {
      deliveries_.swap(batch);
    } else {
      for (auto& d : batch) deliveries_.push_back(std::move(d));
    }
  }
  deliver_cv_.notify_one();
}

void EngineService::deliver_loop() {
  for (;;) {
    std::vector<Delivery> batch;
    {
      std::unique_lock<std::mutex> lock(deliver_mu_);
      deliver_cv_.wait(lock, [&] { return deliver_stop_ || !deliveries_.empty(); });
      if (deliveries_.empty()) return;  // stopping, and nothing left
      batch.swap(deliveries_);
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& d : batch) {
      try {
        if (d.is_error) {
          d.job->on_error(d.status, d.error);
        } else {
          d.job->on_output(std::move(d.out));
        }
      } catch (const std::exception& e) {
        log_write(LogLevel::Error, cat("delivering an output failed: ", e.what()));
      }
    }
    if (log_enabled(LogLevel::Debug))
      log_debug("delivered ", batch.size(), " outputs in ",
                std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count(), " us");
  }
}

void EngineService::run() {
  std::vector<Delivery> batch;
  auto error_to = [&](const std::shared_ptr<EngineJob>& j, int status, std::string msg) {
    Delivery d;
    d.job = j;
    d.is_error = true;
    d.status = status;
    d.error = std::move(msg);
    batch.push_back(std::move(d));
  };
  try {
    engine_.enter_thread();
    for (;;) {
      std::deque<std::shared_ptr<EngineJob>> jobs;
      std::deque<Control> controls;
      bool stopping;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!engine_.has_unfinished())
          cv_.wait_for(lock, std::chrono::milliseconds(50),
                       [&] { return stopping_ || !incoming_.empty() || !controls_.empty(); });
        jobs.swap(incoming_);
        controls.swap(controls_);
        stopping = stopping_;
      }
      // (before the jobs that came with them: a request sent after its adapter's load was answered finds it)
      for (auto& c : controls) {
        if (stopping) {
          c.refused("the server is shutting down");
          continue;
        }
        try {
          c.fn(engine_);
        } catch (const std::exception& e) {
          log_write(LogLevel::Error, cat("a control request failed: ", e.what()));
        }
      }
      for (auto& j : jobs) {
        if (stopping) {
          error_to(j, 503, "the server is shutting down");
          continue;
        }
        try {
          const uint64_t id = engine_.add_request(j->prompt, j->params);
          active_[id] = j;
          counters_.prompt_tokens += static_cast<int64_t>(j->prompt.size()) * j->params.n;
        } catch (const std::exception& e) {
          error_to(j, 400, e.what());
        }
      }
      for (auto& [id, j] : active_)
        if (stopping || j->cancelled->load()) engine_.abort(id);
      if (engine_.has_unfinished()) {
        auto outs = engine_.step();
        if (engine_.last_step_tokens() > 0) counters_.iteration_tokens.observe(static_cast<double>(engine_.last_step_tokens()));
        const auto t_post = std::chrono::steady_clock::now();
        for (auto& out : outs) {
          auto it = active_.find(out.request_id);
          if (it == active_.end()) continue;
          for (const auto& c : out.outputs) counters_.generation_tokens += static_cast<int64_t>(c.delta_tokens);
          const bool finished = out.finished;
          if (finished) count_finished(*it->second, out);
          if (!out.error.empty()) {
            error_to(it->second, 400, out.error);  // (the request failed; the others go on)
          } else {
            batch.push_back({it->second, std::move(out), false, 0, {}});
          }
          if (finished) active_.erase(it);
        }
        const size_t handed = batch.size();
        deliver(std::move(batch));
        batch.clear();
        // The engine thread's share of handing outputs (and any refusals) over, after each step's own line.
        if (handed > 0 && log_enabled(LogLevel::Debug))
          log_debug("posted ", handed, " outputs in ",
                    std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t_post).count(), " us");
      }
      deliver(std::move(batch));
      batch.clear();
      const auto& s = engine_.scheduler();
      counters_.running = static_cast<int64_t>(s.num_running());
      counters_.waiting = static_cast<int64_t>(s.num_waiting() + engine_.num_lora_waiting());
      counters_.swapped = static_cast<int64_t>(s.num_swapped());
      counters_.kv_used = s.blocks().num_used();
      counters_.prefix_queries = s.blocks().queries();
      counters_.prefix_hits = s.blocks().hits();
      counters_.preemptions = s.stats().preempted_swap + s.stats().preempted_recompute;
      counters_.spec_drafts = s.stats().spec_drafts;
      counters_.spec_draft_tokens = s.stats().spec_draft_tokens;
      counters_.spec_accepted_tokens = s.stats().spec_accepted_tokens;
      if (engine_.lora_slot_count() > 0) {
        auto names = [&](const std::vector<int32_t>& slots, const std::vector<std::string>& more) {
          std::vector<std::string> all;
          for (int32_t slot : slots) all.push_back(engine_.lora_name(slot));
          for (const auto& n : more)
            if (std::find(all.begin(), all.end(), n) == all.end()) all.push_back(n);
          std::string out;
          for (const auto& n : all) out += (out.empty() ? "" : ",") + n;
          return out;
        };
        EngineCounters::Loras l{names(s.running_loras(), {}), names(s.waiting_loras(), engine_.lora_waiting_names()),
                                std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()};
        std::lock_guard<std::mutex> lock(counters_.lora_mu);
        counters_.lora_state = std::move(l);
      }
      if (stopping && !engine_.has_unfinished()) return;
    }
  } catch (const std::exception& e) {
    std::deque<std::shared_ptr<EngineJob>> left;
    std::deque<Control> controls;
    {
      std::lock_guard<std::mutex> lock(mu_);
      failed_ = true;
      left.swap(incoming_);
      controls.swap(controls_);
    }
    for (auto& c : controls) c.refused(cat("internal error: ", e.what()));
    log_write(LogLevel::Error, cat("engine thread failed: ", e.what()));
    for (auto& [id, j] : active_) error_to(j, 500, cat("internal error: ", e.what()));
    for (auto& j : left) error_to(j, 500, cat("internal error: ", e.what()));
    deliver(std::move(batch));
  }
}

}  // namespace llmserve
