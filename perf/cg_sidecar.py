#!/usr/bin/env python3
"""What the sidecar path costs (issue 15): callgrind instructions in Remora per connection and per
request, through the sidecar's outbound listener (iptables REDIRECT, SO_ORIGINAL_DST, sniffing,
hand-over) against plain `http` and `tcp` listeners serving the same backend, in one Remora process.

    perf/cg_sidecar.py                     # 400 connections per scenario after 50, 4,000 keep-alive requests
    perf/cg_sidecar.py --connections 1000 --requests 10000

Runs in a network namespace it creates (root, `ip netns`, iptables; deleted at the end): a veth pair
gives the namespace an address (10.232.0.1) where a Python HTTP/1.1 backend listens, and a service
address (10.232.0.100) nothing has; `remora iptables --uid 0 --no-ipv6 --apply` installs the rules, and
the clients run as nobody (so they are captured) while Remora runs as root (so it is not). Remora runs
under `valgrind --tool=callgrind` with one worker; before each scenario `callgrind_control -z` zeroes
its counters and after it `--dump` writes them, so each figure counts only that scenario's instructions
(accepting, reading, sniffing, connecting upstream, proxying, closing). Instruction counts do not
depend on how busy the machine is; the clients' and backend's speed does not enter them. Needs valgrind, h2load (nghttp2-client), strip.

Scenarios, a new connection per request (`Connection: close`, the client reads to EOF):
  http_plain    client -> 127.0.0.1:18000, an `http` listener -> cluster
  http_sidecar  client -> 10.232.0.100:80 -> REDIRECT -> 15001, a service: sniffed HTTP -> its listener -> cluster
  tcp_plain     client -> 127.0.0.1:18001, a `tcp` listener -> cluster (the same request as bytes)
  tcp_sidecar   client -> 10.232.0.1:8081 -> REDIRECT -> 15001, no service: passthrough to it as bytes
and keep-alive (h2load --h1 -c4, per request; the connection is decided once):
  ka_plain, ka_sidecar
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
from cg_guard import demangle, self_cost_per_function  # noqa: E402
NS_IP, VIP, BACKEND_PORT = "10.232.0.1", "10.232.0.100", 8081
APP = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

BACKEND = r"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
ThreadingHTTPServer(("%s", %d), H).serve_forever()
""" % (NS_IP, BACKEND_PORT)

# n connections one after another, one request each; prints how many got a 200.
CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"
ok = 0
for _ in range(n):
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(req)
        out = b""
        while True:
            d = s.recv(65536)
            if not d: break
            out += d
    ok += out.startswith(b"HTTP/1.1 200")
print(ok)
"""

CONFIG = f"""admin: {{ address: "127.0.0.1:15000" }}
workers: 1
drain_timeout: 1s
listeners:
  - name: web
    address: "127.0.0.1:18000"
    protocol: http
    routes: [ {{ name: all, match: {{ path: {{ prefix: "/" }} }}, backends: [ {{ cluster: backend }} ] }} ]
  - name: raw
    address: "127.0.0.1:18001"
    protocol: tcp
    cluster: backend
sidecar:
  ipv6: false
  services: [ {{ name: orders, addresses: ["{VIP}"], port: 80, cluster: backend }} ]
clusters:
  - name: backend
    endpoints: ["{NS_IP}:{BACKEND_PORT}"]
"""


def sh(args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"cg_sidecar: {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def total_ir(dump: Path) -> int:
    text = dump.read_text(errors="replace")
    ev = re.search(r"^events:\s*(.+)$", text, re.M).group(1).split()
    tot = re.search(r"^(?:summary|totals):\s*(.+)$", text, re.M).group(1).split()
    return dict(zip(ev, (int(x) for x in tot)))["Ir"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=400, help="measured connections per scenario")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up connections per scenario")
    ap.add_argument("--requests", type=int, default=4000, help="measured keep-alive requests per scenario")
    ap.add_argument("--top", type=int, default=12, help="list the functions that grew most (0: none)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("cg_sidecar: needs root (ip netns, iptables)", file=sys.stderr)
        return 2
    for tool in ("valgrind", "callgrind_control", "h2load", "ip", "iptables", "setpriv", "strip"):
        if not shutil.which(tool):
            print(f"cg_sidecar: {tool} is not installed", file=sys.stderr)
            return 2
    binary = Path(os.environ.get("REMORA_BIN") or ROOT / ".build" / "release" / "remora").resolve()
    work = Path(tempfile.mkdtemp(prefix="cg-sidecar-"))
    ns = f"rmrcg{os.getpid()}"
    procs: list[subprocess.Popen] = []
    made = False
    try:
        sh(["ip", "netns", "add", ns])
        made = True
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "add", "cg0", "type", "veth", "peer", "name", "cg1"])
        sh(["ip", "-n", ns, "addr", "add", f"{NS_IP}/24", "dev", "cg0"])
        for dev in ("cg0", "cg1"):
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        inns = ["ip", "netns", "exec", ns]
        procs.append(subprocess.Popen(inns + ["python3", "-c", BACKEND], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # valgrind cannot read the Swift toolchain's DWARF 5: a copy without debug info, as cg_guard's.
        stripped = work / "remora"
        sh(["strip", "--strip-debug", "-o", str(stripped), str(binary)])
        cfg = work / "sidecar.yaml"
        cfg.write_text(CONFIG)
        sh(inns + [str(binary), "iptables", "--uid", "0", "--no-ipv6", "--config", str(cfg), "--apply"])
        out = work / "callgrind.out"
        vg = subprocess.Popen(inns + ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(stripped), "run",
                                      "--config", str(cfg)], stdout=subprocess.PIPE, stderr=open(work / "remora.stderr", "wb"),
                              text=True)
        procs.append(vg)
        deadline = time.monotonic() + 120
        for line in vg.stdout:
            if line.strip() == "ready":
                break
            if time.monotonic() > deadline:
                raise SystemExit("cg_sidecar: Remora did not get ready under valgrind")
        else:
            raise SystemExit(f"cg_sidecar: Remora exited: {(work / 'remora.stderr').read_text()[-2000:]}")
        pid = str(vg.pid)   # ip netns exec execs: this is valgrind's, that is Remora's, pid

        def measured(run_load) -> tuple[int, int]:
            sh(["callgrind_control", "-z", pid])
            ok = run_load()
            before = set(work.glob("callgrind.out*"))
            sh(["callgrind_control", "--dump=scenario", pid])
            end = time.monotonic() + 60
            while time.monotonic() < end:
                for f in sorted(set(work.glob("callgrind.out*")) - before):
                    if re.search(r"^(summary|totals):", f.read_text(errors="replace"), re.M):
                        dumps.append(f)
                        return total_ir(f), ok
                time.sleep(0.3)
            raise SystemExit("cg_sidecar: no callgrind dump appeared")

        def conns(host: str, port: int, n: int) -> int:
            r = sh(inns + APP + ["python3", "-c", CLIENT, host, str(port), str(n)], timeout=3600)
            return int(r.stdout.strip())

        def keepalive(url: str, n: int) -> int:
            r = sh(inns + APP + ["h2load", "--h1", "-c4", "-t1", f"-n{n}", url], timeout=3600)
            m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", r.stdout)
            return int(m.group(1)) if m and m.group(2) == "0" else 0

        results: dict[str, float] = {}
        dumps: list[Path] = []
        per_fn: dict[str, dict[str, float]] = {}
        for name, host, port in (("http_plain", "127.0.0.1", 18000), ("http_sidecar", VIP, 80),
                                 ("tcp_plain", "127.0.0.1", 18001), ("tcp_sidecar", NS_IP, BACKEND_PORT)):
            assert conns(host, port, a.warmup) == a.warmup, f"{name}: warm-up requests failed"
            ir, ok = measured(lambda: conns(host, port, a.connections))
            if ok != a.connections:
                raise SystemExit(f"cg_sidecar: {name}: {a.connections - ok} of {a.connections} requests failed")
            results[name] = ir / ok
            per_fn[name] = {k: v / ok for k, v in self_cost_per_function(dumps[-1]).items()}
        for name, url in (("ka_plain", "http://127.0.0.1:18000/"), ("ka_sidecar", f"http://{VIP}/")):
            keepalive(url, a.requests // 4)
            ir, ok = measured(lambda: keepalive(url, a.requests))
            if ok != a.requests:
                raise SystemExit(f"cg_sidecar: {name}: {a.requests - ok} of {a.requests} requests failed")
            results[name] = ir / ok
        stats = sh(inns + ["python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("
                           "'http://127.0.0.1:15000/stats', timeout=30).read().decode())"], timeout=60).stdout
        want = ("listener.sidecar_outbound.sidecar_service_matched", "listener.sidecar_outbound.sidecar_passthrough",
                "listener.sidecar_outbound.http11_found")
        seen = {k: v for k, v in (line.split() for line in stats.splitlines() if len(line.split()) == 2) if k in want}

        def row(name: str, base: str | None, unit: str):
            r = results[name]
            extra = f"  {r - results[base]:+9,.0f}  ({(r / results[base] - 1) * 100:+.1f} %)" if base else ""
            print(f"{name:13} {r:11,.0f} Ir/{unit}{extra}")

        print(f"callgrind, Remora instructions ({a.connections} connections after {a.warmup}; "
              f"{a.requests} keep-alive requests; {binary})")
        row("http_plain", None, "connection")
        row("http_sidecar", "http_plain", "connection")
        row("tcp_plain", None, "connection")
        row("tcp_sidecar", "tcp_plain", "connection")
        row("ka_plain", None, "request   ")
        row("ka_sidecar", "ka_plain", "request   ")
        print("stats: " + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in sorted(seen.items())))
        for name, base in (("http_sidecar", "http_plain"), ("tcp_sidecar", "tcp_plain")):
            if not a.top:
                break
            fs, fb = per_fn[name], per_fn[base]
            deltas = sorted(((fs.get(k, 0.0) - fb.get(k, 0.0), k) for k in set(fs) | set(fb)), reverse=True)[:a.top]
            pretty = demangle([k for _, k in deltas])
            print(f"functions whose own instructions per connection grew most, {base} -> {name}:")
            for d, k in deltas:
                print(f"  {d:+8.0f}  {fb.get(k, 0.0):8.0f} -> {fs.get(k, 0.0):8.0f}  {pretty.get(k, k)[:140]}")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        if made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
