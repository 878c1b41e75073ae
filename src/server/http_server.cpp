#include "server/http_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#ifdef LLMSERVE_TLS
#include <boost/beast/ssl.hpp>
#endif
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <type_traits>

#include "common/error.h"
#include "common/json_text.h"
#include "common/log.h"
#include "server/beam_search.h"
#include "server/cors.h"
#include "server/embeddings_api.h"
#include "server/histogram.h"
#include "server/replica_router.h"
#include "server/responses_api.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {

std::string route_path(const std::string& path, const std::string& root_path) {
  if (root_path.empty() || path.compare(0, root_path.size(), root_path) != 0) return path;
  if (path.size() == root_path.size()) return "";
  return path[root_path.size()] == '/' ? path.substr(root_path.size()) : path;
}
namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using uds = net::local::stream_protocol;
using json = nlohmann::json;

namespace {

struct HttpCounters {
  std::atomic<int64_t> ok{0}, client_errors{0}, server_errors{0};
  Histogram e2e{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
  Histogram itl{{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}};
  std::atomic<int64_t> load{0};  // requests of the model's routes in flight (enable_server_load_tracking)
};

// One request on the server's load count (vLLM's GET /load) from its start to its answer's end.
class LoadCount {
 public:
  explicit LoadCount(std::atomic<int64_t>& n) : n_(n) { ++n_; }
  ~LoadCount() { --n_; }
  LoadCount(const LoadCount&) = delete;
  LoadCount& operator=(const LoadCount&) = delete;

 private:
  std::atomic<int64_t>& n_;
};

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) diff |= static_cast<unsigned char>(a[i % (a.empty() ? 1 : a.size())] ^ b[i]);
  return diff == 0;
}

// The most bytes of a request's header: h11_max_incomplete_event_size up to Beast's largest field.
constexpr uint32_t kMaxHeaderBytes = 65535;

// What a session's stream needs besides itself: the server's options and shared state.
struct SessionDeps {
  const ServerOptions& opt;
  const CorsPolicy& cors;
  const ApiContext& ctx;
  EngineService& engine;
  HttpCounters& hc;
  ResponsesStore& store;
  ReplicaRouter* router;  // data_parallel_size's internal load balancing; null with one replica
  const std::string& stop_token;       // an internal replica's: rank 0's server stops it with this
  const std::function<void()>& stop;   // stops the server, as a signal does
};

template <class Stream>
struct IsTls : std::false_type {};
#ifdef LLMSERVE_TLS
template <class Next>
struct IsTls<beast::ssl_stream<Next>> : std::true_type {};
#endif

// One connection. Stream: beast::basic_stream over a generic stream socket (TCP or a Unix domain
// socket), or (HTTPS) a beast::ssl_stream over it; the TLS context the connection was accepted with lives as long as it.
template <class Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
  using std::enable_shared_from_this<Session<Stream>>::shared_from_this;
  static constexpr bool kTls = IsTls<Stream>::value;

 public:
  template <class... StreamArgs>
  Session(const SessionDeps& d, std::shared_ptr<void> tls_context, StreamArgs&&... stream_args)
      : tls_context_(std::move(tls_context)),
        stream_(std::forward<StreamArgs>(stream_args)...),
        hangup_timer_(stream_.get_executor()),
        d_(d) {}
  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      if constexpr (kTls) {
        self->handshake();
      } else {
        self->read();
      }
    });
  }

 private:
  using Answer = std::function<void(int status, std::string body, const char* type)>;
  enum class Api { Completion, Chat, Responses, Embeddings, Score, Rerank, Classify, Pooling };
  auto& lowest() { return beast::get_lowest_layer(stream_); }

  // HTTPS: the TLS handshake first, within the request timeout. A failed one (a plain-HTTP client, a
  // client certificate missing or not signed by ssl_ca_certs) closes the connection; it is logged at
  // debug level, as uvicorn's are not logged at all.
  void handshake() {
#ifdef LLMSERVE_TLS
    lowest().expires_after(std::chrono::seconds(d_.opt.request_timeout_s));
    stream_.async_handshake(net::ssl::stream_base::server, [self = shared_from_this()](beast::error_code ec) {
      if (ec) {
        log_debug("TLS handshake failed: ", ec.message());
        return self->close_socket();
      }
      self->read();
    });
#endif
  }

  void read() {
    parser_.emplace();
    parser_->body_limit(d_.opt.body_limit);
    // (Beast stores a header field of at most 64 KiB and throws past it, out of the I/O thread: a header
    // of at most that many bytes never holds such a field.)
    parser_->header_limit(std::min<uint32_t>(d_.opt.header_limit, kMaxHeaderBytes));
    buffer_.consume(buffer_.size());
    lowest().expires_after(std::chrono::seconds(d_.opt.request_timeout_s));  // idle or slow clients let go
    http::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_header(ec);
    });
  }

  // A client that sent "Expect: 100-continue" (curl does for bodies over 1 MB) waits for a 100 before
  // sending the body (curl gives up waiting after a second): it gets one, unless the header already
  // failed (a Content-Length over the body limit is refused here, before the body is sent).
  void on_header(beast::error_code ec) {
    if (ec) return on_read(ec);
    const auto& h = parser_->get();
    if (std::distance(h.begin(), h.end()) > d_.opt.max_header_count) {
      lowest().expires_never();
      start_ = std::chrono::steady_clock::now();
      req_ = {};
      return respond(431, error_body(431, cat("the request has more than ", d_.opt.max_header_count, " header fields"),
                                     "RequestHeaderFieldsTooLarge"), false);
    }
    const auto it = h.find(http::field::expect);
    if (it != h.end() && beast::iequals(it->value(), "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, h.version());
      http::async_write(stream_, *cont, [self = shared_from_this(), cont](beast::error_code wec, size_t) {
        if (wec) return self->close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    lowest().expires_never();  // a generation may stream for as long as it runs
    start_ = std::chrono::steady_clock::now();
    // The connection's end, its timeout, or any failure below HTTP (a reset; over TLS also a peer that
    // closed without its close_notify, or a record that does not decrypt): closed without an answer.
    // What HTTP's parser refuses gets its error status.
    if (ec == http::error::end_of_stream || (ec && ec.category() != http::make_error_code(http::error::end_of_stream).category()))
      return close();
    if (ec) req_ = {};  // (not the connection's previous request, in the access line)
    request_id_.clear();
    preflight_headers_.reset();
    if (ec == http::error::header_limit)
      return respond(431, error_body(431, cat("the request's header exceeds ", std::min<uint32_t>(d_.opt.header_limit, kMaxHeaderBytes), " bytes"),
                                     "RequestHeaderFieldsTooLarge"),
                     false);
    if (ec == http::error::body_limit)
      return respond(413, error_body(413, cat("the request body exceeds ", d_.opt.body_limit, " bytes"), "RequestTooLarge"), false);
    if (ec) return respond(400, error_body(400, cat("malformed HTTP request: ", ec.message()), "BadRequestError"), false);
    req_ = parser_->release();
    try {
      route();
    } catch (const HttpError& e) {
      respond(e.status, error_body(e.status, e.what(), e.type, e.param), req_.keep_alive());
    } catch (const std::exception& e) {
      // The parser's errors and nesting past parse_json's limit are the client's; anything else is ours.
      const bool bad_json = dynamic_cast<const json::exception*>(&e) || dynamic_cast<const JsonTooDeep*>(&e);
      if (bad_json) return respond(400, error_body(400, cat("invalid JSON: ", e.what()), "BadRequestError"), req_.keep_alive());
      respond(500, error_body(500, e.what(), "InternalServerError"), false);
    }
  }

  void require_auth() {
    if (d_.opt.api_keys.empty()) return;
    const auto it = req_.find(http::field::authorization);
    const std::string got = it == req_.end() ? "" : std::string(it->value());
    bool ok = false;
    for (const auto& k : d_.opt.api_keys) ok = constant_time_equal(got, "Bearer " + k) || ok;  // (each compared)
    if (!ok)
      throw HttpError(401, "Invalid or missing API key (send 'Authorization: Bearer <key>')", "AuthenticationError");
  }

  void route() {
    const std::string target(req_.target());
    const std::string path = route_path(target.substr(0, target.find('?')), d_.opt.root_path);
    const auto method = req_.method();
    // CORS preflight (server/cors.h): answered for any path before routing and authentication.
    const auto origin = req_.find(http::field::origin), asked = req_.find(http::field::access_control_request_method);
    if (method == http::verb::options && origin != req_.end() && asked != req_.end()) {
      const auto h = req_.find(http::field::access_control_request_headers);
      const std::string requested = h == req_.end() ? "" : std::string(h->value());
      auto p = d_.cors.preflight(std::string(origin->value()), std::string(asked->value()), h == req_.end() ? nullptr : &requested);
      preflight_headers_ = std::move(p.headers);
      return respond(p.status, p.body, req_.keep_alive(), "text/plain");
    }
    struct Route {
      const char* path;
      http::verb method;
    };
    static const Route routes[] = {{"/health", http::verb::get},      {"/version", http::verb::get},
                                   {"/metrics", http::verb::get},     {"/v1/models", http::verb::get},
                                   {"/v1/completions", http::verb::post}, {"/v1/chat/completions", http::verb::post},
                                   {"/tokenize", http::verb::post},   {"/detokenize", http::verb::post},
                                   {"/ping", http::verb::get},        {"/ping", http::verb::post},
                                   {"/load", http::verb::get},
                                   {"/v1/responses", http::verb::post}, {"/v1/embeddings", http::verb::post},
                                   {"/score", http::verb::post},      {"/v1/score", http::verb::post},
                                   {"/rerank", http::verb::post},     {"/v1/rerank", http::verb::post},
                                   {"/v2/rerank", http::verb::post},  {"/classify", http::verb::post},
                                   {"/pooling", http::verb::post},    {"/invocations", http::verb::post},
                                   // (a stored response: /v1/responses/{id}, /v1/responses/{id}/cancel)
                                   {"/v1/responses/*", http::verb::get}, {"/v1/responses/*", http::verb::delete_},
                                   {"/v1/responses/*/cancel", http::verb::post}};
    const std::string prefix = "/v1/responses/";
    std::string stored_id, pattern = path;  // the path with a stored response's id as *
    if (path.rfind(prefix, 0) == 0 && path.size() > prefix.size()) {
      stored_id = path.substr(prefix.size());
      const bool cancel = stored_id.size() > 7 && stored_id.compare(stored_id.size() - 7, 7, "/cancel") == 0;
      if (cancel) stored_id.resize(stored_id.size() - 7);
      if (stored_id.find('/') == std::string::npos) pattern = prefix + "*" + (cancel ? "/cancel" : "");
    }
    bool known = false, allowed = false;
    for (const auto& r : routes) {
      if (pattern != r.path) continue;
      known = true;  // (HEAD wherever GET is, as Starlette routes vLLM's GETs)
      allowed = allowed || method == r.method || (method == http::verb::head && r.method == http::verb::get);
    }
    // vLLM's runtime LoRA updating routes, there only when it is on (VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    const bool lora_load = path == "/v1/load_lora_adapter", lora_unload = path == "/v1/unload_lora_adapter";
    if ((lora_load || lora_unload) && d_.ctx.loras && d_.ctx.loras->runtime_updates()) {
      known = true;
      allowed = method == http::verb::post;
    }
    // vLLM's GET /tokenizer_info, there only with enable_tokenizer_info_endpoint.
    const bool tokenizer_info = path == "/tokenizer_info" && d_.ctx.tokenizer_info_route;
    if (tokenizer_info) {
      known = true;
      allowed = method == http::verb::get || method == http::verb::head;
    }
    // vLLM's development routes, there only with VLLM_SERVER_DEV_MODE.
    const bool reset_prefix_cache = path == "/reset_prefix_cache" && d_.ctx.dev_routes;
    if (reset_prefix_cache) {
      known = true;
      allowed = method == http::verb::post;
    }
    // An internal replica's server (data_parallel_size): rank 0's server stops it when it stops.
    if (!d_.stop_token.empty() && path == "/llmserve/stop" && method == http::verb::post &&
        constant_time_equal(std::string(req_["X-Llmserve-Stop"]), d_.stop_token)) {
      respond(200, "", false, "text/plain");
      return d_.stop();
    }
    if (!known) throw HttpError(404, cat("no route ", path), "NotFoundError");
    if (!allowed) throw HttpError(405, cat("method not allowed for ", path), "MethodNotAllowed");
    if (path.rfind("/v1/", 0) == 0) require_auth();
    if (path == "/health" || path == "/ping") {  // vLLM's /ping (GET or POST) answers as /health
      if (d_.router && d_.engine.healthy()) return ask_replicas("/health");
      return respond(d_.engine.healthy() ? 200 : 503, "", req_.keep_alive(), "text/plain");
    }
    if (path == "/version") return respond(200, json_text(json{{"version", "0.1.0"}}), req_.keep_alive());
    // vLLM's /load: the generation and pooling requests in flight (0 without enable_server_load_tracking).
    if (path == "/load") return respond(200, json_text(json{{"server_load", d_.hc.load.load()}}), req_.keep_alive());
    if (path == "/metrics") {
      if (d_.router) return ask_replicas("/metrics");
      return respond(200, metrics(), req_.keep_alive(), "text/plain; version=0.0.4");
    }
    if (path == "/v1/models") return respond(200, json_text(models_response(d_.ctx)), req_.keep_alive());
    if (path == "/tokenize" || path == "/detokenize") return tokenize(path == "/tokenize");
    if (tokenizer_info) {
      if (d_.ctx.tokenizer_info.empty()) throw HttpError(400, "Failed to get tokenizer info: the model has no tokenizer");
      return respond(200, d_.ctx.tokenizer_info, req_.keep_alive());
    }
    if (lora_load || lora_unload) return lora_update(lora_load);
    if (reset_prefix_cache) return reset_cache();
    if (pattern != path) return stored_response(stored_id, method, pattern.size() > prefix.size() + 1);
    if (path == "/invocations") {
      auto body = parse_json<nlohmann::ordered_json>(req_.body());
      const Api api = invocation_api(body);
      auto lease = route_to_replica(api);
      if (lease && lease->index() != 0) return proxy(std::move(*lease));
      return generate(api, std::move(body), std::move(lease));
    }
    const bool rerank = path == "/rerank" || path == "/v1/rerank" || path == "/v2/rerank";
    const Api api = path == "/v1/chat/completions"           ? Api::Chat
             : path == "/v1/responses"                ? Api::Responses
             : path == "/v1/embeddings"               ? Api::Embeddings
             : path == "/score" || path == "/v1/score" ? Api::Score
             : rerank                                 ? Api::Rerank
             : path == "/classify"                    ? Api::Classify
             : path == "/pooling"                     ? Api::Pooling
                                                      : Api::Completion;
    auto lease = route_to_replica(api);
    if (lease && lease->index() != 0) return proxy(std::move(*lease));
    generate(api, std::nullopt, std::move(lease));
  }

  // ---- data_parallel_size: the replicas behind this server (server/replica_router.h) ----------
  // The replica a generation or pooling request goes to, with internal load balancing: the one with the
  // fewest requests in flight. The Responses API stays on this server, whose store holds its responses.
  std::optional<ReplicaRouter::Lease> route_to_replica(Api api) {
    if (!d_.router || api == Api::Responses) return std::nullopt;
    return d_.router->pick();
  }

  // The request, as it came, to another replica's server; its answer relayed to the client byte for byte
  // as it arrives (a stream's events as they are made). The replica's connection is closed after one
  // answer, and so is the client's (the answer says so). A client that goes away closes the replica's
  // connection: the replica aborts the request.
  struct Proxied {
    Proxied(ReplicaRouter::Lease l, const net::any_io_executor& ex) : lease(std::move(l)), resolver(ex), up(ex) {}
    ReplicaRouter::Lease lease;
    tcp::resolver resolver;
    tcp::socket up;
    http::request<http::string_body> req;
    std::array<char, 16384> buf;
    std::string head;  // the answer's first bytes, for its status
    int status = 0;
    bool relayed = false;  // some of the answer went to the client
    std::optional<LoadCount> load;
  };
  void proxy(ReplicaRouter::Lease lease) {
    auto p = std::make_shared<Proxied>(std::move(lease), stream_.get_executor());
    proxy_ = p;
    if (d_.opt.server_load_tracking) p->load.emplace(d_.hc.load);
    p->req = req_;
    p->req.erase(http::field::expect);  // (the body is here already: no 100 Continue from the replica)
    p->req.keep_alive(false);
    p->req.chunked(false);
    p->req.prepare_payload();
    const ReplicaAddress& a = d_.router->address(p->lease.index());
    p->resolver.async_resolve(a.host, std::to_string(a.port), [self = shared_from_this(), p](beast::error_code ec,
                                                                                            tcp::resolver::results_type found) {
      if (self->proxy_ != p) return;
      if (ec) return self->proxy_failed(p, ec);
      net::async_connect(p->up, found, [self, p](beast::error_code cec, const tcp::endpoint&) {
        if (self->proxy_ != p) return;
        if (cec) return self->proxy_failed(p, cec);
        http::async_write(p->up, p->req, [self, p](beast::error_code wec, size_t) {
          if (self->proxy_ != p) return;
          if (wec) return self->proxy_failed(p, wec);
          p->req = {};
          self->relay(p);
        });
      });
    });
    watch_disconnect();
  }
  void relay(const std::shared_ptr<Proxied>& p) {
    p->up.async_read_some(net::buffer(p->buf), [self = shared_from_this(), p](beast::error_code ec, size_t n) {
      if (self->proxy_ != p) return;
      if (n == 0) {
        if (!p->relayed) return self->proxy_failed(p, ec ? ec : net::error::eof);
        self->log_access(p->status, false, p->lease.index());
        self->proxy_.reset();
        return self->close();  // (the replica's answer ended; it said Connection: close)
      }
      if (p->status == 0 && p->head.size() < 256) {
        p->head.append(p->buf.data(), n);
        p->status = answer_status(p->head);
      }
      p->relayed = true;
      net::async_write(self->stream_, net::buffer(p->buf.data(), n), [self, p](beast::error_code wec, size_t) {
        if (self->proxy_ != p) return;
        if (wec) {
          self->client_gone();
          return self->close();
        }
        self->relay(p);
      });
    });
  }
  // The replica did not answer: a 503 when nothing reached the client yet, else its connection closed.
  void proxy_failed(const std::shared_ptr<Proxied>& p, beast::error_code ec) {
    const size_t r = p->lease.index();
    const auto& a = d_.router->address(r);
    log_warn("replica ", r, " (", a.host, ":", a.port, "): ", ec.message());
    const bool relayed = p->relayed;
    proxy_.reset();
    if (relayed) return close();
    respond(503, error_body(503, cat("data-parallel replica ", r, " did not answer: ", ec.message()), "ServiceUnavailableError"), false);
  }

  // GET /health or /metrics of every replica: /health 200 when every replica answers 200 (this one is
  // healthy: the caller asked), else 503; /metrics every replica's metrics, with an engine label.
  void ask_replicas(const char* path) {
    http::request<http::string_body> ask(http::verb::get, path, 11);
    ask.set(http::field::host, "localhost");
    const bool health = std::string(path) == "/health";
    std::string own = health ? std::string() : metrics();
    fetch_from_replicas(stream_.get_executor(), *d_.router, ask, std::chrono::seconds(health ? 10 : 30),
                        [self = shared_from_this(), health, own = std::move(own)](std::vector<ReplicaReply> replies) {
                          std::vector<std::string> texts{own};
                          bool all = true;
                          for (size_t i = 0; i < replies.size(); ++i) {
                            all = all && replies[i].status == 200;
                            if (replies[i].status != 200)
                              log_warn("replica ", i + 1, " answered GET ", health ? "/health" : "/metrics", " with ",
                                       replies[i].status == 0 ? replies[i].body : std::to_string(replies[i].status));
                            texts.push_back(replies[i].status == 200 ? replies[i].body : std::string());
                          }
                          if (health) return self->respond(all ? 200 : 503, "", self->req_.keep_alive(), "text/plain");
                          self->respond(200, merge_replica_metrics(texts), self->req_.keep_alive(), "text/plain; version=0.0.4");
                        });
  }

  // A runtime update's answer (runtime LoRA updating, /reset_prefix_cache) with the replicas behind this
  // server: once this replica's engine answered 200, the same request goes to every other replica, and
  // the client gets this one's answer when every replica's is a 200, else the first other one's.
  Answer to_every_replica(Answer answer) {
    if (!d_.router) return answer;
    return [self = shared_from_this(), exec = stream_.get_executor(), answer](int status, std::string body, const char* type) {
      if (status != 200) return answer(status, std::move(body), type);
      net::post(exec, [self, answer, body = std::move(body), type]() mutable {
        fetch_from_replicas(self->stream_.get_executor(), *self->d_.router, self->req_, std::chrono::seconds(600),
                            [answer, body = std::move(body), type](std::vector<ReplicaReply> replies) mutable {
                              for (size_t i = 0; i < replies.size(); ++i) {
                                if (replies[i].status == 200) continue;
                                log_warn("replica ", i + 1, " refused the update: ",
                                         replies[i].status == 0 ? replies[i].body : std::to_string(replies[i].status));
                                if (replies[i].status == 0)
                                  return answer(503, error_body(503, cat("data-parallel replica ", i + 1, " did not answer: ", replies[i].body),
                                                                "ServiceUnavailableError"), "application/json");
                                return answer(replies[i].status, std::move(replies[i].body), "application/json");
                              }
                              answer(200, std::move(body), type);
                            });
      });
    };
  }

  // POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter {"lora_name"}, as
  // vLLM's: on the engine thread (Engine::load_lora / unload_lora) the adapter is checked and served, or
  // stops being served (its running requests finish), then the name is served or not; the answer is
  // vLLM's plain-text success line or an OpenAI-style error (400; 404 for an adapter that is not there).
  void lora_update(bool load) {
    const json body = parse_json(req_.body());
    if (!body.is_object()) throw HttpError(400, "the request body must be a JSON object", "BadRequestError");
    auto field = [&](const char* k) {
      if (!body.contains(k) || body[k].is_null()) return std::string();
      if (!body[k].is_string()) throw HttpError(400, cat("'", k, "' must be a string"), "BadRequestError", k);
      return body[k].get<std::string>();
    };
    const std::string name = field("lora_name"), path = load ? field("lora_path") : std::string();
    if (load && (name.empty() || path.empty()))
      throw HttpError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput");
    if (!load && name.empty()) throw HttpError(400, "'lora_name' must be provided.", "InvalidUserInput", "lora_name");
    if (!load && !d_.ctx.loras->remove(name))  // (no new request finds it from here on)
      throw HttpError(404, cat("The lora adapter '", name, "' cannot be found."), "NotFoundError");
    const auto answer = to_every_replica(answer_later());
    d_.engine.control(
        [answer, loras = d_.ctx.loras, name, path, load](Engine& e) {
          try {
            if (load) {
              loras->add({{name, path, {}}, e.load_lora({name, path, {}})});
            } else {
              e.unload_lora(name);
              log_info("LoRA adapter ", name, " unloaded");
            }
            answer(200, cat("Success: LoRA adapter '", name, load ? "' added" : "' removed", " successfully."), "text/plain");
          } catch (const LoraUpdateError& err) {
            answer(err.status, error_body(err.status, err.what(), err.type), "application/json");
          } catch (const std::exception& err) {
            answer(500, error_body(500, err.what(), "InternalServerError"), "application/json");
          }
        },
        refused_by(answer));
  }

  // What answers this request from the engine thread (EngineService::control), on the session's executor.
  // (The session is held until the answer: nothing else of it waits meanwhile. The engine thread calls
  // the control or its refusal, so it is answered.)
  Answer answer_later() {
    return [self = shared_from_this(), exec = stream_.get_executor()](int status, std::string body, const char* type) {
      net::post(exec, [self, status, body = std::move(body), type]() mutable {
        self->respond(status, std::move(body), self->req_.keep_alive(), type);
      });
    };
  }
  // The control's refusal (the service takes no more work): a 503.
  static std::function<void(const std::string&)> refused_by(Answer answer) {
    return [answer](const std::string& why) { answer(503, error_body(503, why, "ServiceUnavailableError"), "application/json"); };
  }

  // POST /reset_prefix_cache (vLLM's, under VLLM_SERVER_DEV_MODE): between two steps no cached block is
  // found by a later prompt any more; running requests go on (their blocks are freed when they end, so
  // vLLM's reset_running_requests changes nothing here). An empty 200, as vLLM's.
  void reset_cache() {
    const auto answer = to_every_replica(answer_later());
    d_.engine.control(
        [answer](Engine& e) {
          log_info("prefix cache reset: ", e.reset_prefix_cache(), " cached blocks forgotten");
          answer(200, "", "text/plain");
        },
        refused_by(answer));
  }

  // A stored response: GET gives it, DELETE forgets it, cancel is refused (as vLLM's: only background
  // responses can be cancelled, and llmserve makes none).
  void stored_response(const std::string& id, http::verb method, bool cancel) {
    auto e = d_.store.get(id);
    if (!e) throw HttpError(404, cat("Response with id '", id, "' not found."), "NotFoundError", "response_id");
    if (cancel) throw HttpError(400, "Cannot cancel a synchronous response.", "BadRequestError", "response_id");
    if (method == http::verb::delete_) {
      d_.store.erase(id);
      return respond(200, json_text(json{{"id", id}, {"object", "response.deleted"}, {"deleted", true}}), req_.keep_alive());
    }
    respond(200, json_text(e->response), req_.keep_alive());
  }

  void tokenize(bool encode) {
    const json body = parse_json(req_.body());
    if (!d_.ctx.tok) throw HttpError(400, "this model has no tokenizer");
    if (encode) {
      std::vector<int32_t> ids;
      if (body.contains("messages")) {
        GenerationRequest g = parse_chat(parse_json<nlohmann::ordered_json>(req_.body()), d_.ctx);
        ids = g.prompts[0];
      } else if (body.contains("prompt") && body["prompt"].is_string()) {
        ids = d_.ctx.tok->encode(body["prompt"].get<std::string>(), body.value("add_special_tokens", true));
      } else {
        throw HttpError(400, "'prompt' (a string) or 'messages' is required", "BadRequestError", "prompt");
      }
      return respond(200, json_text(json{{"count", ids.size()}, {"max_model_len", d_.ctx.max_model_len}, {"tokens", ids}}), req_.keep_alive());
    }
    if (!body.contains("tokens") || !body["tokens"].is_array()) throw HttpError(400, "'tokens' (a list of ids) is required", "BadRequestError", "tokens");
    std::vector<int32_t> ids;
    for (const auto& t : body["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= d_.ctx.vocab_size)
        throw HttpError(400, cat("token ids must be integers in [0, ", d_.ctx.vocab_size, ")"), "BadRequestError", "tokens");
      ids.push_back(t.get<int32_t>());
    }
    respond(200, json_text(json{{"prompt", d_.ctx.tok->decode(ids, false)}}), req_.keep_alive());
  }

  // ---- generation ----------------------------------------------------------------
  struct Pending {
    GenerationRequest req;
    std::string id;
    std::vector<RequestOutput> outputs;
    std::vector<std::vector<ChoiceStream>> streams;
    std::vector<size_t> tokens_seen;  // per prompt, for TTFT and inter-token latency
    std::chrono::steady_clock::time_point last_token;
    std::vector<std::shared_ptr<EngineJob>> jobs;
    std::unique_ptr<ResponsesStream> events;  // a streamed Responses API request
    std::vector<std::shared_ptr<BeamSearch>> beams;  // use_beam_search: one search per prompt
    size_t finished = 0;
    std::string error;
    bool logged = false;  // its access line written
    std::optional<LoadCount> load;  // with enable_server_load_tracking
    std::optional<ReplicaRouter::Lease> replica;  // this server's replica's turn (internal load balancing)
  };

  // vLLM's POST /invocations (SageMaker's route): the API whose request the body is, by the fields it
  // has, in vLLM's order: messages a chat, prompt a completion, input embeddings (the classify API on a
  // classifier), query with documents a rerank, text_1 / text_2 a score.
  Api invocation_api(const nlohmann::ordered_json& body) const {
    if (!body.is_object()) throw HttpError(400, "the request body must be a JSON object");
    if (body.contains("messages")) return Api::Chat;
    if (body.contains("prompt")) return Api::Completion;
    if (body.contains("input")) return d_.ctx.classifier ? Api::Classify : Api::Embeddings;
    if (body.contains("query") && body.contains("documents")) return Api::Rerank;
    if (body.contains("text_1") || body.contains("text_2")) return Api::Score;
    throw HttpError(400, "Cannot find suitable handler for request. Expected one of: ChatCompletionRequest (messages), "
                         "CompletionRequest (prompt), EmbeddingRequest or ClassificationRequest (input), RerankRequest "
                         "(query, documents), ScoreRequest (text_1, text_2)");
  }
  // The answer's id, as vLLM makes it: its API's prefix and the request's X-Request-Id header, else the
  // body's request_id (a vLLM extension), else a random one; a Responses request's request_id is its
  // whole id (vLLM's), the header not read. Also the X-Request-Id response header's value when the
  // request sent none (enable_request_id_headers; the Responses id there too).
  std::string response_id(Api api, const nlohmann::ordered_json& body, const GenerationRequest& r) {
    std::string own;
    if (body.contains("request_id") && !body["request_id"].is_null()) {
      if (!body["request_id"].is_string() || body["request_id"].get<std::string>().empty())
        throw HttpError(400, "'request_id' must be a non-empty string", "BadRequestError", "request_id");
      own = body["request_id"].get<std::string>();
      // (It may go out as a header's value: no control characters, which would end the header.)
      for (const unsigned char c : own)
        if (c < 0x20 || c == 0x7f)
          throw HttpError(400, "'request_id' must not hold control characters", "BadRequestError", "request_id");
    }
    const std::string header(req_["X-Request-Id"]);
    if (api == Api::Responses) return request_id_ = own.empty() ? random_id("resp_") : own;
    std::string base = !header.empty() ? header : !own.empty() ? own : random_id("");
    request_id_ = base;
    return (r.embedding ? response_id_prefix(*r.embedding) : api == Api::Chat ? "chatcmpl-" : "cmpl-") + base;
  }
  // `parsed`: the body, when the route has read it already (/invocations).
  void generate(Api api, std::optional<nlohmann::ordered_json> parsed, std::optional<ReplicaRouter::Lease> replica) {
    auto p = std::make_shared<Pending>();
    p->replica = std::move(replica);
    const auto body = parsed ? std::move(*parsed) : parse_json<nlohmann::ordered_json>(req_.body());
    if (api == Api::Chat || api == Api::Responses || api == Api::Completion)
      check_generation_api(d_.ctx, api == Api::Chat ? "Chat Completions" : api == Api::Responses ? "Responses" : "Completions");
    p->req = api == Api::Chat         ? parse_chat(body, d_.ctx)
             : api == Api::Responses  ? parse_responses(body, d_.ctx, d_.store)
             : api == Api::Embeddings ? parse_embeddings(body, d_.ctx)
             : api == Api::Score || api == Api::Rerank ? parse_score(body, d_.ctx, api == Api::Rerank)
             : api == Api::Classify   ? parse_classify(body, d_.ctx)
             : api == Api::Pooling    ? parse_pooling(body, d_.ctx)
                                      : parse_completion(body, d_.ctx);
    p->id = response_id(api, body, p->req);
    if (d_.opt.server_load_tracking) p->load.emplace(d_.hc.load);
    if (p->req.responses && p->req.stream) p->events = std::make_unique<ResponsesStream>(p->id, p->req, d_.ctx);
    const size_t n = p->req.prompts.size();
    p->outputs.resize(n);
    p->streams.assign(n, std::vector<ChoiceStream>(static_cast<size_t>(p->req.params.n)));
    p->tokens_seen.assign(n, 0);
    pending_ = p;
    if (p->req.stream) {
      // Headers now, events as tokens arrive.
      auto res = std::make_shared<http::response<http::empty_body>>(http::status::ok, req_.version());
      res->set(http::field::content_type, "text/event-stream");
      res->set(http::field::cache_control, "no-cache");
      response_headers(*res);
      res->chunked(true);
      res->keep_alive(false);
      auto sr = std::make_shared<http::response_serializer<http::empty_body>>(*res);
      // The header is the first write; events queue behind it (one write in flight at a time).
      if (p->events) writes_.push_back(p->events->start());
      writing_ = true;
      http::async_write_header(stream_, *sr, [self = shared_from_this(), res, sr](beast::error_code ec, size_t) {
        if (ec) {
          self->client_gone();
          self->writes_.clear();
          self->writing_ = false;
          return self->close();
        }
        self->write_next();
      });
    }
    if (p->req.params.beam_search) return start_beam_searches(*p);
    for (size_t i = 0; i < n; ++i) {
      auto job = std::make_shared<EngineJob>();
      job->prompt = p->req.prompts[i];
      job->params = p->req.params;
      // Outputs as deltas (the engine's cost per output independent of the output's length), put
      // back together here.
      job->params.output_kind = OutputKind::Delta;
      job->on_output = output_callback(i);
      job->on_error = error_callback();
      p->jobs.push_back(job);
    }
    for (auto& j : p->jobs) d_.engine.submit(j);
    watch_disconnect();
  }

  // Prompt i's outputs and the request's errors, from the engine's delivery thread (or a beam search)
  // onto this connection's executor, while the session lives.
  std::function<void(RequestOutput&&)> output_callback(size_t i) {
    return [weak = std::weak_ptr<Session>(shared_from_this()), exec = stream_.get_executor(), i](RequestOutput&& out) {
      net::post(exec, [weak, i, out = std::move(out)]() mutable {
        if (auto s = weak.lock()) s->on_output(i, std::move(out));
      });
    };
  }
  std::function<void(int, const std::string&)> error_callback() {
    return [weak = std::weak_ptr<Session>(shared_from_this()), exec = stream_.get_executor()](int status, const std::string& msg) {
      net::post(exec, [weak, status, msg] {
        if (auto s = weak.lock()) s->on_error(status, msg);
      });
    };
  }

  // use_beam_search: each prompt's search runs its steps as engine requests of its own and hands back
  // its whole result, which goes out as any finished output does (streamed, it comes in one piece).
  void start_beam_searches(Pending& p) {
    const BeamSearchParams bp = beam_search_params(p.req.params, d_.ctx.eos_ids);
    for (size_t i = 0; i < p.req.prompts.size(); ++i)
      p.beams.push_back(std::make_shared<BeamSearch>(p.req.prompts[i], bp, d_.ctx.tok,
                                                     [eng = &d_.engine](std::shared_ptr<EngineJob> j) { eng->submit(std::move(j)); },
                                                     output_callback(i), error_callback()));
    for (auto& b : p.beams) b->start();
    watch_disconnect();
  }

  // The connection is idle while a request runs: readiness then means the client went away (EOF or
  // reset), so its requests are aborted. The peek never blocks: a wake-up with nothing to read just
  // re-arms the watch (a blocking peek here once stalled an I/O thread for good).
  void watch_disconnect() {
    hangup_timer_.cancel();  // (a watch of the connection's request before this one)
    lowest().socket().async_wait(net::socket_base::wait_read, [self = shared_from_this()](beast::error_code ec) {
      if ((!self->pending_ && !self->proxy_) || !self->lowest().socket().is_open()) return;
      if (ec) return self->client_gone();
      char c;
      const ssize_t got = ::recv(self->lowest().socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return self->client_gone();
      if (got < 0) return self->watch_disconnect();
      self->watch_hangup();
    });
  }
  // Bytes wait unread: a further (pipelined) request, or TLS records (a client that closes sends its
  // close_notify alert before the end of its stream). The peer's end of stream behind them shows as
  // POLLRDHUP; looked for every 200 ms until the answer is out.
  void watch_hangup() {
    pollfd p{lowest().socket().native_handle(), POLLRDHUP, 0};
    if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) return client_gone();
    hangup_timer_.expires_after(std::chrono::milliseconds(200));
    hangup_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec && (self->pending_ || self->proxy_) && self->lowest().socket().is_open()) self->watch_hangup();
    });
  }

  void cancel_all() {
    if (!pending_) return;
    for (auto& j : pending_->jobs) *j->cancelled = true;
    for (auto& b : pending_->beams) b->cancel();
  }

  // The client went away before its answer was complete: its requests are aborted, nothing more is
  // written for them, and the access log says so with nginx's 499 (client closed request) unless the
  // answer was already logged (a stream whose last event was queued).
  void client_gone() {
    if (auto p = std::move(proxy_)) {  // (the replica sees its connection close, and aborts)
      beast::error_code ignored;
      p->up.close(ignored);
      p->resolver.cancel();
      log_access(499, false, p->lease.index());
    }
    if (!pending_) return;
    cancel_all();
    if (!pending_->logged) log_access(499);
    pending_.reset();
  }

  // A job's error (EngineJob::on_error's status). A stream's headers are out already: the error comes
  // as an event, then [DONE], as vLLM ends a stream that failed.
  void on_error(int status, const std::string& msg) {
    auto p = pending_;
    if (!p || !p->error.empty()) return;
    p->error = msg;
    cancel_all();
    const char* type = status == 503 ? "ServiceUnavailable" : status >= 500 ? "InternalServerError" : "BadRequestError";
    if (p->events) {  // a Responses stream ends with an error event
      send_event(p->events->error(status, msg), true);
    } else if (p->req.stream) {
      send_event("data: " + error_body(status, msg, type) + "\n\ndata: [DONE]\n\n", true);
    } else {
      respond(status, error_body(status, msg, type), false);
    }
  }

  void on_output(size_t i, RequestOutput&& latest) {
    auto p = pending_;
    if (!p || !p->error.empty()) return;
    accumulate_output(p->outputs[i], std::move(latest));
    const RequestOutput& out = p->outputs[i];
    if (out.finished) ++p->finished;
    size_t tokens = 0;
    for (const auto& c : out.outputs) tokens += c.token_ids.size();
    if (tokens > p->tokens_seen[i]) {
      const auto now = std::chrono::steady_clock::now();
      if (p->tokens_seen[i] == 0) {
        d_.hc.ttft.observe(std::chrono::duration<double>(now - start_).count());
      } else {
        const double gap = std::chrono::duration<double>(now - p->last_token).count();
        for (size_t k = p->tokens_seen[i]; k < tokens; ++k) d_.hc.itl.observe(gap / static_cast<double>(tokens - p->tokens_seen[i]));
      }
      p->tokens_seen[i] = tokens;
      p->last_token = now;
    }
    const bool done = p->finished == p->outputs.size();
    if (p->events) {
      std::string ev = p->events->update(out);
      if (done && !p->events->finished()) ev += p->events->error(500, "the response ended without its final event");
      if (done && p->req.responses->store && p->events->finished())
        d_.store.put(p->id, {p->events->response(), conversation_after(p->req, p->events->response())});
      if (!ev.empty()) send_event(ev, done);
      return;
    }
    if (p->req.stream) {
      std::string ev = stream_chunks(p->id, p->req, d_.ctx, i, out, p->streams[i]);
      if (done) {
        if (p->req.include_usage) ev += usage_chunk(p->id, p->req, d_.ctx, p->outputs);
        ev += "data: [DONE]\n\n";
      }
      if (!ev.empty()) send_event(ev, done);
      return;
    }
    if (!done) return;
    if (p->req.embedding) return respond(200, json_text(embedding_response(p->id, p->req, d_.ctx, p->outputs)), req_.keep_alive());
    if (p->req.responses) {
      const json body = responses_response(p->id, p->req, d_.ctx, p->outputs[0]);
      if (p->req.responses->store) d_.store.put(p->id, {body, conversation_after(p->req, body)});
      return respond(200, json_text(body), req_.keep_alive());
    }
    const json body = p->req.chat ? chat_response(p->id, p->req, d_.ctx, p->outputs) : completion_response(p->id, p->req, d_.ctx, p->outputs);
    respond(200, json_text(body), req_.keep_alive());
  }

  void send_event(std::string data, bool last) {
    writes_.push_back(std::move(data));
    if (last) {
      last_queued_ = true;
      log_access(200);
    }
    if (!writing_) write_next();
  }

  void write_next() {
    if (writes_.empty()) {
      writing_ = false;
      if (last_queued_) {
        auto self = shared_from_this();
        net::async_write(stream_, http::make_chunk_last(), [self](beast::error_code, size_t) { self->close(); });
      }
      return;
    }
    writing_ = true;
    auto data = std::make_shared<std::string>(std::move(writes_.front()));
    writes_.pop_front();
    net::async_write(stream_, http::make_chunk(net::buffer(*data)), [self = shared_from_this(), data](beast::error_code ec, size_t) {
      if (ec) {
        self->client_gone();  // the client went away mid-stream
        self->writes_.clear();
        self->last_queued_ = false;
        self->writing_ = false;
        return self->close();
      }
      self->write_next();
    });
  }

  // Cross-origin requests from browsers (server/cors.h): a preflight's headers, else those of any
  // answer to a request with an Origin.
  template <typename Response>
  void cors_headers(Response& res) {
    const auto origin = req_.find(http::field::origin);
    if (origin == req_.end()) return;
    const HeaderList h = preflight_headers_ ? std::move(*preflight_headers_)
                                            : d_.cors.simple(std::string(origin->value()), req_.find(http::field::cookie) != req_.end());
    preflight_headers_.reset();
    for (const auto& [k, v] : h) res.set(k, v);
  }

  // The headers every response gets: CORS, and X-Request-Id with enable_request_id_headers (the
  // request's own, else the generation's id base, else a random one, as vLLM's middleware).
  template <typename Response>
  void response_headers(Response& res) {
    cors_headers(res);
    if (!d_.opt.request_id_headers) return;
    const std::string sent(req_["X-Request-Id"]);
    if (!sent.empty()) request_id_ = sent;
    if (request_id_.empty()) request_id_ = random_id("");
    res.set("X-Request-Id", request_id_);
  }

  void respond(int status, std::string body, bool keep_alive, const char* type = "application/json") {
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), req_.version() ? req_.version() : 11);
    res->set(http::field::server, "llmserve");
    res->set(http::field::content_type, type);
    response_headers(*res);
    res->keep_alive(keep_alive);
    res->body() = std::move(body);
    res->prepare_payload();
    log_access(status);
    pending_.reset();
    if (req_.method() == http::verb::head)  // the GET's headers, Content-Length included, without its body
      return send(std::make_shared<http::response<http::empty_body>>(std::move(res->base())), keep_alive);
    send(res, keep_alive);
  }

  template <class Body>
  void send(std::shared_ptr<http::response<Body>> res, bool keep_alive) {
    http::async_write(stream_, *res, [self = shared_from_this(), res, keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) return self->close();
      self->read();
    });
  }

  // `replica`: the data-parallel replica that answered (another's answers are counted in its own metrics).
  void log_access(int status, bool counted = true, size_t replica = 0) {
    if (counted) (status < 400 ? d_.hc.ok : status < 500 ? d_.hc.client_errors : d_.hc.server_errors)++;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    int64_t pt = 0, ct = 0;
    std::string id = "-";
    if (pending_) {
      pending_->logged = true;
      id = pending_->id;
      for (const auto& o : pending_->outputs) {
        pt += o.prompt_tokens;
        for (const auto& c : o.outputs) ct += static_cast<int64_t>(c.token_ids.size());
      }
      if (status == 200) d_.hc.e2e.observe(s);
    }
    if (d_.opt.access_log && !quiet_path())
      log_info("access ", std::string(req_.method_string()), " ", std::string(req_.target()), " ", status, " id=", id,
               " prompt_tokens=", pt, " completion_tokens=", ct, " latency_ms=", static_cast<int64_t>(s * 1000),
               replica > 0 ? cat(" replica=", replica) : std::string());
  }

  // disable_access_log_for_endpoints: the request's route path (query and root_path left out) is one of them.
  bool quiet_path() const {
    if (d_.opt.no_access_log_paths.empty()) return false;
    const std::string target(req_.target());
    const std::string path = route_path(target.substr(0, target.find('?')), d_.opt.root_path);
    return std::find(d_.opt.no_access_log_paths.begin(), d_.opt.no_access_log_paths.end(), path) != d_.opt.no_access_log_paths.end();
  }

  std::string metrics() {
    const auto& c = d_.engine.counters();
    std::string m;
    auto g = [&](const char* name, const char* type, const char* help, double v) {
      m += cat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, "{model_name=\"", d_.ctx.model_names[0],
               "\"} ", v, "\n");
    };
    g("llmserve:num_requests_running", "gauge", "Requests running on the model.", c.running.load());
    g("llmserve:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", c.waiting.load());
    g("llmserve:num_requests_swapped", "gauge", "Requests swapped out to host memory.", c.swapped.load());
    g("llmserve:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use.",
      c.kv_total.load() > 0 ? static_cast<double>(c.kv_used.load()) / c.kv_total.load() : 0.0);
    g("llmserve:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", c.prefix_queries.load());
    g("llmserve:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", c.prefix_hits.load());
    g("llmserve:num_preemptions_total", "counter", "Sequences preempted.", c.preemptions.load());
    g("llmserve:spec_decode_num_drafts_total", "counter", "Decode steps that fed drafts (speculative decoding).", c.spec_drafts.load());
    g("llmserve:spec_decode_num_draft_tokens_total", "counter", "Draft tokens fed.", c.spec_draft_tokens.load());
    g("llmserve:spec_decode_num_accepted_tokens_total", "counter", "Draft tokens accepted.", c.spec_accepted_tokens.load());
    g("llmserve:prompt_tokens_total", "counter", "Prompt tokens processed.", c.prompt_tokens.load());
    g("llmserve:generation_tokens_total", "counter", "Tokens generated.", c.generation_tokens.load());
    // (vLLM's finished_reason label: stop, length, abort; a request that failed counts as abort)
    m += "# HELP llmserve:request_success_total Requests finished, by finish reason.\n# TYPE llmserve:request_success_total counter\n";
    for (const auto& [reason, n] : {std::pair<const char*, int64_t>{"stop", c.finished_stop.load()}, {"length", c.finished_length.load()},
                                    {"abort", c.finished_abort.load()}})
      m += cat("llmserve:request_success_total{finished_reason=\"", reason, "\",model_name=\"", d_.ctx.model_names[0], "\"} ", n, "\n");
    g("llmserve:http_responses_4xx_total", "counter", "Client errors.", d_.hc.client_errors.load());
    g("llmserve:http_responses_5xx_total", "counter", "Server errors.", d_.hc.server_errors.load());
    if (d_.ctx.loras) {  // (vLLM's lora_requests_info: the value is when the labels were set)
      const EngineCounters::Loras l = c.loras();
      m += cat("# HELP llmserve:lora_requests_info Running stats on LoRA requests.\n# TYPE llmserve:lora_requests_info gauge\n",
               "llmserve:lora_requests_info{max_lora=\"", d_.ctx.max_loras, "\",running_lora_adapters=\"", l.running,
               "\",waiting_lora_adapters=\"", l.waiting, "\"} ", std::to_string(l.updated), "\n");
    }
    const std::string model = d_.ctx.model_names[0];
    m += d_.hc.e2e.text("llmserve:e2e_request_latency_seconds", "End-to-end latency of successful generation requests.", model);
    m += d_.hc.ttft.text("llmserve:time_to_first_token_seconds", "Time from request arrival to its first generated token.", model);
    m += d_.hc.itl.text("llmserve:inter_token_latency_seconds", "Time between generated tokens of a request.", model);
    // The engine's request-level histograms (vLLM's; a request's phases from its arrival at the engine).
    m += c.queue_time.text("llmserve:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", model);
    m += c.prefill_time.text("llmserve:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", model);
    m += c.decode_time.text("llmserve:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", model);
    m += c.inference_time.text("llmserve:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", model);
    m += c.request_prompt_tokens.text("llmserve:request_prompt_tokens", "Number of prefill tokens processed.", model);
    m += c.request_generation_tokens.text("llmserve:request_generation_tokens", "Number of generation tokens processed.", model);
    m += c.request_max_generation_tokens.text("llmserve:request_max_num_generation_tokens",
                                              "Histogram of maximum number of requested generation tokens.", model);
    m += c.request_params_max_tokens.text("llmserve:request_params_max_tokens", "Histogram of the max_tokens request parameter.", model);
    m += c.request_params_n.text("llmserve:request_params_n", "Histogram of the n request parameter.", model);
    m += c.iteration_tokens.text("llmserve:iteration_tokens_total", "Histogram of number of tokens per engine_step.", model);
    return m + with_vllm_names(m);
  }

  // Every family again under vLLM's prefix (vllm:num_requests_running, ...), the names dashboards,
  // autoscalers and routers made for vLLM read.
  static std::string with_vllm_names(const std::string& m) {
    std::string out;
    out.reserve(m.size());
    std::istringstream in(m);
    for (std::string line; std::getline(in, line);) {
      for (const char* head : {"", "# HELP ", "# TYPE "}) {
        const std::string from = std::string(head) + "llmserve:";
        if (line.rfind(from, 0) == 0) {
          line = std::string(head) + "vllm:" + line.substr(from.size());
          break;
        }
      }
      out += line + "\n";
    }
    return out;
  }

  // The connection's end; HTTPS first sends its close_notify (waiting at most 5 s for the client's).
  void close() {
    cancel_all();
    if (auto p = std::move(proxy_)) {
      beast::error_code ignored;
      p->up.close(ignored);
    }
    hangup_timer_.cancel();
#ifdef LLMSERVE_TLS
    if constexpr (kTls) {
      if (closing_) return;
      closing_ = true;
      lowest().expires_after(std::chrono::seconds(5));
      return stream_.async_shutdown([self = shared_from_this()](beast::error_code) { self->close_socket(); });
    }
#endif
    close_socket();
  }
  void close_socket() {
    beast::error_code ec;
    lowest().socket().shutdown(net::socket_base::shutdown_both, ec);
    lowest().close();
  }

  std::shared_ptr<void> tls_context_;  // (declared before the stream, which uses it until its end)
  Stream stream_;
  net::steady_timer hangup_timer_;
  bool closing_ = false;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  const SessionDeps d_;
  std::shared_ptr<Pending> pending_;
  std::shared_ptr<Proxied> proxy_;  // a request another replica answers
  std::string request_id_;  // this request's X-Request-Id response header (enable_request_id_headers)
  std::optional<HeaderList> preflight_headers_;  // a CORS preflight's answer's headers
  std::deque<std::string> writes_;
  bool writing_ = false, last_queued_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

struct HttpServer::Impl {
  const ServerOptions& opt;
  const ApiContext& ctx;
  EngineService& engine;
  net::io_context ioc;
  std::optional<tcp::acceptor> tcp_acceptor;
  std::optional<uds::acceptor> uds_acceptor;
  HttpCounters hc;
  ResponsesStore store;
  const CorsPolicy cors;
  std::unique_ptr<ReplicaRouter> router;
  std::string replicas_stop_token;  // sent to the replicas' servers when this one stops
  std::string stop_token;           // an internal replica's: accepted from rank 0's server
  std::function<void()> stop;       // (set by run())
#ifdef LLMSERVE_TLS
  std::optional<TlsContext> tls;
#endif
  Impl(const ServerOptions& o, const ApiContext& c, EngineService& e)
      : opt(o),
        ctx(c),
        engine(e),
        ioc(o.io_threads),
        cors(o.allowed_origins, o.allowed_methods, o.allowed_headers, o.allow_credentials) {
    if (o.tls.enabled()) {
#ifdef LLMSERVE_TLS
      tls.emplace(o.tls);
#else
      check_tls(o.tls);  // (throws: not built)
#endif
    }
  }

  template <class Acceptor>
  void accept(Acceptor& acceptor) {
    using Socket = typename Acceptor::protocol_type::socket;
    acceptor.async_accept(net::make_strand(ioc), [this, &acceptor](beast::error_code aec, Socket s) {
      if (aec == net::error::operation_aborted || !acceptor.is_open()) return;  // closed at shutdown
      if (aec) {
        // Out of descriptors or a transient failure: keep the listener alive and try again shortly.
        log_warn("accept failed: ", aec.message(), "; retrying");
        auto t = std::make_shared<net::steady_timer>(ioc, std::chrono::milliseconds(100));
        return t->async_wait([this, t, &acceptor](beast::error_code) { accept(acceptor); });
      }
      start_session(std::move(s));
      accept(acceptor);
    });
  }

  // TCP and Unix-socket connections alike as generic stream sockets: one Session type for both (each
  // Session instantiation costs the build about 40 s of compilation: 220 -> 137 CPU-s for two fewer).
  template <class Socket>
  void start_session(Socket accepted) {
    using Plain = beast::basic_stream<net::generic::stream_protocol>;
    net::generic::stream_protocol::socket s(std::move(accepted));
    const SessionDeps deps{opt, cors, ctx, engine, hc, store, router.get(), stop_token, stop};
#ifdef LLMSERVE_TLS
    if (tls) {
      std::shared_ptr<net::ssl::context> c = tls->current();
      net::ssl::context& ref = *c;
      return std::make_shared<Session<beast::ssl_stream<Plain>>>(deps, std::move(c), std::move(s), ref)->start();
    }
#endif
    std::make_shared<Session<Plain>>(deps, nullptr, std::move(s))->start();
  }

  int port() const {
    beast::error_code ec;
    const auto ep = tcp_acceptor ? tcp_acceptor->local_endpoint(ec) : tcp::endpoint();
    return ec ? 0 : ep.port();
  }

  void close_acceptors() {
    beast::error_code ignored;
    if (tcp_acceptor) tcp_acceptor->close(ignored);
    if (uds_acceptor) uds_acceptor->close(ignored);
  }
};

namespace {
// A Unix domain socket at `path`, as asyncio's create_unix_server (uvicorn's) makes it: a socket file
// left there (a server that ended without removing it) is replaced; any other file is an error.
void bind_uds(uds::acceptor& a, const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw Error(cat("uds '", path, "' exists and is not a socket"));
    ::unlink(path.c_str());
  }
  beast::error_code ec;
  const uds::endpoint ep(path);
  a.open(ep.protocol(), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error(cat("cannot listen on the Unix socket '", path, "': ", ec.message()));
  ::chmod(path.c_str(), 0666);  // (uvicorn's default permissions for it)
}
}  // namespace

HttpServer::HttpServer(const ServerOptions& opt, const ApiContext& ctx, EngineService& engine)
    : impl_(std::make_unique<Impl>(opt, ctx, engine)) {
  if (!opt.uds.empty()) {
    bind_uds(impl_->uds_acceptor.emplace(impl_->ioc), opt.uds);
    return;
  }
  beast::error_code ec;
  const auto addr = net::ip::make_address(opt.host, ec);
  if (ec) throw Error(cat("host '", opt.host, "' is not an IP address"));
  const tcp::endpoint ep(addr, static_cast<unsigned short>(opt.port));
  auto& a = impl_->tcp_acceptor.emplace(impl_->ioc);
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error(cat("cannot listen on ", opt.host, ":", opt.port, ": ", ec.message()));
}

HttpServer::~HttpServer() {
  if (!impl_->opt.uds.empty()) ::unlink(impl_->opt.uds.c_str());
}

int HttpServer::port() const { return impl_->port(); }

void HttpServer::route_to(std::vector<ReplicaAddress> replicas, std::string stop_token) {
  impl_->router = std::make_unique<ReplicaRouter>(std::move(replicas));
  impl_->replicas_stop_token = std::move(stop_token);
}

void HttpServer::stop_on_request(std::string stop_token) { impl_->stop_token = std::move(stop_token); }

void HttpServer::run() {
  Impl& s = *impl_;
  if (s.tcp_acceptor) s.accept(*s.tcp_acceptor);
  if (s.uds_acceptor) s.accept(*s.uds_acceptor);
  net::signal_set signals(s.ioc, SIGINT, SIGTERM);
  std::atomic<bool> stopping{false};
  s.stop = [&s, &stopping] {
    if (stopping.exchange(true)) return;
    s.close_acceptors();
    s.engine.stop();  // aborts active requests; their clients get their final responses
    // Let the final writes go out, then stop the I/O threads.
    auto timer = std::make_shared<net::steady_timer>(s.ioc, std::chrono::milliseconds(500));
    timer->async_wait([&s, timer](beast::error_code) { s.ioc.stop(); });
  };
  signals.async_wait([&s](beast::error_code ec, int sig) {
    if (ec) return;
    log_info("signal ", sig, ": stopping (in-flight requests are aborted)");
    s.stop();
  });
  const std::string scheme = s.opt.tls.enabled() ? "https" : "http";
  const std::string where = s.uds_acceptor ? cat(scheme, " over the Unix socket ", s.opt.uds) : cat(scheme, "://", s.opt.host, ":", s.port());
  log_info("serving ", s.ctx.model_names[0], " on ", where, " (OpenAI API under /v1; ", s.opt.io_threads, " I/O threads",
           s.router ? cat("; requests shared by ", s.router->count(), " data-parallel replicas") : std::string(), ")");
  // A handler's exception comes out of run() (Asio's rule): the connection it served is dropped (its
  // handlers and session are gone with the exception), and the thread serves on.
  auto serve = [&s] {
    for (;;) {
      try {
        s.ioc.run();
        return;
      } catch (const std::exception& e) {
        log_warn("HTTP: a connection failed (", e.what(), ") and was dropped; serving on");
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < s.opt.io_threads; ++i) threads.emplace_back(serve);
  serve();
  for (auto& t : threads) t.join();
  if (!s.router) return;
  // The replicas behind this server stop with it.
  net::io_context io;
  http::request<http::string_body> req(http::verb::post, "/llmserve/stop", 11);
  req.set(http::field::host, "localhost");
  req.set("X-Llmserve-Stop", s.replicas_stop_token);
  fetch_from_replicas(io.get_executor(), *s.router, req, std::chrono::seconds(10), [](std::vector<ReplicaReply> replies) {
    for (size_t i = 0; i < replies.size(); ++i)
      if (replies[i].status != 200)
        log_warn("replica ", i + 1, " did not take the stop: ", replies[i].status == 0 ? replies[i].body : std::to_string(replies[i].status));
  });
  io.run();
}

}  // namespace llmserve
