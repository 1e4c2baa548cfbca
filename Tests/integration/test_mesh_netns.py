"""A mesh on one machine (issue 15): four "pods" in network namespaces on a bridge, each an unmodified
application with a Remora sidecar behind the iptables rules `remora iptables` applies, configured by
`remora control` (deploy/meshlab.py builds it; `make mesh-demo` runs the same thing for a person).

    hub (bridge, remora control) ── frontend (client app) · orders-v1 · orders-v2 (HTTP apps) · intruder

The frontend application calls `http://orders:8080/` with urllib and no proxy settings (`orders` is a
service address in /etc/hosts that no interface has). The test proves: the call is captured and split
90/10 between orders-v1 and orders-v2 by the control plane's document; every hop between the pods is
mutual TLS (the sidecars' handshake counters, the caller's SPIFFE id handed to the orders application
in x-forwarded-client-cert, /certs, and a tcpdump capture of the bridge with no plaintext HTTP in any
frontend → orders connection, while the intruder's plaintext attempt does show up in it); the orders
sidecars' rule that allows only the frontend's identity answers the intruder's mTLS call with 403, and
its plaintext call straight to orders-v1 fails the strict handshake (no HTTP answer at all); a weight
change pushed with `remora ctl split` during load and a certificate rotation during load (the files
rewritten) lose no request. Skipped, with the reason, without root / `ip netns` / iptables / tcpdump.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest

from harness import remora_bin

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
import meshlab as ml  # noqa: E402

O1, O2, FE, IN = (f"{ml.SUBNET}.{i}" for i in (11, 12, 10, 13))


@pytest.fixture
def mesh_certs(tmp_path):
    """The mesh's certificates, made in one place: the openssl CLI today (a CA and one SPIFFE identity
    per workload; `issue` again = rotation). When `remora control` issues them over CSRs, this is the
    function that changes."""
    return ml.OpensslCA(tmp_path / "pki")


@pytest.fixture
def mesh(tmp_path, mesh_certs):
    why = ml.unavailable()
    if why:
        pytest.skip(why)
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (Debian: tcpdump)")
    m = ml.Mesh(remora_bin(), tmp_path / "mesh", mesh_certs)
    try:
        m.up()
        yield m
    finally:
        m.down()
        left = m.left_behind()
        assert not left, f"left behind: {left}"


def within_4sd(n: int, k: int, p: float) -> bool:
    """k of n requests went to the side chosen with probability p: |k - np| <= 4 standard deviations."""
    return abs(k - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def xfcc(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in value.split(";"))


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)


# By hand, from the hub (root, no sidecar): mTLS to orders-v1 with the frontend's certificate, one GET.
# Prints the serial of the certificate orders-v1 presented and the answer's JSON body.
BY_HAND = r"""
import json, socket, ssl, sys
host, ca, cert, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
with socket.create_connection((host, 8080), timeout=5) as raw, ctx.wrap_socket(raw) as s:
    serial = s.getpeercert()["serialNumber"]
    s.sendall(b"GET /by-hand HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"serial": serial, "status": head.split()[1].decode(), "body": json.loads(body)}))
"""


@pytest.mark.timeout(110)
def test_mesh_split_mtls_authorization_weight_change_and_rotation(mesh):
    m = mesh
    m.start_capture()
    fe_cert = m.certs.files("frontend")[0]

    # 1. The frontend application calls http://orders:8080/: captured, split 90/10, over mTLS.
    n = 1000
    res = m.client("frontend", count=n, concurrency=8).finish(60)
    assert len(res) == n and [r for r in res if not r.ok] == []
    v2 = sum(r.version == "v2" for r in res)
    assert {r.version for r in res} == {"v1", "v2"}
    assert within_4sd(n, v2, 0.10), f"{v2} of {n} requests to v2, expected about 10 %"
    print(f"\n90/10: {n - v2} v1, {v2} v2 in {max(r.end for r in res) - min(r.start for r in res):.1f} s")
    # The orders application learnt who called from its sidecar: the frontend's identity, its
    # certificate's hash, and the orders identity that verified it.
    for r in res:
        x = xfcc(r.xfcc)
        assert (x["By"], x["URI"], x["Hash"].lower()) == (ml.ORDERS, ml.FRONTEND, ml.cert_hash(fe_cert)), r.xfcc

    def stats_when(pod, want: dict[str, int]):   # the sidecars' counters are published with a small delay
        deadline = time.monotonic() + 5
        while True:
            s = m.stats(pod)
            if all(s.get(k, 0) == v for k, v in want.items()):
                return s
            assert time.monotonic() < deadline, f"{pod}: want {want}, have {({k: s.get(k) for k in want})}"
            time.sleep(0.1)
    fs = stats_when("frontend", {"listener.outbound_orders.downstream_rq_total": n,
                                 "listener.sidecar_outbound.sidecar_service_matched": n,   # captured, the VIP matched
                                 "cluster.orders-v1.upstream_rq_total": n - v2,
                                 "cluster.orders-v2.upstream_rq_total": v2})
    assert fs["cluster.orders-v1.ssl_handshake"] >= 1 and fs["cluster.orders-v2.ssl_handshake"] >= 1
    assert fs.get("cluster.orders-v1.ssl_fail_verify_error", 0) == 0
    for pod, served in (("orders-v1", n - v2), ("orders-v2", v2)):
        s = stats_when(pod, {"listener.inbound_8080.rbac_allowed": served,
                             "listener.inbound_8080.downstream_rq_total": served})
        assert s["listener.sidecar_inbound.ssl_handshake"] >= 1
        assert s.get("listener.sidecar_inbound.ssl_plaintext_accepted", 0) == 0
    # The identities each sidecar presents (/certs).
    fc = m.certs_served("frontend")
    assert fc["cluster.orders-v1.cert"]["uri_sans"] == [ml.FRONTEND]
    assert m.certs_served("orders-v2")["listener.sidecar_inbound.certificates[0]"]["uri_sans"] == [ml.ORDERS]

    # 2. The intruder: a mesh identity (same CA) that the orders rule does not name.
    before = m.stats("orders-v1")
    r = m.client("intruder", count=1, concurrency=1).finish(30)[0]
    assert not r.ok and r.status == 403, r               # mTLS worked; the rule refused it
    after = stats_when("orders-v1", {"listener.inbound_8080.rbac_denied": before.get("listener.inbound_8080.rbac_denied", 0) + 1})
    assert after["listener.sidecar_inbound.ssl_handshake"] > before["listener.sidecar_inbound.ssl_handshake"]
    # Plaintext straight to orders-v1's address (the intruder's sidecar passes unknown destinations
    # through as bytes): strict mTLS fails the handshake, so there is no HTTP answer at all.
    r = m.client("intruder", url=f"http://{O1}:8080/direct", count=1, concurrency=1).finish(30)[0]
    assert not r.ok and r.status is None, r
    wait_for(lambda: m.stats("orders-v1").get("listener.sidecar_inbound.ssl_connection_error", 0)
             > before.get("listener.sidecar_inbound.ssl_connection_error", 0), 5, "orders-v1's ssl_connection_error")
    stats_when("orders-v1", {"listener.inbound_8080.downstream_rq_total": n - v2 + 1})   # only the 403 one

    # 3. A weight change pushed through the control plane during load: no request lost.
    load = m.client("frontend", count=0, concurrency=6)
    load.wait_count(300, 30)
    t_push = time.time()
    version = m.split(50, 50)
    t_applied = m.wait_version("frontend", version)
    deadline = time.monotonic() + 40
    while sum(r.start > t_applied + 0.2 for r in load.results) < 600:
        assert time.monotonic() < deadline and load.proc.alive(), f"{len(load.results)} requests made"
        time.sleep(0.05)
    load.proc.stop()
    res = load.results
    assert [r for r in res if not r.ok] == [], "requests failed while the weights changed"
    old = [r for r in res if r.end < t_push]
    new = [r for r in res if r.start > t_applied + 0.2]
    assert within_4sd(len(old), sum(r.version == "v2" for r in old), 0.10), (len(old), sum(r.version == "v2" for r in old))
    assert within_4sd(len(new), sum(r.version == "v2" for r in new), 0.50), (len(new), sum(r.version == "v2" for r in new))
    print(f"weight change: {len(res)} requests, none failed; before {sum(r.version == 'v2' for r in old)} of "
          f"{len(old)} to v2, after {sum(r.version == 'v2' for r in new)} of {len(new)}; applied "
          f"{t_applied - t_push:.2f} s after the push")
    status = m.ctl("status").stdout.decode()
    assert any(line.split()[:2] == ["frontend", "frontend"] and {str(version), "ACK"} <= set(line.split())
               for line in status.splitlines()), status

    # 4. Certificate rotation during load: new keys and certificates for the same identities, written
    # over the files the sidecars loaded; no request lost, and new handshakes use the new ones.
    load = m.client("frontend", count=0, concurrency=6)
    load.wait_count(200, 30)
    old_serials = {w: ml.cert_serial(m.certs.files(w)[0]) for w in ("frontend", "orders")}
    m.certs.issue("frontend", ml.FRONTEND)
    m.certs.issue("orders", ml.ORDERS)
    serials = {w: ml.cert_serial(m.certs.files(w)[0]) for w in ("frontend", "orders")}
    assert serials["frontend"] != old_serials["frontend"] and serials["orders"] != old_serials["orders"]

    def served(pod, name):
        return ml.norm_serial(str(m.certs_served(pod).get(name, {}).get("serial", "")))
    wait_for(lambda: served("frontend", "cluster.orders-v1.cert") == serials["frontend"]
             and served("frontend", "listener.sidecar_inbound.certificates[0]") == serials["frontend"]
             and all(served(p, "listener.sidecar_inbound.certificates[0]") == serials["orders"]
                     for p in ("orders-v1", "orders-v2")), 10, "every sidecar reloaded its certificate")
    n0 = len(load.results)
    load.wait_count(n0 + 300, 30)
    load.proc.stop()
    assert [r for r in load.results if not r.ok] == [], "requests failed while the certificates rotated"
    assert len(load.results) >= n0 + 300
    print(f"rotation: {len(load.results)} requests, none failed")
    for pod in ("frontend", "orders-v1", "orders-v2"):
        wait_for(lambda: m.stats(pod).get("tls.cert_reload", 0) >= 1, 5, f"{pod}: tls.cert_reload")
    # A new handshake with orders-v1 (by hand, from the hub, with the frontend's new certificate):
    # it presents its new certificate, and its application sees the new client certificate's hash.
    out = json.loads(m.in_pod("hub", "python3", "-c", BY_HAND, O1, str(m.certs.ca), str(fe_cert),
                              str(m.certs.files("frontend")[1])).stdout)
    assert ml.norm_serial(out["serial"]) == serials["orders"]
    assert out["status"] == "200" and out["body"]["version"] == "v1"
    x = xfcc(out["body"]["xfcc"])
    assert x["URI"] == ml.FRONTEND and x["Hash"].lower() == ml.cert_hash(fe_cert)

    # 5. The wire: every connection from the frontend to an orders pod is TLS, none carries plaintext
    # HTTP; the intruder's plaintext attempt is there in clear (the check can see plaintext).
    flows = m.stop_capture()
    mesh_flows = [f for f in flows if f.client[0] == FE and f.server[1] == 8080 and f.to_server]
    assert {f.server[0] for f in mesh_flows} == {O1, O2}, [(f.client, f.server) for f in flows]
    bad = [(f.client, f.server, f.to_server[:40]) for f in mesh_flows if not f.tls or f.plaintext_http()]
    assert bad == [], bad
    direct = [f for f in flows if f.client[0] == IN and f.server == (O1, 8080) and f.to_server]
    assert sum(f.tls for f in direct) >= 1 and sum(f.plaintext_http() and not f.tls for f in direct) == 1, \
        [(f.tls, f.to_server[:40]) for f in direct]
    print(f"wire: {len(mesh_flows)} frontend -> orders connections, all TLS; {len(flows)} connections captured")
    assert all(p.alive() for p in m.procs if p.name.startswith(("sidecar-", "control", "app-"))), \
        [(p.name, p.proc.returncode, p.stderr_tail(5)) for p in m.procs if not p.alive()]
