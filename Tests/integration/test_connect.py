"""CONNECT tunnels (issue 18): opt-in per listener (`connect: { cluster: NAME }`), to the cluster's
endpoints only; anything else 403, no `connect:` 405. Real peers: curl --proxytunnel, raw sockets."""

from __future__ import annotations

import socket
import subprocess

import pytest

from harness import cluster, connect, http_listener, make_config, poll
from wire import Reader


def connect_config(allowed: list[str], **listener_opts) -> dict:
    return make_config([http_listener("web", connect={"cluster": "egress"}, **listener_opts)],
                       [cluster("app", ["127.0.0.1:9"]), cluster("egress", allowed)])


def curl_via(proxy_port: int, url: str, *args: str) -> subprocess.CompletedProcess:
    """curl --proxytunnel through Remora (the harness's run_curl bypasses proxies)."""
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", "-p", "-x",
                           f"http://127.0.0.1:{proxy_port}", *args, url], capture_output=True, timeout=20)


def open_tunnel(port: int, target: str, early: bytes = b"") -> tuple[socket.socket, Reader, bytes]:
    s = connect(port)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + early)
    reader = Reader(s)
    return s, reader, reader.read_until(b"\r\n\r\n")


def test_curl_proxytunnel_to_allowed_destination(start_remora, http_backend):
    b = http_backend()
    r = start_remora(connect_config([b.endpoint]))
    out = curl_via(r.port("web"), f"http://{b.endpoint}/echo", "--write-out", "\n%{http_connect} %{http_code}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().endswith("\n200 200"), out.stdout
    assert b'"target": "/echo"' in out.stdout, "the backend's own answer through the tunnel"
    assert b.requests and b.requests[-1]["target"] == "/echo"
    assert "x-forwarded-for" not in {k.lower() for k, _ in b.requests[-1]["headers"]}, "bytes pass untouched"
    st = r.stats()
    assert st["listener.web.downstream_cx_upgrades_total"] == 1
    assert st["listener.web.downstream_rq_2xx"] == 1
    poll(lambda: r.stat("listener.web.downstream_cx_upgrades_active") == 0, 5, what="the tunnel closed")


def test_raw_tunnel_to_tcp_echo_half_close_and_early_bytes(start_remora, tcp_backend):
    b = tcp_backend()
    r = start_remora(connect_config([b.endpoint]))
    s, reader, head = open_tunnel(r.port("web"), b.endpoint, early=b"early ")
    assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n", head
    s.sendall(b"bytes")
    assert reader.read_exact(len(b"early bytes")) == b"early bytes"
    s.shutdown(socket.SHUT_WR)   # half-close carried: the echo says BYE and ends
    assert reader.read_exact(3) == b"BYE"
    with pytest.raises(EOFError):   # then the end
        reader.fill()
    s.close()
    assert r.stat("cluster.egress.upstream_cx_total") == 1


def test_disallowed_destination_403_and_no_connect_config_405(start_remora, tcp_backend, http_backend):
    b = tcp_backend()
    other = tcp_backend()
    r = start_remora(connect_config([b.endpoint]))
    s, _, head = open_tunnel(r.port("web"), other.endpoint)
    assert head.startswith(b"HTTP/1.1 403 "), head
    s.close()
    out = curl_via(r.port("web"), f"http://{other.endpoint}/", "--write-out", "%{http_connect}", "-o", "/dev/null")
    assert out.returncode != 0 and out.stdout.decode() == "403", out
    assert r.stat("listener.web.downstream_rq_upgrade_refused") == 2
    h = http_backend()
    r2 = start_remora(make_config([http_listener("web")], [cluster("app", [h.endpoint])]))
    s, _, head = open_tunnel(r2.port("web"), b.endpoint)
    assert head.startswith(b"HTTP/1.1 405 "), head
    s.close()


def test_connect_failure_answers_503(start_remora, refused_endpoint):
    r = start_remora(connect_config([refused_endpoint]))
    s, reader, head = open_tunnel(r.port("web"), refused_endpoint)
    assert head.startswith(b"HTTP/1.1 503 "), head
    s.close()


def h2_connect(port: int, authority: str):
    import h2.config
    import h2.connection
    s = connect(port)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority.encode())])
    s.sendall(c.data_to_send())
    return s, c, sid


def h2_pump(s, c, state: dict, pred, timeout: float = 5):
    import time

    import h2.events
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out: {state}"
        s.settimeout(0.5)
        try:
            d = s.recv(1 << 16)
        except socket.timeout:
            continue
        assert d, "connection closed"
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.ResponseReceived):
                state["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                state["data"] = state.get("data", b"") + ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                state["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                state["reset"] = ev.error_code
        out = c.data_to_send()
        if out:
            s.sendall(out)


def test_h2_connect_tunnel_to_allowed_tcp_echo_and_403(start_remora, tcp_backend):
    b = tcp_backend()
    other = tcp_backend()
    r = start_remora(connect_config([b.endpoint]))
    s, c, sid = h2_connect(r.port("web"), b.endpoint)
    st: dict = {}
    try:
        h2_pump(s, c, st, lambda: "status" in st)
        assert st["status"] == 200
        c.send_data(sid, b"over h2")
        s.sendall(c.data_to_send())
        h2_pump(s, c, st, lambda: st.get("data", b"") == b"over h2")
        c.end_stream(sid)   # half-close: the echo answers BYE and ends, so does the stream
        s.sendall(c.data_to_send())
        h2_pump(s, c, st, lambda: st.get("ended") or "reset" in st)
        assert st["data"] == b"over h2BYE" and st.get("ended") and "reset" not in st, st
    finally:
        s.close()
    s, c, sid = h2_connect(r.port("web"), other.endpoint)
    st = {}
    try:
        h2_pump(s, c, st, lambda: "status" in st)
        assert st["status"] == 403
    finally:
        s.close()


def test_connect_obeys_the_listeners_authorization_h1_and_h2(start_remora, tcp_backend):
    """CONNECT is not routed, but the listener's policy still applies to it (HTTP/1.1 and HTTP/2):
    an allow-list that admits only another source address refuses the tunnel with 403 before any
    connect; a deny rule on a header refuses just those requests."""
    b = tcp_backend()
    r = start_remora(connect_config([b.endpoint], authorization={
        "rules": [{"name": "elsewhere", "from": {"source_cidrs": ["10.0.0.0/8"]}}]}))
    s, _, head = open_tunnel(r.port("web"), b.endpoint)
    assert head.startswith(b"HTTP/1.1 403 "), head
    s.close()
    s, c, sid = h2_connect(r.port("web"), b.endpoint)
    st: dict = {}
    try:
        h2_pump(s, c, st, lambda: "status" in st)
        assert st["status"] == 403
    finally:
        s.close()
    assert r.stat("cluster.egress.upstream_cx_total") == 0, "no connect was made for a refused tunnel"
    assert r.stat("listener.web.rbac_denied") == 2
    assert r.stat("authz.web.elsewhere.denied") == 0   # no rule matched: denied by the allow-list's default
    r2 = start_remora(connect_config([b.endpoint], authorization={
        "deny": [{"name": "evil", "to": {"headers": [{"name": "x-tenant", "exact": "evil"}]}}]}))
    s = connect(r2.port("web"))
    s.sendall(f"CONNECT {b.endpoint} HTTP/1.1\r\nHost: {b.endpoint}\r\nx-tenant: evil\r\n\r\n".encode())
    assert Reader(s).read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 403 ")
    s.close()
    s, reader, head = open_tunnel(r2.port("web"), b.endpoint)
    assert head == b"HTTP/1.1 200 Connection Established\r\n\r\n", head
    s.close()
    assert r2.stat("authz.web.evil.denied") == 1
