#!/usr/bin/env python3
"""A service mesh on one machine (issue 15): network namespaces as pods, joined by a bridge.

    sudo python3 deploy/meshlab.py [--remora .build/release/remora]     # `make mesh-demo`

    namespace hub:  bridge br0 10.233.0.1/24, `remora control` on 10.233.0.1:9911 (a token: it is not loopback)
       |-- veth -- frontend   10.233.0.10  app: a client of http://orders:8080/    sidecar group `frontend`
       |-- veth -- orders-v1  10.233.0.11  app: HTTP server on :8080 ("v1")        sidecar group `orders`
       |-- veth -- orders-v2  10.233.0.12  app: HTTP server on :8080 ("v2")        sidecar group `orders`
       '-- veth -- intruder   10.233.0.13  app: a client, a mesh identity the rule does not allow

Every pod is an unmodified application (Python http.server / urllib, no proxy settings, run as
`nobody` with an empty environment) plus a Remora sidecar (root: the uid the rules exempt) started as
on Kubernetes: the rules `remora iptables --uid 0 --admin-port 15000 --no-ipv6 --apply` installs
first, then `remora run --sidecar --control … --group G`, then the application once `remora
wait-ready` returns. `orders` resolves through /etc/hosts in each namespace (`ip netns exec NAME`
bind-mounts /etc/netns/NAME/hosts over /etc/hosts) to the service address 10.233.0.100, which nobody
has: only the frontend's sidecar knows it (`sidecar.services`) and splits its requests 90/10 between
the clusters orders-v1 and orders-v2, over mutual TLS (`services[].mtls`, `sidecar.mtls`, mode
strict) with SPIFFE identities spiffe://mesh.local/ns/shop/sa/{frontend,orders,intruder}. The orders
sidecars allow only the frontend's identity (`inbound[].authorization`).

Nothing is routed out of the namespaces (no default route, no address outside them); `Mesh.down`
kills every process, deletes every namespace and /etc/netns entry, also after a failure. The test
Tests/integration/test_mesh_netns.py drives the same `Mesh`; the demo (`main`) prints what happens
and stays up until Ctrl-C.

Certificates come from one place, `OpensslCA` (openssl CLI, ECDSA P-256): the test's fixture
`mesh_certs` makes it, and a CA inside `remora control` (CSRs over the control channel) can replace it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.233.0"
HUB_IP = f"{SUBNET}.1"
VIP = f"{SUBNET}.100"               # the service address `orders` resolves to; no interface has it
APP_PORT = 8080
CONTROL_PORT = 9911
ADMIN = 15000
TRUST = "spiffe://mesh.local/ns/shop/sa/"
FRONTEND, ORDERS, INTRUDER = TRUST + "frontend", TRUST + "orders", TRUST + "intruder"
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
# Environment of the applications: nothing but PATH (no http_proxy or the like can reach them).
APP_ENV = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin"]


@dataclass
class Pod:
    name: str           # frontend, orders-v1, …
    ip: str
    group: str          # the control plane's group of its sidecar
    identity: str       # SPIFFE id of its certificate
    workload: str       # certificate file stem (orders-v1 and orders-v2 share the orders identity)
    hub_if: str         # its veth's name on the bridge side
    ns: str = ""
    procs: list = field(default_factory=list)


def pods() -> dict[str, Pod]:
    return {p.name: p for p in (
        Pod("frontend", f"{SUBNET}.10", "frontend", FRONTEND, "frontend", "vfe"),
        Pod("orders-v1", f"{SUBNET}.11", "orders", ORDERS, "orders", "vo1"),
        Pod("orders-v2", f"{SUBNET}.12", "orders", ORDERS, "orders", "vo2"),
        Pod("intruder", f"{SUBNET}.13", "intruder", INTRUDER, "intruder", "vin"),
    )}


# -- certificates: the one place they come from ---------------------------------------------------

class OpensslCA:
    """A mesh CA made with the openssl CLI (ECDSA P-256) in `directory` (ca.pem) and workload
    certificates it signs: `issue(workload, spiffe_id)` writes `<workload>.pem` and
    `<workload>-key.pem`, each renamed into place (key first, then the certificate: tls.md §5), so
    calling it again for the same workload is a certificate rotation the sidecars pick up."""

    def __init__(self, directory: Path, days: int = 30):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.days = days
        self.key = self.dir / "ca-key.pem"
        self.ca = self.dir / "ca.pem"
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.key))
        self._openssl("req", "-x509", "-new", "-key", str(self.key), "-subj", "/CN=Mesh CA (meshlab)", "-days",
                      str(days), "-out", str(self.ca), "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _openssl(self, *args):
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True, timeout=30)

    def files(self, workload: str) -> tuple[Path, Path]:
        return self.dir / f"{workload}.pem", self.dir / f"{workload}-key.pem"

    def issue(self, workload: str, spiffe_id: str) -> tuple[Path, Path]:
        cert, key = self.files(workload)
        tmp_key, tmp_cert = key.with_suffix(".tmp-key"), cert.with_suffix(".tmp-cert")
        csr, ext = self.dir / f"{workload}.csr", self.dir / f"{workload}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:{spiffe_id}\n")
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(tmp_key))
        self._openssl("req", "-new", "-key", str(tmp_key), "-subj", f"/CN={workload}", "-out", str(csr))
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.key),
                      "-set_serial", "0x" + os.urandom(8).hex(), "-days", str(self.days), "-extfile", str(ext),
                      "-out", str(tmp_cert))
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)
        csr.unlink()
        ext.unlink()
        return cert, key


def cert_serial(cert: Path) -> str:
    """Serial of a PEM certificate as /certs shows it would be compared: hex, upper case, no leading zeros."""
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(cert)], capture_output=True,
                         check=True, timeout=10).stdout.decode()
    return norm_serial(out.strip().split("=", 1)[1])


def norm_serial(s: str) -> str:
    return s.replace(":", "").upper().lstrip("0")


def cert_hash(cert: Path) -> str:
    """SHA-256 of the certificate's DER, hex: the `Hash=` of x-forwarded-client-cert."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


# -- what runs in the pods -------------------------------------------------------------------------

# The orders application: HTTP/1.1 on 0.0.0.0:8080, answers with its version and what its sidecar
# told it about the caller (x-forwarded-client-cert).
ORDERS_APP = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
version = sys.argv[1]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"service": "orders", "version": version, "path": self.path,
                           "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

# A client application: urllib, no proxy settings (an empty environment), a new connection per
# request (urlopen's way). argv: URL COUNT (0 = until killed) CONCURRENCY RATE (requests/s in all, 0 =
# as fast as it can). One line per request on stdout:
#   ok <start> <end> <status> <version> <xfcc>     |     err <start> <end> <status or -> <what>
# (times: time.time(), so the driver can compare them with its own clock).
CLIENT_APP = r"""
import json, sys, threading, time, urllib.error, urllib.request
url, count, conc, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
lock = threading.Lock()
state = {"next": 0}
def out(line):
    with lock:
        sys.stdout.write(line + "\n"); sys.stdout.flush()
def worker():
    while True:
        with lock:
            i = state["next"]
            if count and i >= count: return
            state["next"] = i + 1
        if rate:
            time.sleep(max(0.0, t_begin + i / rate - time.time()))
        t0 = time.time()
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
                out(f"ok {t0:.6f} {time.time():.6f} {r.status} {body.get('version', '-')} {body.get('xfcc', '') or '-'}")
        except urllib.error.HTTPError as e:
            out(f"err {t0:.6f} {time.time():.6f} {e.code} http-{e.code}")
        except Exception as e:
            out(f"err {t0:.6f} {time.time():.6f} - {type(e).__name__}:{str(e).replace(' ', '_')[:120]}")
t_begin = time.time()
ts = [threading.Thread(target=worker) for _ in range(conc)]
for t in ts: t.start()
for t in ts: t.join()
"""


@dataclass
class Result:
    ok: bool
    start: float
    end: float
    status: int | None
    version: str          # v1 / v2 (ok), or what went wrong
    xfcc: str = ""


class Proc:
    """A process in a namespace: stdout lines collected (a queue and a list), stderr to a file. Started
    with `setpriv --pdeathsig KILL` where possible, so a killed driver leaves nothing behind."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, on_line=None):
        self.name = name
        self.argv = argv
        self.lines: list[str] = []
        self.queue: queue.Queue = queue.Queue()
        self.on_line = on_line
        self.stderr_path = log_dir / f"{name}.stderr"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.queue.put(line)
            if self.on_line:
                self.on_line(line)
        self.queue.put(None)

    def wait_line(self, want: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeshError(f"{self.name} did not print {want!r} within {timeout}s; stderr:\n{self.stderr_tail()}")
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise MeshError(f"{self.name} exited ({self.proc.wait(5)}) before {want!r}; stderr:\n{self.stderr_tail()}")
            if line.strip() == want:
                return

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, n: int = 30) -> str:
        try:
            self._err.flush()
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, ValueError):
            return "<no stderr>"

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        try:
            self.proc.stdout.close()
        except Exception:   # noqa: BLE001
            pass
        self._err.close()
        return self.proc.returncode


class Load:
    """A client application running in a pod; results parsed as they come."""

    def __init__(self, proc: Proc):
        self.proc = proc
        self.results: list[Result] = []

    def add(self, line: str):
        try:
            self._add(line)
        except ValueError:   # a line cut short when the client was stopped
            pass

    def _add(self, line: str):
        parts = line.split(" ", 5)
        if len(parts) < 5 or parts[0] not in ("ok", "err"):
            return
        if parts[0] == "ok":
            self.results.append(Result(True, float(parts[1]), float(parts[2]), int(parts[3]), parts[4],
                                       parts[5] if len(parts) > 5 else ""))
        else:
            status = None if parts[3] == "-" else int(parts[3])
            self.results.append(Result(False, float(parts[1]), float(parts[2]), status, parts[4]))

    def wait_count(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < n:
            if time.monotonic() > deadline:
                raise MeshError(f"the client made {len(self.results)} of {n} requests in {timeout}s; "
                                f"stderr:\n{self.proc.stderr_tail()}")
            if not self.proc.alive() and len(self.results) < n:
                self.proc._reader.join(2)
                if len(self.results) < n:
                    raise MeshError(f"the client ended after {len(self.results)} of {n} requests; "
                                    f"stderr:\n{self.proc.stderr_tail()}")
            time.sleep(0.02)

    def finish(self, timeout: float) -> list[Result]:
        try:
            self.proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MeshError(f"the client did not finish in {timeout}s ({len(self.results)} requests)") from None
        self.proc._reader.join(5)
        self.proc.stop()
        return self.results


class MeshError(Exception):
    pass


def unavailable() -> str | None:
    """Why this machine cannot run the mesh (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, a bridge, iptables in each namespace)"
    for tool in ("ip", "iptables", "setpriv", "openssl", "python3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, iptables, util-linux, openssl)"
    name = f"rmprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.decode(errors='replace').strip()}"
    try:
        r = subprocess.run(["ip", "netns", "exec", name, "iptables", "-t", "nat", "-S"], capture_output=True)
        if r.returncode != 0:
            return f"iptables does not work inside a network namespace: {r.stderr.decode(errors='replace').strip()}"
        r = subprocess.run(["ip", "-n", name, "link", "add", "rmprobebr", "type", "bridge"], capture_output=True)
        if r.returncode != 0:
            return f"cannot make a bridge inside a network namespace: {r.stderr.decode(errors='replace').strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


# -- the documents the control plane holds ---------------------------------------------------------

def frontend_doc(certs: OpensslCA, weights=(90, 10)) -> str:
    cert, key = certs.files("frontend")
    return f"""# The frontend's sidecar (group frontend): `orders` is 90/10 between v1 and v2, over mTLS.
workers: 1
drain_timeout: 1s
sidecar:
  ipv6: false
  mtls: {{ cert: "{cert}", key: "{key}", ca: "{certs.ca}", mode: strict }}
  services:
    - name: orders
      addresses: [ {VIP} ]
      port: {APP_PORT}
      cluster: orders-v1
      mtls: true
      identities: [ "{ORDERS}" ]
      routes:
        - name: split
          backends: [ {{ cluster: orders-v1, weight: {weights[0]} }}, {{ cluster: orders-v2, weight: {weights[1]} }} ]
clusters:
  - {{ name: orders-v1, endpoints: [ "{SUBNET}.11:{APP_PORT}" ] }}
  - {{ name: orders-v2, endpoints: [ "{SUBNET}.12:{APP_PORT}" ] }}
"""


def orders_doc(certs: OpensslCA) -> str:
    cert, key = certs.files("orders")
    return f"""# The orders sidecars (group orders, both versions): mTLS only, and only the frontend may call.
workers: 1
drain_timeout: 1s
sidecar:
  ipv6: false
  mtls: {{ cert: "{cert}", key: "{key}", ca: "{certs.ca}", mode: strict }}
  inbound:
    - port: {APP_PORT}
      protocol: http
      authorization:
        rules: [ {{ name: frontend-only, from: {{ principals: [ "{FRONTEND}" ] }} }} ]
"""


def intruder_doc(certs: OpensslCA) -> str:
    cert, key = certs.files("intruder")
    return f"""# A workload of the mesh that is not the frontend (group intruder): same CA, another identity.
workers: 1
drain_timeout: 1s
sidecar:
  ipv6: false
  mtls: {{ cert: "{cert}", key: "{key}", ca: "{certs.ca}", mode: strict }}
  services:
    - {{ name: orders, addresses: [ {VIP} ], port: {APP_PORT}, cluster: orders-v1, mtls: true, identities: [ "{ORDERS}" ] }}
clusters:
  - {{ name: orders-v1, endpoints: [ "{SUBNET}.11:{APP_PORT}" ] }}
"""


# -- the mesh ----------------------------------------------------------------------------------------

class Mesh:
    """Build with `up()`, always `down()` (a context manager does both)."""

    def __init__(self, remora: str | Path, workdir: Path, certs: OpensslCA, log=None, tag: str | None = None):
        self.remora = str(Path(remora).resolve())
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.log = log or (lambda msg: None)
        self.tag = tag or f"{os.getpid() % 100000}{random.randrange(10, 100)}"
        self.hub = f"rmh{self.tag}"
        self.pods = pods()
        for p in self.pods.values():
            p.ns = f"rm{p.hub_if}{self.tag}"
        self.token = self.dir / "control-token"
        self.control_url = f"http://{HUB_IP}:{CONTROL_PORT}"
        self.made_ns: list[str] = []
        self.etc_dirs: list[Path] = []
        self.procs: list[Proc] = []
        self.control: Proc | None = None
        self.capture_proc: subprocess.Popen | None = None
        self.capture_path: Path | None = None

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()

    # plumbing
    def sh(self, *args, check=True, timeout=20, input=None) -> subprocess.CompletedProcess:
        r = subprocess.run(list(args), capture_output=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise MeshError(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
        return r

    def in_pod(self, pod: str, *args, app=False, check=True, timeout=20) -> subprocess.CompletedProcess:
        ns = self.hub if pod == "hub" else self.pods[pod].ns
        prefix = [*NOBODY, *APP_ENV] if app else []
        return self.sh("ip", "netns", "exec", ns, *prefix, *args, check=check, timeout=timeout)

    def spawn(self, pod: str, name: str, argv: list[str], app=False, on_line=None) -> Proc:
        ns = self.hub if pod == "hub" else self.pods[pod].ns
        who = [*NOBODY, "--pdeathsig", "KILL", *APP_ENV] if app else ["setpriv", "--pdeathsig", "KILL"]
        p = Proc(name, ["ip", "netns", "exec", ns, *who, *argv], self.dir, on_line=on_line)
        self.procs.append(p)
        return p

    # build
    def up(self):
        self.log(f"namespaces: hub {self.hub}, " + ", ".join(f"{p.name} {p.ns}" for p in self.pods.values()))
        token = os.urandom(16).hex()
        self.token.write_text(token + "\n")
        self.token.chmod(0o600)
        self.sh("ip", "netns", "add", self.hub)
        self.made_ns.append(self.hub)
        self.sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        self.sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        self.sh("ip", "-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        self.sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for p in self.pods.values():
            self.sh("ip", "netns", "add", p.ns)
            self.made_ns.append(p.ns)
            etc = Path("/etc/netns") / p.ns
            etc.mkdir(parents=True, exist_ok=True)
            self.etc_dirs.append(etc)
            # `ip netns exec` bind-mounts this over /etc/hosts: how `orders` resolves in the pod.
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{p.ip} {p.name}\n{VIP} orders\n")
            self.sh("ip", "-n", p.ns, "link", "set", "lo", "up")
            self.sh("ip", "-n", self.hub, "link", "add", p.hub_if, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
            self.sh("ip", "-n", self.hub, "link", "set", p.hub_if, "master", "br0", "up")
            self.sh("ip", "-n", p.ns, "addr", "add", f"{p.ip}/24", "dev", "eth0")
            self.sh("ip", "-n", p.ns, "link", "set", "eth0", "up")
        # Certificates: one identity per workload (orders-v1 and -v2 are both `orders`).
        for w, ident in (("frontend", FRONTEND), ("orders", ORDERS), ("intruder", INTRUDER)):
            self.certs.issue(w, ident)
        # The control plane and its documents.
        self.control = self.spawn("hub", "control", [self.remora, "control", "--state", str(self.dir / "control-state"),
                                                     "--listen", f"{HUB_IP}:{CONTROL_PORT}",
                                                     "--token-file", str(self.token)])
        self.control.wait_line("ready", 20)
        self.apply("frontend", frontend_doc(self.certs))
        self.apply("orders", orders_doc(self.certs))
        self.apply("intruder", intruder_doc(self.certs))
        # Each pod as on Kubernetes: rules (init container), sidecar, then the application.
        for p in self.pods.values():
            self.in_pod(p.name, self.remora, "iptables", "--uid", "0", "--admin-port", str(ADMIN), "--no-ipv6", "--apply")
            sc = self.spawn(p.name, f"sidecar-{p.name}", [
                self.remora, "run", "--sidecar", "--admin", f"127.0.0.1:{ADMIN}", "--control", self.control_url,
                "--token-file", str(self.token), "--node", p.name, "--group", p.group])
            p.procs.append(sc)
        for p in self.pods.values():
            p.procs[0].wait_line("ready", 30)
            self.in_pod(p.name, self.remora, "wait-ready", "--admin", f"127.0.0.1:{ADMIN}", "--timeout", "20s", timeout=30)
            if p.name.startswith("orders-"):
                p.procs.append(self.spawn(p.name, f"app-{p.name}", ["python3", "-c", ORDERS_APP, p.name.split("-")[1]],
                                          app=True))
        for p in self.pods.values():
            if p.name.startswith("orders-"):
                self.wait_port(p.name, "127.0.0.1", APP_PORT)
        self.log("mesh up: control, 4 sidecars, orders-v1 and orders-v2 serving")

    def wait_port(self, pod: str, host: str, port: int, timeout: float = 15):
        code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
        deadline = time.monotonic() + timeout
        while self.in_pod(pod, "python3", "-c", code, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise MeshError(f"{host}:{port} in {pod} never listened")
            time.sleep(0.1)

    def down(self):
        if self.capture_proc is not None and self.capture_proc.poll() is None:
            self.capture_proc.kill()
            self.capture_proc.wait(5)
        for p in reversed(self.procs):
            try:
                p.stop(timeout=5)
            except Exception:   # noqa: BLE001 - keep tearing down
                p.proc.kill()
        for ns in reversed(self.made_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.made_ns, self.etc_dirs, self.procs = [], [], []

    def left_behind(self) -> list[str]:
        names = [self.hub] + [p.ns for p in self.pods.values()]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True).stdout.decode().split()
        return [n for n in names if n in listed] + [str(Path("/etc/netns") / n) for n in names
                                                   if (Path("/etc/netns") / n).exists()]

    # the control plane
    def ctl(self, *args, check=True) -> subprocess.CompletedProcess:
        return self.in_pod("hub", self.remora, "ctl", "--control", self.control_url, "--token-file", str(self.token),
                           *args, check=check, timeout=30)

    def apply(self, group: str, doc: str) -> int:
        f = self.dir / f"{group}-{time.monotonic_ns()}.yaml"
        f.write_text(doc)
        out = self.ctl("apply", group, str(f)).stdout.decode()
        return int(out.split()[-1])

    def split(self, v1: int, v2: int) -> int:
        """`remora ctl split frontend split orders-v1=V1 orders-v2=V2`: the new version."""
        out = self.ctl("split", "frontend", "split", f"orders-v1={v1}", f"orders-v2={v2}").stdout.decode()
        return int(out.split()[-1])

    # the sidecars
    def admin(self, pod: str, path: str) -> str:
        return self.in_pod(pod, "curl", "-s", "--noproxy", "*", "--max-time", "5",
                           f"http://127.0.0.1:{ADMIN}{path}").stdout.decode()

    def stats(self, pod: str) -> dict[str, int]:
        out = {}
        for line in self.admin(pod, "/stats").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def certs_served(self, pod: str) -> dict[str, dict]:
        return {c["name"]: c for c in json.loads(self.admin(pod, "/certs"))["certificates"]}

    def wait_version(self, pod: str, version: int, timeout: float = 10) -> float:
        """Waits until the pod's sidecar applied `version`; returns time.time() then."""
        deadline = time.monotonic() + timeout
        while self.stats(pod).get("control.version", 0) < version:
            if time.monotonic() > deadline:
                raise MeshError(f"{pod} did not apply version {version} in {timeout}s")
            time.sleep(0.05)
        return time.time()

    # the applications
    def client(self, pod: str, url: str = f"http://orders:{APP_PORT}/", count: int = 100, concurrency: int = 4,
               rate: float = 0) -> Load:
        load = Load(None)   # type: ignore[arg-type]
        load.proc = self.spawn(pod, f"client-{pod}-{len(self.procs)}",
                               ["python3", "-c", CLIENT_APP, url, str(count), str(concurrency), str(rate)],
                               app=True, on_line=load.add)
        return load

    # the wire
    def start_capture(self):
        """tcpdump on the bridge (every packet between the pods), written by the driver (`-w -`)."""
        self.capture_path = self.dir / "bridge.pcap"
        out = open(self.capture_path, "wb")
        self.capture_proc = subprocess.Popen(["ip", "netns", "exec", self.hub, "tcpdump", "-i", "br0", "-n", "-U",
                                              "-s", "0", "-w", "-", "tcp"],
                                             stdout=out, stderr=open(self.dir / "tcpdump.stderr", "wb"))
        out.close()
        deadline = time.monotonic() + 10
        while b"listening on" not in (self.dir / "tcpdump.stderr").read_bytes():
            if self.capture_proc.poll() is not None or time.monotonic() > deadline:
                raise MeshError("tcpdump did not start: " + (self.dir / "tcpdump.stderr").read_text(errors="replace"))
            time.sleep(0.05)

    def stop_capture(self) -> list["Flow"]:
        self.capture_proc.send_signal(signal.SIGINT)
        try:
            self.capture_proc.wait(10)
        except subprocess.TimeoutExpired:
            self.capture_proc.kill()
            self.capture_proc.wait(5)
        return flows(self.capture_path.read_bytes())


# -- reading the capture (libpcap format, Ethernet, IPv4, TCP) -------------------------------------

@dataclass
class Flow:
    client: tuple[str, int]
    server: tuple[str, int]
    to_server: bytes = b""      # payload bytes in order of capture (retransmissions included)
    to_client: bytes = b""

    @property
    def tls(self) -> bool:
        """The client's first bytes are a TLS handshake record (ClientHello)."""
        return self.to_server[:1] == b"\x16" and self.to_server[1:2] == b"\x03" and self.to_server[5:6] == b"\x01"

    def plaintext_http(self) -> bool:
        return any(m in self.to_server or m in self.to_client for m in (b"HTTP/1.1", b"HTTP/1.0", b"GET /"))


def flows(pcap: bytes) -> list[Flow]:
    import struct
    if len(pcap) < 24:
        return []
    magic = pcap[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", pcap[20:24])[0]
    if linktype != 1:
        raise MeshError(f"capture link type {linktype}, expected Ethernet")
    current: dict[tuple, Flow] = {}     # the connection a 4-tuple belongs to now (a SYN starts a new one)
    every: list[Flow] = []
    off = 24
    while off + 16 <= len(pcap):
        _, _, incl, _ = struct.unpack(endian + "IIII", pcap[off:off + 16])
        pkt = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 14 + 20 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack(">H", ip[2:4])[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total] if total else ip[ihl:]     # 0: a segmentation-offload packet
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack(">HH", tcp[:4])
        flags = tcp[13]
        payload = tcp[(tcp[12] >> 4) * 4:]
        a, b = (src, sport), (dst, dport)
        key = tuple(sorted((a, b)))
        f = current.get(key)
        if (flags & 0x02 and not flags & 0x10) or f is None:   # a SYN (a is the client), or joined late
            client = a if flags & 0x02 or dport < sport else b
            f = current[key] = Flow(client, b if client == a else a)
            every.append(f)
        if payload:
            if a == f.client:
                f.to_server += payload
            else:
                f.to_client += payload
    return every


# -- the demo ---------------------------------------------------------------------------------------

def counts(results: list[Result]) -> str:
    ok = [r for r in results if r.ok]
    v1, v2 = sum(r.version == "v1" for r in ok), sum(r.version == "v2" for r in ok)
    failed = len(results) - len(ok)
    share = f"{100 * v2 / len(ok):.1f} % v2" if ok else "-"
    return f"{len(results)} requests: v1 {v1}, v2 {v2} ({share}), failed {failed}"


def main() -> int:
    ap = argparse.ArgumentParser(description="A Remora mesh in network namespaces, until Ctrl-C (make mesh-demo).")
    ap.add_argument("--remora", default=os.environ.get("REMORA_BIN", str(ROOT / ".build" / "release" / "remora")))
    ap.add_argument("--check", action="store_true", help="only say whether this machine can run it (exit 0: yes)")
    ap.add_argument("--rate", type=float, default=50, help="the frontend's requests per second (default 50)")
    a = ap.parse_args()
    why = unavailable()
    if why:
        print(f"mesh-demo: cannot run here: {why}.", file=sys.stderr)
        print("  It needs root, `ip netns` and iptables inside network namespaces (a VM or a privileged\n"
              "  container: `sudo make mesh-demo`). Without them, `make demo` runs Remora with demo\n"
              "  backends on 127.0.0.1, and docs/sidecar.md shows the sidecar set-up step by step.", file=sys.stderr)
        return 2
    if a.check:
        return 0
    if not os.access(a.remora, os.X_OK):
        print(f"mesh-demo: no remora binary at {a.remora} (make build, or --remora PATH)", file=sys.stderr)
        return 2
    work = Path(f"/tmp/remora-mesh-demo-{os.getpid()}")
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started with SIGINT ignored (a background job)

    def say(msg: str):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    mesh = Mesh(a.remora, work, OpensslCA(work / "pki"), log=say)
    try:
        say("building the mesh (network namespaces, a bridge, remora control, 4 sidecars, 2 applications)")
        mesh.up()
        for p in mesh.pods.values():
            say(f"  pod {p.name:9} {p.ip:13} ns {p.ns:14} sidecar group {p.group:8} identity {p.identity}")
        say(f"  `orders` is {VIP} in every pod's /etc/hosts; nothing has that address, the frontend's sidecar knows it")
        say("")
        say("1. the frontend application calls http://orders:8080/ (urllib, no proxy settings, uid nobody)")
        load = mesh.client("frontend", count=300, concurrency=4)
        res = load.finish(120)
        say(f"   90/10 split from the control plane: {counts(res)}")
        xfcc = next((r.xfcc for r in res if r.ok), "")
        say(f"   orders saw the caller's identity (x-forwarded-client-cert): {xfcc}")
        fs, o1 = mesh.stats("frontend"), mesh.stats("orders-v1")
        say(f"   TLS handshakes: frontend -> orders-v1 {fs.get('cluster.orders-v1.ssl_handshake', 0)}, "
            f"-> orders-v2 {fs.get('cluster.orders-v2.ssl_handshake', 0)}; orders-v1 inbound "
            f"{o1.get('listener.sidecar_inbound.ssl_handshake', 0)}, requests allowed by its rule "
            f"{o1.get('listener.inbound_8080.rbac_allowed', 0)}")
        say("")
        say("2. the intruder (a mesh identity the orders rule does not name) calls the same service")
        bad = mesh.client("intruder", count=1, concurrency=1).finish(30)
        say(f"   through its sidecar, over mTLS: {bad[0].status or bad[0].version} (refused by the orders sidecar's rule)")
        bad = mesh.client("intruder", url=f"http://{SUBNET}.11:{APP_PORT}/", count=1, concurrency=1).finish(30)
        say(f"   straight to orders-v1's address in plaintext: {bad[0].version.split(':')[0]} "
            "(strict mTLS: no handshake, no HTTP answer at all)")
        say("")
        say("3. `remora ctl split frontend split orders-v1=50 orders-v2=50`, under load")
        load = mesh.client("frontend", count=0, concurrency=4, rate=a.rate)
        time.sleep(3)
        version = mesh.split(50, 50)
        t = mesh.wait_version("frontend", version)
        say(f"   version {version} applied by the frontend's sidecar")
        time.sleep(4)
        before = [r for r in load.results if r.end < t]
        after = [r for r in load.results if r.start > t]
        say(f"   before: {counts(before)}")
        say(f"   after:  {counts(after)}")
        say("")
        say("4. certificates rotated under the same load (new keys, same identities, files renamed into place)")
        old = cert_serial(mesh.certs.files("orders")[0])
        for w, ident in (("frontend", FRONTEND), ("orders", ORDERS)):
            mesh.certs.issue(w, ident)
        new = cert_serial(mesh.certs.files("orders")[0])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            served = mesh.certs_served("orders-v1").get("listener.sidecar_inbound.certificates[0]", {})
            if norm_serial(str(served.get("serial", ""))) == new:
                break
            time.sleep(0.2)
        say(f"   orders' certificate {old} -> {new}; still serving: {counts(load.results)}")
        say("")
        say("the mesh stays up; a line every 5 s. Try, in another shell:")
        say(f"   sudo ip netns exec {mesh.hub} {a.remora} ctl --control {mesh.control_url} "
            f"--token-file {mesh.token} split frontend split orders-v1=0 orders-v2=100")
        say(f"   sudo ip netns exec {mesh.pods['frontend'].ns} curl -s http://127.0.0.1:{ADMIN}/stats | grep orders")
        say("Ctrl-C tears everything down.")
        seen = len(load.results)
        while not stop["now"]:
            time.sleep(5)
            window = load.results[seen:]
            seen += len(window)
            say(f"   last 5 s: {counts(window)}")
    except KeyboardInterrupt:
        say("stopping (Ctrl-C or SIGTERM): tearing down")
    except MeshError as e:
        say(f"failed: {e}")
        return 1
    finally:
        mesh.down()
        left = mesh.left_behind()
        say("torn down: namespaces deleted, processes ended" + (f"; LEFT BEHIND: {left}" if left else ""))
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
