"""TCP listener: byte pump both ways, half-close both ways, connect failure."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from backends import pattern_bytes
from harness import cluster, connect, make_config, poll, tcp_listener
from wire import wait_closed

MiB = 1 << 20


def pump(sock: socket.socket, data: bytes, shut: bool = True) -> dict:
    """Sends data on a thread (then SHUT_WR) while the caller reads. Returns a dict with 'error'."""
    state = {"error": None, "done": False}

    def run():
        try:
            view = memoryview(data)
            for off in range(0, len(view), 256 * 1024):
                sock.sendall(view[off:off + 256 * 1024])
            if shut:
                sock.shutdown(socket.SHUT_WR)
            state["done"] = True
        except Exception as e:
            state["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    state["thread"] = t
    return state


def read_all(sock: socket.socket, limit: int, timeout: float) -> tuple[bytes, str]:
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(buf), "timeout"
        sock.settimeout(left)
        try:
            d = sock.recv(256 * 1024)
        except socket.timeout:
            return bytes(buf), "timeout"
        except ConnectionResetError:
            return bytes(buf), "reset"
        if not d:
            return bytes(buf), "eof"
        buf += d
    return bytes(buf), "limit"


@pytest.fixture
def tcp_proxy(start_remora, tcp_backend):
    backend = tcp_backend()
    remora = start_remora(make_config([tcp_listener("echo", "tcpecho")], [cluster("tcpecho", [backend.endpoint])]))
    return remora, backend


@pytest.mark.timeout(90)
def test_16mib_echo_with_half_close(tcp_proxy):
    remora, backend = tcp_proxy
    data = os.urandom(16 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    s = connect(remora.port("echo"), timeout=30)
    try:
        st = pump(s, data)
        got, how = read_all(s, 16 * MiB + 3, timeout=60)
        st["thread"].join(10)
    finally:
        s.close()
    assert st["error"] is None, f"sending failed: {st['error']!r}"
    assert how == "eof", f"stream ended with {how} after {len(got)} bytes"
    assert len(got) == 16 * MiB + 3, f"got {len(got)} bytes, expected {16 * MiB + 3}"
    assert hashlib.sha256(got[:16 * MiB]).hexdigest() == sha, "echoed bytes differ"
    assert got[16 * MiB:] == b"BYE", "the backend's bytes sent after the client's SHUT_WR were lost"
    assert len(backend.eof_seen) == 1, "backend never saw the client's half-close"
    remora.assert_alive()


def test_half_close_from_the_backend_side(start_remora, tcp_backend):
    backend = tcp_backend(mode="greet_shutdown")
    remora = start_remora(make_config([tcp_listener("t", "b")], [cluster("b", [backend.endpoint])]))
    s = connect(remora.port("t"), timeout=5)
    try:
        greeting, how = read_all(s, 100, timeout=5)
        assert (greeting, how) == (b"HELLO", "eof"), "backend's SHUT_WR not carried to the client as EOF"
        payload = b"sent-after-eof:" + pattern_bytes(100_000)
        s.sendall(payload)  # our write side is still open: the backend must get all of it
        s.shutdown(socket.SHUT_WR)
        poll(lambda: 1 in backend.eof_seen, 5, what="backend seeing the client's EOF")
        assert bytes(backend.received[1]) == payload
        how, _ = wait_closed(s, 5)
        assert how in ("eof", "reset")
    finally:
        s.close()
    remora.assert_alive()


def test_concurrent_tcp_sessions_are_isolated(tcp_proxy):
    remora, _ = tcp_proxy
    results: dict[int, object] = {}

    def session(i):
        try:
            data = pattern_bytes(200_000 + i, seed=i)
            s = connect(remora.port("echo"), timeout=20)
            try:
                st = pump(s, data)
                got, how = read_all(s, len(data) + 3, timeout=20)
                st["thread"].join(5)
            finally:
                s.close()
            results[i] = (how == "eof" and got == data + b"BYE") or f"{how} {len(got)}"
        except Exception as e:
            results[i] = repr(e)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {i: r for i, r in results.items() if r is not True} == {}
    assert len(results) == 16
    remora.assert_alive()


def test_connect_failure_closes_client(start_remora, tcp_backend, refused_endpoint):
    good = tcp_backend()
    remora = start_remora(make_config(
        [tcp_listener("dead", "deadcluster"), tcp_listener("echo", "tcpecho")],
        [cluster("deadcluster", [refused_endpoint], connect_timeout="2s"), cluster("tcpecho", [good.endpoint])]))
    t0 = time.monotonic()
    s = connect(remora.port("dead"), timeout=5)
    try:
        s.sendall(b"hello?")
        how, got = wait_closed(s, 5)
    finally:
        s.close()
    assert how in ("eof", "reset"), "client connection left open although the upstream refused"
    assert got == b""
    assert time.monotonic() - t0 < 2.0, "a refused connect should close the client promptly"
    # the process and the other listener still work
    s = connect(remora.port("echo"), timeout=5)
    try:
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        got, how = read_all(s, 100, timeout=5)
    finally:
        s.close()
    assert (got, how) == (b"pingBYE", "eof")
    remora.assert_alive()


def test_tcp_backpressure_when_client_does_not_read(tcp_proxy):
    """The client sends 128 MiB and never reads the echo: once the echo backs up, the proxy stops
    reading the client instead of buffering."""
    remora, _ = tcp_proxy
    rss0 = remora.rss_kib()
    s = connect(remora.port("echo"), timeout=30, rcvbuf=64 * 1024, sndbuf=64 * 1024)
    t = None
    try:
        progress = {"sent": 0}
        block = memoryview(pattern_bytes(MiB))

        def send():
            try:
                for _ in range(128):
                    for off in range(0, MiB, 64 * 1024):
                        s.sendall(block[off:off + 64 * 1024])
                        progress["sent"] += 64 * 1024
            except OSError:
                pass

        t = threading.Thread(target=send, daemon=True)
        t.start()
        deadline = time.monotonic() + 15
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if progress["sent"] != last:
                last, since = progress["sent"], time.monotonic()
            elif time.monotonic() - since >= 0.4:
                break
        else:
            pytest.fail("client upload never stalled")
        growth = remora.rss_kib() - rss0
        assert last < 96 * MiB, f"the proxy took {last >> 20} MiB from a client that reads nothing"
        assert growth < 48 * 1024, f"remora RSS grew by {growth >> 10} MiB"
    finally:
        try:
            s.shutdown(socket.SHUT_RDWR)  # wakes the sender blocked in sendall
        except OSError:
            pass
        s.close()
        if t:
            t.join(5)
    remora.assert_alive()
