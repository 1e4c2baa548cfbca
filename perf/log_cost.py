#!/usr/bin/env python3
"""What a JSON access log costs on the wall clock, side by side: HTTP/1.1 keep-alive (perf/run.sh's h1
scenario) through each proxy with its access log off and with a JSON access log of the same fields on,
rounds interleaved (off, on, on, off, ...), medians of req/s and proxy CPU per request, and on ÷ off.

    perf/log_cost.py                                  # remora, envoy, nginx; 5 rounds of 10 s (~12 min)
    perf/log_cost.py --rounds 3 --only remora,envoy

Each round is one `perf/run.sh --scenarios h1 --rounds 1 --no-direct --no-syscalls` with
REMORA_PERF_ACCESS_LOG unset or `json` (perf/remora_perf/proxies.py: Remora's `access_log: { format: json }`,
Envoy's file access log with `json_format`, nginx's `log_format escape=json` with `buffer=64k flush=1s`;
each logs to a file). The issue's target: Remora's req/s with the log ≥ 0.95x without (envoy#10415
reported Envoy losing about a third). The lines each proxy wrote are counted against the requests sent
(warm-up included): a log that drops lines under load shows below 1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parent
OUT = PERF / "out"


def one_round(only: str, duration: int, logged: bool) -> dict:
    env = dict(os.environ, SKIP_APT="1")
    env.pop("REMORA_PERF_ACCESS_LOG", None)
    if logged:
        env["REMORA_PERF_ACCESS_LOG"] = "json"
    before = set(OUT.glob("results-*.json")) if OUT.exists() else set()
    subprocess.run(["bash", str(PERF / "run.sh"), "--scenarios", "h1", "--rounds", "1", "--only", only,
                    "--duration", str(duration), "--no-direct", "--no-syscalls"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    new = sorted(set(OUT.glob("results-*.json")) - before)
    if not new:
        sys.exit("perf/run.sh wrote no results file")
    res = json.loads(new[-1].read_text())
    runs = {}
    rundir = OUT / ("run-" + new[-1].stem.removeprefix("results-"))
    for r in res["scenarios"]["h1"]["runs"]:
        if r.get("error") or not r.get("rps"):
            continue
        lines = None
        if logged:
            logs = list(rundir.glob("%s-h1-*/access.log" % r["proxy"]))
            lines = sum(1 for f in logs for _ in f.open("rb")) if logs else 0
        sent = r["requests"] + (r.get("warmup_requests") or 0)
        runs[r["proxy"]] = {"rps": r["rps"], "cpu": r["cpu_us_per_req"], "requests": sent, "lines": lines}
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default="remora,envoy,nginx")
    a = ap.parse_args()
    proxies = a.only.split(",")
    data = {p: {"off": [], "json": []} for p in proxies}
    for rnd in range(a.rounds):
        for logged in ((False, True) if rnd % 2 == 0 else (True, False)):
            got = one_round(a.only, a.duration, logged)
            for p, v in got.items():
                data[p]["json" if logged else "off"].append(v)
            print("round %d %-4s %s" % (rnd + 1, "json" if logged else "off", "  ".join(
                "%s %.0f req/s %.1f us/req%s" % (p, v["rps"], v["cpu"],
                                                 (" (%d lines for %d requests with the warm-up)" % (v["lines"], v["requests"]))
                                                 if logged else "") for p, v in got.items())), flush=True)
    print("\n| proxy | req/s off | req/s JSON log | ratio | CPU µs/req off | CPU µs/req JSON log | ratio | lines written / requests |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for p in proxies:
        off, on = data[p]["off"], data[p]["json"]
        if not off or not on:
            print("| %s | (no runs) |" % p)
            continue
        r0, r1 = statistics.median(x["rps"] for x in off), statistics.median(x["rps"] for x in on)
        c0, c1 = statistics.median(x["cpu"] for x in off), statistics.median(x["cpu"] for x in on)
        summary[p] = {"rps_off": r0, "rps_json": r1, "cpu_off": c0, "cpu_json": c1, "rounds": data[p]}
        written = sum(x["lines"] for x in on) / max(1, sum(x["requests"] for x in on))
        print("| %s | %.0f | %.0f | %.3f | %.1f | %.1f | %.3f | %.4f |" % (p, r0, r1, r1 / r0, c0, c1, c1 / c0, written))
    OUT.mkdir(exist_ok=True)
    (OUT / "log_cost.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
