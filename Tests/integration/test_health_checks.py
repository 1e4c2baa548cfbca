"""Active health checks (issue 12): probes once per process, thresholds for every kind of failure, an
unhealthy endpoint leaves load balancing and comes back, panic below the threshold."""

from __future__ import annotations

import socket
import time

import pytest

from backends import HTTPBackend
from harness import Client, cluster, http_listener, make_config, poll


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
