// The engine loop of the offline batch commands (`generate`, `run-batch`): plain requests and beam
// searches (server/beam_search.h: each search's step requests are added to the engine between steps)
// run together with continuous batching until all have finished.
#pragma once
#include <mpi.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.h"
#include "engine/engine.h"
#include "server/beam_search.h"

namespace llmserve {

class ModelRunner;

// A batch command's part on every rank but 0: wait for rank 0's verdict on the input (agree), serve
// step plans until the shutdown plan, then wait for its verdict on the run. Returns the exit code.
int batch_worker(ModelRunner& runner, MPI_Comm world);

// A batch line's `model` as its LoRA adapter slot (model/lora.h request_lora); an Error when it is not a
// string or names neither the model nor an adapter.
int32_t line_lora(const nlohmann::ordered_json& line, const ModelRunner& runner, const Config& cfg);

class BatchLoop {
 public:
  // Called once per request added: its finished output (whole; `error` set when it failed while it ran).
  using Done = std::function<void(RequestOutput&&)>;
  BatchLoop(Engine& engine, const Tokenizer* tok, std::vector<int64_t> eos_ids);
  // A request (a beam search when params.beam_search). Throws what Engine::add_request throws for a
  // plain request; a beam search's step requests refused by the engine end it with that error.
  void add(std::vector<int32_t> prompt, SamplingParams params, Done done);
  // Steps the engine until every request is done or `stop()` says true (checked after each step).
  // `report()` is called every 2 s and once more when all are done.
  void run(const std::function<bool()>& stop, const std::function<void()>& report);
  size_t requests() const { return requests_; }
  size_t done() const { return done_; }

 private:
  void finish(const Done& done, RequestOutput&& out);
  Engine& engine_;
  const Tokenizer* tok_;
  const std::vector<int64_t> eos_ids_;
  size_t requests_ = 0, done_ = 0;
  std::unordered_map<uint64_t, Done> plain_;                         // engine request -> its caller
  std::vector<std::shared_ptr<EngineJob>> to_add_;                   // beam steps to add before the next step
  std::unordered_map<uint64_t, std::shared_ptr<EngineJob>> beam_steps_;  // engine request -> beam step
  std::vector<std::shared_ptr<BeamSearch>> searches_;
};

}  // namespace llmserve
