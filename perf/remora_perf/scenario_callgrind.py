"""Optional pass (--callgrind): instructions per request under callgrind, h1, h2c or grpc load (h2load -n).

perf/cg_guard.py reads scenarios.callgrind.proxies.<name>.{ir_per_req,requests_ok,requests_failed,dump} of the results JSON."""
import os
import re
import shlex
import shutil
import time

from .common import GRPC_REQUEST, HOST, grpc_frame, log
from .proxies import Remora


class CallgrindScenario:
    """Mixin of Bench: scenario_callgrind (run by Bench.main after the other scenarios)."""

    def scenario_callgrind(self):
        a = self.args
        be = self.ensure_backend()
        h2 = a.cg_scenario in ("h2c", "grpc")   # HTTP/2 upstream; h2c-h1: h2c clients, HTTP/1.1 upstream
        front_h2 = a.cg_scenario != "h1"
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
            vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % outfile] + os.environ.get("REMORA_CG_ARGS", "").split()
            if not p.start(backend_port=be.h2_port if h2 else be.port, valgrind=vg, tag="cg-", h2=h2, front_h2=front_h2):
                res["failed"][name] = p.error
                self.err("callgrind: " + p.error)
                continue
            # REMORA_PERF_FRONT=1: the load goes through a Remora in front (tracing on, not measured), so the
            # measured proxy gets a new x-request-id and traceparent on every request, as a sidecar behind
            # another traced hop does (perf/cg_features.py's `propagation`).
            front = None
            if os.environ.get("REMORA_PERF_FRONT"):
                front = Remora(self.r, a.proxy_cpu, self.nofile, a.remora_bin, front=True)
                if not front.start(backend_port=p.http_port, tag="front-", h2=h2):
                    res["failed"][name] = front.error
                    p.stop()
                    continue
                p.load_port = front.http_port
            try:
                res["proxies"][name] = self.callgrind_one(p, outfile)
                r = res["proxies"][name]
                log("callgrind %-8s %s" % (name, ("%.0f Ir/request" % r["ir_per_req"]) if r.get("ir_per_req") else r.get("error")))
            finally:
                p.stop()
                if front:
                    front.stop()

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
        port = getattr(p, "load_port", None) or p.http_port
        self.r.run(self.cg_load_argv(port, a.cg_warmup), cpu=a.load_cpu, timeout=600, note="warm-up")
        z = self.r.run(["callgrind_control", "-z", pid], timeout=60, note="zero the counters")
        if z.returncode != 0:
            r["error"] = "callgrind_control -z failed: " + (z.stdout + z.stderr)[:300]
            return r
        h = self.r.run(self.cg_load_argv(port, a.cg_requests), cpu=a.load_cpu, timeout=3600)
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
