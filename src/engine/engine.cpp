#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iterator>

#include "common/error.h"
#include "common/log.h"
#include "tokenizer/unicode.h"

namespace llmserve {
namespace {

SchedulerConfig scheduler_config(const ModelRunner& r) {
  const Config& c = r.config();
  SchedulerConfig s;
  s.max_num_seqs = c.max_num_seqs;
  s.max_num_batched_tokens = c.max_num_batched_tokens;
  s.max_model_len = c.max_model_len;
  s.block_size = c.block_size;
  s.chunked_prefill = c.enable_chunked_prefill;
  s.long_prefill_token_threshold = c.long_prefill_token_threshold;
  s.prefix_caching = c.enable_prefix_caching;
  s.prefix_hash = parse_prefix_hash(c.prefix_caching_hash_algo);
  s.num_blocks = r.num_blocks();
  s.num_host_blocks = r.num_host_blocks();
  s.async_scheduling = c.async_scheduling && r.topology().pp == 1;
  s.priority = c.scheduling_policy == "priority";
  s.spec = parse_speculative_config(c.speculative_config);
  if (c.enable_lora) s.max_loras = c.max_loras;
  s.sliding_window = window_of_every_layer(r.spec());
  return s;
}

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

Engine::Engine(ModelRunner& runner, const Tokenizer* tokenizer, uint64_t seed)
    : runner_(runner),
      tok_(tokenizer),
      seed_(seed),
      stream_interval_(std::max(1, runner.config().stream_interval)),
      worker_(runner),
      sched_(scheduler_config(runner)) {
  if (runner_.draft()) drafter_ = std::make_unique<DraftModel>(*runner_.draft(), runner_.spec().vocab_size);
  const auto& modules = runner_.lora_modules();  // (uids 1..; the runner loaded the first into slots 1..)
  lora_slots_.resize(static_cast<size_t>(runner_.lora_slots()));
  for (size_t i = 0; i < modules.size(); ++i) {
    lora_served_.push_back({modules[i], static_cast<uint64_t>(i + 1)});
    if (i < lora_slots_.size()) lora_slots_[i] = {modules[i], static_cast<uint64_t>(i + 1), 0};
  }
  if (!sched_.config().async_scheduling) return;
  // On one rank, a step's forward pass is queued behind the draw of the step before when it can be
  // (Worker::set_next_plan); LLMSERVE_ASYNC_QUEUE=0 leaves each step's launch to its turn, to compare.
  executor_ = std::make_unique<StepExecutor>([this](StepPlan& plan) { return run_step(plan); },
                                             [this] { runner_.enter_thread(); });
  // (set before the first plan is submitted; only the executor's thread, joined by its destructor, asks)
  const char* q = std::getenv("LLMSERVE_ASYNC_QUEUE");
  if (runner_.topology().world_size == 1 && !(q && std::string(q) == "0"))
    worker_.set_next_plan([ex = executor_.get()] { return ex->next_plan(); });
}

Engine::~Engine() = default;

Engine::StepTimes Engine::step_times() const {
  StepTimes t = times_;
  if (executor_) {
    std::lock_guard<std::mutex> lock(worker_times_mu_);
    t.worker = worker_times_;
  } else {
    t.worker = worker_.times();
  }
  return t;
}

const std::string& Engine::lora_name(int32_t slot) const { return lora_slots_.at(static_cast<size_t>(slot - 1)).spec.name; }

size_t Engine::num_lora_waiting() const {
  size_t n = 0;
  for (const auto& w : lora_waiting_) n += w.seqs.size();
  return n;
}

std::vector<std::string> Engine::lora_waiting_names() const {
  std::vector<std::string> out;
  for (const auto& w : lora_waiting_)
    if (std::find(out.begin(), out.end(), w.spec.name) == out.end()) out.push_back(w.spec.name);
  return out;
}

uint64_t Engine::load_lora(const LoraModuleSpec& spec) {
  if (!runner_.runtime_lora())
    throw LoraUpdateError(400, "BadRequestError",
                          runner_.config().enable_lora ? "runtime LoRA updating is off (set VLLM_ALLOW_RUNTIME_LORA_UPDATING=True for the server)"
                                                       : "LoRA is not enabled (enable_lora)");
  for (const LoraAdapterRef& a : lora_served_)
    if (a.spec.name == spec.name)
      throw LoraUpdateError(400, "InvalidUserInput", cat("The lora adapter '", spec.name, "' has already been loaded."));
  std::error_code ec;
  if (!std::filesystem::exists(spec.path, ec))
    throw LoraUpdateError(404, "NotFoundError", cat("Loading lora ", spec.name, " failed: No adapter found for ", spec.path));
  LoraAdapter checked;
  try {
    checked = runner_.read_lora(spec);  // (rank 0 checks it before any rank loads it)
  } catch (const Error& e) {
    throw LoraUpdateError(400, "BadRequestError", e.what());
  }
  const uint64_t uid = next_lora_uid_++;
  lora_served_.push_back({spec, uid});
  // Now where a slot is empty or holds an adapter no longer served; else when a request needs it.
  if (const int32_t slot = free_lora_slot(false)) plan_lora_load(slot, spec, uid, std::move(checked));
  return uid;
}

void Engine::unload_lora(const std::string& name) {
  for (auto it = lora_served_.begin(); it != lora_served_.end(); ++it)
    if (it->spec.name == name) {
      lora_served_.erase(it);  // (a slot keeps it until another needs the room)
      return;
    }
  throw LoraUpdateError(404, "NotFoundError", cat("The lora adapter '", name, "' cannot be found."));
}

int32_t Engine::lora_slot_of(uint64_t uid) const {
  for (size_t i = 0; i < lora_slots_.size(); ++i)
    if (lora_slots_[i].uid == uid) return static_cast<int32_t>(i) + 1;
  return 0;
}

int32_t Engine::free_lora_slot(bool evict_served) const {
  int32_t best = 0;
  for (size_t i = 0; i < lora_slots_.size(); ++i) {
    const LoraSlot& sl = lora_slots_[i];
    const int32_t s = static_cast<int32_t>(i) + 1;
    if (sl.uid == 0) {  // (an empty slot first)
      best = s;
      break;
    }
    if (std::any_of(requests_.begin(), requests_.end(), [&](const auto& r) { return r.second.params.lora == s; })) continue;
    if (!evict_served && std::any_of(lora_served_.begin(), lora_served_.end(), [&](const auto& a) { return a.uid == sl.uid; }))
      continue;
    if (best == 0 || sl.used < lora_slots_[static_cast<size_t>(best - 1)].used) best = s;
  }
  return best;
}

void Engine::plan_lora_load(int32_t slot, const LoraModuleSpec& spec, uint64_t uid, LoraAdapter checked) {
  lora_slots_[static_cast<size_t>(slot - 1)] = {spec, uid, step_calls_};
  lora_loads_.push_back({slot, spec.name, spec.path});
  runner_.keep_checked_lora(spec, std::move(checked));  // (rank 0's worker loads this read, not the files again)
}

int32_t Engine::lora_slot_for(const LoraModuleSpec& spec, uint64_t uid) {
  const int32_t slot = free_lora_slot(true);
  if (slot == 0) return 0;
  LoraAdapter checked;
  try {
    checked = runner_.read_lora(spec);
  } catch (const Error& e) {
    throw Error(cat("LoRA adapter '", spec.name, "' cannot be loaded any more: ", e.what()));
  }
  plan_lora_load(slot, spec, uid, std::move(checked));
  return slot;
}

void Engine::admit(uint64_t request_id, std::vector<std::unique_ptr<Sequence>> seqs, int32_t slot) {
  if (slot > 0) {
    requests_.at(request_id).params.lora = slot;
    lora_slots_[static_cast<size_t>(slot - 1)].used = step_calls_;
  }
  for (auto& s : seqs) {
    s->params.lora = slot;
    sched_.add(std::move(s));
  }
}

void Engine::admit_lora_waiting(std::vector<uint64_t>& touched) {
  bool full = false;  // (once no slot could be had, later requests only go where their adapter is held already)
  for (auto it = lora_waiting_.begin(); it != lora_waiting_.end();) {
    int32_t slot = lora_slot_of(it->uid);
    if (slot == 0 && !full) {
      try {
        slot = lora_slot_for(it->spec, it->uid);
      } catch (const Error& e) {
        Request& r = requests_.at(it->request_id);
        r.error = e.what();
        r.aborted = true;
        log_warn("request ", r.id, " failed: ", r.error);
        for (const auto& sq : it->seqs) finish_seq(sq->id, "error", "", touched);
        it = lora_waiting_.erase(it);
        continue;
      }
    }
    if (slot == 0) {
      full = true;
      ++it;
      continue;
    }
    admit(it->request_id, std::move(it->seqs), slot);
    it = lora_waiting_.erase(it);
  }
}

void Engine::attach_lora_loads(StepPlan& plan) {
  if (lora_loads_.empty()) return;
  plan.lora_loads = std::move(lora_loads_);
  lora_loads_.clear();
}

uint64_t Engine::add_request(std::vector<int32_t> prompt, const SamplingParams& sampling) {
  const int64_t V = runner_.spec().vocab_size;
  const bool pooling = sampling.pooling != Pooling::None;
  SamplingParams params = sampling;
  if (pooling) {  // (only the prompt: vLLM's PoolingParams have no sampling)
    params = SamplingParams();
    params.pooling = sampling.pooling;
    params.priority = sampling.priority;
    params.lora = sampling.lora;
    params.lora_uid = sampling.lora_uid;
    params.output_kind = OutputKind::FinalOnly;
    params.max_tokens = 0;
  }
  if (!pooling) sampling_params_validate(params, V);
  if (prompt.empty()) throw Error("the prompt is empty");
  // The adapter: by its uid (the server's requests), or lora_modules' index + 1 (generate's lines).
  if (params.lora < 0 || params.lora > static_cast<int32_t>(runner_.lora_modules().size()))
    throw Error(cat("LoRA adapter ", params.lora, " is not loaded (", runner_.lora_modules().size(), " in lora_modules)"));
  const uint64_t uid = params.lora_uid != 0 ? params.lora_uid : static_cast<uint64_t>(params.lora);
  const LoraAdapterRef* adapter = nullptr;
  for (const LoraAdapterRef& a : lora_served_)
    if (uid != 0 && a.uid == uid) adapter = &a;
  if (uid != 0 && !adapter) throw Error("the LoRA adapter the request names was unloaded");
  params.lora_uid = uid;
  params.lora = 0;  // (its slot once a slot holds the adapter: admit)
  for (int32_t t : prompt)
    if (t < 0 || t >= V) throw Error(cat("token id ", t, " is outside the vocabulary (", V, ")"));
  const int64_t max_len = runner_.config().max_model_len;
  const int64_t total = static_cast<int64_t>(prompt.size()) + params.max_tokens;
  if (pooling && total > max_len)
    throw Error(cat("This model's maximum context length is ", max_len, " tokens. However, you requested ", total,
                    " tokens in the input for embedding generation. Please reduce the length of the input."));
  if (total > max_len)
    throw Error(cat("This model's maximum context length is ", max_len, " tokens. However, you requested ", total,
                    " tokens (", prompt.size(), " in the prompt, ", params.max_tokens,
                    " for the completion). Please reduce the length of the prompt or max_tokens."));
  if (!sched_.fits(total))
    throw Error(cat("the request needs ", sched_.peak_blocks(total), " KV-cache blocks but the whole cache has ",
                    sched_.config().num_blocks));
  std::vector<int32_t> eos;
  for (int64_t e : runner_.spec().eos_token_ids) eos.push_back(static_cast<int32_t>(e));
  if (!pooling) check_some_token_allowed(params, runner_.spec().eos_token_ids);
  check_priority(params, sched_.config().priority);
  if (params.beam_search) throw Error("beam search runs above the engine (server/beam_search.h), not as one request");
  std::vector<std::unique_ptr<Sequence>> seqs;
  Request r;
  r.id = next_request_++;
  r.prompt_tokens = static_cast<int64_t>(prompt.size());
  r.params = params;
  if (params.prompt_logprobs >= 0) r.prompt_logprobs = std::make_shared<std::vector<TokenLogprob>>();
  for (int i = 0; i < params.n; ++i) {
    auto s = std::make_unique<Sequence>();
    s->id = next_seq_++;
    s->tokens = prompt;
    s->prompt_len = static_cast<int32_t>(prompt.size());
    s->params = params;
    if (i > 0) s->params.prompt_logprobs = -1;  // the request's prompt log-probabilities come from its first sequence
    s->seed = params.seed ? static_cast<int64_t>(mix(static_cast<uint64_t>(*params.seed)) + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull)
                          : static_cast<int64_t>(mix(seed_ ^ mix(s->id)));
    s->eos_ids = eos;
    SeqOut so;
    so.request_id = r.id;
    so.index = i;
    if (tok_) so.decoder = std::make_unique<IncrementalDecoder>(*tok_, params.skip_special_tokens);
    so.out.index = i;
    r.seqs.push_back(s->id);
    seq_out_[s->id] = std::move(so);
    seqs.push_back(std::move(s));
  }
  r.unfinished = params.n;
  r.arrived = std::chrono::steady_clock::now();
  const uint64_t id = r.id;
  requests_[id] = std::move(r);
  int32_t slot = 0;
  if (adapter) {
    slot = lora_slot_of(uid);
    if (slot == 0 && lora_waiting_.empty()) {
      try {
        slot = lora_slot_for(adapter->spec, uid);
      } catch (const Error&) {
        for (uint64_t sid : requests_.at(id).seqs) seq_out_.erase(sid);  // (refused: as if never added)
        requests_.erase(id);
        throw;
      }
    }
    if (slot == 0) {  // (every slot holds an adapter of unfinished requests: it waits for one)
      lora_waiting_.push_back({id, adapter->spec, uid, std::move(seqs)});
      return id;
    }
  }
  admit(id, std::move(seqs), slot);
  return id;
}

void Engine::abort(uint64_t request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return;
  it->second.aborted = true;
}

std::vector<SampledToken> Engine::dispatch(StepPlan& plan) {
  const Topology& t = runner_.topology();
  ++steps_;
  if (t.pp == 1) return run_step(plan);  // one stage: rank 0 samples the tokens itself
  std::string bytes = plan.serialize();
  if (t.tp > 1) bcast_bytes(runner_.tp_comm().handle(), bytes, 0, /*idle=*/true);
  Worker::Output out = worker_.execute(plan, Tensor());
  const int next = t.rank_of(1, 0);
  outbox_.send(runner_.world().handle(), next, kTagPlan, bytes);
  if (!plan.seqs.empty()) runner_.send_hidden(out.hidden, &outbox_);
  ++in_flight_;
  return {};
}

std::vector<SampledToken> Engine::run_step(StepPlan& plan) {
  if (runner_.topology().tp > 1) {  // (the plan's message only when another rank reads it)
    std::string bytes = plan.serialize();
    bcast_bytes(runner_.tp_comm().handle(), bytes, 0, /*idle=*/true);
  }
  Worker::Output out = worker_.execute(plan, Tensor());
  if (executor_) {
    std::lock_guard<std::mutex> lock(worker_times_mu_);
    worker_times_ = worker_.times();
  }
  return std::move(out.tokens);
}

bool Engine::check_stop_strings(SeqOut& so, const SamplingParams& p) {
  if (p.stop.empty()) return false;
  size_t max_len = 0;
  for (const auto& s : p.stop) max_len = std::max(max_len, s.size());
  // Only text not yet handed out can hold a new match.
  const size_t from = so.emitted > max_len ? so.emitted - max_len : 0;
  size_t best = std::string::npos;
  const std::string* which = nullptr;
  for (const auto& s : p.stop) {
    const size_t k = so.text.find(s, from);
    if (k != std::string::npos && k < best) best = k, which = &s;
  }
  if (!which) return false;
  so.text.resize(best + (p.include_stop_str_in_output ? which->size() : 0));
  so.out.stop_reason = *which;
  so.cut_at_stop = true;
  return true;
}

void Engine::touch(Request& r, std::vector<uint64_t>& touched) const {
  if (r.touched_at == step_calls_) return;
  r.touched_at = step_calls_;
  touched.push_back(r.id);
}

void Engine::handle_results(const std::vector<SampledToken>& tokens, std::vector<uint64_t>& touched) {
  const int64_t max_len = runner_.config().max_model_len;
  for (const auto& t : tokens) {
    if (t.position >= 0) {
      add_prompt_logprob(t);
      continue;
    }
    if (t.position == kPooled) {
      finish_pooled(t, touched);
      continue;
    }
    if (t.token == kNoToken) {
      fail_seq(t.seq_id, touched);
      continue;
    }
    Sequence* s = sched_.on_token(t);
    auto so_it = seq_out_.find(t.seq_id);
    if (!s || so_it == seq_out_.end()) continue;
    SeqOut& so = so_it->second;
    Request& r = requests_.at(so.request_id);
    r.cached_tokens = std::max<int64_t>(r.cached_tokens, s->num_cached_tokens);
    touch(r, touched);
    note_token(r);
    const SamplingParams& p = r.params;
    so.out.token_ids.push_back(t.token);
    if (p.logprobs >= 0) {
      TokenLogprob lp{t.token, t.logprob, {}};
      lp.top.reserve(t.top_ids.size());
      for (size_t k = 0; k < t.top_ids.size(); ++k) lp.top.emplace_back(t.top_ids[k], t.top_logprobs[k]);
      so.logprobs.push_back(std::move(lp));
    }
    const bool is_eos = std::find(s->eos_ids.begin(), s->eos_ids.end(), t.token) != s->eos_ids.end();
    const bool is_stop_token = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t.token) != p.stop_token_ids.end();
    // Text: stop and EOS tokens are not part of it.
    if (so.decoder && !((is_eos && !p.ignore_eos) || is_stop_token)) so.text += so.decoder->add(t.token);
    std::string reason, stop_reason;
    if (r.aborted) {
      reason = "abort";
    } else if (is_stop_token) {
      reason = "stop", stop_reason = std::to_string(t.token);
    } else if (is_eos && !p.ignore_eos) {
      reason = "stop";
    } else if (check_stop_strings(so, p)) {
      reason = "stop";
      stop_reason = so.out.stop_reason;
    } else if (s->output_len() >= p.max_tokens || static_cast<int64_t>(s->tokens.size()) >= max_len) {
      reason = "length";
    }
    if (!reason.empty()) finish_seq(t.seq_id, reason, stop_reason, touched);
  }
}

void Engine::add_prompt_logprob(const SampledToken& t) {
  auto so = seq_out_.find(t.seq_id);
  if (so == seq_out_.end()) return;
  auto rq = requests_.find(so->second.request_id);
  if (rq == requests_.end() || !rq->second.prompt_logprobs) return;
  auto& v = *rq->second.prompt_logprobs;
  // Entries arrive in position order; a recomputed prompt (preemption) sends them again.
  if (static_cast<size_t>(t.position) != v.size() + 1) return;
  TokenLogprob lp{t.token, t.logprob, {}, t.rank};
  lp.top.reserve(t.top_ids.size());
  for (size_t k = 0; k < t.top_ids.size(); ++k) lp.top.emplace_back(t.top_ids[k], t.top_logprobs[k]);
  v.push_back(std::move(lp));
}

void Engine::finish_pooled(const SampledToken& t, std::vector<uint64_t>& touched) {
  auto so = seq_out_.find(t.seq_id);
  Sequence* s = sched_.find(t.seq_id);
  if (so == seq_out_.end() || !s) return;
  Request& r = requests_.at(so->second.request_id);
  r.cached_tokens = std::max<int64_t>(r.cached_tokens, s->num_cached_tokens);
  r.embedding = t.pooled;
  note_token(r);
  if (r.params.pooling == Pooling::Mean && t.rank > 0)
    for (float& x : r.embedding) x /= static_cast<float>(t.rank);
  finish_seq(t.seq_id, r.aborted ? "abort" : "stop", "", touched);
}

void Engine::finish_seq(uint64_t seq_id, const std::string& reason, const std::string& stop_reason,
                        std::vector<uint64_t>& touched) {
  SeqOut& so = seq_out_.at(seq_id);
  // Bytes of an unfinished UTF-8 character become U+FFFD, as a whole decode would give them.
  if (so.decoder && !so.cut_at_stop) so.text += so.decoder->finish();
  so.out.finish_reason = reason;
  if (!stop_reason.empty()) so.out.stop_reason = stop_reason;
  sched_.finish(seq_id);
  if (drafter_) drafter_->forget(seq_id);
  Request& r = requests_.at(so.request_id);
  --r.unfinished;
  touch(r, touched);
}

void Engine::fail_seq(uint64_t seq_id, std::vector<uint64_t>& touched) {
  auto so = seq_out_.find(seq_id);
  if (so == seq_out_.end() || !sched_.find(seq_id)) return;  // finished already (a token planned ahead)
  Request& r = requests_.at(so->second.request_id);
  if (r.error.empty())
    r.error = "no token can be drawn: the request's allowed_token_ids, bad_words, min_tokens and guided decoding "
              "together mask every token (or the model's logits are NaN)";
  r.aborted = true;  // its other sequences end too
  log_warn("request ", r.id, " failed: ", r.error);
  finish_seq(seq_id, "error", "", touched);
}

bool Engine::stream_due(const Request& r) const {
  for (uint64_t sid : r.seqs) {
    const SeqOut& so = seq_out_.at(sid);
    const size_t n = so.out.token_ids.size();
    if ((so.reported == 0 && n > 0) || n - so.reported >= static_cast<size_t>(stream_interval_) ||
        (so.out.finished() && !so.finish_reported))
      return true;
  }
  return false;
}

void Engine::note_scheduled(const StepPlan& plan) {
  std::chrono::steady_clock::time_point now{};
  for (const SeqStep& s : plan.seqs) {
    if (!s.start) continue;  // (a sequence's first step carries its start: later ones need no look-up)
    const auto so = seq_out_.find(s.seq_id);
    if (so == seq_out_.end()) continue;
    const auto r = requests_.find(so->second.request_id);
    if (r == requests_.end() || r->second.ran) continue;
    if (now == std::chrono::steady_clock::time_point{}) now = std::chrono::steady_clock::now();
    r->second.scheduled = now;
    r->second.ran = true;
  }
}

void Engine::note_token(Request& r) {
  const auto now = std::chrono::steady_clock::now();
  if (!r.produced) r.first_token = now;
  r.produced = true;
  r.last_token = now;
}

RequestOutput Engine::snapshot(Request& r) {
  RequestOutput o;
  o.request_id = r.id;
  o.prompt_tokens = r.prompt_tokens;
  o.num_cached_tokens = r.cached_tokens;
  if (r.prompt_logprobs && static_cast<int64_t>(r.prompt_logprobs->size()) == r.prompt_tokens - 1)
    o.prompt_logprobs = r.prompt_logprobs;
  size_t max_stop = 0;
  for (const auto& s : r.params.stop) max_stop = std::max(max_stop, s.size());
  o.finished = r.unfinished == 0;
  if (o.finished) o.error = r.error;
  if (o.finished) {
    const auto now = std::chrono::steady_clock::now();
    auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    RequestStats st;
    st.queued = secs(r.arrived, r.ran ? r.scheduled : now);
    if (r.ran && r.produced) {
      st.prefill = secs(r.scheduled, r.first_token);
      st.decode = secs(r.first_token, r.last_token);
      st.inference = secs(r.scheduled, r.last_token);
    }
    for (uint64_t sid : r.seqs) {
      const int64_t n = static_cast<int64_t>(seq_out_.at(sid).out.token_ids.size());
      st.generation_tokens += n;
      st.max_sequence_tokens = std::max(st.max_sequence_tokens, n);
    }
    o.stats = st;
  }
  if (o.finished) o.embedding = r.embedding;
  const bool delta = r.params.output_kind == OutputKind::Delta;
  o.outputs.reserve(r.seqs.size());
  for (uint64_t sid : r.seqs) {
    SeqOut& so = seq_out_.at(sid);
    // Hold back text that could still become the start of a stop string.
    size_t safe = so.text.size();
    if (!so.out.finished() && max_stop > 0) {
      safe = so.text.size() > max_stop - 1 ? so.text.size() - (max_stop - 1) : 0;
      // (bytes: back to the start of the character it cuts, so a delta is whole UTF-8)
      if (safe < so.text.size()) safe = unicode::utf8_char_start(so.text, safe);
    }
    safe = std::max(safe, so.emitted);
    if (delta) {
      // Only what is new: no copy of the tokens and text so far.
      CompletionOutput& c = o.outputs.emplace_back();
      c.index = so.out.index;
      c.finish_reason = so.out.finish_reason;
      c.stop_reason = so.out.stop_reason;
      c.token_ids.assign(so.out.token_ids.begin() + static_cast<std::ptrdiff_t>(so.reported), so.out.token_ids.end());
      c.delta.assign(so.text, so.emitted, safe - so.emitted);
      c.text = c.delta;
      c.logprobs_from = so.logprobs_reported;
    } else {
      // so.out holds what does not change per snapshot; the text and the deltas go straight into the copy.
      o.outputs.push_back(so.out);
      CompletionOutput& c = o.outputs.back();
      c.text.assign(so.text, 0, safe);
      c.delta.assign(so.text, so.emitted, safe - so.emitted);
      c.logprobs_from = o.finished ? 0 : so.logprobs_reported;
    }
    CompletionOutput& c = o.outputs.back();
    so.emitted = safe;
    c.delta_tokens = so.out.token_ids.size() - so.reported;
    so.reported = so.out.token_ids.size();
    so.finish_reported = so.out.finished();
    c.logprobs.assign(so.logprobs.begin() + static_cast<std::ptrdiff_t>(c.logprobs_from), so.logprobs.end());
    so.logprobs_reported = so.logprobs.size();
  }
  return o;
}

void accumulate_output(RequestOutput& acc, RequestOutput&& d) {
  if (acc.outputs.empty()) {
    acc = std::move(d);  // the first output: everything so far
    return;
  }
  acc.request_id = d.request_id;
  acc.prompt_tokens = d.prompt_tokens;
  acc.num_cached_tokens = d.num_cached_tokens;
  if (d.prompt_logprobs) acc.prompt_logprobs = std::move(d.prompt_logprobs);
  acc.finished = d.finished;
  acc.error = std::move(d.error);
  if (d.stats) acc.stats = d.stats;
  if (!d.embedding.empty()) acc.embedding = std::move(d.embedding);
  for (size_t k = 0; k < d.outputs.size(); ++k) {
    CompletionOutput& c = d.outputs[k];
    // The same sequences in the same order in every output of a request; found by index all the same.
    CompletionOutput* a = k < acc.outputs.size() && acc.outputs[k].index == c.index ? &acc.outputs[k] : nullptr;
    for (size_t j = 0; !a && j < acc.outputs.size(); ++j)
      if (acc.outputs[j].index == c.index) a = &acc.outputs[j];
    if (!a) {
      acc.outputs.push_back(std::move(c));
      continue;
    }
    a->token_ids.insert(a->token_ids.end(), c.token_ids.begin(), c.token_ids.end());
    a->text += c.text;
    a->delta = std::move(c.delta);
    a->delta_tokens = c.delta_tokens;
    a->logprobs.insert(a->logprobs.end(), std::make_move_iterator(c.logprobs.begin()), std::make_move_iterator(c.logprobs.end()));
    a->logprobs_from = 0;
    a->finish_reason = std::move(c.finish_reason);
    a->stop_reason = std::move(c.stop_reason);
  }
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

std::vector<RequestOutput> Engine::step() {
  const auto t_step = std::chrono::steady_clock::now();
  const bool debug = log_enabled(LogLevel::Debug);
  const StepTimes before = debug ? step_times() : StepTimes{};
  int64_t step_tokens = 0;
  ++step_calls_;
  std::vector<uint64_t> touched;
  // Aborted requests: sequences not in flight finish now, the others when their token arrives.
  for (auto& [rid, r] : requests_) {
    if (!r.aborted) continue;
    for (uint64_t sid : r.seqs) {
      Sequence* s = sched_.find(sid);
      if (s && !s->in_flight) finish_seq(sid, "abort", "", touched);
    }
  }
  for (auto it = lora_waiting_.begin(); it != lora_waiting_.end();) {  // (still waiting for their adapter)
    if (!requests_.at(it->request_id).aborted) {
      ++it;
      continue;
    }
    for (const auto& sq : it->seqs) finish_seq(sq->id, "abort", "", touched);
    it = lora_waiting_.erase(it);
  }
  admit_lora_waiting(touched);
  if (executor_) {
    step_async(step_tokens, touched);
  } else {
    step_sync(step_tokens, touched);
  }
  const auto t_out = std::chrono::steady_clock::now();
  std::vector<RequestOutput> outs;
  for (uint64_t rid : touched) {
    auto it = requests_.find(rid);
    if (it == requests_.end()) continue;
    if (it->second.params.output_kind == OutputKind::FinalOnly && it->second.unfinished > 0) continue;
    if (stream_interval_ > 1 && it->second.params.output_kind == OutputKind::Delta && it->second.unfinished > 0 &&
        !stream_due(it->second))
      continue;
    outs.push_back(snapshot(it->second));
    if (outs.back().finished) {
      for (uint64_t sid : it->second.seqs) seq_out_.erase(sid);
      requests_.erase(it);
    }
  }
  times_.outputs += seconds_since(t_out);
  // Every request done: a step still running only holds tokens planned ahead for finished sequences.
  while (executor_ && requests_.empty() && in_flight_ > 0) collect_async();
  times_.total += seconds_since(t_step);
  last_step_tokens_ = step_tokens;
  if (debug && step_tokens > 0) {
    // Where this call's time went (the per-step form of `generate`'s summary line), in microseconds.
    const StepTimes now = step_times();
    auto us = [](double a, double b) { return static_cast<long long>((a - b) * 1e6 + 0.5); };
    log_debug("step ", steps_, ": ", step_tokens, " tokens, ", us(now.total, before.total), " us: scheduling ",
              us(now.schedule, before.schedule), ", inputs ", us(now.worker.inputs, before.worker.inputs),
              ", forward launch ", us(now.worker.forward, before.worker.forward), ", sampling ",
              us(now.worker.sample, before.worker.sample), ", outputs ", us(now.outputs, before.outputs));
  }
  return outs;
}

void Engine::step_sync(int64_t& step_tokens, std::vector<uint64_t>& touched) {
  const int pp = runner_.topology().pp;
  bool dispatched = false;
  // With pp stages, each micro-batch takes about 1/pp of the sequences so every stage has work.
  const size_t live = sched_.num_running() + sched_.num_waiting() + sched_.num_swapped();
  const size_t per_plan = pp > 1 ? std::max<size_t>(1, (live + pp - 1) / pp) : SIZE_MAX;
  while (in_flight_ < pp) {
    if (drafter_) {  // the draft model's proposals for the decodes the plan may feed them to
      const auto t_draft = std::chrono::steady_clock::now();
      const auto candidates = sched_.draft_candidates();
      try {
        if (!candidates.empty()) drafter_->propose(candidates);
      } catch (const std::exception& e) {
        // Drafts are an optimization: without them every request goes on as decoding a token a step.
        log_warn("speculative decoding: the draft model failed (", e.what(), "); decoding goes on without drafts");
        for (const auto& c : candidates) c.first->proposed.clear();
        drafter_.reset();
      }
      times_.draft += seconds_since(t_draft);
    }
    const auto t_sched = std::chrono::steady_clock::now();
    StepPlan plan = sched_.schedule(per_plan);
    times_.schedule += seconds_since(t_sched);
    if (plan.seqs.empty() && plan.swap_in.empty() && plan.swap_out.empty()) break;
    note_scheduled(plan);
    attach_lora_loads(plan);
    step_tokens += plan.num_tokens();
    auto tokens = dispatch(plan);
    const auto t_out = std::chrono::steady_clock::now();
    handle_results(tokens, touched);
    times_.outputs += seconds_since(t_out);
    dispatched = true;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
    if (pp == 1) break;
  }
  // Collect micro-batch results: wait when the pipeline is full or nothing else can run.
  while (in_flight_ > 0) {
    const int last = runner_.topology().rank_of(pp - 1, 0);
    const bool wait = in_flight_ >= pp || !dispatched;
    if (!wait && !probe_bytes(runner_.world().handle(), last, kTagResult)) break;
    uint64_t step_id = 0;
    auto tokens = deserialize_results(recv_bytes(runner_.world().handle(), last, kTagResult), &step_id);
    --in_flight_;
    handle_results(tokens, touched);
    outbox_.reap();
    if (wait) break;
  }
}

void Engine::step_async(int64_t& step_tokens, std::vector<uint64_t>& touched) {
  // Plan the next step while at most one runs: a pending token then always names a row of the step
  // just before it, the one the executor runs last.
  bool submitted = false;
  if (in_flight_ < 2) {
    const auto t_sched = std::chrono::steady_clock::now();
    StepPlan plan = sched_.schedule();
    times_.schedule += seconds_since(t_sched);
    if (!plan.seqs.empty() || !plan.swap_in.empty() || !plan.swap_out.empty()) {
      note_scheduled(plan);
      attach_lora_loads(plan);
      step_tokens += plan.num_tokens();
      ++steps_;
      executor_->submit(std::move(plan));
      ++in_flight_;
      max_in_flight_ = std::max(max_in_flight_, in_flight_);
      submitted = true;
    }
  }
  // Collect the older step when two run, or when nothing new could be planned; a lone step just
  // submitted is collected by the next call, after the step planned behind it.
  if (in_flight_ == 2 || (!submitted && in_flight_ == 1)) {
    auto tokens = collect_async();
    const auto t_out = std::chrono::steady_clock::now();
    handle_results(tokens, touched);
    times_.outputs += seconds_since(t_out);
  }
}

std::vector<SampledToken> Engine::collect_async() {
  --in_flight_;
  return executor_->collect();
}

void Engine::shutdown() {
  // Finish what is in flight, then tell every rank to stop.
  while (executor_ && in_flight_ > 0) {
    try {
      collect_async();
    } catch (const std::exception&) {
      // (a failed step was reported when step() collected it; the ranks must still be stopped)
    }
  }
  executor_.reset();  // (the tensor group's plans came from its thread; the shutdown plan comes from this one)
  worker_.set_next_plan({});
  while (in_flight_ > 0) {
    uint64_t step_id = 0;
    deserialize_results(
        recv_bytes(runner_.world().handle(), runner_.topology().rank_of(runner_.topology().pp - 1, 0), kTagResult), &step_id);
    --in_flight_;  // results of sequences nobody waits for any more
  }
  StepPlan stop;
  stop.shutdown = true;
  std::string bytes = stop.serialize();
  const Topology& t = runner_.topology();
  if (t.tp > 1) bcast_bytes(runner_.tp_comm().handle(), bytes, 0, /*idle=*/true);
  if (t.pp > 1) send_bytes(runner_.world().handle(), t.rank_of(1, 0), kTagPlan, bytes);
  outbox_.drain();
}

}  // namespace llmserve
