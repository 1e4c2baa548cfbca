"""Scenario tcp: bulk TCP throughput through each proxy's TCP listener (iperf3, one stream)."""
import json
import shutil
import subprocess

from .common import HOST, free_port, log
from .runner import wait_listening
from .sampling import CpuWindow, cpu_seconds


class TCPScenario:
    """Mixin of Bench: scenario_tcp."""

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
