"""A grpcio backend for the Remora gRPC tests: the `remora.test.Echo` service of echo.proto.

Everything here is stock grpcio (the server side of the HTTP/2 connection is grpc core, not our
code). `GRPCBackend(name)` starts a server on 127.0.0.1:0 in this process; `.port`, `.endpoint`;
`.stop()` ends it. Replies carry `backend` (the name given) so a test can tell which backend
answered, and the handler's metadata:

- Every request metadata entry `x-echo-KEY: V` comes back as initial metadata `echo-KEY: V` and as
  trailing metadata `trailer-KEY: V` (binary `-bin` keys too, as bytes).
- `EchoReply.metadata` holds every text metadata entry the handler received (binary ones as hex).

Calls with a `call_id` are recorded in `.calls[call_id]` (a `CallRecord`): `started`, `ended` and
`finished` (threading.Events; `ended` is set by grpcio's termination callback, whatever the outcome;
`finished` when the handler has returned),
`saw_cancel` (the handler found the RPC no longer active while it was waiting or streaming, i.e.
grpcio told it the call was cancelled or its deadline passed), `completed` (the handler returned
normally), and `sent` (replies yielded by a streaming handler).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # the generated stubs import each other as top-level modules

import grpc  # noqa: E402

import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402

MAX_MESSAGE = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
]


class CallRecord:
    def __init__(self, call_id: str):
        self.call_id = call_id
        self.started = threading.Event()
        self.ended = threading.Event()
        self.finished = threading.Event()   # the handler returned (however)
        self.saw_cancel = False
        self.completed = False
        self.sent = 0
        self.received = 0
        self.ended_at: float | None = None

    def __repr__(self):
        return (f"CallRecord({self.call_id!r}, started={self.started.is_set()}, ended={self.ended.is_set()}, "
                f"finished={self.finished.is_set()}, "
                f"saw_cancel={self.saw_cancel}, completed={self.completed}, sent={self.sent}, "
                f"received={self.received})")


def _metadata(context) -> tuple[dict[str, str], list[tuple[str, object]], list[tuple[str, object]]]:
    seen: dict[str, str] = {}
    initial: list[tuple[str, object]] = []
    trailing: list[tuple[str, object]] = []
    for k, v in context.invocation_metadata():
        seen[k] = v.hex() if isinstance(v, bytes) else v
        if k.startswith("x-echo-"):
            initial.append(("echo-" + k[len("x-echo-"):], v))
            trailing.append(("trailer-" + k[len("x-echo-"):], v))
    return seen, initial, trailing


def _wait(context, ms: int) -> bool:
    """Sleeps ms milliseconds unless the RPC stops being active first (returns False then)."""
    end = time.monotonic() + ms / 1000
    while True:
        if not context.is_active():
            return False
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(0.01, left))


def _cancelled_after_requests(context, rec: "CallRecord | None") -> bool:
    """The request iterator ended: a half-close from the client, or (grpcio ends the iterator quietly)
    a cancel. For recorded calls, give a cancel 300 ms to show as an inactive RPC before deciding."""
    if rec is not None:
        end = time.monotonic() + 0.3
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
    if not context.is_active():
        if rec is not None:
            rec.saw_cancel = True
        return True
    return False


class _Service(echo_pb2_grpc.EchoServicer):
    def __init__(self, backend: "GRPCBackend"):
        self.b = backend
        self.live: dict[int, CallRecord] = {}   # id(context) -> record, until the handler returns

    def _finish(self, context):
        with self.b.lock:
            rec = self.live.pop(id(context), None)
        if rec is not None:
            rec.finished.set()

    # Public handlers: set CallRecord.finished however the handler ends.
    def Unary(self, request, context):
        try:
            return self._unary(request, context)
        finally:
            self._finish(context)

    def ServerStream(self, request, context):
        try:
            yield from self._server_stream(request, context)
        finally:
            self._finish(context)

    def ClientStream(self, request_iterator, context):
        try:
            return self._client_stream(request_iterator, context)
        finally:
            self._finish(context)

    def Bidi(self, request_iterator, context):
        try:
            yield from self._bidi(request_iterator, context)
        finally:
            self._finish(context)

    def _record(self, call_id: str, context) -> CallRecord | None:
        if not call_id:
            return None
        rec = CallRecord(call_id)
        with self.b.lock:
            self.b.calls[call_id] = rec
            self.live[id(context)] = rec

        def on_end():
            rec.ended_at = time.monotonic()
            rec.ended.set()

        context.add_callback(on_end)
        rec.started.set()
        return rec

    def _reply(self, request, seen, index=0) -> echo_pb2.EchoReply:
        payload = b"\xab" * request.reply_size if request.reply_size else request.payload
        return echo_pb2.EchoReply(backend=self.b.name, message=request.message, payload=payload, index=index,
                                  received_bytes=len(request.payload),
                                  payload_sha256=hashlib.sha256(request.payload).hexdigest(), metadata=seen)

    def _fail(self, request, context, trailing):
        context.set_trailing_metadata(tuple(trailing) + (
            ("x-error-detail", "detail for " + request.message),
            ("x-error-blob-bin", b"\x00\x01\x02\xfe\xff"),
        ))
        context.abort(grpc.StatusCode(_CODES[request.fail_code]), request.fail_message)

    def _unary(self, request, context):
        rec = self._record(request.call_id, context)
        seen, initial, trailing = _metadata(context)
        if initial:
            context.send_initial_metadata(tuple(initial))
        if request.first_delay_ms and not _wait(context, request.first_delay_ms):
            if rec:
                rec.saw_cancel = True
            return echo_pb2.EchoReply()
        if request.fail_code:
            self._fail(request, context, trailing)
        context.set_trailing_metadata(tuple(trailing))
        if rec:
            rec.completed = True
        return self._reply(request, seen)

    def _server_stream(self, request, context):
        rec = self._record(request.call_id, context)
        seen, initial, trailing = _metadata(context)
        if request.headers_first or initial:
            context.send_initial_metadata(tuple(initial))
        if request.first_delay_ms and not _wait(context, request.first_delay_ms):
            if rec:
                rec.saw_cancel = True
            return
        for i in range(request.count):
            if not context.is_active():
                if rec:
                    rec.saw_cancel = True
                return
            yield self._reply(request, seen, index=i)
            if rec:
                rec.sent = i + 1
            if request.interval_ms and i + 1 < request.count and not _wait(context, request.interval_ms):
                if rec:
                    rec.saw_cancel = True
                return
        if request.fail_code:
            self._fail(request, context, trailing)
        context.set_trailing_metadata(tuple(trailing))
        if rec:
            rec.completed = True

    def _client_stream(self, request_iterator, context):
        seen, initial, trailing = _metadata(context)
        rec = None
        n = 0
        total = 0
        h = hashlib.sha256()
        last = echo_pb2.EchoRequest()
        for req in request_iterator:
            if rec is None and req.call_id:
                rec = self._record(req.call_id, context)
            n += 1
            total += len(req.payload)
            h.update(req.payload)
            last = req
            if rec:
                rec.received = n
        if _cancelled_after_requests(context, rec):
            return echo_pb2.EchoReply()
        context.set_trailing_metadata(tuple(trailing))
        if rec:
            rec.completed = True
        return echo_pb2.EchoReply(backend=self.b.name, message=last.message, index=n, received_bytes=total,
                                  payload_sha256=h.hexdigest(), metadata=seen)

    def _bidi(self, request_iterator, context):
        seen, initial, trailing = _metadata(context)
        if initial:
            context.send_initial_metadata(tuple(initial))
        rec = None
        n = 0
        for req in request_iterator:
            if rec is None and req.call_id:
                rec = self._record(req.call_id, context)
            yield self._reply(req, seen, index=n)
            n += 1
            if rec:
                rec.received = n
                rec.sent = n
        if _cancelled_after_requests(context, rec):
            return
        context.set_trailing_metadata(tuple(trailing))
        if rec:
            rec.completed = True


_CODES = {c.value[0]: c.value for c in grpc.StatusCode}


class GRPCBackend:
    """A grpcio server for remora.test.Echo on an OS-chosen port of 127.0.0.1 (or `host`, `port`)."""

    def __init__(self, name: str = "backend", max_workers: int = 64, host: str = "127.0.0.1", credentials=None,
                 health: bool = False, port: int = 0):
        self.name = name
        self.lock = threading.Lock()
        self.calls: dict[str, CallRecord] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                             thread_name_prefix=f"grpc-{name}"),
                                  options=SERVER_OPTIONS, maximum_concurrent_rpcs=None)
        echo_pb2_grpc.add_EchoServicer_to_server(_Service(self), self.server)
        # health=True: grpcio's own grpc.health.v1 servicer (grpcio-health-checking); set statuses
        # with self.health.set(service, health_pb2.HealthCheckResponse.SERVING | NOT_SERVING).
        self.health = None
        if health:
            from grpc_health.v1 import health as grpc_health, health_pb2_grpc
            self.health = grpc_health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # credentials: grpc.ssl_server_credentials(...) to serve over TLS (test_tls.py); port 0: the OS chooses.
        self.port = (self.server.add_secure_port(f"{host}:{port}", credentials) if credentials is not None
                     else self.server.add_insecure_port(f"{host}:{port}"))
        assert self.port, "grpc server could not bind"
        self.host = host
        self.server.start()
        self.stopped = False

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def call(self, call_id: str, timeout: float = 5.0) -> CallRecord:
        """The record of call_id, waiting (bounded) for the handler to start."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                rec = self.calls.get(call_id)
            if rec is not None:
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {self.name} never saw call {call_id!r}")
            time.sleep(0.01)

    def stop(self, grace: float | None = None) -> threading.Event:
        self.stopped = True
        return self.server.stop(grace)
