"""What clients can make the proxy hold, and what they can make it do upstream (issue 19, findings 3
and 5): the per-connection response buffer budget (`per_connection_buffer_limit`), the overload
actions by RSS (`overload:`), rapid reset not turning into upstream connection churn, and the
connect rate limit (`max_connects_per_second`).

Real binary, real peers: hyper-h2 clients that never open their windows, the HTTP/1.1 backend of
backends.py, and `BulkH2Backend` below (an h2c server on hyper-h2 that streams large bodies as fast
as the proxy's windows let it, never blocking on a socket).
"""

from __future__ import annotations

import hashlib
import select
import socket
import struct
import time

import pytest

h2 = pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402

from backends import HTTPBackend, _ServerBase, pattern_bytes  # noqa: E402
from harness import cluster, connect, get, http_listener, made_and_closed, make_config, poll  # noqa: E402
from test_http2 import (CANCEL, END_HEADERS, END_STREAM, HEADERS, PREFACE, RST_STREAM, SETTINGS, ACK,  # noqa: E402
                        H2Client, frame, h2_get, hpack_get, read_frames)

MiB = 1 << 20
KiB = 1 << 10
WINDOW0 = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}


class BulkH2Backend(_ServerBase):
    """h2c server: GET /bytes/N answers N bytes of `pattern_bytes(N)` with content-length and
    x-body-sha256, sent as the peer's windows allow; anything else gets a small 200. Non-blocking
    (select), one thread per connection. Counts `requests` and `connections`."""

    def __init__(self, host: str = "127.0.0.1"):
        self.requests = 0
        self.bodies: dict[int, bytes] = {}
        self.max_window = 0   # the largest send window the proxy gave any stream
        super().__init__(host)

    def body(self, n: int) -> bytes:
        with self.lock:
            if n not in self.bodies:
                self.bodies[n] = pattern_bytes(n)
            return self.bodies[n]

    def handle(self, conn, conn_id):
        hc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        hc.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * MiB})
        hc.initiate_connection()
        conn.setblocking(False)
        out = bytearray(hc.data_to_send())
        sending: dict[int, memoryview] = {}
        while not self.stop.is_set():
            r, w, _ = select.select([conn], [conn] if out else [], [], 0.05)
            if r:
                try:
                    data = conn.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":
                    return
                for ev in (hc.receive_data(data) if data else []):
                    if isinstance(ev, h2.events.RequestReceived):
                        with self.lock:
                            self.requests += 1
                        path = dict(ev.headers).get(b":path", b"/").decode()
                        seg = path.strip("/").split("/")
                        if seg[0] == "bytes" and len(seg) == 2:
                            body = self.body(int(seg[1]))
                            hc.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body))),
                                                           ("x-body-sha256", hashlib.sha256(body).hexdigest())])
                            sending[ev.stream_id] = memoryview(body)
                        else:
                            hc.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "2")])
                            hc.send_data(ev.stream_id, b"ok", end_stream=True)
                    elif isinstance(ev, h2.events.StreamReset):
                        sending.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.DataReceived):
                        hc.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if len(out) < 4 * MiB:
                for sid in list(sending):
                    view = sending[sid]
                    try:
                        n = min(hc.local_flow_control_window(sid), hc.max_outbound_frame_size, len(view))
                        self.max_window = max(self.max_window, hc.local_flow_control_window(sid))
                        while n > 0:
                            hc.send_data(sid, view[:n].tobytes(), end_stream=n == len(view))
                            view = view[n:]
                            n = min(hc.local_flow_control_window(sid), hc.max_outbound_frame_size, len(view))
                    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                        view = view[:0]
                    if len(view):
                        sending[sid] = view
                    else:
                        del sending[sid]
            out += hc.data_to_send()
            if out:
                try:
                    n = conn.send(out)
                    del out[:n]
                except (BlockingIOError, InterruptedError):
                    pass


@pytest.fixture
def bulk_h2_backend(request):
    yield from made_and_closed(BulkH2Backend, request=request)


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stall_and_drain(remora, port: int, nconn: int, streams: int, size: int, limit: int, name: str):
    """`nconn` h2c connections open `streams` streams each for `size`-byte responses with windows of
    0 (nothing can be sent to them). Checks the proxy's RSS against the budget bound, that a fresh
    client is served at once, then opens the windows and checks every body. Returns the figures."""
    rss0 = remora.rss_kib()
    cpu0 = proc_cpu_seconds(remora.pid)
    clients = []
    try:
        for _ in range(nconn):
            c = H2Client(port, auto_ack=False, settings=WINDOW0, timeout=30)
            clients.append(c)
            c.sts = [c.start("GET", f"/bytes/{size}", keep_body=False) for _ in range(streams)]
        heads = 0
        end = time.monotonic() + 4.0   # responses pile up toward clients that take nothing
        while time.monotonic() < end:
            for c in clients:
                c.pump(0.01)
        heads = sum(1 for c in clients for s in c.sts if s.status == 200)
        rss_stalled = remora.rss_kib()
        cpu_stalled = proc_cpu_seconds(remora.pid) - cpu0
        t0 = time.monotonic()
        fresh = h2_get(port, "/bytes/1000", timeout=5)
        fresh_s = time.monotonic() - t0
        assert fresh.status == 200 and fresh.length == 1000, "a fresh client was not served"
        # Worst case (docs/config.md): per connection the budget, plus per stream the bytes its
        # upstream could send before it was paused (one 64 KiB read from HTTP/1.1, the initial
        # 64 KiB window from HTTP/2) and its bookkeeping (< 48 KiB); plus the baseline.
        bound_kib = 16 * 1024 + nconn * (limit + streams * 112 * KiB) // KiB
        growth = rss_stalled - rss0
        print(f"{name}: RSS {rss0} KiB -> {rss_stalled} KiB (+{growth >> 10} MiB, bound {bound_kib >> 10} MiB), "
              f"{heads} heads, CPU {cpu_stalled:.2f}s in 4s, fresh request {fresh_s * 1000:.0f} ms")
        assert growth < bound_kib, f"RSS grew by {growth >> 10} MiB, over the bound of {bound_kib >> 10} MiB"
        assert fresh_s < 1.0, f"a fresh request took {fresh_s:.1f}s"
        assert cpu_stalled < 2.0, f"the proxy spent {cpu_stalled:.1f}s of CPU on stalled clients in 4 s"
        # the clients read everything
        for c in clients:
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 * MiB})
            c.conn.increment_flow_control_window(64 * MiB)
            c.ack()
            c.auto_ack = True
            c.flush()
        want = hashlib.sha256(pattern_bytes(size)).hexdigest()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not all(s.done for c in clients for s in c.sts):
            for c in clients:
                c.pump(0.005)
        for c in clients:
            for s in c.sts:
                assert s.ended and s.status == 200, f"stream {s.id}: status {s.status}, reset {s.reset_code}, " \
                                                    f"{s.length} bytes"
                assert s.length == size and s.sha.hexdigest() == want, f"stream {s.id}: wrong body"
        return growth
    finally:
        for c in clients:
            c.close()


@pytest.mark.timeout(90)
def test_stalled_h2_clients_hold_at_most_their_budget_h1_upstream(start_remora):
    backend = HTTPBackend()
    try:
        limit = 1 * MiB
        remora = start_remora(make_config([http_listener("web")],   # the default limit: 1 MiB
                                          [cluster("app", [backend.endpoint])], workers=1))
        port = remora.port("web")
        assert h2_get(port, "/bytes/1000").status == 200
        stall_and_drain(remora, port, nconn=10, streams=50, size=256 * KiB, limit=limit, name="h1 upstream")
        assert remora.stat("listener.web.downstream_cx_buffer_limit_reached") >= 10
    finally:
        backend.close()


@pytest.mark.timeout(90)
def test_stalled_h2_clients_hold_at_most_their_budget_h2_upstream(start_remora, bulk_h2_backend):
    b = bulk_h2_backend()
    limit = 1 * MiB
    remora = start_remora(make_config([http_listener("web", per_connection_buffer_limit="1MiB")],
                                      [cluster("app", [b.endpoint], protocol="http2")], workers=1))
    port = remora.port("web")
    assert h2_get(port, "/bytes/1000").status == 200
    stall_and_drain(remora, port, nconn=10, streams=100, size=1 * MiB, limit=limit, name="h2 upstream")
    assert remora.stat("listener.web.downstream_cx_buffer_limit_reached") >= 1


@pytest.mark.timeout(30)
def test_h2_upstream_window_is_raised_for_a_reading_client(start_remora, bulk_h2_backend):
    """A client that reads: its stream's upstream window goes from 64 KiB to the cluster's
    initial_stream_window (1 MiB by default), so large downloads are not held to 64 KiB per round trip."""
    b = bulk_h2_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [b.endpoint], protocol="http2")],
                                      workers=1))
    with H2Client(remora.port("web"), timeout=20) as c:
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 8 * MiB})
        c.conn.increment_flow_control_window(64 * MiB)
        c.flush()
        st = c.get(f"/bytes/{8 * MiB}", keep_body=False, timeout=20)
        assert st.status == 200 and st.length == 8 * MiB
        assert st.sha.hexdigest() == hashlib.sha256(pattern_bytes(8 * MiB)).hexdigest()
    assert b.max_window > 512 * KiB, f"the upstream window stayed at {b.max_window}"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("protocol", ["http1", "http2"])
def test_a_stream_the_client_reads_goes_on_while_others_hold_the_budget(start_remora, http_backend,
                                                                        bulk_h2_backend, protocol):
    """Ten streams the client never reads fill its connection's budget; a stream it does read (its own
    WINDOW_UPDATEs) still gets its whole 2 MiB response, and the stalled ones complete afterwards."""
    b = http_backend() if protocol == "http1" else bulk_h2_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [b.endpoint], protocol=protocol)],
                                      workers=1))
    with H2Client(remora.port("web"), auto_ack=False, settings=WINDOW0, timeout=20) as c:
        c.conn.increment_flow_control_window(64 * MiB)
        stalled = [c.start("GET", f"/bytes/{512 * KiB}", keep_body=False) for _ in range(10)]
        c.wait(lambda: all(s.status for s in stalled), 10, "the stalled streams' heads")
        remora.wait_stat("listener.web.downstream_cx_buffer_limit_reached", lambda v: v >= 1, timeout=5)
        st = c.start("GET", f"/bytes/{2 * MiB}", keep_body=False)
        deadline = time.monotonic() + 15
        while not st.done and time.monotonic() < deadline:   # this stream only gets WINDOW_UPDATEs
            if c.conn.remote_flow_control_window(st.id) < 128 * KiB:
                c.conn.increment_flow_control_window(256 * KiB, stream_id=st.id)
                c.flush()
            c.pump(0.02)
        assert st.ended and st.length == 2 * MiB, f"the read stream got {st.length} bytes (reset {st.reset_code})"
        assert st.sha.hexdigest() == hashlib.sha256(pattern_bytes(2 * MiB)).hexdigest()
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 * MiB})
        c.auto_ack = True
        c.ack()
        c.wait(lambda: all(s.done for s in stalled), 15, "the stalled streams, once read")
        assert all(s.ended and s.length == 512 * KiB for s in stalled)


# -- overload -----------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_overload_refuses_new_streams_and_connections(start_remora, http_backend):
    backend = http_backend()
    cfg = make_config([http_listener("web")], [cluster("app", [backend.endpoint])], workers=1)
    cfg["overload"] = {"refuse_streams_above": "1MiB", "refuse_connections_above": "1GiB"}
    remora = start_remora(cfg)
    port = remora.port("web")
    remora.wait_stat("server.overload_level", lambda v: v == 1, timeout=5, what="level 1")
    st = h2_get(port, "/echo")
    assert st.reset_code == 7 and st.status is None, f"h2 stream not refused: {st.status} {st.reset_code}"
    r = get(port, "/echo")
    assert r.status == 503 and b"overloaded" in r.body
    assert remora.stat("listener.web.downstream_rq_overload_refused") == 2
    assert not backend.requests, "a refused request reached the backend"
    assert remora.stat("server.overload_rss_bytes") > 1 * MiB


@pytest.mark.timeout(30)
def test_overload_refuses_new_connections_above_the_higher_mark(start_remora, http_backend):
    backend = http_backend()
    cfg = make_config([http_listener("web")], [cluster("app", [backend.endpoint])], workers=1)
    cfg["overload"] = {"refuse_streams_above": "1MiB", "refuse_connections_above": "2MiB"}
    remora = start_remora(cfg)
    port = remora.port("web")
    remora.wait_stat("server.overload_level", lambda v: v == 2, timeout=5, what="level 2")
    s = connect(port, timeout=5)
    try:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b"", f"a connection above the connection mark was served: {data!r}"
    finally:
        s.close()
    remora.wait_stat("listener.web.downstream_cx_overload_reject", lambda v: v >= 1, timeout=5)
    assert not backend.requests


# -- rapid reset and upstream connection churn ------------------------------------------------------------

def reset_cycles(port: int, conns: int, same_write: bool, path: bytes = b"/sleep/100"):
    """`conns` client connections, one after another, each opening one stream and resetting it (in
    the same write as the HEADERS, or in a later one), then closing."""
    hs = frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack_get(path))
    rst = frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL))
    for _ in range(conns):
        s = connect(port, timeout=5)
        try:
            s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0) + hs + (rst if same_write else b""))
            if not same_write:
                read_frames(s, 0.002)
                s.sendall(rst)
            read_frames(s, 0.002)
        finally:
            s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["http1", "http2"])
def test_rapid_reset_in_the_same_write_opens_no_upstream_churn(start_remora, http_backend, bulk_h2_backend, protocol):
    b = http_backend() if protocol == "http1" else bulk_h2_backend()
    remora = start_remora(make_config([http_listener("web")], [cluster("app", [b.endpoint], protocol=protocol)],
                                      workers=1))
    port = remora.port("web")
    reset_cycles(port, 300, same_write=True)
    assert_healthy_after_resets(remora, port)
    print(f"{protocol}: backend connections {b.connections}, requests "
          f"{len(b.requests) if protocol == 'http1' else b.requests - 1}")
    assert b.connections <= 3, f"300 open+reset pairs made the proxy open {b.connections} upstream connections"
    seen = len(b.requests) if protocol == "http1" else b.requests
    assert seen <= 1, f"{seen} requests reset in the same write as their HEADERS reached the backend"


@pytest.mark.timeout(60)
def test_rapid_reset_in_a_later_write_is_bounded_by_the_connect_rate(start_remora, http_backend):
    """The RST in a later write: the request may have left (the proxy cannot see the future), and its
    connection is then closed, but new connections per second are capped, and refused connects are
    counted; a request cancelled while its connection was still connecting keeps that connection."""
    b = http_backend()
    remora = start_remora(make_config([http_listener("web")],
                                      [cluster("app", [b.endpoint], max_connects_per_second=50)], workers=1))
    port = remora.port("web")
    t0 = time.monotonic()
    reset_cycles(port, 300, same_write=False)
    took = time.monotonic() - t0
    assert_healthy_after_resets(remora, port)
    stats = remora.stats()
    limited = stats.get("cluster.app.upstream_cx_connect_rate_limited", 0)
    total = stats.get("cluster.app.upstream_cx_total", 0)
    print(f"later write: {b.connections} backend connections, {len(b.requests)} requests, {total} connects, "
          f"{limited} rate-limited, in {took:.1f}s")
    assert total <= 50 * (took + 1) + 5, f"{total} upstream connects in {took:.1f}s over a cap of 50/s"
    assert b.connections <= 50 * (took + 1) + 5


def assert_healthy_after_resets(remora, port: int):
    remora.wait_stat("listener.web.downstream_rq_active", lambda v: v == 0, timeout=5)
    poll(lambda: h2_get(port, "/bytes/100", timeout=5).status == 200, 5, what="a healthy request")
