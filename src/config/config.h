// llmserve's configuration: vLLM's option names (snake_case in YAML, --kebab-case on the command line).
// Parsing is strict: unknown keys, wrong types and impossible values are errors that name the key.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llmserve {

struct Config {
  std::string model;                 // path to the llmserve HDF5 model file (llmserve-convert makes it)
  std::string dtype = "auto";        // auto | half | float16 | bfloat16 | float | float32
  std::string backend = "auto";      // auto | cpu | cuda
  std::string load_format = "auto";  // auto | dummy (random weights from the model's hyper-parameters)
  std::string override_generation_config;  // JSON object: sampling defaults over (or, with generation_config vllm, instead of) the model's
  std::string hf_overrides;          // JSON object merged into config.json (load_format dummy), e.g. {"num_hidden_layers": 2}
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  int64_t max_model_len = 0;         // 0: the model's max_position_embeddings
  int block_size = 16;               // KV-cache block size in tokens
  double gpu_memory_utilization = 0.9;
  double swap_space = 4.0;           // GiB of host memory per rank for swapped-out KV blocks
  double cpu_offload_gb = 0.0;
  std::string quantization;         // only unset / "none" (vLLM's name; quantized methods are refused)
  std::string kv_cache_dtype = "auto";
  double kv_cache_memory_gb = 0.0;   // KV-cache budget in GiB per rank (0: 1 GiB on the CPU backend, the memory plan on GPUs)
  int64_t num_gpu_blocks_override = 0;  // > 0: exactly this many KV blocks (tests, debugging)
  int max_num_seqs = 256;
  int64_t max_num_batched_tokens = 0;  // 0: 8192 with chunked prefill, else max_model_len
  bool enable_chunked_prefill = true;
  int64_t long_prefill_token_threshold = 0;  // vLLM's: a prompt's most tokens a step with chunked prefill (0: no cap)
  bool enable_prefix_caching = true;
  std::string prefix_caching_hash_algo = "builtin";  // builtin | sha256 (kv/block_manager.h)
  bool enforce_eager = false;
  // vLLM's CUDA-graph options (model/graph_sizes.h): compilation_config's cudagraph_mode (empty: unset,
  // vLLM's FULL_AND_PIECEWISE), cudagraph_capture_sizes (empty: unset) and max_cudagraph_capture_size
  // (-1: unset), the older cuda_graph_sizes, and the optimization level of -O (-1: unset; 0: no graphs).
  std::string cudagraph_mode;
  std::vector<int64_t> cudagraph_capture_sizes;
  int64_t max_cudagraph_capture_size = -1;
  std::vector<int64_t> cuda_graph_sizes;
  int optimization_level = -1;
  bool disable_sliding_window = false;  // a sliding-window model with full attention up to the window (vLLM's)
  bool async_scheduling = false;     // plan the next step while one runs (pipeline_parallel_size 1)
  std::string speculative_config;    // JSON object: vLLM's speculative decoding, method ngram (engine/speculative.h)
  // vLLM's LoRA options (model/lora.h): adapters named by lora_modules ("name=path" or a JSON object with
  // name, path and base_model_name), requests pick one by `model`; at most max_loras adapters in a step.
  bool enable_lora = false;
  std::vector<std::string> lora_modules;
  int max_loras = 1;
  int max_lora_rank = 16;
  int max_cpu_loras = 0;  // 0: unset (vLLM's None: max_loras)
  std::string lora_dtype = "auto";   // vLLM's: auto, or the model's own dtype (adapters are held in it)
  bool fully_sharded_loras = false;  // vLLM's; only false
  std::string scheduling_policy = "fcfs";  // fcfs | priority (requests' `priority`: lower first, as vLLM)
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string uds;                          // a Unix domain socket to serve on instead of host:port (vLLM's)
  std::vector<std::string> api_key;         // keys any one of which /v1 routes require (vLLM's list); empty: none
  std::string tool_call_parser = "auto";  // auto | hermes | llama3_json | none
  std::string reasoning_parser = "none";  // none | qwen3 | deepseek_r1 (server/reasoning_parser.h)
  // vLLM's structured_outputs_config / guided_decoding_backend: the backend named (llmserve's own serves
  // every name) and disable_any_whitespace, the default of requests' structured_outputs.disable_any_whitespace.
  std::string structured_outputs_backend = "auto";
  bool disable_any_whitespace = false;
  std::vector<std::string> served_model_name;  // empty: the model path
  std::vector<std::string> allowed_origins = {"*"};  // CORS (vLLM's default: any origin)
  std::vector<std::string> allowed_methods = {"*"};  // CORS preflights' methods (vLLM's default: any)
  std::vector<std::string> allowed_headers = {"*"};  // CORS preflights' headers (vLLM's default: any)
  bool allow_credentials = false;                    // CORS with credentials (vLLM's)
  std::string generation_config = "auto";  // auto: the model's generation_config.json sampling defaults; vllm: none
  int max_logprobs = 20;                    // the most log-probabilities a request may ask for (vLLM's)
  std::string logprobs_mode = "raw_logprobs";  // what logprobs report (vLLM's; engine/sampling_params.h LogprobsMode)
  std::string root_path;                    // a path-based proxy's prefix of the routes (vLLM's; empty: none)
  int stream_interval = 1;                  // tokens a streamed (Delta) output gathers before it goes out (vLLM's)
  std::string chat_template;                // a file, or the template itself (vLLM's); empty: the model's
  std::string tokenizer;                    // a tokenizer directory or model file (vLLM's); empty: the model file's
  std::string tokenizer_mode = "auto";      // auto | hf | slow (vLLM's; one tokenizer.json tokenizer)
  std::string response_role = "assistant";  // the role of chat answers after a generation prompt (vLLM)
  bool disable_uvicorn_access_log = false;  // no access-log line per request (vLLM's name)
  bool enable_prompt_tokens_details = false;  // usage.prompt_tokens_details.cached_tokens (vLLM's)
  bool enable_force_include_usage = false;    // every streamed answer ends with a usage chunk (vLLM's)
  bool enable_request_id_headers = false;     // every response carries X-Request-Id (vLLM's)
  bool enable_server_load_tracking = false;   // GET /load counts requests in flight (vLLM's)
  bool enable_tokenizer_info_endpoint = false;  // GET /tokenizer_info (vLLM's)
  bool skip_tokenizer_init = false;  // no tokenizer or chat template is loaded (vLLM's): token ids in and out
  int api_server_count = 2;  // the HTTP front end's I/O threads (vLLM's API server processes)
  bool return_tokens_as_token_ids = false;    // log-probability entries name tokens "token_id:<id>" unless a request says (vLLM's)
  std::string runner = "auto";               // auto | generate | pooling (vLLM's; pooling serves /v1/embeddings)
  std::string task = "auto";                 // vLLM's older task (sets runner; classify / score want a classifier)
  std::string convert = "auto";              // auto | embed (vLLM's: embed makes a generative model a pooling one)
  std::string pooler_config;                 // JSON object: pooling_type LAST | MEAN | CLS, normalize, dimensions (vLLM's)
  std::string uvicorn_log_level = "info";    // vLLM's: warning, error or critical also silence the access log
  bool trust_request_chat_template = false;  // vLLM's: requests may bring their own chat_template
  std::string default_chat_template_kwargs;  // JSON object: the chat template's keyword arguments by default (vLLM's)
  std::string chat_template_content_format = "auto";  // auto | string (a message's text parts joined, as vLLM's string)
  int data_parallel_size = 1;  // vLLM's: replicas (cli/commands/data_parallel.h)
  // vLLM's: each replica serves on port + its index for a load balancer in front (else rank 0's server is
  // the one endpoint and routes requests to the replicas: server/replica_router.h).
  bool data_parallel_external_lb = false;
  // vLLM's HTTPS options (server/tls_context.h): PEM files, client certificates by Python's ssl.CERT_* (0 none,
  // 1 optional, 2 required), TLS 1.2 cipher list, and whether changed files are loaded for new connections.
  std::string ssl_keyfile, ssl_certfile, ssl_ca_certs, ssl_ciphers;
  int ssl_cert_reqs = 0;
  bool enable_ssl_refresh = false;
  std::string disable_access_log_for_endpoints;  // comma-separated paths the access log leaves out (vLLM's)
  int64_t h11_max_incomplete_event_size = 4 << 20;  // a request header's most bytes (vLLM's default 4 MiB)
  int h11_max_header_count = 256;                 // a request's most header fields (vLLM's default)
  int64_t seed = 0;

  // Values as given (key -> text), for logging the effective configuration.
  std::map<std::string, std::string> given;
};

// Applies one `key: value` (key in snake_case). Throws Error naming the key on a bad value or unknown key.
void config_set(Config& cfg, const std::string& key, const std::string& value, const std::string& origin);

// Reads a YAML file into cfg (keys override what is there). Throws Error on unreadable files,
// non-mapping documents, unknown keys and bad values.
void config_load_yaml(Config& cfg, const std::string& path);

// Parses command-line options into cfg: `--tensor-parallel-size 4`, `--tensor-parallel-size=4`,
// `-tp 4`, `--enable-chunked-prefill`, `--no-enable-chunked-prefill`, `--config file.yaml`.
// A first positional argument ending in .yaml/.yml is the config file. YAML is applied first,
// then the command-line options, whatever their order. Returns the arguments it did not consume
// (positionals other than the config file) so a subcommand can take them.
std::vector<std::string> config_parse_args(Config& cfg, const std::vector<std::string>& args);

// vLLM's `vllm serve MODEL`: the first positional argument left by config_parse_args names the model
// (an .h5 file, or with load_format dummy a config.json or its directory), overriding the config
// file's; taken out of `rest`. Throws Error when --model was given on the command line as well.
void config_take_model_argument(Config& cfg, std::vector<std::string>& rest);

// Checks values that do not depend on the model or the MPI world. Throws Error.
void config_validate(const Config& cfg);

// Help text listing every option.
std::string config_help();

}  // namespace llmserve
