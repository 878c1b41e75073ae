// The engine on world rank 0: takes requests, runs the scheduler, dispatches step plans (keeping up
// to pipeline_parallel_size micro-batches in flight), and turns sampled tokens into outputs: stop
// conditions (EOS, stop token ids, stop strings held back until they cannot match, max_tokens,
// max_model_len), incremental detokenization, logprobs. Every other rank runs Worker::loop().
// With async_scheduling (one pipeline stage), rank 0's steps run on a StepExecutor thread and the
// next step is planned while one runs, its decodes fed the tokens that step samples; a sequence that
// turns out to have finished wastes the one token planned ahead for it (as vLLM's).
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "dist/transport.h"
#include "engine/draft_model.h"
#include "engine/sampling_params.h"
#include "engine/scheduler.h"
#include "engine/step_executor.h"
#include "engine/worker.h"
#include "model/runner.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
  int32_t rank = 0;  // prompt_logprobs only: how many tokens have a logit >= this one's (vLLM's rank)
};

// One sequence's output. With OutputKind::Delta, token_ids, text and logprobs hold only what is new
// since the request's previous output (text equals delta, and a finished output's logprobs are only its
// new ones too).
struct CompletionOutput {
  int index = 0;
  std::vector<int32_t> token_ids;
  std::string text;        // final text so far (stop strings removed)
  std::string delta;       // text that became final in this step (for streaming)
  size_t delta_tokens = 0;
  // Log-probabilities of tokens logprobs_from.. (when asked for): those new since the request's
  // previous output, and every one (from 0) in its finished output, so that a stream copies each once
  // and the final output is whole.
  std::vector<TokenLogprob> logprobs;
  size_t logprobs_from = 0;
  std::string finish_reason;  // "", "stop", "length", "abort", "error" (RequestOutput::error says why)
  std::string stop_reason;    // the stop string or token id that ended it
  bool finished() const { return !finish_reason.empty(); }
};

// A finished request's timeline, as vLLM's FinishedRequestStats (its request-level metrics), in seconds:
// from its arrival to its first step (queued), its first step to its first token (prefill; an embedding
// request's vector counts as its token), its first to its last token (decode), its first step to its
// last token (inference); and its sizes. A request that never ran has only `queued` (to its end).
struct RequestStats {
  double queued = 0, prefill = 0, decode = 0, inference = 0;
  int64_t generation_tokens = 0;      // all its sequences'
  int64_t max_sequence_tokens = 0;    // its longest sequence's
};

struct RequestOutput {
  uint64_t request_id = 0;
  int64_t prompt_tokens = 0;
  int64_t num_cached_tokens = 0;  // prompt tokens served from the prefix cache
  // With prompt_logprobs, once every prompt token's is known (in every output from then on): entry i
  // belongs to prompt token i + 1 (the first token has none).
  std::shared_ptr<const std::vector<TokenLogprob>> prompt_logprobs;
  std::vector<CompletionOutput> outputs;
  bool finished = false;
  // Set, with `finished`, when the request failed while it ran: a sequence had no token it could draw
  // (step_plan.h's kNoToken). The outputs are then incomplete; the server answers with this error.
  std::string error;
  // An embedding request (SamplingParams::pooling), once finished: the pooled final-norm hidden state
  // (the last position's, the mean, or the first's), float32, neither truncated nor normalized. Its
  // `outputs` hold one entry, finish_reason "stop", no tokens.
  std::vector<float> embedding;
  std::optional<RequestStats> stats;  // in its finished output
};

// Adds an OutputKind::Delta output to `acc`, the request's outputs so far in cumulative form (empty
// before the first): token ids, text and log-probabilities appended (logprobs_from 0), delta and
// delta_tokens this output's, finish and stop reasons, prompt log-probabilities and counts as the
// latest has them.
void accumulate_output(RequestOutput& acc, RequestOutput&& delta);

// A runtime LoRA update the engine refused: HTTP status (400, or 404 for an adapter that is not there)
// and vLLM's error type.
class LoraUpdateError : public Error {
 public:
  LoraUpdateError(int status, std::string type, const std::string& what) : Error(what), status(status), type(std::move(type)) {}
  int status;
  std::string type;
};

class Engine {
 public:
  // `tokenizer` may be null (then no text and no stop strings).
  Engine(ModelRunner& runner, const Tokenizer* tokenizer, uint64_t seed);
  ~Engine();

  // Validates and queues a request; throws Error (a 400 for the server) when it can never run. With
  // params.pooling, an embedding request: its prompt is computed and pooled (n 1; the sampling
  // parameters are not read), and its one output carries RequestOutput::embedding.
  uint64_t add_request(std::vector<int32_t> prompt, const SamplingParams& params);
  void abort(uint64_t request_id);
  bool has_unfinished() const { return !requests_.empty(); }
  // One scheduling round: dispatches what can run, collects what finished; returns the requests whose
  // output changed.
  std::vector<RequestOutput> step();
  // Stops every worker (sends the shutdown plan). Called once, at the end.
  void shutdown();

  const Scheduler& scheduler() const { return sched_; }
  // Speculative decoding with a draft model (ModelRunner::draft), or null.
  const DraftModel* draft_model() const { return drafter_.get(); }
  // LoRA adapters (vLLM's): those served by name (lora_modules', then any loaded at run time), each with a
  // uid that tells its loads apart (lora_modules' are 1.. in their order, later loads count on from 2^32),
  // and the runner's slots, which hold adapters for the steps. With runtime LoRA updating the slots are a
  // cache of max_cpu_loras adapters, as vLLM's: a request of an adapter no slot holds waits until one
  // does, its load planned into an empty slot or the least recently used one no unfinished request uses.
  struct LoraAdapterRef {
    LoraModuleSpec spec;
    uint64_t uid = 0;
  };
  int lora_slot_count() const { return static_cast<int>(lora_slots_.size()); }
  // The name of the adapter slot 1.. holds ("" when none).
  const std::string& lora_name(int32_t slot) const;
  // The sequences waiting for a slot to hold their adapter (outside the scheduler's queues), and the
  // adapters' names, each once.
  size_t num_lora_waiting() const;
  std::vector<std::string> lora_waiting_names() const;
  // Runtime LoRA updating (vLLM's /v1/load_lora_adapter; ModelRunner::runtime_lora): reads and checks the
  // adapter and serves it under spec.name (loaded into a slot now when one is free, else when a request
  // needs it). Returns its uid. Throws LoraUpdateError (vLLM's statuses) when updating is off, the name
  // is taken, or the adapter cannot be read or does not fit.
  uint64_t load_lora(const LoraModuleSpec& spec);
  // Stops serving the adapter `name` (requests that use it run to their end); throws LoraUpdateError
  // 404 when none of that name is served.
  void unload_lora(const std::string& name);
  // vLLM's reset_prefix_cache: no cached block is found by a later prompt (running requests go on with
  // theirs). Between steps; returns how many blocks were cached.
  int64_t reset_prefix_cache() { return sched_.reset_prefix_cache(); }
  int64_t steps() const { return steps_; }
  // The tokens the last step() call planned (prompt and generated: vLLM's iteration_tokens_total).
  int64_t last_step_tokens() const { return last_step_tokens_; }
  // The most micro-batches that were in flight at once (pipeline parallelism).
  int max_in_flight() const { return max_in_flight_; }
  // Where rank 0's time went, summed over step() calls (seconds): all of step(), scheduling, handling
  // results and building outputs, and the parts of this rank's Worker::execute().
  struct StepTimes {
    double total = 0, schedule = 0, outputs = 0;
    double draft = 0;  // the draft model's proposals (speculative decoding with a draft model)
    Worker::Times worker;
  };
  StepTimes step_times() const;
  bool async_scheduling() const { return sched_.config().async_scheduling; }
  // Sets up a thread other than the runner's to call step() (ModelRunner::enter_thread).
  void enter_thread() const { runner_.enter_thread(); }

 private:
  struct SeqOut {
    uint64_t request_id = 0;
    int index = 0;
    std::unique_ptr<IncrementalDecoder> decoder;
    std::string text;       // decoded text so far
    size_t emitted = 0;     // bytes of text already handed out
    size_t reported = 0;    // tokens already handed out
    bool cut_at_stop = false;  // a stop string ended the text: nothing more belongs to it
    bool finish_reported = false;  // its finish went out
    std::vector<TokenLogprob> logprobs;  // every token's (out.logprobs carries a snapshot's part)
    size_t logprobs_reported = 0;        // entries already handed out
    CompletionOutput out;
  };
  struct Request {
    uint64_t id = 0;
    int64_t prompt_tokens = 0;
    int64_t cached_tokens = 0;
    SamplingParams params;
    std::vector<uint64_t> seqs;
    int unfinished = 0;
    bool aborted = false;
    std::string error;  // why it failed (its other sequences are aborted)
    std::shared_ptr<std::vector<TokenLogprob>> prompt_logprobs;  // filled in position order
    std::vector<float> embedding;  // a pooling request's, once its vector is back
    int64_t touched_at = -1;  // the step() call that last listed it as changed
    // Its timeline (RequestStats): arrival, its first step, its first and its last token.
    std::chrono::steady_clock::time_point arrived, scheduled, first_token, last_token;
    bool ran = false, produced = false;
  };
  // Marks the plan's requests that run for the first time.
  void note_scheduled(const StepPlan& plan);
  // A token (or a pooled vector) for r: its first and last token times.
  static void note_token(Request& r);
  // Sends a plan on its way and runs rank 0's part; returns the sampled tokens when rank 0 is also
  // the last stage.
  std::vector<SampledToken> dispatch(StepPlan& plan);
  // Rank 0's part of a step with one pipeline stage: the plan to the tensor group, then this rank's
  // execute(); the sampled tokens.
  std::vector<SampledToken> run_step(StepPlan& plan);
  // step()'s planning, dispatching and collecting: one stage or pipeline micro-batches, or with
  // asynchronous scheduling. Count the tokens planned and list the requests with new output.
  void step_sync(int64_t& step_tokens, std::vector<uint64_t>& touched);
  void step_async(int64_t& step_tokens, std::vector<uint64_t>& touched);
  std::vector<SampledToken> collect_async();
  void handle_results(const std::vector<SampledToken>& tokens, std::vector<uint64_t>& touched);
  void finish_seq(uint64_t seq_id, const std::string& reason, const std::string& stop_reason,
                  std::vector<uint64_t>& touched);
  // A sequence with no token to draw (kNoToken): it ends, its request fails with an error, and the
  // request's other sequences are aborted. The engine and every other request go on.
  void fail_seq(uint64_t seq_id, std::vector<uint64_t>& touched);
  // Adds r to this step's requests with a changed output (once).
  void touch(Request& r, std::vector<uint64_t>& touched) const;
  bool check_stop_strings(SeqOut& so, const SamplingParams& p);
  // A prompt_logprobs entry (t.position >= 1) into its request's list.
  void add_prompt_logprob(const SampledToken& t);
  // A pooling sequence's vector (t.position kPooled): its request's embedding, and the sequence done.
  void finish_pooled(const SampledToken& t, std::vector<uint64_t>& touched);
  RequestOutput snapshot(Request& r);
  // stream_interval (OutputKind::Delta): whether an unfinished request's output goes out now: a sequence's
  // first tokens, a finish not yet sent, or stream_interval new tokens of a sequence.
  bool stream_due(const Request& r) const;

  // Puts the runtime LoRA loads planned since the last step on `plan` (one that is dispatched).
  void attach_lora_loads(StepPlan& plan);
  // The slot that holds adapter `uid`, 0 when none does.
  int32_t lora_slot_of(uint64_t uid) const;
  // A slot an adapter may be loaded into: an empty one, else the least recently used one no unfinished
  // request uses (evict_served false: only one whose adapter is no longer served); 0 when none may.
  int32_t free_lora_slot(bool evict_served) const;
  // Adapter `uid` into `slot` on every rank before the next step; `checked` is rank 0's read of it.
  void plan_lora_load(int32_t slot, const LoraModuleSpec& spec, uint64_t uid, LoraAdapter checked);
  // A slot for a request's adapter `uid` with its load planned (free_lora_slot), 0 when none is free. Rank 0
  // reads the adapter again first: one whose files went since it was loaded is an Error here, for its
  // requests, rather than a failed load on every rank.
  int32_t lora_slot_for(const LoraModuleSpec& spec, uint64_t uid);
  // Hands the sequences waiting for their adapter to the scheduler, in order, where a slot holds it or
  // can be given it; the rest wait on. A request whose adapter cannot be read any more fails (400).
  void admit_lora_waiting(std::vector<uint64_t>& touched);
  // Binds a request's sequences to `slot` and hands them to the scheduler.
  void admit(uint64_t request_id, std::vector<std::unique_ptr<Sequence>> seqs, int32_t slot);

  ModelRunner& runner_;
  const Tokenizer* tok_;
  std::vector<LoraAdapterRef> lora_served_;
  struct LoraSlot {
    LoraModuleSpec spec;
    uint64_t uid = 0;  // 0: empty
    int64_t used = 0;  // the step() call that last gave it a request
  };
  std::vector<LoraSlot> lora_slots_;
  std::vector<StepPlan::LoraLoad> lora_loads_;  // planned, not yet on a step
  uint64_t next_lora_uid_ = uint64_t{1} << 32;
  // Requests whose adapter no slot held when they came, in order, with their sequences.
  struct LoraWaiting {
    uint64_t request_id = 0;
    LoraModuleSpec spec;
    uint64_t uid = 0;
    std::vector<std::unique_ptr<Sequence>> seqs;
  };
  std::deque<LoraWaiting> lora_waiting_;
  uint64_t seed_;
  int stream_interval_ = 1;  // the configuration's stream_interval
  Worker worker_;
  Scheduler sched_;
  std::unique_ptr<DraftModel> drafter_;
  Outbox outbox_;
  int in_flight_ = 0, max_in_flight_ = 0;
  uint64_t next_request_ = 1, next_seq_ = 1;
  int64_t steps_ = 0;
  int64_t last_step_tokens_ = 0;
  int64_t step_calls_ = 0;  // step() calls (touched_at marks)
  StepTimes times_;
  std::unordered_map<uint64_t, Request> requests_;
  std::unordered_map<uint64_t, SeqOut> seq_out_;
  // Asynchronous scheduling: the thread running the steps (declared last: stopped first), and the
  // worker's times as of the last step collected.
  Worker::Times worker_times_;
  mutable std::mutex worker_times_mu_;
  std::unique_ptr<StepExecutor> executor_;
};

}  // namespace llmserve
