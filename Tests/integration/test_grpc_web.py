"""gRPC-Web through Remora (issue 18, `grpc_web:` on a route): requests built here per the gRPC-Web spec
(PROTOCOL-WEB.md), binary and text (base64), over HTTP/1.1 as browsers send them, to a grpcio server over
HTTP/2; replies, trailers (the body's last frame), errors and server streaming decoded here."""

from __future__ import annotations

import base64
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="grpcio is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parent / "grpc_fixtures"))

import echo_pb2  # noqa: E402
from echo_server import GRPCBackend  # noqa: E402

from harness import Client, cluster, http_listener, made_and_closed, make_config, route  # noqa: E402


@pytest.fixture
def grpc_backend():
    yield from made_and_closed(lambda name="A": GRPCBackend(name), close=lambda b: b.stop(None).wait(5))


@pytest.fixture
def web(start_remora, grpc_backend):
    b = grpc_backend()
    rt = route("grpc", name="web", prefix="/remora.test.Echo/")
    rt["grpc_web"] = {"allow_origins": ["https://app.example"]}
    plain = route("grpc", name="plain", prefix="/")
    r = start_remora(make_config([http_listener("web", routes=[rt, plain])],
                                 [cluster("grpc", [b.endpoint], protocol="http2")]))
    return r


def frame(msg: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(msg)) + msg


def parse(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Data frames and the trailer frame's fields."""
    messages, trailers, i = [], {}, 0
    while i < len(body):
        flags, n = struct.unpack(">BI", body[i:i + 5])
        payload = body[i + 5:i + 5 + n]
        assert len(payload) == n, "truncated frame"
        i += 5 + n
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    k, _, v = line.partition(":")
                    trailers[k.strip()] = v.strip()
        else:
            messages.append(payload)
    return messages, trailers


def b64decode_stream(text: bytes) -> bytes:
    """Base64 that may carry padding between pieces (the proxy pads before the trailer frame)."""
    out, piece = b"", b""
    for ch in text.replace(b"\r", b"").replace(b"\n", b""):
        piece += bytes([ch])
        if len(piece) == 4:
            out += base64.b64decode(piece)
            piece = b""
    assert piece == b"", "dangling base64"
    return out


def call(port: int, method: str, req: echo_pb2.EchoRequest, text: bool = False, headers=()):
    body = frame(req.SerializeToString())
    ctype = "application/grpc-web-text" if text else "application/grpc-web+proto"
    if text:
        body = base64.b64encode(body)
    with Client(port) as c:
        resp = c.request("POST", f"/remora.test.Echo/{method}", body=body,
                         headers=[("Content-Type", ctype), ("X-Grpc-Web", "1"), ("X-User-Agent", "grpc-web-javascript/0.1"),
                                  *headers])
    raw = b64decode_stream(resp.body) if text else resp.body
    messages, trailers = parse(raw)
    return resp, [echo_pb2.EchoReply.FromString(m) for m in messages], trailers


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_unary(web, text):
    resp, replies, trailers = call(web.port("web"), "Unary", echo_pb2.EchoRequest(message="hi", payload=b"\x00\xff" * 100),
                                   text=text)
    assert resp.status == 200
    assert resp.header("content-type") == ("application/grpc-web-text+proto" if text else "application/grpc-web+proto")
    assert len(replies) == 1 and replies[0].message == "hi" and replies[0].payload == b"\x00\xff" * 100
    assert replies[0].metadata.get("content-type", "application/grpc").startswith("application/grpc")
    assert trailers.get("grpc-status") == "0", trailers
    assert resp.header("grpc-status") is None, "the status travels in the trailer frame"


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_server_streaming(web, text):
    resp, replies, trailers = call(web.port("web"), "ServerStream", echo_pb2.EchoRequest(message="s", count=5, reply_size=3000),
                                   text=text)
    assert resp.status == 200
    assert [r.index for r in replies] == [0, 1, 2, 3, 4]
    assert all(len(r.payload) == 3000 for r in replies)
    assert trailers.get("grpc-status") == "0"


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_error_status_and_trailing_metadata(web, text):
    resp, replies, trailers = call(web.port("web"), "ServerStream",
                                   echo_pb2.EchoRequest(message="e", count=2, fail_code=9, fail_message="no way"), text=text)
    assert resp.status == 200
    assert len(replies) == 2
    assert trailers.get("grpc-status") == "9" and trailers.get("grpc-message") == "no way", trailers
    assert trailers.get("x-error-detail") == "detail for e"


def test_unary_error_trailers_only(web):
    """A failed unary call is trailers-only upstream: the status arrives in the head (spec-allowed)
    or in a trailer frame; either way the client sees it."""
    resp, replies, trailers = call(web.port("web"), "Unary", echo_pb2.EchoRequest(fail_code=5, fail_message="missing"))
    assert resp.status == 200 and replies == []
    status = resp.header("grpc-status") or trailers.get("grpc-status")
    assert status == "5", (resp.headers, trailers)


def test_cors_preflight_and_origin_on_responses(web):
    with Client(web.port("web")) as c:
        pre = c.request("OPTIONS", "/remora.test.Echo/Unary", headers=[
            ("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type,x-grpc-web,x-user-agent")])
        assert pre.status == 204
        assert pre.header("access-control-allow-origin") == "https://app.example"
        assert "POST" in pre.header("access-control-allow-methods")
        assert pre.header("access-control-allow-headers") == "content-type,x-grpc-web,x-user-agent"
        bad = c.request("OPTIONS", "/remora.test.Echo/Unary", headers=[
            ("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")])
        assert bad.status == 403
    resp, replies, trailers = call(web.port("web"), "Unary", echo_pb2.EchoRequest(message="o"),
                                   headers=[("Origin", "https://app.example")])
    assert resp.header("access-control-allow-origin") == "https://app.example"
    assert "grpc-status" in resp.header("access-control-expose-headers")
    assert replies[0].message == "o"


def test_bad_base64_is_a_grpc_error(web):
    with Client(web.port("web")) as c:
        resp = c.request("POST", "/remora.test.Echo/Unary", body=b"!!!not base64!!!",
                         headers=[("Content-Type", "application/grpc-web-text")])
    assert resp.status == 200
    assert resp.header("grpc-status") == "13", resp.headers
