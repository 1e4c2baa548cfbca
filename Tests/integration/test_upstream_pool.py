"""The HTTP/1.1 upstream pool keeps connections by demand and age (issue 17, part 2): many concurrent
h2c streams toward an HTTP/1.1 backend reuse about as many upstream connections as there are
concurrent requests (no churn), connections left idle close after the cluster's `idle_timeout`, the
ones a lower demand no longer reaches expire while the others keep serving, and `max_idle_per_endpoint`
stays a hard cap. HTTP/2 upstream connections with no stream open close after the same timeout.

Real binary, real peers: h2load (nghttp2-client) as the h2c client, the threaded HTTP/1.1 backend of
backends.py (one thread per connection; `/sleep/MS` answers after MS milliseconds, so concurrent
requests overlap on the backend). One worker, so every request meets the same pool.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from harness import cluster, http_listener, made_and_closed, make_config, poll


def need(tool: str):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (Debian nghttp2-client)")


def h2load(port: int, args: list[str], path: str, timeout: float) -> str:
    r = subprocess.run(["h2load", "-t", "1", *args, f"http://127.0.0.1:{port}{path}"], capture_output=True,
                       timeout=timeout)
    return r.stdout.decode() + r.stderr.decode()


def succeeded(out: str) -> int:
    m = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert m, out
    return int(m.group(1))


@pytest.mark.timeout(60)
def test_512_h2c_streams_to_http1_backend_reuse_their_connections_then_idle_out(start_remora, http_backend):
    need("h2load")
    b = http_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [b.endpoint], idle_timeout="2s")],
                                      workers=1))
    port = remora.port("web")
    # 16 connections x 32 streams = 512 concurrent requests, 3 rounds of them; then again, as traffic
    # that comes in bursts does.
    out = h2load(port, ["-c", "16", "-m", "32", "-n", "1536"], "/sleep/50", timeout=45)
    assert succeeded(out) == 1536 and "1536 2xx" in out, out
    # Kept while idle (not closed as soon as the burst is over) ...
    kept = remora.stat("cluster.app.upstream_cx_active")
    assert kept >= 400, f"{kept} upstream connections kept after 512 concurrent requests"
    out = h2load(port, ["-c", "16", "-m", "32", "-n", "1536"], "/sleep/50", timeout=45)
    assert succeeded(out) == 1536 and "1536 2xx" in out, out
    opened = remora.stat("cluster.app.upstream_cx_total")
    # About one connection per concurrent request, opened once. Before: an idle pool capped at 128
    # per endpoint closed 384 of them after the first burst and opened them again for the second.
    assert b.connections <= 600 and opened <= 600, \
        f"{b.connections} backend connections ({opened} opened by Remora) for 512 concurrent requests: churn"
    # ... and closed by the idle timeout once it passes.
    remora.wait_stat("cluster.app.upstream_cx_active", lambda v: v == 0, timeout=10, what="== 0 after idle_timeout")
    assert remora.stat("cluster.app.upstream_cx_idle_timeout") == opened
    poll(lambda: len(b.conns) == 0, 5, what="the backend sees every connection closed")


@pytest.mark.timeout(60)
def test_pool_follows_demand_down(start_remora, http_backend):
    need("h2load")
    b = http_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [b.endpoint], idle_timeout="1s")],
                                      workers=1))
    port = remora.port("web")
    out = h2load(port, ["-c", "1", "-m", "128", "-n", "128"], "/sleep/100", timeout=30)
    assert succeeded(out) == 128, out
    burst = remora.stat("cluster.app.upstream_cx_active")
    assert burst >= 64, f"only {burst} connections for 128 concurrent requests"   # the burst's connections, idle
    # A low demand (4 at a time) for 3 s reuses the warmest connections; the rest expire meanwhile.
    out = h2load(port, ["-c", "1", "-m", "4", "-D", "3"], "/sleep/5", timeout=30)
    assert succeeded(out) > 100, out
    active = remora.stat("cluster.app.upstream_cx_active")
    assert active <= 8, f"{active} upstream connections left open for a demand of 4"
    assert remora.stat("cluster.app.upstream_cx_idle_timeout") >= burst - 8   # (h2load -D cancels its last few)


@pytest.mark.timeout(60)
def test_max_idle_per_endpoint_is_a_hard_cap(start_remora, http_backend):
    need("h2load")
    b = http_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [b.endpoint], max_idle_per_endpoint=8)], workers=1))
    out = h2load(remora.port("web"), ["-c", "1", "-m", "64", "-n", "64"], "/sleep/100", timeout=30)
    assert succeeded(out) == 64, out
    remora.wait_stat("cluster.app.upstream_cx_active", lambda v: v == 8, timeout=5, what="== 8 (the cap)")
    assert remora.stat("cluster.app.upstream_cx_idle_timeout") == 0


@pytest.mark.timeout(30)
def test_http2_upstream_connection_without_streams_closes_after_idle_timeout(start_remora):
    pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
    from test_http2 import H2Backend, curl_h2
    gen = made_and_closed(H2Backend, failure="h2 backend failed: ")
    make = next(gen)
    try:
        b = make()
        remora = start_remora(make_config([http_listener("web")],
                                          [cluster("app", [b.endpoint], protocol="http2", idle_timeout="500ms")],
                                          workers=1))
        port = remora.port("web")
        for _ in range(3):   # one connection carries them all, then sits idle
            r = curl_h2(["-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/echo"])
            assert r.stdout == b"200", r.stdout + r.stderr
        assert remora.stat("cluster.app.upstream_cx_total") == 1
        remora.wait_stat("cluster.app.upstream_cx_active", lambda v: v == 0, timeout=5, what="== 0 after idle_timeout")
        assert remora.stat("cluster.app.upstream_cx_idle_timeout") == 1
        poll(lambda: b.closed_conns == 1, 5, what="the backend sees the connection closed")
        r = curl_h2(["-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/echo"])
        assert r.stdout == b"200" and remora.stat("cluster.app.upstream_cx_total") == 2   # a new one
    finally:
        next(gen, None)
