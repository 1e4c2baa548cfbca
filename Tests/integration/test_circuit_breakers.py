"""Circuit breakers (issue 12): limits per cluster per process; over a limit a request fails at once
with 503 and `x-remora-overloaded: true` (gRPC UNAVAILABLE), counted, with gauges of how close each
breaker is."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from backends import HTTPBackend
from harness import Client, cluster, http_listener, make_config, request, route


class Slow503(HTTPBackend):
    """Answers every request 503 after 600 ms (a retriable failure that takes a while)."""

    def _respond(self, conn, req, path):
        self.stop.wait(0.6)
        self._send(conn, 503, [("content-length", "0")], b"", req["method"] == "HEAD")
        return True


def _at_once(n: int, fn) -> list:
    """fn() on n threads released together; their results."""
    out, lock, go = [], threading.Lock(), threading.Event()

    def one():
        go.wait(5)
        t0 = time.monotonic()
        r = fn()
        with lock:
            out.append((r, time.monotonic() - t0))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    go.set()
    for t in threads:
        t.join(20)
    return out


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


def test_max_retries_bounds_the_retries_under_way(start_remora):
    """max_retries 2, ten requests whose first tries all fail together with a retriable 503: two are
    retried, eight get the backend's answer without a retry (not an overload answer), counted."""
    backend = Slow503()
    try:
        retry = {"attempts": 2, "on": ["gateway-error"], "backoff": {"base": "1ms", "max": "1ms"}}
        remora = start_remora(make_config(
            [http_listener("web", routes=[dict(route("app"), retry=retry)])],
            [cluster("app", [backend.endpoint], circuit_breaker={"max_retries": 2}, retry_budget="off")]))
        port = remora.port("web")
        results = _at_once(10, lambda: request(port, "GET", "/echo", timeout=15))
        assert [r.status for r, _ in results] == [503] * 10
        assert not any(r.header("x-remora-overloaded") for r, _ in results), "a retry not made is no overload"
        assert len(backend.requests) == 12, "10 first tries + 2 retries"
        assert remora.stat("cluster.app.upstream_rq_retry") == 2
        assert remora.stat("cluster.app.upstream_rq_retry_overflow") == 8
        assert remora.stat("cluster.app.circuit_breakers.default.remaining_retries") == 2   # given back
    finally:
        backend.close()


def test_max_pending_fails_fast_while_connections_are_being_established(start_remora):
    """An endpoint whose accept queue is full (backlog 0, never accepting): connects stay pending.
    max_pending 2 and five requests: two wait for their connect (and fail at connect_timeout), three
    are refused at once with the overload answer, counted; the gauge shows the breaker open."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    filler = socket.create_connection(lsock.getsockname(), timeout=2)   # fills the accept queue
    try:
        endpoint = "127.0.0.1:%d" % lsock.getsockname()[1]
        remora = start_remora(make_config(
            [http_listener("web")],
            [cluster("app", [endpoint], connect_timeout="1500ms", circuit_breaker={"max_pending": 2})]))
        port = remora.port("web")
        seen = {}

        def watch():
            try:
                seen["open"] = remora.wait_stat("cluster.app.circuit_breakers.default.rq_pending_open",
                                                lambda v: v == 1, timeout=3)
            except AssertionError:
                pass

        w = threading.Thread(target=watch)
        w.start()
        results = _at_once(5, lambda: request(port, "GET", "/echo", timeout=15))
        w.join(5)
        over = [(r, t) for r, t in results if r.header("x-remora-overloaded") == "true"]
        waited = [(r, t) for r, t in results if r.header("x-remora-overloaded") != "true"]
        assert len(over) == 3 and all(r.status == 503 for r, _ in over), [(r.status, r.headers) for r, _ in results]
        assert max(t for _, t in over) < 1.0, "refused at once, not after the connect timeout"
        assert len(waited) == 2 and all(r.status in (502, 503, 504) and t >= 1.4 for r, t in waited)
        assert seen.get("open") == 1, "rq_pending_open was never 1 while two connects were pending"
        assert remora.stat("cluster.app.upstream_rq_pending_overflow") >= 3
        remora.wait_stat("cluster.app.circuit_breakers.default.remaining_pending", lambda v: v == 2, timeout=5)
    finally:
        filler.close()
        lsock.close()


def test_grpc_overflow_is_unavailable(start_remora):
    """Over max_requests a gRPC call ends at once with UNAVAILABLE (trailers-only), not a bare 503."""
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
    import echo_pb2
    import echo_pb2_grpc
    from echo_server import GRPCBackend

    backend = GRPCBackend("A")
    try:
        remora = start_remora(make_config([http_listener("web", routes=[route("grpc")])],
                                          [cluster("grpc", [backend.endpoint], protocol="http2",
                                                   circuit_breaker={"max_requests": 1})]))
        with grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}",
                                   options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            slow = stub.Unary.future(echo_pb2.EchoRequest(message="slow", first_delay_ms=1500), timeout=10)
            remora.wait_stat("cluster.grpc.circuit_breakers.default.rq_open", lambda v: v == 1, timeout=3)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                stub.Unary(echo_pb2.EchoRequest(message="second"), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
            assert time.monotonic() - t0 < 1.0
            assert dict(e.value.trailing_metadata() or ()).get("x-remora-overloaded") == "true"
            assert slow.result(timeout=10).message == "slow"
        assert remora.stat("cluster.grpc.upstream_rq_overflow") == 1
    finally:
        backend.stop(None).wait(5)
