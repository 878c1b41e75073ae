#include "server/replica_router.h"

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <limits>
#include <map>
#include <sstream>

namespace llmserve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

ReplicaRouter::ReplicaRouter(std::vector<ReplicaAddress> remote)
    : remote_(std::move(remote)), in_flight_(new std::atomic<int64_t>[remote_.size() + 1]) {
  for (size_t r = 0; r < count(); ++r) in_flight_[r] = 0;
}

ReplicaRouter::Lease& ReplicaRouter::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    release();
    router_ = o.router_;
    index_ = o.index_;
    o.router_ = nullptr;
  }
  return *this;
}

void ReplicaRouter::Lease::release() {
  if (router_) --router_->in_flight_[index_];
  router_ = nullptr;
}

ReplicaRouter::Lease ReplicaRouter::pick() {
  const size_t n = count(), first = static_cast<size_t>(turn_++ % n);
  size_t best = first;
  int64_t least = std::numeric_limits<int64_t>::max();
  for (size_t k = 0; k < n; ++k) {
    const size_t r = (first + k) % n;
    const int64_t load = in_flight_[r].load();
    if (load < least) {
      least = load;
      best = r;
    }
  }
  ++in_flight_[best];
  return Lease(this, best);
}

std::vector<int64_t> ReplicaRouter::in_flight() const {
  std::vector<int64_t> v(count());
  for (size_t r = 0; r < v.size(); ++r) v[r] = in_flight_[r].load();
  return v;
}

namespace {

struct Exchange : std::enable_shared_from_this<Exchange> {
  Exchange(net::any_io_executor ex, http::request<http::string_body> r, ReplicaAnswer d)
      : resolver(ex), stream(ex), req(std::move(r)), done(std::move(d)) {}
  tcp::resolver resolver;
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  http::request<http::string_body> req;
  http::response<http::string_body> res;
  ReplicaAnswer done;

  void finish(beast::error_code ec) {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.close();
    if (auto d = std::move(done)) d(ec, std::move(res));
  }
};

}  // namespace

void fetch_from_replica(net::any_io_executor ex, const ReplicaAddress& a, http::request<http::string_body> req,
                        std::chrono::seconds timeout, ReplicaAnswer done) {
  auto x = std::make_shared<Exchange>(ex, std::move(req), std::move(done));
  x->req.keep_alive(false);
  x->req.prepare_payload();
  x->stream.expires_after(timeout);
  x->resolver.async_resolve(a.host, std::to_string(a.port), [x](beast::error_code ec, tcp::resolver::results_type found) {
    if (ec) return x->finish(ec);
    x->stream.async_connect(found, [x](beast::error_code cec, const tcp::endpoint&) {
      if (cec) return x->finish(cec);
      http::async_write(x->stream, x->req, [x](beast::error_code wec, size_t) {
        if (wec) return x->finish(wec);
        http::async_read(x->stream, x->buffer, x->res, [x](beast::error_code rec, size_t) { x->finish(rec); });
      });
    });
  });
}

void fetch_from_replicas(net::any_io_executor ex, const ReplicaRouter& router, const http::request<http::string_body>& req,
                         std::chrono::seconds timeout, std::function<void(std::vector<ReplicaReply>)> done) {
  struct Join {
    std::vector<ReplicaReply> replies;
    size_t left;
    std::function<void(std::vector<ReplicaReply>)> done;
  };
  const size_t n = router.count() - 1;
  if (n == 0) return done({});
  auto join = std::make_shared<Join>(Join{std::vector<ReplicaReply>(n), n, std::move(done)});
  // (Each answer on the caller's executor: the join is touched by one thread at a time.)
  for (size_t r = 1; r <= n; ++r)
    fetch_from_replica(ex, router.address(r), req, timeout, [join, r, ex](beast::error_code ec, http::response<http::string_body> res) {
      net::dispatch(ex, [join, r, ec, res = std::move(res)]() mutable {
        join->replies[r - 1] = ec ? ReplicaReply{0, ec.message()} : ReplicaReply{static_cast<int>(res.result_int()), std::move(res.body())};
        if (--join->left == 0) join->done(std::move(join->replies));
      });
    });
}

std::string merge_replica_metrics(const std::vector<std::string>& texts) {
  struct Family {
    std::string head;  // its HELP and TYPE lines
    std::string samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Family> families;
  for (size_t r = 0; r < texts.size(); ++r) {
    std::istringstream in(texts[r]);
    std::string current;  // the family of the lines that follow
    const std::string label = "engine=\"" + std::to_string(r) + "\"";
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      if (line[0] == '#') {
        std::istringstream words(line);
        std::string hash, kind, name;
        words >> hash >> kind >> name;
        if (kind != "HELP" && kind != "TYPE") continue;  // (other comments dropped)
        if (!families.count(name)) order.push_back(name);
        Family& f = families[name];
        if (f.head.find("# " + kind + " " + name + " ") == std::string::npos) f.head += line + "\n";
        current = name;
        continue;
      }
      // A sample: name{labels} value, or name value.
      const size_t brace = line.find('{'), space = line.find(' ');
      std::string labelled;
      if (brace != std::string::npos && brace < space) {
        const bool none = line[brace + 1] == '}';
        labelled = line.substr(0, brace + 1) + label + (none ? "" : ",") + line.substr(brace + 1);
      } else if (space != std::string::npos) {
        labelled = line.substr(0, space) + "{" + label + "}" + line.substr(space);
      } else {
        continue;  // (not a sample)
      }
      if (current.empty()) {
        current = line.substr(0, std::min(brace, space));
        if (!families.count(current)) order.push_back(current);
      }
      families[current].samples += labelled + "\n";
    }
  }
  std::string out;
  for (const auto& name : order) out += families[name].head + families[name].samples;
  return out;
}

int answer_status(const std::string& head) {
  const size_t eol = head.find("\r\n");
  if (eol == std::string::npos) return 0;
  const size_t sp = head.find(' ');
  if (sp == std::string::npos || sp + 4 > eol) return 0;
  int status = 0;
  for (size_t i = sp + 1; i < sp + 4; ++i) {
    if (head[i] < '0' || head[i] > '9') return 0;
    status = status * 10 + (head[i] - '0');
  }
  return status;
}

}  // namespace llmserve
