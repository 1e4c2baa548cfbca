"""Fault injection, local rate limits and hedged requests by a route's policy (issue 11, second part),
against the real binary with real peers (the test backends, grpcio)."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from concurrent import futures
from pathlib import Path
import sys

import grpc
import pytest

from harness import Client, cluster, http_listener, make_config, request

sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


def fwd(name: str = "all", prefix: str = "/", cl: str = "app", **extra) -> dict:
    r = {"name": name, "match": {"path": {"prefix": prefix}}, "backends": [{"cluster": cl}]}
    r.update(extra)
    return r


def within_4sd(seen: int, n: int, p: float) -> tuple[bool, str]:
    sd = math.sqrt(n * p * (1 - p))
    return abs(seen - n * p) < 4 * sd, f"{seen} of {n}; expected {n * p:.0f} ± {4 * sd:.0f}"


def run_parallel(n_threads: int, fn):
    errors: list[BaseException] = []

    def wrap(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


class EchoServicer(echo_pb2_grpc.EchoServicer):
    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def Unary(self, request, context):
        with self.lock:
            self.calls += 1
        return echo_pb2.EchoReply(backend="ok", message=request.message)


@pytest.fixture
def grpc_echo():
    servicer = EchoServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None).wait(5)


# -- fault injection -------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_fault_shares_over_5000_requests(start_remora, http_backend):
    backend = http_backend()
    delay_ms = 10
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd(fault={"delay": {"fixed": f"{delay_ms}ms", "percent": 20},
                                                 "abort": {"status": 503, "percent": 10}})])],
        [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    n_threads, per = 20, 250
    aborted = [0] * n_threads
    slow = [0] * n_threads

    def client(i):
        with Client(port, timeout=10) as c:
            for j in range(per):
                t0 = time.monotonic()
                r = c.request("GET", f"/echo?{i}-{j}")
                # The loop's clock is coarse (a few ms): a delayed request takes at least half the delay.
                if time.monotonic() - t0 >= delay_ms / 2000:
                    slow[i] += 1
                if r.status == 503:
                    assert r.body == b"fault filter abort\n"
                    aborted[i] += 1
                else:
                    assert r.status == 200

    run_parallel(n_threads, client)
    n = n_threads * per
    print(f"faults: {sum(aborted)} aborts, {sum(slow)} slow requests of {n}")
    ok, why = within_4sd(sum(aborted), n, 0.10)
    assert ok, "aborts: " + why
    stats = remora.stats()
    delays = stats["listener.web.fault_delays_injected"]
    ok, why = within_4sd(delays, n, 0.20)
    assert ok, "delays: " + why
    assert stats["listener.web.fault_aborts_injected"] == sum(aborted)
    assert sum(slow) >= delays, f"{sum(slow)} requests took {delay_ms / 2} ms or more, {delays} were delayed"
    # An abort answers from the proxy: the backend never saw those (a delayed abort neither).
    assert stats["cluster.app.upstream_rq_total"] == n - sum(aborted)


def test_fault_only_with_header(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd(fault={"abort": {"status": 418, "percent": 100},
                                                 "only_with_header": "x-remora-fault"})])],
        [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    with Client(port) as c:
        for _ in range(20):
            assert c.request("GET", "/echo").status == 200
        for name in ("x-remora-fault", "X-Remora-Fault"):
            assert c.request("GET", "/echo", headers=[(name, "1")]).status == 418
    assert remora.stat("listener.web.fault_aborts_injected") == 2


def test_fault_delay_is_on_the_timer_and_keeps_the_body(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd("slow", "/mirror", fault={"delay": {"fixed": "400ms", "percent": 100}}),
                                      fwd("fast", "/")])],
        [cluster("app", [backend.endpoint])], workers=1))
    port = remora.port("web")
    body = bytes(range(256)) * 1200   # 300 KiB: more than the replay buffer, so the client is paused
    result = {}

    def slow():
        t0 = time.monotonic()
        result["r"] = request(port, "POST", "/mirror", body=body, timeout=10)
        result["t"] = time.monotonic() - t0

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    with Client(port) as c:   # the one worker is not blocked by the delayed request
        for _ in range(10):
            assert c.request("GET", "/echo").status == 200
    fast = time.monotonic() - t0
    t.join(10)
    r = result["r"]
    assert r.status == 200 and r.header("x-received-sha256") == hashlib.sha256(body).hexdigest()
    assert result["t"] >= 0.4
    assert fast < 0.3, f"10 requests took {fast:.3f}s while another was delayed"


def test_fault_abort_is_grpc_shaped_for_grpc(start_remora, grpc_echo):
    endpoint, servicer = grpc_echo
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd(fault={"abort": {"status": 503, "grpc_status": 14, "percent": 100}})])],
        [cluster("app", [endpoint], protocol="http2")]))
    with grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}") as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "fault filter abort"
    assert servicer.calls == 0
    assert request(remora.port("web"), "GET", "/").status == 503


# -- local rate limit ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_rate_limit_over_workers(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd(rate_limit={"per_second": 100, "burst": 100})])],
        [cluster("app", [backend.endpoint])], workers=2))
    port = remora.port("web")
    n_threads, per = 10, 100   # 1,000 requests, evenly over one second
    passed = [0] * n_threads
    limited = [0] * n_threads
    start = time.monotonic() + 0.3
    ends = []

    def client(i):
        with Client(port, timeout=5) as c:
            for j in range(per):
                at = start + (j * n_threads + i) / 1000
                wait = at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                r = c.request("GET", "/echo")
                if r.status == 200:
                    passed[i] += 1
                else:
                    assert r.status == 429 and r.body == b"local_rate_limited\n"
                    assert r.header("x-ratelimit-limit") == "100"
                    assert r.header("x-ratelimit-remaining") == "0"
                    assert r.header("x-ratelimit-reset") == "1"
                    limited[i] += 1
        ends.append(time.monotonic())

    run_parallel(n_threads, client)
    span = max(ends) - start
    ok = sum(passed)
    expected = 100 + 100 * span   # the full bucket, then the rate for as long as the load lasted
    print(f"rate limit: {ok} of 1000 passed in {span:.2f}s (expected about {expected:.0f})")
    assert sum(limited) == 1000 - ok
    assert 0.85 * expected <= ok <= expected + 5, f"{ok} passed in {span:.2f}s; expected about {expected:.0f}"
    assert remora.stat("listener.web.downstream_rq_rate_limited") == sum(limited)


def test_rate_limit_grpc_resource_exhausted(start_remora, grpc_echo):
    endpoint, servicer = grpc_echo
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd(rate_limit={"per_second": 1, "burst": 3})])],
        [cluster("app", [endpoint], protocol="http2")], workers=1))
    codes = []
    with grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}") as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(6):
            try:
                stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert codes[:3] == [grpc.StatusCode.OK] * 3
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[3:]
    assert servicer.calls == codes.count(grpc.StatusCode.OK)


def test_routes_without_a_limit_are_not_limited(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[fwd("limited", "/l", rate_limit={"per_second": 1, "burst": 1}), fwd("free", "/")])],
        [cluster("app", [backend.endpoint])], workers=1))
    with Client(remora.port("web")) as c:
        assert [c.request("GET", "/l").status for _ in range(3)] == [200, 429, 429]
        assert all(c.request("GET", "/f").status == 200 for _ in range(50))


# -- hedging ---------------------------------------------------------------------------------------

def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(p * len(xs))) - 1)]


def timed_requests(port: int, n_threads: int, per: int, target: str = "/echo") -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def client(i):
        with Client(port, timeout=10) as c:
            for _ in range(per):
                t0 = time.monotonic()
                assert c.request("GET", target).status == 200
                with lock:
                    times.append(time.monotonic() - t0)

    run_parallel(n_threads, client)
    return times


@pytest.mark.timeout(60)
def test_hedging_beats_a_slow_endpoint(start_remora):
    from backends import NamedBackend
    slow, fast = NamedBackend("slow", delay_ms=500), NamedBackend("fast")
    try:
        hedged = fwd("hedged", "/", "app", retry={"attempts": 2, "hedge_after": "50ms"})
        direct = fwd("direct", "/direct", "fastonly")
        remora = start_remora(make_config(
            [http_listener("web", routes=[direct, hedged])],
            # round_robin: every other request goes to the slow endpoint first (the default peak_ewma
            # learns to avoid it, which leaves the number of hedges to chance).
            [cluster("app", [slow.endpoint, fast.endpoint], lb="round_robin"), cluster("fastonly", [fast.endpoint])]))
        port = remora.port("web")
        fast_p99 = percentile(timed_requests(port, 4, 25, "/direct/echo"), 0.99)
        times = timed_requests(port, 4, 25)
        p99 = percentile(times, 0.99)
        print(f"hedging: p99 {p99 * 1000:.1f} ms (fast endpoint alone: {fast_p99 * 1000:.1f} ms; slow: 500 ms)")
        assert p99 < 0.050 + fast_p99 + 0.025, f"p99 {p99:.3f}s with a hedge after 50 ms (fast p99 {fast_p99:.3f}s)"
        stats = remora.stats()
        assert stats["cluster.app.upstream_rq_hedged"] >= 40   # about every other request went to the slow one first
        assert stats["cluster.app.upstream_rq_2xx"] == 100
    finally:
        slow.close()
        fast.close()


class SlowEcho(EchoServicer):
    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def Unary(self, request, context):
        time.sleep(self.delay)
        return super().Unary(request, context)


@pytest.mark.timeout(60)
def test_hedging_grpc_over_http2(start_remora):
    servers, servicers, endpoints = [], [], []
    for delay in (0.5, 0.0):
        s = SlowEcho(delay)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        echo_pb2_grpc.add_EchoServicer_to_server(s, server)
        endpoints.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
        servicers.append(s)
    try:
        remora = start_remora(make_config(
            [http_listener("web", routes=[fwd(retry={"attempts": 2, "hedge_after": "50ms"})])],
            [cluster("app", endpoints, protocol="http2")], workers=1))
        times = []
        with grpc.insecure_channel(f"127.0.0.1:{remora.port('web')}") as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            for i in range(20):
                t0 = time.monotonic()
                assert stub.Unary(echo_pb2.EchoRequest(message=f"m{i}"), timeout=5).message == f"m{i}"
                times.append(time.monotonic() - t0)
        assert max(times) < 0.3, f"slowest call {max(times):.3f}s"
        assert remora.stat("cluster.app.upstream_rq_hedged") >= 8
    finally:
        for s in servers:
            s.stop(None).wait(5)
