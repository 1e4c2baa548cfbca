"""Circuit breakers (issue 12): limits per cluster per process; over a limit a request fails at once
with 503 and `x-remora-overloaded: true` (gRPC UNAVAILABLE), counted, with gauges of how close each
breaker is."""

from __future__ import annotations

import threading
import time

from harness import Client, cluster, http_listener, make_config, request


def test_max_requests_10_with_50_concurrent_gives_40_fast_503s(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [backend.endpoint], circuit_breaker={"max_requests": 10})]))
    port = remora.port("web")
    results: list[tuple[int, bool, float]] = []
    lock = threading.Lock()
    go = threading.Event()

    def one():
        c = Client(port, timeout=15)
        try:
            go.wait(5)
            t0 = time.monotonic()
            r = c.request("GET", "/sleep/1500")
            with lock:
                results.append((r.status, r.header("x-remora-overloaded") == "true", time.monotonic() - t0))
        finally:
            c.close()

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.3)   # every client connected
    go.set()
    # While the 10 are held by the slow backend, the breaker shows open with nothing remaining.
    remora.wait_stat("cluster.app.circuit_breakers.default.rq_open", lambda v: v == 1, timeout=3)
    assert remora.stat("cluster.app.circuit_breakers.default.remaining_rq") == 0
    for t in threads:
        t.join(20)
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(results) == 50 and len(ok) == 10 and len(refused) == 40, sorted(r[0] for r in results)
    assert all(over for _, over, _ in refused), "every 503 says x-remora-overloaded: true"
    assert not any(over for _, over, _ in ok)
    assert max(t for _, _, t in refused) < 1.0, "refusals are fast, not queued behind the slow backend"
    assert min(t for _, _, t in ok) >= 1.4
    assert remora.stat("cluster.app.upstream_rq_overflow") == 40
    assert remora.stat("cluster.app.upstream_rq_total") == 10
    assert len(backend.requests) == 10
    remora.wait_stat("cluster.app.circuit_breakers.default.rq_open", lambda v: v == 0)
    assert remora.stat("cluster.app.circuit_breakers.default.remaining_rq") == 10
    assert request(port, "GET", "/echo").status == 200   # the slots came back


def test_max_connections_refuses_new_connections(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [backend.endpoint], circuit_breaker={"max_connections": 2})]))
    port = remora.port("web")
    statuses = []
    lock = threading.Lock()

    def one():
        r = request(port, "GET", "/sleep/800", timeout=10)
        with lock:
            statuses.append((r.status, r.header("x-remora-overloaded")))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(s for s, _ in statuses) == [200, 200, 503, 503, 503, 503], statuses
    assert all(h == "true" for s, h in statuses if s == 503)
    assert remora.stat("cluster.app.upstream_cx_overflow") == 4
    # The two connections stay open in the idle pool: they still count.
    assert remora.stat("cluster.app.circuit_breakers.default.remaining_cx") == 0


def test_no_breaker_by_default(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [backend.endpoint])]))
    stats = remora.stats()
    assert not any("circuit_breakers" in k for k in stats), "no circuit_breaker: no limits, no gauges"
