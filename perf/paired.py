#!/usr/bin/env python3
"""Two proxies up at once, taking turns: a tighter comparison than perf/run.sh's rounds, which run each
proxy at a different moment of a machine whose speed drifts.

    perf/paired.py --a /tmp/remora-old --b .build/release/remora --scenario grpc
    perf/paired.py --a .build/release/remora --b nghttpx --scenario h2c --rounds 8

`--a`/`--b`: a Remora binary, or `nghttpx`. Both proxies and perf's nginx backend (h2c port; the gRPC answer
of perf/run.sh's `grpc` scenario) are pinned to CPU 1, h2load to CPU 0, as in perf/run.sh. Each round loads
A, then B (B first in odd rounds) with `h2load -t1 -c16 -m32 -n N`. Per proxy and round: requests/s, the
proxy's CPU per request (utime + stime of its processes, /proc/PID/stat) and its write system calls per
request (/proc/PID/io syscw). Prints each round, the medians and the ratios B ÷ A. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF))
from remora_perf.backend import Backend  # noqa: E402
from remora_perf.common import GRPC_PATH, GRPC_REQUEST, HOST, OUT, grpc_frame  # noqa: E402
from remora_perf.proxies import Nghttpx, Remora  # noqa: E402
from remora_perf.runner import Runner  # noqa: E402

NOFILE = 20000


def counters(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and write system calls of `pids`, summed."""
    cpu, writes = 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / tick
        writes += int(re.search(r"syscw: (\d+)", Path(f"/proc/{pid}/io").read_text()).group(1))
    return cpu, writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="a Remora binary, or nghttpx")
    ap.add_argument("--b", required=True, help="a Remora binary, or nghttpx")
    ap.add_argument("--scenario", choices=("grpc", "h2c"), default="grpc")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=200_000)
    args = ap.parse_args()

    outdir = OUT / time.strftime("paired-%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    r = Runner(SimpleNamespace(pin=True), outdir)
    try:
        backend = Backend(r, 1, NOFILE)
        backend.start()
        proxies = {}
        for label, spec in (("A", args.a), ("B", args.b)):
            p = Nghttpx(r, 1, NOFILE) if spec == "nghttpx" else Remora(r, 1, NOFILE, spec)
            if not p.start(backend_port=backend.h2_port, tag=label + "-", h2=True):
                raise SystemExit(f"paired: {label} ({spec}) did not start: {p.error}")
            proxies[label] = p
        load = ["taskset", "-c", "0", "h2load", "-t1", "-c16", "-m32", "-n", str(args.requests)]
        if args.scenario == "grpc":
            body = outdir / "grpc-request.bin"
            body.write_bytes(grpc_frame(GRPC_REQUEST))
            load += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
            path = GRPC_PATH
        else:
            path = "/"
        res: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
        for rnd in range(args.rounds):
            for label in (("A", "B") if rnd % 2 == 0 else ("B", "A")):
                p = proxies[label]
                pids = p.pids()
                cpu0, w0 = counters(pids)
                out = subprocess.run(load + [f"http://{HOST}:{p.http_port}{path}"], capture_output=True,
                                     text=True, timeout=600).stdout
                cpu1, w1 = counters(pids)
                m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
                if not m or f"{args.requests} succeeded" not in out:
                    raise SystemExit(f"paired: h2load through {label} failed:\n{out}")
                n = args.requests
                row = (float(m.group(1)), (cpu1 - cpu0) / n * 1e6, (w1 - w0) / n)
                res[label].append(row)
                print(f"round {rnd + 1} {label}: {row[0]:9.0f} req/s  {row[1]:6.2f} µs CPU/req  "
                      f"{row[2]:.3f} writes/req", flush=True)
        med = {k: [statistics.median(c) for c in zip(*v)] for k, v in res.items()}
        print(f"\n{args.scenario}, {args.rounds} rounds of {args.requests} (A = {args.a}, B = {args.b}), medians:")
        for k in ("A", "B"):
            print(f"  {k}: {med[k][0]:9.0f} req/s  {med[k][1]:6.2f} µs CPU/req  {med[k][2]:.3f} writes/req")
        per_round = ", ".join("%.2f" % (b[0] / a[0]) for a, b in zip(res["A"], res["B"]))
        print(f"  B ÷ A: req/s {med['B'][0] / med['A'][0]:.3f} (per round {per_round}), "
              f"CPU per request {med['B'][1] / med['A'][1]:.3f}")
    finally:
        r.kill_all()


if __name__ == "__main__":
    main()
