"""Retries by a route's policy (issue 11): conditions, bounded tries, the cluster's retry budget,
per-try timeouts, methods, the replay buffer, server pushback, and gRPC statuses with grpcio."""

from __future__ import annotations

import math
import random
import socket
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from backends import HTTPBackend
from harness import Client, cluster, http_listener, make_config, poll, request

sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


class FlakyBackend(HTTPBackend):
    """Answers 503 to a share of the requests (seeded), or with `retry_after` a 503 with that header;
    counts every request it answers by target."""

    def __init__(self, fail_share: float, seed: int = 7, retry_after: str | None = None):
        self.fail_share = fail_share
        self.rng = random.Random(seed)
        self.retry_after = retry_after
        self.answered = 0
        self.times: list[float] = []
        super().__init__()

    def _respond(self, conn, req, path):
        with self.lock:
            self.answered += 1
            self.times.append(time.monotonic())
            fail = self.rng.random() < self.fail_share
        if fail:
            headers = [("content-length", "0")] + ([("retry-after", self.retry_after)] if self.retry_after else [])
            self._send(conn, 503, headers, b"", req["method"] == "HEAD")
            return True
        return super()._respond(conn, req, path)


def retry_route(**retry) -> dict:
    return {"name": "all", "match": {"path": {"prefix": "/"}}, "backends": [{"cluster": "app"}], "retry": retry}


@pytest.fixture
def flaky(request):
    made = []

    def make(*a, **kw):
        b = FlakyBackend(*a, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_success_rate_with_three_tries_matches_the_binomial(start_remora, flaky):
    backend = flaky(0.5)
    remora = start_remora(make_config([http_listener("web", routes=[retry_route(attempts=3, on=["5xx"],
                                                                                 backoff={"base": "1ms", "max": "2ms"})])],
                                      [cluster("app", [backend.endpoint], retry_budget="off")], workers=1))
    n = 2000
    ok = 0
    with Client(remora.port("web"), timeout=10) as c:
        for i in range(n):
            ok += c.request("GET", f"/echo?i={i}").status == 200
    p = 1 - 0.5 ** 3
    sd = math.sqrt(n * p * (1 - p))
    assert abs(ok - n * p) < 4 * sd, f"{ok} of {n} succeeded; expected {n * p:.0f} ± {4 * sd:.0f}"
    stats = remora.stats()
    assert stats["cluster.app.upstream_rq_retry"] == backend.answered - n
    assert stats["cluster.app.upstream_rq_retry_limit_exceeded"] == n - ok


def test_budget_caps_a_retry_storm(start_remora, flaky):
    def storm(budget) -> tuple[int, int, dict]:
        backend = flaky(1.0)
        remora = start_remora(make_config(
            [http_listener("web", routes=[retry_route(attempts=3, on=["5xx"], backoff={"base": "20ms", "max": "40ms"})])],
            [cluster("app", [backend.endpoint], **({"retry_budget": budget} if budget else {}))], workers=1))
        port = remora.port("web")
        sent = 0
        lock = threading.Lock()

        def client():
            nonlocal sent
            with Client(port, timeout=10) as c:
                for i in range(10):
                    assert c.request("GET", f"/x{i}").status == 503
                    with lock:
                        sent += 1

        threads = [threading.Thread(target=client) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stats = remora.stats()
        remora.stop()
        return sent, backend.answered, stats

    sent, seen, _ = storm("off")
    assert sent == 400 and seen == 3 * sent, "without a budget every request is tried 3 times"
    sent, seen, stats = storm(None)   # the default budget: 20 % of active requests, at least 3
    assert sent == 400
    assert seen <= 1.5 * sent, f"the backend saw {seen} requests for {sent}: the budget did not cap the storm"
    assert stats["cluster.app.upstream_rq_retry_overflow"] > 0


class Silent:
    """Accepts connections and reads, never answers."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.conns = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.lsock.getsockname()[1]}"

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
                self.conns.append(c)
            except OSError:
                return

    def close(self):
        self.stop = True
        self.lsock.close()
        for c in self.conns:
            c.close()


def test_per_try_timeout_moves_to_the_other_endpoint(start_remora, http_backend):
    silent = Silent()
    good = http_backend()
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[retry_route(attempts=2, on=["gateway-error"], per_try_timeout="200ms",
                                                      backoff={"base": "1ms", "max": "5ms"})])],
            [cluster("app", [silent.endpoint, good.endpoint], lb="round_robin")], workers=1))
        with Client(remora.port("web"), timeout=5) as c:
            t0 = time.monotonic()
            r = c.request("GET", "/first")   # round robin starts with the silent endpoint
            elapsed = time.monotonic() - t0
        assert r.status == 200
        assert 0.19 < elapsed < 0.4, f"took {elapsed:.3f}s"
        assert remora.stat("cluster.app.upstream_rq_per_try_timeout") == 1
    finally:
        silent.close()


def test_per_try_timeout_without_retry_is_504(start_remora):
    silent = Silent()
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[retry_route(attempts=1, per_try_timeout="150ms")])],
            [cluster("app", [silent.endpoint])], workers=1))
        t0 = time.monotonic()
        r = request(remora.port("web"), "GET", "/", timeout=5)
        assert r.status == 504 and time.monotonic() - t0 < 1.0
    finally:
        silent.close()


def test_post_retried_only_when_listed_and_small(start_remora, flaky):
    backend = flaky(1.0)
    remora = start_remora(make_config(
        [http_listener("web", routes=[retry_route(attempts=3, on=["5xx"], backoff={"base": "1ms", "max": "2ms"})])],
        [cluster("app", [backend.endpoint], retry_budget="off")], workers=1))
    port = remora.port("web")
    assert request(port, "POST", "/p", body=b"amount=100").status == 503
    assert backend.answered == 1, "a POST was retried without being listed"
    assert request(port, "PUT", "/p", body=b"x" * 100).status == 503
    assert backend.answered == 1 + 3

    backend2 = flaky(1.0)
    remora2 = start_remora(make_config(
        [http_listener("web", routes=[retry_route(attempts=3, on=["5xx"], methods=["POST"],
                                                  backoff={"base": "1ms", "max": "2ms"})])],
        [cluster("app", [backend2.endpoint], retry_budget="off")], workers=1))
    port2 = remora2.port("web")
    assert request(port2, "POST", "/p", body=b"amount=100").status == 503
    assert backend2.answered == 3, "a listed POST is retried"
    before = backend2.answered
    assert request(port2, "POST", "/big", body=b"y" * (1 << 20)).status == 503
    assert backend2.answered == before + 1, "a 1 MiB body outgrows the replay buffer: not retried"
    assert remora2.stat("cluster.app.upstream_rq_retry_body_too_large") >= 1


def test_retry_after_delays_the_next_try(start_remora, flaky):
    backend = flaky(1.0, retry_after="1")
    remora = start_remora(make_config(
        [http_listener("web", routes=[retry_route(attempts=2, on=["5xx"])])],
        [cluster("app", [backend.endpoint], retry_budget="off")], workers=1))
    assert request(remora.port("web"), "GET", "/", timeout=10).status == 503
    assert len(backend.times) == 2
    assert backend.times[1] - backend.times[0] >= 1.0


# -- gRPC ----------------------------------------------------------------------------------------

class FailingTwice(echo_pb2_grpc.EchoServicer):
    def __init__(self, pushback: str | None = None):
        self.calls = 0
        self.pushback = pushback
        self.lock = threading.Lock()

    def Unary(self, request, context):
        with self.lock:
            self.calls += 1
            n = self.calls
        if n <= 2:
            if self.pushback is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return echo_pb2.EchoReply(backend="ok", message=request.message)


@pytest.mark.parametrize("pushback", [None, "-1"])
def test_grpc_unavailable_retried_unless_pushback_says_no(start_remora, pushback):
    servicer = FailingTwice(pushback)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[retry_route(attempts=3, on=["unavailable"], backoff={"base": "1ms", "max": "5ms"})])],
            [cluster("app", [f"127.0.0.1:{port}"], protocol="http2")], workers=1))
        with grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}", options=[("grpc.enable_retries", 0)]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            if pushback is None:
                reply = stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=5)
                assert reply.message == "hi" and servicer.calls == 3
            else:
                with pytest.raises(grpc.RpcError) as e:
                    stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=5)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 1
    finally:
        server.stop(None).wait(5)
