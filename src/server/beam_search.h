// vLLM's beam search (`use_beam_search` on the completion routes), as vLLM runs it beside its engine:
// every step each live beam is one engine request of a single token with the 2 x width best
// log-probabilities; each candidate extends its beam's cumulative log-probability; a candidate ending
// in an end-of-sequence token is set aside as finished (unless ignore_eos); the best `width` of the
// rest go on. After max_tokens steps the finished and the live beams together are ranked and the best
// `width` returned; with `logprobs`, each output token carries its log-probability and the step's best
// alternatives (as vLLM's beam search reports them). A beam's score is vLLM's: cumulative log-probability / (its tokens, prompt
// included, less a final end-of-sequence token) ^ length_penalty. The engine's prefix cache holds the
// beams' common prompt, so a step recomputes only their unfinished last block.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "server/engine_service.h"

namespace llmserve {

struct BeamSearchParams {
  int width = 1;          // the request's n
  int max_tokens = 16;
  bool ignore_eos = false;
  double length_penalty = 1.0;
  bool skip_special_tokens = true;
  int priority = 0;
  int logprobs = -1;  // the request's logprobs (-1: none): each output token's, with that many alternatives
  int32_t lora = 0;  // the request's LoRA adapter (SamplingParams::lora, lora_uid)
  uint64_t lora_uid = 0;
  std::vector<int32_t> eos_ids;
};

// A request's beam search settings (params.beam_search set; n beams) and the model's end-of-sequence ids.
BeamSearchParams beam_search_params(const SamplingParams& params, const std::vector<int64_t>& eos_ids);

class BeamSearch : public std::enable_shared_from_this<BeamSearch> {
 public:
  using Submit = std::function<void(std::shared_ptr<EngineJob>)>;
  // `done` gets the result once: `width` outputs, best first (index = rank), whole (token ids, text,
  // finish reason "stop" for a beam ended by end of sequence, else "length"), finished; `fail` the
  // first error of a step's requests instead. Neither is called after cancel().
  BeamSearch(std::vector<int32_t> prompt, BeamSearchParams p, const Tokenizer* tok, Submit submit,
             std::function<void(RequestOutput&&)> done, std::function<void(int, const std::string&)> fail);
  void start();
  void cancel();

 private:
  struct Beam {
    std::vector<int32_t> tokens;  // prompt and generated
    double logprob = 0;
    std::vector<TokenLogprob> logprobs;  // each generated token's (BeamSearchParams::logprobs >= 0)
  };
  double score(const Beam& b) const;
  bool is_eos(int32_t t) const;
  // (The next four with mu_ held; requests are submitted and results handed over after it is let go:
  // a stopped service calls back on the submitting thread.)
  std::vector<std::shared_ptr<EngineJob>> step_jobs();  // one request per live beam
  void advance();         // every beam's candidates are in: the next beams (over_ when none go on)
  RequestOutput finish();  // the best `width` of the finished and live beams
  void on_output(size_t beam, RequestOutput&& out);
  void on_error(int status, const std::string& message);
  const std::vector<int32_t> prompt_;
  const BeamSearchParams p_;
  const Tokenizer* tok_;
  Submit submit_;
  std::function<void(RequestOutput&&)> done_;
  std::function<void(int, const std::string&)> fail_;
  std::mutex mu_;
  bool over_ = false;  // finished, failed or cancelled
  std::vector<Beam> live_, finished_;
  std::vector<std::vector<std::pair<int32_t, float>>> candidates_;  // per live beam, this step's
  std::vector<std::vector<std::pair<int32_t, float>>> shown_;       // per live beam, the alternatives reported
  size_t pending_ = 0;
  int step_ = 0;
  int64_t cached_tokens_ = -1;  // the first step's prefix-cache hit
  std::vector<std::shared_ptr<std::atomic<bool>>> cancels_;  // this step's requests
};

}  // namespace llmserve
