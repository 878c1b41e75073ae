#!/usr/bin/env python3
"""The HTTP front end's transports and limits, as vLLM's frontend options set them: HTTPS (ssl_certfile,
ssl_keyfile, ssl_ca_certs with ssl_cert_reqs for client certificates, ssl_ciphers, enable_ssl_refresh), a
Unix domain socket (uds), several API keys (api_key, VLLM_API_KEY), disable_access_log_for_endpoints and
the h11 header limits; the options' errors. One-rank servers of the tiny Qwen2 fixture; certificates made
here with the openssl command. Prints one line per check and 'N passed, N failed'.
LLMSERVE_TEST_BACKEND=cuda runs the servers on one GPU.
Usage: test_tls.py BUILD_DIR"""
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (its Server and check; BUILD_DIR is argv[1] there too)

check = ts.check
LLMSERVE = os.path.join(ts.BUILD, "llmserve")
COMPLETION = {"prompt": [1, 2, 3], "max_tokens": 6, "temperature": 0, "ignore_eos": True}


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pki:
    """A CA, server certificates for localhost / 127.0.0.1 signed by it, client certificates signed by it
    and by a second CA the server does not trust."""

    def __init__(self, d):
        self.d = d
        self.ca = self.make_ca("ca")
        self.other_ca = self.make_ca("other-ca")
        self.server = self.make_cert("server", "ca", "localhost", san="subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self.server2 = self.make_cert("server2", "ca", "localhost-renewed", san="subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        self.client = self.make_cert("client", "ca", "client")
        self.stranger = self.make_cert("stranger", "other-ca", "stranger")
        # An encrypted key (a passphrase), and the server's certificate with its key in one file.
        self.encrypted_key = self.path("encrypted.key")
        openssl("pkey", "-in", self.server[1], "-out", self.encrypted_key, "-aes256", "-passout", "pass:secret")
        self.combined = self.path("combined.pem")
        with open(self.combined, "w") as f:
            f.write(open(self.server[0]).read() + open(self.server[1]).read())

    def path(self, name):
        return os.path.join(self.d, name)

    def make_ca(self, name):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.path(name + ".key"), "-out",
                self.path(name + ".pem"), "-days", "2", "-subj", "/CN=" + name)
        return self.path(name + ".pem")

    def make_cert(self, name, ca, cn, san=""):
        key, csr, pem, ext = (self.path(name + x) for x in (".key", ".csr", ".pem", ".ext"))
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
        with open(ext, "w") as f:
            f.write(san or "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", csr, "-CA", self.path(ca + ".pem"), "-CAkey", self.path(ca + ".key"), "-CAcreateserial",
                "-out", pem, "-days", "2", "-extfile", ext)
        return pem, key


class TlsServer(ts.Server):
    """A one-rank server over HTTPS (client: a context trusting the test CA, optionally with a client
    certificate) or over a Unix domain socket."""

    def __init__(self, *extra, context=None, uds=None, env=None):
        self.context, self.uds = context, uds
        super().__init__(*extra, np=1, tp=1, env=env)

    def connect(self, timeout, context=None):
        if self.uds:
            c = http.client.HTTPConnection("localhost", timeout=timeout)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(self.uds)
            c.sock = s
            return c
        if self.context or context:
            return http.client.HTTPSConnection("localhost", self.port, timeout=timeout, context=context or self.context)
        return super().connect(timeout)

    def log_text(self):
        self.log.flush()
        return open(self.log.name).read()


def client_context(pki, cert=None, max_tls12=False):
    c = ssl.create_default_context(cafile=pki.ca)
    if cert:
        c.load_cert_chain(*cert)
    if max_tls12:
        c.maximum_version = ssl.TLSVersion.TLSv1_2
    return c


def handshake(server, context):
    """The peer certificate (DER) and cipher of a TLS connection, or the exception the connection raised."""
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                # (TLS 1.3 checks the client certificate after the handshake: a request shows the verdict)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                reply = s.recv(64)
                if not reply.startswith(b"HTTP/1.1 200"):
                    return ConnectionError(f"no answer: {reply!r}")
                return s.getpeercert(binary_form=True), s.cipher()[0]
    except (OSError, ssl.SSLError) as e:
        return e


def der(pem):
    return ssl.PEM_cert_to_DER_cert(open(pem).read())


def load(s):
    return json.loads(s.request("GET", "/load")[1])["server_load"]


def wait_idle(s, seconds=10):
    t = time.time()
    while time.time() - t < seconds:
        if load(s) == 0:
            return True
        time.sleep(0.05)
    return False


def https_checks(pki):
    ctx = client_context(pki)
    s = TlsServer("--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.server[1], "--enable-server-load-tracking", context=ctx)
    try:
        st, r = s.post("/v1/completions", COMPLETION)
        check("https: a completion over TLS, the certificate verified for localhost against the test CA",
              st == 200 and r["usage"]["completion_tokens"] == 6, str(r)[:300])
        st, chunks = s.stream_chunks("/v1/completions", {**COMPLETION, "stream": True})
        text = "".join(c["choices"][0]["text"] for c in chunks)
        check("https: the streamed completion gives the same text", st == 200 and text == r["choices"][0]["text"], text)
        check("https: the log names the https address", f"on https://127.0.0.1:{s.port}" in s.log_text())
        # A plain-HTTP client gets no answer; the server goes on serving.
        try:
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=20)
            c.request("GET", "/health")
            plain = c.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            plain = type(e).__name__
        check("https: a plain-HTTP request gets no answer, and the server serves on",
              not isinstance(plain, int) and s.request("GET", "/health")[0] == 200, str(plain))
        # Clients that go away mid-request, with and without their close_notify: their requests end.
        # (64 prompts of 480 tokens: long enough on a GPU too; the client goes as soon as it runs)
        for how in ("closed", "close_notify"):
            c = s.connect(30)
            c.request("POST", "/v1/completions", body=json.dumps({**COMPLETION, "prompt": [[1, 2, 3]] * 64, "max_tokens": 480}),
                      headers={"Content-Type": "application/json"})
            t = time.time()
            while load(s) != 1 and time.time() - t < 10:
                time.sleep(0.01)
            busy = load(s)
            if how == "close_notify":
                c.sock.setblocking(False)
                try:
                    c.sock.unwrap()  # (sends close_notify; the answer it would wait for is not awaited)
                except (ssl.SSLError, OSError):
                    pass
            c.sock.close()
            check(f"https: a client that goes away ({how}) mid-request: its request is aborted",
                  busy == 1 and wait_idle(s, 5), f"in flight before {busy}")
        ok = "499" in s.log_text()
        check("https: an aborted request is logged as 499", ok)
    finally:
        s.stop()
    # The key inside the certificate file (ssl_keyfile left out), TLS 1.2 with ssl_ciphers.
    cipher = "ECDHE-RSA-AES128-GCM-SHA256"
    s = TlsServer("--ssl-certfile", pki.combined, "--ssl-ciphers", cipher, context=ctx)
    try:
        got = handshake(s, client_context(pki, max_tls12=True))
        check("https: ssl_certfile holding the key too; ssl_ciphers sets TLS 1.2's cipher",
              isinstance(got, tuple) and got[1] == cipher, str(got))
        got = handshake(s, client_context(pki))
        check("https: TLS 1.3 keeps its own ciphers", isinstance(got, tuple) and got[1].startswith("TLS_"), str(got))
    finally:
        s.stop()


def client_cert_checks(pki):
    for reqs in (2, 1):
        s = TlsServer("--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.server[1], "--ssl-ca-certs", pki.ca,
                      "--ssl-cert-reqs", str(reqs), context=client_context(pki, pki.client))
        try:
            with_cert = handshake(s, client_context(pki, pki.client))
            none = handshake(s, client_context(pki))
            stranger = handshake(s, client_context(pki, pki.stranger))
            check(f"ssl_cert_reqs {reqs}: a client certificate signed by ssl_ca_certs is served", isinstance(with_cert, tuple), str(with_cert))
            check(f"ssl_cert_reqs {reqs}: one signed by another CA is refused", isinstance(stranger, Exception), str(stranger))
            if reqs == 2:
                check("ssl_cert_reqs 2: a client without a certificate is refused", isinstance(none, Exception), str(none))
            else:
                check("ssl_cert_reqs 1: a client without a certificate is served", isinstance(none, tuple), str(none))
            check(f"ssl_cert_reqs {reqs}: the server serves on", s.request("GET", "/health")[0] == 200)
        finally:
            s.stop()


def refresh_checks(pki, d):
    cert, key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
    shutil.copy(pki.server[0], cert)
    shutil.copy(pki.server[1], key)
    s = TlsServer("--ssl-certfile", cert, "--ssl-keyfile", key, "--enable-ssl-refresh", context=client_context(pki))
    try:
        first = handshake(s, client_context(pki))
        held = s.connect(30)  # a connection made before the files change keeps working
        held.request("GET", "/health")
        held.getresponse().read()
        time.sleep(0.05)  # (a modification time that differs at any file system's resolution)
        shutil.copy(pki.server2[1], key + ".new")
        shutil.copy(pki.server2[0], cert + ".new")
        os.replace(key + ".new", key)
        os.replace(cert + ".new", cert)
        second = handshake(s, client_context(pki))
        held.request("GET", "/health")
        held_status = held.getresponse().status
        check("enable_ssl_refresh: a new connection gets the renewed certificate, one made before keeps working",
              isinstance(first, tuple) and first[0] == der(pki.server[0]) and isinstance(second, tuple)
              and second[0] == der(pki.server2[0]) and held_status == 200, f"{first} {second}")
        # A certificate renewed without its key: the set does not load, the one before is kept.
        shutil.copy(pki.server[0], cert + ".new")
        os.replace(cert + ".new", cert)
        third = handshake(s, client_context(pki))
        check("enable_ssl_refresh: files that do not load (a key of another certificate) are logged and the ones before kept",
              isinstance(third, tuple) and third[0] == der(pki.server2[0]) and "do not load" in s.log_text(), str(third))
    finally:
        s.stop()


def uds_checks(d):
    path = os.path.join(d, "llmserve.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file left behind, as by a server that was killed
    stale.close()
    s = TlsServer("--uds", path, uds=path)
    try:
        st, r = s.post("/v1/completions", COMPLETION)
        check("uds: a completion over the Unix domain socket (a stale socket file there replaced)",
              st == 200 and r["usage"]["completion_tokens"] == 6, str(r)[:300])
        st, chunks = s.stream_chunks("/v1/completions", {**COMPLETION, "stream": True})
        check("uds: a streamed completion", st == 200 and "".join(c["choices"][0]["text"] for c in chunks) == r["choices"][0]["text"])
        try:
            socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
            tcp = "connected"
        except OSError:
            tcp = "refused"
        check("uds: host and port are not served", tcp == "refused")
        check("uds: the log names the socket", f"over the Unix socket {path}" in s.log_text())
    finally:
        code = s.stop()
    check("uds: the socket file is removed when the server stops", code == 0 and not os.path.exists(path), str(code))


def api_key_checks():
    def status(s, key):
        return s.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {})[0]

    s = TlsServer("--api-key", "key-one", "key-two", "--disable-access-log-for-endpoints", "/health,/metrics")
    try:
        got = [status(s, k) for k in ("key-one", "key-two", "key-three", None)]
        check("api_key: several keys after one flag, any of them accepted, others refused", got == [200, 200, 401, 401], str(got))
        s.request("GET", "/health")
        s.request("GET", "/metrics")
        s.request("GET", "/health?probe=1")
        log = s.log_text()
        check("disable_access_log_for_endpoints: /health and /metrics (with a query too) are not logged, /v1/models is",
              "GET /v1/models" in log and "GET /health" not in log and "GET /metrics" not in log, log[-500:])
    finally:
        s.stop()
    s = TlsServer(env={"VLLM_API_KEY": "from-env", "LLMSERVE_API_KEY": ""})
    try:
        got = [status(s, k) for k in ("from-env", "other")]
        check("api_key: VLLM_API_KEY when no key is given", got == [200, 401], str(got))
    finally:
        s.stop()


def header_limit_checks():
    s = TlsServer("--h11-max-header-count", "12", "--h11-max-incomplete-event-size", "4096")
    try:
        st, r = s.post("/v1/completions", COMPLETION, headers={f"X-Extra-{i}": "1" for i in range(6)})
        check("h11 limits: a request within them is served", st == 200, str(r)[:200])
        st, r = s.post("/v1/completions", COMPLETION, headers={f"X-Extra-{i}": "1" for i in range(20)})
        check("h11_max_header_count: more header fields get 431 with an OpenAI-style error",
              st == 431 and "more than 12 header fields" in r["error"]["message"], str(r)[:200])
        st, r = s.post("/v1/completions", COMPLETION, headers={"X-Big": "x" * 5000})
        check("h11_max_incomplete_event_size: a longer header gets 431",
              st == 431 and "exceeds 4096 bytes" in r["error"]["message"], str(r)[:200])
        check("h11 limits: the server serves on", s.request("GET", "/health")[0] == 200)
    finally:
        s.stop()
    s = TlsServer()
    try:
        st, r = s.post("/v1/completions", COMPLETION, headers={"X-Big": "x" * 60_000})
        check("h11 limits: by default a 60 KB header is served", st == 200, str(r)[:200])
        for n in (70_000, 300_000):  # (past Beast's largest field, which it would throw for)
            try:
                st, r = s.post("/v1/completions", COMPLETION, headers={"X-Big": "x" * n})
            except (OSError, http.client.HTTPException) as e:  # (the answer may be lost to the unread rest)
                st, r = type(e).__name__, {}
            check(f"h11 limits: a {n // 1000} KB header is refused (431 at llmserve's 64 KiB) and the server serves on",
                  st in (431, "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError")
                  and s.request("GET", "/health")[0] == 200, str(st))
        check("h11 limits: no connection was dropped for a failure", "was dropped" not in s.log_text())
    finally:
        s.stop()


def error_checks(pki, tls):
    def run(*args):
        try:
            p = subprocess.run([LLMSERVE, "serve", "--model", ts.MODEL, *ts.BACKEND_ARGS, "--port", str(ts.free_port()), *args],
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            return p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired:
            return "timeout", ""

    cases = [
        ("ssl_keyfile without ssl_certfile", ["--ssl-keyfile", pki.server[1]], "ssl_keyfile needs ssl_certfile"),
        ("a missing certificate file", ["--ssl-certfile", "/nonexistent/cert.pem"], "ssl_certfile '/nonexistent/cert.pem' cannot be read"),
        ("a key of another certificate", ["--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.client[1]], "does not match the certificate"),
        ("an encrypted key (no passphrase prompt)", ["--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.encrypted_key],
         "an encrypted key is not supported"),
        ("a file that is no certificate", ["--ssl-certfile", pki.server[1], "--ssl-keyfile", pki.server[1]], "not a PEM certificate chain"),
        ("ssl_cert_reqs 3", ["--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.server[1], "--ssl-cert-reqs", "3", "--ssl-ca-certs", pki.ca],
         "ssl_cert_reqs must be 0"),
        ("ssl_cert_reqs 2 without ssl_ca_certs", ["--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.server[1], "--ssl-cert-reqs", "2"],
         "needs ssl_ca_certs"),
        ("ssl_ciphers OpenSSL matches nothing with", ["--ssl-certfile", pki.server[0], "--ssl-keyfile", pki.server[1], "--ssl-ciphers", "NO-SUCH"],
         "matches no cipher"),
        ("ssl_ca_certs without HTTPS", ["--ssl-ca-certs", pki.ca], "they need ssl_certfile"),
        ("a uds path that is a regular file", ["--uds", pki.ca], "exists and is not a socket"),
        ("a uds path longer than a socket address holds", ["--uds", "/tmp/" + "s" * 120 + ".sock"], "a Unix socket path holds at most"),
        ("h11_max_header_count 0", ["--h11-max-header-count", "0"], "h11_max_header_count must be at least 1"),
    ]
    if not tls:  # (the options' values are still checked; files and HTTPS itself are refused)
        cases = [c for c in cases if "--ssl-certfile" not in c[1] or c[2] in ("ssl_cert_reqs must be 0", "needs ssl_ca_certs")]
        cases.append(("HTTPS in a build without OpenSSL", ["--ssl-certfile", pki.server[0]], "built without OpenSSL"))
    for name, args, message in cases:
        code, out = run(*args)
        check(f"refused: {name}, with a clear message and a non-zero exit", code not in (0, "timeout") and message in out,
              f"{code}: {out[-400:]}")


def tls_built():
    """Whether this llmserve was built with OpenSSL (CMake finds it where libssl-dev is installed)."""
    p = subprocess.run([LLMSERVE, "serve", "--model", ts.MODEL, "--ssl-certfile", "/nonexistent"], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    return "built without OpenSSL" not in p.stdout + p.stderr


def main():
    os.makedirs(os.path.join(ts.BUILD, "test-out"), exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        pki = Pki(d)
        built = tls_built()
        if built:
            https_checks(pki)
            client_cert_checks(pki)
            refresh_checks(pki, d)
        else:
            print("SKIP the HTTPS checks: this llmserve was built without OpenSSL (no libssl-dev)")
        uds_checks(d)
        api_key_checks()
        header_limit_checks()
        error_checks(pki, built)
    return ts.summary()


if __name__ == "__main__":
    sys.exit(main())
