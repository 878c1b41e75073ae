#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "config/config.h"
#include "model/lora.h"
#include "test_util.h"

using namespace llmserve;

namespace {
std::string write_yaml(const std::string& text) {
  static int n = 0;
  const std::string p = (llmserve::testing::temp_dir("config") / ("cfg" + std::to_string(n++) + ".yaml")).string();
  std::ofstream(p) << text;
  return p;
}
}  // namespace

TEST(Config, YamlThenCommandLineOverrides) {
  Config c;
  auto p = write_yaml("model: m.h5\ntensor_parallel_size: 2\npipeline_parallel_size: 2\ndtype: bfloat16\n"
                      "enable_chunked_prefill: false\napi_key: secret\nserved_model_name: [a, b]\n");
  auto rest = config_parse_args(c, {"--tensor-parallel-size", "4", p, "--max-model-len=2048", "-pp", "1"});
  EXPECT_TRUE(rest.empty());
  EXPECT_EQ(c.model, "m.h5");
  EXPECT_EQ(c.tensor_parallel_size, 4);  // the command line wins whatever its position
  EXPECT_EQ(c.pipeline_parallel_size, 1);
  EXPECT_EQ(c.max_model_len, 2048);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_FALSE(c.enable_chunked_prefill);
  EXPECT_EQ(c.api_key, std::vector<std::string>{"secret"});
  EXPECT_EQ(c.served_model_name, (std::vector<std::string>{"a", "b"}));
  EXPECT_NO_THROW(config_validate(c));
}

TEST(Config, BooleanFlags) {
  Config c;
  config_parse_args(c, {"--no-enable-chunked-prefill", "--enforce-eager"});
  EXPECT_FALSE(c.enable_chunked_prefill);
  EXPECT_TRUE(c.enforce_eager);
  config_parse_args(c, {"--enable-chunked-prefill", "true", "--enforce-eager=false"});
  EXPECT_TRUE(c.enable_chunked_prefill);
  EXPECT_FALSE(c.enforce_eager);
}

TEST(Config, ServedModelNameFromCommandLineReplacesYaml) {
  Config c;
  auto p = write_yaml("served_model_name: [a, b]\n");
  config_parse_args(c, {p, "--served-model-name", "x"});
  EXPECT_EQ(c.served_model_name, std::vector<std::string>{"x"});
}

TEST(Config, UnknownKeysAreRejected) {
  Config c;
  auto p = write_yaml("model: m.h5\ntensor_paralel_size: 2\n");
  try {
    config_parse_args(c, {p});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown option 'tensor_paralel_size'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(config_parse_args(c, {"--tensor-paralel-size", "2"}), Error);
}

TEST(Config, WrongTypesAreRejected) {
  for (const char* yaml : {"tensor_parallel_size: two\n", "gpu_memory_utilization: lots\n", "enable_chunked_prefill: maybe\n",
                           "port: 80.5\n", "tensor_parallel_size: [1, 2]\n", "max_model_len: {a: 1}\n"}) {
    Config c;
    EXPECT_THROW(config_parse_args(c, {write_yaml(yaml)}), Error) << yaml;
  }
  Config c;
  EXPECT_THROW(config_parse_args(c, {"--port", "http"}), Error);
  EXPECT_THROW(config_parse_args(c, {"--max-num-seqs"}), Error);  // missing value
}

// vLLM's human-readable integers for max_model_len and max_num_batched_tokens: decimal k/m/g/t (with
// decimals), binary K/M/G/T (whole numbers only), plain integers as before.
TEST(Config, HumanReadableTokenCounts) {
  const std::vector<std::pair<std::string, int64_t>> ok = {
      {"2048", 2048}, {"32k", 32000}, {"25.6k", 25600}, {"32K", 32768}, {"128K", 131072}, {"1m", 1000000},
      {"1M", 1048576}, {"0", 0}, {"1g", 1000000000}};
  for (const auto& [text, want] : ok) {
    Config c;
    config_parse_args(c, {"--max-model-len", text, "--max-num-batched-tokens", text});
    EXPECT_EQ(c.max_model_len, want) << text;
    EXPECT_EQ(c.max_num_batched_tokens, want) << text;
  }
  Config y;
  config_parse_args(y, {write_yaml("max_model_len: 128K\nmax_num_batched_tokens: 8k\n")});
  EXPECT_EQ(y.max_model_len, 131072);
  EXPECT_EQ(y.max_num_batched_tokens, 8000);
  for (const char* bad : {"1.5K", "k", "32kk", "3.2.1k", ".5k", "5.k", "32x", "-1k", "1e3k", "10000000000T"}) {
    Config c;
    EXPECT_THROW(config_parse_args(c, {"--max-model-len", bad}), Error) << bad;
  }
  try {
    Config c;
    config_parse_args(c, {"--max-model-len", "1.5K"});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("decimals are not allowed with binary suffixes like K ('1.5K'); did you mean 1.5k?"),
              std::string::npos) << e.what();
  }
  Config c;
  EXPECT_THROW(config_parse_args(c, {"--max-num-seqs", "8k"}), Error);  // (only those two, as vLLM)
}

TEST(Config, HfOverridesAsAYamlMapping) {
  Config c;
  config_parse_args(c, {write_yaml("model: m.json\nload_format: dummy\nhf_overrides: {num_hidden_layers: 2, rope_scaling: {rope_type: llama3, factor: 8.0},\n"
                                   "  tie_word_embeddings: true, name: '5', none: null, l: [1, 2.5, abc]}\n")});
  const auto j = nlohmann::json::parse(c.hf_overrides);
  EXPECT_EQ(j, nlohmann::json::parse(R"({"num_hidden_layers": 2, "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
      "tie_word_embeddings": true, "name": "5", "none": null, "l": [1, 2.5, "abc"]})")) << c.hf_overrides;
  EXPECT_NO_THROW(config_validate(c));
}

TEST(Config, AllowedOriginsListFromYamlAndCommandLine) {
  Config d;
  EXPECT_EQ(d.allowed_origins, std::vector<std::string>{"*"});  // vLLM's default
  Config c;
  const auto p = write_yaml("allowed_origins: [http://a, http://b]\n");
  config_parse_args(c, {p});
  EXPECT_EQ(c.allowed_origins, (std::vector<std::string>{"http://a", "http://b"}));  // the file replaces the default
  config_parse_args(c, {p, "--allowed-origins", R"(["http://c"])", "--allowed-origins", "http://d"});
  EXPECT_EQ(c.allowed_origins, (std::vector<std::string>{"http://c", "http://d"}));  // the command line replaces the file
  Config e;
  EXPECT_THROW(config_parse_args(e, {"--allowed-origins", "[1]"}), Error);
  EXPECT_THROW(config_parse_args(e, {"--allowed-origins", std::string(100000, '[')}), Error);  // refused, not parsed
  config_parse_args(e, {"--served-model-name", "x", "--allowed-origins", "http://z"});  // lists kept apart
  EXPECT_EQ(e.served_model_name, std::vector<std::string>{"x"});
  EXPECT_EQ(e.allowed_origins, std::vector<std::string>{"http://z"});
}

// vLLM's other CORS options: allowed_methods and allowed_headers (lists as allowed_origins, default
// ["*"]) and allow_credentials.
TEST(Config, CorsMethodsHeadersCredentials) {
  Config d;
  EXPECT_EQ(d.allowed_methods, std::vector<std::string>{"*"});
  EXPECT_EQ(d.allowed_headers, std::vector<std::string>{"*"});
  EXPECT_FALSE(d.allow_credentials);
  Config c;
  const auto p = write_yaml("allowed_methods: [GET, POST]\nallowed_headers: [Authorization]\nallow_credentials: true\n");
  config_parse_args(c, {p, "--allowed-headers", R"(["X-Custom", "Authorization"])"});
  EXPECT_EQ(c.allowed_methods, (std::vector<std::string>{"GET", "POST"}));
  EXPECT_EQ(c.allowed_headers, (std::vector<std::string>{"X-Custom", "Authorization"}));
  EXPECT_TRUE(c.allow_credentials);
  c.model = "m.h5";
  EXPECT_NO_THROW(config_validate(c));
  Config e;
  EXPECT_THROW(config_parse_args(e, {"--allowed-methods", R"(["GET", 1])"}), Error);
  Config f;
  f.model = "m.h5";
  config_parse_args(f, {"--allowed-headers", ""});
  EXPECT_THROW(config_validate(f), Error);
}

// vLLM's LoRA options: --lora-modules takes every name=path or JSON object after it (a positional model
// stays one), a YAML list may mix both forms, and the modules' names and forms are checked.
TEST(Config, LoraModulesFromCommandLineAndYaml) {
  Config c;
  const auto rest = config_parse_args(c, {"--enable-lora", "--lora-modules", "a=/x", R"({"name": "b", "path": "/y"})", "m.h5",
                                          "--max-loras", "2"});
  EXPECT_EQ(c.lora_modules, (std::vector<std::string>{"a=/x", R"({"name": "b", "path": "/y"})"}));
  EXPECT_EQ(rest, std::vector<std::string>{"m.h5"});
  EXPECT_EQ(c.max_loras, 2);
  c.model = "m.h5";
  EXPECT_NO_THROW(config_validate(c));
  const LoraModuleSpec b = parse_lora_module(c.lora_modules[1]);
  EXPECT_EQ(b.name, "b");
  EXPECT_EQ(b.path, "/y");
  Config y;
  config_parse_args(y, {write_yaml("model: m.h5\nenable_lora: true\nlora_modules:\n  - a=/x\n  - {name: b, path: /y, base_model_name: m}\n")});
  ASSERT_EQ(y.lora_modules.size(), 2u);
  EXPECT_EQ(parse_lora_module(y.lora_modules[1]).base_model_name, "m");
  EXPECT_NO_THROW(config_validate(y));
  auto invalid = [](std::vector<std::string> args) {
    Config z;
    config_parse_args(z, args);
    z.model = "m.h5";
    EXPECT_THROW(config_validate(z), Error) << args.back();
  };
  invalid({"--lora-modules", "a=/x"});                                      // without enable_lora
  invalid({"--enable-lora", "--lora-modules", "a=/x", "a=/y"});            // a name twice
  invalid({"--enable-lora", "--lora-modules", "noequals"});                // neither form
  invalid({"--enable-lora", "--lora-modules", "a,b=/x"});                  // a comma in a name (a /metrics label)
  invalid({"--enable-lora", "--lora-modules", R"({"name": "a"})"});         // no path
  invalid({"--enable-lora", "--lora-modules", R"({"name": "a", "path": "/x", "rank": 8})"});  // an unknown key
  invalid({"--enable-lora", "--served-model-name", "a", "--lora-modules", "a=/x"});  // a served name
  invalid({"--enable-lora", "--max-lora-rank", "12"});
  invalid({"--enable-lora", "--max-loras", "0"});
  invalid({"--enable-lora", "--max-loras", "4", "--max-cpu-loras", "2"});
  invalid({"--enable-lora", "--lora-dtype", "int8"});
  invalid({"--enable-lora", "--dtype", "bfloat16", "--lora-dtype", "float16"});  // (adapters are held in the model's dtype)
  invalid({"--enable-lora", "--fully-sharded-loras"});
  for (const std::vector<std::string>& ok : {std::vector<std::string>{"--enable-lora", "--lora-dtype", "auto"},
                                             {"--enable-lora", "--dtype", "half", "--lora-dtype", "float16"},
                                             {"--enable-lora", "--fully-sharded-loras", "false"}}) {
    Config z;
    config_parse_args(z, ok);
    z.model = "m.h5";
    EXPECT_NO_THROW(config_validate(z)) << ok.back();
  }
}

TEST(Config, AKeyGivenTwiceIsRejected) {
  Config c;
  try {
    config_parse_args(c, {write_yaml("model: a.h5\nport: 8000\nport: 9000\n")});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'port' is given twice"), std::string::npos) << e.what();
  }
}

TEST(Config, BadYamlAndMissingFile) {
  Config c;
  EXPECT_THROW(config_parse_args(c, {write_yaml("model: [unclosed\n")}), Error);
  EXPECT_THROW(config_parse_args(c, {write_yaml("- just\n- a list\n")}), Error);
  EXPECT_THROW(config_parse_args(c, {"/nonexistent/config.yaml"}), Error);
}

TEST(Config, ImpossibleValuesFailValidation) {
  auto bad = [](auto mutate) {
    Config c;
    c.model = "m.h5";
    mutate(c);
    EXPECT_THROW(config_validate(c), Error);
  };
  bad([](Config& c) { c.model.clear(); });
  bad([](Config& c) { c.tensor_parallel_size = 0; });
  bad([](Config& c) { c.pipeline_parallel_size = -1; });
  bad([](Config& c) { c.block_size = 12; });
  bad([](Config& c) { c.gpu_memory_utilization = 1.5; });
  bad([](Config& c) { c.gpu_memory_utilization = 0; });
  bad([](Config& c) { c.swap_space = -1; });
  bad([](Config& c) { c.cpu_offload_gb = -1; });
  bad([](Config& c) { c.max_num_seqs = 0; });
  bad([](Config& c) { c.port = 70000; });
  bad([](Config& c) { c.dtype = "int4"; });
  bad([](Config& c) { c.backend = "tpu"; });
  bad([](Config& c) { c.quantization = "awq"; });  // vLLM's options llmserve cannot honour
  bad([](Config& c) { c.kv_cache_dtype = "fp8_e5m2"; });
  bad([](Config& c) { c.kv_cache_dtype = "int8"; });
  bad([](Config& c) { c.response_role = ""; });
  bad([](Config& c) { c.max_logprobs = 21; });
  bad([](Config& c) { c.generation_config = "/models/qwen"; });
  bad([](Config& c) { c.max_logprobs = -1; });
  bad([](Config& c) { c.logprobs_mode = "processed"; });
  bad([](Config& c) { c.api_server_count = 65; });
  bad([](Config& c) { c.api_server_count = 0; });
  bad([](Config& c) { c.async_scheduling = true, c.pipeline_parallel_size = 2; });
  bad([](Config& c) { c.scheduling_policy = "lifo"; });
  Config ok;
  ok.model = "m.h5";
  EXPECT_NO_THROW(config_validate(ok));
  ok.quantization = "none";  // their no-op values pass
  ok.kv_cache_dtype = "auto";
  EXPECT_NO_THROW(config_validate(ok));
  ok.quantization = "fp8";  // as do the values llmserve honours
  ok.scheduling_policy = "priority";
  EXPECT_NO_THROW(config_validate(ok));
  for (const char* m : {"raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"}) {
    ok.logprobs_mode = m;
    EXPECT_NO_THROW(config_validate(ok)) << m;
  }
  for (const char* kv : {"fp8", "fp8_e4m3"}) {
    ok.kv_cache_dtype = kv;
    EXPECT_NO_THROW(config_validate(ok)) << kv;
  }
}

// vLLM launch lines: response_role, disable_uvicorn_access_log, enable_force_include_usage,
// enable_request_id_headers and enable_server_load_tracking act;
// disable_log_requests, disable_log_stats, enable_log_outputs, max_log_len, trust_remote_code,
// enable_auto_tool_choice, max_seq_len_to_capture, max_parallel_loading_workers and disable_cascade_attn
// are accepted (their help says why they change nothing here).
TEST(Config, VllmLaunchFlags) {
  Config c;
  config_parse_args(c, {"--response-role", "bot", "--disable-uvicorn-access-log", "--disable-log-requests",
                        "--disable-log-stats", "--trust-remote-code", "--enable-auto-tool-choice", "--enable-log-outputs",
                        "--max-log-len", "100", "--enable-force-include-usage", "--enable-request-id-headers",
                        "--enable-server-load-tracking", "--max-seq-len-to-capture", "8192",
                        "--max-parallel-loading-workers", "2", "--disable-cascade-attn"});
  EXPECT_EQ(c.response_role, "bot");
  EXPECT_TRUE(c.disable_uvicorn_access_log);
  EXPECT_TRUE(c.enable_force_include_usage);
  EXPECT_TRUE(c.enable_request_id_headers);
  EXPECT_TRUE(c.enable_server_load_tracking);
  const char* accepted[] = {"disable_log_requests",  "disable_log_stats", "trust_remote_code",
                            "enable_auto_tool_choice", "enable_log_outputs", "max_log_len",
                            "max_seq_len_to_capture", "max_parallel_loading_workers", "disable_cascade_attn"};
  for (const char* key : accepted) EXPECT_EQ(c.given.count(key), 1u) << key;
  Config d;
  EXPECT_THROW(config_parse_args(d, {"--trust-remote-code=maybe"}), Error);  // still a boolean
  Config e;
  EXPECT_THROW(config_parse_args(e, {"--max-log-len", "-1"}), Error);  // still a count
  Config f;
  EXPECT_THROW(config_parse_args(f, {"--max-seq-len-to-capture", "0"}), Error);
  Config g;
  EXPECT_THROW(config_parse_args(g, {"--max-parallel-loading-workers", "x"}), Error);
  EXPECT_EQ(Config().response_role, "assistant");
  EXPECT_FALSE(Config().disable_uvicorn_access_log);
  EXPECT_FALSE(Config().enable_force_include_usage);
  EXPECT_FALSE(Config().enable_request_id_headers);
  EXPECT_FALSE(Config().enable_server_load_tracking);
  for (const char* key : accepted) {
    const std::string help = config_help();
    const size_t at = help.find(std::string("  ") + key + " ");
    ASSERT_NE(at, std::string::npos) << key;
    EXPECT_NE(help.find("no effect", at), std::string::npos) << key;
  }
}

// More of vLLM's engine options: accepted at the values that mean what llmserve does, refused (with the
// reason, naming the option) where llmserve has no counterpart.
TEST(Config, VllmOptionsWithoutCounterpart) {
  Config c;
  config_parse_args(c, {"--model-impl", "vllm", "--config-format", "hf", "--enable-expert-parallel", "--enable-eplb",
                        "--limit-mm-per-prompt", R"({"image": 0})", "--disable-chunked-mm-input", "--calculate-kv-scales", "false",
                        "--enable-prompt-embeds", "false", "--prefix-caching-hash-algo", "builtin"});
  for (const char* key : {"model_impl", "config_format", "enable_expert_parallel", "limit_mm_per_prompt", "calculate_kv_scales"})
    EXPECT_EQ(c.given.count(key), 1u) << key;
  const std::vector<std::vector<std::string>> refused = {
      {"--model-impl", "transformers"}, {"--config-format", "mistral"}, {"--kv-transfer-config", "{}"},
      {"--otlp-traces-endpoint", "http://x"}, {"--worker-cls", "w.W"}, {"--enable-prompt-embeds"}, {"--calculate-kv-scales"},
      {"--enable-sleep-mode"}};
  for (const auto& args : refused) {
    Config d;
    try {
      config_parse_args(d, args);
      ADD_FAILURE() << args[0] << " was accepted";
    } catch (const Error& e) {
      std::string key = args[0].substr(2);
      std::replace(key.begin(), key.end(), '-', '_');
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
    }
  }
  // prefix_caching_hash_algo: builtin (the default) or sha256 (a build with OpenSSL), another refused naming it.
  EXPECT_EQ(Config{}.prefix_caching_hash_algo, "builtin");
  Config h;
  h.model = "m.h5";
  config_parse_args(h, {"--prefix-caching-hash-algo", "sha256"});
  EXPECT_EQ(h.prefix_caching_hash_algo, "sha256");
#ifdef LLMSERVE_TLS
  EXPECT_NO_THROW(config_validate(h));
#endif
  config_parse_args(h, {"--prefix-caching-hash-algo", "sha256_cbor"});
  try {
    config_validate(h);
    ADD_FAILURE() << "sha256_cbor was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prefix_caching_hash_algo must be builtin or sha256, got 'sha256_cbor'"),
              std::string::npos) << e.what();
  }
}

// vLLM's kv_cache_memory_bytes: kv_cache_memory_gb in bytes, with vLLM's suffixes; at least one byte, and
// not beside kv_cache_memory_gb in one place (the command line's overrides a file's).
TEST(Config, KvCacheMemoryBytes) {
  const std::pair<const char*, double> cases[] = {
      {"2G", 2.0}, {"512M", 0.5}, {"1.5g", 1.5e9 / 1073741824.0}, {"1073741824", 1.0}};
  for (const auto& [v, gib] : cases) {
    Config c;
    config_parse_args(c, {"--model", "m.h5", "--kv-cache-memory-bytes", v});
    EXPECT_DOUBLE_EQ(c.kv_cache_memory_gb, gib) << v;
    EXPECT_NO_THROW(config_validate(c)) << v;
  }
  for (const char* bad : {"0", "-5", "lots", "1.5G"}) {
    Config c;
    EXPECT_THROW(config_parse_args(c, {"--kv-cache-memory-bytes", bad}), Error) << bad;
  }
  Config both;
  config_parse_args(both, {"--model", "m.h5", "--kv-cache-memory-bytes", "1G", "--kv-cache-memory-gb", "1"});
  try {
    config_validate(both);
    ADD_FAILURE() << "both sizes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("give one of them"), std::string::npos) << e.what();
  }
  Config over;
  config_parse_args(over, {"--config", write_yaml("model: m.h5\nkv_cache_memory_gb: 4\n"), "--kv-cache-memory-bytes", "512M"});
  EXPECT_DOUBLE_EQ(over.kv_cache_memory_gb, 0.5);
  EXPECT_NO_THROW(config_validate(over));
}

TEST(Config, HelpListsEveryKeyWithItsFlag) {
  const std::string h = config_help();
  for (const char* k : {"tensor_parallel_size", "--tensor-parallel-size", "gpu_memory_utilization", "api_key",
                        "enable_chunked_prefill", "served_model_name"})
    EXPECT_NE(h.find(k), std::string::npos) << k;
  // Each option line: the key, then its flag, then the help, apart (the longest key, the 26-character
  // disable_uvicorn_access_log, once ran into its flag).
  std::istringstream lines(h);
  std::string line;
  int options = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("  ", 0) != 0 || line.rfind("  (", 0) == 0 || line.rfind("   ", 0) == 0) continue;
    std::istringstream words(line);
    std::string key, flag;
    words >> key >> flag;
    std::string kebab_key = key;
    std::replace(kebab_key.begin(), kebab_key.end(), '_', '-');
    EXPECT_EQ(flag, "--" + kebab_key) << line;
    ++options;
  }
  EXPECT_GT(options, 30);
}

// vLLM's tokenizer and tokenizer_mode: a path taken as given (read when the model loads), the modes that
// mean tokenizer.json's tokenizer accepted, others refused by name.
TEST(Config, TokenizerAndTokenizerMode) {
  Config c;
  config_parse_args(c, {"--model", "m.h5", "--tokenizer", "/models/qwen-tok", "--tokenizer-mode", "slow"});
  EXPECT_EQ(c.tokenizer, "/models/qwen-tok");
  EXPECT_NO_THROW(config_validate(c));
  for (const char* mode : {"auto", "hf", "slow"}) {
    c.tokenizer_mode = mode;
    EXPECT_NO_THROW(config_validate(c)) << mode;
  }
  for (const char* mode : {"mistral", "custom", ""}) {
    c.tokenizer_mode = mode;
    try {
      config_validate(c);
      ADD_FAILURE() << "tokenizer_mode '" << mode << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("tokenizer_mode '") + mode + "' is not supported"), std::string::npos) << e.what();
    }
  }
  Config y;
  config_parse_args(y, {write_yaml("model: m.h5\ntokenizer: /tok\ntokenizer_mode: hf\n")});
  EXPECT_EQ(y.tokenizer, "/tok");
  EXPECT_EQ(y.tokenizer_mode, "hf");
}

TEST(Config, StreamInterval) {
  Config c;
  config_parse_args(c, {"--model", "m.h5", "--stream-interval", "8"});
  EXPECT_EQ(c.stream_interval, 8);
  EXPECT_NO_THROW(config_validate(c));
  c.stream_interval = 0;
  try {
    config_validate(c);
    ADD_FAILURE() << "stream_interval 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stream_interval must be >= 1, got 0"), std::string::npos) << e.what();
  }
}

// vLLM's hub options, accepted for launch lines that carry them (llmserve reads local files only).
TEST(Config, HubOptionsAcceptedWithoutEffect) {
  Config c, plain;
  config_parse_args(c, {"--model", "m.h5", "--revision", "main", "--code-revision", "v1", "--tokenizer-revision", "abc123",
                        "--download-dir", "/scratch/hf"});
  config_parse_args(plain, {"--model", "m.h5"});
  EXPECT_NO_THROW(config_validate(c));
  EXPECT_EQ(c.model, plain.model);
  EXPECT_EQ(c.tokenizer, plain.tokenizer);
  Config y;
  EXPECT_NO_THROW(config_parse_args(y, {write_yaml("model: m.h5\nrevision: main\ndownload_dir: /tmp/x\n")}));
}

// vLLM's structured_outputs_config (JSON on the command line, a mapping in YAML) and the older
// guided_decoding_backend with options after a colon.
TEST(Config, StructuredOutputsConfig) {
  Config c;
  config_parse_args(c, {"--model", "m.h5", "--structured-outputs-config",
                        R"({"backend": "guidance", "disable_any_whitespace": true, "disable_fallback": true, "reasoning_parser": "qwen3"})"});
  EXPECT_EQ(c.structured_outputs_backend, "guidance");
  EXPECT_TRUE(c.disable_any_whitespace);
  EXPECT_EQ(c.reasoning_parser, "qwen3");
  EXPECT_NO_THROW(config_validate(c));
  Config y;
  config_parse_args(y, {write_yaml("model: m.h5\nstructured_outputs_config:\n  backend: xgrammar\n  disable_any_whitespace: true\n")});
  EXPECT_EQ(y.structured_outputs_backend, "xgrammar");
  EXPECT_TRUE(y.disable_any_whitespace);
  Config g;
  config_parse_args(g, {"--model", "m.h5", "--guided-decoding-backend", "outlines"});
  EXPECT_EQ(g.structured_outputs_backend, "outlines");
  EXPECT_FALSE(g.disable_any_whitespace);
  config_parse_args(g, {"--guided-decoding-backend", "xgrammar:no-fallback, disable-any-whitespace"});
  EXPECT_TRUE(g.disable_any_whitespace);
  auto error_of = [](std::vector<std::string> args) {
    Config x;
    try {
      config_parse_args(x, args);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({"--structured-outputs-config", R"({"backend": "regexp"})"}).find("backend must be auto, xgrammar"), std::string::npos);
  EXPECT_NE(error_of({"--structured-outputs-config", R"({"disable_any_whitespace": 1})"}).find("must be true or false"), std::string::npos);
  EXPECT_NE(error_of({"--structured-outputs-config", R"({"enable_in_reasoning": true})"}).find("enable_in_reasoning true is not supported"),
            std::string::npos);
  EXPECT_NE(error_of({"--structured-outputs-config", R"({"reasoning_parser_plugin": "p.py"})"}).find("not supported"), std::string::npos);
  EXPECT_NE(error_of({"--structured-outputs-config", R"({"grammar": "x"})"}).find("'grammar' is not supported"), std::string::npos);
  EXPECT_NE(error_of({"--structured-outputs-config", "[1]"}).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(error_of({"--guided-decoding-backend", "regexp"}).find("guided_decoding_backend must be auto"), std::string::npos);
  EXPECT_NE(error_of({"--guided-decoding-backend", "xgrammar:fast"}).find("option 'fast' is not supported"), std::string::npos);
}

// vLLM's older task (it picks the runner) and distributed_executor_backend (MPI ranks are the workers).
TEST(Config, TaskAndDistributedExecutorBackend) {
  auto parsed = [](std::vector<std::string> args) {
    Config c;
    args.insert(args.begin(), {"--model", "m.h5"});
    config_parse_args(c, args);
    return c;
  };
  EXPECT_EQ(parsed({"--task", "generate"}).runner, "generate");
  EXPECT_EQ(parsed({"--task", "embed"}).runner, "pooling");
  EXPECT_EQ(parsed({"--task", "embedding"}).runner, "pooling");
  EXPECT_EQ(parsed({"--task", "score"}).task, "score");
  EXPECT_EQ(parsed({"--task", "auto"}).runner, "auto");
  for (const char* b : {"mp", "uni", "external_launcher"}) EXPECT_NO_THROW(parsed({"--distributed-executor-backend", b})) << b;
  auto error_of = [&](std::vector<std::string> args) {
    try {
      parsed(args);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({"--task", "reward"}).find("task 'reward' is not supported"), std::string::npos);
  EXPECT_NE(error_of({"--distributed-executor-backend", "ray"}).find("ray is not supported"), std::string::npos);
  EXPECT_NE(error_of({"--distributed-executor-backend", "threads"}).find("must be mp, uni or external_launcher"), std::string::npos);
}

TEST(Config, RootPath) {
  Config c;
  config_parse_args(c, {"--model", "m.h5", "--root-path", "/llm/"});
  EXPECT_EQ(c.root_path, "/llm");
  config_parse_args(c, {"--root-path", "/"});
  EXPECT_EQ(c.root_path, "");
  EXPECT_THROW(config_parse_args(c, {"--root-path", "llm"}), Error);
}

TEST(Config, FrontEndTransportsAndLimits) {
  // vLLM's --api-key takes several keys; it stops at the next option and at a model or config name.
  Config c;
  auto rest = config_parse_args(c, {"--api-key", "k1", "k2", "m.h5", "--uds", "/tmp/s.sock"});
  EXPECT_EQ(c.api_key, (std::vector<std::string>{"k1", "k2"}));
  EXPECT_EQ(rest, std::vector<std::string>{"m.h5"});
  EXPECT_EQ(c.uds, "/tmp/s.sock");
  Config y;
  config_parse_args(y, {write_yaml("model: m.h5\napi_key: [a, b]\nssl_certfile: c.pem\nssl_keyfile: k.pem\nssl_ca_certs: ca.pem\n"
                                   "ssl_cert_reqs: 2\nssl_ciphers: ECDHE-RSA-AES128-GCM-SHA256\nenable_ssl_refresh: true\n"
                                   "disable_access_log_for_endpoints: /health,/metrics\nh11_max_header_count: 64\n"
                                   "h11_max_incomplete_event_size: 8192\n"),
                        "--api-key", "cli"});
  EXPECT_EQ(y.api_key, std::vector<std::string>{"cli"});  // the command line's list replaces the file's
  EXPECT_EQ(y.ssl_cert_reqs, 2);
  EXPECT_TRUE(y.enable_ssl_refresh);
  EXPECT_EQ(y.h11_max_header_count, 64);
  EXPECT_EQ(y.h11_max_incomplete_event_size, 8192);
  EXPECT_NO_THROW(config_validate(y));
  auto refused = [](std::vector<std::string> args, const std::string& msg) {
    Config b;
    config_parse_args(b, args);
    try {
      config_validate(b);
      ADD_FAILURE() << "accepted: " << msg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
  };
  refused({"--model", "m.h5", "--ssl-keyfile", "k.pem"}, "ssl_keyfile needs ssl_certfile");
  refused({"--model", "m.h5", "--ssl-ca-certs", "ca.pem"}, "they need ssl_certfile");
  refused({"--model", "m.h5", "--ssl-certfile", "c.pem", "--ssl-cert-reqs", "3", "--ssl-ca-certs", "ca.pem"}, "ssl_cert_reqs must be 0");
  refused({"--model", "m.h5", "--ssl-certfile", "c.pem", "--ssl-cert-reqs", "1"}, "needs ssl_ca_certs");
  refused({"--model", "m.h5", "--h11-max-header-count", "0"}, "h11_max_header_count must be at least 1");
  refused({"--model", "m.h5", "--h11-max-incomplete-event-size", "100"}, "h11_max_incomplete_event_size must be 1024");
  refused({"--model", "m.h5", "--uds", "/tmp/" + std::string(120, 's') + ".sock"}, "a Unix socket path holds at most 107");
  Config e;
  EXPECT_THROW(config_parse_args(e, {"--api-key", ""}), Error);
}
