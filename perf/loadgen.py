#!/usr/bin/env python3
"""Load generators side by side: `remora bench` vs wrk (HTTP/1.1 keep-alive) and vs h2load (h2c),
one thread each, against the same backend in one run, rounds alternating the tools. Stdlib only.

    python3 perf/loadgen.py                 # 5 rounds x 10 s per tool and scenario (~7 min)
    python3 perf/loadgen.py --callgrind     # also instructions per request of each generator
    python3 perf/loadgen.py --help

See perf/README.md ("Load generators: loadgen.py") for what is measured and how to read it.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from remora_perf.backend import Backend
from remora_perf.common import HOST, OUT, REPO, Interrupted, first_line, free_port, log, median, ratio, tail
from remora_perf.parsers import parse_h2load, parse_wrk
from remora_perf.runner import Runner, wait_listening
from remora_perf.sampling import CpuWindow, cpu_seconds, proc_tree, wait_quiet

# Debian packages: always, with --backend nginx, with --callgrind (apt-get installs the missing ones, as perf/run.sh does)
PACKAGES = ["wrk", "nghttp2-client", "util-linux"]
NGINX_PACKAGES = ["nginx"]
CG_PACKAGES = ["valgrind", "binutils"]
# The function each generator runs its event loop in: under callgrind only instructions executed
# inside it are counted (--toggle-collect), so start-up and the final report are left out.
LOOP_FUNCTION = {"remora": "uv_run", "wrk": "aeMain", "h2load": "ev_run"}
BUSY = 0.90   # a backend busier than this (share of its core): the backend, not the generator, sets req/s


def scenarios(args):
    """[(name, protocol, connections, streams per connection)]"""
    out = [("h1 -c%d" % n, "h1", n, 1) for n in args.connections]
    if args.h2c:
        out.append(("h2c -c%d -m%d" % (args.h2_clients, args.h2_streams), "h2c", args.h2_clients, args.h2_streams))
    return out


def peers(proto, callgrind=False):
    """The load generators compared on `proto`, Remora first. Under callgrind HTTP/1.1 also gets
    `h2load --h1`: a reference that, unlike wrk, stops after a request count."""
    if proto == "h2c":
        return ["remora", "h2load"]
    return ["remora", "wrk", "h2load"] if callgrind else ["remora", "wrk"]


def tool_argv(tool, proto, conns, streams, url, remora_bin, seconds=None, requests=None, json_path=None):
    """One thread, `conns` connections; `seconds` (time-bound) or `requests` (count-bound)."""
    if tool == "wrk":   # no request count in wrk: always time-bound
        return ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, url]
    if tool == "h2load":
        argv = ["h2load", "-t1", "-c%d" % conns] + (["--h1"] if proto == "h1" else ["-m%d" % streams])
        return argv + (["-D", str(seconds)] if seconds else ["-n%d" % requests]) + [url]
    argv = [remora_bin, "bench", "-t", "1", "-c", str(conns)]
    if proto == "h2c":
        argv += ["--h2c", "-m", str(streams)]
    argv += ["-d", "%ds" % seconds] if seconds else ["-n", str(requests)]
    return argv + (["--json", str(json_path)] if json_path else []) + [url]


def parse_output(tool, text, json_path=None):
    """{rps, requests, errors} from a generator's output (remora bench: its --json)."""
    if tool == "remora":
        try:
            doc = json.loads(Path(json_path).read_text())
        except (OSError, ValueError, TypeError):
            return {"rps": None, "requests": None, "errors": None}
        non2xx = sum(n for code, n in doc.get("status", {}).items() if not code.startswith("2"))
        return {"rps": doc.get("requests_per_s"), "requests": doc.get("responses"),
                "errors": doc.get("errors_total", 0) + non2xx}
    if tool == "wrk":
        r = parse_wrk(text)
        return {"rps": r.get("rps"), "requests": r.get("requests"), "errors": r.get("socket_errors", 0) + r.get("non2xx", 0)}
    r = parse_h2load(text)
    return {"rps": r.get("rps"), "requests": r.get("requests"), "errors": r.get("failed", 0) + r.get("non2xx", 0)}


def killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


# --------------------------------------------------------------------------- backends

class RemoraBackend:
    """`remora run`, one worker, one route answering every request with a direct response
    (`direct_response: { status: 200, body: "ok\\n" }`): no upstream, HTTP/1.1 and h2c on one port."""

    def __init__(self, runner, cpu, binary):
        self.r, self.cpu, self.binary = runner, cpu, binary
        self.port = free_port()
        self.proc = None

    def start(self):
        d = self.r.outdir / "backend-remora"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "remora.yaml"
        conf.write_text("workers: 1\nlisteners:\n  - name: web\n    address: %s:%d\n    protocol: http\n"
                        "    routes:\n      - name: ok\n        direct_response: { status: 200, body: \"ok\\n\" }\n"
                        % (HOST, self.port))
        self.proc = self.r.spawn([self.binary, "run", "--config", str(conf)], cpu=self.cpu,
                                 log_path=d / "output.log", note="backend")
        err = wait_listening([self.port], self.proc, 20)
        if err:
            raise RuntimeError("backend remora: %s\n%s" % (err, tail(d / "output.log")))

    def url(self, proto):
        return "http://%s:%d/" % (HOST, self.port)

    def pids(self):
        return proc_tree(self.proc.pid) if self.proc else []


class NginxBackend(Backend):
    """bench.py's backend (remora_perf.backend): nginx, one worker, `/` -> 200 "ok\\n" on an HTTP/1.1 and an h2c port."""

    def url(self, proto):
        return "http://%s:%d/" % (HOST, self.h2_port if proto == "h2c" else self.port)


# --------------------------------------------------------------------------- the comparison

class LoadGen:
    def __init__(self, args):
        self.a = args
        self.stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.outdir = OUT / ("loadgen-" + self.stamp)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.r = Runner(args, self.outdir)
        self.runs = []        # every measured run (discarded noisy attempts included, flagged)
        self.callgrind = []   # one record per generator and scenario
        self.problems = []
        self.seq = 0

    def backend(self):
        a = self.a
        if a.backend == "remora":
            return RemoraBackend(self.r, a.backend_cpu, a.remora_bin)
        return NginxBackend(self.r, a.backend_cpu, 4096)

    def launch(self, tool, sc, url, seconds=None, requests=None, backend=None, prefix=None, remora_bin=None,
               note=None):
        """Runs one generator to its end on the load core; returns what it did and what it cost.
        `prefix`: valgrind's command line; `remora_bin`: another binary than --remora-bin."""
        name, proto, conns, streams = sc
        self.seq += 1
        tag = "%03d-%s-%s" % (self.seq, tool, name.replace(" ", "").replace("-", "_"))
        json_path = self.outdir / (tag + ".json") if tool == "remora" else None
        log_path = self.outdir / (tag + ".log")
        argv = (prefix or []) + tool_argv(tool, proto, conns, streams, url, remora_bin or self.a.remora_bin, seconds,
                                          requests, json_path)
        window = CpuWindow().start()
        b0 = cpu_seconds(backend.pids()) if backend else 0.0
        p = self.r.spawn(argv, cpu=self.a.load_cpu, log_path=log_path, note=note or tool)
        limit = (seconds or 0) + (600 if prefix else 60)
        watchdog = threading.Timer(limit, killpg, (p.pid,))
        watchdog.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)   # the generator's own CPU time, every thread, its whole life
        finally:
            watchdog.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        self.r.procs.remove(p)
        cpu = window.stop()
        rec = {"tool": tool, "scenario": name, "exit": p.returncode, "log": str(log_path), "argv": argv,
               "wall_s": cpu["wall_s"], "foreign_cores": cpu["foreign_cores"],
               "gen_user_s": ru.ru_utime, "gen_sys_s": ru.ru_stime}
        rec.update(parse_output(tool, tail(log_path, 400), json_path))
        if backend:
            rec["backend_cpu_s"] = cpu_seconds(backend.pids()) - b0
            rec["backend_busy"] = rec["backend_cpu_s"] / cpu["wall_s"]
        for role, c in (("load_core_busy", self.a.load_cpu), ("backend_core_busy", self.a.backend_cpu)):
            if c is not None and int(c) in cpu["busy"]:
                rec[role] = cpu["busy"][int(c)][0]
        if rec["requests"]:
            n = rec["requests"]
            rec["cpu_us_per_req"] = (ru.ru_utime + ru.ru_stime) * 1e6 / n
            if rec.get("load_core_busy") is not None:   # + softirq work and anything else on the load core
                rec["load_core_us_per_req"] = rec["load_core_busy"] * cpu["wall_s"] * 1e6 / n
            if backend:
                rec["backend_us_per_req"] = rec["backend_cpu_s"] * 1e6 / n
        if p.returncode != 0 or not rec["requests"] or rec["errors"]:
            self.problems.append("%s %s: exit %s, %s requests, %s errors (%s)" % (
                tool, name, p.returncode, rec["requests"], rec["errors"], log_path))
        return rec

    def measured_run(self, tool, sc, url, backend, rnd):
        a = self.a
        if a.warmup:
            self.launch(tool, sc, url, seconds=a.warmup, backend=backend, note="warm-up, not measured")
        for attempt in range(a.retry_noisy + 1):
            waited, _ = wait_quiet(a.quiet_wait, a.quiet_threshold)
            rec = self.launch(tool, sc, url, seconds=a.duration, backend=backend)
            rec.update(round=rnd, attempt=attempt, quiet_wait_s=round(waited, 1),
                       noisy=(rec["foreign_cores"] or 0) > a.noisy_threshold)
            self.runs.append(rec)
            log("round %d %-14s %-7s %8.0f req/s  %5.2f us/req (load core %5.2f)  backend %3.0f%% (%5.2f us/req)  "
                  "other procs %.2f cores%s" % (
                      rnd + 1, sc[0], tool, rec["rps"] or 0, rec.get("cpu_us_per_req") or 0, rec.get("load_core_us_per_req") or 0,
                      100 * rec.get("backend_busy", 0), rec.get("backend_us_per_req") or 0, rec["foreign_cores"] or 0,
                      "  NOISY" if rec["noisy"] else ""))
            if not rec["noisy"]:
                return
            rec["discarded"] = attempt < a.retry_noisy

    def measure_callgrind(self, sc, url):
        a = self.a
        nodebug = self.outdir / "remora.nodebug"
        if not nodebug.exists():   # valgrind 3.19 cannot read Swift's DWARF 5; symbols are kept
            self.r.run(["strip", "--strip-debug", "-o", str(nodebug), a.remora_bin], timeout=120,
                       note="valgrind 3.19 cannot read Swift's DWARF 5")
        for tool in peers(sc[1], callgrind=True):
            out = self.outdir / ("callgrind.%s.%s.out" % (tool, sc[0].replace(" ", "")))
            prefix = ["valgrind", "--tool=callgrind", "--toggle-collect=" + LOOP_FUNCTION[tool],
                      "--callgrind-out-file=" + str(out)]
            if tool == "wrk":
                rec = self.launch(tool, sc, url, seconds=a.cg_wrk_seconds, prefix=prefix)
            else:
                rec = self.launch(tool, sc, url, requests=a.cg_requests, prefix=prefix, remora_bin=str(nodebug))
            ir = None
            try:
                for line in out.read_text().splitlines():
                    if line.startswith(("summary:", "totals:")):
                        ir = int(line.split()[1])
                        break
            except OSError:
                pass
            rec["ir"] = ir
            rec["ir_per_req"] = ir / rec["requests"] if ir and rec["requests"] else None
            self.callgrind.append(rec)
            log("callgrind %-14s %-7s %s requests, %s Ir/request" % (
                sc[0], tool, rec["requests"], "%.0f" % rec["ir_per_req"] if rec["ir_per_req"] else "?"))

    def main(self):
        a = self.a
        meta = machine(a)
        log("output %s; backend %s on CPU %s, generators on CPU %s" % (self.outdir, a.backend, a.backend_cpu, a.load_cpu))
        backend = self.backend()
        interrupted = None
        try:
            backend.start()
            for rnd in range(a.rounds):
                for sc in scenarios(a):
                    url = backend.url(sc[1])
                    tools = peers(sc[1])
                    k = rnd % len(tools)
                    for tool in tools[k:] + tools[:k]:   # alternate who goes first
                        self.measured_run(tool, sc, url, backend, rnd)
            if a.callgrind:
                for sc in scenarios(a):
                    self.measure_callgrind(sc, backend.url(sc[1]))
        except (KeyboardInterrupt, Interrupted) as e:   # report what was measured, then stop
            interrupted = e
            self.problems.append("interrupted (%s): partial results" % (e or "Ctrl-C"))
        finally:
            self.r.kill_all()
        doc = {"meta": meta, "outdir": str(self.outdir), "params": {k: v for k, v in vars(a).items()}, "runs": self.runs,
               "callgrind": self.callgrind, "problems": self.problems, "commands": self.r.commands}
        base = OUT / ("loadgen-" + self.stamp)
        base.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
        text = report(doc)
        base.with_suffix(".md").write_text(text)
        print(text)
        log("wrote %s.md and %s.json" % (base, base))
        if interrupted:
            raise interrupted


# --------------------------------------------------------------------------- report

def summarize(runs, scenario, tool):
    mine = [r for r in runs if r["scenario"] == scenario and r["tool"] == tool and not r.get("discarded")]
    clean = [r for r in mine if r["requests"] and not r["errors"]] or mine
    quiet = [r for r in clean if not r["noisy"]] or clean

    def med(k):
        return median([r.get(k) for r in quiet])

    return {"rps": med("rps"), "cpu_us_per_req": med("cpu_us_per_req"), "backend_busy": med("backend_busy"),
            "load_core_busy": med("load_core_busy"), "rounds": [r["rps"] for r in mine],
            "rounds_cpu": [r.get("cpu_us_per_req") for r in mine], "noisy_flags": [r["noisy"] for r in mine]}


def fmt(v, f="%.0f"):
    return "—" if v is None else f % v


def pct(v):
    return "—" if v is None else "%.0f%%" % (100 * v)


def report(doc):
    m, p = doc["meta"], doc["params"]
    L = ["# Load generators side by side — %s" % m["date"], "",
         "Machine: %s, %d vCPU, kernel %s. Remora git %s. Backend: **%s** (one worker) on CPU %s; each "
         "generator one thread on CPU %s. %d rounds × %d s per generator and scenario (+ %d s warm-up each), "
         "the order alternating every round; medians over rounds." % (
             m["cpu_model"], m["ncpu"], m["kernel"], m["git"], p["backend"],
             p["backend_cpu"], p["load_cpu"], p["rounds"], p["duration"], p["warmup"])]
    if doc["runs"]:
        L += ["", "| scenario | generator | req/s | CPU µs/req | backend busy | load core busy | Remora ÷ peer: req/s (↑) "
              "| CPU/req (↓) | req/s per round | CPU µs/req per round |", "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    verdicts = []
    for name in dict.fromkeys(r["scenario"] for r in doc["runs"]):
        s = {t: summarize(doc["runs"], name, t) for t in dict.fromkeys(r["tool"] for r in doc["runs"] if r["scenario"] == name)}
        for t, x in s.items():
            ratios = ["", ""]
            if t != "remora" and "remora" in s:
                ratios = [fmt(ratio(s["remora"][k], x[k]), "%.2f×") for k in ("rps", "cpu_us_per_req")]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, "remora bench" if t == "remora" else t, fmt(x["rps"]), fmt(x["cpu_us_per_req"], "%.2f"),
                pct(x["backend_busy"]), pct(x["load_core_busy"]), ratios[0], ratios[1],
                ", ".join(fmt(v) + ("*" if n else "") for v, n in zip(x["rounds"], x["noisy_flags"])),
                ", ".join(fmt(v, "%.2f") for v in x["rounds_cpu"])))
        busiest = max((x["backend_busy"] or 0) for x in s.values())
        load = max((x["load_core_busy"] or 0) for x in s.values())
        if busiest >= BUSY:
            verdicts.append("* %s: **backend-bound** (backend up to %.0f%% of its core%s): req/s is the backend's capacity "
                            "more than the generators'; CPU µs/req (and Ir/req) carry the comparison." % (
                                name, 100 * busiest, ", load core up to %.0f%%: both saturated" % (100 * load) if load >= BUSY else ""))
        else:
            verdicts.append("* %s: the backend had room (at most %.0f%% of its core): req/s is set by the generators." % (
                name, 100 * busiest))
    if doc["runs"]:
        L += ["", "Ratios: req/s > 1 and CPU/req < 1 mean `remora bench` does better. CPU µs/req = the generator "
              "process's user+sys time over its whole life (`wait4` rusage: start-up and report included, softirq work "
              "on its core not) ÷ the responses it counted. Backend busy = the backend process's CPU time ÷ wall time. "
              "`*` = a run during which other processes used more than %.2f cores." % p["noisy_threshold"], ""] + verdicts
    if doc["callgrind"]:
        L += ["", "## Instructions per request (callgrind)", "",
              "User-space instructions executed inside each generator's event-loop function (`--toggle-collect`: "
              "remora `uv_run`, wrk `aeMain`, h2load `ev_run`) ÷ responses; start-up and the final report excluded, "
              "kernel work not counted. %d requests (wrk: %d s, it has no request count; `h2load --h1 -n` is the "
              "count-bound HTTP/1.1 reference)." % (p["cg_requests"], p["cg_wrk_seconds"]), "",
              "| scenario | generator | requests | Ir/request | Remora ÷ this |", "|---|---|---:|---:|---:|"]
        rem = {r["scenario"]: r["ir_per_req"] for r in doc["callgrind"] if r["tool"] == "remora"}
        for r in doc["callgrind"]:
            label = {"remora": "remora bench", "h2load": "h2load --h1" if r["scenario"].startswith("h1") else "h2load"}.get(r["tool"], r["tool"])
            L.append("| %s | %s | %s | %s | %s |" % (r["scenario"], label, fmt(r["requests"]), fmt(r["ir_per_req"]),
                                                     "" if r["tool"] == "remora" else fmt(ratio(rem.get(r["scenario"]), r["ir_per_req"]), "%.2f×")))
    quiet = [r["foreign_cores"] or 0 for r in doc["runs"]]
    waited = sum(r.get("quiet_wait_s", 0) for r in doc["runs"])
    L += ["", "Other processes during the measured runs: median %.2f, max %.2f cores; %.0f s spent waiting for quiet; "
          "%d of %d runs noisy (re-run up to %d times)." % (
              median(quiet) or 0, max(quiet or [0]), waited, sum(r["noisy"] for r in doc["runs"]), len(doc["runs"]),
              p["retry_noisy"])]
    if doc["problems"]:
        L += ["", "## Problems", ""] + ["* " + x for x in doc["problems"]]
    L += ["", "## Versions", ""] + ["* %s: %s" % kv for kv in m["versions"].items()]
    # one line per distinct command: the run directory as $OUT, per-run file numbers as NNN
    cmds = dict.fromkeys(re.sub(r"/\d{3}-", "/NNN-", c.replace(doc["outdir"], "$OUT")) for c in doc["commands"])
    L += ["", "## Commands", "", "```sh", "python3 perf/loadgen.py " + " ".join(m["argv"]), "OUT=" + doc["outdir"]]
    L += list(cmds) + ["```", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------- set-up

def machine(args):
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    versions = {"wrk": first_line(["wrk", "-v"]), "h2load": first_line(["h2load", "--version"])}
    if args.backend == "nginx":
        versions["nginx"] = first_line(["nginx", "-v"])
    if args.callgrind:
        versions["valgrind"] = first_line(["valgrind", "--version"])
    st = os.stat(args.remora_src)
    versions["remora"] = "%s (built %s)" % (args.remora_src, datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M"))
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_model": model, "ncpu": os.cpu_count(),
            "kernel": platform.release(), "git": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "versions": versions, "argv": sys.argv[1:]}


def install(packages):
    """apt-get install what is missing (SKIP_APT=1: only say so)."""
    missing = [p for p in packages if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                                     text=True).stdout.find("install ok installed") < 0]
    if not missing:
        return
    if os.environ.get("SKIP_APT") == "1":
        log("missing packages (SKIP_APT=1, not installing): %s" % " ".join(missing))
        return
    log("installing missing packages: %s" % " ".join(missing))
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = sudo + ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update"], env=env)
        subprocess.run(cmd, env=env)


def parse_args(argv):
    env = os.environ
    ap = argparse.ArgumentParser(prog="perf/loadgen.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="remora bench vs wrk (HTTP/1.1) and h2load (h2c), one thread each, same backend.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of the same generator before each measured run (not measured)")
    ap.add_argument("--connections", default="16,64", help="HTTP/1.1 scenarios: one per connection count")
    ap.add_argument("--h2-clients", type=int, default=16, help="h2c: connections")
    ap.add_argument("--h2-streams", type=int, default=32, help="h2c: concurrent streams per connection")
    ap.add_argument("--no-h2c", dest="h2c", action="store_false", help="skip the h2c scenario")
    ap.add_argument("--backend", choices=("remora", "nginx"), default="remora",
                    help="remora: `remora run` with a direct response (the cheapest measured, see README); nginx: one worker")
    ap.add_argument("--callgrind", action="store_true", help="also instructions per request of each generator (valgrind)")
    ap.add_argument("--cg-requests", type=int, default=50000, help="requests per generator under callgrind")
    ap.add_argument("--cg-wrk-seconds", type=int, default=2, help="wrk's run under callgrind (it has no request count)")
    ap.add_argument("--load-cpu", default=env.get("LOAD_CPU", "0"), help="CPU for the generators ('none' = unpinned)")
    ap.add_argument("--backend-cpu", default=env.get("BACKEND_CPU", "1"), help="CPU for the backend ('none' = unpinned)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    ap.add_argument("--quiet-wait", type=float, default=60, help="before each run, wait up to this many s for other processes to go quiet")
    ap.add_argument("--quiet-threshold", type=float, default=0.15, help="'quiet' = other processes use fewer cores than this")
    ap.add_argument("--noisy-threshold", type=float, default=0.2, help="a run is noisy when other processes used more cores than this")
    ap.add_argument("--retry-noisy", type=int, default=2, help="re-run a noisy run up to this many times")
    ap.add_argument("--remora-bin", default=env.get("REMORA_BIN", str(REPO / ".build/release/remora")))
    a = ap.parse_args(argv)
    a.connections = [int(x) for x in a.connections.split(",") if x.strip()]
    for k in ("load_cpu", "backend_cpu"):
        if getattr(a, k) in ("none", ""):
            setattr(a, k, None)
    return a


def main():
    args = parse_args(sys.argv[1:])
    install(PACKAGES + (NGINX_PACKAGES if args.backend == "nginx" else []) + (CG_PACKAGES if args.callgrind else []))
    if not os.access(args.remora_bin, os.X_OK) and "REMORA_BIN" not in os.environ:
        log("building Remora: swift build -c release --static-swift-stdlib")
        subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib"], cwd=REPO, check=True)
    # run a private copy: the binary may be rebuilt while this runs
    lg = LoadGen(args)
    args.remora_src = args.remora_bin
    shutil.copy2(args.remora_bin, lg.outdir / "remora")
    args.remora_bin = str(lg.outdir / "remora")

    def on_signal(signum, _frame):
        raise Interrupted("signal %d" % signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        lg.main()
    except (KeyboardInterrupt, Interrupted) as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("interrupted (%s)" % e)
        lg.r.kill_all()
        sys.exit(130)


if __name__ == "__main__":
    main()
