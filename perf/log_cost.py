#!/usr/bin/env python3
"""What a JSON access log costs on the wall clock, side by side: HTTP/1.1 keep-alive (perf/run.sh's h1
scenario) through each proxy with its access log off and with a JSON access log of the same fields on,
medians of req/s and proxy CPU per request over the rounds, and on ÷ off.

    perf/log_cost.py                                  # remora, envoy, nginx; 5 rounds of 10 s (~6 min)
    perf/log_cost.py --rounds 3 --only remora,envoy

One `perf/run.sh --scenarios h1 --no-direct --no-syscalls --only remora,remora+jsonlog,envoy,...`: each
proxy runs twice, as it is and as its `+jsonlog` variant (perf/remora_perf/proxies.py: Remora's
`access_log: { format: json }`, Envoy's file access log with `json_format`, nginx's `log_format
escape=json` with `buffer=64k flush=1s`; each logs to a file), and every round measures both a few
seconds apart (run.sh rotates the order each round), so the machine's drift between rounds cancels out
of each round's ratio. The issue's target: Remora's req/s with the log ≥ 0.95x without (envoy#10415
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
VARIANT = "+jsonlog"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default="remora,envoy,nginx")
    a = ap.parse_args()
    proxies = a.only.split(",")
    env = dict(os.environ, SKIP_APT="1")
    env.pop("REMORA_PERF_ACCESS_LOG", None)
    before = set(OUT.glob("results-*.json")) if OUT.exists() else set()
    subprocess.run(["bash", str(PERF / "run.sh"), "--scenarios", "h1", "--rounds", str(a.rounds),
                    "--only", ",".join(x for p in proxies for x in (p, p + VARIANT)),
                    "--duration", str(a.duration), "--no-direct", "--no-syscalls"], env=env, check=True)
    new = sorted(set(OUT.glob("results-*.json")) - before)
    if not new:
        sys.exit("perf/run.sh wrote no results file")
    res = json.loads(new[-1].read_text())
    rundir = OUT / ("run-" + new[-1].stem.removeprefix("results-"))
    runs = [r for r in res["scenarios"]["h1"]["runs"] if not r.get("error") and r.get("rps")]
    print("\n| proxy | req/s off | req/s JSON log | ratio | CPU µs/req off | CPU µs/req JSON log | ratio | "
          "ratio per round | lines written / requests |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    summary = {}
    for p in proxies:
        off = sorted((r for r in runs if r["proxy"] == p), key=lambda r: r["round"])
        on = sorted((r for r in runs if r["proxy"] == p + VARIANT), key=lambda r: r["round"])
        if not off or not on:
            print("| %s | (no runs) |" % p)
            continue
        r0, r1 = statistics.median(x["rps"] for x in off), statistics.median(x["rps"] for x in on)
        c0, c1 = statistics.median(x["cpu_us_per_req"] for x in off), statistics.median(x["cpu_us_per_req"] for x in on)
        by_round = {x["round"]: x["rps"] for x in off}
        per_round = [x["rps"] / by_round[x["round"]] for x in on if x["round"] in by_round]
        logs = list(rundir.glob("%s%s-h1-*/access.log" % (p, VARIANT)))
        lines = sum(1 for f in logs for _ in f.open("rb")) if logs else 0
        sent = sum(x["requests"] + (x.get("warmup_requests") or 0) for x in on)
        summary[p] = {"rps_off": r0, "rps_json": r1, "cpu_off": c0, "cpu_json": c1, "per_round": per_round,
                      "lines": lines, "requests": sent}
        print("| %s | %.0f | %.0f | %.3f | %.1f | %.1f | %.3f | %s | %.4f |" % (
            p, r0, r1, r1 / r0, c0, c1, c1 / c0, ", ".join("%.2f" % x for x in per_round), lines / max(1, sent)))
    print("\nrun: %s (rounds: %s)" % (new[-1], new[-1].with_suffix(".md")))
    OUT.mkdir(exist_ok=True)
    (OUT / "log_cost.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
