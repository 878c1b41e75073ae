// TLS for the HTTP front end (vLLM's ssl_keyfile, ssl_certfile, ssl_ca_certs, ssl_cert_reqs, ssl_ciphers,
// enable_ssl_refresh), through OpenSSL as Boost.Asio wraps it. Built only where CMake found OpenSSL
// (LLMSERVE_TLS); without it every TLS option is refused with that reason.
#pragma once
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef LLMSERVE_TLS
#include <boost/asio/ssl/context.hpp>
#endif

namespace llmserve {

struct TlsOptions {
  std::string keyfile;   // PEM private key (empty: the key is in certfile, as Python's load_cert_chain)
  std::string certfile;  // PEM certificate chain; TLS is on when it is set
  std::string ca_certs;  // PEM CA certificates that client certificates are verified against
  std::string ciphers;   // OpenSSL cipher list for TLS 1.2 (empty: OpenSSL's default)
  int cert_reqs = 0;     // client certificates, Python's ssl.CERT_*: 0 none, 1 optional, 2 required
  bool refresh = false;  // enable_ssl_refresh: new connections use the files as they are now
  bool enabled() const { return !certfile.empty() || !keyfile.empty(); }
};

// Checks the options and loads the files once: throws Error naming the option at fault (a missing or
// unreadable file, a key that does not match the certificate, an encrypted key, a cipher list OpenSSL
// matches nothing with, TLS not built).
void check_tls(const TlsOptions& opt);

#ifdef LLMSERVE_TLS
// The server's TLS context. With `refresh`, current() looks at the files' modification times (a stat
// each, on each new connection) and, when one changed, loads them into a new context that connections
// from then on use; a set of files that fails to load (a certificate renewed before its key) is logged
// and the context before it kept, until the files change again.
class TlsContext {
 public:
  explicit TlsContext(TlsOptions opt);  // throws Error as check_tls
  std::shared_ptr<boost::asio::ssl::context> current();

 private:
  std::vector<timespec> stamps() const;
  TlsOptions opt_;
  std::mutex mu_;
  std::shared_ptr<boost::asio::ssl::context> ctx_;
  std::vector<timespec> seen_;
};
#endif

}  // namespace llmserve
