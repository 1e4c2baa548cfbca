#!/usr/bin/env python3
"""What the observability features cost per request: callgrind instructions per request of Remora
with each feature off and on, for h1, h2c and gRPC side by side (the loads of perf/cg_guard.py).

    perf/cg_features.py                              # every scenario, every feature (~12 runs, a few min)
    perf/cg_features.py --scenarios h2c --features tracing --functions 15
    REMORA_BIN=/path/to/remora perf/cg_features.py

Features (each measured alone against the same binary's plain run):
  tracing     `tracing: { propagate: [w3c], sample_percent: 1 }` on the listener: an x-request-id and a
              new trace generated per request (h2load sends neither), traceparent and x-request-id
              written toward the upstream (REMORA_PERF_TRACING=1)
  propagation the same listener behind another traced hop: h2load's requests go through a front Remora
              with tracing on (not measured), so every request reaches the measured proxy with a new
              x-request-id and traceparent, as in a mesh; off = the same path with the measured
              proxy's tracing off (it forwards both fields untouched), on = it continues the trace
              (a new span id in traceparent) (REMORA_PERF_FRONT=1)
  json        `access_log: { format: json }` on the listener (REMORA_PERF_ACCESS_LOG=json); the figure
              counts every thread: the worker's part and the writer thread's (formatting and writing)
              are shown apart
  histograms  the latency histograms (listener and cluster request times, Istio's series): the plain
              run records them, REMORA_PERF_NO_HISTOGRAMS=1 turns them off for the comparison

Each cell is one perf/bench.py --callgrind run (nginx backend, h2load, 16 connections; h2c and gRPC
with 32 streams each; 1,000 warm-up requests not counted) on a `strip --strip-debug` copy of the
binary. `--functions N` also prints, per feature and scenario, the N functions whose own
instructions per request changed most (demangled).
Needs what cg_guard.py needs: valgrind, nginx, h2load (nghttp2-client), strip (binutils).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF))
import cg_guard  # noqa: E402  (measure, demangle)

FEATURES = {
    "tracing": {"REMORA_PERF_TRACING": "1"},
    "propagation": {"REMORA_PERF_TRACING": "1", "REMORA_PERF_FRONT": "1"},
    "json": {"REMORA_PERF_ACCESS_LOG": "json"},
    "histograms": {"REMORA_PERF_NO_HISTOGRAMS": "1"},   # the *off* run: the plain run has them on
}
OUR_ENV = ("REMORA_PERF_TRACING", "REMORA_PERF_ACCESS_LOG", "REMORA_PERF_NO_HISTOGRAMS", "REMORA_PERF_FRONT")
# Features compared with their own plain run rather than the scenario's (the same load, the feature off).
OFF = {"propagation": {"REMORA_PERF_FRONT": "1"}}
# The access log writer thread's own functions (no worker calls them per request: it only posts the
# writer's semaphore, inlined).
WRITER = re.compile(r"AccessLogWriter|AccessLogSink|AccessLogFormatter|takeRingRecords")


def run(scenario: str, env: dict, requests: int, warmup: int) -> dict:
    saved = {k: os.environ.pop(k) for k in OUR_ENV if k in os.environ}
    os.environ.update(env)
    try:
        return cg_guard.measure(scenario, requests, warmup)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def writer_part(m: dict) -> float:
    """Instructions per request of the access log writer thread: the own instructions of its functions
    (WRITER) plus the inclusive cost of their calls into other functions (formatting helpers, memcpy,
    write)."""
    names: dict[str, str] = {}
    fn = cfn = None
    total = 0
    take = False
    ref = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    for line in Path(m["dump"]).read_text(errors="replace").splitlines():
        r = ref.match(line)
        if r:
            kind, ident, name = r.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                fn = names.get(ident, ident)
            else:
                cfn = names.get(ident, ident)
            continue
        if line.startswith("calls="):
            take = bool(fn and WRITER.search(fn) and not (cfn and WRITER.search(cfn)))
            continue
        if take:
            parts = line.split()
            if len(parts) >= 2:
                total += int(parts[1])
            take = False
    own = sum(v for k, v in m["functions"].items() if WRITER.search(k))
    return total / m["requests"] + own


def diff(a: dict, b: dict, limit: int) -> list[tuple[float, str]]:
    fa, fb = a["functions"], b["functions"]
    d = sorted(((fb.get(k, 0.0) - fa.get(k, 0.0), k) for k in set(fa) | set(fb)), key=lambda x: -abs(x[0]))
    return [x for x in d if abs(x[0]) >= 1.0][:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="h1,h2c,grpc")
    ap.add_argument("--features", default="tracing,json,histograms")
    ap.add_argument("--requests", type=int, default=5000, help="measured requests per run")
    ap.add_argument("--warmup", type=int, default=1000, help="warm-up requests per run (not counted)")
    ap.add_argument("--functions", type=int, default=0, help="print the N functions that changed most per feature")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx", "strip"):
        if not shutil.which(tool):
            print(f"cg_features: {tool} is not installed (make perf-guard installs what it needs)", file=sys.stderr)
            return 2
    if not os.environ.get("REMORA_BIN"):
        os.environ["REMORA_BIN"] = str(PERF.parent / ".build" / "release" / "remora")
    scenarios = [s for s in a.scenarios.split(",") if s]
    features = [f for f in a.features.split(",") if f]
    for f in features:
        if f not in FEATURES:
            print(f"cg_features: unknown feature {f} (known: {', '.join(FEATURES)})", file=sys.stderr)
            return 2
    plain: dict[str, dict] = {}
    runs: dict[tuple[str, str], dict] = {}
    offs: dict[tuple[str, str], dict] = {}
    for s in scenarios:
        if any(f not in OFF for f in features):
            plain[s] = run(s, {}, a.requests, a.warmup)
            print(f"{s:5} plain {plain[s]['ir_per_req']:10,.0f} Ir/request", file=sys.stderr, flush=True)
        for f in features:
            if f in OFF:
                offs[(s, f)] = run(s, OFF[f], a.requests, a.warmup)
                print(f"{s:5} {f:10} off {offs[(s, f)]['ir_per_req']:6,.0f} Ir/request", file=sys.stderr, flush=True)
            runs[(s, f)] = run(s, FEATURES[f], a.requests, a.warmup)
            print(f"{s:5} {f:10} {runs[(s, f)]['ir_per_req']:10,.0f} Ir/request", file=sys.stderr, flush=True)

    def base(s: str, f: str) -> dict:
        return offs.get((s, f)) or plain[s]

    every = set()
    for m in list(plain.values()) + list(runs.values()) + list(offs.values()):
        every |= set(m["functions"])
    names = cg_guard.demangle(sorted(every)) if a.functions else {}

    print(f"Instructions per request (callgrind, {a.requests:,} requests after {a.warmup:,} of warm-up; "
          "cost = on / off - 1)\n")
    print("| feature | | " + " | ".join(scenarios) + " |")
    print("|---|---|" + "---:|" * len(scenarios))
    for f in features:
        off, on = [], []
        for s in scenarios:
            if f == "histograms":   # the plain run has them on
                off.append(runs[(s, f)]["ir_per_req"]); on.append(plain[s]["ir_per_req"])
            else:
                off.append(base(s, f)["ir_per_req"]); on.append(runs[(s, f)]["ir_per_req"])
        print(f"| {f} | off | " + " | ".join(f"{x:,.0f}" for x in off) + " |")
        print(f"| | on | " + " | ".join(f"{x:,.0f}" for x in on) + " |")
        print(f"| | **cost** | " + " | ".join(f"**{y - x:+,.0f} ({(y / x - 1) * 100:+.1f} %)**" for x, y in zip(off, on)) + " |")
        if f == "json":
            parts = []
            for s, x in zip(scenarios, off):
                w = writer_part(runs[(s, f)]) - writer_part(plain[s])
                worker = runs[(s, f)]["ir_per_req"] - x - w
                parts.append(f"{worker:+,.0f} ({worker / x * 100:+.1f} %) / {w:+,.0f}")
            print(f"| | worker / writer thread | " + " | ".join(parts) + " |")
    if a.functions:
        for f in features:
            for s in scenarios:
                lo, hi = (runs[(s, f)], plain[s]) if f == "histograms" else (base(s, f), runs[(s, f)])
                print(f"\n{f} on vs off, {s}: own instructions per request of the functions that changed most")
                for d, k in diff(lo, hi, a.functions):
                    print(f"  {d:+9.1f}  {lo['functions'].get(k, 0.0):9.1f} -> {hi['functions'].get(k, 0.0):9.1f}  "
                          f"{names.get(k, k)[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
