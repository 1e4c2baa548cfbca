"""The mesh CA (issue 15, "Mesh identity and automatic mTLS"): `remora control` issues workload
certificates for CSRs that carry a bootstrap token, and proxies with `sidecar.mtls.from_control`
get, renew and use them with no operator-made file.

- The CA's answer checked with the openssl CLI: the SPIFFE URI SAN of the token's identity (never
  the one the CSR claims), the validity asked for, CA:FALSE, digitalSignature, serverAuth and
  clientAuth, and `openssl verify` against the bundle; a missing token is 401, an unknown one 403
  (counted), a CSR that is not ECDSA P-256 400.
- Two proxies on loopback, each with its own control-issued identity, talking mTLS (A's cluster
  presents A's certificate and checks B's identity; B's listener requires a certificate of the
  bundle and authorizes A's identity), under continuous requests: renewals with a 12 s lifetime,
  a root rotation (two roots in the bundle, new certificates from the new root, the old root
  removed), the control server stopped (renewals fail, counted, the old certificate serves) and
  started again (renewed): no request lost.
- Two sidecars in network namespaces (test_sidecar_mtls' fixture): the service named by its
  `service_account` goes over mTLS with control-issued certificates and ALPN `remora-mesh`; the
  inbound sidecar in `permissive` passes an application's own TLS through untouched (the client
  verifies the application's certificate) while it terminates the mesh peer."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import test_control as tc
import test_sidecar as sc
import test_sidecar_mtls as sm
from test_sidecar_mtls import two_pods  # noqa: F401 - the fixture
from harness import free_port, Remora, get, http_listener, remora_bin, route
from tlspki import CA

FRONTEND = "spiffe://mesh.local/ns/shop/sa/frontend"
ORDERS = "spiffe://mesh.local/ns/shop/sa/orders"


def token(state: Path, ns: str, sa: str) -> str:
    r = subprocess.run([str(remora_bin()), "control", "token", "--state", str(state), ns, sa],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r
    t = r.stdout.decode().strip()
    assert len(t) == 64
    return t


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, timeout=30, input=input)


def csr(tmp: Path, name: str, subj: str, san: str | None = None, algorithm: list[str] | None = None) -> bytes:
    key = tmp / f"{name}.key"
    assert openssl("genpkey", *(algorithm or ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                   "-out", str(key)).returncode == 0
    args = ["req", "-new", "-key", str(key), "-subj", subj]
    if san:
        args += ["-addext", f"subjectAltName={san}"]
    r = openssl(*args)
    assert r.returncode == 0, r
    return r.stdout


def test_issued_certificate_carries_the_tokens_identity(tmp_path):
    c = tc.Control(tmp_path / "state", extra=["--cert-ttl", "1h", "--trust-domain", "example.org"])
    try:
        tok = token(tmp_path / "state", "shop", "frontend")
        # The CSR claims another identity (subject and URI SAN): both are ignored.
        req = csr(tmp_path, "w", "/CN=admin", "URI:spiffe://example.org/ns/kube-system/sa/admin")
        r = c.call("POST", "/v1/ca/certificate", req, headers=[("x-remora-identity-token", tok)])
        assert r.status == 200, (r.status, r.body)
        cert = tmp_path / "issued.pem"
        cert.write_bytes(r.body)
        bundle = tmp_path / "bundle.pem"
        r = c.call("GET", "/v1/ca/bundle")
        assert r.status == 200 and r.body.count(b"BEGIN CERTIFICATE") == 1
        bundle.write_bytes(r.body)
        v = openssl("verify", "-CAfile", str(bundle), str(cert))
        assert v.returncode == 0 and b"OK" in v.stdout, v
        text = openssl("x509", "-in", str(cert), "-noout", "-text").stdout.decode()
        assert "URI:spiffe://example.org/ns/shop/sa/frontend" in text, text
        assert "kube-system" not in text and "admin" not in text, text
        assert "CA:FALSE" in text and "Digital Signature" in text, text
        assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text, text
        assert "prime256v1" in text or "P-256" in text, text
        # Valid for the hour asked (not before: a little in the past for clock skew).
        dates = openssl("x509", "-in", str(cert), "-noout", "-startdate", "-enddate", "-dateopt", "iso_8601").stdout.decode()
        ends = openssl("x509", "-in", str(cert), "-noout", "-checkend", "3500")
        assert ends.returncode == 0, dates
        assert openssl("x509", "-in", str(cert), "-noout", "-checkend", "3700").returncode != 0, dates
        root = openssl("x509", "-in", str(bundle), "-noout", "-text").stdout.decode()
        assert "CA:TRUE" in root and "Certificate Sign" in root and "URI:spiffe://example.org" in root, root

        # Refusals: no token 401, an unknown one 403, a key that is not P-256 400.
        assert c.call("POST", "/v1/ca/certificate", req).status == 401
        assert c.call("POST", "/v1/ca/certificate", req, headers=[("x-remora-identity-token", "0" * 64)]).status == 403
        rsa = csr(tmp_path, "rsa", "/CN=x", algorithm=["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        r = c.call("POST", "/v1/ca/certificate", rsa, headers=[("x-remora-identity-token", tok)])
        assert r.status == 400 and b"P-256" in r.body, r.body
        assert c.call("POST", "/v1/ca/certificate", b"garbage", headers=[("x-remora-identity-token", tok)]).status == 400
        status = dict(line.split(" ", 1) for line in c.call("GET", "/v1/ca").body.decode().splitlines())
        assert status["issued"] == "1" and status["refused_token"] == "2" and status["refused_request"] == "2", status
        assert status["trust_domain"] == "example.org" and status["roots"] == "1"
        # A revoked token is unknown from then on (the file is read at every request).
        r = subprocess.run([str(remora_bin()), "control", "token", "--state", str(tmp_path / "state"), "shop/frontend",
                            "--revoke"], capture_output=True, timeout=20)
        assert r.returncode == 0, r
        assert c.call("POST", "/v1/ca/certificate", req, headers=[("x-remora-identity-token", tok)]).status == 403
        # The private key of the root stays private.
        assert oct((tmp_path / "state" / "ca" / "root-key.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        c.stop()


def test_from_control_config_validates_without_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("sidecar:\n  mtls: { from_control: true, token_file: /nonexistent/token, control: http://127.0.0.1:9911,"
                    " mode: strict }\n  services:\n    - { name: orders, port: 80, cluster: orders, service_account: shop/orders }\n"
                    "clusters:\n  - { name: orders, endpoints: [\"10.0.0.1:80\"] }\n")
    r = subprocess.run([str(remora_bin()), "validate", str(good)], capture_output=True, timeout=20)
    assert r.returncode == 0, r
    bad = tmp_path / "bad.yaml"
    bad.write_text("sidecar:\n  mtls: { from_control: true, cert: /x.pem, mode: strict }\n")
    r = subprocess.run([str(remora_bin()), "validate", str(bad)], capture_output=True, timeout=20)
    err = r.stderr.decode()
    assert r.returncode == 1 and "bad.yaml:2: sidecar.mtls.cert: not with from_control: true" in err, err
    assert "sidecar.mtls.token_file: missing required key" in err, err


class Load:
    """GETs through `port` every 20 ms on its own thread; counts answers and failures."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            try:
                r = get(self.port, f"/load/{i}", timeout=5)
                if r.status == 200 and r.body == b"orders":
                    self.ok += 1
                else:
                    self.failures.append(f"{i}: {r.status} {r.body[:100]!r}")
            except Exception as e:   # noqa: BLE001 - every failure is a lost request
                self.failures.append(f"{i}: {e!r}")
            time.sleep(0.02)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(10)


def issuer(path: Path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-issuer").stdout.decode().strip().split("=", 1)[1]


def subjects(bundle: Path) -> list[str]:
    text = bundle.read_text()
    out = []
    for block in text.split("-----END CERTIFICATE-----")[:-1]:
        pem = block[block.index("-----BEGIN"):] + "-----END CERTIFICATE-----\n"
        out.append(openssl("x509", "-noout", "-subject", input=pem.encode()).stdout.decode().strip().split("=", 1)[1])
    return out


def first_der(path: Path) -> bytes:
    text = path.read_text()
    return ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):text.index("-----END CERTIFICATE-----") + 25])


def peer_der(port: int, identity_dir: Path) -> bytes:
    """The certificate a new mTLS handshake with 127.0.0.1:port presents (with the identity in `identity_dir`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(identity_dir / "bundle.pem"))
    ctx.load_cert_chain(str(identity_dir / "identity.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        return s.getpeercert(binary_form=True)


def wait(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(interval)


@pytest.mark.timeout(150)
def test_renewal_rotation_and_control_outage_lose_no_request(tmp_path):
    state = tmp_path / "state"
    port = free_port()
    extra = ["--cert-ttl", "12s"]
    c = tc.Control(state, listen=f"127.0.0.1:{port}", extra=extra)
    url = f"http://127.0.0.1:{port}"
    for ns_sa, name in ((("shop", "frontend"), "a"), (("shop", "orders"), "b")):
        (tmp_path / f"{name}.token").write_text(token(state, *ns_sa) + "\n")
    a_dir, b_dir = tmp_path / "a-id", tmp_path / "b-id"

    def sidecar(name: str, d: Path) -> dict:
        return {"ipv6": False, "outbound_port": free_port(), "inbound_port": free_port(),
                "mtls": {"from_control": True, "token_file": str(tmp_path / f"{name}.token"), "control": url,
                         "dir": str(d), "bundle_refresh": "1s", "mode": "strict"}}

    base = {"admin": {"address": "127.0.0.1:0"}, "workers": 1, "drain_timeout": "1s"}
    direct = [{"name": "d", "match": {"path": {"prefix": "/"}}, "direct_response": {"status": 200, "body": "orders"}}]
    config_b = {**base, "sidecar": sidecar("b", b_dir),
                "listeners": [http_listener("mesh_in", direct, tls={
                    "certificates": [{"cert": str(b_dir / "identity.pem"), "key": str(b_dir / "identity.pem")}],
                    "client_ca": str(b_dir / "bundle.pem")},
                    authorization={"rules": [{"name": "frontend", "from": {"principals": [FRONTEND]}}]})]}
    rb = Remora(remora_bin(), config_b, tmp_path, name="b")
    ra = None
    load = None
    try:
        rb.wait_ready()
        config_a = {**base, "sidecar": sidecar("a", a_dir),
                    "listeners": [http_listener("web", [route("orders")])],
                    "clusters": [{"name": "orders", "endpoints": [f"127.0.0.1:{rb.port('mesh_in')}"],
                                  "tls": {"ca": str(a_dir / "bundle.pem"), "cert": str(a_dir / "identity.pem"),
                                          "key": str(a_dir / "identity.pem"), "verify_san": [ORDERS]}}]}
        ra = Remora(remora_bin(), config_a, tmp_path, name="a")
        ra.wait_ready()
        r = get(ra.port("web"), "/first")
        assert r.status == 200 and r.body == b"orders", (r.status, r.body, ra.stderr_tail())
        assert rb.stat("listener.mesh_in.rbac_allowed") == 1
        # The key never left the proxy: it is in its own file, 0600, and the control server has none.
        assert oct((a_dir / "identity.pem").stat().st_mode & 0o777) == "0o600"
        assert "PRIVATE KEY" in (a_dir / "identity.pem").read_text()
        # /certs and /stats show the workload certificate and its expiry.
        certs = json.loads(ra.admin_get("/certs").body)["certificates"]
        mine = [x for x in certs if FRONTEND in x.get("uri_sans", [])]
        assert mine and all(0 < x["seconds_left"] <= 13 for x in mine), certs
        s = ra.stats()
        assert 0 < s["identity.cert_expiry_seconds"] <= 13 and s["identity.cert_issued"] == 1, s
        assert 0 < s["tls.cluster.orders.cert.cert_expiry_seconds"] <= 13, s
        load = Load(ra.port("web"))

        # Renewal at half the lifetime (about 6 s): new handshakes use it, no request lost.
        for p in (ra, rb):
            p.wait_stat("identity.cert_issued", lambda v: v >= 2, timeout=15)
        ra.wait_stat("tls.cert_reload", lambda v: v >= 1, timeout=5)   # the file watch settles for 200 ms
        rb.wait_stat("tls.cert_reload", lambda v: v >= 1, timeout=5)
        # A new handshake gets B's renewed certificate at once (the one now in its file).
        assert peer_der(rb.port("mesh_in"), a_dir) == first_der(b_dir / "identity.pem")

        # Root rotation: a second root in both bundles, new certificates from it, the old one removed.
        old_root = subjects(a_dir / "bundle.pem")
        r = tc.ctl(c, "ca", "rotate", "start", "--sign-after", "2s")
        assert r.returncode == 0 and b"rotation started" in r.stdout, r
        wait(lambda: len(subjects(a_dir / "bundle.pem")) == 2 and len(subjects(b_dir / "bundle.pem")) == 2, 10,
             "the bundles never got the second root")
        new_root = subjects(a_dir / "bundle.pem")[0]
        assert new_root not in old_root
        wait(lambda: issuer(a_dir / "identity.pem") == new_root and issuer(b_dir / "identity.pem") == new_root, 20,
             "the proxies never got certificates of the new root")
        r = tc.ctl(c, "ca", "rotate", "finish")
        assert r.returncode == 1 and b"may be valid" in r.stderr, r
        r = tc.ctl(c, "ca", "rotate", "finish", "--force")
        assert r.returncode == 0 and b"rotation none" in r.stdout, r
        wait(lambda: subjects(a_dir / "bundle.pem") == [new_root] and subjects(b_dir / "bundle.pem") == [new_root], 10,
             "the old root never left the bundles")

        # The control server goes away: renewals fail (counted), the certificate keeps serving.
        issued = ra.stat("identity.cert_issued")
        assert c.stop() == 0
        ra.wait_stat("identity.renew_failed", lambda v: v >= 1, timeout=15)
        ok_before = load.ok
        time.sleep(0.5)
        assert load.ok > ok_before and not load.failures, load.failures[:5]
        # Back on the same address: the next retry renews (well before the certificate expires).
        c = tc.Control(state, listen=f"127.0.0.1:{port}", extra=extra)
        ra.wait_stat("identity.cert_issued", lambda v: v > issued, timeout=10)
        time.sleep(0.5)
        load.stop()
        assert not load.failures, (len(load.failures), load.failures[:5], ra.stderr_tail(), rb.stderr_tail())
        assert load.ok > 200, load.ok
        assert rb.stat("listener.mesh_in.rbac_denied") == 0
        assert ra.alive and rb.alive
    finally:
        if load:
            load.stop()
        codes = [p.stop(timeout=5) for p in (ra, rb) if p is not None]
        c.stop()
    assert codes == [0] * len(codes)


@pytest.mark.timeout(120)
def test_two_sidecars_mesh_with_control_issued_identities(two_pods, tmp_path, monkeypatch):
    """The sidecar path end to end with no operator file: A's application calls B's VIP in
    plaintext; the service's `service_account` makes A's sidecar originate mTLS with its issued
    certificate (ALPN remora-mesh) and check B's identity; B (permissive) terminates it. A client
    outside the mesh that speaks TLS to B's own TLS server is passed through untouched."""
    a, b = two_pods
    state = tmp_path / "state"
    api = tmp_path / "api-token"
    api.write_text("mesh-ca-test-api-token-0123456789\n")
    (tmp_path / "a.token").write_text(token(state, "shop", "frontend") + "\n")
    (tmp_path / "b.token").write_text(token(state, "shop", "orders") + "\n")
    url = f"http://{sm.B_IP}:9911"
    err = open(tmp_path / "control.stderr", "wb")
    procs: list[subprocess.Popen] = []
    try:
        run_mesh(a, b, tmp_path, procs, err, state, api, url, monkeypatch)
    finally:
        for p in procs:
            p.kill()
            p.wait(5)


def run_mesh(a, b, tmp_path, procs, err, state, api, url, monkeypatch):
    procs += [subprocess.Popen(["ip", "netns", "exec", b, str(remora_bin()), "control", "--state", str(state),
                               "--listen", f"{sm.B_IP}:9911", "--token-file", str(api), "--cert-ttl", "1h"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)]
    err.close()
    # B's application also serves its own TLS on 8443 (a certificate of its own CA, not the mesh's).
    app_ca = CA(tmp_path / "app-pki", cn="App CA")
    app_cert, app_key = app_ca.issue("app", dns=["app.shop"])
    procs.append(subprocess.Popen(["ip", "netns", "exec", b, "openssl", "s_server", "-quiet", "-accept", "8443",
                                   "-cert", str(app_cert), "-key", str(app_key), "-www"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    sc.wait_port(b, sm.B_IP, 9911)
    sc.wait_port(b, "127.0.0.1", 8443)

    def mtls(name: str, mode: str) -> dict:
        return {"from_control": True, "token_file": str(tmp_path / f"{name}.token"), "control": url,
                "dir": str(tmp_path / f"{name}-id"), "mode": mode}

    base = {"admin": {"address": f"127.0.0.1:{sc.ADMIN}"}, "workers": 1, "drain_timeout": "1s"}
    config_a = {**base, "sidecar": {"ipv6": False, "mtls": mtls("a", "strict"),
                                    "services": [{"name": "orders", "addresses": [sm.VIP], "port": 80, "cluster": "orders",
                                                  "service_account": "shop/orders"}]},
                "clusters": [{"name": "orders", "endpoints": [f"{sm.B_IP}:8081"]}]}
    config_b = {**base, "sidecar": {"ipv6": False, "mtls": mtls("b", "permissive"),
                                    "inbound": [{"port": 8081, "protocol": "http",
                                                 "authorization": {"rules": [{"name": "frontend",
                                                                              "from": {"principals": [FRONTEND]}}]}}]}}
    # The control server listens off loopback: the sidecars send its bearer token too.
    monkeypatch.setenv("REMORA_CONTROL_TOKEN", api.read_text().strip())
    ra = sm.sidecar(a, config_a, tmp_path, "pod-a")
    rb = sm.sidecar(b, config_b, tmp_path, "pod-b")
    try:
        ra.wait_ready()
        rb.wait_ready()
        sc.in_ns(a, str(remora_bin()), "iptables", "--uid", "0", "--admin-port", str(sc.ADMIN), "--no-ipv6", "--apply")
        sc.in_ns(b, str(remora_bin()), "iptables", "--uid", "0", "--admin-port", str(sc.ADMIN), "--no-ipv6",
                 "--exclude-inbound-ports", "9911", "--apply")
        sc.wait_port(b, "127.0.0.1", 8081)

        r = sm.curl(a, f"http://{sm.VIP}/orders/1", app=True)
        assert r.returncode == 0 and r.stdout, (r, ra.stderr_tail(), rb.stderr_tail())
        xfcc = json.loads(r.stdout)["headers"]["x-forwarded-client-cert"]
        assert f"By={ORDERS}" in xfcc and f"URI={FRONTEND}" in xfcc, xfcc
        sa, sb = sc.stats(a), sc.stats(b)
        assert sa["cluster.orders.ssl_handshake"] >= 1 and sa["identity.cert_issued"] == 1
        assert sb["listener.sidecar_inbound.ssl_handshake"] >= 1
        assert sb["listener.inbound_8081.rbac_allowed"] >= 1

        # A client outside the mesh (root in A: not captured) speaks TLS to B's application: no
        # remora-mesh ALPN, so B's sidecar passes the bytes on and the client sees the app's certificate.
        r = sm.curl(a, "--cacert", str(app_ca.cert), "--resolve", f"app.shop:8443:{sm.B_IP}", "https://app.shop:8443/")
        assert r.returncode == 0 and b"s_server" in r.stdout, (r, rb.stderr_tail())
        sb = sc.stats(b)
        assert sb["listener.sidecar_inbound.ssl_passthrough_accepted"] >= 1, sb
        # The mesh peer is still terminated.
        r = sm.curl(a, f"http://{sm.VIP}/orders/2", app=True)
        assert json.loads(r.stdout)["headers"]["x-forwarded-client-cert"].count(FRONTEND) == 1
        assert ra.alive and rb.alive
    finally:
        code_a, code_b = sm.stop(ra), sm.stop(rb)
    assert code_a == 0, ra.stderr_tail()
    assert code_b == 0, rb.stderr_tail()
