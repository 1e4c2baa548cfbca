"""HTTP/1.1 wire helpers shared by the test clients and the Python backends.

Everything here works on plain blocking sockets that carry a timeout, so every read is bounded.
Nothing is lenient on purpose: the backends use these parsers to check what Remora forwards, and
the clients use them to check what Remora answers.
"""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field

CRLF = b"\r\n"
MAX_HEAD = 1 << 20


class ProtocolError(Exception):
    """The peer sent something that is not valid HTTP/1.1 framing."""


class Reader:
    """A byte buffer over a socket. Raises EOFError when the peer closes before enough bytes arrive."""

    def __init__(self, sock: socket.socket, recv_size: int = 256 * 1024):
        self.sock = sock
        self.buf = bytearray()
        self.recv_size = recv_size
        self.eof = False

    def fill(self) -> int:
        if self.eof:
            raise EOFError("connection closed by peer")
        data = self.sock.recv(self.recv_size)
        if not data:
            self.eof = True
            raise EOFError("connection closed by peer")
        self.buf += data
        return len(data)

    def read_until(self, delim: bytes, limit: int = MAX_HEAD) -> bytes:
        start = 0
        while True:
            i = self.buf.find(delim, max(0, start - len(delim) + 1))
            if i >= 0:
                end = i + len(delim)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise ProtocolError(f"no {delim!r} within {limit} bytes")
            start = len(self.buf)
            self.fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def consume(self, n: int, sink) -> None:
        """Pass exactly n bytes to sink(bytes) without keeping them all in memory."""
        left = n
        while left > 0:
            if not self.buf:
                self.fill()
            take = min(left, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            left -= take

    def read_available(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_to_eof(self, limit: int = 1 << 30) -> bytes:
        while True:
            try:
                self.fill()
            except EOFError:
                break
            if len(self.buf) > limit:
                raise ProtocolError("body too large")
        return self.read_available()


def parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        if b":" not in line:
            raise ProtocolError(f"header line without colon: {line!r}")
        name, _, value = line.partition(b":")
        if not name or name != name.strip() or any(c in name for c in b" \t"):
            raise ProtocolError(f"bad header name: {line!r}")
        v = value.strip(b" \t")
        if any(c in v for c in b"\r\n\x00"):
            raise ProtocolError(f"bad header value: {line!r}")
        headers.append((name.decode("latin-1"), v.decode("latin-1")))
    return headers


def split_head(head: bytes) -> tuple[bytes, list[bytes]]:
    if not head.endswith(b"\r\n\r\n"):
        raise ProtocolError("head does not end with CRLFCRLF")
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise ProtocolError(f"bare CR or LF in head: {line!r}")
    return lines[0], lines[1:]


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    n = name.lower()
    return [v for k, v in headers if k.lower() == n]


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    vals = header_values(headers, name)
    return vals[0] if vals else None


def read_chunked(reader: Reader, sink, limit_chunk_line: int = 4096) -> list[tuple[str, str]]:
    """Decodes a chunked body into sink(bytes). Returns the trailers."""
    while True:
        line = reader.read_until(CRLF, limit_chunk_line)[:-2]
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise ProtocolError(f"bad chunk size line {line!r}")
        size = int(size_text, 16)
        if size == 0:
            trailers = []
            while True:
                tl = reader.read_until(CRLF, limit_chunk_line)[:-2]
                if not tl:
                    return parse_headers(trailers) if trailers else []
                trailers.append(tl)
        reader.consume(size, sink)
        if reader.read_exact(2) != CRLF:
            raise ProtocolError("chunk data not followed by CRLF")


def encode_chunked(data: bytes, sizes: list[int]) -> bytes:
    """Frames data as chunks of the given sizes (cycled), then the last chunk."""
    out = bytearray()
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        i += 1
        piece = data[pos:pos + n]
        pos += n
        out += b"%x\r\n" % len(piece) + piece + CRLF
    out += b"0\r\n\r\n"
    return bytes(out)


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    interim: list[int] = field(default_factory=list)  # 1xx statuses seen before the final one
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    def header_values(self, name: str) -> list[str]:
        return header_values(self.headers, name)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def json(self):
        import json
        return json.loads(self.body)

    @property
    def wants_close(self) -> bool:
        conn = ",".join(self.header_values("connection")).lower()
        return "close" in [t.strip() for t in conn.split(",")] or self.version == "HTTP/1.0"


def read_response_head(reader: Reader) -> Response:
    head = reader.read_until(b"\r\n\r\n")
    status_line, lines = split_head(head)
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {status_line!r}")
    return Response(status=int(parts[1]), reason=(parts[2] if len(parts) > 2 else b"").decode("latin-1"),
                    version=parts[0].decode(), headers=parse_headers(lines), raw_head=head)


def read_response(reader: Reader, method: str = "GET", body_limit: int = 1 << 30) -> Response:
    """Reads one complete response (skipping and recording 1xx). Raises EOFError if it is cut short."""
    interim = []
    while True:
        resp = read_response_head(reader)
        if 100 <= resp.status < 200 and resp.status != 101:
            interim.append(resp.status)
            continue
        break
    resp.interim = interim
    if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
        return resp
    te = ",".join(resp.header_values("transfer-encoding")).lower()
    if "chunked" in te:
        parts: list[bytes] = []
        read_chunked(reader, parts.append)
        resp.body = b"".join(parts)
        resp.chunked = True
        return resp
    cl = resp.header_values("content-length")
    if cl:
        if len(set(cl)) != 1:
            raise ProtocolError(f"conflicting Content-Length {cl}")
        resp.body = reader.read_exact(int(cl[0]))
        return resp
    resp.body = reader.read_to_eof(body_limit)
    return resp


def build_request(method: str, target: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes | None = None, chunked_sizes: list[int] | None = None,
                  host: str | None = "remora.test") -> bytes:
    hdrs = list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if host is not None and "host" not in names:
        hdrs.insert(0, ("Host", host))
    payload = b""
    if chunked_sizes is not None:
        if "transfer-encoding" not in names:
            hdrs.append(("Transfer-Encoding", "chunked"))
        payload = encode_chunked(body or b"", chunked_sizes)
    elif body is not None:
        if "content-length" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        payload = body
    head = f"{method} {target} HTTP/1.1\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode("latin-1") for k, v in hdrs) + CRLF
    return head + payload


def wait_closed(sock: socket.socket, timeout: float) -> tuple[str, bytes]:
    """Reads until the peer closes. Returns ("eof"|"reset"|"timeout", bytes received meanwhile)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    old = sock.gettimeout()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", bytes(got)
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return "timeout", bytes(got)
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                return "reset", bytes(got)
            if not data:
                return "eof", bytes(got)
            got += data
            if len(got) > (64 << 20):
                return "timeout", bytes(got)
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass
