"""Scenario rss: memory of each proxy idle and holding N idle keep-alive connections (perf/holdconns.py)."""
import re
import subprocess
import sys
import threading
import time

from .common import HOST, PERF, log, tail
from .sampling import mem_snapshot


class MemoryScenario:
    """Mixin of Bench: scenario_rss."""

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
