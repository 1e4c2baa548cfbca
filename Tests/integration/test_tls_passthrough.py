"""`protocol: tls` listeners (issue 14, TLS passthrough): raw TLS routed by the ClientHello's server
name to clusters, never terminated. Two Python ssl servers with openssl-made certificates; curl
(`--resolve`) and `openssl s_client -servername` as clients."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from backends import _ServerBase
from harness import free_port, cluster, made_and_closed, make_config, poll, remora_bin, run_curl

HERE = Path(__file__).resolve().parent
SAMPLES = (HERE.parents[0] / "RemoraHTTPTests" / "ClientHelloSamples.swift").read_text()


def sample(name: str) -> bytes:
    """A captured ClientHello from Tests/RemoraHTTPTests/ClientHelloSamples.swift."""
    body = SAMPLES.split(f"static let {name} = hex(\"\"\"\n", 1)[1].split('"""', 1)[0]
    return bytes.fromhex("".join(body.split()))


def make_cert(dir: Path, name: str, sans: list[str]) -> tuple[Path, Path]:
    cert, key = dir / f"{name}.pem", dir / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)],
                   check=True, capture_output=True, timeout=20)
    return cert, key


class TLSBackend(_ServerBase):
    """Terminates TLS with its own certificate and answers every HTTP/1.1 request with its name."""

    def __init__(self, name: str, cert: Path, key: Path):
        self.name = name
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.server_names: list[str | None] = []

        def sni(sock, server_name, ctx):
            self.server_names.append(server_name)
        self.ctx.sni_callback = sni
        super().__init__("127.0.0.1")

    def handle(self, conn, conn_id):
        conn.settimeout(10)
        try:
            s = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            d = s.recv(65536)
            if not d:
                return
            data += d
        body = f"backend {self.name}\n".encode()
        s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        try:
            s.unwrap()
        except (ssl.SSLError, OSError):
            pass


@pytest.fixture
def tls_setup(start_remora, tmp_path, tcp_backend):
    a_cert, a_key = make_cert(tmp_path, "a.test", ["a.test"])
    b_cert, b_key = make_cert(tmp_path, "b.test", ["*.b.test", "b.test"])
    gen = made_and_closed(lambda n, c, k: TLSBackend(n, c, k))
    make = next(gen)
    a, b = make("a", a_cert, a_key), make("b", b_cert, b_key)
    echo = tcp_backend()
    cfg = make_config(
        [{"name": "egress", "address": "127.0.0.1:0", "protocol": "tls",
          "sni": [{"server_names": ["a.test"], "cluster": "a"},
                  {"server_names": ["*.b.test", "b.test"], "cluster": "b"},
                  {"server_names": ["echo.test"], "cluster": "echo"}],
          "cluster": "a", "sniff_timeout": "500ms"},
         {"name": "strict", "address": "127.0.0.1:0", "protocol": "tls",
          "sni": [{"server_names": ["*.b.test"], "cluster": "b"}, {"server_names": ["echo.test"], "cluster": "echo"}]}],
        [cluster("a", [a.endpoint]), cluster("b", [b.endpoint]), cluster("echo", [echo.endpoint])])
    remora = start_remora(cfg)
    yield remora, a, b, echo, {"a": a_cert, "b": b_cert}
    try:
        next(gen)
    except StopIteration:
        pass


def curl_https(port: int, host: str, cacert: Path) -> subprocess.CompletedProcess:
    return run_curl(["--cacert", str(cacert), "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"])


def s_client_subject(port: int, servername: str | None) -> str:
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    args += ["-servername", servername] if servername else ["-noservername"]
    r = subprocess.run(args, input=b"", capture_output=True, timeout=20)
    out = r.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("subject="):
            return line
    return ""


def test_sni_picks_the_backend_with_curl_and_s_client(tls_setup):
    remora, a, b, _, certs = tls_setup
    port = remora.port("egress")
    r = curl_https(port, "a.test", certs["a"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"backend a\n"
    r = curl_https(port, "x.b.test", certs["b"])   # the wildcard; the backend's certificate verifies
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"backend b\n"
    r = curl_https(port, "b.test", certs["b"])
    assert r.stdout == b"backend b\n", r.stderr
    # The certificate the client sees is the chosen backend's: TLS went through untouched.
    assert "CN = a.test" in s_client_subject(port, "a.test")
    assert "CN = b.test" in s_client_subject(port, "deep.x.b.test")
    assert "x.b.test" in b.server_names and "a.test" in a.server_names   # the backends saw the SNI
    assert remora.stat("listener.egress.sni_route_matched") >= 5
    assert remora.stat("listener.egress.tls_found") >= 5


def test_unknown_or_missing_sni_goes_to_the_default_or_is_closed(tls_setup):
    remora, a, b, _, certs = tls_setup
    egress, strict = remora.port("egress"), remora.port("strict")
    assert "CN = a.test" in s_client_subject(egress, "unknown.example")
    assert "CN = a.test" in s_client_subject(egress, None)
    assert remora.stat("listener.egress.sni_route_default") == 2
    assert remora.stat("listener.egress.sni_not_found") == 1
    # No default: closed before anything reaches a backend.
    before = a.connections + b.connections
    r = curl_https(strict, "unknown.example", certs["a"])
    assert r.returncode != 0
    assert s_client_subject(strict, None) == ""
    assert remora.stat("listener.strict.no_filter_chain_match") == 2
    assert a.connections + b.connections == before
    # The strict listener still routes names it knows.
    assert curl_https(strict, "y.b.test", certs["b"]).stdout == b"backend b\n"


def client_hello(server_name: str | None) -> bytes:
    """The ClientHello Python's ssl sends for `server_name` (a memory BIO: no socket)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[0] == 22
    return hello


def trickle(port: int, data: bytes, step: int) -> bytes:
    """Sends `data` `step` bytes at a time, then "after the hello" and FIN; returns all it reads."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
                time.sleep(0.001)
            s.sendall(b"after the hello")
            s.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        except (ConnectionResetError, BrokenPipeError, OSError):
            pass   # closed by the proxy (what some tests expect)
        return got


def test_client_hello_bytes_are_forwarded_first_even_when_they_trickle(tls_setup):
    """A ClientHello sent 5 bytes at a time is parsed across reads; the echo cluster gets every byte
    read while sniffing, then the rest of the stream, in order (it echoes, then says BYE)."""
    remora, *_ = tls_setup
    hello = client_hello("echo.test")
    assert trickle(remora.port("egress"), hello, 5) == hello + b"after the hello" + b"BYE"
    assert trickle(remora.port("strict"), hello, 1) == hello + b"after the hello" + b"BYE"
    # An unknown name on the listener without a default: closed, nothing echoed.
    assert trickle(remora.port("strict"), client_hello("x.echo.test"), 5) == b""
    assert remora.stat("listener.strict.no_filter_chain_match") == 1


def test_not_tls_and_silence_are_closed(tls_setup):
    remora, a, *_ = tls_setup
    port = remora.port("egress")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert s.recv(100) == b""
    assert remora.stat("listener.egress.tls_not_found") == 1
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(100) == b""    # nothing sent: closed after sniff_timeout (500 ms)
    assert 0.3 < time.monotonic() - t0 < 5
    assert remora.stat("listener.egress.downstream_pre_cx_timeout") == 1
    # A partial ClientHello, then EOF.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(sample("opensslSniAlpn")[:40])
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
    poll(lambda: remora.stat("listener.egress.downstream_cx_active") == 0, 5, what="connections closed")
    remora.assert_alive()


def test_authorization_on_a_passthrough_listener(start_remora, tmp_path):
    """`authorization:` on a tls listener, decided once the ClientHello is read: server names (SNI),
    source CIDRs and the destination port; deny rules first. A denied connection is closed before
    any byte reaches a cluster (the client sees no certificate); counted per listener and rule."""
    a_cert, a_key = make_cert(tmp_path, "a.test", ["a.test"])
    b_cert, b_key = make_cert(tmp_path, "b.test", ["*.b.test", "b.test"])
    gen = made_and_closed(lambda n, c, k: TLSBackend(n, c, k))
    make = next(gen)
    a, b = make("a", a_cert, a_key), make("b", b_cert, b_key)
    port = free_port()
    sni = [{"server_names": ["a.test"], "cluster": "a"}, {"server_names": ["*.b.test"], "cluster": "b"}]
    policy = {"deny": [{"name": "blocked", "to": {"server_names": ["x.b.test"]}}],
              "rules": [{"name": "local", "from": {"source_cidrs": ["127.0.0.0/8"]},
                         "to": {"server_names": ["a.test", "*.b.test"], "ports": [port]}}]}
    try:
        remora = start_remora(make_config(
            [{"name": "guarded", "address": f"127.0.0.1:{port}", "protocol": "tls", "sni": sni, "cluster": "a",
              "authorization": policy},
             {"name": "elsewhere", "address": "127.0.0.1:0", "protocol": "tls", "sni": sni,
              "authorization": {"rules": [{"name": "https-only", "to": {"ports": [443]}}]}},
             {"name": "remote", "address": "127.0.0.1:0", "protocol": "tls", "sni": sni,
              "authorization": {"rules": [{"name": "tenants", "from": {"source_cidrs": ["10.0.0.0/8"]}}]}}],
            [cluster("a", [a.endpoint]), cluster("b", [b.endpoint])]))
        r = curl_https(port, "a.test", a_cert)
        assert r.returncode == 0 and r.stdout == b"backend a\n", r.stderr
        assert curl_https(port, "y.b.test", b_cert).stdout == b"backend b\n"
        assert "CN = b.test" in s_client_subject(port, "z.b.test")
        before = a.connections + b.connections
        r = curl_https(port, "x.b.test", b_cert)          # the deny rule
        assert r.returncode != 0 and r.stdout == b""
        assert s_client_subject(port, "unknown.example") == ""   # no allow rule names it (the default cluster is not asked)
        assert s_client_subject(port, None) == ""                # no SNI: a server_names rule cannot match
        assert s_client_subject(remora.port("elsewhere"), "a.test") == ""   # arrived on another port than 443
        assert s_client_subject(remora.port("remote"), "a.test") == ""      # 127.0.0.1 is not in 10.0.0.0/8
        assert a.connections + b.connections == before, "denied connections never reach a backend"
        assert remora.stat("listener.guarded.rbac_allowed") == 3
        assert remora.stat("listener.guarded.rbac_denied") == 3
        assert remora.stat("authz.guarded.blocked.denied") == 1
        assert remora.stat("authz.guarded.local.allowed") == 3
        assert remora.stat("listener.elsewhere.rbac_denied") == 1
        assert remora.stat("listener.remote.rbac_denied") == 1
        assert remora.stat("listener.guarded.tls_found") == 6
    finally:
        for _ in gen:
            pass


def test_principal_rules_on_a_passthrough_listener_are_refused(tmp_path):
    """Nothing is terminated on a tls listener, so no peer has an identity: a principal rule there is
    a configuration error, named by file, line and field, with the reason."""
    cfg = tmp_path / "remora.yaml"
    cfg.write_text("""listeners:
  - name: egress
    address: 127.0.0.1:0
    protocol: tls
    cluster: a
    authorization:
      rules:
        - from:
            principals: ["spiffe://mesh.local/ns/shop/sa/frontend"]
clusters:
  - { name: a, endpoints: [ 127.0.0.1:1 ] }
""")
    r = subprocess.run([str(remora_bin()), "validate", str(cfg)], capture_output=True, timeout=20)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode != 0, out
    assert f"{cfg}:9: listeners[0].authorization.rules[0].from.principals: not allowed on a tls listener" in out, out
    assert "no identity" in out
