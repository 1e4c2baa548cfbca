#!/usr/bin/env python3
"""xDS push latency and memory, Remora (remora-xds + remora run --control) vs Envoy 1.40 (NOT a test).

For N in --sizes (default 1 and 1000): a snapshot of N EDS clusters (one endpoint each) and one route
configuration of N routes (`/rI/` -> cI) plus a marker route `/xds-version` answering the snapshot's
version. Measures, per client: the time from the ADS server's push of a new version to the first request
answered with it (median of --pushes pushes, polled every 2 ms), and the RSS of the processes once serving.

    REMORA_BIN=.build/release/remora REMORA_XDS_BIN=.build-xds/release/remora-xds python3 perf/xds_push.py
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests/integration"))

from xds_fixture import (ADSServer, Envoy, Snapshot, XDSAgent, assignment, eds_cluster, envoy_binary, free_port,  # noqa: E402
                         http_listener, route, route_config, vhost)
from test_xds import Backend, fetch  # noqa: E402


def snapshot(version: str, n: int, port: int, backend: str) -> Snapshot:
    routes = [route({"path": "/xds-version"}, name="version", direct=(200, version))]
    routes += [route({"prefix": f"/r{i}/"}, f"c{i}", name=f"r{i}") for i in range(n)]
    return Snapshot(version, listeners=[http_listener("web", port, rds="rc")],
                    routes=[route_config("rc", [vhost("all", ["*"], routes)])],
                    clusters=[eds_cluster(f"c{i}") for i in range(n)],
                    endpoints=[assignment(f"c{i}", [backend]) for i in range(n)])


def serving(port: int, version: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if fetch(port, "/xds-version")[4] == version:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"not serving {version} after {timeout}s")


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,1000")
    ap.add_argument("--pushes", type=int, default=5)
    a = ap.parse_args()
    remora = Path(os.environ.get("REMORA_BIN", ROOT / ".build/release/remora"))
    agent_bin = Path(os.environ.get("REMORA_XDS_BIN", ROOT / ".build-xds/release/remora-xds"))
    envoy = envoy_binary()
    backend = Backend("b")
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        for kind in ("envoy", "remora"):
            server = ADSServer().start()
            port = free_port()
            server.set(snapshot("s0", n, port, backend.endpoint))
            work = Path(tempfile.mkdtemp(prefix="xds-perf-"))
            t0 = time.monotonic()
            c = Envoy(envoy, server.port, work) if kind == "envoy" else XDSAgent(agent_bin, remora, server.port, work)
            serving(port, "s0", 120)
            first = time.monotonic() - t0
            assert fetch(port, f"/r{n - 1}/x")[1][0] == "b"
            pushes = []
            for i in range(1, a.pushes + 1):
                t = time.monotonic()
                server.set(snapshot(f"s{i}", n, port, backend.endpoint))
                serving(port, f"s{i}", 120)
                pushes.append(time.monotonic() - t)
            time.sleep(1.5)   # the proxy releases its start-up text after a second (docs/architecture.md)
            if kind == "envoy":
                rss = f"{rss_kib(c.proc.pid) / 1024:.1f}"
                c.stop()
            else:
                rss = f"{rss_kib(c.proxy.pid) / 1024:.1f} + agent {rss_kib(c.agent.pid) / 1024:.1f}"
                c.stop()
            server.stop()
            rows.append((n, kind, first, statistics.median(pushes), max(pushes), rss))
    backend.close()
    print(f"{'routes/clusters':>15}  {'client':7}  {'start to serving':>16}  {'push to serving (median, max)':>30}  RSS MiB")
    for n, kind, first, med, mx, rss in rows:
        print(f"{n:>15}  {kind:7}  {first * 1000:>13.0f} ms  {med * 1000:>19.0f} ms, {mx * 1000:.0f} ms  {rss}")


if __name__ == "__main__":
    main()
