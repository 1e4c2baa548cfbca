"""TLS (issue 14): termination on listeners (curl, openssl s_client, Python ssl, grpcio), SNI, ALPN,
versions, mutual TLS and x-forwarded-client-cert, TLS toward clusters (a Python ssl server, a grpcio
server with TLS credentials), certificate reloads under keep-alive load, /certs and expiry gauges,
bad TLS config. Certificates are made per test with the openssl CLI (tlspki.py, ECDSA P-256).
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import cluster, http_listener, make_config, poll, remora_bin, route, run_curl, tcp_listener
from tlspki import CA, serial_of

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is needed")

SPIFFE = "spiffe://mesh.local/ns/shop/sa/frontend"


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    ca = CA(d, "ca")
    web = ca.issue("web", dns=["web.test", "localhost"], uris=["spiffe://mesh.local/ns/shop/sa/web"])
    other = ca.issue("api", dns=["api.test"])
    client = ca.issue("client", uris=[SPIFFE], dns=["frontend.shop"])
    rogue_ca = CA(d, "rogue", cn="Rogue CA")
    rogue = rogue_ca.issue("rogue-client", uris=["spiffe://evil/x"])
    return SimpleNamespace(dir=d, ca=ca, web=web, api=other, client=client, rogue_ca=rogue_ca, rogue=rogue)


def tls_listener(pki, name="web", client_ca=False, routes=None, **tls):
    t = {"certificates": [{"cert": str(pki.web[0]), "key": str(pki.web[1])}]}
    if client_ca:
        t["client_ca"] = str(pki.ca.cert)
    t.update(tls)
    return http_listener(name, routes=routes, tls=t)


def client_ctx(pki, cert=None, alpn=None, server_name=True, tls_max=None):
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if tls_max:
        ctx.maximum_version = tls_max
    return ctx


def https_get(port, pki, path="/echo", cert=None, headers=None, host="web.test", timeout=5.0):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx(pki, cert), timeout=timeout)
    conn._tunnel_host = None
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def echo_headers(body: bytes) -> dict:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def s_client(port, *args, stdin=b"", timeout=10):
    p = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-brief", "-ign_eof", *args], input=stdin,
                       capture_output=True, timeout=timeout)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def peer_serial(port, server_name=None, timeout=5.0) -> str:
    """The serial of the certificate the server presents (new connection, full handshake)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=server_name) as t:
            der = t.getpeercert(binary_form=True)
    return serial_of(ssl.DER_cert_to_PEM_cert(der))


# -- termination ----------------------------------------------------------------------------------

def test_curl_http1_and_h2_by_alpn_with_https_scheme(start_remora, http_backend, pki):
    backend = http_backend()
    remora = start_remora(make_config([tls_listener(pki)], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
        r = run_curl(["-sS", flag, "--cacert", str(pki.ca.cert), "--resolve", f"web.test:{port}:127.0.0.1",
                      "-w", "\n%{http_version}", f"https://web.test:{port}/echo"])
        assert r.returncode == 0, r.stderr
        body, got_version = r.stdout.rsplit(b"\n", 1)
        assert got_version.decode() == version
        h = echo_headers(body)
        assert h["x-forwarded-proto"] == "https"
    assert remora.stat("listener.web.ssl_handshake") >= 2
    # plaintext on a TLS port gets no HTTP answer
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        assert b"HTTP/1.1" not in data
    remora.wait_stat("listener.web.ssl_connection_error", lambda v: v >= 1)


def test_pipelined_requests_in_one_record(start_remora, http_backend, pki):
    """Many HTTP/1.1 requests in one TLS record, answered locally and by a backend: every response
    comes back whole and in order (responses are sealed while the record they answer is still being
    parsed: the decrypted requests must not be overwritten by them)."""
    backend = http_backend()
    routes = [{"name": "d", "match": {"path": {"prefix": "/direct/"}}, "direct_response": {"status": 200, "body": "direct-body"}},
              route("app")]
    remora = start_remora(make_config([tls_listener(pki, routes=routes)], [cluster("app", [backend.endpoint])]))
    n = 40
    reqs = b"".join((b"GET /direct/%d HTTP/1.1\r\nHost: web.test\r\nX-Pad: %s\r\n\r\n" % (i, b"p" * 200)) if i % 2 == 0 else
                    (b"GET /echo?i=%d HTTP/1.1\r\nHost: web.test\r\n\r\n" % i) for i in range(n))
    assert len(reqs) < 16384   # one record
    with socket.create_connection(("127.0.0.1", remora.port("web")), timeout=10) as raw:
        with client_ctx(pki).wrap_socket(raw, server_hostname="web.test") as t:
            t.sendall(reqs)
            f = t.makefile("rb")
            for i in range(n):
                status = f.readline()
                assert status.startswith(b"HTTP/1.1 200"), (i, status)
                length = None
                while True:
                    line = f.readline()
                    if line in (b"\r\n", b""):
                        break
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                body = f.read(length)
                if i % 2 == 0:
                    assert body == b"direct-body", (i, body)
                else:
                    assert json.loads(body)["target"] == f"/echo?i={i}", (i, body)


def test_stalled_handshakes_are_cut_by_request_header_timeout(start_remora, pki):
    """Clients that connect and send nothing, or half a ClientHello, are closed after the listener's
    request_header_timeout, while a normal client is served meanwhile."""
    direct = [{"name": "d", "match": {"path": {"prefix": "/"}}, "direct_response": {"status": 200, "body": "ok"}}]
    lst = tls_listener(pki, routes=direct)
    lst["request_header_timeout"] = "1s"
    remora = start_remora(make_config([lst], []))
    port = remora.port("web")
    hello = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-brief"], input=b"",
                           capture_output=True, timeout=10)   # a full handshake, for a real ClientHello's first bytes
    assert b"TLSv1.3" in hello.stdout + hello.stderr
    stalled = []
    for part in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if part:
            s.sendall(part)
        stalled.append(s)
    t0 = time.monotonic()
    status, body, _ = https_get(port, pki, path="/")
    assert status == 200 and body == b"ok"
    for s in stalled:
        with s:
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            assert not data.startswith(b"HTTP"), data
    assert time.monotonic() - t0 < 5
    remora.wait_stat("listener.web.downstream_rq_timeout", lambda v: v >= 2)


def test_tls12_and_tls13_and_min_version(start_remora, pki):
    direct = [{"name": "d", "match": {"path": {"prefix": "/"}}, "direct_response": {"status": 200, "body": "ok"}}]
    remora = start_remora(make_config([tls_listener(pki, routes=direct),
                                       tls_listener(pki, name="strict", routes=direct, min_version="1.3")], []))
    for flag, proto in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = s_client(remora.port("web"), flag, "-CAfile", str(pki.ca.cert), stdin=b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert f"Protocol version: {proto}" in out, out
        assert "HTTP/1.1 200" in out, out
    req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = s_client(remora.port("strict"), "-tls1_2", "-CAfile", str(pki.ca.cert), stdin=req)
    assert "Protocol version: TLSv1.2" not in out and "HTTP/1.1 200" not in out, out
    out = s_client(remora.port("strict"), "-tls1_3", "-CAfile", str(pki.ca.cert), stdin=req)
    assert "Protocol version: TLSv1.3" in out and "HTTP/1.1 200" in out, out


def test_sni_picks_the_certificate(start_remora, pki):
    lst = tls_listener(pki, routes=[{"name": "d", "match": {"path": {"prefix": "/"}},
                                      "direct_response": {"status": 200, "body": "ok"}}])
    lst["tls"]["certificates"].append({"cert": str(pki.api[0]), "key": str(pki.api[1])})
    remora = start_remora(make_config([lst], []))
    port = remora.port("web")
    web_serial = serial_of(pki.web[0].read_text())
    api_serial = serial_of(pki.api[0].read_text())
    assert peer_serial(port, "api.test") == api_serial
    assert peer_serial(port, "web.test") == web_serial
    assert peer_serial(port, "unknown.test") == web_serial   # the first is the default
    assert peer_serial(port, None) == web_serial
    # curl verifies the name it asked for
    r = run_curl(["-sS", "--cacert", str(pki.ca.cert), "--resolve", f"api.test:{port}:127.0.0.1", f"https://api.test:{port}/"])
    assert r.returncode == 0 and r.stdout == b"ok", r.stderr


def test_alpn_offer_outside_the_list_is_refused(start_remora, pki):
    remora = start_remora(make_config([tls_listener(pki, alpn=["http/1.1"])], [cluster("app", ["127.0.0.1:9"])]))
    ctx = client_ctx(pki, alpn=["h2"])
    with socket.create_connection(("127.0.0.1", remora.port("web")), timeout=5) as s:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s, server_hostname="web.test")
    ctx = client_ctx(pki, alpn=["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", remora.port("web")), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="web.test") as t:
            assert t.selected_alpn_protocol() == "http/1.1"


def test_session_tickets_resume(start_remora, pki):
    remora = start_remora(make_config([tls_listener(pki, routes=[{"name": "d", "match": {"path": {"prefix": "/"}},
                                                                  "direct_response": {"status": 204}}])], []))
    port = remora.port("web")
    ctx = client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2   # the session is known right after the handshake
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, ctx.wrap_socket(s, server_hostname="web.test") as t:
        sess = t.session
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="web.test", session=sess) as t:
        assert t.session_reused
    remora.wait_stat("listener.web.ssl_session_reused", lambda v: v >= 1)


# -- mutual TLS -----------------------------------------------------------------------------------

def test_mtls_identity_forwarded_and_refusals(start_remora, http_backend, pki, tmp_path):
    backend = http_backend()
    lst = tls_listener(pki, client_ca=True)
    log = tmp_path / "access.log"
    lst["access_log"] = {"path": str(log), "format": "json"}
    remora = start_remora(make_config([lst], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    status, body, _ = https_get(port, pki, cert=pki.client, headers={"X-Forwarded-Client-Cert": "By=forged;URI=spiffe://evil"})
    assert status == 200
    xfcc = echo_headers(body)["x-forwarded-client-cert"]
    parts = xfcc.split(";")
    assert parts[0] == "By=spiffe://mesh.local/ns/shop/sa/web"
    assert parts[1].startswith("Hash=") and len(parts[1]) == 5 + 64
    assert f"URI={SPIFFE}" in parts and "DNS=frontend.shop" in parts
    assert "forged" not in xfcc
    # without a certificate, or with another CA's: refused, counted
    for cert, stat in ((None, "listener.web.ssl_fail_verify_no_cert"), (pki.rogue, "listener.web.ssl_fail_verify_error")):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
            https_get(port, pki, cert=cert)
        remora.wait_stat(stat, lambda v: v >= 1, what=stat)
    # the access log carries the identity
    def logged():
        lines = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
        return [l for l in lines if l.get("downstream_peer_identity")]
    lines = poll(logged, timeout=5, what="an access log line with the peer identity")
    assert lines[0]["downstream_peer_identity"] == SPIFFE


def test_forged_xfcc_removed_without_mtls(start_remora, http_backend, pki):
    backend = http_backend()
    remora = start_remora(make_config([tls_listener(pki), http_listener("plain")], [cluster("app", [backend.endpoint])]))
    _, body, _ = https_get(remora.port("web"), pki, headers={"x-forwarded-client-cert": "URI=spiffe://forged"})
    assert "x-forwarded-client-cert" not in echo_headers(body)
    r = run_curl(["-sS", "-H", "X-Forwarded-Client-Cert: URI=spiffe://forged", f"http://127.0.0.1:{remora.port('plain')}/echo"])
    assert "x-forwarded-client-cert" not in echo_headers(r.stdout)
    r = run_curl(["-sS", "--http2-prior-knowledge", "-H", "x-forwarded-client-cert: URI=spiffe://forged",
                  f"http://127.0.0.1:{remora.port('plain')}/echo"])
    assert "x-forwarded-client-cert" not in echo_headers(r.stdout)


def test_allow_plaintext_serves_both_on_one_port(start_remora, http_backend, pki, tcp_backend):
    """allow_plaintext (permissive mTLS): TLS clients get TLS (and their identity), plaintext clients
    h1 and h2c get plaintext with scheme http and no identity; a forged XFCC is removed from both."""
    backend = http_backend()
    echo = tcp_backend()
    lst = tls_listener(pki, client_ca=True, allow_plaintext=True)
    t = {"certificates": [{"cert": str(pki.web[0]), "key": str(pki.web[1])}], "allow_plaintext": True}
    remora = start_remora(make_config([lst, tcp_listener("raw", "echo", tls=t)],
                                      [cluster("app", [backend.endpoint]), cluster("echo", [echo.endpoint])]))
    port = remora.port("web")
    forged = "X-Forwarded-Client-Cert: URI=spiffe://forged"
    # mTLS client: TLS, identity forwarded
    r = run_curl(["-sS", "--cacert", str(pki.ca.cert), "--cert", str(pki.client[0]), "--key", str(pki.client[1]),
                  "-H", forged, "--resolve", f"web.test:{port}:127.0.0.1", f"https://web.test:{port}/echo"])
    assert r.returncode == 0, r.stderr
    h = echo_headers(r.stdout)
    assert h["x-forwarded-proto"] == "https" and f"URI={SPIFFE}" in h["x-forwarded-client-cert"].split(";")
    # plaintext clients, HTTP/1.1 and h2c with prior knowledge, on the same port
    for flags in ([], ["--http2-prior-knowledge"]):
        r = run_curl(["-sS", *flags, "-H", forged, "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/echo"])
        assert r.returncode == 0, r.stderr
        body, version = r.stdout.rsplit(b"\n", 1)
        assert version.decode() == ("2" if flags else "1.1")
        h = echo_headers(body)
        assert h["x-forwarded-proto"] == "http"
        assert "x-forwarded-client-cert" not in h
    remora.wait_stat("listener.web.ssl_plaintext_accepted", lambda v: v == 2)
    # mTLS is still required of TLS clients
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        https_get(port, pki)
    remora.wait_stat("listener.web.ssl_fail_verify_no_cert", lambda v: v >= 1)
    # a tcp listener: raw bytes and TLS both reach the echo backend
    raw = remora.port("raw")
    def echoed(sock, data):
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(100)
            if not chunk:
                break
            got += chunk
        return got
    with socket.create_connection(("127.0.0.1", raw), timeout=5) as s:
        assert echoed(s, b"plain bytes") == b"plain bytes"
    with socket.create_connection(("127.0.0.1", raw), timeout=5) as s:
        with client_ctx(pki).wrap_socket(s, server_hostname="web.test") as ts:
            assert echoed(ts, b"sealed bytes") == b"sealed bytes"
    remora.wait_stat("listener.raw.ssl_plaintext_accepted", lambda v: v == 1)
    remora.wait_stat("listener.raw.ssl_handshake", lambda v: v == 1)


@pytest.mark.parametrize("mixed", [False, True], ids=["tls", "allow_plaintext"])
def test_tcp_listener_upstream_that_speaks_first(start_remora, pki, mixed):
    """A TLS tcp listener whose upstream greets first: the greeting, written during the handshake,
    reaches the client sealed once it is done; with allow_plaintext it waits for the client's first
    byte and reaches a plaintext client unsealed."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    def greeter():
        for _ in range(2 if mixed else 1):
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                c.settimeout(10)
                c.sendall(b"HELLO ")
                try:
                    data = c.recv(100)
                    if data:
                        c.sendall(data)
                    c.recv(100)   # until the client goes
                except OSError:
                    pass
    th = threading.Thread(target=greeter, daemon=True)
    th.start()
    t = {"certificates": [{"cert": str(pki.web[0]), "key": str(pki.web[1])}]}
    if mixed:
        t["allow_plaintext"] = True
    remora = start_remora(make_config([tcp_listener("raw", "greeter", tls=t)],
                                      [cluster("greeter", [f"127.0.0.1:{srv.getsockname()[1]}"])]))
    raw = remora.port("raw")
    def exchange(sock):
        time.sleep(0.3)   # the greeting reaches Remora before the client's first byte
        sock.sendall(b"x")
        got = b""
        while len(got) < 7:
            chunk = sock.recv(100)
            if not chunk:
                break
            got += chunk
        return got
    try:
        if mixed:
            with socket.create_connection(("127.0.0.1", raw), timeout=5) as s:
                assert exchange(s) == b"HELLO x"
        with socket.create_connection(("127.0.0.1", raw), timeout=5) as s:
            with client_ctx(pki).wrap_socket(s, server_hostname="web.test") as ts:
                assert exchange(ts) == b"HELLO x"
    finally:
        srv.close()
        th.join(10)


def test_grpc_with_tls_channel_credentials(start_remora, pki):
    grpc = pytest.importorskip("grpc")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend
    backend = GRPCBackend("A")
    try:
        remora = start_remora(make_config([tls_listener(pki, routes=[route("grpc")])],
                                          [cluster("grpc", [backend.endpoint], protocol="http2")]))
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert.read_bytes())
        ch = grpc.secure_channel(f"127.0.0.1:{remora.port('web')}", creds,
                                 options=[("grpc.ssl_target_name_override", "web.test"), ("grpc.enable_http_proxy", 0)])
        try:
            stub = echo_pb2_grpc.EchoStub(ch)
            reply = stub.Unary(echo_pb2.EchoRequest(message="over tls"), timeout=5)
            assert reply.message == "over tls"
            assert reply.metadata.get("x-forwarded-proto") == "https"
        finally:
            ch.close()
    finally:
        backend.stop(None).wait(5)


# -- origination (clusters) -----------------------------------------------------------------------

class TLSBackend:
    """A threaded HTTP/1.1 server over TLS that answers with the request's headers (and the client
    certificate's subject, when it sent one)."""

    def __init__(self, cert, key, client_ca=None, alpn=None):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                peer = self.connection.getpeercert()
                outer.requests.append((id(self.connection), self.request_version, self.path))
                n = int(self.headers.get("content-length") or 0)
                got = self.rfile.read(n) if n else b""
                body = json.dumps({"headers": [[k, v] for k, v in self.headers.items()],
                                   "client": dict(x[0] for x in peer["subject"]) if peer else None,
                                   "proto": "http/1.1", "path": self.path, "body": len(got)}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *a):
                pass

        self.requests = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca:
            ctx.load_verify_locations(str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_backend():
    made = []

    def make(*a, **kw):
        b = TLSBackend(*a, **kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def test_upstream_tls_verification(start_remora, tls_backend, pki):
    ca = pki.ca
    app = ca.issue("app", dns=["app.shop.svc"], uris=["spiffe://mesh.local/ns/shop/sa/app"])
    b = tls_backend(*app)
    good = {"ca": str(ca.cert), "server_name": "app.shop.svc", "verify_san": ["spiffe://mesh.local/ns/shop/sa/app"]}
    clusters = [
        cluster("good", [b.endpoint], tls=good),
        cluster("dns", [b.endpoint], tls={"ca": str(ca.cert), "verify_san": ["*.shop.svc", "app.shop.svc"]}),
        cluster("wrongca", [b.endpoint], tls={"ca": str(pki.rogue_ca.cert)}),
        cluster("wrongsan", [b.endpoint], tls={"ca": str(ca.cert), "verify_san": ["spiffe://mesh.local/ns/shop/sa/db"]}),
        cluster("plain", [b.endpoint]),
    ]
    routes = [route(c["name"], name=c["name"], prefix=f"/{c['name']}/") for c in clusters]
    remora = start_remora(make_config([http_listener("web", routes=routes)], clusters))
    port = remora.port("web")
    for name in ("good", "dns"):
        r = run_curl(["-sS", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/{name}/x"])
        body, code = r.stdout.rsplit(b"\n", 1)
        assert code == b"200", (name, r.stdout, remora.stderr_tail())
        assert echo_headers(body)["x-forwarded-proto"] == "http"
    for name in ("wrongca", "wrongsan"):
        r = run_curl(["-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/{name}/x"])
        assert r.stdout == b"503", name
        remora.wait_stat(f"cluster.{name}.ssl_fail_verify_error", lambda v: v >= 1)
    poll(lambda: "verify_san" in remora.stderr_tail() and "certificate verify failed" in remora.stderr_tail(),
         timeout=5, what="log lines for both verification failures")
    # a new connection per request resumes the cluster's last session
    for _ in range(3):
        run_curl(["-sS", "-o", "/dev/null", "-H", "Connection: close", f"http://127.0.0.1:{port}/good/x"])
        subprocess.run(["true"])
    assert remora.stat("cluster.good.ssl_handshake") >= 1


def test_upstream_mtls_client_certificate(start_remora, tls_backend, pki):
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    sidecar = pki.ca.issue("sidecar", uris=["spiffe://mesh.local/ns/shop/sa/sidecar"], cn="sidecar")
    b = tls_backend(*app, client_ca=pki.ca.cert)
    clusters = [cluster("m", [b.endpoint], tls={"ca": str(pki.ca.cert), "server_name": "app.shop.svc",
                                                  "cert": str(sidecar[0]), "key": str(sidecar[1])}),
                cluster("nocert", [b.endpoint], tls={"ca": str(pki.ca.cert)})]
    routes = [route("m", name="m", prefix="/m/"), route("nocert", name="nocert", prefix="/nocert/")]
    remora = start_remora(make_config([http_listener("web", routes=routes)], clusters))
    r = run_curl(["-sS", f"http://127.0.0.1:{remora.port('web')}/m/x"])
    assert json.loads(r.stdout)["client"] == {"commonName": "sidecar"}
    # The server refuses us: with TLS 1.3 its alert comes after our side finished the handshake and
    # sent the request (502, the connection reset), with TLS 1.2 during the handshake (503).
    r = run_curl(["-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{remora.port('web')}/nocert/x"])
    assert r.stdout in (b"502", b"503")


def test_upstream_h2_over_tls_to_grpc(start_remora, pki):
    grpc = pytest.importorskip("grpc")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend
    app = pki.ca.issue("grpcapp", dns=["grpc.shop.svc"])
    creds = grpc.ssl_server_credentials([(app[1].read_bytes(), app[0].read_bytes())])
    backend = GRPCBackend("T", credentials=creds)
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[route("g")])],
            [cluster("g", [backend.endpoint], protocol="http2",
                     tls={"ca": str(pki.ca.cert), "server_name": "grpc.shop.svc", "verify_san": ["grpc.shop.svc"]})]))
        ch = grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}", options=[("grpc.enable_http_proxy", 0)])
        try:
            reply = echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(message="h2 over tls"), timeout=5)
            assert reply.message == "h2 over tls" and reply.backend == "T"
        finally:
            ch.close()
        assert remora.stat("cluster.g.ssl_handshake") >= 1
    finally:
        backend.stop(None).wait(5)


# -- reloads, /certs, expiry ----------------------------------------------------------------------

def test_cert_files_replaced_under_keepalive_load(start_remora, http_backend, pki):
    backend = http_backend()
    live_dir = pki.dir / "live"
    live_dir.mkdir()
    cert, key = live_dir / "web.pem", live_dir / "web-key.pem"
    shutil.copy(pki.web[0], cert)
    shutil.copy(pki.web[1], key)
    lst = http_listener("web", tls={"certificates": [{"cert": str(cert), "key": str(key)}]})
    remora = start_remora(make_config([lst], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    old_serial = serial_of(cert.read_text())
    assert peer_serial(port, "web.test") == old_serial
    stop = threading.Event()
    failures, counts = [], [0] * 4

    def client(i):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx(pki), timeout=5)
        try:
            while not stop.is_set():
                conn.request("GET", "/echo", headers={"Host": "web.test"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    failures.append(r.status)
                counts[i] += 1
        except Exception as e:   # noqa: BLE001
            failures.append(repr(e))
        finally:
            conn.close()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        # A bad key first: refused, the old certificate stays.
        key.write_text("not a key\n")
        remora_log = lambda: remora.stderr_tail()   # noqa: E731
        poll(lambda: "TLS reload refused" in remora_log(), timeout=5, what="the refused reload")
        assert peer_serial(port, "web.test") == old_serial
        # Then a new pair, each file renamed into place.
        new = pki.ca.issue("web2", dns=["web.test"])
        os.replace(new[1], key)
        os.replace(new[0], cert)
        new_serial = serial_of(cert.read_text())
        poll(lambda: peer_serial(port, "web.test") == new_serial, timeout=5, what="the new certificate served")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == [], failures
    assert all(c > 0 for c in counts)
    s = remora.stats()
    assert s.get("tls.cert_reload_failed", 0) >= 1 and s.get("tls.cert_reload", 0) >= 1


def test_certs_endpoint_and_expiry_gauge(start_remora, tls_backend, pki):
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    b = tls_backend(*app)
    remora = start_remora(make_config([tls_listener(pki, client_ca=True)],
                                      [cluster("app", [b.endpoint], tls={"ca": str(pki.ca.cert)})]))
    certs = json.loads(remora.admin_get("/certs").body)["certificates"]
    names = {c["name"]: c for c in certs}
    assert set(names) == {"listener.web.certificates[0]", "listener.web.client_ca", "cluster.app.ca"}
    web = names["listener.web.certificates[0]"]
    assert web["dns_sans"] == ["web.test", "localhost"] and web["path"] == str(pki.web[0])
    assert 29 * 86400 < web["seconds_left"] <= 30 * 86400
    s = remora.stats()
    assert 29 * 86400 < s["tls.listener.web.certificates[0].cert_expiry_seconds"] <= 30 * 86400
    prom = remora.admin_get("/stats/prometheus").body.decode()
    assert 'envoy_tls_cert_expiry_seconds{name="listener.web.certificates[0]"}' in prom


@pytest.mark.parametrize("problem", ["missing", "mismatch"])
def test_bad_tls_config_is_refused_with_file_line_field(start_remora, pki, problem):
    key = str(pki.web[1]) if problem == "missing" else str(pki.api[1])
    cert = str(pki.dir / "nope.pem") if problem == "missing" else str(pki.web[0])
    direct = [{"name": "d", "match": {"path": {"prefix": "/"}}, "direct_response": {"status": 200}}]
    lst = http_listener("web", routes=direct, tls={"certificates": [{"cert": cert, "key": key}]})
    remora = start_remora(make_config([lst], []), wait=False)
    assert remora.proc.wait(10) != 0
    err = remora.stderr_tail()
    field = "listeners.web.tls.certificates[0].cert" if problem == "missing" else "listeners.web.tls.certificates[0].key"
    assert field in err, err
    assert f"{remora.config_path}:" in err and ":0:" not in err.split(field)[0][-10:], err
    if problem == "mismatch":
        assert "does not match" in err
    else:
        assert "nope.pem" in err
    v = subprocess.run([str(remora_bin()), "validate", str(remora.config_path)], capture_output=True, timeout=20)
    assert v.returncode == 1 and field in v.stderr.decode(), v.stderr


def test_tcp_listener_terminates_tls(start_remora, tcp_backend, pki):
    backend = tcp_backend()
    lst = tcp_listener("tcp", "echo", tls={"certificates": [{"cert": str(pki.web[0]), "key": str(pki.web[1])}]})
    remora = start_remora(make_config([lst], [cluster("echo", [backend.endpoint])]))
    with socket.create_connection(("127.0.0.1", remora.port("tcp")), timeout=5) as s:
        with client_ctx(pki).wrap_socket(s, server_hostname="web.test") as t:
            assert t.selected_alpn_protocol() is None
            t.sendall(b"ping over tls")
            got = b""
            while len(got) < 13:
                chunk = t.recv(100)
                if not chunk:
                    break
                got += chunk
            assert got == b"ping over tls"


def test_parked_connections_keep_working(start_remora, http_backend, pki):
    """An idle connection gives back its TLS record buffers after 1 s (parked); the next request
    on it works, over HTTP/1.1 and HTTP/2."""
    backend = http_backend()
    remora = start_remora(make_config([tls_listener(pki)], [cluster("app", [backend.endpoint])]))
    conn = http.client.HTTPSConnection("127.0.0.1", remora.port("web"), context=client_ctx(pki), timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/bytes/100000", headers={"Host": "web.test"})
            r = conn.getresponse()
            assert r.status == 200 and len(r.read()) == 100000
            time.sleep(1.3)
    finally:
        conn.close()
    # HTTP/2 (hyper-h2 over the ssl module), a pause between the streams
    import h2.config
    import h2.connection
    import h2.events
    with socket.create_connection(("127.0.0.1", remora.port("web")), timeout=5) as raw:
        with client_ctx(pki, alpn=["h2"]).wrap_socket(raw, server_hostname="web.test") as t:
            assert t.selected_alpn_protocol() == "h2"
            c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            c.initiate_connection()
            t.sendall(c.data_to_send())
            for stream in (1, 3):
                c.send_headers(stream, [(":method", "GET"), (":path", "/bytes/50000"), (":scheme", "https"),
                                        (":authority", "web.test")], end_stream=True)
                t.sendall(c.data_to_send())
                got, done, deadline = 0, False, time.monotonic() + 5
                while not done and time.monotonic() < deadline:
                    for ev in c.receive_data(t.recv(65536)):
                        if isinstance(ev, h2.events.DataReceived):
                            got += len(ev.data)
                            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream:
                            done = True
                    t.sendall(c.data_to_send())
                assert done and got == 50000
                time.sleep(1.3)
    assert remora.stat("listener.web.ssl_handshake") == 2


def test_health_checks_use_the_cluster_tls(start_remora, tls_backend, pki):
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    b = tls_backend(*app)
    hc = {"http": {"path": "/healthz"}, "interval": "100ms", "timeout": "1s", "unhealthy_threshold": 2,
          "healthy_threshold": 1}
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("good", name="good", prefix="/good/"), route("bad", name="bad", prefix="/bad/")])],
        [cluster("good", [b.endpoint], tls={"ca": str(pki.ca.cert), "verify_san": ["app.shop.svc"]}, health_check=hc),
         cluster("bad", [b.endpoint], tls={"ca": str(pki.ca.cert), "verify_san": ["db.shop.svc"]}, health_check=hc)]))
    remora.wait_stat("cluster.good.health_check.success", lambda v: v >= 3, timeout=5)
    remora.wait_stat("cluster.bad.health_check.failure", lambda v: v >= 3, timeout=5)
    assert remora.stat("cluster.good.health_check.failure") == 0
    assert remora.stat("cluster.good.health_check.healthy") == 1
    assert remora.stat("cluster.bad.health_check.healthy") == 0


def test_close_expired_upstream_connection_not_reused(start_remora, tls_backend, pki):
    """A cluster's pooled connection made with a client certificate that has since expired is not
    given another request: the next one goes on a new connection with the renewed certificate."""
    import datetime
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    b = tls_backend(*app, client_ca=pki.ca.cert)
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=4)
    cert, key = pki.ca.issue_until("short", end, uris=["spiffe://mesh.local/ns/shop/sa/short"])
    tls = {"ca": str(pki.ca.cert), "server_name": "app.shop.svc", "cert": str(cert), "key": str(key)}
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [b.endpoint], tls=tls)], workers=1))
    url = f"http://127.0.0.1:{remora.port('web')}/x"
    def client_cn():
        r = run_curl(["-sS", url])
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["client"]["commonName"]
    assert client_cn() == "short"
    assert client_cn() == "short"   # the pooled connection
    pki.ca.issue("renewed", uris=["spiffe://mesh.local/ns/shop/sa/short"], out=cert.with_name("short"))
    poll(lambda: remora.stats().get("tls.cert_reload", 0) >= 1, timeout=5, what="the renewed certificate loaded")
    time.sleep(max(0.0, (end - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.2)
    assert client_cn() == "renewed"
    assert remora.stat("cluster.app.ssl_connection_expired") == 1
    assert remora.stat("cluster.app.ssl_handshake") == 2


def test_close_expired_upstream_h2_connection_goes_away(start_remora, pki):
    """The same toward an HTTP/2 cluster (grpcio requiring client certificates): after the client
    certificate expires, the next call opens a new connection; the old one is retired."""
    import datetime
    grpc = pytest.importorskip("grpc")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend
    app = pki.ca.issue("grpcapp", dns=["grpc.shop.svc"])
    creds = grpc.ssl_server_credentials([(app[1].read_bytes(), app[0].read_bytes())],
                                        root_certificates=pki.ca.cert.read_bytes(), require_client_auth=True)
    backend = GRPCBackend("T", credentials=creds)
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=4)
    cert, key = pki.ca.issue_until("short", end, uris=["spiffe://mesh.local/ns/shop/sa/short"])
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[route("g")])],
            [cluster("g", [backend.endpoint], protocol="http2",
                     tls={"ca": str(pki.ca.cert), "server_name": "grpc.shop.svc", "cert": str(cert), "key": str(key)})],
            workers=1))
        ch = grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}", options=[("grpc.enable_http_proxy", 0)])
        try:
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(2):
                assert stub.Unary(echo_pb2.EchoRequest(message="a"), timeout=5).message == "a"
            assert remora.stat("cluster.g.ssl_handshake") == 1
            pki.ca.issue("renewed", out=cert.with_name("short"))
            poll(lambda: remora.stats().get("tls.cert_reload", 0) >= 1, timeout=5, what="the renewed certificate loaded")
            time.sleep(max(0.0, (end - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.2)
            assert stub.Unary(echo_pb2.EchoRequest(message="b"), timeout=5).message == "b"
        finally:
            ch.close()
        assert remora.stat("cluster.g.ssl_connection_expired") == 1
        assert remora.stat("cluster.g.ssl_handshake") == 2
        remora.wait_stat("cluster.g.upstream_cx_active", lambda v: v == 1, what="the expired connection closed")
    finally:
        backend.stop(None).wait(5)


def test_close_expired_closes_connections_whose_client_cert_expired(start_remora, http_backend, pki):
    import datetime
    backend = http_backend()
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=4)
    short = pki.ca.issue_until("short", end, uris=["spiffe://mesh.local/ns/shop/sa/short"])
    remora = start_remora(make_config([tls_listener(pki, client_ca=True)], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    conns = {}
    for name, cert in (("short", short), ("long", pki.client)):
        c = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx(pki, cert), timeout=5)
        c.request("GET", "/echo", headers={"Host": "web.test"})
        r = c.getresponse()
        assert r.status == 200
        assert echo_headers(r.read())["x-forwarded-client-cert"]
        conns[name] = c
    try:
        remora.wait_stat("listener.web.ssl_connection_expired", lambda v: v >= 1, timeout=10)
        # the expired one was closed: reading it gives EOF; the other still serves on the same connection
        s = conns["short"].sock
        s.settimeout(3)
        assert s.recv(100) == b""
        conns["long"].request("GET", "/echo", headers={"Host": "web.test"})
        r = conns["long"].getresponse()
        assert r.status == 200 and r.read()
        assert remora.stat("listener.web.ssl_connection_expired") == 1
        assert remora.stat("listener.web.ssl_handshake") == 2
    finally:
        for c in conns.values():
            c.close()


def test_tcp_listener_toward_a_tls_cluster(start_remora, tls_backend, pki):
    """A tcp listener whose cluster has `tls:` seals the bytes toward it (mutual TLS with `cert`), as a
    sidecar's `mtls` tcp service does; a client that sends and half-closes at once (its FIN arrives
    during the upstream handshake) still gets its bytes through and the answer back."""
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    sidecar = pki.ca.issue("sidecar", uris=["spiffe://mesh.local/ns/shop/sa/sidecar"], cn="sidecar")
    b = tls_backend(*app, client_ca=pki.ca.cert)
    tls = {"ca": str(pki.ca.cert), "verify_san": ["app.shop.svc"], "cert": str(sidecar[0]), "key": str(sidecar[1])}
    remora = start_remora(make_config([tcp_listener("tcp", "app")], [cluster("app", [b.endpoint], tls=tls)]))
    with socket.create_connection(("127.0.0.1", remora.port("tcp")), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 200"), (got, remora.stderr_tail())
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["client"] == {"commonName": "sidecar"}
    assert remora.stat("cluster.app.ssl_handshake") == 1


# -- protocol: auto (the server's ALPN answer picks HTTP/2 or HTTP/1.1 per connection) -------------

class H2TLSBackend:
    """A TLS server that selects ALPN h2 and speaks HTTP/2 (hyper-h2), one thread per connection; it
    answers every request with JSON saying so, and counts connections and streams."""

    def __init__(self, cert, key):
        import h2.config  # noqa: F401
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.streams = []
        self.alive = True
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    def accept(self):
        while self.alive:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self.serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def serve(self, raw):
        import h2.config
        import h2.connection
        import h2.events
        raw.settimeout(10)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        heads, bodies = {}, {}
        try:
            while self.alive:
                data = s.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        heads[ev.stream_id] = dict(ev.headers)
                        bodies[ev.stream_id] = 0
                    elif isinstance(ev, h2.events.DataReceived):
                        bodies[ev.stream_id] = bodies.get(ev.stream_id, 0) + len(ev.data)
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        h = heads.get(ev.stream_id, {})
                        self.streams.append(h.get(":path"))
                        body = json.dumps({"proto": "h2", "path": h.get(":path"), "body": bodies.get(ev.stream_id, 0),
                                           "headers": [[k, v] for k, v in h.items()]}).encode()
                        conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                        conn.send_data(ev.stream_id, body, end_stream=True)
                s.sendall(conn.data_to_send())
        except (ssl.SSLError, OSError, Exception):
            pass
        finally:
            s.close()

    def close(self):
        self.alive = False
        self.sock.close()


@pytest.fixture
def alpn_servers(pki, tls_backend):
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    h2srv = H2TLSBackend(*app)
    h1srv = tls_backend(*app, alpn=["http/1.1"])
    yield h2srv, h1srv
    h2srv.close()


def fetch(port, path, method="GET", body=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": "remora.test"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_auto_cluster_speaks_what_each_server_selects(start_remora, pki, alpn_servers):
    """One `alpn: [h2, http/1.1]` cluster (protocol auto, implied) over two endpoints: a hyper-h2
    server that selects h2 and a Python ssl server that selects http/1.1. Each request reaches its
    endpoint in the protocol that endpoint's server chose; the first requests, sent at once before any
    handshake finished, are all answered too (the connection opened for h2 to the HTTP/1.1 server
    switches, its streams move to HTTP/1.1 connections), and afterwards each pool keeps its kind:
    the HTTP/2 server sees one connection, the HTTP/1.1 one reused keep-alive connections."""
    h2srv, h1srv = alpn_servers
    tls = {"ca": str(pki.ca.cert), "server_name": "app.shop.svc", "alpn": ["h2", "http/1.1"]}
    remora = start_remora(make_config([http_listener("web", routes=[route("app")])],
                                      [cluster("app", [h2srv.endpoint, h1srv.endpoint], lb="round_robin", tls=tls)],
                                      workers=1))
    port = remora.port("web")
    with futures.ThreadPoolExecutor(12) as pool:
        jobs = [pool.submit(fetch, port, f"/burst/{i}", *(("POST", b"x" * 1000) if i % 3 == 0 else ()))
                for i in range(12)]
        got = [j.result() for j in jobs]
    for status, body in got:
        assert status == 200, (body, remora.stderr_tail())
    burst = [json.loads(b) for _, b in got]
    assert {b["proto"] for b in burst} == {"h2", "http/1.1"}
    assert all(b["body"] == 1000 for b in burst if b["path"].endswith(("/0", "/3", "/6", "/9"))), burst
    for i in range(20):
        status, body = fetch(port, f"/seq/{i}")
        assert status == 200, body
    seq = [p for p in h2srv.streams if p.startswith("/seq/")]
    seq1 = [r for r in h1srv.requests if r[2].startswith("/seq/")]
    assert len(seq) == 10 and len(seq1) == 10, (seq, seq1)
    assert all(r[1] == "HTTP/1.1" for r in h1srv.requests)
    assert len({r[0] for r in seq1}) == 1, "sequential HTTP/1.1 requests reuse one pooled connection"
    assert h2srv.connections == 1, "one HTTP/2 connection carries every stream to the h2 server"
    assert remora.stat("cluster.app.upstream_cx_http2_total") == 1
    assert remora.stat("cluster.app.upstream_cx_http1_total") >= 1
    assert remora.stat("cluster.app.upstream_cx_alpn_switched") >= 1
    assert remora.stat("cluster.app.upstream_rq_5xx") == 0


def test_auto_cluster_preferring_http1_switches_to_h2(start_remora, pki, alpn_servers):
    """`alpn: [http/1.1, h2]`: a new endpoint is tried in HTTP/1.1; the h2 server's answer moves the
    connection to HTTP/2 (the request goes as a stream on it) and later requests go there too."""
    h2srv, _ = alpn_servers
    tls = {"ca": str(pki.ca.cert), "server_name": "app.shop.svc", "alpn": ["http/1.1", "h2"]}
    remora = start_remora(make_config([http_listener("web", routes=[route("app")])],
                                      [cluster("app", [h2srv.endpoint], tls=tls)], workers=1))
    for i in range(5):
        status, body = fetch(remora.port("web"), f"/x/{i}", *(("POST", b"y" * 300) if i == 0 else ()))
        assert status == 200, (body, remora.stderr_tail())
        assert json.loads(body)["proto"] == "h2"
    assert json.loads(fetch(remora.port("web"), "/y", "POST", b"z" * 10)[1])["body"] == 10
    assert h2srv.connections == 1
    assert remora.stat("cluster.app.upstream_cx_alpn_switched") == 1
    assert remora.stat("cluster.app.upstream_cx_http2_total") == 1


@pytest.mark.parametrize("alpn", [["h2", "http/1.1"], ["http/1.1", "h2"]])
def test_grpc_over_an_auto_cluster(start_remora, pki, alpn):
    """gRPC to a grpcio server with TLS credentials through a cluster with `protocol: auto`: the
    server selects h2 whatever is preferred, so the calls go as HTTP/2 streams."""
    grpc = pytest.importorskip("grpc")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend
    app = pki.ca.issue("grpcapp", dns=["grpc.shop.svc"])
    creds = grpc.ssl_server_credentials([(app[1].read_bytes(), app[0].read_bytes())])
    backend = GRPCBackend("T", credentials=creds)
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[route("g")])],
            [cluster("g", [backend.endpoint], protocol="auto",
                     tls={"ca": str(pki.ca.cert), "server_name": "grpc.shop.svc", "alpn": alpn})], workers=1))
        ch = grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}", options=[("grpc.enable_http_proxy", 0)])
        try:
            stub = echo_pb2_grpc.EchoStub(ch)
            for i in range(3):
                reply = stub.Unary(echo_pb2.EchoRequest(message=f"auto {i}"), timeout=5)
                assert reply.message == f"auto {i}" and reply.backend == "T"
        finally:
            ch.close()
        assert remora.stat("cluster.g.upstream_cx_http2_total") == 1
        assert remora.stat("cluster.g.upstream_cx_alpn_switched") == (1 if alpn[0] == "http/1.1" else 0)
    finally:
        backend.stop(None).wait(5)


# -- peer identities in Istio's metrics -----------------------------------------------------------

def test_peer_identities_label_istio_metrics(start_remora, tls_backend, pki):
    """`istio_requests_total` and `istio_request_duration_milliseconds` carry `source_principal` (the
    client certificate's identity), `destination_principal` (the upstream server certificate's) and
    `connection_security_policy` (`mutual_tls` / `none`), parsed with prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families
    app_id = "spiffe://mesh.local/ns/shop/sa/app"
    app = pki.ca.issue("app", dns=["app.shop.svc"], uris=[app_id])
    other = pki.ca.issue("batch", uris=["spiffe://mesh.local/ns/other/sa/batch"])
    b = tls_backend(*app)
    tls = {"ca": str(pki.ca.cert), "verify_san": [app_id]}
    remora = start_remora(make_config(
        [tls_listener(pki, client_ca=True, routes=[route("app")]), http_listener("plain", routes=[route("app")])],
        [cluster("app", [b.endpoint], tls=tls)]))
    sent = {SPIFFE: 3, "spiffe://mesh.local/ns/other/sa/batch": 2}
    for _ in range(sent[SPIFFE]):
        assert https_get(remora.port("web"), pki, path="/a", cert=pki.client)[0] == 200
    for _ in range(sent["spiffe://mesh.local/ns/other/sa/batch"]):
        assert https_get(remora.port("web"), pki, path="/b", cert=other)[0] == 200
    for _ in range(4):
        r = run_curl(["-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{remora.port('plain')}/c"])
        assert r.stdout == b"200"

    def series():
        fams = {f.name: f for f in text_string_to_metric_families(remora.admin_get("/stats/prometheus").body.decode())}
        return fams["istio_requests"].samples, fams["istio_request_duration_milliseconds"]
    poll(lambda: sum(s.value for s in series()[0]) == 9, timeout=5, what="9 requests in istio_requests_total")
    samples, hist = series()
    for s in samples:
        assert {"source_principal", "destination_principal", "connection_security_policy"} <= set(s.labels), s
    for who, n in sent.items():
        got = [s for s in samples if s.labels["source_principal"] == who]
        assert sum(s.value for s in got) == n, samples
        assert all(s.labels["connection_security_policy"] == "mutual_tls" and s.labels["destination_principal"] == app_id
                   for s in got), got
    plain = [s for s in samples if s.labels["source_principal"] == "unknown"]
    assert sum(s.value for s in plain) == 4 and all(s.labels["connection_security_policy"] == "none" for s in plain)
    assert all(s.labels["destination_principal"] == app_id for s in plain), "the upstream is TLS for them too"
    counts = [s for s in hist.samples if s.name.endswith("_count") and s.labels["source_principal"] == SPIFFE]
    assert sum(s.value for s in counts) == 3 and counts[0].labels["connection_security_policy"] == "mutual_tls"
    assert remora.stat("tls.peer_identity_overflow") == 0


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx (Debian) is needed")
def test_auto_cluster_toward_nginx_with_and_without_http2(start_remora, pki, tmp_path):
    """Debian's nginx as the upstreams of one auto cluster: a server block with `http2` (ALPN h2) and
    one without (ALPN http/1.1); each answers with the protocol it was spoken to in."""
    app = pki.ca.issue("app", dns=["app.shop.svc"])
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    d = tmp_path / "nginx"
    (d / "logs").mkdir(parents=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
user root;
worker_processes 1;
error_log {d}/logs/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    ssl_certificate {app[0]}; ssl_certificate_key {app[1]};
    server {{ listen 127.0.0.1:{ports[0]} ssl http2; location / {{ return 200 "$server_protocol h2-block\\n"; }} }}
    server {{ listen 127.0.0.1:{ports[1]} ssl; location / {{ return 200 "$server_protocol h1-block\\n"; }} }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(d), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        poll(lambda: all(socket.socket().connect_ex(("127.0.0.1", p)) == 0 for p in ports), timeout=10, what="nginx listening")
        tls = {"ca": str(pki.ca.cert), "server_name": "app.shop.svc", "verify_san": ["app.shop.svc"], "alpn": ["h2", "http/1.1"]}
        remora = start_remora(make_config([http_listener("web", routes=[route("app")])],
                                          [cluster("app", [f"127.0.0.1:{p}" for p in ports], lb="round_robin", tls=tls)],
                                          workers=1))
        seen = []
        for i in range(8):
            status, body = fetch(remora.port("web"), f"/n/{i}")
            assert status == 200, (body, remora.stderr_tail())
            seen.append(body.decode().strip())
        assert seen.count("HTTP/2.0 h2-block") == 4 and seen.count("HTTP/1.1 h1-block") == 4, seen
        assert remora.stat("cluster.app.upstream_cx_http2_total") == 1
        assert remora.stat("cluster.app.upstream_cx_http1_total") == 1, "one pooled HTTP/1.1 connection, after the switch"
    finally:
        proc.terminate()
        proc.wait(10)
