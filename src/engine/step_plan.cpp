#include "engine/step_plan.h"

#include <cstring>

#include "common/error.h"

namespace llmserve {
namespace {

class PlanWriter {
 public:
  template <typename T> void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    buf_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  template <typename T> void vec(const std::vector<T>& v) {
    put<uint32_t>(static_cast<uint32_t>(v.size()));
    buf_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  void str(const std::string& s) {
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    buf_ += s;
  }
  std::string take() { return std::move(buf_); }

 private:
  std::string buf_;
};

class PlanReader {
 public:
  explicit PlanReader(const std::string& b) : b_(b) {}
  template <typename T> T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + p_, sizeof v);
    p_ += sizeof v;
    return v;
  }
  template <typename T> std::vector<T> vec() {
    const uint32_t n = get<uint32_t>();
    need(static_cast<size_t>(n) * sizeof(T));
    std::vector<T> v(n);
    std::memcpy(v.data(), b_.data() + p_, n * sizeof(T));
    p_ += n * sizeof(T);
    return v;
  }
  std::string str() {
    const uint32_t n = get<uint32_t>();
    need(n);
    std::string s = b_.substr(p_, n);
    p_ += n;
    return s;
  }
  bool done() const { return p_ == b_.size(); }

 private:
  void need(size_t n) const {
    if (p_ + n > b_.size()) throw Error("step plan: truncated message");
  }
  const std::string& b_;
  size_t p_ = 0;
};

void put_params(PlanWriter& w, const SamplingParams& p) {
  w.put(p.n), w.put(p.temperature), w.put(p.top_p), w.put(p.top_k), w.put(p.min_p), w.put(p.repetition_penalty);
  w.put(p.presence_penalty), w.put(p.frequency_penalty), w.put(p.max_tokens), w.put(p.min_tokens);
  w.put(static_cast<uint8_t>(p.ignore_eos)), w.put(p.logprobs), w.put(p.prompt_logprobs);
  w.vec(p.stop_token_ids);
  w.vec(p.logit_bias_ids), w.vec(p.logit_bias);
  std::vector<int32_t> lengths, flat;  // bad_words_ids: the lengths, then the tokens end to end
  for (const auto& seq : p.bad_words_ids) lengths.push_back(static_cast<int32_t>(seq.size())), flat.insert(flat.end(), seq.begin(), seq.end());
  w.vec(lengths), w.vec(flat);
  w.vec(p.allowed_token_ids);
  w.str(p.guided);
  w.put(static_cast<uint32_t>(p.guided_choice.size()));
  for (const auto& c : p.guided_choice) w.str(c);
  w.str(p.guided_schema);
  w.put(static_cast<uint8_t>(p.guided_compact));
  w.put(p.guided_after_think);
  w.put(static_cast<uint8_t>(p.logprobs_mode));
}

SamplingParams get_params(PlanReader& r) {
  SamplingParams p;
  p.n = r.get<int>(), p.temperature = r.get<double>(), p.top_p = r.get<double>(), p.top_k = r.get<int>();
  p.min_p = r.get<double>(), p.repetition_penalty = r.get<double>(), p.presence_penalty = r.get<double>();
  p.frequency_penalty = r.get<double>(), p.max_tokens = r.get<int>(), p.min_tokens = r.get<int>();
  p.ignore_eos = r.get<uint8_t>() != 0, p.logprobs = r.get<int>(), p.prompt_logprobs = r.get<int>();
  p.stop_token_ids = r.vec<int32_t>();
  p.logit_bias_ids = r.vec<int32_t>(), p.logit_bias = r.vec<float>();
  const auto lengths = r.vec<int32_t>(), flat = r.vec<int32_t>();
  size_t at = 0;
  for (int32_t n : lengths) {
    if (n < 0 || at + static_cast<size_t>(n) > flat.size()) throw Error("step plan: malformed bad_words");
    p.bad_words_ids.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(at), flat.begin() + static_cast<std::ptrdiff_t>(at + n));
    at += static_cast<size_t>(n);
  }
  p.allowed_token_ids = r.vec<int32_t>();
  p.guided = r.str();
  const uint32_t nc = r.get<uint32_t>();
  for (uint32_t i = 0; i < nc; ++i) p.guided_choice.push_back(r.str());
  p.guided_schema = r.str();
  p.guided_compact = r.get<uint8_t>() != 0;
  p.guided_after_think = r.get<uint8_t>();
  const auto mode = r.get<uint8_t>();
  if (mode > static_cast<uint8_t>(LogprobsMode::ProcessedLogits)) throw Error("step plan: malformed logprobs mode");
  p.logprobs_mode = static_cast<LogprobsMode>(mode);
  return p;
}

}  // namespace

int64_t StepPlan::num_tokens() const {
  int64_t n = 0;
  for (const auto& s : seqs) n += static_cast<int64_t>(s.tokens.size());
  return n;
}

std::string StepPlan::serialize() const {
  PlanWriter w;
  w.put(version), w.put(step_id), w.put(static_cast<uint8_t>(shutdown));
  w.put(static_cast<uint32_t>(seqs.size()));
  for (const auto& s : seqs) {
    w.put(s.seq_id), w.put(s.num_computed), w.vec(s.tokens), w.vec(s.block_table);
    w.put(static_cast<uint8_t>(s.sample)), w.put(static_cast<uint8_t>(s.start != nullptr));
    if (s.start) {
      w.put(s.start->prompt_len), w.put(s.start->seed);
      put_params(w, s.start->params);
      w.vec(s.start->eos_ids);
      w.vec(s.start->prefix);
    }
    w.vec(s.prompt_targets);
    w.put(s.pool_from), w.put(s.pool_count), w.put(static_cast<uint8_t>(s.pool_done));
    w.put(s.num_draft);
    w.put(s.lora);
  }
  w.vec(swap_out), w.vec(swap_in), w.vec(finished);
  w.put(static_cast<uint32_t>(lora_loads.size()));
  for (const auto& l : lora_loads) w.put(l.slot), w.str(l.name), w.str(l.path);
  return w.take();
}

StepPlan StepPlan::deserialize(const std::string& bytes) {
  PlanReader r(bytes);
  StepPlan p;
  p.version = r.get<uint32_t>();
  if (p.version != kStepPlanVersion)
    throw Error(cat("step plan version ", p.version, " (this build speaks ", kStepPlanVersion,
                    "): every rank must run the same llmserve build"));
  p.step_id = r.get<uint64_t>();
  p.shutdown = r.get<uint8_t>() != 0;
  const uint32_t n = r.get<uint32_t>();
  p.seqs.resize(n);
  for (auto& s : p.seqs) {
    s.seq_id = r.get<uint64_t>(), s.num_computed = r.get<int32_t>();
    s.tokens = r.vec<int32_t>(), s.block_table = r.vec<int32_t>();
    s.sample = r.get<uint8_t>() != 0;
    if (r.get<uint8_t>() != 0) {
      s.start = std::make_shared<SeqStart>();
      s.start->prompt_len = r.get<int32_t>(), s.start->seed = r.get<int64_t>();
      s.start->params = get_params(r);
      s.start->eos_ids = r.vec<int32_t>();
      s.start->prefix = r.vec<int32_t>();
    }
    s.prompt_targets = r.vec<int32_t>();
    if (s.prompt_targets.size() > s.tokens.size()) throw Error("step plan: more prompt targets than tokens");
    s.pool_from = r.get<int32_t>(), s.pool_count = r.get<int32_t>(), s.pool_done = r.get<uint8_t>() != 0;
    if (s.pool_from < 0 || s.pool_count < 0 || static_cast<size_t>(s.pool_from) + static_cast<size_t>(s.pool_count) > s.tokens.size())
      throw Error("step plan: pooled rows outside the step's tokens");
    s.num_draft = r.get<int32_t>();
    s.lora = r.get<int32_t>();
    if (s.lora < 0) throw Error(cat("step plan: sequence ", s.seq_id, " has LoRA slot ", s.lora));
    if (s.num_draft < 0 || (s.num_draft > 0 && (!s.sample || static_cast<size_t>(s.num_draft) >= s.tokens.size())))
      throw Error("step plan: drafts without a sampled token before them");
  }
  p.swap_out = r.vec<BlockCopy>(), p.swap_in = r.vec<BlockCopy>(), p.finished = r.vec<uint64_t>();
  const uint32_t nl = r.get<uint32_t>();
  for (uint32_t i = 0; i < nl; ++i) {
    StepPlan::LoraLoad l;
    l.slot = r.get<int32_t>();
    if (l.slot < 1) throw Error(cat("step plan: a LoRA load into slot ", l.slot));
    l.name = r.str(), l.path = r.str();
    p.lora_loads.push_back(std::move(l));
  }
  if (!r.done()) throw Error("step plan: trailing bytes");
  return p;
}

std::string serialize_results(uint64_t step_id, const std::vector<SampledToken>& res) {
  PlanWriter w;
  w.put(step_id);
  w.put(static_cast<uint32_t>(res.size()));
  for (const auto& t : res) {
    w.put(t.seq_id), w.put(t.token), w.put(t.logprob), w.vec(t.top_ids), w.vec(t.top_logprobs);
    w.put(t.position), w.put(t.rank), w.vec(t.pooled);
  }
  return w.take();
}

std::vector<SampledToken> deserialize_results(const std::string& bytes, uint64_t* step_id) {
  PlanReader r(bytes);
  *step_id = r.get<uint64_t>();
  std::vector<SampledToken> res(r.get<uint32_t>());
  for (auto& t : res) {
    t.seq_id = r.get<uint64_t>(), t.token = r.get<int32_t>(), t.logprob = r.get<float>();
    t.top_ids = r.vec<int32_t>(), t.top_logprobs = r.vec<float>();
    t.position = r.get<int32_t>(), t.rank = r.get<int32_t>(), t.pooled = r.vec<float>();
  }
  return res;
}

}  // namespace llmserve
