"""The report: medians per proxy, the headline (Remora ÷ best peer, Remora ÷ Envoy), one markdown section per
scenario, the problems and the exact commands (mixin Report of Bench; the chart is plot.py)."""
import os
import time

from .common import (ALL_SCENARIOS, BEST_OF, GRPC_PATH, GRPC_REQUEST, GRPC_RESPONSE, LARGE_BYTES, OUT, PEERS, POST_BYTES,
                     REPO, SC_TITLES, SUPPORTS, TITLES, fmt, grpc_frame, median, ratio, sc_all)
from .plot import svg_chart
from .scenario_rss import WARM


class Report:
    """Mixin of Bench: report() returns the markdown and stores the headline rows in the results."""

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
        L.append("# Remora vs HAProxy vs nginx vs nghttpx vs Envoy — %s" % meta["date"])
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
                svg.write_text(svg_chart(rows, self.results["meta"], self.args.rounds))
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

    fmt = staticmethod(fmt)

    def ratio_lines(self, summary, key, label, better):
        """One line: Remora / each peer, and Remora / the best C peer (highest for '>1' metrics, lowest otherwise)."""
        L = []
        rem = summary.get("remora", {}).get(key)
        higher = better.startswith(">")
        cells, vals = [], {}
        for other in PEERS:
            v = summary.get(other, {}).get(key)
            if other in summary:
                cells.append("Remora/%s = %s" % (TITLES[other], self.fmt(ratio(rem, v), "%.2f")))
                if v is not None and other in BEST_OF:
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
        ("h2c-h1", "rps", "req/s", "", True, "%.0f"),
        ("h2c-h1", "cpu_us_per_req", "CPU per request", "µs", False, "%.2f"),
        ("large", "gbps", "Gbit/s", "", True, "%.2f"),
        ("large", "cpu_s_per_gb", "CPU per GB", "s", False, "%.3f"),
        ("churn", "rps", "connections/s", "", True, "%.0f"),
        ("churn", "cpu_us_per_req", "CPU per connection", "µs", False, "%.2f"),
        ("latency", "added_p50_ms", "p50 added over direct", "ms", False, "%.3f"),
        ("latency", "added_p99_ms", "p99 added over direct", "ms", False, "%.3f"),
        ("latency", "added_p999_ms", "p99.9 added over direct", "ms", False, "%.3f"),
        ("latency", "cpu_us_per_req", "CPU per request at fixed rate", "µs", False, "%.2f"),
        ("tcp", "gbps", "Gbit/s", "", True, "%.2f"),
        ("tcp", "cpu_s_per_gb", "CPU per GB", "s", False, "%.3f"),
        ("rss", "idle_rss", "idle RSS", "MiB", False, "%.1f"),
        ("rss", "held_rss", "RSS holding N idle conns", "MiB", False, "%.1f"),
        ("rss", "per_conn_kb", "RSS per idle connection", "KiB", False, "%.2f"),
    ]

    @staticmethod
    def headline_ratio(key, rem, other):
        """Remora ÷ other for the headline; None without both figures, or for latency added within noise."""
        if rem is None or other is None:
            return None
        if key.startswith("added_") and (other <= 0.001 or rem < 0):
            return None  # latency added within measurement noise: a ratio would be meaningless
        return ratio(rem, other)

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
            c_peers = {k: v for k, v in peers.items() if k in BEST_OF}
            best = (max if higher else min)(c_peers, key=c_peers.get) if c_peers else None
            r = self.headline_ratio(key, rem, peers.get(best) if best else None)
            envoy = peers.get("envoy")
            r_envoy = self.headline_ratio(key, rem, envoy)
            rows.append({"scenario": name, "key": key, "metric": label, "unit": unit, "higher_is_better": higher,
                         "fmt": fm, "remora": rem, "peers": peers, "best": best,
                         "best_value": peers.get(best) if best else None, "ratio_to_best": r,
                         "envoy": envoy, "ratio_to_envoy": r_envoy,
                         "ratios": {k: ratio(rem, v) for k, v in peers.items()},
                         "remora_failed": rem is None and ("remora" in (res.get("failed") or {}) or any(
                             x.get("error") for x in res.get("runs", []) if x["proxy"] == "remora"))})
        return rows

    def report_headline(self, rows):
        f = self.fmt
        envoy = "envoy" in self.args.only
        L = ["## Headline — Remora ÷ best peer%s, every scenario" % (" and ÷ Envoy" if envoy else ""), ""]
        L.append("Best peer = the best of HAProxy, nginx and nghttpx for that figure (highest throughput, lowest CPU/latency/"
                 "memory). Ratio = Remora ÷ best peer: **> 1 is better for throughput, < 1 is better for CPU, latency and memory**."
                 " Medians over rounds; details and every round in the sections below.")
        if envoy:
            L.append("Envoy, the sidecar most service meshes run, has its own columns (Remora ÷ Envoy, read the same way); "
                     "it is not a candidate for best peer.")
        L.append("")
        L.append("| scenario | figure | better | Remora | best peer | Remora ÷ best |%s Remora ÷ each peer | verdict |" % (
            " Envoy | Remora ÷ Envoy |" if envoy else ""))
        L.append("|---|---|:-:|---:|---|---:|%s---|---|" % ("---:|---:|" if envoy else ""))
        for r in rows:
            fm, unit = r["fmt"], (" " + r["unit"] if r["unit"] else "")
            rem = "FAILED" if r["remora_failed"] else f(r["remora"], fm) + (unit if r["remora"] is not None else "")
            best = "%s %s%s" % (TITLES[r["best"]], f(r["best_value"], fm), unit) if r["best"] else "—"
            each = ", ".join("%s %s" % (TITLES[k], f(v, "%.2f")) for k, v in r["ratios"].items() if k in BEST_OF)
            ecells = ""
            if envoy:
                ev, rte = r.get("envoy"), r.get("ratio_to_envoy")
                ecells = " %s | %s |" % (f(ev, fm) + unit if ev is not None else "—", "**%s**" % f(rte, "%.2f") if rte is not None else "—")
            rt = r["ratio_to_best"]
            if rt is None:
                verdict = "Remora failed" if r["remora_failed"] else ("within noise" if r["key"].startswith("added_") and r["remora"] is not None else "—")
            else:
                good = rt >= 1.0 if r["higher_is_better"] else rt <= 1.0
                close = abs(rt - 1.0) <= 0.03
                verdict = "on par (±3%)" if close else ("Remora ahead" if good else "Remora behind")
            L.append("| %s | %s | %s | %s | %s | %s |%s %s | %s |" % (
                SC_TITLES.get(r["scenario"], r["scenario"]), r["metric"], "↑" if r["higher_is_better"] else "↓",
                rem, best, "**%s**" % f(rt, "%.2f") if rt is not None else "—", ecells, each, verdict))
        L.append("")
        if any(r["scenario"] == "rss" for r in rows):
            L.append("Memory is RSS summed over the process tree (nginx and nghttpx: master + worker, so pages they share are "
                     "counted twice; Envoy: one process, all its threads); PSS, which splits shared pages (including shared libraries used by other processes — "
                     "Remora is statically linked), is in the memory section.")
        for sc, issue in (("h2c", "Issue 3"), ("h2c-h1", "Issue 17")):
            h2 = [r for r in rows if r["scenario"] == sc]
            if not h2:
                continue
            cells = []
            for r in h2:
                rt = r["ratios"].get("nghttpx")
                target = "≥ 1.0" if r["higher_is_better"] else "≤ 1.0"
                met = rt is not None and (rt >= 1.0 if r["higher_is_better"] else rt <= 1.0)
                cells.append("%s Remora/nghttpx = %s (target %s: %s)" % (
                    r["metric"], f(rt, "%.2f"), target, "met" if met else "**not met**" if rt is not None else "no data"))
            L.append("")
            L.append("%s target, %s vs nghttpx: " % (issue, sc) + "; ".join(cells) + ".")
        L.append("")
        return L

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
                     ("**p99.9 added** ms", "r", lambda sm, rs: f(sm.get("added_p999_ms"), "%+.3f")),
                     ("p99 ms per round", "l", lambda sm, rs: self.per_round(rs, "lat_p99_ms", "%.3f")),
                     ("p99.9 ms per round", "l", lambda sm, rs: self.per_round(rs, "lat_p999_ms", "%.3f"))]
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
                 ("%s process CPU" % os.path.basename(p["load"].split()[0]), "r", lambda sm, rs: f(self.pct(sm["loadgen_cpu_util"]), "%.0f%%")),
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
            L += self.ratio_lines(s, "added_p999_ms", "p99.9 added over direct", "<1 = Remora adds less latency")
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
                   "connection, keep-alive pool of 1024). nghttpx: CPU of all its processes (master + worker). Envoy: "
                   "`http2_protocol_options` toward the backend; CPU of all its threads (main, one worker, helpers).",
            "h2c-h1": "h2load speaks h2c (prior knowledge) to each proxy (16 connections × 32 streams: 512 concurrent "
                      "requests); every proxy speaks HTTP/1.1 with keep-alive to the backend nginx, so it needs about 512 "
                      "upstream connections and must keep them between requests (`tcp_active_opens` in the JSON counts "
                      "the connects made during a run). Remora runs with its defaults (idle pool by demand, 60 s idle "
                      "timeout); nginx with `listen ... http2` and a keep-alive pool of 1024; nghttpx and Envoy with "
                      "their defaults.",
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
        L += self.mem_after_load(res)
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
        L += self.mem_after_load(res)
        L.append("")
        return L

    @staticmethod
    def mem_after_load(res):
        if "mem_after_load" not in res:
            return []
        return ["- RSS after the load (peak VmHWM): " + ", ".join(
            "%s %.1f MiB (peak %.1f)" % (n, m["rss_kb"] / 1024, m["hwm_kb"] / 1024) for n, m in res["mem_after_load"].items())]

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
        mib = lambda d, k: None if not d else d.get(k, 0) / 1024  # noqa: E731
        tables = [("HTTP/1.1", res["proxies"], "")]
        if "h2c" in res:
            tables.append(("h2c (prior knowledge; one stream each)", res["h2c"], " (h2c)"))
        for title, proxies, suffix in tables:
            L.append("%s:" % title)
            L.append("")
            L.append("| proxy | idle RSS MiB | idle PSS MiB | idle USS MiB | RSS after warm-up MiB | RSS with conns MiB | PSS with conns MiB | KiB RSS / conn | KiB anon / conn | conns ok / failed | still open at measure | proxy fds | RSS after close MiB | note |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
            for name, m in proxies.items():
                L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s |" % (
                    name, f(mib(m["idle"], "rss_kb")), f(mib(m["idle"], "pss_kb")), f(mib(m["idle"], "uss_kb")),
                    f(mib(m.get("warm"), "rss_kb")), f(mib(m.get("held"), "rss_kb")), f(mib(m.get("held"), "pss_kb")), f(m.get("per_conn_kb"), "%.2f"),
                    f(m.get("per_conn_anon_kb"), "%.2f"), m.get("conns_ok", "—"),
                    m.get("conns_failed", "—"), m.get("alive_at_measure", "—"), (m.get("held") or {}).get("fds", "—"),
                    f(mib(m.get("after_close"), "rss_kb")), (m.get("error") or "").replace("|", "/")[:120]))
            for name, e in res["failed"].items():
                if name.endswith(" (h2c)") == bool(suffix):
                    L.append("| %s | FAILED | | | | | | | | | | | | %s |" % (name, e.splitlines()[0][:150].replace("|", "/")))
            L.append("")
        p = res["proxies"]
        for key, label in (("idle", "idle RSS"), ("held", "RSS with %d conns" % n)):
            rem = (p.get("remora", {}).get(key) or {}).get("rss_kb")
            cells = ["Remora/%s = %s" % (TITLES[o], f(ratio(rem, (p.get(o, {}).get(key) or {}).get("rss_kb")), "%.2f"))
                     for o in PEERS if o in p]
            if rem:
                L.append("- %s: %s (<1 = Remora smaller)" % (label, ", ".join(cells)))
        L.append("- Idle = fresh process, before any request. KiB / conn = (with conns − after warm-up) / conns; the warm-up "
                 "(%d connections, one request each, closed) brings in the code and pools a first request needs, so the "
                 "figure is what each held connection adds. KiB anon / conn: the same from anonymous memory alone (heap and "
                 "stacks; code pages mapped back on use are file pages and do not count)." % WARM)
        L.append("- RSS/PSS/USS are summed over the proxy's process tree (nginx: master + worker). USS = pages mapped by "
                 "the process alone (private clean + dirty, from smaps_rollup); PSS adds its share of shared pages.")
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
