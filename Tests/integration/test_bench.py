"""`remora bench`: open-loop correctness (coordinated omission), bad targets, Ctrl-C, outputs;
h2c; gRPC unary and streaming calls against a real grpcio server (grpc_fixtures/echo_server.py),
directly and through Remora.

The load generator runs as a subprocess against Python backends on 127.0.0.1; every run has a
subprocess timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from backends import _ServerBase
from harness import cluster, http_listener, make_config, poll, route
from wire import Reader, header, parse_headers, split_head

RUN_TIMEOUT = 20.0


def bench(binary, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), "bench", *args], capture_output=True, text=True, timeout=timeout)


def bench_json(binary, tmp_path, *args: str, name: str = "out.json", expect_code: int | None = 0) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / name
    p = bench(binary, "--json", str(out), *args)
    assert p.returncode >= 0, f"remora bench died of signal {-p.returncode}\n{p.stderr}"
    if expect_code is not None:
        assert p.returncode == expect_code, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return json.loads(out.read_text()), p


class StallingBackend(_ServerBase):
    """HTTP/1.1 keep-alive server that answers every request after `service_s`, except that the
    whole server stalls for `stall_s` once per `period_s` (like a GC pause): a request read during
    a stall is answered when the stall ends."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"

    def __init__(self, stall_s: float = 0.1, period_s: float = 1.0, service_s: float = 0.001):
        self.stall_s, self.period_s, self.service_s = stall_s, period_s, service_s
        self.t0 = time.monotonic()
        self.served = 0
        super().__init__("127.0.0.1")

    def handle(self, conn, conn_id):
        reader = Reader(conn)
        while not self.stop.is_set():
            try:
                head = reader.read_until(b"\r\n\r\n")
            except EOFError:
                return
            _, lines = split_head(head)
            cl = header(parse_headers(lines), "content-length")
            if cl:
                reader.read_exact(int(cl))
            if self.service_s:
                time.sleep(self.service_s)
            phase = (time.monotonic() - self.t0) % self.period_s
            if phase < self.stall_s:
                self.stop.wait(self.stall_s - phase)
            conn.sendall(self.RESPONSE)
            with self.lock:
                self.served += 1


@pytest.fixture
def stalling_backend():
    b = StallingBackend()
    yield b
    b.close()


def p_ms(doc: dict, p: str, key: str = "latency_ms") -> float:
    return doc[key]["percentiles"][p]


# -- coordinated omission -------------------------------------------------------------------------

@pytest.mark.timeout(40)
def test_open_loop_p99_shows_stalls_that_closed_loop_hides(remora_binary, stalling_backend, tmp_path):
    url = f"http://127.0.0.1:{stalling_backend.port}/"
    # Closed loop, one connection: ~1 ms per response, so ~800 req/s. During each 100 ms stall it
    # simply waits: one slow sample per second among ~800 — p99 never sees the stall.
    closed, _ = bench_json(remora_binary, tmp_path, "-t", "1", "-c", "1", "-d", "4s", "-w", "500ms", url,
                           name="closed.json")
    # Open loop at about the same throughput: requests keep their intended send times during the
    # stall, so ~10% of them are 0-100 ms late and p99 reflects the stall (as wrk2 reports it).
    rate = max(200, min(800, int(closed["requests_per_s"])))
    opened, p = bench_json(remora_binary, tmp_path, "-t", "1", "-c", "8", "-R", str(rate), "-d", "4s", "-w", "500ms",
                           url, name="open.json")
    summary = (f"closed: {closed['requests_per_s']:.0f} req/s p99 {p_ms(closed, 'p99')} ms; "
               f"open: {opened['requests_per_s']:.0f} req/s p99 {p_ms(opened, 'p99')} ms "
               f"(uncorrected {p_ms(opened, 'p99', 'uncorrected_latency_ms')} ms)")
    print(summary)
    assert closed["errors_total"] == 0 and opened["errors_total"] == 0, summary
    assert closed["responses"] > 1000, summary
    assert opened["responses"] > 0.8 * rate * 4, summary
    assert p_ms(opened, "p99") >= 50, summary          # the stalls are visible
    assert p_ms(closed, "p99") < 20, summary           # ... and hidden by the closed loop
    assert p_ms(opened, "p99") > 5 * p_ms(closed, "p99"), summary
    assert p_ms(closed, "p100") >= 50, summary         # the stall is in the closed run too, in its max only
    assert opened["sends"]["waited_for_connection"] > 0, summary   # 8 connections stuck in each stall
    assert "coordinated omission corrected" in p.stdout


# -- bad targets: counted and reported, never a crash or a hang ------------------------------------

def test_refused_connections_are_counted(remora_binary, refused_endpoint, tmp_path):
    t0 = time.monotonic()
    doc, p = bench_json(remora_binary, tmp_path, "-c", "4", "-d", "1s", f"http://{refused_endpoint}/",
                        expect_code=1)
    assert time.monotonic() - t0 < 8
    assert doc["responses"] == 0
    assert doc["errors"]["connect"] >= 4
    assert doc["connections"]["opened"] == 0
    assert "connect" in p.stdout and "Errors" in p.stdout


def test_refused_with_request_count_gives_up_after_the_timeout(remora_binary, refused_endpoint, tmp_path):
    t0 = time.monotonic()
    doc, _ = bench_json(remora_binary, tmp_path, "-c", "2", "-n", "100", "--timeout", "500ms",
                        f"http://{refused_endpoint}/", expect_code=1)
    assert time.monotonic() - t0 < 8
    assert doc["errors"]["connect"] >= 2


def test_unreachable_target_times_out_connecting(remora_binary, tmp_path):
    # A listener that never accepts, its backlog full: further SYNs are dropped, like a black hole.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lsock.getsockname())
            fillers.append(s)
        time.sleep(0.1)
        t0 = time.monotonic()
        doc, p = bench_json(remora_binary, tmp_path, "-c", "2", "-t", "1", "-d", "1500ms", "--timeout", "300ms",
                            f"http://127.0.0.1:{lsock.getsockname()[1]}/", expect_code=None)
        assert time.monotonic() - t0 < 10
        assert p.returncode in (0, 1)
        assert doc["errors"]["connect"] >= 2, p.stdout
    finally:
        for s in fillers:
            s.close()
        lsock.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_server_closing_mid_response_is_a_reset_error(remora_binary, http_backend, tmp_path, how):
    backend = http_backend()
    doc, p = bench_json(remora_binary, tmp_path, "-c", "2", "-d", "1s",
                        f"http://{backend.endpoint}/abort/cl/{how}", expect_code=1)
    assert doc["responses"] == 0
    assert doc["errors"]["reset"] >= 2, p.stdout
    assert doc["errors"]["parse"] == 0
    assert doc["connections"]["opened"] >= 2


def test_slow_responses_time_out(remora_binary, http_backend, tmp_path):
    backend = http_backend()
    t0 = time.monotonic()
    doc, p = bench_json(remora_binary, tmp_path, "-c", "2", "-d", "1s", "--timeout", "300ms",
                        f"http://{backend.endpoint}/sleep/5000", expect_code=1)
    assert time.monotonic() - t0 < 6   # the drain after the run is bounded by the timeout too
    assert doc["errors"]["timeout"] >= 2, p.stdout
    assert doc["responses"] == 0


def test_ctrl_c_prints_the_results_so_far(remora_binary, http_backend, tmp_path):
    backend = http_backend()
    out = tmp_path / "int.json"
    proc = subprocess.Popen([str(remora_binary), "bench", "-c", "2", "-d", "60s", "--json", str(out),
                             f"http://{backend.endpoint}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "INTERRUPTED" in stdout
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True
    assert doc["responses"] > 0
    assert 1.0 < doc["elapsed_s"] < 5


# -- load shapes and outputs -----------------------------------------------------------------------

def test_request_count_pipelining_body_and_outputs(remora_binary, http_backend, tmp_path):
    backend = http_backend()
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 1000)
    doc, p = bench_json(remora_binary, tmp_path, "-c", "3", "-m", "4", "-n", "600", "--body-file", str(body),
                        "-H", "X-Bench: yes", "--hgrm", str(tmp_path / "o.hgrm"), "--plot", str(tmp_path / "o.svg"),
                        "--label", "first", f"http://{backend.endpoint}/mirror")
    assert doc["responses"] == 600 and doc["sent"] == 600, p.stdout
    assert doc["status"] == {"200": 600}
    assert doc["errors_total"] == 0
    assert doc["config"]["method"] == "POST"
    assert doc["bytes_read"] > 600 * 1000
    reqs = backend.requests
    assert len(reqs) == 600
    assert all(r["method"] == "POST" and r["body_length"] == 1000 and header(r["headers"], "x-bench") == "yes"
               for r in reqs)
    assert doc["latency_ms"]["histogram"]["encoded"].startswith("HISTF")
    hgrm = (tmp_path / "o.hgrm").read_text()
    assert hgrm.startswith("       Value     Percentile TotalCount 1/(1-Percentile)\n\n")
    assert "#[Max     =" in hgrm and "Total count    =          600]" in hgrm
    svg = (tmp_path / "o.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 1

    # A second run drawn on the first one's chart; progress forced on (stderr is a pipe here).
    doc2, p2 = bench_json(remora_binary, tmp_path, "-c", "2", "-d", "2200ms", "--progress", "--label", "second",
                          "--plot", str(tmp_path / "both.svg"), "--plot-compare", str(tmp_path / "out.json"),
                          f"http://{backend.endpoint}/", name="second.json")
    both = (tmp_path / "both.svg").read_text()
    assert both.count("<polyline") == 2 and "first" in both and "second" in both
    assert sum("req/s" in line and "p99" in line for line in p2.stderr.splitlines()) >= 2, p2.stderr
    assert not any("req/s" in line for line in p.stderr.splitlines())   # piped: quiet by default


def test_usage_errors_exit_2(remora_binary):
    p = bench(remora_binary, "--connections", "0", "http://127.0.0.1:1/")
    assert p.returncode == 2 and "--connections 0" in p.stderr
    p = bench(remora_binary, "--help")
    assert p.returncode == 0 and "--rate" in p.stdout and "--max-connections" in p.stdout


# -- h2c and gRPC ------------------------------------------------------------------------------

def test_h2c_closed_and_open_loop(remora_binary, tmp_path):
    pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
    from test_http2 import H2Backend

    backend = H2Backend(max_concurrent_streams=8)
    try:
        doc, p = bench_json(remora_binary, tmp_path, "--h2c", "-c", "4", "-m", "32", "-t", "2", "-d", "1s",
                            "--hgrm", str(tmp_path / "h.hgrm"), "--plot", str(tmp_path / "h.svg"),
                            f"http://{backend.endpoint}/bytes/100")
        assert "HTTP/2 (h2c)" in p.stdout
        assert doc["responses"] > 0 and doc["errors_total"] == 0, p.stdout
        assert doc["status"] == {"200": doc["responses"]}
        assert doc["bytes_read"] > doc["responses"] * 100 and doc["bytes_written"] > 0
        assert doc["connections"]["opened"] == 4
        # Streams multiplexed, and capped by the server's SETTINGS_MAX_CONCURRENT_STREAMS (8 < -m 32).
        assert 1 < backend.max_active <= 8
        assert backend.refused == 0
        assert (tmp_path / "h.hgrm").read_text().startswith("       Value")
        assert (tmp_path / "h.svg").read_text().startswith("<svg")

        # Open loop with a POST body.
        body = tmp_path / "body.bin"
        body.write_bytes(b"x" * 300)
        n_before = len(backend.requests)
        doc, p = bench_json(remora_binary, tmp_path, "--h2c", "-c", "2", "-m", "4", "-R", "200", "-d", "1s",
                            "--body-file", str(body), f"http://{backend.endpoint}/echo", name="open.json")
        assert doc["errors_total"] == 0 and 150 <= doc["responses"] <= 250, p.stdout
        assert "sends" in doc
        reqs = backend.requests[n_before:]
        assert reqs and all(dict(r["headers"])[":method"] == "POST" and r["body_length"] == 300
                            and dict(r["headers"])["content-length"] == "300" for r in reqs), reqs[:1]
    finally:
        backend.close()


# -- gRPC: unary, server-stream, client-stream, bidi (grpcio on the other side) ---------------

FIXTURES = Path(__file__).resolve().parent / "grpc_fixtures"
ECHO = "/remora.test.Echo/"


@pytest.fixture
def grpc_echo():
    """grpc_echo.backend(): a grpcio server of remora.test.Echo in this process (stopped at teardown);
    grpc_echo.request(**fields): a serialized EchoRequest (what --data sends)."""
    pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio protobuf)")
    sys.path.insert(0, str(FIXTURES))
    import echo_pb2
    from echo_server import GRPCBackend

    made: list = []

    def backend(name: str = "bench"):
        b = GRPCBackend(name)
        made.append(b)
        return b

    yield SimpleNamespace(backend=backend, request=lambda **kw: echo_pb2.EchoRequest(**kw).SerializeToString())
    for b in made:
        b.stop(None).wait(5)


def grpc_bench(binary, tmp_path, endpoint: str, method: str, request: bytes, *args: str, name: str = "out.json",
               expect_code: int | None = 0) -> tuple[dict, subprocess.CompletedProcess]:
    data = tmp_path / (name + ".bin")
    data.write_bytes(request)
    return bench_json(binary, tmp_path, "--grpc", endpoint, "--method", ECHO + method, "--data", str(data), *args,
                      name=name, expect_code=expect_code)


def assert_clean_calls(doc: dict, p, calls: int, sent: int, received: int):
    assert doc["responses"] == calls and doc["sent"] == calls, p.stdout
    assert doc["grpc_status"] == {"0": calls} and doc["status"] == {"200": calls}, p.stdout
    assert doc["errors_total"] == 0, p.stdout
    assert doc["messages"]["sent"] == sent and doc["messages"]["received"] == received, p.stdout


def test_grpc_unary(remora_binary, tmp_path, grpc_echo):
    backend = grpc_echo.backend()
    req = grpc_echo.request(message="hello", payload=b"p" * 64)
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "Unary", req, "-c", "4", "-m", "8", "-d", "1s")
    assert "gRPC status   0: " in p.stdout, p.stdout
    assert doc["responses"] > 0 and doc["errors_total"] == 0, p.stdout
    assert doc["grpc_status"] == {"0": doc["responses"]}
    assert doc["status"] == {"200": doc["responses"]}
    assert doc["config"]["grpc_mode"] == "unary" and doc["latency_of"] == "call"

    # A failing method: grpc-status from a trailers-only response is counted, not an error.
    bad = grpc_echo.request(fail_code=5)
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "Unary", bad, "-c", "1", "-m", "2", "-n", "50",
                        name="bad.json")
    assert doc["grpc_status"] == {"5": 50} and doc["errors_total"] == 0, p.stdout

    # An unknown method: UNIMPLEMENTED (12).
    doc, p = bench_json(remora_binary, tmp_path, "--grpc", backend.endpoint, "--method", "/remora.test.Echo/Nope",
                        "-c", "1", "-n", "10", name="unimpl.json")
    assert doc["grpc_status"] == {"12": 10}, p.stdout


def test_grpc_server_stream_counts_every_message(remora_binary, tmp_path, grpc_echo):
    backend = grpc_echo.backend()
    # Small replies (several to a DATA frame) and 40 KB ones (each split across DATA frames).
    for count, size, calls in ((7, 100, 60), (3, 40_000, 20)):
        req = grpc_echo.request(count=count, reply_size=size)
        doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "ServerStream", req, "--grpc-mode",
                            "server-stream", "-c", "2", "-m", "4", "-n", str(calls), name=f"ss{size}.json")
        assert_clean_calls(doc, p, calls, sent=calls, received=count * calls)
        assert doc["latency_of"] == "call" and doc["latency_ms"]["count"] == calls
        assert doc["bytes_read"] > count * calls * size
        assert doc["messages"]["received_per_s"] > doc["calls_per_s"] > 0
        assert "(gRPC (HTTP/2, h2c), server-stream)" in p.stdout
        assert f"received {count * calls:,} (" in p.stdout, p.stdout


def test_grpc_client_stream(remora_binary, tmp_path, grpc_echo):
    backend = grpc_echo.backend()
    req = grpc_echo.request(message="m", payload=b"c" * 3000)
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "ClientStream", req, "--grpc-mode", "client-stream",
                        "--messages", "20", "-c", "2", "-m", "2", "-n", "30")
    assert_clean_calls(doc, p, 30, sent=600, received=30)
    assert doc["config"]["messages_per_call"] == 20
    assert doc["bytes_written"] > 600 * 3000

    # What the server counted: a recorded call (its call_id) got all 20 messages before the half-close.
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "ClientStream",
                        grpc_echo.request(call_id="cs", payload=b"c" * 10), "--grpc-mode", "client-stream",
                        "--messages", "20", "-c", "1", "-n", "1", name="one.json")
    rec = backend.call("cs")
    assert rec.finished.wait(5) and rec.completed, rec
    assert rec.received == 20, rec


def test_grpc_bidi_ping_pong(remora_binary, tmp_path, grpc_echo):
    backend = grpc_echo.backend()
    req = grpc_echo.request(message="ping", payload=b"b" * 200)
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "Bidi", req, "--grpc-mode", "bidi",
                        "--messages", "8", "-c", "2", "-m", "2", "-n", "40")
    assert_clean_calls(doc, p, 40, sent=320, received=320)
    # One latency sample per message round trip, not per call.
    assert doc["latency_of"] == "message" and doc["latency_ms"]["count"] == 320, p.stdout
    assert "(per message round trip)" in p.stdout

    # The server's view of one call: 8 requests read, 8 replies sent, then the half-close.
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "Bidi", grpc_echo.request(call_id="pp"),
                        "--grpc-mode", "bidi", "--messages", "8", "-c", "1", "-n", "1", name="one.json")
    rec = backend.call("pp")
    assert rec.finished.wait(5) and rec.completed, rec
    assert rec.received == 8 and rec.sent == 8, rec

    # Open loop: --rate is calls/s; the progress line shows calls/s and messages/s both ways.
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "Bidi", req, "--grpc-mode", "bidi",
                        "--messages", "4", "-c", "2", "-m", "2", "-R", "100", "-d", "2200ms", "--progress",
                        name="open.json")
    assert doc["errors_total"] == 0 and 150 <= doc["responses"] <= 230, p.stdout
    assert doc["messages"]["sent"] == doc["messages"]["received"] == 4 * doc["responses"], p.stdout
    assert doc["uncorrected_latency_ms"]["count"] == doc["latency_ms"]["count"] == 4 * doc["responses"]
    lines = [line for line in p.stderr.splitlines() if "calls/s" in line]
    assert len(lines) >= 2 and all("msg/s out" in line and "msg/s in" in line for line in lines), p.stderr


def test_grpc_bidi_waits_for_each_reply(remora_binary, tmp_path):
    """Ping-pong, seen from the server: against one that answers only once the request stream has
    ended (hyper-h2's /mirror), a bidi call sends its first message and nothing more — and times out
    (never a hang) — while client-stream sends all of them and gets them back."""
    pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
    from test_http2 import H2Backend

    backend = H2Backend()
    try:
        msg = b"\x0a\x04ping"   # any bytes: the server does not parse them
        t0 = time.monotonic()
        doc, p = bench_json(remora_binary, tmp_path, "--grpc", backend.endpoint, "--method", "/mirror/x",
                            "--data", str(write(tmp_path / "m.bin", msg)), "--grpc-mode", "bidi", "--messages", "4",
                            "-c", "1", "-m", "2", "-n", "2", "--timeout", "500ms", expect_code=1)
        assert time.monotonic() - t0 < 8
        assert doc["errors"]["timeout"] == 2 and doc["responses"] == 0, p.stdout
        assert doc["messages"] == {**doc["messages"], "sent": 2, "received": 0}, p.stdout   # one each, then waited
        assert backend.requests == []   # no request stream ever ended

        doc, p = bench_json(remora_binary, tmp_path, "--grpc", backend.endpoint, "--method", "/mirror/x",
                            "--data", str(tmp_path / "m.bin"), "--grpc-mode", "client-stream", "--messages", "4",
                            "-c", "1", "-n", "3", name="cs.json")
        assert doc["responses"] == 3 and doc["errors_total"] == 0, p.stdout
        assert doc["messages"]["sent"] == doc["messages"]["received"] == 12, p.stdout
        assert doc["grpc_status"] == {"missing": 3}   # /mirror sends no trailers
        assert [r["body_length"] for r in backend.requests] == [4 * (5 + len(msg))] * 3
    finally:
        backend.close()


class H2EventBackend(_ServerBase):
    """h2c (hyper-h2), one thread per connection: `on_event(hc, ev)` answers each event."""

    def __init__(self):
        super().__init__("127.0.0.1")

    def handle(self, conn, conn_id):
        import h2.config
        import h2.connection

        hc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        hc.initiate_connection()
        conn.sendall(hc.data_to_send())
        while not self.stop.is_set():
            data = conn.recv(1 << 16)
            if not data:
                return
            for ev in hc.receive_data(data):
                self.on_event(hc, ev)
            conn.sendall(hc.data_to_send())


class EarlyEndBackend(H2EventBackend):
    """Answers every request at once with a trailers-only gRPC OK (HEADERS with END_STREAM) while
    the client's request stream is still open, and never resets the stream itself — the client has
    to end its side. Records the RST_STREAM codes it receives."""

    def __init__(self):
        self.resets: list[int] = []
        super().__init__()

    def on_event(self, hc, ev):
        import h2.events

        if isinstance(ev, h2.events.RequestReceived):
            hc.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/grpc"),
                                           ("grpc-status", "0")], end_stream=True)
        elif isinstance(ev, h2.events.DataReceived):
            hc.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            with self.lock:
                self.resets.append(ev.error_code)


def test_grpc_call_ended_by_the_server_before_the_client_is_done(remora_binary, tmp_path):
    """A bidi call waiting for a reply that will never come, the server having ended the call: the
    client ends its side (RST_STREAM NO_ERROR) and counts the call, at once — not at --timeout."""
    pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
    backend = EarlyEndBackend()
    try:
        t0 = time.monotonic()
        doc, p = bench_json(remora_binary, tmp_path, "--grpc", backend.endpoint, "--method", "/p.S/M",
                            "--grpc-mode", "bidi", "--messages", "5", "-c", "1", "-m", "2", "-n", "20",
                            "--timeout", "3s")
        assert time.monotonic() - t0 < 2.5, p.stdout
        assert doc["responses"] == 20 and doc["grpc_status"] == {"0": 20} and doc["errors_total"] == 0, p.stdout
        assert doc["messages"]["received"] == 0
        poll(lambda: len(backend.resets) == 20, 5, what=f"20 RST_STREAM from the client (got {backend.resets})")
        assert set(backend.resets) == {0}
    finally:
        backend.close()


class StallOneStreamBackend(H2EventBackend):
    """Answers every request at once (200, 2 bytes), except stream 3 — each connection's second —
    which it never answers."""

    def on_event(self, hc, ev):
        import h2.events

        if isinstance(ev, h2.events.RequestReceived) and ev.stream_id != 3:
            hc.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "2")])
            hc.send_data(ev.stream_id, b"ok", end_stream=True)


def test_h2c_stream_timeout_while_others_complete(remora_binary, tmp_path):
    """The request deadline is not moved as responses come back: the timer set by a connection's
    first request checks, when it fires, whether the oldest request in flight is overdue. One
    stuck stream among answered ones times out on time (the connection, taking no more, is
    replaced); a busy connection with none stuck, its timer firing many times, loses nothing."""
    pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
    backend = StallOneStreamBackend()
    try:
        doc, p = bench_json(remora_binary, tmp_path, "--h2c", "-t", "1", "-c", "1", "-m", "4", "-d", "1500ms",
                            "--timeout", "200ms", f"http://{backend.endpoint}/")
        assert doc["responses"] > 50, p.stdout
        # a stuck stream every ~200 ms: its connection's requests in flight time out, a new one follows
        assert 3 <= doc["errors"]["timeout"] and doc["errors"]["reset"] == doc["errors"]["parse"] == 0, p.stdout
        assert 3 <= doc["connections"]["opened"] <= 9, p.stdout
    finally:
        backend.close()
    h2 = pytest.importorskip("test_http2")
    backend = h2.H2Backend()
    try:
        doc, p = bench_json(remora_binary, tmp_path, "--h2c", "-t", "1", "-c", "2", "-m", "4", "-d", "1500ms",
                            "--timeout", "500ms", f"http://{backend.endpoint}/bytes/10", name="busy.json")
        assert doc["responses"] > 50 and doc["errors_total"] == 0, p.stdout
        assert doc["connections"]["opened"] == 2, p.stdout
    finally:
        backend.close()


def test_grpc_error_status_is_counted_not_an_error(remora_binary, tmp_path, grpc_echo):
    backend = grpc_echo.backend()
    # Three replies, then status 9 (FAILED_PRECONDITION) in the trailers.
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "ServerStream",
                        grpc_echo.request(count=3, fail_code=9, fail_message="no"), "--grpc-mode", "server-stream",
                        "-c", "1", "-m", "4", "-n", "40")
    assert doc["grpc_status"] == {"9": 40} and doc["errors_total"] == 0, p.stdout
    assert doc["messages"]["received"] == 120
    assert "gRPC status   9: 40" in p.stdout
    # A bidi call on an unknown method: UNIMPLEMENTED at once, the remaining messages never sent.
    doc, p = bench_json(remora_binary, tmp_path, "--grpc", backend.endpoint, "--method", ECHO + "Nope",
                        "--grpc-mode", "bidi", "--messages", "5", "-c", "1", "-n", "10", "--timeout", "2s",
                        name="unimpl.json")
    assert doc["grpc_status"] == {"12": 10} and doc["errors_total"] == 0, p.stdout
    assert doc["messages"]["sent"] <= 10 and doc["messages"]["received"] == 0


def test_grpc_server_stream_times_out(remora_binary, tmp_path, grpc_echo):
    backend = grpc_echo.backend()
    t0 = time.monotonic()
    doc, p = grpc_bench(remora_binary, tmp_path, backend.endpoint, "ServerStream",
                        grpc_echo.request(count=100, interval_ms=50), "--grpc-mode", "server-stream",
                        "-c", "1", "-m", "2", "-n", "2", "--timeout", "500ms", expect_code=1)
    assert time.monotonic() - t0 < 6
    assert doc["errors"]["timeout"] == 2 and doc["responses"] == 0, p.stdout
    assert 2 <= doc["messages"]["received"] <= 2 * 12, p.stdout   # what came within the timeout was counted


def test_grpc_server_stream_through_remora(remora_binary, tmp_path, grpc_echo, start_remora):
    backend = grpc_echo.backend()
    remora = start_remora(make_config([http_listener("web", routes=[route("grpc")])],
                                      [cluster("grpc", [backend.endpoint], protocol="http2")]))
    doc, p = grpc_bench(remora_binary, tmp_path, f"127.0.0.1:{remora.port('web')}", "ServerStream",
                        grpc_echo.request(count=25, reply_size=500), "--grpc-mode", "server-stream",
                        "-c", "2", "-m", "4", "-n", "80")
    assert_clean_calls(doc, p, 80, sent=80, received=2000)
    remora.wait_stat("cluster.grpc.upstream_rq_2xx", lambda v: v >= 80)


@contextlib.contextmanager
def killable_grpc_backend():
    """The echo server in a child process, to be killed (SIGKILL: no trailers, no GOAWAY)."""
    pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio protobuf)")
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from echo_server import GRPCBackend; "
            "b = GRPCBackend('child'); print(b.port, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(FIXTURES)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "the grpcio child did not start"
        yield f"127.0.0.1:{int(proc.stdout.readline())}", proc
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()


@pytest.mark.parametrize("via", ["direct", "remora"])
def test_grpc_server_killed_mid_stream(remora_binary, tmp_path, grpc_echo, start_remora, via):
    """Streams cut mid-call: directly, the connection breaks (reset errors, closed by the server, then
    refused connects); through Remora, the proxy resets each stream (RST_STREAM) and answers the
    next calls UNAVAILABLE (14) on the same connections. Counted by kind; the run ends on time."""
    with killable_grpc_backend() as (endpoint, child):
        target = endpoint
        if via == "remora":
            remora = start_remora(make_config([http_listener("web", routes=[route("grpc")])],
                                              [cluster("grpc", [endpoint], protocol="http2")]))
            target = f"127.0.0.1:{remora.port('web')}"
        data = write(tmp_path / "slow.bin", grpc_echo.request(count=1000, interval_ms=10))
        out = tmp_path / "kill.json"
        proc = subprocess.Popen([str(remora_binary), "bench", "--grpc", target, "--method", ECHO + "ServerStream",
                                 "--data", str(data), "--grpc-mode", "server-stream", "-c", "2", "-m", "2",
                                 "-t", "1", "-d", "2s", "--timeout", "5s", "--json", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.8)
            child.kill()
            stdout, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    doc = json.loads(out.read_text())
    assert proc.returncode in (0, 1), stderr
    assert doc["messages"]["received"] > 0, stdout        # streams were flowing before the kill
    assert doc["errors"]["reset"] == 4, stdout            # the 4 calls in flight, each counted once
    assert doc["errors"]["timeout"] == 0 and doc["errors"]["parse"] == 0, stdout
    if via == "direct":
        assert doc["connections"]["closed_by_server"] == 2, stdout
        assert doc["errors"]["connect"] >= 1, stdout
    else:
        assert doc["connections"]["closed_by_server"] == 0, stdout
        assert doc["grpc_status"].get("14", 0) > 0, stdout


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

