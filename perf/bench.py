#!/usr/bin/env python3
"""Side-by-side benchmark: Remora vs HAProxy vs nginx vs nghttpx (one worker each). Stdlib only.

Normally started through perf/run.sh (which installs packages, raises the fd limit and
builds Remora if needed). See perf/README.md for what is measured and how to read it.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent
REPO = PERF.parent
OUT = PERF / "out"
ALL_PROXIES = ["remora", "haproxy", "nginx", "nghttpx"]
PEERS = [p for p in ALL_PROXIES if p != "remora"]
TITLES = {"remora": "Remora", "haproxy": "HAProxy", "nginx": "nginx", "nghttpx": "nghttpx"}
# the order they run in; perf/run.sh runs all of them unless --scenarios says otherwise
ALL_SCENARIOS = ["h1", "post", "h2c", "grpc", "large", "churn", "latency", "tcp", "rss"]
# proxies that can take part in a scenario (nghttpx has no plain TCP mode)
SUPPORTS = {"tcp": ["remora", "haproxy", "nginx"]}
POST_BYTES = 16 * 1024          # scenario post: request body size
LARGE_BYTES = 1024 * 1024       # scenario large: response body size
GRPC_PATH = "/pkg.Svc/Method"
# a gRPC message frame: flag 0 (not compressed), 4-byte big-endian length, protobuf bytes
# (field 1, length-delimited string: 0x0a <len> <bytes>)
GRPC_REQUEST = b"\x0a\x05world"
GRPC_RESPONSE = b"\x0a\x05hello"


def grpc_frame(msg):
    return b"\x00" + len(msg).to_bytes(4, "big") + msg
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc helpers

def proc_stat(pid):
    """(ppid, utime+stime ticks) or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def all_ppids():
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                m[int(d)] = st[0]
    return m


def proc_tree(pid):
    """pid and all its descendants (alive)."""
    if pid is None or not os.path.exists("/proc/%d" % pid):
        return []
    ppids = all_ppids()
    tree, frontier = [pid], [pid]
    while frontier:
        nxt = [c for c, p in ppids.items() if p in frontier and c not in tree]
        tree += nxt
        frontier = nxt
    return tree


def cpu_user_sys(pids):
    u = k = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        u += int(rest[11])
        k += int(rest[12])
    return u / CLK_TCK, k / CLK_TCK


def cpu_seconds(pids):
    t = 0
    for p in pids:
        st = proc_stat(p)
        if st:
            t += st[1]
    return t / CLK_TCK


def status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


def mem_snapshot(pids):
    return {
        "rss_kb": sum(status_kb(p, "VmRSS") for p in pids),
        "pss_kb": sum(pss_kb(p) for p in pids),
        "hwm_kb": sum(status_kb(p, "VmHWM") for p in pids),
        "fds": sum(fd_count(p) for p in pids),
        "nprocs": len(pids),
        "threads": sum(len(os.listdir("/proc/%d/task" % p)) for p in pids if os.path.exists("/proc/%d/task" % p)),
    }


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


# --------------------------------------------------------------------------- process management

class Runner:
    def __init__(self, args, outdir):
        self.args = args
        self.outdir = outdir
        self.procs = []
        self.commands = []
        self.pin_ok = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
        self.setpriv = shutil.which("setpriv")

    def record(self, argv, note=None):
        s = " ".join(shlex.quote(a) for a in argv)
        if note:
            s += "    # " + note
        if s not in self.commands:
            self.commands.append(s)

    def pinned(self, cpu, argv):
        if self.pin_ok and cpu is not None:
            return ["taskset", "-c", str(cpu)] + argv
        return argv

    def spawn(self, argv, cpu=None, log_path=None, stdout=None, stdin=subprocess.DEVNULL, note=None):
        full = self.pinned(cpu, argv)
        self.record(full, note)
        if self.setpriv:  # kill the child if this driver dies (even with SIGKILL)
            full = [self.setpriv, "--pdeathsig", "KILL"] + full
        logf = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(full, stdin=stdin, stdout=stdout if stdout is not None else logf,
                             stderr=logf, start_new_session=True)
        if log_path:
            logf.close()
        self.procs.append(p)
        return p

    def run(self, argv, cpu=None, timeout=None, note=None):
        full = self.pinned(cpu, argv)
        self.record(full, note)
        return subprocess.run(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)

    def kill(self, p, grace=5.0):
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # the process group may still hold children (nginx workers) even if the leader exited
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def kill_all(self):
        for p in list(reversed(self.procs)):
            self.kill(p, grace=3.0)


def wait_listening(ports, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited with code %s" % proc.returncode
        if set(ports) <= listening_ports():
            return None
        time.sleep(0.05)
    return "not listening on %s after %.0fs" % (ports, timeout)


# --------------------------------------------------------------------------- backend / sink

class Backend:
    """nginx, one worker: the upstream for every HTTP proxy.

    HTTP/1.1 port: `/` -> tiny 200 (any method; a POST body is read and discarded), `/1m` -> a 1 MiB file.
    h2c port (`listen ... http2`, prior knowledge): `/` -> the same tiny 200; GRPC_PATH -> 200
    `content-type: application/grpc`, one gRPC message frame, trailer `grpc-status: 0`.
    """

    def __init__(self, runner, cpu, nofile):
        self.r = runner
        self.cpu = cpu
        self.dir = runner.outdir / "backend"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.h2_port = free_port()
        self.nofile = nofile
        self.proc = None

    def start(self):
        conf = self.dir / "nginx.conf"
        big = self.dir / "1m.bin"
        big.write_bytes(bytes(range(256)) * (LARGE_BYTES // 256))
        (self.dir / "grpc-response.bin").write_bytes(grpc_frame(GRPC_RESPONSE))
        # `return 200 "..."` takes the gRPC frame's raw bytes (NUL included: nginx strings are length-counted);
        # a static file cannot be used because nginx answers POST to a static file with 405.
        head = f"""# backend: tiny fixed responses (h1 + h2c), a 1 MiB file, a gRPC unary answer
worker_processes 1;
worker_rlimit_nofile {self.nofile};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections {max(1024, self.nofile - 100)}; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {self.dir}/tmp;
    sendfile on;
    server {{
        listen {HOST}:{self.port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
        location = /1m {{ default_type application/octet-stream; alias {big}; }}
    }}
    server {{
        listen {HOST}:{self.h2_port} backlog=4096 http2;
        location / {{ return 200 "ok\\n"; }}
        location = {GRPC_PATH} {{
            default_type application/grpc;
            return 200 \""""
        tail = """\";
            add_trailer grpc-status 0 always;
        }
    }
}
"""
        conf.write_bytes(head.encode() + grpc_frame(GRPC_RESPONSE) + tail.encode())
        self.proc = self.r.spawn(["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                                 cpu=self.cpu, log_path=self.dir / "stderr.log", note="backend")
        err = wait_listening([self.port, self.h2_port], self.proc, 10)
        if err:
            raise RuntimeError("backend nginx failed: %s\n%s" % (err, tail(self.dir / "error.log")))
        log("backend nginx on %s:%d (HTTP/1.1) and :%d (h2c) (cpu %s)" % (HOST, self.port, self.h2_port, self.cpu))

    def pids(self):
        return proc_tree(self.proc.pid) if self.proc else []


# --------------------------------------------------------------------------- proxies

class Proxy:
    name = "?"

    def __init__(self, runner, cpu, nofile):
        self.r = runner
        self.cpu = cpu
        self.nofile = nofile
        self.proc = None
        self.http_port = None
        self.tcp_port = None
        self.dir = None
        self.error = None
        self.instance = 0
        self.h2 = False

    # backend_port: an HTTP listener forwarding to it; sink_port: a TCP listener forwarding to it;
    # h2: the HTTP listener takes h2c (prior knowledge) and the upstream is h2c; valgrind: run under callgrind
    def start(self, backend_port=None, sink_port=None, valgrind=None, tag="", h2=False):
        self.instance += 1
        self.h2 = h2
        self.dir = self.r.outdir / ("%s-%s%d" % (self.name, tag, self.instance))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port() if backend_port else None
        self.tcp_port = free_port() if sink_port else None
        self.backend_port, self.sink_port = backend_port, sink_port
        argv = self.argv(valgrind is not None)
        if valgrind is not None:
            argv = valgrind + argv
        try:
            err = self._launch(argv, 180 if valgrind else 20)
        except Exception as e:  # noqa: BLE001
            err = "%s: %s" % (type(e).__name__, e)
        if err:
            self.error = "%s failed to start: %s" % (self.name, err)
            details = self.diagnostics()
            if details:
                self.error += "\n" + details
            log(self.error)
            self.stop()
            return False
        self.error = None
        ports = [p for p in (self.http_port, self.tcp_port) if p]
        log("%s up (pid %d, ports %s, cpu %s)" % (self.name, self.proc.pid, ports, self.cpu))
        return True

    def _launch(self, argv, timeout):
        self.proc = self.r.spawn(argv, cpu=self.cpu, log_path=self.dir / "output.log", note=self.name)
        return wait_listening([p for p in (self.http_port, self.tcp_port) if p], self.proc, timeout)

    def diagnostics(self):
        return tail(self.dir / "output.log")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def pids(self):
        return proc_tree(self.proc.pid) if self.alive() else []

    def stop(self):
        if self.proc is not None:
            self.r.kill(self.proc)
        self.proc = None


class Remora(Proxy):
    name = "remora"

    def __init__(self, runner, cpu, nofile, binary):
        super().__init__(runner, cpu, nofile)
        self.binary = binary

    def argv(self, under_valgrind):
        conf = self.dir / "remora.yaml"
        lines = ["workers: 1", "listeners:"]
        if self.http_port:
            lines += ["  - name: web",
                      "    address: %s:%d" % (HOST, self.http_port),
                      "    protocol: http",
                      "    routes:",
                      "      - name: all",
                      "        backends: [ { cluster: app } ]"]
        if self.tcp_port:
            lines += ["  - name: bulk",
                      "    address: %s:%d" % (HOST, self.tcp_port),
                      "    protocol: tcp",
                      "    cluster: sink"]
        lines.append("clusters:")
        if self.http_port:
            lines += ["  - name: app", '    endpoints: [ "%s:%d" ]' % (HOST, self.backend_port)]
            if self.h2:
                lines.append("    protocol: http2")
        if self.tcp_port:
            lines += ["  - name: sink", '    endpoints: [ "%s:%d" ]' % (HOST, self.sink_port)]
        conf.write_text("\n".join(lines) + "\n")
        return [self.binary, "run", "--config", str(conf)]

    def _launch(self, argv, timeout):
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            return "binary %s not found / not executable" % self.binary
        if argv[0] == "valgrind":
            # valgrind 3.19 cannot parse the DWARF 5 debug info of Swift binaries ("unhandled dwarf2 abbrev
            # form code 0x25 ... I can't recover"): run a copy without debug info (symbols are kept).
            i = argv.index(self.binary)
            nodebug = self.dir / "remora.nodebug"
            r = self.r.run(["strip", "--strip-debug", "-o", str(nodebug), self.binary], timeout=120,
                           note="valgrind 3.19 cannot read Swift's DWARF 5")
            if r.returncode != 0:
                return "strip failed: " + r.stderr.strip()[:200]
            argv = argv[:i] + [str(nodebug)] + argv[i + 1:]
        self.proc = self.r.spawn(argv, cpu=self.cpu, log_path=self.dir / "stderr.log",
                                 stdout=subprocess.PIPE, note="remora")
        ready = threading.Event()
        listeners = {}
        out_path = self.dir / "stdout.log"
        proc = self.proc

        def reader():
            with open(out_path, "ab") as f:
                for raw in proc.stdout:
                    f.write(raw)
                    f.flush()
                    line = raw.decode(errors="replace").strip()
                    m = re.match(r"listening listener (\S+) (\S+):(\d+)", line)
                    if m:
                        listeners[m.group(1)] = (m.group(2), int(m.group(3)))
                    if line == "ready":
                        ready.set()
            ready.set()  # EOF: wake the waiter

        threading.Thread(target=reader, daemon=True).start()
        ready.wait(timeout)
        if proc.poll() is not None:
            return "exited with code %s before/while starting" % proc.returncode
        if not ready.is_set():
            return "no 'ready' line after %.0fs" % timeout
        # use the addresses Remora reports (they should equal the configured ones)
        if "web" in listeners and self.http_port:
            self.http_port = listeners["web"][1]
        if "bulk" in listeners and self.tcp_port:
            self.tcp_port = listeners["bulk"][1]
        return wait_listening([p for p in (self.http_port, self.tcp_port) if p], proc, 5)

    def diagnostics(self):
        return "\n".join(x for x in (tail(self.dir / "stdout.log", 5), tail(self.dir / "stderr.log")) if x)


class HAProxy(Proxy):
    name = "haproxy"

    def argv(self, under_valgrind):
        conf = self.dir / "haproxy.cfg"
        maxconn = max(4096, self.r.args.conns + 2000)
        text = f"""global
    nbthread 1
    maxconn {maxconn}
    ulimit-n {self.nofile}
    no strict-limits
    # no 'log' line: logging off

defaults
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    timeout http-request 30s
    maxconn {maxconn}
"""
        if self.http_port:
            h2 = " proto h2" if self.h2 else ""
            text += f"""
frontend web
    mode http
    option http-keep-alive
    bind {HOST}:{self.http_port}{h2}
    default_backend app

backend app
    mode http
    option http-keep-alive
    http-reuse always
    server s1 {HOST}:{self.backend_port}{h2}
"""
        if self.tcp_port:
            text += f"""
frontend bulk
    mode tcp
    bind {HOST}:{self.tcp_port}
    default_backend sink

backend sink
    mode tcp
    server s1 {HOST}:{self.sink_port}
"""
        conf.write_text(text)
        return ["haproxy", "-db", "-f", str(conf)]


class Nginx(Proxy):
    name = "nginx"

    def argv(self, under_valgrind):
        conf = self.dir / "nginx.conf"
        text = f"""worker_processes 1;
worker_rlimit_nofile {self.nofile};
daemon off;
{"master_process off;" if under_valgrind else ""}
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
{"load_module " + NGINX_STREAM_MODULE + ";" if self.tcp_port else ""}
events {{ worker_connections {max(1024, self.nofile - 100)}; }}
"""
        if self.http_port and self.h2:
            # nginx has no HTTP/2 upstream for proxy_pass; grpc_pass is its h2c upstream (one stream per
            # upstream connection, hence a keep-alive pool larger than the 16 x 32 concurrent streams)
            text += f"""
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {self.dir}/tmp;
    upstream app {{
        server {HOST}:{self.backend_port};
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {HOST}:{self.http_port} backlog=4096 http2;
        location / {{
            grpc_pass grpc://app;
        }}
    }}
}}
"""
        elif self.http_port:
            # client_body_buffer_size / proxy_max_temp_file_size: keep 16 KiB request bodies and 1 MiB
            # responses in memory (the defaults, 8k and 1024m, write them to temp files on disk)
            text += f"""
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {self.dir}/tmp;
    proxy_temp_path {self.dir}/tmp;
    client_body_buffer_size 64k;
    proxy_max_temp_file_size 0;
    upstream app {{
        server {HOST}:{self.backend_port};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {HOST}:{self.http_port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        if self.tcp_port:
            text += f"""
stream {{
    upstream sink {{ server {HOST}:{self.sink_port}; }}
    server {{
        listen {HOST}:{self.tcp_port} backlog=4096;
        proxy_pass sink;
    }}
}}
"""
        conf.write_text(text)
        return ["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")]

    def _launch(self, argv, timeout):
        if self.tcp_port and not os.path.exists(NGINX_STREAM_MODULE):
            return "nginx stream module missing (%s; apt-get install libnginx-mod-stream)" % NGINX_STREAM_MODULE
        return super()._launch(argv, timeout)

    def diagnostics(self):
        return "\n".join(x for x in (tail(self.dir / "output.log", 5), tail(self.dir / "error.log")) if x)


class Nghttpx(Proxy):
    """nghttpx (Debian nghttp2-proxy): HTTP/1.1 + h2c frontend, HTTP/1.1 or h2c backend; master + worker process."""
    name = "nghttpx"

    def argv(self, under_valgrind):
        conf = self.dir / "nghttpx.conf"
        conf.write_text("# empty: every option is on the command line (keeps /etc/nghttpx/nghttpx.conf out)\n")
        backend = "%s,%d" % (HOST, self.backend_port) + (";;proto=h2" if self.h2 else "")
        argv = ["nghttpx", "--conf=%s" % conf, "--frontend=%s,%d;no-tls" % (HOST, self.http_port),
                "--backend=" + backend, "--workers=1"]
        if under_valgrind:
            argv.append("--single-process")
        return argv

    def _launch(self, argv, timeout):
        if self.tcp_port:
            return "nghttpx has no plain TCP mode"
        return super()._launch(argv, timeout)


# --------------------------------------------------------------------------- tools output parsing

def parse_latency_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    if not m:
        return None
    v = float(m.group(1))
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["lat_avg_ms"] = parse_latency_ms(m.group(1))
        r["lat_max_ms"] = parse_latency_ms(m.group(3))
    for pct in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, out, re.M)
        if m:
            r["lat_p%s_ms" % pct] = parse_latency_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def parse_h2load(out):
    """h2load's summary: req/s, succeeded requests (= "requests"), failures, status codes, mean latency."""
    r = {}
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    r["rps"] = float(m.group(3)) if m else None
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        total, started, done, ok, failed, errored, tmo = (int(x) for x in m.groups())
        r["requests"] = ok
        r["failed"] = failed
        r["failed_detail"] = "%d errored, %d timeout" % (errored, tmo)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["status"] = {k: int(v) for k, v in zip(("2xx", "3xx", "4xx", "5xx"), m.groups())}
        r["non2xx"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["lat_mean_ms"] = parse_latency_ms(m.group(3))
        r["lat_max_ms"] = parse_latency_ms(m.group(2))
    return r


def latency_percentiles(path):
    """Percentiles of h2load --log-file (start µs, status, µs until the end of the response)."""
    vals = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].strip().startswith("2"):
                    vals.append(int(parts[2]))
    except (OSError, ValueError):
        return {}
    if not vals:
        return {}
    vals.sort()
    n = len(vals)

    def q(p):
        return vals[min(n - 1, max(0, int(round(p * n + 0.5)) - 1))] / 1000.0  # nearest rank, ms

    return {"lat_samples": n, "lat_p50_ms": q(0.50), "lat_p90_ms": q(0.90), "lat_p99_ms": q(0.99),
            "lat_p999_ms": q(0.999), "lat_max_ms": vals[-1] / 1000.0}


def tcp_active_opens():
    """System-wide TCP connect() count (Tcp ActiveOpens in /proc/net/snmp); loopback includes every process."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        return int(rows[1][rows[0].index("ActiveOpens")])
    except (OSError, ValueError, IndexError):
        return None


def cpu_times():
    """{cpu index: (busy_ticks, total_ticks)} from /proc/stat (busy includes irq/softirq/steal)."""
    m = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                v = [int(x) for x in parts[1:9]]
                idle = v[3] + v[4]
                m[int(parts[0][3:])] = (sum(v) - idle, sum(v), v[7], v)
    return m


def cpu_busy(t0, t1):
    """{cpu: (busy fraction, steal fraction)} between two cpu_times() snapshots."""
    out = {}
    for c in t1:
        if c in t0:
            tot = t1[c][1] - t0[c][1]
            if tot > 0:
                cols = {n: round((b - a) / tot, 3) for n, a, b in zip(
                    ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), t0[c][3], t1[c][3])}
                out[c] = ((t1[c][0] - t0[c][0]) / tot, (t1[c][2] - t0[c][2]) / tot, cols)
    return out


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def task_cpu_total():
    """user+nice+system ticks over all CPUs (excludes idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:4]]
    return sum(v) / CLK_TCK


class CpuWindow:
    """CPU accounting over one measured run.

    foreign_cores: CPU used by processes that are NOT this benchmark (others' builds/tests on a
    shared machine) in cores, = all task CPU time - CPU of this driver and all its descendants.
    """

    def __init__(self):
        self.me = os.getpid()

    def ours(self):
        return cpu_seconds(proc_tree(self.me)[1:]) + children_cpu() + self_cpu()

    def start(self):
        self.t0, self.s0, self.all0, self.our0 = time.monotonic(), cpu_times(), task_cpu_total(), self.ours()
        return self

    def stop(self):
        wall = time.monotonic() - self.t0
        s1, all1, our1 = cpu_times(), task_cpu_total(), self.ours()
        busy = cpu_busy(self.s0, s1)
        return {
            "wall_s": wall,
            "busy": busy,
            "foreign_cores": max(0.0, ((all1 - self.all0) - (our1 - self.our0)) / wall) if wall > 0 else None,
        }


def wait_quiet(max_wait, threshold, sample=1.0):
    """Wait (up to max_wait s) until other processes use < threshold cores. Returns seconds waited."""
    t0 = time.monotonic()
    while True:
        w = CpuWindow().start()
        time.sleep(sample)
        f = w.stop()["foreign_cores"] or 0
        waited = time.monotonic() - t0
        if f < threshold or waited >= max_wait:
            return waited, f


# --------------------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, args):
        self.args = args
        self.stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.outdir = OUT / ("run-" + self.stamp)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.r = Runner(args, self.outdir)
        self.nofile = raise_nofile()
        self.results = {"scenarios": {}, "errors": []}
        self.backend = None
        self.t_start = time.monotonic()

    def err(self, msg):
        log("ERROR: " + msg)
        self.results["errors"].append(msg)

    def make_proxy(self, name):
        a = self.args
        if name == "remora":
            return Remora(self.r, a.proxy_cpu, self.nofile, a.remora_bin)
        if name == "haproxy":
            return HAProxy(self.r, a.proxy_cpu, self.nofile)
        if name == "nghttpx":
            return Nghttpx(self.r, a.proxy_cpu, self.nofile)
        return Nginx(self.r, a.proxy_cpu, self.nofile)

    def ensure_backend(self):
        if self.backend is None:
            self.backend = Backend(self.r, self.args.backend_cpu, self.nofile)
            self.backend.start()
        return self.backend

    @staticmethod
    def order(names, rnd):
        k = rnd % len(names)
        return names[k:] + names[:k]

    def proxies_for(self, sc):
        return [n for n in self.args.only if n in SUPPORTS.get(sc, ALL_PROXIES)]

    # ---------------- HTTP scenarios: h1 (A), post, h2c, grpc, large, churn, latency
    # scenario -> (load generator, h2c listener + upstream?, one-line description)
    HTTP = {
        "h1": ("wrk", False, "HTTP/1.1 keep-alive, small responses"),
        "post": ("wrk", False, "HTTP/1.1 keep-alive, 16 KiB POST bodies"),
        "h2c": ("h2load", True, "h2c multiplexed, small responses, h2c backend"),
        "grpc": ("h2load", True, "gRPC unary over h2c, h2c backend"),
        "large": ("h2load", False, "HTTP/1.1 keep-alive, 1 MiB responses"),
        "churn": ("wrk", False, "HTTP/1.1, a new connection per request (`Connection: close`)"),
        "latency": ("h2load", False, "HTTP/1.1 latency at a fixed moderate rate"),
    }

    def duration_for(self, sc):
        return self.args.duration if sc == "h1" else self.args.short_duration

    def load_argv(self, sc, port, seconds, rnd_tag=None, count=None):
        """(argv, parser) of the load generator for scenario sc against 127.0.0.1:port."""
        a = self.args
        url = "http://%s:%d/" % (HOST, port)
        if sc == "h1":
            return ["wrk", "-t1", "-c%d" % a.connections, "-d%ds" % seconds, "--latency", url], parse_wrk
        if sc == "post":
            return ["wrk", "-t1", "-c%d" % a.connections, "-d%ds" % seconds, "--latency", "-s", str(self.post_lua), url], parse_wrk
        if sc == "large":
            # request-count-bounded, not time-bounded: a time-bounded client (wrk -d, h2load -D) closes its connections
            # in the middle of 1 MiB responses when the time is up; that is tested separately (abort_check)
            n = count or a.large_connections * 8
            return ["h2load", "--h1", "-t1", "-c%d" % a.large_connections, "-n%d" % n, url + "1m"], parse_h2load
        if sc == "churn":
            return ["wrk", "-t1", "-c%d" % a.churn_connections, "-d%ds" % seconds, "--latency",
                    "-H", "Connection: close", url], parse_wrk
        bound = ["-n%d" % count] if count is not None else ["-D", str(seconds)]   # h2c, grpc: requests or seconds
        if sc == "h2c":
            return ["h2load", "-t1", "-c%d" % a.h2_clients, "-m%d" % a.h2_streams] + bound + [url], parse_h2load
        if sc == "grpc":
            return ["h2load", "-t1", "-c%d" % a.h2_clients, "-m%d" % a.h2_streams] + bound + [
                    "-d", str(self.grpc_req), "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "http://%s:%d%s" % (HOST, port, GRPC_PATH)], parse_h2load
        if sc == "latency":
            argv = ["h2load", "--h1", "-t1", "-c%d" % a.latency_clients, "--rps=%g" % (a.latency_rate / a.latency_clients),
                    "-D", str(seconds)]
            if rnd_tag:
                argv.append("--log-file=%s" % (self.outdir / ("latency-%s.tsv" % rnd_tag)))
            return argv + [url], parse_h2load
        raise ValueError(sc)

    def scenario_h1(self):
        self.http_scenario("h1")

    def scenario_post(self):
        self.http_scenario("post")

    def scenario_h2c(self):
        self.http_scenario("h2c")

    def scenario_grpc(self):
        self.http_scenario("grpc")

    def scenario_large(self):
        self.http_scenario("large")

    def scenario_churn(self):
        self.http_scenario("churn")

    def scenario_latency(self):
        self.http_scenario("latency")

    def http_scenario(self, sc):
        a = self.args
        tool, h2, title = self.HTTP[sc]
        if not shutil.which(tool):
            self.err("%s: %s not installed; scenario skipped" % (sc, tool))
            return
        be = self.ensure_backend()
        bport = be.h2_port if h2 else be.port
        if sc == "post":
            self.post_lua = self.outdir / "post16k.lua"
            self.post_lua.write_text('-- wrk: every request is a POST with a %d-byte body\n'
                                     'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n'
                                     'wrk.headers["Content-Type"] = "application/octet-stream"\n' % (POST_BYTES, POST_BYTES))
        if sc == "grpc":
            self.grpc_req = self.outdir / "grpc-request.bin"
            self.grpc_req.write_bytes(grpc_frame(GRPC_REQUEST))
        dur = self.duration_for(sc)
        proxies = {}
        argv0, _ = self.load_argv(sc, 0, dur)
        shown = [("-nN" if sc == "large" and x.startswith("-n") else x) for x in argv0[:-1] if not x.startswith("--log-file")]
        res = {"runs": [], "failed": {}, "title": title, "params": {
            "load": " ".join(shlex.quote(x) for x in shown),
            "duration_s": dur, "warmup_s": a.warmup, "h2c": h2,
            "rounds": a.rounds, "load_cpu": a.load_cpu, "proxy_cpu": a.proxy_cpu, "backend_cpu": a.backend_cpu}}
        if sc == "latency":
            res["params"]["rate"] = a.latency_rate
        if sc == "large":
            res["params"]["body_bytes"] = LARGE_BYTES
        self.results["scenarios"][sc] = res  # early, so an interrupted run still reports what it has
        for name in self.proxies_for(sc):
            p = self.make_proxy(name)
            if p.start(backend_port=bport, tag=sc + "-", h2=h2):
                proxies[name] = p
            else:
                res["failed"][name] = p.error
                self.err("%s: %s" % (sc, p.error))
        if sc == "grpc":
            res["checks"] = {}
            for name in list(proxies) + ["direct"]:
                port = be.h2_port if name == "direct" else proxies[name].http_port
                c = res["checks"][name] = self.grpc_check(name, port)
                log("grpc check %-8s %s" % (name, c["summary"]))
                if not c["ok"]:
                    self.err("grpc: %s: a gRPC client does not accept the answer: %s" % (name, c["summary"]))
        names = list(proxies) + (["direct"] if a.direct or sc == "latency" else [])
        for rnd in range(a.rounds):
            for name in self.order(names, rnd):
                if name == "direct":
                    port = bport
                else:
                    p = proxies[name]
                    if not p.alive():
                        msg = "%s died before round %d (%s): %s" % (name, rnd + 1, exit_desc(p.proc), p.diagnostics())
                        self.err("%s: %s" % (sc, msg))
                        res["failed"].setdefault(name, msg)
                        if not p.start(backend_port=bport, tag=sc + "-", h2=h2):
                            continue
                    port = p.http_port
                run = self.retry_noisy(res, lambda: self.load_run(sc, name, port, proxies.get(name), rnd))
                res["runs"].append(run)
                extra = ""
                if run.get("cpu_us_per_req") is not None:
                    extra = ", proxy CPU %.1f us/req (%.0f%% of a core)" % (run["cpu_us_per_req"], 100 * run["proxy_cpu_util"])
                if sc == "large" and run.get("gbps") is not None:
                    extra = ", %.2f Gbit/s" % run["gbps"] + extra
                if sc == "latency" and run.get("lat_p99_ms") is not None:
                    extra = ", p50 %.3f ms p99 %.3f ms" % (run["lat_p50_ms"], run["lat_p99_ms"]) + extra
                log("%s round %d %-8s %10.0f req/s%s%s" % (sc, rnd + 1, name, run.get("rps") or 0, extra,
                                                           ", ERRORS: " + run["error"] if run.get("error") else ""))
        if sc == "large":
            res["abort_check"] = {}
            for name, p in proxies.items():
                c = res["abort_check"][name] = self.abort_check(p)
                log("large abort check %-8s %s" % (name, c))
                if not c.startswith("survived"):
                    self.err("large: %s %s" % (name, c))
        if sc == "h1" and a.syscalls and proxies:
            if shutil.which("perf"):
                res["syscalls"] = {}
                for name, p in proxies.items():
                    if p.alive():
                        scn = res["syscalls"][name] = self.syscall_pass(p)
                        log("syscalls %-8s %s" % (name, ("%.2f syscalls/req, %.3f context switches/req" % (
                            scn["syscalls_per_req"], scn.get("cs_per_req") or 0)) if scn.get("syscalls_per_req") else scn.get("error")))
            else:
                self.err("h1: perf (linux-perf) not installed; syscall counts skipped")
        for name, p in proxies.items():
            if p.alive():
                res.setdefault("mem_after_load", {})[name] = mem_snapshot(p.pids())
            else:
                self.err("%s: %s was not alive at the end (%s): %s" % (sc, name, exit_desc(p.proc), p.diagnostics()))
            p.stop()

    def abort_check(self, p, tries=5):
        """Clients that go away in the middle of a 1 MiB response (perf/abort_check.py): does the proxy survive?"""
        if not p.alive():
            return "not running before the check (%s)" % exit_desc(p.proc)
        try:
            r = self.r.run([sys.executable, str(PERF / "abort_check.py"), HOST, str(p.http_port), "/1m",
                            "--tries", str(tries)], cpu=self.args.load_cpu, timeout=60,
                           note="clients closing in the middle of a 1 MiB response")
            detail = r.stdout.strip()
        except subprocess.TimeoutExpired:
            detail = "abort_check.py timed out"
        time.sleep(0.5)
        if p.alive():
            return "survived %d clients closing mid-response (%s)" % (tries, detail)
        return "DIED when a client closed its connection in the middle of a 1 MiB response (%s; %s): %s" % (
            exit_desc(p.proc), detail, p.diagnostics().replace("\n", " / ")[:200])

    def grpc_check(self, name, port):
        """One gRPC call through `name` before the timed runs: nghttp -v (is grpc-status a real trailer after the
        DATA?) and, if Python grpcio is importable, a grpcio unary call (does a gRPC client accept it?)."""
        c = {"ok": True}
        url = "http://%s:%d%s" % (HOST, port, GRPC_PATH)
        notes = []
        if shutil.which("nghttp"):
            try:
                r = self.r.run(["nghttp", "-v", "-d", str(self.grpc_req), "-H", "content-type: application/grpc",
                                "-H", "te: trailers", url], timeout=15, note="gRPC check (nghttp2 client)")
                v = r.stdout
                c["nghttp_exit"] = r.returncode
                st = re.search(r"recv \(stream_id=\d+\) :status: (\d+)", v)
                gs = re.search(r"recv \(stream_id=\d+\) grpc-status: (\d+)", v)
                data = v.find("recv DATA frame")
                c["nghttp_status"] = st.group(1) if st else None
                c["nghttp_grpc_status"] = gs.group(1) if gs else None
                c["nghttp_trailer_after_data"] = bool(gs) and 0 <= data < gs.start()
                good = c["nghttp_status"] == "200" and c["nghttp_grpc_status"] == "0" and c["nghttp_trailer_after_data"]
                notes.append("nghttp: :status %s, grpc-status %s %s" % (
                    c["nghttp_status"], c["nghttp_grpc_status"],
                    "in trailers after DATA" if c["nghttp_trailer_after_data"] else "NOT in trailers after DATA"))
                c["ok"] &= good
            except subprocess.TimeoutExpired:
                c["ok"] = False
                notes.append("nghttp timed out")
        r = self.r.run([sys.executable, str(PERF / "grpc_check.py"), "%s:%d" % (HOST, port), GRPC_PATH,
                        GRPC_REQUEST.hex(), GRPC_RESPONSE.hex()], timeout=30, note="gRPC check (Python grpcio client)")
        try:
            g = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            g = {"ok": False, "error": (r.stdout + r.stderr)[-300:]}
        c["grpcio"] = g
        if g.get("skipped"):
            notes.append("grpcio: not installed, skipped")
        else:
            notes.append("grpcio %s: %s%s" % (g.get("grpcio", "?"), g.get("code", g.get("error", "?")),
                                               ", response message as sent by the backend" if g.get("ok") else
                                               " " + (g.get("details") or g.get("response_hex") or "")))
            c["ok"] &= bool(g.get("ok"))
        c["summary"] = "; ".join(notes)
        return c

    def load_run(self, sc, name, port, proxy, rnd):
        a = self.args
        dur = self.duration_for(sc)
        tag = "%s-r%d-%s" % (name, rnd + 1, int(time.time() * 1000) % 100000)
        run = {"proxy": name, "round": rnd + 1}
        count = None
        try:
            if a.warmup > 0 or sc == "large":
                warm, wparse = self.load_argv(sc, port, max(1, a.warmup))
                w0 = self.r.run(warm, cpu=a.load_cpu, timeout=a.warmup + 60, note="warm-up")
                if sc == "large":  # size the measured run (N requests) to take about `dur` seconds at the warm-up rate
                    wr = wparse(w0.stdout).get("rps") or 0
                    count = int(min(max(wr * dur, a.large_connections * 16), 1e6))
                    run["count"] = count
            argv, parse = self.load_argv(sc, port, dur, rnd_tag=tag if sc == "latency" else None, count=count)
            ppids = proxy.pids() if proxy else []
            bpids = self.backend.pids()
            self.quiet(run)
            (u0, k0), b0, l0, o0 = cpu_user_sys(ppids), cpu_seconds(bpids), children_cpu(), tcp_active_opens()
            w = CpuWindow().start()
            out = self.r.run(argv, cpu=a.load_cpu, timeout=dur * (4 if sc == "large" else 1) + 60)
            (u1, k1), b1, l1, o1 = cpu_user_sys(ppids), cpu_seconds(bpids), children_cpu(), tcp_active_opens()
            c0, c1 = u0 + k0, u1 + k1
            win = w.stop()
            wall = win["wall_s"]
            self.window(run, win)
        except subprocess.TimeoutExpired:
            run["error"] = "%s timed out" % argv[0]
            return run
        run.update(parse(out.stdout))
        run["wall_s"] = wall
        run["backend_cpu_util"] = (b1 - b0) / wall
        run["loadgen_cpu_util"] = (l1 - l0) / wall
        if o0 is not None and o1 is not None:
            run["tcp_active_opens"] = o1 - o0
            if run.get("requests"):
                run["tcp_opens_per_req"] = (o1 - o0) / run["requests"]
        if sc == "large" and run.get("rps"):
            run["gbps"] = run["rps"] * LARGE_BYTES * 8 / 1e9
        if sc == "latency":
            logf = self.outdir / ("latency-%s.tsv" % tag)
            run.update(latency_percentiles(logf))
            try:
                logf.unlink()  # ~1 MB per run; the percentiles are kept
            except OSError:
                pass
        if proxy:
            cpu = c1 - c0
            run["proxy_cpu_s"] = cpu
            run["proxy_cpu_util"] = cpu / wall
            run["proxy_user_s"], run["proxy_sys_s"] = u1 - u0, k1 - k0
            if run.get("requests") and cpu > 0:
                run["cpu_us_per_req"] = cpu * 1e6 / run["requests"]
                run["user_us_per_req"] = (u1 - u0) * 1e6 / run["requests"]
                run["sys_us_per_req"] = (k1 - k0) * 1e6 / run["requests"]
                run["cpu_s_per_100k"] = cpu * 1e5 / run["requests"]
                run["req_per_core_s"] = run["requests"] / cpu
                if sc == "large":
                    gb = run["requests"] * LARGE_BYTES / 1e9
                    run["cpu_s_per_gb"] = cpu / gb
                    run["gbps_per_core"] = gb * 8 / cpu
        problems = []
        if out.returncode != 0:
            problems.append("%s exit %d: %s" % (argv[0], out.returncode, out.stderr.strip()[:200]))
        if not run.get("requests"):
            problems.append("no requests completed")
        if run.get("socket_errors"):
            problems.append("%d socket errors" % run["socket_errors"])
        if run.get("failed"):
            problems.append("%d requests failed (%s)" % (run["failed"], run.get("failed_detail", "")))
        if run.get("non2xx"):
            problems.append("%d non-2xx responses" % run["non2xx"])
        if sc == "latency" and run.get("rps") and run["rps"] < 0.95 * a.latency_rate:
            problems.append("rate %.0f req/s below the target %d" % (run["rps"], a.latency_rate))
        if problems:
            run["error"] = "; ".join(problems)
        run[os.path.basename(argv[0]) + "_output"] = out.stdout
        return run

    SYSCALLS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "epoll_wait",
                "epoll_pwait", "epoll_ctl", "accept4", "close", "shutdown", "futex", "io_uring_enter", "splice",
                "getsockopt", "setsockopt", "ioctl", "mmap", "munmap", "madvise", "brk", "clock_gettime", "getpid", "poll"]

    def syscall_pass(self, p):
        """One extra wrk run with `perf stat` counting the proxy's syscalls (not part of the timed rounds)."""
        a = self.args
        events = ["raw_syscalls:sys_enter", "context-switches"]
        for d in ("/sys/kernel/tracing/events/syscalls", "/sys/kernel/debug/tracing/events/syscalls"):
            if os.path.isdir(d):
                events += ["syscalls:sys_enter_" + n for n in self.SYSCALLS if os.path.isdir(os.path.join(d, "sys_enter_" + n))]
                break
        pids = p.pids()
        outf = p.dir / "perf-stat.csv"
        perf = self.r.spawn(["perf", "stat", "-x,", "-o", str(outf), "-e", ",".join(events), "-p", ",".join(map(str, pids))],
                            cpu=a.load_cpu, log_path=p.dir / "perf-stat.log", note="syscall count pass (separate from timed runs)")
        r = {"events": events}
        try:
            time.sleep(0.5)
            if perf.poll() is not None:
                r["error"] = "perf stat exited: " + tail(p.dir / "perf-stat.log", 3)
                return r
            d = min(a.duration, 5)
            out = self.r.run(["wrk", "-t1", "-c%d" % a.connections, "-d%ds" % d, "http://%s:%d/" % (HOST, p.http_port)],
                             cpu=a.load_cpu, timeout=d + 60)
            w = parse_wrk(out.stdout)
        finally:
            if perf.poll() is None:
                os.killpg(perf.pid, signal.SIGINT)
            try:
                perf.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.r.kill(perf, grace=1)
        req = w.get("requests")
        if not req:
            r["error"] = "wrk completed no requests"
            return r
        r["requests"] = req
        counts = {}
        try:
            for line in outf.read_text().splitlines():
                parts = line.split(",")
                if len(parts) >= 3 and parts[0].strip().isdigit():
                    counts[parts[2]] = int(parts[0])
        except OSError:
            pass
        if "raw_syscalls:sys_enter" not in counts:
            r["error"] = "no perf counts: " + tail(p.dir / "perf-stat.log", 3)
            return r
        r["syscalls_per_req"] = counts["raw_syscalls:sys_enter"] / req
        if "context-switches" in counts:
            r["cs_per_req"] = counts["context-switches"] / req
        r["per_req"] = {k.replace("syscalls:sys_enter_", ""): v / req for k, v in counts.items()
                        if k.startswith("syscalls:sys_enter_") and v}
        return r

    def retry_noisy(self, res, fn):
        """Run fn(); if other processes disturbed it, run it again (up to --retry-noisy times)."""
        run = fn()
        for attempt in range(self.args.retry_noisy):
            if not run.get("noisy") or run.get("error"):
                break
            log("%s round %d was noisy (other processes used %.2f cores): repeating it" % (
                run["proxy"], run["round"], run["foreign_cores"]))
            res.setdefault("discarded_noisy_runs", []).append(run)
            run = fn()
            run["attempt"] = attempt + 2
        return run

    def quiet(self, run):
        a = self.args
        if a.quiet_wait > 0:
            waited, f = wait_quiet(a.quiet_wait, a.quiet_threshold)
            run["waited_for_quiet_s"] = round(waited, 1)
            if waited > 5:
                log("waited %.0fs for other processes to calm down (now %.2f cores busy)" % (waited, f))

    def window(self, run, win):
        busy = win["busy"]
        run["cpu_busy"] = {str(c): round(b[0], 3) for c, b in busy.items()}
        run["cpu_steal"] = {str(c): round(b[1], 3) for c, b in busy.items()}
        run["cpu_breakdown"] = {str(c): b[2] for c, b in busy.items()}
        run["foreign_cores"] = win["foreign_cores"]
        if win["foreign_cores"] is not None and win["foreign_cores"] > self.args.noisy_threshold:
            run["noisy"] = True
        self.core_busy(run, busy)

    def core_busy(self, run, busy):
        a = self.args
        for key, cpu in (("load_core_busy", a.load_cpu), ("proxy_core_busy", a.proxy_cpu)):
            if cpu is not None and str(cpu).isdigit() and int(cpu) in busy:
                run[key] = busy[int(cpu)][0]
        run["max_steal"] = max((b[1] for b in busy.values()), default=0)

    # ---------------- scenario B: TCP bulk throughput
    def scenario_tcp(self):
        a = self.args
        if not shutil.which("iperf3"):
            self.err("tcp: iperf3 not installed; scenario skipped")
            return
        sink_port = free_port()
        res = {"runs": [], "failed": {}, "params": {
            "iperf3": "-c ... -t %d (single stream, client->server)" % a.tcp_duration, "rounds": a.rounds,
            "sink_port": sink_port}}
        self.results["scenarios"]["tcp"] = res
        proxies = {}
        for name in self.proxies_for("tcp"):
            p = self.make_proxy(name)
            if p.start(sink_port=sink_port, tag="tcp-"):
                proxies[name] = p
            else:
                res["failed"][name] = p.error
                self.err("tcp: " + p.error)
        names = list(proxies) + (["direct"] if a.direct else [])
        for rnd in range(a.rounds):
            for name in self.order(names, rnd):
                p = proxies.get(name)
                if p and not p.alive():
                    msg = "%s died before round %d: %s" % (name, rnd + 1, p.diagnostics())
                    self.err("tcp: " + msg)
                    res["failed"].setdefault(name, msg)
                    if not p.start(sink_port=sink_port, tag="tcp-"):
                        continue
                run = self.retry_noisy(res, lambda: self.iperf_run(name, p, sink_port, rnd))
                res["runs"].append(run)
                log("tcp round %d %-8s %6.2f Gbit/s%s%s" % (
                    rnd + 1, name, run.get("gbps") or 0,
                    ", proxy %.0f%% of a core" % (100 * run["proxy_cpu_util"]) if run.get("proxy_cpu_util") is not None else "",
                    ", ERROR: " + run["error"] if run.get("error") else ""))
        for p in proxies.values():
            p.stop()

    def iperf_run(self, name, proxy, sink_port, rnd):
        a = self.args
        run = {"proxy": name, "round": rnd + 1}
        srv_log = self.outdir / "iperf3-server.log"
        srv = self.r.spawn(["iperf3", "-s", "-1", "-B", HOST, "-p", str(sink_port)], cpu=a.sink_cpu,
                           log_path=srv_log, note="TCP sink (one test per start)")
        try:
            e = wait_listening([sink_port], srv, 10)
            if e:
                run["error"] = "iperf3 server: " + e
                return run
            port = proxy.tcp_port if proxy else sink_port
            ppids = proxy.pids() if proxy else []
            self.quiet(run)
            c0 = cpu_seconds(ppids)
            w = CpuWindow().start()
            out = self.r.run(["iperf3", "-c", HOST, "-p", str(port), "-t", str(a.tcp_duration), "-J"],
                             cpu=a.load_cpu, timeout=a.tcp_duration + 40)
            c1 = cpu_seconds(ppids)
            try:
                srv.wait(3)  # so that its CPU time is accounted as ours
            except subprocess.TimeoutExpired:
                pass
            win = w.stop()
            wall = win["wall_s"]
            self.window(run, win)
            try:
                j = json.loads(out.stdout)
            except ValueError:
                run["error"] = "iperf3 output not JSON (exit %d): %s" % (out.returncode, (out.stdout + out.stderr)[:300])
                return run
            if "error" in j:
                run["error"] = "iperf3: " + j["error"]
            end = j.get("end", {})
            recv = end.get("sum_received", {})
            if recv.get("bits_per_second"):
                run["gbps"] = recv["bits_per_second"] / 1e9
                run["bytes"] = recv.get("bytes")
                run["retransmits"] = end.get("sum_sent", {}).get("retransmits")
            elif "error" not in run:
                run["error"] = "no throughput in iperf3 output"
            run["wall_s"] = wall
            if proxy:
                run["proxy_cpu_s"] = c1 - c0
                run["proxy_cpu_util"] = (c1 - c0) / wall
                if run.get("bytes") and c1 > c0:
                    run["cpu_s_per_gb"] = (c1 - c0) / (run["bytes"] / 1e9)
                    run["gbps_per_core"] = run["bytes"] * 8 / 1e9 / (c1 - c0)
        except subprocess.TimeoutExpired:
            run["error"] = "iperf3 client timed out"
        finally:
            try:
                srv.wait(3)
            except subprocess.TimeoutExpired:
                pass
            self.r.kill(srv, grace=1)
        return run

    # ---------------- scenario C: memory, idle and with N idle keep-alive connections
    def scenario_rss(self):
        a = self.args
        be = self.ensure_backend()
        res = {"proxies": {}, "failed": {}, "params": {"conns": a.conns, "settle_s": a.settle}}
        self.results["scenarios"]["rss"] = res
        for name in a.only:
            p = self.make_proxy(name)
            if not p.start(backend_port=be.port, tag="rss-"):
                res["failed"][name] = p.error
                self.err("rss: " + p.error)
                continue
            try:
                res["proxies"][name] = self.rss_one(p)
            finally:
                p.stop()
            m = res["proxies"][name]
            log("rss %-8s idle %.1f MiB, with %d conns %.1f MiB (%s)" % (
                name, m["idle"]["rss_kb"] / 1024, m.get("conns_ok", 0), (m.get("held") or {}).get("rss_kb", 0) / 1024,
                m.get("error") or "ok"))

    def rss_one(self, p):
        a = self.args
        time.sleep(a.settle)
        out = {"idle": mem_snapshot(p.pids())}
        holder = self.r.spawn([sys.executable, str(PERF / "holdconns.py"), HOST, str(p.http_port), str(a.conns),
                               "--concurrency", "64"], cpu=a.load_cpu, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              log_path=self.outdir / ("holdconns-%s.log" % p.name), note="connection holder")
        try:
            line = self.read_line(holder, 120 + a.conns / 100)
            m = re.match(r"OPENED ok=(\d+) failed=(\d+) secs=([\d.]+) first_error=(\S+)", line or "")
            if not m:
                out["error"] = "holder failed: %r %s" % (line, tail(self.outdir / ("holdconns-%s.log" % p.name)))
                return out
            out["conns_ok"], out["conns_failed"], out["open_secs"] = int(m.group(1)), int(m.group(2)), float(m.group(3))
            if out["conns_failed"]:
                out["error"] = "%d connections failed (first: %s)" % (out["conns_failed"], m.group(4).replace("_", " "))
            time.sleep(a.settle)
            out["held"] = mem_snapshot(p.pids())
            holder.stdin.write(b"check\n")
            holder.stdin.flush()
            line = self.read_line(holder, 60)
            if line and line.startswith("ALIVE "):
                out["alive_at_measure"] = int(line.split()[1])
            if out["conns_ok"]:
                out["per_conn_kb"] = (out["held"]["rss_kb"] - out["idle"]["rss_kb"]) / out["conns_ok"]
                out["per_conn_pss_kb"] = (out["held"]["pss_kb"] - out["idle"]["pss_kb"]) / out["conns_ok"]
            holder.stdin.write(b"quit\n")
            holder.stdin.flush()
            self.read_line(holder, 60)
            time.sleep(a.settle)
            out["after_close"] = mem_snapshot(p.pids())
            out["alive"] = p.alive()
            if not p.alive():
                out["error"] = (out.get("error", "") + "; proxy died: " + p.diagnostics()).lstrip("; ")
        finally:
            self.r.kill(holder, grace=2)
        return out

    @staticmethod
    def read_line(proc, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0].decode(errors="replace").strip() if box else None

    # ---------------- optional: callgrind instructions per request
    def scenario_callgrind(self):
        a = self.args
        be = self.ensure_backend()
        h2 = a.cg_scenario != "h1"
        if a.cg_scenario == "grpc":
            self.grpc_req = self.outdir / "grpc-request.bin"
            self.grpc_req.write_bytes(grpc_frame(GRPC_REQUEST))
        shown = " ".join(shlex.quote(x) for x in self.cg_load_argv(0, 0)[1:-1]).replace("-n0", "-n N")
        res = {"proxies": {}, "failed": {}, "params": {"requests": a.cg_requests, "warmup": a.cg_warmup,
                                                       "scenario": a.cg_scenario, "h2load": shown}}
        self.results["scenarios"]["callgrind"] = res
        for tool in ("valgrind", "callgrind_control", "h2load"):
            if not shutil.which(tool):
                self.err("callgrind: %s not installed; skipped" % tool)
                return
        for name in a.only:
            p = self.make_proxy(name)
            cgdir = self.outdir / "callgrind"
            cgdir.mkdir(exist_ok=True)
            outfile = cgdir / ("callgrind.%s.out" % name)
            vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % outfile]
            if not p.start(backend_port=be.h2_port if h2 else be.port, valgrind=vg, tag="cg-", h2=h2):
                res["failed"][name] = p.error
                self.err("callgrind: " + p.error)
                continue
            try:
                res["proxies"][name] = self.callgrind_one(p, outfile)
                r = res["proxies"][name]
                log("callgrind %-8s %s" % (name, ("%.0f Ir/request" % r["ir_per_req"]) if r.get("ir_per_req") else r.get("error")))
            finally:
                p.stop()

    def cg_load_argv(self, port, n):
        """h2load for the callgrind scenario, n requests: h1 keep-alive, or the h2c / grpc scenario's load."""
        if self.args.cg_scenario == "h1":
            return ["h2load", "--h1", "-c16", "-t1", "-n%d" % n, "http://%s:%d/" % (HOST, port)]
        return self.load_argv(self.args.cg_scenario, port, None, count=n)[0]

    def callgrind_one(self, p, outfile):
        a = self.args
        r = {}
        pid = str(p.proc.pid)  # taskset/setpriv exec into valgrind, so this is valgrind's (= the proxy's) pid
        if p.name == "nginx":  # master_process off: one process
            pass
        self.r.run(self.cg_load_argv(p.http_port, a.cg_warmup), cpu=a.load_cpu, timeout=600, note="warm-up")
        z = self.r.run(["callgrind_control", "-z", pid], timeout=60, note="zero the counters")
        if z.returncode != 0:
            r["error"] = "callgrind_control -z failed: " + (z.stdout + z.stderr)[:300]
            return r
        h = self.r.run(self.cg_load_argv(p.http_port, a.cg_requests), cpu=a.load_cpu, timeout=3600)
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", h.stdout)
        if not m:
            r["error"] = "cannot parse h2load output: " + (h.stdout + h.stderr)[-300:]
            return r
        r["requests_ok"], r["requests_failed"] = int(m.group(1)), int(m.group(2))
        before = set(outfile.parent.glob(outfile.name + "*"))
        d = self.r.run(["callgrind_control", "--dump=bench", pid], timeout=120, note="dump counters since zero")
        if d.returncode != 0:
            r["error"] = "callgrind_control --dump failed: " + (d.stdout + d.stderr)[:300]
            return r
        deadline = time.monotonic() + 60
        dump = None
        while time.monotonic() < deadline and dump is None:
            new = set(outfile.parent.glob(outfile.name + "*")) - before
            for f in sorted(new):
                if re.search(r"^(summary|totals):", f.read_text(errors="replace"), re.M):
                    dump = f
            time.sleep(0.5)
        if dump is None:
            r["error"] = "no callgrind dump appeared"
            return r
        text = dump.read_text(errors="replace")
        ev = re.search(r"^events:\s*(.+)$", text, re.M).group(1).split()
        tot = re.search(r"^(?:summary|totals):\s*(.+)$", text, re.M).group(1).split()
        counts = dict(zip(ev, (int(x) for x in tot)))
        r["ir"] = counts.get("Ir")
        r["dump"] = str(dump)
        if r["ir"] and r["requests_ok"]:
            r["ir_per_req"] = r["ir"] / r["requests_ok"]
        return r

    # ---------------- summary / report
    @staticmethod
    def summarize(runs, keys):
        by = {}
        for run in runs:
            by.setdefault(run["proxy"], []).append(run)
        s = {}
        for name, rs in by.items():
            ok = [x for x in rs if not x.get("error")]
            clean = [x for x in ok if not x.get("noisy")]
            use = clean or ok or rs
            s[name] = {k: median([x.get(k) for x in use]) for k in keys}
            s[name]["n_runs"] = len(rs)
            s[name]["n_noisy"] = sum(1 for x in rs if x.get("noisy"))
            s[name]["n_in_median"] = len(use)
            s[name]["n_runs_with_errors"] = len(rs) - len(ok)
        return s

    H1_KEYS = ["rps", "lat_p50_ms", "lat_p99_ms", "proxy_cpu_util", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req",
               "req_per_core_s", "cpu_s_per_100k",
               "backend_cpu_util", "loadgen_cpu_util", "load_core_busy", "proxy_core_busy", "max_steal", "foreign_cores"]
    TCP_KEYS = ["gbps", "proxy_cpu_util", "cpu_s_per_gb", "gbps_per_core", "load_core_busy", "proxy_core_busy",
                "max_steal", "foreign_cores"]

    HTTP_KEYS = H1_KEYS + ["lat_mean_ms", "lat_p90_ms", "lat_p999_ms", "gbps", "cpu_s_per_gb", "gbps_per_core",
                           "tcp_opens_per_req"]

    def report(self):
        a = self.args
        R = self.results
        for sc, res in R["scenarios"].items():
            if sc in self.HTTP:
                res["summary"] = self.summarize(res["runs"], self.HTTP_KEYS)
            elif sc == "tcp":
                res["summary"] = self.summarize(res["runs"], self.TCP_KEYS)
        lat = R["scenarios"].get("latency", {}).get("summary")
        if lat:  # latency added over direct (median of the proxy's rounds - median of direct's rounds)
            d = lat.get("direct", {})
            for name, sm in lat.items():
                for k in ("p50", "p90", "p99", "p999"):
                    v, base = sm.get("lat_%s_ms" % k), d.get("lat_%s_ms" % k)
                    sm["added_%s_ms" % k] = None if v is None or base is None or name == "direct" else v - base
        L = []
        meta = R["meta"]
        L.append("# Remora vs HAProxy vs nginx vs nghttpx — %s" % meta["date"])
        L.append("")
        L.append("Machine: %s, %s CPUs, kernel %s. Pinning: load generator CPU %s, proxy CPU %s, HTTP backend CPU %s, TCP sink CPU %s%s." % (
            meta["cpu_model"], meta["ncpu"], meta["kernel"], a.load_cpu, a.proxy_cpu, a.backend_cpu, a.sink_cpu,
            "" if self.r.pin_ok else " (pinning DISABLED)"))
        L.append("Versions: " + "; ".join("%s: %s" % (k, v) for k, v in meta["versions"].items()))
        L.append("Rounds: %d, duration %ss (h1), %ss (tcp), %ss (post, h2c, grpc, large, churn, latency); open-files limit %d." % (
            a.rounds, a.duration, a.tcp_duration, a.short_duration, self.nofile))
        waited = sum(r.get("waited_for_quiet_s") or 0 for res in sc_all(R) for r in res.get("runs", []) + res.get("discarded_noisy_runs", []))
        redone = sum(len(res.get("discarded_noisy_runs", [])) for res in sc_all(R))
        R["wall_time_s"] = round(time.monotonic() - self.t_start, 1)
        L.append("Wall time %.1f min, of which %.1f min checking for (1 s per run) and waiting for other processes on the machine to go quiet; %d noisy runs repeated." % (
            R["wall_time_s"] / 60, waited / 60, redone))
        L.append("")
        sc = R["scenarios"]
        rows = self.headline_rows()
        R["headline"] = rows
        if rows:
            L += self.report_headline(rows)
            svg = OUT / ("summary-%s.svg" % self.stamp)
            try:
                svg.write_text(self.svg_chart(rows))
                R["chart"] = str(svg)
                L.append("Chart: [`%s`](%s)" % (svg.name, svg.name))
                L.append("")
            except Exception as e:  # noqa: BLE001 - a chart problem must not lose the report
                self.err("chart not written: %s: %s" % (type(e).__name__, e))
        for name in ALL_SCENARIOS:
            if name not in sc:
                continue
            if name == "h1":
                L += self.report_h1(sc["h1"])
            elif name in self.HTTP:
                L += self.report_http(name, sc[name])
            elif name == "tcp":
                L += self.report_tcp(sc["tcp"])
            elif name == "rss":
                L += self.report_rss(sc["rss"])
        if "callgrind" in sc:
            L += self.report_cg(sc["callgrind"])
        if R["errors"]:
            L.append("## Problems")
            L.append("")
            for e in R["errors"]:
                L.append("- " + e.replace("\n", "\n  "))
            L.append("")
        L.append("## Commands")
        L.append("")
        L.append("Configs and logs: `%s`" % self.outdir.relative_to(REPO))
        L.append("")
        L.append("```")
        L += self.r.commands
        L.append("```")
        return "\n".join(L) + "\n"

    @staticmethod
    def fmt(v, f="%.1f"):
        return "—" if v is None else f % v

    def ratio_lines(self, summary, key, label, better):
        """One line: Remora / each peer, and Remora / the best peer (highest for '>1' metrics, lowest otherwise)."""
        L = []
        rem = summary.get("remora", {}).get(key)
        higher = better.startswith(">")
        cells, vals = [], {}
        for other in PEERS:
            v = summary.get(other, {}).get(key)
            if other in summary:
                cells.append("Remora/%s = %s" % (TITLES[other], self.fmt(ratio(rem, v), "%.2f")))
                if v is not None:
                    vals[other] = v
        if rem is not None and cells:
            best = (max if higher else min)(vals, key=vals.get) if vals else None
            if best:
                cells.append("**Remora/best (%s) = %s**" % (TITLES[best], self.fmt(ratio(rem, vals[best]), "%.2f")))
            L.append("- %s: %s (%s)" % (label, ", ".join(cells), better))
        return L

    # (scenario, summary key, label, unit, higher is better, format) -- the headline table and the chart
    HEADLINE = [
        ("h1", "rps", "req/s", "", True, "%.0f"),
        ("h1", "cpu_us_per_req", "CPU per request", "µs", False, "%.2f"),
        ("post", "rps", "req/s", "", True, "%.0f"),
        ("post", "cpu_us_per_req", "CPU per request", "µs", False, "%.2f"),
        ("h2c", "rps", "req/s", "", True, "%.0f"),
        ("h2c", "cpu_us_per_req", "CPU per request", "µs", False, "%.2f"),
        ("grpc", "rps", "calls/s", "", True, "%.0f"),
        ("grpc", "cpu_us_per_req", "CPU per call", "µs", False, "%.2f"),
        ("large", "gbps", "Gbit/s", "", True, "%.2f"),
        ("large", "cpu_s_per_gb", "CPU per GB", "s", False, "%.3f"),
        ("churn", "rps", "connections/s", "", True, "%.0f"),
        ("churn", "cpu_us_per_req", "CPU per connection", "µs", False, "%.2f"),
        ("latency", "added_p50_ms", "p50 added over direct", "ms", False, "%.3f"),
        ("latency", "added_p99_ms", "p99 added over direct", "ms", False, "%.3f"),
        ("latency", "cpu_us_per_req", "CPU per request at fixed rate", "µs", False, "%.2f"),
        ("tcp", "gbps", "Gbit/s", "", True, "%.2f"),
        ("tcp", "cpu_s_per_gb", "CPU per GB", "s", False, "%.3f"),
        ("rss", "idle_rss", "idle RSS", "MiB", False, "%.1f"),
        ("rss", "held_rss", "RSS holding N idle conns", "MiB", False, "%.1f"),
        ("rss", "per_conn_kb", "RSS per idle connection", "KiB", False, "%.2f"),
    ]
    SC_TITLES = {"h1": "h1 keep-alive", "post": "h1 16 KiB POST", "h2c": "h2c multiplexed", "grpc": "gRPC unary",
                 "large": "1 MiB responses", "churn": "connection churn", "latency": "latency @ fixed rate",
                 "tcp": "TCP bulk", "rss": "memory"}

    def headline_rows(self):
        sc = self.results["scenarios"]
        rows = []
        for name, key, label, unit, higher, fm in self.HEADLINE:
            if name not in sc:
                continue
            res = sc[name]
            if name == "rss":
                vals = {}
                for px, m in res.get("proxies", {}).items():
                    if key == "per_conn_kb":
                        if m.get("per_conn_kb") is not None and not m.get("error"):
                            vals[px] = m["per_conn_kb"]
                        continue
                    snap = m.get("idle" if key == "idle_rss" else "held")
                    if snap and not (key == "held_rss" and m.get("error")):
                        vals[px] = snap["rss_kb"] / 1024
                if key == "held_rss":
                    label = "RSS holding %d idle conns" % res["params"]["conns"]
            else:
                vals = {px: sm.get(key) for px, sm in (res.get("summary") or {}).items() if px != "direct"}
                vals = {k: v for k, v in vals.items() if v is not None}
            if "remora" not in vals and "remora" not in self.args.only:
                continue
            rem = vals.get("remora")
            peers = {k: v for k, v in vals.items() if k != "remora"}
            best = (max if higher else min)(peers, key=peers.get) if peers else None
            r = None
            if rem is not None and best is not None:
                b = peers[best]
                if key.startswith("added_") and (b <= 0.001 or rem < 0):
                    r = None  # latency added within measurement noise: a ratio would be meaningless
                else:
                    r = ratio(rem, b)
            rows.append({"scenario": name, "key": key, "metric": label, "unit": unit, "higher_is_better": higher,
                         "fmt": fm, "remora": rem, "peers": peers, "best": best,
                         "best_value": peers.get(best) if best else None, "ratio_to_best": r,
                         "ratios": {k: ratio(rem, v) for k, v in peers.items()},
                         "remora_failed": rem is None and ("remora" in (res.get("failed") or {}) or any(
                             x.get("error") for x in res.get("runs", []) if x["proxy"] == "remora"))})
        return rows

    def report_headline(self, rows):
        f = self.fmt
        L = ["## Headline — Remora ÷ best peer, every scenario", ""]
        L.append("Best peer = the best of HAProxy, nginx and nghttpx for that figure (highest throughput, lowest CPU/latency/"
                 "memory). Ratio = Remora ÷ best peer: **> 1 is better for throughput, < 1 is better for CPU, latency and memory**."
                 " Medians over rounds; details and every round in the sections below.")
        L.append("")
        L.append("| scenario | figure | better | Remora | best peer | Remora ÷ best | Remora ÷ each peer | verdict |")
        L.append("|---|---|:-:|---:|---|---:|---|---|")
        for r in rows:
            fm, unit = r["fmt"], (" " + r["unit"] if r["unit"] else "")
            rem = "FAILED" if r["remora_failed"] else f(r["remora"], fm) + (unit if r["remora"] is not None else "")
            best = "%s %s%s" % (TITLES[r["best"]], f(r["best_value"], fm), unit) if r["best"] else "—"
            each = ", ".join("%s %s" % (TITLES[k], f(v, "%.2f")) for k, v in r["ratios"].items())
            rt = r["ratio_to_best"]
            if rt is None:
                verdict = "Remora failed" if r["remora_failed"] else ("within noise" if r["key"].startswith("added_") and r["remora"] is not None else "—")
            else:
                good = rt >= 1.0 if r["higher_is_better"] else rt <= 1.0
                close = abs(rt - 1.0) <= 0.03
                verdict = "on par (±3%)" if close else ("Remora ahead" if good else "Remora behind")
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                self.SC_TITLES.get(r["scenario"], r["scenario"]), r["metric"], "↑" if r["higher_is_better"] else "↓",
                rem, best, "**%s**" % f(rt, "%.2f") if rt is not None else "—", each, verdict))
        L.append("")
        if any(r["scenario"] == "rss" for r in rows):
            L.append("Memory is RSS summed over the process tree (nginx and nghttpx: master + worker, so pages they share are "
                     "counted twice); PSS, which splits shared pages (including shared libraries used by other processes — "
                     "Remora is statically linked), is in the memory section.")
        h2 = [r for r in rows if r["scenario"] == "h2c"]
        if h2:
            cells = []
            for r in h2:
                rt = r["ratios"].get("nghttpx")
                target = "≥ 1.0" if r["higher_is_better"] else "≤ 1.0"
                met = rt is not None and (rt >= 1.0 if r["higher_is_better"] else rt <= 1.0)
                cells.append("%s Remora/nghttpx = %s (target %s: %s)" % (
                    r["metric"], f(rt, "%.2f"), target, "met" if met else "**not met**" if rt is not None else "no data"))
            L.append("")
            L.append("Issue 3 target, h2c vs nghttpx: " + "; ".join(cells) + ".")
        L.append("")
        return L

    def svg_chart(self, rows):
        """Grouped bars: per scenario, one bar per figure = Remora ÷ best peer; a line at 1.0. Hand-written SVG."""
        esc = lambda t: str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
        groups = []
        for r in rows:
            if not groups or groups[-1][0] != r["scenario"]:
                groups.append((r["scenario"], []))
            groups[-1][1].append(r)
        kind = lambda r: ("throughput" if r["higher_is_better"] else  # noqa: E731
                          "latency" if r["key"].startswith("added_") else
                          "memory" if r["scenario"] == "rss" else "cpu")
        colors = {"throughput": "#4e79a7", "cpu": "#f28e2b", "latency": "#b07aa1", "memory": "#59a14f"}
        legend = [("throughput", "throughput (req/s, Gbit/s, conn/s): > 1 = Remora better"),
                  ("cpu", "CPU per request / GB / connection: < 1 = Remora better"),
                  ("latency", "latency added over direct: < 1 = Remora better"),
                  ("memory", "memory (RSS): < 1 = Remora better")]
        vals = [r["ratio_to_best"] for r in rows if r["ratio_to_best"] is not None]
        ymax = max([1.5] + [min(v, 3.0) * 1.1 for v in vals])
        ymax = max(1.5, round(ymax * 4 + 0.5) / 4)
        bw, gap, left, top, ph, gw_min = 32, 22, 70, 70, 330, 96
        gwidth = lambda rs: max(len(rs) * bw, gw_min)  # noqa: E731
        right = left + sum(gwidth(g[1]) + gap for g in groups)  # end of the plot area; labels to its right
        width = max(right + 110, 760)
        height = top + ph + 110 + 20 * len(legend)
        y = lambda v: top + ph - (min(v, ymax) / ymax) * ph  # noqa: E731
        o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'font-family="sans-serif" font-size="12">' % (width, height, width, height),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="%d" y="24" font-size="16" font-weight="bold">Remora ÷ best peer (HAProxy, nginx, nghttpx), per scenario</text>' % left,
             '<text x="%d" y="44" fill="#555">%s · %s, %s CPUs · medians of %d rounds · bar labels green = Remora better, red = worse</text>' % (
                 left, esc(self.results["meta"]["date"]), esc(self.results["meta"]["cpu_model"]),
                 self.results["meta"]["ncpu"], self.args.rounds)]
        t = 0.0
        while t <= ymax + 1e-9:  # grid + y axis labels
            o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e5e5e5"/>' % (left, right, y(t), y(t)))
            o.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%.2f</text>' % (left - 6, y(t) + 4, t))
            t += 0.25
        x0 = left + gap / 2
        for name, rs in groups:
            gx = x0
            x = x0 + (gwidth(rs) - len(rs) * bw) / 2
            for r in rs:
                v = r["ratio_to_best"]
                c = colors[kind(r)]
                title = "%s — %s: Remora %s, best peer %s %s" % (
                    self.SC_TITLES.get(name, name), r["metric"], self.fmt(r["remora"], r["fmt"]),
                    TITLES.get(r["best"], "—"), self.fmt(r["best_value"], r["fmt"]))
                if v is None:
                    o.append('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#999" font-size="10">%s</text>' % (
                        x + bw / 2, top + ph - 4, "fail" if r["remora_failed"] else "n/a"))
                else:
                    good = v >= 1 if r["higher_is_better"] else v <= 1
                    o.append('<rect x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s</title></rect>' % (
                        x + 2, y(v), bw - 4, top + ph - y(v), c, esc(title + " → %.2f" % v)))
                    o.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10" fill="%s" stroke="white" '
                             'stroke-width="3" paint-order="stroke">%.2f%s</text>' % (
                        x + bw / 2, y(v) - 4, "#1a7f37" if good else "#c62828", v, "↑" if v > ymax else ""))
                short = {"rps": "rate", "cpu_us_per_req": "CPU", "gbps": "Gbit/s", "cpu_s_per_gb": "CPU",
                         "added_p50_ms": "p50", "added_p99_ms": "p99", "idle_rss": "idle", "held_rss": "held",
                         "per_conn_kb": "/conn"}.get(r["key"], r["key"])
                o.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="9" fill="#555">%s</text>' % (
                    x + bw / 2, top + ph + 12, esc(short)))
                x += bw
            words, lines = self.SC_TITLES.get(name, name).split(), [""]
            for wd in words:  # at most ~14 characters per line under the group
                if lines[-1] and len(lines[-1]) + 1 + len(wd) > 14:
                    lines.append(wd)
                else:
                    lines[-1] = (lines[-1] + " " + wd).strip()
            for i, ln in enumerate(lines[:2]):
                o.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
                    gx + gwidth(rs) / 2, top + ph + 28 + 14 * i, esc(ln)))
            x0 += gwidth(rs) + gap
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#000" stroke-width="1.5" stroke-dasharray="6 3"/>' % (
            left, right, y(1.0), y(1.0)))
        o.append('<text x="%d" y="%.1f" font-size="11">1.0 = best peer</text>' % (right + 6, y(1.0) + 4))
        o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#000"/>' % (left, right, top + ph, top + ph))
        ly = top + ph + 72
        for k, text in legend:
            o.append('<rect x="%d" y="%d" width="14" height="14" fill="%s"/>' % (left, ly - 11, colors[k]))
            o.append('<text x="%d" y="%d">%s</text>' % (left + 20, ly, esc(text)))
            ly += 20
        o.append('<text x="%d" y="%d" fill="#555" font-size="11">Ratios above %.2f are drawn at the top (↑). perf/bench.py</text>' % (
            left, ly + 6, ymax))
        o.append("</svg>")
        return "\n".join(o) + "\n"

    def report_http(self, sc, res):
        f = self.fmt
        p = res["params"]
        L = ["## Scenario %s — %s (`%s`)" % (sc, res["title"], p["load"]), ""]
        s = res["summary"]
        wrk = p["load"].startswith("wrk")
        unit = "conn" if sc == "churn" else "req"
        cols = []  # (header, align, fn(sm, runs))
        if sc == "large":
            cols += [("Gbit/s median", "r", lambda sm, rs: f(sm["gbps"], "%.2f")),
                     ("Gbit/s per round", "l", lambda sm, rs: self.per_round(rs, "gbps", "%.2f")),
                     ("req/s", "r", lambda sm, rs: f(sm["rps"], "%.0f"))]
        elif sc == "latency":
            cols += [("req/s achieved", "r", lambda sm, rs: f(sm["rps"], "%.0f"))]
        else:
            cols += [("%s/s median" % unit, "r", lambda sm, rs: f(sm["rps"], "%.0f")),
                     ("%s/s per round" % unit, "l", lambda sm, rs: self.per_round(rs, "rps", "%.0f"))]
        if sc == "latency":
            cols += [("p50 ms", "r", lambda sm, rs: f(sm["lat_p50_ms"], "%.3f")),
                     ("p90 ms", "r", lambda sm, rs: f(sm["lat_p90_ms"], "%.3f")),
                     ("p99 ms", "r", lambda sm, rs: f(sm["lat_p99_ms"], "%.3f")),
                     ("p99.9 ms", "r", lambda sm, rs: f(sm["lat_p999_ms"], "%.3f")),
                     ("**p50 added** ms", "r", lambda sm, rs: f(sm.get("added_p50_ms"), "%+.3f")),
                     ("**p99 added** ms", "r", lambda sm, rs: f(sm.get("added_p99_ms"), "%+.3f")),
                     ("p99 ms per round", "l", lambda sm, rs: self.per_round(rs, "lat_p99_ms", "%.3f"))]
        elif wrk:
            cols += [("p50 ms", "r", lambda sm, rs: f(sm["lat_p50_ms"], "%.2f")),
                     ("p99 ms", "r", lambda sm, rs: f(sm["lat_p99_ms"], "%.2f"))]
        else:
            cols += [("mean latency ms", "r", lambda sm, rs: f(sm["lat_mean_ms"], "%.2f"))]
        if sc == "large":
            cols += [("proxy CPU s / GB", "r", lambda sm, rs: f(sm["cpu_s_per_gb"], "%.3f")),
                     ("Gbit/s per proxy core-second", "r", lambda sm, rs: f(sm["gbps_per_core"], "%.1f"))]
        else:
            cols += [("proxy CPU µs/%s (user+sys)" % unit, "r", lambda sm, rs: "—" if sm["cpu_us_per_req"] is None else
                      "%.2f (%.1f+%.1f)" % (sm["cpu_us_per_req"], sm["user_us_per_req"], sm["sys_us_per_req"])),
                     ("%s/s per proxy core-second" % unit, "r", lambda sm, rs: f(sm["req_per_core_s"], "%.0f"))]
        if sc == "churn":
            cols += [("TCP connects / conn (system-wide)", "r", lambda sm, rs: f(sm["tcp_opens_per_req"], "%.2f"))]
        cols += [("proxy process CPU", "r", lambda sm, rs: f(self.pct(sm["proxy_cpu_util"]), "%.0f%%")),
                 ("backend process CPU", "r", lambda sm, rs: f(self.pct(sm["backend_cpu_util"]), "%.0f%%")),
                 ("%s process CPU" % p["load"].split()[0], "r", lambda sm, rs: f(self.pct(sm["loadgen_cpu_util"]), "%.0f%%")),
                 ("load core busy", "r", lambda sm, rs: f(self.pct(sm["load_core_busy"]), "%.0f%%")),
                 ("proxy core busy", "r", lambda sm, rs: f(self.pct(sm["proxy_core_busy"]), "%.0f%%")),
                 ("other procs (cores)", "r", lambda sm, rs: f(sm["foreign_cores"], "%.2f")),
                 ("runs w/ errors", "r", lambda sm, rs: "%d/%d" % (sm["n_runs_with_errors"], sm["n_runs"])),
                 ("noisy runs", "r", lambda sm, rs: "%d" % sm["n_noisy"])]
        L.append("| proxy | " + " | ".join(c[0] for c in cols) + " |")
        L.append("|---|" + "|".join("---:" if c[1] == "r" else "---" for c in cols) + "|")
        for name in s:
            runs = [r for r in res["runs"] if r["proxy"] == name]
            label = name + (" (no proxy)" if name == "direct" else "") + (" (grpc_pass)" if name == "nginx" and p.get("h2c") else "")
            L.append("| %s | %s |" % (label, " | ".join(c[2](s[name], runs) for c in cols)))
        for name, e in res["failed"].items():
            if name not in s:
                L.append("| %s | FAILED | %s |" % (name, e.splitlines()[0][:150].replace("|", "/")) + " |" * (len(cols) - 2))
        L.append("")
        L.append(self.NOTE % self.args.noisy_threshold + self.discarded(res))
        errs = sorted({"%s r%d: %s" % (r["proxy"], r["round"], r["error"]) for r in res["runs"] if r.get("error")})
        if errs:
            L.append("")
            L.append("Runs with errors:")
            L += ["- " + e.replace("\n", " ")[:300] for e in errs]
        L.append("")
        if sc == "large":
            L += self.ratio_lines(s, "gbps", "throughput", ">1 = Remora moves more bytes/s")
            L += self.ratio_lines(s, "cpu_s_per_gb", "CPU per GB", "<1 = Remora uses less CPU per byte")
        elif sc == "latency":
            L += self.ratio_lines(s, "added_p50_ms", "p50 added over direct", "<1 = Remora adds less latency")
            L += self.ratio_lines(s, "added_p99_ms", "p99 added over direct", "<1 = Remora adds less latency")
            L += self.ratio_lines(s, "cpu_us_per_req", "CPU per request at %d req/s" % p["rate"], "<1 = Remora uses less CPU per request")
        else:
            L += self.ratio_lines(s, "rps", "throughput", ">1 = Remora serves more %s/s" % unit)
            L += self.ratio_lines(s, "cpu_us_per_req", "CPU per %s" % ("connection" if unit == "conn" else "request"),
                                  "<1 = Remora uses less CPU per %s" % ("connection" if unit == "conn" else "request"))
        notes = {
            "post": "Each request carries a %d-byte body (wrk Lua script `%s`); the backend reads and discards it and answers the "
                    "tiny 200. nginx (proxy) runs with `client_body_buffer_size 64k` so the body is buffered in memory, not in a "
                    "temp file." % (POST_BYTES, getattr(self, "post_lua", "post16k.lua")),
            "h2c": "h2load speaks h2c (prior knowledge) to each proxy; every proxy speaks h2c to the backend nginx (`listen ... "
                   "http2`). nginx has no HTTP/2 upstream for `proxy_pass`, so it uses `grpc_pass` (one stream per upstream "
                   "connection, keep-alive pool of 1024). nghttpx: CPU of all its processes (master + worker).",
            "grpc": "POST %s with a %d-byte gRPC frame, `content-type: application/grpc`, `te: trailers`; the backend answers 200, "
                    "one %d-byte gRPC frame and the trailer `grpc-status: 0`. h2load counts HTTP status only; the gRPC check "
                    "below (one call per proxy before the timed runs) is what shows that a gRPC client accepts the answer."
                    % (GRPC_PATH, len(grpc_frame(GRPC_REQUEST)), len(grpc_frame(GRPC_RESPONSE))),
            "large": "The backend serves a %d-byte file (sendfile); Gbit/s counts response bodies (requests × size). nginx "
                     "(proxy) runs with `proxy_max_temp_file_size 0` (buffers in memory, never spills to a temp file)." % LARGE_BYTES,
            "churn": "wrk sends `Connection: close`: the proxy closes the client connection after each response and wrk opens a new "
                     "one, so conn/s = req/s and CPU per connection = CPU per request (accept + request + close). Upstream "
                     "connections may stay alive. *TCP connects / conn* counts every TCP connect on the machine (Tcp ActiveOpens "
                     "in /proc/net/snmp) per completed request: 1.0 = only wrk connects, ~2.0 = the proxy opens an upstream "
                     "connection per request too.",
            "latency": "Open-ish loop at a fixed %d req/s in total (h2load `--rps` per connection, %d connections, one request at "
                       "a time each); latency per request from h2load's `--log-file` (from send to end of response; h2load does "
                       "not correct coordinated omission, so at this moderate rate nothing should queue). **Added** = proxy "
                       "median − direct median." % (p.get("rate", 0), self.args.latency_clients),
        }
        if sc in notes:
            L.append("")
            L.append(notes[sc])
        if res.get("checks"):
            L.append("")
            L.append("gRPC check (one unary call before the timed runs: `nghttp -v` for the frames, Python grpcio for client acceptance):")
            L.append("")
            L.append("| target | result | details |")
            L.append("|---|---|---|")
            for name, c in res["checks"].items():
                L.append("| %s | %s | %s |" % (name, "OK" if c["ok"] else "**FAILED**", c["summary"].replace("|", "/")))
        if "mem_after_load" in res:
            L.append("")
            L.append("- RSS after the load (peak VmHWM): " + ", ".join(
                "%s %.1f MiB (peak %.1f)" % (n, m["rss_kb"] / 1024, m["hwm_kb"] / 1024) for n, m in res["mem_after_load"].items()))
        L.append("")
        return L

    def report_h1(self, res):
        f = self.fmt
        L = ["## Scenario h1 — HTTP/1.1 keep-alive, small responses (`%s`)" % res["params"]["load"], ""]
        L.append("| proxy | req/s median | req/s per round | p50 ms | p99 ms | proxy CPU µs/req (user+sys) | proxy CPU s / 100k req | req/s per proxy core-second | proxy process CPU | backend process CPU | wrk process CPU | load core busy | proxy core busy | other procs (cores) | runs w/ errors | noisy runs |")
        L.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        s = res["summary"]
        for name in list(s):
            runs = [r for r in res["runs"] if r["proxy"] == name]
            sm = s[name]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d | %d |" % (
                name + (" (no proxy)" if name == "direct" else ""), f(sm["rps"], "%.0f"),
                self.per_round(runs, "rps", "%.0f"),
                f(sm["lat_p50_ms"], "%.2f"), f(sm["lat_p99_ms"], "%.2f"),
                "—" if sm["cpu_us_per_req"] is None else "%.2f (%.1f+%.1f)" % (sm["cpu_us_per_req"], sm["user_us_per_req"], sm["sys_us_per_req"]),
                f(sm["cpu_s_per_100k"], "%.3f"), f(sm["req_per_core_s"], "%.0f"), f(self.pct(sm["proxy_cpu_util"]), "%.0f%%"),
                f(self.pct(sm["backend_cpu_util"]), "%.0f%%"), f(self.pct(sm["loadgen_cpu_util"]), "%.0f%%"),
                f(self.pct(sm["load_core_busy"]), "%.0f%%"), f(self.pct(sm["proxy_core_busy"]), "%.0f%%"),
                f(sm["foreign_cores"], "%.2f"), sm["n_runs_with_errors"], sm["n_runs"], sm["n_noisy"]))
        for name, e in res["failed"].items():
            L.append("| %s | FAILED | %s | | | | | | | | | | | | | |" % (name, e.splitlines()[0][:150].replace("|", "/")))
        L.append("")
        L.append(self.NOTE % self.args.noisy_threshold + self.discarded(res))
        L.append("")
        L += self.ratio_lines(s, "rps", "throughput", ">1 = Remora serves more req/s")
        L += self.ratio_lines(s, "cpu_us_per_req", "CPU per request", "<1 = Remora uses less CPU per request")
        if res.get("syscalls"):
            L.append("")
            L.append("Syscalls per request (separate %ss wrk run per proxy with `perf stat -e raw_syscalls:sys_enter,...` attached; not part of the timed rounds):" % min(self.args.duration, 5))
            L.append("")
            L.append("| proxy | syscalls / req | context switches / req | breakdown per request |")
            L.append("|---|---:|---:|---|")
            for name, sc in res["syscalls"].items():
                if sc.get("syscalls_per_req") is None:
                    L.append("| %s | — | — | %s |" % (name, (sc.get("error") or "").replace("|", "/")[:120]))
                    continue
                top = sorted(sc.get("per_req", {}).items(), key=lambda kv: -kv[1])
                L.append("| %s | %.2f | %s | %s |" % (name, sc["syscalls_per_req"], f(sc.get("cs_per_req"), "%.3f"),
                                                      ", ".join("%s %.2f" % kv for kv in top if kv[1] >= 0.01)))
            L.append("")
        if "mem_after_load" in res:
            L.append("- RSS after the load (peak VmHWM): " + ", ".join(
                "%s %.1f MiB (peak %.1f)" % (n, m["rss_kb"] / 1024, m["hwm_kb"] / 1024) for n, m in res["mem_after_load"].items()))
        L.append("")
        return L

    def per_round(self, runs, key, fmt):
        return ", ".join(self.fmt(r.get(key), fmt) + ("!" if r.get("error") else "") + ("*" if r.get("noisy") else "")
                         for r in sorted(runs, key=lambda r: r["round"]))

    NOTE = ("Per-round values: `*` = noisy run (other processes used > %.2f cores even after waiting/retrying), "
            "`!` = run with errors; medians use only clean runs when there are any.")

    @staticmethod
    def discarded(res):
        d = res.get("discarded_noisy_runs") or []
        if not d:
            return ""
        return " %d noisy attempt(s) were discarded and repeated (%s); they are kept in the JSON." % (
            len(d), ", ".join("%s r%d" % (x["proxy"], x["round"]) for x in d))

    @staticmethod
    def pct(v):
        return None if v is None else 100 * v

    def report_tcp(self, res):
        f = self.fmt
        L = ["## Scenario B — TCP bulk throughput (`iperf3 %s` through each proxy's TCP listener)" % res["params"]["iperf3"], ""]
        L.append("| proxy | Gbit/s median | Gbit/s per round | proxy CPU s / GB | Gbit/s per proxy core-second | proxy process CPU | load core busy | proxy core busy | other procs (cores) | runs w/ errors | noisy runs |")
        L.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        s = res["summary"]
        for name in s:
            runs = [r for r in res["runs"] if r["proxy"] == name]
            sm = s[name]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d | %d |" % (
                name + (" (no proxy)" if name == "direct" else ""), f(sm["gbps"], "%.2f"),
                self.per_round(runs, "gbps", "%.2f"),
                f(sm["cpu_s_per_gb"], "%.3f"), f(sm["gbps_per_core"], "%.1f"), f(self.pct(sm["proxy_cpu_util"]), "%.0f%%"),
                f(self.pct(sm["load_core_busy"]), "%.0f%%"), f(self.pct(sm["proxy_core_busy"]), "%.0f%%"),
                f(sm["foreign_cores"], "%.2f"), sm["n_runs_with_errors"], sm["n_runs"], sm["n_noisy"]))
        for name, e in res["failed"].items():
            L.append("| %s | FAILED | %s | | | | | | | | |" % (name, e.splitlines()[0][:150].replace("|", "/")))
        skipped = [n for n in self.args.only if n not in SUPPORTS["tcp"]]
        if skipped:
            L.append("| %s | n/a (no plain TCP mode) | | | | | | | | | |" % ", ".join(skipped))
        L.append("")
        L.append(self.NOTE % self.args.noisy_threshold + self.discarded(res))
        L.append("")
        L += self.ratio_lines(s, "gbps", "throughput", ">1 = Remora moves more bytes/s")
        L += self.ratio_lines(s, "cpu_s_per_gb", "CPU per GB", "<1 = Remora uses less CPU per byte")
        L.append("")
        return L

    def report_rss(self, res):
        f = self.fmt
        n = res["params"]["conns"]
        L = ["## Memory — idle, and holding %d idle keep-alive connections (one request each)" % n, ""]
        L.append("| proxy | idle RSS MiB | idle PSS MiB | RSS with conns MiB | PSS with conns MiB | KiB RSS / conn | conns ok / failed | still open at measure | proxy fds | RSS after close MiB | note |")
        L.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
        mib = lambda d, k: None if not d else d.get(k, 0) / 1024  # noqa: E731
        for name, m in res["proxies"].items():
            L.append("| %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s |" % (
                name, f(mib(m["idle"], "rss_kb")), f(mib(m["idle"], "pss_kb")), f(mib(m.get("held"), "rss_kb")),
                f(mib(m.get("held"), "pss_kb")), f(m.get("per_conn_kb"), "%.2f"), m.get("conns_ok", "—"),
                m.get("conns_failed", "—"), m.get("alive_at_measure", "—"), (m.get("held") or {}).get("fds", "—"),
                f(mib(m.get("after_close"), "rss_kb")), (m.get("error") or "").replace("|", "/")[:120]))
        for name, e in res["failed"].items():
            L.append("| %s | FAILED | | | | | | | | | %s |" % (name, e.splitlines()[0][:150].replace("|", "/")))
        L.append("")
        p = res["proxies"]
        for key, label in (("idle", "idle RSS"), ("held", "RSS with %d conns" % n)):
            rem = (p.get("remora", {}).get(key) or {}).get("rss_kb")
            cells = ["Remora/%s = %s" % (TITLES[o], f(ratio(rem, (p.get(o, {}).get(key) or {}).get("rss_kb")), "%.2f"))
                     for o in PEERS if o in p]
            if rem:
                L.append("- %s: %s (<1 = Remora smaller)" % (label, ", ".join(cells)))
        L.append("- RSS/PSS are summed over the proxy's process tree (nginx: master + worker).")
        L.append("")
        return L

    def report_cg(self, res):
        f = self.fmt
        L = ["## Callgrind — instructions per request, %s (`h2load %s`, N=%d after %d warm-up)" % (
            res["params"].get("scenario", "h1"), res["params"]["h2load"], res["params"]["requests"],
            res["params"]["warmup"]), ""]
        L.append("| proxy | Ir / request | total Ir | requests ok / failed | note |")
        L.append("|---|---:|---:|---|---|")
        for name, r in res["proxies"].items():
            L.append("| %s | %s | %s | %s / %s | %s |" % (name, f(r.get("ir_per_req"), "%.0f"), r.get("ir", "—"),
                                                         r.get("requests_ok", "—"), r.get("requests_failed", "—"),
                                                         (r.get("error") or "")[:120]))
        for name, e in res["failed"].items():
            L.append("| %s | FAILED | | | %s |" % (name, e.splitlines()[0][:150].replace("|", "/")))
        L.append("")
        s = {k: v for k, v in res["proxies"].items()}
        L += self.ratio_lines(s, "ir_per_req", "instructions per request", "<1 = Remora executes fewer instructions")
        L.append("")
        return L

    def meta(self):
        cpu_model = "?"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        versions = {
            "haproxy": first_line(["haproxy", "-v"]),
            "nginx": first_line(["nginx", "-v"]),
            "nghttpx": first_line(["nghttpx", "--version"]),
            "wrk": first_line(["wrk", "-v"]),
            "h2load": first_line(["h2load", "--version"]),
            "iperf3": first_line(["iperf3", "--version"]),
        }
        if self.args.callgrind:
            versions["valgrind"] = first_line(["valgrind", "--version"])
        rb = self.args.remora_bin
        if "remora" in self.args.only:
            if os.path.exists(rb):
                st = os.stat(rb)
                with open(rb, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()[:12]
                versions["remora"] = "%s (%.1f MB, built %s, sha256 %s)" % (
                    rb, st.st_size / 1e6, datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M"), digest)
                # run a private copy: the binary may be rebuilt while the benchmark runs
                copy = self.outdir / "remora"
                shutil.copy2(rb, copy)
                self.args.remora_bin = str(copy)
            else:
                versions["remora"] = "%s (missing)" % rb
        git = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "stamp": self.stamp,
                "cpu_model": cpu_model, "ncpu": os.cpu_count(), "kernel": platform.release(),
                "versions": versions, "git": git, "argv": sys.argv[1:]}

    def main(self):
        a = self.args
        self.results["meta"] = self.meta()
        self.results["params"] = {k: v for k, v in vars(a).items()}
        log("output directory %s" % self.outdir)
        if not self.r.pin_ok:
            log("WARNING: CPU pinning disabled (needs >=2 CPUs and taskset)")
        interrupted = None
        try:
            for sc in a.scenarios:
                log("=== scenario %s ===" % sc)
                try:
                    getattr(self, "scenario_" + sc)()
                except (KeyboardInterrupt, Interrupted):
                    raise
                except Exception as e:  # noqa: BLE001 - keep going with the other scenarios
                    import traceback
                    self.err("%s: scenario aborted: %s: %s" % (sc, type(e).__name__, e))
                    traceback.print_exc()
            if a.callgrind:
                log("=== callgrind ===")
                try:
                    self.scenario_callgrind()
                except (KeyboardInterrupt, Interrupted):
                    raise
                except Exception as e:  # noqa: BLE001
                    import traceback
                    self.err("callgrind aborted: %s: %s" % (type(e).__name__, e))
                    traceback.print_exc()
        except (KeyboardInterrupt, Interrupted) as e:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            interrupted = str(e) or "Ctrl-C"
            log("interrupted (%s); stopping everything, writing a partial report" % interrupted)
            self.err("run interrupted (%s): results are partial" % interrupted)
        finally:
            self.r.kill_all()
        json_path = OUT / ("results-%s.json" % self.stamp)
        md_path = OUT / ("results-%s.md" % self.stamp)
        self.results["commands"] = self.r.commands
        self.results["outdir"] = str(self.outdir)
        json_path.write_text(json.dumps(self.results, indent=2, default=str))  # raw numbers first: never lost
        try:
            md = self.report()
        except Exception:  # noqa: BLE001 - a report bug must not lose a 25-minute run
            import traceback
            traceback.print_exc()
            md = "# report failed (see the traceback on stderr); raw results: %s\n" % json_path
        json_path.write_text(json.dumps(self.results, indent=2, default=str))
        md_path.write_text(md)
        print(md)
        log("raw results: %s" % json_path)
        log("report:      %s" % md_path)
        if interrupted:
            sys.exit(130)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1048576, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want if want > hard else hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv):
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="perf/run.sh", description="Side-by-side benchmark of Remora, HAProxy, nginx and nghttpx (one worker each).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 3s runs, 1 round, 1000 idle conns")
    ap.add_argument("--rounds", type=int, default=int(env.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(env.get("DURATION", 10)), help="seconds per measured run in h1 (and tcp)")
    ap.add_argument("--short-duration", type=int, default=int(env.get("SHORT_DURATION", 5)),
                    help="seconds per measured run in post, h2c, grpc, large, churn, latency (keeps a full run under ~25 min)")
    ap.add_argument("--tcp-duration", type=int, default=None, help="seconds per iperf3 run (default: --duration)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up before each measured run")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (h1, post)")
    ap.add_argument("--large-connections", type=int, default=16, help="wrk -c (large: 1 MiB responses)")
    ap.add_argument("--churn-connections", type=int, default=16, help="wrk -c (churn: a new connection per request)")
    ap.add_argument("--h2-clients", type=int, default=16, help="h2load -c (h2c, grpc)")
    ap.add_argument("--h2-streams", type=int, default=32, help="h2load -m: concurrent streams per connection (h2c, grpc)")
    ap.add_argument("--latency-rate", type=int, default=int(env.get("LATENCY_RATE", 10000)),
                    help="total req/s of the latency scenario (spread over --latency-clients connections)")
    ap.add_argument("--latency-clients", type=int, default=16, help="h2load -c (latency)")
    ap.add_argument("--only", default=",".join(ALL_PROXIES), help="comma-separated proxies")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated, any of: " + ",".join(ALL_SCENARIOS))
    ap.add_argument("--callgrind", action="store_true", help="also measure instructions/request under callgrind (slow)")
    ap.add_argument("--cg-requests", type=int, default=20000, help="requests measured under callgrind")
    ap.add_argument("--cg-scenario", choices=("h1", "h2c", "grpc"), default="h1",
                    help="load measured under callgrind: h1 keep-alive (h2load --h1 -c16), h2c or grpc (h2load -c16 -m32)")
    ap.add_argument("--cg-warmup", type=int, default=2000, help="warm-up requests under callgrind (not counted)")
    ap.add_argument("--conns", type=int, default=int(env.get("CONNS", 10000)), help="idle connections for the memory scenario")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading memory")
    ap.add_argument("--quiet-wait", type=float, default=float(env.get("QUIET_WAIT", 60)),
                    help="before each run, wait up to this many seconds for other processes on the machine to go quiet (0 = don't)")
    ap.add_argument("--quiet-threshold", type=float, default=0.15, help="'quiet' = other processes use less than this many cores")
    ap.add_argument("--noisy-threshold", type=float, default=0.2,
                    help="flag a run as noisy when other processes used more than this many cores during it")
    ap.add_argument("--no-syscalls", dest="syscalls", action="store_false",
                    help="skip the extra per-proxy wrk run that counts syscalls with perf stat")
    ap.add_argument("--retry-noisy", type=int, default=int(env.get("RETRY_NOISY", 2)),
                    help="repeat a noisy run up to this many times (the discarded attempts stay in the JSON)")
    ap.add_argument("--no-direct", dest="direct", action="store_false", help="skip the no-proxy baseline runs")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    ap.add_argument("--load-cpu", default=env.get("LOAD_CPU", "0"), help="CPU for wrk/iperf3 client/holder")
    ap.add_argument("--proxy-cpu", default=env.get("PROXY_CPU", "1"), help="CPU for the proxy under test")
    ap.add_argument("--backend-cpu", default=env.get("BACKEND_CPU", "1"),
                    help="CPU for the HTTP backend nginx ('none' = unpinned); shares the proxy's core by default, see README")
    ap.add_argument("--sink-cpu", default=env.get("SINK_CPU", "0"), help="CPU for the iperf3 server (TCP sink)")
    ap.add_argument("--remora-bin", default=env.get("REMORA_BIN", str(REPO / ".build/release/remora")))
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds = 1 if "--rounds" not in argv else a.rounds
        a.duration = 3 if "--duration" not in argv else a.duration
        a.short_duration = 3 if "--short-duration" not in argv else a.short_duration
        if "--conns" not in argv and "CONNS" not in env:
            a.conns = 1000
        if "--cg-requests" not in argv:
            a.cg_requests = 5000
        if "--cg-warmup" not in argv:
            a.cg_warmup = 500
        a.settle = min(a.settle, 1.0)
    if a.tcp_duration is None:
        a.tcp_duration = a.duration
    a.only = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in a.only if p not in ALL_PROXIES]
    if bad:
        ap.error("unknown proxy %s (choose from %s)" % (bad, ALL_PROXIES))
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in a.scenarios if s not in ALL_SCENARIOS]
    if bad:
        ap.error("unknown scenario %s (choose from %s)" % (bad, ALL_SCENARIOS))
    for k in ("load_cpu", "proxy_cpu", "backend_cpu", "sink_cpu"):
        if getattr(a, k) in ("none", ""):
            setattr(a, k, None)
    return a


def main():
    args = parse_args(sys.argv[1:])

    def on_signal(signum, _frame):
        raise Interrupted("signal %d" % signum)

    # install explicitly: a shell starting us in the background may have set SIGINT to SIG_IGN
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    b = Bench(args)
    try:
        b.main()
    except (KeyboardInterrupt, Interrupted) as e:  # e.g. a second Ctrl-C while reporting
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("interrupted (%s); stopping everything" % (e or "Ctrl-C"))
        b.r.kill_all()
        sys.exit(130)


if __name__ == "__main__":
    main()
