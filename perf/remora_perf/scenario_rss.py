"""Scenario rss: memory of each proxy idle and holding N idle keep-alive connections, HTTP/1.1 and h2c (perf/holdconns.py)."""
import re
import subprocess
import sys
import threading
import time

from .common import HOST, PERF, log, tail
from .sampling import mem_snapshot

WARM = 256   # warm-up connections before the baseline of the per-connection figure


class MemoryScenario:
    """Mixin of Bench: scenario_rss."""

    def scenario_rss(self):
        a = self.args
        be = self.ensure_backend()
        protocols = [x.strip() for x in a.rss_protocols.split(",") if x.strip() in ("h1", "h2c")] or ["h1"]
        res = {"proxies": {}, "failed": {}, "params": {"conns": a.conns, "settle_s": a.settle, "protocols": protocols}}
        self.results["scenarios"]["rss"] = res
        for proto in protocols:
            h2 = proto == "h2c"
            # HTTP/1.1 results stay under "proxies" (the headline's), h2c ones go under "h2c".
            into = res.setdefault("h2c", {}) if h2 else res["proxies"]
            for name in a.only:
                p = self.make_proxy(name)
                if not p.start(backend_port=be.h2_port if h2 else be.port, tag="rss-h2c-" if h2 else "rss-", h2=h2):
                    res["failed"][name + (" (h2c)" if h2 else "")] = p.error
                    self.err("rss %s: %s" % (proto, p.error))
                    continue
                try:
                    into[name] = self.rss_one(p, h2)
                finally:
                    p.stop()
                m = into[name]
                log("rss %-8s %-3s idle %.1f MiB, with %d conns %.1f MiB (%s)" % (
                    name, proto, m["idle"]["rss_kb"] / 1024, m.get("conns_ok", 0),
                    (m.get("held") or {}).get("rss_kb", 0) / 1024, m.get("error") or "ok"))

    def rss_one(self, p, h2=False):
        a = self.args
        time.sleep(a.settle)
        out = {"idle": mem_snapshot(p.pids())}
        # Warm-up: WARM connections, one request each, closed again. The code and pools a first request
        # brings in are then part of the baseline, so that the per-connection figure is the connections'.
        warm_log = self.outdir / ("holdconns-%s%s-warmup.log" % (p.name, "-h2c" if h2 else ""))
        warm = self.r.spawn([sys.executable, str(PERF / "holdconns.py"), HOST, str(p.http_port), str(WARM),
                             "--concurrency", "64"] + (["--h2c"] if h2 else []), cpu=a.load_cpu, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, log_path=warm_log, note="warm-up connections")
        try:
            if (self.read_line(warm, 60) or "").startswith("OPENED"):
                warm.stdin.write(b"quit\n")
                warm.stdin.flush()
                self.read_line(warm, 30)
        finally:
            self.r.kill(warm, grace=2)
        time.sleep(a.settle)
        out["warm"] = mem_snapshot(p.pids())
        holder_log = self.outdir / ("holdconns-%s%s.log" % (p.name, "-h2c" if h2 else ""))
        holder = self.r.spawn([sys.executable, str(PERF / "holdconns.py"), HOST, str(p.http_port), str(a.conns),
                               "--concurrency", "64"] + (["--h2c"] if h2 else []), cpu=a.load_cpu, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, log_path=holder_log,
                              note="connection holder" + (" (h2c)" if h2 else ""))
        try:
            line = self.read_line(holder, 120 + a.conns / 100)
            m = re.match(r"OPENED ok=(\d+) failed=(\d+) secs=([\d.]+) first_error=(\S+)", line or "")
            if not m:
                out["error"] = "holder failed: %r %s" % (line, tail(holder_log))
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
                base = out["warm"]
                out["per_conn_kb"] = (out["held"]["rss_kb"] - base["rss_kb"]) / out["conns_ok"]
                out["per_conn_pss_kb"] = (out["held"]["pss_kb"] - base["pss_kb"]) / out["conns_ok"]
                out["per_conn_uss_kb"] = (out["held"]["uss_kb"] - base["uss_kb"]) / out["conns_ok"]
                out["per_conn_anon_kb"] = (out["held"]["anon_kb"] - base["anon_kb"]) / out["conns_ok"]
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
