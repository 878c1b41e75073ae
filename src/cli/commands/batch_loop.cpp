#include "cli/commands/batch_loop.h"

#include <chrono>
#include <utility>

#include "common/error.h"
#include "dist/collective_check.h"
#include "engine/worker.h"
#include "model/runner.h"

namespace llmserve {

int batch_worker(ModelRunner& runner, MPI_Comm world) {
  agree(world, [] {});
  Worker(runner).loop();
  agree(world, [] {});
  return 0;
}

int32_t line_lora(const nlohmann::ordered_json& line, const ModelRunner& runner, const Config& cfg) {
  if (!line.contains("model") || line["model"].is_null()) return 0;
  if (!line["model"].is_string()) throw Error("'model' must be a string");
  const std::string model = line["model"].get<std::string>();
  return request_lora(runner.lora_modules(), &model, cfg.model, cfg.served_model_name);
}

BatchLoop::BatchLoop(Engine& engine, const Tokenizer* tok, std::vector<int64_t> eos_ids)
    : engine_(engine), tok_(tok), eos_ids_(std::move(eos_ids)) {}

void BatchLoop::finish(const Done& done, RequestOutput&& out) {
  ++done_;
  done(std::move(out));
}

void BatchLoop::add(std::vector<int32_t> prompt, SamplingParams params, Done done) {
  if (!params.beam_search) {
    params.output_kind = OutputKind::FinalOnly;  // only finished requests are wanted
    plain_[engine_.add_request(std::move(prompt), params)] = std::move(done);
    ++requests_;
    return;
  }
  auto shared_done = std::make_shared<Done>(std::move(done));
  searches_.push_back(std::make_shared<BeamSearch>(
      std::move(prompt), beam_search_params(params, eos_ids_), tok_,
      [this](std::shared_ptr<EngineJob> j) { to_add_.push_back(std::move(j)); },
      [this, shared_done](RequestOutput&& r) { finish(*shared_done, std::move(r)); },
      [this, shared_done](int, const std::string& message) {
        RequestOutput r;
        r.finished = true;
        r.error = message;
        finish(*shared_done, std::move(r));
      }));
  ++requests_;
  searches_.back()->start();
}

void BatchLoop::run(const std::function<bool()>& stop, const std::function<void()>& report) {
  auto last_report = std::chrono::steady_clock::now();
  while (engine_.has_unfinished() || !to_add_.empty()) {
    for (auto& j : std::exchange(to_add_, {})) {
      uint64_t id = 0;
      try {
        id = engine_.add_request(j->prompt, j->params);
      } catch (const Error& e) {
        j->on_error(400, e.what());
        continue;
      }
      beam_steps_[id] = std::move(j);
    }
    for (auto& r : engine_.step()) {
      if (!r.finished) continue;
      if (auto b = beam_steps_.find(r.request_id); b != beam_steps_.end()) {
        auto job = std::move(b->second);
        beam_steps_.erase(b);
        if (r.error.empty()) {
          job->on_output(std::move(r));
        } else {
          job->on_error(400, r.error);
        }
        continue;
      }
      auto p = plain_.find(r.request_id);
      if (p == plain_.end()) continue;
      Done d = std::move(p->second);
      plain_.erase(p);
      finish(d, std::move(r));
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_report > std::chrono::seconds(2) || done_ == requests_) {
      report();
      last_report = now;
    }
    if (stop()) break;
  }
}

}  // namespace llmserve
