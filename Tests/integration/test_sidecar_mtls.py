"""Mutual TLS between sidecars (issue 15, `sidecar.mtls`): two "pods", each a network namespace with
an unmodified application and a Remora sidecar behind the iptables rules `remora iptables` applies,
joined by a veth pair. Certificates from the openssl CLI (tlspki.py): a mesh CA and one SPIFFE
identity per workload.

Pod A's application (uid nobody) calls service B's VIP in plaintext; A's sidecar originates mTLS with
A's certificate (`services[].mtls`), B's sidecar terminates it on its inbound listener (client
certificate required and verified against the mesh CA) and forwards plaintext to B's application,
which sees `x-forwarded-client-cert` with A's identity; an authorization rule on B's inbound port
allows only A's identity. Root in pod A is exempt from capture (the rules exempt uid 0, the
sidecars' uid), so it plays a client outside the mesh: its plaintext is refused under `mode: strict`
and accepted under `permissive` (after a SIGHUP reload), where principal rules still refuse it.
Skipped, with the reason, where `ip netns` or iptables cannot be used; namespaces are deleted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest

import test_sidecar as sc
from harness import Remora, remora_bin, to_yaml
from tlspki import CA

A_IP, B_IP = "10.232.0.1", "10.232.0.2"
VIP, VIP_ECHO = "10.232.0.100", "10.232.0.101"   # service addresses A's application calls; nothing has them
FRONTEND = "spiffe://mesh.local/ns/shop/sa/frontend"
ORDERS = "spiffe://mesh.local/ns/shop/sa/orders"
OTHER = "spiffe://mesh.local/ns/shop/sa/other"


@pytest.fixture
def two_pods(tmp_path):
    reason = sc.netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}{random.randrange(100, 1000)}"
    a, b = f"rmra{tag}", f"rmrb{tag}"
    procs: list[subprocess.Popen] = []
    made: list[str] = []
    try:
        for ns in (a, b):
            sc.run(["ip", "netns", "add", ns])
            made.append(ns)
            sc.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        sc.run(["ip", "link", "add", f"ma{tag}", "netns", a, "type", "veth", "peer", "name", f"mb{tag}", "netns", b])
        for ns, dev, ip in ((a, f"ma{tag}", A_IP), (b, f"mb{tag}", B_IP)):
            sc.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
            sc.run(["ip", "-n", ns, "link", "set", dev, "up"])
        # B's application: HTTP on 0.0.0.0:8081 (answers with the request's headers), echo on 7000.
        procs.append(subprocess.Popen(["ip", "netns", "exec", b, *sc.APP, "python3", "-c", sc.SERVERS, "peer"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        yield a, b
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True).stdout.decode()
        assert not any(ns in left for ns in made), f"namespaces left behind: {left}"


def sidecar(ns: str, config: dict, tmp_path, name: str) -> Remora:
    wrapper = tmp_path / f"remora-in-{name}"
    wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {ns} {remora_bin()} \"$@\"\n")
    wrapper.chmod(0o755)
    return Remora(wrapper, to_yaml(config), tmp_path, name=name)


def stop(remora: Remora) -> int:
    code = remora.stop(timeout=5) if remora.proc.poll() is None else remora.proc.returncode
    if remora.proc.returncode is None:
        remora.kill()
    return code


def curl(ns: str, *args: str, app=False) -> subprocess.CompletedProcess:
    return sc.in_ns(ns, "curl", "-s", "--noproxy", "*", "--max-time", "5", *args, app=app, check=False)


@pytest.mark.timeout(120)
def test_mtls_between_two_sidecars_strict_then_permissive(two_pods, tmp_path):
    a, b = two_pods
    ca = CA(tmp_path / "pki", cn="Mesh CA")
    a_cert, a_key = ca.issue("frontend", uris=[FRONTEND])
    b_cert, b_key = ca.issue("orders", uris=[ORDERS])
    o_cert, o_key = ca.issue("other", uris=[OTHER])
    base = {"admin": {"address": f"127.0.0.1:{sc.ADMIN}"}, "workers": 1, "drain_timeout": "1s"}
    config_a = {**base,
                "sidecar": {"ipv6": False,
                            "mtls": {"cert": str(a_cert), "key": str(a_key), "ca": str(ca.cert), "mode": "strict"},
                            "services": [
                                {"name": "orders", "addresses": [VIP], "port": 80, "cluster": "orders", "mtls": True,
                                 "identities": [ORDERS]},
                                {"name": "echo", "addresses": [VIP_ECHO], "port": 7000, "cluster": "echo",
                                 "protocol": "tcp", "mtls": True},
                            ]},
                "clusters": [{"name": "orders", "endpoints": [f"{B_IP}:8081"]},
                             {"name": "echo", "endpoints": [f"{B_IP}:7000"]}]}
    access_log = tmp_path / "pod-b-access.log"
    config_b = {**base,
                "sidecar": {"ipv6": False, "access_log": {"path": str(access_log), "format": "json"},
                            "mtls": {"cert": str(b_cert), "key": str(b_key), "ca": str(ca.cert), "mode": "strict"},
                            "inbound": [{"port": 8081, "protocol": "http",
                                         "authorization": {"rules": [{"name": "frontend",
                                                                      "from": {"principals": [FRONTEND]}}]}}]}}
    ra = sidecar(a, config_a, tmp_path, "pod-a")
    rb = sidecar(b, config_b, tmp_path, "pod-b")
    try:
        ra.wait_ready()
        rb.wait_ready()
        for ns in (a, b):
            sc.in_ns(ns, str(remora_bin()), "iptables", "--uid", "0", "--admin-port", str(sc.ADMIN), "--no-ipv6", "--apply")
        sc.wait_port(b, "127.0.0.1", 8081)
        sc.wait_port(b, "127.0.0.1", 7000)

        # A's application calls the VIP in plaintext; the hop between the pods is mTLS.
        r = curl(a, f"http://{VIP}/orders/1", app=True)
        assert r.returncode == 0 and r.stdout, (r, rb.stderr_tail())
        seen = json.loads(r.stdout)
        assert seen["path"] == "/orders/1"
        xfcc = seen["headers"]["x-forwarded-client-cert"]
        assert f"By={ORDERS}" in xfcc and f"URI={FRONTEND}" in xfcc and "Hash=" in xfcc, xfcc
        # Bytes (a tcp service) go the same way, to the bytes path of B's inbound listener.
        r = sc.in_ns(a, "python3", "-c", sc.CLIENT, VIP_ECHO, "7000", "ping over mtls", app=True)
        assert r.stdout == b"ping over mtls", (r, sc.stats(a), ra.stderr_tail())
        sa, sb = sc.stats(a), sc.stats(b)
        assert sa["cluster.orders.ssl_handshake"] == 1 and sa["cluster.echo.ssl_handshake"] == 1
        assert sb["listener.sidecar_inbound.ssl_handshake"] == 2
        assert sb["listener.sidecar_inbound.sidecar_service_matched"] == 1   # HTTP to inbound_8081
        assert sb["listener.sidecar_inbound.sidecar_passthrough"] == 1       # bytes to 127.0.0.1:7000
        assert sb["listener.inbound_8081.rbac_allowed"] == 1
        # B's access log names the caller of the HTTP request (a bytes connection's line has no
        # peer identity field filled, as on any tcp listener with TLS).
        deadline = time.monotonic() + 5
        while True:
            lines = [json.loads(l) for l in access_log.read_text().splitlines()] if access_log.exists() else []
            if len(lines) >= 2:
                break
            assert time.monotonic() < deadline, f"access log: {lines}"
            time.sleep(0.1)
        http_line = next(l for l in lines if l.get("path") == "/orders/1")
        assert http_line["downstream_peer_identity"] == FRONTEND and http_line["response_code"] == 200, http_line
        assert any(l.get("bytes_received") == 14 and l.get("path") is None for l in lines), lines   # the echo

        # Root in pod A is not captured: a client outside the mesh. Strict: plaintext is refused.
        r = curl(a, f"http://{B_IP}:8081/plain")
        assert r.returncode != 0 and b"frontend" not in r.stdout, r
        r = sc.in_ns(a, "python3", "-c", sc.CLIENT, B_IP, "7000", "plain bytes", check=False)
        assert r.stdout == b"", r
        # mTLS by hand: A's identity is allowed, another identity of the same CA is refused by the
        # rule, a client without a certificate by the handshake.
        tls = ["-k", "--cacert", str(ca.cert)]
        r = curl(a, *tls, "--cert", str(a_cert), "--key", str(a_key), f"https://{B_IP}:8081/by-hand")
        assert json.loads(r.stdout)["headers"]["x-forwarded-client-cert"].count(FRONTEND) == 1
        r = curl(a, *tls, "--cert", str(o_cert), "--key", str(o_key), "-w", "%{http_code}", "-o", "/dev/null",
                 f"https://{B_IP}:8081/other")
        assert r.stdout == b"403", r
        r = curl(a, *tls, f"https://{B_IP}:8081/no-cert")
        assert r.returncode != 0 and not r.stdout, r
        sb = sc.stats(b)
        assert sb["listener.inbound_8081.rbac_denied"] == 1
        assert sb["listener.sidecar_inbound.ssl_fail_verify_no_cert"] >= 1
        assert sb["listener.sidecar_inbound.ssl_connection_error"] >= 3
        assert sb.get("listener.sidecar_inbound.ssl_plaintext_accepted", 0) == 0

        # Permissive (a reload): plaintext is accepted; the principal rule still refuses it (no identity).
        config_b["sidecar"]["mtls"]["mode"] = "permissive"
        rb.config_path.write_text(to_yaml(config_b))
        os.kill(rb.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            r = sc.in_ns(a, "python3", "-c", sc.CLIENT, B_IP, "7000", "plain bytes", check=False)
            if r.stdout == b"plain bytes":
                break
            assert time.monotonic() < deadline, f"permissive never took effect: {rb.stderr_tail()}"
            time.sleep(0.2)
        r = curl(a, "-w", "%{http_code}", "-o", "/dev/null", f"http://{B_IP}:8081/plain")
        assert r.stdout == b"403", r
        r = curl(a, f"http://{VIP}/orders/2", app=True)   # the mesh still speaks mTLS
        assert json.loads(r.stdout)["headers"]["x-forwarded-client-cert"].count(FRONTEND) == 1
        sb = sc.stats(b)
        assert sb["listener.sidecar_inbound.ssl_plaintext_accepted"] >= 2
        assert ra.alive and rb.alive
    finally:
        code_a, code_b = stop(ra), stop(rb)
    assert code_a == 0, ra.stderr_tail()
    assert code_b == 0, rb.stderr_tail()


@pytest.mark.timeout(60)
def test_mtls_refuses_a_peer_with_the_wrong_identity(two_pods, tmp_path):
    """`identities` on the service: a peer sidecar whose certificate the mesh CA signed but that is
    not the expected workload fails the connect (503, `ssl_fail_verify_error`)."""
    a, b = two_pods
    ca = CA(tmp_path / "pki", cn="Mesh CA")
    a_cert, a_key = ca.issue("frontend", uris=[FRONTEND])
    b_cert, b_key = ca.issue("impostor", uris=[OTHER])
    base = {"admin": {"address": f"127.0.0.1:{sc.ADMIN}"}, "workers": 1, "drain_timeout": "1s"}
    config_a = {**base, "sidecar": {"ipv6": False,
                                    "mtls": {"cert": str(a_cert), "key": str(a_key), "ca": str(ca.cert)},
                                    "services": [{"name": "orders", "addresses": [VIP], "port": 80, "cluster": "orders",
                                                  "mtls": True, "identities": [ORDERS]}]},
                "clusters": [{"name": "orders", "endpoints": [f"{B_IP}:8081"]}]}
    config_b = {**base, "sidecar": {"ipv6": False, "inbound": [{"port": 8081, "protocol": "http"}],
                                    "mtls": {"cert": str(b_cert), "key": str(b_key), "ca": str(ca.cert)}}}
    ra = sidecar(a, config_a, tmp_path, "pod-a")
    rb = sidecar(b, config_b, tmp_path, "pod-b")
    try:
        ra.wait_ready()
        rb.wait_ready()
        for ns in (a, b):
            sc.in_ns(ns, str(remora_bin()), "iptables", "--uid", "0", "--admin-port", str(sc.ADMIN), "--no-ipv6", "--apply")
        sc.wait_port(b, "127.0.0.1", 8081)
        r = curl(a, "-w", "%{http_code}", "-o", "/dev/null", f"http://{VIP}/x", app=True)
        assert r.stdout == b"503", r
        assert sc.stats(a)["cluster.orders.ssl_fail_verify_error"] >= 1
        assert sc.stats(b).get("listener.inbound_8081.downstream_rq_total", 0) == 0
    finally:
        code_a, code_b = stop(ra), stop(rb)
    assert code_a == 0, ra.stderr_tail()
    assert code_b == 0, rb.stderr_tail()


def test_unreadable_mtls_files_name_the_sidecar_field(tmp_path):
    """The inbound listener's TLS files come from `sidecar.mtls`: an unreadable one is reported there
    (file, line, field), not under a listener the file does not have. No namespace needed."""
    ca = CA(tmp_path / "pki")
    cert, key = ca.issue("w", uris=[FRONTEND])
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"sidecar:\n  ipv6: false\n  mtls:\n    cert: {cert}\n    key: {tmp_path / 'missing-key.pem'}\n"
                   f"    ca: {ca.cert}\n")
    r = subprocess.run([str(remora_bin()), "validate", str(cfg)], capture_output=True, timeout=20)
    assert r.returncode == 1
    assert f"v.yaml:5: sidecar.mtls.key: cannot read {tmp_path / 'missing-key.pem'}" in r.stderr.decode(), r.stderr
    cfg.write_text(f"sidecar:\n  mtls: {{ cert: {cert}, key: {key}, ca: {ca.cert}, mode: strict }}\n")
    assert subprocess.run([str(remora_bin()), "validate", str(cfg)], capture_output=True, timeout=20).returncode == 0
