"""perf/'s benchmark as a package; perf/bench.py is its command line (see perf/README.md, "Layout").

common     constants (proxies, scenarios, ports, gRPC frames) and small helpers
sampling   /proc: CPU and memory of process trees, per-CPU busy time, TCP counters, waiting for quiet
runner     spawning pinned processes, killing them, the recorded commands, the open-files limit
backend    the nginx backend (HTTP/1.1 + h2c) every HTTP proxy forwards to
proxies    Remora, HAProxy, nginx, nghttpx, Envoy: config, start, diagnostics
parsers    wrk and h2load output
scenario_http, scenario_tcp, scenario_rss, scenario_callgrind   the scenarios (mixins of driver.Bench)
driver     Bench: one run, scenario order, noise handling, results JSON
report     markdown report and headline; plot: the SVG chart
cli        options and main()
"""
