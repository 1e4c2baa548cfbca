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

from harness import build_request, connect, request


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
    # "patient" (no route timeout) for the client that goes away: on "slow" a busy machine could
    # let the 100 ms timeout answer 504 before the client's reset arrives.
    routes = [status_route("ok", "/status", "app"), status_route("down", "/down", "gone"),
              status_route("patient", "/sleep/2000", "app"), {**status_route("slow", "/sleep", "app"), "timeout": "100ms"}]
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
            kind, target = "reset", "/sleep/2000"
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


def test_access_log_flags_of_local_answers_and_refusals_1000_requests(start_remora, http_backend, refused_endpoint,
                                                                      tmp_path):
    """Every answer the proxy made itself carries its flag: FI, DI, RL, UO, URX, NR, UF, UT, DC, and
    requests refused before an exchange exists (400/431 DPE, 408 DT) get a line too."""
    import threading
    backend = http_backend()
    log = tmp_path / "flags.log"

    def fwd(name, prefix, cl="app", **opts):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "backends": [{"cluster": cl}], **opts}

    routes = [fwd("retry", "/status/503", "retrying", retry={"attempts": 2, "on": ["5xx"],
                                                              "backoff": {"base": "1ms", "max": "2ms"}}),
              fwd("ok", "/status"), fwd("down", "/down", "gone"), fwd("slow", "/sleep/400", timeout="100ms"),
              fwd("abort", "/fault/abort", fault={"abort": {"status": 503, "percent": 100}}),
              fwd("delay", "/fault/delay", fault={"delay": {"fixed": "1ms", "percent": 100}}),
              fwd("limited", "/limited", rate_limit={"per_second": 1, "burst": 1}),
              fwd("held", "/sleep/5000", "tight"), fwd("tight", "/tight", "tight"),
              fwd("reset", "/sleep")]
    cfg = make_config([http_listener("web", routes=routes, access_log={"path": str(log), "format": "json"},
                                     max_request_header_bytes="4KiB", request_header_timeout="300ms")],
                      [cluster("app", [backend.endpoint]), cluster("gone", [refused_endpoint]),
                       cluster("retrying", [backend.endpoint], retry_budget="off"),
                       cluster("tight", [backend.endpoint], circuit_breaker={"max_requests": 1})])
    remora = start_remora(cfg)
    port = remora.port("web")
    expect: dict[str, str] = {}   # request id (or raw marker) -> kind

    # UO: one request holds the only slot of cluster "tight"; the next ones overflow.
    held = threading.Thread(target=lambda: request(port, "GET", "/sleep/5000", [("X-Request-Id", "held")], timeout=15))
    held.start()
    expect["held"] = "held"
    remora.wait_stat("cluster.tight.circuit_breakers.default.rq_open", lambda v: v == 1, timeout=5)
    c = Client(port)
    kinds = [("200", "/status/200"), ("404", "/nothing"), ("UF", "/down"), ("FI", "/fault/abort"),
             ("DI", "/fault/delay"), ("RL", "/limited"), ("URX", "/status/503")]
    n_raw = 0
    for i in range(999):
        rid = f"req-{i:04d}"
        if i < 40:
            kind, target = "UO", "/tight"
        elif i % 100 == 41:
            kind, target = "UT", "/sleep/400"
        elif i % 100 == 42:
            kind, target = "DC", "/sleep/300"
        elif i % 100 in (43, 44, 45):
            kind = ["DPE400", "DPE431", "DT408"][i % 100 - 43]
            target = None
        else:
            kind, target = kinds[i % len(kinds)]
        if target is None:   # refused before an exchange exists, on a connection of its own
            s = connect(port)
            if kind == "DPE400":
                s.sendall(b"GET /bad HTTP/1.1\r\nHost: remora.test\r\nX-Request-Id: " + rid.encode()
                          + b"\r\nno colon here\r\n\r\n")
            elif kind == "DPE431":
                s.sendall(b"GET /big HTTP/1.1\r\nHost: remora.test\r\nX-Big: " + b"b" * 8000 + b"\r\n\r\n")
            else:
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: remora.test\r\n")   # never finished
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            assert data.startswith(b"HTTP/1.1 " + kind[-3:].encode()), (kind, data[:60])
            expect[f"raw-{n_raw}"] = kind
            n_raw += 1
            continue
        expect[rid] = kind
        headers = [("X-Request-Id", rid)]
        if kind == "DC":
            s = connect(port)
            s.sendall(build_request("GET", target, headers, None, None, "remora.test"))
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST
            s.close()
            continue
        r = c.request("GET", target, headers)
        want = {"200": 200, "404": 404, "UF": 503, "FI": 503, "DI": 200, "URX": 503, "UO": 503, "UT": 504}.get(kind)
        if kind == "RL":
            assert r.status in (200, 429), r.status
            if r.status == 200:
                expect[rid] = "200"   # the bucket's one token
        else:
            assert r.status == want, (i, kind, r.status)
    c.close()
    held.join(15)
    lines = wait_lines(log, 1000)
    assert len(lines) == 1000, f"{len(lines)} lines for 1000 requests"
    raw = iter(sorted(k for k in expect if k.startswith("raw-")))
    flags_of = {"200": "-", "held": "-", "404": "NR", "UF": "UF", "FI": "FI", "DI": "DI", "RL": "RL", "URX": "URX",
                "UO": "UO", "UT": "UT", "DC": "DC", "DPE400": "DPE", "DPE431": "DPE", "DT408": "DT"}
    status_of = {"200": 200, "held": 200, "404": 404, "UF": 503, "FI": 503, "DI": 200, "RL": 429, "URX": 503,
                 "UO": 503, "UT": 504, "DC": 0, "DPE400": 400, "DPE431": 431, "DT408": 408}
    counts: dict[str, int] = {}
    raw_seen = []
    for line in lines:
        e = json.loads(line)
        rid = e["request_id"]
        if rid is None or rid.startswith("raw") or e["response_code"] in (400, 408, 431):
            kinds_raw = {400: "DPE400", 431: "DPE431", 408: "DT408"}
            kind = kinds_raw[e["response_code"]]
            raw_seen.append(kind)
            if kind == "DPE400":
                assert e["path"] is None and e["method"] is None, e   # not parsed whole
        else:
            kind = expect.pop(rid)
        counts[kind] = counts.get(kind, 0) + 1
        assert e["response_flags"] == flags_of[kind], (kind, e)
        assert e["response_code"] == status_of[kind], (kind, e)
        assert e["protocol"] == "HTTP/1.1"
        if kind == "URX":
            assert e["retry_count"] == 1 and e["upstream_cluster"] == "retrying", e
        if kind == "UO":
            assert e["upstream_cluster"] == "tight" and e["upstream_host"] is None, e
        if kind in ("FI", "RL"):
            assert e["upstream_cluster"] is None and e["route_name"] in ("abort", "limited"), e
    assert not [k for k in expect if not k.startswith("raw-")], "every request logged once"
    assert sorted(raw_seen) == sorted(expect[k] for k in expect if k.startswith("raw-"))
    assert counts["UO"] == 40 and counts["RL"] >= 100 and counts["URX"] >= 100 and counts["DT408"] == 10, counts
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


# -- B3 propagation ----------------------------------------------------------------------------------

def one(headers, name):
    got = header_values(headers, name)
    assert len(got) == 1, (name, got)
    return got[0]


def test_b3_multi_and_single_headers_continued_as_the_proxys_child(start_remora, http_backend, tmp_path):
    remora, backend, _ = traced_proxy(start_remora, http_backend, tmp_path, propagate=["w3c", "b3"], sample_percent=0)
    port = remora.port("web")
    trace64, trace128, client_span = "463ac35c9f6413ad", "80f198ee56343ba864fe8b2a57d3eff7", "a2fb4a1d1a96d312"
    # Multiple headers, a 64-bit trace id, sampled: x-b3-* back with the proxy's span, the client's as parent.
    assert get(port, "/status/200", headers=[("X-B3-TraceId", trace64), ("X-B3-SpanId", client_span),
                                             ("X-B3-ParentSpanId", "0000000000000001"), ("X-B3-Sampled", "1")]).status == 200
    h = last_request(backend)
    assert one(h, "x-b3-traceid") == trace64 and one(h, "x-b3-parentspanid") == client_span
    span = one(h, "x-b3-spanid")
    assert re.fullmatch(r"[0-9a-f]{16}", span) and span != client_span
    assert one(h, "x-b3-sampled") == "1" and header_values(h, "b3") == []
    m = TRACEPARENT.fullmatch(one(h, "traceparent"))   # the same span in W3C's form, the trace id left-padded
    assert m and m.groups() == ("0" * 16 + trace64, span, "01"), m
    # One `b3` header, 128-bit, not sampled: one `b3` header back, no x-b3-*.
    assert get(port, "/status/200", headers=[("b3", f"{trace128}-{client_span}-0")]).status == 200
    h = last_request(backend)
    b3 = one(h, "b3").split("-")
    assert b3[0] == trace128 and b3[1] != client_span and b3[2] == "0" and b3[3] == client_span, b3
    assert not any(header_values(h, n) for n in ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled"))
    assert TRACEPARENT.fullmatch(one(h, "traceparent")).groups() == (trace128, b3[1], "00")
    # Ids without a decision: the proxy decides (sample_percent 0); a lone decision without ids is kept.
    assert get(port, "/status/200", headers=[("x-b3-traceid", trace128), ("x-b3-spanid", client_span)]).status == 200
    h = last_request(backend)
    assert one(h, "x-b3-traceid") == trace128 and one(h, "x-b3-sampled") == "0"
    assert get(port, "/status/200", headers=[("b3", "1")]).status == 200
    h = last_request(backend)
    assert one(h, "x-b3-sampled") == "1" and one(h, "x-b3-traceid") != trace128 and header_values(h, "x-b3-parentspanid") == []
    # W3C comes first when both are sent.
    w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert get(port, "/status/200", headers=[("traceparent", f"00-{w3c_trace}-00f067aa0ba902b7-01"),
                                             ("x-b3-traceid", trace128), ("x-b3-spanid", client_span)]).status == 200
    h = last_request(backend)
    assert one(h, "x-b3-traceid") == w3c_trace and one(h, "x-b3-parentspanid") == "00f067aa0ba902b7"


def test_b3_only_leaves_traceparent_alone(start_remora, http_backend, tmp_path):
    remora, backend, _ = traced_proxy(start_remora, http_backend, tmp_path, propagate=["b3"], sample_percent=100)
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert get(remora.port("web"), "/status/200", headers=[("traceparent", tp)]).status == 200
    h = last_request(backend)
    assert one(h, "traceparent") == tp   # not the proxy's format here: forwarded as it came
    assert one(h, "x-b3-sampled") == "1" and re.fullmatch(r"[0-9a-f]{32}", one(h, "x-b3-traceid"))


@pytest.mark.timeout(30)
def test_trace_fields_once_each_to_an_http2_upstream_and_a_mirror(start_remora, http_backend):
    """The proxy's own fields (x-request-id, traceparent, B3) go to an HTTP/2 upstream (the HPACK
    path: `AddedFields.fields`) and to the route's mirror over HTTP/1.1 (the lines path:
    `AddedFields.lines`) exactly once each and the same on both; the client's trace fields are
    replaced, its other fields kept."""
    pytest.importorskip("h2", reason="hyper-h2 is not installed (pip install h2)")
    from harness import made_and_closed
    from test_http2 import H2Backend
    gen = made_and_closed(H2Backend, failure="h2 backend failed: ")
    make = next(gen)
    try:
        h2b, shadow = make(), http_backend()
        route = status_route("all", "/", "app")
        route["mirror"] = {"cluster": "shadow", "percent": 100}
        remora = start_remora(make_config(
            [http_listener("web", routes=[route], tracing={"propagate": ["w3c", "b3"], "sample_percent": 100})],
            [cluster("app", [h2b.endpoint], protocol="http2"), cluster("shadow", [shadow.endpoint])]))
        port = remora.port("web")
        trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        sent = [[("X-Custom", "kept")],
                [("traceparent", f"00-{trace}-{client_span}-01"), ("X-B3-TraceId", "not-the-proxys"),
                 ("X-Custom", "kept")],
                [("b3", f"{trace}-{client_span}-0"), ("X-Custom", "kept")]]
        for i, hdrs in enumerate(sent):
            assert get(port, f"/echo?i={i}", headers=hdrs).status == 200
            poll(lambda: len(h2b.requests) > i and len(shadow.requests) > i, timeout=5,
                 what="the request at the HTTP/2 upstream and at the mirror")
        for i in range(len(sent)):
            up, sh = h2b.requests[i]["headers"], shadow.requests[i]["headers"]
            fields = ("x-request-id", "traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
                      "x-b3-sampled", "x-custom")
            assert {n: header_values(up, n) for n in fields} == {n: header_values(sh, n) for n in fields}, (up, sh)
            assert UUID4.fullmatch(one(up, "x-request-id")) and one(up, "x-custom") == "kept"
            m = TRACEPARENT.fullmatch(one(up, "traceparent"))
            assert m, up
            if i == 0:   # a new trace: B3 in multiple headers, no parent
                assert m.group(1) != trace and m.group(3) == "01"
                assert one(up, "x-b3-traceid") == m.group(1) and one(up, "x-b3-spanid") == m.group(2)
                assert one(up, "x-b3-sampled") == "1" and header_values(up, "x-b3-parentspanid") == []
            elif i == 1:   # W3C continued; the client's B3 field replaced by the proxy's
                assert m.group(1) == trace and m.group(2) != client_span and m.group(3) == "01"
                assert one(up, "x-b3-traceid") == trace and one(up, "x-b3-parentspanid") == client_span
                assert one(up, "x-b3-spanid") == m.group(2)
            else:   # one b3 header in, one out
                assert m.group(1) == trace and m.group(3) == "00"
                assert one(up, "b3") == f"{trace}-{m.group(2)}-0-{client_span}"
                assert header_values(up, "x-b3-traceid") == []
        assert len({one(h2b.requests[i]["headers"], "x-request-id") for i in range(len(sent))}) == len(sent)
    finally:
        gen.close()


def hpack_representations(block: bytes) -> list[tuple[str, int]]:
    """Each field of an HPACK header block as (kind, name index) in order (RFC 7541 §6): kind
    `indexed` (name and value from the table), `incremental` (literal, added to the table),
    `without` (literal, not added) or `never` (literal, never indexed); name index 0 = a literal name.
    Table size updates are skipped."""
    out, i = [], 0

    def integer(prefix: int) -> int:
        nonlocal i
        v = block[i] & ((1 << prefix) - 1)
        i += 1
        if v == (1 << prefix) - 1:
            shift = 0
            while True:
                b = block[i]
                i += 1
                v += (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
        return v

    def string():
        nonlocal i
        n = integer(7)
        i += n

    while i < len(block):
        b = block[i]
        if b & 0x80:
            out.append(("indexed", integer(7)))
            continue
        if b & 0xE0 == 0x20:
            integer(5)
            continue
        kind, prefix = (("incremental", 6) if b & 0xC0 == 0x40 else ("never", 4) if b & 0xF0 == 0x10 else ("without", 4))
        index = integer(prefix)
        if index == 0:
            string()
        string()
        out.append((kind, index))
    return out


class HPACKRecordingBackend:
    """An h2c (prior knowledge) server on raw frames that keeps every request's HPACK header block as
    it came (`blocks`: per connection, in order), decodes it with `hpack` (PyPI, hyper-h2's decoder)
    into `fields` and answers 200 without a body."""

    def __init__(self):
        import hpack
        self.hpack = hpack
        self.blocks: dict[int, list[bytes]] = {}
        self.fields: dict[int, list[list[tuple[str, str]]]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def accept(self):
        n = 0
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            n += 1
            t = threading.Thread(target=self.serve, args=(conn, n), daemon=True)
            self.threads.append(t)
            t.start()

    def serve(self, conn, cid):
        conn.settimeout(0.2)
        dec, enc = self.hpack.Decoder(), self.hpack.Encoder()
        buf, pending = b"", b""

        def frame(ftype, flags, sid, payload=b""):
            return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload

        conn.sendall(frame(4, 0, 0))   # our SETTINGS
        try:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                if buf.startswith(b"PRI * HTTP/2.0"):
                    if len(buf) < 24:
                        continue
                    buf = buf[24:]
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9:9 + length], buf[9 + length:]
                    if ftype == 4 and not flags & 1:
                        conn.sendall(frame(4, 1, 0))   # SETTINGS ACK
                    elif ftype == 6 and not flags & 1:
                        conn.sendall(frame(6, 1, 0, payload))   # PING ACK
                    elif ftype in (1, 9):   # HEADERS, CONTINUATION
                        if ftype == 1:
                            pad = payload[0] if flags & 0x8 else 0
                            payload = payload[(1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0):len(payload) - pad]
                        pending += payload
                        if flags & 0x4:
                            fields = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                                      for k, v in dec.decode(pending)]
                            with self.lock:
                                self.blocks.setdefault(cid, []).append(pending)
                                self.fields.setdefault(cid, []).append(fields)
                            pending = b""
                            conn.sendall(frame(1, 0x5, sid, enc.encode([(":status", "200"), ("content-length", "0")])))
                    elif ftype == 7:
                        return
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()
        for t in self.threads:
            t.join(1)


@pytest.mark.timeout(30)
def test_trace_field_names_enter_the_upstream_hpack_table_once_values_never(start_remora, http_backend):
    """Toward an HTTP/2 upstream the request id and traceparent are new values on every request:
    never indexed (they would only push useful entries out of the peer's table), but their names go
    into the table with the first request on a connection and later requests refer to them by
    index instead of sending the names again (HPACK as a real decoder reads it)."""
    pytest.importorskip("hpack", reason="hpack is not installed (pip install h2)")
    backend = HPACKRecordingBackend()
    try:
        remora = start_remora(make_config([http_listener("web", tracing={"propagate": ["w3c"], "sample_percent": 0})],
                                          [cluster("app", [backend.endpoint], protocol="http2")], workers=1))
        port = remora.port("web")
        for i in range(8):
            assert get(port, f"/r{i}").status == 200
        poll(lambda: sum(len(v) for v in backend.fields.values()) >= 8, timeout=5, what="8 requests at the backend")
        with backend.lock:
            conns = {c: list(zip(backend.blocks[c], backend.fields[c])) for c in backend.blocks}
        assert len(conns) == 1, "one upstream connection carries the 8 requests"
        ids = set()
        for n, (block, fields) in enumerate(next(iter(conns.values()))):
            reps = hpack_representations(block)
            assert len(reps) == len(fields), (reps, fields)
            kinds = {name: rep for (name, _), rep in zip(fields, reps)}
            values = dict(fields)
            assert TRACEPARENT.fullmatch(values["traceparent"]) and UUID4.fullmatch(values["x-request-id"])
            ids.add(values["x-request-id"])
            for name in ("traceparent", "x-request-id"):
                kind, index = kinds[name]
                if n == 0:
                    assert kind == "incremental", (n, name, kind)   # the name (and this one value) enter the table
                else:
                    assert kind == "never" and index > 61, (n, name, kind, index)   # a dynamic-table name, a new value
        assert len(ids) == 8
    finally:
        backend.close()


# -- OTLP span export -------------------------------------------------------------------------------

import base64
import http.server
import threading


class Collector:
    """An OTLP/HTTP collector stand-in: keeps the JSON bodies POSTed to /v1/traces, parsed with the
    OpenTelemetry protos (opentelemetry-proto) through protobuf's json_format. OTLP/JSON writes trace
    and span ids as hex where protobuf's JSON mapping has base64, so they are turned into base64
    first (what an OTLP/JSON receiver does)."""

    def __init__(self):
        self.batches = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.batches.append((self.path, self.headers.get("Content-Type"), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def parse(body: bytes):
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        doc = json.loads(body)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    for k in ("traceId", "spanId", "parentSpanId"):
                        if k in sp:
                            sp[k] = base64.b64encode(bytes.fromhex(sp[k])).decode()
        return json_format.ParseDict(doc, ExportTraceServiceRequest())

    def spans(self):
        with self.lock:
            batches = list(self.batches)
        out = []
        for path, ctype, body in batches:
            assert path == "/v1/traces" and ctype == "application/json"
            req = self.parse(body)
            for rs in req.resource_spans:
                assert rs.resource.attributes[0].key == "service.name"
                for ss in rs.scope_spans:
                    out.extend(ss.spans)
        return out


def test_otlp_export_parent_and_child_ids_batched(start_remora, http_backend):
    backend = http_backend()
    collector = Collector()
    try:
        cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app")],
                                         tracing={"sample_percent": 0,
                                                  "otlp": {"endpoint": f"http://127.0.0.1:{collector.port}"}})],
                          [cluster("app", [backend.endpoint])])
        cfg["node"] = "edge-7"
        remora = start_remora(cfg)
        port = remora.port("web")
        n = 700   # 583 sampled: a full batch of 512 and the rest
        sent = {}
        with Client(port) as c:
            for i in range(n):
                trace, parent = f"{i + 1:032x}", f"{0xabc000 + i:016x}"
                flags = "01" if i % 6 else "00"   # every sixth not sampled: not exported
                r = c.request("GET", f"/status/{200 if i % 10 else 503}",
                              [("traceparent", f"00-{trace}-{parent}-{flags}")])
                assert r.status in (200, 503)
                upstream_tp = one(backend.requests[-1]["headers"], "traceparent")
                if flags == "01":
                    sent[trace] = (parent, TRACEPARENT.fullmatch(upstream_tp).group(2), 200 if i % 10 else 503)
        # A full batch (512) goes at once; the rest within the 5 s timer.
        poll(lambda: len(collector.spans()) >= 512, timeout=4, what="a full batch of spans")
        poll(lambda: len(collector.spans()) >= len(sent), timeout=8, what=f"{len(sent)} spans")
        spans = collector.spans()
        assert len(spans) == len(sent)
        assert max(len(Collector.parse(b).resource_spans[0].scope_spans[0].spans) for _, _, b in collector.batches) <= 512
        assert Collector.parse(collector.batches[0][2]).resource_spans[0].resource.attributes[0].value.string_value == "edge-7"
        for s in spans:
            parent, child, status = sent.pop(s.trace_id.hex())
            assert s.parent_span_id.hex() == parent, "the proxy's span is the child of the client's"
            assert s.span_id.hex() == child, "and the parent of the upstream's"
            assert s.kind == 2 and s.name == "ok" and s.end_time_unix_nano >= s.start_time_unix_nano > 0
            attrs = {a.key: a.value for a in s.attributes}
            assert attrs["http.request.method"].string_value == "GET"
            assert attrs["http.response.status_code"].int_value == status
            assert attrs["upstream_cluster"].string_value == "app"
            assert s.status.code == (2 if status == 503 else 0)
        assert not sent
        stats = remora.stats()
        name = f"tracing.127.0.0.1:{collector.port}.otlp"
        assert stats[f"{name}.spans_exported"] == len(spans) and stats[f"{name}.spans_dropped"] == 0
    finally:
        collector.close()


def test_otlp_collector_down_requests_unaffected_drops_counted(start_remora, http_backend, refused_endpoint):
    backend = http_backend()
    cfg = make_config([http_listener("web", routes=[status_route("ok", "/status", "app")],
                                     tracing={"sample_percent": 100, "otlp": {"endpoint": f"http://{refused_endpoint}"}})],
                      [cluster("app", [backend.endpoint])])
    remora = start_remora(cfg)
    started = time.monotonic()
    with Client(remora.port("web")) as c:
        for _ in range(600):
            assert c.request("GET", "/status/200").status == 200
    assert time.monotonic() - started < 20
    name = f"tracing.{refused_endpoint}.otlp"
    remora.wait_stat(f"{name}.spans_dropped", lambda v: v >= 512, timeout=5, what="a batch dropped")
    assert remora.stat(f"{name}.spans_exported") == 0 and remora.stat(f"{name}.export_failures") >= 1
    assert remora.stat("listener.web.downstream_rq_2xx") == 600


def test_mirrored_copies_export_no_span_and_count_in_no_istio_series(start_remora, http_backend):
    """A mirrored copy is not a client request: no span of its own, no Istio series. An exchange is
    recycled from request to request, and a copy made on one that had served a sampled request must
    not export that request's span again (the collector got duplicates of earlier span ids) nor count
    in the shadow cluster's series."""
    main, shadow = http_backend(), http_backend()
    collector = Collector()
    try:
        cfg = make_config([http_listener("web", routes=[{"name": "m", "match": {"path": {"prefix": "/"}},
                                                          "backends": [{"cluster": "app"}],
                                                          "mirror": {"cluster": "shadow"}}],
                                         tracing={"sample_percent": 100,
                                                  "otlp": {"endpoint": f"http://127.0.0.1:{collector.port}"}})],
                          [cluster("app", [main.endpoint]), cluster("shadow", [shadow.endpoint])], workers=1)
        remora = start_remora(cfg)
        n = 40
        with Client(remora.port("web")) as c:
            for i in range(n):
                assert c.request("GET", f"/status/200?i={i}").status == 200
        poll(lambda: len(shadow.requests) >= n, timeout=5, what=f"{n} copies at the shadow")
        poll(lambda: len(collector.spans()) >= n, timeout=8, what=f"{n} spans")
        time.sleep(5.5)   # the exporter's next batch (every 5 s): nothing more may come
        spans = collector.spans()
        ids = [s.span_id.hex() for s in spans]
        assert len(spans) == n and len(set(ids)) == n, f"{len(spans)} spans for {n} requests, {len(set(ids))} distinct"
        fams = scrape(remora)
        assert total(fams, "istio_requests", "istio_requests_total", destination_service="app") == n
        assert total(fams, "istio_requests", "istio_requests_total", destination_service="shadow") == 0
        assert total(fams, "istio_requests", "istio_requests_total") == n
    finally:
        collector.close()
