// CORS as vLLM answers it (Starlette's CORSMiddleware): preflights and other answers under the
// default policy (any origin, method and header), listed origins, methods and headers, and credentials.
#include <gtest/gtest.h>

#include <map>

#include "server/cors.h"
#include "server/http_server.h"

using namespace llmserve;

namespace {
std::map<std::string, std::string> as_map(const HeaderList& h) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : h) {
    EXPECT_EQ(m.count(k), 0u) << "header given twice: " << k;
    m[k] = v;
  }
  return m;
}
}  // namespace

TEST(Cors, DefaultPolicyAllowsAnythingAndEchoesTheHeadersAskedFor) {
  const CorsPolicy p({"*"}, {"*"}, {"*"}, false);
  const std::string asked = "authorization, x-whatever";
  const auto pf = p.preflight("http://a.example", "POST", &asked);
  EXPECT_EQ(pf.status, 200);
  EXPECT_EQ(pf.body, "OK");
  const auto h = as_map(pf.headers);
  EXPECT_EQ(h.at("Access-Control-Allow-Origin"), "*");
  EXPECT_EQ(h.at("Access-Control-Allow-Methods"), "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT");
  EXPECT_EQ(h.at("Access-Control-Allow-Headers"), asked);
  EXPECT_EQ(h.at("Access-Control-Max-Age"), "600");
  EXPECT_EQ(h.count("Access-Control-Allow-Credentials"), 0u);
  EXPECT_EQ(h.count("Vary"), 0u);
  // No Access-Control-Request-Headers: none echoed. An unknown method is refused even under "*".
  EXPECT_EQ(as_map(p.preflight("http://a.example", "GET", nullptr).headers).count("Access-Control-Allow-Headers"), 0u);
  EXPECT_EQ(p.preflight("http://a.example", "TRACE", nullptr).body, "Disallowed CORS method");
  const auto s = as_map(p.simple("http://a.example", false));
  EXPECT_EQ(s, (std::map<std::string, std::string>{{"Access-Control-Allow-Origin", "*"}}));
  // A request with cookies is answered with its own origin.
  const auto c = as_map(p.simple("http://a.example", true));
  EXPECT_EQ(c.at("Access-Control-Allow-Origin"), "http://a.example");
  EXPECT_EQ(c.at("Vary"), "Origin");
}

TEST(Cors, ListedOriginsMethodsAndHeaders) {
  const CorsPolicy p({"http://app.example"}, {"GET", "POST"}, {"Authorization", "X-Trace"}, false);
  const std::string ok = "authorization, Content-Type ,x-trace";
  const auto pf = p.preflight("http://app.example", "POST", &ok);
  EXPECT_EQ(pf.status, 200) << pf.body;
  const auto h = as_map(pf.headers);
  EXPECT_EQ(h.at("Access-Control-Allow-Origin"), "http://app.example");
  EXPECT_EQ(h.at("Vary"), "Origin");
  EXPECT_EQ(h.at("Access-Control-Allow-Methods"), "GET, POST");
  // The safelisted headers and the configured ones, sorted as listed.
  EXPECT_EQ(h.at("Access-Control-Allow-Headers"), "Accept, Accept-Language, Authorization, Content-Language, Content-Type, X-Trace");
  const std::string bad = "authorization, x-other";
  const auto refused = p.preflight("http://evil.example", "DELETE", &bad);
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(refused.body, "Disallowed CORS origin, method, headers");
  EXPECT_EQ(as_map(refused.headers).count("Access-Control-Allow-Origin"), 0u);
  EXPECT_EQ(p.preflight("http://app.example", "PUT", nullptr).body, "Disallowed CORS method");
  const std::string empty;
  EXPECT_EQ(p.preflight("http://app.example", "GET", &empty).body, "Disallowed CORS headers");
  EXPECT_EQ(as_map(p.simple("http://app.example", false)).at("Access-Control-Allow-Origin"), "http://app.example");
  EXPECT_TRUE(p.simple("http://evil.example", false).empty());
}

TEST(Cors, CredentialsNameTheOriginAndSaySo) {
  const CorsPolicy any({"*"}, {"*"}, {"*"}, true);
  const auto h = as_map(any.preflight("http://a.example", "GET", nullptr).headers);
  EXPECT_EQ(h.at("Access-Control-Allow-Origin"), "http://a.example");
  EXPECT_EQ(h.at("Access-Control-Allow-Credentials"), "true");
  const auto s = as_map(any.simple("http://a.example", false));
  EXPECT_EQ(s.at("Access-Control-Allow-Origin"), "*");
  EXPECT_EQ(s.at("Access-Control-Allow-Credentials"), "true");
  const CorsPolicy listed({"http://app.example"}, {"*"}, {"*"}, true);
  const auto other = as_map(listed.simple("http://evil.example", false));
  EXPECT_EQ(other.count("Access-Control-Allow-Origin"), 0u);  // (Starlette still says credentials)
  EXPECT_EQ(other.at("Access-Control-Allow-Credentials"), "true");
}

// root_path (vLLM's, as Starlette routes under FastAPI's root_path): a path under the prefix routes without
// it; others, a prefix that only starts a longer segment included, route as they are.
TEST(RoutePath, RootPathPrefix) {
  EXPECT_EQ(route_path("/api/v1/models", "/api"), "/v1/models");
  EXPECT_EQ(route_path("/v1/models", "/api"), "/v1/models");
  EXPECT_EQ(route_path("/apix/v1/models", "/api"), "/apix/v1/models");
  EXPECT_EQ(route_path("/api", "/api"), "");
  EXPECT_EQ(route_path("/a/b/health", "/a/b"), "/health");
  EXPECT_EQ(route_path("/v1/models", ""), "/v1/models");
}
