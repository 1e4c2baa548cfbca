"""The benchmark run: backend, proxies, scenarios in order, results JSON and report (class Bench)."""
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import sys
import time

from .backend import Backend
from .common import ALL_PROXIES, OUT, REPO, SUPPORTS, Interrupted, base_proxy, first_line, log, variant
from .proxies import Envoy, HAProxy, Nghttpx, Nginx, Remora
from .report import Report
from .runner import Runner, raise_nofile
from .sampling import wait_quiet
from .scenario_callgrind import CallgrindScenario
from .scenario_http import HTTPScenarios
from .scenario_rss import MemoryScenario
from .scenario_tcp import TCPScenario


class Bench(HTTPScenarios, TCPScenario, MemoryScenario, CallgrindScenario, Report):
    """One run: the scenarios named by --scenarios (each a `scenario_<name>` method of a mixin), then the
    optional callgrind pass, then the report. Raw results go to perf/out/results-<stamp>.json first."""

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
        p = self.make_base_proxy(base_proxy(name))
        if name != p.name:   # `<proxy>+jsonlog`, `remora+tracing`
            p.name = name
            if variant(name) == "+jsonlog":
                p.access_log = "json"
            else:
                p.tracing = True
        return p

    def make_base_proxy(self, name):
        a = self.args
        if name == "remora":
            return Remora(self.r, a.proxy_cpu, self.nofile, a.remora_bin)
        if name == "haproxy":
            return HAProxy(self.r, a.proxy_cpu, self.nofile)
        if name == "nghttpx":
            return Nghttpx(self.r, a.proxy_cpu, self.nofile)
        if name == "envoy":
            return Envoy(self.r, a.proxy_cpu, self.nofile, a.envoy_bin)
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
        return [n for n in self.args.only if base_proxy(n) in SUPPORTS.get(sc, ALL_PROXIES)]


    # ---------------- shared by the scenarios: noisy machine, CPU windows
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


    # ---------------- the run
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
        if "envoy" in self.args.only:
            # "<path>  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL"
            v = first_line([self.args.envoy_bin or "envoy", "--version"])
            versions["envoy"] = "%s (%s)" % (v.split("version:", 1)[-1].strip(), self.args.envoy_bin)
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
                    getattr(self, "scenario_" + sc.replace("-", "_"))()
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
