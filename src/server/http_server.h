// The OpenAI-compatible HTTP front end on rank 0 (Boost.Beast, asynchronous I/O on a small thread
// pool; model steps run on the engine thread, never on an I/O thread).
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "server/engine_service.h"
#include "server/openai_api.h"

namespace llmserve {

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string api_key;  // empty: no authentication
  size_t body_limit = 16u << 20;
  int io_threads = 2;
  int request_timeout_s = 60;  // to receive a whole request; idle keep-alive connections close after it
  // CORS (server/cors.h), vLLM's defaults: any origin, method and header; no credentials.
  std::vector<std::string> allowed_origins = {"*"};
  std::vector<std::string> allowed_methods = {"*"};
  std::vector<std::string> allowed_headers = {"*"};
  bool allow_credentials = false;
  bool access_log = true;  // one log line per request
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
  // Serves until SIGINT or SIGTERM, then stops accepting, aborts what is in flight and returns.
  void run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmserve
