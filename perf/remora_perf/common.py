"""Constants shared by every part of the benchmark, and small helpers (logging, ports, numbers, exit status)."""
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent.parent   # perf/
REPO = PERF.parent
OUT = PERF / "out"
ALL_PROXIES = ["remora", "haproxy", "nginx", "nghttpx", "envoy"]
PEERS = [p for p in ALL_PROXIES if p != "remora"]
# Variants of a proxy, measured in the same rounds as the plain one; never a "best peer".
# `--only remora+jsonlog`: that proxy with a JSON access log on its HTTP listener (remora, nginx, envoy;
# perf/log_cost.py). `--only remora+tracing`: Remora with `tracing: { propagate: [w3c] }` on it (h2load
# sends no trace fields: every request starts a trace, with a new x-request-id and traceparent).
VARIANTS = {"+jsonlog": ("remora", "nginx", "envoy"), "+tracing": ("remora",)}


def variant(name):
    """The variant suffix of `name` ('+jsonlog', '+tracing'), or ''."""
    return next((v for v in VARIANTS if name.endswith(v)), "")


def base_proxy(name):
    return name[:len(name) - len(variant(name))]
# "best peer" in the headline: the C proxies; Envoy (C++, the sidecar most meshes run) has its own column
BEST_OF = ["haproxy", "nginx", "nghttpx"]
TITLES = {"remora": "Remora", "haproxy": "HAProxy", "nginx": "nginx", "nghttpx": "nghttpx", "envoy": "Envoy"}
# the order they run in; perf/run.sh runs all of them unless --scenarios says otherwise
ALL_SCENARIOS = ["h1", "post", "h2c", "grpc", "h2c-h1", "large", "churn", "latency", "tcp", "rss"]
# proxies that can take part in a scenario (nghttpx has no plain TCP mode)
SUPPORTS = {"tcp": ["remora", "haproxy", "nginx", "envoy"]}
POST_BYTES = 16 * 1024          # scenario post: request body size
LARGE_BYTES = 1024 * 1024       # scenario large: response body size
GRPC_PATH = "/pkg.Svc/Method"
# a gRPC message frame: flag 0 (not compressed), 4-byte big-endian length, protobuf bytes
# (field 1, length-delimited string: 0x0a <len> <bytes>)
GRPC_REQUEST = b"\x0a\x05world"
GRPC_RESPONSE = b"\x0a\x05hello"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
SC_TITLES = {"h1": "h1 keep-alive", "post": "h1 16 KiB POST", "h2c": "h2c multiplexed", "grpc": "gRPC unary",
             "h2c-h1": "h2c → HTTP/1.1",
             "large": "1 MiB responses", "churn": "connection churn", "latency": "latency @ fixed rate",
             "tcp": "TCP bulk", "rss": "memory"}


def grpc_frame(msg):
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers

def listening_ports():
    ports = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


_used_ports = set()


def free_port():
    for _ in range(100):
        s = socket.socket()
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _used_ports and port not in listening_ports():
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, f="%.1f"):
    return "—" if v is None else f % v


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:]).strip()
    except OSError:
        return ""


def first_line(cmd):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    except Exception as e:  # noqa: BLE001
        return "unavailable (%s)" % e


def sc_all(results):
    return [v for v in results["scenarios"].values() if isinstance(v, dict)]


def exit_desc(proc):
    """'exit 0', 'killed by SIGILL', ... for a Popen (taskset/setpriv exec the proxy: same pid, same status)."""
    if proc is None:
        return "never started"
    rc = proc.poll()
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit %d" % rc


class Interrupted(Exception):
    pass
