"""Upstream failures: refused, slow, reset or truncated mid-body, keep-alive close races."""

from __future__ import annotations

import hashlib
import time

import pytest

from backends import pattern_bytes
from harness import (Client, assert_healthy, build_request, cluster, get, http_listener, make_config,
                     route, run_curl)
from wire import ProtocolError, read_chunked, read_response_head, wait_closed


def test_connection_refused_503_names_cluster(start_remora, http_backend, refused_endpoint):
    good = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("deadcluster", name="dead", prefix="/dead"),
                                      route("app", name="rest")])],
        [cluster("deadcluster", [refused_endpoint], connect_timeout="2s"), cluster("app", [good.endpoint])]))
    t0 = time.monotonic()
    r = get(remora.port("web"), "/dead/x")
    assert r.status in (502, 503), f"expected 503 for a refused upstream, got {r.status}"
    assert b"deadcluster" in r.body, f"body does not name the cluster: {r.body[:200]!r}"
    assert time.monotonic() - t0 < 2.0, "a refused connect should fail fast, not wait for connect_timeout"
    remora.wait_stat("cluster.deadcluster.upstream_cx_connect_fail", lambda v: v >= 1)
    assert_healthy(remora)


def test_slow_upstream_504_after_route_timeout(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("app", timeout="500ms")])], [cluster("app", [backend.endpoint])]))
    t0 = time.monotonic()
    r = get(remora.port("web"), "/sleep/4000")
    elapsed = time.monotonic() - t0
    assert r.status == 504
    assert 0.4 <= elapsed <= 2.0, f"504 after {elapsed:.2f}s with a 500ms route timeout"
    remora.wait_stat("cluster.app.upstream_rq_timeout", lambda v: v >= 1)
    # a fast request on the same route still works
    assert get(remora.port("web"), "/echo").status == 200
    assert_healthy(remora)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_content_length_body_cut_short_aborts_client(proxy, how):
    with Client(proxy.port, timeout=5) as c:
        c.send(build_request("GET", f"/abort/cl/{how}"))
        head = read_response_head(c.reader)
        assert head.status == 200
        assert head.header("content-length") == "100000"
        got = len(c.reader.read_available())
        outcome, rest = wait_closed(c.sock, 5.0)
        got += len(rest)
    assert outcome in ("eof", "reset"), f"client connection left hanging ({outcome}) after the upstream {how}"
    assert got < 100_000, "client got a complete body although the upstream died mid-body"
    assert_healthy(proxy.remora)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_chunked_body_cut_short_has_no_last_chunk(proxy, how):
    with Client(proxy.port, timeout=5) as c:
        c.send(build_request("GET", f"/abort/chunked/{how}"))
        head = read_response_head(c.reader)
        assert head.status == 200
        body = bytearray()
        try:
            read_chunked(c.reader, body.extend)
            completed = True
        except (EOFError, ConnectionResetError, ProtocolError):
            completed = False
        except TimeoutError:
            pytest.fail(f"client connection left hanging after the upstream {how} mid-body")
    assert not completed, "client saw the terminating 0-chunk of a response the upstream never finished"
    assert len(body) <= 1000
    assert_healthy(proxy.remora)


def test_truncated_response_is_an_error_for_curl(proxy, tmp_path):
    p = run_curl(["--http1.1", "-o", str(tmp_path / "out"), f"http://127.0.0.1:{proxy.port}/abort/cl/rst"])
    assert p.returncode != 0, "curl reported success for a truncated response"
    assert p.returncode in (18, 56, 52), p.stderr.decode()  # partial file / recv failure / empty reply


def test_route_timeout_covers_the_head_not_a_slow_body(start_remora, http_backend):
    """The route timeout bounds the wait for the response head; a body streaming for longer is fine."""
    backend = http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("app", timeout="500ms")])], [cluster("app", [backend.endpoint])]))
    with Client(remora.port("web"), timeout=5) as c:
        r = c.request("GET", "/slowbody/10000/1500")
    assert r.status == 200
    assert len(r.body) == 10000 and r.sha256 == r.header("x-body-sha256")


def test_retry_when_upstream_closes_after_each_response(start_remora, http_backend):
    """The backend closes every keep-alive connection right after answering, without announcing it."""
    backend = http_backend(mode="close_after_response")
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    with Client(remora.port("web")) as c:
        for i in range(50):
            r = c.request("GET", f"/echo?i={i}")
            assert r.status == 200, f"request {i} got {r.status} {r.body[:120]!r}"
    assert len(backend.requests) == 50
    assert_healthy(remora)


def test_retry_once_on_reused_connection_failure(start_remora, http_backend):
    """The backend resets a reused connection as soon as a second request arrives on it: each such
    request must be retried once on a fresh connection."""
    backend = http_backend(mode="drop_reused")
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    with Client(remora.port("web")) as c:
        for i in range(20):
            r = c.request("GET", f"/echo?i={i}")
            assert r.status == 200, f"request {i} got {r.status} {r.body[:120]!r}"
    assert backend.dropped >= 1, "the proxy never reused an upstream connection, so nothing was retried"
    assert [q["target"] for q in backend.requests] == [f"/echo?i={i}" for i in range(20)]
    remora.wait_stat("cluster.app.upstream_rq_retry", lambda v: v >= 1)
    assert_healthy(remora)


def test_retry_replays_a_small_request_body(start_remora, http_backend):
    """The retried request carries its body again, byte for byte (10 KB PUTs, reused-connection reset).
    PUT, not POST: only idempotent methods are sent again after the keep-alive race (issue 19,
    test_smuggling.py::test_post_not_resent_after_keepalive_race)."""
    backend = http_backend(mode="drop_reused")
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    with Client(remora.port("web")) as c:
        for i in range(10):
            body = pattern_bytes(10_000, seed=i)
            r = c.request("PUT", f"/echo?i={i}", body=body)
            assert r.status == 200, f"request {i} got {r.status} {r.body[:120]!r}"
            assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert backend.dropped >= 1
    remora.wait_stat("cluster.app.upstream_rq_retry", lambda v: v >= 1)


def test_large_bodies_are_safe_from_the_keepalive_race(start_remora, http_backend):
    """Bodies too large to replay (1 MiB here) go on fresh upstream connections, so a backend that
    resets reused connections never turns them into 502s."""
    backend = http_backend(mode="drop_reused")
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    with Client(remora.port("web")) as c:
        for i in range(6):
            body = pattern_bytes(1 << 20, seed=i)
            r = c.request("PUT", f"/echo?i={i}", body=body)
            assert r.status == 200, f"request {i} got {r.status} {r.body[:120]!r}"
            assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            r = c.request("GET", f"/echo?small={i}")     # small requests still reuse pooled connections
            assert r.status == 200
