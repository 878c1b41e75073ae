// `llmserve generate`: offline batch inference for Slurm jobs. Reads JSONL requests (a prompt, chat
// messages or token ids, with sampling parameters per line), runs them all through the engine with
// continuous batching, and writes one JSON result per line in input order. Every line is validated
// before anything runs; the output file appears only when every request has finished (a request that
// fails while it runs, its masks leaving no token to draw, fails the run, naming its line). With
// data_parallel_size > 1 each replica's leader reads the whole input (checking every line) and runs every
// data_parallel_size-th request; rank 0 gathers the results and writes the file.
#include <cmath>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <utility>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "cli/commands/batch_loop.h"
#include "cli/commands/commands.h"
#include "cli/commands/data_parallel.h"
#include "common/error.h"
#include "common/json_text.h"
#include "common/log.h"
#include "config/config.h"
#include "dist/collective_check.h"
#include "engine/engine.h"
#include "engine/prompt_input.h"
#include "model/pooler_config.h"
#include "model/runner.h"

namespace llmserve {
namespace {

using ojson = nlohmann::ordered_json;

struct Job {
  std::vector<int32_t> prompt;
  SamplingParams params;
  int line = 0;        // in the input file
  size_t index = 0;    // among the file's requests (the output's order)
};

ojson top_json(const TokenLogprob& lp, const Tokenizer* tok) {
  ojson top = ojson::array();
  for (const auto& [id, v] : lp.top) top.push_back({{"token_id", id}, {"token", tok ? tok->id_to_token(id) : ""}, {"logprob", v}});
  return top;
}

ojson output_json(size_t index, const RequestOutput& r, const Tokenizer* tok) {
  ojson o;
  o["index"] = index;
  o["num_prompt_tokens"] = r.prompt_tokens;
  o["num_cached_tokens"] = r.num_cached_tokens;
  if (r.prompt_logprobs) {  // null for the first prompt token, as vLLM
    ojson p = ojson::array({nullptr});
    for (const auto& lp : *r.prompt_logprobs)
      p.push_back({{"token_id", lp.token}, {"logprob", lp.logprob}, {"rank", lp.rank}, {"top_logprobs", top_json(lp, tok)}});
    o["prompt_logprobs"] = p;
  }
  ojson outs = ojson::array();
  for (const auto& c : r.outputs) {
    ojson x;
    x["index"] = c.index;
    x["text"] = c.text;
    x["token_ids"] = c.token_ids;
    x["finish_reason"] = c.finish_reason;
    x["stop_reason"] = c.stop_reason.empty() ? ojson(nullptr) : ojson(c.stop_reason);
    if (!c.logprobs.empty()) {
      ojson lps = ojson::array();
      for (const auto& lp : c.logprobs)
        lps.push_back({{"token_id", lp.token}, {"logprob", lp.logprob}, {"top_logprobs", top_json(lp, tok)}});
      x["logprobs"] = lps;
    }
    outs.push_back(x);
  }
  o["outputs"] = outs;
  return o;
}

}  // namespace

int cmd_generate(const std::vector<std::string>& args, MPI_Comm world) {
  int rank = 0;
  MPI_Comm_rank(world, &rank);
  Config cfg;
  std::string input, output;
  agree(world, [&] { parse_batch_args(args, "generate", {"--input"}, {"--output"}, rank == 0, cfg, input, output); });
  Replicas dp;
  agree(world, [&] { split_replicas(world, cfg, dp); });
  ModelRunner runner(cfg, dp.replica, false, world);
  agree(world, [&] { refuse_classifier_text("generate", runner.spec().architecture); });
  // (the leaders validate the input and run their shares; every rank hears the verdicts)
  if (!dp.leader()) return batch_worker(runner, world);
  std::vector<Job> jobs;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<ChatTemplate> chat;
  agree(world, [&] {
    // The tokenizer, chat template and the model's generation_config defaults, as the server has them.
    const ApiContext ctx = api_context(cfg, runner, tok, chat);
    const nlohmann::json& defaults = ctx.sampling_defaults;
    std::ifstream in(input);
    if (!in) throw Error(cat("generate: cannot read '", input, "'"));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        const ojson j = parse_json<ojson>(line);
        Job job;
        job.line = n;
        job.index = jobs.size();
        job.prompt = prompt_from_json(j, tok.get(), chat.get());
        job.params.guided_compact = ctx.guided_compact;
        job.params.logprobs_mode = ctx.logprobs_mode;
        sampling_params_from_json(defaults, job.params);  // the model's generation_config.json, then the line's
        sampling_params_from_json(parse_json(line), job.params);
        if (job.params.guided == "json_schema") job.params.guided_schema = guided_schema_as_sent(parse_json<nlohmann::ordered_json>(line));
        job.params.lora = line_lora(j, runner, cfg);
        set_bad_words_ids(job.params, tok.get());
        sampling_params_validate(job.params, runner.spec().vocab_size, cfg.max_logprobs);
        check_some_token_allowed(job.params, runner.spec().eos_token_ids);
        check_priority(job.params, cfg.scheduling_policy == "priority");
        check_tokenizer_needs(job.params, tok != nullptr);
        const int64_t total = static_cast<int64_t>(job.prompt.size()) + job.params.max_tokens;
        if (total > cfg.max_model_len)
          throw Error(cat("prompt (", job.prompt.size(), " tokens) + max_tokens (", job.params.max_tokens,
                          ") exceeds max_model_len ", cfg.max_model_len));
        jobs.push_back(std::move(job));
      } catch (const std::exception& e) {
        throw Error(cat("generate: ", input, " line ", n, ": ", e.what()));
      }
    }
    if (jobs.empty()) throw Error(cat("generate: '", input, "' has no requests"));
  });
  const size_t total = jobs.size();
  if (dp.count > 1) {  // this replica's share: every count-th request from its index
    std::vector<Job> share;
    for (size_t i = static_cast<size_t>(dp.index); i < jobs.size(); i += static_cast<size_t>(dp.count)) share.push_back(std::move(jobs[i]));
    jobs = std::move(share);
    log_info("generate: replica ", dp.index, " of ", dp.count, " runs ", jobs.size(), " of the ", total, " requests");
  }

  Engine engine(runner, tok.get(), static_cast<uint64_t>(cfg.seed));
  std::vector<std::string> lines(jobs.size());
  int64_t gen_tokens = 0;
  std::string failure;  // a request that failed while it ran (RequestOutput::error): no output file
  BatchLoop loop(engine, tok.get(), runner.spec().eos_token_ids);
  for (size_t i = 0; i < jobs.size(); ++i)
    loop.add(jobs[i].prompt, jobs[i].params, [&, i](RequestOutput&& r) {
      if (!r.error.empty()) {
        if (failure.empty()) failure = cat("generate: ", input, " line ", jobs[i].line, ": ", r.error);
        return;
      }
      for (const auto& c : r.outputs) gen_tokens += static_cast<int64_t>(c.token_ids.size());
      lines[i] = json_text(output_json(jobs[i].index, r, tok.get()));
    });
  const std::string replica = dp.count > 1 ? cat("replica ", dp.index, ": ") : "";
  const auto t0 = std::chrono::steady_clock::now();
  loop.run([&] { return !failure.empty(); },
           [&] {
             const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
             std::fprintf(stderr, "generate: %s%zu/%zu requests, %lld tokens, %.1f tokens/s\n", replica.c_str(), loop.done(),
                          jobs.size(), static_cast<long long>(gen_tokens), s > 0 ? gen_tokens / s : 0.0);
           });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  engine.shutdown();
  agree(world, [&] {
    if (!failure.empty()) throw Error(failure);
  });
  if (dp.count > 1) {
    std::vector<std::string> all;
    agree(dp.leaders, [&] { all = gather_replica_lines(dp, lines, total, "generate"); });
    double sums[2] = {static_cast<double>(gen_tokens), seconds}, got[2] = {0, 0};
    MPI_Reduce(&sums[0], &got[0], 1, MPI_DOUBLE, MPI_SUM, 0, dp.leaders);
    MPI_Reduce(&sums[1], &got[1], 1, MPI_DOUBLE, MPI_MAX, 0, dp.leaders);
    lines = std::move(all);
    if (rank == 0)
      log_info("generate: ", dp.count, " replicas: ", total, " requests, ", static_cast<int64_t>(got[0]), " tokens, ",
               static_cast<int64_t>(got[1] > 0 ? got[0] / got[1] : 0), " tokens/s (the slowest replica's time)");
  }
  if (rank == 0) {
    std::string text;
    for (const auto& l : lines) text += l + "\n";
    write_file_atomic(output, text);
  }
  const auto& st = engine.scheduler().stats();
  const auto& bm = engine.scheduler().blocks();
  if (engine.steps() > 0) {
    const Engine::StepTimes t = engine.step_times();
    const double us = 1e6 / static_cast<double>(engine.steps());
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%.0f us per step on rank 0: scheduling %.0f, step inputs %.0f, forward launch %.0f, sampling "
                  "(waits for the device) %.0f, outputs %.0f",
                  t.total * us, t.schedule * us, t.worker.inputs * us, t.worker.forward * us, t.worker.sample * us,
                  t.outputs * us);
    log_info("generate: ", buf);
    if (const DraftModel* d = engine.draft_model())
      log_info("generate: the draft model's proposals: ", std::lround(t.draft * us), " us per step (", d->steps(), " draft steps fed ",
               d->tokens_fed(), " tokens)");
  }
  const ModelRunner::ForwardKinds& k = runner.forward_kinds();
  if (k.decode_graph + k.mixed_graph > 0)
    log_info("generate: rank 0's forward passes: ", k.decode_graph, " decode graphs, ", k.mixed_graph,
             " mixed-step graphs, ", k.eager, " eager");
  log_info("generate: ", jobs.size(), " requests in ", engine.steps(), " steps, up to ", engine.max_in_flight(),
           engine.async_scheduling() ? cat(" steps in flight (async scheduling; ", engine.step_times().worker.queued,
                                           " forward passes queued behind the draw before)")
                                     : std::string(" micro-batches in flight"),
           "; prefix cache hits ", bm.hits(), "/",
           bm.queries(), " tokens; preemptions: ", st.preempted_swap, " swap, ", st.preempted_recompute, " recompute");
  if (st.spec_drafts > 0)
    log_info("generate: speculative decoding: ", st.spec_drafts, " steps fed ", st.spec_draft_tokens, " drafts, ",
             st.spec_accepted_tokens, " accepted (", cat(std::lround(100.0 * st.spec_accepted_tokens / st.spec_draft_tokens)),
             "%)");
  return 0;
}

}  // namespace llmserve
