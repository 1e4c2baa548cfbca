"""Endpoint sets that change under traffic (issue 12): DNS refresh of endpoint names (`dns_refresh`,
each resolved address an endpoint) and reloads that move endpoints keep connections to the endpoints
that stay and fail no request."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from backends import HTTPBackend
from harness import Client, Remora, cluster, http_listener, make_config, poll, request, tcp_listener, to_yaml

NAME = "svc.remora.test"


class Backend(HTTPBackend):
    """An HTTPBackend on a given address and port. /healthz answers 200, or 503 while `sick` (probes
    are counted in `.probes`, not in `.requests`); everything else 500 while `failing`."""

    def __init__(self, host: str, port: int = 0):
        self.sick = False
        self.failing = False
        self.probes = 0
        super().__init__(host, port=port)

    def _respond(self, conn, req, path):
        if path == "/healthz":
            with self.lock:
                self.probes += 1
                self.requests.remove(req)
            self._send(conn, 503 if self.sick else 200, [("content-length", "0")], b"", False)
            return True
        if self.failing:
            self._send(conn, 500, [("content-length", "0")], b"", req["method"] == "HEAD")
            return True
        return super()._respond(conn, req, path)


def backends_on_one_port(hosts: list[str]) -> list[Backend]:
    """One backend per loopback address, all on the same port (one name, one port, several
    addresses: what a DNS name of a replicated service resolves to)."""
    for _ in range(10):
        made = [Backend(hosts[0])]
        try:
            for h in hosts[1:]:
                made.append(Backend(h, port=made[0].port))
            return made
        except OSError:   # that port is taken on another address: try another
            for b in made:
                b.close()
    pytest.skip("no port free on every loopback address")


@pytest.fixture
def hosts_remora(remora_binary, tmp_path):
    """start(config) -> a Remora whose /etc/hosts is `tmp_path/hosts` (a private mount namespace:
    `unshare -m` + a bind mount), and set_hosts({address: name}) rewriting it in place: the test is
    the name's DNS. Skipped where mount namespaces are not allowed."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {hosts} /etc/hosts"],
                           capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode(errors='replace').strip()}")
    wrapper = tmp_path / "remora-with-hosts"
    wrapper.write_text(f"#!/bin/sh\nexec unshare -m sh -c 'mount --bind {hosts} /etc/hosts && exec {remora_binary} \"$@\"' sh \"$@\"\n")
    wrapper.chmod(0o755)
    started: list[Remora] = []

    def set_hosts(addresses: list[str]):
        with open(hosts, "r+") as f:   # the same file (inode): the bind mount shows the new text
            f.truncate(0)
            f.write("127.0.0.1 localhost\n" + "".join(f"{a} {NAME}\n" for a in addresses))

    def start(config) -> Remora:
        r = Remora(wrapper, config, tmp_path, name=f"remora{len(started) or ''}")
        started.append(r)
        return r.wait_ready()

    yield start, set_hosts
    for r in started:
        crashed = r.proc.poll() is not None
        code = r.stop(timeout=5)
        assert not crashed and code == 0, f"exit {code}\n{r.stderr_tail()}"
        assert "handles left" not in r.stderr_tail(10_000)


def test_dns_refresh_of_localhost_fails_no_request(start_remora):
    """A cluster whose endpoint is `localhost:PORT`, re-resolved every 100 ms (uv_getaddrinfo off the
    loop) while a client sends requests: zero failures, the refreshes counted as Envoy counts them."""
    addrs = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)})
    backends = [HTTPBackend("127.0.0.1")]
    port = backends[0].port
    try:
        for a in addrs:
            if a != "127.0.0.1":
                try:
                    backends.append(HTTPBackend(a, port=port))   # every address localhost has, one port
                except OSError as e:
                    pytest.skip(f"localhost resolves to {a}, which cannot be bound here: {e}")
        remora = start_remora(make_config([http_listener("web")],
                                          [cluster("app", [f"localhost:{port}"], dns_refresh="100ms")]))
        n, failed = 0, 0
        t0 = time.monotonic()
        with Client(remora.port("web"), timeout=5) as c:
            while time.monotonic() < t0 + 1.5 and n < 3000:
                if c.request("GET", "/echo").status != 200:
                    failed += 1
                n += 1
        assert failed == 0 and n >= 50, (n, failed)
        remora.wait_stat("cluster.app.update_attempt", lambda v: v >= 5, timeout=3)
        assert remora.stat("cluster.app.update_failure") == 0
        assert remora.stat("cluster.app.update_no_rebuild") >= remora.stat("cluster.app.update_attempt") - 1
        assert sum(len(b.requests) for b in backends) == n
        remora.assert_alive()
    finally:
        for b in backends:
            b.close()


def test_a_reload_that_moves_endpoints_keeps_connections_to_those_that_stay(start_remora, http_backend):
    """One endpoint, then a reload that adds a second: the first endpoint's pooled connection is
    taken over by the new endpoint set (the backend sees no new connection), the new endpoint gets
    its share, no request fails."""
    a, b = http_backend(), http_backend()
    doc = make_config([http_listener("web")], [cluster("app", [a.endpoint], lb="round_robin")], workers=1)
    remora = start_remora(doc)
    with Client(remora.port("web"), timeout=5) as c:
        for _ in range(5):
            assert c.request("GET", "/echo").status == 200
        before = {r["conn_id"] for r in a.requests}
        assert len(before) == 1
        doc2 = make_config([http_listener("web")], [cluster("app", [a.endpoint, b.endpoint], lb="round_robin")],
                           workers=1)
        remora.config_path.write_text(to_yaml(doc2))
        os.kill(remora.pid, signal.SIGHUP)
        remora.wait_stat("server.config_version", lambda v: v == 2, timeout=5)
        for _ in range(10):
            assert c.request("GET", "/echo").status == 200
    assert {r["conn_id"] for r in a.requests} == before, "the connection to the endpoint that stayed was dropped"
    assert len(b.requests) >= 4
    remora.assert_alive()


def test_dns_refresh_follows_the_name_and_keeps_connections(hosts_remora):
    """The name's addresses change under traffic: a new address gets its share, a removed one gets
    nothing more, the connections to the addresses that stay are the same ones, no request fails."""
    start, set_hosts = hosts_remora
    a, b, c = backends = backends_on_one_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    try:
        set_hosts(["127.0.0.2", "127.0.0.3"])
        remora = start(make_config([http_listener("web")],
                                   [cluster("app", [f"{NAME}:{a.port}"], lb="round_robin", dns_refresh="100ms")],
                                   workers=1))
        statuses = []
        with Client(remora.port("web"), timeout=5) as cl:
            for _ in range(10):
                statuses.append(cl.request("GET", "/echo").status)
            conns = {x.host: {r["conn_id"] for r in x.requests} for x in (a, b)}
            assert len(b.requests) == 5 and not c.requests
            set_hosts(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
            t0 = time.monotonic()
            while len(c.requests) < 5 and time.monotonic() < t0 + 5:
                statuses.append(cl.request("GET", "/echo").status)
            assert len(c.requests) >= 5, "the new address never got traffic"
            assert remora.stat("cluster.app.membership_change") == 1
            # The connections to the endpoints that stayed were taken over, not opened again.
            assert {x.host: {r["conn_id"] for r in x.requests} for x in (a, b)} == conns
            set_hosts(["127.0.0.2", "127.0.0.4"])
            remora.wait_stat("cluster.app.membership_change", lambda v: v == 2, timeout=5)
            before = len(b.requests)
            for _ in range(20):
                statuses.append(cl.request("GET", "/echo").status)
        assert len(b.requests) == before, "a removed address still got requests"
        assert statuses == [200] * len(statuses)
        assert remora.stat("cluster.app.upstream_cx_total") == 3   # one per address, ever
        assert "DNS refresh: 3 endpoint(s) (1 new, 0 gone)" in remora.stderr_tail(200)
    finally:
        for x in backends:
            x.close()


def test_dns_refresh_keeps_health_and_ejections_of_endpoints_that_stay(hosts_remora):
    """One endpoint failing its health checks and one ejected by outlier detection stay out when the
    name gains an address; the counters go on; the new address waits for its first probe to pass."""
    start, set_hosts = hosts_remora
    addrs = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]
    ok1, ok2, sick, bad, new = backends = backends_on_one_port(addrs)
    try:
        sick.sick = True
        bad.failing = True
        new.sick = True   # its first probe fails: it must not get traffic
        set_hosts(addrs[:4])
        remora = start(make_config(
            [http_listener("web")],
            [cluster("app", [f"{NAME}:{ok1.port}"], lb="round_robin", dns_refresh="100ms", panic_threshold=0,
                     health_check={"http": {"path": "/healthz"}, "interval": "100ms", "timeout": "500ms",
                                   "unhealthy_threshold": 2, "healthy_threshold": 2},
                     outlier_detection={"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "30s"})],
            workers=1))
        remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 3, timeout=5)
        statuses = []
        with Client(remora.port("web"), timeout=5) as cl:
            for _ in range(40):
                statuses.append(cl.request("GET", "/echo").status)
                if remora.stat("cluster.app.outlier_detection.ejections_active") == 1:
                    break
            assert remora.stat("cluster.app.outlier_detection.ejections_active") == 1, statuses
            time.sleep(0.05)   # the worker took the ejection
            assert [cl.request("GET", "/echo").status for _ in range(6)] == [200] * 6
            n_sick, n_bad, probes = len(sick.requests), len(bad.requests), new.probes
            checks = remora.stat("cluster.app.health_check.attempt")
            set_hosts(addrs)
            remora.wait_stat("cluster.app.membership_change", lambda v: v == 1, timeout=5)
            poll(lambda: new.probes > probes, timeout=3, what="the new endpoint's first probe")
            after = [cl.request("GET", "/echo").status for _ in range(30)]
            assert after == [200] * 30, "an ejected endpoint came back with the new endpoint set"
            assert len(sick.requests) == n_sick, "an unhealthy endpoint came back with the new endpoint set"
            assert len(bad.requests) == n_bad
            assert not new.requests, "a new endpoint got traffic before a probe passed"
            assert remora.stat("cluster.app.outlier_detection.ejections_active") == 1
            assert remora.stat("cluster.app.outlier_detection.ejections_total") == 1
            assert remora.stat("cluster.app.health_check.attempt") >= checks
            new.sick = False   # passes now: in after healthy_threshold probes
            remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 4, timeout=5)
            time.sleep(0.05)
            for _ in range(12):
                assert cl.request("GET", "/echo").status == 200
        assert new.requests and len(sick.requests) == n_sick and len(bad.requests) == n_bad
    finally:
        for x in backends:
            x.close()


def test_dns_refresh_keeps_busy_http2_connections(hosts_remora):
    """An HTTP/2 cluster (grpcio backends) whose name gains an address while calls are under way on
    every connection: the connections to the addresses that stay carry on (taken over once their
    streams end, not sent a GOAWAY), the new address gets calls, every call succeeds."""
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend

    start, set_hosts = hosts_remora
    a = GRPCBackend("a", host="127.0.0.2")
    made = [a]
    try:
        for i, h in enumerate(["127.0.0.3", "127.0.0.4"]):
            try:
                made.append(GRPCBackend("bc"[i], host=h, port=a.port))
            except (AssertionError, RuntimeError) as e:
                pytest.skip(f"cannot bind {h}:{a.port}: {e}")
        _, b, c = made
        set_hosts(["127.0.0.2", "127.0.0.3"])
        remora = start(make_config([http_listener("web", routes=[{"name": "all", "match": {"path": {"prefix": "/"}},
                                                                  "backends": [{"cluster": "grpc"}]}])],
                                   [cluster("grpc", [f"{NAME}:{a.port}"], protocol="http2", lb="round_robin",
                                            dns_refresh="100ms")], workers=1))
        with grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}",
                                   options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            n = 0

            def wave(k: int = 6):   # k calls of 150 ms at once: both connections busy most of the time
                nonlocal n
                futs = [stub.Unary.future(echo_pb2.EchoRequest(message=f"m{n + i}", first_delay_ms=150,
                                                               call_id=f"call-{n + i}"), timeout=10) for i in range(k)]
                n += k
                return [f.result(timeout=10).message for f in futs]

            for _ in range(3):
                wave()
            assert remora.stat("cluster.grpc.upstream_cx_total") == 2
            set_hosts(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
            t0 = time.monotonic()
            while remora.stat("cluster.grpc.membership_change") < 1 and time.monotonic() < t0 + 5:
                wave()   # the refresh lands while streams are open
            assert remora.stat("cluster.grpc.membership_change") == 1
            for _ in range(4):
                wave()
        assert len(c.calls) > 0, "the new address got no call"
        assert len(a.calls) > 0 and len(b.calls) > 0
        assert remora.stat("cluster.grpc.upstream_cx_total") == 3, "a connection to an address that stayed was replaced"
        assert remora.stat("cluster.grpc.upstream_rq_5xx") == 0
    finally:
        for x in made:
            x.stop(None).wait(5)


def test_a_name_that_does_not_resolve_yet(hosts_remora):
    """With dns_refresh, a name that does not resolve at start (a service not created yet) does not
    stop the proxy: requests get a fast 503 until it resolves, then go through; said once in the
    log, not at every refresh. The TCP proxy likewise closes the client until then."""
    start, set_hosts = hosts_remora
    (b,) = backends_on_one_port(["127.0.0.2"])
    try:
        set_hosts([])
        remora = start(make_config([http_listener("web"), tcp_listener("bulk", "raw")],
                                   [cluster("app", [f"{NAME}:{b.port}"], dns_refresh="100ms"),
                                    cluster("raw", [f"{NAME}:{b.port}"], dns_refresh="100ms")], workers=1))
        t0 = time.monotonic()
        r = request(remora.port("web"), "GET", "/echo", timeout=5)
        assert r.status == 503 and time.monotonic() - t0 < 1.0
        with socket.create_connection(("127.0.0.1", remora.port("bulk")), timeout=5) as s:
            assert s.recv(100) == b"", "the TCP proxy closes a client it has no endpoint for"
        time.sleep(0.5)   # a few refreshes that fail
        assert remora.stderr_tail(200).count("does not resolve yet") == 2   # once per cluster
        assert "cannot resolve" not in remora.stderr_tail(200), "a name that still fails is not logged again"
        set_hosts(["127.0.0.2"])
        remora.wait_stat("cluster.app.membership_change", lambda v: v == 1, timeout=5)
        assert request(remora.port("web"), "GET", "/echo", timeout=5).status == 200
        assert len(b.requests) == 1
        remora.wait_stat("cluster.raw.membership_change", lambda v: v == 1, timeout=5)
        with socket.create_connection(("127.0.0.1", remora.port("bulk")), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        assert "resolves again" in remora.stderr_tail(200)
    finally:
        b.close()


def test_a_name_that_stops_resolving_keeps_its_addresses(hosts_remora):
    """The name stops resolving (DNS down, NXDOMAIN): the last addresses stay in use, through the
    refreshes and through a reload made meanwhile; the failure is counted and logged once."""
    start, set_hosts = hosts_remora
    (b,) = backends_on_one_port(["127.0.0.2"])
    try:
        set_hosts(["127.0.0.2"])
        doc = make_config([http_listener("web")], [cluster("app", [f"{NAME}:{b.port}"], dns_refresh="100ms")], workers=1)
        remora = start(doc)
        assert request(remora.port("web"), "GET", "/echo", timeout=5).status == 200
        set_hosts([])
        remora.wait_stat("cluster.app.update_failure", lambda v: v >= 3, timeout=5)
        assert request(remora.port("web"), "GET", "/echo", timeout=5).status == 200
        doc["clusters"].append(cluster("other", [f"127.0.0.1:{b.port}"]))   # a reload while the name fails
        remora.config_path.write_text(to_yaml(doc))
        os.kill(remora.pid, signal.SIGHUP)
        remora.wait_stat("server.config_version", lambda v: v == 2, timeout=5)
        assert request(remora.port("web"), "GET", "/echo", timeout=5).status == 200
        assert remora.stderr_tail(200).count("cannot resolve") == 1
        assert len(b.requests) == 3
    finally:
        b.close()


@pytest.mark.parametrize("family", ["v4_preferred", "v4_only"])
def test_dns_lookup_family_leaves_out_the_ipv6_address_nothing_listens_on(hosts_remora, family):
    """The name has an IPv6 and an IPv4 address and the backend listens on the IPv4 one only (the
    `localhost` trap): with the family set, only the IPv4 address is an endpoint, no connect fails,
    at load and after a refresh."""
    start, set_hosts = hosts_remora
    (b,) = backends_on_one_port(["127.0.0.2"])
    try:
        set_hosts(["::1", "127.0.0.2"])
        remora = start(make_config([http_listener("web")],
                                   [cluster("app", [f"{NAME}:{b.port}"], lb="round_robin", dns_refresh="100ms",
                                            dns_lookup_family=family)], workers=1))
        with Client(remora.port("web"), timeout=5) as c:
            assert all(c.request("GET", "/echo").status == 200 for _ in range(10))
        assert remora.stat("cluster.app.upstream_cx_connect_fail") == 0
        assert f"[::1]:{b.port}" not in [e for e in remora.stderr_tail(200).split() if e.startswith("[")]
        set_hosts(["::1", "127.0.0.2", "127.0.0.3"])   # a refresh applies the family too
        remora.wait_stat("cluster.app.membership_change", lambda v: v == 1, timeout=5)
        assert "DNS refresh: 2 endpoint(s) (1 new, 0 gone)" in remora.stderr_tail(200)
    finally:
        b.close()
