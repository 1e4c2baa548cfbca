"""Observability (issue 13): Prometheus and JSON stats with histograms, access logs, request ids.

The Prometheus output is read with `prometheus_client`'s own text parser (PyPI), so what a real
Prometheus scrape would reject fails here too.
"""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Client, cluster, get, http_listener, make_config, poll


def status_route(name: str, prefix: str, cluster_name: str) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}}, "backends": [{"cluster": cluster_name}]}


def scrape(remora) -> dict:
    r = remora.admin_get("/stats/prometheus")
    assert r.status == 200
    assert (r.header("content-type") or "").startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.body.decode())}


def samples(families: dict, family: str, sample: str | None = None, **labels) -> list:
    f = families[family]
    return [s for s in f.samples if (sample is None or s.name == sample)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def total(families: dict, family: str, sample: str, **labels) -> float:
    return sum(s.value for s in samples(families, family, sample, **labels))


@pytest.fixture
def metrics_proxy(start_remora, http_backend, refused_endpoint):
    backend = http_backend()
    cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app"),
                                                     status_route("down", "/down", "gone")])],
                      [cluster("app", [backend.endpoint]), cluster("gone", [refused_endpoint])])
    cfg["node"] = "edge-1"
    remora = start_remora(cfg)
    return remora


def test_prometheus_families_typed_histograms_cumulative_counts_match(metrics_proxy):
    remora = metrics_proxy
    port = remora.port("web")
    sent = {"200": 0, "503": 0, "404": 0, "down": 0}
    with Client(port) as c:
        for i in range(40):
            kind = ("200", "200", "503", "404", "down")[i % 5]
            target = {"200": "/status/200", "503": "/status/503", "404": "/nothing", "down": "/down"}[kind]
            r = c.request("GET", target)
            assert r.status == {"200": 200, "503": 503, "404": 404, "down": 503}[kind]
            sent[kind] += 1
    n = sum(sent.values())
    upstream = sent["200"] + sent["503"]

    poll(lambda: total(scrape(remora), "envoy_http_downstream_rq_time", "envoy_http_downstream_rq_time_count") == n,
         timeout=5, what="downstream_rq_time counts every request")
    fams = scrape(remora)

    # Every family is typed; histograms are cumulative and end at +Inf == _count.
    for name, f in fams.items():
        assert f.type in ("counter", "gauge", "histogram"), f"{name} has type {f.type}"
        assert f.documentation, f"{name} has no HELP"
        if f.type != "histogram":
            continue
        series: dict = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((s.labels["le"], s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
        for key, v in series.items():
            les = [le for le, _ in v["buckets"]]
            assert les[-1] == "+Inf", f"{name}{key}: last bucket {les[-1]}"
            assert les[0] == "0.5" and les[-2] in ("3600000", "3600000.0") and len(les) == 20, f"{name}: {les}"
            counts = [c for _, c in v["buckets"]]
            assert counts == sorted(counts), f"{name}{key}: buckets not cumulative: {counts}"
            assert counts[-1] == v["count"], f"{name}{key}: +Inf {counts[-1]} != count {v['count']}"

    # Envoy's names and labels.
    assert total(fams, "envoy_http_downstream_rq", "envoy_http_downstream_rq_total",
                 envoy_http_conn_manager_prefix="web") == n
    assert total(fams, "envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_total", envoy_cluster_name="app") == upstream
    assert total(fams, "envoy_cluster_upstream_rq_xx", None, envoy_cluster_name="app",
                 envoy_response_code_class="5") == sent["503"]
    assert total(fams, "envoy_cluster_upstream_rq_xx", None, envoy_cluster_name="app",
                 envoy_response_code_class="2") == sent["200"]
    assert total(fams, "envoy_http_downstream_rq_xx", None, envoy_http_conn_manager_prefix="web",
                 envoy_response_code_class="4") == sent["404"]
    assert fams["envoy_http_downstream_rq_active"].type == "gauge"
    assert fams["envoy_cluster_upstream_cx_active"].type == "gauge"
    assert total(fams, "envoy_cluster_upstream_rq_time", "envoy_cluster_upstream_rq_time_count",
                 envoy_cluster_name="app") == upstream
    assert total(fams, "envoy_route_upstream_rq", "envoy_route_upstream_rq_total", envoy_route_name="ok",
                 envoy_cluster_name="app") == upstream

    # Istio's standard metrics.
    assert total(fams, "istio_requests", "istio_requests_total") == n
    assert total(fams, "istio_requests", "istio_requests_total", destination_service="app", response_code="200",
                 response_flags="-", request_protocol="http", source_workload="edge-1") == sent["200"]
    assert total(fams, "istio_requests", "istio_requests_total", destination_service="app", response_code="503",
                 response_flags="-") == sent["503"]
    assert total(fams, "istio_requests", "istio_requests_total", destination_service="unknown", response_code="404",
                 response_flags="NR") == sent["404"]
    assert total(fams, "istio_requests", "istio_requests_total", destination_workload="gone", response_code="503",
                 response_flags="UF") == sent["down"]
    assert fams["istio_request_duration_milliseconds"].type == "histogram"
    assert total(fams, "istio_request_duration_milliseconds", "istio_request_duration_milliseconds_count") == n

    # The same numbers as JSON; the text format as before.
    r = remora.admin_get("/stats?format=json")
    assert r.status == 200 and r.header("content-type") == "application/json"
    doc = json.loads(r.body)
    values = {s["name"]: s["value"] for s in doc["stats"]}
    assert values["listener.web.downstream_rq_total"] == n
    hist = {h["name"]: h for h in doc["histograms"]}
    assert hist["listener.web.downstream_rq_time"]["count"] == n
    assert hist["cluster.app.upstream_rq_time"]["count"] == upstream
    assert hist["listener.web.downstream_rq_time"]["buckets"][-1][1] == n
    assert sum(q["count"] for q in doc["requests"]) == n
    assert remora.stats()["listener.web.downstream_rq_total"] == n   # the text format still parses as before


# -- access logs ----------------------------------------------------------------------------------

import os
import re
import signal
import socket
import struct
from pathlib import Path

from harness import build_request, connect


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    poll(lambda: len(read_lines(path)) >= n, timeout=timeout, what=f"{n} lines in {path}")
    return read_lines(path)


def test_access_log_json_1000_mixed_requests(start_remora, http_backend, refused_endpoint, tmp_path):
    backend = http_backend()
    log = tmp_path / "web.log"
    routes = [status_route("ok", "/status", "app"), status_route("down", "/down", "gone"),
              {**status_route("slow", "/sleep", "app"), "timeout": "100ms"}]
    cfg = make_config([http_listener("web", routes=routes, access_log={"path": str(log), "format": "json"})],
                      [cluster("app", [backend.endpoint]), cluster("gone", [refused_endpoint])])
    remora = start_remora(cfg)
    port = remora.port("web")
    expect: dict[str, dict] = {}
    c = Client(port)
    for i in range(1000):
        rid = f"req-{i:04d}"
        headers = [("X-Request-Id", rid), ("User-Agent", f'ua/{i} "quoted" back\\slash'), ("X-Forwarded-For", "10.0.0.9")]
        if i % 50 == 7:      # 504: no response head within the route timeout
            kind, target = "504", "/sleep/400"
        elif i % 50 == 19:   # the client goes away before the answer
            kind, target = "reset", "/sleep/300"
        else:
            kind, target = [("200", "/status/200"), ("404", "/nothing"), ("503", "/down"), ("500", "/status/500")][i % 4]
        expect[rid] = {"kind": kind, "target": target}
        if kind == "reset":
            s = connect(port)
            s.sendall(build_request("GET", target, headers, None, None, "remora.test"))
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST
            s.close()
            continue
        r = c.request("GET", target, headers)
        assert r.status == int(kind), (i, r.status)
    c.close()
    lines = wait_lines(log, 1000)
    assert len(lines) == 1000, f"{len(lines)} lines for 1000 requests"
    seen = set()
    ep = backend.endpoint
    for line in lines:
        e = json.loads(line)
        rid = e["request_id"]
        assert rid in expect and rid not in seen, rid
        seen.add(rid)
        want = expect[rid]
        assert e["method"] == "GET" and e["path"] == want["target"] and e["protocol"] == "HTTP/1.1"
        assert e["authority"] == "remora.test" and e["user_agent"] == f'ua/{int(rid[4:])} "quoted" back\\slash'
        assert e["x_forwarded_for"] == "10.0.0.9"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["start_time"]), e["start_time"]
        assert isinstance(e["duration"], int) and e["duration"] >= 0 and e["bytes_received"] == 0
        assert e["grpc_status"] is None and e["downstream_peer_identity"] is None
        k = want["kind"]
        if k in ("200", "500"):
            assert e["response_code"] == int(k) and e["response_flags"] == "-", e
            assert e["upstream_cluster"] == "app" and e["route_name"] == "ok" and e["upstream_host"] == ep
            assert e["bytes_sent"] == len(f"status {k}\n") and e["retry_count"] == 0
            assert isinstance(e["upstream_service_time"], int)
        elif k == "404":
            assert e["response_code"] == 404 and e["response_flags"] == "NR", e
            assert e["upstream_cluster"] is None and e["route_name"] is None and e["upstream_host"] is None
        elif k == "503":
            assert e["response_code"] == 503 and e["response_flags"] == "UF", e
            assert e["upstream_cluster"] == "gone" and e["route_name"] == "down"
        elif k == "504":
            assert e["response_code"] == 504 and e["response_flags"] == "UT", e
            assert e["upstream_host"] == ep and e["duration"] >= 90
        else:
            assert e["response_code"] == 0 and e["response_flags"] == "DC", e
    assert seen == set(expect)
    assert remora.stat("listener.web.access_log_dropped") == 0


def test_access_log_envoy_default_text_and_format_string(start_remora, http_backend, tmp_path):
    backend = http_backend()
    text_log, fmt_log = tmp_path / "text.log", tmp_path / "fmt.log"
    cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app")],
                                     access_log={"path": str(text_log)}),
                       http_listener("api", routes=[status_route("ok", "/status", "app")],
                                     access_log={"path": str(fmt_log),
                                                 "format": "%REQ(:METHOD)% %RESPONSE_CODE% %UPSTREAM_CLUSTER% 100%% %REQ(X-REQUEST-ID)%"})],
                      [cluster("app", [backend.endpoint])])
    remora = start_remora(cfg)
    assert get(remora.port("web"), "/status/200", headers=[("User-Agent", "curl/8"), ("X-Request-Id", "abc")]).status == 200
    assert get(remora.port("api"), "/status/200").status == 200
    line = wait_lines(text_log, 1)[0]
    m = re.fullmatch(r'\[(\S+)\] "GET /status/200 HTTP/1.1" 200 - 0 11 (\d+) (\d+) "-" "curl/8" "abc" "remora.test" "(\S+)"',
                     line)
    assert m, line
    assert m.group(4) == backend.endpoint
    assert wait_lines(fmt_log, 1) == ["GET 200 app 100% -"]


def test_access_log_to_a_fifo_nobody_reads_drops_and_counts(start_remora, http_backend, tmp_path):
    backend = http_backend()
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # a reader that never reads: the pipe fills
    try:
        cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app")],
                                         access_log={"path": str(fifo), "format": "json"})],
                          [cluster("app", [backend.endpoint])])
        remora = start_remora(cfg)
        ua = "x" * 4000
        n = 600   # ~2.6 MB of lines: more than the pipe (64 KiB) and the workers' rings (2 x 256 KiB)
        started = time.monotonic()
        with Client(remora.port("web")) as c:
            for _ in range(n):
                assert c.request("GET", "/status/200", [("User-Agent", ua)]).status == 200
        elapsed = time.monotonic() - started
        remora.wait_stat("listener.web.access_log_dropped", lambda v: v > 0, what="> 0 dropped lines")
        dropped = remora.stat("listener.web.access_log_dropped")
        assert dropped < n
        assert remora.stat("listener.web.downstream_rq_2xx") == n
        assert elapsed < 20, f"requests slowed down by the stuck log: {elapsed:.1f}s"
        assert remora.rss_kib() < 200 * 1024
    finally:
        os.close(reader)


def test_access_log_sigusr1_reopens_after_rename(start_remora, http_backend, tmp_path):
    backend = http_backend()
    log = tmp_path / "web.log"
    cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app")],
                                     access_log={"path": str(log), "format": "json"})],
                      [cluster("app", [backend.endpoint])])
    remora = start_remora(cfg)
    port = remora.port("web")
    for i in range(5):
        assert get(port, "/status/200", headers=[("X-Request-Id", f"old-{i}")]).status == 200
    wait_lines(log, 5)
    rotated = tmp_path / "web.log.1"
    log.rename(rotated)
    os.kill(remora.pid, signal.SIGUSR1)
    poll(lambda: log.exists(), timeout=5, what="the log reopened at its path")
    for i in range(7):
        assert get(port, "/status/200", headers=[("X-Request-Id", f"new-{i}")]).status == 200
    new = wait_lines(log, 7)
    # Lines of two workers: each worker's in order, the two interleaved in any order.
    assert sorted(json.loads(line)["request_id"] for line in new) == [f"new-{i}" for i in range(7)]
    assert sorted(json.loads(line)["request_id"] for line in read_lines(rotated)) == [f"old-{i}" for i in range(5)]


def test_tcp_listener_logs_one_line_per_connection(start_remora, tcp_backend, refused_endpoint, tmp_path):
    from harness import tcp_listener
    backend = tcp_backend()
    log = tmp_path / "tcp.log"
    cfg = make_config([tcp_listener("db", "pg", access_log={"path": str(log), "format": "json"}),
                       tcp_listener("dead", "gone", access_log={"path": str(log), "format": "json"})],
                      [cluster("pg", [backend.endpoint]), cluster("gone", [refused_endpoint])])
    remora = start_remora(cfg)
    s = connect(remora.port("db"))
    s.sendall(b"hello")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = s.recv(1024)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got == b"helloBYE"
    s = connect(remora.port("dead"))
    assert s.recv(16) == b""   # closed: the connect was refused
    s.close()
    lines = [json.loads(line) for line in wait_lines(log, 2)]
    ok = next(e for e in lines if e["upstream_cluster"] == "pg")
    assert ok["protocol"] == "TCP" and ok["bytes_received"] == 5 and ok["bytes_sent"] == 8
    assert ok["upstream_host"] == backend.endpoint and ok["response_flags"] == "-" and ok["response_code"] is None
    dead = next(e for e in lines if e["upstream_cluster"] == "gone")
    assert dead["response_flags"] == "UF" and dead["bytes_sent"] == 0


# -- request ids and trace propagation --------------------------------------------------------------

from wire import header_values

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def traced_proxy(start_remora, http_backend, tmp_path, **tracing):
    backend = http_backend()
    log = tmp_path / "trace.log"
    cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app")], tracing=tracing,
                                     access_log={"path": str(log), "format": "json"}),
                       http_listener("plain", routes=[status_route("ok", "/status", "app")])],
                      [cluster("app", [backend.endpoint])])
    return start_remora(cfg), backend, log


def last_request(backend) -> list:
    poll(lambda: backend.requests, timeout=5, what="a request at the backend")
    return backend.requests[-1]["headers"]


def test_request_id_generated_when_absent_and_kept_when_present(start_remora, http_backend, tmp_path):
    remora, backend, log = traced_proxy(start_remora, http_backend, tmp_path)
    ids = []
    for _ in range(3):
        assert get(remora.port("web"), "/status/200").status == 200
        got = header_values(last_request(backend), "x-request-id")
        assert len(got) == 1 and UUID4.fullmatch(got[0]), got
        ids.append(got[0])
    assert len(set(ids)) == 3
    assert get(remora.port("web"), "/status/200", headers=[("X-Request-Id", "client-id-1")]).status == 200
    assert header_values(last_request(backend), "x-request-id") == ["client-id-1"]
    logged = [json.loads(line)["request_id"] for line in wait_lines(log, 4)]
    assert sorted(logged) == sorted(ids + ["client-id-1"])
    # Without `tracing:` nothing is added.
    assert get(remora.port("plain"), "/status/200").status == 200
    h = last_request(backend)
    assert header_values(h, "x-request-id") == [] and header_values(h, "traceparent") == []


def test_traceparent_continued_with_the_proxys_span_as_child(start_remora, http_backend, tmp_path):
    remora, backend, _ = traced_proxy(start_remora, http_backend, tmp_path, sample_percent=0)
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    for flags in ("01", "00"):
        assert get(remora.port("web"), "/status/200",
                   headers=[("traceparent", f"00-{trace}-{parent}-{flags}"), ("tracestate", "vendor=x")]).status == 200
        h = last_request(backend)
        tp = header_values(h, "traceparent")
        assert len(tp) == 1, tp
        m = TRACEPARENT.fullmatch(tp[0])
        assert m and m.group(1) == trace and m.group(2) not in (parent, "0" * 16) and m.group(3) == flags, tp
        assert header_values(h, "tracestate") == ["vendor=x"]
    # No (or an invalid) traceparent: a new trace, sampled at sample_percent (0 here: never).
    for bad in (None, "00-zz-00f067aa0ba902b7-01", f"00-{'0' * 32}-{parent}-01"):
        assert get(remora.port("web"), "/status/200", headers=[("traceparent", bad)] if bad else None).status == 200
        tp = header_values(last_request(backend), "traceparent")
        m = TRACEPARENT.fullmatch(tp[0]) if len(tp) == 1 else None
        assert m and m.group(1) != trace and m.group(1) != "0" * 32 and m.group(3) == "00", tp


def test_new_traces_sampled_at_sample_percent(start_remora, http_backend, tmp_path):
    remora, backend, _ = traced_proxy(start_remora, http_backend, tmp_path, sample_percent=100)
    assert get(remora.port("web"), "/status/200").status == 200
    m = TRACEPARENT.fullmatch(header_values(last_request(backend), "traceparent")[0])
    assert m and m.group(3) == "01"
