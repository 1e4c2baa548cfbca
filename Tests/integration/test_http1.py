"""HTTP/1.1 reverse proxy: keep-alive, bodies, chunking, pipelining, 100-continue, header rules, stats."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from backends import pattern_bytes, repeat_block, repeat_sha
from conftest import ipv6_available
from harness import (Client, assert_healthy, build_request, cluster, get, http_listener, make_config,
                     request, route, run_curl)
from wire import header_values, read_response_head, wait_closed

MiB = 1 << 20


def backend_headers(info: dict) -> list[tuple[str, str]]:
    return [(k, v) for k, v in info["headers"]]


def values(info: dict, name: str) -> list[str]:
    return header_values(backend_headers(info), name)


def test_keepalive_one_connection_100_requests(proxy):
    base = proxy.remora.stats()
    with Client(proxy.port) as c:
        for i in range(100):
            r = c.request("GET", f"/echo?i={i}")
            assert r.status == 200, f"request {i}: {r.status}"
            assert r.json()["target"] == f"/echo?i={i}"
            assert not r.wants_close, f"proxy asked to close the keep-alive connection at request {i}"
    targets = [q["target"] for q in proxy.backend.requests]
    assert targets == [f"/echo?i={i}" for i in range(100)]
    rq = proxy.remora.wait_stat("listener.web.downstream_rq_total",
                                lambda v: v >= base.get("listener.web.downstream_rq_total", 0) + 100)
    assert rq == base.get("listener.web.downstream_rq_total", 0) + 100
    stats = proxy.remora.stats()
    assert stats.get("listener.web.downstream_cx_total", 0) - base.get("listener.web.downstream_cx_total", 0) == 1


def test_post_1mib_content_length_reframed_as_content_length(proxy):
    body = pattern_bytes(MiB, seed=7)
    r = request(proxy.port, "POST", "/echo", body=body)
    assert r.status == 200
    info = r.json()
    assert info["body_length"] == MiB
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert info["chunked"] is False
    assert values(info, "content-length") == [str(MiB)]
    assert values(info, "transfer-encoding") == []


def test_1mib_both_ways_with_curl(proxy, tmp_path):
    body = pattern_bytes(MiB, seed=8)
    src = tmp_path / "upload.bin"
    src.write_bytes(body)
    out, hdrs = tmp_path / "mirror.bin", tmp_path / "mirror.headers"
    p = run_curl(["--http1.1", "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                  "--data-binary", f"@{src}", "-D", str(hdrs), "-o", str(out), "-w", "%{http_code}",
                  f"http://127.0.0.1:{proxy.port}/mirror"])
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode() == "200"
    head = hdrs.read_text().lower()
    sha = hashlib.sha256(body).hexdigest()
    assert f"x-received-sha256: {sha}" in head, "backend received a different request body"
    assert f"x-received-length: {MiB}" in head
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha, "client received a different response body"

    # a 1 MiB download with the sha computed by the backend
    out2, hdrs2 = tmp_path / "bytes.bin", tmp_path / "bytes.headers"
    p = run_curl(["--http1.1", "-D", str(hdrs2), "-o", str(out2), "-w", "%{http_code}",
                  f"http://127.0.0.1:{proxy.port}/bytes/{MiB}"])
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode() == "200"
    data = out2.read_bytes()
    assert len(data) == MiB
    sent_sha = [l.split(":", 1)[1].strip() for l in hdrs2.read_text().splitlines()
                if l.lower().startswith("x-body-sha256:")]
    assert sent_sha == [hashlib.sha256(data).hexdigest()]


def test_chunked_upload_arrives_chunked(proxy):
    body = pattern_bytes(300_000, seed=9)
    with Client(proxy.port) as c:
        r = c.request("POST", "/echo", body=body, chunked_sizes=[1, 7, 4096, 65536, 100_000])
        assert r.status == 200
        info = r.json()
        assert info["chunked"] is True, "a chunked request must reach the backend chunked"
        assert values(info, "content-length") == []
        assert info["body_length"] == len(body)
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
        # the connection is still in sync after the chunked body
        r2 = c.request("GET", "/echo?after=chunked")
        assert r2.status == 200 and r2.json()["target"] == "/echo?after=chunked"


def test_chunked_upload_with_curl(proxy, tmp_path):
    body = pattern_bytes(200_000, seed=10)
    src = tmp_path / "up.bin"
    src.write_bytes(body)
    p = run_curl(["--http1.1", "-H", "Transfer-Encoding: chunked", "-H", "Expect:",
                  "--data-binary", f"@{src}", f"http://127.0.0.1:{proxy.port}/echo"])
    assert p.returncode == 0, p.stderr.decode()
    info = json.loads(p.stdout)
    assert info["chunked"] is True
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_response_streams_through(proxy):
    with Client(proxy.port) as c:
        r = c.request("GET", "/chunked/200000?size=777")
        assert r.status == 200
        assert r.chunked, f"expected a chunked response, headers {r.headers}"
        assert len(r.body) == 200_000
        assert r.sha256 == r.header("x-body-sha256")
        r2 = c.request("GET", "/echo?after=chunked-response")
        assert r2.status == 200 and r2.json()["target"] == "/echo?after=chunked-response"


def test_pipelined_requests_answered_in_order(proxy):
    reqs = (build_request("GET", "/sleep/300?n=1")
            + build_request("POST", "/echo?n=2", body=b"hello")
            + build_request("GET", "/echo?n=3"))
    with Client(proxy.port) as c:
        c.send(reqs)  # one write
        got = [c.read_response() for _ in range(3)]
    assert [r.status for r in got] == [200, 200, 200]
    assert [r.json()["target"] for r in got] == ["/sleep/300?n=1", "/echo?n=2", "/echo?n=3"]
    assert got[1].json()["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_expect_100_continue_with_curl(proxy, tmp_path):
    body = pattern_bytes(50_000, seed=11)
    src = tmp_path / "body.bin"
    src.write_bytes(body)
    # curl waits up to --expect100-timeout for the 100 before sending the body anyway; a long
    # timeout plus the elapsed-time check proves the 100 came from the proxy promptly.
    p = run_curl(["--http1.1", "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "8",
                  "--data-binary", f"@{src}", "-w", "\n%{http_code} %{time_total}",
                  f"http://127.0.0.1:{proxy.port}/echo"])
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    payload, _, tail = out.rpartition("\n")
    code, total = tail.split()
    assert code == "200"
    assert "HTTP/1.1 100 Continue" in p.stderr.decode(), "curl never saw a 100 Continue"
    assert float(total) < 4.0, f"curl waited {total}s: the 100 Continue did not come promptly"
    info = json.loads(payload)
    assert values(info, "expect") == [], "Expect must not be forwarded to the backend"
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_100_continue_arrives_before_body(proxy):
    body = b"hello world"
    with Client(proxy.port, timeout=5) as c:
        c.send(build_request("POST", "/echo", headers=[("Expect", "100-continue"),
                                                         ("Content-Length", str(len(body)))]))
        interim = c.reader.read_until(b"\r\n\r\n")  # bounded by the 5 s socket timeout
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        assert proxy.backend.requests == [], "backend got the request before the body was sent"
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    info = r.json()
    assert values(info, "expect") == []
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_head_204_304_have_no_body(proxy):
    with Client(proxy.port) as c:
        r = c.request("HEAD", "/bytes/5000")
        assert r.status == 200
        assert r.header("content-length") == "5000"
        r = c.request("HEAD", "/chunked/3000")
        assert r.status == 200
        r = c.request("GET", "/status/204")
        assert r.status == 204
        r = c.request("GET", "/status/304", headers=[("If-None-Match", '"v1"')])
        assert r.status == 304
        # If any of the above had carried body bytes (or the proxy waited for one), this would break.
        r = c.request("GET", "/echo?after=nobody")
        assert r.status == 200 and r.json()["target"] == "/echo?after=nobody"
        c.sock.settimeout(0.3)
        try:
            extra = c.sock.recv(100)
        except socket.timeout:
            extra = None
        assert extra is None, f"unexpected bytes after the last response: {extra!r}"


def test_hop_by_hop_headers_stripped_and_forwarded_headers_added(proxy):
    r = get(proxy.port, "/echo", host="example.test:8080", headers=[
        ("Connection", "keep-alive, X-Hop-Custom"),
        ("X-Hop-Custom", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Upgrade", "example/1"),
        ("X-End-To-End", "kept"),
    ])
    assert r.status == 200
    info = r.json()
    for name in ("keep-alive", "x-hop-custom", "proxy-connection", "te", "upgrade"):
        assert values(info, name) == [], f"hop-by-hop header {name} was forwarded: {values(info, name)}"
    for v in values(info, "connection"):
        assert "x-hop-custom" not in v.lower()
    assert values(info, "x-end-to-end") == ["kept"]
    assert values(info, "host") == ["example.test:8080"], "Host must be forwarded unchanged"
    assert values(info, "x-forwarded-for") == ["127.0.0.1"]
    assert values(info, "x-forwarded-proto") == ["http"]


def test_x_forwarded_for_is_appended(proxy):
    r = get(proxy.port, "/echo", headers=[("X-Forwarded-For", "203.0.113.7")])
    assert r.status == 200
    assert values(r.json(), "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]


def test_stats_counters_move(proxy):
    remora = proxy.remora
    base = remora.stats()
    with Client(proxy.port) as c:
        for i in range(3):
            assert c.request("GET", f"/echo?ka={i}").status == 200
    for i in range(4):
        assert get(proxy.port, f"/echo?single={i}").status == 200
    assert get(proxy.port, "/status/404").status == 404
    assert get(proxy.port, "/status/503").status == 503
    sent, conns = 9, 7

    def d(name):
        return stats.get(name, 0) - base.get(name, 0)

    remora.wait_stat("listener.web.downstream_rq_total",
                     lambda v: v >= base.get("listener.web.downstream_rq_total", 0) + sent)
    stats = remora.stats()
    assert d("listener.web.downstream_rq_total") == sent
    assert d("listener.web.downstream_cx_total") == conns
    assert d("listener.web.downstream_rq_2xx") == 7
    assert d("listener.web.downstream_rq_4xx") == 1
    assert d("listener.web.downstream_rq_5xx") == 1
    assert d("cluster.app.upstream_rq_total") == sent
    assert d("cluster.app.upstream_rq_5xx") == 1
    assert d("cluster.app.upstream_cx_total") >= 1


def test_downstream_cx_active(proxy):
    clients = [Client(proxy.port) for _ in range(3)]
    try:
        for c in clients:
            assert c.request("GET", "/echo").status == 200
        proxy.remora.wait_stat("listener.web.downstream_cx_active", lambda v: v == 3, what="== 3")
    finally:
        for c in clients:
            c.close()
    proxy.remora.wait_stat("listener.web.downstream_cx_active", lambda v: v == 0, what="== 0")


def test_concurrent_clients_do_not_mix_responses(proxy):
    errors: list[str] = []

    def worker(t):
        try:
            with Client(proxy.port) as c:
                for i in range(25):
                    body = f"t{t}-i{i}".encode() * (i + 1)
                    r = c.request("POST", f"/echo?t={t}&i={i}", body=body)
                    info = r.json()
                    if r.status != 200 or info["target"] != f"/echo?t={t}&i={i}" \
                            or info["body_sha256"] != hashlib.sha256(body).hexdigest():
                        errors.append(f"t{t} i{i}: {r.status} {info['target']}")
                        return
        except Exception as e:
            errors.append(f"t{t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not any(th.is_alive() for th in threads), "client threads hung"
    assert errors == []
    assert len(proxy.backend.requests) == 200


def test_exact_and_prefix_routes(start_remora, http_backend):
    a, b = http_backend(), http_backend()
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("b", name="x", exact="/x"), route("app", name="rest")])],
        [cluster("app", [a.endpoint]), cluster("b", [b.endpoint])]))
    port = remora.port("web")
    for target in ("/x", "/x?q=1", "/x/y", "/xy", "/"):
        assert get(port, target).status == 200
    assert [q["target"] for q in b.requests] == ["/x", "/x?q=1"]
    assert [q["target"] for q in a.requests] == ["/x/y", "/xy", "/"]


def _wait_stalled(counter, what: str, timeout: float = 15.0, quiet: float = 0.4) -> int:
    """Waits until counter() stops growing for `quiet` seconds (bounded). Returns its value."""
    deadline = time.monotonic() + timeout
    last, since = counter(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = counter()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"{what} never stalled within {timeout}s (at {last} bytes)")


@pytest.mark.timeout(90)
def test_download_backpressure(start_remora, http_backend):
    backend = http_backend(sndbuf=256 * 1024)
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    assert get(port, "/bytes/100000").status == 200  # warm up pools and buffers
    rss0 = remora.rss_kib()
    mib = 128
    with Client(port, rcvbuf=64 * 1024, timeout=20) as c:
        c.send(build_request("GET", f"/repeat/{mib}"))
        head = read_response_head(c.reader)
        assert head.status == 200
        # the client reads nothing more: the backend must be throttled, the proxy must not buffer it
        sent = _wait_stalled(lambda: backend.bytes_sent, "backend send progress")
        growth = remora.rss_kib() - rss0
        assert sent < 96 * MiB, f"backend pushed {sent >> 20} MiB into a stalled client: no backpressure"
        assert growth < 48 * 1024, f"remora RSS grew by {growth >> 10} MiB while the client was stalled"
        h = hashlib.sha256()
        c.reader.consume(mib * MiB, h.update)
        assert h.hexdigest() == head.header("x-body-sha256") == repeat_sha(mib)
    assert_healthy(remora)


@pytest.mark.timeout(90)
def test_upload_backpressure(start_remora, http_backend):
    backend = http_backend(rcvbuf=64 * 1024)
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    assert get(port, "/bytes/100000").status == 200
    rss0 = remora.rss_kib()
    mib = 128
    progress = {"sent": 0, "error": None}
    c = Client(port, sndbuf=64 * 1024, timeout=30)

    def send_body():
        try:
            c.send(build_request("POST", "/stall-read", headers=[("Content-Length", str(mib * MiB))]))
            block = memoryview(repeat_block())
            for _ in range(mib):
                for off in range(0, MiB, 64 * 1024):
                    c.sock.sendall(block[off:off + 64 * 1024])
                    progress["sent"] += 64 * 1024
        except Exception as e:
            progress["error"] = e

    t = threading.Thread(target=send_body, daemon=True)
    try:
        t.start()
        sent = _wait_stalled(lambda: progress["sent"], "client upload progress")
        growth = remora.rss_kib() - rss0
        assert progress["error"] is None, progress["error"]
        assert sent < 96 * MiB, f"proxy accepted {sent >> 20} MiB while the backend read nothing"
        assert growth < 48 * 1024, f"remora RSS grew by {growth >> 10} MiB while the backend was stalled"
        backend.release.set()
        t.join(60)
        assert not t.is_alive(), "upload did not finish after the backend started reading"
        assert progress["error"] is None, progress["error"]
        r = c.read_response()
        assert r.status == 200
        info = r.json()
        assert info["body_length"] == mib * MiB
        assert info["body_sha256"] == repeat_sha(mib)
    finally:
        backend.release.set()
        try:
            c.sock.shutdown(socket.SHUT_RDWR)  # wakes the sender if it is still blocked
        except OSError:
            pass
        c.close()
        t.join(5)
    assert_healthy(remora)


@pytest.mark.timeout(90)
def test_pipelined_requests_respect_backpressure(start_remora, http_backend):
    """A client pipelines 2000 requests for 50 kB each (100 MB in all) and reads nothing: the proxy
    must stop taking on new requests once the client's connection is backed up, not buffer every
    response in memory. (Each response is small enough to arrive from the backend in one piece.)"""
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    assert get(port, "/bytes/50000").status == 200
    backend.requests.clear()
    rss0 = remora.rss_kib()
    n, size = 2000, 50_000
    with Client(port, rcvbuf=64 * 1024, timeout=20) as c:
        pipeline = b"".join(build_request("GET", f"/bytes/{size}?i={i}") for i in range(n))  # ~90 kB
        sender = threading.Thread(target=c.sock.sendall, args=(pipeline,), daemon=True)
        sender.start()  # may block once the proxy stops reading: that is allowed
        served = _wait_stalled(lambda: len(backend.requests), "backend request count")
        growth = remora.rss_kib() - rss0
        assert served < n // 2, (f"the proxy fetched {served} of {n} pipelined responses "
                                 f"({served * size >> 20} MiB) for a client that reads nothing")
        assert growth < 48 * 1024, f"remora RSS grew by {growth >> 10} MiB while the client was not reading"
        sha = hashlib.sha256(pattern_bytes(size)).hexdigest()
        for i in range(n):
            r = c.read_response()
            assert r.status == 200 and r.sha256 == sha, f"response {i}"
        sender.join(5)
    assert [q["target"] for q in backend.requests] == [f"/bytes/{size}?i={i}" for i in range(n)]
    assert_healthy(remora)


@pytest.mark.skipif(not ipv6_available(), reason="::1 not available")
def test_ipv6_backend(start_remora, http_backend):
    backend = http_backend(host="::1")
    assert backend.endpoint.startswith("[::1]:")
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
    r = get(remora.port("web"), "/echo?v6=backend")
    assert r.status == 200
    assert [q["target"] for q in backend.requests] == ["/echo?v6=backend"]


@pytest.mark.skipif(not ipv6_available(), reason="::1 not available")
def test_ipv6_listener(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web", address="[::1]:0")],
                                      [cluster("app", [backend.endpoint])]))
    assert remora.host("web") == "::1"
    with Client(remora.port("web"), host="::1") as c:
        r = c.request("GET", "/echo?v6=listener")
    assert r.status == 200
    assert values(r.json(), "x-forwarded-for") == ["::1"]


def test_client_connection_close_is_honoured(proxy):
    with Client(proxy.port, timeout=5) as c:
        r = c.request("GET", "/echo", headers=[("Connection", "close")])
        assert r.status == 200
        how, extra = wait_closed(c.sock, 3.0)
    assert how in ("eof", "reset"), "proxy kept the connection open after Connection: close"
    assert extra == b""


@pytest.mark.parametrize("version,close_header", [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")])
def test_client_close_gets_the_whole_response_then_a_clean_eof(proxy, version, close_header):
    """When the client ends the connection (Connection: close, or HTTP/1.0 without keep-alive) the proxy
    closes as soon as the response is flushed, without a FIN-and-linger: every response must still
    arrive whole and end in a clean EOF, never a reset, including bodies larger than one write."""
    for i in range(60):
        size = (1 << 20) if i % 3 == 0 else 100 + i
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(f"GET /bytes/{size} {version}\r\nHost: x\r\n{close_header}\r\n".encode())
            how, data = wait_closed(s, 5.0)
        assert how == "eof", f"request {i}: the connection ended with {how} after {len(data)} bytes"
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200", head[:100]
        assert len(body) == size, f"request {i}: {len(body)} of {size} body bytes"


@pytest.mark.parametrize("when", ["split", "same"])
def test_upstream_interim_1xx_then_final_response(proxy, when):
    """A 1xx from the upstream (here 103 Early Hints) is followed by the final response: the client
    gets the final response (the 1xx may be forwarded or dropped). "same": both in one TCP write."""
    with Client(proxy.port, timeout=5) as c:
        try:
            r = c.request("GET", f"/interim/{when}")
        except TimeoutError:
            pytest.fail("no final response within 5 s: the proxy lost the response that followed the 1xx")
        assert r.status == 200, f"got {r.status} {r.body[:100]!r}"
        assert r.json()["target"] == f"/interim/{when}"
        assert set(r.interim) <= {103}
        r2 = c.request("GET", "/echo?after=interim")
        assert r2.status == 200 and r2.json()["target"] == "/echo?after=interim"


def test_http10_without_host_gets_the_cluster_name_as_host(proxy):
    """HTTP/1.0 allows a request without Host; the request goes upstream as HTTP/1.1, which must carry
    one (RFC 9112 3.2), so the cluster's name stands in (nginx's proxy_pass does the same)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /echo?v=10 HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
        how, data = wait_closed(s, 5.0)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", head[:200]
    info = json.loads(body)
    assert values(info, "host") == ["app"]
