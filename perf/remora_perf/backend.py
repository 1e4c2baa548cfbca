"""The HTTP backend every proxy forwards to: nginx, one worker, on an HTTP/1.1 and an h2c port."""
from .common import GRPC_PATH, GRPC_RESPONSE, HOST, LARGE_BYTES, free_port, grpc_frame, log, tail
from .runner import wait_listening
from .sampling import proc_tree


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
        end = """\";
            add_trailer grpc-status 0 always;
        }
    }
}
"""
        conf.write_bytes(head.encode() + grpc_frame(GRPC_RESPONSE) + end.encode())
        self.proc = self.r.spawn(["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                                 cpu=self.cpu, log_path=self.dir / "stderr.log", note="backend")
        err = wait_listening([self.port, self.h2_port], self.proc, 10)
        if err:
            raise RuntimeError("backend nginx failed: %s\n%s" % (err, tail(self.dir / "error.log")))
        log("backend nginx on %s:%d (HTTP/1.1) and :%d (h2c) (cpu %s)" % (HOST, self.port, self.h2_port, self.cpu))

    def pids(self):
        return proc_tree(self.proc.pid) if self.proc else []
