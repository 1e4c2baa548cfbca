#!/usr/bin/env python3
"""What active health checks cost (issue 12: 1,000 endpoints every 1 s must take < 5 % of a core).

One Remora (workers: 1) whose cluster has N endpoints (default 1,000), all the same local backend (a
second Remora answering every request with a direct response, so the probes' peer costs nothing to
write), `health_check` every `--interval`, and no traffic. Two measures:

  --cpu S        the checking process's CPU time (utime + stime from /proc/PID/stat) over S seconds after
                 a warm-up, as a share of one core; user and system apart. A wall figure: it moves with
                 the machine's load (the kernel's loopback work is most of it).
  --callgrind S  the same under callgrind on a `strip --strip-debug` copy of the binary, collection on
                 after the warm-up for S seconds: instructions per probe (steady: user space only),
                 and the functions that take them.

  python3 perf/hc_cost.py --cpu 30 [--kind http|tcp|grpc] [--endpoints 1000] [--interval 1s]
  python3 perf/hc_cost.py --callgrind 20

Stdlib only; needs valgrind and strip for --callgrind. Everything listens on 127.0.0.1, ports chosen
by the OS; both processes are killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def start(argv, log: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    """Starts a `remora run`-like argv; returns it and its listening ports by name once it is ready."""
    f = open(log, "wb")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=f)
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 120
    for raw in p.stdout:
        parts = raw.decode().split()
        if parts[:2] == ["listening", "admin"]:
            ports["admin"] = int(parts[2].rsplit(":", 1)[1])
        elif parts[:2] == ["listening", "listener"]:
            ports[parts[2]] = int(parts[3].rsplit(":", 1)[1])
        elif parts == ["ready"]:
            return p, ports
        if time.monotonic() > deadline:
            break
    p.kill()
    raise SystemExit(f"not ready: {argv}\n{log.read_text()[-2000:]}")


def stat(port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?format=json", timeout=10) as r:
        doc = json.load(r)
    for s in doc.get("stats", []):
        if s.get("name") == name:
            return int(s["value"])
    return 0


def cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])   # utime, stime (fields 14 and 15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("REMORA_BIN", str(ROOT / ".build/release/remora")))
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--kind", choices=("http", "tcp"), default="http")
    ap.add_argument("--warmup", type=float, default=5)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--cpu", type=float, metavar="SECONDS")
    g.add_argument("--callgrind", type=float, metavar="SECONDS")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hc-cost-"))
    procs: list[subprocess.Popen] = []
    try:
        (work / "backend.yaml").write_text(
            "workers: 1\nlisteners:\n  - name: web\n    address: 127.0.0.1:0\n    protocol: http\n"
            "    routes:\n      - name: ok\n        direct_response: { status: 200 }\n")
        backend, bports = start([args.bin, "run", "--config", str(work / "backend.yaml")], work / "backend.log")
        procs.append(backend)
        ep = f"127.0.0.1:{bports['web']}"
        check = "http: { path: /healthz }" if args.kind == "http" else "tcp: {}"
        eps = "\n".join(f"      - {ep}" for _ in range(args.endpoints))
        (work / "checker.yaml").write_text(
            "workers: 1\nadmin: { address: 127.0.0.1:0 }\nlisteners:\n  - name: web\n    address: 127.0.0.1:0\n"
            "    protocol: http\n    routes:\n      - name: all\n        match: { path: { prefix: / } }\n"
            "        backends: [ { cluster: app } ]\n"
            f"clusters:\n  - name: app\n    endpoints:\n{eps}\n"
            f"    health_check: {{ {check}, interval: {args.interval}, timeout: 1s }}\n")
        argv = [args.bin, "run", "--config", str(work / "checker.yaml")]
        out = work / "callgrind.out"
        if args.callgrind:
            stripped = work / "remora"
            shutil.copy(args.bin, stripped)
            subprocess.run(["strip", "--strip-debug", str(stripped)], check=True)
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    str(stripped)] + argv[1:]
        checker, cports = start(argv, work / "checker.log")
        procs.append(checker)
        time.sleep(args.warmup)
        a0 = stat(cports["admin"], "cluster.app.health_check.attempt")
        if args.cpu:
            u0, s0 = cpu_ticks(checker.pid)
            t0 = time.monotonic()
            time.sleep(args.cpu)
            u1, s1 = cpu_ticks(checker.pid)
            dt = time.monotonic() - t0
            a1 = stat(cports["admin"], "cluster.app.health_check.attempt")
            user, system = (u1 - u0) / TICK / dt * 100, (s1 - s0) / TICK / dt * 100
            print(f"{args.kind} checks, {args.endpoints} endpoints every {args.interval}: {a1 - a0} probes in {dt:.1f} s "
                  f"({(a1 - a0) / dt:.0f}/s); CPU {user + system:.2f} % of a core (user {user:.2f} %, system {system:.2f} %); "
                  f"{((u1 - u0) + (s1 - s0)) / TICK / max(1, a1 - a0) * 1e6:.1f} us per probe")
        else:
            # Counts from zero after the warm-up, dumped after S seconds (the start and the admin's
            # two /stats reads are in the warm-up or negligible).
            subprocess.run(["callgrind_control", "-z", str(checker.pid)], check=True, capture_output=True)
            time.sleep(args.callgrind)
            subprocess.run(["callgrind_control", "-d", str(checker.pid)], check=True, capture_output=True)
            a1 = stat(cports["admin"], "cluster.app.health_check.attempt")
            checker.send_signal(signal.SIGTERM)
            checker.wait(60)
            dumps = sorted(work.glob("callgrind.out.*"))
            out = dumps[0] if dumps else out
            m = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
            total = int(m.group(1)) if m else 0
            probes = max(1, a1 - a0)
            print(f"{args.kind} checks, {args.endpoints} endpoints every {args.interval}: {a1 - a0} probes in "
                  f"{args.callgrind:.0f} s under callgrind; {total} instructions, {total // probes} per probe")
            print(f"dump: {out} (callgrind_annotate {out})")
            work = None   # keep the dump
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
