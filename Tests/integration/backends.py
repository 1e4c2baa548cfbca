"""Upstream servers for the Remora integration suite, run on threads inside the pytest process.

HTTPBackend is a raw-socket HTTP/1.1 server (not http.server) so that it can check exactly what
Remora forwards (framing, headers) and misbehave on purpose. Endpoints (path, query ignored):

  /echo (and any unknown path)  200 JSON: method, target, headers, body sha256/length, chunked, ...
  /mirror                       200, the request body sent back (Content-Length) + X-Received-Sha256
  /bytes/N                      200, N deterministic bytes, Content-Length, X-Body-Sha256
  /chunked/N?size=K             200, N deterministic bytes as chunks of K bytes, X-Body-Sha256
  /repeat/M                     200, M MiB (a fixed 1 MiB block M times), Content-Length, X-Body-Sha256
  /status/CODE                  CODE; 204 without body; 304 with ETag and a Content-Length of 50 but no body
  /sleep/MS                     waits MS milliseconds (interruptible at shutdown), then /echo
  /slowbody/N/MS                200 head at once, then N bytes in 10 pieces spread over MS milliseconds
  /interim/{same|split}         a 103 Early Hints, then the /echo response: in the same write (same) or
                                200 ms later (split)
  /stall-read                   waits for .release (an Event) before reading the request body, then /echo
  /abort/{cl|chunked}/{rst|fin} sends a head (Content-Length 100000, or chunked) and 1000 body bytes,
                                waits 300 ms, then closes (fin) or resets (rst, SO_LINGER 0)
  HEAD on any path              the GET head without a body

Modes: "normal"; "close_after_response" (closes every connection after one response, without
Connection: close); "drop_reused" (answers the first request of a connection; on a later request on
the same connection closes with the request unread, i.e. resets it, without answering).

TCPBackend modes: "echo_bye" (echoes; on EOF from the client sends b"BYE" and closes) and
"greet_shutdown" (sends b"HELLO", shuts its write side, then records everything it receives until
EOF).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
from urllib.parse import urlsplit, parse_qs

from wire import CRLF, ProtocolError, Reader, header, header_values, parse_headers, read_chunked, split_head

IO_TIMEOUT = 15.0


def pattern_bytes(n: int, seed: int = 1234) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


_BLOCK = pattern_bytes(1 << 20, seed=99)
_repeat_sha_cache: dict[int, str] = {}


def repeat_block() -> bytes:
    return _BLOCK


def repeat_sha(mib: int) -> str:
    if mib not in _repeat_sha_cache:
        h = hashlib.sha256()
        for _ in range(mib):
            h.update(_BLOCK)
        _repeat_sha_cache[mib] = h.hexdigest()
    return _repeat_sha_cache[mib]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ServerBase:
    def __init__(self, host: str, rcvbuf: int | None = None, port: int = 0):
        self.host = host
        self.lsock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.lsock.bind((host, port))   # port 0: the OS chooses (a test may reuse it on another address)
        self.lsock.listen(256)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.connections = 0
        self.errors: list[str] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"{type(self).__name__}-{self.port}")
        self._accept_thread.start()

    @property
    def endpoint(self) -> str:
        return _endpoint(self.host, self.port)

    def _accept_loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT)
            with self.lock:
                self.connections += 1
                conn_id = self.connections
                self.conns.add(conn)
            t = threading.Thread(target=self._run_conn, args=(conn, conn_id), daemon=True)
            self.threads.append(t)
            t.start()

    def _run_conn(self, conn, conn_id):
        try:
            self.handle(conn, conn_id)
        except (OSError, EOFError):
            pass
        except ProtocolError as e:
            with self.lock:
                self.errors.append(f"conn {conn_id}: {e}")
        except Exception as e:  # a bug in the backend itself: make it visible
            with self.lock:
                self.errors.append(f"conn {conn_id}: backend exception {e!r}")
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def handle(self, conn, conn_id):
        raise NotImplementedError

    def close(self):
        self.stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accept_thread.join(2)
        for t in self.threads:
            t.join(0.5)


def _reset(conn: socket.socket):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class HTTPBackend(_ServerBase):
    def __init__(self, host: str = "127.0.0.1", mode: str = "normal", sndbuf: int | None = None,
                 rcvbuf: int | None = None, port: int = 0):
        assert mode in ("normal", "close_after_response", "drop_reused"), mode
        self.mode = mode
        self.sndbuf = sndbuf
        self.requests: list[dict] = []
        self.dropped = 0
        self.release = threading.Event()
        self.bytes_sent = 0  # body bytes written by /repeat (for backpressure checks)
        super().__init__(host, rcvbuf=rcvbuf, port=port)

    # -- request parsing --------------------------------------------------------------------------

    def _read_request(self, reader: Reader, conn) -> dict:
        head = reader.read_until(b"\r\n\r\n")
        request_line, lines = split_head(head)
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            raise ProtocolError(f"bad request line forwarded: {request_line!r}")
        headers = parse_headers(lines)
        return {"method": parts[0].decode(), "target": parts[1].decode("latin-1"), "headers": headers}

    def _read_body(self, reader: Reader, req: dict) -> None:
        headers = req["headers"]
        te = header_values(headers, "transfer-encoding")
        cl = header_values(headers, "content-length")
        h = hashlib.sha256()
        length = 0
        keep = urlsplit(req["target"]).path == "/mirror"
        kept: list[bytes] = []

        def sink(b):
            nonlocal length
            h.update(b)
            length += len(b)
            if keep:
                kept.append(b)

        if te and cl:
            raise ProtocolError("proxy forwarded both Transfer-Encoding and Content-Length")
        trailers = []
        if te:
            if te[-1].lower().split(",")[-1].strip() != "chunked":
                raise ProtocolError(f"unsupported transfer-encoding {te}")
            trailers = read_chunked(reader, sink)
            chunked = True
        else:
            chunked = False
            if cl:
                if len(cl) != 1 or not cl[0].isdigit():
                    raise ProtocolError(f"bad Content-Length forwarded: {cl}")
                reader.consume(int(cl[0]), sink)
        req.update(body_sha256=h.hexdigest(), body_length=length, chunked=chunked, trailers=trailers)
        if keep:
            req["body"] = b"".join(kept)

    # -- connection loop --------------------------------------------------------------------------

    def handle(self, conn, conn_id):
        if self.sndbuf:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        reader = Reader(conn)
        served = 0
        while not self.stop.is_set():
            try:
                req = self._read_request(reader, conn)
            except EOFError:
                return
            if self.mode == "drop_reused" and served >= 1:
                with self.lock:
                    self.dropped += 1
                _reset(conn)
                return
            req["conn_id"] = conn_id
            req["conn_index"] = served
            path = urlsplit(req["target"]).path
            expect = (header(req["headers"], "expect") or "").lower()
            if expect == "100-continue":
                # Remora must not forward Expect; answer anyway so a broken proxy fails fast, not hangs.
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if path == "/stall-read":
                self.release.wait(IO_TIMEOUT)
            self._read_body(reader, req)
            with self.lock:
                self.requests.append(req)
            keep = self._respond(conn, req, path)
            served += 1
            if not keep or self.mode == "close_after_response":
                return

    def _send(self, conn, status: int, headers: list[tuple[str, str]], body: bytes | None, head_only: bool,
              prefix: bytes = b""):
        reason = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found",
                  500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Status")
        out = f"HTTP/1.1 {status} {reason}\r\n".encode() + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in headers) + CRLF
        if body and not head_only:
            out += body
        conn.sendall(prefix + out)

    def _respond(self, conn, req: dict, path: str) -> bool:
        method = req["method"]
        head_only = method == "HEAD"
        wants_close = any(t.strip().lower() == "close"
                          for v in header_values(req["headers"], "connection") for t in v.split(","))
        base = [("Server", "remora-test-backend"), ("X-Backend-Conn", str(req["conn_id"]))]
        if wants_close:
            base.append(("Connection", "close"))
        seg = path.strip("/").split("/")
        query = parse_qs(urlsplit(req["target"]).query)

        if seg[0] == "sleep" and len(seg) == 2:
            self.stop.wait(int(seg[1]) / 1000)
            seg = ["echo"]
        prefix = b""
        if seg[0] == "interim" and len(seg) == 2:
            early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            if seg[1] == "same":
                prefix = early  # the 1xx and the final response in one write
            else:
                conn.sendall(early)
                self.stop.wait(0.2)
            seg = ["echo"]

        if seg[0] == "bytes" and len(seg) == 2:
            body = pattern_bytes(int(seg[1]))
            self._send(conn, 200, base + [("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(len(body))),
                                          ("X-Body-Sha256", hashlib.sha256(body).hexdigest())], body, head_only)
        elif seg[0] == "chunked" and len(seg) == 2:
            body = pattern_bytes(int(seg[1]))
            size = int(query.get("size", ["1000"])[0])
            self._send(conn, 200, base + [("Transfer-Encoding", "chunked"),
                                          ("X-Body-Sha256", hashlib.sha256(body).hexdigest())], None, True)
            if not head_only:
                for i in range(0, len(body), size):
                    piece = body[i:i + size]
                    conn.sendall(b"%x\r\n" % len(piece) + piece + CRLF)
                conn.sendall(b"0\r\n\r\n")
        elif seg[0] == "repeat" and len(seg) == 2:
            mib = int(seg[1])
            self._send(conn, 200, base + [("Content-Length", str(mib << 20)),
                                          ("X-Body-Sha256", repeat_sha(mib))], None, True)
            if not head_only:
                view = memoryview(repeat_block())
                for _ in range(mib):
                    for off in range(0, len(view), 64 * 1024):
                        conn.sendall(view[off:off + 64 * 1024])
                        with self.lock:
                            self.bytes_sent += 64 * 1024
        elif seg[0] == "slowbody" and len(seg) == 3:
            body = pattern_bytes(int(seg[1]))
            self._send(conn, 200, base + [("Content-Length", str(len(body))),
                                          ("X-Body-Sha256", hashlib.sha256(body).hexdigest())], None, True)
            if not head_only:
                step = max(1, len(body) // 10)
                for i in range(0, len(body), step):
                    self.stop.wait(int(seg[2]) / 1000 / 10)
                    conn.sendall(body[i:i + step])
        elif seg[0] == "status" and len(seg) == 2:
            code = int(seg[1])
            if code == 204:
                self._send(conn, 204, base, None, True)
            elif code == 304:
                self._send(conn, 304, base + [("ETag", '"v1"'), ("Content-Length", "50")], None, True)
            else:
                body = f"status {code}\n".encode()
                self._send(conn, code, base + [("Content-Length", str(len(body)))], body, head_only)
        elif seg[0] == "mirror":
            body = req.get("body", b"")
            self._send(conn, 200, base + [("Content-Length", str(len(body))),
                                          ("X-Received-Sha256", req["body_sha256"]),
                                          ("X-Received-Length", str(req["body_length"])),
                                          ("X-Received-Chunked", "1" if req["chunked"] else "0")],
                       body, head_only)
        elif seg[0] == "abort" and len(seg) == 3:
            framing, how = seg[1], seg[2]
            part = pattern_bytes(1000)
            if framing == "cl":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + part)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n" % len(part) + part + CRLF)
            self.stop.wait(0.3)
            if how == "rst":
                _reset(conn)
            else:
                conn.shutdown(socket.SHUT_RDWR)
            return False
        else:
            info = {k: req[k] for k in ("method", "target", "body_sha256", "body_length", "chunked",
                                        "conn_id", "conn_index")}
            info["headers"] = [[k, v] for k, v in req["headers"]]
            info["trailers"] = [[k, v] for k, v in req["trailers"]]
            body = json.dumps(info).encode()
            self._send(conn, 200, base + [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))], body, head_only, prefix)
        return not wants_close


class TCPBackend(_ServerBase):
    def __init__(self, host: str = "127.0.0.1", mode: str = "echo_bye"):
        assert mode in ("echo_bye", "greet_shutdown"), mode
        self.mode = mode
        self.received: dict[int, bytearray] = {}
        self.eof_seen: set[int] = set()
        super().__init__(host)

    def handle(self, conn, conn_id):
        conn.settimeout(30)
        if self.mode == "echo_bye":
            while True:
                data = conn.recv(256 * 1024)
                if not data:
                    with self.lock:
                        self.eof_seen.add(conn_id)
                    conn.sendall(b"BYE")
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data)
        else:
            got = bytearray()
            with self.lock:
                self.received[conn_id] = got
            conn.sendall(b"HELLO")
            conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(65536)
                if not data:
                    with self.lock:
                        self.eof_seen.add(conn_id)
                    return
                with self.lock:
                    got += data


def refused_endpoint_socket(host: str = "127.0.0.1") -> socket.socket:
    """A bound but not listening socket: connecting to its port is refused, and nobody else can take
    the port while the socket lives."""
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.bind((host, 0))
    return s


class NamedBackend(HTTPBackend):
    """An HTTPBackend that says who it is (for routing tests): every response carries
    `X-Backend-Name: <name>`, and `/id` (any query) answers 200 with the name as the body, cheaply.
    `delay_ms` makes it wait that long before answering anything (a slow shadow backend).
    `.served` counts the requests it answered (including /id), under `.lock`."""

    def __init__(self, name: str, host: str = "127.0.0.1", mode: str = "normal", delay_ms: int = 0, **kw):
        self.name = name
        self.delay_ms = delay_ms
        self.served = 0
        super().__init__(host, mode, **kw)

    def _send(self, conn, status, headers, body, head_only, prefix=b""):
        super()._send(conn, status, list(headers) + [("X-Backend-Name", self.name)], body, head_only, prefix)

    def _respond(self, conn, req, path):
        if self.delay_ms:
            self.stop.wait(self.delay_ms / 1000)
        with self.lock:
            self.served += 1
        if path == "/id":
            body = self.name.encode()
            close = any(t.strip().lower() == "close"
                        for v in header_values(req["headers"], "connection") for t in v.split(","))
            self._send(conn, 200, [("Content-Length", str(len(body)))] + ([("Connection", "close")] if close else []),
                       body, req["method"] == "HEAD")
            return not close
        return super()._respond(conn, req, path)
