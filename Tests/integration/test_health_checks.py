"""Active health checks (issue 12): probes once per process, thresholds for every kind of failure, an
unhealthy endpoint leaves load balancing and comes back, panic below the threshold."""

from __future__ import annotations

import socket
import time

import pytest

from backends import HTTPBackend
from harness import Client, cluster, http_listener, make_config, poll, route


class HealthBackend(HTTPBackend):
    """/healthz answers 200, or 503 while `sick`; everything else as usual. Counts its probes."""

    def __init__(self, keep_alive: bool = False):
        self.sick = False
        self.probes = 0
        self.keep_alive = keep_alive
        self.probe_conns: set[int] = set()
        super().__init__()

    def _respond(self, conn, req, path):
        if path == "/healthz":
            with self.lock:
                self.probes += 1
                self.probe_conns.add(req["conn_id"])
                self.requests.remove(req)   # not traffic
            status = 503 if self.sick else 200
            headers = [("content-length", "0")] + ([] if self.keep_alive else [("connection", "close")])
            self._send(conn, status, headers, b"", False)
            return self.keep_alive
        return super()._respond(conn, req, path)


@pytest.fixture
def health_backend(request):
    made = []

    def make(**kw):
        b = HealthBackend(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def hc(**kw):
    d = {"http": {"path": "/healthz"}, "interval": "200ms", "timeout": "500ms", "jitter": "10%",
         "unhealthy_threshold": 3, "healthy_threshold": 2}
    d.update(kw)
    return d


def test_unhealthy_endpoint_leaves_and_returns(start_remora, health_backend):
    backends = [health_backend() for _ in range(3)]
    backends[0].sick = True
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [b.endpoint for b in backends], lb="round_robin",
                                               health_check=hc())]))
    t0 = time.monotonic()
    # out within (first probe ≤ interval) + interval × unhealthy_threshold (+ jitter)
    remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 2, timeout=3)
    assert time.monotonic() - t0 < 0.2 + 3 * 0.22 + 0.5
    time.sleep(0.1)   # the workers took the change
    before = len(backends[0].requests)
    with Client(remora.port("web"), timeout=5) as c:
        statuses = [c.request("GET", "/echo").status for _ in range(30)]
    assert statuses == [200] * 30 and len(backends[0].requests) == before
    assert "unhealthy (health check" in remora.stderr_tail(100)
    # Probes once per process, not once per worker: about one per interval per endpoint.
    p0 = backends[1].probes
    time.sleep(1.0)
    assert backends[1].probes - p0 <= 7, "2 workers probing each would double this"
    backends[0].sick = False
    t1 = time.monotonic()
    remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 3, timeout=3)
    assert time.monotonic() - t1 < 2 * 0.22 + 0.5
    time.sleep(0.1)
    with Client(remora.port("web"), timeout=5) as c:
        for _ in range(9):
            assert c.request("GET", "/echo").status == 200
    assert len(backends[0].requests) > before


def test_one_failed_probe_never_flips(start_remora, health_backend):
    b = health_backend()
    other = health_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [b.endpoint, other.endpoint], health_check=hc(interval="100ms"))]))
    poll(lambda: b.probes >= 2, timeout=3, what="probes")
    for _ in range(5):   # one bad answer at a time, then good ones
        b.sick = True
        n = b.probes
        poll(lambda: b.probes > n, timeout=3, what="a probe")
        b.sick = False
        n = b.probes
        poll(lambda: b.probes > n, timeout=3, what="a probe")
    assert remora.stat("cluster.app.health_check.healthy") == 2
    assert remora.stat("cluster.app.health_check.failure") >= 5


def test_tcp_check_on_a_closed_port_and_panic(start_remora, health_backend, refused_endpoint):
    good = health_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [refused_endpoint, good.endpoint], lb="round_robin",
                                               panic_threshold=0,
                                               health_check={"tcp": {}, "interval": "100ms", "unhealthy_threshold": 2})]))
    remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 1, timeout=3)
    time.sleep(0.1)
    with Client(remora.port("web"), timeout=5) as c:
        assert [c.request("GET", "/echo").status for _ in range(10)] == [200] * 10


def test_panic_spreads_over_all_when_too_few_are_healthy(start_remora, health_backend):
    backends = [health_backend() for _ in range(3)]
    backends[0].sick = backends[1].sick = True
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [b.endpoint for b in backends], lb="round_robin",
                                               panic_threshold="50%", health_check=hc(interval="100ms"))],
                                      workers=1))
    remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 1, timeout=3)
    time.sleep(0.1)
    with Client(remora.port("web"), timeout=5) as c:
        for _ in range(30):
            c.request("GET", "/echo")
    assert all(len(b.requests) >= 8 for b in backends), [len(b.requests) for b in backends]
    assert remora.stat("cluster.app.lb_healthy_panic") >= 30


def test_http_probes_reuse_their_connection(start_remora, health_backend):
    b = health_backend(keep_alive=True)
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [b.endpoint], health_check=hc(interval="50ms"))]))
    poll(lambda: b.probes >= 10, timeout=5, what="ten probes")
    assert len(b.probe_conns) == 1, f"{b.probes} probes on {len(b.probe_conns)} connections"
    assert remora.stat("cluster.app.health_check.healthy") == 1



def test_slow_start_ramps_up_a_returning_endpoint(start_remora, health_backend):
    """slow_start: an endpoint healthy again gets a share that grows over the window (Envoy's curve:
    weight x max(10 %, elapsed/window)), not half the traffic at once; without it, round robin would
    give it 50 % from the first request."""
    a, b = health_backend(keep_alive=True), health_backend(keep_alive=True)
    a.sick = True
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [a.endpoint, b.endpoint], lb="round_robin", panic_threshold=0,
                                               slow_start="3s",
                                               health_check=hc(interval="50ms", unhealthy_threshold=1, healthy_threshold=1))],
                                      workers=1))
    remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 1, timeout=3)
    a.sick = False
    remora.wait_stat("cluster.app.health_check.healthy", lambda v: v == 2, timeout=3)
    shares = []
    with Client(remora.port("web"), timeout=5) as c:
        t0 = time.monotonic()
        for w in range(5):   # five windows of 0.6 s: the 3 s ramp
            na, nb = len(a.requests), len(b.requests)
            end = t0 + (w + 1) * 0.6
            n = 0
            while time.monotonic() < end and n < 5000:
                assert c.request("GET", "/echo").status == 200
                n += 1
            da, db = len(a.requests) - na, len(b.requests) - nb
            shares.append(da / max(1, da + db))
    assert shares[0] < 0.3, shares
    assert shares[-1] > 0.38, shares
    assert shares[-1] - shares[0] > 0.15, shares


# -- gRPC checks: grpc.health.v1.Health/Check against grpcio's own health servicer ---------------

def _grpc_env():
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2",
                                     reason="grpcio-health-checking is not installed (make setup)")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend
    return grpc, health_pb2, echo_pb2, echo_pb2_grpc, GRPCBackend


@pytest.fixture
def grpc_health_backend():
    _, _, _, _, GRPCBackend = _grpc_env()
    made = []

    def make(name):
        b = GRPCBackend(name, max_workers=8, health=True)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop(None).wait(5)


def _grpc_calls(grpc, echo_pb2, echo_pb2_grpc, port, n):
    """n unary calls through Remora; the backends that answered, in order (every call must succeed)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0),
                                                             ("grpc.enable_retries", 0)]) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        return [stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=5).backend for _ in range(n)]


def test_grpc_check_follows_the_health_servicer(start_remora, grpc_health_backend):
    """A gRPC check against grpcio's real health servicer: the service it names NOT_SERVING takes the
    endpoint out (although the server as a whole says SERVING), SERVING brings it back; traffic follows."""
    grpc, health_pb2, echo_pb2, echo_pb2_grpc, _ = _grpc_env()
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    a, b = grpc_health_backend("A"), grpc_health_backend("B")
    a.health.set("remora.test.Echo", NOT_SERVING)   # "" stays SERVING: the check must name the service
    b.health.set("remora.test.Echo", SERVING)
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("grpc")])],
        [cluster("grpc", [a.endpoint, b.endpoint], protocol="http2", lb="round_robin", panic_threshold=0,
                 health_check={"grpc": {"service": "remora.test.Echo"}, "interval": "100ms", "timeout": "1s",
                               "unhealthy_threshold": 2, "healthy_threshold": 2})]))
    t0 = time.monotonic()
    remora.wait_stat("cluster.grpc.health_check.healthy", lambda v: v == 1, timeout=3)
    assert time.monotonic() - t0 < 0.1 + 2 * 0.11 + 0.5
    time.sleep(0.1)   # the workers took the change
    assert set(_grpc_calls(grpc, echo_pb2, echo_pb2_grpc, remora.port("web"), 10)) == {"B"}
    assert "unhealthy (health check" in remora.stderr_tail(100)
    a.health.set("remora.test.Echo", SERVING)
    t1 = time.monotonic()
    remora.wait_stat("cluster.grpc.health_check.healthy", lambda v: v == 2, timeout=3)
    assert time.monotonic() - t1 < 2 * 0.11 + 0.5
    time.sleep(0.1)
    assert set(_grpc_calls(grpc, echo_pb2, echo_pb2_grpc, remora.port("web"), 10)) == {"A", "B"}
    assert remora.stat("cluster.grpc.health_check.failure") >= 2
    assert remora.stat("cluster.grpc.health_check.success") >= 4


def test_grpc_check_fails_on_an_unknown_service_and_on_plain_http(start_remora, grpc_health_backend, health_backend):
    """NOT_FOUND (grpcio's answer for a service it does not know) fails, and so does an HTTP/1.1
    server that is not gRPC at all; one probe connection serves many probes."""
    a = grpc_health_backend("A")
    plain = health_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("g")])],
        [cluster("g", [a.endpoint], protocol="http2", panic_threshold=0,
                 health_check={"grpc": {"service": "no.such.Service"}, "interval": "100ms", "unhealthy_threshold": 2}),
         cluster("h", [plain.endpoint], protocol="http2", panic_threshold=0,
                 health_check={"grpc": {}, "interval": "100ms", "timeout": "300ms", "unhealthy_threshold": 2})]))
    remora.wait_stat("cluster.g.health_check.healthy", lambda v: v == 0, timeout=3)
    remora.wait_stat("cluster.h.health_check.healthy", lambda v: v == 0, timeout=3)
    remora.assert_alive()
