"""Reading the load generators' output: wrk, h2load (summary and --log-file percentiles), remora bench --json."""
import json
import re


def parse_latency_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    if not m:
        return None
    v = float(m.group(1))
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["lat_avg_ms"] = parse_latency_ms(m.group(1))
        r["lat_max_ms"] = parse_latency_ms(m.group(3))
    for pct in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, out, re.M)
        if m:
            r["lat_p%s_ms" % pct] = parse_latency_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def parse_h2load(out):
    """h2load's summary: req/s, succeeded requests (= "requests"), failures, status codes, mean latency."""
    r = {}
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    r["rps"] = float(m.group(3)) if m else None
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        total, started, done, ok, failed, errored, tmo = (int(x) for x in m.groups())
        r["requests"] = ok
        r["failed"] = failed
        r["failed_detail"] = "%d errored, %d timeout" % (errored, tmo)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["status"] = {k: int(v) for k, v in zip(("2xx", "3xx", "4xx", "5xx"), m.groups())}
        r["non2xx"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["lat_mean_ms"] = parse_latency_ms(m.group(3))
        r["lat_max_ms"] = parse_latency_ms(m.group(2))
    return r


def latency_percentiles(path):
    """Percentiles of h2load --log-file (start µs, status, µs until the end of the response)."""
    vals = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].strip().startswith("2"):
                    vals.append(int(parts[2]))
    except (OSError, ValueError):
        return {}
    if not vals:
        return {}
    vals.sort()
    n = len(vals)

    def q(p):
        return vals[min(n - 1, max(0, int(round(p * n + 0.5)) - 1))] / 1000.0  # nearest rank, ms

    return {"lat_samples": n, "lat_p50_ms": q(0.50), "lat_p90_ms": q(0.90), "lat_p99_ms": q(0.99),
            "lat_p999_ms": q(0.999), "lat_max_ms": vals[-1] / 1000.0}


def remora_bench_latency(path):
    """Rate, counts and percentiles of a `remora bench --json` run (latency from each request's intended
    send time, ms)."""
    try:
        d = json.loads(open(path).read())
    except (OSError, ValueError):
        return {}
    lat = d.get("latency_ms") or {}
    pc = lat.get("percentiles") or {}
    ok = sum(n for code, n in (d.get("status") or {}).items() if code.startswith("2"))
    out = {"rps": d.get("requests_per_s"), "requests": d.get("responses"), "non2xx": (d.get("responses") or 0) - ok,
           "socket_errors": d.get("errors_total") or 0, "lat_samples": lat.get("count")}
    for key, name in (("p50", "lat_p50_ms"), ("p90", "lat_p90_ms"), ("p99", "lat_p99_ms"), ("p99.9", "lat_p999_ms"),
                      ("p100", "lat_max_ms")):
        if key in pc:
            out[name] = pc[key]
    late = d.get("sends") or {}
    out["late_sends"] = late.get("late")
    return out
