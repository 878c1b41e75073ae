// `llmserve [serve] config.yaml`: rank 0 runs the engine and the OpenAI HTTP server; every other
// rank runs its pipeline stage and tensor shard. SIGINT/SIGTERM on rank 0 stops the server, aborts
// what is in flight and shuts every rank down with exit code 0 (workers ignore the signal and wait for
// rank 0's shutdown plan). With data_parallel_size > 1 each replica (cli/commands/data_parallel.h) is
// such a server of its own on its first rank: rank 0's on `port` routes requests to the others' (on
// internal addresses: server/replica_router.h); with data_parallel_external_lb replica r serves on port + r.
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <ctime>
#include <random>
#include <sstream>

#include "chat/chat_template.h"
#include "cli/commands/commands.h"
#include "cli/commands/data_parallel.h"
#include "common/error.h"
#include "common/log.h"
#include "common/text.h"
#include "config/config.h"
#include "dist/collective_check.h"
#include "engine/engine.h"
#include "model/dummy_weights.h"
#include "model/model_file.h"
#include "model/pooler_config.h"
#include "model/runner.h"
#include "server/engine_service.h"
#include "server/http_server.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {

namespace {

// The classify task's head (convert embed pools a classifier's hidden states as an embedding model
// instead): the converted file's score matrix; a causal LM's head rows named by hf_overrides
// classifier_from_token; or, with load_format dummy from a config.json, a score matrix of its labels
// made up like the other weights.
std::shared_ptr<const Classifier> load_classifier(const Config& cfg, const ModelRunner& runner, const Tokenizer* tok) {
  const int64_t H = runner.spec().hidden_size;
  const auto overrides = cfg.hf_overrides.empty() ? nlohmann::json::object() : nlohmann::json::parse(cfg.hf_overrides);
  if (!model_has_file(cfg)) {
    // load_format dummy from a config.json: a score head of its labels made up like the other weights.
    if (overrides.contains("classifier_from_token"))
      throw Error("hf_overrides: classifier_from_token reads a converted model's head rows (not load_format dummy)");
    const nlohmann::json hf = dummy_hf_config(cfg.model, cfg.hf_overrides);
    int64_t labels = 2;  // (transformers' default)
    if (hf.contains("id2label") && hf["id2label"].is_object() && !hf["id2label"].empty())
      labels = static_cast<int64_t>(hf["id2label"].size());
    if (hf.contains("num_labels") && hf["num_labels"].is_number_integer()) labels = hf["num_labels"].get<int64_t>();
    if (labels < 1) throw Error(cat("'", cfg.model, "': num_labels must be at least 1"));
    DummyWeights dummy(runner.spec(), cfg.model, static_cast<uint64_t>(cfg.seed));
    dummy.add("score.weight", {labels, H});
    return std::make_shared<const Classifier>(
        make_classifier(hf, dummy.read_f32("score.weight", 0, labels, 0, H), labels, H));
  }
  ModelFile file(cfg.model);
  if (overrides.contains("classifier_from_token")) {
    // A causal LM made a classifier by hf_overrides (Qwen3-Reranker): rows of its language-model head.
    const auto& names = overrides["classifier_from_token"];
    if (!names.is_array() || names.empty()) throw Error("hf_overrides: classifier_from_token must be a list of tokens");
    if (!tok) throw Error("hf_overrides: classifier_from_token needs the model's tokenizer");
    const std::string head = runner.spec().tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    std::vector<float> rows;
    for (const auto& name : names) {
      const auto id = name.is_string() ? tok->token_to_id(name.get<std::string>()) : std::nullopt;
      if (!id) throw Error(cat("hf_overrides: classifier_from_token ", name.dump(), " is not a token of the vocabulary"));
      const std::vector<float> row = file.read_f32(head, *id, 1, 0, H);
      rows.insert(rows.end(), row.begin(), row.end());
    }
    return std::make_shared<const Classifier>(
        classifier_from_token_rows(overrides, std::move(rows), static_cast<int64_t>(names.size()), H));
  }
  if (!file.has_weight("score.weight"))
    throw Error(cat("'", cfg.model, "' has no score.weight: convert the ", runner.spec().architecture, " checkpoint again"));
  const auto shape = file.weight_shape("score.weight");
  const auto hf = file.text("config", "hf_config.json");
  return std::make_shared<const Classifier>(
      make_classifier(hf ? nlohmann::json::parse(*hf, nullptr, false) : nlohmann::json::object(),
                      file.read_all_f32("score.weight"), shape.empty() ? 0 : shape[0], H));
}

}  // namespace

ApiContext api_context(const Config& cfg, const ModelRunner& runner, std::unique_ptr<Tokenizer>& tok,
                       std::unique_ptr<ChatTemplate>& chat) {
  ApiContext ctx;
  bool sentence_transformers = false;
  if (model_has_file(cfg)) {
    ModelFile file(cfg.model);
    // The pooler: a Sentence Transformers checkpoint's own (converted with it), Matryoshka from config.json.
    if (const auto modules = file.text("config", "st_modules.json")) {
      sentence_transformers = true;
      const auto pooling = file.text("config", "st_pooling_config.json");
      ctx.pooler = *sentence_transformers_pooler(*modules, pooling ? *pooling : "");
    }
    if (const auto hf = file.text("config", "hf_config.json")) read_matryoshka(ctx.pooler, nlohmann::json::parse(*hf, nullptr, false));
    if (cfg.generation_config == "auto") ctx.sampling_defaults = generation_config_defaults(file, runner.spec().vocab_size);
  }
  if (const auto docs = served_tokenizer_docs(cfg); docs && docs->tokenizer_json) {
    tok = Tokenizer::from_docs(*docs);
    // The table of token texts (log-probability entries), made now rather than by the first request.
    if (tok->vocab_size() > 0) tok->token_string(0);
    chat = ChatTemplate::from_docs(*docs, cfg.chat_template);
    if (cfg.enable_tokenizer_info_endpoint)
      ctx.tokenizer_info = docs->info(cfg.chat_template.empty() ? "" : load_chat_template(cfg.chat_template));
    if (!cfg.tokenizer.empty()) log_info("tokenizer and chat template from ", docs->origin);
  }
  if (!cfg.override_generation_config.empty())
    ctx.sampling_defaults = override_generation_defaults(ctx.sampling_defaults, cfg.override_generation_config, runner.spec().vocab_size);
  ctx.tok = tok.get();
  ctx.chat = chat.get();
  ctx.tokenizer_info_route = cfg.enable_tokenizer_info_endpoint;
  ctx.dev_routes = env_flag("VLLM_SERVER_DEV_MODE");
  ctx.model_names = cfg.served_model_name.empty() ? std::vector<std::string>{cfg.model} : cfg.served_model_name;
  ctx.model_path = cfg.model;
  ctx.max_model_len = cfg.max_model_len;
  ctx.vocab_size = runner.spec().vocab_size;
  ctx.eos_ids = runner.spec().eos_token_ids;
  ctx.created = static_cast<int64_t>(std::time(nullptr));
  if (cfg.enable_lora) {
    ctx.loras = std::make_shared<LoraRegistry>(runner.runtime_lora());
    for (size_t i = 0; i < runner.lora_modules().size(); ++i)
      ctx.loras->add({runner.lora_modules()[i], static_cast<uint64_t>(i) + 1});  // (the engine's uids of lora_modules)
  }
  ctx.max_loras = cfg.max_loras;
  // (Mistral's v11 format for a tokenizer with an [ARGS] token, as vLLM's parser decides.)
  ctx.tool_format = tool_format_for(cfg.tool_call_parser, runner.spec().model_type, tok && tok->token_to_id("[ARGS]"));
  ctx.reasoning = cfg.reasoning_parser != "none";
  ctx.guided_compact = cfg.disable_any_whitespace;
  ctx.prompt_tokens_details = cfg.enable_prompt_tokens_details;
  ctx.tokens_as_ids = cfg.return_tokens_as_token_ids;
  ctx.force_include_usage = cfg.enable_force_include_usage;
  ctx.response_role = cfg.response_role;
  ctx.max_logprobs = cfg.max_logprobs;
  ctx.logprobs_mode = parse_logprobs_mode(cfg.logprobs_mode);
  ctx.priority_scheduling = cfg.scheduling_policy == "priority";
  ctx.trust_request_chat_template = cfg.trust_request_chat_template;
  if (!cfg.default_chat_template_kwargs.empty())
    ctx.default_template_kwargs = nlohmann::ordered_json::parse(cfg.default_chat_template_kwargs);  // (an object: config_validate)
  ctx.hidden_size = runner.spec().hidden_size;
  ctx.pooling = resolve_runner(cfg.runner, cfg.convert, sentence_transformers, runner.spec().architecture) == "pooling";
  if ((cfg.task == "classify" || cfg.task == "score") && !is_sequence_classifier(runner.spec().architecture))
    throw Error(cat("task ", cfg.task, " needs a sequence-classification checkpoint (*ForSequenceClassification); ",
                    runner.spec().architecture, " is not one (vLLM would convert it; llmserve does not)"));
  if (ctx.pooling && is_sequence_classifier(runner.spec().architecture) && cfg.convert != "embed")
    ctx.classifier = load_classifier(cfg, runner, tok.get());
  if (!cfg.hf_overrides.empty()) read_matryoshka(ctx.pooler, nlohmann::json::parse(cfg.hf_overrides, nullptr, false));
  apply_pooler_config(ctx.pooler, cfg.pooler_config);
  if (ctx.pooler.dimensions && *ctx.pooler.dimensions > ctx.hidden_size)
    throw Error(cat("pooler_config: dimensions (", *ctx.pooler.dimensions, ") is more than the model's hidden size (",
                    ctx.hidden_size, ")"));
  if (ctx.classifier)
    log_info("pooling runner: /classify scores ", pooling_name(ctx.pooler.pooling_type), " hidden states over ",
             ctx.classifier->num_labels, " labels",
             ctx.classifier->num_labels == 1 ? "; /score and /rerank as a cross-encoder" : "");
  else if (ctx.pooling)
    log_info("pooling runner: /v1/embeddings pools ", pooling_name(ctx.pooler.pooling_type), " hidden states",
             ctx.pooler.normalize ? ", normalized" : ", not normalized",
             ctx.pooler.dimensions ? cat(", ", *ctx.pooler.dimensions, " dimensions") : std::string(),
             sentence_transformers ? " (the Sentence Transformers config)" : "",
             ctx.pooler.matryoshka ? "; Matryoshka dimensions accepted" : "");
  return ctx;
}

namespace {

// The HTTP front end's options from the configuration (and the API key environment variables).
ServerOptions server_options(const Config& cfg) {
  ServerOptions opt;
  opt.host = cfg.host;
  opt.port = cfg.port;
  opt.uds = cfg.uds;
  opt.api_keys = cfg.api_key;
  if (opt.api_keys.empty())  // (vLLM reads VLLM_API_KEY)
    for (const char* var : {"LLMSERVE_API_KEY", "VLLM_API_KEY"})
      if (const char* k = std::getenv(var); k && *k && opt.api_keys.empty()) opt.api_keys.push_back(k);
  opt.tls = {cfg.ssl_keyfile, cfg.ssl_certfile, cfg.ssl_ca_certs, cfg.ssl_ciphers, cfg.ssl_cert_reqs, cfg.enable_ssl_refresh};
  opt.header_limit = static_cast<uint32_t>(cfg.h11_max_incomplete_event_size);
  opt.max_header_count = cfg.h11_max_header_count;
  opt.allowed_origins = cfg.allowed_origins;
  opt.allowed_methods = cfg.allowed_methods;
  opt.allowed_headers = cfg.allowed_headers;
  opt.allow_credentials = cfg.allow_credentials;
  opt.request_id_headers = cfg.enable_request_id_headers;
  opt.server_load_tracking = cfg.enable_server_load_tracking;
  opt.root_path = cfg.root_path;
  opt.io_threads = cfg.api_server_count;
  // (uvicorn logs each request at info: a level above it silences the access log, as in vLLM)
  opt.access_log = !cfg.disable_uvicorn_access_log && (cfg.uvicorn_log_level == "info" || cfg.uvicorn_log_level == "debug" ||
                                                       cfg.uvicorn_log_level == "trace");
  std::stringstream quiet(cfg.disable_access_log_for_endpoints);
  for (std::string p; std::getline(quiet, p, ',');)
    if (!(p = trim(p)).empty()) opt.no_access_log_paths.push_back(p);
  return opt;
}

// Each replica's first rank's host name, in replica order (collective over the replicas' first ranks).
std::vector<std::string> replica_hosts(const Replicas& dp) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::vector<char> all(sizeof host * static_cast<size_t>(dp.count));
  MPI_Allgather(host, sizeof host, MPI_CHAR, all.data(), sizeof host, MPI_CHAR, dp.leaders);
  std::vector<std::string> hosts;
  for (int r = 0; r < dp.count; ++r) hosts.emplace_back(all.data() + static_cast<size_t>(r) * sizeof host);
  return hosts;
}

// Internal load balancing: replica r > 0 serves rank 0's server only, on a port the system picks, over
// plain HTTP (the API keys still checked): on the loopback when it shares rank 0's node, else on every
// interface of its own.
ServerOptions internal_server_options(ServerOptions opt, bool beside_rank0) {
  opt.host = beside_rank0 ? "127.0.0.1" : "0.0.0.0";
  opt.port = 0;
  opt.uds.clear();
  opt.tls = {};
  return opt;
}

// Rank 0 learns where the other replicas' servers listen and routes to them (collective over the
// replicas' first ranks); with external load balancing it logs where each serves.
void connect_replicas(const Replicas& dp, const std::vector<std::string>& hosts, const Config& cfg, const ServerOptions& opt,
                      HttpServer& server) {
  int port = server.port();
  std::vector<int> ports(static_cast<size_t>(dp.count));
  MPI_Allgather(&port, 1, MPI_INT, ports.data(), 1, MPI_INT, dp.leaders);
  // What rank 0's server sends the others' when it stops, so that they stop too (unguessable: their ports
  // take requests from anyone who can reach them).
  char token[33] = {0};
  if (dp.index == 0) {
    std::random_device rd;
    for (int i = 0; i < 32; ++i) token[i] = "0123456789abcdef"[rd() % 16];
  }
  MPI_Bcast(token, sizeof token, MPI_CHAR, 0, dp.leaders);
  if (!cfg.data_parallel_external_lb && dp.index != 0) server.stop_on_request(token);
  if (dp.index != 0) return;
  if (cfg.data_parallel_external_lb) {
    for (int r = 0; r < dp.count; ++r)
      log_info("replica ", r, " of ", dp.count, ": ", hosts[r], " port ", ports[r],
               " (data_parallel_external_lb: put a load balancer in front of the replicas)");
    return;
  }
  std::vector<ReplicaAddress> remote;
  for (int r = 1; r < dp.count; ++r) {
    remote.push_back({hosts[r] == hosts[0] ? "127.0.0.1" : hosts[r], ports[r]});
    log_info("replica ", r, " of ", dp.count, ": ", hosts[r], ", its server on ", remote.back().host, ":", ports[r],
             " (internal: requests reach it through ", opt.uds.empty() ? cat("port ", server.port()) : opt.uds, ")");
  }
  server.route_to(std::move(remote), token);
}

}  // namespace

int cmd_serve(const std::vector<std::string>& args, MPI_Comm world) {
  Config cfg;
  ServerOptions opt;
  Replicas dp;
  std::vector<std::string> hosts;  // each replica's first rank's host (data_parallel_size > 1)
  agree(world, [&] {
    std::vector<std::string> rest = config_parse_args(cfg, args);
    config_take_model_argument(cfg, rest);
    if (!rest.empty()) throw Error(cat("unexpected argument '", rest[0], "'"));
    if (cfg.data_parallel_size > 1 && cfg.data_parallel_external_lb && !cfg.uds.empty())
      throw Error("config: uds serves one replica: with data_parallel_external_lb each replica serves on port + its index");
    split_replicas(world, cfg, dp);
    if (!dp.leader()) return;
    if (dp.count > 1) hosts = replica_hosts(dp);  // (collective: before anything that may throw)
    // The HTTPS files are read before the model is loaded, so a wrong one costs no loading time.
    config_validate(cfg);
    opt = server_options(cfg);
    if (dp.count > 1 && cfg.data_parallel_external_lb) {
      if (opt.port != 0) opt.port += dp.index;  // (replica r on port + r)
    } else if (dp.index > 0) {
      opt = internal_server_options(opt, hosts[static_cast<size_t>(dp.index)] == hosts[0]);
    }
    if (opt.tls.enabled()) check_tls(opt.tls);
  });
  // mpirun forwards SIGTERM/SIGINT to every rank: only each replica's first rank acts on them.
  if (!dp.leader()) {
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGTERM, SIG_IGN);
  }
  ModelRunner runner(cfg, dp.replica, false, world);
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<ChatTemplate> chat;
  ApiContext ctx;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<EngineService> service;
  std::unique_ptr<HttpServer> server;
  agree(world, [&] {
    if (!dp.leader()) return;
    ctx = api_context(cfg, runner, tok, chat);
    engine = std::make_unique<Engine>(runner, tok.get(), static_cast<uint64_t>(cfg.seed));
    service = std::make_unique<EngineService>(*engine);
    server = std::make_unique<HttpServer>(opt, ctx, *service);
  });
  if (!dp.leader()) {
    Worker(runner).loop();
    return 0;
  }
  if (dp.count > 1) connect_replicas(dp, hosts, cfg, opt, *server);
  server->run();
  service->stop();
  engine->shutdown();
  log_info("stopped");
  return 0;
}

}  // namespace llmserve
