#!/usr/bin/env python3
"""Hot-path guard: callgrind instructions per request of Remora on fixed loads, against a committed
baseline (perf/cg-baseline.json). Fails when a scenario grows by more than the threshold, and then
prints the functions whose own instructions per request grew the most.

    perf/cg_guard.py                    # compare h1, h2c and grpc with the baseline (exit 1 on growth)
    perf/cg_guard.py --update           # measure and write the baseline (commit it, saying why)
    perf/cg_guard.py --scenarios h1 --requests 20000

Each scenario is one `perf/bench.py --callgrind` run (nginx backend, h2load load, 16 connections;
h2c and grpc with 32 streams each; warm-up not counted) on a `strip --strip-debug` copy of the
binary. Instruction counts do not depend on how busy the machine is: the same binary and inputs give
the same figure within ~0.2 % (seen here: 16,484 / 16,494 / 16,496 on three h1 runs).
Needs: valgrind, nginx, h2load (nghttp2-client), strip (binutils); `make perf-guard` installs them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parent
BASELINE = PERF / "cg-baseline.json"
MIN_KEPT = 1.0   # functions kept in the baseline: those with at least this many own instructions per request


def self_cost_per_function(dump: Path) -> dict[str, int]:
    """Own (exclusive) Ir of every function in a callgrind dump. Costs after a `calls=` line belong
    to the call (inclusive), not to the calling function, and are skipped."""
    names: dict[str, str] = {}
    cost: dict[str, int] = {}
    fn = None
    skip_next = False
    ref = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    for line in dump.read_text(errors="replace").splitlines():
        m = ref.match(line)
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                fn = names.get(ident, ident)
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if not line or not (line[0].isdigit() or line[0] in "+-*"):
            continue
        if skip_next:
            skip_next = False
            continue
        parts = line.split()
        if fn is not None and len(parts) >= 2:
            cost[fn] = cost.get(fn, 0) + int(parts[1])
    return cost


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("swift-demangle") or (shutil.which("swift") and "swift")
    if not tool or not names:
        return {n: n for n in names}
    argv = [tool, "--simplified", "--compact"] if tool.endswith("swift-demangle") else [tool, "demangle", "--simplified", "--compact"]
    try:
        out = subprocess.run(argv, input="\n".join(names), capture_output=True, text=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {n: n for n in names}
    return {n: (d or n) for n, d in zip(names, out + [""] * (len(names) - len(out)))}


def measure(scenario: str, requests: int, warmup: int) -> dict:
    argv = [sys.executable, str(PERF / "bench.py"), "--scenarios", "", "--callgrind", "--cg-scenario", scenario,
            "--only", "remora", "--cg-requests", str(requests), "--cg-warmup", str(warmup), "--quiet-wait", "0"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    m = re.search(r"raw results: (\S+)", p.stderr)
    if not m:
        raise SystemExit(f"cg_guard: bench.py wrote no results ({scenario}):\n{p.stderr[-2000:]}")
    res = json.loads(Path(m.group(1)).read_text())
    cg = res["scenarios"].get("callgrind", {})
    r = cg.get("proxies", {}).get("remora")
    if not r or not r.get("ir_per_req"):
        raise SystemExit(f"cg_guard: no callgrind figure for {scenario}: {r or cg.get('failed')}\n{p.stderr[-2000:]}")
    if r.get("requests_failed"):
        raise SystemExit(f"cg_guard: {r['requests_failed']} requests failed under callgrind ({scenario})")
    ok = r["requests_ok"]
    funcs = self_cost_per_function(Path(r["dump"]))
    kept = {name: round(c / ok, 1) for name, c in funcs.items() if c / ok >= MIN_KEPT}
    return {"ir_per_req": round(r["ir_per_req"], 1), "requests": ok, "warmup": warmup,
            "load": cg.get("params", {}).get("h2load", ""), "functions": kept, "dump": r["dump"]}


def report_growth(name: str, now: dict, base: dict, limit: int = 15) -> None:
    fb, fn = base.get("functions", {}), now["functions"]
    deltas = sorted(((fn.get(k, 0.0) - fb.get(k, 0.0), k) for k in set(fb) | set(fn)), reverse=True)
    grew = [(d, k) for d, k in deltas if d > 0.5][:limit]
    shrank = [(d, k) for d, k in reversed(deltas) if d < -0.5][:limit // 2]
    pretty = demangle([k for _, k in grew + shrank])
    print(f"  functions whose own instructions per request grew most ({name}; a renamed or newly inlined")
    print("  function shows as one that grew and one that shrank):")
    for d, k in grew:
        print(f"    {d:+9.1f}  {fb.get(k, 0.0):9.1f} -> {fn.get(k, 0.0):9.1f}  {pretty.get(k, k)[:150]}")
    print("  and shrank most:")
    for d, k in shrank:
        print(f"    {d:+9.1f}  {fb.get(k, 0.0):9.1f} -> {fn.get(k, 0.0):9.1f}  {pretty.get(k, k)[:150]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="h1,h2c,grpc")
    ap.add_argument("--requests", type=int, default=5000, help="measured requests per scenario")
    ap.add_argument("--warmup", type=int, default=1000, help="warm-up requests per scenario (not counted)")
    ap.add_argument("--threshold", type=float, default=5.0, help="allowed growth, percent")
    ap.add_argument("--update", action="store_true", help="write the measured figures as the new baseline")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx", "strip"):
        if not shutil.which(tool):
            print(f"cg_guard: {tool} is not installed (make perf-guard installs what it needs)", file=sys.stderr)
            return 2
    if not os.environ.get("REMORA_BIN"):
        os.environ["REMORA_BIN"] = str(PERF.parent / ".build" / "release" / "remora")
    base = json.loads(BASELINE.read_text()) if BASELINE.exists() else {"scenarios": {}}
    measured, failed = {}, []
    for name in [s for s in a.scenarios.split(",") if s]:
        now = measure(name, a.requests, a.warmup)
        measured[name] = now
        b = base["scenarios"].get(name)
        if not b:
            print(f"{name:5} {now['ir_per_req']:10,.0f} Ir/request (no baseline)")
            continue
        growth = (now["ir_per_req"] / b["ir_per_req"] - 1) * 100
        verdict = "FAIL" if growth > a.threshold else "ok"
        print(f"{name:5} {now['ir_per_req']:10,.0f} Ir/request  baseline {b['ir_per_req']:10,.0f}  {growth:+6.2f} %  {verdict}")
        if growth > a.threshold:
            failed.append(name)
            report_growth(name, now, b)
    if a.update:
        base["scenarios"].update({n: {k: v for k, v in m.items() if k != "dump"} for n, m in measured.items()})
        BASELINE.write_text(json.dumps(base, indent=1, sort_keys=True) + "\n")
        print(f"baseline written: {BASELINE}")
        return 0
    if failed:
        print(f"cg_guard: instructions per request grew more than {a.threshold} % on {', '.join(failed)}. "
              "If that is intended, run perf/cg_guard.py --update and commit the baseline saying why.")
        return 1
    print(f"cg_guard: {len(measured)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
