// `llmserve run-batch`: vLLM's batch runner (`vllm run-batch -i in.jsonl -o out.jsonl`) on OpenAI's batch
// file format. Each input line is {"custom_id", "method": "POST", "url", "body"} with url
// /v1/chat/completions or /v1/completions, or with the pooling runner /v1/embeddings, /score, /v1/score,
// /rerank, /v1/rerank or /v2/rerank (as the server: a model serves one kind or the other); each output
// line, in input order, is {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}:
// the body the server would answer, or, for a line the server would refuse (or that fails while it
// runs), status_code 400 (404 for an unknown model), body null and the error the server would send.
// The requests run together with continuous batching; the output file appears whole when all have
// finished. With data_parallel_size > 1 each replica's first rank reads every line and runs every
// data_parallel_size-th one (cli/commands/data_parallel.h); rank 0 writes all of them, in input order.
#include <chrono>
#include <cstdio>
#include <fstream>
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
#include "model/runner.h"
#include "server/embeddings_api.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

struct BatchLine {
  json custom_id = nullptr;
  std::string url;
  GenerationRequest req;
  std::vector<RequestOutput> outputs;  // per prompt
  int status = 200;
  json error = nullptr;  // the server's error body when the line failed
  void fail(int s, const std::string& message, const std::string& type = "BadRequestError", const std::string& param = "") {
    if (!error.is_null()) return;
    status = s;
    error = json::parse(error_body(s, message, type, param));
  }
};

// One input line as a request, or the error the server would answer it with.
BatchLine read_line(const std::string& text, const ApiContext& ctx) {
  BatchLine l;
  try {
    const ojson j = parse_json<ojson>(text);
    if (!j.is_object()) throw HttpError(400, "a batch line must be a JSON object");
    if (j.contains("custom_id")) l.custom_id = json::parse(j["custom_id"].dump());
    if (!l.custom_id.is_string()) throw HttpError(400, "'custom_id' (a string) is required", "BadRequestError", "custom_id");
    if (!j.contains("method") || j["method"] != "POST")
      throw HttpError(400, "'method' must be \"POST\"", "BadRequestError", "method");
    const std::string url = j.contains("url") && j["url"].is_string() ? j["url"].get<std::string>() : "";
    const bool score = url == "/score" || url == "/v1/score";
    const bool rerank = url == "/rerank" || url == "/v1/rerank" || url == "/v2/rerank";
    if (url != "/v1/chat/completions" && url != "/v1/completions" && url != "/v1/embeddings" && !score && !rerank)
      throw HttpError(400, cat("URL ", url.empty() ? std::string("(none)") : url,
                               " was used. Supported endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, "
                               "/score, /rerank."),
                      "BadRequestError", "url");
    if (!j.contains("body") || !j["body"].is_object()) throw HttpError(400, "'body' (an object) is required", "BadRequestError", "body");
    l.url = url;
    // (Embeddings, score and rerank are refused unless the pooling runner serves the model.)
    if (url == "/v1/embeddings") {
      l.req = parse_embeddings(j["body"], ctx);
    } else if (score || rerank) {
      l.req = parse_score(j["body"], ctx, rerank);
    } else {
      check_generation_api(ctx, url == "/v1/chat/completions" ? "Chat Completions" : "Completions");
      l.req = url == "/v1/chat/completions" ? parse_chat(j["body"], ctx) : parse_completion(j["body"], ctx);
    }
    if (l.req.stream) throw HttpError(400, "Request must not be sent in stream mode", "BadRequestError", "stream");
  } catch (const HttpError& e) {
    l.fail(e.status, e.what(), e.type, e.param);
  } catch (const std::exception& e) {  // the JSON parser's errors, nesting past parse_json's limit
    l.fail(400, cat("invalid JSON: ", e.what()));
  }
  return l;
}

}  // namespace

int cmd_run_batch(const std::vector<std::string>& args, MPI_Comm world) {
  int rank = 0;
  MPI_Comm_rank(world, &rank);
  Config cfg;
  std::string input, output;
  agree(world, [&] {
    parse_batch_args(args, "run-batch", {"-i", "--input-file"}, {"-o", "--output-file"}, rank == 0, cfg, input, output);
  });
  Replicas dp;
  agree(world, [&] { split_replicas(world, cfg, dp); });
  ModelRunner runner(cfg, dp.replica, false, world);
  // (the leaders read the input and run their shares; every rank hears the verdicts)
  if (!dp.leader()) return batch_worker(runner, world);
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<ChatTemplate> chat;
  ApiContext ctx;
  std::vector<BatchLine> lines;
  agree(world, [&] {
    ctx = api_context(cfg, runner, tok, chat);
    std::ifstream in(input);
    if (!in) throw Error(cat("run-batch: cannot read '", input, "'"));
    std::string text;
    while (std::getline(in, text))
      if (text.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(read_line(text, ctx));
    if (lines.empty()) throw Error(cat("run-batch: '", input, "' has no requests"));
  });

  // This replica's lines: every count-th from its index.
  std::vector<size_t> mine;
  for (size_t i = static_cast<size_t>(dp.index); i < lines.size(); i += static_cast<size_t>(dp.count)) mine.push_back(i);
  if (dp.count > 1) log_info("run-batch: replica ", dp.index, " of ", dp.count, " runs ", mine.size(), " of the ", lines.size(), " lines");
  Engine engine(runner, tok.get(), static_cast<uint64_t>(cfg.seed));
  BatchLoop loop(engine, tok.get(), ctx.eos_ids);
  for (const size_t i : mine) {
    BatchLine& l = lines[i];
    if (!l.error.is_null()) continue;
    l.outputs.resize(l.req.prompts.size());
    for (size_t k = 0; k < l.req.prompts.size(); ++k) {
      try {
        loop.add(l.req.prompts[k], l.req.params, [&lines, i, k](RequestOutput&& r) {
          if (!r.error.empty()) lines[i].fail(400, r.error);  // (its line answers with the error)
          lines[i].outputs[k] = std::move(r);
        });
      } catch (const Error& e) {
        l.fail(400, e.what());
      }
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  loop.run([] { return false; }, [&] {
    std::fprintf(stderr, "run-batch: %zu/%zu requests, %.1f s\n", loop.done(), loop.requests(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  });
  engine.shutdown();
  agree(world, [] {});
  std::vector<std::string> out;
  int64_t failed = 0;
  for (const size_t i : mine) {
    const BatchLine& l = lines[i];
    json body = nullptr;
    if (l.error.is_null()) {
      body = l.req.embedding ? embedding_response(random_id(response_id_prefix(*l.req.embedding)), l.req, ctx, l.outputs)
             : l.url == "/v1/chat/completions" ? chat_response(random_id("chatcmpl-"), l.req, ctx, l.outputs)
                                               : completion_response(random_id("cmpl-"), l.req, ctx, l.outputs);
    } else {
      ++failed;
    }
    const json o = {{"id", random_id("batch_req_")},
                    {"custom_id", l.custom_id},
                    {"response", {{"status_code", l.status}, {"request_id", random_id("batch-")}, {"body", body}}},
                    {"error", l.error}};
    out.push_back(json_text(o));
  }
  if (dp.count > 1) {
    std::vector<std::string> all;
    agree(dp.leaders, [&] { all = gather_replica_lines(dp, out, lines.size(), "run-batch"); });
    out = std::move(all);
    int64_t sum = 0;
    MPI_Reduce(&failed, &sum, 1, MPI_INT64_T, MPI_SUM, 0, dp.leaders);
    failed = sum;
  }
  if (rank == 0) {
    std::string text;
    for (const auto& l : out) text += l + "\n";
    write_file_atomic(output, text);
    log_info("run-batch: ", lines.size(), " lines, ", static_cast<int64_t>(lines.size()) - failed, " answered, ", failed,
             " refused or failed; ", engine.steps(), " steps", dp.count > 1 ? cat(" (replica 0's)") : std::string());
  }
  return 0;
}

}  // namespace llmserve
