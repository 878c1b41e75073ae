#include "server/beam_search.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "tokenizer/tokenizer.h"

namespace llmserve {

BeamSearchParams beam_search_params(const SamplingParams& params, const std::vector<int64_t>& eos_ids) {
  BeamSearchParams bp;
  bp.width = params.n;
  bp.max_tokens = params.max_tokens;
  bp.ignore_eos = params.ignore_eos;
  bp.length_penalty = params.length_penalty;
  bp.skip_special_tokens = params.skip_special_tokens;
  bp.priority = params.priority;
  bp.logprobs = params.logprobs;
  bp.lora = params.lora;
  bp.lora_uid = params.lora_uid;
  for (int64_t e : eos_ids) bp.eos_ids.push_back(static_cast<int32_t>(e));
  return bp;
}

BeamSearch::BeamSearch(std::vector<int32_t> prompt, BeamSearchParams p, const Tokenizer* tok, Submit submit,
                       std::function<void(RequestOutput&&)> done, std::function<void(int, const std::string&)> fail)
    : prompt_(std::move(prompt)), p_(std::move(p)), tok_(tok), submit_(std::move(submit)), done_(std::move(done)),
      fail_(std::move(fail)) {}

double BeamSearch::score(const Beam& b) const {
  double len = static_cast<double>(b.tokens.size());
  if (!b.tokens.empty() && is_eos(b.tokens.back())) len -= 1;
  return b.logprob / std::pow(len, p_.length_penalty);
}

bool BeamSearch::is_eos(int32_t t) const { return std::find(p_.eos_ids.begin(), p_.eos_ids.end(), t) != p_.eos_ids.end(); }

void BeamSearch::start() {
  std::vector<std::shared_ptr<EngineJob>> jobs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_.push_back({prompt_, 0.0, {}});
    jobs = step_jobs();
  }
  for (auto& j : jobs) submit_(j);  // (outside the lock: a stopped service calls back at once)
}

void BeamSearch::cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  over_ = true;
  for (auto& c : cancels_) *c = true;
}

std::vector<std::shared_ptr<EngineJob>> BeamSearch::step_jobs() {
  candidates_.assign(live_.size(), {});
  shown_.assign(live_.size(), {});
  pending_ = live_.size();
  cancels_.clear();
  std::vector<std::shared_ptr<EngineJob>> jobs;
  for (size_t i = 0; i < live_.size(); ++i) {
    auto job = std::make_shared<EngineJob>();
    job->prompt = live_[i].tokens;
    job->params.max_tokens = 1;
    job->params.temperature = 0;  // (the drawn token is not used: the candidates are the best log-probabilities)
    job->params.ignore_eos = true;
    job->params.logprobs = std::max(2 * p_.width, p_.logprobs);  // (the best 2 x width are the candidates)
    job->params.priority = p_.priority;
    job->params.lora = p_.lora;
    job->params.lora_uid = p_.lora_uid;
    job->params.output_kind = OutputKind::FinalOnly;
    std::weak_ptr<BeamSearch> weak = shared_from_this();
    job->on_output = [weak, i](RequestOutput&& out) {
      if (auto self = weak.lock()) self->on_output(i, std::move(out));
    };
    job->on_error = [weak](int status, const std::string& m) {
      if (auto self = weak.lock()) self->on_error(status, m);
    };
    cancels_.push_back(job->cancelled);
    jobs.push_back(std::move(job));
  }
  return jobs;
}

void BeamSearch::on_output(size_t beam, RequestOutput&& out) {
  std::vector<std::shared_ptr<EngineJob>> jobs;
  std::optional<RequestOutput> result;
  std::string failure;
  int status = 500;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (over_ || !out.finished) return;
    if (!out.outputs.empty() && out.outputs[0].finish_reason == "abort") {  // the service is stopping
      failure = "beam search aborted: the server is stopping", status = 503;
    } else if (out.outputs.empty() || out.outputs[0].logprobs.empty()) {
      failure = "beam search: a step returned no log-probabilities";
    } else {
      if (step_ == 0 && cached_tokens_ < 0) cached_tokens_ = out.num_cached_tokens;
      const TokenLogprob& lp = out.outputs[0].logprobs[0];
      auto& c = candidates_[beam];
      c.assign(lp.top.begin(), lp.top.begin() + std::min<std::ptrdiff_t>(2 * p_.width, static_cast<std::ptrdiff_t>(lp.top.size())));  // best first
      if (std::none_of(c.begin(), c.end(), [&](const auto& x) { return x.first == lp.token; })) c.emplace_back(lp.token, lp.logprob);
      if (p_.logprobs >= 0)
        shown_[beam].assign(lp.top.begin(), lp.top.begin() + std::min<std::ptrdiff_t>(p_.logprobs, static_cast<std::ptrdiff_t>(lp.top.size())));
      if (--pending_ > 0) return;
      advance();
      if (over_) {
        result = finish();
      } else {
        jobs = step_jobs();
      }
    }
    if (!failure.empty()) {
      over_ = true;
      for (auto& c : cancels_) *c = true;
    }
  }
  if (!failure.empty()) return fail_(status, failure);
  if (result) return done_(std::move(*result));
  for (auto& j : jobs) submit_(j);
}

void BeamSearch::on_error(int status, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (over_) return;
    over_ = true;
    for (auto& c : cancels_) *c = true;
  }
  fail_(status, message);
}

void BeamSearch::advance() {
  std::vector<Beam> next;
  for (size_t i = 0; i < live_.size(); ++i)
    for (const auto& [token, logprob] : candidates_[i]) {
      Beam b{live_[i].tokens, live_[i].logprob + logprob, {}};
      b.tokens.push_back(token);
      if (p_.logprobs >= 0) {
        b.logprobs = live_[i].logprobs;
        b.logprobs.push_back({token, logprob, shown_[i], 0});
      }
      (is_eos(token) && !p_.ignore_eos ? finished_ : next).push_back(std::move(b));
    }
  // The best `width` go on (stable: among equal scores, the earlier beam and the likelier token first).
  std::stable_sort(next.begin(), next.end(), [&](const Beam& a, const Beam& b) { return score(a) > score(b); });
  if (next.size() > static_cast<size_t>(p_.width)) next.resize(static_cast<size_t>(p_.width));
  live_ = std::move(next);
  if (++step_ >= p_.max_tokens || live_.empty()) over_ = true;
}

RequestOutput BeamSearch::finish() {
  std::vector<Beam> all = std::move(finished_);
  all.insert(all.end(), std::make_move_iterator(live_.begin()), std::make_move_iterator(live_.end()));
  std::stable_sort(all.begin(), all.end(), [&](const Beam& a, const Beam& b) { return score(a) > score(b); });
  if (all.size() > static_cast<size_t>(p_.width)) all.resize(static_cast<size_t>(p_.width));
  RequestOutput out;
  out.prompt_tokens = static_cast<int64_t>(prompt_.size());
  out.num_cached_tokens = std::max<int64_t>(cached_tokens_, 0);
  out.finished = true;
  for (size_t k = 0; k < all.size(); ++k) {
    CompletionOutput c;
    c.index = static_cast<int>(k);
    c.token_ids.assign(all[k].tokens.begin() + static_cast<std::ptrdiff_t>(prompt_.size()), all[k].tokens.end());
    const bool ended = !c.token_ids.empty() && is_eos(c.token_ids.back()) && !p_.ignore_eos;
    std::vector<int32_t> shown(c.token_ids.begin(), c.token_ids.end() - (ended ? 1 : 0));  // (the end-of-sequence token is not text)
    c.text = tok_ ? tok_->decode(shown, p_.skip_special_tokens) : "";
    c.delta = c.text;
    c.delta_tokens = c.token_ids.size();
    c.finish_reason = ended ? "stop" : "length";
    c.logprobs = std::move(all[k].logprobs);
    out.outputs.push_back(std::move(c));
  }
  return out;
}

}  // namespace llmserve
