"""gRPC through Remora: a stock grpcio client -> Remora (http listener, h2c) -> a stock grpcio server
(grpc_fixtures/echo_server.py, cluster `protocol: http2`). No gRPC code of our own on either side.

Every call carries a client deadline (or is cancelled by the test), so nothing here waits forever.
"""

from __future__ import annotations

import hashlib
import queue
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio protobuf)")

sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))

import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402
from echo_server import MAX_MESSAGE, GRPCBackend  # noqa: E402

from harness import cluster, http_listener, made_and_closed, make_config, route  # noqa: E402

MiB = 1 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.enable_http_proxy", 0),     # never through an http_proxy from the environment
    ("grpc.enable_retries", 0),        # what the proxy answers is what the test sees
]


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def grpc_backend():
    yield from made_and_closed(lambda name="A": GRPCBackend(name), close=lambda b: b.stop(None).wait(5))


@pytest.fixture
def channel():
    made = []

    def make(port: int):
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        made.append(ch)
        grpc.channel_ready_future(ch).result(timeout=5)
        return echo_pb2_grpc.EchoStub(ch)

    yield make
    for ch in made:
        ch.close()


@pytest.fixture
def gproxy(start_remora, grpc_backend, channel):
    """grpcio backend "A" behind listener "web" -> cluster "grpc" (protocol http2)."""
    backend = grpc_backend("A")
    remora = start_remora(make_config([http_listener("web", routes=[route("grpc")])],
                                      [cluster("grpc", [backend.endpoint], protocol="http2")]))
    return SimpleNamespace(remora=remora, backend=backend, stub=channel(remora.port("web")))


def req(**kw) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(**kw)


def md_dict(md) -> dict:
    return {m.key: m.value for m in (md or ())}


# -- call types --------------------------------------------------------------------------------

def test_unary(gproxy):
    reply, call = gproxy.stub.Unary.with_call(req(message="hello", payload=b"abc"), timeout=5)
    assert call.code() == grpc.StatusCode.OK
    assert reply.backend == "A"
    assert reply.message == "hello"
    assert reply.payload == b"abc"
    assert reply.payload_sha256 == hashlib.sha256(b"abc").hexdigest()
    # what the backend received: the client's metadata plus the proxy's forwarding headers
    assert reply.metadata["user-agent"].startswith("grpc-python")
    assert reply.metadata.get("x-forwarded-for") == "127.0.0.1"
    gproxy.remora.wait_stat("cluster.grpc.upstream_rq_2xx", lambda v: v >= 1)


def test_server_streaming_1000_messages(gproxy):
    call = gproxy.stub.ServerStream(req(message="s", count=1000, reply_size=100), timeout=20)
    indices = []
    for r in call:
        assert r.backend == "A" and len(r.payload) == 100
        indices.append(r.index)
    assert indices == list(range(1000)), f"got {len(indices)} messages, out of order or missing"
    assert call.code() == grpc.StatusCode.OK


def test_client_streaming(gproxy):
    payloads = [bytes([i % 251]) * (i * 997 % 40_000) for i in range(100)]

    def gen():
        for i, p in enumerate(payloads):
            yield req(message=f"m{i}", payload=p)

    reply, call = gproxy.stub.ClientStream.with_call(gen(), timeout=20)
    assert call.code() == grpc.StatusCode.OK
    assert reply.index == 100, f"backend received {reply.index} of 100 messages"
    assert reply.received_bytes == sum(map(len, payloads))
    assert reply.payload_sha256 == hashlib.sha256(b"".join(payloads)).hexdigest()
    assert reply.message == "m99"


def test_bidi_ping_pong_200_rounds(gproxy):
    """Each request is sent only after the previous reply came back: this needs the request stream
    to stay open while replies flow (no buffering of the whole request or response)."""
    outbox: queue.Queue = queue.Queue()

    def requests():
        while True:
            item = outbox.get(timeout=20)
            if item is None:
                return
            yield item

    call = gproxy.stub.Bidi(requests(), timeout=30)
    try:
        for i in range(200):
            outbox.put(req(message=f"ping {i}", payload=i.to_bytes(4, "big")))
            r = next(call)
            assert (r.message, r.index, r.payload) == (f"ping {i}", i, i.to_bytes(4, "big"))
        outbox.put(None)
        rest = list(call)
        assert rest == []
        assert call.code() == grpc.StatusCode.OK
    finally:
        outbox.put(None)
        call.cancel()


def test_4mib_message_both_ways(gproxy):
    payload = bytes(range(256)) * (4 * MiB // 256)
    reply, call = gproxy.stub.Unary.with_call(req(message="big", payload=payload), timeout=10)
    assert reply.received_bytes == 4 * MiB
    assert reply.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert reply.payload == payload
    replies = list(gproxy.stub.ServerStream(req(count=3, reply_size=4 * MiB), timeout=20))
    assert [len(r.payload) for r in replies] == [4 * MiB] * 3


def test_custom_metadata_both_ways(gproxy):
    md = [("x-echo-alpha", "one"), ("x-echo-beta", "two words"), ("x-echo-raw-bin", b"\x00\x01\xfe\xff"),
          ("x-plain", "p")]
    reply, call = gproxy.stub.Unary.with_call(req(message="md"), metadata=md, timeout=5)
    assert reply.metadata["x-echo-alpha"] == "one"
    assert reply.metadata["x-plain"] == "p"
    assert reply.metadata["x-echo-raw-bin"] == "0001feff"
    initial = md_dict(call.initial_metadata())
    trailing = md_dict(call.trailing_metadata())
    assert initial.get("echo-alpha") == "one" and initial.get("echo-beta") == "two words"
    assert initial.get("echo-raw-bin") == b"\x00\x01\xfe\xff"
    assert trailing.get("trailer-alpha") == "one" and trailing.get("trailer-beta") == "two words"
    assert trailing.get("trailer-raw-bin") == b"\x00\x01\xfe\xff"

    # the same on a stream: initial metadata before the messages, trailing after them
    call = gproxy.stub.ServerStream(req(count=5), metadata=md, timeout=10)
    assert md_dict(call.initial_metadata()).get("echo-alpha") == "one"
    assert len(list(call)) == 5
    assert md_dict(call.trailing_metadata()).get("trailer-raw-bin") == b"\x00\x01\xfe\xff"


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL])
def test_error_status_with_details_propagated(gproxy, code):
    message = "it failed: 100% ünïcode \u2603 [x]"
    with pytest.raises(grpc.RpcError) as ei:
        gproxy.stub.Unary(req(message="e", fail_code=code.value[0], fail_message=message),
                          metadata=[("x-echo-k", "v")], timeout=5)
    e = ei.value
    assert e.code() == code, f"{e.code()} {e.details()!r}"
    assert e.details() == message
    trailing = md_dict(e.trailing_metadata())
    assert trailing.get("x-error-detail") == "detail for e"
    assert trailing.get("x-error-blob-bin") == b"\x00\x01\x02\xfe\xff"
    assert trailing.get("trailer-k") == "v"


def test_error_status_after_streamed_messages(gproxy):
    call = gproxy.stub.ServerStream(req(message="e", count=3, fail_code=grpc.StatusCode.ABORTED.value[0],
                                        fail_message="stopped after three"), timeout=10)
    got = []
    with pytest.raises(grpc.RpcError):
        for r in call:
            got.append(r.index)
    assert got == [0, 1, 2]
    assert call.code() == grpc.StatusCode.ABORTED
    assert call.details() == "stopped after three"
    assert md_dict(call.trailing_metadata()).get("x-error-detail") == "detail for e"


def test_metadata_values_with_edge_whitespace(gproxy):
    """gRPC metadata values are printable ASCII including spaces anywhere (PROTOCOL-HTTP2.md:
    ASCII-Value = 1*( %x20-%x7E )); grpcio accepts a trailing space, so the proxy must too.
    nghttp2 rejects such fields (RFC 9113 §8.2.1) unless
    nghttp2_option_set_no_rfc9113_leading_and_trailing_ws_validation is set."""
    md = [("x-echo-ws", "ends with a space ")]
    reply, call = gproxy.stub.Unary.with_call(req(message="ws"), metadata=md, timeout=5)
    assert reply.metadata["x-echo-ws"] == "ends with a space "
    assert md_dict(call.initial_metadata()).get("echo-ws") == "ends with a space "
    assert md_dict(call.trailing_metadata()).get("trailer-ws") == "ends with a space "


# -- deadlines and cancellation ----------------------------------------------------------------

def test_deadline_exceeded(gproxy):
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        gproxy.stub.Unary(req(message="slow", first_delay_ms=5000, call_id="slow-1"), timeout=0.5)
    elapsed = time.monotonic() - t0
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2.5, f"DEADLINE_EXCEEDED after {elapsed:.2f}s for a 0.5s deadline"
    rec = gproxy.backend.call("slow-1")
    assert rec.ended.wait(3), "the backend never saw the call end after the deadline"
    assert rec.finished.wait(3), rec
    assert not rec.completed, f"the slow handler ran to completion: {rec}"
    assert rec.ended_at - t0 < 3.0
    # the connection is still good
    assert gproxy.stub.Unary(req(message="after"), timeout=5).message == "after"


@pytest.mark.parametrize("kind", ["server_stream", "bidi"])
def test_client_cancel_of_stream_seen_by_backend(gproxy, kind):
    call_id = f"cancel-{kind}"
    outbox: queue.Queue = queue.Queue()
    if kind == "server_stream":
        call = gproxy.stub.ServerStream(req(count=100_000, interval_ms=20, call_id=call_id), timeout=30)
    else:
        def requests():
            yield req(message="first", call_id=call_id)
            while True:
                item = outbox.get(timeout=20)
                if item is None:
                    return
                yield item
        call = gproxy.stub.Bidi(requests(), timeout=30)
    try:
        for i in range(3):
            assert next(call).index == i
            outbox.put(req(message=f"m{i}"))
        rec = gproxy.backend.call(call_id)
        t0 = time.monotonic()
        call.cancel()
        assert rec.ended.wait(3), f"the backend never saw the client's cancel: {rec}"
        took = time.monotonic() - t0
        assert rec.finished.wait(3), rec
        assert not rec.completed, rec
        sent = rec.sent
        time.sleep(0.3)
        assert rec.sent <= sent + 1, "the backend kept streaming after the cancel"
        assert took < 3
    finally:
        outbox.put(None)
        call.cancel()
    gproxy.remora.wait_stat("listener.web.downstream_rq_rx_reset", lambda v: v >= 1, timeout=3)
    assert gproxy.stub.Unary(req(message="after"), timeout=5).message == "after"


def test_client_cancel_of_client_stream_seen_by_backend(gproxy):
    outbox: queue.Queue = queue.Queue()

    def requests():
        yield req(message="first", call_id="cancel-cs")
        while True:
            item = outbox.get(timeout=20)
            if item is None:
                return
            yield item

    fut = gproxy.stub.ClientStream.future(requests(), timeout=30)
    try:
        rec = gproxy.backend.call("cancel-cs")
        for i in range(5):
            outbox.put(req(message=f"m{i}"))
        deadline = time.monotonic() + 5
        while rec.received < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.received == 6
        fut.cancel()
        assert rec.ended.wait(3), f"the backend never saw the client's cancel: {rec}"
        assert rec.finished.wait(3), rec
        assert not rec.completed, f"the backend's request stream ended cleanly (END_STREAM, not a reset): {rec}"
    finally:
        outbox.put(None)
        fut.cancel()


# -- answers from the proxy --------------------------------------------------------------------

def test_backend_down_unavailable(start_remora, channel, refused_endpoint):
    remora = start_remora(make_config([http_listener("web", routes=[route("grpc")])],
                                      [cluster("grpc", [refused_endpoint], protocol="http2")]))
    stub = channel(remora.port("web"))
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            stub.Unary(req(message="x"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no healthy upstream" in (ei.value.details() or ""), \
            f"not the proxy's trailers-only answer: {ei.value.details()!r}"
        assert time.monotonic() - t0 < 2
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.ServerStream(req(count=3), timeout=5))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    remora.wait_stat("cluster.grpc.upstream_cx_connect_fail", lambda v: v >= 1)


def test_no_route_unimplemented(start_remora, grpc_backend, channel):
    backend = grpc_backend("A")
    remora = start_remora(make_config(
        [http_listener("web", routes=[route("grpc", exact="/some.Other/Method")])],
        [cluster("grpc", [backend.endpoint], protocol="http2")]))
    stub = channel(remora.port("web"))
    with pytest.raises(grpc.RpcError) as ei:
        stub.Unary(req(message="x"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no route" in (ei.value.details() or "")
    remora.wait_stat("listener.web.downstream_rq_no_route", lambda v: v >= 1)


def test_route_timeout_answers_a_stream_without_response_head(start_remora, grpc_backend, channel):
    """Route timeout 500ms, the handler sends nothing (not even headers) for 3 s: the proxy answers
    DEADLINE_EXCEEDED (or UNAVAILABLE) and cancels the backend's call."""
    backend = grpc_backend("A")
    remora = start_remora(make_config([http_listener("web", routes=[route("grpc", timeout="500ms")])],
                                      [cluster("grpc", [backend.endpoint], protocol="http2")]))
    stub = channel(remora.port("web"))
    t0 = time.monotonic()
    call = stub.ServerStream(req(count=5, first_delay_ms=3000, call_id="late"), timeout=20)
    with pytest.raises(grpc.RpcError) as ei:
        list(call)
    elapsed = time.monotonic() - t0
    assert ei.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), ei.value
    assert 0.4 < elapsed < 2.5, f"answered after {elapsed:.2f}s with a 500ms route timeout"
    rec = backend.call("late")
    assert rec.ended.wait(3), "the proxy did not cancel the backend's call"
    assert rec.finished.wait(3), rec
    assert not rec.completed
    remora.wait_stat("cluster.grpc.upstream_rq_timeout", lambda v: v >= 1)


@pytest.mark.timeout(30)
def test_route_timeout_covers_only_the_response_head(start_remora, grpc_backend, channel):
    """Headers at once, then a message every 200 ms for 3 s, under a 500ms route timeout: the
    stream must survive (the route timeout is for the response head only)."""
    backend = grpc_backend("A")
    remora = start_remora(make_config([http_listener("web", routes=[route("grpc", timeout="500ms")])],
                                      [cluster("grpc", [backend.endpoint], protocol="http2")]))
    stub = channel(remora.port("web"))
    t0 = time.monotonic()
    call = stub.ServerStream(req(count=16, interval_ms=200, headers_first=True, first_delay_ms=200),
                             timeout=20)
    got = [r.index for r in call]
    assert got == list(range(16))
    assert call.code() == grpc.StatusCode.OK
    assert time.monotonic() - t0 > 3.0


# -- connections -------------------------------------------------------------------------------

def test_concurrent_calls_are_multiplexed(gproxy):
    """50 calls that each take 500 ms, at once on one client connection: forwarded concurrently
    (streams on few upstream connections), not one after another."""
    t0 = time.monotonic()
    futs = [gproxy.stub.Unary.future(req(message=f"c{i}", first_delay_ms=500), timeout=15) for i in range(50)]
    msgs = sorted(f.result(timeout=15).message for f in futs)
    elapsed = time.monotonic() - t0
    assert msgs == sorted(f"c{i}" for i in range(50))
    assert elapsed < 4.0, f"50 concurrent 500ms calls took {elapsed:.1f}s: not multiplexed"
    assert gproxy.remora.stat("cluster.grpc.upstream_cx_total") <= 2, \
        "a new upstream connection per call instead of streams on one connection"


@pytest.mark.timeout(40)
def test_upstream_goaway_drains_gracefully(start_remora, grpc_backend, channel):
    """Backend A shuts down gracefully (GOAWAY, grace 5 s) while a stream is in flight on it: that
    stream finishes normally; new calls go elsewhere (B) and succeed."""
    a = grpc_backend("A")
    b = grpc_backend("B")
    remora = start_remora(make_config([http_listener("web", routes=[route("grpc")])],
                                      [cluster("grpc", [a.endpoint, b.endpoint], protocol="http2", lb="round_robin")],
                                      workers=1))
    stub = channel(remora.port("web"))
    # open the connections to both backends (in turn: round robin)
    seen = {stub.Unary(req(message="w"), timeout=5).backend for _ in range(4)}
    assert seen == {"A", "B"}
    call = stub.ServerStream(req(count=20, interval_ms=100, headers_first=True, call_id="long"), timeout=20)
    first = next(call)
    backends = {first.backend}
    rec = (a if first.backend == "A" else b).call("long")
    draining = a if first.backend == "A" else b
    other = "B" if draining is a else "A"
    stopped = draining.stop(grace=8)
    time.sleep(0.3)
    answers = [stub.Unary(req(message=f"n{i}"), timeout=5).backend for i in range(10)]
    assert set(answers) == {other}, f"calls after the GOAWAY answered by {answers}"
    rest = list(call)
    backends |= {r.backend for r in rest}
    assert [first.index] + [r.index for r in rest] == list(range(20)), "the in-flight stream was cut by the GOAWAY"
    assert call.code() == grpc.StatusCode.OK
    assert backends == {draining.name}
    assert rec.completed
    stopped.wait(10)
