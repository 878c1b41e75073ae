// The OpenAI-compatible HTTP front end on rank 0 (Boost.Beast, asynchronous I/O on a small thread
// pool; model steps run on the engine thread, never on an I/O thread).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/engine_service.h"
#include "server/openai_api.h"
#include "server/replica_router.h"
#include "server/tls_context.h"

namespace llmserve {

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 8000;
  // uds (vLLM's): a Unix domain socket to serve on instead of host:port (a stale socket file there is
  // replaced; the file is removed at the end).
  std::string uds;
  TlsOptions tls;                     // HTTPS when tls.enabled()
  std::vector<std::string> api_keys;  // empty: no authentication; else any one of them (vLLM's list)
  size_t body_limit = 16u << 20;
  // h11_max_incomplete_event_size and h11_max_header_count (vLLM's): a request's header bytes and
  // fields beyond them are refused with 431 (the bytes at most 64 KiB, Beast's largest header field).
  uint32_t header_limit = 4u << 20;
  int max_header_count = 256;
  int io_threads = 2;
  int request_timeout_s = 60;  // to receive a whole request; idle keep-alive connections close after it
  // CORS (server/cors.h), vLLM's defaults: any origin, method and header; no credentials.
  std::vector<std::string> allowed_origins = {"*"};
  std::vector<std::string> allowed_methods = {"*"};
  std::vector<std::string> allowed_headers = {"*"};
  bool allow_credentials = false;
  bool access_log = true;  // one log line per request
  std::vector<std::string> no_access_log_paths;  // disable_access_log_for_endpoints (vLLM's): routes not logged
  // enable_request_id_headers (vLLM's): every response carries X-Request-Id, the request's own header's
  // value, else the generation's id base (its body's request_id or a random one), else a random one.
  bool request_id_headers = false;
  // enable_server_load_tracking (vLLM's): GET /load counts the requests of the model's routes in flight.
  bool server_load_tracking = false;
  // root_path (vLLM's, FastAPI's): the prefix a path-based proxy adds; a path under it routes as the path
  // without it, and a path without it as itself (route_path).
  std::string root_path;
};

// The path a request routes by (Starlette's get_route_path): `path` less `root_path` when it is under it
// (root_path, then "/" or nothing), else `path` as it is.
std::string route_path(const std::string& path, const std::string& root_path);

class HttpServer {
 public:
  // Binds the address (throws Error when it cannot).
  HttpServer(const ServerOptions& opt, const ApiContext& ctx, EngineService& engine);
  ~HttpServer();
  // The TCP port it listens on (the one the system chose for port 0); 0 on a Unix socket.
  int port() const;
  // data_parallel_size's internal load balancing (server/replica_router.h): the other replicas' servers,
  // 1, 2, ..., which this one routes requests to beside its own engine. Before run().
  // `stop_token`: what this server sends each of them when it stops, so that they stop too.
  void route_to(std::vector<ReplicaAddress> replicas, std::string stop_token);
  // An internal replica's server (internal load balancing): stops, as on a signal, when rank 0's server
  // sends it POST /llmserve/stop with this token (X-Llmserve-Stop). Before run().
  void stop_on_request(std::string stop_token);
  // Serves until SIGINT or SIGTERM, then stops accepting, aborts what is in flight and returns.
  void run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmserve
