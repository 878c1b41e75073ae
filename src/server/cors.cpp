#include "server/cors.h"

#include <algorithm>
#include <set>

#include "common/text.h"

namespace llmserve {

namespace {

bool has_star(const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), "*") != v.end(); }

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

CorsPolicy::CorsPolicy(std::vector<std::string> origins, std::vector<std::string> methods, std::vector<std::string> headers,
                       bool credentials)
    : origins_(std::move(origins)), all_origins_(has_star(origins_)), all_headers_(has_star(headers)), credentials_(credentials) {
  // "*" among the methods: every method (Starlette's list, in its order).
  methods_ = has_star(methods) ? std::vector<std::string>{"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"} : methods;
  methods_joined_ = join(methods_);
  // The CORS-safelisted request headers are always allowed; the preflight lists them with the configured
  // ones, sorted (unless any header is allowed: then it echoes what was asked for).
  std::set<std::string> listed = {"Accept", "Accept-Language", "Content-Language", "Content-Type"};
  listed.insert(headers.begin(), headers.end());
  headers_joined_ = join(std::vector<std::string>(listed.begin(), listed.end()));
  for (const auto& h : listed) headers_lower_.push_back(ascii_lower(h));
}

bool CorsPolicy::allowed_origin(const std::string& origin) const {
  return all_origins_ || std::find(origins_.begin(), origins_.end(), origin) != origins_.end();
}

CorsPolicy::Preflight CorsPolicy::preflight(const std::string& origin, const std::string& method,
                                            const std::string* requested_headers) const {
  Preflight p{200, "OK", {}};
  // A listed origin (or any, with credentials) is named; any origin without credentials is "*".
  const bool explicit_origin = !all_origins_ || credentials_;
  if (!explicit_origin) p.headers.emplace_back("Access-Control-Allow-Origin", "*");
  std::vector<std::string> failures;
  if (!allowed_origin(origin))
    failures.push_back("origin");
  else if (explicit_origin) {
    p.headers.emplace_back("Access-Control-Allow-Origin", origin);
    p.headers.emplace_back("Vary", "Origin");
  }
  p.headers.emplace_back("Access-Control-Allow-Methods", methods_joined_);
  p.headers.emplace_back("Access-Control-Max-Age", "600");
  if (std::find(methods_.begin(), methods_.end(), method) == methods_.end()) failures.push_back("method");
  if (all_headers_) {
    if (requested_headers) p.headers.emplace_back("Access-Control-Allow-Headers", *requested_headers);
  } else {
    p.headers.emplace_back("Access-Control-Allow-Headers", headers_joined_);
    if (requested_headers) {
      size_t at = 0;
      while (at <= requested_headers->size()) {
        const size_t comma = std::min(requested_headers->find(',', at), requested_headers->size());
        const std::string h = ascii_lower(trim(requested_headers->substr(at, comma - at)));
        if (std::find(headers_lower_.begin(), headers_lower_.end(), h) == headers_lower_.end()) {
          failures.push_back("headers");
          break;
        }
        at = comma + 1;
      }
    }
  }
  if (credentials_) p.headers.emplace_back("Access-Control-Allow-Credentials", "true");
  if (!failures.empty()) {
    p.status = 400;
    p.body = "Disallowed CORS " + join(failures);
  }
  return p;
}

HeaderList CorsPolicy::simple(const std::string& origin, bool has_cookie) const {
  HeaderList h;
  // A request with cookies is answered with its origin rather than "*", and a listed origin with itself.
  if (all_origins_ && !has_cookie) h.emplace_back("Access-Control-Allow-Origin", "*");
  if ((all_origins_ && has_cookie) || (!all_origins_ && allowed_origin(origin))) {
    h.emplace_back("Access-Control-Allow-Origin", origin);
    h.emplace_back("Vary", "Origin");
  }
  if (credentials_) h.emplace_back("Access-Control-Allow-Credentials", "true");
  return h;
}

}  // namespace llmserve
