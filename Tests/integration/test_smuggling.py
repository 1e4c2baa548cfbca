"""Request smuggling and framing (issue 19): what a client sends must reach the backend as exactly
the requests the client made, in order, framed by Remora's own parse, never by headers a peer can
delete or disguise. Each case runs against a backend that records every request it parses; a
smuggled request shows up there as one the client never made (or one the proxy never routed)."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import h2.config
import h2.connection
import h2.events
import pytest

from harness import Client, assert_healthy, cluster, connect, http_listener, make_config, poll
from wire import Reader, read_response, wait_closed

ADMIN_SMUGGLE = b"GET /admin/delete-all HTTP/1.1\r\nHost: x\r\n\r\n"   # 41 bytes


@pytest.fixture
def guarded(start_remora, http_backend):
    """A listener whose /admin is answered 403 by the proxy itself; everything else goes to the backend."""
    backend = http_backend()
    routes = [{"name": "admin", "match": {"path": {"prefix": "/admin"}}, "direct_response": {"status": 403}},
              {"name": "all", "match": {"path": {"prefix": "/"}}, "backends": [{"cluster": "app"}]}]
    remora = start_remora(make_config([http_listener("web", routes=routes, request_timeout="1s")],
                                      [cluster("app", [backend.endpoint])]))
    return SimpleNamespace(remora=remora, backend=backend, port=remora.port("web"))


def exchange(port: int, raw: bytes, responses: int = 1, timeout: float = 5.0):
    """Sends raw bytes on one connection, reads up to `responses` responses; returns them and the socket."""
    s = connect(port, timeout=timeout)
    s.sendall(raw)
    r = Reader(s)
    out = []
    for _ in range(responses):
        try:
            out.append(read_response(r))
        except (EOFError, OSError):
            break
    return out, s


def backend_saw(p, n: int, settle: float = 0.3) -> list[dict]:
    time.sleep(settle)   # a smuggled second request would arrive right after the first
    return list(p.backend.requests)


# -- Connection naming framing fields (findings 1 and 2) -------------------------------------------

SMUGGLE_VIA_CONNECTION = {
    "connection_content_length": b"POST /public HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\n"
                                 b"Content-Length: 41\r\n\r\n" + ADMIN_SMUGGLE,
    "connection_keepalive_and_cl": b"POST /public HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Content-Length\r\n"
                                   b"Content-Length: 41\r\n\r\n" + ADMIN_SMUGGLE,
    "get_with_body": b"GET /public HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\n"
                     b"Content-Length: 41\r\n\r\n" + ADMIN_SMUGGLE,
}


@pytest.mark.parametrize("name", list(SMUGGLE_VIA_CONNECTION))
def test_connection_cannot_remove_content_length(guarded, name):
    resps, s = exchange(guarded.port, SMUGGLE_VIA_CONNECTION[name])
    s.close()
    assert [r.status for r in resps] == [200]
    seen = backend_saw(guarded, 1)
    assert [r["target"] for r in seen] == ["/public"], "a request the client never made reached the backend"
    assert seen[0]["body_length"] == 41
    assert_healthy(guarded.remora)


def test_connection_cannot_remove_host(guarded):
    resps, s = exchange(guarded.port, b"GET /h HTTP/1.1\r\nHost: svc.example\r\nConnection: host, x-a\r\nX-A: 1\r\n\r\n")
    s.close()
    assert [r.status for r in resps] == [200]
    seen = backend_saw(guarded, 1)
    assert [(k.lower(), v) for k, v in seen[0]["headers"] if k.lower() in ("host", "x-a")] == [("host", "svc.example")]


class RawResponder:
    """A backend answering every request on a keep-alive connection with the same raw response."""

    def __init__(self, response: bytes):
        self.response = response
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.stop = threading.Event()
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.lsock.getsockname()[1]}"

    def _serve(self):
        while not self.stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        c.settimeout(5)
        buf = b""
        try:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                _, buf = buf.split(b"\r\n\r\n", 1)
                self.requests += 1
                c.sendall(self.response)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop.set()
        self.lsock.close()
        self.thread.join(2)


def test_response_connection_cannot_remove_content_length(start_remora):
    backend = RawResponder(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello")
    try:
        remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])]))
        with Client(remora.port("web"), timeout=5) as c:
            for _ in range(3):   # each response framed, so the next one is not glued to its body
                r = c.request("GET", "/")
                assert r.status == 200 and r.body == b"hello"
                assert r.header("content-length") == "5"
    finally:
        backend.close()


# -- the rest of the corpus: every case either refused or forwarded as exactly one request ---------

REFUSED = {
    # CL.TE and TE.CL
    "cl_te": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
    "te_cl": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
    # TE.TE obfuscations
    "te_space_before_colon": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "te_xchunked": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "te_chunked_then_identity": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    "te_twice": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", 400),
    "te_gzip_then_chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    "duplicate_cl": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "cl_list": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    "cl_plus": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    "bare_lf_chunk": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    # obs-fold (finding 10): `Host: x` + ` Transfer-Encoding: chunked` once reached a backend as one field
    "obs_fold_host": (b"POST / HTTP/1.1\r\nHost: x\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", 400),
    "obs_fold_tab": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\tc\r\n\r\n", 400),
    "empty_header_name": (b"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400),
    "http10_chunked": (b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "huge_content_length": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\nabc", 413),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_and_nothing_forwarded(guarded, name):
    raw, status = REFUSED[name]
    resps, s = exchange(guarded.port, raw)
    try:
        assert [r.status for r in resps] == [status]
        how, _ = wait_closed(s, 3.0)
        assert how in ("eof", "reset"), "connection left open after a framing refusal"
    finally:
        s.close()
    assert backend_saw(guarded, 0) == [], "a refused request reached the backend"
    assert_healthy(guarded.remora)


def test_underscore_headers_dropped_by_default(guarded):
    raw = (b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nX_User: admin\r\nContent-Length: 5\r\n\r\nhello")
    resps, s = exchange(guarded.port, raw)
    s.close()
    assert [r.status for r in resps] == [200]
    seen = backend_saw(guarded, 1)
    assert len(seen) == 1 and seen[0]["body_length"] == 5
    assert not [k for k, _ in seen[0]["headers"] if "_" in k], seen[0]["headers"]
    guarded.remora.wait_stat("listener.web.dropped_headers_with_underscores", lambda v: v == 2)


def test_underscore_headers_rejected_when_configured(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web", headers_with_underscores="reject")],
                                      [cluster("app", [backend.endpoint])]))
    resps, s = exchange(remora.port("web"), b"GET / HTTP/1.1\r\nHost: x\r\nX_A: 1\r\n\r\n")
    s.close()
    assert [r.status for r in resps] == [400]
    assert backend.requests == []
    remora.wait_stat("listener.web.requests_rejected_with_underscores_in_headers", lambda v: v == 1)


def test_pipelined_requests_reach_backend_in_order(guarded):
    reqs = b"".join(b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab%d" % (i, i) for i in range(5))
    reqs += b"GET /admin/x HTTP/1.1\r\nHost: x\r\n\r\nGET /last HTTP/1.1\r\nHost: x\r\n\r\n"
    resps, s = exchange(guarded.port, reqs, responses=7)
    s.close()
    assert [r.status for r in resps] == [200] * 5 + [403, 200]
    assert [r["target"] for r in backend_saw(guarded, 6)] == [f"/p{i}" for i in range(5)] + ["/last"]


def test_body_over_max_request_body_is_413(start_remora, http_backend):
    backend = http_backend()
    remora = start_remora(make_config([http_listener("web", max_request_body="1KiB")],
                                      [cluster("app", [backend.endpoint])]))
    port = remora.port("web")
    with Client(port, timeout=5) as c:   # declared length: refused before anything is forwarded
        assert c.request("POST", "/", body=b"x" * 2000).status == 413
    with Client(port, timeout=5) as c:   # chunked: refused once it grows past the limit
        assert c.request("POST", "/", body=b"y" * 3000, chunked_sizes=[500] * 6).status == 413
    with Client(port, timeout=5) as c:   # at the limit: forwarded
        assert c.request("POST", "/", body=b"z" * 1024).status == 200
    assert [r["body_length"] for r in backend.requests if r["body_length"] == 1024] == [1024]
    remora.wait_stat("listener.web.downstream_rq_body_too_large", lambda v: v == 2)


# -- h2 -> HTTP/1.1 downgrade mismatches -----------------------------------------------------------

def h2_request(port: int, headers: list[tuple[str, str]], data: bytes, timeout: float = 5.0) -> list:
    s = connect(port, timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                                normalize_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers)
    conn.send_data(1, data, end_stream=True)
    s.sendall(conn.data_to_send())
    events = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                break
            for ev in conn.receive_data(d):
                events.append(ev)
                if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return events
            s.sendall(conn.data_to_send())
    except (socket.timeout, OSError):
        pass
    finally:
        s.close()
    return events


@pytest.mark.parametrize("declared,sent", [(5, ADMIN_SMUGGLE), (100, b"short")])
def test_h2_content_length_mismatch_never_reaches_backend_as_two_requests(guarded, declared, sent):
    hdrs = [(":method", "POST"), (":path", "/public"), (":scheme", "http"), (":authority", "x"),
            ("content-length", str(declared))]
    events = h2_request(guarded.port, hdrs, sent)
    assert any(isinstance(e, h2.events.StreamReset) for e in events), events   # nghttp2 checks the length
    seen = backend_saw(guarded, 0, settle=0.5)
    assert "/admin/delete-all" not in [r["target"] for r in seen]
    assert all(r["body_length"] == declared for r in seen), seen   # never a body other than declared
    assert_healthy(guarded.remora)


# -- slow bodies and non-idempotent retries (findings 4 and 6) -------------------------------------

def test_slow_body_cut_by_request_timeout(guarded):
    socks = []
    try:
        for _ in range(20):   # slowloris: a byte now and then keeps an idle timer happy, not this one
            s = connect(guarded.port, timeout=5)
            s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\na")
            socks.append(s)
        t0 = time.monotonic()
        time.sleep(0.5)
        for s in socks:
            s.sendall(b"b")
        statuses = []
        for s in socks:
            statuses.append(read_response(Reader(s)).status)
        elapsed = time.monotonic() - t0
        assert statuses == [408] * 20
        assert elapsed < 3.0, f"slow bodies held for {elapsed:.1f}s with request_timeout 1s"
    finally:
        for s in socks:
            s.close()
    assert_healthy(guarded.remora)


def test_grpc_style_streaming_request_not_cut_by_request_timeout(guarded):
    # A long request body that keeps flowing past the request timeout is cut only when it is not
    # gRPC; gRPC requests have their own deadline (grpc-timeout), so a healthy stream survives.
    s = connect(guarded.port, timeout=5)
    try:
        s.sendall(b"POST /grpc.Svc/M HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            s.sendall(b"1\r\na\r\n")
            time.sleep(0.25)
        s.sendall(b"0\r\n\r\n")
        assert read_response(Reader(s)).status == 200
    finally:
        s.close()


def test_post_not_resent_after_keepalive_race(start_remora, http_backend):
    backend = http_backend(mode="drop_reused")
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [backend.endpoint])], workers=1))
    with Client(remora.port("web"), timeout=5) as c:
        assert c.request("GET", "/first").status == 200   # leaves a pooled connection that will drop
        r = c.request("POST", "/pay", body=b"amount=100")
    assert r.status == 502
    poll(lambda: backend.dropped >= 1, 3, what="the reused connection dropped")
    assert [x["target"] for x in backend.requests].count("/pay") == 0
    assert backend.dropped == 1, "the POST was sent a second time"
    # An idempotent request is still retried on a fresh connection.
    with Client(remora.port("web"), timeout=5) as c:
        assert c.request("GET", "/again").status == 200
        assert c.request("GET", "/again2").status == 200
