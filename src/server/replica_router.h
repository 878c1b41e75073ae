// data_parallel_size's internal load balancing (vLLM's default for `serve`): rank 0's server is the one
// endpoint. It answers with its own replica's engine or passes the request on, as it came, to another
// replica's server (listening on an internal address), whichever has the fewest requests in flight,
// and relays that server's answer back byte for byte. Routes that change a replica's state (runtime
// LoRA updating, /reset_prefix_cache) go to every replica; /health and /metrics ask every replica.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/beast/http.hpp>

namespace llmserve {

// Where a replica's server listens (an IP address or a host name, and a port).
struct ReplicaAddress {
  std::string host;
  int port = 0;
};

class ReplicaRouter {
 public:
  // `remote`: replicas 1, 2, ... (replica 0 is the server's own engine).
  explicit ReplicaRouter(std::vector<ReplicaAddress> remote);
  size_t count() const { return remote_.size() + 1; }
  const ReplicaAddress& address(size_t replica) const { return remote_.at(replica - 1); }

  // A request's replica, counted in flight until the lease ends (with its answer).
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept : router_(o.router_), index_(o.index_) { o.router_ = nullptr; }
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { release(); }
    size_t index() const { return index_; }

   private:
    friend class ReplicaRouter;
    Lease(ReplicaRouter* r, size_t i) : router_(r), index_(i) {}
    void release();
    ReplicaRouter* router_ = nullptr;
    size_t index_ = 0;
  };
  // The replica with the fewest requests in flight; among equals, the next in turn after the last pick.
  Lease pick();
  std::vector<int64_t> in_flight() const;

 private:
  std::vector<ReplicaAddress> remote_;
  std::unique_ptr<std::atomic<int64_t>[]> in_flight_;
  std::atomic<uint64_t> turn_{0};
};

// One whole exchange with a replica's server over a connection of its own, within `timeout`: `done`
// gets the answer, or the error that kept it (connection refused, timeout, a malformed answer).
using ReplicaAnswer = std::function<void(boost::beast::error_code, boost::beast::http::response<boost::beast::http::string_body>)>;
void fetch_from_replica(boost::asio::any_io_executor ex, const ReplicaAddress& a,
                        boost::beast::http::request<boost::beast::http::string_body> req, std::chrono::seconds timeout,
                        ReplicaAnswer done);

// The same request to replicas 1..n-1 at once; `done` gets their answers in replica order (entry r - 1:
// replica r; status 0 with the error's text as the body where there was none).
struct ReplicaReply {
  int status = 0;
  std::string body;
};
void fetch_from_replicas(boost::asio::any_io_executor ex, const ReplicaRouter& router,
                         const boost::beast::http::request<boost::beast::http::string_body>& req, std::chrono::seconds timeout,
                         std::function<void(std::vector<ReplicaReply>)> done);

// Prometheus texts of replicas 0, 1, ... as one: each family's HELP and TYPE once (the first text's
// families in its order, then any the others add), then every replica's samples of it, each with an
// engine="<replica>" label first (vLLM's label of a data-parallel engine's metrics).
std::string merge_replica_metrics(const std::vector<std::string>& texts);

// The status of a raw HTTP answer's first line ("HTTP/1.1 200 OK"): 0 while it is not all there.
int answer_status(const std::string& head);

}  // namespace llmserve
