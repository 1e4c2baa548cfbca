#!/usr/bin/env python3
"""Clients that go away in the middle of a large response. Stdlib only.

Each try: connect, GET PATH, read --read bytes, close at once -- while the proxy is still forwarding the
body, so its next write to the client fails (EPIPE/ECONNRESET). With --small-rcvbuf the client also shrinks
its receive buffer and waits 50 ms before closing (the proxy is then paused on a full socket instead).
A proxy must drop that response (and its upstream side) and keep serving others.

usage: abort_check.py HOST PORT [PATH] [--tries N] [--read BYTES] [--small-rcvbuf]
prints: "DONE tries=N read=BYTES..." ; exit 0 (whether the proxy survived is checked by the caller)
"""
import argparse
import socket
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("path", nargs="?", default="/1m")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--read", type=int, default=65536, help="bytes to read before closing (headers included)")
    ap.add_argument("--small-rcvbuf", action="store_true", help="8 KiB SO_RCVBUF and 50 ms pause before closing")
    a = ap.parse_args()
    got_all = []
    for _ in range(a.tries):
        s = socket.socket()
        if a.small_rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        s.settimeout(5)
        try:
            s.connect((a.host, a.port))
            s.sendall(("GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % a.path).encode())
            got = 0
            while got < a.read:
                b = s.recv(min(65536, a.read - got))
                if not b:
                    break
                got += len(b)
            got_all.append(got)
            if a.small_rcvbuf:
                time.sleep(0.05)
        except OSError as e:
            got_all.append("error:%s" % e.__class__.__name__)
        finally:
            s.close()  # FIN with most of the response still unsent
        time.sleep(0.2)
    print("DONE tries=%d read=%s" % (a.tries, ",".join(map(str, got_all))), flush=True)


if __name__ == "__main__":
    main()
