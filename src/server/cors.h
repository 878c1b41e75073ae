// CORS as vLLM answers it: Starlette's CORSMiddleware with vLLM's allowed_origins, allowed_methods,
// allowed_headers (each default ["*"]) and allow_credentials (default false). Only requests that send
// an Origin header get CORS headers; a preflight (OPTIONS with Origin and Access-Control-Request-Method)
// is answered here for any path, before routing and authentication (browsers send it without
// credentials).
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace llmserve {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

class CorsPolicy {
 public:
  CorsPolicy(std::vector<std::string> origins, std::vector<std::string> methods, std::vector<std::string> headers,
             bool credentials);

  struct Preflight {
    int status;        // 200, or 400 when the origin, method or a header asked for is not allowed
    std::string body;  // "OK", or "Disallowed CORS origin, method, headers" (those that failed)
    HeaderList headers;
  };
  // requested_headers: Access-Control-Request-Headers as sent (null: none sent).
  Preflight preflight(const std::string& origin, const std::string& method, const std::string* requested_headers) const;
  // The headers of any other answer to a request from `origin` (which sent cookies or not).
  HeaderList simple(const std::string& origin, bool has_cookie) const;

 private:
  bool allowed_origin(const std::string& origin) const;
  std::vector<std::string> origins_, methods_, headers_lower_;
  std::string methods_joined_, headers_joined_;
  bool all_origins_, all_headers_, credentials_;
};

}  // namespace llmserve
