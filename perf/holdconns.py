#!/usr/bin/env python3
"""Open N HTTP/1.1 keep-alive (or h2c) connections, do one request on each, then hold them idle.

Used by perf/bench.py for the memory (RSS) scenario. Stdlib only.

    holdconns.py HOST PORT N [--concurrency C] [--timeout S] [--h2c]

--h2c: HTTP/2 with prior knowledge: the preface, an empty SETTINGS, one GET on stream 1 (HPACK from
the static table), SETTINGS frames acknowledged, until the response's END_STREAM; the connection
then stays open (the server's SETTINGS acknowledged, no GOAWAY).

Protocol on stdin/stdout (one line each):
  after opening:      prints  "OPENED ok=<n> failed=<n> secs=<t> first_error=<msg>"
  stdin "check":      prints  "ALIVE <n>"  (sockets not closed by the peer)
  stdin "quit"/EOF:   closes everything, prints "CLOSED", exits 0
"""
import argparse
import resource
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(need, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def one(host, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: holdconns\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before response headers")
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ")
        if len(status) < 2 or not status[1].startswith(b"2"):
            raise ConnectionError("bad status: %r" % lines[0][:80])
        clen = None
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            if k.strip().lower() == b"content-length":
                clen = int(v.strip())
            elif k.strip().lower() == b"connection" and v.strip().lower() == b"close":
                raise ConnectionError("server sent Connection: close")
        if clen is None:
            raise ConnectionError("no content-length (chunked not supported here)")
        while len(body) < clen:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            body += chunk
        s.setblocking(False)
        return s
    except Exception:
        s.close()
        raise


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HPACK: :method GET (static 2), :scheme http (6), :path / (4), :authority "bench" (literal, name 1).
H2_GET = bytes([0x82, 0x86, 0x84, 0x01, 0x05]) + b"bench"


def h2_frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def one_h2c(host, port, timeout):
    """GET / over h2c on a new connection; returns the socket once the response has ended."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((host, port))
        s.sendall(H2_PREFACE + h2_frame(4, 0, 0) + h2_frame(1, 0x5, 1, H2_GET))   # SETTINGS, HEADERS
        buf, status_seen = b"", False
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the response ended")
                buf += chunk
            n = int.from_bytes(buf[:3], "big")
            ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9:9 + n], buf[9 + n:]
            if ftype == 4 and not flags & 1:          # SETTINGS: acknowledge
                s.sendall(h2_frame(4, 1, 0))
            elif ftype == 6 and not flags & 1:        # PING: answer
                s.sendall(h2_frame(6, 1, 0, payload))
            elif ftype == 7:
                raise ConnectionError("GOAWAY")
            elif ftype == 3 and stream == 1:
                raise ConnectionError("RST_STREAM")
            elif ftype == 1 and stream == 1 and not status_seen:   # HEADERS: :status 200 (static 8)
                block = payload[1 + payload[0]:] if flags & 0x8 else payload   # skip PADDED's pad length
                block = block[5:] if flags & 0x20 else block                   # and PRIORITY's 5 bytes
                if not block or block[0] != 0x88:
                    raise ConnectionError("status other than 200 (first HPACK byte %r)" % block[:1])
                status_seen = True
            if stream == 1 and ftype in (0, 1) and flags & 1:   # END_STREAM
                if not status_seen:
                    raise ConnectionError("ended without a status")
                s.setblocking(False)
                return s
    except Exception:
        s.close()
        raise


def alive_count(socks):
    n = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                n += 1  # unexpected bytes, but the connection is open
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--h2c", action="store_true", help="HTTP/2 with prior knowledge instead of HTTP/1.1")
    a = ap.parse_args()
    limit = raise_nofile(a.n + 100)
    if limit < a.n + 50:
        print("WARNING open-files limit %d < %d" % (limit, a.n + 50), file=sys.stderr)

    socks, errors = [], []
    lock = threading.Lock()

    def task(_):
        try:
            s = (one_h2c if a.h2c else one)(a.host, a.port, a.timeout)
            with lock:
                socks.append(s)
        except Exception as e:  # noqa: BLE001 - report any failure
            with lock:
                errors.append("%s: %s" % (type(e).__name__, e))

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=a.concurrency) as ex:
        list(ex.map(task, range(a.n)))
    secs = time.monotonic() - t0
    first = errors[0].replace(" ", "_")[:120] if errors else "-"
    print("OPENED ok=%d failed=%d secs=%.2f first_error=%s" % (len(socks), len(errors), secs, first), flush=True)

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "check":
            print("ALIVE %d" % alive_count(socks), flush=True)
        elif cmd == "quit":
            break
    for s in socks:
        s.close()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    main()
