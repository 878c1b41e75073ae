#include "server/tls_context.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "common/error.h"
#include "common/log.h"

#ifdef LLMSERVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

namespace llmserve {

#ifdef LLMSERVE_TLS
namespace ssl = boost::asio::ssl;

namespace {

void check_readable(const char* option, const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(cat(option, " '", path, "' cannot be read: ", std::strerror(errno)));
}

// (config_validate has checked the values: a certificate file is named, cert_reqs is 0-2 and has CAs.)
void check_files(const TlsOptions& o) {
  check_readable("ssl_certfile", o.certfile);
  if (!o.keyfile.empty()) check_readable("ssl_keyfile", o.keyfile);
  if (!o.ca_certs.empty()) check_readable("ssl_ca_certs", o.ca_certs);
}

// OpenSSL's reason for the last failure, or `fallback`.
std::string openssl_reason(const std::string& fallback) {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return fallback;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

std::shared_ptr<ssl::context> make_context(const TlsOptions& o) {
  check_files(o);
  auto c = std::make_shared<ssl::context>(ssl::context::tls_server);
  // TLS 1.2 and 1.3, as Python's ssl.PROTOCOL_TLS_SERVER context (uvicorn's) allows.
  c->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                 ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
  // An encrypted key fails to load rather than asking for its passphrase on a terminal.
  c->set_password_callback([](std::size_t, ssl::context::password_purpose) { return std::string(); });
  boost::system::error_code ec;
  ERR_clear_error();
  c->use_certificate_chain_file(o.certfile, ec);
  if (ec) throw Error(cat("ssl_certfile '", o.certfile, "': not a PEM certificate chain (", openssl_reason(ec.message()), ")"));
  const std::string& key = o.keyfile.empty() ? o.certfile : o.keyfile;
  const char* key_option = o.keyfile.empty() ? "ssl_certfile" : "ssl_keyfile";
  const auto mismatch = [&](const std::string& why) {
    return Error(cat(key_option, " '", key, "' does not match the certificate of ssl_certfile '", o.certfile, "' (", why, ")"));
  };
  c->use_private_key_file(key, ssl::context::pem, ec);
  if (ec) {
    const std::string why = openssl_reason(ec.message());
    if (why.find("mismatch") != std::string::npos) throw mismatch(why);
    throw Error(cat(key_option, " '", key, "': no usable PEM private key (", why, "; an encrypted key is not supported)"));
  }
  if (SSL_CTX_check_private_key(c->native_handle()) != 1) throw mismatch(openssl_reason("key values mismatch"));
  if (!o.ca_certs.empty()) {
    c->load_verify_file(o.ca_certs, ec);
    if (ec) throw Error(cat("ssl_ca_certs '", o.ca_certs, "': no PEM CA certificates (", openssl_reason(ec.message()), ")"));
  }
  c->set_verify_mode(o.cert_reqs == 0   ? ssl::verify_none
                     : o.cert_reqs == 1 ? ssl::verify_peer
                                        : ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  if (!o.ciphers.empty() && SSL_CTX_set_cipher_list(c->native_handle(), o.ciphers.c_str()) != 1)
    throw Error(cat("ssl_ciphers '", o.ciphers, "': OpenSSL matches no cipher with it (", openssl_reason("no cipher match"), ")"));
  return c;
}

}  // namespace

void check_tls(const TlsOptions& opt) { make_context(opt); }

TlsContext::TlsContext(TlsOptions opt) : opt_(std::move(opt)), ctx_(make_context(opt_)), seen_(stamps()) {}

std::vector<timespec> TlsContext::stamps() const {
  std::vector<timespec> s;
  for (const std::string* f : {&opt_.certfile, &opt_.keyfile, &opt_.ca_certs}) {
    struct stat st {};
    if (f->empty() || ::stat(f->c_str(), &st) != 0) {
      s.push_back({-1, 0});
    } else {
      s.push_back(st.st_mtim);
    }
  }
  return s;
}

std::shared_ptr<ssl::context> TlsContext::current() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!opt_.refresh) return ctx_;
  const std::vector<timespec> now = stamps();
  bool changed = false;
  for (size_t i = 0; i < now.size(); ++i)
    changed = changed || now[i].tv_sec != seen_[i].tv_sec || now[i].tv_nsec != seen_[i].tv_nsec;
  if (!changed) return ctx_;
  seen_ = now;
  try {
    ctx_ = make_context(opt_);
    log_info("TLS: the certificate files changed; new connections use them");
  } catch (const std::exception& e) {
    log_warn("TLS: the certificate files changed but do not load (", e.what(), "); still serving the ones loaded before");
  }
  return ctx_;
}

#else

void check_tls(const TlsOptions&) {
  throw Error("ssl_keyfile / ssl_certfile: this llmserve was built without OpenSSL (install libssl-dev and build again), "
              "so it serves plain HTTP only");
}

#endif

}  // namespace llmserve
