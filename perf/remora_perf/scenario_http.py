"""HTTP scenarios: h1 (keep-alive), post (16 KiB bodies), h2c, grpc, h2c-h1 (h2c client, HTTP/1.1 backend), large (1 MiB responses), churn (a connection per
request) and latency (fixed rate); with the gRPC client check, the mid-response abort check and the syscall count."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

from .common import (GRPC_PATH, GRPC_REQUEST, GRPC_RESPONSE, HOST, LARGE_BYTES, PERF, POST_BYTES, exit_desc, grpc_frame,
                     log, tail)
from .parsers import latency_percentiles, parse_h2load, parse_wrk, remora_bench_latency
from .sampling import CpuWindow, children_cpu, cpu_seconds, cpu_user_sys, mem_snapshot, tcp_active_opens


class HTTPScenarios:
    """Mixin of Bench: one `scenario_<name>` per HTTP scenario, all run by http_scenario()."""

    # scenario -> (load generator, h2c listener + upstream?, one-line description)
    HTTP = {
        "h1": ("wrk", False, "HTTP/1.1 keep-alive, small responses"),
        "post": ("wrk", False, "HTTP/1.1 keep-alive, 16 KiB POST bodies"),
        "h2c": ("h2load", True, "h2c multiplexed, small responses, h2c backend"),
        "grpc": ("h2load", True, "gRPC unary over h2c, h2c backend"),
        "h2c-h1": ("h2load", False, "h2c multiplexed client, HTTP/1.1 backend (512 concurrent requests on upstream connections)"),
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
        if sc in ("h2c", "h2c-h1"):
            return ["h2load", "-t1", "-c%d" % a.h2_clients, "-m%d" % a.h2_streams] + bound + [url], parse_h2load
        if sc == "grpc":
            return ["h2load", "-t1", "-c%d" % a.h2_clients, "-m%d" % a.h2_streams] + bound + [
                    "-d", str(self.grpc_req), "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "http://%s:%d%s" % (HOST, port, GRPC_PATH)], parse_h2load
        if sc == "latency" and a.latency_tool == "remora-bench":
            argv = [a.remora_bin, "bench", "-t", "1", "-c", str(a.latency_clients), "-R", str(a.latency_rate),
                    "-d", "%ds" % seconds, "--no-progress"]
            if rnd_tag:
                argv += ["--json", str(self.outdir / ("latency-%s.json" % rnd_tag))]
            return argv + [url], lambda _: {}
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

    def scenario_h2c_h1(self):
        self.http_scenario("h2c-h1")

    def scenario_large(self):
        self.http_scenario("large")

    def scenario_churn(self):
        self.http_scenario("churn")

    def scenario_latency(self):
        self.http_scenario("latency")

    def http_scenario(self, sc):
        a = self.args
        tool, h2, title = self.HTTP[sc]
        if sc == "latency" and a.latency_tool == "remora-bench":
            tool, title = a.remora_bin, title + " (remora bench -R: coordinated omission corrected)"
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
            if p.start(backend_port=bport, tag=sc + "-", h2=h2, front_h2=sc == "h2c-h1"):
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
                        if not p.start(backend_port=bport, tag=sc + "-", h2=h2, front_h2=sc == "h2c-h1"):
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
                run["warmup_requests"] = wparse(w0.stdout).get("requests")
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
        if sc == "latency" and a.latency_tool == "remora-bench":
            run.update(remora_bench_latency(self.outdir / ("latency-%s.json" % tag)))
        elif sc == "latency":
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
