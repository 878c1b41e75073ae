#include "engine/worker.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/error.h"
#include "dist/transport.h"
#include "model/dummy_weights.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {

StepMeta step_meta_from_plan(const StepPlan& plan, int bs) {
  StepMeta m;
  m.q_start.push_back(0);
  size_t max_blocks = 0;
  for (const auto& s : plan.seqs) max_blocks = std::max(max_blocks, s.block_table.size());
  m.max_blocks = static_cast<int32_t>(max_blocks);
  for (const auto& s : plan.seqs) {
    const int32_t n = static_cast<int32_t>(s.tokens.size());
    if (static_cast<int64_t>(s.block_table.size()) * bs < s.num_computed + n)
      throw Error(cat("step plan: sequence ", s.seq_id, " has too few blocks"));
    for (int32_t i = 0; i < n; ++i) {
      const int32_t p = s.num_computed + i;
      m.token_ids.push_back(s.tokens[i]);
      m.positions.push_back(p);
      m.slot_mapping.push_back(s.block_table[p / bs] * bs + p % bs);
    }
    m.q_start.push_back(m.q_start.back() + n);
    m.block_tables.insert(m.block_tables.end(), s.block_table.begin(), s.block_table.end());
    m.block_tables.resize(m.block_tables.size() + (max_blocks - s.block_table.size()), 0);
    for (int32_t j = s.sampled_rows(); j > 0; --j) m.logits_indices.push_back(m.q_start.back() - j);
  }
  if (std::any_of(plan.seqs.begin(), plan.seqs.end(), [](const SeqStep& s) { return s.lora > 0; }))
    for (const auto& s : plan.seqs) m.lora.push_back(s.lora);
  // prompt_logprobs rows after every sampled row (the sampler reads rows 0.. as its sequences'), then
  // the pooled rows (their final-norm hidden states come back with the prompt rows').
  for (size_t i = 0; i < plan.seqs.size(); ++i)
    for (size_t j = 0; j < plan.seqs[i].prompt_targets.size(); ++j) {
      m.logits_indices.push_back(m.q_start[i] + static_cast<int32_t>(j));
      ++m.prompt_rows;
    }
  for (size_t i = 0; i < plan.seqs.size(); ++i)
    for (int32_t j = 0; j < plan.seqs[i].pool_count; ++j) {
      m.logits_indices.push_back(m.q_start[i] + plan.seqs[i].pool_from + j);
      ++m.prompt_rows;
    }
  return m;
}

Worker::Worker(ModelRunner& runner) : runner_(runner) {
  const Topology& t = runner.topology();
  if (t.last_stage()) {
    const ShardInfo& sh = runner.model().shard();
    // On GPUs, filtered rows of a split vocabulary are gathered and drawn on the device; the CPU
    // backend keeps them on the host sampler (its vocabulary-parallel filters beat a whole-row draw on
    // every rank there: bench/sampler_bench).
    sampler_ = std::make_unique<Sampler>(runner.tp_comm(), runner.spec().vocab_size, sh.vocab, sh.vocab_padded,
                                         runner.device_comm());
    // Guided decoding reads each token's bytes from the model's tokenizer (when the file has one).
    const Config& cfg = runner.config();
    if (model_has_file(cfg.load_format, cfg.model) && !cfg.skip_tokenizer_init) {
      ModelFile file(cfg.model);
      if (file.text("tokenizer", "tokenizer.json")) sampler_->set_guided_tokens(guided_tokens(*Tokenizer::from_model_file(file)));
    }
  }
}

void Worker::fill_pending(StepPlan& plan) const {
  for (auto& s : plan.seqs)
    for (int32_t& t : s.tokens) {
      if (!is_pending_token(t)) continue;
      const int32_t r = pending_row(t);
      if (static_cast<size_t>(r) >= sampled_ids_.size() || sampled_ids_[static_cast<size_t>(r)] != s.seq_id)
        throw Error(cat("step plan: sequence ", s.seq_id, " feeds row ", r,
                        " of the previous step's sampled tokens, which is not its own"));
      t = sampled_tokens_[static_cast<size_t>(r)];
    }
}

bool Worker::queue_next(size_t drawn) {
  StepPlan* next = next_plan_();
  if (!next) return false;  // not submitted yet: asked again while the draw runs
  if (ahead_ || next->seqs.empty() || !next->swap_in.empty() || !next->swap_out.empty() || !next->lora_loads.empty())
    return true;
  for (const auto& s : next->seqs)
    for (int32_t t : s.tokens)
      if (is_pending_token(t) && static_cast<size_t>(pending_row(t)) >= drawn) return true;  // (execute() says why)
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  Ahead a;
  a.step_id = next->step_id;
  a.meta = step_meta_from_plan(*next, static_cast<int>(runner_.block_size()));  // pending ids stay -1 - row
  const auto t1 = clock::now();
  a.result = runner_.forward(a.meta, Tensor(), &a.prompt_hidden);
  const auto t2 = clock::now();
  times_.inputs += std::chrono::duration<double>(t1 - t0).count();
  times_.forward += std::chrono::duration<double>(t2 - t1).count();
  queued_seconds_ += std::chrono::duration<double>(t2 - t0).count();
  ++times_.queued;
  ahead_ = std::move(a);
  return true;
}

Worker::Output Worker::execute(StepPlan& plan, const Tensor& hidden_in) {
  // A forward pass queued ahead belongs to this plan or to none (a step that failed took its plan).
  std::optional<Ahead> ahead = std::move(ahead_);
  ahead_.reset();
  if (ahead && ahead->step_id != plan.step_id) ahead.reset();
  fill_pending(plan);  // (also for a queued plan: the sampler's state takes the tokens, and the rows are checked)
  sampled_ids_.clear();
  sampled_tokens_.clear();
  for (const auto& l : plan.lora_loads) runner_.load_lora(l.slot, LoraModuleSpec{l.name, l.path, {}});
  for (const auto& c : plan.swap_in) runner_.kv().swap_in(c.src, c.dst);  // first (step_plan.h says why)
  for (const auto& c : plan.swap_out) runner_.kv().swap_out(c.src, c.dst);
  Output out;
  if (sampler_) sampler_->observe(plan);
  for (uint64_t id : plan.finished) pooled_.erase(id);
  if (plan.seqs.empty()) return out;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  StepMeta meta;
  Tensor result, prompt_hidden;
  if (ahead) {
    meta = std::move(ahead->meta);
    result = ahead->result;
    prompt_hidden = ahead->prompt_hidden;
  } else {
    meta = step_meta_from_plan(plan, static_cast<int>(runner_.block_size()));
  }
  const auto t1 = clock::now();
  if (!ahead) result = runner_.forward(meta, hidden_in, &prompt_hidden);
  const auto t2 = clock::now();
  times_.inputs += std::chrono::duration<double>(t1 - t0).count();
  times_.forward += std::chrono::duration<double>(t2 - t1).count();
  if (!runner_.topology().last_stage()) {
    out.hidden = result;
    return out;
  }
  // The draw and the log-probabilities run where the logits are (filtered rows of a split vocabulary
  // gathered into whole rows on GPUs); only rows that need the host sampler (on the CPU backend,
  // filters over a split vocabulary) bring their logits over. When the draw is one backend call, the
  // next plan's forward pass is queued during the last backend call that reads the logits (the draw, or
  // the log-probabilities after it).
  const bool queue = next_plan_ && meta.prompt_rows == 0 && sampler_->drawn_in_one_call(plan);
  std::function<void()> arm;
  if (queue) {
    const size_t drawn = static_cast<size_t>(meta.logits_indices.size());
    arm = [this, drawn] { runner_.backend().set_wait_hook([this, drawn] { return queue_next(drawn); }); };
  }
  try {
    out.tokens = sampler_->sample_step(plan, runner_.backend(), result, arm);
  } catch (...) {
    if (queue) runner_.backend().set_wait_hook({});
    ahead_.reset();
    queued_seconds_ = 0;
    throw;
  }
  if (queue) runner_.backend().set_wait_hook({});
  accept_drafts(plan, out.tokens);
  for (const auto& t : out.tokens) sampled_ids_.push_back(t.seq_id), sampled_tokens_.push_back(t.token);
  // prompt_logprobs (counted as sampling time): the logits of at most max_num_seqs rows at a time
  // (what the memory plan's profiling forward allowed for), each slice reduced before the next is made.
  int64_t pooled_rows = 0;
  for (const auto& s : plan.seqs) pooled_rows += s.pool_count;
  const int64_t logprob_rows = meta.prompt_rows - pooled_rows;
  const int64_t slice = std::max<int64_t>(1, runner_.config().max_num_seqs);
  for (int64_t r0 = 0; r0 < logprob_rows; r0 += slice) {
    const int64_t r = std::min<int64_t>(slice, logprob_rows - r0);
    Tensor logits = runner_.model().logits(rows_view(prompt_hidden, r0, r));
    auto prompt = sampler_->prompt_logprobs(plan, runner_.backend(), logits, r0, r);
    out.tokens.insert(out.tokens.end(), std::make_move_iterator(prompt.begin()), std::make_move_iterator(prompt.end()));
  }
  pool(plan, prompt_hidden, logprob_rows, pooled_rows, out.tokens);
  // (the next plan's forward pass queued during the draw counted as its own)
  times_.sample += std::chrono::duration<double>(clock::now() - t2).count() - queued_seconds_;
  queued_seconds_ = 0;
  return out;
}

void Worker::accept_drafts(const StepPlan& plan, std::vector<SampledToken>& tokens) {
  if (std::none_of(plan.seqs.begin(), plan.seqs.end(), [](const SeqStep& s) { return s.num_draft > 0; })) return;
  std::vector<SampledToken> kept;
  kept.reserve(tokens.size());
  size_t row = 0;
  for (const auto& s : plan.seqs) {
    const int32_t rows = s.sampled_rows();
    if (rows == 0) continue;
    if (row + static_cast<size_t>(rows) > tokens.size()) throw Error("worker: fewer sampled rows than the plan's");
    const int32_t* drafts = s.tokens.data() + s.tokens.size() - s.num_draft;
    for (int32_t j = 0; j < rows; ++j) {
      const int32_t t = tokens[row + static_cast<size_t>(j)].token;
      kept.push_back(std::move(tokens[row + static_cast<size_t>(j)]));
      if (j == s.num_draft || t != drafts[j]) break;  // the first sample that is not its draft ends the step's tokens
    }
    row += static_cast<size_t>(rows);
  }
  tokens.swap(kept);
}

void Worker::pool(const StepPlan& plan, const Tensor& prompt_hidden, int64_t from, int64_t rows,
                  std::vector<SampledToken>& out) {
  bool any = rows > 0;
  for (const auto& s : plan.seqs) {
    if (s.start) pooled_.erase(s.seq_id);  // (re)started: nothing pooled yet
    any = any || s.pool_done;
  }
  if (!any) return;
  const int64_t H = runner_.spec().hidden_size;
  std::vector<float> host(static_cast<size_t>(rows * H));
  if (rows > 0) runner_.backend().download(rows_view(prompt_hidden, from, rows), host.data());
  const float* row = host.data();
  for (const auto& s : plan.seqs) {
    if (s.pool_count == 0 && !s.pool_done) continue;
    Pooled& p = pooled_[s.seq_id];
    if (p.sum.empty()) p.sum.assign(static_cast<size_t>(H), 0.0);
    for (int32_t j = 0; j < s.pool_count; ++j, row += H)
      for (int64_t h = 0; h < H; ++h) p.sum[static_cast<size_t>(h)] += row[h];
    p.count += s.pool_count;
    if (!s.pool_done) continue;
    SampledToken t;
    t.seq_id = s.seq_id;
    t.position = kPooled;
    t.rank = p.count;
    t.pooled.assign(p.sum.begin(), p.sum.end());
    out.push_back(std::move(t));
    pooled_.erase(s.seq_id);
  }
}

void Worker::loop() {
  const Topology& t = runner_.topology();
  MPI_Comm world = runner_.world().handle();
  for (;;) {
    std::string bytes;
    Tensor hidden;
    if (t.first_stage()) {
      bcast_bytes(runner_.tp_comm().handle(), bytes, 0, /*idle=*/true);
    } else {
      const int prev = t.rank_of(t.stage() - 1, t.tp_rank());
      bytes = recv_bytes(world, prev, kTagPlan, /*idle=*/true);
    }
    StepPlan plan = StepPlan::deserialize(bytes);
    if (!t.first_stage() && !plan.shutdown && !plan.seqs.empty()) hidden = runner_.recv_hidden(plan.num_tokens());
    if (plan.shutdown) {
      if (!t.last_stage()) send_bytes(world, t.rank_of(t.stage() + 1, t.tp_rank()), kTagPlan, bytes);
      return;
    }
    Output out = execute(plan, hidden);
    if (!t.last_stage()) {
      const int next = t.rank_of(t.stage() + 1, t.tp_rank());
      send_bytes(world, next, kTagPlan, bytes);
      if (!plan.seqs.empty()) runner_.send_hidden(out.hidden);
    } else if (t.tp_rank() == 0) {
      send_bytes(world, 0, kTagResult, serialize_results(plan.step_id, out.tokens));
    }
  }
}

}  // namespace llmserve
