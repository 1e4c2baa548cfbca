#!/usr/bin/env python3
"""Where the tail of the fixed-rate latency scenario goes: scheduler evidence, side by side (NOT a test).

Runs the `latency` scenario's topology (h2load --h1 at a fixed rate on CPU 0; the proxy and an nginx
backend sharing CPU 1) for each proxy in turn, under `perf sched record`, and prints per proxy:

  * the client's latency percentiles (h2load --log-file, send to end of response) and how many
    requests took over 1 ms and 5 ms;
  * for each task (proxy, backend, load generator): how long it runs per wake-up and how long it
    waits for a CPU once runnable (`perf sched timehist`: run time, sch delay), p50/p99/p99.9/max;
  * for Remora, its own view of the same requests (the `downstream_rq_time` and `upstream_rq_time`
    histograms from /stats/prometheus): how many spent over 1 ms or 5 ms inside the proxy.

A request can only spend long inside a proxy if the proxy runs long per wake-up, waits long for a
CPU, or holds the request while idle (timers, batching, deferred flushes). The first two are in the
perf sched columns; the third shows as proxy-side time (Remora's histograms) far above its run times.

Usage: perf/tail_sched.py [--rate 4000] [--seconds 10] [--only remora,haproxy,nginx,nghttpx] [--rounds 1]
Needs root (perf sched), linux-perf, h2load (nghttp2-client), nginx, haproxy, nghttpx (Debian), taskset.
"""
import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start(argv, cpu, log):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + argv, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(p):
    if p and p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def proxy_argv(name, d, port, backend, admin, remora_bin):
    if name == "remora":
        with open(os.path.join(d, "remora.yaml"), "w") as f:
            f.write(f"""workers: 1
admin: {{ address: 127.0.0.1:{admin} }}
listeners:
  - name: web
    address: 127.0.0.1:{port}
    protocol: http
    routes:
      - name: all
        backends: [ {{ cluster: app }} ]
clusters:
  - name: app
    endpoints: [ "127.0.0.1:{backend}" ]
""")
        return [remora_bin, "run", "--config", os.path.join(d, "remora.yaml")]
    if name == "haproxy":
        with open(os.path.join(d, "haproxy.cfg"), "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
frontend web
    option http-keep-alive
    bind 127.0.0.1:{port}
    default_backend app
backend app
    option http-keep-alive
    http-reuse always
    server s1 127.0.0.1:{backend}
""")
        return ["haproxy", "-db", "-f", os.path.join(d, "haproxy.cfg")]
    if name == "nginx":
        with open(os.path.join(d, "proxy-nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {d}/proxy-nginx.pid;
error_log {d}/proxy-nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    upstream app {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 100000000; keepalive_timeout 600s; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
""")
        return ["nginx", "-c", os.path.join(d, "proxy-nginx.conf"), "-p", d]
    if name == "nghttpx":
        conf = os.path.join(d, "nghttpx.conf")
        open(conf, "w").write("# empty: every option is on the command line\n")
        return ["nghttpx", "--conf=" + conf, "--frontend=127.0.0.1,%d;no-tls" % port, "--backend=127.0.0.1,%d" % backend,
                "--workers=1"]
    raise SystemExit("unknown proxy " + name)


def backend_conf(d, port):
    path = os.path.join(d, "backend.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {d}/backend.pid;
error_log {d}/backend.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    return path


def timehist(data):
    """[(time_s, task, wait_ms, sch_delay_ms, run_ms)] from `perf sched timehist`."""
    out = subprocess.run(["perf", "sched", "timehist", "-i", data], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[3:]:
        p = line.split()
        if len(p) < 6:
            continue
        try:
            rows.append((float(p[0]), " ".join(p[2:-3]), float(p[-3]), float(p[-2]), float(p[-1])))
        except ValueError:
            continue
    return rows


def pct(v, p):
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")


def task_kind(task, proxy_pids, backend_pids, load_name="h2load"):
    name, _, ids = task.rpartition("[")
    ids = ids.rstrip("]").split("/")
    pid = int(ids[-1]) if ids[-1].isdigit() else -1
    if pid in proxy_pids:
        return "proxy"
    if pid in backend_pids:
        return "backend"
    if name.startswith(load_name):
        return "load generator"
    return None


def histogram_over(prom, metric, bounds=(1.0, 5.0)):
    """{bound: count above it} of a Prometheus histogram (summed over label sets)."""
    buckets = collections.defaultdict(float)
    total = 0.0
    for line in prom.splitlines():
        if line.startswith(metric + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            val = float(line.rsplit(" ", 1)[1])
            if le == "+Inf":
                total += val
            else:
                buckets[float(le)] += val
    return {b: total - buckets.get(b, 0.0) for b in bounds}, total


def run_one(name, a, d, rnd):
    backend = free_port()
    port, admin = free_port(), free_port()
    logs = open(os.path.join(d, name + ".log"), "w")
    be = start(["nginx", "-c", backend_conf(d, backend), "-p", d], a.proxy_cpu, logs)
    px = start(proxy_argv(name, d, port, backend, admin, a.remora_bin), a.proxy_cpu, logs)
    try:
        if not (wait_port(backend) and wait_port(port)):
            raise SystemExit("%s or its backend did not start; see %s" % (name, logs.name))
        url = "http://127.0.0.1:%d/" % port
        rps = "--rps=%g" % (a.rate / a.clients)
        h2 = ["taskset", "-c", str(a.load_cpu), "h2load", "--h1", "-t1", "-c%d" % a.clients, rps]
        subprocess.run(h2 + ["-D", "2", url], capture_output=True)            # warm-up (not measured)
        prom0 = fetch_prom(admin) if name == "remora" else ""
        data, lat = os.path.join(d, "%s-%d.sched" % (name, rnd)), os.path.join(d, "%s-%d.tsv" % (name, rnd))
        subprocess.run(["perf", "sched", "record", "-o", data, "--"] + h2 +
                       ["-D", str(a.seconds), "--log-file=" + lat, url], capture_output=True)
        prom1 = fetch_prom(admin) if name == "remora" else ""
        proxy_pids = {px.pid} | children(px.pid)
        return summarize(name, lat, timehist(data), proxy_pids, {be.pid} | children(be.pid), prom0, prom1)
    finally:
        stop(px)
        stop(be)
        logs.close()


def children(pid):
    """pids of a process's descendants (taskset execs in place; nginx/haproxy may fork)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = {int(x) for x in out.split()}
    for k in list(kids):
        kids |= children(k)
    return kids


def fetch_prom(admin):
    try:
        return urllib.request.urlopen("http://127.0.0.1:%d/stats/prometheus" % admin, timeout=5).read().decode()
    except OSError:
        return ""


def summarize(name, lat_path, rows, proxy_pids, backend_pids, prom0, prom1):
    lat = sorted(int(l.split("\t")[2]) / 1000.0 for l in open(lat_path) if l.split("\t")[1].startswith("2"))
    r = {"proxy": name, "requests": len(lat), "p50": pct(lat, .5), "p99": pct(lat, .99), "p999": pct(lat, .999),
         "max": lat[-1] if lat else float("nan"), "client_over_1ms": sum(1 for x in lat if x > 1),
         "client_over_5ms": sum(1 for x in lat if x > 5), "tasks": {}}
    by = collections.defaultdict(list)
    for t, task, _w, sd, run in rows:
        k = task_kind(task, proxy_pids, backend_pids)
        if k:
            by[k].append((sd, run))
    for k, v in by.items():
        runs, sds = sorted(x[1] for x in v), sorted(x[0] for x in v)
        r["tasks"][k] = {"wakeups": len(v), "run": [pct(runs, q) for q in (.5, .99, .999)] + [runs[-1]],
                         "sch": [pct(sds, q) for q in (.5, .99, .999)] + [sds[-1]]}
    if prom1:
        for metric, key in (("envoy_http_downstream_rq_time", "proxy_time"), ("envoy_cluster_upstream_rq_time", "upstream_time")):
            over1, tot1 = histogram_over(prom1, metric)
            over0, tot0 = histogram_over(prom0, metric)
            r[key] = {b: over1[b] - over0[b] for b in over1}
            r[key + "_n"] = tot1 - tot0
    return r


def report(results, a):
    print("# Tail latency evidence — %s, %d req/s over %d connections, %d s per proxy, %d rounds" % (
        time.strftime("%Y-%m-%d %H:%M"), a.rate, a.clients, a.seconds, a.rounds))
    print()
    print("Medians over rounds (client-side latency, ms; every round below):")
    print()
    print("| proxy | p50 | p99 | p99.9 | p99.9 per round | load generator's longest run per round |")
    print("|---|---:|---:|---:|---|---|")
    for name in a.only.split(","):
        rs = [r for r in results if r["proxy"] == name]
        med = lambda k: sorted(r[k] for r in rs)[len(rs) // 2]
        print("| %s | %.3f | %.3f | %.3f | %s | %s |" % (name, med("p50"), med("p99"), med("p999"),
              ", ".join("%.2f" % r["p999"] for r in rs),
              ", ".join("%.1f" % r["tasks"].get("load generator", {"run": [0, 0, 0, 0]})["run"][3] for r in rs)))
    print()
    print("| proxy | requests | p50 ms | p99 ms | p99.9 ms | max ms | client > 1 ms | client > 5 ms | inside the proxy > 1 ms | > 5 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        inside = r.get("proxy_time")
        print("| %s | %d | %.3f | %.3f | %.3f | %.3f | %d | %d | %s | %s |" % (
            r["proxy"], r["requests"], r["p50"], r["p99"], r["p999"], r["max"], r["client_over_1ms"],
            r["client_over_5ms"], "%d" % inside[1.0] if inside else "—", "%d" % inside[5.0] if inside else "—"))
    print()
    print("Per task on the scheduler (`perf sched timehist`), ms: run time per wake-up and scheduling delay once runnable")
    print()
    print("| proxy run | task | wake-ups | run p50 | run p99 | run p99.9 | run max | sch delay p50 | p99 | p99.9 | max |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for k in ("proxy", "backend", "load generator"):
            t = r["tasks"].get(k)
            if t:
                print("| %s | %s | %d | %s | %s |" % (r["proxy"], k, t["wakeups"], " | ".join("%.3f" % x for x in t["run"]),
                                                     " | ".join("%.3f" % x for x in t["sch"])))
    for r in results:
        if r.get("upstream_time"):
            print()
            print("Remora's own histograms for the measured requests: downstream_rq_time (request head to end, 1 µs "
                  "clock) over 1 ms: %d, over 5 ms: %d of %d; upstream_rq_time (attempt start to response head, 1 ms "
                  "loop clock) over 1 ms: %d, over 5 ms: %d." % (
                      r["proxy_time"][1.0], r["proxy_time"][5.0], r["proxy_time_n"], r["upstream_time"][1.0],
                      r["upstream_time"][5.0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="remora,haproxy,nginx,nghttpx")
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--remora-bin", default=os.environ.get("REMORA_BIN", os.path.join(ROOT, ".build/release/remora")))
    a = ap.parse_args()
    for tool in ("perf", "h2load", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit("missing %s (Debian: linux-perf, nghttp2-client, nginx, util-linux)" % tool)
    d = tempfile.mkdtemp(prefix="tail-sched-")
    results = []
    for rnd in range(1, a.rounds + 1):
        for name in a.only.split(","):
            results.append(run_one(name, a, d, rnd))
            print("[tail_sched] %s: p99.9 %.3f ms" % (name, results[-1]["p999"]), file=sys.stderr)
    report(results, a)
    print("\n(raw files: %s)" % d, file=sys.stderr)


if __name__ == "__main__":
    main()
